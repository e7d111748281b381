"""What train.py tells a newcomer (issue 34's first hour, issue 35's small runs): the progress line's
estimate of the whole run, tokens per second of training only, the phases named right, SIGTERM as
Ctrl-C, notes on a model passed already sparse or in half precision, and a closing line where a run's
numbers cannot mean anything; and the inputs that finished wrong before, now refused in one sentence."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import train
from conftest import save_tiny, TINY_VOCAB
from test_safety import FIX, ROOT, base_args, refused, snapshot


def run(model, out, *extra):
    return ["--task", "csqa", "--model", str(model), "--data-dir", str(FIX), "--batch-size", "1", "--out-dir", str(out),
            "--epochs", "5", "--log-every", "1", *extra]


def test_the_teacher_s_progress_line_estimates_the_whole_run_and_the_phases_are_named(tmp_path, tiny_bert_with_vocab,
                                                                                   capsys):
    train.main(run(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.8", "--teacher-epochs", "2"))
    out = capsys.readouterr().out
    teacher_lines = [l for l in out.splitlines() if l.startswith("dense teacher [")]
    assert teacher_lines and all("(the run: ~" in l for l in teacher_lines)       # the student's 15 steps after it
    assert not any("(the run" in l for l in out.splitlines() if l.startswith("pruned student ["))
    assert "reading and tokenizing csqa" in out and "csqa: 3 training examples" in out
    assert "evaluating the teacher on 3 dev examples" in out and "evaluating the student and exporting it" in out
    assert "step 1 (end of the dense phase)" in out and "step 1 (end of a pruning cycle)" not in out
    assert "step 3 (end of a pruning cycle)" in out


def test_tokens_per_second_leave_out_the_time_spent_pruning_and_evaluating(tmp_path, tiny_bert_with_vocab,
                                                                          monkeypatch):
    """A clock that moves 1 s per reading; in one run every pruning step takes 1000 s more. The tokens
    per second of training are the same in both (the pauses left out); with them, 100 times fewer."""
    now = [0.0]

    def tick():
        now[0] += 1.0
        return now[0]
    monkeypatch.setattr(train.time, "time", tick)
    event, rates = train.pruning_event, []
    for slow in (False, True):
        def timed(*a, **k):
            now[0] += 1000.0 if slow else 0.0
            return event(*a, **k)
        monkeypatch.setattr(train, "pruning_event", timed)
        train.main(run(tiny_bert_with_vocab, tmp_path / str(slow), "--sparsity", "0.8", "--no-kd"))
        res = json.loads((tmp_path / str(slow) / "results.json").read_text())
        rates.append(res["tokens_per_s"])
    assert res["student_seconds"] > 7000 and rates[1] == pytest.approx(rates[0], rel=0.01)


def test_sigterm_ends_a_run_as_ctrl_c_does_naming_the_checkpoint(tmp_path, tiny_bert_with_vocab):
    argv = run(tiny_bert_with_vocab, tmp_path / "o", "--sparsity", "0.8", "--no-kd", "--epochs", "400",
               "--checkpoint-every", "1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (tmp_path / "o" / "student" / "checkpoint.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1].strip().splitlines()
    assert proc.returncode == 143, err
    assert len(err) == 1 and "the last checkpoint is" in err[0] and "--resume" in err[0], err


def test_a_model_passed_already_sparse_or_in_half_precision_is_said_before_the_run(tmp_path, tiny_bert_with_vocab,
                                                                                 capsys):
    train.main(run(tiny_bert_with_vocab, tmp_path / "sparse", "--sparsity", "0.8", "--no-kd"))
    export = tmp_path / "sparse" / "model"
    train.main(run(export, tmp_path / "again", "--sparsity", "0.5", "--no-kd"))
    assert "is already 80.0% sparse in its encoder, above --sparsity 0.5" in capsys.readouterr().out
    half = tmp_path / "half"
    save_tiny(half, "bert", torch_dtype="float16")
    import transformers
    transformers.BertModel.from_pretrained(half).half().save_pretrained(half)
    (half / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    train.main(run(half, tmp_path / "h", "--sparsity", "0.5", "--no-kd"))
    assert f"--model {half} is stored in float16" in capsys.readouterr().out


def test_a_run_too_small_to_mean_anything_says_so_at_the_end(tmp_path, tiny_bert_with_vocab, capsys):
    train.main(run(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.5", "--teacher-epochs", "1"))
    out = capsys.readouterr().out.splitlines()
    notes = [l for l in out if l.startswith("note: ")]
    assert any("3 dev examples give an accuracy a standard error of up to 28.9 points" in n for n in notes)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["notes"] == [n.removeprefix("note: ") for n in notes]


@pytest.mark.parametrize("extra, message", [
    (["--oneshot", "0.5,0.5"], "'0.5,0.5' lists 0.5 twice; pass each sparsity once"),
    (["--sparsity", "0.99999999"], "--sparsity 0.99999999 prunes every one of the prunable weights' 12928"),
    (["--sparsity", "0.9999", "--scope", "layer"], "--sparsity 0.9999 prunes every one of layers.0.query.weight's 1024"),
    (["--lr", "1e-5", "--lr-min", "2e-5"], "--lr-min 2e-05 is above --lr 1e-05"),
    (["--warmup-steps", "10"], "--warmup-steps gives a warm-up of 10 steps, longer than the student's dense phase"),
])
def test_inputs_that_finished_wrong_are_refused(tmp_path, tiny_bert_with_vocab, capsys, extra, message):
    if "--oneshot" in extra:
        argv = ["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(FIX), "--out-dir",
                str(tmp_path / "o"), *extra]
    else:
        argv = base_args(tiny_bert_with_vocab, tmp_path / "o", *extra)
        argv[argv.index("--epochs") + 1] = "30"
    assert message in refused(argv, capsys)
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_with_weights_its_config_has_no_place_for_is_refused(tmp_path, capsys):
    folder = tmp_path / "m"
    save_tiny(folder, "bert", num_hidden_layers=3)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))   # the third layer: nowhere
    before = snapshot(folder)
    capsys.readouterr()
    line = refused(base_args(folder, tmp_path / "o"), capsys)
    assert "holds 16 weights its config.json has no place for (such as encoder.layer.2." in line
    assert snapshot(folder) == before and not (tmp_path / "o").exists()
