"""Static checks of the Slicer module files (``<Module>.py`` + ``Resources/UI/<Module>.ui``).

The slicer-core wheel has no ``ScriptedLoadableModule`` nor ``qt``, so the module files
cannot be imported here. Instead this test parses them: the .ui as XML, the .py with
``ast``. Each ``check_*`` function returns a list of problems (empty = fine); the tests at
the bottom run them on every module of the repository and on deliberately broken examples
(so we know the checks can fail).

Checks:
(a) every ``self.ui.<name>`` / ``ui.<name>`` used in the .py is a widget (or layout) of the .ui;
    widget names in the .ui are unique;
(b) every ``SlicerParameterName`` property in the .ui names a field of the module's
    ``@parameterNodeWrapper`` class;
(c) every widget class in the .ui is a Qt / CTK / MRML / Slicer class (prefixes ``Q``,
    ``ctk``, ``qMRML``, ``qSlicer``), every non-Qt class is declared in ``<customwidgets>``
    with a matching header and a known base class, and the top widget is a ``qMRMLWidget``
    (the module calls ``setMRMLScene`` on it);
(d) the .py defines ``<M>(ScriptedLoadableModule)``, ``<M>Widget``, ``<M>Logic``, ``<M>Test``
    and a ``@parameterNodeWrapper`` class, loads ``UI/<M>.ui``, uses the category
    ``Registration.SurgicalReg2D3D`` in its translatable form (as Slicer's module template:
    ``translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"``), and
    imports neither torch nor cv2 when the module is imported (top level and class bodies,
    also through the repository's own packages; ``if TYPE_CHECKING:`` blocks do not run).
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("SurgicalReg2D3D", "FluoroReg", "LiverLaparoReg", "USSliceReg")
CATEGORY = "Registration.SurgicalReg2D3D"
ALLOWED_PREFIXES = ("Q", "ctk", "qMRML", "qSlicer")
HEAVY_MODULES = ("torch", "cv2")
# Qt classes a custom widget may extend (plus any allowed class declared in the same file).
QT_BASES_PREFIX = "Q"


# --- parsing ----------------------------------------------------------------------------------

def parse_ui(ui_path: Path) -> ET.Element:
    return ET.parse(ui_path).getroot()


def ui_widgets(root: ET.Element) -> List[ET.Element]:
    """All ``<widget>`` elements (the top widget included)."""
    return list(root.iter("widget"))


def ui_object_names(root: ET.Element) -> List[str]:
    """Names that ``slicer.util.childWidgetVariables`` exposes: widgets and layouts."""
    names = [w.get("name") for w in root.iter("widget")]
    names += [lay.get("name") for lay in root.iter("layout")]
    return [n for n in names if n]


def ui_parameter_names(root: ET.Element) -> Dict[str, str]:
    """``{widget name: SlicerParameterName}`` for every widget that has the property."""
    found = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                value = prop.findtext("string", default="").strip()
                found[widget.get("name")] = value
    return found


def _heavy_imports_at_import_time(tree: ast.Module) -> List[tuple]:
    """``(line, imported module)`` for imports executed when the module is imported:
    module level and class bodies (recursively into if/try/with), not function bodies."""
    found = []

    def visit(statements):
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)  # the body runs for type checkers only
                continue
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                # "from pkg import x": pkg is imported, and so is pkg.x when x is a submodule.
                base = "." * node.level + (node.module or "")
                found.append((node.lineno, base))
                sep = "" if base.endswith(".") else "."
                found.extend((node.lineno, f"{base}{sep}{alias.name}") for alias in node.names
                             if alias.name != "*")
            for field in ("body", "orelse", "finalbody", "handlers"):
                child = getattr(node, field, None)
                if isinstance(child, list):
                    visit(child)

    visit(tree.body)
    return found


def _is_type_checking(test) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _category_value(node):
    """The category text of a ``categories`` element and whether it is translatable:
    ``translate("qSlicerAbstractCoreModule", "X")`` (+ ``".Sub"`` literals)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, False
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "translate"
            and len(node.args) == 2 and all(isinstance(a, ast.Constant) for a in node.args)
            and node.args[0].value == "qSlicerAbstractCoreModule"):
        return node.args[1].value, True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _category_value(node.left), _category_value(node.right)
        if left and right:
            return left[0] + right[0], left[1] or right[1]
    return None


