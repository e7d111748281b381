"""
The paper's tasks: loading, tokenization, batching and metrics.

Kurtic, Hoefler & Alistarh (2024) prune RoBERTa-large on the "Sparsity May Cry" tasks
(CommonsenseQA, WinoGrande; section 5) and BERT-base on the classic benchmarks (SQuAD v1.1,
MNLI, QQP; section 6). This file turns each into padded batches for model.py and scores the
predictions exactly as the official scripts do. Each task is one `Task` record in `TASKS`
(its columns and labels, files and hub id, metric, and the run's defaults for it, which cli.py's
`resolve` fills in); adding a GLUE-style task is one more record.

  load_split(task, split, data_dir)  -> list of examples, from the released files, Hugging Face
                                        exports (json/jsonl/parquet), or the hub
  load_tokenizer(model)              -> tokenizers.Tokenizer with no padding/truncation baked in
  encode(task, examples, tok, ...)   -> features (token ids per sequence; windows for SQuAD)
  make_loader(features, ...)         -> DataLoader with dynamic padding and seeded shuffling,
                                        optionally length-grouped (far less padding)
  score(task, examples, features, outputs) -> {"accuracy"} / {"accuracy", "f1"} / {"exact_match", "f1"}

Example forms: multiple choice {"id", "first": [str]*C, "second": [str]*C, "label"};
classification {"id", "first", "second" (or None), "label"}; span QA {"id", "question",
"context", "answers": [str], "answer_starts": [int]}. train.py uses `Task.kind` as model.py's head.
"""
import collections
import csv
import hashlib
import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


class DataError(ValueError):
    """Malformed or missing data; the message names the file, the record and what is wrong."""


@dataclass(frozen=True, kw_only=True)
class Task:
    """Everything one task needs, in one record: how to read it, how to score it, how to train on it.

    Adding a GLUE-style single-sentence or sentence-pair task is one `Task(...)` in `TASKS` (or
    `data.TASKS["name"] = Task(...)` from outside): name its columns and its labels, nothing else.
    """
    name: str
    kind: str                             # model.py's head: classification, multiple_choice, question_answering
    labels: tuple                         # class labels in id order (strings or ints); for multiple choice
                                          # the choices of a question ("A".."E"); () for span QA
    files: dict                           # our split ("train", "validation") -> the released file name
    hub: tuple                            # (dataset id, config or None) for datasets.load_dataset
    hub_splits: dict = field(default_factory=lambda: {"train": "train", "validation": "validation"})
    parse: Callable | None = None         # parse(record, where) -> example; None: GLUE-style, by these columns:
    first: tuple = ()                     #   the first sentence's column: the release's name first, then the hub's
    second: tuple = ()                    #   the second sentence's column; () for single-sentence tasks
    label: tuple = ("label",)             #   the label's column
    metric: str = "accuracy"              # "accuracy", "accuracy_f1" (QQP) or "squad" (EM and F1)
    max_length: int = 128                 # tokens per sequence (per window for SQuAD)
    # the run's defaults, filled in by cli.py's `resolve` (each overridden by its flag); `warmup` is
    # a fraction of each phase's steps
    model: str = "bert-base-uncased"
    lr: float = 8e-5                      # the pruned student's peak LR
    batch_size: int = 32
    epochs: float = 30                    # student epochs
    teacher_lr: float = 2e-5              # the dense teacher's LR (also a --sparsity 0 run's)
    teacher_epochs: float = 3
    warmup: float = 0.0
    weight_decay: float = 0.0             # AdamW's, on weight matrices (the Hugging Face default, which
                                          # SparseML's oBERT runs keep)
    fisher_batch_size: int = 8            # oBERT: examples per Fisher gradient (SparseML's SQuAD recipes)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_labels(self) -> int | None:
        """model.py's num_labels for this task's head: the class count for classification, else None
        (multiple choice scores each choice with one output; span QA has its start and end)."""
        return self.num_labels if self.kind == "classification" else None


# -----------------------------------------------------------------------------
# Reading records from files (released formats and Hugging Face exports) or the hub.

