"""
The labs' exercises: each asks the student for one function of the recipe, checks it against the
project's own on random inputs, and names the file and function that hold the solution.

In a lab:

    def my_kd_loss(student_logits, teacher_logits, T):
        raise NotImplementedError          # the student's code goes here

    kd_loss = exercise("4.1", my_kd_loss)  # prints pass (or fail, or not written yet) and the largest
                                           # difference; returns the function the lab goes on with:
                                           # the student's if it passed, else the project's

Until the student writes it, the lab runs on the project's function, so every lab runs end to end.
tests/test_labs.py checks every exercise both ways: the project's function passes, a plausible
wrong answer (the usual mistake) fails.
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch                                    # noqa: E402

import criteria                                 # noqa: E402
import distill                                  # noqa: E402
import obert                                    # noqa: E402
import prune                                    # noqa: E402
import sparse_inference                         # noqa: E402
from schedule import Schedule                   # noqa: E402


def call(fn, *case):
    return fn(*case)


@dataclass(frozen=True)
class Exercise:
    title: str
    where: str                      # the solution: file and function
    solution: Callable              # the project's function, in the exercise's signature: the lab's fallback
    cases: Callable                 # () -> [case, ...]: the random inputs both are run on
    difference: Callable            # (mine, solution's) results -> the largest difference, a float
    tolerance: float = 1e-5
    run: Callable = call            # (function, *case) -> its result on one case


def largest(a, b) -> float:
    """The largest absolute difference of two tensors, or of two dicts / lists / tuples of them
    (bool masks: the count of entries that differ); inf if their shapes or keys differ."""
    if isinstance(a, dict):
        return max((largest(a[k], b[k]) for k in b), default=0.0) if a.keys() == b.keys() else math.inf
    if isinstance(a, (list, tuple)):
        return max((largest(x, y) for x, y in zip(a, b)), default=0.0) if len(a) == len(b) else math.inf
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        return math.inf
    if b.dtype == torch.bool:
        return float((a.bool() != b).sum())
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def generator(seed):
    return torch.Generator().manual_seed(seed)


# -----------------------------------------------------------------------------
# The exercises' inputs, and the solutions in the exercises' signatures.

def weight_dicts():
    """Weight matrices of a few shapes, with ties (repeated values) and exact zeros, at several sparsities."""
    out = []
    for seed, s in ((0, 0.5), (1, 0.8), (2, 0.93), (3, 0.3)):
        g = generator(seed)
        w = {"a": torch.randn(7, 13, generator=g), "b": torch.randn(5, 9, generator=g) * 3,
             "c": torch.randint(-2, 3, (6, 6), generator=g).float()}
        out.append((w, s))
    return out


def obs_blocks():
    """(weight (d,), F⁻¹ blocks (nb, B, B), newly pruned (d,) bool): F⁻¹ of a random positive definite F."""
    out = []
    for seed, nb, B in ((0, 3, 4), (1, 2, 8), (2, 5, 2)):
        g = generator(seed)
        G = torch.randn(nb, 3 * B, B, generator=g, dtype=torch.float64)
        F = G.transpose(1, 2) @ G / (3 * B) + 0.1 * torch.eye(B, dtype=torch.float64)
        w = torch.randn(nb * B, generator=g, dtype=torch.float64)
        out.append((w, torch.linalg.inv(F), torch.rand(nb * B, generator=g) < 0.4))
    return out


def obs_update(weight, finv, pruned):
    """obert.obert_update, returning the new weight instead of moving it in place."""
    w = weight.clone()
    obert.obert_update(w, finv, pruned)
    return w


def schedules():
    return [(Schedule(total, target, s_i, kind), step) for total, target, s_i, kind in
            ((300, 0.9, 0.7, "accelerated"), (752, 0.8, 0.3, "accelerated"), (100, 0.5, 0.7, "accelerated"),
             (90, 0.8, 0.0, "cubic")) for step in range(total)]


def masked_adamw_cases():
    """(params, masks, grads, lr): a step of AdamW (its moments already non-zero) on partly pruned weights."""
    out = []
    for seed in range(3):
        g = generator(seed)
        params = {"a": torch.randn(6, 5, generator=g), "b": torch.randn(4, generator=g)}
        masks = {"a": torch.rand(6, 5, generator=g) > 0.5}
        grads = [{n: torch.randn(p.shape, generator=g) for n, p in params.items()} for _ in range(3)]
        out.append((params, masks, grads, 1e-2 * (seed + 1)))
    return out


def run_masked_adamw(step, params, masks, grads, lr):
    """AdamW on copies of params: one plain step (its moments then hold something everywhere, as a
    model's do when it is pruned), the masks applied to the weights, then three steps through
    `step(opt, params, masks, lr)`, the gradients set before each; returns the weights and AdamW's
    moments after them, the moments where weights are kept only (zeroing them where pruned, as
    prune.zero_optimizer_state does at a pruning step, is as right as leaving them: they no longer
    move a weight that is masked again after every step)."""
    params = {n: torch.nn.Parameter(p.clone()) for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.01)
    for n, p in params.items():
        p.grad = grads[0][n].clone()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    for g in grads:
        for n, p in params.items():
            p.grad = g[n].clone()
        step(opt, params, masks, lr)
    moments = {f"{n}.{k}": opt.state[p][k] * masks.get(n, True) for n, p in params.items()
               for k in ("exp_avg", "exp_avg_sq")}
    return {**{n: p.detach() for n, p in params.items()}, **moments}


def masked_step(opt, params, masks, lr):
    """The project's masked step (train.py's masked_step, from prune.py's pieces): the gradients of
    pruned weights zeroed, AdamW at lr, the masks applied again."""
    prune.mask_gradients(params, masks)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    prune.apply_masks(params, masks)


def logit_pairs():
    out = []
    for seed, T in ((0, 1.0), (1, 2.0), (2, 5.5)):
        g = generator(seed)
        out.append((torch.randn(8, 5, generator=g), 4 * torch.randn(8, 5, generator=g), T))
    return out


def wanda_cases():
    out = []
    for seed in range(3):
        g = generator(seed)
        out.append((torch.randn(6, 10, generator=g), torch.randn(40, 10, generator=g) * torch.rand(10, generator=g)))
    return out


def wanda_score(W, X):
    """|W_ij| · ||X_j||_2 by criteria.wanda_scores, X holding one token per row."""
    return criteria.wanda_scores({"w": W}, "unstructured", {"w": X.pow(2).sum(0).sqrt()})["w"]


def movement_cases():
    """(S = 0, a history of four (weight, gradient) pairs)."""
    out = []
    for seed in range(3):
        g = generator(seed)
        out.append((torch.zeros(5, 7), [(torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g))
                                        for _ in range(4)]))
    return out


def movement_after(step, S, history):
    """S after `step(S, w, g)` for each (weight, gradient) of a training history."""
    S = S.clone()
    for w, g in history:
        S = step(S, w, g)
    return S


def movement_step(S, w, g):
    """criteria.accumulate_movement on one tensor: S - w ⊙ g."""
    w = torch.nn.Parameter(w.clone())
    w.grad = g
    running = {"w": S.clone()}
    criteria.accumulate_movement(running, {"w": w})
    return running["w"]


def profiles():
    out = []
    for seed in range(4):
        g = generator(seed)
        dense = (torch.rand(36, generator=g) * 5).tolist()
        fast = [d / (1 + 4 * float(torch.rand(1, generator=g))) for d in dense]
        out.append((sum(dense) * (1.1 + seed / 3), dense, fast))
    return out


EXERCISES = {
    "1.1": Exercise("global magnitude masks, exactly round(s * n) pruned over all matrices together",
                    "prune.py: magnitude_masks", prune.magnitude_masks, weight_dicts, largest, 0),
    "2.1": Exercise("the OBS score of each weight, w_j^2 / (2 [F^-1]_jj), block by block",
                    "obert.py: obert_scores", lambda w, finv: obert.obert_scores(w, finv), obs_blocks, largest, 1e-9,
                    run=lambda fn, w, finv, pruned: fn(w, finv)),
    "2.2": Exercise("the OBS update of the weights kept, -F^-1 e_j w_j / [F^-1]_jj for each weight pruned",
                    "obert.py: obert_update", obs_update, obs_blocks, largest, 1e-9),
    "3.1": Exercise("the sparsity in force at a step: the cubic from s_i at the scheduled pruning steps",
                    "schedule.py: Schedule.sparsity_at", lambda sched, step: sched.sparsity_at(step), schedules,
                    lambda a, b: abs(a - b), 1e-12),
    "3.2": Exercise("the masked AdamW step: no gradient, no moment and no weight where the mask prunes",
                    "prune.py: mask_gradients and apply_masks, around AdamW's step (train.py's masked_step)",
                    masked_step, masked_adamw_cases, largest, 1e-7, run=run_masked_adamw),
    "4.1": Exercise("the KD loss, T^2 KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch",
                    "distill.py: kd_loss", distill.kd_loss, logit_pairs, largest, 1e-5),
    "5.1": Exercise("Wanda's score, |W_ij| * ||X_j||_2 over the tokens", "criteria.py: wanda_scores", wanda_score,
                    wanda_cases, largest, 1e-5),
    "5.2": Exercise("movement's running score, S - w * g after each step", "criteria.py: accumulate_movement",
                    movement_step, movement_cases, largest, 1e-6, run=movement_after),
    "6.1": Exercise("the forward's predicted speed-up when each Linear's time falls from dense to sparse",
                    "sparse_inference.py: predicted_speedup", sparse_inference.predicted_speedup, profiles, lambda a, b: abs(a - b), 1e-9),
}


def check(key: str, mine: Callable) -> tuple[bool | None, float, str]:
    """(passed, the largest difference, why): passed is None when the student has not written it yet."""
    ex = EXERCISES[key]
    worst = 0.0
    try:
        for case in ex.cases():
            worst = max(worst, ex.difference(ex.run(mine, *case), ex.run(ex.solution, *case)))
    except NotImplementedError:
        return None, math.nan, "not written yet"
    except Exception as e:                         # a crash is a fail, said in one line
        return False, math.inf, f"{type(e).__name__}: {e}"
    return worst <= ex.tolerance, worst, ""


def exercise(key: str, mine: Callable) -> Callable:
    """Check the student's function, say how it went, and return the function the lab goes on with:
    the student's if it passed, else the project's."""
    ex = EXERCISES[key]
    passed, worst, why = check(key, mine)
    if passed:
        print(f"exercise {key} ({ex.title}): pass, largest difference {worst:.2g}")
        return mine
    verdict = "not written yet" if passed is None else f"fail, {why or f'largest difference {worst:.3g}'}"
    print(f"exercise {key} ({ex.title}): {verdict}; the lab goes on with the solution, {ex.where}")
    return ex.solution
