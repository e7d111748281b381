"""The README's evidence tables, made from the committed results files and nothing else (issue 15).

evidence/runs.py runs the miniature and writes one file per run to evidence/results/ (NAME.json,
NAME being the row and the seed, `gmp80-s1`); bench.py's output is kept there as bench-*.txt.
This script reads them and prints every table of the README's evidence, benchmark and
what-sparsity-buys sections, each between two markers that the README carries:

    <!-- table: NAME -->
    | ... the table ... |
    <!-- /table -->

A cell over seeds is their mean ± the sample standard deviation (n - 1 in the denominator) and,
where fewer than 3 seeds have finished, the count. A guideline's difference is called *shown*
only when it exceeds the spread, the two rows' standard deviations added: |mean_a - mean_b| >
std_a + std_b (their mean ± std ranges do not overlap); its sign says for or against the paper.
The guidelines' table also lists the differences seed by seed (the same seed's two runs share a
teacher and a data order). A speed-up is a ratio of wall times taken per seed, then averaged.

    python evidence/table.py                    # print every table
    python evidence/table.py --write README.md  # paste them between the README's markers
    python evidence/table.py --check README.md  # exit 1 if the README's tables differ
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import prune                      # noqa: E402  (the parameter and FLOP counts)

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = 3
MARK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def load(folder: Path) -> dict[str, dict]:
    """{run name: its record} for every NAME.json in folder."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def seeds_of(res: dict, row: str) -> list[dict]:
    """The records of row's seeds, `row-s0`, `row-s1`, ... in seed order."""
    return [res[k] for k in sorted(res) if re.fullmatch(re.escape(row) + r"-s\d+", k)]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float], digits: int = 2) -> str:
    """'80.16 ± 0.42', or with fewer than SEEDS values '80.16 ± 0.42 (2 seeds)'; 'not run' for none."""
    if not values:
        return "not run"
    m, s = mean_std(values)
    text = f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"
    return text + (f" ({len(values)} seed{'s' * (len(values) > 1)})" if len(values) < SEEDS else "")


def accuracy(records: list[dict]) -> list[float]:
    return [r["metric"]["accuracy"] for r in records]


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A markdown table; align holds one 'l' or 'r' per column."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    line = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"   # a | inside a cell
    return "\n".join([line(header), rule] + [line(r) for r in rows])


# -----------------------------------------------------------------------------
# The SST-2 miniature: every gradual row, and the guidelines' comparisons.

GRADUAL = [   # (row label, run name with {p} for the sparsity in percent)
    ("the recipe: GMP, accelerated schedule, KD at T = 5.5", "gmp{p}"),
    ("the recipe with oBERT (1024 Fisher gradients of 8 per pruning step)", "obert{p}"),
    ("embeddings and head pruned too", "embhead{p}"),
    ("naive cubic schedule from zero", "cubic{p}"),
    ("KD at T = 2", "t2-{p}"),
    ("KD at T = 1", "t1-{p}"),
    ("no KD (task loss only)", "nokd{p}"),
]


def sst2_table(res: dict) -> str:
    rows = []

    def add(label, sparsity, records):
        rows.append([label, sparsity, cell(accuracy(records)), str(len(records)),
                     cell([r["command_seconds"] / 60 for r in records], 1) if records else "",
                     cell([r["peak_memory_gb"] for r in records], 2) if records else ""])

    add("dense fine-tuned teacher (2 epochs)", "0%", seeds_of(res, "teacher"))
    for p in ("80", "90"):
        for label, name in GRADUAL:
            add(label, f"{p}%", seeds_of(res, name.format(p=p)))
    add("the recipe at twice the epochs (2)", "90%", seeds_of(res, "gmp90-2x"))
    return table(["run", "encoder sparsity", "dev accuracy", "seeds", "minutes per run", "peak GB"], rows,
                 "llrrrr")


