"""evidence/table.py: its tables from fixture results files, and the README's tables equal to its output."""
import importlib.util
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "evidence" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table = load_module("table")


def write(folder, name, accuracy, seconds=60.0, holdout=None, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "command": f"python train.py ... {name}", "commit": "abc", "seed": int(name[-1]),
              "machine": "test", "metric": {"accuracy": accuracy}, "command_seconds": seconds,
              "wall_time_s": seconds - 3, "student_seconds": seconds - 10, "tokens_per_s": 1000.0,
              "peak_memory_gb": 1.5, **extra}
    if holdout is not None:
        record["holdout_metric"] = {"accuracy": holdout}
    (folder / f"{name}.json").write_text(json.dumps(record))


def cycles(total, target, kind="accelerated", accuracy=80.0):
    """A student's cycle_evals and resolved args as runs.py records them: an eval at the end of every
    pruning cycle of schedule.py's Schedule for `total` steps (188 per epoch)."""
    from schedule import Schedule
    sched = Schedule(total, target, 0.3, kind=kind)
    evals = [{"step": b, "sparsity": round(sched.sparsity_at(b - 1), 4), "accuracy": accuracy - i % 2}
             for i, (_, b) in enumerate(sched.cycles()[:-1])]
    return {"cycle_evals": evals, "args": {"epochs": total / 188, "init_sparsity": 0.3, "schedule": kind}}


@pytest.fixture
def fixtures(tmp_path, monkeypatch):
    """This miniature's results at the top (the budget study, rows at a chosen budget of 2), the first
    miniature's in v1/."""
    monkeypatch.setattr(table.runs, "CHOSEN_BUDGET", 2)
    for k, (acc, ho) in enumerate(((85.0, 88.0), (86.0, 88.5), (87.0, 89.0))):
        write(tmp_path, f"teacher-s{k}", acc, holdout=ho)
    for k, (acc, ho) in enumerate(((80.0, 84.0), (81.0, 84.5), (82.5, 85.0))):
        write(tmp_path, f"gmp80-b1-s{k}", acc - 1, holdout=ho - 1)
        write(tmp_path, f"gmp80-b2-s{k}", acc, holdout=ho, teacher_metric={"accuracy": 85.0 + k},
              **cycles(752, 0.8, accuracy=acc))
    for k, acc in enumerate((50.0, 50.5)):               # 2 seeds: far below, beyond the spread
        write(tmp_path, f"embhead80-b2-s{k}", acc, holdout=50.0)
    for k, acc in enumerate((80.5, 81.5, 82.0)):         # within the spread of the recipe; a teacher_metric of
        write(tmp_path, f"cubic80-b2-s{k}", acc, holdout=84.0,     # 90 (not the teacher run's): the record's wins
              teacher_metric={"accuracy": 90.0}, **cycles(752, 0.8, "cubic", accuracy=acc))
    for k, acc in enumerate((84.0, 85.0, 86.0)):         # beats the recipe beyond the spread: against the paper
        write(tmp_path, f"t1-80-b2-s{k}", acc)
    write(tmp_path, "nokd80-b2-s0", 79.0)                 # one seed: no spread to compare with
    write(tmp_path, "gmp70-b2-s0", 84.0)                  # the curve over sparsities, one seed so far
    old = tmp_path / "v1"
    for k, acc in enumerate((85.0, 86.0, 87.0)):
        write(old, f"teacher-s{k}", acc)
    for k, acc in enumerate((75.0, 76.0, 78.0)):
        write(old, f"gmp80-s{k}", acc)
    write(old, "obert80-s0", 83.0)                         # gradual oBERT: 80% has one seed, 90% none yet
    for k, (plain, grouped, fast) in enumerate(((300, 100, 80), (330, 110, 88), (270, 90, None))):
        write(old, f"gmp90-plain-s{k}", 70.0, seconds=plain + 10)
        write(old, f"gmp90-s{k}", 70.0, seconds=grouped + 10)
        if fast:
            write(old, f"gmp90-sparse-s{k}", 70.0, seconds=fast + 10)
    rows = [{"sparsity": s, "accuracy": a, "seconds": 0.3} for s, a in ((0.0, 85.0), (0.5, 82.0), (0.7, 76.0),
                                                                       (0.8, 70.0), (0.9, 52.0))]
    write(old, "oneshot-gmp-s0", 85.0, oneshot=rows)
    write(old, "oneshot-obert-s0", 85.0, oneshot=[dict(r, seconds=2.0) for r in rows], fisher_seconds=150.0)
    p = {"1.0": [0.1, 0.9], "2.0": [0.25, 0.75], "5.5": [0.4, 0.6]}
    (tmp_path / "softmax.json").write_text(json.dumps({
        "name": "softmax", "command": "python evidence/softmax.py", "commit": "abc", "seed": 0, "machine": "test",
        "temperatures": [1.0, 2.0, 5.5], "dev_size": 2, "examples": [{"text": " good | fun ", "label": 1, "p": p}],
        "dev_mean_top_probability": {"1.0": 0.9, "2.0": 0.75, "5.5": 0.6},
        "dev_mean_entropy_nats": {"1.0": 0.3, "2.0": 0.5, "5.5": 0.67}}))
    (tmp_path / "bench-cpu.txt").write_text(
        "# command: python bench.py\nprune-lm bench on CPU\nmeasurement" + " " * 80 + "ours\n"
        + f"{'masked vs dense step, MiniLM (median s)':<84} {0.5668:10.4g} {0.5587:10.4g} {1.014:7.3f}  <= 1.05\n"
        + f"{'global threshold, 302M weights (s)':<84} {7.231:10.4g} {float('nan'):10.4g} {float('nan'):7.3f}  info\n")
    return tmp_path