def read_records(path: Path) -> list[tuple[str, object]]:
    """(where, record) pairs; `where` is "file:line N", the file's own line (TSV, JSON lines), or
    "file:record N" where records have no lines (parquet, a JSON array, SQuAD's release)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; re-download the dataset file.")
    try:
        return parse_records(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); re-download the dataset file.")
    except csv.Error as e:
        raise DataError(f"{path} is not a readable TSV file ({e}); re-download the dataset file.")
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); re-download the dataset file.")


def parse_records(path: Path) -> list[tuple[str, object]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return [(f"{path}:record {i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    if path.suffix == ".tsv":
        with open(path, newline="", encoding="utf-8-sig") as f:      # -sig: a byte-order mark is not a column
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows = [(f"{path}:line {reader.line_num}", r) for r in reader]   # the file's line: blank ones count
        for where, r in rows:       # DictReader keeps extra fields under None: a tab too many, never dropped
            if None in r:
                raise DataError(f"{where} has {len(reader.fieldnames) + len(r[None])} tab-separated fields but the "
                                f"header has {len(reader.fieldnames)}; remove the extra tabs or fix the header.")
        return rows
    text = path.read_text(encoding="utf-8-sig")
    try:
        whole = json.loads(text)            # one JSON document: SQuAD's release, or a JSON array
        if isinstance(whole, dict) and "data" in whole:
            return [(f"{path}:record {i + 1}", r) for i, r in enumerate(squad_release_records(whole, path))]
        if isinstance(whole, list):
            return [(f"{path}:record {i + 1}", r) for i, r in enumerate(whole)]
    except json.JSONDecodeError:
        pass
    out = []
    for i, line in enumerate(text.split("\n")):      # "\n" only: the file's lines (U+2028 may be inside a string)
        if line.strip():
            try:
                out.append((f"{path}:line {i + 1}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:line {i + 1} is not valid JSON ({e.msg}); fix or re-download the file.")
    return out


def squad_release_records(doc: dict, path) -> list[dict]:
    """SQuAD v1.1's nested release -> flat records like the hub's: one per question."""
    out = []
    for article in doc["data"]:
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                out.append({"id": qa.get("id"), "question": qa.get("question"), "context": para.get("context"),
                            "answers": {"text": [a["text"] for a in qa.get("answers", [])],
                                        "answer_start": [a["answer_start"] for a in qa.get("answers", [])]}})
    return out


def required(rec, key, where, kind=None):
    if not isinstance(rec, dict) or key not in rec or rec[key] is None:
        raise DataError(f"{where}: missing field {key!r}; the file is not in the expected format.")
    if kind is not None and not isinstance(rec[key], kind):
        raise DataError(f"{where}: field {key!r} should be {kind.__name__}, got {type(rec[key]).__name__}.")
    return rec[key]


def parse_csqa(rec, where, task=None):
    q = required(rec, "question", where)
    if isinstance(q, dict):        # released: question.stem, question.choices[{label, text}]
        stem, choices = required(q, "stem", where), required(q, "choices", where, list)
        labels, texts = [required(c, "label", where) for c in choices], [required(c, "text", where) for c in choices]
    else:                          # hub: question, choices {label: [...], text: [...]}
        stem, choices = q, required(rec, "choices", where, dict)
        labels, texts = required(choices, "label", where, list), required(choices, "text", where, list)
        if len(labels) != len(texts):   # else a text would pair with another choice's label, or none
            raise DataError(f"{where}: {len(labels)} choice labels but {len(texts)} choice texts; each choice "
                            f"needs one label and one text: fix or drop the record.")
    key = required(rec, "answerKey", where)
    if task is not None and len(labels) != task.num_labels:   # else the choices would shift between questions
        raise DataError(f"{where}: {len(labels)} choices, but every {task.name} question has {task.num_labels}; "
                        f"fix or drop the record.")
    if len(set(labels)) != len(labels):
        raise DataError(f"{where}: the choice labels {labels} repeat; each choice needs its own label.")
    if key not in labels:
        raise DataError(f"{where}: answerKey {key!r} is not one of the choices {labels}.")
    return {"id": rec.get("id", where), "first": [stem] * len(texts), "second": list(texts), "label": labels.index(key)}


def parse_winogrande(rec, where, task=None):
    sentence = required(rec, "sentence", where, str)
    if sentence.count("_") != 1:
        raise DataError(f"{where}: sentence must contain exactly one '_' blank, found {sentence.count('_')}.")
    answer = str(required(rec, "answer", where))
    if answer not in ("1", "2"):
        raise DataError(f"{where}: answer must be \"1\" or \"2\", got {answer!r}.")
    # the blank splits the sentence: (prefix, option + rest), one pair per option
    cut = sentence.index("_")
    prefix, rest = sentence[:cut].rstrip(), sentence[cut + 1:]
    options = [required(rec, "option1", where, str), required(rec, "option2", where, str)]
    return {"id": rec.get("qID", where), "first": [prefix] * 2, "second": [o + rest for o in options],
            "label": int(answer) - 1}


def parse_squad(rec, where, task=None):
    answers = required(rec, "answers", where, dict)
    texts, starts = required(answers, "text", where, list), required(answers, "answer_start", where, list)
    context = required(rec, "context", where, str)
    if not texts or len(texts) != len(starts):
        raise DataError(f"{where}: no answer (or a start for each answer is missing): SQuAD v2's unanswerable "
                        f"questions are not SQuAD v1.1, which this task is; drop such records.")
    for t, s in zip(texts, starts):
        if context[s:s + len(t)] != t:
            raise DataError(f"{where}: answer {t!r} is not at answer_start {s} of the context.")
    return {"id": required(rec, "id", where), "question": required(rec, "question", where, str), "context": context,
            "answers": texts, "answer_starts": starts}


def class_id(value, labels: tuple, where) -> int:
    """A label as a file writes it -> its class id: the label itself (MNLI's "entailment", or SST-2's
    1 read from a TSV as the text "1"), or else an id, as the hub's exports write every label."""
    names = [str(label) for label in labels]
    if str(value) in names:
        return names.index(str(value))
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    raise DataError(f"{where}: label {value!r} is not one of the {len(labels)} classes ({', '.join(names)}).")


