"""sparse.py at inference: PyTorch's CSR path against the dense masked Linear, the routing rule
(only timed kernels are ever chosen), and `python sparse.py MODEL` on a tiny exported model."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model as modeling
import prune
import sparse
import sparse_inference
from conftest import TINY_VOCAB, save_tiny

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("shape, sparsity", [((384, 1536), 0.9), ((1536, 384), 0.97), ((37, 101), 0.5),
                                             ((16, 24), 1.0)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [2, 3])
def test_csr_linear_equals_the_dense_masked_linear(shape, sparsity, bias, dims):
    g = torch.Generator().manual_seed(0)
    out_f, in_f = shape
    linear = torch.nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(shape, generator=g) >= sparsity)
    x = torch.randn(*((3, 11) if dims == 3 else (13,)), in_f, generator=g)
    want = F.linear(x, linear.weight, linear.bias)
    sparse_inference.use_csr(linear)
    with torch.no_grad():
        got = linear(x)
    assert linear.kernel == "csr" and got.shape == want.shape
    assert got.is_contiguous()                  # row-major, as what follows the Linear reads it
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    sparse_inference.use_dense(linear)
    assert "forward" not in vars(linear) and "csr_weight" not in vars(linear)


@pytest.mark.parametrize("kernel", sparse_inference.available_kernels())
def test_every_inference_kernel_returns_row_major_output(kernel):
    """What follows a Linear reads its output row-major; routing times each kernel's layout work."""
    m = one_linear()
    x = torch.randn(2, 7, 64)
    sparse_inference.use_kernel(m[0], kernel)
    with torch.no_grad():
        y = m(x)
    assert vars(m[0]).get("kernel", "dense") == kernel and y.is_contiguous() and y.shape == (2, 7, 32)
    assert torch.allclose(y, F.linear(x, m[0].weight, m[0].bias), atol=1e-5)


def tiny_pruned(folder: Path, sparsity: float) -> Path:
    save_tiny(folder, "bert", "ForSequenceClassification")
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    m = modeling.from_pretrained(folder, head="classification", num_labels=2, verbose=False)
    params, names = dict(m.named_parameters()), prune.prunable_names(m)
    prune.apply_masks(params, prune.magnitude_masks({n: params[n] for n in names}, sparsity))
    m.save_pretrained(folder)
    return folder


def test_routing_chooses_only_kernels_it_timed(tmp_path, monkeypatch):
    m, _ = sparse.load_exported(tiny_pruned(tmp_path / "m", 0.9))
    names = prune.prunable_names(m)
    with torch.no_grad():                                   # one matrix without zeros: timed dense only
        m.get_parameter(names[0]).fill_(0.5)
    timed, time_forward = {}, sparse_inference.time_forward

    def recorded(linear, x):
        timed.setdefault(id(linear), []).append(vars(linear).get("kernel", "dense"))
        return time_forward(linear, x)
    monkeypatch.setattr(sparse_inference, "time_forward", recorded)
    for candidates in (("dense", "csr"), sparse_inference.available_kernels(), ("csr", "dense")):
        timed.clear()
        chosen = sparse_inference.route_inference(m, names, 40, candidates, repeats=2)
        for n, p in chosen.items():
            linear = m.get_submodule(n.rsplit(".", 1)[0])
            assert p["kernel"] in timed[id(linear)] and set(p["seconds"]) == set(timed[id(linear)])
            assert vars(linear).get("kernel", "dense") == p["kernel"]
            assert all(timed[id(linear)].count(k) == 3 for k in p["seconds"])      # a warm-up and 2 rounds each
        assert set(timed[id(m.get_submodule(names[0].rsplit(".", 1)[0]))]) == {"dense"}
        assert all(set(k) <= set(candidates) for k in timed.values())
    with torch.no_grad():                                   # routed outputs equal the dense model's
        ids = torch.randint(5, 99, (2, 9))
        dense, _ = sparse.load_exported(tmp_path / "m")
        with torch.no_grad():
            dense.get_parameter(names[0]).fill_(0.5)
        assert torch.allclose(m(ids, torch.ones_like(ids)), dense(ids, torch.ones_like(ids)), atol=1e-5)


def fake_times(monkeypatch, ms: dict, log: list | None = None):
    """time_forward replaced: each kernel's n-th timing is ms[kernel][n % len]; every call logged."""
    calls = {}

    def fake(linear, x):
        k = vars(linear).get("kernel", "dense")
        if log is not None:
            log.append(k)
        n = calls[k] = calls.get(k, -1) + 1
        return ms[k][n % len(ms[k])] / 1e3
    monkeypatch.setattr(sparse_inference, "time_forward", fake)


def one_linear(sparsity=0.9):
    linear = torch.nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(32, 64, generator=torch.Generator().manual_seed(0)) >= sparsity)
    return torch.nn.Sequential(linear)


