"""The evidence's tables, made from the committed results files and nothing else.

evidence/runs.py runs the miniature and writes one file per run to evidence/results/ (NAME.json,
NAME being the row and the seed, `gmp80-b2-s1`); bench.py's output is kept there as bench-*.txt.
This script reads them and prints every table of the README (its headline table), of the evidence
report (evidence/README.md) and of evidence/what-sparsity-buys.md, each between two markers that
the page carries:

    <!-- table: NAME -->
    | ... the table ... |
    <!-- /table -->

A cell over seeds is their mean ± the sample standard deviation (n - 1 in the denominator) and,
where other than runs.SEEDS' 3 seeds have finished (fewer so far, or the 5 of runs.FIVE_SEEDS'
rows), the count. A guideline compares two rows over the seeds both have finished, and only
those (the same seed's two runs share a teacher and a data order; a row's extra seeds would
bring in teachers the other row never had): its difference is mean_a - mean_b over the shared
seeds, which equals the mean of the per-seed differences, and it is called *shown* only when it
exceeds the spread, the two rows' standard deviations over those same seeds added: |mean_a -
mean_b| > std_a + std_b (their mean ± std ranges do not overlap); its sign says for or against
the paper. Its "seeds" column counts the shared seeds, and the table lists the differences seed
by seed too. The held-out difference is taken alike, over the seeds both rows have a held-out
accuracy for. A speed-up is a ratio of wall times taken per seed, then averaged.

    python evidence/table.py                    # print every table
    python evidence/table.py --write README.md evidence/README.md evidence/what-sparsity-buys.md
                                                # paste them between the markers of each file
    python evidence/table.py --check README.md evidence/README.md evidence/what-sparsity-buys.md
                                                # exit 1 if any file's tables differ

A --results folder without results files, a results file that is not JSON, and a --write or --check
file without markers are refused (one sentence, exit code 2): a check that compares nothing never
passes, and tables of "not run" never replace the README's. --write goes through files.py's rule.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import files                      # noqa: E402  (the rule for writing --write's file)
import prune                      # noqa: E402  (the parameter and FLOP counts)
import runs                       # noqa: E402  (the budgets, and the budget the study chose)

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = len(runs.SEEDS)            # a row's usual seed count; a cell with any other count says it
MARK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def load(folder: Path) -> dict[str, dict]:
    """{run name: its record} for every NAME.json in folder; a file that is not JSON is named."""
    records = {}
    for p in sorted(folder.glob("*.json")):
        try:
            records[p.stem] = json.loads(p.read_text())
        except (ValueError, OSError) as e:
            raise files.CommandError(f"{p} is not a readable JSON results file ({e}); restore it (git checkout "
                                     f"{p.name}), or delete it and run its command again") from None
    return records


def seeds_of(res: dict, row: str) -> list[dict]:
    """The records of row's seeds, `row-s0`, `row-s1`, ... in seed order."""
    return [res[k] for k in sorted(res) if re.fullmatch(re.escape(row) + r"-s\d+", k)]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float], digits: int = 2) -> str:
    """'80.16 ± 0.42'; with other than SEEDS values the count, '80.16 ± 0.42 (2 seeds)' or
    '80.16 ± 0.42 (5 seeds)'; 'not run' for none."""
    if not values:
        return "not run"
    m, s = mean_std(values)
    text = f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"
    return text + (f" ({len(values)} seed{'s' * (len(values) > 1)})" if len(values) != SEEDS else "")


def accuracy(records: list[dict]) -> list[float]:
    return [r["metric"]["accuracy"] for r in records]


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A markdown table; align holds one 'l' or 'r' per column."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    line = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"   # a | inside a cell
    return "\n".join([line(header), rule] + [line(r) for r in rows])


# -----------------------------------------------------------------------------
# The miniature at the recipe's proportions: the budget study, then every row at the chosen budget.

def by_seed(records: list[dict], key="metric") -> dict:
    return {r["seed"]: r[key]["accuracy"] for r in records if r.get(key)}


