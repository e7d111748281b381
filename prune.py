"""
Which weights to prune, how to turn scores into masks, and the registry of pruning criteria.

Kurtic, Hoefler & Alistarh (2024), section 4: prune only the encoder's linear layers; the
embeddings and the task head stay dense (they hold many parameters but few FLOPs: see
`python prune.py --report bert-base-uncased`). A pruning course teaches saliency as a ladder,
and each rung is one scoring function with one signature in `METHODS`, plus the statistic it
reads besides the weights (`STATISTICS`):

  zeroth order, GMP (gradual magnitude pruning; Zhu & Gupta 2017, tuned as GMP* by Kurtic &
  Alistarh 2022): score_j = |w_j|; reads nothing else                  (`magnitude_scores`, here)
  first order, movement (Sanh, Wolf & Rush 2020): how training moved the weight,
      S_j = -Σ_t w_j(t) g_j(t), summed over the student's steps        (criteria.py)
  second order, oBERT (Kurtic et al. 2022, "The Optimal BERT Surgeon"): the loss increase of
  removing w_j under the empirical Fisher F, with the OBS update of the others,
      score_j = w_j^2 / (2 [F^-1]_jj)                                   (obert.py, which holds the Fisher)
  activation-aware, Wanda (Sun, Liu, Bair & Kolter 2023): |w_ij| times the norm of its input,
      score_ij = |W_ij| · ||X_j||_2 over the real tokens of a calibration set   (criteria.py)

`select` turns any scores, signed or not, into masks (exactly round(s * n) pruned, globally, per
matrix, per output row, or N:M, never reviving), and `prune_step` is the one pruning step of
every criterion, also under torchrun, where each rank scores and updates its own share of the
tensors (`shard_by_size`) and the global threshold is found with a few collectives
(`kth_smallest`, `all_sum`, `all_cat`).

Masks are boolean tensors keyed by parameter name, True = kept. When a weight is pruned,
train.py zeroes it and AdamW's moments there; at every step it masks the gradients before AdamW
and re-applies the masks after it, so no pruned weight revives; masks are saved with every
checkpoint (rundir.py). schedule.py says *when* and *how much* to prune; sparse.py makes sparse
weights fast; cram.py trains a dense model whose magnitude masks cost little.
"""
import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from model import ENCODER_LINEARS, HEAD_MODULES   # query key value attn_out intermediate output; pooler and heads
import criteria                                                   # movement and Wanda, with their statistics
from obert import GROUP, gather_fisher, obert_all_scores, obert_all_updates   # 4-block groups; oBERT and its Fisher

