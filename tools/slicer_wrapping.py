"""The VTK Python wrapping rules, applied to Slicer's C++ headers: which public methods of
a ``vtk*`` class the wrapper exposes to Python, and with how many arguments.

Used by ``tools/slicer_api_snapshot.py`` (see its docstring for the rules). The entry point
is :func:`parse_header_text`: header text in, ``{class: {"base", "methods": {name:
[[required, total], ...]}}}`` and the macros it did not know out. Python 3.9+, no
dependencies.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

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
