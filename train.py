"""
One loop from `python train.py --task csqa --sparsity 0.8` to a pruned, exported model.

The recipe of Kurtic, Hoefler & Alistarh (2024), all three guidelines:
  1. prune only the encoder's linear layers (prune.py; --prune-embeddings/--prune-head for the ablation);
  2. scale the sparsity and learning-rate schedules to the run (schedule.py);
  3. distil from a dense teacher with a high temperature, T = 5.5, hardness 1.0 (distill.py).

What happens (`main`):
  a) without --teacher (and with KD), fine-tune a dense teacher from the pretrained weights, or
     reuse the one this output folder already holds (OUT/teacher/model);
  b) from the same pretrained weights, fine-tune the student while pruning it (`fit`): at each
     pruning step of the schedule new masks from the chosen criterion (prune.METHODS: magnitude
     for GMP, Fisher-based scores and the OBS update for oBERT), with AdamW's moments zeroed at
     the newly pruned weights; at every optimizer step the gradients of pruned weights are masked
     before AdamW and the masks re-applied after it;
  c) evaluate, export (OUT/model, loadable by `transformers`), write OUT/results.json.

Two other ways to use it, for the contrast the paper's guidelines are about:
  --oneshot 0.5,0.7,0.8,0.9   prune a fine-tuned --model in one step to each sparsity, no training,
                              and print a table (`oneshot`; --recomputations N splits each step);
  --optimizer cram            fine-tune the dense model with CrAM (`cram_forward_backward`), so that
                              it can be pruned in one shot afterwards.
And two ways to make it faster on a CPU: batches grouped by length (on by default, data.py) and
--sparse-backprop (sparse.py: SparseProp's kernels for the matrices that are sparse enough).

Everything resumable: OUT/<phase>/checkpoint.pt (model, masks, optimizer, step, RNG, arguments)
is written atomically every --checkpoint-every steps; --resume continues from it. Under
`torchrun --nproc_per_node=N` the same script runs DDP with one data shard per rank (and oBERT's
Fisher sharded across the ranks). Bad input stops with one sentence (exit 2) before anything is
written, and a user's files are never deleted (`check_out_dir`).
"""
import argparse
import copy
import itertools
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import distill
import model as modeling
import prune
import sparse
from schedule import Schedule, initial_sparsity

# The flags that do NOT define a run: a folder's run.json must match every other argument
# (so a new flag defines the run unless it is listed here).
NOT_RUN_DEFINING = ("resume", "overwrite", "out_dir", "device", "compile", "log_every", "checkpoint_every",
                    "stop_after", "keep_checkpoints", "sparse_backprop")
# What a run writes into --out-dir, and so all that --overwrite may ever delete (with *.tmp twins).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
RUN_FILES = {(): ("run.json", "results.json", "sparsity_report.txt"),
             ("model",): ("config.json", "model.safetensors") + TOKENIZER_FILES,
             ("teacher",): ("checkpoint.pt", "log.jsonl"),
             ("teacher", "model"): ("config.json", "model.safetensors") + TOKENIZER_FILES,
             ("student",): ("checkpoint.pt", "log.jsonl")}


# CrAM's perturbation size for AdamW on BERT-family fine-tuning, chosen by measurement (commit 279b8c9's
# README): of rho in {0.01, 0.1, 1, 10}, fine-tuning MiniLM on SST-2, 0.01 kept the dense accuracy and gave
# the best one-shot accuracy on held-out training sentences; larger rho made one-shot pruning worse.
# The CrAM paper's rho = 0.05 is for SGD on ImageNet; rho multiplies the raw gradient, so its scale is the task's.
CRAM_RHO = 0.01


class UsageError(Exception):
    """Bad input found before any work: one sentence, exit code 2."""


class NonFinite(Exception):
    """A loss or gradient became NaN or infinite: the run stops, nothing is exported."""


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
    tokens_per_batch: int          # batch size x mean real length: sparse.route times the kernels on this many
    holdout_examples: list = ()    # --holdout: the training file's last N examples, never trained on
    holdout_features: list = ()


# -----------------------------------------------------------------------------
# Command line: parse, fill the task's defaults, check everything before any work.

class Parser(argparse.ArgumentParser):
    def error(self, message):      # one sentence and exit 2, not the whole usage block
        self.exit(2, f"{self.prog}: {message}; see --help.\n")


