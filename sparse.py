"""
Running sparse weights fast: which kernels exist for which sparsity pattern on which device, and
when they pay.

train.py's pruned model keeps its zeros in place, in ordinary dense tensors. A dense kernel
multiplies a zero exactly as fast as any other number, so by itself 90% sparsity buys nothing:

  pattern         device   kernel                                      pays
  unstructured    GPU      none in PyTorch. Dense GEMMs (cuBLAS, tensor  no: irregular sparse formats
                           cores) skip nothing; cuSPARSE's CSR products   (CSR) lose to tensor cores
                           read irregular memory                          below ~95-99% sparsity
  2:4             GPU      torch.sparse.to_sparse_semi_structured:       up to ~2x on the GEMM, in
                           Ampere's sparse tensor cores keep 2 of every   fp16/bf16, inference (weights
                           4 consecutive input weights and skip the rest  fixed); train.py --pattern 2:4
  unstructured    CPU      training: SparseProp (Nikdan, Pegolotti,      from ~80-90% sparsity, measured
                           Iofinova, Kurtic & Alistarh, ICML 2023), the   per matrix (sparse_backprop's
                           kept weights in CSR, forward and backward      `route`); inference: this
                           vectorised over the tokens with AVX2.          project's kernel from ~70-80%
                           Inference: also PyTorch's CSR product and      (`route_inference`): work and
                           this project's kernel (sparse_kernel.cpp)      traffic ~ the kept weights

For training on a CPU, SparseProp's forward and backward kernels are in sparse_backprop.py
(train.py --sparse-backprop); the inference kernels and the choice among them are in
sparse_inference.py (this project's own kernel in sparse_kernel.cpp). This file holds the 2:4 path
on a GPU and `python sparse.py OUT/model`, which times what the kernels buy on an exported model.

At inference (`python sparse.py MODEL`), `route_inference` chooses per matrix among dense, PyTorch's
CSR product, SparseProp's forward and this project's own kernel (sparse_kernel.cpp): each timed on
the batch's token count, in interleaved rounds, the median kept, and a sparse kernel taken only when
it beats dense by ROUTE_MARGIN (5%).

    pip install pybind11 && pip install --no-build-isolation sparseprop==0.1.14
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

from sparse_inference import ROUTE_MARGIN, available_kernels, route_inference, use_kernel


# -----------------------------------------------------------------------------
# 2:4 on a GPU: the weights of a --pattern 2:4 model in the semi-structured format of the sparse
# tensor cores (Ampere and later, fp16/bf16), for inference.

def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive input weights holds at most 2 non-zeros."""
    return bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all()) if weight.shape[-1] % 4 == 0 else False


def to_semi_structured(model, names, dtype=torch.bfloat16):
    """Replace these 2:4 weights by torch's semi-structured sparse tensors (in place, inference only:
    the result cannot be trained or saved with save_pretrained)."""
    from torch.sparse import to_sparse_semi_structured
    for name in names:
        linear = model.get_submodule(name.rsplit(".", 1)[0])
        if not is_two_four(linear.weight):
            raise ValueError(f"{name} is not 2:4 sparse; prune it with --pattern 2:4 first")
        linear.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach().to(dtype)),
                                           requires_grad=False)
    return model


# -----------------------------------------------------------------------------
# What a user's own exported model gains: `python sparse.py OUT/model [more folders]`.
#
# Every head this project exports is timed with the inputs it takes: (B, T) token ids for
# classification and question answering (whose (start, end) logits are compared as one), (B, C, T)
# for multiple choice. The task comes from the folder where it can (`model_task`), and all that a
# timing could trip over is checked before the first one (`check_flags`, `plan`): the flags, --out
# (files.py's rule), each folder's config, head and task, --seq-len against its positions. Random
# ids are drawn within its vocabulary, real examples cut to its positions, and a batch is never
# larger than the examples (only full batches are timed: a smaller last one would pass for full).

COLUMNS = ["model", "encoder sparsity", "batch", "kernels", "ms per batch", "sequences/s", "speed-up", "max |diff|",
           "matrices"]                   # sequences/s: examples (a question with its C choices is one) per second


def head_of(cfg):
    """model.py's head for a config's architectures ("...ForMultipleChoice"), None for a bare encoder."""
    import model as modeling
    arch = (cfg.extra.get("architectures") or [""])[0]
    return next((h for h, suffix in modeling.ARCHITECTURES.items() if h and arch.endswith(suffix)), None)


