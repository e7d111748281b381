"""The defects a new user hit (issue 22), one test or more per item, numbered as the issue numbers
them. A refused run exits 2 with one sentence and leaves the folder it was pointed at
byte-identical (test_safety.py's `refused` and `snapshot`); the concurrency test starts two
processes. Each test builds its failing input itself."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cli
import data
import rundir
import runtime
import train
from conftest import TINY_VOCAB, save_tiny
from test_safety import FIX, ROOT, base_args, finished, refused, run_copy, snapshot   # noqa: F401 (fixtures)


def kd_args(model, out, *extra, teacher=None):
    """A short KD run on the CSQA fixtures: from --teacher, or with the teacher trained here."""
    who = ["--teacher", str(teacher)] if teacher else ["--teacher-epochs", "1"]
    return ["--task", "csqa", "--model", str(model), "--data-dir", str(FIX), "--batch-size", "1", "--out-dir", str(out),
            "--epochs", "2", *who, "--sparsity", "0.8", "--log-every", "5", *extra]


def model_copy(src: Path, dst: Path, **config) -> Path:
    """A copy of a model folder with some config.json fields changed."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    return dst


@pytest.fixture(scope="module")
def mc_teacher(tmp_path_factory, tiny_bert_with_vocab):
    """A dense CSQA model, fine-tuned here: a teacher with the student's vocabulary."""
    out = tmp_path_factory.mktemp("teacher22") / "run"
    train.main(base_args(tiny_bert_with_vocab, out, "--sparsity", "0"))
    return out / "model"


# 1. --overwrite deletes only what run.json records as written ------------------------------------------

@pytest.mark.parametrize("users", ["oneshot-mybest/model.safetensors", "teacher/model/config.json", "model2/vocab.txt",
                                   "student/notes.txt"])
def test_1_overwrite_never_deletes_a_users_file_named_like_ours(run_copy, tiny_bert_with_vocab, capsys, users):
    (run_copy / users).parent.mkdir(parents=True, exist_ok=True)
    (run_copy / users).write_text("the user's\n")
    before = snapshot(run_copy)
    assert users in refused(base_args(tiny_bert_with_vocab, run_copy, "--overwrite"), capsys)
    assert snapshot(run_copy) == before


def test_1_overwrite_deletes_exactly_the_files_run_json_lists(tmp_path, tiny_bert_with_vocab, mc_teacher):
    out = tmp_path / "run"
    train.main(["--task", "csqa", "--model", str(mc_teacher), "--data-dir", str(FIX), "--batch-size", "1",
                "--out-dir", str(out), "--oneshot", "0.5", "--export"])
    written = set(json.loads((out / "run.json").read_text())["written"])
    assert {"results.json", "oneshot-0.5/", "oneshot-0.5/model.safetensors", "oneshot-0.5/vocab.txt"} <= written
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"run.json"}
    assert on_disk <= written                                         # everything it wrote, it listed first
    train.main(["--task", "csqa", "--model", str(mc_teacher), "--data-dir", str(FIX), "--batch-size", "1",
                "--out-dir", str(out), "--oneshot", "0.6", "--overwrite"])
    assert not (out / "oneshot-0.5").exists() and sorted(p.name for p in out.iterdir()) == ["results.json", "run.json"]


def legacy(run: Path) -> Path:
    """The run folder as an older train.py left it: its run.json without the list of the files it wrote."""
    record = json.loads((run / "run.json").read_text())
    for key in ("written", "written_by", "fingerprints"):
        del record[key]
    (run / "run.json").write_text(json.dumps(record))
    return run


@pytest.mark.parametrize("users", [None, "notes.txt", "oneshot-0.5/model.safetensors", "student/notes.txt",
                                   "model/extra.bin"])
def test_1_overwrite_of_an_older_runs_folder_deletes_only_the_names_it_wrote(run_copy, tiny_bert_with_vocab, capsys,
                                                                            users):
    """Without run.json's list, what is ours is read by name (rundir.LEGACY_FILES): anything else stops it."""
    legacy(run_copy)
    if users:
        (run_copy / users).parent.mkdir(parents=True, exist_ok=True)
        (run_copy / users).write_text("the user's\n")
        before = snapshot(run_copy)
        assert users in refused(base_args(tiny_bert_with_vocab, run_copy, "--overwrite"), capsys)
        assert snapshot(run_copy) == before
        return
    on_disk = [p.relative_to(run_copy) for p in run_copy.rglob("*") if p.is_file()]
    assert on_disk and all(p.name in rundir.LEGACY_FILES[p.parent.parts if p.parent != Path(".") else ()]
                           for p in on_disk)
    train.main(base_args(tiny_bert_with_vocab, run_copy, "--overwrite", "--sparsity", "0.6"))
    assert json.loads((run_copy / "results.json").read_text())["target_sparsity"] == 0.6
    assert "written" in json.loads((run_copy / "run.json").read_text())


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"], []])
def test_1_a_damaged_run_json_is_named_and_nothing_is_deleted(run_copy, tiny_bert_with_vocab, capsys, flags):
    truncate(run_copy / "run.json")
    before = snapshot(run_copy)
    line = refused(base_args(tiny_bert_with_vocab, run_copy, *flags), capsys)
    assert f"{run_copy / 'run.json'} is damaged" in line and "another --out-dir" in line
    assert snapshot(run_copy) == before


