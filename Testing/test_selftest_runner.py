"""The summary logic of Testing/slicer/run_selftests.py (the script itself needs the Slicer
application, which is not available here; its Slicer calls are checked by
Testing/test_slicer_api.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "Testing" / "slicer" / "run_selftests.py"


def _runner():
    spec = importlib.util.spec_from_file_location("run_selftests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports nothing from Slicer at load time
    return module


def test_summary_counts_and_exit_status():
    runner = _runner()
    text, status = runner.format_summary([
        ("SurgicalReg2D3D", "PASS", 1.0, ""),
        ("FluoroReg", "SKIP", 0.1, "FluoroReg self-test needs torch (not installed)"),
    ])
    assert status == 0  # a skip with its reason is not a failure
    assert "SKIP  FluoroReg" in text and "needs torch" in text
    assert text.splitlines()[-1] == "1 pass, 0 fail, 0 error, 1 skip"
    _text, status = runner.format_summary([("USSliceReg", "FAIL", 2.0, "AssertionError: 3.2 < 3.0")])
    assert status == 1
    assert runner.format_summary([])[1] == 1  # nothing ran: not a pass


def test_arguments_and_the_slicer_api_it_uses():
    runner = _runner()
    assert runner.parse_args([]).modules == list(runner.MODULES)
    assert runner.parse_args(["--modules", "FluoroReg, USSliceReg"]).modules == ["FluoroReg", "USSliceReg"]
    with pytest.raises(SystemExit):
        runner.parse_args(["--modules", "Nope"])
    import importlib.util as iu
    spec = iu.spec_from_file_location("slicer_api_check", ROOT / "tools" / "slicer_api_check.py")
    checker = iu.module_from_spec(spec)
    import sys

    sys.modules.setdefault("slicer_api_check", checker)
    spec.loader.exec_module(checker)
    assert [str(p) for p in checker.check_files([str(SCRIPT)])] == []
