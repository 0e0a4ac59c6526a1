"""Extract the Python-wrapped API of the Slicer classes this project calls, from Slicer's
own source code, into a compact JSON snapshot (``Testing/slicer_api/slicer_api.json``).

Why: the ``slicer-core`` wheel used by the tests is built from a fork whose wrapped
overloads differ from the Slicer application's (e.g. a 5-argument ``AddArchetypeVolume``
that Slicer 5.8 / 5.10 do not have). ``Testing/test_slicer_api.py`` checks the project's
calls against this snapshot.

What is extracted, per Slicer release (git tag):

- C++ classes (MRML core and logic, ``vtkSlicerApplicationLogic`` and the module logics and
  MRML nodes of Volumes, Models, Transforms, Markups, Sequences, Segmentations,
  SubjectHierarchy, Colors, Plots, plus vtkSegmentationCore): for each class its base class
  and, for each public method the VTK Python wrapper wraps, the accepted argument counts
  as ``[required, total]`` pairs (one per overload; default arguments make the range).
  The rules of VTK's wrapper (vtkParse / vtkWrapPython) applied here:

  * only ``public:`` members; constructors, destructors, operators, ``friend``, templates
    and ``= delete`` members are not wrapped;
  * ``#ifndef __VTK_WRAP__`` / ``#if !defined(__VTK_WRAP__)`` blocks are invisible to the
    wrapper (``#ifdef __VTK_WRAP__`` blocks are seen); other conditions keep their first
    branch;
  * members marked ``VTK_WRAPEXCLUDE`` are excluded (``VTK_PROPEXCLUDE`` only hides a
    property, the methods stay wrapped);
  * a method is wrapped only when its return type and every parameter type are wrappable:
    basic types, ``std::string``, pointers / arrays of basic types, ``vtk*`` object
    pointers, ``vtkSmartPointer<>``, enums, ``std::vector`` of basic types or strings;
    not wrapped: pointer-to-pointer, function pointers, ``std::map`` / ``std::set`` /
    ``std::deque`` / ``std::list``, ``std::vector`` of other types, ``Q*`` types and other
    unknown non-VTK typedefs;
  * Doxygen group markers ``//@{ ... //@}`` are comments: the wrapper ignores them, the
    methods inside are wrapped (e.g. ``vtkMRMLClipNode.SetClipType``);
  * the VTK property macros (``vtkGetMacro``, ``vtkSetMacro``, ``vtkBooleanMacro``,
    ``vtkGet/SetStringMacro``, ``vtkGet/SetObjectMacro``, ``vtkSetClampMacro``,
    ``vtkGet/SetVectorNMacro``, ``vtkTypeMacro``, ...) and Slicer's
    ``vtkMRMLCopyContentMacro`` / ``vtkMRMLNodeNewMacro`` are expanded into the methods
    they declare.

- Python names: the public top-level functions (with their positional parameter counts,
  keyword names and whether they take ``*args`` / ``**kwargs``) and classes of
  ``slicer.util``, ``slicer.ScriptedLoadableModule``, ``slicer.i18n`` and the
  ``slicer.parameterNodeWrapper`` package (names its ``__init__`` exports).

Usage (Slicer's public repository, a bare clone or a checkout)::

    python tools/slicer_api_snapshot.py --git-dir /path/to/Slicer.git \\
        --rev 5.8=v5.8.1 --rev 5.10=v5.10.0 --out Testing/slicer_api/slicer_api.json
    python tools/slicer_api_snapshot.py --checkout /path/to/Slicer --rev 5.10=WORKTREE ...

The script only reads files (``git show``); it needs Python 3.9+ and git.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slicer_wrapping import parse_header_text  # noqa: E402  (re-exported for the tests)

#: Folders of header files scanned (relative to Slicer's source root).
HEADER_DIRS = (
    "Libs/MRML/Core",
    "Libs/MRML/Logic",
    "Libs/vtkSegmentationCore",
    "Base/Logic",
) + tuple(f"Modules/Loadable/{m}/{part}"
          for m in ("Volumes", "Models", "Transforms", "Markups", "Sequences",
                    "Segmentations", "SubjectHierarchy", "Colors", "Plots")
          for part in ("Logic", "MRML"))

#: Python modules of Slicer whose public names are recorded.
PYTHON_MODULES = {
    "slicer.util": "Base/Python/slicer/util.py",
    "slicer.ScriptedLoadableModule": "Base/Python/slicer/ScriptedLoadableModule.py",
    "slicer.i18n": "Base/Python/slicer/i18n.py",
}
PYTHON_PACKAGES = {
    "slicer.parameterNodeWrapper": "Base/Python/slicer/parameterNodeWrapper",
}


# --------------------------------------------------------------------------- sources
class Source:
    """Reads files of one Slicer revision from a git directory or a checkout."""

    def __init__(self, git_dir: Optional[str], checkout: Optional[str], rev: str):
        self.git_dir, self.checkout, self.rev = git_dir, checkout, rev

    def _git(self, *args: str) -> str:
        cmd = ["git"]
        if self.git_dir:
            cmd += ["--git-dir", self.git_dir]
        else:
            cmd += ["-C", self.checkout]
        return subprocess.run(cmd + list(args), check=True, capture_output=True,
                              text=True, errors="replace").stdout

    def commit(self) -> str:
        if self.rev == "WORKTREE":
            return self._git("rev-parse", "HEAD").strip() + "+worktree"
        return self._git("rev-parse", self.rev + "^{commit}").strip()

    def list_files(self, folder: str) -> List[str]:
        if self.rev == "WORKTREE":
            root = Path(self.checkout)
            return sorted(str(p.relative_to(root)) for p in (root / folder).glob("*") if p.is_file())
        out = self._git("ls-tree", "--name-only", f"{self.rev}:{folder}")
        return [f"{folder}/{name}" for name in out.split()]

    def read(self, path: str) -> str:
        if self.rev == "WORKTREE":
            return (Path(self.checkout) / path).read_text(errors="replace")
        return self._git("show", f"{self.rev}:{path}")


# --------------------------------------------------------------------------- headers
def scan_headers(src: Source) -> Tuple[Dict[str, dict], List[str]]:
    """Classes found in :data:`HEADER_DIRS` -> {"base", "file", "methods": {name: [[r, t]...]}}."""
    classes: Dict[str, dict] = {}
    unhandled_all = set()
    for folder in HEADER_DIRS:
        try:
            files = src.list_files(folder)
        except subprocess.CalledProcessError:
            continue
        for path in files:
            if not (path.endswith(".h") and Path(path).name.startswith("vtk")):
                continue
            found, unhandled = parse_header_text(src.read(path))
            unhandled_all.update(unhandled)
            for name, info in found.items():
                classes[name] = {"base": info["base"], "file": path, "methods": info["methods"]}
    return classes, sorted(unhandled_all)


# --------------------------------------------------------------------------- Python
def _function_signature(node: ast.FunctionDef) -> dict:
    a = node.args
    positional = [x.arg for x in list(getattr(a, "posonlyargs", [])) + list(a.args)]
    required = len(positional) - len(a.defaults)
    return {
        "positional": positional,
        "required": required,
        "keywords": positional + [x.arg for x in a.kwonlyargs],
        "required_keywords": [x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is None],
        "varargs": a.vararg is not None,
        "varkw": a.kwarg is not None,
    }


def python_module_names(text: str) -> Dict[str, object]:
    """Public top-level names of a module: functions -> signature, classes/others -> kind."""
    tree = ast.parse(text)
    names: Dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = {"kind": "function", **_function_signature(node)}
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {"kind": "class"}
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = {"kind": "value"}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name != "*":
                    names[(alias.asname or alias.name).split(".")[0]] = {"kind": "import"}
        elif isinstance(node, ast.Try):
            for sub in node.body + [h for h in node.handlers for h in h.body]:
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.setdefault(sub.name, {"kind": "function" if isinstance(sub, ast.FunctionDef) else "class"})
    return {k: v for k, v in sorted(names.items()) if not k.startswith("_")}


def python_package_names(src: Source, folder: str) -> Dict[str, object]:
    """Names exported by a package's ``__init__`` (``from .x import *`` honours ``__all__``)."""
    init = ast.parse(src.read(f"{folder}/__init__.py"))
    exported: Dict[str, object] = {}
    for node in init.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            sub_text = src.read(f"{folder}/{node.module.replace('.', '/')}.py")
            sub_names = python_module_names(sub_text)
            sub_tree = ast.parse(sub_text)
            all_names = None
            for sub in sub_tree.body:
                if (isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                        for t in sub.targets)):
                    try:
                        all_names = list(ast.literal_eval(sub.value))
                    except ValueError:
                        all_names = None
            for alias in node.names:
                if alias.name == "*":
                    for k in (all_names if all_names is not None else sub_names):
                        exported[k] = sub_names.get(k, {"kind": "value"})
                else:
                    exported[alias.asname or alias.name] = sub_names.get(alias.name, {"kind": "value"})
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            exported[node.name] = {"kind": "function" if isinstance(node, ast.FunctionDef) else "class"}
    return dict(sorted(exported.items()))


