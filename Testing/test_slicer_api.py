"""API check against real Slicer 5.8 / 5.10: the project's calls into MRML, module logics
and ``slicer.util`` / ``slicer.parameterNodeWrapper`` must exist, with an argument count
Slicer wraps (snapshot: ``Testing/slicer_api/slicer_api.json``, made from Slicer's own
headers by ``tools/slicer_api_snapshot.py``; checker: ``tools/slicer_api_check.py``).

The ``slicer-core`` wheel the other tests use is built from a fork whose overloads differ
from the application's, so passing tests there do not prove a call works in Slicer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


snapshot_tool = _load("slicer_api_snapshot")
checker = _load("slicer_api_check")


@pytest.fixture(scope="module")
def apis():
    return checker.load_apis()


def test_snapshot_covers_slicer_58_and_510_releases(apis):
    data = json.loads((ROOT / "Testing" / "slicer_api" / "slicer_api.json").read_text())
    revs = {v: s["rev"] for v, s in data["versions"].items()}
    assert revs == {"5.8": "v5.8.1", "5.10": "v5.10.0"}
    for api in apis:
        # The classes the project uses are all there, with their Slicer base classes.
        for cls in ("vtkMRMLScene", "vtkSlicerApplicationLogic", "vtkSlicerVolumesLogic",
                    "vtkSlicerSequencesLogic", "vtkMRMLSequenceBrowserNode",
                    "vtkMRMLMarkupsFiducialNode", "vtkMRMLSegmentationNode",
                    "vtkSlicerPlotsLogic", "vtkMRMLSliceLogic"):
            assert cls in api.classes, (api.version, cls)
        assert api.lookup("vtkMRMLScalarVolumeNode", "GetImageData")[0] == [(0, 0)]
        # Slicer wraps the 2-, 3- and 4-argument AddArchetypeVolume only.
        assert api.lookup("vtkSlicerVolumesLogic", "AddArchetypeVolume")[0] == [(2, 2), (3, 3), (4, 4)]
        assert "WithinRange" in api.python["slicer.parameterNodeWrapper"]
        assert api.python["slicer.util"]["loadVolume"]["kind"] == "function"


def test_project_calls_are_wrapped_in_slicer_58_and_510(apis):
    stats = {}
    problems = checker.check_files(apis=apis, stats=stats)
    assert [str(p) for p in problems] == []
    # The check is not vacuous: it inferred the class of many calls.
    assert stats["typed"] > 50 and stats["by_name"] > 20 and stats["python"] > 10, stats


def test_checker_catches_the_five_argument_AddArchetypeVolume(apis):
    """The call io.load_volume made before issue #21 (slicer-core accepts it, Slicer not)."""
    snippet = (
        "import slicer, vtk\n"
        "def load(ctx, p, name):\n"
        "    messages = slicer.vtkMRMLMessageCollection()\n"
        "    files = vtk.vtkStringArray()\n"
        "    return ctx.logic('Volumes').AddArchetypeVolume(str(p), name, 4 | 8, files,\n"
        "                                                   messages)\n")
    problems = checker.check_source(snippet, "old_io.py", apis)
    assert {p.version for p in problems} == {"5.8", "5.10"}
    assert all(p.line == 5 and "AddArchetypeVolume() takes 2, 3, 4 arguments, 5 given" in p.message
               for p in problems), problems
    # The 4-argument form passes, and an untyped receiver is still checked by name.
    assert checker.check_source(snippet.replace(",\n                                                   messages)", ")"),
                                "new_io.py", apis) == []
    by_name = checker.check_source("def f(logic):\n    logic.AddArchetypeVolume('a', 'b', 4, None, None)\n",
                                   "x.py", apis)
    assert len(by_name) == 2 and "in every Slicer class" in by_name[0].message


