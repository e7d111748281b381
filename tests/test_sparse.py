"""sparse.py against the dense masked Linear, train.py --sparse-backprop against a dense run, and
length-grouped batches (data.py): same examples, less padding, seeded, resumable, per rank."""
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cli
import data
import sparse_inference
import sparse_backprop
import train

pytest.importorskip("sparseprop")


@pytest.mark.parametrize("shape, sparsity", [((384, 1536), 0.9), ((1536, 384), 0.97), ((37, 101), 0.5),
                                             ((64, 48), 0.8), ((16, 24), 1.0)])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_the_dense_masked_linear(shape, sparsity, bias):
    g = torch.Generator().manual_seed(0)
    out_f, in_f = shape
    linear = torch.nn.Linear(in_f, out_f, bias=bias)
    mask = torch.rand(shape, generator=g) >= sparsity
    with torch.no_grad():
        linear.weight.mul_(mask)
    x = torch.randn(3, 11, in_f, generator=g, requires_grad=True)              # a 3-D batch
    grad_y = torch.randn(3, 11, out_f, generator=g)
    F.linear(x, linear.weight, linear.bias).backward(grad_y)
    want = [F.linear(x, linear.weight, linear.bias).detach(), x.grad.clone(), linear.weight.grad * mask]
    want_b = linear.bias.grad.clone() if bias else None
    x.grad, linear.weight.grad = None, None
    if bias:
        linear.bias.grad = None
    sparse_backprop.use_sparse(linear, sparse_backprop.csr_index(mask))
    y = linear(x)
    y.backward(grad_y)
    for got, ref in zip([y.detach(), x.grad, linear.weight.grad], want):
        assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert (linear.weight.grad[~mask] == 0).all()                               # pruned weights get exactly 0
    if bias:
        assert torch.allclose(linear.bias.grad, want_b, rtol=1e-5, atol=1e-5)
    sparse_inference.use_dense(linear)
    assert "forward" not in vars(linear)


@pytest.mark.parametrize("offset", [0, 1])
def test_transposed_equals_torch_for_aligned_and_unaligned_inputs(offset):
    a = torch.randn(64 * 48 + offset)[offset:].view(64, 48)          # offset 1: 4 bytes off, not 32-aligned
    assert torch.equal(sparse_backprop.transposed(a), a.t()) and torch.equal(sparse_backprop.transposed(a[:, :37]), a[:, :37].t())


def test_csr_index_matches_torch_csr():
    mask = torch.rand(7, 9, generator=torch.Generator().manual_seed(1)) > 0.6
    mask[3] = False                                                             # an empty row
    idx = sparse_backprop.csr_index(mask)
    with warnings.catch_warnings():          # torch warns "CSR support is in beta" once per process
        warnings.simplefilter("ignore", UserWarning)
        csr = mask.float().to_sparse_csr()
    assert torch.equal(idx.indptr.long(), csr.crow_indices()) and torch.equal(idx.indices.long(), csr.col_indices())
    assert torch.equal(idx.flat, mask.flatten().nonzero().squeeze(1))