def load_exported(folder):
    """A folder train.py exported (or any BERT/RoBERTa one), with the head its config names."""
    import model as modeling
    head = head_of(modeling.load_config(modeling.resolve_folder(folder)))
    return modeling.from_pretrained(folder, head=head, verbose=False).eval(), head   # classification: its own labels


def recorded_task(folder) -> str | None:
    """The task train.py's run recorded for an exported folder: "task" in the run.json or results.json
    of the folder above it (OUT/model, OUT/oneshot-S) or two above (OUT/teacher/model)."""
    for up in list(Path(folder).absolute().parents)[:2]:
        for name in ("run.json", "results.json"):
            try:
                return json.loads((up / name).read_text())["task"]
            except (OSError, ValueError, TypeError, KeyError):
                continue
    return None


def model_task(folder, cfg, head, args):
    """The task whose inputs the model takes: --task, else the one its run recorded, else the one task its
    head (and label count) fits, else sst2 where it fits (the old default); None where random ids need
    none. A --task that the folder contradicts, or a model that fits several tasks, is Refused."""
    import data
    import files
    arch = (cfg.extra.get("architectures") or ["model without a task head"])[0]
    fits = [t for t in data.TASKS.values() if t.kind == head or (head is None and t.kind != "multiple_choice")]
    fits = [t for t in fits if head != "classification" or t.num_labels == cfg.num_labels]
    names = " or ".join(f"--task {t.name}" for t in fits)
    recorded = next((t for t in fits if t.name == recorded_task(folder)), None)
    if args.task and recorded and recorded.name != args.task:
        raise files.Refused(f"--task {args.task}, but {folder} was fine-tuned on {recorded.name} (its run.json says "
                            f"so); drop --task, or pass --task {recorded.name}")
    if args.task and data.TASKS[args.task] not in fits:
        raise files.Refused(f"--task {args.task} is {data.TASKS[args.task].kind}, but {folder} is a {arch} with "
                            f"{cfg.num_labels} labels; " + (f"pass {names}" if fits else "drop --task"))
    if args.task or recorded or len(fits) == 1 or data.TASKS["sst2"] in fits:
        return data.TASKS[args.task] if args.task else recorded or (fits[0] if len(fits) == 1 else data.TASKS["sst2"])
    if not fits and not args.data_dir:
        return None                                      # a classifier of its own: random ids, (B, T)
    raise files.Refused(f"{folder} is a {arch}" + (f" that could be {' or '.join(t.name for t in fits)}, and no "
                        f"run.json above it says which; pass {names}" if fits else f" with {cfg.num_labels} labels, "
                        f"which no task here has; time it on random ids (drop --data-dir)"))


def plan(folder, args):
    """(config, task, dev features or None) of one folder, checked before any timing: a config of ours, a
    task its head takes, a --seq-len its positions hold (without one, random ids are 128 tokens, or as
    many as it holds), and with --data-dir the examples (`dev_features`)."""
    import files
    import model as modeling
    cfg = modeling.load_config(modeling.resolve_folder(folder))
    task = model_task(folder, cfg, head_of(cfg), args)
    if args.seq_len is not None and args.seq_len > modeling.positions(cfg):
        raise files.Refused(f"--seq-len {args.seq_len} is longer than {folder}'s {modeling.positions(cfg)} positions; pass "
                            f"--seq-len {modeling.positions(cfg)} or less")
    return cfg, task, dev_features(folder, args, task, cfg) if args.data_dir else None


def dev_features(folder, args, task, cfg) -> tuple[list[dict], int]:
    """The task's first --examples dev examples, encoded, cut to the model's positions, and the padding
    id; Refused if they are fewer than a batch, or hold token ids beyond the model's vocabulary."""
    import data
    import files
    import model as modeling
    tok = data.load_tokenizer(folder)
    examples = data.load_split(task, "validation", args.data_dir)[: args.examples]
    if len(examples) < max(args.batch_sizes):
        raise files.Refused(f"--data-dir's {task.name} dev split has {len(examples)} examples, fewer than batch "
                            f"{max(args.batch_sizes)}; pass --batch-sizes of at most {len(examples)}")
    if task.kind == "question_answering" and modeling.positions(cfg) <= 3 + 128:     # data.encode's windows share 128
        raise files.Refused(f"{folder} holds {modeling.positions(cfg)} positions, too few for SQuAD's windows, which share "
                            f"128 context tokens; time it on random ids (drop --data-dir)")
    features = data.encode(task, examples, tok, min(task.max_length, modeling.positions(cfg)))
    top = max(max(sum(ids, []) if isinstance(ids[0], list) else ids) for ids in (f["input_ids"] for f in features))
    if top >= cfg.vocab_size:
        raise files.Refused(f"{folder}'s tokenizer gives token id {top}, but its config.json's vocab_size is "
                            f"{cfg.vocab_size}; pass a model folder whose tokenizer is the model's own")
    return features, data.pad_id(tok)


