"""Run every module's self-test inside the Slicer application and print a pass/fail summary.

Usage (Slicer 5.8 or later, the extension installed from the Extensions Manager)::

    Slicer --no-main-window --python-script Testing/slicer/run_selftests.py

From a source checkout, without installing the extension::

    Slicer --no-main-window --additional-module-paths SurgicalReg2D3D FluoroReg \\
        LiverLaparoReg USSliceReg --python-script Testing/slicer/run_selftests.py

Options after the script name: ``--modules FluoroReg,USSliceReg`` (default: all four),
``--keep-open`` (do not quit Slicer at the end). Each module's ``<Module>Test.runTest`` runs
through ``unittest`` (so a ``skipTest`` counts as skipped, with its reason: e.g. torch not
installed); the exit status is 0 when nothing failed, 1 otherwise.

This script needs the Slicer application; it was not run where it was written (no
Slicer there). ``Testing/test_selftest_runner.py`` checks its summary logic only.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from typing import List, Optional, Sequence, Tuple

MODULES = ("SurgicalReg2D3D", "FluoroReg", "LiverLaparoReg", "USSliceReg")

#: (module, status, seconds, detail); status is "PASS", "FAIL", "ERROR" or "SKIP".
Result = Tuple[str, str, float, str]


def run_module_test(moduleName: str) -> Result:
    """Run ``<moduleName>Test.runTest`` with unittest inside Slicer."""
    import importlib
    import unittest

    start = time.perf_counter()
    try:
        module = importlib.import_module(moduleName)
        testClass = getattr(module, moduleName + "Test")
    except Exception:  # the module does not load: that is a failure too
        return (moduleName, "ERROR", time.perf_counter() - start,
                "cannot load the module: " + traceback.format_exc(limit=3).strip().splitlines()[-1])
    result = unittest.TestResult()
    testClass("runTest").run(result)
    seconds = time.perf_counter() - start
    if result.errors or result.failures:
        kind = "ERROR" if result.errors else "FAIL"
        text = (result.errors + result.failures)[0][1].strip().splitlines()
        return moduleName, kind, seconds, text[-1] if text else ""
    if result.skipped:
        return moduleName, "SKIP", seconds, result.skipped[0][1]
    return moduleName, "PASS", seconds, ""


def format_summary(results: Sequence[Result]) -> Tuple[str, int]:
    """The summary text and the exit status (0: nothing failed; skips do not fail)."""
    lines = ["", "SurgicalReg2D3D self-tests in Slicer", "-" * 60]
    for name, status, seconds, detail in results:
        lines.append(f"{status:5s} {name:16s} {seconds:7.1f} s  {detail}".rstrip())
    counts = {s: sum(1 for r in results if r[1] == s) for s in ("PASS", "FAIL", "ERROR", "SKIP")}
    lines.append("-" * 60)
    lines.append(", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    failed = counts["FAIL"] + counts["ERROR"]
    if not results:
        lines.append("no self-test ran")
    return "\n".join(lines), (1 if failed or not results else 0)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the SurgicalReg2D3D self-tests in Slicer")
    parser.add_argument("--modules", default=",".join(MODULES),
                        help="comma-separated module names (default: all four)")
    parser.add_argument("--keep-open", action="store_true", help="do not quit Slicer")
    args, _unknown = parser.parse_known_args(argv)
    args.modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"--modules: unknown {unknown}; known: {list(MODULES)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    import slicer

    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = []
    for name in args.modules:
        print(f"running {name}Test ...", flush=True)
        slicer.mrmlScene.Clear(0)
        results.append(run_module_test(name))
    text, status = format_summary(results)
    print(text, flush=True)
    if not args.keep_open:
        slicer.util.exit(status)
    return status


if __name__ == "__main__":
    main()
