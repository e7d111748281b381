"""
One loop from `python train.py --task csqa --sparsity 0.8` to a pruned, exported model.

The recipe of Kurtic, Hoefler & Alistarh (2024), all three guidelines:
  1. prune only the encoder's linear layers (prune.py; --prune-embeddings/--prune-head for the ablation);
  2. scale the sparsity and learning-rate schedules to the run (schedule.py);
  3. distil from a dense teacher with a high temperature, T = 5.5, hardness 1.0 (distill.py).

What happens:
  a) without --teacher (and with KD), fine-tune a dense teacher from the pretrained weights, or
     reuse the one this output folder already holds (OUT/teacher/model);
  b) from the same pretrained weights, fine-tune the student while pruning it: at each pruning
     step of the schedule, new masks from magnitudes (GMP) or oBERT's Fisher-based scores, and
     AdamW's moments zeroed at the newly pruned weights; at every optimizer step the gradients
     of pruned weights are masked before AdamW and the masks re-applied after it;
  c) evaluate, export (OUT/model, loadable by `transformers`), write OUT/results.json.

Everything resumable: OUT/<phase>/checkpoint.pt (model, masks, optimizer, step, RNG, arguments)
is written atomically every --checkpoint-every steps; --resume continues from it. Under
`torchrun --nproc_per_node=N` the same script runs DDP with one data shard per rank.
"""
import argparse
import itertools
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import distill
import model as modeling
import prune
from schedule import Schedule

# Per-task defaults. Models: RoBERTa-large for the "Sparsity May Cry" tasks, BERT-base for the
# classic ones (the paper's sections 5 and 6). Student (pruning) runs: oBERT's recipe (Kurtic et
# al. 2022) for BERT-base, lr 8e-5 -> 8e-6 re-warmed at every pruning step; for RoBERTa-large the
# SMC-Bench fine-tuning LR (1e-5, batch 16: its fairseq CommonsenseQA script), trained longer as the
# paper's second guideline asks (our choice of 10 epochs, about twice SMC-Bench's 3000 steps).
# Teachers: the usual dense fine-tuning (BERT paper: 2e-5..5e-5, 2-3 epochs; SMC-Bench for RoBERTa).
TASK_DEFAULTS = {
    "csqa":       dict(model="roberta-large", lr=1e-5, batch_size=16, epochs=10, teacher_lr=1e-5, teacher_epochs=5),
    "winogrande": dict(model="roberta-large", lr=1e-5, batch_size=16, epochs=10, teacher_lr=1e-5, teacher_epochs=5),
    "squad":      dict(model="bert-base-uncased", lr=8e-5, batch_size=16, epochs=30, teacher_lr=5e-5, teacher_epochs=2),
    "mnli":       dict(model="bert-base-uncased", lr=8e-5, batch_size=32, epochs=30, teacher_lr=2e-5, teacher_epochs=3),
    "qqp":        dict(model="bert-base-uncased", lr=8e-5, batch_size=32, epochs=30, teacher_lr=2e-5, teacher_epochs=3),
    "sst2":       dict(model="bert-base-uncased", lr=8e-5, batch_size=32, epochs=30, teacher_lr=2e-5, teacher_epochs=3),
}
RUN_DEFINING = ("task", "model", "teacher", "data_dir", "sparsity", "method", "pattern", "scope", "init_sparsity",
                "schedule", "epochs", "lr", "batch_size", "grad_accum", "max_length", "temperature", "hardness",
                "no_kd", "prune_embeddings", "prune_head", "seed", "max_steps", "limit_train", "limit_eval")