def row_of(markdown, *starts):
    return next(line for line in markdown.splitlines() if all(s in line for s in starts))


def test_tables_from_fixture_results(fixtures):
    tables = table.render(fixtures)
    m, s = statistics.mean([80.0, 81.0, 82.5]), statistics.stdev([80.0, 81.0, 82.5])
    budget = tables["budget"]
    assert f"| {m:.2f} ± {s:.2f} | -4.83 ± 0.29 |" in row_of(budget, "| 80% | 2 | 752 |")   # 80-85, 81-86, 82.5-87
    assert "| 84.50 ± 0.50 | -4.00 ± 0.00 | 3 |" in row_of(budget, "| 80% | 2 | 752 |")     # held-out: 84-88, ...
    assert "not run" in row_of(budget, "| 90% | 8 | 3008 |")
    assert "| 1.0 ± 0.0 |" in row_of(budget, "dense teacher")                      # 60 s of command = 1.0 minute
    sst2 = tables["sst2"]
    # minus its teacher: each seed's dev accuracy minus the teacher_metric in its own file (85, 86, 87)
    assert f"| {m:.2f} ± {s:.2f} | -4.83 ± 0.29 | 84.50 ± 0.50 | 3 |" in row_of(sst2, "the recipe: GMP", "| 80% |")
    assert "| 81.33 ± 0.76 | -8.67 ± 0.76 |" in row_of(sst2, "naive cubic", "| 80% |")          # 80.5 - 90, ...
    # no teacher_metric in the file (a run without KD): its seed's teacher run, 50 - 85 and 50.5 - 86
    assert ("50.25 ± 0.35 (2 seeds) | -35.25 ± 0.35 (2 seeds) | 50.00 ± 0.00 (2 seeds) | 2 |"
            in row_of(sst2, "embeddings", "| 80% |"))
    assert "| 84.00 (1 seed) | -1.00 (1 seed) |" in row_of(sst2, "the recipe: GMP", "| 70% |")
    assert "| 86.00 ± 1.00 |  | 88.50 ± 0.50 | 3 |" in row_of(sst2, "dense fine-tuned teacher")       # no gap
    assert not [l for l in tables["sst2"].splitlines() if "| 50% |" in l]          # a sparsity with no runs: no rows
    g = tables["guidelines"]
    embhead = row_of(g, "`gmp80-b2` − `embhead80-b2`")      # over the 2 seeds both have: 80.5 - 50.25
    assert "| +30.25 | 1.06 |" in embhead and "yes, as the paper says" in embhead and "| 2 |" in embhead
    assert "within the spread" in row_of(g, "`gmp80-b2` − `cubic80-b2`")
    assert "+0.50 (within the spread)" in row_of(g, "`gmp80-b2` − `cubic80-b2`")    # held-out 84.5 ± 0.5 vs 84.0
    assert "not run" in row_of(g, "`gmp90-b2` − `t1-90-b2`")
    t1 = row_of(g, "`gmp80-b2` − `t1-80-b2`")
    assert f"| {m - 85.0:+.2f} | {s + 1.0:.2f} |" in t1 and "against the paper" in t1
    assert "| -4.0, -4.0, -3.5 | 3 |" in t1                # 80 - 84, 81 - 85, 82.5 - 86, seed by seed
    assert "| +1.00 |  | one seed: no spread | +1.0 | 1 |" in row_of(g, "`gmp80-b2` − `nokd80-b2`")   # seed 0
    assert "| +1.00 |" in row_of(g, "`gmp80-b2` − `gmp80-b1`")                       # a longer schedule
    short = tables["short-budget"]
    assert "| 76.33 ± 1.53 | -9.67 ± 0.58 | 3 |" in row_of(short, "188 steps (½", "| 80% |")
    assert "| 83.00 (1 seed) | -2.00 (1 seed) | 1 |" in row_of(short, "with oBERT", "| 80% |")
    oneshot = row_of(tables["oneshot"], "AdamW (the teachers) | GMP, one shot")
    assert "| 85.0 (1 seed) | 82.0 (1 seed) | 76.0 (1 seed) | 70.0 (1 seed) | 52.0 (1 seed) | 0.3–0.3 | 1 |" in oneshot
    assert "| Fisher once: 150–150; then 2.0–2.0 | 1 |" in row_of(tables["oneshot"], "AdamW (the teachers) | oBERT")
    # speed-ups are per seed (student seconds): plain/grouped = 300/100, 330/110, 270/90 = 3.0 each;
    # over the 2 seeds with a sparse run, plain/sparse = 300/80, 330/88 = 3.75 and grouped/sparse = 1.25
    sparse = row_of(tables["wall"], "`--sparse-backprop`")
    assert "| 3.75× ± 0.00 (2 seeds) | 1.25× ± 0.00 (2 seeds) | 2 |" in sparse
    assert "“good \\| fun” | 1 | 0.900 | 0.750 | 0.600 |" in row_of(tables["softmax"], "good")   # | escaped
    # this miniature: teachers 3 x 60 s; students 3 + 3 + 2 + 3 + 3 + 1 + 1 = 16; the softmax has no time
    assert "| dense teachers | 3 | 3.0 |" in tables["compute"] and "| gradual pruning (students) | 16 |" in tables["compute"]
    assert "| masked vs dense step, MiniLM (median s) | 0.5668 | 0.5587 | 1.014 | <= 1.05 |" in tables["bench-cpu"]
    assert "| global threshold, 302M weights (s) | 7.231 |  |  | info |" in tables["bench-cpu"]


