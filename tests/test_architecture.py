"""The package's layering, read from every import statement of multidiff/ (function-level ones
included, since a deferred import is still a dependency): no module or package imports itself back
through others; schedules and domains never know each other; Lightning stays in train/; only
rundir.py spells a run directory's file names."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "multidiff"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.AST) -> list[str]:
    """The multidiff modules an import statement reaches (``from pkg import mod`` reaches pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = module.split(".")
            if MODULES[module].name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    return [n for n in names if n in MODULES and n != module and not module.startswith(n + ".")]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, node))
    return graph


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    assert _cycles(_graph()) == []


def test_no_package_imports_itself_back():
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        packages.setdefault(_package(module), set()).update(_package(t) for t in targets if _package(t) != _package(module))
    assert _cycles(packages) == []


@pytest.mark.parametrize("importer, forbidden", [("schedules", "domains"), ("domains", "schedules"), ("diffusion", "schedules")])
def test_layers_stay_apart(importer, forbidden):
    offenders = [m for m, targets in _graph().items() if _package(m) == importer and any(_package(t) == forbidden for t in targets)]
    assert offenders == []


def test_lightning_stays_inside_train():
    outside = [m for m, path in MODULES.items() if _package(m) != "train"
               and any(n == "lightning" or n.startswith(("lightning.", "pytorch_lightning")) for n in _imported_names(path))]  # fmt: skip
    assert outside == []


RUN_FILES = re.compile(r"""["'](last\.ckpt|eval\.json|metrics\.csv|timing\.json|recipe\.yaml|schedule_history|refreshes\.csv)["']""")


def test_only_rundir_spells_a_run_directorys_file_names():
    spelled = [m for m, path in MODULES.items() if m != "multidiff.rundir" and RUN_FILES.search(path.read_text(encoding="utf-8"))]
    assert spelled == []