# 2. one run per folder: a lock, taken atomically --------------------------------------------------------

@pytest.mark.parametrize("sparsities", [("0.8", "0.5"), ("0.8", "0.8")])
def test_2_two_runs_started_together_on_one_folder(tmp_path, tiny_bert_with_vocab, sparsities):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"),
                               *base_args(tiny_bert_with_vocab, out, "--sparsity", s, "--epochs", "20")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for s in sparsities]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    loser = results[1 - winner][1].strip().splitlines()
    assert len(loser) == 1 and any(m in loser[0] for m in ("in use by another train.py", "holds a different run",
                                                           "already holds this run")), loser
    assert json.loads((out / "results.json").read_text())["target_sparsity"] == float(sparsities[winner])
    steps = [json.loads(line)["step"] for line in (out / "student" / "log.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(steps) and len(steps) == len(set(steps))   # one run's log, not two interleaved
    assert not (out / rundir.LOCK).exists()


def test_2_a_live_lock_is_refused_and_a_dead_ones_taken_over(run_copy, tiny_bert_with_vocab, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_copy / rundir.LOCK).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                        "started": rundir.process_start(holder.pid)}))
        before = snapshot(run_copy)
        line = refused(base_args(tiny_bert_with_vocab, run_copy, "--overwrite"), capsys)
        assert f"in use by another train.py (process {holder.pid}" in line and snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()
    train.main(base_args(tiny_bert_with_vocab, run_copy, "--overwrite"))            # its holder is gone now
    assert f"left by process {holder.pid}, which no longer runs" in capsys.readouterr().out
    assert not (run_copy / rundir.LOCK).exists()


def test_2_a_dead_lock_another_run_took_over_meanwhile_is_not_deleted(tmp_path, monkeypatch):
    """Two runs see the same dead holder and the other one takes the lock over first: this one must
    not delete the other's new lock (it re-reads the lock under an flock), but be refused by it."""
    out, host = tmp_path / "run", os.uname().nodename
    out.mkdir()
    dead, live = (subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2))
    started = rundir.process_start(dead.pid)
    dead.kill()
    dead.wait()
    try:
        (out / rundir.LOCK).write_text(json.dumps({"pid": dead.pid, "host": host, "started": started}))
        others = json.dumps({"pid": live.pid, "host": host, "started": rundir.process_start(live.pid)})
        read = rundir.lock_holder

        def the_other_run_takes_it_over_right_after(folder):
            holder = read(folder)                         # the dead holder, seen by this run
            (out / rundir.LOCK).unlink()
            (out / rundir.LOCK).write_text(others)
            monkeypatch.setattr(rundir, "lock_holder", read)
            return holder
        monkeypatch.setattr(rundir, "lock_holder", the_other_run_takes_it_over_right_after)
        with pytest.raises(rundir.UsageError, match=f"in use by another train.py \\(process {live.pid} "):
            rundir.take_lock(out)
        assert (out / rundir.LOCK).read_text() == others
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("kept", [True, False])
def test_2_resume_of_a_finished_run_deletes_checkpoints_under_the_lock_unless_kept(tmp_path, tiny_bert_with_vocab,
                                                                                  capsys, monkeypatch, kept):
    out = tmp_path / "run"
    train.main(base_args(tiny_bert_with_vocab, out, "--keep-checkpoints"))
    if not kept:                   # as if killed between its results.json and the deletion of its checkpoints
        record = json.loads((out / "run.json").read_text())
        (out / "run.json").write_text(json.dumps({**record, "keep_checkpoints": False}))
    holders, delete = [], rundir.delete_checkpoints
    monkeypatch.setattr(rundir, "delete_checkpoints", lambda folder: holders.append(rundir.lock_holder(folder))
                        or delete(folder))
    before = snapshot(out)
    train.main(base_args(tiny_bert_with_vocab, out, "--resume"))                  # without --keep-checkpoints
    assert "finished" in capsys.readouterr().out and not (out / rundir.LOCK).exists()
    if kept:
        assert snapshot(out) == before and not holders
    else:
        assert not (out / "student" / "checkpoint.pt").exists() and holders[0]["pid"] == os.getpid()


# 3. nothing is deleted until everything that can fail before training was tried -------------------------

@pytest.mark.parametrize("bad", ["--device cuda", "--device cuda:7", "--device tpu", "--device nonsense",
                                 "no disk space", "not writable", "--dtype bfloat16 on a GPU without it"])