EMBEDDINGS = ("embeddings.word.weight", "embeddings.position.weight", "embeddings.token_type.weight")
HEAD = tuple(f"{m}.weight" for m in HEAD_MODULES)


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
        below, band = 0, [scores[0].new_zeros(0) if scores else torch.zeros(0, dtype=torch.float64)]  # on their device
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

    Scores are any finite numbers, signed or not (movement's are signed), or -inf for weights
    already pruned (always selected). Ties at the threshold are broken deterministically: earlier
    tensor first, then lower flat index. sharded: `scores` are this rank's tensors, at `positions`
    in the global order of `total` tensors.
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


def masks_equal_across_ranks(masks, device) -> bool:
    """Under torchrun: whether every rank holds the same masks (results.json reports it). Each rank's
    masks are packed to one fingerprint, the kept count and the index-weighted sum, and all are compared."""
    fp = torch.zeros(2, dtype=torch.float64, device=device)
    for m in masks.values():
        idx = torch.arange(m.numel(), device=device, dtype=torch.float64)
        fp += torch.stack([m.sum().double(), (m.flatten().double() * idx).sum()])   # m.flatten(): (numel,)
    everyone = [torch.zeros_like(fp) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(everyone, fp)
    return all(torch.equal(everyone[0], f) for f in everyone)


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
    """Keep-masks that prune round(sparsity * n) lowest-scoring weights: over all tensors together
    ("global"), per tensor ("layer"), or per tensor spread over its output rows ("row", `select_per_row`).

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
    rows = {n: s.shape[0] for n, s in scores.items()}
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
    elif scope == "row":
        prune = {n: select_per_row(scores[n].reshape(rows[n], -1), sparsity).view_as(scores[n]) for n in names}
    else:
        raise ValueError(f"scope must be 'global', 'layer' or 'row', got {scope!r}")
    keep = {n: ~p for n, p in prune.items()}
    if pattern == "4-block":   # (groups,) -> (groups, 4) -> flat
        keep = {n: k[:, None].expand(-1, GROUP).reshape(-1) for n, k in keep.items()}
    return keep


def select_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean 'prune' mask of one (out, in) matrix of scores (or (out, in/4) groups) compared within
    each output row, Wanda's per-output comparison: row i loses its k_i lowest, with Σ k_i = round(s · n)
    spread as evenly as the rows allow (floor or ceil of s · in each, the first rows taking the
    remainder). Where s · in is whole (50% of 384) that is the authors' int(s · in) per row; where it
    is not, their per-row floor would fall short of s, and this keeps every matrix at exactly s, as
    the other scopes do. Never reviving: a row whose weights already pruned (-inf) outnumber k_i
    keeps them all pruned (then the matrix ends above s: only masks made by another scope can do
    that; a run keeps one scope, and each row's k_i only grows with s). Ties: lower column first (a
    stable sort)."""
    out, width = scores.shape
    total = round(sparsity * scores.numel())
    k = torch.full((out, 1), total // out, device=scores.device)                     # (out, 1)
    k[: total % out] += 1
    k = torch.maximum(k, torch.isneginf(scores).sum(1, keepdim=True))                # never revive
    order = torch.sort(scores, dim=1, stable=True).indices                           # (out, in): lowest first
    lowest = torch.arange(width, device=scores.device)[None, :] < k                  # (out, in) in sorted order
    return torch.zeros_like(lowest).scatter_(1, order, lowest)                      # back to the columns


def never_revive(scores: dict, masks: dict | None) -> dict:
    """Already-pruned weights score -inf, so the new mask contains the old one."""
    if not masks:
        return scores
    return {n: s.masked_fill(~masks[n], float("-inf")) if n in masks else s for n, s in scores.items()}


def select(scores: dict, sparsity: float, scope="global", pattern="unstructured", masks=None, order=None) -> dict:
    """Scores -> keep-masks: the lowest-scoring round(sparsity * n) weights are pruned, globally, per
    matrix or per output row (or the N best of every M kept). Never reviving: weights that `masks` already prunes score
    -inf, so they are selected first and the new masks contain the old ones. order: see
    `masks_from_scores` (sharded selection under torchrun)."""
    keep = masks_from_scores(never_revive(scores, masks), sparsity, scope, pattern, order)
    return {n: k.view(scores[n].shape) for n, k in keep.items()}


def magnitude_masks(params: dict, sparsity: float, scope="global", pattern="unstructured", masks=None) -> dict:
    """GMP's masks: `select` over `magnitude_scores`."""
    return select(magnitude_scores(params, pattern), sparsity, scope, pattern, masks)


# -----------------------------------------------------------------------------
# The criteria: one scoring function each, with one signature, and one registry.
#
#   score(weights, pattern, stats) -> {name: scores}     each tensor the weight's shape; low = prune first
#                                                         (any sign); 4-block: every weight carries its
#                                                         group's score.
#   update(weights, stats, newly_pruned, pattern)        optional, in place, after selection (oBERT's OBS).
#
# `stats` is what the criterion reads besides the weights, {name: tensor} (or None), made by the one
# gatherer of its kind in STATISTICS, written once beside the criterion that introduced it:
#
#   kind           what                                    when the loop makes it
#   "fisher"       F⁻¹ of each tensor's blocks             at each pruning step, from --num-grads gradients
#   "input_norms"  ||X_j||_2 of each Linear's inputs        at each pruning step, from --calibration-size examples
#   "movement"     -Σ_t w(t) ⊙ g(t) of each tensor          at every training step, from its gradients
#
# A *gathered* statistic is made at the pruning step from the training data (`gather(model, names,
# masks, probe)`, the `Probe` saying how to read batches and the loss); an *accumulated* one is
# added to at every optimizer step of the student (`accumulate(running, weights)`, after the
# gradients are masked and clipped, before AdamW moves the weights), saved in every checkpoint and
# zeroed where the masks prune. train.py calls the one its criterion names and nothing else.
#
# Adding a criterion is one scoring function and one entry in METHODS (cli.py reads the --method
# choices and checks from here, train.py its pruning step, `prune_step`); a criterion of a new kind
# adds its gatherer and one entry in STATISTICS.

@dataclass(frozen=True)
class Method:
    score: Callable                       # (weights, pattern, stats) -> scores
    update: Callable | None = None        # (weights, stats, newly_pruned, pattern) -> None, in place
    reads: str | None = None              # the statistic it reads besides the weights: a key of STATISTICS
    scope: str = "global"                 # its paper's comparison group: global, layer (per matrix) or row
    help: str = ""


@dataclass(frozen=True)
class Statistic:
    label: str                            # what it is, for messages
    gather: Callable | None = None        # (model, names, masks, probe) -> stats, at a pruning step
    accumulate: Callable | None = None    # (running, weights) -> None, in place, at every training step
    flags: tuple = ()                     # the command-line flags that size it (cli.py: they apply only here)


@dataclass(frozen=True)
class Probe:
    """How a gatherer reads the training data at one pruning step; train.py builds it (`probe`).

    batches(batch_size, stream, sharded) -> an endless iterator of training batches on the device, in a
      shuffled order of their own (seeded by the run's seed + stream and by the pruning step: each
      step sees new batches, and a resumed run the same ones); sharded: under torchrun, each rank
      reads its own shard.
    loss(model, batch) -> the task loss of one batch, under the run's autocast.
    forward(model, batch) -> the model's output on one batch, under the run's autocast.
    """
    batches: Callable
    loss: Callable
    forward: Callable
    device: torch.device
    owners: dict | None                   # under torchrun: the rank that owns each tensor (`shard_by_size`)
    num_grads: int                        # oBERT's Fisher: gradients, ...
    fisher_batch_size: int                # ... each on this many examples,
    block_size: int | str                 # ... in blocks of B weights (or "row"),
    damp: float                           # ... dampened by λ
    calibration_size: int | None          # Wanda: training examples whose inputs are measured (the paper's 128)
    calibration_batch_size: int           # ... this many at a time


@torch.no_grad()
def magnitude_scores(weights: dict, pattern="unstructured", stats=None) -> dict:
    """GMP: |w_j|; for 4-block groups the group's 0.5 * ||w_Q||^2 (OBS with F = I)."""
    return {name: 0.5 * criteria.group_sums(w.detach().float().pow(2), pattern) if pattern == "4-block"
            else w.detach().float().abs() for name, w in weights.items()}


STATISTICS = {
    "fisher": Statistic("Fisher", gather=gather_fisher, flags=("num_grads", "fisher_batch_size", "block_size",
                                                                 "damp")),
    "input_norms": Statistic("input norms", gather=criteria.gather_input_norms, flags=("calibration_size",)),
    "movement": Statistic("movement sums", accumulate=criteria.accumulate_movement),
}

METHODS = {
    "gmp": Method(magnitude_scores, help="zeroth order: gradual magnitude pruning, |w| (the default: the paper "
                                         "shows that tuned GMP suffices)"),
    "movement": Method(criteria.movement_scores, reads="movement", scope="layer",
                       help="first order: movement pruning (Sanh et al. 2020), -sum_t w*g over the student's "
                            "steps, per matrix as the paper's TopK; no --oneshot (it needs training)"),
    "obert": Method(obert_all_scores, obert_all_updates, reads="fisher",
                    help="second order: the Optimal BERT Surgeon, w^2 / (2 [F^-1]_jj) with the OBS update; its "
                         "Fisher costs d*B*4 bytes, 60 GB for roberta-large at B=50"),
    "wanda": Method(criteria.wanda_scores, reads="input_norms", scope="row",
                    help="activation-aware: Wanda (Sun et al. 2023), |w| * ||x||_2 of its input over "
                         "--calibration-size examples, per output row as the paper; encoder and head only"),
}


def gathered(method: Method) -> bool:
    """Whether the criterion's statistic is read from data at the pruning step (not accumulated in training)."""
    return method.reads is not None and STATISTICS[method.reads].gather is not None


def accumulated(method: Method) -> bool:
    """Whether the criterion's statistic is accumulated over the training steps (movement's)."""
    return method.reads is not None and STATISTICS[method.reads].accumulate is not None


@torch.no_grad()
def prune_step(weights: dict, method: Method, sparsity: float, scope="global", pattern="unstructured",
               masks=None, stats=None, owners=None) -> dict:
    """One pruning step of any criterion: score, select (never reviving), update; returns the keep-masks.

    Weights are zeroed here only by a method that moves them (its update also moves earlier-pruned
    weights); train.py applies the masks to every method's weights right after. owners: under
    torchrun, the rank that owns each tensor (`shard_by_size`). Each rank scores and updates only
    its own tensors (so `stats` need only hold those), the global threshold comes from collectives
    in `select`, and every tensor's new weights and mask are then broadcast from its owner: all
    ranks end with what one process holding everything would have computed.
    """
    rank = torch.distributed.get_rank() if owners else 0
    mine = {n: w for n, w in weights.items() if owners is None or owners[n] == rank}
    old = {n: masks[n] for n in mine} if masks else masks
    keep = select(method.score(mine, pattern, stats), sparsity, scope, pattern, old, list(weights) if owners else None)
    if method.update is not None:
        newly = {n: ~keep[n] if not masks else masks[n] & ~keep[n] for n in mine}
        method.update(mine, stats, newly, pattern)
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


def sparsity_report(model, masks: dict | None = None, title: str | None = None) -> str:
    """Per-matrix table (shape, zeros, sparsity) and totals per component, under a title line (the
    criterion, say); printed and returned."""
    masks = masks or {}
    lines = ([title] if title else []) + [f"{'parameter':<34} {'shape':>12} {'sparsity':>9} {'masked':>7}"]
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