def sparsity_list(text) -> tuple:
    """ "0.5,0.7,0.9" -> (0.5, 0.7, 0.9), each in (0, 1)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sparsities like 0.5,0.7,0.9, not {text!r}") from None
    if not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"each sparsity must be in (0, 1), got {text!r}")
    return values


def block_size_arg(text):
    if text == "row":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"block size must be a whole number or 'row', not {text!r}") from None


def parse_args(argv=None):
    ap = Parser(prog="train.py", description="Prune a BERT-family model during fine-tuning (Kurtic et al. 2024).",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_recipe_args(ap.add_argument_group("the task and the recipe").add_argument)
    add_method_args(ap.add_argument_group("pruning methods, CrAM and one-shot").add_argument)
    add_run_args(ap.add_argument_group("running: output, devices, speed, limits").add_argument)
    return ap.parse_args(argv)


def add_recipe_args(a):
    a("--task", required=True, choices=list(data.TASKS), metavar="TASK", help=f"one of {', '.join(data.TASKS)}")
    a("--sparsity", type=float, default=0.8, help="target encoder sparsity in [0, 1); 0 = dense fine-tuning")
    a("--model", help="pretrained model: hub id or local folder (default per task)")
    a("--teacher", help="fine-tuned dense teacher folder; without it one is trained first")
    a("--data-dir", help="folder with the released data files; without it the hub is used")
    a("--pattern", default="unstructured", help="unstructured, 4-block, or N:M such as 2:4")
    a("--scope", default="global", choices=["global", "layer"], help="one threshold for all, or per matrix")
    a("--init-sparsity", type=float, help="first jump of the accelerated schedule (default by depth: 0.7 for 12 "
                                          "layers or more, 0.3 below, as the oBERT recipes; schedule.py)")
    a("--schedule", default="accelerated", choices=["accelerated", "cubic"], help="cubic = naive, from zero")
    a("--epochs", type=float, help="student epochs (default per task)")
    a("--lr", type=float, help="peak LR of the student (default per task); decays to --lr-min each cycle")
    a("--lr-min", type=float, help="LR at the end of each cycle (default lr / 10)")
    a("--teacher-epochs", type=float, help="dense teacher epochs (default per task)")
    a("--teacher-lr", type=float, help="dense teacher LR (default per task)")
    a("--warmup", type=float, help="linear LR warm-up, as a fraction of each phase's steps (default per task)")
    a("--warmup-steps", type=int, help="linear LR warm-up in optimizer steps (overrides --warmup)")
    a("--weight-decay", type=float, help="AdamW weight decay, none on biases and LayerNorms (default per task)")
    a("--clip", type=float, default=1.0, help="gradient norm clipping")
    a("--batch-size", type=int, help="examples per micro-batch per process (default per task)")
    a("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--max-length", type=int, help="max tokens per sequence (default per task)")
    a("--temperature", type=float, default=distill.TEMPERATURE, help="distillation temperature T")
    a("--hardness", type=float, default=distill.HARDNESS, help="weight of the KD loss; 1 - h on the task loss")
    a("--no-kd", action="store_true", help="no teacher, no distillation")
    a("--prune-embeddings", action="store_true", help="also prune the embeddings (ablation)")
    a("--prune-head", action="store_true", help="also prune the pooler and task head (ablation)")
    a("--seed", type=int, default=42, help="random seed (initialisation, dropout, data order)")


def add_method_args(a):
    a("--method", default="gmp", choices=list(prune.METHODS), metavar="METHOD",
      help="; ".join(f"{name}: {m.help}" for name, m in prune.METHODS.items()))
    a("--num-grads", type=int, default=1024, help="oBERT: gradients in the empirical Fisher")
    a("--fisher-batch-size", type=int, help="oBERT: examples per Fisher gradient (default per task, SparseML's "
                                            "recipes: 8 for SQuAD, 16 for GLUE)")
    a("--block-size", type=block_size_arg, help="oBERT: Fisher block size, or 'row' for whole rows (matrix-free "
                                                "when larger than --num-grads); default 50, 32 for 4-block")
    a("--damp", type=float, default=1e-7, help="oBERT: Fisher dampening")
    a("--optimizer", default="adamw", choices=["adamw", "cram"],
      help="for dense fine-tuning (the teacher trained here, or a --sparsity 0 run): adamw, or cram (CrAM+, "
           "Peste et al. 2023: also the gradient at a compressed perturbation; two passes per step); the "
           "pruned student always uses adamw")
    a("--cram-rho", type=float, default=CRAM_RHO, help="CrAM: perturbation size rho in w + rho * grad")
    a("--cram-sparsities", type=sparsity_list, default=(0.5, 0.7, 0.9),
      help="CrAM: each step compresses to one of these, drawn at random (the paper's multi variant)")
    a("--oneshot", type=sparsity_list, metavar="S1,S2,...",
      help="no training: prune the fine-tuned --model to each sparsity in one step and evaluate (a table)")
    a("--recomputations", type=int, default=1, help="one-shot: split each step into N equal sparsity increments, "
                                                     "the Fisher recomputed before each (SparseML's num_recomputations)")
    a("--export", action="store_true", help="one-shot: also save each pruned model to OUT/oneshot-S")


def add_run_args(a):
    a("--out-dir", default="out", help="output folder")
    a("--resume", action="store_true", help="continue from the checkpoints in --out-dir")
    a("--overwrite", action="store_true", help="replace the earlier run in --out-dir (only ever deletes what a run "
                                                   "of train.py wrote there)")
    a("--keep-checkpoints", action="store_true", help="keep OUT/teacher and OUT/student checkpoints after a "
                                                      "successful export (deleted by default)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype; auto = bf16 on CUDA")
    a("--compile", action="store_true", help="torch.compile the model for training")
    a("--sparse-backprop", action="store_true", help="CPU: run the encoder's Linears that are >= 80%% sparse through "
                                                     "SparseProp's kernels where measured faster (training and "
                                                     "evaluation); needs `pip install sparseprop` (see sparse.py)")
    a("--no-group-by-length", action="store_true", help="batches in plain shuffled order, not grouped by length "
                                                        "(grouping pads less: more real tokens per second)")
    a("--max-steps", type=int, help="cap on optimizer steps per phase (schedules scale to it)")
    a("--limit-train", type=int, help="use only the first N training examples")
    a("--limit-eval", type=int, help="use only the first N evaluation examples")
    a("--holdout", type=int, help="also score every evaluated model on the last N examples of the training file, "
                                  "which are then never trained on (a larger evaluation set than dev)")
    a("--log-every", type=int, default=10, help="optimizer steps between log lines")
    a("--checkpoint-every", type=int, default=500, help="optimizer steps between checkpoints")
    a("--stop-after", type=int, help="save a checkpoint and exit after this step (simulates an interruption)")


def resolve(args):
    """Fill the task's defaults and check every input before any work; raises UsageError."""
    task = data.TASKS[args.task]
    if not 0.0 <= args.sparsity < 1.0:
        raise UsageError(f"--sparsity must be in [0, 1), got {args.sparsity}; pass e.g. 0.8 for 80%.")
    try:
        for s in args.oneshot or [args.sparsity if args.sparsity > 0 else 0.5]:
            prune.check_pattern(args.pattern, s)
    except ValueError as e:
        raise UsageError(str(e).replace("--sparsity", "--oneshot" if args.oneshot else "--sparsity") + ".")
    defaults = {k: getattr(task, k) for k in ("model", "lr", "batch_size", "epochs", "teacher_lr", "teacher_epochs",
                                              "warmup", "weight_decay", "fisher_batch_size")}
    if args.sparsity == 0:   # plain dense fine-tuning: the teacher's recipe
        defaults.update(lr=task.teacher_lr, epochs=task.teacher_epochs)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.lr_min = args.lr / 10 if args.lr_min is None else args.lr_min
    if args.block_size is None:
        args.block_size = 32 if args.pattern == "4-block" else 50
    args.kd = not args.no_kd and not args.oneshot and (args.sparsity > 0 or args.teacher is not None)
    check_numbers(args)
    check_combinations(args)
    try:       # load the weights once, fully, so that a corrupt file stops the run here
        args.model_folder = str(modeling.resolve_folder(args.model))
        cfg = modeling.load_config(Path(args.model_folder))
        args.max_length = check_max_length(args.max_length, task, cfg)
        if args.init_sparsity is None:
            args.init_sparsity = initial_sparsity(cfg.num_hidden_layers)
        student = load_model(args.model_folder, task, args.seed, "cpu", verbose=False)
        if args.oneshot:
            check_teacher(args.model_folder, task, "--oneshot prunes a fine-tuned model")
        if args.teacher:
            check_teacher(args.teacher, task, f"--teacher {args.teacher} must be fine-tuned on {task.name}")
            load_model(args.teacher, task, args.seed, "cpu", verbose=False)
        if prune.METHODS[args.method].needs_fisher and (args.sparsity > 0 or args.oneshot):
            check_fisher_memory(args, student)
    except modeling.CheckpointError as e:
        raise UsageError(str(e))
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder; pass the folder holding the task's files.")
    check_out_dir(args)
    return args