# --------------------------------------------------------------------------- main
def snapshot(src: Source) -> dict:
    classes, unhandled = scan_headers(src)
    python = {mod: python_module_names(src.read(path)) for mod, path in PYTHON_MODULES.items()}
    for mod, folder in PYTHON_PACKAGES.items():
        python[mod] = python_package_names(src, folder)
    return {"commit": src.commit(), "rev": src.rev, "classes": classes, "python": python,
            "unhandled_macros": unhandled}


def _pack_arities(arities: List[List[int]]) -> str:
    """[[2, 2], [3, 4]] -> "2,3-4" (required-total argument counts of each overload)."""
    return ",".join(str(r) if r == t else f"{r}-{t}" for r, t in arities)


def _unpack_arities(text: str) -> List[Tuple[int, int]]:
    out = []
    for item in text.split(","):
        r, _, t = item.partition("-")
        out.append((int(r), int(t or r)))
    return out


def load_snapshot(path) -> Dict[str, dict]:
    """Read a snapshot written by this script: {version: {"commit", "rev", "classes":
    {name: {"base", "file", "methods": {name: [(required, total), ...]}}}, "python": {...}}}."""
    data = json.loads(Path(path).read_text())
    versions = data["versions"]
    out: Dict[str, dict] = {}
    for version, snap in versions.items():
        classes = {}
        for name, info in snap["classes"].items():
            if isinstance(info, str):  # "=5.8": same as in that version
                classes[name] = out[info[1:]]["classes"][name]
                continue
            classes[name] = {"base": info["base"], "file": info["file"],
                             "methods": {m: _unpack_arities(a) for m, a in info["methods"].items()}}
        out[version] = dict(snap, classes=classes)
    return out