class UsageError(Exception):
    """Bad input found before any work: one sentence, exit code 2."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Prune a BERT-family model during fine-tuning (Kurtic et al. 2024).",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--task", required=True, help=f"one of {', '.join(data.TASKS)}")
    a("--sparsity", type=float, default=0.8, help="target encoder sparsity in [0, 1); 0 = dense fine-tuning")
    a("--model", help="pretrained model: hub id or local folder (default per task)")
    a("--teacher", help="fine-tuned dense teacher folder; without it one is trained first")
    a("--data-dir", help="folder with the released data files; without it the hub is used")
    a("--method", default="gmp", help="gmp (magnitude, the default: the paper shows tuned GMP suffices) or obert "
                                      "(its Fisher costs d*B*4 bytes: 60 GB for roberta-large at B=50)")
    a("--pattern", default="unstructured", help="unstructured, 4-block, or N:M such as 2:4")
    a("--scope", default="global", choices=["global", "layer"], help="one threshold for all, or per matrix")
    a("--init-sparsity", type=float, default=0.7, help="first jump of the accelerated schedule")
    a("--schedule", default="accelerated", choices=["accelerated", "cubic"], help="cubic = naive, from zero")
    a("--epochs", type=float, help="student epochs (default per task)")
    a("--lr", type=float, help="peak LR of the student (default per task); decays to --lr-min each cycle")
    a("--lr-min", type=float, help="LR at the end of each cycle (default lr / 10)")
    a("--teacher-epochs", type=float, help="dense teacher epochs (default per task)")
    a("--teacher-lr", type=float, help="dense teacher LR (default per task)")
    a("--warmup-steps", type=int, default=0, help="linear LR warm-up at the start")
    a("--weight-decay", type=float, default=0.01, help="AdamW weight decay (none on biases and LayerNorms)")
    a("--clip", type=float, default=1.0, help="gradient norm clipping")
    a("--batch-size", type=int, help="examples per micro-batch per process (default per task)")
    a("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--max-length", type=int, help="max tokens per sequence (default per task)")
    a("--temperature", type=float, default=distill.TEMPERATURE, help="distillation temperature T")
    a("--hardness", type=float, default=distill.HARDNESS, help="weight of the KD loss; 1 - h on the task loss")
    a("--no-kd", action="store_true", help="no teacher, no distillation")
    a("--prune-embeddings", action="store_true", help="also prune the embeddings (ablation)")
    a("--prune-head", action="store_true", help="also prune the pooler and task head (ablation)")
    a("--num-grads", type=int, default=1024, help="oBERT: gradients in the empirical Fisher")
    a("--block-size", type=int, help="oBERT: Fisher block size (default 50; 32 for 4-block)")
    a("--damp", type=float, default=1e-7, help="oBERT: Fisher dampening")
    a("--seed", type=int, default=42, help="random seed (initialisation, dropout, data order)")
    a("--out-dir", default="out", help="output folder")
    a("--resume", action="store_true", help="continue from the checkpoints in --out-dir")
    a("--overwrite", action="store_true", help="discard whatever --out-dir holds")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype; auto = bf16 on CUDA")
    a("--compile", action="store_true", help="torch.compile the model for training")
    a("--max-steps", type=int, help="cap on optimizer steps per phase (schedules scale to it)")
    a("--limit-train", type=int, help="use only the first N training examples")
    a("--limit-eval", type=int, help="use only the first N evaluation examples")
    a("--log-every", type=int, default=10, help="optimizer steps between log lines")
    a("--checkpoint-every", type=int, default=500, help="optimizer steps between checkpoints")
    a("--stop-after", type=int, help="save a checkpoint and exit after this step (simulates an interruption)")
    return ap.parse_args(argv)


def resolve(args):
    """Fill per-task defaults and check every input before any work; raises UsageError."""
    if args.task not in data.TASKS:
        raise UsageError(f"unknown task {args.task!r}; choose one of {', '.join(data.TASKS)}.")
    if args.method not in ("gmp", "obert"):
        raise UsageError(f"unknown method {args.method!r}; choose gmp or obert.")
    if not 0.0 <= args.sparsity < 1.0:
        raise UsageError(f"--sparsity must be in [0, 1), got {args.sparsity}; pass e.g. 0.8 for 80%.")
    try:
        prune.check_pattern(args.pattern, args.sparsity if args.sparsity > 0 else 0.5)
    except ValueError as e:
        raise UsageError(str(e) + ".")
    defaults = dict(TASK_DEFAULTS[args.task])
    if args.sparsity == 0:   # plain dense fine-tuning: the teacher's recipe
        defaults.update(lr=defaults["teacher_lr"], epochs=defaults["teacher_epochs"])
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.lr_min = args.lr / 10 if args.lr_min is None else args.lr_min
    args.block_size = args.block_size or (32 if args.pattern == "4-block" else 50)
    task = data.TASKS[args.task]
    args.max_length = args.max_length or task.max_length
    args.kd = not args.no_kd and (args.sparsity > 0 or args.teacher is not None)
    try:
        args.model_folder = str(modeling.resolve_folder(args.model))
        modeling.load_config(Path(args.model_folder))
        if args.teacher:
            check_teacher(args.teacher, task)
    except modeling.CheckpointError as e:
        raise UsageError(str(e))
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder; pass the folder holding the task's files.")
    out = Path(args.out_dir)
    if (out / "run.json").is_file() and not (args.resume or args.overwrite):
        before = json.loads((out / "run.json").read_text())
        if {k: before.get(k) for k in RUN_DEFINING} != {k: getattr(args, k) for k in RUN_DEFINING}:
            raise UsageError(f"{out} holds a different run; pass --resume to continue it, --overwrite to "
                             f"replace it, or another --out-dir.")
    return args


def check_teacher(folder, task):
    cfg = modeling.load_config(modeling.resolve_folder(folder))
    arch = (cfg.extra.get("architectures") or ["?"])[0]
    want = {"classification": "ForSequenceClassification", "multiple_choice": "ForMultipleChoice",
            "question_answering": "ForQuestionAnswering"}[task.kind]
    if not arch.endswith(want) or (task.kind == "classification" and cfg.num_labels != task.num_labels):
        raise UsageError(f"teacher {folder} is a {arch} with {cfg.num_labels} labels, but {task.name} needs a "
                         f"...{want} with {task.num_labels} labels; pass a teacher fine-tuned on {task.name}.")


# -----------------------------------------------------------------------------
# Pieces of the loop.

def task_loss(task, out, batch):
    if task.kind == "question_answering":   # mean of the start and end cross-entropies
        return (F.cross_entropy(out[0].float(), batch["start_positions"]) +
                F.cross_entropy(out[1].float(), batch["end_positions"])) / 2
    return F.cross_entropy(out.float(), batch["labels"])


def forward(net, batch, use_token_types):
    return net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"] if use_token_types else None)


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def optimizer_for(model, lr, weight_decay):
    """AdamW; weight decay on weight matrices only (not on biases, LayerNorms)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


