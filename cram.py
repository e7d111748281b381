"""
CrAM: compression-aware training, so that a dense model can later be pruned in one shot.

Peste, Vladu, Kurtic, Lampert & Alistarh, "CrAM: A Compression-Aware Minimizer" (ICLR 2023),
section 3, the "CrAM+ multi" variant. Plain fine-tuning finds weights w with a low loss L(w);
pruned in one shot to a sparsity s, C_s(w) (keep the largest |w|, zero the rest) can have a
far higher loss. CrAM makes the optimizer look at the loss of the compressed neighbour too:

    g = ∇L(w)                                  the gradient at the weights
    w̃ = w + ρ g                                a step *up* the loss, as in SAM (not normalised:
                                               CrAM's choice)
    M = TopK_s(|w̃|)                            global magnitude masks of the encoder at w̃, with s
                                               drawn every step from a set (multi: 50, 70, 90%)
    h = ∇L(M ⊙ w̃) ⊙ M                          the gradient at the compressed point, kept weights only
    w ← w − η · AdamW(g + h)                   one optimizer step with the sum, from w itself

The "+" is g in the sum: the dense loss keeps being minimised, so the dense model stays as
accurate as a plainly fine-tuned one. ρ sets how far the lookahead goes. It multiplies the raw
gradient, so its scale is the task's: the paper's 0.05 is for SGD on ImageNet; for AdamW
fine-tuning MiniLM on SST-2, 0.01 kept the dense accuracy and gave the best one-shot accuracy
on held-out training sentences of {0.01, 0.1, 1, 10}, and larger ρ made one-shot pruning worse
(commit 279b8c9's README). The same choice is in the authors' TopkCrAM code: global top-k,
sparse intermediate gradient, no gradient normalisation.

Worked numbers, one weight vector w = (3, -1, 0.2) with ∇L(w) = (0.5, 2, -1), ρ = 0.1, s = 1/3:
    w̃ = (3.05, -0.8, 0.1);  M keeps the two largest |w̃|: (1, 1, 0);  M ⊙ w̃ = (3.05, -0.8, 0)
    the step uses g + h = (0.5, 2, -1) + ∇L((3.05, -0.8, 0)) ⊙ (1, 1, 0)

Cost: two forward and backward passes and one global top-k per step. On MiniLM on 2 CPU cores
that was 2.8-3.3 times AdamW's fine-tuning (307-325 s vs 98-109 s for the same 376 steps;
evidence/results/v1/cram-s*.json against teacher-s*.json).

How it connects: train.py's `fit` calls `cram_gradients` in place of its plain forward and
backward for dense runs with --optimizer cram (then masked_step as always); the masks come from
prune.py's `magnitude_masks`, so CrAM trains for exactly the pruning that --oneshot (or GMP)
applies afterwards. This file does not import train.py: the loss is passed in as a closure.
"""
from typing import Callable

import torch

import prune

RHO = 0.01                      # ρ: see above; the --cram-rho default (cli.py)
SPARSITIES = (0.5, 0.7, 0.9)    # CrAM+ multi's set of s; the --cram-sparsities default (cli.py)


def cram_gradients(model, forward_backward: Callable[[], tuple], rho: float, sparsities) -> tuple:
    """Leave g + h (above) in the .grad of `model`'s parameters, w unchanged; returns what the first
    forward_backward() returned (its loss and real tokens).

    forward_backward(): the loss of the current batch, backpropagated into .grad (the same batch
    both times; with a teacher, the same distillation loss). s is drawn from the seeded torch RNG,
    so a resumed run draws the same ones."""
    params = dict(model.named_parameters())
    loss, tokens = forward_backward()                                                  # g, in .grad
    g = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    w = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n in g:
            params[n].add_(g[n], alpha=rho)                                            # w̃ = w + ρ g
    encoder = prune.prunable_names(model)
    s = sparsities[int(torch.randint(len(sparsities), ()))]                            # multi: one s per step
    M = prune.magnitude_masks({n: params[n] for n in encoder}, s)                      # TopK_s(|w̃|)
    prune.apply_masks(params, M)                                                       # M ⊙ w̃
    model.zero_grad(set_to_none=True)
    forward_backward()                                                                 # ∇L(M ⊙ w̃)
    prune.mask_gradients(params, M)                                                    # h
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(w[n])                                                              # w restored
            if n in g:
                p.grad.add_(g[n])                                                      # g + h
    return loss, tokens
