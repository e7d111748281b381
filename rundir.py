"""
The run folder: what a run writes into --out-dir, and the promises a user relies on.

A fine-tuning run can take days; this file is what makes it safe to stop, resume and rerun.
The promises, each with its tests in tests/test_safety.py and tests/test_defects.py:

  1. A user's files are never lost. Every file a run writes is recorded in its run.json before
     it is written (`claim`); --overwrite deletes only those, and refuses when anything else is
     there, a symbolic link included; nothing is deleted before every input has been checked
     (cli.py) and the folder is locked.
  2. Every write is atomic (a temporary name, then a rename): a kill leaves the old file or the
     new one, never half of one, and the leftovers (*.tmp) are cleaned at the next start.
  3. --resume is bit-identical to a run that was never interrupted (on a CPU): a checkpoint holds
     everything the next step reads (model, masks, AdamW's moments, the step, the RNG states,
     the sparse kernels' choices), and schedule.py's schedules are pure functions of the step.
  4. A folder holds one run: run.json records its run-defining arguments and the fingerprints of
     its data, model and teacher; a different run, a rerun without --resume or --overwrite, or a
     resume on changed files is refused with one sentence.
  5. One process writes into a folder at a time: it holds OUT/train.lock (created atomically,
     released at exit; one left by a killed process is detected and taken over, saying so).
  6. A write that fails (a full disk) says so in one sentence and leaves no *.tmp behind.

How it connects: cli.py calls `check_out_dir` with the other checks, before anything is
written; train.py calls `prepare_out_dir` once they pass, `save_checkpoint` / `load_checkpoint`
in its loop, and `save_model` for the exported folders (model.py writes the weights, this file
adds the tokenizer files, so that the folder is complete for `transformers`). Its atomic writes are
files.py's, which every other command's writes use too.
"""
import fcntl
import hashlib
import json
import os
import random
import shutil
import socket
from pathlib import Path

import torch

import files

# The flags that do NOT define a run: a folder's run.json must match every other argument
# (so a new flag defines the run unless it is listed here).
NOT_RUN_DEFINING = ("resume", "overwrite", "out_dir", "device", "compile", "log_every", "checkpoint_every",
                    "stop_after", "keep_checkpoints", "sparse_backprop", "given", "notes")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
# What a run of an older train.py wrote, by name: only for folders whose run.json predates the list
# of written files (every run now records each file in run.json before it writes it).
LEGACY_FILES = {(): ("run.json", "results.json", "sparsity_report.txt"),
                ("model",): ("config.json", "model.safetensors") + TOKENIZER_FILES,
                ("teacher",): ("checkpoint.pt", "log.jsonl"),
                ("teacher", "model"): ("config.json", "model.safetensors") + TOKENIZER_FILES,
                ("student",): ("checkpoint.pt", "log.jsonl")}
RESUME_FIX = "then continue with --resume"  # the fix for a write that failed during a run (`write_failed`)
WRITTEN_BY = "prune-lm train.py"     # run.json's mark: this folder holds a run of ours
LOCK = "train.lock"                  # held by the one process that writes into the folder


class UsageError(Exception):
    """Bad input found before anything is written: one sentence, exit code 2 (train.py's `fail`)."""


# A write that failed during a run (a full disk): one sentence, exit code 2, no *.tmp left behind. It is
# files.py's WriteFailed, which every command's writes raise: one class, whoever writes.
RunError = files.WriteFailed


def run_defining(arguments: dict) -> dict:
    return {k: v for k, v in arguments.items() if k not in NOT_RUN_DEFINING}


# -----------------------------------------------------------------------------
# What the folder holds, and whose it is.

def read_run_json(out: Path) -> dict | None:
    """The record of the run that `out` holds (its arguments, fingerprints, the files it wrote), or
    None if it holds none of ours."""
    try:
        before = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    legacy = isinstance(before, dict) and {"task", "sparsity", "method", "out_dir"} <= before.keys()
    return before if isinstance(before, dict) and (before.get("written_by") == WRITTEN_BY or legacy) else None


