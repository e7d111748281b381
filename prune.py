"""
Which weights to prune, how to score them (magnitude or the Optimal BERT Surgeon), and masks.

Kurtic, Hoefler & Alistarh (2024), section 4: prune only the encoder's linear layers; the
embeddings and the task head stay dense (they hold many parameters but few FLOPs: see
`python prune.py --report bert-base-uncased`). Two saliency criteria:

  GMP (gradual magnitude pruning; Zhu & Gupta 2017, tuned as GMP* by Kurtic & Alistarh 2022):
      score_j = |w_j|

  oBERT (Kurtic et al. 2022, "The Optimal BERT Surgeon", section 3). With the empirical Fisher
      F = damp * I + (1/m) * sum_i g_i g_i^T        (g_i: m mini-batch gradients, eq. 3)
  as the Hessian, restricted to diagonal blocks of B consecutive weights, the loss increase of
  removing weight j and the optimal update of the others (OBS, Hassibi & Stork 1993) are
      score_j = w_j^2 / (2 [F^-1]_jj)                dw = -(w_j / [F^-1]_jj) F^-1 e_j
  and for a group Q of weights removed together (here 4 consecutive input weights, "4-block"):
      score_Q = 0.5 w_Q^T ([F^-1]_QQ)^-1 w_Q         dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q
  oBERT's paper builds F^-1 with one Sherman-Morrison update per gradient (eq. 4, `add_gradient`);
  train.py accumulates F a chunk of gradients at a time and inverts it once (`EmpiricalFisher`),
  or, for blocks larger than the number of gradients, keeps M-FAC's matrix-free form
  (`MatrixFree`, Frantar, Kurtic & Alistarh 2021). All three are tested equal to the exact inverse.

Each criterion is one scoring function registered in METHODS; `select` turns any scores into
masks (exactly round(s * n) pruned, globally or per matrix, never reviving), and `prune_step`
is the one pruning step of every criterion, also under torchrun, where each rank scores and
updates its own share of the tensors (`shard_by_size`) and the global threshold is found with
a few collectives.

Masks are boolean tensors keyed by parameter name, True = kept. When a weight is pruned,
train.py zeroes it and AdamW's moments there; at every step it masks the gradients before AdamW
and re-applies the masks after it, so no pruned weight revives; masks are saved with every
checkpoint. schedule.py says *when* and *how much* to prune; sparse.py makes sparse weights fast.
"""
import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from model import ENCODER_LINEARS, HEAD_MODULES   # query key value attn_out intermediate output; pooler and heads

EMBEDDINGS = ("embeddings.word.weight", "embeddings.position.weight", "embeddings.token_type.weight")
HEAD = tuple(f"{m}.weight" for m in HEAD_MODULES)
GROUP = 4                                       # weights per group of the "4-block" pattern


# -----------------------------------------------------------------------------
# Which weights are pruned.

def prunable_names(model, embeddings=False, head=False) -> list[str]:
    """The six encoder Linear weights of every layer; embeddings and head only when asked."""
    names = [n for n, _ in model.named_parameters()
             if n.startswith("layers.") and n.endswith(".weight") and n.split(".")[2] in ENCODER_LINEARS]
    params = dict(model.named_parameters())
    if embeddings:
        names += [n for n in EMBEDDINGS if n in params]
    if head:
        names += [n for n in HEAD if n in params]
    return names


def component(name: str) -> str:
    return "embeddings" if name.startswith("embeddings.") else "encoder" if name.startswith("layers.") else "head"


# -----------------------------------------------------------------------------
# Masks: apply, keep the optimizer from reviving, save and load.

@torch.no_grad()
def apply_masks(params: dict, masks: dict):
    """w <- w * mask, exactly: pruned entries become (+/-) 0.0. An in-place multiply by the bool mask
    allocates nothing (masked_fill_(~mask) would first allocate ~mask); bench.py's "masked vs dense
    step" row measures what keeping the masks costs a training step."""
    for name, mask in masks.items():
        params[name].mul_(mask)


@torch.no_grad()
def mask_gradients(params: dict, masks: dict):
    """g <- g * mask, so that pruned weights contribute nothing to the Fisher or to AdamW's moments."""
    for name, mask in masks.items():
        if params[name].grad is not None:
            params[name].grad.mul_(mask)