def test_guidelines_compare_every_doubling_past_the_chosen_budget(fixtures, monkeypatch):
    """Past the chosen budget (2), each doubling in runs.BUDGETS is its own row, seed against seed."""
    write(fixtures, "gmp80-b4-s0", 82.0)
    write(fixtures, "gmp80-b8-s0", 83.5)
    g = table.render(fixtures)["guidelines"]
    assert "4 teacher budgets rather than the chosen 2" in row_of(g, "`gmp80-b4` − `gmp80-b2`")
    assert "| +2.00 |" in row_of(g, "`gmp80-b4` − `gmp80-b2`")                     # 82.0 - 80.0, seed 0
    eight = row_of(g, "`gmp80-b8` − `gmp80-b4`")
    assert "(8 teacher budgets rather than 4) |" in eight and "| +1.50 |" in eight   # 83.5 - 82.0, seed 0
    assert "not run" in row_of(g, "`gmp90-b8` − `gmp90-b4`")
    monkeypatch.setattr(table.runs, "BUDGETS", (1, 2, 4))                           # no 8: no row for it
    g = table.render(fixtures)["guidelines"]
    assert "`gmp80-b4` − `gmp80-b2`" in g and "gmp80-b8" not in g


def test_without_a_chosen_budget_the_chosen_rows_say_so(fixtures, monkeypatch):
    monkeypatch.setattr(table.runs, "CHOSEN_BUDGET", None)
    tables = table.render(fixtures)
    assert tables["guidelines"].startswith("not run") and tables["sst2"].startswith("not run")


def test_paste_replaces_only_marked_tables(fixtures):
    tables = table.render(fixtures)
    readme = "intro\n<!-- table: guidelines -->\nold\n<!-- /table -->\nmiddle | not a table |\n"
    assert table.paste(readme, tables) == ("intro\n<!-- table: guidelines -->\n" + tables["guidelines"]
                                           + "\n<!-- /table -->\nmiddle | not a table |\n")
    with pytest.raises(KeyError):
        table.paste("<!-- table: nonesuch -->\nx\n<!-- /table -->\n", tables)


