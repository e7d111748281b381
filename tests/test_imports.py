"""The files' dependencies, read from their imports: concept files never import the loop, the
command line or the run folder, and no two files import each other (nor in a longer cycle)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ("model", "data", "prune", "obert", "criteria", "schedule", "distill", "cram", "sparse", "sparse_inference", "sparse_backprop")
RUN = ("train", "cli", "rundir", "runtime")   # the loop and the three files around it
TOOLS = ("bench",)                         # measures everything: may import anything but the loop's files


def project_imports(path: Path, ours: set) -> set:
    """The project's top-level files that `path` imports, anywhere in it (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & ours


def graph() -> dict:
    files = {p.stem: p for p in ROOT.glob("*.py")}
    return {name: project_imports(path, set(files) - {name}) for name, path in files.items()}


def cycle_from(g: dict, start: str) -> list | None:
    """A path start -> ... -> start through the imports, or None."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(g.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def concept_violations(g: dict) -> dict:
    """{concept file: the loop's files it imports}. Every top-level file that is neither the loop's nor
    a tool counts as a concept file, so a new file is checked without being listed here."""
    concepts = set(g) - set(RUN) - set(TOOLS)
    return {c: sorted(g[c] & set(RUN)) for c in sorted(concepts) if g[c] & set(RUN)}


def test_every_file_of_the_design_exists():
    assert set(CONCEPTS) | set(RUN) | set(TOOLS) <= set(graph())


def test_concept_files_never_import_the_loop_the_command_line_or_the_run_folder():
    bad = concept_violations(graph())
    assert not bad, f"concept files importing the loop's files: {bad}"


def test_no_import_cycles():
    g = graph()
    cycles = [c for c in (cycle_from(g, name) for name in sorted(g)) if c]
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"


def test_the_checks_see_a_cycle_and_a_concept_importing_the_loop():
    """The two checks above are not vacuous: a made-up graph with both faults is caught."""
    g = {"prune": {"obert"}, "obert": {"prune"}, "cram": {"train"}, "train": {"cram"}}
    assert cycle_from(g, "prune") == ["prune", "obert", "prune"]
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": set()}, "a") is None
    assert concept_violations(g) == {"cram": ["train"]}
    assert concept_violations({**g, "newconcept": {"rundir"}})["newconcept"] == ["rundir"]   # unlisted: still checked
