"""
The Optimal BERT Surgeon: the empirical Fisher, its inverse, and the OBS scores and updates.

Kurtic et al. (2022), "The Optimal BERT Surgeon", section 3, on Hassibi & Stork's Optimal Brain
Surgeon (1993). Take the loss near a minimum as a quadratic whose Hessian is approximated by the
empirical Fisher of m mini-batch gradients g_i, restricted to diagonal blocks of B consecutive
weights (the last block zero-padded), with dampening λ (eq. 3):

    F = λ I + (1/m) Σ_i g_i g_iᵀ

Removing weight j (setting w_j = 0) and moving the others to compensate raises the loss by at
least, and is best compensated by (OBS):

    score_j = w_j² / (2 [F⁻¹]_jj)                δw = −(w_j / [F⁻¹]_jj) F⁻¹ e_j

and for a group Q of weights removed together (4 consecutive input weights, the paper's
"4-block" pattern, which CPUs' VNNI instructions can skip as a unit):

    score_Q = ½ w_Qᵀ ([F⁻¹]_QQ)⁻¹ w_Q            δw = −F⁻¹[:, Q] ([F⁻¹]_QQ)⁻¹ w_Q

Here: `obert_scores` and `obert_update` for one tensor; `obert_all_scores` / `obert_all_updates`
for many, with the signature of prune.py's registry (`prune.METHODS["obert"]`), so that oBERT is
selected, never revives a weight and shards across ranks exactly as magnitude pruning does. F⁻¹
comes three ways, all tested equal to the exact inverse (tests/test_obert.py): oBERT's own
Sherman-Morrison stream (`add_gradient`), the accumulated form train.py uses
(`EmpiricalFisher`: F_b += G_bᵀG_b/m a chunk at a time, one Cholesky inverse), and M-FAC's
matrix-free form for blocks larger than m (`MatrixFree`, Frantar, Kurtic & Alistarh 2021).
`fisher_bytes` is the memory estimate that cli.py's `check_fisher_memory` checks before anything is
written.

How it connects: `gather_fisher` is the gatherer of the "fisher" statistic in prune.py's
`STATISTICS`: at each pruning step train.py hands it a `Probe` (how to read training batches and
the loss) and it collects the m gradients as SparseML samples them (1024 gradients of batch 8 or
16, dropout off, pruned weights masked) into an `EmpiricalFisher`; prune.py's `prune_step` then
scores, selects and updates with the functions here. This file imports nothing of the project's.
"""
import math
from dataclasses import dataclass

import torch

GROUP = 4                                       # weights per group of the "4-block" pattern


# -----------------------------------------------------------------------------
# OBS: what removing weights costs, and how the rest compensate. finv holds F_b⁻¹ for every block
# b of B consecutive weights of one tensor: (nb, B, B) dense, or `MatrixFree`.

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


@torch.no_grad()
def obert_all_scores(weights: dict, pattern="unstructured", fisher=None) -> dict:
    """oBERT: each tensor's scores from its own inverse Fisher blocks, fisher[name] (`obert_scores`)."""
    return {n: obert_scores(w, fisher[n], pattern) for n, w in weights.items()}


@torch.no_grad()
def obert_all_updates(weights: dict, fisher: dict, newly_pruned: dict, pattern="unstructured"):
    """oBERT: the OBS update of each tensor for its newly pruned weights (`obert_update`)."""
    for n, w in weights.items():
        obert_update(w, fisher[n], newly_pruned[n], pattern)


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
        self.device = torch.device(device or "cpu")   # also the gathers': train.py runs NCCL on CUDA, gloo on CPUs
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
                g = g.to(self.device)
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


def gather_fisher(model, names: list, masks: dict, probe) -> dict:
    """oBERT's statistic at one pruning step: {name: F⁻¹ blocks} of the tensors `names`, sampled as
    SparseML samples it: probe.num_grads gradients of the task loss, each on a batch of
    probe.fisher_batch_size from a shuffled order of their own, with dropout off (eval mode) and the
    gradients of pruned weights masked (a pruned weight is 0 and stays 0: its gradient is no
    evidence). probe: prune.py's `Probe`. Under torchrun (probe.owners) each rank computes its share
    of the gradients on its own data shard (through `model`, not DDP: nothing is averaged) and the
    owner of each tensor keeps and inverts its blocks (`EmpiricalFisher`)."""
    params = dict(model.named_parameters())
    fisher = EmpiricalFisher({n: params[n].shape for n in names}, probe.block_size, probe.num_grads, probe.damp,
                             probe.owners, probe.device)
    batches = probe.batches(probe.fisher_batch_size, 1, sharded=True)
    was_training = model.training
    model.eval()
    for i in range(fisher.rounds):
        grads = None
        if i < fisher.shares[fisher.rank]:                # this rank's share; then None, while others finish
            model.zero_grad(set_to_none=True)
            probe.loss(model, next(batches)).backward()
            grads = {}
            for n in names:
                g = params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])
                grads[n] = g.mul_(masks[n]) if n in masks else g     # pruned weights: no gradient
        fisher.add(grads)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher.inverses()


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
