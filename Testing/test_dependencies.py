"""The Slicer dependency plan (``SurgicalReg2D3DLib.dependencies``): which packages, which
pins, for Slicer 5.8 (Python 3.9, numpy 1.26.4) and 5.10 (Python 3.12, numpy 2.0.2).

The pins are checked against pip's own resolution: ``benchmarks/slicer_dependency_plan.py``
ran ``pip install --dry-run --python-version X.Y --only-binary=:all:`` on the plan and on an
unpinned install, and committed what pip chose (``benchmarks/results/``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from SurgicalReg2D3DLib import dependencies as deps
from SurgicalReg2D3DLib.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
S58, S510 = deps.SLICER_PYTHON["5.8"], deps.SLICER_PYTHON["5.10"]
ALL = ["FluoroReg", "LiverLaparoReg", "USSliceReg"]


def test_slicer_releases_match_slicers_build_files():
    # Slicer's CMakeLists.txt (Slicer_REQUIRED_PYTHON_VERSION) and
    # SuperBuild/External_python-numpy.cmake at v5.8.1 and v5.10.0.
    assert (S58.python, S58.numpy) == ((3, 9), "1.26.4")
    assert (S510.python, S510.numpy) == ((3, 12), "2.0.2")


def test_plan_for_slicer_58_without_the_pytorch_extension():
    plan = deps.make_plan(ALL, {}, S58.python, S58.numpy, pytorch_utils=False)
    steps = {s.import_name: s for s in plan.steps}
    assert list(steps) == ["torch", "cv2", "numba"]
    assert steps["torch"].method == "pip"
    assert steps["torch"].requirements == ("torch>=2.1", "numpy==1.26.4")
    assert steps["cv2"].requirements == ("opencv-python-headless>=4.8,<4.12", "numpy==1.26.4")
    assert steps["numba"].optional and steps["numba"].requirements[0] == "numba>=0.59,<0.61"
    assert not plan.complete
    text = plan.summary()
    assert "numpy 1.26.4 is kept" in text and "PyTorch extension is not installed" in text
    assert "3x slower" in text  # the torch fallback of numba is announced


def test_plan_uses_pytorchutils_when_present_and_skips_what_is_installed():
    plan = deps.make_plan(ALL, {"cv2": "4.11.0", "numba": None}, S510.python, S510.numpy,
                          pytorch_utils=True)
    steps = {s.import_name: s for s in plan.steps}
    assert steps["torch"].method == "PyTorchUtils"
    assert steps["torch"].requirements == ("torch>=2.1",)  # PyTorchUtils' version requirement
    assert "cv2" not in steps and plan.ok == ["OpenCV 4.11.0"]
    assert steps["numba"].requirements == ("numba>=0.60", "numpy==2.0.2")
    assert "PyTorch extension is not installed" not in plan.summary()


def test_old_torch_is_upgraded_and_optional_numba_can_be_declined():
    plan = deps.make_plan(["USSliceReg"], {"torch": "1.13.1+cu117"}, S58.python, S58.numpy,
                          pytorch_utils=True, include_optional=False)
    assert [s.import_name for s in plan.steps] == ["torch"]
    assert "older than >=2.1" in plan.steps[0].reason
    assert any("without numba" in n for n in plan.notes)
    ok = deps.make_plan(["USSliceReg"], {"torch": "2.3.0"}, S58.python, S58.numpy,
                        pytorch_utils=False, include_optional=False)
    assert ok.complete and ok.steps == [] and ok.ok == ["torch 2.3.0"]


def test_module_needs():
    assert [s.import_name for s in deps.make_plan(["FluoroReg"], {}, (3, 9), "1.26.4", True).steps] == ["torch"]
    assert [s.import_name for s in deps.make_plan(["LiverLaparoReg"], {}, (3, 9), "1.26.4", True).steps] == ["torch", "cv2"]
    with pytest.raises(InputError, match=r"^modules: unknown module\(s\) \['Foo'\]"):
        deps.make_plan(["Foo"], {}, (3, 9), "1.26.4", True)


def test_version_helpers():
    assert deps.version_tuple("2.1.0+cu121") == (2, 1, 0)
    assert deps.version_tuple("4.11.0.86") == (4, 11, 0, 86)
    assert deps.satisfies("2.1.0+cu121", ">=2.1")
    assert not deps.satisfies("2.0.1", ">=2.1")
    assert deps.satisfies("4.11.0.86", ">=4.8,<4.12")
    assert not deps.satisfies("4.12.0.88", ">=4.8,<4.12")
    assert not deps.satisfies("5.1.0.95", ">=4.8,<4.12")
    with pytest.raises(InputError, match="^version spec"):
        deps.satisfies("1.0", "~=1")


def test_pins_agree_with_pips_resolution():
    """What pip chose in the committed dry run: the planned install keeps Slicer's numpy and
    picks an OpenCV inside the plan's bound; the unpinned one replaces numpy."""
    rows = json.loads((ROOT / "benchmarks" / "results" / "slicer_dependency_plan.json").read_text())
    by = {(r["slicer"], r["case"]): r for r in rows}
    for release, profile in deps.SLICER_PYTHON.items():
        planned = by[(release, "planned")]["resolved"]
        assert planned["numpy"] == profile.numpy
        spec = deps.opencv_requirement(profile.numpy).split("headless", 1)[1]
        assert deps.satisfies(planned["opencv-python-headless"], spec)
        assert deps.satisfies(planned["numba"], deps.numba_requirement(profile.python, profile.numpy).split("numba", 1)[1])
        assert deps.satisfies(planned["torch"], deps.TORCH_REQUIREMENT)
    # Slicer 5.8: a plain install takes an OpenCV that needs numpy >= 2 (outside the plan's
    # bound), and with it numpy 2.x over Slicer's 1.26.4: why the pin exists.
    unpinned = by[("5.8", "unpinned")]["resolved"]
    assert not deps.satisfies(unpinned["opencv-python-headless"], "<4.12")
    assert deps.version_tuple(unpinned["numpy"])[0] == 2


def test_current_environment_reads_metadata_only():
    env = deps.current_environment()
    assert env["installed"]["torch"]  # this test environment has torch
    assert env["python"][0] == 3 and env["numpy"]
    plan = deps.plan_for_current_environment(ALL)
    assert plan.complete and plan.steps == []
