"""The evidence's figures (README.md, evidence/README.md), drawn from the committed results files and from schedule.py.

- recovery.png: guideline 2 as the paper states it: the recipe's accuracy at 80% and 90% against
  the student's budget (in teacher budgets), dev and held-out, mean ± std over seeds, with the
  dense teachers' band: how much of the teacher's accuracy a longer schedule recovers; beside it,
  the recipe with oBERT as its pruner, run at the chosen budget only;
- cycles.png: what happens during pruning: the dev accuracy at the end of every pruning cycle
  (train.py's log, kept in each results file) and of the run, mean ± std over seeds, for the recipe,
  the naive cubic and the recipe with oBERT at 80% and 90% at the chosen budget, with the dense
  teachers' band and the recipe's sparsity in each cycle; steps and labels come from the records
  (their cycle_evals and resolved arguments), not from constants;
- schedules.png: the sparsity and learning-rate schedules of the recipe (a jump to 30%, the first
  jump for MiniLM's 6 layers, then the cubic) against the naive cubic from zero, as
  `python schedule.py --sparsity 0.8 --steps 752 --init-sparsity 0.3 --lr 5e-5 --lr-min 5e-6
  [--schedule cubic]` prints them (752 steps: the chosen budget);
- softmax.png: the teacher's softmax at T = 1, 2 and 5.5 on real dev sentences
  (evidence/results/softmax.json, made by evidence/softmax.py).

matplotlib is an evidence-only dependency (evidence/requirements.txt), like transformers for the
tests: nothing else in the project imports it.

    python evidence/figures.py     # writes evidence/figures/*.png

Each PNG is written through files.py's rule (it replaces only a PNG, atomically), and only when
evidence/results holds results: figures of nothing never replace the drawn ones.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
try:
    import matplotlib
except ImportError:
    print("figures.py: drawing the figures needs matplotlib; pip install -r evidence/requirements.txt.",
          file=sys.stderr)
    sys.exit(2)
matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402

import files                      # noqa: E402  (the rule for every file a command writes)
from schedule import Schedule     # noqa: E402
from table import load, seeds_of, mean_std, RESULTS   # noqa: E402
import runs                       # noqa: E402

OUT = HERE / "figures"


def save(fig, path):
    """The figure as a PNG, through files.py's rule: it replaces only a PNG, atomically."""
    files.write_result(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), files.FIGURE, flag="")
    plt.close(fig)