def files_in(out: Path, before: dict | None) -> tuple[list, list]:
    """Everything under `out`, as paths relative to it: (what the run of run.json wrote, anything
    else). Ours is what run.json lists as written (and the *.tmp twins of those); a folder of an
    older version without that list is read by file names. A symbolic link is never ours: deleting
    or writing through it could reach a user's files. The lock file is neither: `take_lock` owns it."""
    written = set(before["written"]) if before and isinstance(before.get("written"), list) else None
    ours, foreign = [], []
    for folder, dirs, names in os.walk(out):
        rel = Path(folder).relative_to(out)
        foreign += [rel / name for name in dirs if (Path(folder) / name).is_symlink()]
        for name in names:
            path = rel / name
            if path == Path(LOCK):
                continue
            plain = str(path).removesuffix(".tmp")
            if written is not None:
                mine = plain in written or plain == "run.json"
            else:
                mine = name.removesuffix(".tmp") in LEGACY_FILES.get(rel.parts, ())
            (ours if mine and not (Path(folder) / name).is_symlink() else foreign).append(path)
    return sorted(ours), sorted(foreign)


def differences(before: dict, args) -> list[str]:
    now = json.loads(json.dumps(run_defining(vars(args))))            # as run.json holds them: lists, not tuples
    return [f"--{k.replace('_', '-')} {before.get(k)} there, {now[k]} now" for k in now if before.get(k) != now[k]]