def _package_file(module_name: str, search_roots: Iterable[Path]) -> Optional[Path]:
    """The source file of a repository module such as ``SurgicalReg2D3DLib.device``."""
    parts = module_name.split(".")
    for root in search_roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def heavy_imports(py_path: Path, search_roots: Iterable[Path], _seen=None) -> List[str]:
    """Import-time imports of torch/cv2 by ``py_path``, following imports of the
    repository's own packages (found under ``search_roots``). Returns readable chains."""
    search_roots = list(search_roots)
    seen = set() if _seen is None else _seen
    if py_path in seen:
        return []
    seen.add(py_path)
    tree = ast.parse(py_path.read_text(encoding="utf-8"), filename=str(py_path))
    problems = []
    for line, name in _heavy_imports_at_import_time(tree):
        top = name.lstrip(".").split(".")[0]
        if not name.startswith(".") and top in HEAVY_MODULES:
            message = f"{py_path.name}:{line} imports {top}"
            if message not in problems:  # "from torch import nn" counts once
                problems.append(message)
            continue
        if name.startswith("."):  # relative import inside a package
            level = len(name) - len(name.lstrip("."))
            base = py_path.parent  # the package that holds py_path
            for _ in range(level - 1):
                base = base.parent
            rest = name.lstrip(".")
            target = base.joinpath(*rest.split(".")) if rest else base
            candidates = [target.with_suffix(".py"), target / "__init__.py"]
            sub = next((c for c in candidates if c.is_file()), None)
        else:
            sub = _package_file(name, search_roots)
        if sub is not None:
            for chain in heavy_imports(sub, search_roots, seen):
                problems.append(f"{py_path.name}:{line} -> {chain}")
    return problems


def _decorator_names(node: ast.ClassDef) -> Set[str]:
    names = set()
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def _base_names(node: ast.ClassDef) -> Set[str]:
    names = set()
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def parameter_node_fields(tree: ast.Module) -> Optional[Dict[str, Set[str]]]:
    """``{class name: annotated field names}`` of the ``@parameterNodeWrapper`` classes
    (None when there is none)."""
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and "parameterNodeWrapper" in _decorator_names(node):
            classes[node.name] = {stmt.target.id for stmt in node.body
                                  if isinstance(stmt, ast.AnnAssign)
                                  and isinstance(stmt.target, ast.Name)}
    return classes or None


def ui_names_used(tree: ast.Module) -> Dict[str, int]:
    """``{name: first line}`` for every ``self.ui.<name>`` or ``ui.<name>`` in the code."""
    used = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        holder = node.value
        is_ui = ((isinstance(holder, ast.Attribute) and holder.attr == "ui"
                  and isinstance(holder.value, ast.Name) and holder.value.id == "self")
                 or (isinstance(holder, ast.Name) and holder.id == "ui"))
        if is_ui:
            used.setdefault(node.attr, node.lineno)
    return used


# --- the checks --------------------------------------------------------------------------------

def check_widget_names(py_path: Path, ui_path: Path) -> List[str]:
    """(a) every ui.<name> used in the code exists in the .ui; names are unique."""
    root = parse_ui(ui_path)
    names = ui_object_names(root)
    problems = []
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{ui_path.name}: duplicate object names {duplicates}")
    tree = ast.parse(py_path.read_text(encoding="utf-8"))
    for name, line in sorted(ui_names_used(tree).items()):
        if name not in names:
            problems.append(f"{py_path.name}:{line} uses ui.{name}, which is not in {ui_path.name}")
    return problems


