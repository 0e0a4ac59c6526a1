"""Check the project's calls into Slicer against the wrapped API of real Slicer releases.

Input: the snapshot written by ``tools/slicer_api_snapshot.py``
(``Testing/slicer_api/slicer_api.json``: Slicer 5.8 and 5.10, extracted from Slicer's
headers and Python sources). The project's Python files are read with ``ast`` (nothing is
imported or run) and these are reported, per Slicer version:

1. a method call on an object whose class can be inferred (see below) when that class
   (or its Slicer base classes) has no wrapped method of that name, or none that accepts
   that many arguments; methods inherited from VTK base classes (``vtkObject``...) are
   looked up in the installed ``vtk`` package;
2. a method call on an object of unknown class, when the method name is one of Slicer's
   wrapped methods, is not a VTK method name, and no Slicer class wraps it with that many
   arguments (this catches e.g. ``logic.AddArchetypeVolume(a, b, c, d, e)`` anywhere);
3. ``slicer.vtkX`` / ``from slicer import vtkX`` / ``AddNewNodeByClass("vtkX")`` naming a
   ``vtkMRML*`` / ``vtkSlicer*`` class that the release does not have;
4. ``slicer.util.f(...)``, ``from slicer.util import f`` (and the same for
   ``slicer.parameterNodeWrapper``, ``slicer.ScriptedLoadableModule``, ``slicer.i18n``) with
   a name the release does not define, or a call with arguments its signature refuses.

Class inference is deliberately simple (flow-insensitive, per function):
``x = slicer.vtkMRMLFoo()``, ``x = <scene>.AddNewNodeByClass("vtkMRMLFoo", ...)`` (also
``GetFirstNodeByClass``, ``ctx.add_node``), ``ctx.logic("Volumes")`` /
``slicer.modules.volumes.logic()`` / ``appLogic.GetModuleLogic("Volumes")`` (module logics),
``slicer.mrmlScene`` / ``ctx.scene`` (the scene), ``slicer.app.applicationLogic()``, and a
few variable names (:data:`NAME_HINTS`).

Usage: ``python tools/slicer_api_check.py [files or folders...]`` (default: the four module
folders); exit status 1 when something is reported.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slicer_api_snapshot import load_snapshot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "Testing" / "slicer_api" / "slicer_api.json"
MODULE_DIRS = ("SurgicalReg2D3D", "FluoroReg", "LiverLaparoReg", "USSliceReg")

#: Slicer module name -> class of its logic (``GetModuleLogic`` / ``ctx.logic`` names).
LOGIC_CLASSES = {
    "Volumes": "vtkSlicerVolumesLogic",
    "Models": "vtkSlicerModelsLogic",
    "Transforms": "vtkSlicerTransformLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Sequences": "vtkSlicerSequencesLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Colors": "vtkSlicerColorLogic",
    "Plots": "vtkSlicerPlotsLogic",
}

#: Variable / attribute names whose class is known by convention in this project.
NAME_HINTS = {
    "scene": "vtkMRMLScene",
    "mrmlScene": "vtkMRMLScene",
    "app_logic": "vtkSlicerApplicationLogic",
    "appLogic": "vtkSlicerApplicationLogic",
    "browser": "vtkMRMLSequenceBrowserNode",
    "sequenceBrowser": "vtkMRMLSequenceBrowserNode",
    "sliceLogic": "vtkMRMLSliceLogic",
}

#: Python modules of Slicer checked by name (keys of the snapshot's "python" part).
PY_MODULES = ("slicer.util", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule",
              "slicer.i18n")

_NODE_FACTORIES = ("AddNewNodeByClass", "GetFirstNodeByClass", "CreateNodeByClass",
                   "AddNewNodeByClassWithID", "add_node")


@dataclass(frozen=True)
class Problem:
    version: str
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: Slicer {self.version}: {self.message}"


# --------------------------------------------------------------------------- VTK names
@functools.lru_cache(maxsize=None)
def vtk_method_names() -> frozenset:
    """Every method name of every class of the installed ``vtk`` package."""
    import vtk  # noqa: PLC0415

    names: Set[str] = set()
    for attr in dir(vtk):
        cls = getattr(vtk, attr, None)
        if isinstance(cls, type) and attr.startswith("vtk"):
            names.update(n for n in dir(cls) if n[:1].isupper())
    return frozenset(names)


def vtk_class_has(class_name: str, method: str) -> Optional[bool]:
    """Whether VTK class ``class_name`` (installed vtk) has ``method``; None if unknown class."""
    import vtk  # noqa: PLC0415

    cls = getattr(vtk, class_name, None)
    if not isinstance(cls, type):
        return None
    return hasattr(cls, method)


# --------------------------------------------------------------------------- API model
class SlicerApi:
    """One Slicer version of the snapshot, with inheritance resolved."""

    def __init__(self, version: str, snap: dict):
        self.version = version
        self.classes: Dict[str, dict] = snap["classes"]
        self.python: Dict[str, dict] = snap["python"]
        self.union: Dict[str, Set[Tuple[int, int]]] = {}
        for info in self.classes.values():
            for name, arities in info["methods"].items():
                self.union.setdefault(name, set()).update(tuple(a) for a in arities)

    def lookup(self, class_name: str, method: str):
        """(arities or None, first non-Slicer base class name or None)."""
        seen = set()
        name = class_name
        while name in self.classes and name not in seen:
            seen.add(name)
            info = self.classes[name]
            if method in info["methods"]:
                return [tuple(a) for a in info["methods"][method]], None
            name = info["base"]
        return None, name or None


def _fits(arities: Iterable[Tuple[int, int]], n: int) -> bool:
    return any(r <= n <= t for r, t in arities)


def _describe(arities: Iterable[Tuple[int, int]]) -> str:
    return ", ".join(str(r) if r == t else f"{r}-{t}" for r, t in sorted(set(arities)))


# --------------------------------------------------------------------------- inference
def _const_str(node) -> Optional[str]:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _dotted(node) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Scope:
    """Inferred classes of the names of one function (or module body)."""

    def __init__(self, slicer_names: Dict[str, str]):
        self.env: Dict[str, str] = {}
        self.slicer_names = slicer_names  # names imported from slicer: local -> class

    def infer(self, node) -> Optional[str]:
        if isinstance(node, ast.Name):
            return self.env.get(node.id) or NAME_HINTS.get(node.id)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted == "slicer.mrmlScene":
                return "vtkMRMLScene"
            if node.attr in NAME_HINTS and not (isinstance(node.value, ast.Name)
                                                and node.value.id == "slicer"):
                return NAME_HINTS[node.attr]
            return None
        if isinstance(node, ast.Call):
            func = node.func
            dotted = _dotted(func)
            if isinstance(func, ast.Name) and func.id in self.slicer_names:
                return self.slicer_names[func.id]  # vtkMRMLFoo() imported from slicer
            if dotted and dotted.startswith("slicer.vtk") and dotted.count(".") == 1:
                return dotted.split(".")[1]
            if dotted == "slicer.app.applicationLogic":
                return "vtkSlicerApplicationLogic"
            if dotted and re.match(r"slicer\.modules\.\w+\.logic$", dotted):
                module = dotted.split(".")[2]
                for name, cls in LOGIC_CLASSES.items():
                    if name.lower() == module.lower():
                        return cls
                return None
            if isinstance(func, ast.Attribute):
                first = _const_str(node.args[0]) if node.args else None
                if func.attr in ("logic", "GetModuleLogic") and first in LOGIC_CLASSES:
                    return LOGIC_CLASSES[first]
                if func.attr in _NODE_FACTORIES and first and first.startswith("vtk"):
                    return first
                if func.attr == "SafeDownCast" and _dotted(func.value):
                    owner = _dotted(func.value).split(".")[-1]
                    if owner.startswith("vtk"):
                        return owner
        return None

    def learn(self, stmt) -> None:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name):
                cls = self.infer(stmt.value)
                if cls:
                    self.env[target.id] = cls


# --------------------------------------------------------------------------- checker
def _slicer_imports(tree) -> Tuple[Dict[str, str], List[Tuple[str, str, int]]]:
    """Names imported from ``slicer`` (vtk classes) and ``(module, name, line)`` imports
    from the Slicer Python modules."""
    classes: Dict[str, str] = {}
    py_imports: List[Tuple[str, str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if node.module == "slicer" and alias.name.startswith("vtk"):
                    classes[alias.asname or alias.name] = alias.name
                elif node.module in PY_MODULES:
                    py_imports.append((node.module, alias.name, node.lineno))
    return classes, py_imports


def _function_nodes(tree) -> List[ast.AST]:
    out = [tree]
    out += [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                         ast.Lambda))]
    return out


def _own_nodes(scope_node) -> Iterable[ast.AST]:
    """Nodes of a function body, not descending into nested functions."""
    stack = list(ast.iter_child_nodes(scope_node))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _check_python_call(api: SlicerApi, module: str, name: str, call: Optional[ast.Call],
                       where: Tuple[str, int]) -> List[Problem]:
    names = api.python.get(module, {})
    if name not in names:
        return [Problem(api.version, where[0], where[1], f"{module}.{name} does not exist")]
    info = names[name]
    if call is None or info.get("kind") != "function":
        return []
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return []
    n_pos = len(call.args)
    if n_pos > len(info["positional"]) and not info["varargs"]:
        return [Problem(api.version, where[0], where[1],
                        f"{module}.{name}() takes at most {len(info['positional'])} positional "
                        f"arguments, {n_pos} given")]
    given = set(info["positional"][:n_pos]) | {k.arg for k in call.keywords}
    bad = [k.arg for k in call.keywords if k.arg not in info["keywords"]]
    if bad and not info["varkw"]:
        return [Problem(api.version, where[0], where[1],
                        f"{module}.{name}() has no parameter(s) {bad}")]
    missing = [p for p in info["positional"][:info["required"]] if p not in given]
    missing += [p for p in info.get("required_keywords", []) if p not in given]
    if missing:
        return [Problem(api.version, where[0], where[1],
                        f"{module}.{name}() misses required argument(s) {missing}")]
    return []


def check_source(source: str, path: str, apis: List[SlicerApi],
                 stats: Optional[Dict[str, int]] = None) -> List[Problem]:
    """All problems of one file's source text for every version in ``apis``.

    ``stats`` (optional dict) counts the calls checked: ``"typed"`` (class inferred),
    ``"by_name"`` (unknown class, Slicer method name), ``"python"`` (Slicer Python API)."""
    tree = ast.parse(source)
    slicer_classes, py_imports = _slicer_imports(tree)
    problems: List[Problem] = []
    for api in apis:
        for module, name, line in py_imports:
            problems += _check_python_call(api, module, name, None, (path, line))
        for local, cls in slicer_classes.items():
            if re.match(r"vtk(MRML|Slicer)", cls) and cls not in api.classes:
                problems.append(Problem(api.version, path, 1, f"slicer.{cls} does not exist"))
        imported_py = {name: module for module, name, _ in py_imports}
        for scope_node in _function_nodes(tree):
            scope = _Scope(slicer_classes)
            nodes = list(_own_nodes(scope_node))
            for _ in range(2):  # two passes: assignments after first use in loops
                for node in nodes:
                    scope.learn(node)
            for node in nodes:
                problems += _check_node(api, scope, node, path, imported_py,
                                        stats if api is apis[0] else None)
    return sorted(set(problems), key=lambda p: (p.path, p.line, p.version, p.message))


def _check_node(api: SlicerApi, scope: _Scope, node, path: str,
                imported_py: Dict[str, str], stats: Optional[Dict[str, int]]) -> List[Problem]:
    out: List[Problem] = []
    stats = {} if stats is None else stats
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Attribute):
        dotted = _dotted(node)
        if dotted and dotted.startswith("slicer.vtk") and dotted.count(".") == 1:
            cls = node.attr
            if re.match(r"vtk(MRML|Slicer)", cls) and cls not in api.classes:
                out.append(Problem(api.version, path, line, f"slicer.{cls} does not exist"))
        return out
    if not isinstance(node, ast.Call):
        return out
    func = node.func
    # Slicer Python modules: slicer.util.f(...), or f(...) imported from them.
    dotted = _dotted(func)
    if dotted:
        for module in PY_MODULES:
            if dotted.startswith(module + ".") and dotted.count(".") == module.count(".") + 1:
                stats["python"] = stats.get("python", 0) + 1
                return _check_python_call(api, module, dotted.split(".")[-1], node, (path, line))
        if isinstance(func, ast.Name) and func.id in imported_py:
            stats["python"] = stats.get("python", 0) + 1
            return _check_python_call(api, imported_py[func.id], func.id, node, (path, line))
    if not isinstance(func, ast.Attribute) or not func.attr[:1].isupper():
        return out
    method = func.attr
    first = _const_str(node.args[0]) if node.args else None
    if method in _NODE_FACTORIES and first and re.match(r"vtk(MRML|Slicer)", first) \
            and first not in api.classes:
        out.append(Problem(api.version, path, line, f"node class {first} does not exist"))
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        return out
    n_args = len(node.args) + len(node.keywords)
    cls = scope.infer(func.value)
    if cls and re.match(r"vtk(MRML|Slicer)", cls):
        stats["typed"] = stats.get("typed", 0) + 1
        if cls not in api.classes:
            return out + [Problem(api.version, path, line, f"class {cls} does not exist")]
        arities, vtk_base = api.lookup(cls, method)
        if arities is None:
            has = vtk_class_has(vtk_base, method) if vtk_base else None
            if has is None and method in vtk_method_names():
                has = True  # base class not in the installed vtk: accept a known VTK name
            if not has:
                out.append(Problem(api.version, path, line,
                                   f"{cls}.{method}() is not wrapped (not in {cls} or its bases)"))
        elif not _fits(arities, n_args):
            out.append(Problem(api.version, path, line,
                               f"{cls}.{method}() takes {_describe(arities)} arguments, "
                               f"{n_args} given"))
        return out
    if cls is None and method in api.union and method not in vtk_method_names():
        stats["by_name"] = stats.get("by_name", 0) + 1
        if not _fits(api.union[method], n_args):
            out.append(Problem(api.version, path, line,
                               f"{method}() takes {_describe(api.union[method])} arguments in "
                               f"every Slicer class that wraps it, {n_args} given"))
    return out


def load_apis(path=SNAPSHOT) -> List[SlicerApi]:
    return [SlicerApi(v, snap) for v, snap in load_snapshot(path).items()]


def project_files(paths: Optional[Iterable[str]] = None) -> List[Path]:
    roots = [Path(p) for p in paths] if paths else [ROOT / d for d in MODULE_DIRS]
    files: List[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        else:
            files += sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def check_files(paths: Optional[Iterable[str]] = None, apis=None,
                stats: Optional[Dict[str, int]] = None) -> List[Problem]:
    apis = apis or load_apis()
    problems: List[Problem] = []
    for path in project_files(paths):
        try:
            rel = str(path.resolve().relative_to(ROOT))
        except ValueError:
            rel = str(path)
        problems += check_source(path.read_text(), rel, apis, stats)
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    stats: Dict[str, int] = {}
    problems = check_files(argv if argv else None, stats=stats)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s); calls checked: {stats}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
