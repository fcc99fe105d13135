"""The engine never imports Qt: checked on the source (every import statement) and at run time."""

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"
QT = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6", "studio")


def test_no_module_in_core_imports_qt_or_the_studio():
    offenders = []
    for file in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{file.name}: {n}" for n in names if n.split(".")[0] in QT]
    assert CORE.is_dir() and len(list(CORE.rglob("*.py"))) > 10
    assert offenders == []


def test_importing_every_core_module_loads_no_qt():
    modules = [f"core.{p.relative_to(CORE).with_suffix('').as_posix().replace('/', '.')}"
               for p in CORE.rglob("*.py") if p.name != "__init__.py"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(k for k in sys.modules if k.split('.')[0] in {QT!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parent, check=True)
    assert out.stdout.strip() == "[]"