def gaps(res: dict, row: str, key="metric") -> list[float]:
    """Each seed's student minus the teacher of its own seed (the teacher it distilled from)."""
    teacher = by_seed(seeds_of(res, "teacher"), key)
    return [v - teacher[k] for k, v in by_seed(seeds_of(res, row), key).items() if k in teacher]


def holdout(records: list[dict]) -> list[float]:
    return [r["holdout_metric"]["accuracy"] for r in records if r.get("holdout_metric")]


def minutes(records: list[dict]) -> str:
    return cell([r["command_seconds"] / 60 for r in records], 1) if records else ""


def budget_table(res: dict) -> str:
    """The recipe at 80% and 90% for student budgets of 1, 2, 4, 8 teacher budgets (guideline 2 as the
    paper states it): accuracy, and the gap to each seed's own teacher, on dev and on the held-out set."""
    t = seeds_of(res, "teacher")
    rows = [["dense teacher", "0%", "1", str(runs.TEACHER_EPOCHS * 188), cell(accuracy(t)), "", cell(holdout(t)), "",
             str(len(t)), minutes(t)]]
    for p in ("80", "90"):
        for b in runs.BUDGETS:
            name = f"gmp{p}-b{b}"
            r = seeds_of(res, name)
            rows.append([f"the recipe (GMP, KD at T = 5.5, from {runs.FIRST_JUMP:.0%})", f"{p}%", str(b),
                         str(runs.TEACHER_EPOCHS * 188 * b), cell(accuracy(r)), cell(gaps(res, name)), cell(holdout(r)),
                         cell(gaps(res, name, "holdout_metric")), str(len(r)), minutes(r)])
    return table(["run", "sparsity", "student budget (teacher budgets)", "steps", "dev accuracy",
                  "minus its teacher, dev", "held-out accuracy", "minus its teacher, held-out", "seeds",
                  "minutes per run"], rows, "llrrrrrrrr")


def at_budget(name: str, p: str) -> str:
    """A row's run name at the chosen budget: `cubic80-b4`."""
    return f"{name.format(p=p)}-b{runs.CHOSEN_BUDGET}"


CHOSEN_ROWS = [   # (label, run name with {p}) at the chosen budget
    ("the recipe: GMP, accelerated from 30%, KD at T = 5.5, hardness 1.0", "gmp{p}"),
    ("the recipe with oBERT (1024 Fisher gradients of 16 per pruning step)", "obert{p}"),
    ("the recipe with movement (-Σ w·g, per matrix)", "movement{p}"),
    ("the recipe with Wanda (128 calibration sentences, per output row)", "wanda{p}"),
    ("embeddings and head pruned too", "embhead{p}"),
    ("naive cubic schedule from zero", "cubic{p}"),
    ("first jump to 50%", "init50-{p}"),
    ("first jump to 70% (BERT-base's)", "init70-{p}"),
    ("KD at T = 2", "t2-{p}"),
    ("KD at T = 1", "t1-{p}"),
    ("no KD (task loss only)", "nokd{p}"),
    ("KD at hardness 0.5 (half the task loss)", "hard05-{p}"),
]


def teacher_gaps(res: dict, records: list[dict]) -> list[float]:
    """Each seed's dev accuracy minus its teacher's: the teacher_metric train.py recorded in the same
    results file (the teacher it distilled from), or for a run without a teacher (no KD) the dev
    accuracy of its seed's teacher run, the teacher its KD siblings of that seed distilled from."""
    teacher = by_seed(seeds_of(res, "teacher"))
    return [r["metric"]["accuracy"] - (r["teacher_metric"]["accuracy"] if r.get("teacher_metric")
                                       else teacher[r["seed"]])
            for r in records if r.get("teacher_metric") or r["seed"] in teacher]


