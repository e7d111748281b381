"""
The command line: every flag with its help and its default from the papers, and every check of
the arguments that can run before anything is written.

`parse_args` builds train.py's three groups of flags (the task and the recipe; pruning methods,
CrAM and one-shot; running). Flags left unset take the task's defaults from its record in
data.py (each with its source there), the first jump of the schedule its default by depth
(schedule.py), CrAM's ρ and sparsities theirs (cram.py). `resolve` then checks everything a run
could trip over later, and raises `UsageError` with one sentence naming the problem and the
fix: every number against what it means (`NUMBER_RULES`), flags that cannot go together, the
weights (loaded once, fully: a truncated file stops the run here, not hours in), the teacher's
head, oBERT's Fisher memory, the sequence length against the model's positions, and the output
folder (rundir.py's `check_out_dir`). Nothing is written or deleted here: train.py prepares the
folder only after `resolve` has passed.

How it connects: train.py's `main` calls `parse_args` and `resolve` (then, once the data is read,
runtime.py checks what needs it: the phases' steps); the method choices come from prune.py's
`METHODS` (each with its scope and the statistic it reads, whose flags apply only to it:
`STATISTICS`), the Fisher's size from obert.py's `fisher_bytes`, the config's checks from model.py,
SparseProp's availability from sparse_backprop.py, and the output folder's rules from rundir.py.
"""
import argparse
import math
import os
import shutil
from pathlib import Path

import torch

import cram
import data
import distill
import model as modeling
import obert
import prune
import sparse_inference
import sparse_backprop
from rundir import UsageError, check_out_dir, read_checkpoint
from schedule import initial_sparsity

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
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise argparse.ArgumentTypeError(f"{text!r} lists {twice:g} twice; pass each sparsity once")
    return values


def block_size_arg(text):
    if text == "row":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"block size must be a whole number or 'row', not {text!r}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default but "off"; a flag whose default comes from the task's record (None) lists
    the records' values instead (`per_task`), not "(default: None)"."""
    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def per_task(field: str) -> str:
    """'per task: 1e-05 (csqa, winogrande), 5e-05 (sst2, ...)': the defaults of data.py's Task records."""
    groups = {}
    for name, task in data.TASKS.items():
        value = getattr(task, field)
        groups.setdefault(f"{value:g}" if isinstance(value, float) else str(value), []).append(name)
    return "per task: " + ", ".join(f"{v} ({', '.join(names)})" for v, names in groups.items())


def parser() -> Parser:
    ap = Parser(prog="train.py", description="Prune a BERT-family model during fine-tuning (Kurtic et al. 2024).",
                formatter_class=HelpFormatter)
    add_recipe_args(ap.add_argument_group("the task and the recipe").add_argument)
    add_method_args(ap.add_argument_group("pruning methods, CrAM and one-shot").add_argument)
    add_run_args(ap.add_argument_group("running: output, devices, speed, limits").add_argument)
    return ap


def parse_args(argv=None):
    """The arguments, and in args.given the flags the user typed (every flag typed must apply:
    `check_flags_apply`), read by a second parse in which nothing has a default."""
    args = parser().parse_args(argv)
    bare = parser()
    for action in bare._actions:
        action.default, action.required = argparse.SUPPRESS, False
    args.given = sorted(vars(bare.parse_args(argv)))
    return args


