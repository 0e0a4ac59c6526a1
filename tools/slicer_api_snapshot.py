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
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

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


# --------------------------------------------------------------------------- C++ text
def strip_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments (string literals are kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            out.append(" ")
            i = n if j < 0 else j + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


_WRAP_DEFINED = ("__VTK_WRAP__", "__WRAP__", "__VTK_WRAP_PYTHON__")


def _condition_value(directive: str, expr: str) -> Optional[bool]:
    """True/False for conditions on the wrapper macros, None for anything else."""
    expr = expr.strip()
    if directive == "ifdef":
        return True if expr in _WRAP_DEFINED else None
    if directive == "ifndef":
        return False if expr in _WRAP_DEFINED else None
    compact = expr.replace(" ", "")
    for name in _WRAP_DEFINED:
        if compact in (f"!defined({name})", f"!defined{name}"):
            return False
        if compact in (f"defined({name})", f"defined{name}"):
            return True
    return None


def preprocess(text: str) -> str:
    """Drop what the wrapper does not see: ``#ifndef __VTK_WRAP__`` blocks; for other
    conditions keep the first branch. Joins continued lines; removes directives."""
    text = text.replace("\\\n", " ")
    lines = text.split("\n")
    out: List[str] = []
    # Stack entries: [active, branch_taken, decided_by_wrap]
    stack: List[List[bool]] = []

    def active() -> bool:
        return all(e[0] for e in stack)

    for line in lines:
        m = re.match(r"\s*#\s*(\w+)\s*(.*)", line)
        if not m:
            if active():
                out.append(line)
            continue
        directive, rest = m.group(1), m.group(2)
        if directive in ("if", "ifdef", "ifndef"):
            value = _condition_value(directive, rest)
            stack.append([True if value is None else value, True if value is None else value,
                          value is not None])
        elif directive == "elif":
            if stack:
                entry = stack[-1]
                if entry[1]:
                    entry[0] = False
                else:
                    value = _condition_value("if", rest)
                    entry[0] = True if value is None else value
                    entry[1] = entry[0]
        elif directive == "else":
            if stack:
                entry = stack[-1]
                entry[0] = not entry[1]
                entry[1] = True
        elif directive == "endif":
            if stack:
                stack.pop()
        # #define, #include, #pragma...: dropped
    return "\n".join(out)


def _match_close(text: str, start: int, open_c: str, close_c: str) -> int:
    """Index just after the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_c:
            depth += 1
        elif text[i] == close_c:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


_CLASS_RE = re.compile(
    r"\bclass\s+(?:\w+_EXPORT\s+|VTK_\w+\s+)*(vtk\w+)\s*(?:final\s*)?"
    r"(?::\s*(?:public|protected|private)\s+([\w:]+)(?:<[^{;]*>)?\s*)?\{")


def find_classes(text: str) -> Iterable[Tuple[str, str, str, bool]]:
    """(name, base, body, excluded) of each top-level ``vtk*`` class definition."""
    pos = 0
    while True:
        m = _CLASS_RE.search(text, pos)
        if not m:
            return
        brace = m.end() - 1
        end = _match_close(text, brace, "{", "}")
        head = text[max(0, m.start() - 80):m.start()]
        excluded = "VTK_WRAPEXCLUDE" in m.group(0) or bool(re.search(r"VTK_WRAPEXCLUDE\s*$", head))
        yield m.group(1), (m.group(2) or "").split("::")[-1], text[brace + 1:end - 1], excluded
        pos = end


def public_statements(body: str) -> Tuple[List[str], List[str]]:
    """Split a class body into its public declarations; returns (statements, enum names).

    Nested ``class`` / ``struct`` / ``union`` bodies are skipped, enum names recorded,
    inline function bodies dropped."""
    statements: List[str] = []
    enums: List[str] = []
    access = "private"
    i, n, start = 0, len(body), 0
    paren = 0
    while i < n:
        c = body[i]
        if c in "([":
            paren += 1
        elif c in ")]":
            paren -= 1
        elif c == ":" and paren == 0:
            label = body[start:i].strip()
            if label in ("public", "protected", "private") and body[i + 1:i + 2] != ":":
                access = label
                start = i + 1
        elif c == "{" and paren == 0:
            stmt = body[start:i]
            end = _match_close(body, i, "{", "}")
            head = stmt.strip()
            em = re.match(r"(?:typedef\s+)?enum\s+(?:class\s+|struct\s+)?(\w+)?", head)
            if em:
                if em.group(1):
                    enums.append(em.group(1))
                j = body.find(";", end)
                tail = body[end:j if j >= 0 else end].strip()
                if tail and re.match(r"\w+$", tail):
                    enums.append(tail)  # typedef enum {...} Name;
                i = (j + 1) if j >= 0 else end
                start = i
                continue
            if re.match(r"(?:typedef\s+)?(?:class|struct|union)\b", head):
                j = body.find(";", end)
                i = (j + 1) if j >= 0 else end
                start = i
                continue
            if "(" in stmt and access == "public":  # inline function definition
                statements.append(stmt)
            i = end
            if i < n and body[i:i + 1] == ";":
                i += 1
            start = i
            continue
        elif c == ";" and paren == 0:
            if access == "public":
                statements.append(body[start:i])
            start = i + 1
        i += 1
    return statements, enums


# --------------------------------------------------------------------------- macros
_VECTOR_MACRO = re.compile(r"vtk(Get|Set)Vector(\d)Macro$")


def expand_macro(name: str, args: List[str]) -> List[Tuple[str, int, int]]:
    """Methods ``(name, required, total)`` declared by a VTK / MRML property macro."""
    a0 = args[0].strip() if args else ""
    if name in ("vtkGetMacro", "vtkGetStringMacro", "vtkGetObjectMacro", "vtkGetEnumMacro",
                "vtkGetFilePathMacro", "vtkGetSmartPointerMacro", "vtkGetNewMacro",
                "vtkGetStdStringFromCharMacro", "vtkGetCharFromStdStringMacro"):
        return [("Get" + a0, 0, 0)]
    if name in ("vtkSetMacro", "vtkSetStringMacro", "vtkSetObjectMacro", "vtkSetEnumMacro",
                "vtkSetFilePathMacro", "vtkSetSmartPointerMacro", "vtkSetStdStringFromCharMacro",
                "vtkSetReferenceStringMacro", "vtkSetMRMLObjectMacro"):
        return [("Set" + a0, 1, 1)]
    if name == "vtkSetClampMacro":
        return [("Set" + a0, 1, 1), ("Get" + a0 + "MinValue", 0, 0),
                ("Get" + a0 + "MaxValue", 0, 0)]
    if name == "vtkBooleanMacro":
        return [(a0 + "On", 0, 0), (a0 + "Off", 0, 0)]
    m = _VECTOR_MACRO.match(name)
    if m:
        count = int(m.group(2))
        if m.group(1) == "Get":
            # The wrapper keeps only ``type* GetX()`` (returned as a tuple): the overloads
            # that fill references / an array are hidden (checked against slicer-core).
            return [("Get" + a0, 0, 0)]
        return [("Set" + a0, count, count), ("Set" + a0, 1, 1)]
    if name == "vtkGetVectorMacro":
        return [("Get" + a0, 0, 0)]
    if name == "vtkSetVectorMacro":
        return [("Set" + a0, 1, 1)]
    if name in ("vtkTypeMacro", "vtkAbstractTypeMacro", "vtkBaseTypeMacro"):
        return [("GetClassName", 0, 0), ("IsA", 1, 1), ("IsTypeOf", 1, 1),
                ("SafeDownCast", 1, 1), ("NewInstance", 0, 0),
                ("GetNumberOfGenerationsFromBase", 1, 1),
                ("GetNumberOfGenerationsFromBaseType", 1, 1)]
    if name == "vtkMRMLCopyContentMacro":
        return [("CopyContent", 1, 2), ("HasCopyContent", 0, 0)]
    if name == "vtkMRMLCopyContentDefaultMacro":
        return [("HasCopyContent", 0, 0)]
    if name == "vtkMRMLNodeNewMacro":
        return [("CreateNodeInstance", 0, 0)]
    return []


_MACRO_CALL = re.compile(r"\b(vtk\w*Macro)\s*\(")


def extract_macros(stmt: str) -> Tuple[str, List[Tuple[str, int, int]], List[str]]:
    """Remove macro invocations from a statement; returns (rest, methods, unhandled)."""
    methods: List[Tuple[str, int, int]] = []
    unhandled: List[str] = []
    while True:
        m = _MACRO_CALL.search(stmt)
        if not m:
            return stmt, methods, unhandled
        end = _match_close(stmt, m.end() - 1, "(", ")")
        args = split_top(stmt[m.end():end - 1])
        found = expand_macro(m.group(1), args)
        if found:
            methods.extend(found)
        elif not re.search(r"(Warning|Error|Debug|Message)", m.group(1)):
            unhandled.append(m.group(1))
        stmt = stmt[:m.start()] + " " + stmt[end:]


def split_top(text: str) -> List[str]:
    """Split at commas outside (), <>, [], {}."""
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "(<[{":
            depth += 1
        elif c in ")>]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


# --------------------------------------------------------------------------- types
_BASIC = {
    "void", "bool", "char", "short", "int", "long", "float", "double", "signed", "unsigned",
    "size_t", "vtkIdType", "vtkTypeBool", "vtkMTimeType", "std::string", "vtkStdString",
    "vtkTypeInt8", "vtkTypeUInt8", "vtkTypeInt16", "vtkTypeUInt16", "vtkTypeInt32",
    "vtkTypeUInt32", "vtkTypeInt64", "vtkTypeUInt64", "vtkTypeFloat32", "vtkTypeFloat64",
    "int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t", "uint64_t",
    "string", "vtkVariant", "ssize_t", "std::size_t",
}
_QUALIFIERS = re.compile(r"\b(const|volatile|struct|class|enum|typename|static|virtual|"
                         r"inline|explicit|VTK_NEWINSTANCE|VTK_FILEPATH|VTK_ZEROCOPY|"
                         r"VTK_UNBLOCKTHREADS|VTK_PROPEXCLUDE|VTK_FUTURE_CONST|VTK_NODISCARD|"
                         r"VTK_MARSHAL\w*|VTK_DEPRECATED\w*|vtkNotUsed)\b")
_ATTR_CALL = re.compile(r"\b(VTK_SIZEHINT|VTK_EXPECTS|VTK_RANGE_CHECK|VTK_MARSHAL\w*|"
                        r"VTK_DEPRECATED_IN_\w+|VTK_DEPRECATED\w*|VTK_MARSHALGETTER|"
                        r"VTK_MARSHALSETTER)\s*\(")


def strip_attributes(text: str) -> str:
    """Remove ``[[...]]`` attributes and the VTK hint macros that take arguments."""
    text = re.sub(r"\[\[.*?\]\]", " ", text)
    while True:
        m = _ATTR_CALL.search(text)
        if not m:
            return text
        end = _match_close(text, m.end() - 1, "(", ")")
        text = text[:m.start()] + " " + text[end:]


def type_is_wrappable(type_text: str, enums: set, is_return: bool = False) -> bool:
    """Whether the VTK Python wrapper accepts this parameter / return type."""
    t = _QUALIFIERS.sub(" ", type_text)
    t = re.sub(r"\s+", " ", t).strip()
    if not t:
        return False
    if "(*" in t.replace(" ", "") or "(&" in t.replace(" ", ""):
        return False  # function pointer / reference to array
    if t.replace(" ", "").count("*") >= 2 or "*&" in t.replace(" ", ""):
        return False  # pointer to pointer
    core = t.replace("*", " ").replace("&", " ").strip()
    core = re.sub(r"\s+", " ", core)
    m = re.match(r"(?:std::)?vector\s*<(.*)>$", core)
    if m:
        if "*" in t:
            return False  # vector of pointers, pointer to a vector
        inner = _QUALIFIERS.sub(" ", m.group(1)).strip()
        inner = re.sub(r"\s+", " ", inner)
        return inner in _BASIC or all(w in _BASIC for w in inner.split())
    m = re.match(r"vtkSmartPointer\s*<\s*(vtk\w+)\s*>$", core)
    if m:
        return True
    if "<" in core or "::iterator" in core:
        return False  # other templates: std::map, std::set, std::deque, std::list, vtkTuple...
    words = core.split()
    if all(w in _BASIC for w in words):
        if is_return and t.replace(" ", "") == "void*":
            return True
        return True
    if len(words) != 1:
        return False
    name = words[0]
    if name.startswith("Q") or name.startswith("ctk"):
        return False
    if "::" in name:  # vtkMRMLNode::SomeEnum or std::something
        if name.startswith("std::"):
            return False
        return name.split("::")[-1] in enums or name.split("::")[0].startswith("vtk")
    if name.startswith("vtk"):
        return True
    return name in enums


def parse_method(stmt: str, class_name: str, enums: set) -> Optional[Tuple[str, int, int]]:
    """``(name, required, total)`` for a wrapped method declaration, else None."""
    s = " ".join(stmt.split())
    if not s or "(" not in s:
        return None
    if re.search(r"\b(VTK_WRAPEXCLUDE|friend|template|operator|typedef|using)\b", s):
        return None
    if re.search(r"=\s*delete\s*$", s):
        return None
    s = strip_attributes(s)
    m = re.match(r"^(.*?)\b(~?\w+)\s*\((.*)\)\s*((?:const|noexcept|override|final|"
                 r"=\s*0|=\s*default|VTK_\w+|\s)*)$", s)
    if not m:
        return None
    ret, name, params = m.group(1).strip(), m.group(2), m.group(3)
    if name.startswith("~") or name == class_name or not ret or name == "New":
        # New() is not exposed: Python calls the class itself
        return None
    if re.search(r"\bexplicit\b", ret):
        return None
    if not type_is_wrappable(ret, enums, is_return=True):
        return None
    plist = [p.strip() for p in split_top(params)]
    if plist == ["void"]:
        plist = []
    required = 0
    for i, p in enumerate(plist):
        if p == "...":
            return None
        decl, has_default = p, False
        depth = 0
        for j, c in enumerate(p):
            if c in "(<[{":
                depth += 1
            elif c in ")>]}":
                depth -= 1
            elif c == "=" and depth == 0:
                decl, has_default = p[:j], True
                break
        is_array = "[" in decl
        decl = re.sub(r"\[[^\]]*\]", " ", decl).strip()  # arrays: pointers (below)
        # drop the parameter name (last identifier, if there is a type before it)
        dm = re.match(r"^(.*?[\w>*&\s])\s*\b([A-Za-z_]\w*)$", decl)
        type_text = decl
        if dm and dm.group(1).strip() and not dm.group(1).strip().endswith("::"):
            candidate = dm.group(1).strip()
            if candidate not in ("const", "unsigned", "signed", "long", "short"):
                type_text = candidate
        if is_array:
            type_text += "*"
        if not type_is_wrappable(type_text, enums):
            return None
        if not has_default:
            required = i + 1
    return name, required, len(plist)


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


def parse_header_text(text: str) -> Tuple[Dict[str, dict], List[str]]:
    """The wrapped classes of one header: {name: {"base", "methods"}}, unhandled macros."""
    classes: Dict[str, dict] = {}
    unhandled_all = set()
    text = preprocess(strip_comments(text))
    for name, base, body, excluded in find_classes(text):
        if excluded:
            continue
        statements, enum_list = public_statements(body)
        enums = set(enum_list)
        methods: Dict[str, set] = {}
        for stmt in statements:
            rest, macro_methods, unhandled = extract_macros(stmt)
            unhandled_all.update(unhandled)
            for mname, req, tot in macro_methods:
                methods.setdefault(mname, set()).add((req, tot))
            parsed = parse_method(rest, name, enums)
            if parsed:
                methods.setdefault(parsed[0], set()).add(parsed[1:])
        classes[name] = {
            "base": base,
            "methods": {k: sorted([list(a) for a in v]) for k, v in sorted(methods.items())},
        }
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
