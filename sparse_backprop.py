"""
Sparse backpropagation on a CPU: SparseProp's kernels for the encoder's Linears while the student trains.

Nikdan, Pegolotti, Iofinova, Kurtic & Alistarh, "SparseProp: Efficient Sparse Backpropagation for
Faster Training of Neural Networks at the Edge" (ICML 2023), section 3. Its products, for a Linear y = x Wᵀ + b with W (out, in) holding nnz kept weights
(row pointers, column indices and values: CSR), over the T tokens of a batch:
    forward    yᵀ = W xᵀ                        nnz · T multiply-adds instead of out · in · T
    backward   dxᵀ = Wᵀ dyᵀ,  dW_k = dy_row(k) · x_col(k) for the kept k only
This is the paper's "sparse backpropagation": the dense gradient of W is never formed by the
kernel. `SparseLinearFunction` scatters the kept values' gradients back into a dense zero
gradient, so that the dense nn.Linear weight stays the single truth: masks, AdamW and its
moments, checkpoints, resume, DDP and the export work exactly as without it (the gradient of a
pruned weight is 0, as prune.mask_gradients would make it).

How train.py uses it (--sparse-backprop, CPU only): after every pruning step `route` builds each
encoder Linear's CSR index from its mask, keeps it dense below 80% sparsity, and above it times
one forward and backward of each kernel on a batch-sized input and keeps the faster (SparseProp's
own rule). A routed Linear computes with the same weight tensor through `SparseLinearFunction`.
The index changes only when the masks do, so it is built there, and on resume, where `follow`
repeats the checkpoint's choices without timing. Evaluation, a forward pass only, goes through
this project's faster inference kernel instead (`sparse_inference.inference_kernels`, from
train.evaluate).

sparse_inference.py holds the inference kernels (and uses `use_sparse` for SparseProp's forward
among them);
rundir.py saves which Linears `route` sent through these kernels, so that `follow` can repeat it.

    pip install pybind11 && pip install --no-build-isolation sparseprop==0.1.14
"""
import time
import types
from dataclasses import dataclass

import torch

MIN_SPARSITY = 0.8            # SparseProp's rule: below it, dense kernels win on a CPU


def kernels():
    """SparseProp's compiled kernels, imported only when asked for."""
    try:
        from sparseprop import backend
    except ImportError:
        raise ImportError("--sparse-backprop needs SparseProp's CPU kernels; install them with `pip install "
                          "pybind11 && pip install --no-build-isolation sparseprop==0.1.14`.") from None
    return backend


@dataclass
class CSRIndex:
    """Where the kept weights of one (out, in) mask are, in the kernels' CSR layout."""
    indptr: torch.Tensor           # (out + 1,) int32: row r's kept weights are entries indptr[r] .. indptr[r+1]-1
    indices: torch.Tensor          # (nnz,) int32: their column (input) index
    flat: torch.Tensor             # (nnz,) int64: their position in the flattened dense weight, row-major
    shape: tuple                   # (out, in)


def kept_values(weight: torch.Tensor, index: CSRIndex) -> torch.Tensor:
    """(nnz,) float32: W's kept values in the index's CSR order, the kernels' `val`."""
    return weight.detach().reshape(-1)[index.flat].float().contiguous()


def sparse_enough(pruned: torch.Tensor, min_sparsity: float = MIN_SPARSITY) -> bool:
    """Whether a matrix is sparse enough for a sparse kernel: at least round(s·n) of its n weights pruned
    (`pruned`: bool, True where pruned), counted exactly, not as a float rounded below s."""
    return int(pruned.sum()) >= round(min_sparsity * pruned.numel())


