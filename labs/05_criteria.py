# %% [markdown]
# # Lab 5 · Four criteria side by side: magnitude, movement, Wanda, oBERT
#
# **What it teaches.** A pruning criterion is a score per weight, low first out; the ladder of
# saliency has four rungs, each reading something more than the last:
#
# | rung | criterion | score of w_ij | reads |
# |---|---|---|---|
# | zeroth order | magnitude (GMP; Zhu & Gupta 2017) | \|w_ij\| | the weights |
# | first order | movement (Sanh, Wolf & Rush 2020) | −Σ_t w_ij(t) g_ij(t) | the gradients while training |
# | activation-aware | Wanda (Sun, Liu, Bair & Kolter 2023) | \|w_ij\| · ‖X_j‖₂ | the inputs on 128 sentences |
# | second order | oBERT (Kurtic et al. 2022) | w_j² / (2 [F⁻¹]_jj), and an update | a Fisher of many gradients |
#
# In this project each is one function of one signature, `score(weights, pattern, stats)`, and one
# entry in `prune.METHODS` that names the statistic it reads; `prune.STATISTICS` says who gathers it.
# Here all four prune the same fine-tuned teacher in one shot, and we compare what they keep.
#
# **Time:** about 2.3 minutes on 2 CPU cores (the teacher cached by lab 1; 2.6 GB of memory for the Fisher). **Needs:** the weights and
# SST-2 (see `labs/common.py`); matplotlib for the figure (optional).
# **Exercises:** 5.1 Wanda's score, 5.2 movement's running score.
#
#     python labs/05_criteria.py --data-dir ../shared/data

# %%
import copy
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent) if "__file__" in globals() else "labs")
import torch
import torch.nn.functional as F

import common
from exercises import exercise
import obert
import prune

lab = common.start("Lab 5", "magnitude, movement, Wanda and oBERT in one shot, and how much their masks agree")
teacher = common.teacher(lab)
names = prune.prunable_names(teacher)

# %% [markdown]
# ## Exercise 5.1: Wanda's score
#
# Write `my_wanda(W, X)`: for a weight matrix `W` of shape `(out, in)` and the inputs `X` it saw,
# `(tokens, in)`, the score `|W_ij| · ‖X_j‖₂`, the norm over the tokens of input j. Why does a weight
# with a small |w| but a large input matter? (Its contribution to the output is w_ij x_j.)

# %%
def my_wanda(W, X):
    raise NotImplementedError          # your code here


wanda_score = exercise("5.1", my_wanda)

# %% [markdown]
# ## Exercise 5.2: movement's running score
#
# Movement keeps, per weight, S = −Σ_t w(t) g(t) over the training steps: a weight that training
# pushes toward zero (w and g of one sign) loses score. Write `my_movement_step(S, w, g)`, the score
# after one more step.

# %%
def my_movement_step(S, w, g):
    raise NotImplementedError          # your code here


movement_step = exercise("5.2", my_movement_step)

# %% [markdown]
# ## 1. What each criterion reads
#
# - magnitude: nothing but the weights;
# - Wanda: the norm of every Linear's inputs over 128 training sentences, their padding left out,
#   read by forward hooks (`criteria.gather_input_norms` does the same);
# - movement: S summed over steps of training; the teacher is already trained, so we train it a
#   little more (100 steps at a small learning rate) and sum −w·g as we go;
# - oBERT: the empirical Fisher of 256 gradients of 16 sentences, in blocks of 50 (lab 2).

# %%
model = copy.deepcopy(teacher).eval()
for p in model.parameters():
    p.requires_grad_(True)
params = dict(model.named_parameters())
sentences = lab.train[: lab.steps(128, 4)]
inputs = {n: [] for n in names}                                  # each Linear's inputs, real tokens only
hooks = [model.get_submodule(n.rsplit(".", 1)[0]).register_forward_hook(
    lambda mod, x, y, n=n: inputs[n].append(x[0].detach()[real])) for n in names]
with torch.no_grad():
    for batch in common.loader(lab, sentences, False):
        batch = common.on(lab, batch)
        real = batch["attention_mask"].bool()                    # (B, T): the hooks keep these positions
        common.logits(model, batch)
for h in hooks:
    h.remove()
wanda = {n: wanda_score(params[n].detach(), torch.cat(inputs[n])) for n in names}
del inputs

m = lab.steps(256, 4)                                          # oBERT: the teacher's Fisher, as lab 2's
fisher = obert.EmpiricalFisher({n: params[n].shape for n in names}, 50, m, 1e-7)
for batch in itertools.islice(common.loader(lab, lab.train, True, seed=1, batch_size=16), m):
    batch = common.on(lab, batch)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(common.logits(model, batch), batch["labels"]).backward()
    fisher.add({n: params[n].grad for n in names})