@torch.no_grad()
def zero_optimizer_state(optimizer, params: dict, masks: dict):
    """Zero AdamW's exp_avg and exp_avg_sq at pruned positions: stale momentum would move them."""
    for name, mask in masks.items():
        state = optimizer.state.get(params[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].masked_fill_(~mask, 0.0)


def save_masks(masks: dict, path):
    from safetensors.torch import save_file
    save_file({n: m.contiguous().cpu() for n, m in masks.items()}, str(path))


def load_masks(path, device="cpu") -> dict:
    from safetensors.torch import load_file
    return {n: m.to(device=device, dtype=torch.bool) for n, m in load_file(str(path)).items()}


# -----------------------------------------------------------------------------
# From scores to masks: global or per-layer, unstructured, 4-block or N:M.

def kth_smallest(scores: list[torch.Tensor], k: int, sharded=False) -> float:
    """The k-th smallest (1-based) value over many tensors, exactly, without concatenating them.

    Weights already pruned score -inf: they are the smallest, counted but never sampled. A strided
    sample of about 2^20 of the finite values brackets the answer between two sample quantiles;
    one exact pass counts the values below the bracket and gathers those inside it (a small band),
    and only the band is sorted. If the k-th value falls outside the bracket (a bad sample), the
    bracket widens and the pass repeats. Memory: the band plus one boolean temporary per tensor;
    sorting roberta-large's 302M scores at once would take 2.4 GB. sharded: `scores` are this
    rank's share; counts are summed over ranks and the sample and the band gathered, so every rank
    finds the value that one process holding all of them would.
    """
    n, pruned = all_sum([sum(s.numel() for s in scores), sum(int(torch.isneginf(s).sum()) for s in scores)], sharded)
    if k <= pruned:
        return float("-inf")
    stride = max(1, (n - pruned) // (1 << 20))
    local = [s[torch.isfinite(s)][::stride] for s in scores]
    sample = all_cat(torch.cat(local).double() if local else torch.zeros(0, dtype=torch.float64), sharded)
    q, margin = (k - pruned - 0.5) / (n - pruned), 8.0 / math.sqrt(sample.numel())  # ~8 std devs of a quantile

    def bound(p):                      # the sample's p-quantile, or None past either end (no bound)
        return torch.quantile(sample, p).item() if 0.0 < p < 1.0 else None
    for widen in (1, 8, 64, float("inf")):
        lo, hi = bound(q - widen * margin), bound(q + widen * margin)
        below, band = 0, [torch.zeros(0, dtype=scores[0].dtype if scores else torch.float64)]
        for s in scores:
            inside = torch.isfinite(s)
            if lo is not None:
                below += int(torch.count_nonzero(s < lo))        # the -inf ones among them
                inside &= s >= lo
            if hi is not None:
                inside &= s <= hi
            band.append(s[inside])                               # in the scores' own dtype: exact
        below, band = all_sum([below], sharded)[0], all_cat(torch.cat(band), sharded)
        below = max(below, pruned)                               # no lower bound: the -inf ones are below
        if below < k <= below + band.numel():
            return torch.kthvalue(band.cpu(), k - below).values.item()
    raise AssertionError("unreachable: the last bracket holds every finite value")


def select_lowest(scores: list[torch.Tensor], count: int, sharded=False, positions=None, total=None) -> list[torch.Tensor]:
    """Boolean 'prune' masks marking exactly `count` lowest scores over all tensors together.

    Scores are >= 0, or -inf for weights already pruned (always selected). Ties at the threshold
    are broken deterministically: earlier tensor first, then lower flat index. sharded: `scores`
    are this rank's tensors, at `positions` in the global order of `total` tensors.
    """
    positions = list(range(len(scores))) if positions is None else positions
    total = len(scores) if total is None else total
    forced = all_sum([sum(int(torch.count_nonzero(torch.isneginf(s))) for s in scores)], sharded)[0]
    if count - forced <= 0:
        return [torch.isneginf(s) for s in scores]
    v = kth_smallest(scores, count, sharded)          # the -inf ones are the smallest: counted in k
    below = all_sum([sum(int(torch.count_nonzero(s < v)) for s in scores)], sharded)[0]
    ties_left = count - below                          # how many scores == v still to prune
    out = [s < v for s in scores]
    if ties_left > 0:                                  # rare: earlier tensors (global order) take theirs first
        ties = [0] * total
        for s, p in zip(scores, positions):
            ties[p] = int(torch.count_nonzero(s == v))
        ties = all_sum(ties, sharded)
        for i, (s, p) in enumerate(zip(scores, positions)):
            take = min(max(ties_left - sum(ties[:p]), 0), ties[p])
            if take:
                tie = (s == v).flatten()
                out[i] |= (tie & (torch.cumsum(tie.long(), 0) <= take)).view_as(s)
    return out


# Sharded selection (under torchrun, each rank holding some tensors' scores) needs two collectives;
# without sharding they return their input.

def all_sum(values: list[int], sharded: bool) -> list[int]:
    """Elementwise sum over ranks of a short list of counts."""
    if not sharded:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=collective_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_cat(t: torch.Tensor, sharded: bool) -> torch.Tensor:
    """Every rank's 1-D tensor, concatenated in rank order (lengths may differ)."""
    if not sharded:
        return t
    device, world = collective_device(), torch.distributed.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([t.numel()], device=device))
    longest = int(max(sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=device)
    padded[: t.numel()] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes)])