def add_recipe_args(a):
    a("--task", required=True, choices=list(data.TASKS), metavar="TASK", help=f"one of {', '.join(data.TASKS)}")
    a("--sparsity", type=float, default=0.8, help="target encoder sparsity in [0, 1); 0 = dense fine-tuning")
    a("--model", help=f"pretrained model: hub id or local folder; {per_task('model')}")
    a("--teacher", help="fine-tuned dense teacher folder; without it one is trained first")
    a("--data-dir", help="folder with the released data files; without it the hub is used")
    a("--pattern", default="unstructured", help="unstructured, 4-block, or N:M such as 2:4")
    a("--scope", choices=["global", "layer", "row"], help="which weights compete: all of them (global), those of "
      "one matrix (layer), or those of one output row (row); default: the criterion's own (global for gmp, this "
      "recipe's, and obert; layer for movement and row for wanda, their papers')")
    a("--init-sparsity", type=float, help="first jump of the accelerated schedule (default by depth: 0.7 for 12 "
                                          "layers or more, 0.3 below, as the oBERT recipes; schedule.py)")
    a("--schedule", default="accelerated", choices=["accelerated", "cubic"], help="cubic = naive, from zero")
    a("--epochs", type=float, help=f"student epochs; {per_task('epochs')}")
    a("--lr", type=float, help=f"peak LR of the student, decayed to --lr-min each cycle; {per_task('lr')}")
    a("--lr-min", type=float, help="LR at the end of each cycle (default lr / 10)")
    a("--teacher-epochs", type=float, help=f"dense teacher epochs; {per_task('teacher_epochs')}")
    a("--teacher-lr", type=float, help=f"dense teacher LR; {per_task('teacher_lr')}")
    a("--warmup", type=float, help=f"linear LR warm-up, as a fraction of each phase's steps; {per_task('warmup')}")
    a("--warmup-steps", type=int, help="linear LR warm-up in optimizer steps (overrides --warmup)")
    a("--weight-decay", type=float, help=f"AdamW weight decay, none on biases and LayerNorms; {per_task('weight_decay')}")
    a("--clip", type=float, default=1.0, help="gradient norm clipping")
    a("--batch-size", type=int, help=f"examples per micro-batch per process; {per_task('batch_size')}")
    a("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--max-length", type=int, help=f"max tokens per sequence; {per_task('max_length')}")
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
    a("--fisher-batch-size", type=int, help=f"oBERT: examples per Fisher gradient (SparseML's recipes: 8 for SQuAD, 16 for GLUE); "
                                            f"{per_task('fisher_batch_size')}")
    a("--block-size", type=block_size_arg, help="oBERT: Fisher block size, or 'row' for whole rows (matrix-free "
                                                "when larger than --num-grads); default 50, 32 for 4-block")
    a("--damp", type=float, default=1e-7, help="oBERT: Fisher dampening")
    a("--calibration-size", type=int, help="Wanda: training examples whose inputs' norms score the weights at each "
                                           "pruning step (default 128, the paper's)")
    a("--optimizer", default="adamw", choices=["adamw", "cram"],
      help="for dense fine-tuning (the teacher trained here, or a --sparsity 0 run): adamw, or cram (CrAM+, "
           "Peste et al. 2023: also the gradient at a compressed perturbation; two passes per step); the "
           "pruned student always uses adamw")
    a("--cram-rho", type=float, default=cram.RHO, help="CrAM: perturbation size rho in w + rho * grad")
    a("--cram-sparsities", type=sparsity_list, default=cram.SPARSITIES,
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
    a("--sparse-backprop", action="store_true", help="CPU: train the encoder's Linears that are >= 80%% sparse "
                                                     "through SparseProp's kernels where measured faster, and evaluate "
                                                     "them through this project's (sparse_kernel.cpp); needs `pip "
                                                     "install sparseprop` (see sparse_backprop.py)")
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


def distils(args) -> bool:
    """Whether the run trains a student from a teacher: a pruning run, or one given --teacher, unless
    --no-kd or --oneshot (which trains nothing)."""
    return not args.no_kd and not args.oneshot and (args.sparsity > 0 or args.teacher is not None)


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
    method = prune.METHODS[args.method]
    args.scope = args.scope or method.scope
    if args.calibration_size is None and method.reads == "input_norms":
        args.calibration_size = CALIBRATION_SIZE
    args.kd = distils(args)
    check_numbers(args)
    check_flags_apply(args)
    check_combinations(args)
    check_device(args)
    try:       # load the weights once, fully, so that a corrupt file stops the run here
        args.model_folder = str(modeling.resolve_folder(args.model))
        cfg = modeling.load_config(Path(args.model_folder))
        args.max_length = check_max_length(args.max_length, task, cfg)
        if args.init_sparsity is None:
            args.init_sparsity = initial_sparsity(cfg.num_hidden_layers)
        student = load_weights(args.model_folder, task)
        check_vocabulary(args.model_folder, cfg)
        if args.oneshot:
            check_teacher(args.model_folder, task, "--oneshot prunes a fine-tuned model")
        if args.teacher:
            check_teacher(args.teacher, task, f"--teacher {args.teacher} must be fine-tuned on {task.name}")
            load_weights(args.teacher, task)
            check_vocabulary(args.teacher, modeling.load_config(modeling.resolve_folder(args.teacher)))
            check_same_vocabulary(args.model_folder, args.teacher)
            check_max_length(args.max_length, task, modeling.load_config(modeling.resolve_folder(args.teacher)),
                             f"--teacher {args.teacher}")
        check_groups(args, student)
        check_keeps_some(args, student)
        args.notes = notes_on(args, student)
        if _reads(args, "fisher"):
            check_fisher_memory(args, student)
        if args.resume:
            check_resumable(args, task)
    except (modeling.CheckpointError, data.DataError) as e:
        raise UsageError(str(e))
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder; pass the folder holding the task's files.")
    check_out_dir(args)
    check_disk(args, student)
    return args


CALIBRATION_SIZE = 128        # Wanda's calibration examples (the paper's 128 sequences)

# (argument, test, what it must be, a good value)
NUMBER_RULES = [
    ("batch_size", lambda v: v >= 1, "at least 1", 16), ("grad_accum", lambda v: v >= 1, "at least 1", 1),
    ("checkpoint_every", lambda v: v >= 1, "at least 1", 500), ("log_every", lambda v: v >= 1, "at least 1", 10),
    ("num_grads", lambda v: v >= 1, "at least 1", 1024), ("fisher_batch_size", lambda v: v >= 1, "at least 1", 8),
    ("block_size", lambda v: v >= 1, "at least 1 (or row)", 50), ("calibration_size", lambda v: v >= 1, "at least 1", CALIBRATION_SIZE),
    ("max_steps", lambda v: v >= 1, "at least 1", 1000), ("limit_train", lambda v: v >= 1, "at least 1", 1000),
    ("limit_eval", lambda v: v >= 1, "at least 1", 1000), ("holdout", lambda v: v >= 1, "at least 1", 5000), ("stop_after", lambda v: v >= 1, "at least 1", 100),
    ("max_length", lambda v: v >= 16, "at least 16 (room for the special tokens and some text)", 128),
    ("epochs", lambda v: v > 0, "above 0", 3), ("teacher_epochs", lambda v: v > 0, "above 0", 3),
    ("lr", lambda v: 0 < v <= 1, "above 0 and at most 1", 8e-5),
    ("teacher_lr", lambda v: 0 < v <= 1, "above 0 and at most 1", 2e-5),
    ("lr_min", lambda v: 0 <= v <= 1, "between 0 and 1", 8e-6),
    ("weight_decay", lambda v: 0 <= v <= 1, "between 0 and 1", 0.01),
    ("clip", lambda v: v > 0, "above 0", 1.0), ("damp", lambda v: v > 0, "above 0", 1e-7),
    ("temperature", lambda v: v >= 0.5, "at least 0.5 (below it a confident teacher's soft targets are one-hot in "
                                       "float32 and the KD loss vanishes; the paper's is 5.5)", 5.5),
    ("seed", lambda v: 0 <= v < 2 ** 32, "in [0, 2**32) (the samplers derive their seeds from it)", 42),
    ("hardness", lambda v: 0 <= v <= 1, "between 0 and 1", 1.0),
    ("init_sparsity", lambda v: 0 <= v < 1, "in [0, 1)", 0.7), ("warmup", lambda v: 0 <= v < 1, "in [0, 1)", 0.05),
    ("warmup_steps", lambda v: v >= 0, "0 or more", 0), ("recomputations", lambda v: v >= 1, "at least 1", 8),
    ("cram_rho", lambda v: v > 0, "above 0", cram.RHO),
]


# Flags that only some runs read. (flags, whether they apply to this run, why not, naming the flag that
# decides): a flag the user typed either applies, or the run stops with that sentence. First match wins.
def _dense(a): return not a.oneshot and a.sparsity == 0
def _reads(a, kind): return prune.METHODS[a.method].reads == kind and not _dense(a)
def _reads_data(a): return prune.gathered(prune.METHODS[a.method]) and not _dense(a)   # Fisher, input norms
def _no_kd_why(a): return ("--no-kd trains without a teacher" if a.no_kd else "--oneshot trains nothing" if a.oneshot
                           else "a --sparsity 0 run distils only from a --teacher")


FLAG_RULES = [
    (("epochs", "lr", "lr_min", "warmup", "warmup_steps", "weight_decay", "clip", "grad_accum", "schedule",
      "init_sparsity", "sparsity", "optimizer", "checkpoint_every", "stop_after", "max_steps", "compile",
      "no_group_by_length", "log_every", "keep_checkpoints", "resume", "teacher", "teacher_epochs", "teacher_lr",
      "temperature", "hardness", "no_kd", "cram_rho", "cram_sparsities"),
     lambda a: not a.oneshot, lambda a: "--oneshot prunes the fine-tuned --model without training"),
    (("recomputations", "export"), lambda a: bool(a.oneshot), lambda a: "it belongs to --oneshot"),
    (("method", "pattern", "scope", "init_sparsity", "schedule", "prune_embeddings", "prune_head", "sparse_backprop"),
     lambda a: not _dense(a), lambda a: "a --sparsity 0 run prunes nothing"),
    (("temperature", "hardness"), lambda a: a.kd, _no_kd_why),
    (("teacher",), lambda a: not a.no_kd, lambda a: "--no-kd trains without a teacher"),
    (("teacher_epochs", "teacher_lr"), lambda a: a.kd and not a.teacher and a.sparsity > 0,
     lambda a: ("--teacher is already fine-tuned" if a.teacher else "--no-kd trains no teacher" if a.no_kd else
                "a --sparsity 0 run is itself the dense fine-tuning: set it with --lr and --epochs")),
    (("init_sparsity",), lambda a: a.schedule == "accelerated", lambda a: "the naive --schedule cubic starts from 0"),
    *[(stat.flags, lambda a, kind=kind: _reads(a, kind),
       lambda a, kind=kind: f"--method {a.method} reads no {prune.STATISTICS[kind].label}" if not _dense(a) else
       "a --sparsity 0 run prunes nothing") for kind, stat in prune.STATISTICS.items() if stat.flags],
    (("cram_rho", "cram_sparsities"), lambda a: a.optimizer == "cram", lambda a: "it tunes --optimizer cram"),
    (("warmup",), lambda a: "warmup_steps" not in a.given, lambda a: "--warmup-steps sets the warm-up instead"),
    (("scope",), lambda a: prune.parse_nm(a.pattern) is None,
     lambda a: f"--pattern {a.pattern} keeps the same share of every matrix whatever the scope"),
    (("recomputations",), _reads_data, lambda a: f"--method {a.method}'s scores read no data that pruning "
                                                 f"changes, so N recomputations give the masks of one"),
    (("seed",), lambda a: not a.oneshot or _reads_data(a),
     lambda a: f"--oneshot --method {a.method} draws nothing at random"),
    (("limit_train",), lambda a: not a.oneshot or _reads_data(a) or a.sparse_backprop,
     lambda a: f"--oneshot --method {a.method} reads no training data"),
]

# The flags that apply to every run (the rest are in FLAG_RULES): a test checks that each flag of the
# parser is in one or the other, so a new flag cannot be silently ignored by forgetting it here.
ALWAYS_APPLIES = {"task", "model", "data_dir", "batch_size", "max_length", "oneshot", "out_dir", "overwrite", "device",
                  "dtype", "limit_eval", "holdout"}


def check_flags_apply(args):
    """No flag the user typed is silently ignored: each applies to this kind of run, or one sentence
    names the flag (or mode) that makes it do nothing."""
    for flags, applies, why in FLAG_RULES:
        for name in flags:
            if name in args.given and not applies(args):
                raise UsageError(f"--{name.replace('_', '-')} does nothing in this run: {why(args)}; drop it.")


def check_device(args):
    """--device and --dtype name something this machine has: checked before anything is written."""
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                              else args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device} is not a device name; pass auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: train.py runs on cpu or cuda; pass --device cpu or cuda.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}, but this machine has no CUDA device that torch can use; pass "
                         f"--device cpu (or auto).")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {args.device}, but this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"pass --device cuda:0 .. cuda:{torch.cuda.device_count() - 1}.")
    if args.dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--dtype bfloat16, but {torch.cuda.get_device_name(device)} has no bfloat16; pass --dtype "
                         f"float32.")
    if args.sparse_backprop and device.type != "cpu":
        raise UsageError(f"--sparse-backprop runs SparseProp's CPU kernels, but the device is {device}; pass --device "
                         f"cpu, or on a GPU prune to --pattern 2:4 (see sparse.py).")