finvs = fisher.inverses()
model.zero_grad(set_to_none=True)

S = {n: torch.zeros_like(params[n]) for n in names}            # movement: more training, summing -w*g
model.train()
opt = common.adamw(model, 1e-5)
for batch in itertools.islice(common.loader(lab, lab.train, True, seed=3), lab.steps(100, 2)):
    batch = common.on(lab, batch)
    F.cross_entropy(common.logits(model, batch), batch["labels"]).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for n in names:
        S[n] = movement_step(S[n], params[n].detach(), params[n].grad)
    opt.step()
    opt.zero_grad(set_to_none=True)
moved = copy.deepcopy(model)                                   # movement prunes the weights it moved

# %% [markdown]
# ## 2. One shot at 70, 80 and 90%
#
# Each criterion's scores go through the same `prune.select` (exactly round(s · n) pruned), with the
# comparison group its paper uses: magnitude and oBERT over the whole encoder (global), movement per
# matrix (the paper's TopK), Wanda within each output row. oBERT also moves the weights it keeps (its
# OBS update: `prune.prune_step` scores, selects and updates in one call).

# %%
scores = {"magnitude": prune.magnitude_scores({n: teacher.get_parameter(n) for n in names}), "movement": S,
          "Wanda": wanda}
scope = {"magnitude": "global", "movement": "layer", "Wanda": "row", "oBERT": "global"}
results, masks80 = {}, {}
for s in (0.7, 0.8, 0.9):
    for name in scope:
        pruned = copy.deepcopy(moved if name == "movement" else teacher)
        w = dict(pruned.named_parameters())
        if name == "oBERT":
            keep = prune.prune_step({n: w[n] for n in names}, prune.METHODS["obert"], s, stats=finvs)
        else:
            keep = prune.select(scores[name], s, scope[name])
        prune.apply_masks(w, keep)
        results.setdefault(name, {})[s] = common.accuracy(pruned, lab)
        if s == 0.8:
            masks80[name] = keep
    print(f"{s:.0%}: " + ", ".join(f"{k} {v[s]:.2f}%" for k, v in results.items()))

# %% [markdown]
# ## 3. How much do their masks agree?
#
# At 80%, the share of the pruned weights that two criteria both prune (1 = the same masks; a
# random mask would share about 80% of them with any other).

# %%
def agreement(a, b):
    both = sum(int((~a[n] & ~b[n]).sum()) for n in names)
    return both / sum(int((~a[n]).sum()) for n in names)


kinds = list(masks80)
for x, y in itertools.combinations(kinds, 2):
    print(f"{x:>9} and {y:<9}: {agreement(masks80[x], masks80[y]):.3f} of the pruned weights in common")
with common.figure(lab, "05_criteria", 5, 3.5) as plt:
    if plt:
        for name, r in results.items():
            plt.plot(list(r), list(r.values()), "o-", label=name)
        plt.xlabel("encoder sparsity, one shot"), plt.ylabel("dev accuracy (%)"), plt.legend(fontsize=8)

# %% [markdown]
# ## What the numbers say
#
# At 80%: magnitude 58.26%, Wanda 73.51%, oBERT 79.01% (lab 2's, from the same Fisher), movement
# 50.92% (the majority class). The more a criterion reads, the more it keeps: the evidence's three
# teachers give the same order (61.7, 73.9 and 80.0 at 80%). Movement's scores after 100 steps of a model already trained are
# first-order guesses (ΔL ≈ −g·w) about weights whose removal is anything but small, and they send
# the model to the majority class from 70% on; in the recipe, movement's first cut (30% at once)
# does the same to every seed, where a random cut recovers (the evidence's first-cut table).
#
# The masks overlap more than chance (a random 80% mask shares about 0.8 of the pruned weights with
# any other): magnitude, Wanda and oBERT share about 0.91 pairwise, movement about 0.84 with each,
# barely above chance. In the recipe, training between the cuts closes most of the gap: Wanda
# ends where magnitude ends (79.66 against 79.56 at 80%), oBERT 4.4 points above both.
#
# **Try:** Wanda globally (`scope["Wanda"] = "global"`) and magnitude per row: is it the score or
# the comparison group that helps? A toy fifth criterion is one function and one entry in prune.py:
# `def random_scores(weights, pattern="unstructured", stats=None): return {n: torch.rand_like(w) for n, w
# in weights.items()}` and `"random": Method(random_scores, ...)` in its `METHODS`, after which
# `python train.py --method random` prunes with it (here, `prune.METHODS["random"] = ...` is enough).

# %%
lab.done("one shot at 80%: " + ", ".join(f"{k} {v[0.8]:.2f}%" for k, v in results.items()))
