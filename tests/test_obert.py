"""obert.py against exact references: the scores and updates against brute-force OBS (Lagrange)
and the loss of a quadratic; every form of the inverse Fisher against linalg.inv, the matrix-free
form against the dense one; the sharded step against one process; and train.py's sampling
(dropout off, masked, batches of --fisher-batch-size)."""

import pytest
import torch
import torch.multiprocessing as mp

import obert as O
import prune as P

f64 = torch.float64


def exact_inverse(grads, B, damp):
    """torch.linalg.inv of damp*I + (1/m) G_b^T G_b for every block (last one zero-padded)."""
    m, d = grads.shape
    G = torch.nn.functional.pad(grads, (0, (-d) % B)).view(m, -1, B)        # (m, nb, B)
    return torch.linalg.inv(damp * torch.eye(B, dtype=f64) + torch.einsum("mbi,mbj->bij", G, G) / m)


def gradients(m, d, dead=(), seed=0):
    """m random gradients of d weights; the `dead` ones (pruned weights) are exactly 0."""
    g = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=f64)
    g[:, list(dead)] = 0.0
    return g


def dense(finv):
    if isinstance(finv, O.MatrixFree):
        return (torch.eye(finv.W.shape[2], dtype=f64) - finv.W.transpose(1, 2) @ finv.W) / finv.damp
    return finv


FORMS = {  # name -> grads (m, d), B, damp -> F^-1 blocks
    "sherman-morrison": lambda g, B, damp: O.fisher_inverse_blocks(g, B, damp),
    "accumulate": lambda g, B, damp: O.fisher_inverse_blocks_cholesky(g, B, damp),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("m, d, B", [(16, 40, 8), (16, 37, 10), (6, 30, 12), (5, 23, 23), (40, 50, 50)])
def test_every_form_equals_the_exact_inverse_with_dead_rows_and_padding(form, m, d, B):
    grads = gradients(m, d, dead=(0, 3, d - 1))                 # pruned weights: their rows are damp*I only
    want = exact_inverse(grads, B, 1e-2)
    got = dense(FORMS[form](grads, B, 1e-2))                    # B > m: "accumulate" is matrix-free
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m", [30, 200])
def test_float32_inverse_is_right_where_blocks_are_numerically_singular(m):
    """λ = 1e-7 beside gradients of 1e-3, dead rows (λI only), and m < B (rank-deficient blocks)."""
    grads = gradients(m, 500, dead=(0, 7, 49, 123), seed=5) * 1e-3
    want = exact_inverse(grads, 50, 1e-7)
    got = O.fisher_inverse_blocks_cholesky(grads.float(), 50, 1e-7).double()
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    assert torch.allclose(O.inverse_diag(got), O.inverse_diag(want), rtol=2e-6)
    dead = O.inverse_diag(got)[0, [0, 7, 49]]
    assert torch.allclose(dead, torch.full_like(dead, 1e7), rtol=2.4e-7, atol=0)  # 1 / λ, to 2 float32 ulps


@pytest.mark.parametrize("m, d, B", [(12, 40, 8), (5, 48, 16), (3, 24, 24)])
def test_streaming_add_gradient_equals_accumulate(m, d, B):
    grads = gradients(m, d, dead=(1,), seed=2)
    finv = O.init_fisher_inverse(d, B, 1e-3, dtype=f64)
    for g in grads:
        O.add_gradient(finv, g, m)
    assert torch.allclose(finv, dense(O.fisher_inverse_blocks_cholesky(grads, B, 1e-3)), rtol=1e-9, atol=1e-7)


def matrix_free_and_dense(m, shape, seed=0, damp=1e-2):
    d = shape[0] * shape[1]
    grads = gradients(m, d, dead=(2, 5), seed=seed)
    fisher = O.EmpiricalFisher({"w": shape}, "row", m, damp, dtype=f64)
    for g in grads:
        fisher.add({"w": g})
    free = fisher.inverses()["w"]
    return grads, free, exact_inverse(grads, shape[1], damp)


def test_block_size_picks_the_smaller_form():
    f = O.EmpiricalFisher({"a": (4, 32), "b": (4, 8)}, "row", 16, 1e-2)
    assert f.store["a"].shape == (4, 16, 32) and f.store["b"].shape == (4, 8, 8)   # G (nb, m, B) vs (nb, B, B)


@pytest.mark.parametrize("pattern", ["unstructured", "4-block"])
def test_matrix_free_scores_and_updates_equal_the_dense_form(pattern):
    grads, free, exact = matrix_free_and_dense(6, (5, 16))        # B = 16 > m = 6
    assert isinstance(free, O.MatrixFree) and free.W.shape == (5, 6, 16)
    w = torch.randn(5, 16, generator=torch.Generator().manual_seed(4), dtype=f64)
    assert torch.allclose(O.obert_scores(w, free, pattern), O.obert_scores(w, exact, pattern), rtol=1e-9)
    pruned = torch.zeros(5, 16, dtype=torch.bool)
    pruned[:, 4:8] = True
    pruned[2, :4] = True
    a, b = w.clone(), w.clone()
    O.obert_update(a, free, pruned, pattern)
    O.obert_update(b, exact, pruned, pattern)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9) and (a[pruned] == 0).all()