def parse_glue(rec, where, task):
    """A GLUE-style record: one or two sentence columns and a label column, named by the task."""
    def pick(keys):   # the first of the column's names that the record has (release, then hub)
        return required(rec, next((k for k in keys if isinstance(rec, dict) and k in rec), keys[0]), where)
    return {"id": rec.get("idx", rec.get("id", where)), "first": pick(task.first),
            "second": pick(task.second) if task.second else None, "label": class_id(pick(task.label), task.labels, where)}


# Models: RoBERTa-large for the "Sparsity May Cry" tasks (the paper's section 5), BERT-base for the
# classic ones (section 6). Students: oBERT's 30-epoch recipes for BERT-base (SparseML's
# research/optimal_BERT_surgeon_oBERT): SQuAD at lr 8e-5 -> 8e-6 with Fisher gradients of batch 8; the
# GLUE tasks (30epochs_unstructured*_mnli/qqp.yaml; SST-2, not in the paper, takes the same) at
# 5e-5 -> 5e-6 with Fisher gradients of batch 16;
# both re-warmed at every pruning step, with no weight decay (their scripts leave the Hugging Face
# default, 0). RoBERTa-large: SMC-Bench's fine-tuning LR, batch and weight decay (1e-5, 16, 0.01: its
# fairseq CommonsenseQA script) and its warm-up (150 of 3000 updates, 5%; without one RoBERTa-large is
# known to stay at chance on these tasks), trained longer as the second guideline asks (our choice: 10
# epochs). Teachers: the usual dense fine-tuning (BERT paper: 2e-5..5e-5, 2-3 epochs).
SMC = dict(model="roberta-large", lr=1e-5, batch_size=16, epochs=10, teacher_lr=1e-5, teacher_epochs=5, warmup=0.05,
           weight_decay=0.01)
GLUE = dict(lr=5e-5, fisher_batch_size=16)