def check_out_dir(args):
    """What --out-dir holds decides what this run may do to it. Nothing is written or deleted here
    (called by cli.py's checks, and again by `prepare_out_dir` once the folder is locked)."""
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {out} is a file; pass a folder (new, empty, or an earlier run's).")
    if out.is_symlink() and not out.exists():       # no folder can be made at a dangling link's name
        raise UsageError(f"--out-dir {out} is a symbolic link to {os.readlink(out)}, which does not exist; create "
                         f"that folder, or pass another --out-dir.")
    check_lock(out)
    before = read_run_json(out)
    ours, foreign = files_in(out, before) if out.is_dir() else ([], [])
    if before is None:
        if (out / "run.json").is_file():    # which files are the run's is unknown: nothing may be deleted or resumed
            raise UsageError(f"{out / 'run.json'} is damaged (it is not the JSON record that train.py writes), so "
                             f"which files there are the run's is unknown; restore it from a backup, or pass another "
                             f"--out-dir.")
        if foreign or [p for p in ours if p.suffix != ".tmp"]:
            raise UsageError(f"--out-dir {out} holds files that train.py did not write (such as {(foreign + ours)[0]}); "
                             f"pass a new or empty folder.")
        if args.resume:
            raise UsageError(f"--resume continues a run, but {out} holds none; drop --resume to start it there.")
        return                                        # new, empty, or a run killed before its run.json: fresh
    if args.overwrite:
        if foreign:
            raise UsageError(f"--overwrite deletes only what train.py wrote, but {out} also holds {foreign[0]}; "
                             f"move it out, or pass another --out-dir.")
        for flag, path in (("--model", args.model_folder), ("--teacher", args.teacher), ("--data-dir", args.data_dir)):
            if path and Path(path).resolve().is_relative_to(out.resolve()):
                raise UsageError(f"--overwrite would delete {flag} {path}, which lies inside {out}; copy it out "
                                 f"first, or pass another --out-dir.")
        return
    changed = differences(before, args)
    if changed:
        fix = ("pass that run's arguments to resume it, or another --out-dir" if args.resume else
               "pass --overwrite to replace it, or another --out-dir" if args.oneshot else
               "pass --resume with that run's arguments to continue it, --overwrite to replace it, or another --out-dir")
        raise UsageError(f"{out} holds a different run ({'; '.join(changed[:3])}); {fix}.")
    if not args.resume and [p for p in ours if p != Path("run.json")]:
        state = "finished" if (out / "results.json").is_file() else "not finished"
        if args.oneshot:                              # nothing to resume: one-shot keeps no checkpoint
            raise UsageError(f"{out} already holds this one-shot run ({state}); pass --overwrite to run it again, or "
                             f"another --out-dir.")
        raise UsageError(f"{out} already holds this run ({state}); pass --resume to continue it, or --overwrite "
                         f"to start it again.")


def check_fingerprints(before: dict, now: dict, out: Path):
    """--resume continues on the same data, model and teacher: their fingerprints must equal run.json's
    (a folder written before fingerprints were recorded has none to compare)."""
    for what, value in now.items():
        then = (before.get("fingerprints") or {}).get(what, value)
        if then != value:
            raise UsageError(f"--resume would continue {out}'s run on different {what} than it started with "
                             f"(fingerprint {value} now, {then} then); pass the same files, or --overwrite to "
                             f"start again.")


def fingerprint(paths) -> str:
    """SHA-256 (first 16 hex digits) of these files' names and contents, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_files(folder) -> list[Path]:
    """The files of a model folder that decide what it computes: config, weights, tokenizer."""
    names = ("config.json", "model.safetensors", "pytorch_model.bin") + TOKENIZER_FILES
    return [Path(folder) / n for n in names if (Path(folder) / n).is_file()]


def fingerprints(args, data_fingerprint: str) -> dict:
    """What run.json records so that --resume refuses changed inputs: the data (data.fingerprint of
    its examples), the model and the teacher (their files)."""
    out = {"data": data_fingerprint, "model": fingerprint(model_files(args.model_folder))}
    if args.teacher:
        out["teacher"] = fingerprint(model_files(args.teacher))
    return out


def interrupted(out: Path) -> str:
    """Ctrl-C's one line: the newest checkpoint of the run, and how to continue from it."""
    for phase in ("student", "teacher"):
        if (out / phase / "checkpoint.pt").is_file():
            step = read_checkpoint(out / phase / "checkpoint.pt", mmap=True)["step"]
            return (f"interrupted; the last checkpoint is {out / phase / 'checkpoint.pt'} ({phase} step {step}): "
                    f"continue with the same command and --resume.")
    return f"interrupted before the first checkpoint; start again with --overwrite (or --resume: {out} keeps the run)."


# -----------------------------------------------------------------------------
# One run per folder: the lock.

def process_start(pid: int) -> str | None:
    """When process pid started (field 22 of /proc/pid/stat), to tell it from a later one with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lock_holder(out: Path) -> dict | None:
    """Who holds out's lock: {"pid", "host", "started"}, {} if unreadable, None if there is no lock."""
    try:
        holder = json.loads((out / LOCK).read_text())
        return holder if isinstance(holder, dict) else {}
    except (FileNotFoundError, NotADirectoryError):    # no lock; or `out` is no folder (check_out_dir says so)
        return None
    except (OSError, ValueError):
        return {}                        # being written, or damaged: assume it is held


def is_stale(holder: dict) -> bool:
    """A lock of a process of this machine that no longer runs (or a later process reusing its pid)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return holder.get("started") is not None and process_start(holder["pid"]) != holder.get("started")


def check_lock(out: Path):
    """Refuse a folder locked by another live process (this one's own lock, taken by
    `prepare_out_dir`, is no obstacle to checking the folder again under it)."""
    holder = lock_holder(out)
    if holder is not None and holder.get("pid") != os.getpid() and not is_stale(holder):
        where = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "a process"
        raise UsageError(f"{out} is in use by another train.py ({where}); wait for it to finish, or pass another "
                         f"--out-dir (if no run uses it, delete {out / LOCK}).")


def take_lock(out: Path) -> Path:
    """Create out/train.lock atomically (O_EXCL) with this process's pid, or refuse: one run writes
    into a folder at a time. A lock left by a process that died (kill -9) is reported and taken over."""
    lock = out / LOCK
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = lock_holder(out)
            if holder is None:
                continue                                    # released in between: try again
            if holder.get("pid") == os.getpid():            # never released by this process: a bug, not a wait
                raise RunError(f"{lock} is held by this very process (pid {os.getpid()}), left by an earlier run in it; "
                               f"delete it, then run the same command again")
            if not is_stale(holder):
                check_lock(out)                             # raises, naming the holder
            remove_stale_lock(lock)                         # then try to create it again
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid())}, f)
    except BaseException:                           # a full disk: no empty lock that no one could tell stale
        lock.unlink(missing_ok=True)
        raise
    return lock


def remove_stale_lock(lock: Path):
    """Delete a lock left by a dead process, if it is still that one. Two runs may both see the dead
    holder: unlinking without care, the second would delete the lock the first has just created.
    So each takes an flock on the stale file (takers queue there, one at a time) and, holding it,
    checks that the name still leads to that very file and that the file still names a dead
    process; only then does it go. A later taker finds the name gone or leading to a new lock,
    deletes nothing, and creates its own with O_EXCL or is refused by the new holder."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return                                              # gone already: the caller tries O_EXCL again
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)                      # released when fd is closed, or if this process dies
        try:
            same_file = os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            same_file = False
        try:                                                # this file's holder (a lock is a few bytes)
            holder = json.loads(os.read(fd, 1 << 16))
        except ValueError:
            holder = {}                                     # being written: its creator lives
        if same_file and isinstance(holder, dict) and is_stale(holder):
            print(f"train.py: {lock} was left by process {holder['pid']}, which no longer runs; taking it over",
                  flush=True)
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def release_lock(lock: Path | None):
    """Remove the lock if this process holds it."""
    if lock is not None and (lock_holder(lock.parent) or {}).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def prepare_out_dir(args, rt, fingerprints: dict) -> Path | None:
    """Rank 0: lock the folder, check it again under the lock (another run may have written there since
    cli.py looked), then --overwrite deletes the earlier run's files (only those, and only now, after
    every input has been checked), the leftovers of an interrupted write go, and run.json records the
    arguments, the fingerprints and the files written so far (a resumed run keeps its own record).
    Returns the lock, which train.py releases at exit; the other ranks wait and get None."""
    out, lock, error = Path(args.out_dir), None, None
    if rt.rank == 0:
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = take_lock(out)
            check_out_dir(args)
            before = read_run_json(out)
            if args.resume and before is not None:
                check_fingerprints(before, fingerprints, out)
            start_folder(out, args, before, fingerprints)
        except BaseException as e:        # the folder stays usable: unlocked, never half-deleted
            release_lock(lock)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            if not isinstance(e, (UsageError, RunError, OSError)):
                raise                     # Ctrl-C: train.py says it in one line
            error, lock = not_prepared(out, e), None
    if rt.distributed:               # every rank stops if rank 0 could not take the folder
        shared = [error]
        torch.distributed.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error:
        raise UsageError(error)
    return lock


