"""
The sparsity schedule and the learning-rate schedule scaled to it (the paper's second guideline).

Kurtic, Hoefler & Alistarh (2024), section 4 ("scale the sparsity and learning-rate schedules
with the target"), following the gradual schedule of Zhu & Gupta (2017) as accelerated in the
oBERT (Kurtic et al. 2022, appendix) and GMP* (Kurtic & Alistarh 2022) recipes:

  1. dense fine-tuning until the first pruning step t_0 (2/30 of training in the 30-epoch recipe,
     for the small models too: SparseML's 30epochs_init30_*.yaml recipes for 6- and 3-layer BERT
     keep start_epoch 2, end_epoch 26 and update_frequency 4, changing only s_i);
  2. at t_0, one jump to the initial sparsity s_i (never above the target s_f): 0.7 for BERT-base
     and larger, 0.3 for models of fewer than 12 layers (`initial_sparsity`);
  3. at pruning steps every 4/30 of training until t_end (26/30), the cubic
         s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^3
     which prunes fast while many weights are redundant and slowly near the target;
  4. fine-tuning with a fixed mask from t_end to the end.

The naive schedule ("cubic", what the "Sparsity May Cry" benchmark used) is the same cubic with
s_i = 0: it starts from a dense model and so spends more of a short budget at low sparsity.

The learning rate decays linearly from lr_max to lr_min in the dense phase and is re-warmed to
lr_max at every pruning step, then decays linearly to lr_min within each cycle (the last cycle
being the fixed-mask phase): every pruning step is followed by enough high-LR steps to recover.

Everything is a pure function of the optimizer step, so resuming needs only the step counter.
train.py builds one `Schedule` per phase (a dense one, target 0, for the teacher; the pruning one
for the student) and asks it, each step, `lr_at(step)` and whether `step in pruning_steps()`,
then calls prune.py with `sparsity_at(step)`.

    python schedule.py --sparsity 0.9 --steps 30000     # print the events and a text plot
"""
import argparse
from dataclasses import dataclass, replace


def initial_sparsity(num_layers: int) -> float:
    """s_i by depth, as the oBERT authors chose it: 0.7 for the 12-layer BERT-base (SparseML's
    30epochs_unstructured*.yaml recipes), 0.3 for their 6- and 3-layer models (the
    30epochs_init30_*.yaml recipes, research/optimal_BERT_surgeon_oBERT's Table 3): a small model has
    fewer redundant weights to lose in one jump."""
    return 0.7 if num_layers >= 12 else 0.3


