"""
The files a command writes beside train.py's run folder, and the promise they keep: a user's file is
never lost, and a failed or partial run never replaces a finished result.

train.py owns its --out-dir through run.json (rundir.py). The other commands write single files:
sparse.py its --out timings, evidence/runs.py and evidence/paper_tasks.py the results records,
evidence/softmax.py and evidence/first_cut.py their --out, evidence/table.py --write the README's
tables, evidence/figures.py the PNGs in evidence/figures. One rule holds for all of them (`write_result`):

  1. A command creates its file, or replaces one only if that file is recognisably this project's
     own, of the same kind (a `Kind`: what its first bytes or its keys say). Anything else there,
     a symbolic link included, is a user's: refused in one sentence, nothing written.
  2. Whether the path can be written at all is checked before the work starts (`check_target`): a
     folder, a missing parent folder, a parent that is a file, a dangling symbolic link, a folder
     without write permission. Minutes of timing are never lost to a path that was wrong from the
     start.
  3. The write is atomic (a temporary name, then a rename): a kill leaves the old file or the new
     one, and a write that fails (a full disk) leaves no *.tmp behind and says in one sentence the
     file, the reason and the space left (`write_failed`). rundir.py's writes are these too.

A text result begins with the command, commit and machine that made it (`provenance`): how
sparse.py's timings are known as its own. Expected errors are `CommandError`s (a refusal is `Refused`, a failed write `WriteFailed`); each
command's entry point runs inside `command(name)`, which turns them into one sentence on stderr and
exit code 2, never a traceback. This file imports nothing of the project's.
"""
import contextlib
import errno
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

AGAIN = "then run the same command again"   # the fix after a failed write, outside a train.py run
MAX_READ = 64 << 20                          # a file larger than this is no record of ours: not read to see


class CommandError(Exception):
    """An expected error of a command: one sentence, exit code 2 (`command`)."""


class Refused(CommandError):
    """A file a command will not write: a user's file, or a path that cannot be written."""


class WriteFailed(CommandError):
    """A write that failed (a full disk): one sentence, no *.tmp left behind (rundir.RunError)."""


@contextlib.contextmanager
def command(name: str, *expected):
    """A command's entry point: inside it a CommandError, or one of the `expected` exception types
    (a DataError, a CheckpointError), becomes `name: sentence.` on stderr and exit code 2."""
    try:
        yield
    except (CommandError, *expected) as e:
        text = str(e).strip()
        print(f"{name}: {text if text.endswith('.') else text + '.'}", file=sys.stderr, flush=True)
        sys.exit(2)


# -----------------------------------------------------------------------------
# What is ours: each kind of file a command replaces, recognised by its content.

@dataclass(frozen=True)
class Kind:
    what: str                               # for the sentences: "sparse.py's timings (...)"
    ours: Callable[[bytes], bool]           # whether an existing file's bytes are ours, of this kind


def json_with(*keys) -> Callable[[bytes], bool]:
    """A JSON object holding these keys."""
    def ours(raw: bytes) -> bool:
        try:
            record = json.loads(raw)
        except ValueError:
            return False
        return isinstance(record, dict) and set(keys) <= record.keys()
    return ours


TIMINGS = Kind("sparse.py's timings (a file beginning '# command: python sparse.py')",
               lambda raw: raw.startswith(b"# command: python sparse.py"))
RECORD = Kind("a results record of evidence/runs.py (JSON with its name, command and commit)",
              json_with("name", "command", "commit"))
SOFTMAX = Kind("evidence/softmax.py's record (JSON with its temperatures)",
               json_with("temperatures", "dev_mean_top_probability"))
FIRST_CUT = Kind("evidence/first_cut.py's record (JSON with its criteria and cut)",
                 json_with("criteria", "cut", "dense_steps"))
README = Kind("a file carrying evidence/table.py's markers (<!-- table: NAME -->)",
              lambda raw: b"<!-- table: " in raw and b"<!-- /table -->" in raw)
FIGURE = Kind("a PNG image", lambda raw: raw.startswith(b"\x89PNG\r\n\x1a\n"))