TASKS = {t.name: t for t in [
    Task(name="csqa", kind="multiple_choice", labels=tuple("ABCDE"), parse=parse_csqa, **SMC,
         files={"train": "train_rand_split.jsonl", "validation": "dev_rand_split.jsonl"}, hub=("tau/commonsense_qa", None)),
    Task(name="winogrande", kind="multiple_choice", labels=("1", "2"), parse=parse_winogrande, **SMC,
         files={"train": "train_xl.jsonl", "validation": "dev.jsonl"}, hub=("allenai/winogrande", "winogrande_xl")),
    Task(name="squad", kind="question_answering", labels=(), parse=parse_squad, metric="squad", max_length=384,
         files={"train": "train-v1.1.json", "validation": "dev-v1.1.json"}, hub=("rajpurkar/squad", None),
         batch_size=16, teacher_lr=5e-5, teacher_epochs=2),
    Task(name="mnli", kind="classification", labels=("entailment", "neutral", "contradiction"),
         first=("sentence1", "premise"), second=("sentence2", "hypothesis"), label=("gold_label", "label"),
         files={"train": "train.tsv", "validation": "dev_matched.tsv"}, hub=("nyu-mll/glue", "mnli"),
         hub_splits={"train": "train", "validation": "validation_matched"}, **GLUE),
    Task(name="qqp", kind="classification", labels=(0, 1), metric="accuracy_f1",
         first=("question1",), second=("question2",), label=("is_duplicate", "label"),
         files={"train": "train.tsv", "validation": "dev.tsv"}, hub=("nyu-mll/glue", "qqp"), **GLUE),
    Task(name="sst2", kind="classification", labels=(0, 1), first=("sentence",),
         files={"train": "train.tsv", "validation": "dev.tsv"}, hub=("nyu-mll/glue", "sst2"), **GLUE),
]}


def split_names(task: Task, split: str) -> list[str]:
    """The file names a split may have: the release's, then Hugging Face exports named after the
    split (train; validation, or the hub's split name, or dev). Never another split's."""
    stems = ("train",) if split == "train" else dict.fromkeys(("validation", task.hub_splits[split], "dev"))
    return [task.files[split]] + [f"{s}.{ext}" for s in stems for ext in ("jsonl", "json", "parquet")]


def find_file(task: Task, split: str, data_dir: Path) -> Path:
    folder = data_dir / task.name if (data_dir / task.name).is_dir() else data_dir
    names = split_names(task, split)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no {split} file for {task.name} in {folder} (looked for {', '.join(names)}); "
                    f"pass --data-dir pointing at the released files.")