def chosen_table(res: dict) -> str:
    if runs.CHOSEN_BUDGET is None:
        return "not run: the budget study chooses the budget first"
    rows = []
    t = seeds_of(res, "teacher")
    rows.append(["dense fine-tuned teacher (1 teacher budget)", "0%", cell(accuracy(t)), "", cell(holdout(t)),
                 str(len(t)), minutes(t), cell([r["peak_memory_gb"] for r in t], 2)])
    for p in ("50", "70", "80", "90"):
        for label, name in CHOSEN_ROWS:
            r = seeds_of(res, at_budget(name, p))
            if r or p in ("80", "90") and (name.removesuffix("{p}") not in runs.CRITERIA or p == "80"):
                gap = teacher_gaps(res, r)
                rows.append([label, f"{p}%", cell(accuracy(r)), cell(gap) if gap else "", cell(holdout(r)), str(len(r)),
                             minutes(r), cell([x["peak_memory_gb"] for x in r], 2) if r else ""])
    return table(["run", "encoder sparsity", "dev accuracy", "minus its teacher, dev", "held-out accuracy", "seeds",
                  "minutes per run", "peak GB"], rows, "llrrrrrr")


COMPARISONS = [   # (guideline, what the paper says wins, what it beats, at); names at the chosen budget
    ("1. prune only the encoder", "gmp{p}", "embhead{p}", ("80", "90")),
    ("2. accelerated schedule, not naive cubic", "gmp{p}", "cubic{p}", ("80", "90")),
    ("2. first jump 30% (small models) rather than 70%", "gmp{p}", "init70-{p}", ("80", "90")),
    ("2. first jump 30% rather than 50%", "gmp{p}", "init50-{p}", ("80", "90")),
    ("3. KD at T = 5.5 rather than T = 1", "gmp{p}", "t1-{p}", ("80", "90")),
    ("3. KD at T = 5.5 rather than T = 2", "gmp{p}", "t2-{p}", ("80", "90")),
    ("3. KD rather than none", "gmp{p}", "nokd{p}", ("80", "90")),
    ("3. hardness 1.0 rather than 0.5", "gmp{p}", "hard05-{p}", ("80", "90")),
    ("the pruner: oBERT rather than GMP", "obert{p}", "gmp{p}", ("80", "90")),
    ("the pruner: oBERT rather than movement (the oBERT paper's claim)", "obert{p}", "movement{p}", ("80",)),
    ("the pruner: movement rather than GMP (no claim at 80%)", "movement{p}", "gmp{p}", ("80",), False),
    ("the pruner: Wanda rather than GMP (no claim for gradual pruning)", "wanda{p}", "gmp{p}", ("80",), False),
    ("the pruner: oBERT rather than Wanda (no claim)", "obert{p}", "wanda{p}", ("80",), False),
]


def paired(ra: list[dict], rb: list[dict], key: str = "metric") -> tuple[list[float], list[float]]:
    """The two rows' accuracies (key: dev or held-out) over the seeds both have, in seed order: the
    same seed's two runs share a teacher and a data order."""
    a, b = by_seed(ra, key), by_seed(rb, key)
    shared = sorted(set(a) & set(b))
    return [a[k] for k in shared], [b[k] for k in shared]


def verdict(a: list[float], b: list[float], ran: bool = True, claimed: bool = True) -> tuple[str, str, str]:
    """(difference, spread, shown?) for 'a beats b', a and b paired seed by seed (`paired`): shown
    when |mean a - mean b| > std a + std b. ran: both rows have runs (then no values means no
    seed in common). claimed: a paper says a beats b (else a difference is only "a ahead" or "b ahead")."""
    if not a or not b:
        return "", "", "no seed in common" if ran else "not run"
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    d, spread = ma - mb, sa + sb
    if min(len(a), len(b)) < 2:
        return f"{d:+.2f}", "", "one seed: no spread"
    if abs(d) <= spread:
        return f"{d:+.2f}", f"{spread:.2f}", "no: within the spread"
    if not claimed:
        return f"{d:+.2f}", f"{spread:.2f}", "**yes, the first ahead**" if d > 0 else "**yes, the second ahead**"
    return f"{d:+.2f}", f"{spread:.2f}", "**yes, as the paper says**" if d > 0 else "**yes, against the paper**"


def per_seed(res: dict, a: str, b: str) -> str:
    """The same seed's two runs (one teacher, one data order) subtracted: '+1.2, -0.3, +2.0'."""
    acc_b = {r["seed"]: r["metric"]["accuracy"] for r in seeds_of(res, b)}
    return ", ".join(f"{r['metric']['accuracy'] - acc_b[r['seed']]:+.1f}" for r in seeds_of(res, a)
                     if r["seed"] in acc_b)


