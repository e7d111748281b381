"""This project's sparse kernel (sparse_kernel.cpp, through sparse_inference.py's `use_tiled`) against the dense
masked product: every shape and sparsity tried here, to 1e-5 in float32."""
import shutil

import pytest
import torch
import torch.nn.functional as F

import sparse_inference

if shutil.which("c++") is None and shutil.which("g++") is None:            # no compiler: nothing to build
    pytest.skip("sparse_kernel.cpp needs a C++ compiler", allow_module_level=True)


def pruned_linear(out_f, in_f, sparsity, bias=True, seed=0, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(out_f, in_f, generator=g) >= sparsity)
        for r in empty_rows:
            linear.weight[r] = 0.0
        if bias:
            linear.bias.normal_(generator=g)
    return linear


@pytest.mark.parametrize("shape, sparsity, tokens", [
    ((384, 384), 0.9, (32, 44)),          # a batch of 32 SST-2 sentences
    ((1536, 384), 0.97, (1, 25)),         # one sentence
    ((384, 1536), 0.8, (2, 700)),         # long sequences: many tiles, their last one partial
    ((3072, 768), 0.9, (1, 1)),           # one token
    ((37, 101), 0.5, (3, 17)),            # odd sizes: rows and inputs no multiple of anything
    ((5, 3), 0.0, (1, 33)),               # dense, tiny
    ((64, 48), 1.0, (2, 16)),             # every weight pruned: only the bias
])
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_equals_the_dense_masked_product(shape, sparsity, tokens, bias):
    linear = pruned_linear(*shape, sparsity, bias)
    x = torch.randn(*tokens, shape[1], generator=torch.Generator().manual_seed(1))
    want = F.linear(x, linear.weight, linear.bias)
    sparse_inference.use_kernel(linear, "tiled")
    with torch.no_grad():
        got = linear(x)
    assert vars(linear)["kernel"] == "tiled" and got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())


def test_empty_rows_give_the_bias_and_every_tile_width_is_exact():
    """Rows with no kept weight (their sum is 0: the bias alone), and T from 1 to 130 tokens, so that
    tiles of 16, 32 and 48 tokens and every partial last tile are all run."""
    linear = pruned_linear(50, 40, 0.7, empty_rows=(0, 7, 49))
    x = torch.randn(130, 40, generator=torch.Generator().manual_seed(2))
    want = F.linear(x, linear.weight, linear.bias)
    sparse_inference.use_kernel(linear, "tiled")
    with torch.no_grad():
        for T in list(range(1, 50)) + [63, 64, 65, 96, 97, 130]:
            got = linear(x[:T])
            assert torch.allclose(got, want[:T], rtol=1e-5, atol=1e-5), T
        assert torch.equal(linear(x)[:, [0, 7, 49]], linear.bias[[0, 7, 49]].expand(130, 3))


def test_the_kernel_uses_the_weights_it_was_given_and_refuses_to_train():
    linear = pruned_linear(16, 24, 0.5)
    sparse_inference.use_kernel(linear, "tiled")
    x = torch.randn(4, 24)
    with pytest.raises(RuntimeError, match="inference only"):
        linear(x)                                       # autograd would need a backward it does not have
    with torch.no_grad():
        y = linear(x)
    sparse_inference.use_dense(linear)
    assert "forward" not in vars(linear) and "tiled_values" not in vars(linear)
    with torch.no_grad():
        assert torch.allclose(linear(x), y, atol=1e-6)


def test_the_kernel_refuses_an_index_or_bias_that_does_not_fit():
    """Called by hand (a student's experiment) with pieces that do not belong together, the kernel
    stops with a sentence instead of reading past a buffer."""
    linear = pruned_linear(8, 16, 0.5)
    sparse_inference.use_kernel(linear, "tiled")
    x, k = torch.randn(4, 16), sparse_inference.tiled_kernel()
    with pytest.raises(RuntimeError, match="the bias must be empty"):
        k.forward(x, linear.csr.indptr, linear.csr.indices, linear.tiled_values, torch.zeros(7))
    with pytest.raises(RuntimeError, match="one column index per value"):
        k.forward(x, linear.csr.indptr, linear.csr.indices, linear.tiled_values[:-1], linear.bias.detach())
    with pytest.raises(RuntimeError, match="contiguous float32"):
        k.forward(x.t(), linear.csr.indptr, linear.csr.indices, linear.tiled_values, linear.bias.detach())


def test_predicted_speedup_is_amdahls_law():
    assert sparse_inference.predicted_speedup(10.0, [6.0, 2.0], [1.0, 1.0]) == pytest.approx(10.0 / 4.0)
    assert sparse_inference.predicted_speedup(5.0, [], []) == 1.0


def test_inference_kernels_route_the_sparse_linears_for_the_block_and_restore_theirs(monkeypatch):
    """train.py --sparse-backprop's evaluation: within the block, the Linears with at least round(0.8·n)
    zeros compute through the kernel (from their weights now), the others as they were; after it each
    is back on its own kernel (dense here; SparseProp's where routed: test_sparse.py's run), and where
    the kernel cannot be built nothing changes."""
    sparse_one, dense_one = pruned_linear(40, 30, 0.9), pruned_linear(40, 40, 0.5, seed=1)
    with torch.no_grad():                               # exactly 80%: the rule counts zeros, not a float
        edge = torch.nn.Linear(40, 5)
        edge.weight.view(-1)[torch.randperm(200, generator=torch.Generator().manual_seed(3))[:160]] = 0.0
    model = torch.nn.Sequential(sparse_one, torch.nn.ReLU(), dense_one, edge)
    x = torch.randn(3, 7, 30, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x)
        with sparse_inference.inference_kernels(model, 0.8):
            assert [vars(m).get("kernel") for m in (sparse_one, dense_one, edge)] == ["tiled", None, "tiled"]
            assert torch.allclose(model(x), want, rtol=1e-5, atol=1e-5)
        assert all("kernel" not in vars(m) and "forward" not in vars(m) for m in (sparse_one, dense_one, edge))
        assert torch.equal(model(x), want)
        monkeypatch.setattr(sparse_inference, "build_tiled_kernel", lambda: (None, "no compiler"))
        with sparse_inference.inference_kernels(model, 0.8):
            assert all("kernel" not in vars(m) for m in (sparse_one, dense_one, edge))