def test_3_overwrite_deletes_nothing_when_the_machine_cannot_run_it(run_copy, tiny_bert_with_vocab, capsys,
                                                                     monkeypatch, bad):
    extra = bad.split()[:2] if bad.startswith("--") else []
    if bad.startswith("--dtype"):                 # a CUDA device that has no bfloat16 (pre-Ampere), faked
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "an old GPU")
        extra += ["--device", "cuda"]
    if bad == "no disk space":
        monkeypatch.setattr(cli.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 12, 10 ** 12, 1000))
    if bad == "not writable":
        monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    if bad.startswith("--device cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = snapshot(run_copy)
    line = refused(base_args(tiny_bert_with_vocab, run_copy, "--overwrite", *extra), capsys)
    assert {"no disk space": "GB free", "not writable": "cannot be written"}.get(
        bad, "--dtype bfloat16, but an old GPU has no bfloat16" if bad.startswith("--dtype") else "--device") in line
    assert snapshot(run_copy) == before


# 4. a split is read only from its own file names ------------------------------------------------------

def test_4_a_train_file_under_another_name_is_not_replaced_by_the_dev_file(tmp_path, tiny_bert_with_vocab, capsys):
    (tmp_path / "d").mkdir()
    shutil.copy(FIX / "csqa" / "train_rand_split.jsonl", tmp_path / "d" / "training-set.jsonl")
    shutil.copy(FIX / "csqa" / "dev_rand_split.jsonl", tmp_path / "d" / "dev.jsonl")      # a hub export of dev
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--data-dir", str(tmp_path / "d")), capsys)
    assert "no train file" in line and "dev.jsonl" not in line.split("looked for")[1]
    assert not (tmp_path / "out").exists()
    for task in data.TASKS.values():                 # the whole class: no split's names include another's
        train_names, dev_names = data.split_names(task, "train"), data.split_names(task, "validation")
        assert not set(train_names) & set(dev_names), task.name


# 5. multiple-choice records: the task's number of choices, distinct labels, the answer among them --------

def csqa_record(labels, answer="A"):
    return json.dumps({"id": "q", "answerKey": answer, "question": {
        "stem": "s", "choices": [{"label": l, "text": f"t{l}"} for l in labels]}}) + "\n"


@pytest.mark.parametrize("labels, answer, message", [
    ("ABCD", "A", "4 choices, but every csqa question has 5"), ("ABCDEF", "A", "6 choices"),
    ("AACDE", "A", "repeat"), ("ABCDE", "Z", "not one of the choices")])
def test_5_a_csqa_record_with_the_wrong_choices_is_refused(tmp_path, tiny_bert_with_vocab, capsys, labels, answer,
                                                          message):
    (tmp_path / "d").mkdir()
    good = (FIX / "csqa" / "train_rand_split.jsonl").read_text()
    (tmp_path / "d" / "train_rand_split.jsonl").write_text(good + csqa_record(labels, answer))
    shutil.copy(FIX / "csqa" / "dev_rand_split.jsonl", tmp_path / "d")
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--data-dir", str(tmp_path / "d")), capsys)
    assert message in line and "train_rand_split.jsonl:line 4" in line and not (tmp_path / "out").exists()


def csqa_hub_record(labels, texts, answer="A"):
    return json.dumps({"id": "q", "answerKey": answer, "question": "s",
                       "choices": {"label": labels, "text": texts}}) + "\n"


@pytest.mark.parametrize("labels, texts, message", [
    (list("ABCDE"), ["t"] * 4, "5 choice labels but 4 choice texts"), (list("ABCDE"), ["t"] * 6, "but 6 choice texts"),
    (list("ABCD"), ["t"] * 4, "4 choices, but every csqa question has 5"), ("ABCDE", ["t"] * 5, "should be list")])
def test_5_a_hub_csqa_record_with_the_wrong_choices_is_refused(tmp_path, tiny_bert_with_vocab, capsys, labels, texts,
                                                              message):
    """The Hugging Face export keeps the labels and the texts in two lists: one entry per choice in each."""
    (tmp_path / "d").mkdir()
    good = (FIX / "csqa_hub" / "validation.jsonl").read_text()
    (tmp_path / "d" / "train.jsonl").write_text(good + csqa_hub_record(labels, texts))
    shutil.copy(FIX / "csqa_hub" / "validation.jsonl", tmp_path / "d")
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--data-dir", str(tmp_path / "d")), capsys)
    assert message in line and f"train.jsonl:line {len(good.splitlines()) + 1}" in line
    assert not (tmp_path / "out").exists()


# 6. --resume refuses changed data, model or teacher ---------------------------------------------------

@pytest.mark.parametrize("change", ["data", "model", "teacher"])
def test_6_resume_on_changed_inputs_is_refused(tmp_path, tiny_bert_with_vocab, mc_teacher, capsys, change):
    shutil.copytree(FIX, tmp_path / "d")
    model, teacher = model_copy(tiny_bert_with_vocab, tmp_path / "m"), model_copy(mc_teacher, tmp_path / "t")
    argv = kd_args(model, tmp_path / "run", "--data-dir", str(tmp_path / "d"), "--epochs", "5", "--checkpoint-every",
                   "2", teacher=teacher)
    train.main(argv + ["--stop-after", "3"])
    if change == "data":
        path = tmp_path / "d" / "csqa" / "train_rand_split.jsonl"
        path.write_text(path.read_text().replace('"stem": "', '"stem": "a changed question: ', 1))
    else:
        folder = model if change == "model" else teacher
        from safetensors.torch import load_file, save_file
        w = load_file(str(folder / "model.safetensors"))
        w[next(iter(w))] += 1.0
        save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    before = snapshot(tmp_path / "run")
    line = refused(argv + ["--resume"], capsys)
    assert f"different {change} than it started with" in line and snapshot(tmp_path / "run") == before


# 7. a teacher with another vocabulary -------------------------------------------------------------------

def test_7_a_teacher_with_another_vocabulary_is_refused(tmp_path, tiny_bert_with_vocab, mc_teacher, capsys):
    teacher = tmp_path / "t"
    shutil.copytree(mc_teacher, teacher)
    vocab = TINY_VOCAB[:5] + list(reversed(TINY_VOCAB[5:]))            # the same tokens, other ids
    (teacher / "vocab.txt").write_text("\n".join(vocab) + "\n")
    line = refused(kd_args(tiny_bert_with_vocab, tmp_path / "out", teacher=teacher), capsys)
    assert "another vocabulary" in line and not (tmp_path / "out").exists()


# 8. SQuAD ids are unique ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def squad_bert(tmp_path_factory):
    """A tiny BERT with room for SQuAD's 256-token windows."""
    folder = tmp_path_factory.mktemp("squad_bert")
    save_tiny(folder, "bert", "ForQuestionAnswering", max_position_embeddings=256)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    return folder


def squad_dir(tmp_path, edit) -> Path:
    """The SQuAD fixtures, the dev file's release JSON changed by edit(doc)."""
    shutil.copytree(FIX / "squad", tmp_path / "d")
    doc = json.loads((tmp_path / "d" / "dev-v1.1.json").read_text())
    edit(doc)
    (tmp_path / "d" / "dev-v1.1.json").write_text(json.dumps(doc))
    return tmp_path / "d"


def squad_args(model, out, data_dir, *extra):
    return ["--task", "squad", "--model", str(model), "--data-dir", str(data_dir), "--batch-size", "2",
            "--out-dir", str(out), "--epochs", "4", "--max-length", "256", "--no-kd", *extra]


def first_qas(doc):
    return doc["data"][0]["paragraphs"][0]["qas"]


def test_8_squad_examples_that_share_an_id_are_refused(tmp_path, squad_bert, capsys):
    def duplicate(doc):
        first_qas(doc).append(dict(first_qas(doc)[0], question="Who else?"))
    line = refused(squad_args(squad_bert, tmp_path / "out", squad_dir(tmp_path, duplicate)), capsys)
    assert "repeats" in line and "s1" in line and not (tmp_path / "out").exists()


# 9. a flag either applies or stops the run, in every mode ----------------------------------------------

INAPPLICABLE = [   # (mode, the flags of the run, the flag refused, a word of the sentence)
    ("no KD", ["--no-kd", "--temperature", "2"], "--temperature", "--no-kd"),
    ("no KD", ["--no-kd", "--hardness", "0.5"], "--hardness", "--no-kd"),
    ("no KD", ["--no-kd", "--teacher-epochs", "2"], "--teacher-epochs", "--no-kd"),
    ("no KD", ["--no-kd", "--teacher", "{teacher}"], "--teacher", "--no-kd"),
    ("dense", ["--sparsity", "0", "--teacher-lr", "5e-5"], "--teacher-lr", "--lr"),
    ("dense", ["--sparsity", "0", "--method", "obert"], "--method", "--sparsity 0"),
    ("dense", ["--sparsity", "0", "--temperature", "2"], "--temperature", "--teacher"),
    ("teacher given", ["--teacher", "{teacher}", "--teacher-epochs", "2"], "--teacher-epochs", "--teacher"),
    ("GMP", ["--num-grads", "8"], "--num-grads", "--method gmp"),
    ("GMP", ["--block-size", "row"], "--block-size", "--method gmp"),
    ("AdamW", ["--cram-rho", "0.1"], "--cram-rho", "--optimizer cram"),
    ("cubic", ["--schedule", "cubic", "--init-sparsity", "0.5"], "--init-sparsity", "cubic"),
    ("gradual", ["--export"], "--export", "--oneshot"),
    ("gradual", ["--recomputations", "4"], "--recomputations", "--oneshot"),
    ("warm-up", ["--warmup", "0.1", "--warmup-steps", "5"], "--warmup", "--warmup-steps"),
    ("N:M", ["--pattern", "2:4", "--sparsity", "0.5", "--scope", "layer"], "--scope", "--pattern 2:4"),
    ("one-shot", ["--oneshot", "0.5", "--epochs", "3"], "--epochs", "--oneshot"),
    ("one-shot", ["--oneshot", "0.5", "--teacher", "{teacher}"], "--teacher", "--oneshot"),
    ("one-shot", ["--oneshot", "0.5", "--keep-checkpoints"], "--keep-checkpoints", "--oneshot"),
    ("one-shot GMP", ["--oneshot", "0.5", "--recomputations", "2"], "--recomputations", "--method gmp"),
    ("one-shot GMP", ["--oneshot", "0.5", "--seed", "3"], "--seed", "draws nothing at random"),
    ("one-shot GMP", ["--oneshot", "0.5", "--sparse-backprop", "--seed", "3"], "--seed", "draws nothing at random"),
    ("one-shot GMP", ["--oneshot", "0.5", "--limit-train", "3"], "--limit-train", "reads no training data"),
]


@pytest.mark.parametrize("mode, flags, refused_flag, word", INAPPLICABLE, ids=[f"{m}:{f}" for m, _, f, _ in INAPPLICABLE])
def test_9_a_flag_that_would_do_nothing_stops_the_run(tmp_path, tiny_bert_with_vocab, mc_teacher, capsys, mode, flags,
                                                      refused_flag, word):
    flags = [f.replace("{teacher}", str(mc_teacher)) for f in flags]
    model = mc_teacher if "--oneshot" in flags else tiny_bert_with_vocab
    argv = ["--task", "csqa", "--model", str(model), "--data-dir", str(FIX), "--batch-size", "1",
            "--out-dir", str(tmp_path / "out"), *flags]
    line = refused(argv, capsys)
    assert line.startswith(f"train.py: {refused_flag} does nothing in this run") and word in line, line
    assert not (tmp_path / "out").exists()


def test_9_the_flags_of_each_mode_apply(tmp_path, tiny_bert_with_vocab):
    """The other side: a dense run takes --lr, a pruning run --init-sparsity and --damp with oBERT."""
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "dense", "--sparsity", "0", "--lr", "5e-5"))
    assert json.loads((tmp_path / "dense" / "results.json").read_text())["args"]["lr"] == 5e-5
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "obert", "--method", "obert", "--num-grads", "2",
                         "--damp", "1e-4", "--init-sparsity", "0.5"))
    args = json.loads((tmp_path / "obert" / "results.json").read_text())["args"]
    assert (args["damp"], args["init_sparsity"], args["num_grads"]) == (1e-4, 0.5, 2)


