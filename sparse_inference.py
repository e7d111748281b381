"""
Sparse weights at inference on a CPU: four kernels for a pruned Linear, and the choice among them.

sparse.py says which kernel exists for which pattern on which device and times what they buy on an
exported model (`python sparse.py OUT/model`); sparse_backprop.py holds the training kernels
(SparseProp's, Nikdan et al., ICML 2023, section 3); this file the inference ones, each encoder
Linear through the fastest of four kernels for its weights:

  dense        W x, MKL's GEMM: every weight, zero or not                out · in · T multiply-adds
  csr          PyTorch's CSR product (MKL's sparse BLAS on x86), W fixed  nnz · T, irregular reads
  sparseprop   SparseProp's forward kernel (sparse_backprop.py), over T  nnz · T, x and y transposed whole
  tiled        this project's (sparse_kernel.cpp): CSR rows against tiles nnz · T, a tile of x transposed
               of up to 48 tokens, vectorised across the tile             at a time, in the core's cache

Which wins depends on the matrix's sparsity and shape and on T, the tokens of a batch (one
sentence or a serving batch of 32), so `route_inference` times each candidate on T random
tokens, the kernels in turns, and leaves dense only for a sparse kernel that is clearly faster
(ROUTE_MARGIN). Every kernel returns its output row-major and contiguous, so that what the
model does next costs the same whichever kernel ran, and the layout work a kernel needs is
inside the time it is judged by. The weights themselves are unchanged: a CSR copy of W is
built once (inference only: it does not follow later updates). For train.py's evaluations, where
the weights change between two of them, `inference_kernels` sends every Linear at least 80% sparse
through this project's kernel for one block without timing (it won on most such matrices of
evidence/results/inference-cpu.txt), its index built anew each time.

train.py --sparse-backprop evaluates through `inference_kernels`; sparse.py's command routes with
`route_inference`. This file imports nothing of the loop's.
"""
import contextlib
import functools
import time
import types
import warnings
from pathlib import Path

import torch

import sparse_backprop
from sparse_backprop import csr_index, kept_values, kernels, sparse_enough, use_sparse


KERNELS = ("dense", "csr", "sparseprop", "tiled")
# what the kernels set on a Linear (SparseProp's, and csr's and tiled's here), for use_dense to undo
KERNEL_STATE = sparse_backprop.KERNEL_STATE + ("csr_weight", "tiled_values")
ROUTE_MARGIN = 0.05           # a sparse kernel replaces dense only if at least 5% faster than it


def csr_forward(linear, x):
    """y = x Wᵀ + b as yᵀ = W_csr xᵀ + b: (..., in) -> (..., out), contiguous.

    MKL's product gives yᵀ (out, T); its transpose is a column-major view, and everything after
    the Linear (the residual add, LayerNorm, the next Linear, attention's reshapes) reads it
    row-major: over a strided view they ran slower, which no per-matrix timing saw (measured at
    batch 32: the all-CSR model 13-90 ms slower than its matrices' times predicted, and routing
    chose CSR on margins that this cost erased). So the transpose is copied here, inside the
    kernel's timed work. The bias is added by addmm into yᵀ first: that and one copy was the
    cheapest of the layouts measured (a transpose copy and then the bias add cost more)."""
    flat = x.reshape(-1, linear.in_features)                                  # (T, in)
    if linear.bias is not None:
        yt = torch.addmm(linear.bias.unsqueeze(1), linear.csr_weight, flat.t())   # (out, T), + b per row
    else:
        yt = torch.sparse.mm(linear.csr_weight, flat.t())                     # (out, T)
    y = yt.t().contiguous()                                                   # (T, out), row-major
    return y.reshape(*x.shape[:-1], linear.out_features)                      # (..., out)


def use_csr(linear):
    with warnings.catch_warnings():           # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        linear.csr_weight = linear.weight.detach().to_sparse_csr()
    linear.kernel = "csr"
    linear.forward = types.MethodType(csr_forward, linear)