def check_parameter_names(py_path: Path, ui_path: Path) -> List[str]:
    """(b) every SlicerParameterName in the .ui is a field of the parameterNodeWrapper."""
    tree = ast.parse(py_path.read_text(encoding="utf-8"))
    classes = parameter_node_fields(tree)
    bound = ui_parameter_names(parse_ui(ui_path))
    if classes is None:
        return [f"{py_path.name}: no @parameterNodeWrapper class"] if bound else []
    fields = set().union(*classes.values())
    problems = []
    for widget, parameter in sorted(bound.items()):
        if not parameter:
            problems.append(f"{ui_path.name}: widget {widget} has an empty SlicerParameterName")
        elif parameter.split(".")[0] not in fields:
            problems.append(f"{ui_path.name}: widget {widget} binds SlicerParameterName "
                            f"'{parameter}', which is not a field of {sorted(classes)}")
    return problems


def check_widget_classes(ui_path: Path) -> List[str]:
    """(c) widget classes are Qt/CTK/MRML/Slicer ones and custom widgets are declared."""
    root = parse_ui(ui_path)
    problems = []
    declared = {}
    for custom in root.iter("customwidget"):
        cls = custom.findtext("class", default="").strip()
        extends = custom.findtext("extends", default="").strip()
        header = custom.findtext("header", default="").strip()
        declared[cls] = extends
        if not cls.startswith(ALLOWED_PREFIXES) or cls.startswith(QT_BASES_PREFIX):
            problems.append(f"{ui_path.name}: custom widget '{cls}' is not a CTK/MRML/Slicer class")
        if header != f"{cls}.h":
            problems.append(f"{ui_path.name}: custom widget '{cls}' has header '{header}', "
                            f"expected '{cls}.h'")
    for cls, extends in declared.items():
        if not (extends.startswith(QT_BASES_PREFIX) or extends in declared):
            problems.append(f"{ui_path.name}: custom widget '{cls}' extends unknown class '{extends}'")
    widgets = ui_widgets(root)
    for widget in widgets:
        cls, name = widget.get("class", ""), widget.get("name")
        if not cls.startswith(ALLOWED_PREFIXES):
            problems.append(f"{ui_path.name}: widget {name} has class '{cls}', which is not a "
                            f"Qt/CTK/MRML/Slicer class")
        elif not cls.startswith(QT_BASES_PREFIX) and cls not in declared:
            problems.append(f"{ui_path.name}: widget {name} of class '{cls}' is not declared "
                            f"in <customwidgets>")
    top = root.find("widget")
    if top is None:
        problems.append(f"{ui_path.name}: no top-level widget")
    elif top.get("class") not in ("qMRMLWidget", "qSlicerWidget"):
        problems.append(f"{ui_path.name}: top-level widget is '{top.get('class')}', expected "
                        f"qMRMLWidget (the module calls setMRMLScene on it)")
    return problems


def check_module_structure(py_path: Path, module: str, search_roots: Iterable[Path]) -> List[str]:
    """(d) module, widget, logic, test and parameter-node classes; no heavy import at load."""
    tree = ast.parse(py_path.read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    expected = {
        module: "ScriptedLoadableModule",
        f"{module}Widget": "ScriptedLoadableModuleWidget",
        f"{module}Logic": "ScriptedLoadableModuleLogic",
        f"{module}Test": "ScriptedLoadableModuleTest",
    }
    problems = []
    for name, base in expected.items():
        if name not in classes:
            problems.append(f"{py_path.name}: missing class {name}({base})")
        elif base not in _base_names(classes[name]):
            problems.append(f"{py_path.name}: class {name} does not derive from {base}")
    if parameter_node_fields(tree) is None:
        problems.append(f"{py_path.name}: missing @parameterNodeWrapper class")
    source = py_path.read_text(encoding="utf-8")
    if f'"UI/{module}.ui"' not in source and f"'UI/{module}.ui'" not in source:
        problems.append(f"{py_path.name}: does not load UI/{module}.ui through resourcePath")
    categories, translatable = None, False
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Attribute)
                and node.targets[0].attr == "categories"):
            values = ([_category_value(e) for e in node.value.elts]
                      if isinstance(node.value, ast.List) else [None])
            if None in values:
                categories = "<not a category expression>"
            else:
                categories = [v[0] for v in values]
                translatable = all(v[1] for v in values)
    if categories != [CATEGORY]:
        problems.append(f"{py_path.name}: categories is {categories!r}, expected [{CATEGORY!r}]")
    elif not translatable:
        problems.append(f"{py_path.name}: category is not translatable; use "
                        f'translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"')
    for chain in heavy_imports(py_path, search_roots):
        problems.append(f"{py_path.name}: heavy import when the module is loaded: {chain}")
    return problems