def test_matrix_free_score_and_update_equal_brute_force_obs():
    """A whole row as one block, B = 12 > m = 5: OBS by a Lagrange solve on the exact Fisher."""
    grads, free, _ = matrix_free_and_dense(5, (1, 12), seed=7)
    F = 1e-2 * torch.eye(12, dtype=f64) + grads.T @ grads / 5
    w = torch.randn(1, 12, generator=torch.Generator().manual_seed(8), dtype=f64)
    scores = O.obert_scores(w, free).flatten()
    for j in (0, 4, 11):
        K = torch.zeros(13, 13, dtype=f64)
        K[:12, :12], K[:12, 12], K[12, :12] = F, torch.eye(12, dtype=f64)[j], torch.eye(12, dtype=f64)[j]
        rhs = torch.zeros(13, dtype=f64)
        rhs[12] = -w[0, j]
        dw = torch.linalg.solve(K, rhs)[:12]
        assert scores[j].item() == pytest.approx((0.5 * dw @ F @ dw).item(), rel=1e-8)
        got = w.clone()
        pruned = torch.zeros(1, 12, dtype=torch.bool)
        pruned[0, j] = True
        O.obert_update(got, free, pruned)
        want = w[0] + dw
        want[j] = 0.0
        assert torch.allclose(got[0], want, atol=1e-9)


def test_chunked_accumulation_is_sized_from_the_block_and_freed_before_inverting():
    f = O.EmpiricalFisher({"w": (10, 50)}, 50, 1024, 1e-7)
    assert f.buffer["w"].shape == (10, 12, 50)                  # B/4 gradients a chunk
    for _ in range(30):
        f.add({"w": torch.randn(10, 50)})
    f.inverses()
    assert not f.buffer


# -- the OBS scores and updates against brute force ----------------------------------------------

def random_grads(m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=f64)


def exact_block_fisher(grads, B, damp):
    """damp*I + (1/m) G^T G per diagonal block (zero-padded), formed explicitly."""
    m, d = grads.shape
    pad = (-d) % B
    G = torch.nn.functional.pad(grads, (0, pad)).view(m, -1, B)            # (m, nb, B)
    return damp * torch.eye(B, dtype=f64) + torch.einsum("mbi,mbj->bij", G, G) / m


