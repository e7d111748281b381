"""The criteria beyond magnitude and oBERT (criteria.py), each against an independent reference, and the
registry's promise: a criterion is one function and one entry, its statistic gathered by the loop."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import criteria as C
import data
import model as modeling
import prune as P
import runtime
import train
from test_train import ROOT, args_for

FIX = Path(__file__).resolve().parent / "fixtures"


# -- select: signed scores, and Wanda's per-output-row comparison -----------------------------------

def brute_force_prune(scores: dict, count: int) -> dict:
    """The `count` lowest of all scores together by one full sort (ties: earlier tensor, then lower index)."""
    flat = [(float(v), i, j) for i, s in enumerate(scores.values()) for j, v in enumerate(s.flatten().tolist())]
    chosen = {(i, j) for _, i, j in sorted(flat)[:count]}
    return {n: torch.tensor([(i, j) in chosen for j in range(s.numel())]).view(s.shape)
            for i, (n, s) in enumerate(scores.items())}


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77, 0.95])
def test_signed_scores_select_the_lowest_globally_and_per_matrix(sparsity):
    g = torch.Generator().manual_seed(4)
    scores = {"a": torch.randn(7, 13, generator=g), "b": torch.randn(5, 9, generator=g) * 1e-3,
              "c": torch.randint(-2, 3, (6, 6), generator=g).float()}          # many ties, and exact zeros
    n = sum(s.numel() for s in scores.values())
    keep = P.select(scores, sparsity)
    want = brute_force_prune(scores, round(sparsity * n))
    assert all(torch.equal(keep[k], ~want[k]) for k in scores)
    for k, s in scores.items():                                                  # per matrix, the same rule
        one = P.select({k: s}, sparsity, scope="layer")[k]
        assert torch.equal(one, ~brute_force_prune({k: s}, round(sparsity * s.numel()))[k])


def test_signed_scores_never_revive_a_pruned_weight():
    s = {"w": torch.tensor([[-3.0, -2.0, 5.0, 4.0], [1.0, 2.0, -1.0, 0.0]])}
    old = {"w": torch.tensor([[True, True, False, True], [True, True, True, True]])}   # the 5.0 is pruned
    keep = P.select(s, 0.5, masks=old)
    assert not keep["w"][0, 2] and int((~keep["w"]).sum()) == 4
    assert torch.equal(keep["w"], torch.tensor([[False, False, False, True], [True, True, False, True]]))


def per_row_by_loops(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's per-output comparison written out: row i prunes its k_i lowest, the k_i spreading
    round(s * n) over the rows (the first rows take the remainder); ties by column."""
    out, width = scores.shape
    total = round(sparsity * out * width)
    keep = torch.ones(out, width, dtype=torch.bool)
    for i in range(out):
        k = total // out + (1 if i < total % out else 0)
        ranked = sorted(range(width), key=lambda j: (float(scores[i, j]), j))
        for j in ranked[:k]:
            keep[i, j] = False
    return keep


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.8, 0.93])
def test_row_scope_is_wandas_per_output_comparison(sparsity):
    g = torch.Generator().manual_seed(5)
    scores = {"a": torch.rand(7, 12, generator=g), "b": torch.randint(0, 3, (4, 10), generator=g).float()}
    keep = P.select(scores, sparsity, scope="row")
    for k, s in scores.items():
        assert torch.equal(keep[k], per_row_by_loops(s, sparsity)), k
        assert int((~keep[k]).sum()) == round(sparsity * s.numel())              # exact per matrix
    if sparsity == 0.5:                                                          # s * in whole: the authors' int(s * in)
        assert all(int((~keep["a"][i]).sum()) == 6 for i in range(7))


def test_row_scope_keeps_earlier_masks_and_4_blocks_per_row():
    s = torch.arange(16.0).view(2, 8)
    old = torch.ones(2, 8, dtype=torch.bool)
    old[0, 5:] = False                                                           # row 0 has 3 pruned already
    keep = P.select({"w": s}, 0.25, scope="row", masks={"w": old})["w"]
    assert not keep[0, 5:].any() and keep[0, :5].all()                           # never revived, nothing more taken
    assert torch.equal(keep[1], torch.tensor([False, False] + [True] * 6))       # row 1: its 2 lowest
    blocks = P.select({"w": s}, 0.5, scope="row", pattern="4-block")["w"]        # one group of 4 per row
    assert torch.equal(blocks, torch.tensor([[False] * 4 + [True] * 4] * 2))


