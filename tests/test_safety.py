"""A user's files are never lost, and no run finishes silently wrong (one test per failure seen).

Every refused run must exit 2 with one sentence, and leave the folder it was pointed at
byte-identical: the tests snapshot every file before and compare after.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
import train

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"


def base_args(model, out, *extra):
    return ["--task", "csqa", "--model", str(model), "--data-dir", str(FIX), "--batch-size", "1", "--out-dir", str(out),
            "--epochs", "2", "--sparsity", "0.8", "--no-kd", "--log-every", "5", *extra]


def snapshot(folder: Path) -> dict:
    """Every file under folder -> its bytes (and the folder's own existence)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv, capsys) -> str:
    """Run train.py, expect exit 2 with one line on stderr; return that line."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("train.py: "), err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert_with_vocab):
    """One finished run of base_args, copied by each test that needs one."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train.main(base_args(tiny_bert_with_vocab, out))
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


# 1. --overwrite deletes only what a run wrote ------------------------------------------------------

def user_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


@pytest.mark.parametrize("flags", [["--overwrite"], []])
def test_1_a_folder_that_is_not_a_run_is_never_written_or_deleted(tmp_path, tiny_bert_with_vocab, capsys, flags):
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    assert "did not write" in refused(base_args(tiny_bert_with_vocab, folder, *flags), capsys)
    assert snapshot(folder) == before


def test_1_out_dir_dot_with_overwrite_leaves_the_working_tree(tmp_path, tiny_bert_with_vocab, capsys, monkeypatch):
    tree = user_folder(tmp_path / "tree")
    (tree / "README.md").write_text("# a project\n")
    before = snapshot(tree)
    monkeypatch.chdir(tree)
    refused(base_args(tiny_bert_with_vocab, ".", "--overwrite"), capsys)
    assert snapshot(tree) == before


def test_1_overwrite_refuses_a_run_folder_holding_a_users_file(run_copy, tiny_bert_with_vocab, capsys):
    (run_copy / "notes.txt").write_text("mine\n")
    before = snapshot(run_copy)
    assert "notes.txt" in refused(base_args(tiny_bert_with_vocab, run_copy, "--overwrite"), capsys)
    assert snapshot(run_copy) == before


def test_1_overwrite_replaces_a_run_of_ours(run_copy, tiny_bert_with_vocab):
    train.main(base_args(tiny_bert_with_vocab, run_copy, "--overwrite", "--sparsity", "0.6"))
    assert json.loads((run_copy / "results.json").read_text())["target_sparsity"] == 0.6


# 2. --overwrite deletes nothing before every input is checked -----------------------------------------

def truncated_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return dst


@pytest.mark.parametrize("bad", ["truncated weights", "--batch-size 0"])
def test_2_overwrite_with_bad_input_deletes_nothing(run_copy, tiny_bert_with_vocab, tmp_path, capsys, bad):
    before = snapshot(run_copy)
    if bad == "truncated weights":
        argv = base_args(truncated_model(tiny_bert_with_vocab, tmp_path / "m"), run_copy, "--overwrite")
    else:
        argv = base_args(tiny_bert_with_vocab, run_copy, "--overwrite", "--batch-size", "0")
    refused(argv, capsys)
    assert snapshot(run_copy) == before


# 3. --resume checks that it continues the same run --------------------------------------------------

@pytest.mark.parametrize("change", [["--sparsity", "0.5"], ["--task", "sst2"]])
def test_3_resume_of_a_different_run_is_refused(run_copy, tiny_bert_with_vocab, capsys, change):
    before = snapshot(run_copy)
    line = refused(base_args(tiny_bert_with_vocab, run_copy, "--resume", *change), capsys)
    assert "holds a different run" in line and change[0] in line
    assert snapshot(run_copy) == before


def test_3_resume_of_a_finished_run_says_so_and_changes_nothing(run_copy, tiny_bert_with_vocab, capsys):
    before = snapshot(run_copy)
    train.main(base_args(tiny_bert_with_vocab, run_copy, "--resume"))
    assert "finished" in capsys.readouterr().out and snapshot(run_copy) == before


# 4. non-finite numbers: refused up front, or stopped at once ----------------------------------------

def test_4_temperature_zero_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--temperature", "0"), capsys)
    assert "--temperature" in line and not (tmp_path / "out").exists()


def test_4_a_run_whose_loss_becomes_nan_stops_and_exports_nothing(tmp_path, capsys):
    """Finite but enormous head weights: the logits overflow to inf and the loss is NaN at step 0."""
    from conftest import save_tiny, TINY_VOCAB
    ref = save_tiny(tmp_path / "m", "bert", "ForMultipleChoice")
    with torch.no_grad():
        ref.classifier.weight.fill_(3e38)
    ref.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    capsys.readouterr()
    line = refused(base_args(tmp_path / "m", tmp_path / "out"), capsys)
    assert "diverged at step" in line and "nan" in line and "nothing was exported" in line
    assert not (tmp_path / "out" / "model").exists() and not (tmp_path / "out" / "results.json").exists()


# 5. bad input: one sentence and exit 2, before anything is written --------------------------------------

BAD_INPUTS = ["truncated weights", "no weights", "--batch-size 0", "--batch-size -1", "--grad-accum 0",
              "--checkpoint-every 0", "--limit-eval 0", "random-bytes train.tsv", "out-dir is a file",
              "--max-length 9999", "--lr nan"]


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_5_bad_input_is_one_sentence_before_anything_is_written(tmp_path, tiny_bert_with_vocab, capsys, bad):
    model, out, extra = tiny_bert_with_vocab, tmp_path / "out", []
    if bad == "truncated weights":
        model = truncated_model(tiny_bert_with_vocab, tmp_path / "m")
    elif bad == "no weights":
        shutil.copytree(tiny_bert_with_vocab, tmp_path / "m")
        (tmp_path / "m" / "model.safetensors").unlink()
        model = tmp_path / "m"
    elif bad == "random-bytes train.tsv":
        (tmp_path / "d" / "csqa").mkdir(parents=True)
        (tmp_path / "d" / "csqa" / "train_rand_split.jsonl").write_bytes(os.urandom(3000))
        shutil.copy(FIX / "csqa" / "dev_rand_split.jsonl", tmp_path / "d" / "csqa")
        extra = ["--data-dir", str(tmp_path / "d")]
    elif bad == "out-dir is a file":
        out.write_text("not a folder\n")
    else:
        extra = bad.split()
    before = snapshot(out)
    refused(base_args(model, out, *extra), capsys)
    assert snapshot(out) == before


# 6. a run ends at exactly its target, or is refused up front ----------------------------------------------

@pytest.mark.parametrize("extra", [["--epochs", "0"], ["--epochs", "-1"], ["--max-steps", "1"], ["--max-steps", "2"],
                                   ["--max-steps", "3"]])
def test_6_too_short_to_reach_the_target_is_refused(tmp_path, tiny_bert_with_vocab, capsys, extra):
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", *extra), capsys)
    assert ("at least 4 steps" in line) if extra[0] == "--max-steps" else ("--epochs" in line)
    assert not (tmp_path / "out").exists()


def test_6_the_shortest_allowed_run_ends_exactly_at_its_target(tmp_path, tiny_bert_with_vocab):
    train.main(base_args(tiny_bert_with_vocab, tmp_path, "--max-steps", "4", "--keep-checkpoints"))
    ck = torch.load(tmp_path / "student" / "checkpoint.pt", weights_only=False)
    n = sum(m.numel() for m in ck["masks"].values())
    assert sum(int((~m).sum()) for m in ck["masks"].values()) == round(0.8 * n)


# 7. re-running a folder without --resume or --overwrite ----------------------------------------------------

def test_7_rerunning_a_finished_run_is_refused(run_copy, tiny_bert_with_vocab, capsys):
    before = snapshot(run_copy)
    line = refused(base_args(tiny_bert_with_vocab, run_copy), capsys)
    assert "already holds this run (finished)" in line and "--resume" in line and "--overwrite" in line
    assert snapshot(run_copy) == before


def test_7_rerunning_an_interrupted_run_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "run", "--stop-after", "3"))
    before = snapshot(tmp_path / "run")
    assert "not finished" in refused(base_args(tiny_bert_with_vocab, tmp_path / "run"), capsys)
    assert snapshot(tmp_path / "run") == before
    log_lines = len((tmp_path / "run" / "student" / "log.jsonl").read_text().splitlines())
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "run", "--resume"))
    assert (tmp_path / "run" / "results.json").is_file()
    assert len((tmp_path / "run" / "student" / "log.jsonl").read_text().splitlines()) > log_lines


