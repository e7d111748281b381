"""Every command keeps train.py's promise (issue 34): sparse.py, evidence/runs.py, table.py,
figures.py, paper_tasks.py and softmax.py never lose a file, never crash, never pass vacuously.
Tests are numbered by the issue's classes: 1 a user's file written over, 2 tracebacks, 3 exit 0 on
a wrong or empty result, 4 messages that point the wrong way, 5 a newcomer's first hour. A refusal
is exit code 2 and one sentence (`one_sentence`), and the user's files stay byte-identical
(test_safety.py's `snapshot`). Each test builds its own tiny models and data."""
import argparse
import errno
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import cli
import data
import files
import rundir
import sparse
from conftest import TINY_VOCAB, save_tiny
from test_safety import FIX, ROOT, base_args, refused, snapshot


def load_evidence(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "evidence" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runs, table, paper_tasks = (load_evidence(n) for n in ("runs", "table", "paper_tasks"))


def one_sentence(main, argv, capsys, prog) -> str:
    """Run a command's main, expect exit 2 and one line on stderr, `prog: ...`; return that line."""
    capsys.readouterr()                                          # what making the tiny models printed
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"{prog}: "), err
    assert "Traceback" not in err[0] and err[0].endswith("."), err
    return err[0]


def exported(folder: Path, arch="ForSequenceClassification", task=None, model_type="bert", **config) -> Path:
    """A tiny model as train.py exports it: OUT/model, with OUT/run.json naming its task when given."""
    save_tiny(folder / "model", model_type, arch, **config)
    (folder / "model" / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    if task:
        (folder / "run.json").write_text(json.dumps({"written_by": rundir.WRITTEN_BY, "task": task}))
    return folder / "model"


QUICK = ["--repeats", "1", "--route-repeats", "1", "--examples", "2", "--batch-sizes", "1,2"]


# 1. files.py's rule: create, or replace only a file of ours of that kind -----------------------------

@pytest.mark.parametrize("kind, theirs, ours", [
    (files.TIMINGS, "my notes\n", "# command: python sparse.py m\nrow\n"),
    (files.RECORD, '{"name": "x"}\n', '{"name": "x", "command": "c", "commit": "abc"}\n'),
    (files.README, "# my README, no markers\n", "<!-- table: x -->\n|a|\n<!-- /table -->\n"),
    (files.FIGURE, "not an image", "\x89PNG\r\n\x1a\nrest"),
])
def test_1_a_command_replaces_only_a_file_of_its_own_kind(tmp_path, kind, theirs, ours):
    path = tmp_path / "result"
    path.write_text(theirs)
    with pytest.raises(files.Refused, match="move that file away"):
        files.write_result(path, "new\n", kind)
    assert path.read_text() == theirs and list(tmp_path.iterdir()) == [path]
    path.write_bytes(ours.encode("latin-1"))                     # latin-1: the PNG signature's byte 0x89 as is
    files.write_result(path, "new\n", kind)
    assert path.read_text() == "new\n" and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("where, message", [
    ("folder", "is a folder"), ("missing/x.txt", "its folder"), ("afile/x.txt", r"is not a folder \(a file\)"),
    ("dangling", "which does not exist"), ("link", "is a symbolic link to"), ("locked/x.txt", "is not writable")])
def test_2_a_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, where, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("a user's file\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link").symlink_to(tmp_path / "afile")
    (tmp_path / "locked").mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "locked" and access(p, mode))   # root writes all
    before = snapshot(tmp_path)
    with pytest.raises(files.Refused, match=message):
        files.check_target(tmp_path / where, files.TIMINGS)
    assert snapshot(tmp_path) == before and not (tmp_path / "missing").exists()


