"""The README's three figures, drawn from the committed results files and from schedule.py.

- accuracy.png: dev accuracy against encoder sparsity for each method, mean over seeds with
  the standard deviation as error bars (the same numbers as evidence/table.py's tables);
- schedules.png: the sparsity and learning-rate schedules of the recipe (accelerated: a jump to
  70%, then the cubic) against the naive cubic from zero, for the miniature's 188 student steps
  at 90%, exactly what `python schedule.py --sparsity 0.9 --steps 188 [--schedule cubic]` prints;
- softmax.png: the teacher's softmax at T = 1, 2 and 5.5 on real dev sentences
  (evidence/results/softmax.json, made by evidence/softmax.py).

matplotlib is an evidence-only dependency (evidence/requirements.txt), like transformers for the
tests: nothing else in the project imports it.

    python evidence/figures.py     # writes evidence/figures/*.png
"""
import json
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from schedule import Schedule     # noqa: E402
from table import load, seeds_of, accuracy, mean_std, RESULTS   # noqa: E402

OUT = HERE / "figures"


def series(res, at):
    """(x, mean, std) over seeds: a gradual row at its sparsity, or a one-shot row at each."""
    xs, ms, ss = [], [], []
    for s, runs in at:
        values = runs(res)
        if values:
            m, sd = mean_std(values)
            xs.append(100 * s), ms.append(m), ss.append(sd)
    return xs, ms, ss


def oneshot_points(name):
    return [(s, lambda res, s=s: [next(r["accuracy"] for r in rec["oneshot"] if r["sparsity"] == s)
                                  for rec in seeds_of(res, name)]) for s in (0.0, 0.5, 0.7, 0.8, 0.9)]


def gradual_points(name):
    return [(0.8, lambda res: accuracy(seeds_of(res, name.format(p="80")))),
            (0.9, lambda res: accuracy(seeds_of(res, name.format(p="90"))))]


def accuracy_figure(res, path):
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    lines = [("one-shot GMP, AdamW teacher", oneshot_points("oneshot-gmp"), "--", "o"),
             ("one-shot oBERT, AdamW teacher", oneshot_points("oneshot-obert"), "--", "s"),
             ("one-shot GMP, CrAM model", oneshot_points("oneshot-cram-gmp"), ":", "o"),
             ("one-shot oBERT, CrAM model", oneshot_points("oneshot-cram-obert"), ":", "s"),
             ("gradual GMP, the recipe", gradual_points("gmp{p}"), "-", "D"),
             ("gradual oBERT, the recipe", gradual_points("obert{p}"), "-", "^"),
             ("gradual GMP, naive cubic", gradual_points("cubic{p}"), "-", "v"),
             ("gradual GMP, KD at T = 1", gradual_points("t1-{p}"), "-", "<"),
             ("gradual GMP, no KD", gradual_points("nokd{p}"), "-", "x")]
    for i, (label, at, style, marker) in enumerate(lines):
        xs, ms, ss = series(res, at)
        if xs:   # a small sideways offset per method keeps overlapping error bars readable
            ax.errorbar([x + 0.35 * (i - 4) for x in xs], ms, yerr=ss, label=label, linestyle=style, marker=marker,
                        markersize=4, capsize=2, linewidth=1)
    ax.set_xlabel("encoder sparsity (%)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title("MiniLM on the SST-2 miniature: mean ± std over seeds", fontsize=10)
    ax.axhline(50.9, color="grey", linewidth=0.6)
    ax.annotate("majority class", xy=(0.01, 51.2), xycoords=("axes fraction", "data"), fontsize=7, color="grey")
    ax.legend(fontsize=7, loc="center left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def schedules_figure(path, steps=188, target=0.9):
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.4), sharex=True)
    for kind, style in (("accelerated", "-"), ("cubic", "--")):
        s = Schedule(steps, target, kind=kind, lr_max=8e-5, lr_min=8e-6)
        t = range(steps)
        label = "the recipe (accelerated, from 70%)" if kind == "accelerated" else "naive cubic from zero"
        top.plot(t, [s.sparsity_at(i) for i in t], style, label=label)
        bottom.plot(t, [s.lr_at(i) for i in t], style, label=label)
    top.set_ylabel("sparsity")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel(f"optimizer step (the miniature's {steps} student steps, target {target:.0%})")
    top.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def softmax_figure(rec, path, n=4):
    Ts = [str(t) for t in rec["temperatures"]]
    fig, axes = plt.subplots(1, n, figsize=(8, 2.8), sharey=True)
    for ax, e in zip(axes, rec["examples"][:n]):
        for j, t in enumerate(Ts):
            ax.bar([j - 0.2, j + 0.2], e["p"][t], width=0.38, color=["tab:red", "tab:blue"])
        ax.set_xticks(range(len(Ts)), [f"T={t}" for t in Ts], fontsize=7)
        words = e["text"].split()
        ax.set_title(" ".join(words[:5]) + (" …" if len(words) > 5 else "") + f"\n(label {e['label']})", fontsize=7)
    axes[0].set_ylabel("teacher's p_T (red: negative, blue: positive)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    OUT.mkdir(exist_ok=True)
    res = load(RESULTS)
    accuracy_figure(res, OUT / "accuracy.png")
    schedules_figure(OUT / "schedules.png")
    if "softmax" in res:
        softmax_figure(res["softmax"], OUT / "softmax.png")
    for p in sorted(OUT.glob("*.png")):
        print(f"{p.relative_to(HERE.parent)}: {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