def check_disk(args, model):
    """The output folder can be written, and its disk holds what the run will write: two checkpoints
    during an atomic save (weights, AdamW's two moments, masks), the exported model, and the teacher's
    checkpoint and model when it is trained here; --oneshot --export writes one model per sparsity."""
    out = Path(args.out_dir).absolute()
    nearest = next(p for p in (out, *out.parents) if p.exists() or p.is_symlink())
    if not nearest.is_dir():                                    # a file (or a dangling link) where a folder must be
        raise UsageError(f"--out-dir {args.out_dir} cannot be made: {nearest} is not a folder; pass an --out-dir whose "
                         f"parent folders exist or can be created.")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UsageError(f"--out-dir {args.out_dir} cannot be written ({nearest} is not writable); pass a folder "
                         f"you can write to.")
    weights = 4 * sum(p.numel() for p in model.parameters())
    checkpoint = 3 * weights + weights // 4
    if args.oneshot:
        need = weights * len(args.oneshot) if args.export else 0
    else:
        need = 2 * checkpoint + weights + ((checkpoint + weights) if args.kd and not args.teacher else 0)
    free = shutil.disk_usage(nearest).free
    if need > free:
        raise UsageError(f"--out-dir {args.out_dir}'s disk has {free / 1e9:.2f} GB free, but this run writes about "
                         f"{need / 1e9:.2f} GB (checkpoints and models of {weights / 4e6:.1f}M parameters); free some "
                         f"space or pass another --out-dir.")