def collective_device():
    """NCCL moves CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """"2:4" -> (2, 4); None for the other patterns; ValueError unless 0 < N < M are whole numbers."""
    if ":" not in pattern:
        return None
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise ValueError(f"pattern {pattern!r} is not N:M with whole numbers; pass e.g. 2:4") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern} keeps {n} of every {m} weights, but N:M needs 0 < N < M; "
                         f"pass e.g. 2:4")
    return n, m


def check_pattern(pattern: str, sparsity: float):
    """Raise ValueError with one sentence if the pattern cannot give this sparsity."""
    nm = parse_nm(pattern)
    if nm is None and pattern not in ("unstructured", "4-block"):
        raise ValueError(f"unknown pattern {pattern!r}; use unstructured, 4-block or N:M such as 2:4")
    if nm is not None and not math.isclose(sparsity, 1 - nm[0] / nm[1]):
        raise ValueError(f"pattern {pattern} gives exactly {1 - nm[0] / nm[1]:g} sparsity, not {sparsity:g}; "
                         f"pass --sparsity {1 - nm[0] / nm[1]:g}")


def masks_from_scores(scores: dict, sparsity: float, scope="global", pattern="unstructured", order=None) -> dict:
    """Keep-masks that prune round(sparsity * n) lowest-scoring weights (globally or per tensor).

    unstructured: each weight on its own. "4-block": groups of 4 consecutive input weights share
    one score (the group's) and are pruned together. "N:M": in every group of M consecutive input
    weights keep the N best (the sparsity is then 1 - N/M, whatever the scope). order: under
    torchrun, the names of all tensors in their global order, of which `scores` holds this rank's.
    """
    nm = parse_nm(pattern)
    if nm is not None:
        n, m = nm
        out = {}
        for name, s in scores.items():
            groups = s.reshape(-1, m)                                      # (numel/M, M)
            best = torch.sort(groups, dim=1, descending=True, stable=True).indices
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, best[:, :n], True)
            out[name] = keep.view_as(s)
        return out
    if pattern == "4-block":   # one score per group: (out, in) -> (out * in/4, 4) -> first column
        scores = {n: s.reshape(-1, GROUP)[:, 0] for n, s in scores.items()}
    names = list(scores)
    if scope == "global":
        sharded = order is not None
        total = all_sum([sum(s.numel() for s in scores.values())], sharded)[0]
        positions = [order.index(n) for n in names] if sharded else None
        prune = dict(zip(names, select_lowest([scores[n] for n in names], round(sparsity * total), sharded,
                                              positions, len(order) if sharded else None)))
    elif scope == "layer":
        prune = {n: select_lowest([scores[n]], round(sparsity * scores[n].numel()))[0] for n in names}
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    keep = {n: ~p for n, p in prune.items()}
    if pattern == "4-block":   # (groups,) -> (groups, 4) -> flat
        keep = {n: k[:, None].expand(-1, GROUP).reshape(-1) for n, k in keep.items()}
    return keep


def never_revive(scores: dict, masks: dict | None) -> dict:
    """Already-pruned weights score -inf, so the new mask contains the old one."""
    if not masks:
        return scores
    return {n: s.masked_fill(~masks[n], float("-inf")) if n in masks else s for n, s in scores.items()}


def select(scores: dict, sparsity: float, scope="global", pattern="unstructured", masks=None, order=None) -> dict:
    """Scores -> keep-masks: the lowest-scoring round(sparsity * n) weights are pruned, globally or per
    matrix (or the N best of every M kept). Never reviving: weights that `masks` already prunes score
    -inf, so they are selected first and the new masks contain the old ones. order: see
    `masks_from_scores` (sharded selection under torchrun)."""
    keep = masks_from_scores(never_revive(scores, masks), sparsity, scope, pattern, order)
    return {n: k.view(scores[n].shape) for n, k in keep.items()}


def magnitude_masks(params: dict, sparsity: float, scope="global", pattern="unstructured", masks=None) -> dict:
    """GMP's masks: `select` over `magnitude_scores`."""
    return select(magnitude_scores(params, pattern), sparsity, scope, pattern, masks)


# -----------------------------------------------------------------------------
# oBERT's inverse Fisher. With m gradients G (m x d) and dampening λ, per diagonal block b of B
# consecutive weights (the last block zero-padded):
#
#     F_b = λ I + (1/m) G_bᵀ G_b                                        (B x B)
#
# Three ways to F_b⁻¹, tested equal to torch.linalg.inv in float64:
#   1. Sherman-Morrison, one gradient at a time (oBERT's eq. 4, SparseML): `add_gradient`.
#      The readable streaming form; one rank-1 update per block per gradient, slow on a CPU.
#   2. Accumulate, then invert once (`EmpiricalFisher`, what train.py uses): F_b += G_bᵀ G_b / m
#      for a chunk of gradients at a time with one batched product, then one Cholesky inverse per
#      block (`invert_blocks`), one tensor at a time. Its cost per gradient is a fraction of the
#      backward pass that produced it (bench.py measures both).
#   3. Matrix-free (M-FAC, Frantar, Kurtic & Alistarh 2021), for blocks larger than m: by Woodbury,
#          F_b⁻¹ = (1/λ) (I − G_bᵀ (mλI + G_b G_bᵀ)⁻¹ G_b) = (1/λ) (I − W_bᵀ W_b),
#      with L_b L_bᵀ = mλI + G_b G_bᵀ (Cholesky, m x m) and W_b = L_b⁻¹ G_b (m x B). Only W (and the
#      diagonal) is kept: d·m floats instead of d·B. Scores need diag(F⁻¹) = (1 − Σ_i W_ib²) / λ,
#      the OBS update F⁻¹ u = (u − Wᵀ (W u)) / λ: never a B x B matrix.
#
# The block size is the oBERT paper's ablation axis. B = 1 is the diagonal Fisher (SparseML's
# current default): a weight's score ignores its neighbours and the OBS update moves nothing but
# the pruned weight itself. B = 50 (the paper's recipe) lets each weight's removal be compensated
# by the 49 next to it. B = a whole row (`--block-size row`: 384 to 4096) lets every weight of a
# neuron's input compensate, and needs the matrix-free form when B > m. Memory, float32:
#   dense blocks   d · B · 4 bytes:  MiniLM (d = 10.6M) at B = 50: 2.1 GB; roberta-large (302M): 60 GB
#   matrix-free    d · m · 4 bytes:  whatever B is
# Under torchrun each rank keeps the blocks of its own share of the tensors (`shard_by_size`).

def init_fisher_inverse(numel: int, block_size: int, damp: float, device=None, dtype=torch.float32):
    """F^-1 of F = damp * I, as (num_blocks, B, B) with num_blocks = ceil(numel / B)."""
    num_blocks = math.ceil(numel / block_size)
    eye = torch.eye(block_size, device=device, dtype=dtype) / damp
    return eye.expand(num_blocks, -1, -1).contiguous()


def as_blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """(d,) -> (num_blocks, B), zero-padding the last block."""
    pad = (-flat.numel()) % block_size
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, block_size)