SHORT = {"no: within the spread": "within the spread", "**yes, as the paper says**": "shown, as the paper says",
         "**yes, against the paper**": "shown, against the paper", "one seed: no spread": "one seed",
         "**yes, the first ahead**": "shown, the first ahead", "**yes, the second ahead**": "shown, the second ahead",
         "no seed in common": "no seed in common"}


def comparison_rows(res: dict, comparisons, name_at) -> list[list[str]]:
    rows = []
    for guideline, win, lose, at, *claim in comparisons:
        claimed = claim[0] if claim else True              # a fifth element False: no paper claims a direction
        for p in at:
            a, b = name_at(win, p), name_at(lose, p)
            ra, rb = seeds_of(res, a), seeds_of(res, b)
            da, db = paired(ra, rb)                            # the seeds both rows have, only
            d, spread, shown = verdict(da, db, bool(ra and rb), claimed)
            hd, hspread, hshown = verdict(*paired(ra, rb, "holdout_metric"), claimed=claimed)
            rows.append([guideline, f"{p}%", f"`{a}` − `{b}`", d, spread, shown, per_seed(res, a, b),
                         f"{len(da)}", f"{hd} ({SHORT[hshown]})" if hd else ""])
    return rows


def guidelines_table(res: dict) -> str:
    if runs.CHOSEN_BUDGET is None:
        return "not run: the budget study chooses the budget first"
    B = runs.CHOSEN_BUDGET
    longer = [("2. a longer schedule (the chosen budget rather than one teacher budget)",
               f"gmp{{p}}-b{B}", "gmp{p}-b1", ("80", "90"))]
    for b in (2 * B, 4 * B):              # each doubling past the chosen budget: is the curve still rising?
        if b in runs.BUDGETS:
            than = f"the chosen {B}" if b == 2 * B else f"{b // 2}"
            longer.append((f"2. longer still ({b} teacher budgets rather than {than})",
                           f"gmp{{p}}-b{b}", f"gmp{{p}}-b{b // 2}", ("80", "90")))
    rows = comparison_rows(res, COMPARISONS, at_budget) + comparison_rows(res, longer, lambda n, p: n.format(p=p))
    return table(["guideline", "at", "runs compared", "dev difference (points)", "spread (std + std)",
                  "shown beyond the spread?", "per seed", "seeds in common", "held-out difference (shown?)"], rows,
                 "lllrrllrl")


def short_budget_table(old: dict) -> str:
    """The first miniature (188 student steps, half a teacher budget; 3 seeds; evidence/results/v1):
    the recipe far from its teachers, kept as the row set that shows what too short a budget does."""
    t = seeds_of(old, "teacher")
    rows = [["dense teacher (376 steps)", "0%", cell(accuracy(t)), "", str(len(t))]]
    for p in ("80", "90"):
        for label, name in (("the recipe, 188 steps (½ teacher budget), from 70%", "gmp{p}"),
                            ("the recipe with oBERT, 188 steps", "obert{p}"), ("naive cubic, 188 steps", "cubic{p}")):
            r = seeds_of(old, name.format(p=p))
            rows.append([label, f"{p}%", cell(accuracy(r)), cell(gaps(old, name.format(p=p))), str(len(r))])
    r = seeds_of(old, "gmp90-2x")
    rows.append(["the recipe, 376 steps (1 teacher budget), from 70%", "90%", cell(accuracy(r)),
                 cell(gaps(old, "gmp90-2x")), str(len(r))])
    return table(["run (the first miniature: lr 8e-5, weight decay 0.01)", "sparsity", "dev accuracy",
                  "minus its teacher", "seeds"], rows, "llrrr")


# -----------------------------------------------------------------------------
# One-shot pruning and CrAM; the wall times of what sparsity buys.