def test_2_a_write_that_fails_leaves_the_old_file_and_no_tmp(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# command: python sparse.py old\n")

    def full_disk(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(files.WriteFailed, match=r"the disk is full; \d+ MB are free there"):
        files.write_result(path, full_disk, files.TIMINGS)
    assert path.read_text() == "# command: python sparse.py old\n" and list(tmp_path.iterdir()) == [path]
    assert rundir.RunError is files.WriteFailed                 # train.py's RunError is the same sentence


# 1-2. sparse.py: --out checked before the timings, written through the rule ------------------------------

@pytest.mark.parametrize("out, message", [("user.txt", "is not sparse.py's timings"), (".", "is a folder"),
                                          ("no/such/t.txt", "does not exist")])
def test_1_sparse_out_is_checked_before_timing_and_a_users_file_kept(tmp_path, capsys, monkeypatch, out, message):
    model = exported(tmp_path / "run")
    (tmp_path / "user.txt").write_text("my notes\n")
    monkeypatch.setattr(sparse, "benchmark", lambda *a: pytest.fail("timed before --out was checked"))
    before = snapshot(tmp_path)
    line = one_sentence(sparse.main, [str(model), "--out", str(tmp_path / out)], capsys, "sparse.py")
    assert message in line and snapshot(tmp_path) == before


def test_1_sparse_out_replaces_its_own_timings(tmp_path, capsys):
    model, out = exported(tmp_path / "run"), tmp_path / "t.txt"
    for _ in range(2):                                           # the second run replaces the first's file
        sparse.main([str(model), *QUICK, "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# command: python sparse.py") and text.count("# command:") == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("flags, message", [
    (["--threads", "0"], "--threads is 0, but it must be at least 1"),
    (["--threads", str(2 ** 40)], "--threads 1099511627776 is refused by torch"),
    (["--task", "nosuch"], "--task nosuch is not a task here; pass one of csqa, winogrande, squad"),
    (["--examples", "4"], "--batch-sizes 32 is more than --examples 4"),
    (["--data-dir", str(FIX), "--seq-len", "16"], "--seq-len sets the length of random token ids"),
    (["--seq-len", "65"], "--seq-len 65 is longer than"),
])
def test_3_sparse_flags_that_cannot_work_are_one_sentence(tmp_path, capsys, flags, message):
    line = one_sentence(sparse.main, [str(exported(tmp_path / "run")), *flags], capsys, "sparse.py")
    assert message in line


def test_3_sparse_batches_are_full_and_never_more_than_the_examples(tmp_path, capsys):
    model = exported(tmp_path / "run")
    line = one_sentence(sparse.main, [str(model), "--data-dir", str(FIX), "--examples", "8", "--batch-sizes", "1,8"],
                        capsys, "sparse.py")
    assert "sst2 dev split has 3 examples, fewer than batch 8" in line
    args = argparse.Namespace(data_dir=FIX, examples=3, batch_sizes=[2], task=None, seq_len=None)
    cfg, task, dev = sparse.plan(model, args)
    batches = sparse.input_batches(args, 2, cfg, task, dev)
    assert [b["input_ids"].shape[0] for b in batches] == [2]     # 3 examples: one full batch of 2, not 2 + 1


# 4-5. sparse.py times every head this project exports, inputs within the model's vocabulary and positions --

@pytest.mark.parametrize("arch, task, flags, shape", [
    ("ForMultipleChoice", "csqa", [], (2, 5, 64)),                     # the README's main command's model
    ("ForMultipleChoice", None, ["--task", "winogrande"], (2, 2, 64)),
    ("ForQuestionAnswering", None, [], (2, 64)),                         # (start, end) logits
    ("ForSequenceClassification", None, [], (2, 64)),
])
def test_5_sparse_times_every_head_with_the_inputs_it_takes(tmp_path, capsys, monkeypatch, arch, task, flags, shape):
    model, out = exported(tmp_path / "run", arch, task), tmp_path / "t.txt"
    shapes, batches = [], sparse.input_batches
    monkeypatch.setattr(sparse, "input_batches", lambda *a: shapes.append(tuple(batches(*a)[0]["input_ids"].shape))
                        or batches(*a))
    sparse.main([str(model), *QUICK, *flags, "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "\t".join(sparse.COLUMNS)                       # the printed table has its header row
    rows = [l.split("\t") for l in out.read_text().splitlines() if not l.startswith("#")][1:]
    assert {r[2] for r in rows} == {"1", "2"} and shapes[-1] == shape
    assert all(float(r[7]) <= 1e-5 for r in rows)


def test_5_sparse_takes_the_task_from_the_run_and_refuses_a_contradiction(tmp_path, capsys):
    mc = exported(tmp_path / "mc", "ForMultipleChoice")                  # no run.json: csqa or winogrande?
    assert "pass --task csqa or --task winogrande" in one_sentence(sparse.main, [str(mc)], capsys, "sparse.py")
    csqa = exported(tmp_path / "run", "ForMultipleChoice", "csqa")
    line = one_sentence(sparse.main, [str(csqa), "--task", "winogrande"], capsys, "sparse.py")
    assert "was fine-tuned on csqa" in line
    line = one_sentence(sparse.main, [str(exported(tmp_path / "qa", "ForQuestionAnswering")), "--task", "sst2"],
                        capsys, "sparse.py")
    assert "--task sst2 is classification" in line and "pass --task squad" in line


def test_4_sparse_draws_ids_within_a_small_vocabulary_and_positions(tmp_path, capsys):
    """A valid RoBERTa of 99 tokens and 64 positions (62 usable): ids below 99, 62 tokens, no 'index out
    of range in self'."""
    model = exported(tmp_path / "run", model_type="roberta")
    sparse.main([str(model), *QUICK])
    assert "fastest per matrix" in capsys.readouterr().out
    args = argparse.Namespace(data_dir=None, examples=2, batch_sizes=[2], task=None, seq_len=None)
    cfg, task, _ = sparse.plan(model, args)
    ids = sparse.input_batches(args, 2, cfg, task)[0]["input_ids"]
    assert ids.max() < 99 and ids.shape[-1] == 62


# 2-3. evidence/runs.py: a failed run is one sentence; an --only that matches nothing is refused ------------

@pytest.fixture
def runs_here(tmp_path, monkeypatch):
    """runs.py in a tmp folder, its one row a stand-in for train.py that says its sentence and exits 2."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nprint('train.py: --foo is not a flag.', file=sys.stderr)\nsys.exit(2)\n")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    monkeypatch.setattr(runs, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runs, "model_path", lambda: "/M")
    monkeypatch.setattr(runs, "rows", lambda M, d: [("teacher-s0", [sys.executable, str(bad), "--out-dir", "r"])])
    return tmp_path


def test_2_runs_a_failed_run_is_named_in_one_sentence_and_records_nothing(runs_here, capfd):
    with pytest.raises(SystemExit) as e:
        runs.main([])
    err = capfd.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[0] == "train.py: --foo is not a flag." and len(err) == 2
    assert err[1].startswith("runs.py: teacher-s0 failed (bad.py exited with code 2") and "Traceback" not in err[1]
    assert not list((runs_here / "results").iterdir())


@pytest.mark.parametrize("only, message", [("nosuch", "matches none of the 1 runs' names (such as teacher-s0)"),
                                           ("(", "is not a regular expression")])
def test_3_runs_only_that_runs_nothing_is_refused(runs_here, capsys, only, message):
    assert message in one_sentence(runs.main, ["--only", only], capsys, "runs.py")


# 1. paper_tasks.py: a run that did not finish never replaces a finished record ---------------------------

def test_1_paper_tasks_keeps_a_finished_record_when_its_rerun_fails(tmp_path, monkeypatch):
    import time
    monkeypatch.setattr(paper_tasks, "ROOT", tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    finished = {"name": "paper-x", "command": "c", "commit": "abc", "finished": True, "metric": {"accuracy": 47.0}}
    (results / "paper-x.json").write_text(json.dumps(finished))
    before = snapshot(results)
    bad = tmp_path / "bad.py"                        # no data, no hub: train.py cannot start
    bad.write_text("import sys\nprint('train.py: no train file for csqa')\nsys.exit(2)\n")
    done = paper_tasks.run_phase([("x", [sys.executable, str(bad), "--out-dir", "runs/x"])], 1, time.time() + 60, "M",
                                 {"commit": "c", "machine": "m"}, results)
    assert snapshot(results) == before and done["x"]["finished"] is False
    assert json.loads((tmp_path / "runs" / "x.unfinished.json").read_text())["exit_code"] == 2


# 2-3. evidence/table.py: nothing to compare is no pass; tables of nothing never replace the README's -------

@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "teacher-s0.json").write_text(json.dumps({"name": "teacher-s0", "command": "c", "commit": "abc",
                                                        "seed": 0, "metric": {"accuracy": 85.0},
                                                        "command_seconds": 60.0, "peak_memory_gb": 1.0}))
    return folder


@pytest.mark.parametrize("flag", ["--check", "--write"])
def test_3_table_check_or_write_on_a_file_without_markers_is_refused(tmp_path, results, capsys, flag):
    target = tmp_path / "notes.md"
    target.write_text("# my notes, no tables\n")
    line = one_sentence(table.main, ["--results", str(results), flag, str(target)], capsys, "table.py")
    assert "has no table markers" in line and target.read_text() == "# my notes, no tables\n"


@pytest.mark.parametrize("case, message", [("missing results", "is not a folder"), ("empty results", "holds no results"),
                                           ("not JSON", "teacher-s0.json is not a readable JSON results file"),
                                           ("missing README", "is not a file"), ("both", "pass one of them"),
                                           ("a field missing", "lacks 'metric', which the tables read"),
                                           ("a bench label too long", "a label longer than bench.py's 84 columns")])
def test_2_table_bad_inputs_are_one_sentence_and_the_readme_is_kept(tmp_path, results, capsys, case, message):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table: compute -->\nold\n<!-- /table -->\n")
    folder = {"missing results": tmp_path / "nowhere", "empty results": tmp_path / "empty"}.get(case, results)
    (tmp_path / "empty").mkdir()
    if case == "not JSON":
        (results / "teacher-s0.json").write_text("{half")
    if case == "a field missing":                       # JSON, and a record, but not one the tables can read
        record = json.loads((results / "teacher-s0.json").read_text())
        (results / "teacher-s0.json").write_text(json.dumps({k: v for k, v in record.items() if k != "metric"}))
    if case == "a bench label too long":              # bench.py's columns: an 84-character label, then numbers
        (results / "bench-cpu.txt").write_text(f"{'x' * 90} 1.0 2.0 0.5 info\n")
    argv = ["--results", str(folder), "--write", str(tmp_path / "nope.md" if case == "missing README" else readme)]
    line = one_sentence(table.main, argv + (["--check", str(readme)] if case == "both" else []), capsys, "table.py")
    assert message in line and readme.read_text() == "<!-- table: compute -->\nold\n<!-- /table -->\n"


def test_3_table_write_fills_the_markers_and_says_so(tmp_path, results, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table: compute -->\nold\n<!-- /table -->\n")
    table.main(["--results", str(results), "--write", str(readme)])
    assert "| dense teachers | 1 | 1.0 |" in readme.read_text() and "1 tables written" in capsys.readouterr().out
    table.main(["--results", str(results), "--check", str(readme)])          # now equal: passes


def test_5_bench_output_with_data_lines_still_makes_its_table(tmp_path):
    row = f"{'masked vs dense step, MiniLM (median s)':<84} {0.5668:10.4g} {0.5587:10.4g} {1.014:7.3f}  <= 1.05"
    path = tmp_path / "bench.txt"
    path.write_text(f"sst2 train: read 67349 examples from {'/very/long' * 9}/sst2/train.tsv\n{row}\n")
    assert "| masked vs dense step, MiniLM (median s) | 0.5668 |" in table.bench_table(path)


# 1. softmax.py and figures.py: their files through the same rule --------------------------------------------

def test_1_softmax_out_never_replaces_a_users_file(tmp_path, capsys, monkeypatch):
    softmax = load_evidence("softmax")
    (tmp_path / "mine.json").write_text('{"my": "data"}\n')
    monkeypatch.setattr(softmax, "dev_logits", lambda *a: pytest.fail("worked before --out was checked"))
    monkeypatch.setattr(sys, "argv", ["softmax.py", "--model", "m", "--out", str(tmp_path / "mine.json")])
    line = one_sentence(lambda argv: softmax.main(), [], capsys, "softmax.py")
    assert "is not evidence/softmax.py's record" in line and (tmp_path / "mine.json").read_text() == '{"my": "data"}\n'


def test_1_figures_are_not_drawn_from_no_results(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    figures = load_evidence("figures")
    monkeypatch.setattr(figures, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(figures, "OUT", tmp_path / "figures")
    (tmp_path / "results").mkdir()
    assert "holds no results files" in one_sentence(lambda argv: figures.main(), [], capsys, "figures.py")
    assert not (tmp_path / "figures").exists()


def test_1_first_cut_keeps_a_users_file_and_records_each_cut(tmp_path, tiny_bert_with_vocab, tiny_sst2, capsys):
    """evidence/first_cut.py: a teacher that is not fine-tuned, and a user's file at --out, are refused
    before the minutes of training (files.py's rule, whose tests show that a record of its own is
    replaced); the record's cuts are the criteria's: magnitude cuts none of the largest 1% of each
    matrix, largest-first all of them."""
    first_cut = load_evidence("first_cut")
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bert_with_vocab, teacher)
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    out = tmp_path / "first-cut.json"
    out.write_text("my notes\n")
    argv = ["--model", str(tiny_bert_with_vocab), "--data-dir", str(tiny_sst2), "--out", str(out)]
    line = one_sentence(first_cut.main, ["--teacher", str(tiny_bert_with_vocab), *argv], capsys, "first_cut.py")
    assert "must be fine-tuned on sst2" in line
    line = one_sentence(first_cut.main, ["--teacher", str(teacher), *argv], capsys, "first_cut.py")
    assert "holds a file that is not evidence/first_cut.py's record" in line and out.read_text() == "my notes\n"
    out.unlink()
    first_cut.main(["--teacher", str(teacher), *argv])
    record = json.loads(out.read_text())
    assert set(record["criteria"]) == {"movement", "magnitude", "at random", "largest first"}
    assert record["criteria"]["magnitude"]["share_of_largest_1pct_cut"] == 0.0
    assert record["criteria"]["largest first"]["share_of_largest_1pct_cut"] == 1.0


# 4. rundir.py: a dangling symbolic link as --out-dir is named as one ------------------------------------------

@pytest.mark.parametrize("where, message", [("link", "is a symbolic link to"), ("link/run", "link is not a folder"),
                                            ("afile/run", "afile is not a folder")])
def test_4_an_out_dir_that_cannot_be_a_folder_is_named(tmp_path, tiny_bert_with_vocab, capsys, where, message):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("a user's file\n")
    before = snapshot(tmp_path)
    line = refused(base_args(tiny_bert_with_vocab, tmp_path / where), capsys)
    assert message in line and "permissions" not in line and snapshot(tmp_path) == before
    with pytest.raises(rundir.UsageError, match=message):            # by the checks, before the data is read
        cli.resolve(cli.parse_args(base_args(tiny_bert_with_vocab, tmp_path / where)))


# 3-5. data.py: extra fields are refused, lines are the file's, and the file read is said --------------------

def test_3_a_tsv_row_with_more_fields_than_the_header_is_refused(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad film\t0\tsurplus\n")
    with pytest.raises(data.DataError, match=r"dev.tsv:line 3 has 3 tab-separated fields but the header has 2"):
        data.load_split(data.TASKS["sst2"], "validation", tmp_path)


@pytest.mark.parametrize("name, content, where", [
    ("dev.tsv", "sentence\tlabel\ngood\t1\n\nbad\t7\n", "dev.tsv:line 4: label '7'"),          # a blank line counts
    ("dev.jsonl", '{"sentence": "a _ b\u2028c", "option1": "x", "option2": "y", "answer": "1"}\n'
                  '{"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"}\n', "dev.jsonl:line 2: answer"),
])
def test_4_a_bad_record_is_named_by_the_files_own_line(tmp_path, name, content, where):
    (tmp_path / name).write_text(content)
    task = data.TASKS["sst2" if name.endswith(".tsv") else "winogrande"]
    with pytest.raises(data.DataError, match=where):
        data.load_split(task, "validation", tmp_path)


def test_5_the_file_a_split_is_read_from_is_printed(tmp_path, capsys):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (tmp_path / "sst2" / "train.jsonl").write_text('{"sentence": "bad", "label": 0}\n')
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine\t1\nok\t1\n")
    assert len(data.load_split(data.TASKS["sst2"], "train", tmp_path)) == 1
    assert capsys.readouterr().out == f"sst2 train: read 1 example from {tmp_path / 'sst2' / 'train.tsv'}\n"


def test_2_a_rebuild_that_cannot_be_made_is_one_sentence(tmp_path, capsys, monkeypatch):
    """runs.py remakes a missing model only from a row that writes it: else one sentence, exit 2."""
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    cmd = ["python", "train.py", "--teacher", "runs/evidence/nosuch-s0/model", "--out-dir", "runs/evidence/x"]
    line = one_sentence(lambda argv: files_command(lambda: runs.ensure_models(cmd, {}, "/M")), [], capsys, "runs.py")
    assert "runs/evidence/nosuch-s0/model is missing and no row of runs.py makes it" in line


def files_command(work):
    with files.command("runs.py"):
        work()