READMES = ("README.md", "evidence/README.md", "evidence/what-sparsity-buys.md")


def test_readme_tables_are_table_py_output():
    """Every table evidence/table.py makes is in one of the three pages, once, and no other table is;
    each page's tables equal its output, byte for byte."""
    rendered, seen = table.render(), []
    for name in READMES:
        text = (ROOT / name).read_text()
        seen += [m["name"] for m in table.MARK.finditer(text)]
        assert table.paste(text, rendered) == text, f"run: python evidence/table.py --write {' '.join(READMES)}"
    assert sorted(seen) == sorted(rendered), "each table in one page exactly"


def test_every_results_file_names_its_command_commit_seed_and_machine():
    results = {p: json.loads(p.read_text()) for p in table.RESULTS.rglob("*.json")}
    assert results, "no results files"
    for name, record in results.items():
        assert {"command", "commit", "seed", "machine"} <= set(record), name
    for path in table.RESULTS.glob("*.txt"):
        head = path.read_text().splitlines()[:4]
        assert [line.split(":")[0] for line in head] == ["# command", "# commit", "# seed", "# machine"], path


def test_every_run_is_a_valid_command_with_its_inputs_made_before_it():
    import cli
    runs = load_module("runs")
    rows = runs.rows("/M")
    names = [name for name, _ in rows]
    assert len(names) == len(set(names))
    for i, (name, cmd) in enumerate(rows):
        for model in runs.needed_models(cmd):              # any command's inputs (sparse.py's exports too)
            assert model.relative_to(runs.RUNS).parts[0] in names[:i], (name, model)
        if cmd[1] != "train.py":
            continue
        args = cli.parse_args(cmd[2:])                     # every flag exists and parses
        args.kd = cli.distils(args)
        cli.check_flags_apply(args)                        # and applies (a one-shot gmp run takes no --seed)
        assert args.out_dir == f"runs/evidence/{name}"
        assert args.seed == int(name[-1]) or ("seed" not in args.given and args.oneshot and args.method == "gmp")
        for source in (args.teacher, args.model):            # a teacher or CrAM model: made by an earlier run
            if source and source.startswith("runs/evidence/"):
                assert source.split("/")[2] in names[:i], (name, source)


def test_schedule_figure_draws(tmp_path):
    pytest.importorskip("matplotlib")
    figures = load_module("figures")
    figures.schedules_figure(tmp_path / "s.png")
    assert 0 < (tmp_path / "s.png").stat().st_size < 200_000


def test_a_comparison_uses_only_the_seeds_both_rows_have(tmp_path, monkeypatch):
    """gmp80-b2 has seeds 0-4, cubic80-b2 seeds 0-2 (and a held-out accuracy for 0-1 only): the
    difference, spread and seed count are those of the shared seeds, never of a's 5 against b's 3."""
    monkeypatch.setattr(table.runs, "CHOSEN_BUDGET", 2)
    a, a_ho = (80.0, 81.0, 82.5, 90.0, 95.0), (84.0, 84.5, 85.0, 86.0, 87.0)
    b, b_ho = (79.0, 80.5, 81.0), (84.0, 84.0, None)
    for k in range(5):
        write(tmp_path, f"teacher-s{k}", 85.0 + k, holdout=88.0)
        write(tmp_path, f"gmp80-b2-s{k}", a[k], holdout=a_ho[k])
    for k in range(3):
        write(tmp_path, f"cubic80-b2-s{k}", b[k], holdout=b_ho[k])
    (tmp_path / "v1").mkdir()
    row = row_of(table.render(tmp_path)["guidelines"], "`gmp80-b2` − `cubic80-b2`")
    d = statistics.mean(a[:3]) - statistics.mean(b)                       # = the mean of the per-seed differences
    assert d == pytest.approx(statistics.mean(x - y for x, y in zip(a, b)))
    spread = statistics.stdev(a[:3]) + statistics.stdev(b)
    assert f"| {d:+.2f} | {spread:.2f} | no: within the spread | +1.0, +0.5, +1.5 | 3 |" in row     # +1.00 | 2.30
    ho_d, ho_spread = statistics.mean(a_ho[:2]) - 84.0, statistics.stdev(a_ho[:2])      # seeds 0 and 1 only
    assert ho_d <= ho_spread and row.endswith(f"| {ho_d:+.2f} (within the spread) |")
    res = table.load(tmp_path)                   # rows that both ran, on no seed in common, are not "not run"
    assert table.paired(table.seeds_of(res, "gmp80-b2")[3:], table.seeds_of(res, "cubic80-b2")) == ([], [])
    assert table.verdict([], [], ran=True)[2] == "no seed in common" and table.verdict([], [], ran=False)[2] == "not run"