COMPARISONS = [   # (guideline, what the paper says wins, what it beats, at)
    ("1. prune only the encoder", "gmp{p}", "embhead{p}", ("80", "90")),
    ("2. accelerated schedule, not naive cubic", "gmp{p}", "cubic{p}", ("80", "90")),
    ("2. a longer schedule for a higher target", "gmp90-2x", "gmp90", ("90",)),
    ("3. KD at T = 5.5 rather than T = 1", "gmp{p}", "t1-{p}", ("80", "90")),
    ("3. KD at T = 5.5 rather than T = 2", "gmp{p}", "t2-{p}", ("80", "90")),
    ("3. KD rather than none", "gmp{p}", "nokd{p}", ("80", "90")),
    ("the pruner: oBERT rather than GMP", "obert{p}", "gmp{p}", ("80", "90")),   # the paper's strongest method
]


def verdict(a: list[float], b: list[float]) -> tuple[str, str, str]:
    """(difference, spread, shown?) for 'a beats b': shown when |mean a - mean b| > std a + std b."""
    if not a or not b:
        return "", "", "not run"
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    d, spread = ma - mb, sa + sb
    if min(len(a), len(b)) < 2:
        return f"{d:+.2f}", "", "one seed: no spread"
    if abs(d) <= spread:
        return f"{d:+.2f}", f"{spread:.2f}", "no: within the spread"
    return f"{d:+.2f}", f"{spread:.2f}", "**yes, as the paper says**" if d > 0 else "**yes, against the paper**"


def per_seed(res: dict, a: str, b: str) -> str:
    """The same seed's two runs (one teacher, one data order) subtracted: '+1.2, -0.3, +2.0'."""
    acc_b = {r["seed"]: r["metric"]["accuracy"] for r in seeds_of(res, b)}
    return ", ".join(f"{r['metric']['accuracy'] - acc_b[r['seed']]:+.1f}" for r in seeds_of(res, a)
                     if r["seed"] in acc_b)


def guidelines_table(res: dict) -> str:
    rows = []
    for guideline, win, lose, at in COMPARISONS:
        for p in at:
            a, b = win.format(p=p), lose.format(p=p)
            rows.append([guideline, f"{p}%", f"`{a}` − `{b}`", *verdict(accuracy(seeds_of(res, a)),
                                                                        accuracy(seeds_of(res, b))),
                         per_seed(res, a, b)])
    return table(["guideline", "at", "runs compared", "difference (points)", "spread (std + std)",
                  "shown beyond the spread?", "per seed"], rows, "lllrrll")


# -----------------------------------------------------------------------------
# One-shot pruning and CrAM; the wall times of what sparsity buys.

ONESHOT = [("AdamW (the teachers)", "GMP, one shot", "oneshot-gmp"),
           ("AdamW (the teachers)", "oBERT, one shot, 1024 gradients", "oneshot-obert"),
           ("CrAM, ρ = 0.01", "GMP, one shot", "oneshot-cram-gmp"),
           ("CrAM, ρ = 0.01", "oBERT, one shot, 1024 gradients", "oneshot-cram-obert")]
ONESHOT_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9)


def oneshot_accuracy(record: dict, sparsity: float) -> float:
    for row in record["oneshot"]:
        if row["sparsity"] == sparsity:
            return row["accuracy"]
    raise KeyError(f"{record['name']} has no one-shot row at sparsity {sparsity}; rerun it with evidence/runs.py")


