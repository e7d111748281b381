"""cram.py: the CrAM+ step against its rule computed by hand, and train.py's --optimizer cram."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import cram
import data
import prune
import runtime
import train

FIX = Path(__file__).resolve().parent / "fixtures"


def test_cram_step_with_sgd_equals_the_written_rule(tiny_bert_with_vocab):
    """w <- w - eta [ grad L(C_k(w + rho grad L(w))) * M_k + grad L(w) ], by hand, on a tiny model."""
    task = data.TASKS["csqa"]
    model = runtime.load_model(tiny_bert_with_vocab, task, 0, "cpu").eval()    # no dropout: a deterministic L
    tok = data.load_tokenizer(tiny_bert_with_vocab)
    feats = data.encode(task, data.load_split(task, "train", FIX), tok, 64)
    batch = data.collate(feats[:2], data.pad_id(tok))
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = prune.prunable_names(model)

    def grad_at(weights):                                 # ∇L at the given weights, by autograd
        ps = {n: w.clone().requires_grad_(True) for n, w in weights.items()}
        out = torch.func.functional_call(model, ps, (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
        F.cross_entropy(out, batch["labels"]).backward()
        return {n: p.grad for n, p in ps.items()}

    g = grad_at(w0)
    w_tilde = {n: w0[n] + 0.3 * g[n] for n in w0}
    scores = torch.cat([w_tilde[n].abs().flatten() for n in names])
    k = round(0.7 * scores.numel())
    threshold = scores.kthvalue(k).values                  # the k smallest |w̃| are compressed away
    M = {n: w_tilde[n].abs() > threshold for n in names}
    h = grad_at({n: w_tilde[n] * M[n] if n in M else w_tilde[n] for n in w0})
    eta = 0.1
    want = {n: w0[n] - eta * ((h[n] * M[n] if n in M else h[n]) + g[n]) for n in w0}

    def loss_backward():                                  # the closure train.py passes: L of this batch, backward
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                               batch["labels"])
        loss.backward()
        return loss.item(), 7
    assert cram.cram_gradients(model, loss_backward, 0.3, [0.7]) == (pytest.approx(F.cross_entropy(
        torch.func.functional_call(model, w0, (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])),
        batch["labels"]).item()), 7)                      # the first pass's loss, at w
    assert all(torch.equal(p, w0[n]) for n, p in model.named_parameters())            # w itself is unchanged
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    opt.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, want[n], rtol=1e-5, atol=1e-7), n


def test_cram_run_resumes_bit_identically(tmp_path, tiny_bert_with_vocab):
    common = ["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--data-dir", str(FIX), "--batch-size", "1",
              "--epochs", "4", "--sparsity", "0", "--no-kd", "--optimizer", "cram", "--checkpoint-every", "3"]
    train.main(common + ["--out-dir", str(tmp_path / "a")])
    train.main(common + ["--out-dir", str(tmp_path / "b"), "--stop-after", "5"])
    train.main(common + ["--out-dir", str(tmp_path / "b"), "--resume"])
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = tmp_path / "plain"
    train.main([c for c in common if c not in ("--optimizer", "cram")] + ["--out-dir", str(plain)])
    c = load_file(str(plain / "model" / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)      # CrAM changed the training


def test_cram_on_a_pruning_run_without_a_teacher_to_train_is_refused(tmp_path, tiny_bert_with_vocab, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "csqa", "--model", str(tiny_bert_with_vocab), "--out-dir", str(tmp_path / "o"),
                    "--sparsity", "0.8", "--no-kd", "--optimizer", "cram"])
    assert e.value.code == 2 and "--optimizer cram fine-tunes dense models" in capsys.readouterr().err