def block_size_of(shape, block_size) -> int:
    """An int as is; "row" is a whole row of the weight matrix: its input size."""
    return shape[-1] if block_size == "row" else int(block_size)


@torch.no_grad()
def add_gradient(finv: torch.Tensor, grad: torch.Tensor, num_grads: int):
    """One Sherman-Morrison update, in place: F <- F + g g^T / m, so
    F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (m + g^T F^-1 g), for every block at once."""
    B = finv.shape[-1]
    g = as_blocks(grad.reshape(-1).to(finv.dtype), B)                      # (nb, B)
    finv_g = torch.bmm(finv, g.unsqueeze(2))                                # (nb, B, 1)
    denom = num_grads + torch.bmm(g.unsqueeze(1), finv_g)                   # (nb, 1, 1)
    finv.baddbmm_(finv_g, finv_g.transpose(1, 2) / denom, alpha=-1.0)       # F^-1 -= u u^T / denom


def fisher_inverse_blocks(grads: torch.Tensor, block_size: int = 50, damp: float = 1e-7) -> torch.Tensor:
    """Inverse of damp*I + (1/m) sum_i g_i g_i^T per diagonal block, by Sherman-Morrison; grads is (m, d)."""
    finv = init_fisher_inverse(grads.shape[1], block_size, damp, grads.device, grads.dtype)
    for g in grads:
        add_gradient(finv, g, grads.shape[0])
    return finv


@torch.no_grad()
def invert_blocks(fisher: torch.Tensor, damp: float, slice_blocks: int = 4096) -> torch.Tensor:
    """In place: (1/m) Σ G_bᵀ G_b per block -> (λI + that)⁻¹, by Cholesky, a slice of blocks at a time.

    float32: on real MiniLM gradients (1024, λ = 1e-7) its diag(F⁻¹) and scores are within about
    1e-6 (relative) of float64's, as is the OBS update (bench.py measures it); a slice whose float32
    Cholesky fails (F numerically not positive definite) is redone in float64.
    """
    eye = damp * torch.eye(fisher.shape[-1], dtype=fisher.dtype, device=fisher.device)
    for start in range(0, fisher.shape[0], slice_blocks):
        part = fisher[start:start + slice_blocks]                           # (s, B, B), a view
        L, info = torch.linalg.cholesky_ex(part + eye)                      # F_b = L Lᵀ
        if info.any():
            L = torch.linalg.cholesky(part.double() + eye.double())
        part.copy_(torch.cholesky_inverse(L))
    return fisher