def recovery_figure(res, path) -> list[str]:
    """The recipe's accuracy against the student's budget (GMP: every budget run; oBERT: the chosen
    budget), dev and held-out, with the teachers' band. Returns the legend's labels."""
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4.2), sharex=True)
    for ax, key, title in ((axes[0], "metric", "dev (872 sentences)"),
                           (axes[1], "holdout_metric", f"held out ({runs.HOLDOUT} training sentences)")):
        teacher = [r[key]["accuracy"] for r in seeds_of(res, "teacher") if r.get(key)]
        if teacher:
            m, sd = mean_std(teacher)
            ax.axhspan(m - sd, m + sd, color="grey", alpha=0.25, label="dense teachers (mean ± std)")
            ax.axhline(m, color="grey", linewidth=0.8)
        for p, marker in (("80", "o"), ("90", "s")):
            xs, ms, ss = [], [], []
            for b in runs.BUDGETS:
                values = [r[key]["accuracy"] for r in seeds_of(res, f"gmp{p}-b{b}") if r.get(key)]
                if values:
                    xs.append(b), ms.append(mean_std(values)[0]), ss.append(mean_std(values)[1])
            if xs:
                ax.errorbar(xs, ms, yerr=ss, marker=marker, capsize=3, label=f"the recipe (GMP) at {p}%")
        for p, marker in (("80", "^"), ("90", "v")):    # oBERT as the pruner: run at the chosen budget only
            values = [r[key]["accuracy"] for r in seeds_of(res, f"obert{p}-b{runs.CHOSEN_BUDGET}") if r.get(key)]
            if values:
                m, sd = mean_std(values)
                ax.errorbar([runs.CHOSEN_BUDGET], [m], yerr=[sd], marker=marker, capsize=3, linestyle="none",
                            label=f"the recipe with oBERT at {p}% ({len(values)} seed{'s' * (len(values) > 1)})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(runs.BUDGETS), [str(b) for b in runs.BUDGETS])
        ax.set_xlabel("student budget (teacher budgets of 376 steps)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SST-2 accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)    # below both: clear of the curves
    fig.suptitle("MiniLM, SST-2 miniature: accuracy recovered against the student's budget", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save(fig, path)
    return labels


def total_steps(record) -> int:
    """A student's optimizer steps, from its record: its last cycle ends at t_end (schedule.py's
    end_frac of the run), which gives the steps per epoch to the nearest step; times its epochs."""
    epochs = record["args"]["epochs"]
    per_epoch = round(record["cycle_evals"][-1]["step"] / (Schedule.end_frac * epochs))
    return round(per_epoch * epochs)


def schedule_label(args) -> str:
    """The schedule a record's resolved arguments ran: 'accelerated from 30%' or 'naive cubic from zero'."""
    if args.get("schedule") == "cubic":
        return "naive cubic from zero"
    return f"accelerated from {args['init_sparsity']:.0%}"


def band(ax, xs, values, style, label, color=None):
    """The mean over seeds as a line, with a mean ± std band where there is more than one seed."""
    stats = [mean_std(v) for v in values]
    ms = [m for m, _ in stats]
    line, = ax.plot(xs, ms, style, markersize=4, label=label, color=color)
    if min(len(v) for v in values) > 1:
        ax.fill_between(xs, [m - sd for m, sd in stats], [m + sd for m, sd in stats], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    return line


def cycles_figure(res, path) -> list[str]:
    """The dev accuracy at each cycle's end and at the run's end, mean over seeds (± std as a band
    with more than one seed), the recipe against the naive cubic and against the recipe with oBERT as
    its pruner, at 80% and 90% and the chosen budget. Returns the legends' labels, left panel first."""
    B = runs.CHOSEN_BUDGET
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharey=True)
    teacher = [r["metric"]["accuracy"] for r in seeds_of(res, "teacher")]
    for ax, p in zip(axes, ("80", "90")):
        if teacher:
            m, sd = mean_std(teacher)
            ax.axhspan(m - sd, m + sd, color="grey", alpha=0.25, label=f"dense teachers (mean ± std, {len(teacher)} seeds)")
            ax.axhline(m, color="grey", linewidth=0.8)
        total, drawn = None, False
        for name, style in (("gmp", "-o"), ("cubic", "--s"), ("obert", ":^")):
            records = [r for r in seeds_of(res, f"{name}{p}-b{B}") if r.get("cycle_evals") and r.get("args")]
            if not records:
                continue
            n = min(len(r["cycle_evals"]) for r in records)
            total = total_steps(records[0])
            steps = [e["step"] for e in records[0]["cycle_evals"][:n]] + [total]     # the end: the exported model
            values = [[r["cycle_evals"][i]["accuracy"] for r in records] for i in range(n)]
            values.append([r["metric"]["accuracy"] for r in records])
            what = {"gmp": "the recipe: ", "cubic": "", "obert": "the recipe with oBERT: "}[name]
            seeds = f"{len(records)} seed{'s' * (len(records) > 1)}"
            line = band(ax, steps, values, style, f"{what}{schedule_label(records[0]['args'])} ({seeds})")
            drawn = True
            if name == "gmp":   # the recipe's sparsity in force during each cycle, along the axis' foot
                for e in records[0]["cycle_evals"][:n]:
                    ax.annotate(f"{e['sparsity']:.2f}", (e["step"], 0.02), xycoords=("data", "axes fraction"),
                                fontsize=6, ha="center", color=line.get_color())
        if not drawn:
            ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_title(f"target {p}%: dev accuracy after each pruning cycle", fontsize=9)
        ax.set_xlabel(f"optimizer step ({total} in all); at the foot: the recipe's sparsity" if total
                      else "optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))   # below: clear of the curves
    axes[0].set_ylabel("SST-2 dev accuracy (%)")
    fig.suptitle(f"MiniLM, SST-2 miniature: accuracy during pruning at the chosen budget ({B} teacher budgets)",
                 fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return [t.get_text() for ax in axes for t in ax.get_legend().get_texts()]


def schedules_figure(path, steps=376, target=0.9):
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.4), sharex=True)
    for kind, style in (("accelerated", "-"), ("cubic", "--")):
        s = Schedule(steps, target, runs.FIRST_JUMP, kind=kind, lr_max=5e-5, lr_min=5e-6)
        t = range(steps)
        label = f"the recipe (accelerated, from {runs.FIRST_JUMP:.0%})" if kind == "accelerated" else "naive cubic from zero"
        top.plot(t, [s.sparsity_at(i) for i in t], style, label=label)
        bottom.plot(t, [s.lr_at(i) for i in t], style, label=label)
    top.set_ylabel("sparsity")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel(f"optimizer step ({steps} student steps, target {target:.0%}; any length scales alike)")
    top.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


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
    save(fig, path)


def main():
    with files.command("figures.py"):
        res = load(RESULTS)
        if not res:                      # empty figures never replace the drawn ones
            raise files.Refused(f"{RESULTS} holds no results files (NAME.json), so there is nothing to draw; make "
                                f"them with evidence/runs.py first")
        OUT.mkdir(exist_ok=True)
        for name in ("recovery", "cycles", "schedules", "softmax"):    # every PNG checked before any is drawn
            files.check_target(OUT / f"{name}.png", files.FIGURE, flag="")
        recovery_figure(res, OUT / "recovery.png")
        if runs.CHOSEN_BUDGET is not None:
            cycles_figure(res, OUT / "cycles.png")
        per_epoch = -(-runs.LIMIT_TRAIN // 32)                # the miniature's batches of 32: 188 steps an epoch
        schedules_figure(OUT / "schedules.png", steps=per_epoch * runs.TEACHER_EPOCHS * (runs.CHOSEN_BUDGET or 1),
                         target=0.8)
        if "softmax" in res:
            softmax_figure(res["softmax"], OUT / "softmax.png")
    for p in sorted(OUT.glob("*.png")):
        print(f"{p.relative_to(HERE.parent)}: {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