@torch.no_grad()
def evaluate(model, task, examples, features, ctx):
    model.eval()
    loader = data.make_loader(features, ctx["eval_batch"], False, 0, ctx["pad_id"])
    outputs = []
    for batch in loader:
        with ctx["autocast"]():
            out = forward(model, to_device(batch, ctx["device"]), ctx["token_types"])
        if task.kind == "question_answering":
            outputs += list(zip(out[0].float().cpu().tolist(), out[1].float().cpu().tolist()))
        else:
            outputs += out.float().cpu().tolist()
    model.train()
    return data.score(task, examples, features, outputs)


def collect_fisher(net, model, names, masks, task, loader, ctx, num_grads, block_size, damp):
    """oBERT: stream num_grads mini-batch gradients of the task loss (masked) into each F^-1."""
    finvs = {n: prune.init_fisher_inverse(model.get_parameter(n).numel(), block_size, damp, ctx["device"])
             for n in names}
    params = dict(model.named_parameters())
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for _, batch in zip(range(num_grads), batches):
        net.zero_grad(set_to_none=True)
        batch = to_device(batch, ctx["device"])
        with ctx["autocast"]():
            loss = task_loss(task, forward(net, batch, ctx["token_types"]), batch)
        loss.backward()                                  # under DDP: the gradient averaged over ranks
        prune.mask_gradients(params, masks)
        for n in names:
            prune.add_gradient(finvs[n], params[n].grad.float(), num_grads)
    net.zero_grad(set_to_none=True)
    return finvs