@pytest.mark.parametrize("d, B", [(40, 8), (37, 10), (24, 24)])
def test_woodbury_equals_exact_inverse(d, B):
    grads = random_grads(16, d)
    want = torch.linalg.inv(exact_block_fisher(grads, B, 1e-2))
    got = O.fisher_inverse_blocks(grads, B, 1e-2)
    assert got.shape == (-(-d // B), B, B)
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-8)
    chol = O.fisher_inverse_blocks_cholesky(grads, B, 1e-2)
    assert torch.allclose(chol, want, rtol=1e-8, atol=1e-8)


def test_woodbury_streamed_one_gradient_at_a_time_equals_batch():
    grads = random_grads(8, 30)
    finv = O.init_fisher_inverse(30, 10, 1e-3, dtype=f64)
    for g in grads:
        O.add_gradient(finv, g, num_grads=8)
    assert torch.allclose(finv, O.fisher_inverse_blocks(grads, 10, 1e-3))


def test_unstructured_score_and_update_equal_brute_force_obs():
    """One block covering the whole weight, so F^-1 is the exact inverse of the full Fisher."""
    d = 12
    w = torch.randn(3, 4, dtype=f64)
    F = exact_block_fisher(random_grads(20, d), d, 1e-2)[0]
    Finv = torch.linalg.inv(F)
    finv = O.fisher_inverse_blocks(random_grads(20, d), d, 1e-2)
    scores = O.obert_scores(w, finv).flatten()
    wf = w.flatten()
    for j in range(d):
        # brute force: minimise 0.5 dw^T F dw subject to (w + dw)_j = 0, by Lagrange / a linear solve
        K = torch.zeros(d + 1, d + 1, dtype=f64)
        K[:d, :d], K[:d, d], K[d, :d] = F, torch.eye(d, dtype=f64)[j], torch.eye(d, dtype=f64)[j]
        rhs = torch.zeros(d + 1, dtype=f64); rhs[d] = -wf[j]
        dw = torch.linalg.solve(K, rhs)[:d]
        assert scores[j].item() == pytest.approx((0.5 * dw @ F @ dw).item(), rel=1e-7)
        upd = w.clone()
        pruned = torch.zeros(d, dtype=torch.bool); pruned[j] = True
        O.obert_update(upd, finv, pruned.view(3, 4))
        want = wf + dw
        want[j] = 0.0
        assert torch.allclose(upd.flatten(), want, atol=1e-8)
    assert torch.allclose(Finv, finv[0], rtol=1e-8)


def test_block4_score_and_update_equal_brute_force_group_obs():
    d = 16
    w = torch.randn(2, 8, dtype=f64)
    grads = random_grads(30, d, seed=3)
    F = exact_block_fisher(grads, d, 1e-2)[0]
    finv = O.fisher_inverse_blocks(grads, d, 1e-2)
    scores = O.obert_scores(w, finv, "4-block").flatten()
    wf = w.flatten()
    for q in range(d // 4):
        Q = list(range(4 * q, 4 * q + 4))
        # brute force: minimise 0.5 dw^T F dw subject to (w + dw)_Q = 0
        E = torch.eye(d, dtype=f64)[Q]                                      # (4, d)
        K = torch.zeros(d + 4, d + 4, dtype=f64)
        K[:d, :d], K[:d, d:], K[d:, :d] = F, E.T, E
        rhs = torch.zeros(d + 4, dtype=f64); rhs[d:] = -wf[Q]
        dw = torch.linalg.solve(K, rhs)[:d]
        assert torch.allclose(scores[Q], (0.5 * dw @ F @ dw).expand(4), rtol=1e-7)
        upd = w.clone()
        pruned = torch.zeros(d, dtype=torch.bool); pruned[Q] = True
        O.obert_update(upd, finv, pruned.view(2, 8), "4-block")
        want = wf + dw
        want[Q] = 0.0
        assert torch.allclose(upd.flatten(), want, atol=1e-8)


def test_quadratic_loss_increase_equals_predicted_score():
    """L(v) = 0.5 (v - w)^T F (v - w) is minimal at w; pruning j and applying the update costs score_j."""
    d = 10
    w = torch.randn(d, dtype=f64)
    grads = random_grads(25, d, seed=5)
    F = exact_block_fisher(grads, d, 1e-3)[0]
    finv = O.fisher_inverse_blocks(grads, d, 1e-3)
    loss = lambda v: 0.5 * (v - w) @ F @ (v - w)
    scores = O.obert_scores(w, finv)
    for j in range(d):
        v = w.clone()
        pruned = torch.zeros(d, dtype=torch.bool); pruned[j] = True
        O.obert_update(v, finv, pruned)
        assert v[j] == 0.0 and loss(v).item() == pytest.approx(scores[j].item(), rel=1e-7)
        # and it is optimal: any other change of the remaining weights costs more
        other = v + 1e-3 * torch.randn(d, dtype=f64) * (~pruned)
        assert loss(other) > loss(v)


def test_update_sums_over_several_pruned_weights_in_a_block():
    d, B = 20, 10
    w = torch.randn(d, dtype=f64)
    finv = O.fisher_inverse_blocks(random_grads(12, d), B, 1e-2)
    pruned = torch.zeros(d, dtype=torch.bool); pruned[[1, 4, 13]] = True
    got = w.clone(); O.obert_update(got, finv, pruned)
    want = w.clone()
    for j in (1, 4, 13):
        b, i = divmod(j, B)
        want[b * B:(b + 1) * B] -= w[j] / finv[b, i, i] * finv[b, :, i]
    want[pruned] = 0
    assert torch.allclose(got, want)


def test_obert_prune_reaches_target_globally_and_keeps_old_masks():
    torch.manual_seed(3)
    params = {"a": torch.randn(6, 8), "b": torch.randn(5, 8)}
    finvs = {n: O.fisher_inverse_blocks(torch.randn(32, w.numel()), 8, 1e-4) for n, w in params.items()}
    m1 = P.obert_prune(params, finvs, 0.5)
    assert sum(int((~k).sum()) for k in m1.values()) == round(0.5 * 88)
    assert all((params[n][~k] == 0).all() for n, k in m1.items())
    m2 = P.obert_prune(params, finvs, 0.75, masks=m1)
    assert all(not (m2[n] & ~m1[n]).any() for n in m1)
    assert sum(int((~k).sum()) for k in m2.values()) == 66


# -- sharded across ranks --------------------------------------------------------------------------

SHAPES = {"a": (6, 16), "b": (4, 16), "c": (8, 12), "d": (3, 8), "e": (10, 16)}


def problem(seed=0):
    """Weights, 6 gradients per tensor and 30% masks, the same in every process."""
    g = torch.Generator().manual_seed(seed)
    weights = {n: torch.randn(*s, generator=g, dtype=f64) for n, s in SHAPES.items()}
    masks = P.magnitude_masks(weights, 0.3)
    grads = {n: torch.randn(6, *s, generator=g, dtype=f64) * masks[n] for n, s in SHAPES.items()}
    for n in weights:
        weights[n].mul_(masks[n])
    return weights, grads, masks


def obert_step(block_size, pattern, owners=None, rank=0):
    weights, grads, masks = problem()
    fisher = O.EmpiricalFisher(SHAPES, block_size, 6, 1e-3, owners, dtype=f64)
    first = sum(fisher.shares[:rank])
    for i in range(fisher.rounds):
        fisher.add({n: grads[n][first + i] for n in SHAPES} if i < fisher.shares[fisher.rank] else None)
    keep = P.prune_step(weights, P.METHODS["obert"], 0.6, "global", pattern, masks, fisher.inverses(), owners)
    return keep, weights, {n: type(f).__name__ for n, f in fisher.store.items()}


def sharded_worker(rank, world, init, out, block_size, pattern):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    owners = P.shard_by_size({n: s[0] * s[1] for n, s in SHAPES.items()}, world)
    keep, weights, forms = obert_step(block_size, pattern, owners, rank)
    torch.save({"keep": keep, "weights": weights, "forms": forms}, f"{out}.{rank}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("block_size, pattern", [(8, "unstructured"), ("row", "unstructured"), (8, "4-block")])
def test_sharded_pruning_step_equals_one_process(tmp_path, block_size, pattern):
    want_keep, want_weights, _ = obert_step(block_size, pattern)
    mp.start_processes(sharded_worker, args=(2, tmp_path / "init", tmp_path / "out", block_size, pattern),
                       nprocs=2, start_method="spawn")
    ranks = [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=False) for r in range(2)]
    owners = P.shard_by_size({n: s[0] * s[1] for n, s in SHAPES.items()}, 2)
    assert set(owners.values()) == {0, 1}
    for r, got in enumerate(ranks):
        assert set(got["forms"]) == {n for n in SHAPES if owners[n] == r}     # blocks only for its own tensors
        for n in SHAPES:
            assert torch.equal(got["keep"][n], want_keep[n]), (r, n)
            assert torch.allclose(got["weights"][n], want_weights[n], rtol=1e-10, atol=1e-12), (r, n)
    if block_size == "row":
        assert "MatrixFree" in ranks[0]["forms"].values()                      # rows of 16 > 6 gradients


def test_shard_by_size_balances_and_is_deterministic():
    sizes = {"q": 100, "k": 100, "v": 100, "o": 100, "i": 400, "out": 400}
    owners = P.shard_by_size(sizes, 2)
    loads = [sum(s for n, s in sizes.items() if owners[n] == r) for r in range(2)]
    assert loads == [600, 600] and owners == P.shard_by_size(sizes, 2)


# -- train.py's sampling ----------------------------------------------------------------------------

def test_train_samples_fisher_gradients_in_eval_mode_masked_with_their_batch_size(tiny_bert_with_vocab):
    import argparse
    import data
    import runtime
    import train
    task = data.TASKS["csqa"]
    model = runtime.load_model(tiny_bert_with_vocab, task, 0, "cpu")
    tok = data.load_tokenizer(tiny_bert_with_vocab)
    from pathlib import Path
    feats = data.encode(task, data.load_split(task, "train", Path(__file__).parent / "fixtures"), tok, 64)
    d = runtime.Data(task, feats, None, [], [], data.pad_id(tok), 64)
    names = P.prunable_names(model)
    params = dict(model.named_parameters())
    masks = P.magnitude_masks({n: params[n] for n in names}, 0.5)
    seen = []
    model.register_forward_pre_hook(lambda mod, inputs: seen.append((mod.training, inputs[0].shape[0])))
    args = argparse.Namespace(block_size=8, num_grads=3, damp=1e-3, fisher_batch_size=2, seed=0, batch_size=1,
                              calibration_size=None)
    finvs = train.gather_statistic(P.METHODS["obert"], model, names, masks, d, args, runtime.Runtime(torch.device("cpu")),
                                   None, 0)
    assert seen == [(False, 2), (False, 1), (False, 2)] and model.training   # dropout off, batches of 2 (of 3
                                                                               # examples), train mode restored
    for n in names:                                                      # pruned weights saw zero gradients:
        dead = O.as_blocks((~masks[n]).flatten(), 8)                     # their diagonal is exactly 1 / damp
        assert torch.allclose(O.inverse_diag(finvs[n])[dead], torch.tensor(1e3), rtol=1e-5)