# (argument, test, what it must be, a good value)
NUMBER_RULES = [
    ("batch_size", lambda v: v >= 1, "at least 1", 16), ("grad_accum", lambda v: v >= 1, "at least 1", 1),
    ("checkpoint_every", lambda v: v >= 1, "at least 1", 500), ("log_every", lambda v: v >= 1, "at least 1", 10),
    ("num_grads", lambda v: v >= 1, "at least 1", 1024), ("fisher_batch_size", lambda v: v >= 1, "at least 1", 8),
    ("block_size", lambda v: v >= 1, "at least 1 (or row)", 50),
    ("max_steps", lambda v: v >= 1, "at least 1", 1000), ("limit_train", lambda v: v >= 1, "at least 1", 1000),
    ("limit_eval", lambda v: v >= 1, "at least 1", 1000), ("holdout", lambda v: v >= 1, "at least 1", 5000), ("stop_after", lambda v: v >= 1, "at least 1", 100),
    ("max_length", lambda v: v >= 16, "at least 16 (room for the special tokens and some text)", 128),
    ("epochs", lambda v: v > 0, "above 0", 3), ("teacher_epochs", lambda v: v > 0, "above 0", 3),
    ("lr", lambda v: 0 < v <= 1, "above 0 and at most 1", 8e-5),
    ("teacher_lr", lambda v: 0 < v <= 1, "above 0 and at most 1", 2e-5),
    ("lr_min", lambda v: 0 <= v <= 1, "between 0 and 1", 8e-6),
    ("weight_decay", lambda v: 0 <= v <= 1, "between 0 and 1", 0.01),
    ("clip", lambda v: v > 0, "above 0", 1.0), ("damp", lambda v: v > 0, "above 0", 1e-7),
    ("temperature", lambda v: v > 0, "above 0 (the paper's is 5.5)", 5.5),
    ("hardness", lambda v: 0 <= v <= 1, "between 0 and 1", 1.0),
    ("init_sparsity", lambda v: 0 <= v < 1, "in [0, 1)", 0.7), ("warmup", lambda v: 0 <= v < 1, "in [0, 1)", 0.05),
    ("warmup_steps", lambda v: v >= 0, "0 or more", 0), ("recomputations", lambda v: v >= 1, "at least 1", 8),
    ("cram_rho", lambda v: v > 0, "above 0", CRAM_RHO),
]


def check_combinations(args):
    """Flags that cannot go together, or that need something this machine lacks."""
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out-dir and --overwrite replaces it; pass one of them.")
    trains_a_dense_model = not args.oneshot and (args.sparsity == 0 or (args.kd and not args.teacher))
    if args.optimizer == "cram" and not trains_a_dense_model:
        raise UsageError("--optimizer cram fine-tunes dense models: the teacher this run trains, or a --sparsity 0 "
                         "run; here it would train nothing, so drop it or pass --sparsity 0.")
    if args.sparse_backprop:
        if args.compile:
            raise UsageError("--sparse-backprop runs SparseProp's kernels, which torch.compile cannot trace; "
                             "drop --compile or --sparse-backprop.")
        try:
            sparse.kernels()
        except ImportError as e:
            raise UsageError(str(e))


def check_numbers(args):
    """Every number on the command line, checked against what it means (None: not given, fine)."""
    for name, ok, what, good in NUMBER_RULES:
        value = getattr(args, name)
        if value is None or value == "row":        # not given; or --block-size row
            continue
        if not (math.isfinite(value) and ok(value)):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} is {value}, but it must be {what}; pass e.g. {flag} {good}.")
    if args.pattern == "4-block" and args.block_size != "row" and args.block_size % prune.GROUP:
        raise UsageError(f"--block-size {args.block_size} does not hold whole groups of 4 weights; pass a multiple of "
                         f"4 (the 4-block recipe's is 32).")


def check_fisher_memory(args, model):
    """oBERT's Fisher (d·B·4 bytes) is allocated at the first pruning step, maybe hours in: check now
    that it fits, on this process's share when torchrun shards it."""
    shapes = {n: p.shape for n, p in model.named_parameters()
              if n in prune.prunable_names(model, args.prune_embeddings, args.prune_head)}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpu = torch.cuda.is_available() and args.device != "cpu"
    need = prune.fisher_bytes(shapes, args.block_size, args.num_grads) / world
    if gpu:
        free = torch.cuda.mem_get_info(torch.device(args.device if args.device.startswith("cuda") else "cuda"))[0]
    else:                            # every rank of this machine shares its memory
        need *= int(os.environ.get("LOCAL_WORLD_SIZE", world))
        free = available_memory_bytes()
    if free is not None and need > 0.9 * free:
        d = sum(math.prod(s) for s in shapes.values())
        raise UsageError(f"oBERT's Fisher needs about {need / 1e9:.1f} GB here ({d / 1e6:.1f}M weights, --block-size "
                         f"{args.block_size}, --num-grads {args.num_grads}) but only {free / 1e9:.1f} GB are free; lower "
                         f"--block-size, shard it over more GPUs with torchrun, or use --method gmp.")


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_max_length(max_length, task, cfg) -> int:
    """Sequences must fit the position embeddings (RoBERTa's start at pad_token_id + 1): the task's own
    length is shortened to fit, an asked-for --max-length that does not fit is refused."""
    limit = cfg.max_position_embeddings - (cfg.pad_token_id + 1 if cfg.model_type == "roberta" else 0)
    if max_length is None:
        return min(task.max_length, limit)
    if max_length > limit:
        raise UsageError(f"--max-length {max_length} is longer than the model's {limit} positions; "
                         f"pass --max-length {limit} or less.")
    return max_length


def run_defining(arguments: dict) -> dict:
    return {k: v for k, v in arguments.items() if k not in NOT_RUN_DEFINING}


# -----------------------------------------------------------------------------
# The output folder: a user's files are never lost.

WRITTEN_BY = "prune-lm train.py"     # run.json's mark: this folder holds a run of ours


def files_in(out: Path) -> tuple[list, list]:
    """Everything under `out`, as paths relative to it: (the files a run writes, anything else).
    A symbolic link is never ours: deleting or writing through it could reach a user's files."""
    ours, foreign = [], []
    for folder, dirs, files in os.walk(out):
        rel = Path(folder).relative_to(out)
        foreign += [rel / name for name in dirs if (Path(folder) / name).is_symlink()]
        for name in files:
            oneshot = len(rel.parts) == 1 and rel.parts[0].startswith("oneshot-")     # --oneshot --export
            written = name.removesuffix(".tmp") in (RUN_FILES[("model",)] if oneshot else RUN_FILES.get(rel.parts, ()))
            (ours if written and not (Path(folder) / name).is_symlink() else foreign).append(rel / name)
    return sorted(ours), sorted(foreign)