CRITERIA_ROWS = [   # (criterion, scope, what it reads, its one-shot run, its gradual run at 80%) on this miniature's teachers
    ("magnitude (GMP)", "global", "the weights", "oneshot-gmp", "gmp80"),
    ("magnitude (GMP)", "per output row", "the weights", "oneshot-gmp-row", None),
    ("movement", "per matrix", "-Σ w·g over the student's steps", None, "movement80"),
    ("Wanda", "per output row", "‖X_j‖₂ of 128 training sentences", "oneshot-wanda", "wanda80"),
    ("Wanda", "global", "‖X_j‖₂ of 128 training sentences", "oneshot-wanda-global", None),
    ("oBERT", "global", "a Fisher of 1024 gradients of 16", "oneshot-obert", "obert80"),
]


def statistic_once(records: list[dict]) -> str:
    """The seconds a one-shot run spent gathering its statistic (once, from the dense model): a range."""
    secs = [r.get("statistic_seconds", r.get("fisher_seconds")) for r in records]
    secs = [x for x in secs if x]
    digits = 1 if secs and max(secs) < 10 else 0
    return f"{min(secs):.{digits}f}–{max(secs):.{digits}f}" if secs else ""


def criteria_table(res: dict) -> str:
    """The four rungs of the saliency ladder on this miniature: each teacher pruned in one shot (no
    training), and the recipe with each criterion in place of GMP at 80% and the chosen budget."""
    if runs.CHOSEN_BUDGET is None:
        return "not run: the budget study chooses the budget first"
    rows = []
    for criterion, scope, reads, oneshot, gradual in CRITERIA_ROWS:
        once = seeds_of(res, oneshot) if oneshot else []
        cols = [cell([oneshot_accuracy(rec, x) for rec in once], 1) if oneshot else "trains: no one shot"
                for x in ONESHOT_SPARSITIES[1:]]
        r = seeds_of(res, at_budget(gradual, "")) if gradual else []
        gap = teacher_gaps(res, r)
        rows.append([criterion, scope, reads, *cols, statistic_once(once),
                     cell(accuracy(r)) if gradual else "", cell(gap) if gap else "", cell(holdout(r)) if gradual else "",
                     minutes(r), str(max(len(once), len(r)))])
    return table(["criterion", "compared", "reads", "one shot 50%", "70%", "80%", "90%", "statistic once (s)",
                  "the recipe at 80%, dev", "minus its teacher", "held-out", "minutes per run", "seeds"], rows,
                 "lllrrrrrrrrrr")


def headline_table(res: dict) -> str:
    """The README's table: the teachers, each one pruned once with no training, and the recipe, each
    at the chosen budget, by the criterion and the sparsity (dev and held-out, minus the teacher)."""
    if runs.CHOSEN_BUDGET is None:
        return "not run: the budget study chooses the budget first"
    t = seeds_of(res, "teacher")
    rows = [["dense teacher (fine-tuned, 376 steps)", "0%", cell(accuracy(t)), "", cell(holdout(t)), "", str(len(t))]]
    for label, name in (("one shot by magnitude (no training)", "oneshot-gmp"), ("one shot by oBERT (no training)",
                                                                                  "oneshot-obert")):
        r = seeds_of(res, name)
        held = lambda x, s: next(o["holdout_accuracy"] for o in x["oneshot"] if o["sparsity"] == s)
        rows.append([label, "80%", cell([oneshot_accuracy(x, 0.8) for x in r]),
                     cell([oneshot_accuracy(x, 0.8) - oneshot_accuracy(x, 0.0) for x in r]), cell([held(x, 0.8) for x in r]),
                     cell([held(x, 0.8) - held(x, 0.0) for x in r]), str(len(r))])
    for p, criteria in (("80", ("gmp", "movement", "wanda", "obert")), ("90", ("gmp", "obert"))):
        for c in criteria:
            name = at_budget(f"{c}{p}", "")
            r = seeds_of(res, name)
            label = {"gmp": "the recipe, GMP (magnitude)", "movement": "the recipe with movement",
                     "wanda": "the recipe with Wanda", "obert": "the recipe with oBERT"}[c]
            rows.append([f"{label}, {runs.CHOSEN_BUDGET * 376} steps", f"{p}%", cell(accuracy(r)),
                         cell(teacher_gaps(res, r)), cell(holdout(r)), cell(gaps(res, name, "holdout_metric")),
                         str(len(r))])
    return table(["SST-2, all-MiniLM-L6-v2 (22M), 2 CPU cores", "encoder sparsity", "dev accuracy", "minus its teacher",
                  "held-out accuracy", "minus its teacher", "seeds"], rows, "lrrrrrr")