def input_batches(args, batch_size: int, cfg, task, dev=None) -> list[dict]:
    """Full batches of batch_size: the dev features (`dev_features`) padded to each batch's longest, or
    random token ids of --seq-len within the vocabulary; (B, C, T) for multiple choice."""
    import data
    import model as modeling
    if dev is not None:
        features, pad = dev
        loader = data.make_loader(features[: len(features) // batch_size * batch_size], batch_size, False, 0, pad)
        return [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")} for b in loader]
    g = torch.Generator().manual_seed(0)
    choices = (task.num_labels,) if task is not None and task.kind == "multiple_choice" else ()
    low = 5 if cfg.vocab_size > 5 else 0                 # clear of the special tokens, where there are others
    ids = torch.randint(low, min(1000, cfg.vocab_size), (args.examples // batch_size, batch_size, *choices,
                                                         args.seq_len or min(128, modeling.positions(cfg))), generator=g)
    return [{"input_ids": i, "attention_mask": torch.ones_like(i), "token_type_ids": torch.zeros_like(i)} for i in ids]


@torch.no_grad()
def outputs(model, batches) -> list:
    return [model(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]


def max_difference(a, b) -> float:
    flat = lambda o: torch.cat([t.flatten() for t in (o if isinstance(o, (tuple, list)) else [o])])
    return max(float((flat(x) - flat(y)).abs().max()) for x, y in zip(a, b))


@torch.no_grad()
def latencies(variants: dict, batches, repeats: int) -> dict:
    """Median seconds per batch of each variant's forward, the variants timed in turns (their order
    rotating each round) so that the machine's drift hits all alike."""
    names, times = list(variants), {k: [] for k in variants}
    outputs(next(iter(variants.values())), batches[:1])
    for r in range(repeats + 1):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            outputs(variants[k], batches)
            if r:                                                        # round 0 warms every variant up
                times[k].append((time.perf_counter() - t) / len(batches))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def benchmark(folder, args, cfg, task, dev) -> tuple[list, list]:
    """Rows (model, sparsity, batch, kernel, latency, sequences/s, speed-up, max diff, kernels) and the
    per-matrix profile of the fastest routing, for one exported model (`plan` gives cfg, task and dev)."""
    import copy
    import prune
    dense, _ = load_exported(folder)
    names = prune.prunable_names(dense)
    sparsity = sum(int((dense.get_parameter(n) == 0).sum()) for n in names) / sum(dense.get_parameter(n).numel()
                                                                                 for n in names)
    rows, profile = [], []
    for batch_size in args.batch_sizes:
        batches = input_batches(args, batch_size, cfg, task, dev)
        tokens = round(sum(b["input_ids"].numel() for b in batches) / len(batches))
        variants = {"dense": dense}
        for kernel in available_kernels()[1:]:
            variants[f"all {kernel}"] = copy.deepcopy(dense)
            for n in names:
                use_kernel(variants[f"all {kernel}"].get_submodule(n.rsplit(".", 1)[0]), kernel)
        variants["fastest per matrix"] = copy.deepcopy(dense)
        chosen = route_inference(variants["fastest per matrix"], names, tokens, repeats=args.route_repeats)
        reference = outputs(dense, batches)
        seconds = latencies(variants, batches, args.repeats)
        for kernel, model in variants.items():
            counts = {}
            for n in names:
                k = vars(model.get_submodule(n.rsplit(".", 1)[0])).get("kernel", "dense")
                counts[k] = counts.get(k, 0) + 1
            rows.append([Path(folder).name, f"{sparsity:.4f}", str(batch_size), kernel, f"{1e3 * seconds[kernel]:.3f}",
                         f"{batch_size / seconds[kernel]:.1f}", f"{seconds['dense'] / seconds[kernel]:.2f}x",
                         f"{max_difference(outputs(model, batches), reference):.2e}",
                         ", ".join(f"{k} {c}" for k, c in sorted(counts.items()))])
        profile += [f"# profile {Path(folder).name} batch {batch_size} ({tokens} tokens) {n} "
                    f"{'x'.join(map(str, p['shape']))} sparsity {p['sparsity']:.3f}: "
                    + ", ".join(f"{k} {1e3 * t:.3f} ms" for k, t in p["seconds"].items()) + f" -> {p['kernel']}"
                    for n, p in chosen.items()]
    return rows, profile


def storage(folder) -> list[str]:
    """The exported weights file's size, and its size after zlib (a general-purpose compressor: the
    zeros compress, the kept float32 values hardly do)."""
    import zlib
    path = Path(folder) / "model.safetensors"
    raw = (path if path.is_file() else Path(folder) / "pytorch_model.bin").read_bytes()
    return [Path(folder).name, f"{len(raw) / 1e6:.1f}", f"{len(zlib.compress(raw, 6)) / 1e6:.1f}"]


def random_models(spec: str, tokenizer_from, folder: Path) -> list[str]:
    """--random NAME:S1,S2: a model of prune.py's built-in NAME shape (bert-base-uncased: 768 wide, 12
    layers) with random weights (the reference's initialisation, seed 0), pruned by global magnitude to
    each sparsity and saved under `folder` (a temporary one) with the tokenizer of the first model timed;
    returns their folders, named NAME-S. So the table shows how the gain grows with the matrices' size."""
    import files
    import model as modeling
    import prune
    name, _, sparsities = spec.partition(":")
    if name not in prune.BUILTIN:
        raise files.Refused(f"--random {spec}: no built-in shape {name!r}; pass one of {', '.join(prune.BUILTIN)}, "
                            f"as NAME:0.9,0.97")
    try:
        values = [float(v) for v in sparsities.split(",")]
        assert values and all(0 <= v < 1 for v in values)
    except (ValueError, AssertionError):
        raise files.Refused(f"--random {spec}: the sparsities must be numbers in [0, 1), as {name}:0.9,0.97") from None
    shape = prune.BUILTIN[name]
    vocab = modeling.load_config(modeling.resolve_folder(tokenizer_from)).vocab_size
    if shape["vocab_size"] < vocab:
        raise files.Refused(f"--random {name}'s {shape['vocab_size']} tokens are fewer than the tokenizer of "
                            f"{tokenizer_from} gives ({vocab}); pass a model with a smaller vocabulary first")
    cfg = modeling.Config(**shape, num_attention_heads=shape["hidden_size"] // 64, model_type="bert",
                          extra={"architectures": ["BertForSequenceClassification"]})
    out = []
    for sparsity in values:
        torch.manual_seed(0)
        model = modeling.Encoder(cfg, "classification")
        modeling.init_module(model, cfg)
        params = dict(model.named_parameters())
        names = prune.prunable_names(model)
        prune.apply_masks(params, prune.magnitude_masks({n: params[n] for n in names}, sparsity))
        target = folder / f"{name}-{sparsity:g}"
        model.save_pretrained(target)
        for tokenizer_file in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(tokenizer_from) / tokenizer_file).is_file():
                (target / tokenizer_file).write_bytes((Path(tokenizer_from) / tokenizer_file).read_bytes())
        out.append(str(target))
    return out


def check_flags(args):
    """Every flag's value, before any work: one sentence (files.Refused) for a value that cannot work."""
    import data
    import files
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise files.Refused(f"--batch-sizes takes whole numbers such as 1,32, not {args.batch_sizes!r}") from None
    if args.seq_len is not None and args.data_dir:
        raise files.Refused("--seq-len sets the length of random token ids, but --data-dir gives real examples; "
                            "drop one of them")
    for flag, value, least in (("--batch-sizes", min(args.batch_sizes), 1), ("--examples", args.examples, 1),
                               ("--repeats", args.repeats, 1), ("--route-repeats", args.route_repeats, 1),
                               ("--seq-len", args.seq_len or 2, 2), ("--threads", 1 if args.threads is None else args.threads, 1)):
        if value < least:
            raise files.Refused(f"{flag} is {value}, but it must be at least {least}; pass e.g. {flag} {max(least, 2)}")
    if max(args.batch_sizes) > args.examples:            # a batch holds at most the examples there are
        raise files.Refused(f"--batch-sizes {max(args.batch_sizes)} is more than --examples {args.examples}; pass "
                            f"--examples {max(args.batch_sizes)} or more, or smaller batches")
    if args.task is not None and args.task not in data.TASKS:
        raise files.Refused(f"--task {args.task} is not a task here; pass one of {', '.join(data.TASKS)}")
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
    except (RuntimeError, ValueError, OverflowError) as e:
        raise files.Refused(f"--threads {args.threads} is refused by torch ({e}); pass e.g. --threads "
                            f"{os.cpu_count()}") from None
    if args.out:
        files.check_target(args.out, files.TIMINGS)


def main(argv=None):
    import argparse
    import tempfile
    import data
    import files
    import model as modeling
    ap = argparse.ArgumentParser(description="Time an exported model's forward pass on this CPU: dense, every "
                                             "encoder Linear through one sparse kernel, and through the fastest "
                                             "kernel for each matrix; with the outputs' difference from dense and "
                                             "the file's size before and after compression.")
    ap.add_argument("models", nargs="+", help="exported model folders (train.py's OUT/model, OUT/oneshot-S)")
    ap.add_argument("--task", help="the task whose inputs the model takes (default: the one its run.json above it "
                                   "names, else the one its head fits, else sst2)")
    ap.add_argument("--data-dir", help="the task's released files; without it, random token ids of --seq-len")
    ap.add_argument("--seq-len", type=int, help="tokens per sequence without --data-dir (default 128, or the model's "
                                                "positions if fewer)")
    ap.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default 1,32: one sentence, "
                                                         "and a serving batch)")
    ap.add_argument("--examples", type=int, default=64, help="inputs per timing round (default 64)")
    ap.add_argument("--repeats", type=int, default=20, help="timing rounds; the median is kept (default 20)")
    ap.add_argument("--route-repeats", type=int, default=5, help="timing rounds per matrix for the fastest-per-matrix "
                                                               "routing, each kernel once per round in turns; the "
                                                               "median is kept (default 5)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--random", metavar="NAME:S1,S2", help="also time a model of a built-in shape (bert-base-uncased) "
                                                        "with random weights pruned by global magnitude to each "
                                                        "sparsity, read with the first model's tokenizer")
    ap.add_argument("--out", help="also write the table here (with the command, commit and machine on top)")
    args = ap.parse_args(argv)
    with files.command("sparse.py", data.DataError, modeling.CheckpointError), tempfile.TemporaryDirectory() as tmp:
        check_flags(args)
        if args.random:
            args.models += random_models(args.random, args.models[0], Path(tmp))
        plans = {folder: plan(folder, args) for folder in args.models}    # every folder, before the first timing
        lines = files.provenance("sparse.py", argv if argv is not None else sys.argv[1:],
                                 "none: timings; the inputs are the task's first dev examples (or token ids from seed 0)")
        lines.append("\t".join(COLUMNS))
        print(lines[-1], flush=True)
        profiles, sizes = [], [["model", "MB", "MB after zlib"]]
        for folder, (cfg, task, dev) in plans.items():
            try:
                rows, profile = benchmark(folder, args, cfg, task, dev)
                sizes.append(storage(folder))
            except (files.CommandError, data.DataError, modeling.CheckpointError):
                raise
            except Exception as e:      # what no check foresaw: still one line, naming the folder
                raise files.CommandError(f"{folder}: {type(e).__name__}: {e}") from None
            lines += ["\t".join(r) for r in rows]
            profiles += profile
            print("\n".join("\t".join(r) for r in rows), flush=True)
        lines += ["# storage: " + "\t".join(s) for s in sizes]
        lines.append(f"# routing (fastest per matrix): each matrix's kernels timed on the batch's token count in "
                     f"{args.route_repeats} interleaved rounds (after a warm-up), the median kept; a sparse kernel "
                     f"replaces dense only if at least {ROUTE_MARGIN:.0%} faster")
        lines += profiles
        print("\n".join(l for l in lines if l.startswith("# storage")))
        if args.out:
            files.write_result(args.out, "\n".join(lines) + "\n", files.TIMINGS)


if __name__ == "__main__":
    main()
