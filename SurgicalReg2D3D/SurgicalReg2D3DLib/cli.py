"""The ``surgreg`` command line.

``surgreg info``                 versions, compute device and bundled models
``surgreg demo --out DIR``       each module's demo on the bundled sample data: pictures
                                 and a metrics report (``report.json``, ``report.md``)
``surgreg fluoro|laparo|us ...`` the registration modules' own commands; each module adds
                                 its sub-command through ``<Module>Lib.cli.register_cli``.

The commands run the same Qt-free logic as the Slicer modules, on a standalone MRML scene.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import __version__
from .errors import SurgRegError

# Module name -> (command-line name, Lib package). The order is the order of the demo.
MODULES = {
    "FluoroReg": ("fluoro", "FluoroRegLib"),
    "LiverLaparoReg": ("laparo", "LiverLaparoRegLib"),
    "USSliceReg": ("us", "USSliceRegLib"),
}


def _has_submodule(package: str, name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:
        return False


def _versions() -> Dict[str, str]:
    versions = {"surgreg": __version__, "python": platform.python_version()}
    for label, module in [("numpy", "numpy"), ("torch", "torch"), ("SimpleITK", "SimpleITK"),
                          ("opencv", "cv2"), ("pydicom", "pydicom"), ("vtk", "vtk"),
                          ("numba", "numba")]:
        try:
            versions[label] = getattr(importlib.import_module(module), "__version__", "?")
        except ImportError:
            versions[label] = "not installed"
    try:
        from importlib.metadata import version  # noqa: PLC0415

        versions["slicer-core"] = version("slicer-core")
    except Exception:  # noqa: BLE001 - metadata missing means "not installed"
        versions["slicer-core"] = "not installed"
    return versions


def info_dict() -> dict:
    """What ``surgreg info`` prints, as a dictionary."""
    from . import device, models  # noqa: PLC0415

    return {
        "versions": _versions(),
        "device": device.describe_device(),
        "models": [m.to_dict() if hasattr(m, "to_dict") else vars(m) for m in models.list_models()],
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = info_dict()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print("SlicerSurgicalReg2D3D")
    for key, value in info["versions"].items():
        print(f"  {key:12s} {value}")
    print("Device")
    for key, value in info["device"].items():
        if key not in info["versions"]:  # versions are listed above
            print(f"  {key:17s} {value}")
    print(f"Bundled models ({len(info['models'])})")
    for model in info["models"]:
        print(f"  {model.get('name')}  [{model.get('module')}]  {model.get('description', '')}")
    return 0


def run_demo(out_dir: Path, modules: Optional[List[str]] = None, quick: bool = False) -> dict:
    """Run every module's demo into ``out_dir/<module>/`` and write a combined report."""
    from .outputs import check_output_dir, write_json_atomic, write_text_atomic  # noqa: PLC0415

    out_dir = check_output_dir(out_dir, what="demo output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = modules or [cli_name for cli_name, _ in MODULES.values()]
    report: dict = {"surgreg": __version__, "quick": quick, "modules": {}}
    for module_name, (cli_name, package) in MODULES.items():
        if cli_name not in chosen:
            continue
        if not _has_submodule(package, "demo"):
            report["modules"][module_name] = {"status": "not available"}
            continue
        demo = importlib.import_module(f"{package}.demo")
        module_dir = out_dir / cli_name
        module_dir.mkdir(parents=True, exist_ok=True)
        print(f"[demo] {module_name} -> {module_dir}", flush=True)
        start = time.perf_counter()
        metrics = demo.run_demo(module_dir, quick=quick)
        report["modules"][module_name] = {
            "status": "ok",
            "seconds": round(time.perf_counter() - start, 2),
            "metrics": metrics,
            "files": sorted(str(p.relative_to(out_dir)) for p in module_dir.rglob("*") if p.is_file()),
        }
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str),
                      "demo report")
    write_text_atomic(out_dir / "report.md", _report_markdown(report), "demo report")
    return report


def _report_markdown(report: dict) -> str:
    lines = [f"# SlicerSurgicalReg2D3D demo report (version {report['surgreg']})", ""]
    if "FluoroReg" in report["modules"]:
        lines.append("All X-ray images in the FluoroReg part are simulated from a real CT (synthetic).")
        lines.append("")
    for module_name, entry in report["modules"].items():
        lines.append(f"## {module_name}")
        if entry.get("status") != "ok":
            lines.append(f"status: {entry.get('status')}")
            lines.append("")
            continue
        lines.append(f"run time: {entry['seconds']} s")
        lines.append("")
        lines.append("| metric | value |")
        lines.append("|---|---|")
        for key, value in _flatten(entry.get("metrics") or {}).items():
            lines.append(f"| {key} | {value} |")
        lines.append("")
        pictures = [f for f in entry.get("files", []) if f.endswith(".png")]
        for picture in pictures:
            lines.append(f"![{picture}]({picture})")
        lines.append("")
    return "\n".join(lines)


def _flatten(metrics: dict, prefix: str = "") -> Dict[str, object]:
    flat: Dict[str, object] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, float):
            flat[name] = f"{value:.4g}"
        elif isinstance(value, (list, tuple)) and len(value) > 8:
            flat[name] = f"[{len(value)} values]"
        else:
            flat[name] = value
    return flat


def cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo(Path(args.out), modules=args.modules, quick=args.quick)
    print(f"[demo] report written to {Path(args.out) / 'report.md'}")
    failed = [m for m, e in report["modules"].items() if e.get("status") != "ok"]
    if failed:
        print(f"[demo] not available: {', '.join(failed)}")
    return 0


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``surgreg`` parser. ``only``: the command-line name of one module (``fluoro``,
    ``laparo``, ``us``): add only that module's sub-commands, so that a command of one
    module does not import the others (their imports cost seconds at start-up)."""
    parser = argparse.ArgumentParser(
        prog="surgreg",
        description="Intraoperative 2D/3D registration (SlicerSurgicalReg2D3D) outside Slicer.")
    parser.add_argument("--version", action="version", version=f"surgreg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = subparsers.add_parser("info", help="versions, compute device and bundled models")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=cmd_info)

    demo = subparsers.add_parser("demo", help="run the modules' demos on the bundled sample data")
    demo.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument("--quick", action="store_true", help="smaller, faster runs (used by tests)")
    demo.add_argument("--modules", nargs="+", choices=[c for c, _ in MODULES.values()],
                      help="only these modules")
    demo.set_defaults(func=cmd_demo)

    for _module_name, (_cli_name, package) in MODULES.items():
        if only is not None and _cli_name != only:
            continue
        if _has_submodule(package, "cli"):
            importlib.import_module(f"{package}.cli").register_cli(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    modules = [c for c, _ in MODULES.values()]
    # "surgreg fluoro ...": only the fluoro parser (help and errors still list its commands)
    parser = build_parser(words[0] if words and words[0] in modules else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SurgRegError as error:
        # Bad input: one clear line, no traceback.
        print(f"surgreg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: outputs are written atomically (SurgicalReg2D3DLib.outputs), so nothing
        # half-written is left; one line, the shell's usual exit status for SIGINT.
        print("surgreg: cancelled by user", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
