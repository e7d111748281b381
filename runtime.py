"""
A run's world: where it computes, on what data, with which models, and what it tells the user.

train.py's loop (the recipe's phases) runs on what this file sets up and reports through it:

  Runtime, start_runtime   the device, the rank among torchrun's processes, the autocast dtype
  Data, load_data          the task's examples, tokenized and encoded once; the shuffled, length-grouped
                           loader of the training set; dev and the --holdout examples
  load_model               a model with the task's head, its new weights seeded as every rank seeds them
  forward, task_loss       what a batch means for the task: the model's output, and the loss on its labels
  evaluate                 the task's metric on dev (or the held-out examples), dropout off
  log, log_record          the progress line and log.jsonl; pruned_by, the sparsity report's title;
                           what_it_tells, the closing notes where a run's numbers cannot mean anything
  student_schedule, ...    the phases' steps, checked once the data fixes them (a run too short for
                           its schedule, a warm-up longer than its cycle, --stop-after past its end)

Like train.py, cli.py and rundir.py, this is part of the loop's code: no concept file imports it.
"""
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import model as modeling
import prune
import rundir
from rundir import UsageError
from schedule import Schedule


@dataclass(frozen=True)
class Runtime:
    """Where this process computes: its device, its rank among `world` processes, the autocast dtype."""
    device: torch.device
    rank: int = 0
    world: int = 1
    dtype: torch.dtype = torch.float32

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


@dataclass(frozen=True)
class Data:
    """The task's encoded data: training features (and their shuffled, padded loader) and the dev set."""
    task: data.Task
    train: list                    # features
    loader: torch.utils.data.DataLoader
    eval_examples: list
    eval_features: list
    pad_id: int
    tokens_per_batch: int          # batch size x mean real length: sparse_backprop.route times the kernels on this many
    holdout_examples: list = ()    # --holdout: the training file's last N examples, never trained on
    holdout_features: list = ()
    fingerprint: str = ""          # of the examples of every split (data.fingerprint): run.json records it


# -----------------------------------------------------------------------------
# A batch, for the task.

def forward(net, batch):
    return net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def task_loss(task, out, batch):
    if task.kind == "question_answering":   # mean of the start and end cross-entropies
        return (F.cross_entropy(out[0].float(), batch["start_positions"]) +
                F.cross_entropy(out[1].float(), batch["end_positions"])) / 2
    return F.cross_entropy(out.float(), batch["labels"])


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# -----------------------------------------------------------------------------
# The device, the data, the models.