def check_module(folder: Path, search_roots: Iterable[Path]) -> List[str]:
    """All checks for one module folder ``<folder>/<M>.py`` + ``Resources/UI/<M>.ui``."""
    module = folder.name
    py_path = folder / f"{module}.py"
    ui_path = folder / "Resources" / "UI" / f"{module}.ui"
    missing = [str(p.relative_to(folder.parent)) for p in (py_path, ui_path) if not p.is_file()]
    if missing:
        return [f"{module}: missing {missing}"]
    try:
        parse_ui(ui_path)
    except ET.ParseError as exc:
        return [f"{ui_path.name}: not valid XML ({exc})"]
    try:
        ast.parse(py_path.read_text(encoding="utf-8"))
    except SyntaxError as exc:
        return [f"{py_path.name}: syntax error ({exc})"]
    return (check_widget_names(py_path, ui_path) + check_parameter_names(py_path, ui_path)
            + check_widget_classes(ui_path) + check_module_structure(py_path, module, search_roots))


def repository_search_roots() -> List[Path]:
    """Folders that hold the repository's packages (each module folder)."""
    return [ROOT / m for m in MODULES]


# --- tests on the repository ---------------------------------------------------------------------

PRESENT = [m for m in MODULES
           if (ROOT / m / f"{m}.py").is_file() and (ROOT / m / "Resources" / "UI" / f"{m}.ui").is_file()]


def test_hub_module_files_present():
    assert "SurgicalReg2D3D" in PRESENT


@pytest.mark.parametrize("module", PRESENT)
def test_module_passes_static_checks(module):
    problems = check_module(ROOT / module, repository_search_roots())
    assert problems == [], "\n".join(problems)


def test_hub_sample_choices_match_paths_registry():
    """The hub's Choice list of sample names equals SurgicalReg2D3DLib.paths.SAMPLE_DATASETS."""
    from SurgicalReg2D3DLib.paths import SAMPLE_DATASETS

    tree = ast.parse((ROOT / "SurgicalReg2D3D" / "SurgicalReg2D3D.py").read_text())
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id in ("SAMPLE_CHOICES", "DEVICE_CHOICES")}
    assert values["SAMPLE_CHOICES"] == [d.sample_name for d in SAMPLE_DATASETS]
    assert values["DEVICE_CHOICES"] == ["auto", "cpu", "cuda"]
    for dataset in SAMPLE_DATASETS:
        icon = ROOT / "SurgicalReg2D3D" / "Resources" / "Icons" / dataset.thumbnail
        assert icon.is_file(), icon


# --- the checks must catch broken modules ---------------------------------------------------------

GOOD_UI = """<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0">
 <class>Toy</class>
 <widget class="qMRMLWidget" name="Toy">
  <layout class="QVBoxLayout" name="verticalLayout">
   <item>
    <widget class="qMRMLNodeComboBox" name="inputSelector">
     <property name="SlicerParameterName" stdset="0"><string>inputVolume</string></property>
    </widget>
   </item>
   <item>
    <widget class="QPushButton" name="applyButton"/>
   </item>
  </layout>
 </widget>
 <customwidgets>
  <customwidget><class>qMRMLNodeComboBox</class><extends>QWidget</extends><header>qMRMLNodeComboBox.h</header></customwidget>
  <customwidget><class>qMRMLWidget</class><extends>QWidget</extends><header>qMRMLWidget.h</header><container>1</container></customwidget>
 </customwidgets>
</ui>
"""