def test_checker_reports_missing_names_and_bad_arguments(apis):
    snippet = (
        "import slicer\n"
        "from slicer.util import notThere\n"
        "from slicer.parameterNodeWrapper import WithinRange, Choice, NoSuchValidator\n"
        "def f(path):\n"
        "    node = slicer.mrmlScene.AddNewNodeByClass('vtkMRMLLinearTransformNode')\n"
        "    node.SetMatrixTransformToParent(None, 2)\n"
        "    node.NotAMethod()\n"
        "    node.Modified()\n"
        "    slicer.util.loadVolume(path, bogus=1)\n"
        "    slicer.util.arrayFromVolume()\n"
        "    slicer.vtkMRMLNoSuchNode()\n"
        "    slicer.modules.volumes.logic().AddArchetypeVolume(path, 'a')\n")
    problems = [p for p in checker.check_source(snippet, "s.py", apis) if p.version == "5.8"]
    lines = sorted(p.line for p in problems)
    assert lines == [2, 3, 6, 7, 9, 10, 11], [str(p) for p in problems]
    text = "\n".join(str(p) for p in problems)
    assert "NoSuchValidator does not exist" in text and "WithinRange" not in text
    assert "takes 1 arguments, 2 given" in text
    assert "has no parameter(s) ['bogus']" in text
    assert "misses required argument(s) ['volumeNode']" in text


HEADER = """
#ifndef __vtkToyNode_h
#define __vtkToyNode_h
#include "vtkMRMLNode.h"
#include <map>
class VTK_MRML_EXPORT vtkToyNode : public vtkMRMLNode
{
public:
  static vtkToyNode* New();
  vtkTypeMacro(vtkToyNode, vtkMRMLNode);
  vtkMRMLCopyContentMacro(vtkToyNode);
  ///@{
  /// Doxygen group markers do not hide methods from the wrapper.
  void SetClip(int clipType);
  int GetClip();
  ///@}
  vtkGetMacro(Size, double);
  vtkSetClampMacro(Size, double, 0.0, 1.0);
  vtkBooleanMacro(Visible, bool);
  vtkGetVector3Macro(Color, double);
  vtkSetVector3Macro(Color, double);
  bool Load(const char* path, int options = 0, vtkStringArray* files = nullptr);
  void GetCenter(double center[3]);
  std::vector<std::string> GetNames() const;
  void SetIDs(const std::vector<const char*>& ids);
  void SetRegistry(const std::map<std::string, int>& registry);
  void GetPointers(vtkMRMLNode** nodes);
  template <class T> void Templated(T value);
  void Excluded() VTK_WRAPEXCLUDE;
  enum Mode { A, B };
  void SetMode(Mode mode);
  double Inline(int a) { return a * 2.0; }
#ifndef __VTK_WRAP__
  void NotForPython(int a);
#endif
#ifdef __VTK_WRAP__
  void OnlyForPython(int a);
#endif
  vtkToyNode(const vtkToyNode&) = delete;
protected:
  void Hidden();
private:
  int Secret();
};
#endif
"""


def test_snapshot_parser_follows_the_vtk_wrapping_rules():
    classes, unhandled = snapshot_tool.parse_header_text(HEADER)
    assert unhandled == []
    toy = classes["vtkToyNode"]
    assert toy["base"] == "vtkMRMLNode"
    m = {k: [tuple(a) for a in v] for k, v in toy["methods"].items()}
    assert m["SetClip"] == [(1, 1)] and m["GetClip"] == [(0, 0)]  # inside //@{ ... //@}
    assert m["CopyContent"] == [(1, 2)] and m["SafeDownCast"] == [(1, 1)]
    assert m["GetSize"] == [(0, 0)] and m["SetSize"] == [(1, 1)]
    assert m["GetSizeMinValue"] == [(0, 0)] and m["VisibleOn"] == [(0, 0)]
    assert m["GetColor"] == [(0, 0)] and m["SetColor"] == [(1, 1), (3, 3)]
    assert m["Load"] == [(1, 3)]
    assert m["GetCenter"] == [(1, 1)] and m["GetNames"] == [(0, 0)]
    assert m["SetMode"] == [(1, 1)] and m["Inline"] == [(1, 1)]
    assert m["OnlyForPython"] == [(1, 1)]
    for name in ("New", "SetIDs", "SetRegistry", "GetPointers", "Templated", "Excluded",
                 "NotForPython", "Hidden", "Secret", "vtkToyNode"):
        assert name not in m, name
