"""Resolve the Slicer dependency plan with ``pip install --dry-run`` for each Slicer release's
Python, and show that Slicer's numpy is kept (and that an unpinned install would replace it).

For each release in ``SurgicalReg2D3DLib.dependencies.SLICER_PYTHON`` (5.8: Python 3.9,
numpy 1.26.4; 5.10: Python 3.12, numpy 2.0.2) the plan for all modules with nothing
installed is made (pip path for torch, as without the PyTorch extension), and pip resolves

1. ``planned``: every step's requirements together, with the numpy pin the plan adds;
2. ``unpinned``: ``opencv-python-headless`` and ``numba`` as a user would type them.

``pip install --dry-run --ignore-installed --only-binary=:all: --python-version X.Y
--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --target <tmp> --report <json>``: nothing is installed; pip
reads wheel metadata from PyPI (network needed). Results go to
``benchmarks/results/slicer_dependency_plan.{json,md}``.

Usage: ``python benchmarks/slicer_dependency_plan.py [--no-torch]`` (``--no-torch`` skips
torch, whose metadata is the slowest to resolve).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SurgicalReg2D3D"))

from SurgicalReg2D3DLib.dependencies import SLICER_PYTHON, make_plan  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: Linux x86-64 wheels for glibc 2.28 (torch >= 2.7 is built for it) and 2.17.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")


def resolve(requirements, python, workdir: Path):
    """pip's resolution: {name: version}, or {"error": text}."""
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--quiet", "--only-binary=:all:", "--python-version", f"{python[0]}.{python[1]}",
           *[x for p in PLATFORMS for x in ("--platform", p)], "--target", str(workdir / "target"), "--report", str(report),
           *requirements]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["pip failed"])[-1]}, seconds
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in data["install"]}, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-torch", action="store_true", help="leave torch out")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md from the saved .json (no pip)")
    args = parser.parse_args(argv)
    if args.render_only:
        rows = json.loads((RESULTS / "slicer_dependency_plan.json").read_text())
        (RESULTS / "slicer_dependency_plan.md").write_text(render_markdown(rows, args.no_torch))
        return 0
    rows = []
    for release, profile in SLICER_PYTHON.items():
        plan = make_plan(["FluoroReg", "LiverLaparoReg", "USSliceReg"], {}, profile.python,
                         profile.numpy, pytorch_utils=False)
        planned = []
        for step in plan.steps:
            if args.no_torch and step.import_name == "torch":
                continue
            planned += [r for r in step.requirements if r not in planned]
        cases = {"planned": planned, "unpinned": ["opencv-python-headless", "numba"]}
        for case, requirements in cases.items():
            with tempfile.TemporaryDirectory() as tmp:
                resolved, seconds = resolve(requirements, profile.python, Path(tmp))
            numpy_after = resolved.get("numpy")
            kept = "error" not in resolved and (numpy_after in (None, profile.numpy))
            rows.append({"slicer": release, "python": "%d.%d" % profile.python,
                         "slicer_numpy": profile.numpy, "case": case,
                         "requirements": requirements, "resolved": resolved,
                         "numpy_kept": kept, "seconds": round(seconds, 1)})
            print(f"Slicer {release} (Python {profile.python[0]}.{profile.python[1]}, numpy "
                  f"{profile.numpy}) {case}: {resolved} -> numpy kept: {kept}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "slicer_dependency_plan.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "slicer_dependency_plan.md").write_text(render_markdown(rows, args.no_torch))
    planned_ok = all(r["numpy_kept"] for r in rows if r["case"] == "planned")
    return 0 if planned_ok else 1


def render_markdown(rows, no_torch: bool = False) -> str:
    lines = ["# Slicer dependency plan, resolved with pip --dry-run", "",
             f"`python benchmarks/slicer_dependency_plan.py{' --no-torch' if no_torch else ''}`"
             f" on {time.strftime('%Y-%m-%d')} (pip {_pip_version()}, platforms {', '.join(PLATFORMS)}, "
             "wheels only, PyPI as of that day). `planned`: the requirements of "
             "`SurgicalReg2D3DLib.dependencies.make_plan` (numpy pinned to Slicer's); "
             "`unpinned`: `opencv-python-headless numba` as typed by hand.", "",
             "| Slicer | Python | Slicer's numpy | case | requirements | resolved | numpy kept |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        resolved = r["resolved"].get("error") or ", ".join(
            f"{k} {v}" for k, v in sorted(r["resolved"].items()) if not k.startswith("nvidia"))
        lines.append(f"| {r['slicer']} | {r['python']} | {r['slicer_numpy']} | {r['case']} | "
                     f"`{' '.join(r['requirements'])}` | {resolved} | "
                     f"{'yes' if r['numpy_kept'] else '**no**'} |")
    lines += ["", "Reading the table:", "",
              "- `pip --target` does not see the packages Slicer already has, so every row "
              "resolves numpy too. In a real Slicer, pip keeps an installed numpy that "
              "satisfies all requirements. The Slicer 5.8 `unpinned` row is a real "
              "replacement: opencv-python-headless 4.12 and later require numpy >= 2, which "
              "1.26.4 does not satisfy, so pip would install numpy 2.0.2 over Slicer's. The "
              "Slicer 5.10 `unpinned` row overstates: numpy 2.0.2 satisfies those "
              "requirements, and pip would keep it. The plan pins numpy in every pip step, "
              "so neither case can happen.",
              "- `nvidia-*` packages (torch's CUDA runtime on Linux) are left out of the "
              "resolved column.",
              "- torch comes from the PyTorch extension (PyTorchUtils) when it is installed; "
              "the pip row shows the fallback."]
    return "\n".join(lines) + "\n"


def _pip_version() -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    return out.stdout.split()[1] if out.returncode == 0 else "?"


if __name__ == "__main__":
    sys.exit(main())