def check_vocabulary(folder, cfg):
    """Every token id the tokenizer can give has a row in the word embeddings."""
    size = data.load_tokenizer(folder).get_vocab_size(with_added_tokens=True)
    if size > cfg.vocab_size:
        raise UsageError(f"{folder}'s tokenizer has {size} tokens but its config.json's vocab_size is "
                         f"{cfg.vocab_size}; pass a model folder whose tokenizer and weights belong together.")


def check_same_vocabulary(student, teacher):
    """The teacher reads the student's token ids: both tokenizers must map every token to the same id."""
    a, b = data.load_tokenizer(student), data.load_tokenizer(teacher)
    if a.get_vocab(with_added_tokens=True) != b.get_vocab(with_added_tokens=True):
        raise UsageError(f"--teacher {teacher} has another vocabulary than --model {student} ({b.get_vocab_size()} "
                         f"vs {a.get_vocab_size()} tokens), so it would read the student's token ids wrongly; pass a "
                         f"teacher fine-tuned from the same pretrained model.")


def check_resumable(args, task):
    """--resume reads the checkpoints and the teacher this folder holds: each is read now, so that a
    truncated file stops the run here, with its name, and not after the folder has changed."""
    out = Path(args.out_dir)
    for phase in ("teacher", "student"):
        if (out / phase / "checkpoint.pt").is_file():
            step = read_checkpoint(out / phase / "checkpoint.pt", mmap=True)["step"]
            if phase == "student" and args.stop_after is not None and args.stop_after <= step:
                raise UsageError(f"--stop-after {args.stop_after} is at or before step {step}, where the student "
                                 f"resumes, so it would stop nothing; pass a later step, or drop it.")
    if not args.teacher and (out / "teacher" / "model" / "config.json").is_file():
        load_weights(out / "teacher" / "model", task)