def not_prepared(out: Path, e: Exception) -> str:
    """prepare_out_dir's one sentence: a check's (UsageError), a failed write's (RunError), or that of a
    folder that cannot be made, locked or emptied (OSError: a permission, a full disk). A path that
    cannot be a folder at all (a dangling symbolic link, a file above it) was refused by cli.py's
    checks already (check_out_dir, check_disk)."""
    if isinstance(e, UsageError):
        return str(e)
    if isinstance(e, RunError):
        return f"{e}."
    return (f"--out-dir {out} cannot be written ({e}); fix its permissions or free some space, then run the same "
            f"command again.")


def start_folder(out: Path, args, before: dict | None, fingerprints: dict):
    """Under the lock: delete what --overwrite replaces and the leftovers of interrupted writes, then
    write (or, on --resume, keep) run.json. If a deletion or the write fails (OSError, RunError), the
    old run.json is still there, listing what is left to delete: the same command can be run again."""
    ours, _ = files_in(out, before)
    for rel in ours:
        if rel == Path("run.json"):
            continue                                # replaced atomically below, not deleted
        if args.overwrite or rel.suffix == ".tmp":
            (out / rel).unlink()
    if args.overwrite and before is not None:      # emptied folders of ours, deepest first
        folders = {Path(w.rstrip("/")) for w in before.get("written", []) if w.endswith("/")}
        folders |= {p.parent for p in ours if p.parent != Path(".")}
        for rel in sorted(folders, key=lambda p: -len(p.parts)):
            if (out / rel).is_dir() and not (out / rel).is_symlink() and not any((out / rel).iterdir()):
                (out / rel).rmdir()
    if args.overwrite or before is None or not args.resume:   # a new run (the folder may hold a dead one's run.json)
        record = {"written_by": WRITTEN_BY, **vars(args), "fingerprints": fingerprints, "written": ["run.json"]}
    else:                            # --resume: its record, with the list of files an older version never kept
        record = dict(before)
        record.setdefault("written", [str(p) for p in ours if p.suffix != ".tmp"] + ["run.json"])
        record.setdefault("fingerprints", fingerprints)
    write_atomic(out / "run.json", json.dumps(record, indent=1), fix="then run the same command again")


