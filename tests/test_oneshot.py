"""One-shot pruning (train.py --oneshot) on tiny models: exact sparsities, the shared Fisher, recomputations."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cli
import data
import model as modeling
import obert
import prune
import runtime
import train

FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, tiny_bert_with_vocab):
    """A tiny model fine-tuned (dense, 3 epochs) on the CSQA fixtures: a ...ForMultipleChoice folder."""
    out = tmp_path_factory.mktemp("ft") / "run"
    train.main(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(FIX), "--batch-size", "1",
                "--epochs", "3", "--sparsity", "0", "--no-kd", "--out-dir", str(out)])
    return out / "model"


def oneshot_args(model, out, *extra):
    """A one-shot run on the fixtures; oBERT's Fisher flags only with --method obert (else they do nothing)."""
    fisher = ["--num-grads", "3", "--block-size", "8", "--damp", "1e-3"] if "obert" in extra else []
    return ["--task", "csqa", "--model", str(model), "--data-dir", str(FIX), "--batch-size", "1", "--out-dir", str(out),
            *fisher, *extra]


def encoder_weights(folder):
    w = load_file(str(folder / "model.safetensors"))
    return {k: v for k, v in w.items() if ".encoder.layer." in k and k.endswith("weight") and "LayerNorm" not in k}


@pytest.mark.parametrize("method", ["gmp", "obert"])
def test_oneshot_masks_have_exactly_the_sparsity_encoder_only(fine_tuned, tmp_path, method):
    train.main(oneshot_args(fine_tuned, tmp_path, "--oneshot", "0.5,0.8", "--method", method, "--export"))
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["sparsity"] for r in res["oneshot"]] == [0.0, 0.5, 0.8] and all("accuracy" in r["metric"] for r in res["oneshot"])
    dense = load_file(str(fine_tuned / "model.safetensors"))
    for s in (0.5, 0.8):
        folder = tmp_path / f"oneshot-{s:g}"
        enc = encoder_weights(folder)
        n = sum(v.numel() for v in enc.values())
        assert sum(int((v == 0).sum()) for v in enc.values()) == round(s * n)
        pruned = load_file(str(folder / "model.safetensors"))
        for k, v in pruned.items():                      # everything outside the encoder's Linears untouched
            if k not in enc:
                assert torch.equal(v, dense[k]), k
        assert (folder / "vocab.txt").is_file()
    assert not (tmp_path / "model").exists()             # no export unless asked: tested without --export below


def test_oneshot_without_export_writes_only_the_table(fine_tuned, tmp_path, capsys):
    train.main(oneshot_args(fine_tuned, tmp_path, "--oneshot", "0.6"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "run.json"]
    assert "one-shot gmp" in capsys.readouterr().out


def test_oneshot_with_one_recomputation_equals_a_plain_prune_step(fine_tuned, tmp_path):
    train.main(oneshot_args(fine_tuned, tmp_path, "--oneshot", "0.6", "--method", "obert", "--export"))
    args = cli.resolve(cli.parse_args(oneshot_args(fine_tuned, tmp_path / "x", "--oneshot", "0.6", "--method",
                                                        "obert")))
    rt = runtime.Runtime(torch.device("cpu"))
    d = runtime.load_data(args, data.TASKS["csqa"], rt)
    model = runtime.load_model(fine_tuned, d.task, 42, "cpu").eval()
    params = dict(model.named_parameters())
    names = prune.prunable_names(model)
    finvs = train.gather_statistic(prune.METHODS["obert"], model, names, {}, d, args, rt, None, step=1)
    masks = prune.prune_step({n: params[n] for n in names}, prune.METHODS["obert"], 0.6, stats=finvs)
    prune.apply_masks(params, masks)
    got = load_file(str(tmp_path / "oneshot-0.6" / "model.safetensors"))
    table = modeling.name_table(model)                    # our names -> the exported (reference) names
    for n in names:
        assert torch.equal(got[table[n]], params[n].detach()), n


@pytest.mark.parametrize("block", ["8", "2"])       # matrix-free (B > m = 3 gradients), and blocks
def test_one_fisher_for_all_sparsities_equals_one_run_per_sparsity(fine_tuned, tmp_path, monkeypatch, block):
    """Each single-sparsity run equals a plain prune step (the test above), so this ties the shared
    Fisher to the per-sparsity one; it also catches F⁻¹ being changed by one sparsity's update."""
    calls = []
    collect = train.gather_statistic
    monkeypatch.setattr(train, "gather_statistic", lambda *a, **k: calls.append(1) or collect(*a, **k))
    obert = ["--method", "obert", "--block-size", block, "--export"]
    train.main(oneshot_args(fine_tuned, tmp_path / "both", "--oneshot", "0.5,0.7", *obert))
    assert len(calls) == 1                      # computed once, at the dense weights
    for s in ("0.5", "0.7"):
        train.main(oneshot_args(fine_tuned, tmp_path / s, "--oneshot", s, *obert))
        want = load_file(str(tmp_path / s / f"oneshot-{s}" / "model.safetensors"))
        got = load_file(str(tmp_path / "both" / f"oneshot-{s}" / "model.safetensors"))
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert len(calls) == 3
    assert json.loads((tmp_path / "both" / "results.json").read_text())["fisher_seconds"] >= 0


def test_each_recomputation_sees_the_previous_increments_masks(fine_tuned, tmp_path, monkeypatch):
    seen = []
    collect = train.gather_statistic

    def recording(method, model, names, masks, *a, **k):
        seen.append(sum(int((~m).sum()) for m in masks.values()) if masks else 0)
        finvs = collect(method, model, names, masks, *a, **k)
        for n, m in masks.items():                       # the Fisher of pruned weights is damp * I: no gradient
            dead = obert.as_blocks((~m).flatten(), 8)
            assert torch.allclose(obert.inverse_diag(finvs[n])[dead], torch.tensor(1e3))
        return finvs
    monkeypatch.setattr(train, "gather_statistic", recording)
    train.main(oneshot_args(fine_tuned, tmp_path, "--oneshot", "0.6", "--method", "obert", "--recomputations", "3"))
    n = sum(v.numel() for v in encoder_weights(fine_tuned).values())
    assert seen == [0, round(0.2 * n), round(0.4 * n)]


def test_oneshot_of_a_model_without_its_task_head_is_refused(tiny_bert_with_vocab, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(oneshot_args(tiny_bert_with_vocab, tmp_path / "o", "--oneshot", "0.5"))
    assert e.value.code == 2 and "--oneshot prunes a fine-tuned model" in capsys.readouterr().err