@dataclass(frozen=True)
class Schedule:
    total_steps: int                 # optimizer steps in the whole run
    target: float                    # s_f, the final sparsity; 0 means dense fine-tuning
    init_sparsity: float = 0.7       # s_i of the accelerated recipe (clipped to the target; by depth:
                                     # `initial_sparsity`)
    kind: str = "accelerated"        # "accelerated" (jump to s_i first) or "cubic" (from zero)
    lr_max: float = 8e-5             # BERT-base SQuAD recipe: 8e-5 ...
    lr_min: float = 8e-6             # ... to 8e-6
    warmup_steps: int = 0            # optional linear warm-up at the very start
    start_frac: float = 2 / 30       # t_0: first pruning step (epoch 2 of 30)
    every_frac: float = 4 / 30       # pruning every 4 epochs of 30 ...
    end_frac: float = 26 / 30        # ... until t_end = epoch 26; fixed mask after

    def __post_init__(self):
        if not 0.0 <= self.target < 1.0:
            raise ValueError(f"target sparsity must be in [0, 1), got {self.target}; pass e.g. 0.8 for 80%")
        if self.kind not in ("accelerated", "cubic"):
            raise ValueError(f"schedule kind must be 'accelerated' or 'cubic', got {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {self.total_steps}")

    # -- sparsity --------------------------------------------------------------------------

    @property
    def s_i(self) -> float:
        return 0.0 if self.kind == "cubic" else min(self.init_sparsity, self.target)

    @property
    def t_0(self) -> int:
        return round(self.start_frac * self.total_steps)

    @property
    def t_end(self) -> int:
        return max(round(self.end_frac * self.total_steps), self.t_0)

    def pruning_steps(self) -> list[int]:
        """The optimizer steps at which masks are recomputed: t_0, ..., t_end, evenly spaced."""
        if self.target == 0:
            return []
        n = round((self.end_frac - self.start_frac) / self.every_frac) + 1   # 7 in the recipe
        span = self.t_end - self.t_0
        return sorted({self.t_0 + round(k * span / max(n - 1, 1)) for k in range(n)})

    def curve(self, t: int) -> float:
        """s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^3, for t_0 <= t <= t_end: the
        cubic of both kinds, which differ only in s_i (the recipe's jump, or 0 for kind "cubic")."""
        span = max(self.t_end - self.t_0, 1)
        progress = min(max((t - self.t_0) / span, 0.0), 1.0)
        return self.target + (self.s_i - self.target) * (1.0 - progress) ** 3

    def reaches_target(self) -> bool:
        """Whether the last pruning step, t_end, falls inside the run (steps 0 .. total_steps - 1)."""
        return self.target == 0 or self.t_end < self.total_steps

    def min_steps(self) -> int:
        """The fewest total steps with which this schedule (same fractions) still reaches its target."""
        n = 1
        while not replace(self, total_steps=n).reaches_target():
            n += 1
        return n

    def sparsity_at(self, step: int) -> float:
        """The sparsity in force during optimizer step `step`: that of the last pruning step <= step."""
        done = [p for p in self.pruning_steps() if p <= step]
        if not done:
            return 0.0
        return self.target if done[-1] == self.t_end else self.curve(done[-1])

    # -- learning rate ---------------------------------------------------------------------

    def cycles(self) -> list[tuple[int, int]]:
        """[start, end) of each LR cycle: the dense phase, then one per pruning step."""
        bounds = [0] + [p for p in self.pruning_steps() if p > 0] + [self.total_steps]
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]

    def lr_at(self, step: int) -> float:
        """Linear warm-up (first cycle only), then lr_max -> lr_min linearly within each cycle,
        reaching lr_min exactly at the cycle's last step."""
        a, b = next(((a, b) for a, b in self.cycles() if a <= step < b), self.cycles()[-1])
        if a == 0 and step < self.warmup_steps:
            return self.lr_max * (step + 1) / self.warmup_steps
        if a == 0:
            a = min(self.warmup_steps, b - 1)
        progress = min((step - a) / max(b - 1 - a, 1), 1.0)
        return self.lr_max + (self.lr_min - self.lr_max) * progress


# -----------------------------------------------------------------------------
# A look at the schedule before paying for a run.

def text_plot(values: list[float], label: str, width: int = 72, height: int = 8) -> str:
    lo, hi = min(values), max(values)
    n = len(values)   # each column shows the largest value in its share of the steps
    cols = [max(values[c * n // width: max((c + 1) * n // width, c * n // width + 1)]) for c in range(width)]
    rows = []
    for r in range(height - 1, -1, -1):
        level = lo + (hi - lo) * r / (height - 1)
        line = "".join("#" if v >= level - 1e-12 else " " for v in cols)   # a filled area chart
        rows.append(f"{level:10.4g} |{line}")
    return f"{label}\n" + "\n".join(rows) + "\n" + " " * 11 + "+" + "-" * width


def main(argv=None):
    ap = argparse.ArgumentParser(description="Print the pruning events and the sparsity and LR curves.")
    ap.add_argument("--sparsity", type=float, default=0.8, help="target sparsity s_f (default 0.8)")
    ap.add_argument("--steps", type=int, default=30000, help="total optimizer steps (default 30000)")
    ap.add_argument("--init-sparsity", type=float, default=0.7, help="s_i, the first jump (default 0.7)")
    ap.add_argument("--schedule", choices=["accelerated", "cubic"], default="accelerated",
                    help="accelerated (the recipe) or cubic from zero (the ablation)")
    ap.add_argument("--lr", type=float, default=8e-5, help="lr_max (default 8e-5)")
    ap.add_argument("--lr-min", type=float, default=8e-6, help="lr_min (default 8e-6)")
    ap.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default 0)")
    args = ap.parse_args(argv)
    try:
        s = Schedule(args.steps, args.sparsity, args.init_sparsity, args.schedule, args.lr, args.lr_min,
                     args.warmup_steps)
    except ValueError as e:
        ap.exit(2, f"schedule.py: {e}\n")
    print(f"{'step':>8}  {'sparsity':>8}  {'lr':>10}")
    for p in s.pruning_steps():
        print(f"{p:>8}  {s.sparsity_at(p):8.4f}  {s.lr_at(p):10.3g}")
    steps = range(s.total_steps)
    print(text_plot([s.sparsity_at(t) for t in steps], "sparsity"))
    print(text_plot([s.lr_at(t) for t in steps], "learning rate"))


if __name__ == "__main__":
    main()