def read_run_json(out: Path) -> dict | None:
    """The arguments of the run that `out` holds, or None if it holds none of ours."""
    try:
        before = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    legacy = isinstance(before, dict) and {"task", "sparsity", "method", "out_dir"} <= before.keys()
    return before if isinstance(before, dict) and (before.get("written_by") == WRITTEN_BY or legacy) else None


def differences(before: dict, args) -> list[str]:
    now = json.loads(json.dumps(run_defining(vars(args))))            # as run.json holds them: lists, not tuples
    return [f"--{k.replace('_', '-')} {before.get(k)} there, {now[k]} now" for k in now if before.get(k) != now[k]]


def check_out_dir(args):
    """What --out-dir holds decides what this run may do to it. Nothing is written or deleted here."""
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {out} is a file; pass a folder (new, empty, or an earlier run's).")
    ours, foreign = files_in(out) if out.is_dir() else ([], [])
    before = read_run_json(out)
    if before is None:
        if foreign or [p for p in ours if p.suffix != ".tmp"]:
            raise UsageError(f"--out-dir {out} holds files that train.py did not write (such as {(foreign + ours)[0]}); "
                             f"pass a new or empty folder.")
        return                                        # new, empty, or a run killed before its run.json: fresh
    if args.overwrite:
        if foreign:
            raise UsageError(f"--overwrite deletes only what train.py wrote, but {out} also holds {foreign[0]}; "
                             f"move it out, or pass another --out-dir.")
        for flag, path in (("--model", args.model_folder), ("--teacher", args.teacher), ("--data-dir", args.data_dir)):
            if path and Path(path).resolve().is_relative_to(out.resolve()):
                raise UsageError(f"--overwrite would delete {flag} {path}, which lies inside {out}; copy it out "
                                 f"first, or pass another --out-dir.")
        return
    changed = differences(before, args)
    if changed:
        fix = ("pass that run's arguments to resume it, or another --out-dir" if args.resume else
               "pass --resume with that run's arguments to continue it, --overwrite to replace it, or another --out-dir")
        raise UsageError(f"{out} holds a different run ({'; '.join(changed[:3])}); {fix}.")
    if not args.resume and [p for p in ours if p != Path("run.json")]:
        state = "finished" if (out / "results.json").is_file() else "not finished"
        raise UsageError(f"{out} already holds this run ({state}); pass --resume to continue it, or --overwrite "
                         f"to start it again.")


def prepare_out_dir(args, rt):
    """Rank 0: --overwrite deletes the earlier run's files (only those), the leftovers of an interrupted
    write go, and run.json records the arguments (once: a resumed run keeps its own); the others wait."""
    out = Path(args.out_dir)
    if rt.distributed:               # every rank has checked the folder (resolve) before rank 0 changes it
        torch.distributed.barrier()
    if rt.rank == 0:
        ours, _ = files_in(out) if out.is_dir() else ([], [])
        for rel in ours:
            if args.overwrite or rel.suffix == ".tmp":
                (out / rel).unlink()
        folders = sorted({p.parent for p in ours if p.parent != Path(".")}, key=lambda p: -len(p.parts))
        for rel in folders + [Path("teacher")]:                        # emptied folders of ours, deepest first
            if (out / rel).is_dir() and not any((out / rel).iterdir()):
                (out / rel).rmdir()
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite or read_run_json(out) is None:
            write_atomic(out / "run.json", json.dumps({"written_by": WRITTEN_BY, **vars(args)}, indent=1))
    if rt.distributed:
        torch.distributed.barrier()


def write_atomic(path: Path, text: str):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def delete_checkpoints(out: Path) -> int:
    """After a successful export: the phases' checkpoints go (unless --keep-checkpoints); bytes freed."""
    freed = 0
    for path in (out / "teacher" / "checkpoint.pt", out / "student" / "checkpoint.pt"):
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


def check_teacher(folder, task, role="a teacher"):
    """A fine-tuned model for this task: the right head (and label count) in its config."""
    cfg = modeling.load_config(modeling.resolve_folder(folder))
    arch = (cfg.extra.get("architectures") or ["?"])[0]
    want = modeling.ARCHITECTURES[task.kind]
    if not arch.endswith(want) or (task.kind == "classification" and cfg.num_labels != task.num_labels):
        raise UsageError(f"{role}, but {folder} is a {arch} with {cfg.num_labels} labels and {task.name} needs a "
                         f"...{want}" + (f" with {task.num_labels} labels" if task.kind == "classification" else "")
                         + f"; pass a model fine-tuned on {task.name}.")


# -----------------------------------------------------------------------------
# Pieces of one optimizer step.

def forward(net, batch):
    return net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def task_loss(task, out, batch):
    if task.kind == "question_answering":   # mean of the start and end cross-entropies
        return (F.cross_entropy(out[0].float(), batch["start_positions"]) +
                F.cross_entropy(out[1].float(), batch["end_positions"])) / 2
    return F.cross_entropy(out.float(), batch["labels"])


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def optimizer_for(model, lr, weight_decay):
    """AdamW; weight decay on weight matrices only (not on biases, LayerNorms). The fused kernel
    where torch has one: the same update in one pass, 7x faster than the loop on a 2-core CPU for
    MiniLM's 22.7M parameters (7.7 ms vs 56 ms a step)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=fused)


def optimizer_batches(loader, grad_accum, start, total):
    """The micro-batches of optimizer steps start, start + 1, ..., total - 1, grad_accum per step.

    Epoch e's order is fixed by the sampler's (seed, e), so the batches of step t are the same
    whether the run got there directly or resumed at t: epoch, offset = divmod(t, steps per epoch).
    A last partial step of an epoch (fewer than grad_accum micro-batches left) is dropped.
    """
    per_epoch = len(loader) // grad_accum
    step = start
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        data.set_epoch(loader, epoch)
        micro = itertools.islice(iter(loader), offset * grad_accum, per_epoch * grad_accum)
        for batches in itertools.islice(zip(*[micro] * grad_accum), total - step):   # grad_accum at a time
            yield batches
            step += 1


def forward_backward(net, teacher, batches, task, args, rt):
    """Gradients of the mean loss over the micro-batches: the task loss, or distillation from the
    teacher's soft targets (distill.py). Returns the loss and the real (unpadded) tokens seen."""
    total, tokens = 0.0, 0
    for batch in batches:
        batch = to_device(batch, rt.device)
        with rt.autocast():
            logits = forward(net, batch)
            loss = task_loss(task, logits, batch)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = forward(teacher, batch)
                span_mask = batch["attention_mask"].bool() if task.kind == "question_answering" else None
                kd = distill.kd_loss(logits, t_logits, args.temperature, span_mask)
                loss = distill.combine(loss, kd, args.hardness)
        (loss / len(batches)).backward()
        total += loss.item() / len(batches)
        tokens += int(batch["attention_mask"].sum())
    return total, tokens


def masked_gradients(model, masks, clip) -> torch.Tensor:
    """Zero the gradients of pruned weights, then clip all to norm `clip`; returns the norm before
    clipping (under DDP the same on every rank: it is computed from the averaged gradients)."""
    prune.mask_gradients(dict(model.named_parameters()), masks)
    return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)


