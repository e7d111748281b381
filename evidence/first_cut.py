"""The recipe's first cut, by four criteria: why movement collapses where magnitude recovers.

The recipe with movement (runs.py's movement80-b2) ends at SST-2's majority class for every seed,
from its first pruning step on. This script repeats that first step alone, with the same student,
data order and teacher as that run: the pretrained student distilled from the teacher for the
recipe's 50 dense steps (2/30 of 752), movement's sum S = -Σ w·g accumulated as train.py
accumulates it; then 30% of every encoder matrix cut (per matrix, movement's scope) by

    movement        the lowest S: the weights training pushed toward zero, by how much (w·g)
    magnitude       the lowest |w|
    at random       a uniform draw (seeded)
    largest first   the highest |w|: the worst magnitude could do

and the student's dev accuracy measured right after the cut and after 100 more steps of the
recipe's training (KD at T = 5.5, the recipe's learning rate, the masks held; train.py's masked
gradients and masked AdamW step, from fresh AdamW moments for all four cuts alike). Movement's score is
the first-order Taylor estimate of what removing a weight changes in the loss, ΔL ≈ -g·w: it is
blind to the second-order term w² H / 2, which for a large weight dominates, so a cut of 30% at
once removes weights whose loss it misjudges most.

    python evidence/first_cut.py --teacher runs/evidence/teacher-s0/model --data-dir ../shared/data \\
        --seed 0 --out runs/evidence/first-cut-s0.json

The record goes to --out through files.py's rule (it replaces only a record of its own, and a path
that cannot be written is refused before the minutes of training); a bad input is one sentence,
exit 2.
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "labs"))
import torch                                     # noqa: E402

import common                                    # noqa: E402  (labs/common.py: the lab loop's pieces, train.py's)
import cli                                       # noqa: E402
import criteria                                  # noqa: E402
import data                                      # noqa: E402
import distill                                   # noqa: E402
import files                                     # noqa: E402
import model as modeling                         # noqa: E402
import prune                                     # noqa: E402
import train                                     # noqa: E402
from rundir import UsageError                    # noqa: E402
from schedule import Schedule                    # noqa: E402

STEPS, AFTER, CUT = 752, 100, 0.3               # the recipe's budget (runs.py's gmp80-b2); steps after; the cut


def train_steps(lab, student, teacher, sched, first, last, masks, seed, running=None):
    """Steps first .. last - 1 of the recipe's student training (its data order, KD at T = 5.5, train.py's
    masked gradients and masked AdamW step); adds -w·g to `running` as train.py does, after the
    masked, clipped gradient."""
    opt, loader = common.adamw(student, sched.lr_max), common.loader(lab, lab.train, True, seed)
    for step, (batch,) in enumerate(train.optimizer_batches(loader, 1, first, last), first):
        batch = common.on(lab, batch)
        with torch.no_grad():
            z_t = common.logits(teacher, batch)
        distill.kd_loss(common.logits(student, batch), z_t, distill.TEMPERATURE).backward()
        train.masked_gradients(student, masks, 1.0)
        if running is not None:
            criteria.accumulate_movement(running, dict(student.named_parameters()))
        train.masked_step(opt, student, masks, sched.lr_at(step))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="the dense teacher of this seed (runs/evidence/teacher-sK/model)")
    ap.add_argument("--model", help="the pretrained weights (default: all-MiniLM-L6-v2, as labs/common.py finds it)")
    ap.add_argument("--data-dir", help="SST-2's files (default: the hub)")
    ap.add_argument("--seed", type=int, default=0, help="the student's seed: its head, dropout and data order")
    ap.add_argument("--out", required=True, help="the JSON record to write")
    args = ap.parse_args(argv)
    with files.command("first_cut.py", data.DataError, modeling.CheckpointError, UsageError):
        cli.check_teacher(args.teacher, data.TASKS["sst2"], f"--teacher {args.teacher} must be fine-tuned on sst2")
        files.check_target(args.out, files.FIRST_CUT)          # before the work: its result is never lost
        first_cut(args)


def first_cut(args):
    lab = common.start("first-cut", "the recipe's first cut by four criteria",
                       [*(["--model", args.model] if args.model else []),
                        *(["--data-dir", args.data_dir] if args.data_dir else []), "--out", str(Path(args.out).parent)])
    t0 = time.time()
    teacher = common.student(lab, args.teacher, args.seed).eval()
    sched = Schedule(STEPS, 0.8, CUT, lr_max=5e-5, lr_min=5e-6)          # the recipe at the chosen budget
    student = common.student(lab, seed=args.seed)
    names = prune.prunable_names(student)
    S = {n: torch.zeros_like(student.get_parameter(n)) for n in names}
    train_steps(lab, student, teacher, sched, 0, sched.t_0, {}, args.seed, S)       # its dense phase: 50 steps
    dense = common.accuracy(student, lab)
    w = {n: student.get_parameter(n).detach() for n in names}
    g = torch.Generator().manual_seed(args.seed)
    scores = {"movement": S, "magnitude": {n: t.abs() for n, t in w.items()},
              "at random": {n: torch.rand(t.shape, generator=g) for n, t in w.items()},
              "largest first": {n: -t.abs() for n, t in w.items()}}
    top1 = {n: t.abs() >= t.abs().flatten().quantile(0.99) for n, t in w.items()}    # each matrix's largest 1%
    record = {"seed": args.seed, "dense_steps": sched.t_0, "cut": CUT, "after_steps": AFTER, "accuracy_before_cut": dense,
              "criteria": {}}
    for name, s in scores.items():
        cut = copy.deepcopy(student)
        params = dict(cut.named_parameters())
        masks = prune.select(s, CUT, "layer")
        prune.apply_masks(params, masks)
        right_after = common.accuracy(cut, lab)
        train_steps(lab, cut, teacher, sched, sched.t_0, sched.t_0 + AFTER, masks, args.seed)
        big, top = sum(int((~masks[n] & top1[n]).sum()) for n in names), sum(int(top1[n].sum()) for n in names)
        record["criteria"][name] = {"right_after": right_after, "after_training": common.accuracy(cut, lab),
                                    "share_of_largest_1pct_cut": big / top}
        print(f"{name:14} cut 30% per matrix: {right_after:.2f} right after, "
              f"{record['criteria'][name]['after_training']:.2f} after {AFTER} more steps; it cut "
              f"{big / top:.0%} of the largest 1% of weights", flush=True)
    record["seconds"] = round(time.time() - t0, 1)
    files.write_result(args.out, json.dumps(record, indent=1), files.FIRST_CUT)


if __name__ == "__main__":
    main()