GOOD_PY = '''"""Toy module."""
import slicer
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.parameterNodeWrapper import parameterNodeWrapper


class Toy(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"]


@parameterNodeWrapper
class ToyParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode


class ToyWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/Toy.ui"))
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.verticalLayout.addStretch(1)

    def onApply(self):
        import torch  # fine: inside a function
        from ToyLib import heavy


class ToyLogic(ScriptedLoadableModuleLogic):
    pass


class ToyTest(ScriptedLoadableModuleTest):
    def runTest(self):
        pass
'''


def _write_toy(tmp_path: Path, py: str = GOOD_PY, ui: str = GOOD_UI) -> Path:
    folder = tmp_path / "Toy"
    (folder / "Resources" / "UI").mkdir(parents=True)
    (folder / "Toy.py").write_text(py)
    (folder / "Resources" / "UI" / "Toy.ui").write_text(ui)
    lib = folder / "ToyLib"
    lib.mkdir()
    (lib / "__init__.py").write_text('"""Toy lib."""\nfrom . import light\n')
    (lib / "light.py").write_text("import numpy as np\n")
    (lib / "heavy.py").write_text("import numpy\nimport torch.nn as nn\n")
    return folder


def test_checker_accepts_a_correct_toy_module(tmp_path):
    folder = _write_toy(tmp_path)
    assert check_module(folder, [folder]) == []


def test_checker_reports_missing_widget_and_duplicates(tmp_path):
    py = GOOD_PY.replace("self.ui.applyButton", "self.ui.runButton")
    ui = GOOD_UI.replace('name="applyButton"', 'name="inputSelector"')
    folder = _write_toy(tmp_path, py=py, ui=ui)
    problems = check_widget_names(folder / "Toy.py", folder / "Resources" / "UI" / "Toy.ui")
    assert problems == [
        "Toy.ui: duplicate object names ['inputSelector']",
        "Toy.py:23 uses ui.runButton, which is not in Toy.ui",
    ]


def test_checker_reports_unknown_parameter_name(tmp_path):
    ui = GOOD_UI.replace("<string>inputVolume</string>", "<string>inputVolme</string>")
    folder = _write_toy(tmp_path, ui=ui)
    problems = check_parameter_names(folder / "Toy.py", folder / "Resources" / "UI" / "Toy.ui")
    assert problems == ["Toy.ui: widget inputSelector binds SlicerParameterName 'inputVolme', "
                        "which is not a field of ['ToyParameterNode']"]


def test_checker_reports_bad_widget_classes(tmp_path):
    ui = (GOOD_UI.replace('class="QPushButton"', 'class="MyFancyButton"')
          .replace('class="qMRMLWidget" name="Toy"', 'class="QWidget" name="Toy"')
          .replace("<header>qMRMLNodeComboBox.h</header>", "<header>wrong.h</header>")
          .replace('<widget class="qMRMLNodeComboBox"', '<widget class="ctkSliderWidget"'))
    folder = _write_toy(tmp_path, ui=ui)
    problems = check_widget_classes(folder / "Resources" / "UI" / "Toy.ui")
    assert problems == [
        "Toy.ui: custom widget 'qMRMLNodeComboBox' has header 'wrong.h', expected 'qMRMLNodeComboBox.h'",
        "Toy.ui: widget inputSelector of class 'ctkSliderWidget' is not declared in <customwidgets>",
        "Toy.ui: widget applyButton has class 'MyFancyButton', which is not a Qt/CTK/MRML/Slicer class",
        "Toy.ui: top-level widget is 'QWidget', expected qMRMLWidget (the module calls "
        "setMRMLScene on it)",
    ]