# 10. model and teacher folders: every config field checked ----------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 30, "not divisible by num_attention_heads"), ("hidden_act", "swish", "hidden_act 'swish'"),
    ("vocab_size", "many", "vocab_size is 'many'"), ("num_hidden_layers", 0, "num_hidden_layers is 0"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob is 1.5"), ("layer_norm_eps", -1, "layer_norm_eps"),
    ("vocab.txt", 120, "tokenizer has 120 tokens but its config.json's vocab_size is 99"),
    ("pad_token_id", 500, "pad_token_id 500")])
@pytest.mark.parametrize("role", ["--model", "--teacher"])
def test_10_a_config_the_model_cannot_use_is_refused(tmp_path, tiny_bert_with_vocab, mc_teacher, capsys, field, value,
                                                    message, role):
    folder = model_copy(tiny_bert_with_vocab if role == "--model" else mc_teacher, tmp_path / "m",
                        **({} if field == "vocab.txt" else {field: value}))
    if field == "vocab.txt":                                # more tokens than the embeddings have rows
        (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB + [f"extra{i}" for i in range(value - 74)]) + "\n")
    argv = (base_args(folder, tmp_path / "out") if role == "--model" else
            kd_args(tiny_bert_with_vocab, tmp_path / "out", teacher=folder))
    line = refused(argv, capsys)
    assert message in line and not (tmp_path / "out").exists()


