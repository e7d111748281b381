"""train.py end to end on a tiny random model and the hand-written fixtures, on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
import prune
import runtime
import train

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"


def args_for(model, out, *extra):
    """A short run on the fixtures; the teacher's epochs only where this run trains a teacher (a flag
    that would do nothing is refused)."""
    sparsity = extra[extra.index("--sparsity") + 1] if "--sparsity" in extra else "0.8"
    trains_teacher = float(sparsity) > 0 and not {"--no-kd", "--teacher", "--oneshot"} & set(extra)
    return ["--task", "csqa", "--model", str(model), "--data-dir", str(FIX), "--batch-size", "1",
            "--out-dir", str(out), "--epochs", "5", *(["--teacher-epochs", "1"] if trains_teacher else []),
            "--log-every", "5", *extra]


def watch_masks(monkeypatch):
    """train.py calls apply_masks after every optimizer step; check every invariant there."""
    seen, optimizers = [], []
    make_optimizer, original = train.optimizer_for, prune.apply_masks
    monkeypatch.setattr(train, "optimizer_for", lambda *a: optimizers.append(make_optimizer(*a)) or optimizers[-1])

    def checked(params, masks):
        original(params, masks)
        for name, m in masks.items():
            assert (params[name][~m] == 0.0).all(), name
            state = optimizers[-1].state.get(params[name], {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    assert (state[key][~m] == 0).all(), (name, key)
        seen.append(sum(int((~m).sum()) for m in masks.values()))
    monkeypatch.setattr(prune, "apply_masks", checked)
    return seen


@pytest.mark.parametrize("method", ["gmp", "obert"])
def test_short_run_reaches_target_with_embeddings_and_head_dense(tmp_path, tiny_bert_with_vocab, monkeypatch, method):
    seen = watch_masks(monkeypatch)
    fisher = ["--num-grads", "4"] if method == "obert" else []
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.8", "--method", method, *fisher,
                        "--keep-checkpoints"))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["sparsity"]["encoder"] == pytest.approx(0.8, abs=5e-4)
    assert res["sparsity"]["head"] == 0.0 and res["sparsity"]["embeddings"] < 0.02   # only [PAD]'s zero row
    assert seen and seen == sorted(seen)                    # pruned count only grows, checked every step
    ck = torch.load(tmp_path / "student" / "checkpoint.pt", weights_only=False)
    n_encoder = sum(ck["model"][n].numel() for n in ck["masks"])
    assert seen[-1] == round(0.8 * n_encoder)
    assert (tmp_path / "teacher" / "model" / "config.json").is_file()
    assert "accuracy" in res["metric"] and "accuracy" in res["teacher_metric"]
    lines = [json.loads(l) for l in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert any("eval" in l for l in lines) and any("loss" in l for l in lines)


def test_exported_model_loads_in_transformers_with_zeros_in_place(tmp_path, tiny_bert_with_vocab):
    import transformers
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.5", "--no-kd"))
    ref, info = transformers.BertForMultipleChoice.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    w = ref.bert.encoder.layer[0].attention.self.query.weight
    zeros = sum(int((p == 0).sum()) for n, p in ref.named_parameters() if "encoder" in n and n.endswith("weight") and "LayerNorm" not in n)
    count = sum(p.numel() for n, p in ref.named_parameters() if "encoder" in n and n.endswith("weight") and "LayerNorm" not in n)
    assert zeros / count == pytest.approx(0.5, abs=1e-3) and w.shape == (32, 32)


def test_resumed_run_equals_uninterrupted(tmp_path, tiny_bert_with_vocab):
    common = ["--sparsity", "0.8", "--checkpoint-every", "2", "--hardness", "0.5"]
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "a", *common))
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "b", *common, "--stop-after", "7"))   # returns, exit 0
    assert not (tmp_path / "b" / "model").exists()
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "b", *common, "--resume"))
    from safetensors.torch import load_file
    a, b = load_file(str(tmp_path / "a" / "model" / "model.safetensors")), load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_processes_gloo_equal_masks(tmp_path, tiny_bert_with_vocab):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           *args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.8", "--method", "obert", "--num-grads", "4",
                     "--device", "cpu")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["world_size"] == 2 and res["masks_equal_across_ranks"] is True
    assert res["sparsity"]["encoder"] == pytest.approx(0.8, abs=5e-4)


@pytest.mark.parametrize("extra, message", [
    (["--task", "nope"], "argument --task: invalid choice: .nope."),
    (["--method", "sgd"], "argument --method: invalid choice: .sgd."),
    (["--sparsity", "1.0"], r"--sparsity must be in \[0, 1\)"),
    (["--sparsity", "-0.1"], r"--sparsity must be in \[0, 1\)"),
    (["--pattern", "2:4"], "pattern 2:4 gives exactly 0.5 sparsity, not 0.8"),
    (["--pattern", "diagonal"], "unknown pattern 'diagonal'"),
    (["--model", "/no/such/folder"], "is not a model folder"),
    (["--model", "no-such-org/no-such-model"], "hub cannot be reached|hub could not"),
    (["--data-dir", "/no/such/data"], "--data-dir /no/such/data is not a folder"),
])
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(tmp_path, tiny_bert_with_vocab, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        train.main(args_for(tiny_bert_with_vocab, tmp_path / "out") + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: ") and len(err.splitlines()) == 1
    import re
    assert re.search(message, err)
    assert not (tmp_path / "out").exists()


def test_teacher_with_wrong_head_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    from conftest import save_tiny
    save_tiny(tmp_path / "t", "bert", "ForSequenceClassification", num_labels=3)
    with pytest.raises(SystemExit) as e:
        train.main(args_for(tiny_bert_with_vocab, tmp_path / "out", "--teacher", str(tmp_path / "t")))
    assert e.value.code == 2 and "needs a ...ForMultipleChoice" in capsys.readouterr().err


def test_output_folder_of_a_different_run_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0", "--no-kd", "--epochs", "1"))
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(SystemExit) as e:
        train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.5", "--no-kd", "--epochs", "2"))
    assert e.value.code == 2 and "holds a different run" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == before
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.5", "--no-kd", "--epochs", "2", "--overwrite"))
    assert json.loads((tmp_path / "results.json").read_text())["target_sparsity"] == 0.5


def test_malformed_data_exits_2_naming_the_line(tmp_path, tiny_bert_with_vocab, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train_rand_split.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "d" / "dev_rand_split.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(SystemExit) as e:
        train.main(args_for(tiny_bert_with_vocab, tmp_path / "out") + ["--data-dir", str(tmp_path / "d")])
    assert e.value.code == 2 and "train_rand_split.jsonl:line 1: missing field" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True).stdout
    for opt in ("--task", "--sparsity", "--method", "--pattern", "--scope", "--init-sparsity", "--schedule", "--epochs",
                "--lr", "--batch-size", "--grad-accum", "--max-length", "--temperature", "--hardness", "--no-kd",
                "--prune-embeddings", "--prune-head", "--seed", "--out-dir", "--resume", "--device", "--dtype",
                "--compile", "--max-steps", "--limit-train", "--limit-eval", "--teacher", "--data-dir", "--model"):
        assert opt in out


@pytest.mark.parametrize("task, arch", [("winogrande", "RobertaForMultipleChoice"),
                                        ("sst2", "RobertaForSequenceClassification")])
def test_roberta_runs_end_to_end_and_exports(tmp_path, tiny_roberta_with_vocab, task, arch):
    import transformers
    train.main(["--task", task, "--model", str(tiny_roberta_with_vocab), "--data-dir", str(FIX), "--batch-size", "1",
                "--out-dir", str(tmp_path), "--epochs", "4", "--teacher-epochs", "1", "--sparsity", "0.6"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["sparsity"]["encoder"] == pytest.approx(0.6, abs=5e-4) and res["sparsity"]["head"] == 0.0
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["architectures"] == [arch]
    _, info = getattr(transformers, arch).from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


# -- extending: a task is one record, a criterion is one function ----------------------------------

def test_a_task_added_as_one_record_trains_end_to_end(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """A GLUE-style sentence-pair task with string labels, defined here and nowhere else."""
    import data
    rows = [("the sky is blue", "the sky has a colour", "yes"), ("cats bark", "cats are dogs", "no"),
            ("water is wet", "water is dry", "no"), ("a b c", "a b", "yes")]
    folder = tmp_path / "claims"
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("premise\tclaim\tverdict\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    task = data.Task(name="claims", kind="classification", labels=("no", "yes"), first=("premise",),
                     second=("claim",), label=("verdict",), files={"train": "train.tsv", "validation": "dev.tsv"},
                     hub=("no-such/claims", None), batch_size=2, epochs=4, teacher_epochs=1)
    monkeypatch.setitem(data.TASKS, "claims", task)
    assert [e["label"] for e in data.load_split(task, "train", tmp_path)] == [1, 0, 0, 1]
    train.main(["--task", "claims", "--model", str(tiny_bert_with_vocab), "--data-dir", str(tmp_path),
                "--out-dir", str(tmp_path / "out"), "--sparsity", "0.5"])
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["sparsity"]["encoder"] == pytest.approx(0.5, abs=5e-4) and "accuracy" in res["metric"]
    assert res["args"]["batch_size"] == 2 and res["args"]["epochs"] == 4        # the record's defaults
    cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and len(cfg["id2label"]) == 2


def test_a_criterion_added_to_the_registry_prunes_through_train_py(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """A scoring function that ranks weights by position: per matrix, the first k are pruned."""
    calls = []

    def by_position(weights, pattern, fisher):
        calls.append((pattern, fisher))
        return {n: torch.arange(w.numel(), dtype=torch.float32).view(w.shape) for n, w in weights.items()}
    monkeypatch.setitem(prune.METHODS, "position", prune.Method(by_position, help="first weights first"))
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.6", "--method", "position",
                        "--scope", "layer", "--no-kd", "--init-sparsity", "0.3"))
    assert len(calls) == 7 and all(c == ("unstructured", None) for c in calls)   # the recipe's 7 pruning steps
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    matrices = [k for k in weights if ".encoder.layer." in k and k.endswith("dense.weight") or
                k.endswith(("query.weight", "key.weight", "value.weight"))]
    assert len(matrices) == 12
    for k in matrices:
        flat = weights[k].flatten()
        n_pruned = round(0.6 * flat.numel())
        assert (flat[:n_pruned] == 0).all() and (flat[n_pruned:] != 0).all(), k


def test_offline_main_command_fails_in_seconds_with_one_sentence(tmp_path):
    """`python train.py --task csqa --sparsity 0.8` with the hub unreachable: no retry wall, exit 2."""
    import time
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")   # port 9: nothing listens
    t0 = time.time()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "csqa", "--sparsity", "0.8"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    seconds = time.time() - t0
    assert done.returncode == 2 and seconds < 12, (seconds, done.stderr)   # the hub client alone retries ~25 s
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "roberta-large" in lines[0] and "cannot be reached" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_the_teacher_distils_in_eval_mode(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """Dropout off in the teacher for every soft target (evaluating it first must not switch it back)."""
    teachers, modes = [], []
    get_teacher, forward = train.get_teacher, runtime.forward
    monkeypatch.setattr(train, "get_teacher", lambda *a, **k: (lambda t: teachers.append(t[0]) or t)(get_teacher(*a, **k)))

    def watching(net, batch):
        if teachers and net is teachers[0]:
            modes.append(net.training)
        return forward(net, batch)
    monkeypatch.setattr(runtime, "forward", watching)
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.8", "--epochs", "2"))
    assert len(modes) >= 6 and not any(modes)          # 6 student steps, each with the teacher's soft targets


def test_evaluate_leaves_the_model_in_its_mode(tiny_bert_with_vocab):
    import data
    task = data.TASKS["csqa"]
    tok = data.load_tokenizer(tiny_bert_with_vocab)
    ex = data.load_split(task, "validation", FIX)
    d = runtime.Data(task, [], None, ex, data.encode(task, ex, tok, 64), data.pad_id(tok), 64)
    m = runtime.load_model(tiny_bert_with_vocab, task, 0, "cpu")
    for mode in (False, True):
        m.train(mode)
        runtime.evaluate(m, d, 2, runtime.Runtime(torch.device("cpu")))
        assert m.training == mode


def test_a_pruning_step_that_asks_for_nothing_new_is_skipped(tmp_path, tiny_bert_with_vocab, monkeypatch):
    calls = []
    event = train.pruning_event
    monkeypatch.setattr(train, "pruning_event", lambda *a, **k: calls.append(a[1]) or event(*a, **k))
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.3", "--no-kd"))
    # s_i = 0.3 by depth (2 layers), the target: the first pruning step reaches it, the six after it ask
    # for nothing new (as BERT-base's default s_i = 0.7 does for a target of 0.5 or less)
    assert calls == [0.3]


def test_task_records_give_the_recipes_defaults(tiny_bert_with_vocab, tmp_path):
    """SparseML's GLUE recipes: lr 5e-5, Fisher gradients of 16, no weight decay; SQuAD's: 8e-5, 8;
    SMC-Bench's RoBERTa tasks keep fairseq's weight decay 0.01. s_i by depth: the tiny model has 2 layers."""
    def resolved(task, *extra):
        return cli.resolve(cli.parse_args(["--task", task, "--model", str(tiny_bert_with_vocab), "--data-dir",
                                               str(FIX), "--out-dir", str(tmp_path / task), *extra]))
    for task, lr, fisher_batch, decay in (("mnli", 5e-5, 16, 0.0), ("sst2", 5e-5, 16, 0.0), ("qqp", 5e-5, 16, 0.0),
                                          ("squad", 8e-5, 8, 0.0), ("csqa", 1e-5, 8, 0.01)):
        a = resolved(task)
        assert (a.lr, a.lr_min, a.fisher_batch_size, a.weight_decay) == pytest.approx((lr, lr / 10, fisher_batch, decay))
        assert a.init_sparsity == 0.3
    a = resolved("sst2", "--weight-decay", "0.1", "--fisher-batch-size", "4", "--init-sparsity", "0.5", "--method",
                 "obert")
    assert (a.weight_decay, a.fisher_batch_size, a.init_sparsity) == (0.1, 4, 0.5)


def test_holdout_is_scored_and_never_trained_on(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """--holdout N: the training file's last N examples are left out of training and scored beside dev."""
    import data
    seen = []
    load_data = runtime.load_data
    monkeypatch.setattr(runtime, "load_data", lambda *a: (lambda d: seen.append(d) or d)(load_data(*a)))
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.5", "--holdout", "2", "--epochs", "30"))
    every = data.load_split(data.TASKS["csqa"], "train", FIX)
    d = seen[0]
    assert len(d.train) == len(every) - 2 and [e["id"] for e in d.holdout_examples] == [e["id"] for e in every[-2:]]
    res = json.loads((tmp_path / "results.json").read_text())
    assert "accuracy" in res["holdout_metric"] and "accuracy" in res["teacher_holdout_metric"]
    evals = [json.loads(l) for l in (tmp_path / "student" / "log.jsonl").read_text().splitlines() if "eval" in l]
    sparsities = [e["sparsity"] for e in evals]     # each cycle's, at its end: the dense phase first, then rising
    assert sparsities[0] == 0.0 and sparsities == sorted(sparsities) and 0.3 <= sparsities[1] < 0.5
