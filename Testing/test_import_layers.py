"""No module of a Lib package imports one that imports it back (directly or through
others), lazy imports inside functions included: each package reads along its data flow
(a registry of methods that nothing imports back, entry points on top, results and
checks below). Imports under ``if TYPE_CHECKING:`` (annotations only) do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("SurgicalReg2D3D/SurgicalReg2D3DLib", "FluoroReg/FluoroRegLib",
            "LiverLaparoReg/LiverLaparoRegLib", "USSliceReg/USSliceRegLib")


def _modules(pkg: Path) -> Dict[str, Path]:
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for sub in node.body:
                for inner in ast.walk(sub):
                    skip.add(id(inner))
    return skip


def import_graph(pkg: Path) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (anywhere in the file)."""
    mods = _modules(pkg)
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: List[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                # a package's own __init__ and its parents are not edges
                if t in mods and t != name and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_and_ignores_type_checking(tmp_path):
    pkg = tmp_path / "DemoLib"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("def h():\n    from .a import f\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from .e import x\n")
    (pkg / "e.py").write_text("from .d import y\n")
    (pkg / "sub" / "m.py").write_text("from ..e import z\nfrom .. import a\n")
    g = import_graph(pkg)
    assert g["DemoLib.sub.m"] == {"DemoLib.e", "DemoLib.a"}
    assert cycles(g) == [["DemoLib.a", "DemoLib.b", "DemoLib.c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    found = cycles(import_graph(ROOT / package))
    assert not found, f"{package}: modules that import each other: {found}"
