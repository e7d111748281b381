"""Shared fixtures: tiny random BERT/RoBERTa checkpoints saved in the Hugging Face format.

The reference (`transformers`) builds and saves them, so our loader reads exactly what a public
checkpoint looks like. Nothing here touches the network or ../shared.
"""
import os
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)


def hf_config(model_type, **over):
    import transformers
    if model_type == "bert":
        return transformers.BertConfig(**{**TINY, "type_vocab_size": 2, **over})
    return transformers.RobertaConfig(**{**TINY, "type_vocab_size": 1, "pad_token_id": 1,
                                         "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5, **over})


def save_tiny(folder, model_type="bert", arch="Model", seed=0, **over):
    """Save a random transformers model (e.g. arch "ForMultipleChoice") to folder; returns it in eval mode."""
    import transformers
    torch.manual_seed(seed)
    cls = getattr(transformers, ("Bert" if model_type == "bert" else "Roberta") + arch)
    ref = cls(hf_config(model_type, **over)).eval()
    # random, non-trivial LayerNorms and biases so that every parameter is exercised
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "LayerNorm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(folder)
    return ref


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    save_tiny(folder, "bert")
    return folder


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_roberta")
    save_tiny(folder, "roberta")
    return folder


def padded_batch(model_type, B=3, T=11, vocab=99, seed=1):
    """A batch with different real lengths, padded on the right as data.py pads."""
    g = torch.Generator().manual_seed(seed)
    pad = 0 if model_type == "bert" else 1
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate(range(T, T - 3 * B, -3)):
        ids[b, n:], mask[b, n:] = pad, 0
    tt = torch.zeros(B, T, dtype=torch.long)
    if model_type == "bert":
        tt[:, T // 2:] = 1
    return ids, mask, tt


TINY_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,?!'-_")
              + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"])   # 74 entries, within the tiny vocab of 99


@pytest.fixture(scope="session")
def tiny_bert_with_vocab(tmp_path_factory):
    """A tiny random BERT checkpoint with a character-level WordPiece vocab.txt: a complete model folder."""
    folder = tmp_path_factory.mktemp("tiny_bert_vocab")
    save_tiny(folder, "bert")
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_roberta_with_vocab(tmp_path_factory):
    """A tiny random RoBERTa with a byte-level BPE vocabulary (vocab.json + merges.txt) trained here."""
    from tokenizers import ByteLevelBPETokenizer
    folder = tmp_path_factory.mktemp("tiny_roberta_vocab")
    fixtures = Path(__file__).resolve().parent / "fixtures"
    texts = [p.read_text() for p in sorted(fixtures.rglob("*")) if p.is_file()]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    save_tiny(folder, "roberta", vocab_size=bpe.get_vocab_size())
    return folder


@pytest.fixture(scope="session")
def tiny_sst2(tmp_path_factory):
    """An SST-2-shaped folder: 160 training and 40 dev sentences of the tiny vocabulary's letters, the
    label whether a sentence has more a's than b's (so that a model can learn something)."""
    folder = tmp_path_factory.mktemp("tiny_sst2")
    rng = random.Random(0)

    def sentence():
        words = [''.join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(2, 9))]
        text = " ".join(words)
        return text, int(text.count("a") > text.count("b"))
    for name, n in (("train.tsv", 160), ("dev.tsv", 40)):
        rows = [sentence() for _ in range(n)]
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return folder