def claim(out: Path, *paths: str):
    """Record in run.json, before writing them, the files (and folders, "name/") this run writes
    under `out`: all that a later --overwrite may delete. Rank 0 only."""
    record = json.loads((out / "run.json").read_text())
    new = [p for p in paths if p not in record["written"]]
    if new:
        record["written"] += new
        write_atomic(out / "run.json", json.dumps(record, indent=1))


# -----------------------------------------------------------------------------
# Writing: atomically, and saying so when the disk is full.

def write_failed(path: Path, e: Exception, fix=RESUME_FIX) -> RunError:
    """The one sentence for a write that failed (files.py's): the file, the reason, the space left, the
    fix (in a run: free some space, then --resume; before it starts, `start_folder`: run the same
    command again)."""
    return files.write_failed(path, e, fix)


def atomic(path: Path, write, fix=RESUME_FIX):
    """write(tmp) to a temporary name, then rename it to `path` (files.py's `atomic`): a kill leaves the
    old file or the new one; a failed write leaves no temporary file and raises RunError."""
    files.atomic(path, write, fix)


def write_atomic(path: Path, text: str, fix=RESUME_FIX):
    files.write_atomic(path, text, fix)


def append_line(path: Path, line: str):
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise write_failed(path, e) from None


def save_model(model, source, out: Path, rel: str, fix=RESUME_FIX):
    """OUT/rel: model.py's save_pretrained (config.json and model.safetensors, each written atomically)
    and the tokenizer files of the model it started from: a complete folder for `transformers`."""
    from safetensors import SafetensorError
    folder = out / rel
    tokenizer = [n for n in TOKENIZER_FILES if (Path(source) / n).is_file()]
    claim(out, rel + "/", *[f"{rel}/{n}" for n in ("config.json", "model.safetensors", *tokenizer)])
    try:
        model.save_pretrained(folder)
        for name in tokenizer:
            atomic(folder / name, lambda tmp, name=name: shutil.copy(Path(source) / name, tmp))
    except (OSError, RuntimeError, SafetensorError) as e:
        for tmp in folder.glob("*.tmp"):
            tmp.unlink()
        raise write_failed(folder / "model.safetensors", e, fix) from None


