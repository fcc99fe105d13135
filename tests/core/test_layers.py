"""The shape of the engine, checked: the import contract in pyproject.toml (import-linter), no import
circles, no imports tucked inside functions, and files a reader can take in."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
LINT = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports())"
MAX_LINES = 450


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_import_contract_is_kept():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_a_wrong_way_import_breaks_the_contract_with_a_readable_message(tmp_path):
    """The contract is not vacuous: a pruning module importing the workbench is reported, naming both."""
    shutil.copytree(CORE, tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    masks = tmp_path / "core" / "pruning" / "masks.py"
    masks.write_text(masks.read_text() + "\nfrom ..workbench import Workbench  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode == 1
    assert "BROKEN" in done.stdout and "core.pruning.masks -> core.workbench" in done.stdout


def _modules() -> dict[str, Path]:
    found = {}
    for path in CORE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Modules of `core` an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "core"]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "core":
        return []
    return [target] + [f"{target}.{a.name}" for a in node.names]


def test_no_import_circle_inside_core():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= {m for m in _imported(name, path, node) if m in modules and m != name}
    # A package imports its parents' __init__ implicitly; those edges are no circle of ours.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert sum(len(v) for v in graph.values()) > 150        # the walk saw the real import graph
    assert circles == [], " | ".join(" -> ".join(c) for c in circles)


def test_no_import_of_core_is_hidden_inside_a_function():
    hidden = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        top = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in top and _imported(name, path, node):
                hidden.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert hidden == []


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_engine_file_is_short_enough_to_read(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
