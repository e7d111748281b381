"""
BERT and RoBERTa, written from scratch, loading and saving public Hugging Face checkpoints.

This is the network that every other file prunes, trains and evaluates. It implements the
post-LayerNorm Transformer encoder of Devlin et al. (2019, "BERT", section 3) and the RoBERTa
variant of Liu et al. (2019), with the same math as the `transformers` reference so that a
public checkpoint gives the same numbers here (tests/test_model.py checks max |diff| <= 1e-5).

How it connects:
  - prune.py prunes the six `nn.Linear` weights of every encoder layer, named plainly here:
    `layers.{i}.query / key / value / attn_out / intermediate / output`. Embeddings, LayerNorms,
    the pooler and the task head stay dense (the paper's first guideline).
  - data.py produces `input_ids`, `attention_mask` (and `token_type_ids` for BERT pairs) in
    the shapes `forward` expects; train.py and cli.py call `from_pretrained` (which checks the
    config: `check_config`), rundir.py's `save_model` calls `save_pretrained`.

One encoder layer (post-LN, as in the original BERT):
    a = LayerNorm(x + attn_out(Attention(query(x), key(x), value(x))))
    y = LayerNorm(a + output(GELU(intermediate(a))))
"""
import json
import os
from dataclasses import dataclass, field, asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS = (None, "classification", "multiple_choice", "question_answering")
ENCODER_LINEARS = ("query", "key", "value", "attn_out", "intermediate", "output")
# The pooler and the task heads, outside the encoder: never pruned unless asked (prune.py), and
# initialised when a checkpoint lacks them (a new task head, `from_pretrained`).
HEAD_MODULES = ("pooler", "head_dense", "classifier", "qa")


class CheckpointError(ValueError):
    """A model folder, config or weights file that cannot be used; the message says how to fix it."""


# -----------------------------------------------------------------------------
# Config: the fields of a Hugging Face BERT/RoBERTa `config.json` that the math depends on.

@dataclass
class Config:
    model_type: str = "bert"              # "bert" or "roberta"
    vocab_size: int = 30522
    hidden_size: int = 768                # H
    num_hidden_layers: int = 12           # L
    num_attention_heads: int = 12         # NH; head size D = H / NH
    intermediate_size: int = 3072         # 4H in every public checkpoint
    hidden_act: str = "gelu"              # "gelu" is the exact erf GELU in the reference
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2              # RoBERTa: 1 (only one segment embedding)
    layer_norm_eps: float = 1e-12         # RoBERTa: 1e-5
    pad_token_id: int = 0                 # RoBERTa: 1, and positions start at pad_token_id + 1
    initializer_range: float = 0.02
    classifier_dropout: float | None = None
    num_labels: int = 2
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, kept for saving

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "num_labels")}
        cfg = cls(**{k: v for k, v in d.items() if k in known},
                  extra={k: v for k, v in d.items() if k not in known})
        if "id2label" in d:  # the reference stores the label count as the id2label map
            cfg.num_labels = len(d["id2label"])
        return cfg

    def to_dict(self) -> dict:
        d = {**self.extra, **{k: v for k, v in asdict(self).items() if k not in ("extra", "num_labels")}}
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return d


def load_config(folder: Path) -> Config:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; pass a Hugging Face model folder "
                              f"(config.json and model.safetensors) or a hub id.")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:     # a ValueError too, but not JSON's: say what it is
        raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); re-download or "
                              f"re-save the model.") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download or re-save the model.")
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror}); check its permissions, or re-download "
                              f"the model.") from None
    if not isinstance(d, dict) or d.get("model_type") not in ("bert", "roberta"):
        kind = d.get("model_type") if isinstance(d, dict) else None
        raise CheckpointError(f"{path} has model_type {kind!r}; prune-lm supports only "
                              f"'bert' and 'roberta' checkpoints.")
    if "id2label" in d and not isinstance(d["id2label"], dict):   # its size is the label count (from_dict)
        raise CheckpointError(f"{path}: id2label is {d['id2label']!r:.40}, but it must be a map from class ids to "
                              f"names, such as {{\"0\": \"LABEL_0\"}}; fix config.json or re-download the model.")
    cfg = Config.from_dict(d)
    check_config(cfg, path)
    return cfg


