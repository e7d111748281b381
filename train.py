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
     for GMP, movement, obert.py's Fisher-based scores and OBS update for oBERT, Wanda), with
     AdamW's moments zeroed at the newly pruned weights; at every optimizer step the gradients of
     pruned weights are masked before AdamW and the masks re-applied after it. What a criterion
     reads besides the weights (prune.STATISTICS) is gathered at the pruning step (oBERT's Fisher,
     Wanda's input norms: `gather_statistic`) or accumulated at every step (movement's -w*g);
  c) evaluate, export (OUT/model, loadable by `transformers`), write OUT/results.json.

Two other ways to use it, for the contrast the paper's guidelines are about:
  --oneshot 0.5,0.7,0.8,0.9   prune a fine-tuned --model in one step to each sparsity, no training,
                              and print a table (`oneshot`; --recomputations N splits each step);
  --optimizer cram            fine-tune the dense model with CrAM (cram.py), so that it can be
                              pruned in one shot afterwards.
And two ways to make it faster on a CPU: batches grouped by length (on by default, data.py) and
--sparse-backprop (sparse_backprop.py: SparseProp's kernels for the matrices that are sparse
enough; evaluated through sparse_inference.py's own kernel).

The files around the loop: cli.py parses the flags and checks every input before anything is
written (bad input: one sentence, exit 2); rundir.py owns the output folder (what --overwrite
may delete, atomic writes, the checkpoints that make --resume bit-identical); runtime.py sets up
the device, the data and the models, scores them and prints the progress line. Under
`torchrun --nproc_per_node=N` the same script runs DDP with one data shard per rank (and oBERT's
Fisher sharded across the ranks).
"""
import copy
import itertools
import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

import cli
import cram
import data
import distill
import model as modeling
import prune
import rundir
import runtime
import sparse_inference
import sparse_backprop
from rundir import UsageError
from schedule import Schedule


class NonFinite(Exception):
    """A loss or gradient became NaN or infinite: the run stops, nothing is exported."""


# -----------------------------------------------------------------------------
# Pieces of one optimizer step.

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
        batch = runtime.to_device(batch, rt.device)
        with rt.autocast():
            logits = runtime.forward(net, batch)
            loss = runtime.task_loss(task, logits, batch)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = runtime.forward(teacher, batch)
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


def all_finite(loss: float, grad_norm: torch.Tensor, rt) -> bool:
    """Whether this step's loss and gradients are finite on every rank (one flag, all-reduced)."""
    bad = torch.tensor([0.0 if math.isfinite(loss) and torch.isfinite(grad_norm) else 1.0], device=rt.device)
    if rt.distributed:
        torch.distributed.all_reduce(bad)
    return bad.item() == 0.0


# -----------------------------------------------------------------------------
# The loop, used for the dense teacher and for the pruned student.

@dataclass
class Fitted:
    masks: dict
    tokens_per_s: float
    stopped: bool                  # --stop-after ended it early (its checkpoint is saved)
    seconds: float = 0.0           # wall time of this phase (in this process, if resumed)


def fit(phase, model, teacher, d, sched, args, rt, later=0) -> Fitted:
    """Train `model` for sched.total_steps optimizer steps (from its checkpoint with --resume),
    pruning it at the schedule's pruning steps: the dense teacher (target 0, AdamW or CrAM) or the
    pruned student. Returns its masks, its real tokens per second (training's: the time spent
    pruning, evaluating and saving left out) and wall time (of this process), and whether
    --stop-after ended it early. later: the steps of the phases after this one, for the progress
    line's estimate of the whole run."""
    out = Path(args.out_dir) / phase
    if rt.rank == 0:
        rundir.claim(out.parent, f"{phase}/", f"{phase}/log.jsonl", f"{phase}/checkpoint.pt")
        out.mkdir(exist_ok=True)
    opt = optimizer_for(model, sched.lr_max, args.weight_decay)
    net = model                    # what forward and backward run through: DDP and torch.compile wrap it
    if rt.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    label = {"teacher": "dense teacher"}.get(phase, "dense fine-tuning" if sched.target == 0 else "pruned student")
    running = start_running(model, sched, args)      # movement's -Σ w*g, or None: the criterion reads no training
    accumulate = prune.STATISTICS[prune.METHODS[args.method].reads].accumulate if running is not None else None
    masks, step = resume_phase(out, model, opt, running, label, args, rt) if args.resume else ({}, 0)
    pruning_steps, cycle_ends = set(sched.pruning_steps()), {b for _, b in sched.cycles()[:-1]}
    use_cram = args.optimizer == "cram" and sched.target == 0      # CrAM trains dense models only
    log_file = out / "log.jsonl"
    t0, tokens, saved, first, paused = time.time(), 0, step if step else None, step, 0.0
    tokens_per_s = lambda: tokens * rt.world / max(time.time() - t0 - paused, 1e-9)
    model.train()
    for batches in optimizer_batches(d.loader, args.grad_accum, step, sched.total_steps):
        # 1. prune, at the schedule's pruning steps that ask for more than is in force: new masks,
        #    containing the old ones
        if step in pruning_steps and sched.sparsity_at(step) > sched.sparsity_at(step - 1):
            t = time.time()
            masks = pruning_event(step, sched.sparsity_at(step), model, masks, opt, d, args, rt, running=running)
            paused += time.time() - t
        # 2. forward and backward over grad_accum micro-batches (distilled from the teacher, if any;
        #    with CrAM, again at a compressed perturbation of the weights)
        if use_cram:
            loss, n_tokens = cram.cram_gradients(model, lambda: forward_backward(net, teacher, batches, d.task, args, rt),
                                                 args.cram_rho, args.cram_sparsities)
        else:
            loss, n_tokens = forward_backward(net, teacher, batches, d.task, args, rt)
        tokens += n_tokens
        # 3. AdamW at the schedule's LR, pruned weights held at 0; a NaN or inf stops the run before it.
        #    A criterion that reads the training's gradients (movement) adds this step's -w*g first.
        grad_norm = masked_gradients(model, masks, args.clip)
        if not all_finite(loss, grad_norm, rt):
            raise diverged(label, step, loss, grad_norm, saved, out)
        if running is not None:
            accumulate(running, dict(model.named_parameters()))
        lr = sched.lr_at(step)
        masked_step(opt, model, masks, lr)
        # 4. with step + 1 steps done: log, evaluate at the end of a pruning cycle, checkpoint
        done = step + 1
        if done % args.log_every == 0 or done == sched.total_steps:
            runtime.log_record(rt, log_file, {"phase": phase, "step": done, "loss": loss, "lr": lr,
                                      "sparsity": round(sched.sparsity_at(step), 4),
                                      "tokens_per_s": round(tokens_per_s(), 1), "elapsed_s": round(time.time() - t0, 1)},
                       (label, first, sched.total_steps, later))
        t = time.time()
        if done in cycle_ends and rt.rank == 0:
            metric = evaluate(model, d, args, rt)
            what = "end of the dense phase" if sched.sparsity_at(step) == 0 else "end of a pruning cycle"
            runtime.log(rt, f"{label}: step {done} ({what}) eval {metric}")
            runtime.log_record(rt, log_file, {"phase": phase, "step": done, "sparsity": round(sched.sparsity_at(step), 4),
                                      "eval": metric})
        if done % args.checkpoint_every == 0 or done in (sched.total_steps, args.stop_after):
            rundir.save_checkpoint(out / "checkpoint.pt", model, opt, masks, done, args, rt, running)
            saved = done
        paused += time.time() - t
        if done == args.stop_after:
            runtime.log(rt, f"{label}: stopped after step {done} (--stop-after); continue with --resume")
            return Fitted(masks, tokens_per_s(), True, time.time() - t0)
        step += 1
    return Fitted(masks, tokens_per_s(), False, time.time() - t0)


def evaluate(model, d, args, rt, holdout=False) -> dict | None:
    """The metric on dev (or on the --holdout examples: None without them), in batches of twice the
    training batch. Under --sparse-backprop the Linears at least 80% sparse compute it through this
    project's inference kernel (sparse_inference.inference_kernels), faster than training's kernels' forward,
    and go back to those after it."""
    if holdout and not d.holdout_examples:
        return None
    kernels = sparse_inference.inference_kernels(model, sparse_backprop.MIN_SPARSITY) if args.sparse_backprop else nullcontext()
    with kernels:
        return runtime.evaluate(model, d, 2 * args.batch_size, rt, holdout)


def start_running(model, sched, args) -> dict | None:
    """The student's accumulated statistic, zero before its first step ({name: zeros}), when its
    criterion reads one (movement: prune.accumulated); else None, and the loop adds nothing."""
    if sched.target == 0 or not prune.accumulated(prune.METHODS[args.method]):
        return None
    params = dict(model.named_parameters())
    return {n: torch.zeros_like(params[n]) for n in prune.prunable_names(model, args.prune_embeddings, args.prune_head)}


def resume_phase(out, model, opt, running, label, args, rt):
    """--resume: the masks and the step (and the kernels' choices, and the accumulated statistic into
    `running`) of OUT/phase/checkpoint.pt, loaded into model and opt; or step 0 where this phase has no
    checkpoint yet (the teacher had finished)."""
    if not (out / "checkpoint.pt").is_file():
        runtime.log(rt, f"{label}: no checkpoint to resume from in {out}; starting at step 0")
        return {}, 0
    masks, step, kernels = rundir.load_checkpoint(out / "checkpoint.pt", model, opt, rt.device, running)
    if args.sparse_backprop:
        sparse_backprop.follow(model, masks, kernels)
    runtime.log(rt, f"{label}: resumed at step {step}")
    return masks, step


def diverged(label, step, loss, grad_norm, saved, out) -> NonFinite:
    return NonFinite(f"the {label} diverged at step {step} (loss {loss:g}, gradient norm {float(grad_norm):g}), "
                     + (f"after the checkpoint of step {saved} in {out}" if saved else "before any checkpoint")
                     + "; nothing was exported: lower --lr, or check --temperature and the teacher")


# -----------------------------------------------------------------------------
# The pruning step, and what its criterion reads.

def pruning_event(step, sparsity, model, masks, opt, d, args, rt, stats=None, running=None) -> dict:
    """One scheduled pruning step: score the prunable weights with args.method, select the lowest
    to reach `sparsity` (never reviving one), let the method move the rest (oBERT's OBS update),
    and zero AdamW's moments at the pruned weights. Under torchrun each rank handles its share of
    the tensors and the results reach every rank (prune.prune_step). What the criterion reads:
    `running`, the statistic accumulated in training (movement's sum, zeroed here where the new
    masks prune: it follows them); or `stats`, gathered already (one-shot's Fisher or norms of the
    dense model, shared by every sparsity); else gathered here (`gather_statistic`)."""
    method = prune.METHODS[args.method]
    params = dict(model.named_parameters())
    names = prune.prunable_names(model, args.prune_embeddings, args.prune_head)
    owners = tensor_owners(params, names, rt)
    if running is not None:
        stats = running
    elif stats is None and prune.gathered(method):
        stats = gather_statistic(method, model, names, masks, d, args, rt, owners, step)
    masks = prune.prune_step({n: params[n] for n in names}, method, sparsity, args.scope, args.pattern, masks,
                             stats, owners)
    del stats
    if opt is not None:
        prune.zero_optimizer_state(opt, params, masks)
    prune.apply_masks(params, masks)
    if running is not None:
        prune.apply_masks(running, masks)
    if args.sparse_backprop:         # the index follows the masks: rebuilt here, and nowhere else
        chosen = sparse_backprop.route(model, masks, d.tokens_per_batch)
        runtime.log(rt, f"step {step}: sparsity {sparsity:.4f}, {list(chosen.values()).count('sparse')} of {len(chosen)} "
                f"matrices through SparseProp's kernels")
    return masks


def gather_statistic(method, model, names, masks, d, args, rt, owners, step) -> dict:
    """What `method` reads besides the weights, gathered now by the one gatherer of its kind
    (prune.STATISTICS: obert.gather_fisher, criteria.gather_input_norms), from the training data
    through a `probe`. Returns {name: statistic}."""
    return prune.STATISTICS[method.reads].gather(model, names, masks, probe(d, args, rt, owners, step))


def probe(d, args, rt, owners, step) -> prune.Probe:
    """How the gatherers read the training data at pruning step `step`: batches in a shuffled order of
    their own (seed + stream, and epochs from 1000 * step on: each pruning step sees new ones), moved
    to the device; the task loss and the forward under the run's autocast; the flags that size them."""
    def batches(batch_size, stream, sharded):
        loader = data.make_loader(d.train, batch_size, True, args.seed + stream, d.pad_id, sharded and rt.distributed)
        return (runtime.to_device(b, rt.device) for b in endless(loader, first_epoch=1000 * step))

    def loss(model, batch):
        with rt.autocast():
            return runtime.task_loss(d.task, runtime.forward(model, batch), batch)

    def forward_only(model, batch):
        with rt.autocast():
            return runtime.forward(model, batch)
    return prune.Probe(batches=batches, loss=loss, forward=forward_only, device=rt.device, owners=owners,
                       num_grads=args.num_grads, fisher_batch_size=args.fisher_batch_size, block_size=args.block_size,
                       damp=args.damp, calibration_size=args.calibration_size,
                       calibration_batch_size=2 * args.batch_size)


def endless(loader, first_epoch):
    """The loader's batches without end, every pass in a new shuffled order (epochs first_epoch, +1, ...):
    with dropout off, a batch seen twice would add the same gradient twice."""
    for epoch in itertools.count(first_epoch):
        data.set_epoch(loader, epoch)
        yield from loader


def tensor_owners(params, names, rt) -> dict | None:
    """Under torchrun, which rank scores each tensor (and holds its Fisher blocks), balanced by size."""
    return prune.shard_by_size({n: params[n].numel() for n in names}, rt.world) if rt.distributed else None


# -----------------------------------------------------------------------------
# A run: the device, the data, the teacher, the export.

def get_teacher(args, d, rt, later=0):
    """The dense teacher: --teacher, or this folder's OUT/teacher/model, or one fine-tuned now (before
    the student's `later` steps). Returns (teacher, its scores for results.json), or (None, None) if
    --stop-after stopped its training."""
    folder = Path(args.teacher) if args.teacher else Path(args.out_dir) / "teacher" / "model"
    if not args.teacher and not (folder / "config.json").is_file():
        runtime.log(rt, "training the dense teacher first")
        t = runtime.load_model(args.model_folder, d.task, args.seed, rt.device)
        total = runtime.phase_steps(args.teacher_epochs, args, len(d.loader))
        sched = Schedule(total, 0.0, lr_max=args.teacher_lr, lr_min=0.0, warmup_steps=runtime.warmup_steps(args, total))
        if fit("teacher", t, None, d, sched, args, rt, later).stopped:
            return None, None
        if rt.rank == 0:
            rundir.save_model(t, args.model_folder, Path(args.out_dir), "teacher/model")
        if rt.distributed:
            torch.distributed.barrier()
        del t
    teacher = runtime.load_model(folder, d.task, args.seed, rt.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    scores = {"teacher_metric": None}
    if rt.rank == 0:
        runtime.log(rt, f"evaluating the teacher on {len(d.eval_features)} dev examples"
                        + (f" and {len(d.holdout_features)} held-out" if d.holdout_features else ""))
        scores = {"teacher_metric": evaluate(teacher, d, args, rt),
                  "teacher_holdout_metric": evaluate(teacher, d, args, rt, holdout=True)}
    runtime.log(rt, f"teacher {folder}: {scores['teacher_metric']}")
    return teacher, scores


def export(student, fitted, teacher_scores, d, args, rt, start):
    """Rank 0: evaluate; OUT/model (with the tokenizer files), results.json, sparsity_report.txt."""
    same_masks = prune.masks_equal_across_ranks(fitted.masks, rt.device) if rt.distributed else None
    if rt.rank != 0:
        return
    out = Path(args.out_dir)
    bad = [n for n, p in student.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFinite(f"the student's {bad[0]} holds NaN or inf after training; nothing was exported: lower --lr")
    runtime.log(rt, "evaluating the student and exporting it")
    metric = evaluate(student, d, args, rt)
    rundir.save_model(student, args.model_folder, out, "model")
    report = prune.sparsity_report(student, fitted.masks, runtime.pruned_by(args))
    method = prune.METHODS[args.method]
    notes = runtime.what_it_tells(d, {"the teacher": teacher_scores.get("teacher_metric"), "the student": metric})
    results = {"task": args.task, "method": args.method, "scope": args.scope, "statistic": method.reads, "metric": metric,
               "holdout_metric": evaluate(student, d, args, rt, holdout=True),
               **teacher_scores,
               "sparsity": prune.sparsity_by_component(student), "target_sparsity": args.sparsity,
               "tokens_per_s": round(fitted.tokens_per_s, 1), "student_seconds": round(fitted.seconds, 1),
               "wall_time_s": round(time.time() - start, 1),
               "device": str(rt.device), "dtype": str(rt.dtype).replace("torch.", ""), "world_size": rt.world,
               "peak_memory_gb": round(runtime.peak_memory_bytes(rt.device) / 1e9, 3),
               "masks_equal_across_ranks": same_masks, "notes": notes, "args": vars(args)}
    freed = rundir.write_results(out, results, report, args.keep_checkpoints)
    runtime.log(rt, f"{args.task}: {metric}; encoder sparsity {results['sparsity']['encoder']:.4f}; exported to {out / 'model'}")
    if freed:
        runtime.log(rt, f"deleted the checkpoints ({freed / 1e6:.0f} MB); pass --keep-checkpoints to keep them")
    for note in notes:
        runtime.log(rt, f"note: {note}")


# -----------------------------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM, what a scheduler sends before it kills a job: the run stops as at Ctrl-C, saying where."""


def terminated(signum, frame):
    raise Terminated()


def main(argv=None):
    signal.signal(signal.SIGTERM, terminated)
    args = cli.parse_args(argv)
    try:
        args = cli.resolve(args)
    except UsageError as e:
        fail(e)
    except KeyboardInterrupt as e:
        fail("interrupted while checking the inputs; nothing was written.", code=exit_code(e))
    if args.resume and (Path(args.out_dir) / "results.json").is_file():
        return rundir.already_finished(args)
    rt, lock = runtime.start_runtime(args), None
    for note in args.notes:
        runtime.log(rt, f"note: {note}")
    try:   # the data read and encoded, the schedule checked, the folder locked: only then is anything written
        runtime.log(rt, f"reading and tokenizing {args.task}")
        d = runtime.load_data(args, data.TASKS[args.task], rt)
        runtime.log(rt, f"{args.task}: {len(d.train)} training examples ({len(d.loader) // args.grad_accum} optimizer "
                        f"steps an epoch), {len(d.eval_features)} dev" + (f", {len(d.holdout_features)} held-out"
                                                                          if d.holdout_features else ""))
        sched = None if args.oneshot else runtime.student_schedule(args, len(d.loader))
        if not args.oneshot and rt.rank == 0:
            runtime.warn_if_long(args, runtime.run_steps(args, len(d.loader), sched), d.tokens_per_batch * args.grad_accum,
                             rt.device)
        lock = rundir.prepare_out_dir(args, rt, rundir.fingerprints(args, d.fingerprint))
    except (UsageError, data.DataError, modeling.CheckpointError) as e:
        fail(e, rt)
    except KeyboardInterrupt as e:
        fail("interrupted before training began; run the same command again.", rt, code=exit_code(e))
    try:
        oneshot(args, d, rt) if args.oneshot else prune_while_training(args, d, sched, rt)
    except (NonFinite, rundir.RunError) as e:
        fail(f"{e}.", rt)
    except KeyboardInterrupt as e:
        fail("interrupted; --oneshot keeps no checkpoint: run it again with --overwrite." if args.oneshot
             else rundir.interrupted(Path(args.out_dir)), rt, code=exit_code(e))
    finally:
        rundir.release_lock(lock)
    finish(rt)


def prune_while_training(args, d, sched, rt):
    """The recipe: a) the dense teacher, b) the student pruned while it learns, c) the export."""
    start = time.time()
    # a) the dense teacher, fine-tuned here unless given
    teacher, teacher_scores = None, {"teacher_metric": None}
    if args.kd:
        teacher, teacher_scores = get_teacher(args, d, rt, later=sched.total_steps)
        if teacher is None:                          # --stop-after, while training the teacher
            return
    # b) the student, pruned gradually while it learns (from the teacher)
    student = runtime.load_model(args.model_folder, d.task, args.seed, rt.device)
    fitted = fit("student", student, teacher, d, sched, args, rt)
    # c) evaluate and export
    if not fitted.stopped:
        export(student, fitted, teacher_scores, d, args, rt, start)


ONESHOT_FIX = "then run it again with --overwrite"     # one-shot keeps no checkpoint to resume from


def oneshot(args, d, rt):
    """--oneshot: the fine-tuned --model pruned to each sparsity in one step, with no training, and
    evaluated: encoder only, the same pruning step as gradual pruning (`pruning_event`).
    With --recomputations N the step is N equal sparsity increments, s * i / N for i = 1..N, each
    scoring with a statistic (oBERT's Fisher, Wanda's norms) gathered again at the weights (and
    masks) the previous increment left, from new batches (increment i reads the batches of pruning
    step i, as a gradual run's steps do); with N = 1 every sparsity starts from the same dense
    weights, so the statistic is gathered once, from the dense model, for all of them."""
    out = Path(args.out_dir)
    method = prune.METHODS[args.method]
    dense = runtime.load_model(args.model_folder, d.task, args.seed, rt.device).eval()
    metric = evaluate(dense, d, args, rt) if rt.rank == 0 else None
    rows = [{"sparsity": 0.0, "encoder_sparsity": prune.sparsity_by_component(dense)["encoder"], "metric": metric,
             "holdout_metric": evaluate(dense, d, args, rt, holdout=True) if rt.rank == 0 else None,
             "seconds": 0.0}]
    stats, stats_seconds = None, 0.0
    if prune.gathered(method) and args.recomputations == 1:
        # every sparsity prunes the same dense weights, so one statistic (at step 1, the batches that
        # pruning_event(1, ...) would draw) serves them all: the result is the same, at 1/len(oneshot) the cost
        t0, params = time.time(), dict(dense.named_parameters())
        names = prune.prunable_names(dense, args.prune_embeddings, args.prune_head)
        stats = gather_statistic(method, dense, names, {}, d, args, rt, tensor_owners(params, names, rt), 1)
        stats_seconds = round(time.time() - t0, 1)
        runtime.log(rt, f"one-shot: {prune.STATISTICS[method.reads].label} of the dense model ({stats_seconds:.0f} s)")
    for s in args.oneshot:
        model, masks, t0 = copy.deepcopy(dense), {}, time.time()
        for i in range(1, args.recomputations + 1):
            masks = pruning_event(i, s * i / args.recomputations, model, masks, None, d, args, rt, stats)
        seconds = time.time() - t0
        if rt.rank == 0:
            rows.append({"sparsity": s, "encoder_sparsity": prune.sparsity_by_component(model)["encoder"],
                         "metric": evaluate(model, d, args, rt), "holdout_metric": evaluate(model, d, args, rt, holdout=True),
                         "seconds": round(seconds, 1)})
            runtime.log(rt, f"one-shot {s:g}: {rows[-1]['metric']} ({seconds:.0f} s)")
            if args.export:
                rundir.save_model(model, args.model_folder, out, f"oneshot-{s:g}", fix=ONESHOT_FIX)
        del model
    if rt.rank == 0:
        title = (f"one-shot {args.method} ({args.scope}), {args.recomputations} recomputation(s), {args.model}, "
                 f"{args.task} validation" + (f"; {prune.STATISTICS[method.reads].label} of the dense model for "
                                              f"all, {stats_seconds:.0f} s" if stats else ""))
        lines = [title, f"{'sparsity':>8} {'encoder':>8} " + " ".join(f"{k:>12}" for k in rows[0]["metric"])
                 + f" {'seconds':>8}"]
        lines += [f"{r['sparsity']:8.2f} {r['encoder_sparsity']:8.4f} " + " ".join(f"{v:12.2f}" for v in
                  r["metric"].values()) + f" {r['seconds']:8.1f}" for r in rows]
        print("\n".join(lines), flush=True)
        notes = runtime.what_it_tells(d, {"the fine-tuned --model": metric})
        for note in notes:
            runtime.log(rt, f"note: {note}")
        rundir.claim(out, "results.json")
        record = {"task": args.task, "method": args.method, "scope": args.scope, "oneshot": rows,
                  "statistic": method.reads, "statistic_seconds": stats_seconds,
                  **({"fisher_seconds": stats_seconds} if method.reads == "fisher" else {}),   # the tables' older name
                  "table": lines, "notes": notes, "args": vars(args)}
        rundir.write_atomic(out / "results.json", json.dumps(record, indent=1), fix=ONESHOT_FIX)


def exit_code(interrupt) -> int:
    """130 for Ctrl-C (128 + SIGINT), 143 for SIGTERM (128 + 15), as shells report them."""
    return 143 if isinstance(interrupt, Terminated) else 130


def fail(message, rt=None, code=2):
    if rt is None or rt.rank == 0:
        print(f"train.py: {message}", file=sys.stderr)
    if rt is not None and rt.distributed:          # every rank checked the same inputs and stops here too
        torch.distributed.destroy_process_group()
    sys.exit(code)


def finish(rt):
    """Under torchrun: wait until every rank is done (rank 0 evaluates and exports), then tear down."""
    if rt.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
