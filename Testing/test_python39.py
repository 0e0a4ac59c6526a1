"""The code must run on Python 3.9 (Slicer 5.8): a static minimum-version check with
``vermin`` over every module file and Lib package (and the tools).

- Lib packages and tools: ``vermin --target=3.9- --no-eval-annotations --feature
  union-types``; annotations are postponed there (``from __future__ import annotations``),
  so ``X | Y`` inside an annotation is fine and such hits are dropped; ``X | Y`` anywhere
  else (``isinstance(x, int | float)``) is reported.
- ``<Module>.py`` files: annotations are evaluated (``@parameterNodeWrapper`` reads them at
  import), so they are checked with ``--eval-annotations`` and every ``X | Y`` counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("SurgicalReg2D3D", "FluoroReg", "LiverLaparoReg", "USSliceReg")
TARGET = "3.9-"

pytest.importorskip("vermin", reason="vermin is in the test extra (pip install -e .[test])")


def _annotation_lines(path: Path) -> Set[int]:
    """Lines covered by annotations in a file with postponed annotations (else empty)."""
    tree = ast.parse(path.read_text())
    postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                    and any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not postponed:
        return set()
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            nodes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.returns is not None:
                nodes.append(node.returns)
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None:
                    nodes.append(arg.annotation)
    lines: Set[int] = set()
    for n in nodes:
        lines.update(range(n.lineno, (n.end_lineno or n.lineno) + 1))
    return lines


def vermin_violations(paths: List[Path], eval_annotations: bool) -> List[str]:
    """``file:line: feature requires X`` for everything that needs more than Python 3.9."""
    cmd = [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
           f"--target={TARGET}", "--violations", "--no-tips",
           "--format", "parsable", "--feature", "union-types",
           "--eval-annotations" if eval_annotations else "--no-eval-annotations",
           *[str(p) for p in paths]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    annotations: Dict[str, Set[int]] = {}
    problems = []
    hits = 0
    for line in out.stdout.splitlines():
        # file:line:col:py2:py3:feature (the per-file and total summaries have no line)
        parts = line.rsplit(":", 5)
        if len(parts) != 6 or not parts[1].isdigit() or not parts[5]:
            continue
        path, lineno, _col, _py2, py3, feature = parts
        hits += 1
        if "union types" in feature and not eval_annotations:
            if path not in annotations:
                annotations[path] = _annotation_lines(Path(path))
            if int(lineno) in annotations[path]:
                continue  # postponed annotation: never evaluated
        try:
            shown = Path(path).resolve().relative_to(ROOT)
        except ValueError:
            shown = Path(path).name
        problems.append(f"{shown}:{lineno}: {feature} requires Python {py3}")
    if out.returncode not in (0, 1) or (out.returncode == 1 and not hits):
        problems.append(f"vermin failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    return problems


def _lib_paths() -> List[Path]:
    # Testing/slicer runs inside Slicer (5.8: Python 3.9) too.
    return [ROOT / m / f"{m}Lib" for m in MODULES] + [ROOT / "tools", ROOT / "Testing" / "slicer"]


def test_lib_packages_and_tools_run_on_python_39():
    assert vermin_violations(_lib_paths(), eval_annotations=False) == []


def test_module_files_run_on_python_39():
    files = [ROOT / m / f"{m}.py" for m in MODULES]
    assert vermin_violations(files, eval_annotations=True) == []


def test_pyproject_says_python_39():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.9"' in text
    assert '"vermin' in text  # the test extra


SNIPPET = '''from __future__ import annotations
from dataclasses import dataclass


def f(a: int | None, b) -> list[int] | None:
    for x, y in zip(a, b, strict=True):
        pass
    match a:
        case 1:
            pass
    return isinstance(a, int | float)


@dataclass(slots=True)
class A:
    x: int | None = None
'''


def test_the_check_catches_code_that_needs_python_310(tmp_path):
    path = tmp_path / "new_code.py"
    path.write_text(SNIPPET)
    problems = vermin_violations([path], eval_annotations=False)
    lines = sorted(int(p.split(":")[1]) for p in problems)
    # zip(strict), match, the runtime union in isinstance, dataclass(slots); the
    # postponed annotations on lines 5 and 16 are fine.
    assert lines == [6, 8, 11, 14], problems
    evaluated = vermin_violations([path], eval_annotations=True)
    assert {5, 16} <= {int(p.split(":")[1]) for p in evaluated}, evaluated