def test_route_keeps_dense_below_80_percent_and_times_above(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    masks = {"0.weight": torch.rand(8, 8) > 0.5, "1.weight": torch.zeros(8, 8, dtype=torch.bool)}
    masks["1.weight"][0, 0] = True
    timed = []
    monkeypatch.setattr(sparse_backprop, "time_fwd_bwd", lambda lin, x: timed.append(lin) or ("forward" not in vars(lin)))
    assert sparse_backprop.route(model, masks, 4) == {"0.weight": "dense", "1.weight": "sparse"}
    assert timed == [model[1]] * 12 and "forward" in vars(model[1]) and "forward" not in vars(model[0])   # 6 rounds x 2


# -- train.py --sparse-backprop ----------------------------------------------------------------------

def prefer_sparse(monkeypatch):
    """Tiny matrices are faster dense; make every timed choice fall on the sparse kernels."""
    monkeypatch.setattr(sparse_backprop, "time_fwd_bwd", lambda lin, x: 0.0 if "forward" in vars(lin) else 1.0)


def test_sparse_backprop_run_equals_the_dense_run(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """Target 0.8, per matrix: each first reaches 80% at one of the last pruning steps, so both runs
    are bit-identical until then; at the first step through the kernels the gradients must agree to
    float rounding, and the runs end with the same masks, metric and (within AdamW's steps) weights.
    The sparse run evaluates through this project's inference kernel, and trains on after it."""
    prefer_sparse(monkeypatch)
    calls, grads, evaluated = [], {"dense": [], "sparse": []}, []
    tiled_forward = sparse_inference.tiled_forward                                     # evaluation's kernel (>= 80% sparse)
    monkeypatch.setattr(sparse_inference, "tiled_forward", lambda lin, x: evaluated.append(len(calls)) or tiled_forward(lin, x))
    apply = sparse_backprop.SparseLinearFunction.apply
    monkeypatch.setattr(sparse_backprop.SparseLinearFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    masked_gradients = train.masked_gradients

    routed_at = []

    def recording(model, masks, clip):
        norm = masked_gradients(model, masks, clip)                          # masked (and clipped) as AdamW sees them
        grads[run].append({n: p.grad.clone() for n, p in model.named_parameters() if n in masks})
        if calls and not routed_at:
            routed_at.append(len(grads[run]) - 1)                            # the first step through the kernels
        return norm
    monkeypatch.setattr(train, "masked_gradients", recording)
    common = ["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(Path(__file__).parent / "fixtures"),
              "--batch-size", "1", "--epochs", "10", "--sparsity", "0.8", "--scope", "layer", "--lr", "1e-5", "--no-kd",
              "--keep-checkpoints"]
    for run in ("dense", "sparse"):
        train.main(common + ["--out-dir", str(tmp_path / run)] + (["--sparse-backprop"] if run == "sparse" else []))
        assert bool(calls) == (run == "sparse") == bool(evaluated)             # the kernels ran, in that run only
    first = next(i for i, (a, b) in enumerate(zip(grads["dense"], grads["sparse"])) if a.keys() and
                 not all(torch.equal(a[n], b[n]) for n in a))
    assert first == routed_at[0] >= 22                                         # bit-identical until the kernels run
    for n, g in grads["dense"][first].items():
        assert torch.allclose(grads["sparse"][first][n], g, rtol=1e-4, atol=1e-7), n
    a, b = (torch.load(tmp_path / r / "student" / "checkpoint.pt", weights_only=False) for r in ("dense", "sparse"))
    assert a["masks"].keys() == b["masks"].keys() and all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"])
    for n in a["model"]:
        assert torch.allclose(a["model"][n], b["model"][n], rtol=0, atol=1e-4), n        # 4 steps x 2 lr
    ra, rb = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("dense", "sparse"))
    assert ra["metric"] == rb["metric"] and ra["sparsity"] == rb["sparsity"]


def test_sparse_backprop_evaluates_through_the_inference_kernel_and_trains_on_through_sparseprop(
        tmp_path, tiny_bert_with_vocab, monkeypatch):
    """A first jump to 85%: every matrix is routed from the first pruning step on, so each evaluation at
    the end of a cycle runs this project's kernel, and the training steps after it run SparseProp's
    again (that the block restores each Linear's own kernel is test_sparse_kernel.py's)."""
    prefer_sparse(monkeypatch)
    timeline = []
    apply, tiled_forward = sparse_backprop.SparseLinearFunction.apply, sparse_inference.tiled_forward
    monkeypatch.setattr(sparse_backprop.SparseLinearFunction, "apply", lambda *a: timeline.append("train") or apply(*a))
    monkeypatch.setattr(sparse_inference, "tiled_forward", lambda lin, x: timeline.append("eval") or tiled_forward(lin, x))
    train.main(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(Path(__file__).parent / "fixtures"),
                "--batch-size", "1", "--epochs", "10", "--sparsity", "0.9", "--init-sparsity", "0.85", "--scope", "layer",
                "--no-kd", "--sparse-backprop", "--out-dir", str(tmp_path / "run")])
    first_eval = timeline.index("eval")
    assert "train" in timeline[first_eval:] and timeline[-1] == "eval"         # trained on; the export's evaluation
    assert json.loads((tmp_path / "run" / "results.json").read_text())["metric"]


def test_sparse_backprop_says_before_the_run_when_its_evaluation_kernel_cannot_be_built(tmp_path, tiny_bert_with_vocab,
                                                                                        monkeypatch):
    monkeypatch.setattr(sparse_inference, "build_tiled_kernel", lambda: (None, "CalledProcessError: no compiler"))
    args = cli.parse_args(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--out-dir", str(tmp_path / "o"),
                           "--sparse-backprop", "--no-kd"])
    cli.resolve(args)
    assert any("evaluates through SparseProp's kernels" in n and "no compiler" in n for n in args.notes)
    monkeypatch.undo()
    if sparse_inference.build_tiled_kernel()[0] is None:
        pytest.skip("no C++ compiler here: the kernel cannot be built, so the note is right to stay")
    cli.resolve(args := cli.parse_args(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--out-dir",
                                        str(tmp_path / "o"), "--sparse-backprop", "--no-kd"]))
    assert not any("SparseProp" in n for n in args.notes)