def first_cut_table(res: dict) -> str:
    """evidence/first_cut.py: the recipe's first cut (30% of every matrix after its 50 dense steps) by
    four criteria, the student's dev accuracy right after and after 100 more steps of the recipe."""
    records = seeds_of(res, "first-cut")
    rows = [["(before the cut: 50 dense steps)", "", cell([r["accuracy_before_cut"] for r in records]), "", "", ""]]
    for name in ("movement", "magnitude", "at random", "largest first"):
        got = [r["criteria"][name] for r in records if name in r.get("criteria", {})]
        rows.append([name, "30% of every matrix", cell([g["right_after"] for g in got]),
                     cell([g["after_training"] for g in got]),
                     cell([100 * g["share_of_largest_1pct_cut"] for g in got], 0), str(len(got))])
    return table(["the first cut by", "cut", "dev accuracy right after", "after 100 more steps",
                  "% of the largest 1% of weights cut", "seeds"], rows, "llrrrr")


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
    return text + (f" ({len(ratios)} seed{'s' * (len(ratios) > 1)})" if len(ratios) != SEEDS else "")


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
        if line.startswith("#") or len(line) < 90 or line.startswith(("prune-lm", "ratio", "measurement")) \
                or re.match(r"\w+ (train|validation): read \d+ examples? from ", line):     # data.py's, not a row
            continue
        if line[84] != " ":
            raise ValueError(f"{path.name}: a label longer than bench.py's 84 columns: {line[:90]!r}")
        label, (ours, ref, ratio, *target) = line[:84].rstrip(), line[84:].split()
        rows.append([label, *["" if v == "nan" else v for v in (ours, ref, ratio)], " ".join(target)])
    return table(["measurement", "ours", "reference", "ratio", "target"], rows, "lrrrl")


def read_inference(path: Path) -> tuple[list[dict], dict]:
    """sparse.py's output: its rows as dicts (by its header), and {model: (MB, MB after zlib)}."""
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    table_lines = [l for l in lines if not l.startswith("#")]
    head = table_lines[0].split("\t")                  # the first line is the header ("model" is also a folder)
    rows = [dict(zip(head, l.split("\t"))) for l in table_lines[1:]]
    storage = [l.removeprefix("# storage: ").split("\t") for l in lines if l.startswith("# storage: ")]
    return rows, {name: (mb, packed) for name, mb, packed in storage[1:]}


def inference_table(path: Path, oneshot: dict | None) -> str:
    """What sparsity buys at inference on this CPU: per exported model its dev accuracy (the one-shot
    run's), and at each batch size the forward's speed-up over dense routed per matrix (sparse.py's
    "fastest per matrix": a sparse kernel where it beat dense by 5%), with every Linear through CSR
    and through SparseProp, and which kernel each matrix took; the outputs' largest difference from
    dense and the file's size. A model of a built-in shape with random weights (sparse.py --random) has
    no accuracy."""
    rows, sizes = read_inference(path)
    accuracy_at = {f"oneshot-{r['sparsity']:g}": r["accuracy"] for r in (oneshot or {}).get("oneshot", [])}
    accuracy_at["model"] = next((r["accuracy"] for r in (oneshot or {}).get("oneshot", []) if r["sparsity"] == 0), None)
    batches = sorted({int(r["batch"]) for r in rows})
    variants = (("fastest per matrix", "routed"), ("all csr", "all CSR"), ("all sparseprop", "all SparseProp"),
                ("all tiled", "all tiled (ours)"))
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {(r["kernels"], int(r["batch"])): r for r in rows if r["model"] == model}
        first = next(iter(mine.values()))
        acc = accuracy_at.get(model)
        cells = []
        for b in batches:
            cells += [mine[(k, b)]["speed-up"] if (k, b) in mine else "" for k, _ in variants]
            cells.append(mine[("fastest per matrix", b)]["matrices"] if ("fastest per matrix", b) in mine else "")
        out.append([model if model != "model" else "the dense teacher", f"{float(first['encoder sparsity']):.0%}",
                    f"{acc:.2f}" if acc is not None else "", *cells,
                    f"{max(float(r['max |diff|']) for r in mine.values()):.0e}", *sizes.get(model, ("", ""))])
    head = [f"{label}, batch {b}" for b in batches for label in [v for _, v in variants] + ["kernels routed"]]
    return table(["model", "encoder sparsity", "dev accuracy", *head, "max abs diff from dense", "MB", "MB after zlib"],
                 out, "lrr" + "rrrrl" * len(batches) + "rrr")


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