@pytest.mark.parametrize("ms, want", [
    ({"dense": [10], "csr": [9.6], "sparseprop": [9.7]}, "dense"),           # 4% faster: a near-tie stays dense
    ({"dense": [10], "csr": [9.5], "sparseprop": [9.7]}, "csr"),             # 5%: enough
    ({"dense": [10], "csr": [9], "sparseprop": [6]}, "sparseprop"),          # the fastest sparse kernel
    ({"dense": [10], "csr": [20], "sparseprop": [11]}, "dense"),
    # the median of the rounds, not one lucky timing: csr's one fast round (warm-up's 50 not counted)
    ({"dense": [50, 10, 10, 10], "csr": [50, 1, 12, 12], "sparseprop": [50, 20, 20, 20]}, "dense"),
])
def test_routing_takes_a_sparse_kernel_only_when_it_beats_dense_by_the_margin(monkeypatch, ms, want):
    if "sparseprop" not in sparse_inference.available_kernels():
        ms = {k: v for k, v in ms.items() if k != "sparseprop"}
        want = "dense" if want == "sparseprop" else want
    fake_times(monkeypatch, ms)
    m = one_linear()
    p = sparse_inference.route_inference(m, ["0.weight"], 16, tuple(ms), repeats=3)["0.weight"]
    assert p["kernel"] == want and vars(m[0]).get("kernel", "dense") == want
    rounds = {k: [v[n % len(v)] for n in range(1, 4)] for k, v in ms.items()}           # after the warm-up
    assert p["seconds"] == {k: sorted(v)[1] / 1e3 for k, v in rounds.items()}            # their medians


def test_routing_without_dense_takes_the_fastest_timed():
    assert sparse_inference.choose_kernel({"csr": 1.0, "sparseprop": 0.99}) == "sparseprop"
    assert sparse_inference.choose_kernel({"dense": 1.0}) == "dense"
    assert sparse_inference.choose_kernel({"dense": 1.0, "csr": 0.9}, margin=0.2) == "dense"


def test_routing_times_the_kernels_in_turns_their_order_rotating(monkeypatch):
    log, kernels = [], ("dense", "csr")
    fake_times(monkeypatch, {"dense": [1], "csr": [1]}, log)
    built = []
    monkeypatch.setattr(sparse_inference, "use_csr", lambda linear, f=sparse_inference.use_csr: (built.append(1), f(linear)))
    m = one_linear()
    sparse_inference.route_inference(m, ["0.weight"], 16, kernels, repeats=3)
    assert log == ["dense", "csr", "csr", "dense", "dense", "csr", "csr", "dense"]     # warm-up round, then 3
    assert len(built) == 1                                      # the CSR copy is built once, not every round
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), F.linear(x, m[0].weight, m[0].bias), atol=1e-5)


def test_the_command_times_a_tiny_exported_model_and_prints_every_row(tmp_path):
    folder = tiny_pruned(tmp_path / "model", 0.9)
    out = tmp_path / "inference.txt"
    done = subprocess.run([sys.executable, str(ROOT / "sparse.py"), str(folder), "--data-dir", str(FIX), "--repeats",
                           "2", "--route-repeats", "1", "--examples", "3", "--batch-sizes", "1,3", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert [l.split(":")[0] for l in lines[:4]] == ["# command", "# commit", "# seed", "# machine"]
    header, *table = [l.split("\t") for l in lines if not l.startswith("#")]
    assert header[:4] == ["model", "encoder sparsity", "batch", "kernels"]
    kernels = ["dense"] + [f"all {k}" for k in sparse_inference.available_kernels()[1:]] + ["fastest per matrix"]
    assert [(r[2], r[3]) for r in table] == [(b, k) for b in ("1", "3") for k in kernels]   # 3 dev examples: batch 3
    for r in table:
        assert r[1] == "0.9000" and r[6].endswith("x") and float(r[7]) <= 1e-5       # outputs as dense's
    assert any(l.startswith("# storage: model") for l in lines) and any(l.startswith("# profile model") for l in lines)
    assert any(l.startswith("# routing") and "1 interleaved rounds" in l for l in lines)


def test_the_command_refuses_a_folder_that_is_not_a_model(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "sparse.py"), str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "config.json" in done.stderr


def test_the_command_also_times_a_random_model_of_a_built_in_shape(tmp_path, monkeypatch, capsys):
    """--random NAME:S1,S2: prune.py's shape NAME with random weights, pruned by global magnitude to
    each sparsity, read with the first model's tokenizer: its rows beside the exported model's."""
    import prune
    folder = tiny_pruned(tmp_path / "model", 0.9)
    monkeypatch.setitem(prune.BUILTIN, "tiny-base", dict(vocab_size=99, hidden_size=64, num_hidden_layers=2,
                                                         intermediate_size=128, max_position_embeddings=64,
                                                         type_vocab_size=2))
    out = tmp_path / "t.txt"
    sparse.main([str(folder), "--random", "tiny-base:0.5,0.9", "--examples", "2", "--batch-sizes", "1,2", "--repeats",
                 "1", "--route-repeats", "1", "--out", str(out)])
    rows = [l.split("\t") for l in out.read_text().splitlines() if not l.startswith("#")][1:]
    assert {(r[0], r[1]) for r in rows} == {("model", "0.9000"), ("tiny-base-0.5", "0.5000"), ("tiny-base-0.9", "0.9000")}
    assert all(float(r[7]) <= 1e-5 for r in rows)
    with pytest.raises(SystemExit) as e:
        sparse.main([str(folder), "--random", "nosuch:0.9"])
    assert e.value.code == 2 and "no built-in shape 'nosuch'" in capsys.readouterr().err
