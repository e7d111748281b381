"""The course's labs (labs/): each runs end to end in smoke mode on a tiny random model and data made
here (seconds each); every exercise's check passes the project's function and fails a plausible wrong
answer; and the labs' loops are train.py's: the same teacher, the same pruned weights, bit for bit."""
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from test_imports import RUN, project_imports

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("[0-9][0-9]_*.py"))
sys.path.insert(0, str(ROOT / "labs"))
import common                                   # noqa: E402
import exercises                                # noqa: E402


def run_lab(path, model, data_dir, out, monkeypatch) -> dict:
    """Run one lab file as `python labs/NN_....py --smoke ...` does, in this process; its globals."""
    monkeypatch.setattr(sys, "argv", [str(path), "--model", str(model), "--data-dir", str(data_dir), "--out", str(out),
                                      "--smoke"])
    return runpy.run_path(str(path), run_name="__main__")


def test_six_labs_in_the_syllabus_order():
    assert [p.name[:3] for p in LABS] == ["01_", "02_", "03_", "04_", "05_", "06_"]
    for p in LABS:
        text = p.read_text()
        assert text.startswith("# %% [markdown]\n# # Lab ") and "**Time:**" in text and "**Needs:**" in text, p.name


def test_no_lab_file_imports_the_loop_or_its_helpers():
    """The labs, common.py and exercises.py import concept files only: never train.py, cli.py, rundir.py
    or runtime.py, in any form (`from cli import ...`, inside a function)."""
    ours = {p.stem for p in ROOT.glob("*.py")}
    for path in sorted((ROOT / "labs").glob("*.py")):
        assert not project_imports(path, ours) & set(RUN), path.name


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_every_lab_runs_end_to_end_in_smoke_mode(path, tiny_bert_with_vocab, tiny_sst2, tmp_path, monkeypatch, capsys):
    run_lab(path, tiny_bert_with_vocab, tiny_sst2, tmp_path / "out", monkeypatch)
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"Lab {int(path.name[:2])}: ") and last.endswith("minutes)"), last
    assert "not written yet" in out                          # every exercise ran on the solution


def test_a_lab_given_no_data_stops_in_one_sentence(tiny_bert_with_vocab, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        run_lab(LABS[0], tiny_bert_with_vocab, tmp_path / "no-data", tmp_path / "out", monkeypatch)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("Lab 1: ") and "no-data" in err[0], err


# -- the exercises, both ways ------------------------------------------------------------------------

def wrong_masked_step(opt, params, masks, lr):
    """The usual mistake: the gradients masked, the weights not re-masked (AdamW's weight decay and
    stale moments then move pruned weights)."""
    for n, m in masks.items():
        params[n].grad.mul_(m)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)


def wrong_sparsity_at(sched, step):
    """The continuous cubic, without the schedule's discrete pruning steps."""
    return sched.curve(step) if step >= sched.t_0 else 0.0


WRONG = {   # a plausible wrong answer for each exercise
    "1.1": lambda weights, s: {n: w.abs() > w.abs().flatten().kthvalue(max(1, round(s * w.numel()))).values
                               for n, w in weights.items()},                                      # per matrix
    "2.1": lambda w, finv: w.pow(2) / finv.diagonal(dim1=1, dim2=2).reshape(-1),                # the 1/2 forgotten
    "2.2": lambda w, finv, pruned: w.masked_fill(pruned, 0.0),                                  # no update at all
    "3.1": wrong_sparsity_at,
    "3.2": wrong_masked_step,
    "4.1": lambda zs, zt, T: torch.nn.functional.kl_div(torch.log_softmax(zs / T, -1), torch.softmax(zt / T, -1),
                                                        reduction="batchmean"),                 # T² forgotten
    "5.1": lambda W, X: W.abs() * X.pow(2).sum(0),                                              # ||X||², not ||X||
    "5.2": lambda S, w, g: S + w * g,                                                           # the sign
    "6.1": lambda forward, dense, fast: sum(dense) / sum(fast),                                 # the rest forgotten
}