# field -> (what it must be, test): every field the network's shapes and math read
CONFIG_RULES = {
    **{k: ("a whole number of at least 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
       for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")},
    "pad_token_id": ("a whole number, 0 or more", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    **{k: ("a number in [0, 1)", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1)
       for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")},
    "layer_norm_eps": ("a number above 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
    "initializer_range": ("a number above 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        and v > 0),
    "classifier_dropout": ("null or a number in [0, 1)", lambda v: v is None or (isinstance(v, (int, float))
                                                                                and not isinstance(v, bool) and 0 <= v < 1)),
    "model_type": ("bert or roberta", lambda v: v in ("bert", "roberta")),
    "hidden_act": ("a string", lambda v: isinstance(v, str)),
}


def positions(cfg: Config) -> int:
    """Tokens a sequence may hold: RoBERTa's position ids start at pad_token_id + 1 (`position_ids`)."""
    return cfg.max_position_embeddings - (cfg.pad_token_id + 1 if cfg.model_type == "roberta" else 0)


def check_config(cfg: Config, path):
    """Every field the model reads, checked before any tensor is built: one sentence naming it."""
    for name, (what, ok) in CONFIG_RULES.items():
        if not ok(getattr(cfg, name)):
            raise CheckpointError(f"{path}: {name} is {getattr(cfg, name)!r}, but it must be {what}; fix config.json "
                                  f"or re-download the model.")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise CheckpointError(f"{path}: hidden_size {cfg.hidden_size} is not divisible by num_attention_heads "
                              f"{cfg.num_attention_heads}; fix config.json or re-download the model.")
    if cfg.hidden_act not in ACTIVATIONS:
        raise CheckpointError(f"{path}: hidden_act {cfg.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}; "
                              f"fix config.json or re-download the model.")
    if cfg.pad_token_id >= cfg.vocab_size:
        raise CheckpointError(f"{path}: pad_token_id {cfg.pad_token_id} is outside the vocabulary of "
                              f"{cfg.vocab_size}; fix config.json or re-download the model.")


# -----------------------------------------------------------------------------
# The network.

ACTIVATIONS = {"gelu": F.gelu,                                      # exact: x * Phi(x), with erf
               "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
               "relu": F.relu}


class Embeddings(nn.Module):
    """e = LayerNorm(word[ids] + position[pos] + token_type[tt])."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.roberta = cfg.model_type == "roberta"
        self.pad = cfg.pad_token_id

    def position_ids(self, input_ids):
        if not self.roberta:
            return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        # RoBERTa (from fairseq): real tokens are numbered pad+1, pad+2, ...; padding keeps `pad`.
        real = (input_ids != self.pad).long()                       # (B, T)
        return torch.cumsum(real, dim=1) * real + self.pad           # (B, T)

    def forward(self, input_ids, token_type_ids):
        e = self.word(input_ids) + self.position(self.position_ids(input_ids)) + self.token_type(token_type_ids)
        return self.dropout(self.norm(e))                            # (B, T, H)


class Layer(nn.Module):
    """One post-LN encoder layer. The six Linears are what prune.py prunes."""

    def __init__(self, cfg: Config):
        super().__init__()
        H, I = cfg.hidden_size, cfg.intermediate_size
        self.n_head = cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.attn_out = nn.Linear(H, H)
        self.attn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(H, I)
        self.output = nn.Linear(I, H)
        self.out_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.attn_dropout = cfg.attention_probs_dropout_prob
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def attention(self, x, keep):
        B, T, H = x.shape
        # split heads: (B, T, H) -> (B, T, NH, D) -> (B, NH, T, D)
        q, k, v = (lin(x).view(B, T, self.n_head, H // self.n_head).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        # softmax(q k^T / sqrt(D)) v, with padded keys excluded; keep is (B, 1, 1, T), True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, H)                   # (B, NH, T, D) -> (B, T, H)

    def forward(self, x, keep):
        a = self.attn_norm(x + self.dropout(self.attn_out(self.attention(x, keep))))
        return self.out_norm(a + self.dropout(self.output(self.act(self.intermediate(a)))))


class Encoder(nn.Module):
    """Embeddings, L layers, an optional pooler, and one of the task heads.

    Which parts exist follows the reference exactly, so that checkpoints map one to one:
      head None               pooler kept (like BertModel / RobertaModel)
      "classification"        BERT: pooler -> dropout -> classifier (H -> num_labels)
                              RoBERTa: no pooler; x[:, 0] -> dropout -> dense -> tanh -> dropout -> out_proj
      "multiple_choice"       pooler -> dropout -> classifier (H -> 1), one score per choice
      "question_answering"    no pooler; qa (H -> 2) gives start and end logits per token
    """

    def __init__(self, cfg: Config, head=None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.config, self.head = cfg, head
        H = cfg.hidden_size
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        roberta_cls = cfg.model_type == "roberta" and head == "classification"
        uses_pooler = head in (None, "multiple_choice") or (head == "classification" and not roberta_cls)
        self.pooler = nn.Linear(H, H) if uses_pooler else None
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        self.head_dropout = nn.Dropout(p)
        if head == "classification" and roberta_cls:
            self.head_dense = nn.Linear(H, H)
        if head == "classification":
            self.classifier = nn.Linear(H, cfg.num_labels)
        elif head == "multiple_choice":
            self.classifier = nn.Linear(H, 1)
        elif head == "question_answering":
            self.qa = nn.Linear(H, 2)

    @property
    def takes_token_types(self) -> bool:
        """BERT has two segment embeddings; RoBERTa one, so its token types are all 0 whatever is passed."""
        return self.config.type_vocab_size > 1

    def encode(self, input_ids, attention_mask, token_type_ids=None):
        if token_type_ids is None or not self.takes_token_types:
            token_type_ids = torch.zeros_like(input_ids)
        keep = attention_mask.bool()[:, None, None, :]              # (B, T) -> (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)              # (B, T, H)
        for layer in self.layers:
            x = layer(x, keep)
        return x                                                     # (B, T, H)

    def pooled(self, x):
        return torch.tanh(self.pooler(x[:, 0]))                     # (B, H): tanh(W x_[CLS] + b)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if self.head == "multiple_choice":
            # each (context, choice) pair is one sequence: (B, C, T) -> (B*C, T)
            B, C, T = input_ids.shape
            flat = lambda t: None if t is None else t.reshape(B * C, T)
            x = self.encode(flat(input_ids), flat(attention_mask), flat(token_type_ids))
            return self.classifier(self.head_dropout(self.pooled(x))).view(B, C)   # (B*C, 1) -> (B, C)
        x = self.encode(input_ids, attention_mask, token_type_ids)
        if self.head is None:
            return x                                                 # (B, T, H)
        if self.head == "question_answering":
            start, end = self.qa(x).unbind(dim=-1)                   # (B, T, 2) -> 2 x (B, T)
            return start, end
        if self.pooler is not None:                                  # BERT classification
            return self.classifier(self.head_dropout(self.pooled(x)))             # (B, num_labels)
        h = torch.tanh(self.head_dense(self.head_dropout(x[:, 0])))  # RoBERTa classification head
        return self.classifier(self.head_dropout(h))                 # (B, num_labels)

    def save_pretrained(self, folder):
        """config.json + model.safetensors under the reference's names; `transformers` loads it."""
        save_pretrained(self, folder)


# -----------------------------------------------------------------------------
# The name table: our parameter name -> the reference's name (without the bert./roberta. prefix).

LAYER_TABLE = {  # inside "layers.{i}." (ours) and "encoder.layer.{i}." (reference)
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "out_norm": "output.LayerNorm",
}
TOP_TABLE = {
    "embeddings.word": "embeddings.word_embeddings",
    "embeddings.position": "embeddings.position_embeddings",
    "embeddings.token_type": "embeddings.token_type_embeddings",
    "embeddings.norm": "embeddings.LayerNorm",
    "pooler": "pooler.dense",
}
HEAD_TABLE = {  # task heads live outside the base model's prefix in the reference
    "classifier": "classifier",            # BERT classification and both multiple-choice heads
    "head_dense": "classifier.dense",      # RoBERTa classification head
    "qa": "qa_outputs",
}
ROBERTA_CLS_TABLE = {"classifier": "classifier.out_proj", "head_dense": "classifier.dense"}
# A checkpoint's head weights that a model of another head leaves unused (the new task's head replaces them).
UNUSED_HEADS = ("pooler.", "classifier", "qa_outputs")
# Keys a pretrained checkpoint may hold that we ignore on purpose: the masked-LM and
# next-sentence heads of pre-training (not used for fine-tuning), and old position-id buffers.
IGNORED_PREFIXES = ("cls.", "lm_head.")
IGNORED_SUFFIXES = ("position_ids",)
ARCHITECTURES = {None: "Model", "classification": "ForSequenceClassification",
                 "multiple_choice": "ForMultipleChoice", "question_answering": "ForQuestionAnswering"}


def name_table(model: Encoder) -> dict[str, str]:
    """Every parameter of `model` -> its full name in a reference checkpoint of the same task."""
    cfg, prefix = model.config, ("" if model.head is None else model.config.model_type + ".")
    modules = {}
    for ours, ref in TOP_TABLE.items():
        modules[ours] = prefix + ref
    for i in range(cfg.num_hidden_layers):
        for ours, ref in LAYER_TABLE.items():
            modules[f"layers.{i}.{ours}"] = f"{prefix}encoder.layer.{i}.{ref}"
    heads = ROBERTA_CLS_TABLE if cfg.model_type == "roberta" and model.head == "classification" else HEAD_TABLE
    modules.update(heads)
    table = {}
    for name, _ in model.named_parameters():
        module, kind = name.rsplit(".", 1)                            # kind: weight or bias
        table[name] = f"{modules[module]}.{kind}"
    return table


# -----------------------------------------------------------------------------
# Loading and saving.

def hub_reachable(timeout: float = 2.0) -> bool:
    """One quick look at the Hugging Face hub before asking it for files. Offline, the hub client
    retries with back-off for about 25 s before it gives up; this answers in at most `timeout`."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    import urllib.error
    import urllib.request
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True                    # the server answered, if only with an error page
    except Exception:
        return False
    return True


def resolve_folder(name_or_path) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (config, weights, tokenizer files), or
    found in the hub's local cache when the hub cannot be reached."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise CheckpointError(f"{name_or_path} is not a model folder; pass a folder holding "
                              f"config.json and model.safetensors, or a hub id like bert-base-uncased.")
    offline = not hub_reachable()
    try:
        from huggingface_hub import hf_hub_download
        config = hf_hub_download(str(name_or_path), "config.json", local_files_only=offline)
    except Exception as e:
        why = "the Hugging Face hub cannot be reached and it is not in the hub's cache" if offline else \
            f"the Hugging Face hub could not give it ({type(e).__name__})"
        raise CheckpointError(f"no local folder {name_or_path!r} and {why}; download the model once and pass "
                              f"its local folder (config.json, model.safetensors, tokenizer files).") from None
    for name in ("model.safetensors", "pytorch_model.bin"):   # weights: the first that exists
        try:
            hf_hub_download(str(name_or_path), name, local_files_only=offline)
            break
        except Exception:
            continue
    for name in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json"):
        try:
            hf_hub_download(str(name_or_path), name, local_files_only=offline)
        except Exception:
            pass  # tokenizer files are optional: data.py uses whichever exists
    return Path(config).parent


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file
            return load_file(str(st))
        if pt.is_file():
            return torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:
        bad = st if st.is_file() else pt
        raise CheckpointError(f"weights file {bad} is corrupt or truncated ({type(e).__name__}); "
                              f"re-download or re-save the model.") from None
    raise CheckpointError(f"{folder} has no model.safetensors or pytorch_model.bin; "
                          f"pass a complete Hugging Face model folder.")


def normalise_key(key: str) -> str | None:
    """A checkpoint key as the reference names it today, with the base prefix; None if ignored."""
    if key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
        return None
    # old TF-converted checkpoints (bert-base-uncased's .bin) call LayerNorm's parameters gamma/beta
    if "LayerNorm." in key:
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key


def from_pretrained(name_or_path, head=None, num_labels=None, verbose=True) -> Encoder:
    """Load a BERT/RoBERTa checkpoint (local folder or hub id) with an optional task head.

    num_labels: for head="classification"; defaults to the checkpoint's own label count.
    Base-model weights are accepted with or without the `bert.`/`roberta.` prefix. Every
    encoder weight must be present with the right shape; head weights the checkpoint lacks are
    initialised (normal(0, initializer_range), zero bias) and listed in one printed line (verbose).
    """
    folder = resolve_folder(name_or_path)
    cfg = load_config(folder)
    if num_labels is not None:
        cfg.num_labels = num_labels
    model = Encoder(cfg, head)
    state = {}
    for key, value in read_state_dict(folder).items():
        key = normalise_key(key)
        if key is not None:
            state[key] = value
    prefix = cfg.model_type + "."
    has_prefix = any(k.startswith(prefix) for k in state)
    init_module(model, cfg)  # every parameter starts from the reference's init; loaded ones overwrite
    missing, used = [], set()
    with torch.no_grad():
        for ours, ref in name_table(model).items():
            bare = ref[len(prefix):] if ref.startswith(prefix) else ref
            candidates = [prefix + bare, bare] if has_prefix else [bare, prefix + bare]
            key = next((c for c in candidates if c in state), None)
            found = state[key] if key is not None else None
            if key is not None:
                used.add(key)
            param = model.get_parameter(ours)
            is_head = ours.split(".")[0] in HEAD_MODULES
            if found is None:
                if not is_head:
                    raise CheckpointError(f"checkpoint in {folder} lacks {ref} (needed for {ours}); "
                                          f"it is not a complete {cfg.model_type} checkpoint.")
                missing.append(ref)
                continue
            if found.shape != param.shape:
                raise CheckpointError(f"checkpoint key {ref} has shape {tuple(found.shape)} but the model "
                                      f"needs {tuple(param.shape)}; check config.json"
                                      + (" or num_labels" if is_head else "") + ".")
            if not torch.isfinite(found).all():
                raise CheckpointError(f"checkpoint key {ref} in {folder} holds non-finite values (NaN or inf); "
                                      f"pass a model that trained without diverging.")
            param.copy_(found.to(param.dtype))
    check_all_used(state, used, folder, cfg)
    if missing and verbose:
        print(f"initialised {len(missing)} weights the checkpoint lacks (new task head): {', '.join(missing)}")
    return model.eval()


def check_all_used(state: dict, used: set, folder, cfg: Config):
    """Every weight of the encoder and embeddings in the checkpoint has a place in the model its config
    describes: a checkpoint of 12 layers read with a config of 6 would otherwise lose half of itself in
    silence. Head weights (a pooler, another task's head) may go unused: a new task drops them."""
    prefix = cfg.model_type + "."
    extra = [k for k in state if k not in used and not k.removeprefix(prefix).startswith(UNUSED_HEADS)]
    if extra:
        raise CheckpointError(f"checkpoint in {folder} holds {len(extra)} weights its config.json has no place for "
                              f"(such as {extra[0]}; the config has {cfg.num_hidden_layers} layers of width "
                              f"{cfg.hidden_size}); pass the config.json that belongs to these weights.")


def init_module(model: Encoder, cfg: Config):
    """The reference's initialisation: Linear/Embedding ~ N(0, initializer_range), zero bias, LN = (1, 0)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=cfg.initializer_range)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])


def save_pretrained(model: Encoder, folder):
    """Write config.json + model.safetensors atomically (temporary names, then rename)."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["architectures"] = [("Roberta" if model.config.model_type == "roberta" else "Bert")
                            + ARCHITECTURES[model.head]]
    table = name_table(model)
    tensors = {table[n]: p.detach().to("cpu", torch.float32).contiguous() for n, p in model.named_parameters()}
    for name, data in (("model.safetensors", None), ("config.json", json.dumps(cfg, indent=2) + "\n")):
        tmp = folder / (name + ".tmp")
        if data is None:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
            os.chmod(tmp, 0o666 & ~current_umask())   # safetensors writes 0600; give it its neighbours' mode
        else:
            tmp.write_text(data)
        os.replace(tmp, folder / name)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