# -- Wanda: the score, and the inputs' norms over real tokens ---------------------------------------

def test_wanda_masks_equal_the_formula_written_out():
    """|W_ij| * ||X_j||_2, compared within each output row, on a tiny layer: by explicit loops."""
    g = torch.Generator().manual_seed(6)
    W = torch.randn(5, 8, generator=g)
    X = torch.randn(23, 8, generator=g) * torch.linspace(0.1, 3, 8)             # 23 tokens, inputs of unequal size
    norms = {"w": X.pow(2).sum(0).sqrt()}
    keep = P.select(C.wanda_scores({"w": W}, "unstructured", norms), 0.5, scope="row")["w"]
    for i in range(5):
        row = [abs(float(W[i, j])) * sum(float(X[t, j]) ** 2 for t in range(23)) ** 0.5 for j in range(8)]
        lowest = sorted(range(8), key=lambda j: row[j])[:4]
        assert [not bool(keep[i, j]) for j in range(8)] == [j in lowest for j in range(8)]


def probe_of(batches, size):
    """A Probe whose batches are a fixed list, repeated (whatever size or stream is asked)."""
    def stream(batch_size, stream_id, sharded):
        while True:
            yield from batches
    return P.Probe(batches=stream, loss=None, forward=lambda m, b: m(b["input_ids"], b["attention_mask"],
                                                                     b["token_type_ids"]),
                   device=torch.device("cpu"), owners=None, num_grads=0, fisher_batch_size=0, block_size=0, damp=0.0,
                   calibration_size=size, calibration_batch_size=0)


def test_input_norms_are_over_real_tokens_and_padding_changes_nothing(tiny_bert):
    m = modeling.from_pretrained(tiny_bert, head="classification", num_labels=2, verbose=False)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 99, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    ids[1, 3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": torch.zeros(2)}
    names = ["layers.0.query.weight", "layers.1.output.weight", "pooler.weight"]
    got = C.gather_input_norms(m, names, {}, probe_of([batch], 2))
    padded = {k: torch.cat([v, torch.zeros(v.shape[0], 5, dtype=v.dtype)], 1) if v.dim() == 2 else v
              for k, v in batch.items()}                                       # 5 more padding positions
    more = C.gather_input_norms(m, names, {}, probe_of([padded], 2))
    for n in names:
        assert torch.allclose(got[n], more[n], rtol=1e-5), n
    m.eval()
    with torch.no_grad():                                                      # layer 0's query reads the embeddings
        x = m.embeddings(ids, torch.zeros_like(ids))                           # (B, T, H)
    real = int(mask.sum())                                                     # the root mean square over them
    want = torch.tensor([(sum(float(x[b, t, j]) ** 2 for b in range(2) for t in range(6) if mask[b, t]) / real) ** 0.5
                         for j in range(x.shape[2])])
    assert torch.allclose(got["layers.0.query.weight"], want, rtol=1e-5)


def test_input_norms_take_exactly_the_calibration_size_and_restore_the_mode(tiny_bert):
    m = modeling.from_pretrained(tiny_bert, head="classification", num_labels=2, verbose=False).train()
    ids = torch.randint(5, 99, (3, 4))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    five = C.gather_input_norms(m, ["layers.0.query.weight"], {}, probe_of([batch], 5))   # 3, then 2 of 3
    two_batches = [batch, {k: v[:2] for k, v in batch.items()}]
    want = C.gather_input_norms(m, ["layers.0.query.weight"], {}, probe_of(two_batches, 5))
    assert torch.equal(five["layers.0.query.weight"], want["layers.0.query.weight"]) and m.training


# -- movement: S = -sum_t w(t) g(t), against a hand-run of SGD -------------------------------------

def test_movement_scores_equal_a_hand_run_of_sgd():
    """y = W x, loss = mean ||W x - y*||^2 / 2: g = (W X - Y) X^T / N by hand, w <- w - lr g by hand."""
    g = torch.Generator().manual_seed(8)
    W0, X, Y = torch.randn(3, 4, generator=g), torch.randn(4, 10, generator=g), torch.randn(3, 10, generator=g)
    lr, steps = 0.1, 4
    W, S_hand = W0.clone(), torch.zeros(3, 4)
    for _ in range(steps):
        grad = (W @ X - Y) @ X.T / 10
        S_hand -= W * grad
        W = W - lr * grad
    layer = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(W0)
    opt = torch.optim.SGD(layer.parameters(), lr=lr)
    running = {"weight": torch.zeros(3, 4)}
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (layer(X.T) - Y.T).pow(2).sum(1).mean()).backward()
        C.accumulate_movement(running, {"weight": layer.weight})
        opt.step()
    assert torch.allclose(running["weight"], S_hand, atol=1e-6)
    assert torch.allclose(C.movement_scores({"weight": layer.weight}, "unstructured", running)["weight"], S_hand,
                          atol=1e-6)
    four = C.movement_scores({"weight": layer.weight}, "4-block", running)["weight"]
    assert torch.allclose(four, S_hand.sum(1, keepdim=True).expand(3, 4), atol=1e-6)   # each row one group of 4