def check_combinations(args):
    """Flags that cannot go together, or that need something this machine lacks."""
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out-dir and --overwrite replaces it; pass one of them.")
    if not args.oneshot and args.lr_min > args.lr:
        raise UsageError(f"--lr-min {args.lr_min:g} is above --lr {args.lr:g}, so every cycle would climb to its end "
                         f"instead of decaying; pass a floor at most --lr (the recipe's: --lr / 10).")
    if args.kd and args.hardness == 0:
        raise UsageError("--hardness 0 gives the KD loss no weight, so the teacher would run for nothing; pass --no-kd "
                         "for the task loss alone, or a hardness above 0.")
    if "init_sparsity" in args.given and args.init_sparsity > args.sparsity and not args.oneshot:
        raise UsageError(f"--init-sparsity {args.init_sparsity:g} is above --sparsity {args.sparsity:g}, so the "
                         f"first jump would be cut to the target; pass at most {args.sparsity:g}.")
    if args.oneshot and prune.accumulated(prune.METHODS[args.method]):
        raise UsageError(f"--method {args.method} scores weights by how training moved them, and --oneshot trains "
                         f"nothing; pass --method {' or '.join(n for n, m in prune.METHODS.items() if not prune.accumulated(m))}, "
                         f"or drop --oneshot.")
    if prune.METHODS[args.method].reads == "input_norms" and args.prune_embeddings and not _dense(args):
        raise UsageError(f"--method {args.method} scores a Linear's weights by the norms of its inputs, and the "
                         f"embeddings are tables, not Linears; drop --prune-embeddings, or pass --method gmp.")
    trains_a_dense_model = not args.oneshot and (args.sparsity == 0 or (args.kd and not args.teacher))
    if args.optimizer == "cram" and not trains_a_dense_model:
        raise UsageError("--optimizer cram fine-tunes dense models: the teacher this run trains, or a --sparsity 0 "
                         "run; here it would train nothing, so drop it or pass --sparsity 0.")
    if args.sparse_backprop:
        if args.compile:
            raise UsageError("--sparse-backprop runs SparseProp's kernels, which torch.compile cannot trace; "
                             "drop --compile or --sparse-backprop.")
        try:
            sparse_backprop.kernels()
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
    if args.pattern == "4-block" and args.block_size != "row" and args.block_size % obert.GROUP:
        raise UsageError(f"--block-size {args.block_size} does not hold whole groups of 4 weights; pass a multiple of "
                         f"4 (the 4-block recipe's is 32).")