def dump_compact(data: dict) -> str:
    """JSON with one line per class / Python module (small diffs, readable); arities
    packed as strings, classes unchanged since the first version written as ``"=<v>"``."""
    lines = ["{"]
    lines.append(f' "format": {json.dumps(data["format"])},')
    lines.append(f' "generator": {json.dumps(data["generator"])},')
    lines.append(' "versions": {')
    versions = list(data["versions"].items())
    for vi, (version, snap) in enumerate(versions):
        lines.append(f'  {json.dumps(version)}: {{')
        lines.append(f'   "commit": {json.dumps(snap["commit"])}, "rev": {json.dumps(snap["rev"])},')
        lines.append(f'   "unhandled_macros": {json.dumps(snap["unhandled_macros"])},')
        lines.append('   "python": {')
        mods = list(snap["python"].items())
        for mi, (mod, names) in enumerate(mods):
            sep = "," if mi < len(mods) - 1 else ""
            lines.append(f'    {json.dumps(mod)}: {json.dumps(names, separators=(",", ":"))}{sep}')
        lines.append('   },')
        lines.append('   "classes": {')
        items = list(snap["classes"].items())
        first_version, first = versions[0]
        for ci, (name, info) in enumerate(items):
            sep = "," if ci < len(items) - 1 else ""
            if vi > 0 and first["classes"].get(name) == info:
                value = json.dumps("=" + first_version)  # unchanged since the first version
            else:
                packed = {"base": info["base"], "file": info["file"],
                          "methods": {m: _pack_arities(a) for m, a in info["methods"].items()}}
                value = json.dumps(packed, separators=(",", ":"))
            lines.append(f'    {json.dumps(name)}: {value}{sep}')
        lines.append('   }')
        lines.append('  }' + ("," if vi < len(versions) - 1 else ""))
    lines.append(' }')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--git-dir", help="Slicer's git directory (bare clone is fine)")
    where.add_argument("--checkout", help="a checkout of Slicer's source")
    parser.add_argument("--rev", action="append", required=True,
                        help="VERSION=GIT_REV, e.g. 5.8=v5.8.1 (WORKTREE: the checkout's files)")
    parser.add_argument("--out", required=True, help="output JSON file")
    args = parser.parse_args(argv)
    versions = {}
    for item in args.rev:
        version, _, rev = item.partition("=")
        if not rev:
            parser.error(f"--rev: expected VERSION=GIT_REV, got {item!r}")
        snap = snapshot(Source(args.git_dir, args.checkout, rev))
        versions[version] = snap
        n_methods = sum(len(c["methods"]) for c in snap["classes"].values())
        print(f"{version} ({rev} = {snap['commit'][:12]}): {len(snap['classes'])} classes, "
              f"{n_methods} wrapped method names", file=sys.stderr)
    data = {"format": 1, "generator": "tools/slicer_api_snapshot.py", "versions": versions}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(dump_compact(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