# -- through train.py: train, prune exactly, export, resume bit-identically ------------------------

def encoder(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if ".encoder.layer." in k and k.endswith("weight") and "LayerNorm" not in k}


@pytest.mark.parametrize("method", ["movement", "wanda"])
def test_new_criteria_train_prune_exactly_and_resume_bit_identically(tmp_path, tiny_bert_with_vocab, method):
    common = ["--sparsity", "0.8", "--method", method, "--checkpoint-every", "2", "--no-kd"]
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "a", *common))
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "b", *common, "--stop-after", "5"))   # pruning steps at 1, 3, 5, ...
    ck = torch.load(tmp_path / "b" / "student" / "checkpoint.pt", weights_only=False)
    assert (ck["running"] is not None) == (method == "movement")
    if method == "movement":                                   # follows the masks: zero where pruned, moving elsewhere
        assert all((ck["running"][n][~m] == 0).all() and ck["running"][n][m].abs().sum() > 0 for n, m in ck["masks"].items())
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "b", *common, "--resume"))
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k, v in encoder(a).items():                                                # each matrix exactly at 80%
        assert int((v == 0).sum()) == round(0.8 * v.numel()), k
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["args"]["method"] == method and res["args"]["scope"] == P.METHODS[method].scope
    group = {"movement": "per matrix", "wanda": "per output row"}[method]
    assert (tmp_path / "a" / "sparsity_report.txt").read_text().startswith(
        f"pruned by {method} ({group}) to 0.8 of the encoder's prunable weights\n")
    assert res["statistic"] == P.METHODS[method].reads


def test_movement_resume_needs_its_saved_sum(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """Not vacuous: a resume that starts the sum again from zero ends elsewhere."""
    common = ["--sparsity", "0.8", "--method", "movement", "--checkpoint-every", "2", "--no-kd"]
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "a", *common))
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "b", *common, "--stop-after", "5"))
    import rundir
    load = rundir.load_checkpoint
    monkeypatch.setattr(rundir, "load_checkpoint", lambda path, model, opt, device, running=None:
                        load(path, model, opt, device, None))                 # forgets the saved sum
    train.main(args_for(tiny_bert_with_vocab, tmp_path / "b", *common, "--resume"))
    a = encoder(load_file(str(tmp_path / "a" / "model" / "model.safetensors")))
    b = encoder(load_file(str(tmp_path / "b" / "model" / "model.safetensors")))
    assert any(not torch.equal(a[k] == 0, b[k] == 0) for k in a)


def test_oneshot_wanda_prunes_a_fine_tuned_model_from_one_calibration(tmp_path, tiny_bert_with_vocab, monkeypatch):
    ft = tmp_path / "ft"
    train.main(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(FIX), "--batch-size", "1",
                "--epochs", "2", "--sparsity", "0", "--no-kd", "--out-dir", str(ft)])
    calls = []
    gather = train.gather_statistic
    monkeypatch.setattr(train, "gather_statistic", lambda *a: calls.append(a[0].reads) or gather(*a))
    train.main(["--task", "csqa", "--model", str(ft / "model"), "--data-dir", str(FIX), "--batch-size", "1",
                "--out-dir", str(tmp_path / "o"), "--oneshot", "0.5,0.75", "--method", "wanda", "--export",
                "--limit-train", "4", "--seed", "1", "--calibration-size", "3"])   # it reads training data
    assert calls == ["input_norms"]                                      # once, from the dense model, for both
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["statistic"] == "input_norms" and res["scope"] == "row"
    for s in (0.5, 0.75):
        for k, v in encoder(load_file(str(tmp_path / "o" / f"oneshot-{s:g}" / "model.safetensors"))).items():
            per_row = (v == 0).sum(1)
            assert int(per_row.sum()) == round(s * v.numel()) and int(per_row.max() - per_row.min()) <= 1, k


