"""prune.py against exact references: torch.nn.utils.prune, kthvalue, AdamW with masks, parameter counts."""
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune

import prune as P
import model as M
from conftest import save_tiny

torch.manual_seed(0)
f64 = torch.float64


def test_global_magnitude_equals_torch_prune_global_unstructured():
    torch.manual_seed(1)
    layers = [nn.Linear(13, 7), nn.Linear(7, 29), nn.Linear(29, 5)]
    params = {f"l{i}.weight": l.weight.detach().clone() for i, l in enumerate(layers)}
    masks = P.magnitude_masks(params, 0.63)
    torch_prune.global_unstructured([(l, "weight") for l in layers],
                                             pruning_method=torch_prune.L1Unstructured, amount=0.63)
    for i, l in enumerate(layers):
        assert torch.equal(masks[f"l{i}.weight"], l.weight_mask.bool())


def test_layer_magnitude_equals_torch_prune_l1_per_layer():
    torch.manual_seed(2)
    layers = [nn.Linear(13, 7), nn.Linear(7, 29)]
    params = {f"l{i}.weight": l.weight.detach().clone() for i, l in enumerate(layers)}
    masks = P.magnitude_masks(params, 0.4, scope="layer")
    for i, l in enumerate(layers):
        torch_prune.l1_unstructured(l, "weight", amount=0.4)
        assert torch.equal(masks[f"l{i}.weight"], l.weight_mask.bool())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.9, 0.99])
def test_exact_count_with_ties_and_deterministic(sparsity):
    params = {"a": torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.2, 0.5]]), "b": torch.full((4, 5), 0.5),
              "c": torch.randint(0, 3, (3, 7)).float()}
    n = sum(p.numel() for p in params.values())
    m1 = P.magnitude_masks(params, sparsity)
    m2 = P.magnitude_masks(params, sparsity)
    assert sum(int((~m).sum()) for m in m1.values()) == round(sparsity * n)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    # never keeps a smaller magnitude while pruning a larger one
    kept = torch.cat([p[m].abs() for p, m in zip(params.values(), m1.values())])
    cut = torch.cat([p[~m].abs() for p, m in zip(params.values(), m1.values())])
    if len(kept) and len(cut):
        assert cut.max() <= kept.min()


@pytest.mark.parametrize("seed", range(3))
def test_kth_smallest_matches_kthvalue_on_many_values(seed):
    g = torch.Generator().manual_seed(seed)
    x = [torch.rand(1000, generator=g) * 10 ** torch.randint(-6, 6, (1000,), generator=g).float(),
         torch.rand(300_000, generator=g), torch.zeros(500), torch.full((70,), float("-inf"))]
    allx = torch.cat(x)
    for k in (1, 69, 70, 71, 17_000, 150_000, 301_570):
        assert P.kth_smallest(x, k) == torch.kthvalue(allx, k).values.item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
@pytest.mark.parametrize("scope, pattern, sparsity", [("global", "unstructured", 0.8), ("layer", "unstructured", 0.9),
                                                      ("global", "2:4", 0.5), ("global", "4-block", 0.8)])
def test_masks_on_cuda_equal_masks_on_cpu(scope, pattern, sparsity):
    """The selection on CUDA tensors (a student trained on a GPU) is the CPU's, mask for mask; a CPU
    tensor made inside it once broke every GPU run at its first pruning step."""
    g = torch.Generator().manual_seed(0)
    params = {f"w{i}": torch.randn(64, 96, generator=g) for i in range(3)}
    cpu = P.magnitude_masks(params, sparsity, scope, pattern)
    on_cuda = {n: p.cuda() for n, p in params.items()}
    gpu = P.magnitude_masks(on_cuda, sparsity, scope, pattern)
    again = P.magnitude_masks(on_cuda, min(sparsity + 0.05, 0.95) if pattern == "unstructured" else sparsity,
                              scope, pattern, masks=gpu)           # a later step, from the earlier masks
    assert all(gpu[n].is_cuda and torch.equal(cpu[n], gpu[n].cpu()) for n in params)
    assert all(not (again[n] & ~gpu[n]).any() for n in params)


def test_pruned_weights_never_revive_and_masks_grow():
    params = {"w": torch.randn(8, 8)}
    m1 = P.magnitude_masks(params, 0.5)
    w = params["w"].clone(); w[~m1["w"]] = 100.0          # try to revive with huge values
    m2 = P.magnitude_masks({"w": w}, 0.6, masks=m1)
    assert not (m2["w"] & ~m1["w"]).any() and int((~m2["w"]).sum()) == round(0.6 * 64)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_keeps_exactly_n_per_group(n, m):
    params = {"w": torch.randn(6, 16)}
    keep = P.magnitude_masks(params, 1 - n / m, pattern=f"{n}:{m}")["w"]
    assert (keep.view(-1, m).sum(1) == n).all()
    # the kept ones are the n largest of each group
    g = params["w"].abs().view(-1, m)
    assert (g[keep.view(-1, m)].view(-1, n).min(1).values >= g[~keep.view(-1, m)].view(-1, m - n).max(1).values).all()
    with pytest.raises(ValueError, match="exactly"):
        P.check_pattern(f"{n}:{m}", 0.8)


def test_4block_masks_prune_whole_groups_with_exact_count():
    params = {"a": torch.randn(4, 16), "b": torch.randn(8, 8)}
    keep = P.magnitude_masks(params, 0.5, pattern="4-block")
    for k in keep.values():
        s = k.view(-1, 4).sum(1)
        assert ((s == 0) | (s == 4)).all()
    assert sum(int((~k).sum()) for k in keep.values()) == 64