# 11. every file it reads may be truncated or corrupt ----------------------------------------------------

def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["student checkpoint", "teacher checkpoint", "teacher's exported model"])
def test_11_a_damaged_file_of_the_run_is_named_on_resume(tmp_path, tiny_bert_with_vocab, capsys, damage):
    out = tmp_path / "run"
    # stopped in the teacher's phase (6 steps), or in the student's after a teacher of 3 steps
    stop, teacher_epochs = ("1", "2") if damage == "teacher checkpoint" else ("4", "1")
    argv = kd_args(tiny_bert_with_vocab, out, "--checkpoint-every", "1", "--teacher-epochs", teacher_epochs)
    train.main(argv + ["--stop-after", stop])
    path = {"student checkpoint": out / "student" / "checkpoint.pt", "teacher checkpoint": out / "teacher" /
            "checkpoint.pt", "teacher's exported model": out / "teacher" / "model" / "model.safetensors"}[damage]
    assert path.is_file()
    truncate(path)
    before = snapshot(out)
    line = refused(argv + ["--resume"], capsys)
    assert str(path) in line and ("truncated" in line or "corrupt" in line) and snapshot(out) == before


@pytest.mark.parametrize("damage", ["vocab.txt not UTF-8", "tokenizer.json truncated", "config.json truncated",
                                    "config.json not UTF-8", "id2label not a map"])
def test_11_a_damaged_model_folder_is_named(tmp_path, tiny_bert_with_vocab, capsys, damage):
    broken = {"id2label": 5} if damage == "id2label not a map" else {}
    model = model_copy(tiny_bert_with_vocab, tmp_path / "m", **broken)
    if damage == "config.json not UTF-8":
        (model / "config.json").write_bytes(b"\xff\xfe" + (model / "config.json").read_bytes())
    elif damage == "vocab.txt not UTF-8":
        (model / "vocab.txt").write_bytes(b"[PAD]\n\xff\xfe\n")
    elif damage == "tokenizer.json truncated":
        from tokenizers import Tokenizer
        Tokenizer.from_str(data.load_tokenizer(model).to_str()).save(str(model / "tokenizer.json"))
        truncate(model / "tokenizer.json")
    elif damage == "config.json truncated":
        truncate(model / "config.json")
    line = refused(base_args(model, tmp_path / "out"), capsys)
    assert str(model) in line and not (tmp_path / "out").exists()