def oneshot_table(res: dict) -> str:
    rows = []
    for tuned, pruned, name in ONESHOT:
        records = seeds_of(res, name)
        cols = [cell([oneshot_accuracy(rec, s) for rec in records], 1) for s in ONESHOT_SPARSITIES]
        secs = [r["seconds"] for rec in records for r in rec["oneshot"] if r["sparsity"] > 0]
        fisher = [rec["fisher_seconds"] for rec in records if rec.get("fisher_seconds")]
        digits = 1 if secs and max(secs) < 10 else 0
        took = f"{min(secs):.{digits}f}–{max(secs):.{digits}f}" if secs else ""
        if fisher:   # oBERT: one Fisher of the dense model serves every sparsity
            took = f"Fisher once: {min(fisher):.0f}–{max(fisher):.0f}; then {took}"
        rows.append([tuned, pruned, *cols, took, str(len(records))])
    for label, name in (("GMP", "gmp{p}"), ("oBERT", "obert{p}")):
        records = [seeds_of(res, name.format(p=p)) for p in ("80", "90")]
        n80, n90 = (len(r) for r in records)
        seeds = str(n80) if n80 == n90 else f"{n80} / {n90}"   # "3 / 0" while the 90% runs are missing
        rows.append(["(pretrained, KD from the teachers)", f"gradual {label}, the recipe (188 steps)", "", "", "",
                     *[cell(accuracy(r), 1) for r in records], "", seeds])
    return table(["fine-tuned with", "pruned by", "dense", "50%", "70%", "80%", "90%", "seconds per sparsity",
                  "seeds"], rows, "llrrrrrrr")


def speedup(res: dict, slow: str, fast: str) -> str:
    """slow's student seconds / fast's, seed by seed (the same seed's two runs), as mean ± std."""
    slow_s = {r["seed"]: r["student_seconds"] for r in seeds_of(res, slow)}
    ratios = [slow_s[r["seed"]] / r["student_seconds"] for r in seeds_of(res, fast) if r["seed"] in slow_s]
    if not ratios or slow == fast:
        return ""
    m, s = mean_std(ratios)
    text = f"{m:.2f}× ± {s:.2f}" if len(ratios) > 1 else f"{m:.2f}×"
    return text + (f" ({len(ratios)} seed{'s' * (len(ratios) > 1)})" if len(ratios) < SEEDS else "")


def wall_table(res: dict) -> str:
    runs = [("in data order (`--no-group-by-length`)", "dense", "gmp90-plain"),
            ("grouped by length (the default)", "dense", "gmp90"),
            ("grouped by length", "`--sparse-backprop`", "gmp90-sparse")]
    rows = []
    for batches, kernels, name in runs:
        records = seeds_of(res, name)
        rows.append([batches, kernels, cell([r["student_seconds"] for r in records], 1),
                     cell([r["tokens_per_s"] for r in records], 0), cell(accuracy(records)),
                     speedup(res, "gmp90-plain", name), speedup(res, "gmp90", name) if name == "gmp90-sparse" else "",
                     str(len(records))])
    return table(["batches", "kernels", "student phase (s)", "real tokens/s", "dev accuracy",
                  "speed-up over data order", "speed-up over dense kernels", "seeds"], rows, "llrrrrrr")


def softmax_table(res: dict) -> str:
    rec = res.get("softmax")
    if rec is None:
        return "not run"
    Ts = [str(t) for t in rec["temperatures"]]
    texts = [e["text"].strip() for e in rec["examples"]]
    rows = [[f"“{t[:60]}{'…' if len(t) > 60 else ''}”", str(e["label"]),
             *[f"{e['p'][t][1]:.3f}" for t in Ts]] for t, e in zip(texts, rec["examples"])]
    rows.append([f"all {rec['dev_size']} dev sentences: mean probability of the top class", "",
                 *[f"{rec['dev_mean_top_probability'][t]:.3f}" for t in Ts]])
    rows.append([f"all {rec['dev_size']} dev sentences: mean entropy (nats; at most ln 2 = 0.693)", "",
                 *[f"{rec['dev_mean_entropy_nats'][t]:.3f}" for t in Ts]])
    return table(["dev sentence", "label", *[f"p(positive), T = {float(t):g}" for t in Ts]], rows,
                 "lr" + "r" * len(Ts))


# -----------------------------------------------------------------------------
# bench.py's output, kept as it printed it.