def test_cells_name_any_seed_count_but_the_usual_one(fixtures):
    import runs
    assert table.SEEDS == len(runs.SEEDS) == 3
    assert table.cell([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert table.cell([1.0, 2.0]) == "1.50 ± 0.71 (2 seeds)"
    assert table.cell([1.0, 2.0, 3.0, 4.0, 5.0]) == "3.00 ± 1.58 (5 seeds)"   # runs.FIVE_SEEDS' rows
    for k in (3, 4):
        write(fixtures, f"teacher-s{k}", 88.0 + k - 3, holdout=89.0)
        write(fixtures, f"gmp80-b2-s{k}", 83.0, holdout=85.0, teacher_metric={"accuracy": 88.0 + k - 3})
    tables = table.render(fixtures)
    five = statistics.mean([80.0, 81.0, 82.5, 83.0, 83.0]), statistics.stdev([80.0, 81.0, 82.5, 83.0, 83.0])
    assert f"| {five[0]:.2f} ± {five[1]:.2f} (5 seeds) |" in row_of(tables["sst2"], "the recipe: GMP", "| 80% |")
    assert "(5 seeds) |" in row_of(tables["budget"], "dense teacher") and "| 5 |" in row_of(tables["budget"], "| 80% | 2 |")
    assert "| 3 |" in row_of(tables["guidelines"], "`gmp80-b2` − `cubic80-b2`")        # cubic has 3: 3 in common


def test_five_seeds_rows_get_seeds_3_and_4_after_their_teachers(monkeypatch):
    runs = load_module("runs")
    names = [n for n, _ in runs.rows("/M")]
    assert runs.FIVE_SEEDS and set(runs.MORE_SEEDS) == {3, 4}
    for row in runs.FIVE_SEEDS:
        assert [n for n in names if n.startswith(row + "-s")] == [f"{row}-s{k}" for k in (0, 1, 2, 3, 4)]
        for k in runs.MORE_SEEDS:
            assert names.index(f"teacher-s{k}") < names.index(f"{row}-s{k}")
    cmds = dict(runs.rows("/M"))
    three = cmds["gmp80-b2-s0"]                    # seed 3's command: seed 0's with every seed-0 path and flag moved
    assert cmds["gmp80-b2-s3"] == [x.replace("-s0", "-s3") if "runs/evidence" in x else x for x in three[:-3]] + \
        ["3", "--out-dir", "runs/evidence/gmp80-b2-s3"]
    monkeypatch.setattr(runs, "FIVE_SEEDS", ())
    fewer = [n for n, _ in runs.rows("/M")]
    assert not [n for n in fewer if n.endswith(("-s3", "-s4"))]              # no 5-seed row: no teacher-s3, -s4
    assert [n for n in names if n in fewer] == fewer                         # and every other run as it was
    monkeypatch.setattr(runs, "FIVE_SEEDS", ("gmp80-b2", "nonesuch80-b2"))
    with pytest.raises(ValueError, match="nonesuch"):
        runs.rows("/M")


def test_inference_cpu_is_the_recorded_sparse_py_command_and_its_text_is_its_result():
    runs = load_module("runs")
    cmd = dict(runs.rows("/M", "../shared/data"))["inference-cpu"]
    assert runs.results_file("inference-cpu", cmd) == runs.RESULTS / "inference-cpu.txt"
    assert runs.results_file("gmp80-b2-s0", ["x", "--out-dir", "runs/evidence/gmp80-b2-s0"]) == \
        runs.RESULTS / "gmp80-b2-s0.json"
    recorded = (runs.RESULTS / "inference-cpu.txt").read_text().splitlines()[0].removeprefix("# command: ")
    shown = runs.shell(cmd, "/M")
    assert shown.split(" --out ")[0] == recorded.split(" --out ")[0]         # the same models, in the same order
    needed = runs.needed_models(cmd)
    assert [str(m) for m in needed] == ["runs/evidence/teacher-s0/model"] + \
        [f"runs/evidence/oneshot-obert-export-s0/oneshot-{s:g}" for s in runs.INFERENCE]
    assert {m.relative_to(runs.RUNS).parts[0] for m in needed} == {"teacher-s0", "oneshot-obert-export-s0"}


def test_a_text_result_is_renamed_into_place_only_when_its_command_ends(tmp_path, monkeypatch):
    import subprocess
    runs = load_module("runs")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    (tmp_path / "evidence" / "results").mkdir(parents=True)
    cmd = ["python", "sparse.py", "runs/evidence/teacher-s0/model", "--out", "evidence/results/inference-cpu.txt"]
    final = tmp_path / "evidence" / "results" / "inference-cpu.txt"

    def fake(argv, cwd, check):
        out = argv[argv.index("--out") + 1]
        assert out == "evidence/results/inference-cpu.txt.tmp" and not final.exists()
        (cwd / out).write_text(f"# command: python sparse.py {' '.join(argv[2:])}\n# commit: x\nrow\n")
        if "fail" in argv:
            raise subprocess.CalledProcessError(1, argv)
    monkeypatch.setattr(runs.subprocess, "run", fake)
    with pytest.raises(runs.files.CommandError, match="inference-cpu failed"):   # one sentence, no traceback
        runs.run_text("inference-cpu", cmd + ["fail"], "/M")
    assert not final.exists()                                             # a failed run leaves nothing 'done'
    runs.run_text("inference-cpu", cmd, "/M")
    assert final.read_text() == ("# command: python sparse.py runs/evidence/teacher-s0/model --out "
                                 "evidence/results/inference-cpu.txt\n# commit: x\nrow\n")
    assert not (tmp_path / "evidence" / "results" / "inference-cpu.txt.tmp").exists()


def test_rebuild_remakes_an_export_and_checks_its_one_shot_accuracies(tmp_path, monkeypatch):
    runs = load_module("runs")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    monkeypatch.setattr(runs, "RESULTS", tmp_path / "evidence" / "results")
    runs.RESULTS.mkdir(parents=True)
    oneshot = [{"sparsity": 0.5, "accuracy": 82.8, "seconds": 1.3, "holdout_accuracy": 87.8}]
    (runs.RESULTS / "oneshot-obert-export-s0.json").write_text(json.dumps({"oneshot": oneshot}))
    (tmp_path / "runs/evidence/teacher-s0/model").mkdir(parents=True)
    todo = dict(runs.rows("/M"))
    remade = []

    def fake_run(name, cmd, M, accuracy=82.8):
        remade.append(name)
        (tmp_path / "runs/evidence/oneshot-obert-export-s0/oneshot-0.5").mkdir(parents=True, exist_ok=True)
        return {"oneshot": [dict(oneshot[0], seconds=9.9, accuracy=accuracy)]}     # other timings: the same run
    monkeypatch.setattr(runs, "run", fake_run)
    runs.ensure_models(todo["inference-cpu"][:4], todo, "/M")     # the teacher and oneshot-0.5: only the export
    assert remade == ["oneshot-obert-export-s0"]
    import shutil
    shutil.rmtree(tmp_path / "runs/evidence/oneshot-obert-export-s0")
    monkeypatch.setattr(runs, "run", lambda name, cmd, M: fake_run(name, cmd, M, accuracy=82.7))
    with pytest.raises(runs.files.CommandError, match="oneshot"):   # another accuracy: not the run on record
        runs.rebuild(runs.RUNS / "oneshot-obert-export-s0" / "oneshot-0.5", todo, "/M")


def test_cycles_figure_draws_from_the_records(fixtures):
    pytest.importorskip("matplotlib")
    figures = load_module("figures")
    res = table.load(fixtures)
    assert figures.total_steps(res["gmp80-b2-s0"]) == 752                  # from its cycle_evals and 4 epochs
    for total in (376, 1504, 3008):                                         # the budget study's other budgets
        assert figures.total_steps({"cycle_evals": cycles(total, 0.9)["cycle_evals"], "args": {"epochs": total / 188}}) \
            == total
    assert figures.schedule_label(res["gmp80-b2-s0"]["args"]) == "accelerated from 30%"
    assert figures.schedule_label(res["cubic80-b2-s0"]["args"]) == "naive cubic from zero"
    labels = figures.cycles_figure(res, fixtures / "c.png")                 # 90%: no runs, its panel says so
    assert 0 < (fixtures / "c.png").stat().st_size < 200_000
    assert not any("oBERT" in t for t in labels)
    assert not any("oBERT" in t for t in figures.recovery_figure(res, fixtures / "r.png"))
    for k in (0, 1):                                                        # the recipe with oBERT, 2 seeds
        res[f"obert80-b2-s{k}"] = dict(res[f"gmp80-b2-s{k}"], name=f"obert80-b2-s{k}")
    assert "the recipe with oBERT: accelerated from 30% (2 seeds)" in figures.cycles_figure(res, fixtures / "c.png")
    assert "the recipe with oBERT at 80% (2 seeds)" in figures.recovery_figure(res, fixtures / "r.png")


def test_inference_table_shows_every_variant_at_each_batch_size(tmp_path):
    """sparse.py's text -> one row per model: routed, all-CSR and all-SparseProp speed-ups and the routed
    kernels at each batch size, the largest difference, the sizes; accuracies from the one-shot record."""
    head = "model\tencoder sparsity\tbatch\tkernels\tms per batch\tsequences/s\tspeed-up\tmax |diff|\tmatrices"
    body = [f"oneshot-0.9\t0.9000\t{b}\t{k}\t1\t1\t{x}\t{d}\t{m}" for b, k, x, d, m in [
        (1, "dense", "1.00x", "0.00e+00", "dense 36"), (1, "all csr", "1.50x", "3.0e-08", "csr 36"),
        (1, "all sparseprop", "0.70x", "2.0e-08", "sparseprop 36"), (1, "fastest per matrix", "1.40x", "1.0e-08",
                                                                      "csr 30, dense 6"),
        (32, "dense", "1.00x", "0.00e+00", "dense 36"), (32, "all csr", "0.90x", "3.0e-08", "csr 36"),
        (32, "all sparseprop", "1.30x", "2.0e-08", "sparseprop 36"), (32, "fastest per matrix", "1.35x", "5.0e-08",
                                                                       "dense 10, sparseprop 26"),
        (32, "all tiled", "2.10x", "4.0e-08", "tiled 36")]]
    path = tmp_path / "inference.txt"
    path.write_text("\n".join(["# command: x", head, *body, "# storage: model\tMB\tMB after zlib",
                               "# storage: oneshot-0.9\t90.9\t49.3"]) + "\n")
    text = table.inference_table(path, {"oneshot": [{"sparsity": 0.9, "accuracy": 67.66}]})
    assert ("| oneshot-0.9 | 90% | 67.66 | 1.40x | 1.50x | 0.70x |  | csr 30, dense 6 | 1.35x | 0.90x | 1.30x | "
            "2.10x | dense 10, sparseprop 26 | 5e-08 | 90.9 | 49.3 |") in text          # batch 1 had no tiled row
    assert ("| routed, batch 1 | all CSR, batch 1 | all SparseProp, batch 1 | all tiled (ours), batch 1 | "
            "kernels routed, batch 1 |") in text


def test_paper_tasks_table_gaps_from_the_teacher_and_a_stopped_run(tmp_path):
    """evidence/paper_tasks.py's records: kept out of the miniature's tables (the compute table counts
    none of them); a student's gap is from the teacher it distilled from, a run without KD's from its
    task's better teacher; a run stopped at the deadline shows its last pruning cycle."""
    write(tmp_path, "teacher-s0", 85.0)
    for name, acc in (("csqa-teacher-lr1e-05", 44.0), ("csqa-teacher-lr5e-05", 47.0)):
        write(tmp_path, f"paper-{name}", acc, seed=0, finished=True, sparsity={"encoder": 0.0})
    write(tmp_path, "paper-csqa-gmp80", 33.0, seed=0, finished=True, sparsity={"encoder": 0.8},
          teacher_metric={"accuracy": 46.5})
    write(tmp_path, "paper-csqa-nokd80", 30.0, seed=0, finished=True, sparsity={"encoder": 0.8})
    write(tmp_path, "paper-csqa-obert80", 0.0, seed=0, finished=False, stopped_at_deadline=True, exit_code=130,
          cycle_evals=[{"step": 406, "sparsity": 0.0, "accuracy": 39.0}, {"step": 1218, "sparsity": 0.3, "accuracy": 41.5}])
    write(tmp_path, "paper-csqa-t1-80", 0.0, seed=0, finished=False, stopped_at_deadline=True, exit_code=130)
    write(tmp_path, "paper-csqa-cubic80", 0.0, seed=0, finished=False, stopped_at_deadline=False, exit_code=2)
    for name in ("paper-csqa-obert80", "paper-csqa-t1-80", "paper-csqa-cubic80"):   # as record() writes them
        rec = json.loads((tmp_path / f"{name}.json").read_text())
        (tmp_path / f"{name}.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "metric"}))
    tables = table.render(tmp_path)
    md = tables["paper-tasks"]
    assert row_of(md, "lr 5e-5").split("|")[4].strip() == "47.00"
    assert row_of(md, "the recipe (GMP)").split("|")[5].strip() == "-13.50"      # from its recorded teacher
    assert row_of(md, "no KD").split("|")[5].strip() == "-17.00"                 # from the better teacher
    assert [c.strip() for c in row_of(md, "oBERT").split("|")[3:5]] == ["30%", "41.50 (stopped at step 1218)"]
    assert row_of(md, "T = 1").split("|")[4].strip() == "stopped before its first pruning cycle"
    assert row_of(md, "naive cubic").split("|")[4].strip() == "failed (exit 2)"       # not 'stopped': it failed
    assert "WinoGrande" not in md
    assert row_of(tables["compute"], "| all |").split("|")[2].strip() == "1"     # teacher-s0 alone
    assert table.paper_table({}) == "(no runs of evidence/paper_tasks.py yet)"


def test_paper_tasks_deadline_interrupts_a_run_started_from_a_background_shell(tmp_path, monkeypatch):
    """A shell starts `paper_tasks.py ... &` with Ctrl-C ignored, and its children inherit that: the
    deadline's SIGINT must still stop a run (it did nothing in the recorded GPU run), and the record
    keep the accuracy of the cycles the run reached."""
    import signal
    import sys
    import time
    pt = load_module("paper_tasks")
    monkeypatch.setattr(pt, "ROOT", tmp_path)
    slow = tmp_path / "slow.py"                      # a stand-in for train.py: one pruning cycle, then a long wait
    slow.write_text("import json, pathlib, sys, time\n"
                    "out = pathlib.Path(sys.argv[sys.argv.index('--out-dir') + 1])\n"
                    "(out / 'student').mkdir(parents=True)\n"
                    "(out / 'student' / 'log.jsonl').write_text(json.dumps("
                    "{'step': 5, 'sparsity': 0.3, 'eval': {'accuracy': 40.0}}) + '\\n')\n"
                    "try:\n    time.sleep(120)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")
    cmd = [sys.executable, str(slow), "--out-dir", "runs/x"]
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)           # as in a shell's background job
    try:
        t0 = time.time()
        done = pt.run_phase([("x", cmd)], 1, time.time() + 3, "M", {"commit": "c", "machine": "m"}, tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)
    rec = json.loads((tmp_path / "paper-x.json").read_text())
    assert rec == done["x"] and rec["exit_code"] == 130 and rec["finished"] is False and rec["stopped_at_deadline"]
    assert rec["cycle_evals"] == [{"step": 5, "sparsity": 0.3, "accuracy": 40.0}]
    assert time.time() - t0 < 30                                      # interrupted, not killed a minute later


def test_paper_tasks_a_run_that_fails_on_its_own_is_a_failure_not_a_stop(tmp_path, monkeypatch):
    """A train.py that refuses its input (exit 2) before the deadline is recorded as failed, not as
    stopped; and a --jobs or --deadline that would run nothing is refused with exit 2."""
    import subprocess
    import sys
    import time
    pt = load_module("paper_tasks")
    monkeypatch.setattr(pt, "ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nprint('train.py: --foo is not a flag')\nsys.exit(2)\n")
    done = pt.run_phase([("y", [sys.executable, str(bad), "--out-dir", "runs/y"])], 1, time.time() + 60, "M",
                        {"commit": "c", "machine": "m"}, tmp_path)
    assert done["y"]["finished"] is False and done["y"]["stopped_at_deadline"] is False
    assert done["y"]["exit_code"] == 2 and "--foo is not a flag" in done["y"]["tail"]
    for flags in (["--jobs", "0"], ["--deadline", "0"]):
        r = subprocess.run([sys.executable, str(ROOT / "evidence" / "paper_tasks.py"), "--list", "--model", "x", *flags],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "pass at least 1 job" in r.stderr