def load_split(task: Task, split: str, data_dir=None, say=print) -> list[dict]:
    """Examples of `split` ("train" or "validation"), from data_dir or, without it, the hub; it prints
    which file it read through `say` (`find_file`'s choice: train.tsv over train.jsonl, a task's own
    folder over data_dir's top level; train.py's says it on rank 0 only)."""
    parse = task.parse or parse_glue
    if data_dir is not None:
        path = find_file(task, split, Path(data_dir))
        records = read_records(path)
    else:
        from model import hub_reachable
        cached_only = any(os.environ.get(k, "0").lower() not in ("0", "", "false", "no")
                          for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        if not cached_only and not hub_reachable():   # fail in seconds, not after the client's retries
            raise DataError(f"the Hugging Face hub cannot be reached to load {task.hub[0]}; download the "
                            f"released files and pass --data-dir (or set HF_DATASETS_OFFLINE=1 to use a cached copy).")
        try:
            import datasets
            ds = datasets.load_dataset(task.hub[0], task.hub[1], split=task.hub_splits[split])
        except Exception as e:
            raise DataError(f"could not load {task.hub[0]} from the Hugging Face hub ({type(e).__name__}); "
                            f"download the released files and pass --data-dir.") from None
        records = [(f"{task.hub[0]}[{split}] record {i + 1}", r) for i, r in enumerate(ds)]
    source = path if data_dir is not None else f"{task.hub[0]}[{split}]"
    if not records:
        raise DataError(f"{source} has no records; check the {task.name} {split} file.")
    examples = [parse(r, where, task) for where, r in records]
    seen = {}
    for (where, _), e in zip(records, examples):     # SQuAD's metric is per id: a repeated id would merge answers
        if e["id"] in seen:
            raise DataError(f"{where}: id {e['id']!r} repeats {seen[e['id']]}'s; every example needs its own id.")
        seen[e["id"]] = where
    n = len(examples)                                # which file was read: the documented order chose it
    say(f"{task.name} {split}: read {n} example{'s' * (n != 1)} from {source}")
    return examples


def fingerprint(*splits: list) -> str:
    """SHA-256 (16 hex digits) of the examples themselves: the same for the same data, whatever the
    files' names or format; run.json records it (rundir.py's `fingerprints`) so that --resume refuses
    changed data."""
    text = json.dumps(splits, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -----------------------------------------------------------------------------
# Tokenizers.

def load_tokenizer(model_folder_or_hub_id):
    """tokenizer.json if present; else WordPiece from vocab.txt; else byte-level BPE from
    vocab.json + merges.txt with RoBERTa's <s> A </s></s> B </s>. No padding or truncation."""
    from model import resolve_folder
    folder = resolve_folder(model_folder_or_hub_id)
    try:
        return read_tokenizer(folder)
    except DataError:
        raise
    except Exception as e:          # a truncated tokenizer.json, a vocab.txt that is not UTF-8, ...
        raise DataError(f"{folder}'s tokenizer files cannot be read ({type(e).__name__}: {str(e)[:80]}); "
                        f"re-download or re-save the model.") from None


def read_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.txt").is_file():
        vocab = {w: i for i, w in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())}
        lower = cfg.get("do_lower_case", True)
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lower, strip_accents=cfg.get("strip_accents"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        tok.decoder = decoders.WordPiece()
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=cfg.get("add_prefix_space", False))
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")), trim_offsets=True)
        tok.decoder = decoders.ByteLevel()
    else:
        raise DataError(f"{folder} has no tokenizer.json, vocab.txt or vocab.json + merges.txt; "
                        f"pass a model folder with its tokenizer files.")
    tok.no_padding()       # padding is per batch (make_loader), truncation per task (encode)
    tok.no_truncation()
    return tok


def pad_id(tok) -> int:
    for name in ("[PAD]", "<pad>"):
        if tok.token_to_id(name) is not None:
            return tok.token_to_id(name)
    return 0


# -----------------------------------------------------------------------------
# Encoding examples into features.

def encode_pairs(tok, firsts, seconds, max_length):
    tok.enable_truncation(max_length, strategy="longest_first")
    encs = tok.encode_batch(list(zip(firsts, seconds)) if seconds is not None else firsts)
    tok.no_truncation()
    return [(e.ids, e.type_ids) for e in encs]


def encode(task: Task, examples: list[dict], tok, max_length=None, stride=128) -> list[dict]:
    """Features: {"input_ids", "token_type_ids", "label"} (lists per choice for multiple choice);
    SQuAD: one feature per window, with "example", "offsets" (None outside the context) and,
    for training, "start"/"end" token positions (0, the [CLS] token, when the answer is not in it)."""
    max_length = max_length or task.max_length
    if task.kind == "question_answering":
        return encode_squad(examples, tok, max_length, stride)
    if task.kind == "multiple_choice":
        C = task.num_labels
        flat = encode_pairs(tok, [f for e in examples for f in e["first"]], [s for e in examples for s in e["second"]],
                            max_length)
        return [{"input_ids": [ids for ids, _ in flat[i * C:(i + 1) * C]],
                 "token_type_ids": [tt for _, tt in flat[i * C:(i + 1) * C]], "label": e["label"]}
                for i, e in enumerate(examples)]
    seconds = [e["second"] for e in examples] if examples and examples[0]["second"] is not None else None
    return [{"input_ids": ids, "token_type_ids": tt, "label": e["label"]}
            for (ids, tt), e in zip(encode_pairs(tok, [e["first"] for e in examples], seconds, max_length), examples)]


def check_question_lengths(examples, tok, max_length, stride):
    """Every window of a long context holds the whole question and more than `stride` tokens of the
    context. A question too long for that cannot be cut into windows: the tokenizer aborts with a
    Rust panic (not an exception, and a screenful of backtrace), so find such a question first and
    name it. Untruncated here: call it before `enable_truncation`."""
    specials = tok.num_special_tokens_to_add(True)                # [CLS] q [SEP] c [SEP]: 3; RoBERTa's 4
    questions = tok.encode_batch([e["question"].lstrip() for e in examples], add_special_tokens=False)
    for e, q in zip(examples, questions):
        if max_length - specials - len(q.ids) > stride:
            continue                                              # room for the shared context tokens
        if len(tok.encode(e["question"].lstrip(), e["context"]).ids) > max_length:   # needs windows, has no room
            raise DataError(f"SQuAD question {e['id']!r} is {len(q.ids)} tokens, too long for windows of {max_length} "
                            f"tokens that share {stride} context tokens; pass --max-length "
                            f"{len(q.ids) + specials + stride + 1} or more, or drop that record.")


def encode_squad(examples, tok, max_length, stride):
    """Overlapping windows over the context: max_length tokens, `stride` tokens shared by neighbours."""
    if max_length - 3 <= stride:       # a window holds [CLS] q [SEP] c [SEP]: more than `stride` tokens of c
        raise DataError(f"--max-length {max_length} is too short for SQuAD's windows, which share {stride} context "
                        f"tokens and also hold the question; pass --max-length {2 * stride} or more (the recipe's "
                        f"is 384).")
    check_question_lengths(examples, tok, max_length, stride)
    try:
        tok.enable_truncation(max_length, stride=stride, strategy="only_second")
        encs = tok.encode_batch([(e["question"].lstrip(), e["context"]) for e in examples])
    except Exception as e:   # the tokenizer's own refusal, should a case slip past check_question_lengths
        raise DataError(f"a question is too long for windows of {max_length} tokens with a stride of {stride} "
                        f"({e}); pass a larger --max-length.") from None
    finally:
        tok.no_truncation()
    features = []
    for i, (e, enc) in enumerate(zip(examples, encs)):
        for window in [enc] + enc.overflowing:
            offsets = [o if s == 1 else None for o, s in zip(window.offsets, window.sequence_ids)]
            start = end = 0
            if e["answers"]:   # the first answer, as the reference's training script does
                a0 = e["answer_starts"][0]
                a1 = a0 + len(e["answers"][0])
                inside = [j for j, o in enumerate(offsets) if o is not None]
                if inside and offsets[inside[0]][0] <= a0 and offsets[inside[-1]][1] >= a1:
                    start = next(j for j in inside if offsets[j][1] > a0)
                    end = next(j for j in reversed(inside) if offsets[j][0] < a1)
            features.append({"input_ids": window.ids, "token_type_ids": window.type_ids, "example": i,
                             "offsets": offsets, "start": start, "end": end})
    return features


# -----------------------------------------------------------------------------
# Batches: dynamic padding, seeded shuffling, a distributed sampler under torchrun.

class EpochSampler(torch.utils.data.Sampler):
    """Order = a permutation seeded by (seed, epoch): resuming at an epoch gives the same order."""

    def __init__(self, n, shuffle, seed):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def pad(seqs, value, length):
    return [s + [value] * (length - len(s)) for s in seqs]


def collate(features, pad_token_id):
    """Pad to the longest sequence in the batch: (B, T), or (B, C, T) for multiple choice."""
    mc = isinstance(features[0]["input_ids"][0], list)
    seqs = [s for f in features for s in (f["input_ids"] if mc else [f["input_ids"]])]
    tts = [s for f in features for s in (f["token_type_ids"] if mc else [f["token_type_ids"]])]
    T = max(len(s) for s in seqs)
    ids = torch.tensor(pad(seqs, pad_token_id, T))
    batch = {"input_ids": ids, "attention_mask": (torch.tensor(pad([[1] * len(s) for s in seqs], 0, T))),
             "token_type_ids": torch.tensor(pad(tts, 0, T))}
    if mc:   # (B*C, T) -> (B, C, T)
        batch = {k: v.view(len(features), -1, T) for k, v in batch.items()}
    if "label" in features[0]:
        batch["labels"] = torch.tensor([f["label"] for f in features])
    if "start" in features[0]:
        batch["start_positions"] = torch.tensor([f["start"] for f in features])
        batch["end_positions"] = torch.tensor([f["end"] for f in features])
    return batch


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar length, so that each pads little (the idea of transformers' group_by_length).

    The epoch's shuffled order (from `sampler`: this rank's share under torchrun) is cut into
    mega-batches of 50 batches; each is sorted by length, longest first, and cut into batches; then
    the batches are shuffled. Everything is seeded by (seed, epoch), like the order itself, so a
    resumed run replays the same batches. Same number of batches as without grouping.
    """

    def __init__(self, sampler, lengths, batch_size, seed, mega=50):
        self.sampler, self.lengths, self.batch_size, self.seed, self.mega = sampler, lengths, batch_size, seed, mega
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        order, size, batches = list(self.sampler), self.mega * self.batch_size, []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: -self.lengths[i])   # stable: ties keep order
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        g = torch.Generator().manual_seed(1_000_003 * self.seed + self.epoch + 1)   # (seed, epoch), not the order's
        return iter([batches[i] for i in torch.randperm(len(batches), generator=g).tolist()])

    def __len__(self):
        n, size = len(self.sampler), self.mega * self.batch_size
        return (n // size) * self.mega + -(-(n % size) // self.batch_size)


def feature_length(feature) -> int:
    """Tokens a feature pads its batch to: its length, or its longest choice's."""
    ids = feature["input_ids"]
    return max(len(s) for s in ids) if isinstance(ids[0], list) else len(ids)


def make_loader(features, batch_size, shuffle, seed, pad_token_id, distributed=False, group_by_length=False):
    """Padded batches of `features`: shuffled by (seed, epoch) (`set_epoch`), a shard per rank under
    torchrun, and, with group_by_length, of similar lengths (`LengthGroupedBatches`)."""
    if distributed:
        sampler = torch.utils.data.DistributedSampler(features, shuffle=shuffle, seed=seed, drop_last=False)
    else:
        sampler = EpochSampler(len(features), shuffle, seed)
    # its own generator: making an iterator then draws nothing from the global RNG (dropout's),
    # so a resumed run sees the same random numbers as an uninterrupted one
    common = dict(collate_fn=lambda fs: collate(fs, pad_token_id), generator=torch.Generator().manual_seed(seed))
    if group_by_length:
        lengths = [feature_length(f) for f in features]
        return torch.utils.data.DataLoader(features, batch_sampler=LengthGroupedBatches(sampler, lengths, batch_size,
                                                                                         seed), **common)
    return torch.utils.data.DataLoader(features, batch_size=batch_size, sampler=sampler, **common)


def set_epoch(loader, epoch):
    """The epoch whose order (and grouping) the loader gives next."""
    grouped = isinstance(loader.batch_sampler, LengthGroupedBatches)
    (loader.batch_sampler if grouped else loader.sampler).set_epoch(epoch)


# -----------------------------------------------------------------------------
# Metrics.

def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no a/an/the, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_score(predictions: dict, references: dict) -> dict:
    """Exact match and F1 in percent, each the max over an example's ground truths, averaged over
    every reference id (a missing prediction scores 0), as the official v1.1 script does."""
    em = f1 = 0.0
    for qid, truths in references.items():
        if qid not in predictions:
            continue
        em += max(float(normalize_answer(predictions[qid]) == normalize_answer(t)) for t in truths)
        f1 += max(squad_f1(predictions[qid], t) for t in truths)
    return {"exact_match": 100.0 * em / len(references), "f1": 100.0 * f1 / len(references)}


def squad_predictions(examples, features, start_logits, end_logits, n_best=20, max_answer_length=30) -> dict:
    """Best span per example over all its windows: the n_best start and end tokens, both in the
    context, end >= start, at most max_answer_length tokens; score = start + end logit."""
    best = {}
    for f, s, e in zip(features, start_logits, end_logits):
        offsets = f["offsets"]
        starts = sorted(range(len(offsets)), key=lambda j: -s[j])[:n_best]
        ends = sorted(range(len(offsets)), key=lambda j: -e[j])[:n_best]
        for a in starts:
            for b in ends:
                if offsets[a] is None or offsets[b] is None or b < a or b - a + 1 > max_answer_length:
                    continue
                score = float(s[a] + e[b])
                ex = examples[f["example"]]
                if ex["id"] not in best or score > best[ex["id"]][0]:
                    best[ex["id"]] = (score, ex["context"][offsets[a][0]:offsets[b][1]])
    return {ex["id"]: best.get(ex["id"], (0.0, ""))[1] for ex in examples}


def binary_f1(preds, labels) -> float:
    tp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 1)
    fp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 0)
    fn = sum(1 for p, y in zip(preds, labels) if p == 0 and y == 1)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def score(task: Task, examples, features, outputs) -> dict:
    """outputs: per feature, logits (classification / multiple choice) or (start, end) logits."""
    if task.kind == "question_answering":
        preds = squad_predictions(examples, features, [o[0] for o in outputs], [o[1] for o in outputs])
        return squad_score(preds, {e["id"]: e["answers"] for e in examples})
    preds = [int(torch.as_tensor(o).argmax()) for o in outputs]
    labels = [f["label"] for f in features]
    out = {"accuracy": 100.0 * sum(p == y for p, y in zip(preds, labels)) / len(labels)}
    if task.metric == "accuracy_f1":
        out["f1"] = 100.0 * binary_f1(preds, labels)
    return out
