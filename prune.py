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
  F^-1 is built without ever forming F: starting from I/damp, one Sherman-Morrison update per
  gradient (eq. 4):  F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (m + g^T F^-1 g).

Masks are boolean tensors keyed by parameter name, True = kept. When a weight is pruned,
train.py zeroes it and AdamW's moments there; at every step it masks the gradients before AdamW
and re-applies the masks after it, so no pruned weight revives; masks are saved with every
checkpoint. schedule.py says *when* and *how much* to prune.
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

def kth_smallest(scores: list[torch.Tensor], k: int) -> float:
    """The k-th smallest (1-based) value over many tensors, exactly, without concatenating them.

    A strided sample of about 2^20 values brackets the answer between two sample quantiles;
    one exact pass counts the values below the bracket and gathers those inside it (a small
    band), and only the band is sorted. If the k-th value falls outside the bracket (a bad
    sample), the bracket widens and the pass repeats. Memory: the band plus one boolean
    temporary per tensor; sorting roberta-large's 302M scores at once would take 2.4 GB.
    """
    n = sum(s.numel() for s in scores)
    stride = max(1, n // (1 << 20))
    sample = torch.cat([s.flatten()[::stride] for s in scores]).float()
    q, margin = (k - 0.5) / n, 8.0 / math.sqrt(sample.numel())      # ~8 standard deviations of a quantile
    for widen in (1, 8, 64, float("inf")):
        lo = torch.quantile(sample, max(q - widen * margin, 0.0)) if widen < float("inf") and q - widen * margin > 0 else None
        hi = torch.quantile(sample, min(q + widen * margin, 1.0)) if widen < float("inf") and q + widen * margin < 1 else None
        below, band = 0, []
        for s in scores:
            inside = torch.ones_like(s, dtype=torch.bool)
            if lo is not None:
                below += int(torch.count_nonzero(s < lo))
                inside &= s >= lo
            if hi is not None:
                inside &= s <= hi
            band.append(s[inside].float())
        band = torch.cat(band)
        if below < k <= below + band.numel():
            return float(torch.kthvalue(band.cpu(), k - below).values)
    raise AssertionError("unreachable: the last bracket holds every value")


def select_lowest(scores: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Boolean 'prune' masks marking exactly `count` lowest scores over all tensors together.

    Scores are >= 0, or -inf for weights already pruned (always selected). Ties at the threshold
    are broken deterministically: earlier tensor first, then lower flat index.
    """
    forced = sum(int(torch.count_nonzero(torch.isneginf(s))) for s in scores)
    if count - forced <= 0:
        return [torch.isneginf(s) for s in scores]
    v = kth_smallest(scores, count)                    # the -inf ones are the smallest: counted in k
    below = sum(int(torch.count_nonzero(s < v)) for s in scores)
    ties_left = count - below                          # how many scores == v still to prune
    out = []
    for s in scores:
        prune_here = s < v
        if ties_left > 0:                              # rare: only tensors holding the threshold value
            tie = (s == v).flatten()
            if tie.any():
                take = tie & (torch.cumsum(tie.long(), 0) <= ties_left)
                ties_left -= int(take.sum())
                prune_here |= take.view_as(s)
        out.append(prune_here)
    return out


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


def masks_from_scores(scores: dict, sparsity: float, scope="global", pattern="unstructured") -> dict:
    """Keep-masks that prune round(sparsity * n) lowest-scoring weights (globally or per tensor).

    unstructured: each weight on its own. "4-block": groups of 4 consecutive input weights share
    one score (the group's) and are pruned together. "N:M": in every group of M consecutive input
    weights keep the N best (the sparsity is then 1 - N/M, whatever the scope).
    """
    nm = parse_nm(pattern)
    if nm is not None:
        n, m = nm
        out = {}
        for name, s in scores.items():
            groups = s.reshape(-1, m)                                      # (numel/M, M)
            order = torch.sort(groups, dim=1, descending=True, stable=True).indices
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order[:, :n], True)
            out[name] = keep.view_as(s)
        return out
    if pattern == "4-block":   # one score per group: (out, in) -> (out * in/4, 4) -> first column
        scores = {n: s.reshape(-1, GROUP)[:, 0] for n, s in scores.items()}
    names = list(scores)
    if scope == "global":
        total = sum(s.numel() for s in scores.values())
        prune = dict(zip(names, select_lowest([scores[n] for n in names], round(sparsity * total))))
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


def select(scores: dict, sparsity: float, scope="global", pattern="unstructured", masks=None) -> dict:
    """Scores -> keep-masks: the lowest-scoring round(sparsity * n) weights are pruned, globally or per
    matrix (or the N best of every M kept). Never reviving: weights that `masks` already prunes score
    -inf, so they are selected first and the new masks contain the old ones."""
    keep = masks_from_scores(never_revive(scores, masks), sparsity, scope, pattern)
    return {n: k.view(scores[n].shape) for n, k in keep.items()}


def magnitude_masks(params: dict, sparsity: float, scope="global", pattern="unstructured", masks=None) -> dict:
    """GMP's masks: `select` over `magnitude_scores`."""
    return select(magnitude_scores(params, pattern), sparsity, scope, pattern, masks)


# -----------------------------------------------------------------------------
# oBERT: the inverse of the block-diagonal empirical Fisher, scores, and the OBS update.
#
# Memory: one (B, B) block per B weights, i.e. d * B floats for d prunable weights:
#   bert-base encoder, d = 85M,  B = 50:  85e6 * 50 * 4 bytes = 17 GB
#   roberta-large,     d = 302M, B = 50: 302e6 * 50 * 4 bytes = 60 GB
# which is why train.py defaults to GMP (the paper's point: well-tuned GMP is enough).

def init_fisher_inverse(numel: int, block_size: int, damp: float, device=None, dtype=torch.float32):
    """F^-1 of F = damp * I, as (num_blocks, B, B) with num_blocks = ceil(numel / B)."""
    num_blocks = math.ceil(numel / block_size)
    eye = torch.eye(block_size, device=device, dtype=dtype) / damp
    return eye.expand(num_blocks, -1, -1).contiguous()


def as_blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """(d,) -> (num_blocks, B), zero-padding the last block."""
    pad = (-flat.numel()) % block_size
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, block_size)


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
    """Inverse of damp*I + (1/m) sum_i g_i g_i^T per diagonal block; grads is (m, d)."""
    finv = init_fisher_inverse(grads.shape[1], block_size, damp, grads.device, grads.dtype)
    for g in grads:
        add_gradient(finv, g, grads.shape[0])
    return finv


@torch.no_grad()
def add_gradient_to_fisher(fisher: torch.Tensor, grad: torch.Tensor, num_grads: int):
    """The other way: accumulate the block Fisher itself, F_blocks += g g^T / m (invert once later)."""
    g = as_blocks(grad.reshape(-1).to(fisher.dtype), fisher.shape[-1])     # (nb, B)
    fisher.baddbmm_(g.unsqueeze(2), g.unsqueeze(1), alpha=1.0 / num_grads)


def fisher_inverse_blocks_cholesky(grads: torch.Tensor, block_size: int = 50, damp: float = 1e-7) -> torch.Tensor:
    """Same result as `fisher_inverse_blocks`: accumulate damp*I + (1/m) G^T G per block, then
    one batched Cholesky inverse."""
    fisher = init_fisher_inverse(grads.shape[1], block_size, 1.0, grads.device, grads.dtype) * damp
    for g in grads:
        add_gradient_to_fisher(fisher, g, grads.shape[0])
    return torch.cholesky_inverse(torch.linalg.cholesky(fisher))


def group_inverse(finv: torch.Tensor) -> torch.Tensor:
    """([F^-1]_QQ)^-1 for every group Q of 4 consecutive weights: (nb, B, B) -> (nb, B/4, 4, 4)."""
    nb, B, _ = finv.shape
    if B % GROUP:
        raise ValueError(f"the 4-block pattern needs a Fisher block size divisible by 4 (recipe: 32), got {B}")
    q = finv.view(nb, B // GROUP, GROUP, B // GROUP, GROUP).diagonal(dim1=1, dim2=3)   # (nb, 4, 4, B/4)
    return torch.linalg.inv(q.permute(0, 3, 1, 2))                                     # (nb, B/4, 4, 4)


@torch.no_grad()
def obert_scores(weight: torch.Tensor, finv: torch.Tensor, pattern: str = "unstructured") -> torch.Tensor:
    """Loss increase of removing each weight (unstructured, N:M) or its group (4-block); weight's shape."""
    nb, B, _ = finv.shape
    w = as_blocks(weight.reshape(-1).to(finv.dtype), B)                    # (nb, B)
    if pattern == "4-block":
        wq = w.view(nb, B // GROUP, GROUP, 1)                               # (nb, B/4, 4, 1)
        s = 0.5 * (wq.transpose(2, 3) @ group_inverse(finv) @ wq)           # 0.5 w_Q^T (F^-1_QQ)^-1 w_Q
        s = s.view(nb, B // GROUP, 1).expand(-1, -1, GROUP).reshape(nb, B)
    else:
        s = w.pow(2) / (2 * finv.diagonal(dim1=1, dim2=2))                  # w_j^2 / (2 [F^-1]_jj)
    return s.reshape(-1)[: weight.numel()].view(weight.shape)


@torch.no_grad()
def obert_update(weight: torch.Tensor, finv: torch.Tensor, newly_pruned: torch.Tensor, pattern="unstructured"):
    """In place: w += sum over newly pruned singles/groups P of -F^-1[:, P] ([F^-1]_PP)^-1 w_P,
    within each Fisher block; then the newly pruned entries are set exactly to 0."""
    nb, B, _ = finv.shape
    w = as_blocks(weight.reshape(-1).to(finv.dtype), B)                    # (nb, B)
    p = as_blocks(newly_pruned.reshape(-1), B)                              # (nb, B) bool
    if pattern == "4-block":
        wq = (w * p).view(nb, B // GROUP, GROUP, 1)                         # w_Q for pruned groups, else 0
        u = (group_inverse(finv) @ wq).view(nb, B)                          # (F^-1_QQ)^-1 w_Q
    else:
        u = torch.where(p, w / finv.diagonal(dim1=1, dim2=2), 0.0)         # w_j / [F^-1]_jj
    dw = -torch.bmm(finv, u.unsqueeze(2)).squeeze(2)                        # (nb, B) = -F^-1 u
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
               masks=None, fisher=None) -> dict:
    """One pruning step of any criterion: score, select (never reviving), update; returns the keep-masks.
    Weights are zeroed here only by a method that moves them (its update also moves earlier-pruned
    weights); train.py applies the masks to every method's weights right after."""
    keep = select(method.score(weights, pattern, fisher), sparsity, scope, pattern, masks)
    if method.update is not None:
        newly = {n: ~keep[n] if not masks else masks[n] & ~keep[n] for n in weights}
        method.update(weights, fisher, newly, pattern)
        for n, w in weights.items():
            w.masked_fill_(~keep[n], 0.0)
    return keep


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