def not_written(*args):
    raise NotImplementedError


@pytest.mark.parametrize("key", list(exercises.EXERCISES))
def test_each_exercise_passes_the_solution_and_fails_a_wrong_answer(key):
    ex = exercises.EXERCISES[key]
    assert exercises.check(key, ex.solution)[0] is True
    passed, worst, _ = exercises.check(key, WRONG[key])
    assert passed is False and worst > ex.tolerance, (key, worst)
    assert exercises.check(key, not_written)[0] is None
    mine = lambda *a: ex.solution(*a)                       # noqa: E731  (a student's correct answer)
    assert exercises.exercise(key, mine) is mine                                       # the lab goes on with theirs
    assert exercises.exercise(key, not_written) is ex.solution and exercises.exercise(key, WRONG[key]) is ex.solution


def test_the_masked_step_may_also_zero_the_moments_of_pruned_weights():
    """Exercise 3.2: a step that also zeroes AdamW's moments where weights are pruned (what
    prune.zero_optimizer_state does at a pruning step) is as right as the project's."""
    def zeroing_step(opt, params, masks, lr):
        exercises.masked_step(opt, params, masks, lr)
        for n, m in masks.items():
            for k in ("exp_avg", "exp_avg_sq"):
                opt.state[params[n]][k].mul_(m)
    assert exercises.check("3.2", zeroing_step)[0] is True


def test_every_exercise_is_asked_by_its_lab():
    asked = {key for p in LABS for key in exercises.EXERCISES if f'exercise("{key}"' in p.read_text()}
    assert asked == set(exercises.EXERCISES)
    for key in exercises.EXERCISES:                          # exercise N.k lives in lab N
        assert f'exercise("{key}"' in LABS[int(key.split(".")[0]) - 1].read_text(), key


# -- the labs' loops are train.py's ------------------------------------------------------------------

def exported(folder) -> dict:
    w = load_file(str(Path(folder) / "model.safetensors"))
    return {k: v for k, v in w.items()}


def test_the_labs_teacher_is_train_py_dense_fine_tuning(tiny_bert_with_vocab, tiny_sst2, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lab"])
    lab = common.start("test", "the teacher", ["--model", str(tiny_bert_with_vocab), "--data-dir", str(tiny_sst2),
                                               "--out", str(tmp_path / "lab")])
    model = common.fine_tune(lab, common.student(lab, seed=0), 2, 5e-5, seed=0)
    model.save_pretrained(tmp_path / "lab-teacher")
    train.main(["--task", "sst2", "--model", str(tiny_bert_with_vocab), "--data-dir", str(tiny_sst2), "--sparsity", "0",
                "--epochs", "2", "--lr", "5e-5", "--seed", "0", "--out-dir", str(tmp_path / "run")])
    ours, theirs = exported(tmp_path / "lab-teacher"), exported(tmp_path / "run" / "model")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_lab_3s_loop_prunes_the_same_weights_as_train_py(tiny_bert_with_vocab, tiny_sst2, tmp_path, monkeypatch):
    g = run_lab(LABS[2], tiny_bert_with_vocab, tiny_sst2, tmp_path / "out", monkeypatch)
    teacher = next((tmp_path / "out").glob("teacher-*"))
    train.main(["--task", "sst2", "--model", str(tiny_bert_with_vocab), "--data-dir", str(tiny_sst2), "--teacher",
                str(teacher), "--sparsity", "0.8", "--epochs", "2", "--seed", "0", "--out-dir", str(tmp_path / "run"),
                "--keep-checkpoints"])
    masks = torch.load(tmp_path / "run" / "student" / "checkpoint.pt", weights_only=False)["masks"]
    assert masks.keys() == g["masks"].keys() and all(torch.equal(masks[n], g["masks"][n]) for n in masks)
    g["student"].save_pretrained(tmp_path / "lab-student")
    ours, theirs = exported(tmp_path / "lab-student"), exported(tmp_path / "run" / "model")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)                 # every weight, bit for bit
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["metric"]["accuracy"] == pytest.approx(g["gradual"])