# 12. data that parses but cannot be used --------------------------------------------------------------

def test_12_a_squad_v2_record_without_an_answer_is_refused(tmp_path, squad_bert, capsys):
    def unanswerable(doc):
        first_qas(doc)[0]["answers"] = []
    line = refused(squad_args(squad_bert, tmp_path / "out", squad_dir(tmp_path, unanswerable)), capsys)
    assert "SQuAD v2" in line and "dev-v1.1.json:record 1" in line and not (tmp_path / "out").exists()


def test_12_a_squad_question_too_long_for_the_windows_names_its_record(tmp_path, squad_bert, capsys):
    def long_question(doc):        # 251 tokens: a window of 256 has no room for 128 shared context tokens
        first_qas(doc)[1]["question"] = " ".join("abcdefghij" * 25) + "?"
    line = refused(squad_args(squad_bert, tmp_path / "out", squad_dir(tmp_path, long_question)), capsys)
    assert "SQuAD question 's2' is 251 tokens" in line and "--max-length 383" in line
    assert not (tmp_path / "out").exists()


def test_12_max_length_too_short_for_squads_windows_is_refused(tmp_path, squad_bert, capsys):
    line = refused(squad_args(squad_bert, tmp_path / "out", FIX, "--max-length", "64"), capsys)
    assert "--max-length 64 is too short" in line and "--max-length 256" in line and not (tmp_path / "out").exists()


def test_12_a_byte_order_mark_in_a_tsv_header_is_read(tmp_path, tiny_bert_with_vocab):
    (tmp_path / "d").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "d" / name).write_bytes(b"\xef\xbb\xbf" + (FIX / "sst2" / name).read_bytes())
    assert data.load_split(data.TASKS["sst2"], "train", tmp_path / "d")[0]["label"] == 1


def test_12_a_split_with_no_records_names_its_file(tmp_path, tiny_bert_with_vocab, capsys):
    (tmp_path / "d").mkdir()
    shutil.copy(FIX / "sst2" / "train.tsv", tmp_path / "d")
    (tmp_path / "d" / "dev.tsv").write_text("sentence\tlabel\n")
    argv = ["--task", "sst2", "--model", str(tiny_bert_with_vocab), "--data-dir", str(tmp_path / "d"), "--out-dir",
            str(tmp_path / "out"), "--no-kd", "--batch-size", "1"]
    line = refused(argv, capsys)
    assert str(tmp_path / "d" / "dev.tsv") in line and "no records" in line and not (tmp_path / "out").exists()


# 13. the environment: devices, writable folders, full disks, numbers the libraries refuse -----------------

def full_disk(real):
    """A writer that writes half and then fails as a full disk does."""
    def write(obj, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


@pytest.mark.parametrize("when", ["checkpoint", "export"])
def test_13_a_disk_that_fills_is_said_and_leaves_no_tmp(tmp_path, tiny_bert_with_vocab, capsys, monkeypatch, when):
    import safetensors.torch
    if when == "checkpoint":
        monkeypatch.setattr(torch, "save", full_disk(torch.save))
    else:
        monkeypatch.setattr(safetensors.torch, "save_file", full_disk(safetensors.torch.save_file))
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "run"), capsys)
    assert "the disk is full" in line and "--resume" in line
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / rundir.LOCK).exists()


@pytest.mark.parametrize("fails", ["writing run.json", "deleting a file"])
def test_13_a_folder_that_cannot_be_prepared_is_one_sentence_and_left_unlocked(run_copy, tiny_bert_with_vocab, capsys,
                                                                             monkeypatch, fails):
    """A full disk as run.json is written (a new folder), or a file --overwrite cannot delete: one sentence,
    the lock released, and the same command works once the cause is gone."""
    out = run_copy.parent / "new" if fails == "writing run.json" else run_copy
    argv = base_args(tiny_bert_with_vocab, out, *([] if fails == "writing run.json" else ["--overwrite"]))
    write_text, unlink = Path.write_text, Path.unlink

    def full_disk(path, *a, **k):
        if path.name == "run.json.tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *a, **k)

    def not_permitted(path, *a, **k):
        if path.name == "sparsity_report.txt":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return unlink(path, *a, **k)
    if fails == "writing run.json":
        monkeypatch.setattr(Path, "write_text", full_disk)
    else:
        monkeypatch.setattr(Path, "unlink", not_permitted)
    record = (out / "run.json").read_text() if out.exists() else None
    line = refused(argv, capsys)
    assert ("the disk is full" if fails == "writing run.json" else "cannot be written") in line
    assert "run the same command again" in line and not (out / rundir.LOCK).exists()
    assert not out.exists() if record is None else (out / "run.json").read_text() == record   # its record kept
    monkeypatch.undo()
    train.main(argv)
    assert (out / "results.json").is_file()