# 8: the torchrun teardown is tests/test_train.py::test_torchrun_two_processes_gloo_equal_masks.

# 9. N:M with N >= M --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, message", [("5:4", "needs 0 < N < M"), ("0:4", "needs 0 < N < M"),
                                              ("2:x", "not N:M with whole numbers")])
def test_9_impossible_nm_patterns_are_refused(tmp_path, tiny_bert_with_vocab, capsys, pattern, message):
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--pattern", pattern, "--sparsity", "0.5"),
                   capsys)
    assert message in line and "-0.25" not in line


# 10. the small ones ------------------------------------------------------------------------------------

def test_10_a_bad_number_is_one_line_not_the_usage(tmp_path, tiny_bert_with_vocab, capsys):
    assert "invalid float value: 'abc'" in refused(base_args(tiny_bert_with_vocab, tmp_path, "--sparsity", "abc"),
                                                   capsys)


def test_10_exported_files_share_one_mode(finished):
    modes = {p.name: p.stat().st_mode & 0o777 for p in (finished / "model").iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_10_checkpoints_are_deleted_after_export_unless_kept(finished, tmp_path, tiny_bert_with_vocab):
    assert not (finished / "student" / "checkpoint.pt").exists() and (finished / "model" / "model.safetensors").exists()
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "kept", "--keep-checkpoints"))
    assert (tmp_path / "kept" / "student" / "checkpoint.pt").is_file()