def test_twenty_adamw_steps_with_weight_decay_leave_pruned_weights_at_zero():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    params = dict(net.named_parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):  # dense steps first, so the moments are non-zero everywhere
        net(torch.randn(8, 10)).pow(2).mean().backward(); opt.step(); opt.zero_grad()
    weights = {"0.weight": params["0.weight"], "2.weight": params["2.weight"]}
    masks = P.magnitude_masks(weights, 0.7)
    P.apply_masks(params, masks); P.zero_optimizer_state(opt, params, masks)
    for _ in range(20):
        net(torch.randn(8, 10)).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step(); opt.zero_grad()
        P.apply_masks(params, masks); P.zero_optimizer_state(opt, params, masks)
        for n, k in masks.items():
            assert (params[n][~k] == 0.0).all()
            assert (opt.state[params[n]]["exp_avg"][~k] == 0).all()


def test_train_py_scheme_keeps_weights_and_moments_exactly_zero():
    """What train.py does: moments zeroed once at pruning, then gradients masked before every AdamW
    step and weights re-masked after it. Moments must stay exactly 0 without being re-zeroed."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    params = dict(net.named_parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        net(torch.randn(8, 10)).pow(2).mean().backward(); opt.step(); opt.zero_grad()
    masks = P.magnitude_masks({"0.weight": params["0.weight"], "2.weight": params["2.weight"]}, 0.6)
    P.apply_masks(params, masks); P.zero_optimizer_state(opt, params, masks)
    for _ in range(20):
        net(torch.randn(8, 10)).pow(2).mean().backward()
        P.mask_gradients(params, masks)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        before = {n: params[n].detach().clone() for n in masks}
        opt.step(); opt.zero_grad()
        for n, k in masks.items():   # even before re-masking, nothing moved
            assert (params[n][~k] == 0.0).all() and torch.equal(params[n][~k], before[n][~k])
            assert (opt.state[params[n]]["exp_avg"][~k] == 0).all() and (opt.state[params[n]]["exp_avg_sq"][~k] == 0).all()
        P.apply_masks(params, masks)
        assert all((params[n][k] != before[n][k]).any() for n, k in masks.items())   # the kept ones train


def test_masks_survive_save_and_load(tmp_path):
    masks = P.magnitude_masks({"x.weight": torch.randn(7, 9), "y.weight": torch.randn(3, 4)}, 0.6)
    P.save_masks(masks, tmp_path / "masks.safetensors")
    back = P.load_masks(tmp_path / "masks.safetensors")
    assert back.keys() == masks.keys() and all(torch.equal(back[k], masks[k]) and back[k].dtype == torch.bool for k in masks)


def test_prunable_names_and_report(tmp_path, capsys):
    save_tiny(tmp_path, "bert")
    model = M.from_pretrained(tmp_path, head="classification", num_labels=2)
    names = P.prunable_names(model)
    assert len(names) == 2 * 6 and all(n.startswith("layers.") and n.endswith(".weight") for n in names)
    assert set(n.split(".")[2] for n in names) == set(M.ENCODER_LINEARS)
    assert "embeddings.word.weight" in P.prunable_names(model, embeddings=True)
    assert "classifier.weight" in P.prunable_names(model, head=True)
    params = dict(model.named_parameters())
    masks = P.magnitude_masks({n: params[n] for n in names}, 0.8)
    P.apply_masks(params, masks)
    by = P.sparsity_by_component(model)
    assert by["encoder"] == pytest.approx(0.8, abs=1e-3) and by["head"] < 0.01 and by["embeddings"] < 0.02
    text = P.sparsity_report(model, masks)
    assert "layers.0.query.weight" in text and "total encoder" in text


def test_cost_table_matches_transformers_parameter_count():
    import transformers
    cfg = transformers.BertConfig(**{k: v for k, v in P.BUILTIN["bert-base-uncased"].items()})
    want = sum(p.numel() for p in transformers.BertForSequenceClassification(cfg).parameters())
    assert sum(r[1] for r in P.cost_table(P.BUILTIN["bert-base-uncased"])) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_small_increment_over_pruned_weights_sorts_only_a_small_band(monkeypatch, dtype):
    """The last pruning steps add < 1% to many -inf (already pruned) scores: the bracket must still
    hold (no sort of everything), and the count must be exact in the scores' own dtype."""
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(300, 400, generator=g, dtype=dtype) for _ in range(3)]
    for s in scores:
        s[s < 0.8] = float("-inf")                       # 80% pruned already
    n = sum(s.numel() for s in scores)
    forced = sum(int(torch.isneginf(s).sum()) for s in scores)
    count = forced + round(0.004 * n)                    # prune 0.4% more
    bands = []
    kthvalue = torch.kthvalue
    monkeypatch.setattr(torch, "kthvalue", lambda t, k: bands.append(t.numel()) or kthvalue(t, k))
    pruned = P.select_lowest(scores, count)
    assert sum(int(p.sum()) for p in pruned) == count
    assert bands and max(bands) < 0.05 * n
    finite = torch.cat([s[torch.isfinite(s)] for s in scores])
    v = finite.sort().values[count - forced - 1]
    assert all(((s <= v) == p).all() for s, p in zip(scores, pruned))   # exactly the lowest, no tie here