def save_atomic(obj, path):
    tmp = Path(str(path) + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# -----------------------------------------------------------------------------
# The loop, used for the dense teacher and for the pruned student.

def fit(phase, model, teacher, train_features, eval_data, sched, args, ctx):
    task, out = data.TASKS[args.task], Path(args.out_dir) / phase
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    names = prune.prunable_names(model, args.prune_embeddings, args.prune_head) if sched.target > 0 else []
    opt = optimizer_for(model, sched.lr_max, args.weight_decay)
    net = model
    if ctx["distributed"]:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx["device"].index] if ctx["device"].type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    masks, step = {}, 0
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=ctx["device"], weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        masks, step = {n: m.to(ctx["device"]) for n, m in ck["masks"].items()}, ck["step"]
        set_rng_state(ck["rng"])
        log(ctx, f"{phase}: resumed at step {step}")
    loader = data.make_loader(train_features, args.batch_size, True, args.seed, ctx["pad_id"], ctx["distributed"])
    fisher_loader = data.make_loader(train_features, args.batch_size, True, args.seed + 1, ctx["pad_id"], ctx["distributed"])
    per_epoch = len(loader) // args.grad_accum
    pruning_steps, cycle_ends = set(sched.pruning_steps()), {b for _, b in sched.cycles()[:-1]}
    logf = open(out / "log.jsonl", "a") if ctx["rank"] == 0 else None
    model.train()
    t0, tokens, last = time.time(), 0, None

    def checkpoint():
        if ctx["rank"] == 0:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "masks": masks, "step": step,
                         "rng": rng_state(), "args": vars(args)}, ckpt_path)

    while step < sched.total_steps:
        epoch, offset = divmod(step, per_epoch)
        loader.sampler.set_epoch(epoch)
        micro = itertools.islice(iter(loader), offset * args.grad_accum, per_epoch * args.grad_accum)
        for batches in zip(*[micro] * args.grad_accum):          # grad_accum micro-batches per step
            if step >= sched.total_steps:
                break
            if step in pruning_steps:                            # new masks: schedule.py says how sparse
                s = sched.sparsity_at(step)
                weights = {n: params[n] for n in names}
                if args.method == "obert":
                    fisher_loader.sampler.set_epoch(step)
                    finvs = collect_fisher(net, model, names, masks, task, fisher_loader, ctx, args.num_grads, args.block_size, args.damp)
                    masks = prune.obert_prune(weights, finvs, s, args.scope, args.pattern, masks)
                    del finvs
                else:
                    masks = prune.magnitude_masks(weights, s, args.scope, args.pattern, masks)
                if ctx["distributed"]:                           # identical masks and weights on every rank
                    for n in names:
                        m = masks[n].to(torch.uint8)             # gloo cannot send bool tensors
                        torch.distributed.broadcast(m, 0)
                        masks[n] = m.bool()
                        torch.distributed.broadcast(params[n].data, 0)
                prune.zero_optimizer_state(opt, params, masks)
                prune.apply_masks(params, masks)
            lr = sched.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            total = 0.0
            for batch in batches:
                batch = to_device(batch, ctx["device"])
                with ctx["autocast"]():
                    logits = forward(net, batch, ctx["token_types"])
                    loss = task_loss(task, logits, batch)
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = forward(teacher, batch, ctx["token_types"])
                        span_mask = batch["attention_mask"].bool() if task.kind == "question_answering" else None
                        kd = distill.kd_loss(logits, t_logits, args.temperature, span_mask)
                        loss = distill.combine(loss, kd, args.hardness)
                (loss / args.grad_accum).backward()
                total += loss.item() / args.grad_accum
                tokens += int(batch["attention_mask"].sum())
            # A pruned weight gets no gradient, so AdamW's moments stay exactly 0 there (they were
            # zeroed when it was pruned), its update is 0 / (0 + eps) = 0 and weight decay scales 0;
            # re-applying the masks after the step makes that hold whatever the optimizer does.
            prune.mask_gradients(params, masks)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            prune.apply_masks(params, masks)
            step += 1
            if step % args.log_every == 0 or step == sched.total_steps:
                rate = tokens * ctx["world"] / (time.time() - t0)
                rec = {"phase": phase, "step": step, "loss": total, "lr": lr,
                       "sparsity": round(sched.sparsity_at(step - 1), 4), "tokens_per_s": round(rate, 1)}
                progress(ctx, rec, sched.total_steps)
                if logf:
                    logf.write(json.dumps(rec) + "\n"); logf.flush()
            if step in cycle_ends and ctx["rank"] == 0 and eval_data is not None:
                last = evaluate(model, task, *eval_data, ctx)
                log(ctx, f"{phase}: step {step} (end of a pruning cycle) eval {last}")
                logf.write(json.dumps({"phase": phase, "step": step, "eval": last}) + "\n"); logf.flush()
            if step % args.checkpoint_every == 0 or step == sched.total_steps or step == args.stop_after:
                checkpoint()
            if step == args.stop_after:
                log(ctx, f"{phase}: stopped after step {step} (--stop-after); continue with --resume")
                sys.exit(0)
    if logf:
        logf.close()
    return masks, tokens * ctx["world"] / max(time.time() - t0, 1e-9)