# -- the registry: a new criterion is one function and one entry ------------------------------------

def test_a_criterion_of_an_existing_kind_is_one_function_and_one_entry(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """A toy fifth criterion that reads Wanda's statistic (the inputs' norms, nothing of the weights) and
    a random one that reads nothing: each added by one function and one METHODS entry, and pruned with."""
    seen = []

    def by_input_norm(weights, pattern, stats):
        seen.append(sorted(stats))
        return {n: stats[n][None, :].expand(w.shape).clone() for n, w in weights.items()}

    def at_random(weights, pattern, stats):
        g = torch.Generator().manual_seed(0)
        return {n: torch.rand(w.shape, generator=g) for n, w in weights.items()}
    monkeypatch.setitem(P.METHODS, "inputs", P.Method(by_input_norm, reads="input_norms", help="quiet inputs first"))
    monkeypatch.setitem(P.METHODS, "random", P.Method(at_random, help="a coin"))
    for name in ("inputs", "random"):
        train.main(args_for(tiny_bert_with_vocab, tmp_path / name, "--sparsity", "0.5", "--method", name, "--no-kd",
                            *(["--calibration-size", "2"] if name == "inputs" else [])))
        w = encoder(load_file(str(tmp_path / name / "model" / "model.safetensors")))
        assert sum(int((v == 0).sum()) for v in w.values()) == round(0.5 * sum(v.numel() for v in w.values()))
    assert seen and all(s == sorted(P.prunable_names(runtime.load_model(tiny_bert_with_vocab, data.TASKS["csqa"], 0,
                                                                      "cpu"))) for s in seen)
    w = encoder(load_file(str(tmp_path / "inputs" / "model" / "model.safetensors")))
    query = w["bert.encoder.layer.0.attention.self.query.weight"]
    whole, some = int((query == 0).all(0).sum()), int((query == 0).any(0).sum())
    assert 0 < whole < query.shape[1] and some - whole <= 1          # whole input columns go (one may tie at the cut)


# -- the command line names the new criteria right ---------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--oneshot", "0.5", "--method", "movement"], "--method movement scores weights by how training moved them"),
    (["--method", "wanda", "--prune-embeddings"], "embeddings are tables, not Linears"),
    (["--method", "gmp", "--calibration-size", "64"], "--calibration-size does nothing in this run: --method gmp "
                                                      "reads no input norms"),
    (["--method", "wanda", "--num-grads", "64"], "--num-grads does nothing in this run: --method wanda reads no Fisher"),
    (["--method", "movement", "--epochs", "0.5"], "put its first pruning step at step 0, before any training"),
    (["--method", "wanda", "--calibration-size", "0"], "--calibration-size is 0, but it must be at least 1"),
])
def test_the_new_criteria_refuse_what_they_cannot_do(tmp_path, tiny_bert_with_vocab, capsys, extra, message):
    argv = (["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(FIX), "--out-dir",
             str(tmp_path / "o"), *extra] if "--oneshot" in extra else args_for(tiny_bert_with_vocab, tmp_path / "o",
                                                                                "--no-kd", *extra))
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


# -- under torchrun: the same masks on every rank ----------------------------------------------------

@pytest.mark.parametrize("method", ["movement", "wanda"])
def test_torchrun_two_processes_new_criteria_equal_masks(tmp_path, tiny_bert_with_vocab, method):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           *args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.8", "--method", method, "--scope", "global",
                     "--device", "cpu", "--no-kd")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["world_size"] == 2 and res["masks_equal_across_ranks"] is True
    assert res["sparsity"]["encoder"] == pytest.approx(0.8, abs=1e-3)