@pytest.mark.parametrize("flag, value", [("--seed", str(2 ** 63)), ("--seed", "-1"), ("--temperature", "0.1")])
def test_13_numbers_the_libraries_refuse_are_refused_first(tmp_path, tiny_bert_with_vocab, capsys, flag, value):
    line = refused(kd_args(tiny_bert_with_vocab, tmp_path / "out", flag, value), capsys)
    assert line.startswith(f"train.py: {flag} is") and not (tmp_path / "out").exists()


# 14. Ctrl-C: one line naming the last checkpoint ------------------------------------------------------

def test_14_ctrl_c_names_the_last_checkpoint_and_resume_ends_bit_identical(tmp_path, tiny_bert_with_vocab, capsys,
                                                                        monkeypatch):
    common = ["--checkpoint-every", "2", "--epochs", "4", "--keep-checkpoints"]
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "whole", *common))
    step, masked_step = [0], train.masked_step

    def ctrl_c_at_step_5(*a):
        step[0] += 1
        if step[0] == 6:
            raise KeyboardInterrupt
        return masked_step(*a)
    monkeypatch.setattr(train, "masked_step", ctrl_c_at_step_5)
    with pytest.raises(SystemExit) as e:
        train.main(base_args(tiny_bert_with_vocab, tmp_path / "cut", *common))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and len(err) == 1, err
    assert "student/checkpoint.pt (student step 4)" in err[0] and "--resume" in err[0]
    assert not (tmp_path / "cut" / rundir.LOCK).exists()
    monkeypatch.setattr(train, "masked_step", masked_step)
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "cut", *common, "--resume"))
    from safetensors.torch import load_file
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# 15. messages that mislead, and what a person watching a long run sees ----------------------------------

def test_15_a_cap_too_short_for_the_schedule_names_max_steps(tmp_path, tiny_bert_with_vocab, capsys):
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--max-steps", "3", "--epochs", "50"), capsys)
    assert "raise --max-steps, which caps it at 3" in line and "at least 4 steps" in line
    assert not (tmp_path / "out").exists()


def test_15_resume_of_a_folder_holding_no_run_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--resume"), capsys)
    assert "holds none; drop --resume" in line and not (tmp_path / "out").exists()


def test_15_resume_before_the_first_checkpoint_says_it_starts_over(tmp_path, tiny_bert_with_vocab, capsys):
    (tmp_path / "run").mkdir()
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "run", "--stop-after", "1", "--checkpoint-every", "50"))
    (tmp_path / "run" / "student" / "checkpoint.pt").unlink()        # as if killed before its first checkpoint
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "run", "--resume", "--stop-after", "1",
                         "--checkpoint-every", "50"))
    assert "no checkpoint to resume from" in capsys.readouterr().out


def test_15_progress_names_the_phase_and_shows_the_time_left(tmp_path, tiny_bert_with_vocab, capsys):
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "dense", "--sparsity", "0", "--epochs", "4"))
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("dense fine-tuning [")]
    assert lines and all("elapsed, ~" in l and "left" in l for l in lines)


def test_15_a_run_estimated_at_over_a_day_says_so_and_goes_on(tmp_path, tiny_bert_with_vocab, capsys, monkeypatch):
    monkeypatch.setattr(runtime, "device_flops", lambda device: 1e3)      # a very slow device
    train.main(base_args(tiny_bert_with_vocab, tmp_path / "run"))
    out = capsys.readouterr().out
    assert "this run is estimated at" in out and "days" in out and "it goes on" in out
    assert (tmp_path / "run" / "results.json").is_file()


# 9, 10, 14 (continued): every flag classified; flags that cannot do what they say; the teacher's
# positions; Ctrl-C while the inputs are checked --------------------------------------------------------

def test_9_every_flag_either_always_applies_or_has_a_rule():
    """A new flag must be put in cli.FLAG_RULES (when it does nothing) or cli.ALWAYS_APPLIES: else it
    could be silently ignored in some mode without anyone having decided so."""
    dests = {a.dest for a in cli.parser()._actions if a.dest != "help"}
    ruled = {name for flags, _, _ in cli.FLAG_RULES for name in flags}
    assert dests - ruled - cli.ALWAYS_APPLIES == set()
    assert not (cli.ALWAYS_APPLIES - dests), "ALWAYS_APPLIES names a flag the parser does not have"


@pytest.mark.parametrize("flags, message", [
    (["--hardness", "0"], "--hardness 0 gives the KD loss no weight"),
    (["--sparsity", "0.5", "--init-sparsity", "0.7"], "--init-sparsity 0.7 is above --sparsity 0.5"),
])
def test_9_flags_that_cannot_do_what_they_say_are_refused(tmp_path, tiny_bert_with_vocab, mc_teacher, capsys, flags,
                                                          message):
    line = refused(kd_args(tiny_bert_with_vocab, tmp_path / "out", *flags, teacher=mc_teacher), capsys)
    assert message in line, line
    assert not (tmp_path / "out").exists()