def masks_equal_across_ranks(masks, device) -> bool:
    """Every rank's masks, packed to one fingerprint (kept count and index-weighted sum), compared."""
    fp = torch.zeros(2, dtype=torch.float64, device=device)
    for m in masks.values():
        idx = torch.arange(m.numel(), device=device, dtype=torch.float64)
        fp += torch.stack([m.sum().double(), (m.flatten().double() * idx).sum()])
    everyone = [torch.zeros_like(fp) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(everyone, fp)
    return all(torch.equal(everyone[0], f) for f in everyone)


def progress(ctx, rec, total):
    if ctx["rank"] != 0:
        return
    width = 24
    done = int(width * rec["step"] / total)
    line = (f"{rec['phase']:>7} [{'=' * done}{' ' * (width - done)}] {rec['step']}/{total} loss {rec['loss']:.4g} "
            f"lr {rec['lr']:.2e} sparsity {rec['sparsity']:.3f} {rec['tokens_per_s']:.0f} tok/s")
    print(line, end="\r" if sys.stdout.isatty() and rec["step"] < total else "\n", flush=True)


def log(ctx, text):
    if ctx["rank"] == 0:
        print(text, flush=True)


# -----------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    try:
        args = resolve(args)
    except UsageError as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(2)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    task, out = data.TASKS[args.task], Path(args.out_dir)
    ctx = {"device": device, "rank": rank, "world": world, "distributed": distributed,
           "autocast": lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
           "eval_batch": 2 * args.batch_size}
    try:   # the data is read before anything is written: a malformed file stops here
        tok = data.load_tokenizer(args.model_folder)
        train_ex = data.load_split(task, "train", args.data_dir)[: args.limit_train]
        eval_ex = data.load_split(task, "validation", args.data_dir)[: args.limit_eval]
    except (data.DataError, modeling.CheckpointError) as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(2)
    if rank == 0:
        if args.overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({k: v for k, v in vars(args).items()}, indent=1))
    if distributed:   # every rank sees the output folder as rank 0 left it
        torch.distributed.barrier()
    ctx["pad_id"] = data.pad_id(tok)
    train_f = data.encode(task, train_ex, tok, args.max_length)
    eval_f = data.encode(task, eval_ex, tok, args.max_length)
    per_epoch = math.ceil(math.ceil(len(train_f) / world) / args.batch_size) // args.grad_accum   # = fit's
    if per_epoch == 0:
        print("train.py: fewer training examples than one optimizer step needs; lower --batch-size or --grad-accum.",
              file=sys.stderr)
        sys.exit(2)
    start = time.time()

    def steps(epochs):
        n = max(1, math.ceil(epochs * per_epoch))
        return min(n, args.max_steps) if args.max_steps else n

    def load(folder, head=task.kind):
        torch.manual_seed(args.seed)    # a new task head starts from the same init on every rank
        m = modeling.from_pretrained(folder, head=head, num_labels=task.num_labels if task.kind == "classification" else None)
        ctx["token_types"] = m.config.type_vocab_size > 1
        return m.to(device).train()

    teacher, teacher_metric = None, None
    if args.kd:
        teacher_dir = Path(args.teacher) if args.teacher else out / "teacher" / "model"
        if not args.teacher and not (teacher_dir / "config.json").is_file():
            log(ctx, "training the dense teacher first")
            t = load(args.model_folder)
            fit("teacher", t, None, train_f, None, Schedule(steps(args.teacher_epochs), 0.0, lr_max=args.teacher_lr,
                lr_min=0.0, warmup_steps=args.warmup_steps), args, ctx)
            if rank == 0:
                t.save_pretrained(teacher_dir)
            if distributed:
                torch.distributed.barrier()
            del t
        teacher = load(teacher_dir).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher_metric = evaluate(teacher, task, eval_ex, eval_f, ctx) if rank == 0 else None
        log(ctx, f"teacher {teacher_dir}: {teacher_metric}")

    student = load(args.model_folder)
    sched = Schedule(steps(args.epochs), args.sparsity, args.init_sparsity, args.schedule, args.lr, args.lr_min,
                     args.warmup_steps)
    masks, rate = fit("student", student, teacher, train_f, (eval_ex, eval_f), sched, args, ctx)
    same_masks = masks_equal_across_ranks(masks, device) if distributed else None
    if rank == 0:
        metric = evaluate(student, task, eval_ex, eval_f, ctx)
        student.save_pretrained(out / "model")
        for name in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                     "special_tokens_map.json"):
            if (Path(args.model_folder) / name).is_file():
                shutil.copy(Path(args.model_folder) / name, out / "model" / name)
        report = prune.sparsity_report(student, masks)
        results = {"task": args.task, "metric": metric, "teacher_metric": teacher_metric,
                   "sparsity": prune.sparsity_by_component(student), "target_sparsity": args.sparsity,
                   "tokens_per_s": round(rate, 1), "wall_time_s": round(time.time() - start, 1),
                   "device": str(device), "dtype": str(dtype).replace("torch.", ""), "world_size": world,
                   "masks_equal_across_ranks": same_masks, "args": vars(args)}
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "sparsity_report.txt").write_text(report + "\n")
        log(ctx, f"{args.task}: {metric}; encoder sparsity {results['sparsity']['encoder']:.4f}; exported to {out / 'model'}")
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
