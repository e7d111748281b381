"""
Two more rungs of the saliency ladder: movement pruning (first order) and Wanda (activation-aware).

prune.py holds the ladder's registry (`METHODS`) and its zeroth rung, magnitude; obert.py holds
the second-order rung and its Fisher. This file holds the two criteria that read something other
than the weights and a Fisher, each beside the one function that gathers what it reads.

Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning",
section 3, the hard variant). Magnitude asks how large a weight is; movement asks where fine-tuning
is taking it. A weight moving away from zero (w and -g of one sign) is becoming important; one
moving toward zero is being switched off. The paper learns a score S per weight whose gradient is
dL/dS = (dL/dW) ⊙ W (a straight-through mask), so that under plain SGD, from S = 0,

    S(T) = -α_S Σ_{t<T} g(t) ⊙ w(t)                g = dL/dW at step t, w the weight it was taken at

and prunes the lowest S of each matrix (its TopK is per matrix). Here S is that sum itself, the
constant α_S dropped (it ranks nothing differently), accumulated over every optimizer step of the
student from its first step on, as the paper's scores are (never reset at a pruning step), with g
the gradient AdamW steps with: masked, clipped, and under torchrun all-reduced, so S is the same on
every rank. SparseML's MovementPruningModifier keeps the same running sum. Two differences from the
paper's hard variant: its scores are trained by Adam (so the sum holds only approximately), and its
TopK can bring a pruned weight back; here, as for every criterion of this project, a pruned weight
stays pruned (prune.select never revives), its gradient is masked, so its S stops moving, and
train.py zeroes S where the masks prune. The scores are signed, which `prune.select` takes as they are.

Wanda (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
Models", section 3). Large inputs make small weights matter: a weight's contribution to its output
is w_ij x_j, so the score is the weight's magnitude times the size of its input over a calibration
set X (N tokens by `in` features),

    score_ij = |W_ij| · ||X_j||_2,      ||X_j||_2 = sqrt(Σ_tokens x_j²)

compared within each output row (the paper's per-output pruning: prune.py's scope "row"; global and
per-matrix scopes work too), with no weight update. The norm is taken as sqrt(Σ x_j² / N), N the
input vectors the Linear saw: every encoder Linear sees the same real tokens, so that divides all
their scores by one number and ranks nothing differently (the authors' code divides by the number
of sequences), while the pooler and head, which see one pooled vector per sentence, stay comparable
with the encoder under a global threshold (`--prune-head --scope global`). The authors' code (locuslab/wanda, prune_wanda)
measures 128 sequences of 2048 tokens; here --calibration-size training examples (128 by default),
padding excluded (a padded position is not an input the model ever uses), through the model as it
stands: dropout off, its pruned weights at 0, in one forward pass. The authors' code instead
measures layer i's inputs after pruning layers < i (one layer at a time, each of its Linears from
the unpruned layer); with a global threshold over all layers at once that order does not exist, and
in gradual pruning each step measures the model the earlier steps pruned.

How it connects: prune.py registers `movement_scores` (statistic "movement", made by
`accumulate_movement`) and `wanda_scores` (statistic "input_norms", made by `gather_input_norms`);
train.py calls the accumulator after every optimizer step's gradients, the gatherer at each pruning
step with a `prune.Probe`. This file imports nothing of the loop's.
"""
import torch

from obert import GROUP              # weights per group of the "4-block" pattern


def group_sums(s: torch.Tensor, pattern: str) -> torch.Tensor:
    """For the 4-block pattern, every weight carries its group's summed score; else s as it is."""
    if pattern != "4-block":
        return s
    return s.reshape(-1, GROUP).sum(1, keepdim=True).expand(-1, GROUP).reshape(s.shape)   # (numel/4, 4) -> s.shape


# -----------------------------------------------------------------------------
# Movement pruning: S = -Σ_t w(t) ⊙ g(t), accumulated over training.

@torch.no_grad()
def accumulate_movement(running: dict, weights: dict):
    """S -= w ⊙ g for every tensor of `running`, in place, with g the gradient in w.grad now (masked
    and clipped: what AdamW steps with) and w the weights it was taken at: call it once per optimizer
    step, after the gradients are final and before the step moves w."""
    for name, S in running.items():
        w = weights[name]
        if w.grad is not None:
            S.addcmul_(w.detach(), w.grad, value=-1.0)                    # S += -(w * g)


@torch.no_grad()
def movement_scores(weights: dict, pattern="unstructured", stats=None) -> dict:
    """Movement: S, the running sum of -w ⊙ g (stats[name]); for 4-block groups the group's sum. Signed:
    a weight that training pushed toward zero scores below one it left alone (S = 0)."""
    return {n: group_sums(stats[n].float(), pattern).reshape(w.shape) for n, w in weights.items()}


# -----------------------------------------------------------------------------
# Wanda: |W_ij| · ||X_j||_2, the inputs measured on a calibration set (as an RMS: ||X_j||_2 / sqrt(N)).

@torch.no_grad()
def wanda_scores(weights: dict, pattern="unstructured", stats=None) -> dict:
    """Wanda: |W_ij| · ||X_j||_2 (stats[name] holds ||X_j||_2 / sqrt(N), N the input vectors the Linear
    saw: the same ranking within a Linear, see the docstring above); for 4-block groups the group's sum."""
    return {n: group_sums(w.detach().float().abs() * stats[n][None, :], pattern)      # (out, in) * (1, in)
            for n, w in weights.items()}


@torch.no_grad()
def gather_input_norms(model, names: list, masks: dict, probe) -> dict:
    """Wanda's statistic at one pruning step: {name: ||X_j||_2 / sqrt(N), (in,)} for the Linear of each
    weight in `names`, over the real tokens of probe.calibration_size training examples (prune.py's
    `Probe`), dropout off, one forward pass per batch. A forward hook on each Linear adds Σ x_j² and
    the count N of vectors over the batch's real tokens: its input is (B, T, in) for the encoder's
    Linears, whose padded positions are dropped by the batch's attention mask, or (B, in) for a pooled
    [CLS] vector (the pooler, the heads), all real. Every rank reads the same examples
    (probe.batches(..., sharded=False)), so under torchrun every rank holds the same norms."""
    sums, count, real = {}, {}, {}
    hooks = []
    for name in names:
        linear = model.get_submodule(name.rsplit(".", 1)[0])
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"Wanda measures the inputs of Linear layers, and {name} is not one")
        sums[name], count[name] = torch.zeros(linear.in_features, device=probe.device), 0

        def add(module, inputs, output, name=name):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])  # (B·T, in), or (B, in) pooled
            if x.shape[0] == real["tokens"].numel():
                x = x[real["tokens"]]                                         # (real tokens, in)
            sums[name] += x.pow(2).sum(0)                                     # Σ_tokens x_j²
            count[name] += x.shape[0]
        hooks.append(linear.register_forward_hook(add))
    was_training = model.training
    model.eval()
    try:
        batches = probe.batches(probe.calibration_batch_size, 2, sharded=False)
        left = probe.calibration_size
        while left > 0:
            batch = next(batches)
            batch = {k: v[:left] for k, v in batch.items()}                   # the last batch: only what is left
            real["tokens"] = batch["attention_mask"].reshape(-1).bool()        # (B·T,), or (B·C·T,) for choices
            probe.forward(model, batch)
            left -= len(batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: (s / count[n]).sqrt() for n, s in sums.items()}

