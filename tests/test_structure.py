"""The layout's rules, read from the source: stages import only earlier stages, no cycles, one owner per format."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featx"
STAGES = {"data": 0, "extract": 1, "classify": 2, "results": 3}
# Shared plumbing every stage may import; it imports no stage itself.
PLUMBING = {"errors", "config", "runtime", "files", "progress", "jsonvalues", "__init__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def featx_imports(path: Path) -> set[str]:
    """Every featx module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("featx"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featx"):
            found.add(node.module)
            # `from featx.extract import store` imports the module featx.extract.store
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
            )
    return found


def stage_of(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.get(parts[1]) if len(parts) > 1 else None


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_import_goes_from_an_earlier_stage_to_a_later_one():
    violations = []
    for path in sources():
        own = stage_of(module_name(path))
        if own is None:
            continue
        for imported in featx_imports(path):
            other = stage_of(imported)
            if other is not None and other > own:
                violations.append(f"{module_name(path)} imports {imported}")
    assert violations == []


def test_shared_plumbing_imports_no_stage():
    violations = []
    for path in sources():
        if path.parent == PACKAGE and path.stem in PLUMBING:
            violations += [f"{path.name} imports {m}" for m in featx_imports(path) if stage_of(m) is not None]
    assert violations == []


def engine_violations() -> list[str]:
    violations = []
    for path in sources():
        if module_name(path).startswith("featx.engines"):
            violations += [f"{module_name(path)} imports {m}" for m in featx_imports(path) if stage_of(m) is not None]
    return violations


def test_engines_run_the_units_they_are_handed_and_import_no_stage():
    """The unit of work (build models from recipes, embed a range) is stage one's; engines only run it."""
    assert engine_violations() == []


def test_the_engine_rule_sees_an_engine_importing_a_stage(tmp_path, monkeypatch):
    fake = tmp_path / "featx"
    (fake / "engines").mkdir(parents=True)
    (fake / "engines" / "bad.py").write_text("def f():\n    from featx.data.images import iter_batches\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert engine_violations() == ["featx.engines.bad imports featx.data.images"]


def test_module_level_imports_have_no_cycles():
    graph: dict[str, set[str]] = {}
    names = {module_name(path) for path in sources()}
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in tree.body:  # module level only: lazy imports inside functions cannot deadlock an import
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featx"):
                edges.add(node.module)
                edges.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in names)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("featx"))
        graph[module_name(path)] = {e for e in edges if e in names and e != module_name(path)}

    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_only_the_store_opens_hdf5_files():
    owner = PACKAGE / "extract" / "store.py"
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in sources()
        if path != owner
        and ("h5py.File" in path.read_text(encoding="utf-8") or "import h5py" in path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_only_the_records_module_writes_or_reads_run_records_and_bundles():
    owner = PACKAGE / "results" / "records.py"
    offenders = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        if path != owner and re.search(r'joblib\.(dump|load)\(|(results_dir|out_dir)\s*/\s*"(runs|models)"', text):
            offenders.append(str(path.relative_to(PACKAGE.parent)))
    assert offenders == []


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The stage rule is not vacuous: a data module importing the results stage is reported."""
    fake = tmp_path / "featx"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("from featx.results import records\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    path = fake / "data" / "bad.py"
    assert stage_of(module_name(path)) == 0
    assert any(stage_of(m) == 3 for m in featx_imports(path))