def is_ours(path: Path, kind: Kind) -> bool:
    """Whether the regular file at `path` is this project's own, of this kind."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_READ:
            return False
        return kind.ours(path.read_bytes())
    except OSError:
        return False


# -----------------------------------------------------------------------------
# Before the work: can the path be written, and may its file be replaced?

def check_target(path, kind: Kind, flag: str = "--out"):
    """Refused, in one sentence, unless `path` can be written and holds nothing or a file of ours of
    `kind`. Nothing is written: commands call it before their work (write_result calls it again)."""
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.is_symlink():                   # replacing a link would lose it; writing through it, reach anywhere
        where = os.readlink(path)
        raise Refused(f"{name} is a symbolic link to {where}" + ("" if path.exists() else ", which does not exist")
                      + "; pass the path of the file itself, or of a new one")
    if path.is_dir():
        raise Refused(f"{name} is a folder; pass the path of a file to write, such as {path / 'results.txt'}")
    parent = path.absolute().parent
    nearest = next(p for p in (parent, *parent.parents) if p.exists() or p.is_symlink())
    if not nearest.is_dir():
        raise Refused(f"{name} cannot be written: {nearest} is not a folder ("
                      + ("a symbolic link to nothing" if nearest.is_symlink() and not nearest.exists() else "a file")
                      + "); pass a path inside a folder")
    if nearest != parent:
        raise Refused(f"{name} cannot be written: its folder {parent} does not exist; create it, or pass a path "
                      f"in an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Refused(f"{name} cannot be written: {parent} is not writable; pass a path in a folder you can write to")
    if path.exists() and not is_ours(path, kind):
        raise Refused(f"{name} holds a file that is not {kind.what}; this command replaces only its own, so move "
                      f"that file away, or pass a new file name")


def write_result(path, content, kind: Kind, flag: str = "--out", fix: str = AGAIN):
    """Write `content` (text, bytes, or a function that writes a given path) to `path` under the rule:
    checked (`check_target`: the file may have appeared since the command started), then atomic."""
    path = Path(path)
    check_target(path, kind, flag)
    if callable(content):
        write = content
    else:
        raw = content.encode() if isinstance(content, str) else content
        write = lambda tmp: tmp.write_bytes(raw)              # noqa: E731
    atomic(path, write, fix)


# -----------------------------------------------------------------------------
# Writing: atomically, and saying so when the disk is full.

def write_failed(path: Path, e: Exception, fix: str = AGAIN) -> WriteFailed:
    """The one sentence for a write that failed: the file, the reason, the space left, the fix (in a
    train.py run: free some space, then --resume; elsewhere: run the same command again)."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.0f} MB are free there"
    except OSError:
        free = "its disk cannot be read"
    full = (e.errno in (errno.ENOSPC, errno.EDQUOT) if isinstance(e, OSError)
            else any(t in str(e) for t in ("write failed", "No space left")))   # torch.save's RuntimeError
    why = "the disk is full" if full else f"{type(e).__name__}: {str(e)[:80]}"
    return WriteFailed(f"writing {path} failed ({why}; {free}); free some space, {fix}")


def atomic(path: Path, write, fix: str = AGAIN):
    """write(tmp) to a temporary name, then rename it to `path`: a kill leaves the old file or the new
    one. If the write fails (a full disk), the temporary file goes too and WriteFailed says so."""
    tmp = Path(str(path) + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:         # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e, fix) from None


def write_atomic(path: Path, text: str, fix: str = AGAIN):
    atomic(path, lambda tmp: tmp.write_text(text), fix)


# -----------------------------------------------------------------------------
# Whose a text result is: the lines it begins with (TIMINGS knows sparse.py's by the first).

def provenance(script: str, argv, seed: str) -> list[str]:
    """The command, the commit, the seed and the machine, as evidence/results' text files begin: what
    makes such a file recognisably ours, and tells how to make it again."""
    import shlex
    import subprocess
    root = Path(__file__).resolve().parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py"], cwd=root,
                           capture_output=True, text=True).stdout      # the code only: not a results file
    return [f"# command: python {script} {shlex.join(argv)}",
            f"# commit: {commit.strip() or 'unknown'}{' (with uncommitted changes)' if dirty.strip() else ''}",
            f"# seed: {seed}",
            f"# machine: {machine()}"]


def machine() -> str:
    """The CPU, its cores, torch and its threads, python and the system: every record's "machine"."""
    import platform
    import torch
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), cpu)
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}, {platform.system()}")