@functools.cache
def build_tiled_kernel():
    """(the compiled sparse_kernel.cpp, None) or (None, why it cannot be built): built once per process
    by torch.utils.cpp_extension (it needs a C++ compiler and ninja; the first build takes about half a
    minute, later ones reuse torch's extensions folder)."""
    try:
        from torch.utils.cpp_extension import load
        source = Path(__file__).with_name("sparse_kernel.cpp")
        return load("prune_lm_sparse_kernel", [str(source)], extra_cflags=["-O3", "-march=native"], verbose=False), None
    except Exception as e:                    # no compiler, no ninja, a compiler that refuses -march=native
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:160] if str(e).strip() else ''}"


def tiled_kernel():
    """This project's kernel, compiled on first use; ImportError with one sentence where it cannot be."""
    module, why = build_tiled_kernel()
    if module is None:
        raise ImportError(f"this project's sparse kernel (sparse_kernel.cpp) could not be built ({why}); it needs "
                          f"a C++ compiler and `pip install ninja`.")
    return module


def tiled_forward(linear, x):
    """y = x Wᵀ + b through sparse_kernel.cpp: (..., in) -> (..., out), contiguous, computed in float32.
    A forward pass only: it has no backward, so it refuses to run where autograd would need one."""
    if torch.is_grad_enabled() and (x.requires_grad or linear.weight.requires_grad):
        raise RuntimeError("this project's sparse kernel computes inference only; run the model under "
                           "torch.no_grad() (training's sparse kernels are SparseProp's: --sparse-backprop)")
    flat = x.reshape(-1, linear.in_features).float().contiguous()            # (T, in)
    bias = linear.bias.detach().float() if linear.bias is not None else flat.new_zeros(0)
    y = tiled_kernel().forward(flat, linear.csr.indptr, linear.csr.indices, linear.tiled_values, bias)   # (T, out)
    return y.reshape(*x.shape[:-1], linear.out_features).to(x.dtype)          # (..., out)


def use_tiled(linear):
    """Route one Linear through sparse_kernel.cpp: its kept weights in CSR by row, built once (inference)."""
    tiled_kernel()
    linear.csr = csr_index(linear.weight.detach() != 0)
    linear.tiled_values = kept_values(linear.weight, linear.csr)                                     # (nnz,)
    linear.kernel = "tiled"
    linear.forward = types.MethodType(tiled_forward, linear)


def use_dense(linear):
    """The Linear's own dense forward again, whichever kernel it was routed through."""
    for name in KERNEL_STATE:
        vars(linear).pop(name, None)


def use_kernel(linear, kernel: str):
    use_dense(linear)
    if kernel == "csr":
        use_csr(linear)
    elif kernel == "sparseprop":
        use_sparse(linear, csr_index(linear.weight.detach() != 0))
    elif kernel == "tiled":
        use_tiled(linear)


def kernel_state(linear) -> dict:
    """What `use_kernel` set on this Linear, to switch back to it without building its index again."""
    return {k: vars(linear)[k] for k in KERNEL_STATE if k in vars(linear)}


def restore_kernel(linear, state: dict):
    use_dense(linear)
    vars(linear).update(state)


@contextlib.contextmanager
def inference_kernels(model, min_sparsity: float):
    """Within the block, every Linear of `model` at least `min_sparsity` sparse computes through this
    project's kernel, its index built from the weights as they are now; after it, each is back on
    the kernel it had. For evaluating a model that trains through other kernels (train.py
    --sparse-backprop; in evidence/results/inference-cpu.txt this kernel's forward beats SparseProp's
    on all but a few of the sparsest matrices, and dense's on most matrices from 80%): the kernel has
    no backward, and training changes the weights between two evaluations, so the index is built at
    each. Where the kernel cannot be built, nothing changes (cli.py says so before the run)."""
    saved = {}
    try:
        if build_tiled_kernel()[0] is not None:
            for linear in model.modules():
                if isinstance(linear, torch.nn.Linear) and sparse_enough(linear.weight == 0, min_sparsity):
                    saved[linear] = kernel_state(linear)
                    use_tiled(linear)
        yield
    finally:
        for linear, state in saved.items():
            restore_kernel(linear, state)