def csr_index(mask: torch.Tensor) -> CSRIndex:
    out_f, in_f = mask.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)                            # row-major = CSR order
    counts = torch.bincount(flat // in_f, minlength=out_f)                  # kept weights per row
    indptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return CSRIndex(indptr.int(), (flat % in_f).int(), flat, (out_f, in_f))


def transposed(a: torch.Tensor) -> torch.Tensor:
    """(R, C) -> a contiguous (C, R). SparseProp's AVX transpose where it is safe (both sizes multiples
    of 16, a contiguous and 32-byte aligned: it uses aligned loads), else torch's; float32."""
    a = a.float()
    R, C = a.shape
    if R % 16 == 0 and C % 16 == 0 and a.is_contiguous() and a.data_ptr() % 32 == 0:
        out = torch.empty(C, R)
        kernels().transpose(a, out, 16)
        return out
    return a.t().contiguous()


class SparseLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b from W's kept values only; W's gradient comes back dense, zero where pruned."""

    @staticmethod
    def forward(ctx, x, weight, bias, index):
        out_f, in_f = index.shape
        values = kept_values(weight, index)                                        # (nnz,)
        xt = transposed(x.detach().reshape(-1, in_f))                              # (in, T): the kernels' layout
        yt = torch.zeros(out_f, xt.shape[1])                                       # (out, T): added into
        kernels().sparse_linear_vectorized_forward(xt, index.indptr, index.indices, values, yt)
        ctx.save_for_backward(xt, values)
        ctx.index, ctx.x_shape, ctx.x_dtype, ctx.has_bias = index, x.shape, x.dtype, bias is not None
        y = transposed(yt)                                                         # (T, out)
        if bias is not None:
            y += bias.float()
        return y.reshape(*x.shape[:-1], out_f).to(x.dtype)                         # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        xt, values = ctx.saved_tensors
        index = ctx.index
        gyt = transposed(grad_y.reshape(-1, index.shape[0]).contiguous())         # (out, T)
        gxt, gvalues = torch.zeros_like(xt), torch.zeros_like(values)             # (in, T), (nnz,)
        kernels().sparse_linear_vectorized_backward(xt, index.indptr, index.indices, values, gyt, gxt, gvalues)
        grad_x = transposed(gxt).reshape(ctx.x_shape).to(ctx.x_dtype)             # (..., in)
        grad_w = torch.zeros(index.shape[0] * index.shape[1])
        grad_w[index.flat] = gvalues                                               # scattered back: (out * in,)
        grad_b = gyt.sum(1) if ctx.has_bias else None                              # (out,)
        return grad_x, grad_w.view(index.shape), grad_b, None


def sparse_forward(linear, x):
    """An nn.Linear's forward through SparseProp's kernels (bound to one Linear by `route`)."""
    return SparseLinearFunction.apply(x, linear.weight, linear.bias, linear.csr)


def use_sparse(linear, index: CSRIndex):
    linear.csr, linear.kernel = index, "sparseprop"
    linear.forward = types.MethodType(sparse_forward, linear)     # this instance only; its weight is unchanged


# what use_sparse sets on a Linear, for use_dense to undo (sparse_inference.py's kernels add their own)
KERNEL_STATE = ("forward", "csr", "kernel")


def use_dense(linear):
    for name in KERNEL_STATE:
        vars(linear).pop(name, None)


def time_fwd_bwd(linear, x) -> float:
    """Seconds of one forward + backward pass of one Linear on x."""
    x.grad = None
    t = time.perf_counter()
    linear(x).sum().backward()
    seconds = time.perf_counter() - t
    linear.zero_grad(set_to_none=True)
    return seconds


def route(model, masks: dict, tokens: int, repeats: int = 5) -> dict:
    """Send every masked Linear of `model` through the faster kernel for its mask; returns
    {weight name: "sparse" | "dense"}. Below MIN_SPARSITY it stays dense without timing; above,
    forward and backward passes of each kernel on `tokens` random inputs decide, as SparseProp's
    `swap_modules_with_sparse` does: here the fastest of `repeats`, the two kernels alternating
    (after a warm-up of each) so that the machine's drift hits both alike."""
    chosen = {}
    for name, mask in masks.items():
        linear = model.get_submodule(name.rsplit(".", 1)[0])
        use_dense(linear)
        if not sparse_enough(~mask) or not isinstance(linear, torch.nn.Linear):
            chosen[name] = "dense"
            continue
        g = torch.Generator().manual_seed(0)       # its own: the global RNG (dropout's) is left alone
        x = torch.randn(tokens, linear.in_features, generator=g).requires_grad_()
        index, best = csr_index(mask.cpu()), {"dense": float("inf"), "sparse": float("inf")}
        for r in range(repeats + 1):
            for kind in ("dense", "sparse") if r % 2 else ("sparse", "dense"):
                use_sparse(linear, index) if kind == "sparse" else use_dense(linear)
                seconds = time_fwd_bwd(linear, x)
                best[kind] = min(best[kind], seconds) if r else best[kind]          # r = 0 warms up
        chosen[name] = "sparse" if best["sparse"] < best["dense"] else "dense"
        use_sparse(linear, index) if chosen[name] == "sparse" else use_dense(linear)
    return chosen


def follow(model, masks: dict, chosen: dict):
    """Route as an earlier `route` chose ({name: "sparse" | "dense"}, saved in a checkpoint), without
    timing again: a resumed run then computes with the same kernels as the uninterrupted one."""
    for name, mask in masks.items():
        linear = model.get_submodule(name.rsplit(".", 1)[0])
        use_dense(linear)
        if chosen.get(name) == "sparse":
            use_sparse(linear, csr_index(mask.cpu()))


def unroute(model):
    """Every Linear back to its dense forward."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            use_dense(m)