def masked_step(opt, model, masks, lr):
    """AdamW at `lr`, with pruned weights held at exactly 0.

    A pruned weight gets no gradient, so AdamW's moments stay exactly 0 there (they were zeroed
    when it was pruned), its update is 0 / (0 + eps) = 0 and weight decay scales 0; re-applying
    the masks after the step makes that hold whatever the optimizer does.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    prune.apply_masks(dict(model.named_parameters()), masks)


def cram_forward_backward(net, model, teacher, batches, task, args, rt):
    """The gradients of one CrAM+ step (Peste, Vladu, Kurtic, Lampert & Alistarh, ICLR 2023), "multi":

        g = ∇L(w)                                  the gradient at the weights
        w̃ = w + ρ g                                a step up the loss (not normalised, as in CrAM)
        M = TopK_s(|w̃|)                            global magnitude masks of the encoder at w̃, s drawn
                                                   from --cram-sparsities every step
        h = ∇L(M ⊙ w̃) ⊙ M                          the gradient at the compressed point, kept weights only
        w ← w − η AdamW(g + h)                     `masked_step` with the sum, w restored first

    so the model learns weights whose compressed neighbours also have low loss: it can later be
    pruned in one shot. Two forward and backward passes and one global top-k over the encoder per
    step: on MiniLM on 2 CPU cores, 2.8-3.3 times AdamW's fine-tuning (307-325 s vs 98-109 s for the
    same 376 steps; evidence/results/cram-s*.json against teacher-s*.json, README)."""
    params = dict(model.named_parameters())
    loss, tokens = forward_backward(net, teacher, batches, task, args, rt)             # g, in .grad
    g = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    w = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n in g:
            params[n].add_(g[n], alpha=args.cram_rho)                                   # w̃ = w + ρ g
    encoder = prune.prunable_names(model)
    s = args.cram_sparsities[int(torch.randint(len(args.cram_sparsities), ()))]       # from the seeded torch RNG
    M = prune.magnitude_masks({n: params[n] for n in encoder}, s)
    prune.apply_masks(params, M)                                                       # M ⊙ w̃
    model.zero_grad(set_to_none=True)
    forward_backward(net, teacher, batches, task, args, rt)                            # ∇L(M ⊙ w̃)
    prune.mask_gradients(params, M)                                                    # h
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(w[n])                                                              # w restored
            if n in g:
                p.grad.add_(g[n])                                                      # g + h
    return loss, tokens


def all_finite(loss: float, grad_norm: torch.Tensor, rt) -> bool:
    """Whether this step's loss and gradients are finite on every rank (one flag, all-reduced)."""
    bad = torch.tensor([0.0 if math.isfinite(loss) and torch.isfinite(grad_norm) else 1.0], device=rt.device)
    if rt.distributed:
        torch.distributed.all_reduce(bad)
    return bad.item() == 0.0


# -----------------------------------------------------------------------------
# The pruning step and its Fisher.

def collect_fisher(model, names, masks, d, args, rt, owners, step) -> dict:
    """oBERT's inverse Fisher, sampled as SparseML samples it: --num-grads gradients of the task loss,
    each on a batch of --fisher-batch-size from a shuffled order of their own, with dropout off
    (eval mode) and the gradients of pruned weights masked. Under torchrun each rank computes its
    share of the gradients on its own data shard (through `model`, not DDP: nothing is averaged)
    and the owner of each tensor keeps its blocks (prune.EmpiricalFisher). Returns {name: F⁻¹}."""
    params = dict(model.named_parameters())
    fisher = prune.EmpiricalFisher({n: params[n].shape for n in names}, args.block_size, args.num_grads, args.damp,
                                   owners, rt.device)
    loader = data.make_loader(d.train, args.fisher_batch_size, True, args.seed + 1, d.pad_id, rt.distributed)
    batches = endless(loader, first_epoch=1000 * step)
    was_training = model.training
    model.eval()
    for i in range(fisher.rounds):
        grads = None
        if i < fisher.shares[fisher.rank]:                # this rank's share; then None, while others finish
            model.zero_grad(set_to_none=True)
            batch = to_device(next(batches), rt.device)
            with rt.autocast():
                loss = task_loss(d.task, forward(model, batch), batch)
            loss.backward()
            prune.mask_gradients(params, masks)
            grads = {n: params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]) for n in names}
        fisher.add(grads)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher.inverses()


def endless(loader, first_epoch):
    """The loader's batches without end, every pass in a new shuffled order (epochs first_epoch, +1, ...):
    with dropout off, a batch seen twice would add the same gradient twice."""
    for epoch in itertools.count(first_epoch):
        data.set_epoch(loader, epoch)
        yield from loader


def pruning_event(step, sparsity, model, masks, opt, d, args, rt, fisher=None) -> dict:
    """One scheduled pruning step: score the prunable weights with args.method, select the lowest
    to reach `sparsity` (never reviving one), let the method move the rest (oBERT's OBS update),
    and zero AdamW's moments at the pruned weights. Under torchrun each rank handles its share of
    the tensors and the results reach every rank (prune.prune_step). `fisher`: F⁻¹ already
    computed at these weights and masks (one-shot reuses the dense model's); else computed here."""
    method = prune.METHODS[args.method]
    params = dict(model.named_parameters())
    names = prune.prunable_names(model, args.prune_embeddings, args.prune_head)
    owners = fisher_owners(params, names, rt)
    if method.needs_fisher and fisher is None:
        fisher = collect_fisher(model, names, masks, d, args, rt, owners, step)
    masks = prune.prune_step({n: params[n] for n in names}, method, sparsity, args.scope, args.pattern, masks,
                             fisher, owners)
    del fisher
    if opt is not None:
        prune.zero_optimizer_state(opt, params, masks)
    prune.apply_masks(params, masks)
    if args.sparse_backprop:         # the index follows the masks: rebuilt here, and nowhere else
        chosen = sparse.route(model, masks, d.tokens_per_batch)
        log(rt, f"step {step}: sparsity {sparsity:.4f}, {list(chosen.values()).count('sparse')} of {len(chosen)} "
                f"matrices through SparseProp's kernels")
    return masks


