"""``surgreg us``: the USSliceReg command line.

``surgreg us register --volume VOL --sequence SEQ [--calibration XML] [--init INIT.json]
[--method lncc|sitk|...] [--temporal | --no-temporal] --out OUT.json``
    registers every usable frame of a PLUS tracked sequence to a 3D US volume. INIT/OUT:
    ``{"frames": [{"index": i, "image_to_reference": 4x4}, ...]}`` (pixel ``(col, row, 0,
    1)`` -> volume reference mm); OUT adds ``time_s``, ``similarity`` (masked LNCC),
    ``correction``, the start pose and ``quality`` (verdict ok / doubtful / failed,
    estimated error with interval, reasons, signals; see :mod:`quality`) per frame, and
    the skipped frames with their reasons. One warning line is printed per doubtful,
    failed or skipped frame.

``surgreg us bench [--holdout loo|alternate|none] [--max-mm 10] [--max-deg 10] ...``
    perturbs tracked poses, registers, prints mean/median errors and ms per frame for each
    method, writes ``us_bench.csv`` and ``us_bench.png`` (see :mod:`bench`). With ``deep`` /
    ``deep+lncc`` among ``--methods`` (or ``--ranges`` / ``--min-mm`` / ``--min-deg``) it
    runs :mod:`.learned.benchmark` instead (even-frame volume, odd frames, near and far
    starts) and writes ``us_deep_bench.json``.

``surgreg us train ...``
    trains a DeepRS2V model for one volume (:mod:`.learned.cli_train`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from SurgicalReg2D3DLib.checks import int_list as _int_list
from SurgicalReg2D3DLib.errors import InputError

from .methods import METHODS


def cmd_register(args: argparse.Namespace) -> int:
    from SurgicalReg2D3DLib.outputs import check_output, write_json_atomic  # noqa: PLC0415

    from .logic import load_inputs, read_init_json, register_tracked, summary_line  # noqa
    # checked before any reading or registering
    out = check_output(args.out, [args.volume, args.sequence, args.calibration, args.init],
                       "--out", create_folder=True)
    frames = _int_list(args.frames, "--frames")
    from SurgicalReg2D3DLib.device import parse_device  # noqa: PLC0415

    device = parse_device(args.device, "--device")   # default: the hub's choice / auto
    volume, seq, chain = load_inputs(args.volume, args.sequence, args.calibration)
    init = read_init_json(args.init) if args.init else None

    def progress(fraction, message):
        if not args.quiet:
            print(f"\r[{100 * fraction:5.1f}%] {message:60s}", end="", flush=True)

    options = None
    if args.method.startswith("deep"):
        options = {"model": args.model, "force": args.force}
    elif args.model:
        raise InputError(f"--model: only for --method deep / deep+lncc, not {args.method}")
    reg = register_tracked(volume, seq, chain, method=args.method, init=init,
                           temporal=args.temporal, frames=frames, progress=progress,
                           device=device, quality=not args.no_quality,
                           method_options=options)
    if not args.quiet:
        print()
    write_json_atomic(out, reg.to_json(), "--out", indent=1)
    for line in reg.warnings():  # one line per doubtful / failed / skipped frame
        print(line, file=sys.stderr)
    print(summary_line(reg))
    print(f"written {out}")
    failed = reg.failed_indices()
    if failed:
        print(f"surgreg: {len(failed)} of {len(reg.results)} frames failed (verdict "
              f"'failed' in {out.name}): {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_bench_deep(args: argparse.Namespace) -> int:
    """``bench`` with a learned method or start ranges: :mod:`.learned.benchmark` (volume
    from the even frames, odd frames registered, every method on the same starts)."""
    from .learned.benchmark import RANGES, run_deep_bench, summary_markdown  # noqa: PLC0415

    if args.holdout == "none" or args.volume:
        raise InputError("--holdout: the learned benchmark reconstructs its volume from the "
                         "even frames (a model is trained per volume); --holdout none / "
                         "--volume are not available with it")
    if args.min_mm or args.min_deg:
        ranges = {"custom": (args.min_mm, args.max_mm, args.min_deg, args.max_deg)}
    else:
        ranges = {r: RANGES[r] for r in (args.ranges or ["near", "far"])}
    seeds = _int_list(args.seeds, "--seeds") or [args.seed]
    result = run_deep_bench(methods=args.methods, ranges=ranges, seeds=seeds,
                            frames=_int_list(args.frames, "--frames"), model=args.model,
                            force=args.force, sequence_path=args.sequence,
                            calibration_path=args.calibration, verbose=True)
    print("volume from the even frames; odd (held-out) frames registered; skipped (true "
          f"plane outside the volume's data): {sorted(result['skipped_uncovered_frames'])}")
    print(summary_markdown(result))
    from SurgicalReg2D3DLib.outputs import write_json_atomic  # noqa: PLC0415

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "us_deep_bench.json", result, "--out-dir", indent=1)
    print(f"written {out / 'us_deep_bench.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from SurgicalReg2D3DLib.outputs import check_output_dir  # noqa: PLC0415

    from .bench import run_bench  # noqa: PLC0415

    check_output_dir(args.out_dir, [args.sequence, args.calibration, args.volume],
                     "--out-dir")
    if any(m.startswith("deep") for m in args.methods) or args.min_mm or args.min_deg \
            or args.ranges:
        return cmd_bench_deep(args)

    frames = _int_list(args.frames, "--frames")
    summary = run_bench(sequence_path=args.sequence, calibration_path=args.calibration,
                        volume_path=args.volume, holdout=args.holdout, frames=frames,
                        max_mm=args.max_mm, max_deg=args.max_deg, seed=args.seed,
                        seeds=_int_list(args.seeds, "--seeds"), methods=args.methods,
                        out_dir=args.out_dir, repeats=args.repeats, verbose=True)
    if summary.get("kernel_warmup_s") is not None:
        print(f"first use: numba kernels compiled / loaded in {summary['kernel_warmup_s']:.2f} s "
              "before the first frame (not in the per-frame times below)")
    print(f"hold-out: {summary['holdout']}; starts up to {args.max_mm} mm / {args.max_deg} deg "
          f"(seeds {summary['seeds']}); "
          f"start error mean {summary['start']['mean_translation_mm']:.2f} mm / "
          f"{summary['start']['mean_rotation_deg']:.2f} deg")
    if summary["skipped_uncovered_frames"]:
        print("skipped (true plane outside the volume's data): frames "
              f"{sorted(summary['skipped_uncovered_frames'])}")
    for m, s in summary["methods"].items():
        print(f"{m:6s} frames {s['frames']:3d}  translation mean {s['mean_translation_mm']:.2f} "
              f"median {s['median_translation_mm']:.2f} mm  rotation mean "
              f"{s['mean_rotation_deg']:.2f} median {s['median_rotation_deg']:.2f} deg  "
              f"{s['mean_ms_per_frame']:.0f} ms/frame (median of {args.repeats} calls per frame)")
    for m, sp in summary.get("speedups_vs_sitk", {}).items():
        print(f"{m} is {sp['means']:.1f}x faster than the SimpleITK baseline (same run)")
    print(f"written {Path(args.out_dir) / 'us_bench.csv'}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``us`` with ``register`` and ``bench`` to the ``surgreg`` parser."""
    us = subparsers.add_parser("us", help="USSliceReg: 2D ultrasound frames to a 3D US volume")
    sub = us.add_subparsers(dest="us_command", metavar="COMMAND")
    us.set_defaults(func=lambda args: (us.print_help(), 2)[1])

    reg = sub.add_parser("register", help="register a tracked sequence to a volume")
    reg.add_argument("--volume", required=True, help="3D US volume (.mha/.nrrd, PLUS reference frame)")
    reg.add_argument("--sequence", required=True, help="PLUS tracked sequence (.igs.mha, .igs.nrrd, .seq.nrrd)")
    reg.add_argument("--calibration", help="PLUS device-set XML with the Image->Probe transform")
    reg.add_argument("--init", help="INIT.json start poses (default: the tracked chain)")
    reg.add_argument("--method", default="lncc", choices=sorted(METHODS),
                     help="registration method (default lncc)")
    group = reg.add_mutually_exclusive_group()
    group.add_argument("--temporal", dest="temporal", action="store_true", default=None,
                       help="start each frame from the previous correction (default without --init)")
    group.add_argument("--no-temporal", dest="temporal", action="store_false",
                       help="each frame starts from its own pose (default with --init)")
    reg.add_argument("--model", help="deep / deep+lncc: DeepRS2V model file (default: the "
                     "bundled model trained for this volume)")
    reg.add_argument("--force", action="store_true",
                     help="use a model trained for another volume")
    reg.add_argument("--frames", help="comma-separated frame numbers (default all usable)")
    reg.add_argument("--out", required=True, help="OUT.json")
    reg.add_argument("--device", default=None,
                     help="torch device: cpu, cuda, cuda:N, mps or auto (default: "
                          "SURGREG_DEVICE, else the first CUDA GPU when available, else CPU; "
                          "the compiled lncc kernels run on the CPU only)")
    reg.add_argument("--quiet", action="store_true")
    reg.add_argument("--no-quality", action="store_true",
                     help="skip the per-frame trust value, retries and restarts (faster; "
                          "frames are then never flagged)")
    reg.set_defaults(func=cmd_register)

    bench = sub.add_parser("bench", help="accuracy/speed benchmark with perturbed starts")
    bench.add_argument("--sequence", help="default: the shipped spine phantom sweep")
    bench.add_argument("--calibration", help="default: the shipped spine phantom XML")
    bench.add_argument("--volume", help="volume for --holdout none (default: PLUS's reconstruction)")
    bench.add_argument("--holdout", default="loo", choices=["loo", "alternate", "none"],
                       help="loo: volume rebuilt without each test frame (default)")
    bench.add_argument("--frames", help="comma-separated test frames (default: interior frames)")
    bench.add_argument("--max-mm", type=float, default=10.0)
    bench.add_argument("--max-deg", type=float, default=10.0)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--seeds", help="comma-separated start seeds, one start per frame and "
                       "seed, results pooled (default: --seed only)")
    bench.add_argument("--methods", nargs="+", default=["lncc", "sitk"],
                       choices=sorted(METHODS) + ["lncc:numba", "lncc:torch"],
                       help="lncc:torch / lncc:numba: the LNCC method on one backend "
                            "(lncc: the default, compiled kernels on a CPU)")
    bench.add_argument("--model", help="deep / deep+lncc: DeepRS2V model file (default: the "
                       "bundled model of the volume)")
    bench.add_argument("--force", action="store_true",
                       help="use a model trained for another volume")
    bench.add_argument("--min-mm", type=float, default=0.0,
                       help="starts move the fan centre by --min-mm..--max-mm (learned bench)")
    bench.add_argument("--min-deg", type=float, default=0.0,
                       help="starts turn by --min-deg..--max-deg (learned bench)")
    bench.add_argument("--ranges", nargs="+", choices=["near", "far"],
                       help="named start ranges: near (<= 10 mm / 10 deg), far (10-20 mm / "
                            "10-20 deg); default with a deep method: both")
    bench.add_argument("--repeats", type=int, default=3,
                       help="timed calls per frame and method (median kept; default 3)")
    bench.add_argument("--out-dir", default="us-bench")
    bench.set_defaults(func=cmd_bench)

    from .learned.cli_train import add_train_parser  # noqa: PLC0415  (DeepRS2V training)

    add_train_parser(sub)
