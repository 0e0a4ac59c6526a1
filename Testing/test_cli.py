"""The ``surgreg`` command line: info, error handling, demo report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from SurgicalReg2D3DLib import __version__, cli


def test_info_json_lists_versions_device_and_models(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["surgreg"] == __version__
    assert info["versions"]["slicer-core"].startswith("5.13")
    assert info["device"]["device"] in ("cpu", "cuda")
    assert isinstance(info["models"], list)


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: surgreg" in capsys.readouterr().out


def test_module_commands_are_registered():
    parser = cli.build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse internals
    for name in ["info", "demo"]:
        assert name in subcommands


def test_console_script_runs_outside_the_test_process():
    result = subprocess.run([sys.executable, "-m", "SurgicalReg2D3DLib", "info"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "SlicerSurgicalReg2D3D" in result.stdout and "Device" in result.stdout


def test_demo_report_marks_missing_modules(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_has_submodule", lambda package, name: False)
    report = cli.run_demo(tmp_path, quick=True)
    assert set(report["modules"]) == {"FluoroReg", "LiverLaparoReg", "USSliceReg"}
    assert all(entry["status"] == "not available" for entry in report["modules"].values())
    assert json.loads((tmp_path / "report.json").read_text())["quick"] is True
    assert (tmp_path / "report.md").read_text().startswith("# SlicerSurgicalReg2D3D demo report")


def test_flatten_formats_nested_metrics():
    flat = cli._flatten({"a": {"b": 0.123456, "c": [1] * 20}, "d": 3})  # noqa: SLF001
    assert flat == {"a.b": "0.1235", "a.c": "[20 values]", "d": 3}


@pytest.mark.parametrize("argv", [["demo", "--modules", "nope"]])
def test_bad_arguments_exit_with_usage_error(argv):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(argv)
    assert excinfo.value.code == 2


def test_a_module_command_builds_only_that_modules_parser():
    parser = cli.build_parser("fluoro")
    subcommands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse internals
    assert "fluoro" in subcommands and "us" not in subcommands and "laparo" not in subcommands
    full = cli.build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert {"fluoro", "us", "laparo"} <= set(full)
    # a fluoro command in a new process does not import the other modules' packages
    code = ("import sys\nfrom SurgicalReg2D3DLib.cli import main\n"
            "try:\n    main(['fluoro', 'register', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('USSliceRegLib', 'LiverLaparoRegLib', 'FluoroRegLib') and m.count('.') == 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['FluoroRegLib']"