def test_sparse_backprop_is_refused_on_a_gpu_and_with_compile(tmp_path, tiny_bert_with_vocab, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--out-dir", str(tmp_path / "o"),
                    "--sparse-backprop", "--compile"])
    assert e.value.code == 2 and "torch.compile" in capsys.readouterr().err and not (tmp_path / "o").exists()


# -- length-grouped batches ---------------------------------------------------------------------------

def features(n=300, seed=0):
    lengths = torch.randint(3, 60, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [{"input_ids": [5] * k, "token_type_ids": [0] * k, "label": i} for i, k in enumerate(lengths)]


def epoch_batches(loader, epoch):
    data.set_epoch(loader, epoch)
    return [b for b in loader]


def test_grouped_batches_hold_the_same_examples_with_less_padding_and_are_seeded():
    feats = features()
    grouped, plain = (data.make_loader(feats, 8, True, 3, 0, group_by_length=g) for g in (True, False))
    assert len(grouped) == len(plain) == 38
    for epoch in (0, 1):
        g, p = epoch_batches(grouped, epoch), epoch_batches(plain, epoch)
        assert sorted(torch.cat([b["labels"] for b in g]).tolist()) == list(range(300))
        assert sum(b["input_ids"].numel() for b in g) < 0.7 * sum(b["input_ids"].numel() for b in p)
    again = data.make_loader(feats, 8, True, 3, 0, group_by_length=True)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(epoch_batches(grouped, 1), epoch_batches(again, 1)))
    assert not all(torch.equal(x["labels"], y["labels"]) for x, y in zip(epoch_batches(grouped, 0),
                                                                         epoch_batches(grouped, 1)))


def test_grouped_batches_split_between_ranks_cover_the_epoch_once(monkeypatch):
    feats = features(101)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a: rank)
        monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
        loader = data.make_loader(feats, 4, True, 0, 0, distributed=True, group_by_length=True)
        seen += torch.cat([b["labels"] for b in epoch_batches(loader, 2)]).tolist()
    assert sorted(set(seen)) == list(range(101)) and len(seen) == 102      # DistributedSampler pads by one


def test_resume_mid_epoch_with_grouped_batches_is_bit_identical(tmp_path, tiny_bert_with_vocab):
    lines = ["sentence\tlabel"] + [" ".join(["good" if i % 2 else "bad"] * (1 + i % 9)) + f"\t{i % 2}" for i in range(40)]
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "d" / "sst2").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "sst2" / name).write_text("\n".join(lines) + "\n")
    common = ["--task", "sst2", "--model", str(tiny_bert_with_vocab), "--data-dir", str(tmp_path / "d"),
              "--batch-size", "4", "--grad-accum", "2", "--epochs", "3", "--sparsity", "0.7", "--no-kd",
              "--checkpoint-every", "4"]
    train.main(common + ["--out-dir", str(tmp_path / "a")])
    train.main(common + ["--out-dir", str(tmp_path / "b"), "--stop-after", "7"])    # 5 steps an epoch: mid-epoch
    train.main(common + ["--out-dir", str(tmp_path / "b"), "--resume"])
    from safetensors.torch import load_file
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