def check_groups(args, model):
    """N:M and 4-block prune groups of M (or 4) consecutive weights along each row of a matrix: every
    prunable matrix's rows must hold whole groups, else a group would straddle two rows (and the
    pruning step would fail at its reshape, maybe hours in)."""
    nm = prune.parse_nm(args.pattern)
    group = nm[1] if nm else obert.GROUP if args.pattern == "4-block" else None
    if group is None or _dense(args):
        return
    for name in prune.prunable_names(model, args.prune_embeddings, args.prune_head):
        width = model.get_parameter(name).shape[-1]
        if width % group:
            raise UsageError(f"--pattern {args.pattern} prunes groups of {group} weights along each row, but {name}'s "
                             f"rows hold {width}, not a multiple of {group}; pass a pattern whose group divides {width}.")


def check_keeps_some(args, model):
    """A sparsity so close to 1 that round(s · n) is every weight (where 1.0 itself is refused): the
    weights that compete together (all the prunable ones, globally; else each matrix) must keep one."""
    names = prune.prunable_names(model, args.prune_embeddings, args.prune_head)
    sizes = {n: model.get_parameter(n).numel() for n in names}
    groups = {"the prunable weights'": sum(sizes.values())} if args.scope == "global" else {f"{n}'s": k for n, k in
                                                                                             sizes.items()}
    flag = "--oneshot" if args.oneshot else "--sparsity"
    for s in (args.oneshot or ([args.sparsity] if args.sparsity > 0 else [])):
        for whose, n in groups.items():
            if round(s * n) >= n:
                raise UsageError(f"{flag} {s} prunes every one of {whose} {n} weights (round(s · n) = n); pass at "
                                 f"most {1 - 1 / n:.6g}.")