PAPER_ROWS = [   # (run, what it is): evidence/paper_tasks.py's runs, in the order the table shows them
    ("csqa-teacher-lr1e-05", "dense teacher, lr 1e-5 (the recipe's), 5 epochs"),
    ("csqa-teacher-lr5e-05", "dense teacher, lr 5e-5, 5 epochs"),
    ("csqa-gmp80", "the recipe (GMP), 10 epochs"), ("csqa-gmp90", "the recipe (GMP), 10 epochs"),
    ("csqa-obert80", "the recipe with oBERT (1024 gradients)"),
    ("csqa-cubic80", "guideline 2 against: naive cubic from 0%"),
    ("csqa-t1-80", "guideline 3 against: KD at T = 1"), ("csqa-nokd80", "guideline 3 against: no KD"),
    ("csqa-embhead80", "guideline 1 against: embeddings and head pruned too"),
    ("winogrande-teacher-lr1e-05", "dense teacher, lr 1e-5 (the recipe's), 2 epochs"),
    ("winogrande-teacher-lr5e-05", "dense teacher, lr 5e-5, 2 epochs"),
    ("winogrande-gmp80", "the recipe (GMP), 2 epochs")]


def paper_table(paper: dict) -> str:
    """evidence/paper_tasks.py's runs (one seed, on a GPU): each run's dev accuracy and, for a
    student, its difference from the teacher it distilled from (a run without KD: from its task's
    better teacher, the one the others distilled from). A run stopped at the deadline shows the
    accuracy and sparsity after its last pruning cycle; one that failed, its exit code."""
    best = {}
    for name, r in paper.items():
        task = name.split("-")[0]
        if "-teacher-" in name and r.get("finished"):
            best[task] = max(best.get(task, -1.0), r["metric"]["accuracy"])
    rows = []
    for name, what in PAPER_ROWS:
        if name not in paper:
            continue
        r, task = paper[name], name.split("-")[0]
        if r.get("finished"):
            acc, sparsity, note = r["metric"]["accuracy"], f"{r['sparsity']['encoder']:.0%}", ""
        elif not r.get("stopped_at_deadline"):         # it ended on its own, without results: it failed
            acc, sparsity, note = None, "", f"failed (exit {r.get('exit_code')})"
        elif r.get("cycle_evals"):                     # stopped: where its last pruning cycle left it
            last = r["cycle_evals"][-1]
            acc, sparsity, note = last["accuracy"], f"{last['sparsity']:.0%}", f" (stopped at step {last['step']})"
        else:
            acc, sparsity, note = None, "", "stopped before its first pruning cycle"
        teacher = (r.get("teacher_metric") or {}).get("accuracy", best.get(task))
        student = "-teacher-" not in name
        rows.append([{"csqa": "CommonsenseQA", "winogrande": "WinoGrande"}[task], what, sparsity,
                     note if acc is None else f"{acc:.2f}{note}",
                     f"{acc - teacher:+.2f}" if student and acc is not None and teacher is not None else "",
                     f"{r['command_seconds'] / 60:.1f}"])
    if not rows:
        return "(no runs of evidence/paper_tasks.py yet)"
    return table(["task", "run (seed 0, MiniLM-L6, bf16 autocast on one H200)", "encoder sparsity", "dev accuracy",
                  "minus its teacher", "minutes (sharing the GPU)"], rows, "llrrrr")