def write_results(out: Path, results: dict, report: str, keep_checkpoints: bool) -> int:
    """The end of a run: sparsity_report.txt, then results.json (last: its presence means the run
    finished), then the checkpoints go, unless they are kept: --keep-checkpoints now, or in run.json
    (a run started with it and resumed without it still keeps them). Returns the bytes freed."""
    keep = keep_checkpoints or (read_run_json(out) or {}).get("keep_checkpoints") is True
    claim(out, "sparsity_report.txt", "results.json")
    write_atomic(out / "sparsity_report.txt", report + "\n")
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    return 0 if keep else delete_checkpoints(out)


def delete_checkpoints(out: Path) -> int:
    """After a successful export: the phases' checkpoints go (unless --keep-checkpoints); bytes freed."""
    freed = 0
    for path in (out / "teacher" / "checkpoint.pt", out / "student" / "checkpoint.pt"):
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


def already_finished(args):
    """--resume on a finished run: nothing to train; say where its results are. Its checkpoints, if a
    kill came between its results.json and their deletion, go now, under the folder's lock (one
    process writes into a folder at a time), unless they are to be kept: --keep-checkpoints now, or
    recorded in its run.json (the run kept them on purpose)."""
    if int(os.environ.get("RANK", "0")) != 0:        # under torchrun: rank 0 speaks and deletes
        return
    out = Path(args.out_dir)
    keep = args.keep_checkpoints or (read_run_json(out) or {}).get("keep_checkpoints") is True
    freed, note, lock = 0, "", None
    if not keep:
        try:
            lock = take_lock(out)
            freed = delete_checkpoints(out)
        except UsageError:                            # another train.py took the folder since cli.py looked
            note = " (its checkpoints are left: another train.py holds the folder)"
        except OSError as e:
            note = f" (its checkpoints could not be deleted: {e.strerror})"
        finally:
            release_lock(lock)
    print(f"{out} holds this run, finished: {out / 'results.json'}"
          + (f" (deleted its checkpoints, {freed / 1e6:.0f} MB)" if freed else note), flush=True)


# -----------------------------------------------------------------------------
# Checkpoints: everything a resumed run needs.

def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path, model, opt, masks, step, args, rt, running=None):
    """Everything a resumed run needs, written atomically (a temporary name, then a rename), by rank 0;
    `running`: a criterion's statistic accumulated over the steps so far (movement's), if any."""
    if rt.rank != 0:
        return
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "masks": masks, "step": step,
             "rng": rng_state(), "args": vars(args), "kernels": kernel_choices(model), "running": running}
    atomic(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path, device="cpu", mmap=False) -> dict:
    """A checkpoint's contents, or UsageError naming the file if it is truncated or not one of ours."""
    try:
        ck = torch.load(path, map_location=device, weights_only=False, mmap=mmap)
        if not {"model", "optimizer", "masks", "step", "rng"} <= set(ck):
            raise KeyError("model, optimizer, masks, step or rng")
        return ck
    except Exception as e:
        raise UsageError(f"{path} is truncated or not a train.py checkpoint ({type(e).__name__}); restore it, or "
                         f"pass --overwrite to start the run again.") from None


def load_checkpoint(path, model, opt, device, running=None):
    """Restore model, optimizer, RNG (and the accumulated statistic into `running`) in place; returns
    (masks, step, the kernel of each Linear)."""
    ck = read_checkpoint(path, device)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    set_rng_state(ck["rng"])
    if running is not None:
        saved = ck.get("running") or {}
        if set(saved) != set(running):
            raise RunError(f"{path} holds no accumulated statistic for the matrices --method "
                           f"{ck['args'].get('method')} prunes; pass --overwrite to start the run again")
        for n, t in running.items():
            t.copy_(saved[n])
    return {n: m.to(device) for n, m in ck["masks"].items()}, ck["step"], ck.get("kernels", {})


def kernel_choices(model) -> dict:
    """Which Linears --sparse-backprop routed through SparseProp's kernels (sparse_backprop.route)."""
    return {f"{n}.weight": "sparse" for n, m in model.named_modules() if vars(m).get("kernel") == "sparseprop"}