@torch.no_grad()
def matrix_free(G: torch.Tensor, damp: float, num_grads: int, budget: int = 1 << 28) -> "MatrixFree":
    """M-FAC, in place: the blocks' gradients G (nb, m, B) become W = L⁻¹ G, L Lᵀ = mλI + G Gᵀ.

    Computed in float64 a slice of blocks at a time (the float64 copies bounded by `budget` bytes),
    and diag(F⁻¹) = (1 − Σ_i W_ib²) / λ taken there too: in float32 that difference can cancel
    where the gradients dwarf mλ. W is then kept in float32 (d·m·4 bytes), the diagonal beside it."""
    nb, m, B = G.shape
    eye = torch.eye(m, dtype=torch.float64, device=G.device) * (num_grads * damp)
    diag = torch.empty(nb, B, dtype=G.dtype, device=G.device)
    step = max(1, budget // (8 * m * (2 * B + 2 * m)))             # G, W, K and L of one block, in float64
    for start in range(0, nb, step):
        Gd = G[start:start + step].double()                                  # (s, m, B)
        L = torch.linalg.cholesky(torch.baddbmm(eye, Gd, Gd.transpose(1, 2)))   # (s, m, m)
        W = torch.linalg.solve_triangular(L, Gd, upper=False)                 # (s, m, B)
        diag[start:start + step] = (1.0 - W.pow(2).sum(1)) / damp
        G[start:start + step] = W
    return MatrixFree(G, diag, damp)


@dataclass
class MatrixFree:
    """M-FAC's inverse Fisher blocks, never formed: F_b⁻¹ = (1/λ)(I − W_bᵀ W_b)."""
    W: torch.Tensor                # (nb, m, B)
    diag: torch.Tensor             # (nb, B): diag(F_b⁻¹), computed in float64
    damp: float                    # λ

    @property
    def shape(self):               # like a dense (nb, B, B) inverse
        return (self.W.shape[0], self.W.shape[2], self.W.shape[2])


def inverse_diag(finv) -> torch.Tensor:
    """diag(F_b⁻¹) of every block: (nb, B)."""
    return finv.diag if isinstance(finv, MatrixFree) else finv.diagonal(dim1=1, dim2=2)


def inverse_groups(finv) -> torch.Tensor:
    """[F_b⁻¹]_QQ for every group Q of 4 consecutive weights of every block: (nb, B/4, 4, 4)."""
    nb, B, _ = finv.shape
    if B % GROUP:
        raise ValueError(f"the 4-block pattern needs a Fisher block size divisible by 4 (recipe: 32), got {B}")
    if isinstance(finv, MatrixFree):              # (I − W_Qᵀ W_Q) / λ in float64, a slice of blocks at a time
        m = finv.W.shape[1]
        out = torch.empty(nb, B // GROUP, GROUP, GROUP, dtype=torch.float64, device=finv.W.device)
        eye = torch.eye(GROUP, dtype=torch.float64, device=finv.W.device)
        step = max(1, (1 << 28) // (8 * m * B))
        for start in range(0, nb, step):
            Wq = finv.W[start:start + step].double().view(-1, m, B // GROUP, GROUP)   # (s, m, B/4, 4)
            out[start:start + step] = (eye - torch.einsum("nmqi,nmqj->nqij", Wq, Wq)) / finv.damp
        return out
    q = finv.view(nb, B // GROUP, GROUP, B // GROUP, GROUP).diagonal(dim1=1, dim2=3)   # (nb, 4, 4, B/4)
    return q.permute(0, 3, 1, 2)                                                       # (nb, B/4, 4, 4)


def inverse_times(finv, u: torch.Tensor) -> torch.Tensor:
    """F_b⁻¹ u_b for every block: (nb, B)."""
    if isinstance(finv, MatrixFree):
        Wu = torch.bmm(finv.W, u.unsqueeze(2))                              # (nb, m, 1)
        return (u - torch.bmm(finv.W.transpose(1, 2), Wu).squeeze(2)) / finv.damp
    return torch.bmm(finv, u.unsqueeze(2)).squeeze(2)


def dtype_of(finv) -> torch.dtype:
    return finv.W.dtype if isinstance(finv, MatrixFree) else finv.dtype


def group_inverse(finv) -> torch.Tensor:
    """([F^-1]_QQ)^-1 for every group Q of 4 consecutive weights: (nb, B/4, 4, 4), inverted in float64."""
    return torch.linalg.inv(inverse_groups(finv).double()).to(dtype_of(finv))


class EmpiricalFisher:
    """oBERT's empirical Fisher of some tensors, from m gradients added a chunk at a time.

        fisher = EmpiricalFisher({name: shape}, block_size=50, num_grads=1024, damp=1e-7)
        for grads in gradients:          # m times: {name: gradient of one mini-batch}
            fisher.add(grads)
        finvs = fisher.inverses()        # {name: (nb, B, B) F⁻¹ blocks, or MatrixFree when B > m}

    Dense blocks: each gradient goes into a buffer of `chunk` rows per block, and a full buffer is
    added with one batched product, F_b += G_bᵀ G_b / m. The chunk is sized from a memory budget of
    a quarter of the blocks' own (chunk = B/4, 12 for B = 50), and the buffers are freed before
    inverting. Matrix-free blocks keep the gradients themselves, G (nb, m, B).

    Sharded (under torchrun, `owners` given): every rank computes its share of the m gradients
    and passes them to `add` (None once its share is done); each tensor's rows are gathered on the
    rank that owns it, which alone keeps and inverts its blocks: memory per rank ~ d·B·4 / world.
    """

    def __init__(self, shapes: dict, block_size, num_grads: int, damp: float, owners=None, device=None,
                 dtype=torch.float32):
        self.m, self.damp, self.names = num_grads, damp, list(shapes)
        self.rank, self.world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if owners else (0, 1)
        self.owners = owners or {n: 0 for n in shapes}
        self.shapes, self.round = shapes, 0
        self.shares = [num_grads // self.world + (r < num_grads % self.world) for r in range(self.world)]
        self.B = {n: block_size_of(shape, block_size) for n, shape in shapes.items()}
        self.store, self.buffer, self.rows = {}, {}, {}
        for n in self.mine():
            nb, B = math.ceil(math.prod(shapes[n]) / self.B[n]), self.B[n]
            if B > num_grads:                                              # matrix-free: keep G itself
                self.store[n] = torch.zeros(nb, num_grads, B, device=device, dtype=dtype)
            else:
                self.store[n] = torch.zeros(nb, B, B, device=device, dtype=dtype)
                self.buffer[n] = torch.zeros(nb, max(1, B // 4), B, device=device, dtype=dtype)
            self.rows[n] = 0

    def mine(self) -> list[str]:
        return [n for n in self.names if self.owners[n] == self.rank]

    @property
    def rounds(self) -> int:
        """How many times every rank calls `add`: its share of the gradients, then None."""
        return max(self.shares)

    @torch.no_grad()
    def add(self, grads: dict | None):
        """One gradient of every tensor from this rank (None: its share is done)."""
        for n in self.names:
            g = grads[n].reshape(-1) if grads is not None else torch.zeros(math.prod(self.shapes[n]))
            if self.world > 1:                       # every rank's row of this tensor, on its owner
                g = g.to(collective_device())
                parts = [torch.empty_like(g) for _ in range(self.world)] if self.owners[n] == self.rank else None
                torch.distributed.gather(g, parts, dst=self.owners[n])
                rows = [p for r, p in enumerate(parts or []) if self.round < self.shares[r]]
            else:
                rows = [g] if grads is not None else []
            for row in rows:
                self.add_row(n, as_blocks(row.to(self.store[n]), self.B[n]))
        self.round += 1

    def add_row(self, n, g: torch.Tensor):
        """g: one gradient of tensor n as blocks (nb, B)."""
        if n not in self.buffer:                                             # matrix-free
            self.store[n][:, self.rows[n]] = g
            self.rows[n] += 1
            return
        self.buffer[n][:, self.rows[n]] = g
        self.rows[n] += 1
        if self.rows[n] == self.buffer[n].shape[1]:
            self.flush(n)

    def flush(self, n):
        """F_b += G_bᵀ G_b / m for the buffered rows G_b (k, B) of every block: one batched product."""
        G = self.buffer[n][:, : self.rows[n]]                                 # (nb, k, B)
        self.store[n].baddbmm_(G.transpose(1, 2), G, alpha=1.0 / self.m)
        self.rows[n] = 0

    @torch.no_grad()
    def inverses(self) -> dict:
        """F⁻¹ of this rank's tensors, each inverted in place, one tensor at a time."""
        for n in list(self.buffer):
            self.flush(n)
            del self.buffer[n]                       # freed before any inverse is computed
        for n in self.mine():
            if self.store[n].shape[1] == self.m and self.B[n] > self.m:
                self.store[n] = matrix_free(self.store[n], self.damp, self.m)
            else:
                invert_blocks(self.store[n], self.damp)
        return self.store


def fisher_bytes(shapes: dict, block_size, num_grads: int) -> int:
    """What EmpiricalFisher allocates for these tensors, in float32: the blocks and their chunk
    buffers (B <= m), or the gradients G and the diagonal (B > m, matrix-free)."""
    total = 0
    for shape in shapes.values():
        d = math.prod(shape)
        B = block_size_of(shape, block_size)
        nb = math.ceil(d / B)
        total += 4 * nb * B * ((B + max(1, B // 4)) if B <= num_grads else (num_grads + 1))
    return total


def fisher_inverse_blocks_cholesky(grads: torch.Tensor, block_size: int = 50, damp: float = 1e-7) -> torch.Tensor:
    """Same result as `fisher_inverse_blocks`, by `EmpiricalFisher`: accumulate, then invert once
    (matrix-free when block_size > m, densified here so that it compares with the others)."""
    fisher = EmpiricalFisher({"w": (grads.shape[1],)}, block_size, grads.shape[0], damp, device=grads.device,
                             dtype=grads.dtype)
    for g in grads:
        fisher.add({"w": g})
    finv = fisher.inverses()["w"]
    if isinstance(finv, MatrixFree):
        eye = torch.eye(finv.W.shape[2], dtype=finv.W.dtype, device=finv.W.device)
        return (eye - finv.W.transpose(1, 2) @ finv.W) / damp
    return finv


@torch.no_grad()
def obert_scores(weight: torch.Tensor, finv, pattern: str = "unstructured") -> torch.Tensor:
    """Loss increase of removing each weight (unstructured, N:M) or its group (4-block); weight's shape."""
    nb, B, _ = finv.shape
    w = as_blocks(weight.reshape(-1).to(dtype_of(finv)), B)                # (nb, B)
    if pattern == "4-block":
        wq = w.view(nb, B // GROUP, GROUP, 1)                               # (nb, B/4, 4, 1)
        s = 0.5 * (wq.transpose(2, 3) @ group_inverse(finv) @ wq)           # 0.5 w_Q^T (F^-1_QQ)^-1 w_Q
        s = s.view(nb, B // GROUP, 1).expand(-1, -1, GROUP).reshape(nb, B)
    else:
        s = w.pow(2) / (2 * inverse_diag(finv))                             # w_j^2 / (2 [F^-1]_jj)
    return s.reshape(-1)[: weight.numel()].view(weight.shape)


@torch.no_grad()
def obert_update(weight: torch.Tensor, finv, newly_pruned: torch.Tensor, pattern="unstructured"):
    """In place: w += sum over newly pruned singles/groups P of -F^-1[:, P] ([F^-1]_PP)^-1 w_P,
    within each Fisher block; then the newly pruned entries are set exactly to 0."""
    nb, B, _ = finv.shape
    w = as_blocks(weight.reshape(-1).to(dtype_of(finv)), B)                # (nb, B)
    p = as_blocks(newly_pruned.reshape(-1), B)                              # (nb, B) bool
    if pattern == "4-block":
        wq = (w * p).view(nb, B // GROUP, GROUP, 1)                         # w_Q for pruned groups, else 0
        u = (group_inverse(finv) @ wq).view(nb, B)                          # (F^-1_QQ)^-1 w_Q
    else:
        u = torch.where(p, w / inverse_diag(finv), 0.0)                     # w_j / [F^-1]_jj
    dw = -inverse_times(finv, u)                                            # (nb, B) = -F^-1 u
    new = (w + dw).reshape(-1)[: weight.numel()].view(weight.shape)
    weight.copy_(new.masked_fill(newly_pruned, 0.0).to(weight.dtype))


# -----------------------------------------------------------------------------
# The criteria: one scoring function each, with one signature, and one registry.
#
#   score(weights, pattern, fisher) -> {name: scores}    each tensor the weight's shape; low = prune first.
#                                                         4-block: every weight carries its group's score.
#   update(weights, fisher, newly_pruned, pattern)       optional, in place, after selection (oBERT's OBS).
#
# Adding a criterion is one scoring function and one entry in METHODS: train.py reads its
# --method choices, its checks and its pruning step from here (`prune_step`).

@dataclass(frozen=True)
class Method:
    score: Callable                       # (weights, pattern, fisher) -> scores
    update: Callable | None = None        # (weights, fisher, newly_pruned, pattern) -> None, in place
    needs_fisher: bool = False            # train.py collects the inverse Fisher blocks first
    help: str = ""


@torch.no_grad()
def magnitude_scores(weights: dict, pattern="unstructured", fisher=None) -> dict:
    """GMP: |w_j|; for 4-block groups the group's 0.5 * ||w_Q||^2 (OBS with F = I)."""
    scores = {}
    for name, w in weights.items():
        w = w.detach().float()
        if pattern == "4-block":
            s = 0.5 * w.reshape(-1, GROUP).pow(2).sum(1, keepdim=True).expand(-1, GROUP)   # (numel/4, 4)
        else:
            s = w.abs()
        scores[name] = s.reshape(w.shape)
    return scores


@torch.no_grad()
def obert_all_scores(weights: dict, pattern="unstructured", fisher=None) -> dict:
    """oBERT: each tensor's scores from its own inverse Fisher blocks, fisher[name] (`obert_scores`)."""
    return {n: obert_scores(w, fisher[n], pattern) for n, w in weights.items()}


@torch.no_grad()
def obert_all_updates(weights: dict, fisher: dict, newly_pruned: dict, pattern="unstructured"):
    """oBERT: the OBS update of each tensor for its newly pruned weights (`obert_update`)."""
    for n, w in weights.items():
        obert_update(w, fisher[n], newly_pruned[n], pattern)


METHODS = {
    "gmp": Method(magnitude_scores, help="gradual magnitude pruning, |w| (the default: the paper shows that "
                                         "tuned GMP suffices)"),
    "obert": Method(obert_all_scores, obert_all_updates, needs_fisher=True,
                    help="the Optimal BERT Surgeon, w^2 / (2 [F^-1]_jj) with the OBS update; its Fisher costs "
                         "d*B*4 bytes, 60 GB for roberta-large at B=50"),
}


@torch.no_grad()
def prune_step(weights: dict, method: Method, sparsity: float, scope="global", pattern="unstructured",
               masks=None, fisher=None, owners=None) -> dict:
    """One pruning step of any criterion: score, select (never reviving), update; returns the keep-masks.

    Weights are zeroed here only by a method that moves them (its update also moves earlier-pruned
    weights); train.py applies the masks to every method's weights right after. owners: under
    torchrun, the rank that owns each tensor (`shard_by_size`). Each rank scores and updates only
    its own tensors (so `fisher` need only hold those), the global threshold comes from collectives
    in `select`, and every tensor's new weights and mask are then broadcast from its owner: all
    ranks end with what one process holding everything would have computed.
    """
    rank = torch.distributed.get_rank() if owners else 0
    mine = {n: w for n, w in weights.items() if owners is None or owners[n] == rank}
    old = {n: masks[n] for n in mine} if masks else masks
    keep = select(method.score(mine, pattern, fisher), sparsity, scope, pattern, old, list(weights) if owners else None)
    if method.update is not None:
        newly = {n: ~keep[n] if not masks else masks[n] & ~keep[n] for n in mine}
        method.update(mine, fisher, newly, pattern)
        for n, w in mine.items():
            w.masked_fill_(~keep[n], 0.0)
    return share_from_owners(weights, keep, owners) if owners else keep


def share_from_owners(weights: dict, keep: dict, owners: dict) -> dict:
    """Every tensor's weights and mask, broadcast from the rank that owns it (gloo sends no bools)."""
    out = {}
    for n, w in weights.items():
        m = keep[n].to(torch.uint8) if n in keep else torch.empty(w.shape, dtype=torch.uint8, device=w.device)
        torch.distributed.broadcast(m, owners[n])
        torch.distributed.broadcast(w.data, owners[n])
        out[n] = m.bool()
    return out


def shard_by_size(sizes: dict, world: int) -> dict:
    """The owner rank of each tensor, balanced by size: largest first, each to the least-loaded rank."""
    load, owners, order = [0] * world, {}, list(sizes)
    for n in sorted(order, key=lambda n: (-sizes[n], order.index(n))):
        r = min(range(world), key=lambda r: (load[r], r))
        owners[n], load[r] = r, load[r] + sizes[n]
    return owners


def obert_prune(params: dict, finvs: dict, sparsity: float, scope="global", pattern="unstructured", masks=None):
    """One oBERT pruning step: scores from each F^-1, new masks (containing the old), OBS update."""
    return prune_step(params, METHODS["obert"], sparsity, scope, pattern, masks, finvs)


# -----------------------------------------------------------------------------
# Reports.

def sparsity_by_component(model) -> dict:
    """Fraction of exact zeros in the weight matrices of embeddings / encoder linears / head."""
    zeros, total = {}, {}
    candidates = set(prunable_names(model, embeddings=True, head=True))
    for name, p in model.named_parameters():
        if name in candidates:
            c = component(name)
            zeros[c] = zeros.get(c, 0) + int((p == 0).sum())
            total[c] = total.get(c, 0) + p.numel()
    return {c: zeros[c] / total[c] for c in total}


def sparsity_report(model, masks: dict | None = None) -> str:
    """Per-matrix table (shape, zeros, sparsity) and totals per component; printed and returned."""
    masks = masks or {}
    lines = [f"{'parameter':<34} {'shape':>12} {'sparsity':>9} {'masked':>7}"]
    for name in prunable_names(model, embeddings=True, head=True):
        p = model.get_parameter(name)
        shape = "x".join(map(str, p.shape))
        lines.append(f"{name:<34} {shape:>12} {float((p == 0).float().mean()):9.4f} {'yes' if name in masks else 'no':>7}")
    for c, s in sparsity_by_component(model).items():
        lines.append(f"{'total ' + c:<34} {'':>12} {s:9.4f}")
    text = "\n".join(lines)
    print(text)
    return text


BUILTIN = {  # so that the report works offline
    "bert-base-uncased": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, intermediate_size=3072,
                              max_position_embeddings=512, type_vocab_size=2),
    "roberta-large": dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, intermediate_size=4096,
                          max_position_embeddings=514, type_vocab_size=1),
}


def cost_table(cfg: dict, seq_len: int = 128, num_labels: int = 2) -> list[tuple[str, int, int]]:
    """(component, parameters, forward FLOPs per sequence) with FLOPs = 2 x multiply-adds of the
    matrix products (element-wise work, softmax and LayerNorm, is left out)."""
    V, H, L, I = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    P, TT, T = cfg["max_position_embeddings"], cfg["type_vocab_size"], seq_len
    return [
        ("embeddings", (V + P + TT) * H + 2 * H, 0),                        # lookups, no products
        # per layer: q, k, v, attn_out (H x H + H each), intermediate (I x H + I), output (H x I + H), 2 LayerNorms
        ("encoder linears", L * (4 * (H * H + H) + (H * I + I) + (I * H + H) + 4 * H), L * 2 * T * (4 * H * H + 2 * H * I)),
        ("attention matmuls", 0, L * 2 * 2 * T * T * H),                     # q k^T and softmax(.) v
        ("pooler + head", (H * H + H) + (H * num_labels + num_labels), 2 * (H * H + H * num_labels)),
    ]


def print_cost_table(source: str, seq_len: int):
    if source in BUILTIN:
        cfg = BUILTIN[source]
    else:
        path = Path(source)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"prune.py: no config at {source}; pass a config.json, a model folder, "
                             f"or one of {', '.join(BUILTIN)}")
        cfg = json.loads(path.read_text())
    rows = cost_table(cfg, seq_len)
    P, F = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{source}, sequence length {seq_len} (LayerNorm parameters included with their component)")
    print(f"{'component':<20} {'params (M)':>11} {'% params':>9} {'GFLOPs':>9} {'% FLOPs':>8}")
    for name, p, f in rows:
        print(f"{name:<20} {p / 1e6:11.2f} {100 * p / P:9.1f} {f / 1e9:9.2f} {100 * f / F:8.1f}")
    print(f"{'total':<20} {P / 1e6:11.2f} {100.0:9.1f} {F / 1e9:9.2f} {100.0:8.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Parameters and FLOPs per component: why prune only the encoder.")
    ap.add_argument("--report", required=True, metavar="CONFIG_OR_MODEL",
                    help=f"a config.json, a model folder, or a built-in name ({', '.join(BUILTIN)})")
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length for the FLOPs (default 128)")
    args = ap.parse_args(argv)
    print_cost_table(args.report, args.seq_len)


if __name__ == "__main__":
    main()