def fisher_owners(params, names, rt) -> dict | None:
    """Under torchrun, which rank holds each tensor's Fisher blocks (balanced by size)."""
    return prune.shard_by_size({n: params[n].numel() for n in names}, rt.world) if rt.distributed else None


# -----------------------------------------------------------------------------
# Evaluation, checkpoints, logs.

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


def holdout_metric(model, d, batch_size, rt) -> dict | None:
    """The metric on the --holdout examples, or None without them."""
    return evaluate(model, d, batch_size, rt, holdout=True) if d.holdout_examples else None


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path, model, opt, masks, step, args, rt):
    """Everything a resumed run needs, written atomically (a temporary name, then a rename), by rank 0."""
    if rt.rank != 0:
        return
    tmp = Path(str(path) + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "masks": masks, "step": step,
                "rng": rng_state(), "args": vars(args), "kernels": kernel_choices(model)}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model, opt, device):
    """Restore model, optimizer and RNG in place; returns (masks, step, the kernel of each Linear)."""
    ck = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    set_rng_state(ck["rng"])
    return {n: m.to(device) for n, m in ck["masks"].items()}, ck["step"], ck.get("kernels", {})


def kernel_choices(model) -> dict:
    """Which Linears --sparse-backprop routed through SparseProp's kernels (sparse.route)."""
    return {f"{n}.weight": "sparse" for n, m in model.named_modules() if "forward" in vars(m)}


def log(rt, text):
    if rt.rank == 0:
        print(text, flush=True)


def log_record(rt, path, rec, total=None):
    """One JSON line appended to `path` (log.jsonl); training records also as a progress line."""
    if rt.rank != 0:
        return
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if total is not None:
        width, done = 24, int(24 * rec["step"] / total)
        line = (f"{rec['phase']:>7} [{'=' * done}{' ' * (width - done)}] {rec['step']}/{total} loss {rec['loss']:.4g} "
                f"lr {rec['lr']:.2e} sparsity {rec['sparsity']:.3f} {rec['tokens_per_s']:.0f} tok/s")
        print(line, end="\r" if sys.stdout.isatty() and rec["step"] < total else "\n", flush=True)


# -----------------------------------------------------------------------------
# The loop, used for the dense teacher and for the pruned student.

@dataclass
class Fitted:
    masks: dict
    tokens_per_s: float
    stopped: bool                  # --stop-after ended it early (its checkpoint is saved)
    seconds: float = 0.0           # wall time of this phase (in this process, if resumed)


def fit(phase, model, teacher, d, sched, args, rt) -> Fitted:
    """Train `model` for sched.total_steps optimizer steps (from its checkpoint with --resume),
    pruning it at the schedule's pruning steps: the dense teacher (target 0, AdamW or CrAM) or the
    pruned student. Returns its masks, its real tokens per second and wall time (of this process),
    and whether --stop-after ended it early."""
    out = Path(args.out_dir) / phase
    out.mkdir(parents=True, exist_ok=True)
    opt = optimizer_for(model, sched.lr_max, args.weight_decay)
    net = model                    # what forward and backward run through: DDP and torch.compile wrap it
    if rt.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    masks, step = {}, 0
    if args.resume and (out / "checkpoint.pt").is_file():
        masks, step, kernels = load_checkpoint(out / "checkpoint.pt", model, opt, rt.device)
        if args.sparse_backprop:
            sparse.follow(model, masks, kernels)
        log(rt, f"{phase}: resumed at step {step}")
    pruning_steps, cycle_ends = set(sched.pruning_steps()), {b for _, b in sched.cycles()[:-1]}
    cram = args.optimizer == "cram" and sched.target == 0          # CrAM trains dense models only
    log_file = out / "log.jsonl"
    t0, tokens, saved = time.time(), 0, step if step else None
    tokens_per_s = lambda: tokens * rt.world / max(time.time() - t0, 1e-9)
    model.train()
    for batches in optimizer_batches(d.loader, args.grad_accum, step, sched.total_steps):
        # 1. prune, at the schedule's pruning steps that ask for more than is in force: new masks,
        #    containing the old ones
        if step in pruning_steps and sched.sparsity_at(step) > sched.sparsity_at(step - 1):
            masks = pruning_event(step, sched.sparsity_at(step), model, masks, opt, d, args, rt)
        # 2. forward and backward over grad_accum micro-batches (distilled from the teacher, if any;
        #    with CrAM, again at a compressed perturbation of the weights)
        if cram:
            loss, n_tokens = cram_forward_backward(net, model, teacher, batches, d.task, args, rt)
        else:
            loss, n_tokens = forward_backward(net, teacher, batches, d.task, args, rt)
        tokens += n_tokens
        # 3. AdamW at the schedule's LR, pruned weights held at 0; a NaN or inf stops the run before it
        grad_norm = masked_gradients(model, masks, args.clip)
        if not all_finite(loss, grad_norm, rt):
            raise NonFinite(f"the {phase} diverged at step {step} (loss {loss:g}, gradient norm {float(grad_norm):g}), "
                            + (f"after the checkpoint of step {saved} in {out}" if saved else "before any checkpoint")
                            + "; nothing was exported: lower --lr, or check --temperature and the teacher")
        lr = sched.lr_at(step)
        masked_step(opt, model, masks, lr)
        # 4. with step + 1 steps done: log, evaluate at the end of a pruning cycle, checkpoint
        done = step + 1
        if done % args.log_every == 0 or done == sched.total_steps:
            log_record(rt, log_file, {"phase": phase, "step": done, "loss": loss, "lr": lr,
                                      "sparsity": round(sched.sparsity_at(step), 4),
                                      "tokens_per_s": round(tokens_per_s(), 1)}, sched.total_steps)
        if done in cycle_ends and rt.rank == 0:
            metric = evaluate(model, d, 2 * args.batch_size, rt)
            log(rt, f"{phase}: step {done} (end of a pruning cycle) eval {metric}")
            log_record(rt, log_file, {"phase": phase, "step": done, "sparsity": round(sched.sparsity_at(step), 4),
                                      "eval": metric})
        if done % args.checkpoint_every == 0 or done in (sched.total_steps, args.stop_after):
            save_checkpoint(out / "checkpoint.pt", model, opt, masks, done, args, rt)
            saved = done
        if done == args.stop_after:
            log(rt, f"{phase}: stopped after step {done} (--stop-after); continue with --resume")
            return Fitted(masks, tokens_per_s(), True, time.time() - t0)
        step += 1
    return Fitted(masks, tokens_per_s(), False, time.time() - t0)