def render(folder: Path = RESULTS) -> dict[str, str]:
    """{table name: markdown} for every table the README carries."""
    every, old = load(folder), load(folder / "v1")        # this miniature (and the GPU's); the first one
    res = {n: r for n, r in every.items() if not n.startswith("paper-")}
    paper = {n.removeprefix("paper-"): r for n, r in every.items() if n.startswith("paper-")}   # paper_tasks.py
    out = {"cost-bert-base": cost_table("bert-base-uncased"), "cost-roberta-large": cost_table("roberta-large"),
           "budget": budget_table(res), "sst2": chosen_table(res), "guidelines": guidelines_table(res),
           "short-budget": short_budget_table(old), "oneshot": oneshot_table(old), "criteria": criteria_table(every), "first-cut": first_cut_table(every), "headline": headline_table(every), "wall": wall_table(old),
           "softmax": softmax_table(res), "compute": compute_table(res),
           "paper-tasks": paper_table(paper)}
    for name in ("bench-cpu", "bench-cpu-sparse"):
        if (folder / f"{name}.txt").is_file():
            out[name] = bench_table(folder / f"{name}.txt")
    if (folder / "inference-cpu.txt").is_file():
        out["inference"] = inference_table(folder / "inference-cpu.txt", res.get("oneshot-obert-export-s0"))
    return out


def paste(readme: str, tables: dict[str, str]) -> str:
    """readme with every marked table replaced by its rendering (unknown names are an error)."""
    def replace(m):
        if m["name"] not in tables:
            raise KeyError(f"the README marks a table {m['name']!r} that evidence/table.py does not make")
        return m.group(1) + tables[m["name"]] + "\n" + m.group(4)
    return MARK.sub(replace, readme)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(RESULTS), help="folder of results files (default evidence/results)")
    p.add_argument("--write", metavar="README", nargs="+", help="paste the tables between the markers of each file")
    p.add_argument("--check", metavar="README", nargs="+", help="exit 1 if a file's marked tables differ")
    args = p.parse_args(argv)
    with files.command("table.py"):
        if args.write and args.check:
            raise files.Refused("--write changes the README's tables and --check compares them; pass one of them")
        folder = Path(args.results)
        if not folder.is_dir() or not any(folder.glob("*.json")):     # tables of "not run" are no result
            raise files.Refused(f"--results {folder} " + ("holds no results files (NAME.json)" if folder.is_dir() else
                                "is not a folder") + "; pass the folder that evidence/runs.py writes them to")
        flag, paths = ("--write", args.write) if args.write else ("--check", args.check or [])
        befores = {}
        for path in map(Path, paths):                  # every file checked before any is written
            if not path.is_file():
                raise files.Refused(f"{flag} {path} is not a file; pass the README that carries the tables' markers")
            befores[path] = path.read_text()
            if not MARK.search(befores[path]):           # nothing to compare is no pass
                raise files.Refused(f"{flag} {path} has no table markers (<!-- table: NAME --> ... <!-- /table -->); "
                                    f"pass the README that carries them")
        try:
            tables = render(folder)
        except KeyError as e:                       # a results file of the right name without what a table reads
            raise files.Refused(f"a results file in {folder} lacks {e.args[0]!r}, which the tables read; run the run "
                                f"that wrote it again (evidence/runs.py --only NAME)") from None
        except ValueError as e:                     # bench.py's output in columns it does not print
            raise files.Refused(f"{e}; make that file again with the command at its top") from None
        if not paths:
            for name, text in tables.items():
                print(f"<!-- table: {name} -->\n{text}\n<!-- /table -->\n")
            return
        afters = {}
        for path, before in befores.items():
            try:
                afters[path] = paste(before, tables)
            except KeyError as e:            # a marker of a table this script does not make
                raise files.Refused(f"{path}: {e.args[0]}; remove the marker, or add the table here") from None
        differ = [str(path) for path in afters if afters[path] != befores[path]]
        for path, after in afters.items():
            if args.write:
                files.write_result(path, after, files.README, flag="--write")
                print(f"{path}: {len(MARK.findall(after))} tables written", flush=True)
        if args.check and differ:
            sys.exit(f"{', '.join(differ)}: tables differ from evidence/table.py's; run: python evidence/table.py "
                     f"--write {' '.join(differ)}")


if __name__ == "__main__":
    main()
