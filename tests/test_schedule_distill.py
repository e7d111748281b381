"""schedule.py against its closed forms and the recipe's numbers; distill.py against hand formulas."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from schedule import Schedule
from distill import kd_loss, combine

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("target, want", [
    (0.9, [0.7, 0.7843, 0.8407, 0.875, 0.8926, 0.8991, 0.9]),
    (0.8, [0.7, 0.7421, 0.7704, 0.7875, 0.7963, 0.7995, 0.8]),
])
def test_recipe_sparsities(target, want):
    s = Schedule(30000, target)
    assert s.pruning_steps() == [2000, 6000, 10000, 14000, 18000, 22000, 26000]
    assert [round(s.sparsity_at(p), 4) for p in s.pruning_steps()] == want


def test_closed_form_between_and_around_pruning_steps():
    s = Schedule(30000, 0.9)
    assert s.sparsity_at(0) == s.sparsity_at(1999) == 0.0          # dense phase
    assert s.sparsity_at(5999) == 0.7                                # held until the next pruning step
    t = 10000                                                        # (1 - 8000/24000)^3 = 8/27
    assert s.sparsity_at(t) == pytest.approx(0.9 + (0.7 - 0.9) * (2 / 3) ** 3, abs=1e-12)
    assert all(s.sparsity_at(t) == 0.9 for t in range(26000, 30000))   # exactly the target, held


@pytest.mark.parametrize("steps", [7, 30, 101, 997, 12345])
@pytest.mark.parametrize("kind", ["accelerated", "cubic"])
def test_any_length_ends_exactly_at_target(steps, kind):
    s = Schedule(steps, 0.8, kind=kind)
    p = s.pruning_steps()
    assert p == sorted(set(p)) and p[-1] == s.t_end and 1 <= len(p) <= 7
    assert s.sparsity_at(steps - 1) == 0.8
    seq = [s.sparsity_at(t) for t in range(steps)]
    assert all(a <= b for a, b in zip(seq, seq[1:]))                # never decreases


def test_naive_cubic_starts_from_zero_and_init_never_above_target():
    s = Schedule(30000, 0.9, kind="cubic")
    assert s.sparsity_at(2000) == 0.0 and s.sparsity_at(6000) == pytest.approx(0.9 * (1 - (5 / 6) ** 3))
    assert Schedule(30000, 0.5).sparsity_at(2000) == 0.5           # s_i = min(0.7, target)


def test_lr_rewarms_at_pruning_steps_and_hits_min_at_cycle_ends():
    s = Schedule(3000, 0.9, lr_max=8e-5, lr_min=8e-6)
    p = s.pruning_steps()
    assert s.lr_at(0) == 8e-5
    for a, b in s.cycles():
        assert s.lr_at(a) == pytest.approx(8e-5) and s.lr_at(b - 1) == pytest.approx(8e-6)
        mid = (a + b - 1) / 2
        if mid == int(mid):
            assert s.lr_at(int(mid)) == pytest.approx((8e-5 + 8e-6) / 2)
    assert [a for a, _ in s.cycles()][1:] == p
    assert s.lr_at(2999) == pytest.approx(8e-6)


def test_dense_schedule_is_warmup_then_linear_decay():
    s = Schedule(100, 0.0, lr_max=1e-4, lr_min=0.0, warmup_steps=10)
    assert s.pruning_steps() == [] and s.sparsity_at(99) == 0.0
    assert [s.lr_at(t) for t in range(10)] == pytest.approx([1e-4 * (t + 1) / 10 for t in range(10)])
    assert s.lr_at(10) == pytest.approx(1e-4) and s.lr_at(99) == pytest.approx(0.0)
    assert s.lr_at(54) == pytest.approx(1e-4 * (1 - 44 / 89))


def test_bad_target_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Schedule(100, 1.0)


def test_cli_prints_events():
    out = subprocess.run([sys.executable, str(ROOT / "schedule.py"), "--sparsity", "0.9", "--steps", "300"],
                         capture_output=True, text=True, check=True).stdout
    assert "   260    0.9000" in out and "learning rate" in out
    bad = subprocess.run([sys.executable, str(ROOT / "schedule.py"), "--sparsity", "1.5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "[0, 1)" in bad.stderr


# -- distillation -------------------------------------------------------------------------------

def explicit_kd(s, t, T):
    p_t = torch.softmax(t / T, -1)
    return T * T * (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean()


def test_kd_equals_hand_formula_and_kl_div():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g, dtype=torch.float64), 3 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    for T in (1.0, 2.0, 5.5):
        ref = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True) * T * T
        assert kd_loss(s, t, T).item() == pytest.approx(ref.item(), rel=1e-6)
        assert kd_loss(s, t, T).item() == pytest.approx(explicit_kd(s.double(), t.double(), T).item(), rel=1e-6)


def test_kd_is_zero_for_equal_logits_and_averages_over_choices():
    z = torch.randn(3, 5, 4)
    assert kd_loss(z, z.clone(), 5.5).abs().item() < 1e-6
    s = torch.randn(3, 5, 4)
    assert kd_loss(s, z, 2.0).item() == pytest.approx(kd_loss(s.view(15, 4), z.view(15, 4), 2.0).item(), rel=1e-6)


def test_kd_gradient_matches_autograd_of_explicit_formula():
    s = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 3, dtype=torch.float64)
    g1, = torch.autograd.grad(kd_loss(s, t, 5.5), s)
    g2, = torch.autograd.grad(explicit_kd(s, t, 5.5), s)
    assert torch.allclose(g1.double(), g2, atol=1e-6)


def test_span_kd_averages_start_end_and_excludes_padding():
    s = (torch.randn(2, 6, requires_grad=True), torch.randn(2, 6))
    t = (torch.randn(2, 6), torch.randn(2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    got = kd_loss(s, t, 2.0, mask)
    # the same as computing on the real positions only, row by row
    rows = [(explicit_kd(a[i, mask[i]][None], b[i, mask[i]][None], 2.0)) for a, b in zip(s, t) for i in range(2)]
    want = (rows[0] + rows[1]) / 2 / 2 + (rows[2] + rows[3]) / 2 / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    assert torch.isfinite(s[0].grad).all() and (s[0].grad[0, 4:] == 0).all()


def test_combine_hardness():
    task, kd = torch.tensor(1.2345), torch.tensor(0.5)
    assert combine(task, kd, 0.0) is task
    assert combine(task, kd, 1.0) is kd
    assert combine(task, kd, 0.25).item() == pytest.approx(0.75 * 1.2345 + 0.25 * 0.5)
    assert combine(task, None, 0.5) is task