def test_checker_reports_structure_and_heavy_imports(tmp_path):
    py = (GOOD_PY.replace("class ToyTest(ScriptedLoadableModuleTest)", "class ToyTests(ScriptedLoadableModuleTest)")
          .replace("class ToyLogic(ScriptedLoadableModuleLogic)", "class ToyLogic(object)")
          .replace("@parameterNodeWrapper\n", "")
          .replace('"Registration") + ".SurgicalReg2D3D"', '"Examples")')
          .replace('import slicer\n', 'import slicer\nimport cv2\ntry:\n    import torch\nexcept ImportError:\n    pass\n'
                   'from ToyLib import heavy\n'))
    folder = _write_toy(tmp_path, py=py)
    problems = check_module_structure(folder / "Toy.py", "Toy", [folder])
    assert problems == [
        "Toy.py: class ToyLogic does not derive from ScriptedLoadableModuleLogic",
        "Toy.py: missing class ToyTest(ScriptedLoadableModuleTest)",
        "Toy.py: missing @parameterNodeWrapper class",
        "Toy.py: categories is ['Examples'], expected ['Registration.SurgicalReg2D3D']",
        "Toy.py: heavy import when the module is loaded: Toy.py:3 imports cv2",
        "Toy.py: heavy import when the module is loaded: Toy.py:5 imports torch",
        "Toy.py: heavy import when the module is loaded: Toy.py:8 -> heavy.py:2 imports torch",
    ]


def test_checker_requires_a_translatable_category_and_skips_type_checking_imports(tmp_path):
    py = (GOOD_PY.replace('[translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"]',
                          '["Registration.SurgicalReg2D3D"]')
          .replace("import slicer\n", "import slicer\nfrom typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    import torch\nelse:\n    import cv2\n", 1))
    folder = _write_toy(tmp_path, py=py)
    problems = check_module_structure(folder / "Toy.py", "Toy", [folder])
    assert problems == [
        "Toy.py: category is not translatable; use translate(\"qSlicerAbstractCoreModule\", "
        "\"Registration\") + \".SurgicalReg2D3D\"",
        "Toy.py: heavy import when the module is loaded: Toy.py:7 imports cv2",
    ]


def test_checker_reports_missing_and_unparsable_files(tmp_path):
    folder = _write_toy(tmp_path, ui=GOOD_UI.replace("</ui>", ""))
    assert check_module(folder, [folder])[0].startswith("Toy.ui: not valid XML")
    (folder / "Resources" / "UI" / "Toy.ui").unlink()
    assert check_module(folder, [folder]) == ["Toy: missing ['Toy/Resources/UI/Toy.ui']"]


def test_checker_follows_imports_into_the_core_library(tmp_path):
    """A module importing SurgicalReg2D3DLib.similarity at load time pulls torch in
    (similarity.py imports torch at its top): the check must see it through the real core
    package. (device.py imports torch only inside its functions: importing it is fine.)"""
    hub = (ROOT / "SurgicalReg2D3D" / "SurgicalReg2D3D.py").read_text()
    folder = tmp_path / "SurgicalReg2D3D"
    folder.mkdir()
    (folder / "SurgicalReg2D3D.py").write_text(
        hub.replace("import vtk\n", "import vtk\nfrom SurgicalReg2D3DLib.device import choose_device\n"
                    "from SurgicalReg2D3DLib.similarity import ncc\n", 1))
    problems = check_module_structure(folder / "SurgicalReg2D3D.py", "SurgicalReg2D3D",
                                      repository_search_roots())
    assert len(problems) == 2  # "import torch" and "import torch.nn.functional as F"
    assert problems[0].startswith("SurgicalReg2D3D.py: heavy import when the module is loaded: "
                                  "SurgicalReg2D3D.py:")
    lines = (ROOT / "SurgicalReg2D3D" / "SurgicalReg2D3DLib" / "similarity.py").read_text().splitlines()
    torch_line = lines.index("import torch") + 1
    assert problems[0].endswith(f"-> similarity.py:{torch_line} imports torch")