# -----------------------------------------------------------------------------
# Setting up, the teacher, the export.

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
    train_ex = data.load_split(task, "train", args.data_dir)
    cut = len(train_ex) - (args.holdout or 0)
    if cut < 1:
        raise UsageError(f"--holdout {args.holdout} leaves no training examples ({task.name} has {len(train_ex)}); "
                         f"pass a smaller --holdout.")
    train_ex, holdout_ex = train_ex[:cut][: args.limit_train], train_ex[cut:]
    eval_ex = data.load_split(task, "validation", args.data_dir)[: args.limit_eval]
    train_f = data.encode(task, train_ex, tok, args.max_length)
    pad = data.pad_id(tok)
    loader = data.make_loader(train_f, args.batch_size, True, args.seed, pad, rt.distributed,
                              group_by_length=not args.no_group_by_length)
    per_example = sum(data.feature_length(f) * (len(f["input_ids"]) if task.kind == "multiple_choice" else 1)
                      for f in train_f) / max(len(train_f), 1)
    return Data(task, train_f, loader, eval_ex, data.encode(task, eval_ex, tok, args.max_length), pad,
                max(1, round(per_example * args.batch_size)), holdout_ex, data.encode(task, holdout_ex, tok, args.max_length))


def phase_steps(epochs, args, d) -> int:
    """Optimizer steps of a phase: epochs x steps per epoch, at least 1, at most --max-steps."""
    n = max(1, math.ceil(epochs * (len(d.loader) // args.grad_accum)))
    return min(n, args.max_steps) if args.max_steps else n


def warmup_steps(args, total) -> int:
    return args.warmup_steps if args.warmup_steps is not None else round(args.warmup * total)


def load_model(folder, task, seed, device, verbose=True):
    torch.manual_seed(seed)    # a new task head starts from the same init on every rank
    m = modeling.from_pretrained(folder, head=task.kind, verbose=verbose,
                                 num_labels=task.num_labels if task.kind == "classification" else None)
    return m.to(device).train()


def get_teacher(args, d, rt):
    """The dense teacher: --teacher, or this folder's OUT/teacher/model, or one fine-tuned now.
    Returns (teacher, its scores for results.json), or (None, None) if --stop-after stopped its training."""
    folder = Path(args.teacher) if args.teacher else Path(args.out_dir) / "teacher" / "model"
    if not args.teacher and not (folder / "config.json").is_file():
        log(rt, "training the dense teacher first")
        t = load_model(args.model_folder, d.task, args.seed, rt.device)
        total = phase_steps(args.teacher_epochs, args, d)
        sched = Schedule(total, 0.0, lr_max=args.teacher_lr, lr_min=0.0, warmup_steps=warmup_steps(args, total))
        if fit("teacher", t, None, d, sched, args, rt).stopped:
            return None, None
        if rt.rank == 0:
            save_model(t, args.model_folder, folder)
        if rt.distributed:
            torch.distributed.barrier()
        del t
    teacher = load_model(folder, d.task, args.seed, rt.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    scores = {"teacher_metric": None}
    if rt.rank == 0:
        scores = {"teacher_metric": evaluate(teacher, d, 2 * args.batch_size, rt),
                  "teacher_holdout_metric": holdout_metric(teacher, d, 2 * args.batch_size, rt)}
    log(rt, f"teacher {folder}: {scores['teacher_metric']}")
    return teacher, scores


def peak_memory_bytes(device) -> int:
    """This process's peak: resident memory on a CPU, the allocator's peak on a GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux reports KiB


def save_model(model, source, folder):
    """save_pretrained, and the tokenizer files of the model it started from: a complete model folder."""
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, Path(folder) / name)


def masks_equal_across_ranks(masks, device) -> bool:
    """Every rank's masks, packed to one fingerprint (kept count and index-weighted sum), compared."""
    fp = torch.zeros(2, dtype=torch.float64, device=device)
    for m in masks.values():
        idx = torch.arange(m.numel(), device=device, dtype=torch.float64)
        fp += torch.stack([m.sum().double(), (m.flatten().double() * idx).sum()])
    everyone = [torch.zeros_like(fp) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(everyone, fp)
    return all(torch.equal(everyone[0], f) for f in everyone)


def export(student, fitted, teacher_scores, d, args, rt, start):
    """Rank 0: evaluate; OUT/model (with the tokenizer files), results.json, sparsity_report.txt."""
    same_masks = masks_equal_across_ranks(fitted.masks, rt.device) if rt.distributed else None
    if rt.rank != 0:
        return
    out = Path(args.out_dir)
    bad = [n for n, p in student.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFinite(f"the student's {bad[0]} holds NaN or inf after training; nothing was exported: lower --lr")
    metric = evaluate(student, d, 2 * args.batch_size, rt)
    save_model(student, args.model_folder, out / "model")
    report = prune.sparsity_report(student, fitted.masks)
    results = {"task": args.task, "metric": metric, "holdout_metric": holdout_metric(student, d, 2 * args.batch_size, rt),
               **teacher_scores,
               "sparsity": prune.sparsity_by_component(student), "target_sparsity": args.sparsity,
               "tokens_per_s": round(fitted.tokens_per_s, 1), "student_seconds": round(fitted.seconds, 1),
               "wall_time_s": round(time.time() - start, 1),
               "device": str(rt.device), "dtype": str(rt.dtype).replace("torch.", ""), "world_size": rt.world,
               "peak_memory_gb": round(peak_memory_bytes(rt.device) / 1e9, 3),
               "masks_equal_across_ranks": same_masks, "args": vars(args)}
    write_atomic(out / "sparsity_report.txt", report + "\n")
    write_atomic(out / "results.json", json.dumps(results, indent=1))    # last: its presence means finished
    log(rt, f"{args.task}: {metric}; encoder sparsity {results['sparsity']['encoder']:.4f}; exported to {out / 'model'}")
    if not args.keep_checkpoints:
        freed = delete_checkpoints(out)
        if freed:
            log(rt, f"deleted the checkpoints ({freed / 1e6:.0f} MB); pass --keep-checkpoints to keep them")


# -----------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    try:
        args = resolve(args)
    except UsageError as e:
        fail(e)
    if args.resume and (Path(args.out_dir) / "results.json").is_file():
        return already_finished(args)
    rt = start_runtime(args)
    if args.sparse_backprop and rt.device.type != "cpu":
        fail(f"--sparse-backprop runs SparseProp's CPU kernels, but the device is {rt.device}; pass --device cpu, "
             f"or on a GPU prune to --pattern 2:4 (see sparse.py).", rt)
    try:   # the data is read and encoded, and the schedule checked, before anything is written
        d = load_data(args, data.TASKS[args.task], rt)
        sched = None if args.oneshot else student_schedule(args, d)
    except (UsageError, data.DataError, modeling.CheckpointError) as e:
        fail(e, rt)
    prepare_out_dir(args, rt)
    start = time.time()
    if args.oneshot:
        oneshot(args, d, rt)
        return finish(rt)
    try:
        # a) the dense teacher, fine-tuned here unless given
        teacher, teacher_scores = None, {"teacher_metric": None}
        if args.kd:
            teacher, teacher_scores = get_teacher(args, d, rt)
            if teacher is None:                          # --stop-after, while training the teacher
                return finish(rt)
        # b) the student, pruned gradually while it learns (from the teacher)
        student = load_model(args.model_folder, d.task, args.seed, rt.device)
        fitted = fit("student", student, teacher, d, sched, args, rt)
        # c) evaluate and export
        if not fitted.stopped:
            export(student, fitted, teacher_scores, d, args, rt, start)
    except NonFinite as e:
        if rt.rank == 0:
            print(f"train.py: {e}.", file=sys.stderr)
        finish(rt)
        sys.exit(2)
    finish(rt)


def oneshot(args, d, rt):
    """--oneshot: the fine-tuned --model pruned to each sparsity in one step, with no training, and
    evaluated: encoder only, global, the same pruning step as gradual pruning (`pruning_event`).
    With --recomputations N the step is N equal sparsity increments, s * i / N for i = 1..N, each
    scoring with a Fisher recomputed at the weights (and masks) the previous increment left; with
    N = 1 every sparsity starts from the same dense weights, so oBERT's Fisher is computed once."""
    out = Path(args.out_dir)
    dense = load_model(args.model_folder, d.task, args.seed, rt.device).eval()
    metric = evaluate(dense, d, 2 * args.batch_size, rt) if rt.rank == 0 else None
    rows = [{"sparsity": 0.0, "encoder_sparsity": prune.sparsity_by_component(dense)["encoder"], "metric": metric,
             "holdout_metric": holdout_metric(dense, d, 2 * args.batch_size, rt) if rt.rank == 0 else None,
             "seconds": 0.0}]
    fisher, fisher_seconds = None, 0.0
    if prune.METHODS[args.method].needs_fisher and args.recomputations == 1:
        # every sparsity prunes the same dense weights, so one F⁻¹ (at step 1, the batches that
        # pruning_event(1, ...) would draw) serves them all: the result is the same, at 1/len(oneshot) the cost
        t0, params = time.time(), dict(dense.named_parameters())
        names = prune.prunable_names(dense, args.prune_embeddings, args.prune_head)
        fisher = collect_fisher(dense, names, {}, d, args, rt, fisher_owners(params, names, rt), 1)
        fisher_seconds = round(time.time() - t0, 1)
        log(rt, f"one-shot: the dense model's Fisher, {args.num_grads} gradients ({fisher_seconds:.0f} s)")
    for s in args.oneshot:
        model, masks, t0 = copy.deepcopy(dense), {}, time.time()
        for i in range(1, args.recomputations + 1):
            masks = pruning_event(i, s * i / args.recomputations, model, masks, None, d, args, rt, fisher)
        seconds = time.time() - t0
        if rt.rank == 0:
            rows.append({"sparsity": s, "encoder_sparsity": prune.sparsity_by_component(model)["encoder"],
                         "metric": evaluate(model, d, 2 * args.batch_size, rt),
                         "holdout_metric": holdout_metric(model, d, 2 * args.batch_size, rt), "seconds": round(seconds, 1)})
            log(rt, f"one-shot {s:g}: {rows[-1]['metric']} ({seconds:.0f} s)")
            if args.export:
                save_model(model, args.model_folder, out / f"oneshot-{s:g}")
        del model
    if rt.rank == 0:
        title = (f"one-shot {args.method}, {args.recomputations} recomputation(s), {args.model}, "
                 f"{args.task} validation" + (f"; one Fisher for all, {fisher_seconds:.0f} s" if fisher else ""))
        lines = [title, f"{'sparsity':>8} {'encoder':>8} " + " ".join(f"{k:>12}" for k in rows[0]["metric"])
                 + f" {'seconds':>8}"]
        lines += [f"{r['sparsity']:8.2f} {r['encoder_sparsity']:8.4f} " + " ".join(f"{v:12.2f}" for v in
                  r["metric"].values()) + f" {r['seconds']:8.1f}" for r in rows]
        print("\n".join(lines), flush=True)
        write_atomic(out / "results.json", json.dumps({"task": args.task, "oneshot": rows, "fisher_seconds": fisher_seconds,
                                                       "table": lines, "args": vars(args)}, indent=1))


def student_schedule(args, d) -> Schedule:
    """The student's schedule, refused up front if the run is too short to end at its target."""
    if len(d.loader) // args.grad_accum == 0:
        raise UsageError("fewer training examples than one optimizer step needs; lower --batch-size or --grad-accum.")
    total = phase_steps(args.epochs, args, d)
    sched = Schedule(total, args.sparsity, args.init_sparsity, args.schedule, args.lr, args.lr_min,
                     warmup_steps(args, total))
    if not sched.reaches_target():
        raise UsageError(f"the student's {total} optimizer steps are too few for the schedule to reach sparsity "
                         f"{args.sparsity:g} (its last pruning step is step {sched.t_end}); raise --epochs or "
                         f"--max-steps to give it at least {sched.min_steps()} steps.")
    return sched


def already_finished(args):
    """--resume on a finished run: nothing to train; say where its results are (and drop its checkpoints)."""
    if int(os.environ.get("RANK", "0")) != 0:        # under torchrun: rank 0 speaks and deletes
        return
    out = Path(args.out_dir)
    freed = 0 if args.keep_checkpoints else delete_checkpoints(out)
    print(f"{out} holds this run, finished: {out / 'results.json'}"
          + (f" (deleted its checkpoints, {freed / 1e6:.0f} MB)" if freed else ""), flush=True)


def fail(message, rt=None):
    print(f"train.py: {message}", file=sys.stderr)
    if rt is not None and rt.distributed:          # every rank checked the same inputs and stops here too
        torch.distributed.destroy_process_group()
    sys.exit(2)


def finish(rt):
    """Under torchrun: wait until every rank is done (rank 0 evaluates and exports), then tear down."""
    if rt.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