KILL_DURING_EXPORT = """
import os, runpy, sys
replace = os.replace
def killed(src, dst):   # a kill -9 after the weights' temporary file is written, before its rename
    if str(dst).endswith(os.path.join("model", "model.safetensors")):
        os._exit(9)
    return replace(src, dst)
os.replace = killed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_10_a_kill_during_export_is_cleaned_and_resumed_bit_identical(tmp_path, tiny_bert_with_vocab):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}      # both runs in subprocesses with the same threads
    for name, code in (("killed", ["-c", KILL_DURING_EXPORT]), ("whole", [])):
        done = subprocess.run([sys.executable, *code, str(ROOT / "train.py"), *base_args(tiny_bert_with_vocab,
                               tmp_path / name)], capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == (9 if name == "killed" else 0), done.stderr[-2000:]
    out = tmp_path / "killed"
    assert (out / "model" / "model.safetensors.tmp").is_file() and not (out / "results.json").exists()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *base_args(tiny_bert_with_vocab, out, "--resume")],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0 and not list(out.rglob("*.tmp")), done.stderr[-2000:]
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_10_venv_is_ignored_and_distill_prints_its_worked_example():
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()
    out = subprocess.run([sys.executable, str(ROOT / "distill.py")], capture_output=True, text=True).stdout
    assert "(0.6372, 0.2140, 0.1488)" in out and "(0.9972, 0.0025, 0.0003)" in out


# -- found in review ----------------------------------------------------------------------------------

def test_overwrite_refuses_to_delete_its_own_inputs(run_copy, tiny_bert_with_vocab, capsys):
    """A teacher (or a one-shot model) kept inside the folder that --overwrite would empty."""
    shutil.copytree(tiny_bert_with_vocab, run_copy / "model", dirs_exist_ok=True)
    before = snapshot(run_copy)
    line = refused(base_args(run_copy / "model", run_copy, "--overwrite"), capsys)
    assert "--overwrite would delete --model" in line and snapshot(run_copy) == before


def test_resume_and_overwrite_together_are_refused(run_copy, tiny_bert_with_vocab, capsys):
    before = snapshot(run_copy)
    assert "pass one of them" in refused(base_args(tiny_bert_with_vocab, run_copy, "--resume", "--overwrite",
                                                   "--sparsity", "0.5"), capsys)
    assert snapshot(run_copy) == before


def test_a_symlink_in_the_folder_is_never_ours(run_copy, tiny_bert_with_vocab, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "precious.txt").write_text("keep\n")
    (run_copy / "student").mkdir(exist_ok=True)
    (run_copy / "student" / "link").symlink_to(tmp_path / "elsewhere")
    refused(base_args(tiny_bert_with_vocab, run_copy, "--overwrite"), capsys)
    assert (tmp_path / "elsewhere" / "precious.txt").read_text() == "keep\n"


def test_a_folder_left_with_only_a_temporary_run_json_starts_fresh(tmp_path, tiny_bert_with_vocab):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json.tmp").write_text("{")                     # killed while writing run.json
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "run"))
    assert (tmp_path / "run" / "results.json").is_file() and not (tmp_path / "run" / "run.json.tmp").exists()


def test_block_size_zero_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    assert "--block-size is 0" in refused(base_args(tiny_bert_with_vocab, tmp_path / "o", "--method", "obert",
                                                    "--block-size", "0"), capsys)


def test_a_fisher_too_large_for_this_machine_is_refused_up_front(tmp_path, tiny_bert_with_vocab, capsys, monkeypatch):
    monkeypatch.setattr(cli, "available_memory_bytes", lambda: 1000)
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "o", "--method", "obert"), capsys)
    assert "oBERT's Fisher needs about" in line and not (tmp_path / "o").exists()


def test_oneshot_checks_its_own_sparsities_against_the_pattern(tmp_path, tiny_bert_with_vocab, capsys):
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "o", "--oneshot", "0.5,0.7", "--pattern", "2:4",
                             "--sparsity", "0.5"), capsys)
    assert "not 0.7" in line and "--oneshot" in line