def signed_worker(rank, world, init, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    scores = signed_problem()
    owners = P.shard_by_size({n: s.numel() for n, s in scores.items()}, world)
    keep = P.prune_step({n: torch.zeros_like(s) for n, s in scores.items()}, P.METHODS["movement"], 0.6, "global",
                        "unstructured", None, scores, owners)
    torch.save(keep, f"{out}.{rank}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def signed_problem():
    g = torch.Generator().manual_seed(9)
    return {"a": torch.randn(6, 16, generator=g), "b": -torch.rand(4, 16, generator=g), "c": torch.randn(8, 12, generator=g)}


def test_sharded_threshold_takes_signed_scores(tmp_path):
    scores = signed_problem()
    want = P.prune_step({n: torch.zeros_like(s) for n, s in scores.items()}, P.METHODS["movement"], 0.6, "global",
                        stats=scores)
    n = sum(s.numel() for s in scores.values())
    assert all(torch.equal(want[k], ~brute_force_prune(scores, round(0.6 * n))[k]) for k in scores)
    mp.start_processes(signed_worker, args=(2, tmp_path / "init", tmp_path / "out"), nprocs=2, start_method="spawn")
    for r in range(2):
        got = torch.load(f"{tmp_path / 'out'}.{r}", weights_only=False)
        assert all(torch.equal(got[k], want[k]) for k in scores), r


# -- where the loop reads: movement after the masked, clipped gradient; Wanda's calibration examples ---

def test_train_py_accumulates_movement_from_the_gradient_adamw_steps_with(tmp_path, tiny_bert_with_vocab, monkeypatch):
    """S = -sum over optimizer steps of w * g, with g what AdamW steps with (two micro-batches summed,
    masked, clipped) and w the weights it was taken at: recorded at every masked_step and compared."""
    seen = []
    step = train.masked_step

    def recording(opt, model, masks, lr):
        params = dict(model.named_parameters())
        seen.append({n: (params[n].detach().clone(), params[n].grad.clone()) for n in P.prunable_names(model)})
        step(opt, model, masks, lr)
    monkeypatch.setattr(train, "masked_step", recording)
    train.main(args_for(tiny_bert_with_vocab, tmp_path, "--sparsity", "0.8", "--method", "movement", "--no-kd",
                        "--grad-accum", "2", "--epochs", "10", "--keep-checkpoints", "--clip", "0.01"))
    ck = torch.load(tmp_path / "student" / "checkpoint.pt", weights_only=False)
    assert len(seen) == ck["step"] > 6
    for n, m in ck["masks"].items():
        want = -sum(w * g for w, g in (s[n] for s in seen)) * m                      # zeroed where pruned
        assert torch.allclose(ck["running"][n], want, rtol=1e-5, atol=1e-9), n


def test_train_py_measures_exactly_the_calibration_examples_without_padding(tmp_path, tiny_bert_with_vocab):
    """Through train.py's own probe (its batches of 2 x batch size, its stream), on multiple choice:
    (B, C, T) inputs, padded per batch. Each Linear's N is the real tokens of exactly 3 examples."""
    import cli
    args = cli.resolve(cli.parse_args(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(FIX),
                                       "--method", "wanda", "--calibration-size", "3", "--batch-size", "1",
                                       "--out-dir", str(tmp_path / "o")]))
    rt = runtime.Runtime(torch.device("cpu"))
    d = runtime.load_data(args, data.TASKS["csqa"], rt)
    model = runtime.load_model(tiny_bert_with_vocab, d.task, 0, "cpu")
    seen = []
    model.layers[0].query.register_forward_hook(lambda m, x, y: seen.append(x[0].shape))
    norms = train.gather_statistic(P.METHODS["wanda"], model, ["layers.0.query.weight"], {}, d, args, rt, None, 5)
    assert sum(s[0] for s in seen) == 3 * 5                               # 3 questions of 5 choices, no more
    probe = train.probe(d, args, rt, None, 5)                             # the same examples, counted by hand
    batches = probe.batches(2, 2, sharded=False)
    first, second = next(batches), next(batches)
    real = int(first["attention_mask"].sum()) + int(second["attention_mask"][:1].sum())
    model.eval()
    with torch.no_grad():
        total = torch.zeros(32)
        for b in (first, {k: v[:1] for k, v in second.items()}):
            x = model.embeddings(b["input_ids"].flatten(0, 1), b["token_type_ids"].flatten(0, 1))   # (B*C, T, H)
            total += x[b["attention_mask"].flatten(0, 1).bool()].pow(2).sum(0)
    assert torch.allclose(norms["layers.0.query.weight"], (total / real).sqrt(), rtol=1e-5)