def available_kernels() -> tuple:
    """The kernels this machine has: SparseProp only where `pip install sparseprop` was done, this
    project's only where sparse_kernel.cpp can be compiled."""
    have = ["dense", "csr"]
    for name, check in (("sparseprop", kernels), ("tiled", tiled_kernel)):
        try:
            check()
            have.append(name)
        except ImportError:
            pass
    return tuple(have)


def predicted_speedup(forward: float, dense: list, fast: list) -> float:
    """The forward's speed-up when its Linears' times fall from `dense` to `fast` (seconds each) and the
    rest of its `forward` seconds stays (Amdahl's law): forward / (forward - Σ dense + Σ fast)."""
    return forward / (forward - sum(dense) + sum(fast))


@torch.no_grad()
def time_forward(linear, x) -> float:
    """Seconds of one forward pass of one Linear on x, its output's layout work included."""
    t = time.perf_counter()
    linear(x)
    return time.perf_counter() - t


def choose_kernel(seconds: dict, margin: float = ROUTE_MARGIN) -> str:
    """The kernel to run, from {kernel: seconds}: the fastest sparse kernel if it beats dense by at
    least `margin` (its time at most (1 - margin) x dense's), else dense; without a dense timing,
    the fastest timed."""
    if "dense" not in seconds:
        return min(seconds, key=seconds.get)
    sparse_times = {k: t for k, t in seconds.items() if k != "dense"}
    best = min(sparse_times, key=sparse_times.get, default="dense")
    return best if best != "dense" and sparse_times[best] <= (1 - margin) * seconds["dense"] else "dense"


@torch.no_grad()
def route_inference(model, names, tokens: int, candidates=None, repeats: int = 5,
                    margin: float = ROUTE_MARGIN) -> dict:
    """Send each Linear `names` names (weight names) through the fastest of `candidates` on `tokens`
    random tokens; returns {name: {"kernel": chosen, "seconds": {kernel: time}, "sparsity": s,
    "shape": (out, in)}}.

    How it times: each candidate's index is built once; then, per matrix, `repeats` rounds (after
    one warm-up round) each run every candidate's forward once, the candidates in turns, their order
    rotating each round, so that the machine's drift and cache state hit all alike (as `latencies`
    does for whole models). A kernel's time is the median of its rounds; that time includes the
    layout work its output needs (every kernel returns row-major, contiguous output).

    How it chooses (`choose_kernel`): dense is the reference (the unchanged weights, no extra
    index), so a sparse kernel replaces it only if it is at least `margin` (default 5%) faster: a
    near-tie, which timing noise would decide, stays dense. A kernel is chosen only if it was
    timed: a dense matrix (no zeros) is timed dense only."""
    candidates = candidates or available_kernels()
    profile = {}
    g = torch.Generator().manual_seed(0)               # its own: the global RNG is left alone
    for name in names:
        linear = model.get_submodule(name.rsplit(".", 1)[0])
        x = torch.randn(tokens, linear.in_features, generator=g)
        sparsity = float((linear.weight == 0).float().mean())
        states = {}
        for kernel in candidates if sparsity > 0 else ("dense",):
            use_kernel(linear, kernel)
            states[kernel] = kernel_state(linear)
        order, times = list(states), {k: [] for k in states}
        for r in range(repeats + 1):
            for kernel in order[r % len(order):] + order[: r % len(order)]:
                restore_kernel(linear, states[kernel])
                seconds = time_forward(linear, x)
                if r:                                                    # round 0 warms every kernel up
                    times[kernel].append(seconds)
        seconds = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        best = choose_kernel(seconds, margin)
        restore_kernel(linear, states[best])
        profile[name] = {"kernel": best, "seconds": seconds, "sparsity": sparsity, "shape": tuple(linear.weight.shape)}
    return profile