def test_10_a_teacher_with_fewer_positions_than_max_length_is_refused(tmp_path, tiny_bert_with_vocab, mc_teacher,
                                                                       run_copy, capsys):
    """The teacher reads the student's sequences: before anything is deleted, its positions are checked."""
    teacher = tmp_path / "t"                     # a CSQA model with the student's vocabulary and 32 positions
    save_tiny(teacher, "bert", arch="ForMultipleChoice", max_position_embeddings=32)
    (teacher / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    capsys.readouterr()                          # transformers' progress bar, while saving it
    before = snapshot(run_copy)
    line = refused(kd_args(tiny_bert_with_vocab, run_copy, "--max-length", "48", "--overwrite", teacher=teacher), capsys)
    assert f"--max-length 48 is longer than --teacher {teacher}'s 32 positions" in line, line
    assert snapshot(run_copy) == before


def test_14_ctrl_c_while_the_inputs_are_checked_is_one_line(tmp_path, tiny_bert_with_vocab, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "resolve", interrupted)
    with pytest.raises(SystemExit) as e:
        train.main(base_args(tiny_bert_with_vocab, tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and err == ["train.py: interrupted while checking the inputs; nothing was written."]
    assert not (tmp_path / "out").exists()


def test_9_keep_checkpoints_holds_for_the_resume_that_finishes_the_run(tmp_path, tiny_bert_with_vocab):
    """--keep-checkpoints, given to a run that stops early, is not forgotten by the --resume that ends it."""
    out = tmp_path / "out"
    train.main(base_args(tiny_bert_with_vocab, out, "--keep-checkpoints", "--stop-after", "3", "--checkpoint-every", "1"))
    train.main(base_args(tiny_bert_with_vocab, out, "--resume"))
    assert (out / "results.json").is_file() and (out / "student" / "checkpoint.pt").is_file()


# After review: more of the same classes ------------------------------------------------------------

def test_10_a_pattern_whose_groups_straddle_rows_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    """2:4 groups 4 consecutive weights of a row; the tiny model's output matrices have rows of 37."""
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / "out", "--pattern", "2:4", "--sparsity", "0.5"), capsys)
    assert "groups of 4 weights along each row" in line and "rows hold 37" in line, line
    assert not (tmp_path / "out").exists()


def test_9_stop_after_at_or_before_the_resumed_step_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    out = tmp_path / "out"
    train.main(base_args(tiny_bert_with_vocab, out, "--stop-after", "6", "--checkpoint-every", "1"))
    before = snapshot(out)
    line = refused(base_args(tiny_bert_with_vocab, out, "--resume", "--stop-after", "4"), capsys)
    assert "--stop-after 4 is at or before step 6, where the student resumes" in line, line
    assert snapshot(out) == before


def test_15_a_finished_one_shot_run_says_overwrite_never_resume(tmp_path, mc_teacher, capsys):
    argv = ["--task", "csqa", "--model", str(mc_teacher), "--data-dir", str(FIX), "--batch-size", "1",
            "--out-dir", str(tmp_path / "out"), "--oneshot", "0.5"]
    train.main(argv)
    before = snapshot(tmp_path / "out")
    line = refused(argv, capsys)
    assert "already holds this one-shot run (finished); pass --overwrite" in line and "--resume" not in line, line
    assert snapshot(tmp_path / "out") == before


def test_6_a_new_run_in_a_folder_holding_a_dead_runs_record_writes_its_own(tmp_path, tiny_bert_with_vocab):
    """A run killed before it wrote anything but run.json is started again without --resume: the record
    is the new run's (its fingerprints and flags), not the dead one's, or a later --resume would be
    checked against the wrong data."""
    out = tmp_path / "out"
    out.mkdir()
    record = {"written_by": rundir.WRITTEN_BY, "fingerprints": {"data": "stale"}, "keep_checkpoints": True,
              "written": ["run.json"]}
    argv = base_args(tiny_bert_with_vocab, out)
    args = cli.resolve(cli.parse_args(argv))
    (out / "run.json").write_text(json.dumps({**record, **rundir.run_defining(vars(args))}))
    train.main(argv)
    now = json.loads((out / "run.json").read_text())
    assert now["fingerprints"]["data"] != "stale" and now["keep_checkpoints"] is False


def test_2_ctrl_c_while_the_folder_is_prepared_leaves_it_unlocked(tmp_path, tiny_bert_with_vocab, capsys,
                                                                    monkeypatch):
    def interrupted(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr(rundir, "start_folder", interrupted)
    with pytest.raises(SystemExit) as e:
        train.main(base_args(tiny_bert_with_vocab, tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and err == ["train.py: interrupted before training began; run the same command again."]
    assert not (tmp_path / "out").exists()                  # it made the folder, and took it away again


def test_2_a_lock_this_process_still_holds_is_an_error_not_a_wait(tmp_path):
    (tmp_path / rundir.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                   "started": rundir.process_start(os.getpid())}))
    with pytest.raises(rundir.RunError, match="held by this very process"):
        rundir.take_lock(tmp_path)