def bench_table(path: Path) -> str:
    """bench.py's rows (84-character label, ours, reference, ratio, target) as markdown."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or len(line) < 90 or line.startswith(("prune-lm", "ratio", "measurement")):
            continue
        if line[84] != " ":
            raise ValueError(f"{path.name}: a label longer than bench.py's 84 columns: {line[:90]!r}")
        label, (ours, ref, ratio, *target) = line[:84].rstrip(), line[84:].split()
        rows.append([label, *["" if v == "nan" else v for v in (ours, ref, ratio)], " ".join(target)])
    return table(["measurement", "ours", "reference", "ratio", "target"], rows, "lrrrl")


def cost_table(model: str) -> str:
    """Not a measurement: prune.py's count of parameters and FLOPs (`python prune.py --report MODEL`)."""
    rows = prune.cost_table(prune.BUILTIN[model], 128)
    P, F = sum(r[1] for r in rows), sum(r[2] for r in rows)
    return table([f"{model}, 128 tokens", "params (M)", "% params", "GFLOPs", "% FLOPs"],
                 [[name, f"{p / 1e6:.2f}", f"{100 * p / P:.1f}", f"{f / 1e9:.2f}", f"{100 * f / F:.1f}"]
                  for name, p, f in rows], "lrrrr")


def kind_of(name: str) -> str:
    for prefix, kind in (("teacher-", "dense teachers"), ("oneshot-", "one-shot pruning"),
                         ("cram-", "CrAM fine-tuning"), ("softmax", "the teacher's softmax")):
        if name.startswith(prefix):
            return kind
    return "gradual pruning (students)"


def compute_table(res: dict) -> str:
    """What the evidence cost: runs and the wall time of their commands, by kind."""
    kinds = ["dense teachers", "gradual pruning (students)", "one-shot pruning", "CrAM fine-tuning",
             "the teacher's softmax"]
    seconds = {k: [r["command_seconds"] for name, r in res.items() if kind_of(name) == k and r.get("command_seconds")]
               for k in kinds}
    rows = [[k, str(len(seconds[k])), f"{sum(seconds[k]) / 60:.1f}"] for k in kinds]
    everything = [x for k in kinds for x in seconds[k]]
    rows.append(["all", str(len(everything)), f"{sum(everything) / 60:.1f}"])
    return table(["runs", "count", "minutes (wall time of the commands, one after another)"], rows, "lrr")


def render(folder: Path = RESULTS) -> dict[str, str]:
    """{table name: markdown} for every table the README carries."""
    res = load(folder / "v1" if (folder / "v1").is_dir() else folder)
    out = {"cost-bert-base": cost_table("bert-base-uncased"), "cost-roberta-large": cost_table("roberta-large"),
           "sst2": sst2_table(res), "guidelines": guidelines_table(res), "oneshot": oneshot_table(res),
           "wall": wall_table(res), "softmax": softmax_table(res), "compute": compute_table(res)}
    for name in ("bench-cpu", "bench-cpu-sparse"):
        if (folder / f"{name}.txt").is_file():
            out[name] = bench_table(folder / f"{name}.txt")
    return out


def paste(readme: str, tables: dict[str, str]) -> str:
    """readme with every marked table replaced by its rendering (unknown names are an error)."""
    def replace(m):
        if m["name"] not in tables:
            raise KeyError(f"the README marks a table {m['name']!r} that evidence/table.py does not make")
        return m.group(1) + tables[m["name"]] + "\n" + m.group(4)
    return MARK.sub(replace, readme)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(RESULTS), help="folder of results files (default evidence/results)")
    p.add_argument("--write", metavar="README", help="paste the tables between the README's markers")
    p.add_argument("--check", metavar="README", help="exit 1 if the README's marked tables differ")
    args = p.parse_args()
    tables = render(Path(args.results))
    if not (args.write or args.check):
        for name, text in tables.items():
            print(f"<!-- table: {name} -->\n{text}\n<!-- /table -->\n")
        return
    path = Path(args.write or args.check)
    before = path.read_text()
    after = paste(before, tables)
    if args.write:
        path.write_text(after)
    elif after != before:
        sys.exit(f"{path}'s tables differ from evidence/table.py's; run: python evidence/table.py --write {path}")


if __name__ == "__main__":
    main()