def start_runtime(args) -> Runtime:
    """The device, and the process group under torchrun (WORLD_SIZE > 1)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    rank, world = 0, int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    return Runtime(device, rank, world, dtype)


def load_data(args, task, rt) -> Data:
    """Read, tokenize and encode both splits; raises DataError / CheckpointError on bad files."""
    tok = data.load_tokenizer(args.model_folder)
    say = functools.partial(log, rt)                 # which file each split was read from, on rank 0 only
    train_ex = data.load_split(task, "train", args.data_dir, say)
    check_holdout(args, len(train_ex))
    cut = len(train_ex) - (args.holdout or 0)
    train_ex, holdout_ex = train_ex[:cut][: args.limit_train], train_ex[cut:]
    eval_ex = data.load_split(task, "validation", args.data_dir, say)[: args.limit_eval]
    train_f = data.encode(task, train_ex, tok, args.max_length)
    pad = data.pad_id(tok)
    loader = data.make_loader(train_f, args.batch_size, True, args.seed, pad, rt.distributed,
                              group_by_length=not args.no_group_by_length)
    per_example = sum(data.feature_length(f) * (len(f["input_ids"]) if task.kind == "multiple_choice" else 1)
                      for f in train_f) / max(len(train_f), 1)
    return Data(task, train_f, loader, eval_ex, data.encode(task, eval_ex, tok, args.max_length), pad,
                max(1, round(per_example * args.batch_size)), holdout_ex,
                data.encode(task, holdout_ex, tok, args.max_length), data.fingerprint(train_ex, eval_ex, holdout_ex))


def load_model(folder, task, seed, device, verbose=True):
    torch.manual_seed(seed)    # a new task head starts from the same init on every rank
    m = modeling.from_pretrained(folder, head=task.kind, num_labels=task.head_labels, verbose=verbose)
    return m.to(device).train()


# -----------------------------------------------------------------------------
# Evaluation and logs.

@torch.no_grad()
def evaluate(model, d, batch_size, rt, holdout=False):
    """The task's metric on the dev set (or on the --holdout examples), dropout off; the model is left
    in the mode it came in (the teacher stays in eval mode: distilling from a dropout-noisy teacher
    would be a bug)."""
    examples, features = (d.holdout_examples, d.holdout_features) if holdout else (d.eval_examples, d.eval_features)
    was_training = model.training
    model.eval()
    outputs = []
    for batch in data.make_loader(features, batch_size, False, 0, d.pad_id):
        with rt.autocast():
            out = forward(model, to_device(batch, rt.device))
        if d.task.kind == "question_answering":
            outputs += list(zip(out[0].float().cpu().tolist(), out[1].float().cpu().tolist()))
        else:
            outputs += out.float().cpu().tolist()
    model.train(was_training)
    return data.score(d.task, examples, features, outputs)


def log(rt, text):
    if rt.rank == 0:
        print(text, flush=True)


def log_record(rt, path, rec, progress=None):
    """One JSON line appended to `path` (log.jsonl); with progress = (label, first step of this
    process, last step, the steps of the phases after this one), training records also as a
    progress line with the time spent and left, in this phase and in the whole run (the later
    phases' steps at this phase's pace: a first estimate, the student's steps costing more)."""
    if rt.rank != 0:
        return
    rundir.append_line(path, json.dumps(rec))
    if progress is not None:
        label, first, total, later = progress
        width, done = 24, int(24 * rec["step"] / total)
        per_step = rec["elapsed_s"] / max(rec["step"] - first, 1)
        left = per_step * (total - rec["step"])
        line = (f"{label} [{'=' * done}{' ' * (width - done)}] {rec['step']}/{total} loss {rec['loss']:.4g} "
                f"lr {rec['lr']:.2e} sparsity {rec['sparsity']:.3f} {rec['tokens_per_s']:.0f} tok/s "
                f"{clock(rec['elapsed_s'])} elapsed, ~{clock(left)} left"
                + (f" (the run: ~{clock(left + per_step * later)})" if later else ""))
        print(line, end="\r" if sys.stdout.isatty() and rec["step"] < total else "\n", flush=True)


def clock(seconds: float) -> str:
    """3725 -> '1:02:05'."""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def what_it_tells(d: Data, metrics: dict) -> list[str]:
    """One line for each number a run prints that cannot mean what it seems: a dev set so small that
    an accuracy's standard error is over 5 points (fewer than 100 examples), and a model ({what:
    metric}) that ended at chance, no better than always answering the most frequent label (within two
    standard errors of it). Tasks scored by accuracy only (not SQuAD)."""
    n = len(d.eval_features)
    labels = [f["label"] for f in d.eval_features if "label" in f]
    if not labels or n == 0:
        return []
    notes = []
    if 50 / n ** 0.5 > 5:                                  # the standard error at 50%: sqrt(0.25 / n)
        notes.append(f"{n} dev examples give an accuracy a standard error of up to {50 / n ** 0.5:.1f} points: too few "
                     f"to tell runs apart (evaluate on more: drop --limit-eval, or add --holdout)")
    chance = 100 * max(labels.count(y) for y in set(labels)) / len(labels)
    se = 100 * (chance / 100 * (1 - chance / 100) / n) ** 0.5
    for what, metric in metrics.items():
        accuracy = (metric or {}).get("accuracy")
        if accuracy is not None and accuracy <= chance + 2 * se:
            notes.append(f"{what} ended at chance ({accuracy:.2f}%; always answering the most frequent label scores "
                         f"{chance:.2f}%): its numbers say nothing about pruning" + (
                             "; give the teacher more data or epochs" if "teacher" in what else ""))
    return notes


def pruned_by(args) -> str:
    """The sparsity report's first line: the criterion, what competes, the target of what."""
    if args.sparsity == 0:
        return "dense fine-tuning: nothing pruned"
    group = (f"the N best of every M ({args.pattern})" if prune.parse_nm(args.pattern) else
             {"global": "all together", "layer": "per matrix", "row": "per output row"}[args.scope]
             + (", in groups of 4" if args.pattern == "4-block" else ""))
    what = "the encoder" + (", the embeddings" if args.prune_embeddings else "") + (", the head" if args.prune_head else "")
    return f"pruned by {args.method} ({group}) to {args.sparsity:g} of {what}'s prunable weights"


def peak_memory_bytes(device) -> int:
    """This process's peak: resident memory on a CPU, the allocator's peak on a GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux reports KiB


# -----------------------------------------------------------------------------
# The phases' steps, checked once the data is read (cli.py has checked the flags): still before
# anything is written. A problem is one sentence (UsageError), exit 2.
# `batches` is the number of micro-batches in one epoch of the training data (len of its loader).

def check_holdout(args, n_train: int):
    """--holdout N takes the training file's last N examples away from training: some must be left."""
    if n_train - (args.holdout or 0) < 1:
        raise UsageError(f"--holdout {args.holdout} leaves no training examples ({args.task} has {n_train}); "
                         f"pass a smaller --holdout.")


def phase_steps(epochs, args, batches: int) -> int:
    """Optimizer steps of a phase: epochs x steps per epoch, at least 1, at most --max-steps."""
    n = max(1, math.ceil(epochs * (batches // args.grad_accum)))
    return min(n, args.max_steps) if args.max_steps else n


def warmup_steps(args, total) -> int:
    return args.warmup_steps if args.warmup_steps is not None else round(args.warmup * total)


def student_schedule(args, batches: int) -> Schedule:
    """The student's schedule (schedule.py), refused up front if the run is too short to end at its target."""
    if batches // args.grad_accum == 0:
        raise UsageError("fewer training examples than one optimizer step needs; lower --batch-size or --grad-accum.")
    total = phase_steps(args.epochs, args, batches)
    sched = Schedule(total, args.sparsity, args.init_sparsity, args.schedule, args.lr, args.lr_min,
                     warmup_steps(args, total))
    if prune.accumulated(prune.METHODS[args.method]) and sched.t_0 == 0:
        raise UsageError(f"--method {args.method} scores weights by how training moved them, and the student's "
                         f"{total} steps put its first pruning step at step 0, before any training; raise --epochs "
                         f"(the first pruning step is at 2/30 of the run).")
    if not sched.reaches_target():
        fix = (f"raise --max-steps, which caps it at {total}," if args.max_steps == total else "raise --epochs")
        raise UsageError(f"the student's {total} optimizer steps are too few for the schedule to reach sparsity "
                         f"{args.sparsity:g} (its last pruning step is step {sched.t_end}); {fix} to give it at least "
                         f"{sched.min_steps()} steps.")
    check_warmup(args, sched)
    if args.kd and not args.teacher:
        teacher = phase_steps(args.teacher_epochs, args, batches)
        check_warmup(args, Schedule(teacher, 0.0, warmup_steps=warmup_steps(args, teacher)), "the teacher's")
    check_stop_after(args, run_steps(args, batches, sched))
    return sched


def check_warmup(args, sched, whose="the student's"):
    """The warm-up ramps the first cycle only (schedule.py: every pruning step re-warms the LR): a warm-up
    longer than that cycle would leave its steps, maybe the whole phase, at a fraction of the peak."""
    first = sched.cycles()[0][1]
    if sched.warmup_steps > first:
        flag = "--warmup-steps" if "warmup_steps" in args.given else "--warmup"
        where = (f"{whose} dense phase before its first pruning step ({first} of its {sched.total_steps} steps; every "
                 f"pruning step re-warms the LR)" if sched.target > 0 else f"{whose} {first} steps")
        raise UsageError(f"{flag} gives a warm-up of {sched.warmup_steps} steps, longer than {where}; pass at most "
                         f"--warmup-steps {first}.")


def run_steps(args, batches: int, sched) -> list[int]:
    """The optimizer steps of each phase this run trains: the student's, and the teacher's if trained here."""
    return [sched.total_steps] + ([phase_steps(args.teacher_epochs, args, batches)] if args.kd and not args.teacher
                                  else [])


def check_stop_after(args, phases: list[int]):
    """--stop-after N stops a phase after its step N: refused if no phase of this run (their steps:
    `phases`) has that step. Called by `student_schedule` once the data fixes the phases' lengths."""
    if args.stop_after is not None and args.stop_after > max(phases):
        raise UsageError(f"--stop-after {args.stop_after} is past the last step of every phase of this run "
                         f"({max(phases)}); pass a smaller one.")


def warn_if_long(args, phases: list[int], tokens_per_step: int, device):
    """Before a run estimated at more than a day on this device, one line with the numbers (it goes on).
    FLOPs of a step: forward 2 x weights x tokens (prune.py's count), backward twice that, plus the
    teacher's forward; the device's speed: a few 1024 x 1024 matrix products, at half their rate."""
    cfg = vars(modeling.load_config(Path(args.model_folder)))
    per_token = sum(f for _, _, f in prune.cost_table(cfg, 128)) / 128
    steps, flops = sum(phases), per_token * tokens_per_step * (4 if args.kd else 3)
    rate = 0.5 * device_flops(device)
    days = steps * flops / rate / 86400
    if days > 1:
        print(f"train.py: this run is estimated at {days:.1f} days on {device} ({steps} optimizer steps of about "
              f"{flops / 1e12:.2f} TFLOP, at ~{rate / 1e9:.0f} GFLOP/s); it goes on (--max-steps or fewer --epochs "
              f"shorten it).", flush=True)


def device_flops(device) -> float:
    """FLOP/s of three 1024 x 1024 fp32 matrix products on `device`, after one to warm up."""
    a = torch.ones(1024, 1024, device=device)
    (a @ a).sum().item()
    t0 = time.perf_counter()
    for _ in range(3):
        (a @ a).sum().item()
    return 3 * 2 * 1024 ** 3 / (time.perf_counter() - t0)