def notes_on(args, model) -> list[str]:
    """What a user should know before the run about the model they passed (train.py prints each line;
    the run goes on): an encoder already pruned further than this run's target, whose zeros are not
    masks here; weights stored in half precision, which the run trains and exports in float32; and
    --sparse-backprop where this project's inference kernel cannot be built for its evaluations."""
    notes = []
    names = prune.prunable_names(model)
    zeros = sum(int((model.get_parameter(n) == 0).sum()) for n in names) / sum(model.get_parameter(n).numel()
                                                                              for n in names)
    lowest = min(args.oneshot) if args.oneshot else args.sparsity
    if zeros > 0.05 and lowest < zeros:
        notes.append(f"--model {args.model} is already {zeros:.1%} sparse in its encoder, above "
                     + (f"--oneshot {lowest:g}: pruning to that prunes nothing more" if args.oneshot else
                        f"--sparsity {args.sparsity:g}: its zeros are not masks here, so training moves them and "
                        f"only the run's own target is kept at 0"))
    stored = stored_dtype(Path(args.model_folder))
    if stored in ("float16", "bfloat16"):
        notes.append(f"--model {args.model} is stored in {stored}; this run trains and exports in float32, a file "
                     f"twice its size (transformers' .half() makes a float16 copy of the export)")
    if args.sparse_backprop and sparse_inference.build_tiled_kernel()[0] is None:
        notes.append(f"--sparse-backprop evaluates through SparseProp's kernels: this project's inference kernel "
                     f"could not be built ({sparse_inference.build_tiled_kernel()[1]}; it needs a C++ compiler and ninja)")
    return notes


def stored_dtype(folder: Path) -> str | None:
    """The dtype the weights are stored in: model.safetensors' header (its first tensor's), else config.json's
    torch_dtype; None where neither says."""
    try:
        from safetensors import safe_open
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            first = next(iter(f.keys()))
            return {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}.get(f.get_slice(first).get_dtype())
    except Exception:                           # no safetensors file (pytorch_model.bin), or an empty one
        return str(modeling.load_config(folder).extra.get("torch_dtype") or "") or None


def check_fisher_memory(args, model):
    """oBERT's Fisher (d·B·4 bytes) is allocated at the first pruning step, maybe hours in: check now
    that it fits, on this process's share when torchrun shards it."""
    shapes = {n: p.shape for n, p in model.named_parameters()
              if n in prune.prunable_names(model, args.prune_embeddings, args.prune_head)}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpu = torch.cuda.is_available() and args.device != "cpu"
    need = obert.fisher_bytes(shapes, args.block_size, args.num_grads) / world
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


def check_max_length(max_length, task, cfg, role="the model") -> int:
    """Sequences must fit the position embeddings (RoBERTa's start at pad_token_id + 1): the task's own
    length is shortened to fit, an asked-for --max-length that does not fit is refused. The teacher
    reads the student's sequences: it is checked against the length the student's check settled."""
    limit = modeling.positions(cfg)
    if max_length is None:
        return min(task.max_length, limit)
    if max_length > limit:
        raise UsageError(f"--max-length {max_length} is longer than {role}'s {limit} positions; "
                         f"pass --max-length {limit} or less.")
    return max_length


def load_weights(folder, task):
    """The model as train.py will load it, read once, fully: a corrupt or mismatched file fails here."""
    return modeling.from_pretrained(folder, head=task.kind, num_labels=task.head_labels, verbose=False)


def check_teacher(folder, task, role="a teacher"):
    """A fine-tuned model for this task: the right head (and label count) in its config."""
    cfg = modeling.load_config(modeling.resolve_folder(folder))
    arch = (cfg.extra.get("architectures") or ["?"])[0]
    want = modeling.ARCHITECTURES[task.kind]
    if not arch.endswith(want) or (task.kind == "classification" and cfg.num_labels != task.num_labels):
        raise UsageError(f"{role}, but {folder} is a {arch} with {cfg.num_labels} labels and {task.name} needs a "
                         f"...{want}" + (f" with {task.num_labels} labels" if task.kind == "classification" else "")
                         + f"; pass a model fine-tuned on {task.name}.")
