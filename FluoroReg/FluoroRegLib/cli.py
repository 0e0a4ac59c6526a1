"""``surgreg fluoro ...``: CT-to-X-ray registration from the command line.

``surgreg fluoro register --ct CT --xray IMG [--xray IMG ...] --geometry G.json
[--geometry G2.json ...] [--init INIT.json] [--method ncc|gradncc|ppc|...] --out OUT.json``
    Several ``--xray`` = multi-view; one ``--geometry`` per ``--xray`` in the same order
    (may be left out for DICOM images that carry the geometry). ``INIT.json``/``OUT.json``:
    ``{"ct_to_camera": 4x4}`` (CT RAS mm -> camera mm) or, multi-view,
    ``{"views": [{"ct_to_camera": 4x4}, ...]}``; OUT.json adds ``similarity``, ``time_s``,
    ``iterations`` and ``method``.

``surgreg fluoro simulate --ct CT --out DIR [--cases N] [--views AP,LAT] ...``
    SYNTHETIC evaluation cases: random poses, start offsets with an mTRE in a range,
    simulated X-ray effects; one folder per case plus ``cases.json``.

``surgreg fluoro bench --cases DIR [--methods ncc,gradncc] [--out DIR]``
    Runs methods on simulated cases; prints SMSR and median/75th/95th percentile mTRE
    and the time per case; writes ``bench.csv``, ``summary.json`` and plots.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import List

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, InputError


def _floats(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_register(args: argparse.Namespace) -> int:
    if getattr(args, "model", None):  # learned: regressor start + refinement
        from .learned.cli import cmd_register_model  # noqa: PLC0415

        return cmd_register_model(args)
    args.method = args.method or "ncc"
    import time  # noqa: PLC0415

    t_start = time.perf_counter()
    from .logic import available_methods, register_arrays  # noqa: PLC0415
    from .simulate import read_ct  # noqa: PLC0415
    from .xray_io import read_pose_json, write_pose_json  # noqa: PLC0415

    from SurgicalReg2D3DLib.device import parse_device  # noqa: PLC0415
    from SurgicalReg2D3DLib.outputs import check_output  # noqa: PLC0415

    xrays = args.xray
    geometries = args.geometry or []
    # everything that can be checked before reading and registering
    out = check_output(args.out, [args.ct, *xrays, *geometries, args.init], "--out",
                       create_folder=True)
    device = parse_device(args.device, "--device")   # default: the hub's choice / auto
    if geometries and len(geometries) != len(xrays):
        raise InputError(f"X-ray geometry: {len(xrays)} X-ray images but {len(geometries)} "
                         "geometries; give one --geometry per --xray")
    if args.method not in available_methods():
        raise InputError(f"method: expected one of {available_methods()}, got {args.method!r}")
    t_read = time.perf_counter()
    hu, ijk_to_ras = read_ct(args.ct, allow_uneven_slices=args.allow_uneven_slices)
    from .xray_io import load_xrays  # noqa: PLC0415

    images, cameras = load_xrays(xrays, geometries, negative_log_raw=args.negative_log)
    init = read_pose_json(args.init) if args.init else None
    if init is not None and len(init) != len(xrays):
        raise InputError(f"initial pose: {len(xrays)} X-ray images but {len(init)} initial "
                         "ct_to_camera matrices in " + Path(args.init).name)
    from .preflight import method_options  # noqa: PLC0415

    opts = method_options(args)
    model = _quality_model(args, hu, ijk_to_ras, cameras, init, opts)
    t_register = time.perf_counter()
    result = register_arrays(hu, ijk_to_ras, images, cameras, init, method=args.method,
                             device=device, quality=not args.no_quality,
                             quality_model=model,
                             quality_polish=getattr(args, "quality_polish", None) or "flagged",
                             **opts)
    extra = {"similarity": result.similarity, "method": args.method,
             "time_s": round(result.time_s, 3), "iterations": len(result.history),
             "convergence": [h["loss"] for h in result.history]}
    if np.isfinite(getattr(result, "similarity_start", float("nan"))):
        extra["similarity_start"] = float(result.similarity_start)
    if result.metrics:  # e.g. the multi-view methods' view_disagreement_before/after_mm
        extra["metrics"] = {k: float(v) for k, v in result.metrics.items()}
    from .quality import result_quality_dict  # noqa: PLC0415

    extra.update(result_quality_dict(result))
    t_end = time.perf_counter()
    # where the command's time went (seconds, this process after its imports of the
    # hub; benchmarks/speed_suite.py --e2e adds the Python start and the first imports)
    extra["timing_s"] = {"imports": round(t_read - t_start, 3),
                         "read_inputs": round(t_register - t_read, 3),
                         "method": round(result.time_s, 3),
                         "checks_and_quality": round(t_end - t_register - result.time_s, 3)}
    write_pose_json(out, result.views_ct_to_camera, extra)
    _print_quality_warnings(result)
    quality = getattr(result, "quality", None)
    if quality is not None and quality.verdict in ("failed", "skipped"):
        import sys  # noqa: PLC0415

        print(f"surgreg: fluoro registration judged '{quality.verdict}' -> {out}",
              file=sys.stderr)
        return 1
    print(f"[fluoro] {args.method}: similarity {result.similarity:.4f} after "
          f"{len(result.history)} iterations in {result.time_s:.1f} s -> {args.out}")
    return 0


def _quality_model(args, hu, ijk_to_ras, cameras, init, opts):
    """``--calibrate-quality N``: a per-CT quality model from N simulated X-rays (cached)."""
    n = getattr(args, "calibrate_quality", 0) or 0
    if n <= 0 or args.no_quality:
        return None
    from .drr import DRRVolume  # noqa: PLC0415
    from .logic import default_initial_pose  # noqa: PLC0415
    from .quality import calibrate  # noqa: PLC0415

    volume = DRRVolume.from_hu(hu, ijk_to_ras, device=args.device)
    pose = init[0] if init is not None else default_initial_pose(volume, cameras[0])
    print(f"[fluoro] calibrating the quality estimate on {n} simulated X-rays of this CT "
          "(cached)", flush=True)
    method = args.method if args.method in ("ncc", "gradncc", "ppc") else "ncc"
    return calibrate(volume, cameras[0], pose, method=method, options=opts, n_cases=n)


def _print_quality_warnings(result) -> None:
    """One line per doubtful / failed item (the case, then each view of several)."""
    import sys  # noqa: PLC0415

    from SurgicalReg2D3DLib.quality import warning_line  # noqa: PLC0415

    q = getattr(result, "quality", None)
    if q is None:
        return
    line = warning_line("fluoro case", q)
    if line:
        print(line, file=sys.stderr)
    views = getattr(result, "view_qualities", [])
    if len(views) > 1:
        for k, vq in enumerate(views):
            line = warning_line(f"fluoro view {k + 1}", vq)
            if line:
                print(line, file=sys.stderr)


def cmd_simulate(args: argparse.Namespace) -> int:
    from .drr import DRRVolume  # noqa: PLC0415
    from .geometry import make_camera  # noqa: PLC0415
    from .simulate import (case_generators, downsample_ct, read_ct,  # noqa: PLC0415
                           sample_landmarks, simulate_case)
    from .xray_io import save_xray, write_pose_json  # noqa: PLC0415

    from SurgicalReg2D3DLib.outputs import check_output_dir  # noqa: PLC0415

    out = check_output_dir(args.out, [args.ct], "--out")
    hu, m = read_ct(args.ct)
    if args.downsample > 1:
        hu, m = downsample_ct(hu, m, args.downsample)
    volume = DRRVolume.from_hu(hu, m)
    if args.cases < 1:
        raise InputError(f"cases: must be >= 1, got {args.cases}")
    if not (0 <= args.mtre_min <= args.mtre_max):
        raise InputError(f"mtre range: expected 0 <= min <= max, got {args.mtre_min}, {args.mtre_max}")
    camera = make_camera(args.sdd, (args.spacing, args.spacing), (args.size, args.size))
    landmarks = sample_landmarks(hu, m, args.landmarks, seed=args.seed)
    views = [v.strip().upper() for v in args.views.split(",") if v.strip()]
    index = {"synthetic": True, "ct": str(Path(args.ct).resolve()),
             "downsample": args.downsample, "views": views, "seed": args.seed,
             "case_streams": "case c: SeedSequence(seed, spawn_key=(c,)) -> pose, noise",
             "cases": []}
    out.mkdir(parents=True, exist_ok=True)
    for c in range(args.cases):
        pose_rng, noise_rng = case_generators(args.seed, c)  # case c depends on (seed, c) only
        case = simulate_case(volume, camera, pose_rng, landmarks, views=views, noise_rng=noise_rng,
                             mtre_range_mm=(args.mtre_min, args.mtre_max),
                             rotation_range_deg=(args.rot_min, args.rot_max),
                             source_to_center_mm=args.distance,
                             effects={"photons": args.photons})
        folder = out / f"case_{c:03d}"
        folder.mkdir(exist_ok=True)
        files = []
        for k, (img, cam) in enumerate(zip(case.images, case.cameras)):
            save_xray(img, cam, folder / f"xray_{k}.nrrd", folder / f"geometry_{k}.json")
            files.append({"xray": f"xray_{k}.nrrd", "geometry": f"geometry_{k}.json"})
        write_pose_json(folder / "init.json", case.init_ct_to_camera)
        write_pose_json(folder / "truth.json", case.true_ct_to_camera)
        (folder / "landmarks.json").write_text(json.dumps(
            {"frame": "CT RAS mm", "points": case.landmarks_ras.tolist()}))
        index["cases"].append({"folder": folder.name, "views": files,
                               "initial_mtre_mm": case.initial_mtre_mm})
        print(f"[fluoro] case {c}: initial mTRE {case.initial_mtre_mm:.1f} mm (synthetic)")
    (out / "cases.json").write_text(json.dumps(index, indent=2))
    return 0


def run_bench(cases_dir: Path, methods: List[str], out_dir: Path, n_views: int = 0,
              threshold_mm: float = 1.0, max_cases: int = 0, options: dict = None,
              ct_path=None, progress_print: bool = True) -> dict:
    """Run ``methods`` on the cases of ``surgreg fluoro simulate``; returns the summary."""
    from SurgicalReg2D3DLib.metrics import summarize  # noqa: PLC0415

    from .logic import register_arrays  # noqa: PLC0415
    from .simulate import downsample_ct, read_ct  # noqa: PLC0415
    from .xray_io import load_xray, read_pose_json  # noqa: PLC0415

    index_path = Path(cases_dir) / "cases.json"
    if not index_path.is_file():
        raise FileReadError(f"cases: no cases.json in {cases_dir} (run 'surgreg fluoro simulate')")
    index = json.loads(index_path.read_text())
    hu, m = read_ct(ct_path or index["ct"])
    if index.get("downsample", 1) > 1:
        hu, m = downsample_ct(hu, m, index["downsample"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from .drr_kernels import warm_up  # noqa: PLC0415

    warm = warm_up()  # first use (numba compile / cache load) measured apart from the cases
    rows = []
    cases = index["cases"][: max_cases or None]
    for method in methods:
        for case in cases:
            folder = Path(cases_dir) / case["folder"]
            k_views = len(case["views"]) if n_views <= 0 else min(n_views, len(case["views"]))
            imgs, cams = [], []
            for v in case["views"][:k_views]:
                img, cam = load_xray(folder / v["xray"], folder / v["geometry"])
                imgs.append(img)
                cams.append(cam)
            init = read_pose_json(folder / "init.json")[:k_views]
            truth = read_pose_json(folder / "truth.json", "true pose")[0]
            lm = np.array(json.loads((folder / "landmarks.json").read_text())["points"])
            res = register_arrays(hu, m, imgs, cams, init, method=method, landmarks_ras=lm,
                                  true_ct_to_camera=truth, **(options or {}))
            row = {"method": method, "views": k_views, "case": case["folder"],
                   "initial_mtre_mm": case["initial_mtre_mm"], "time_s": res.time_s,
                   "similarity": res.similarity, **res.metrics}
            rows.append(row)
            if progress_print:
                print(f"[fluoro bench] {method} {k_views}-view {case['folder']}: mTRE "
                      f"{case['initial_mtre_mm']:.1f} -> {res.metrics['mtre_mm']:.2f} mm "
                      f"({res.time_s:.1f} s)", flush=True)
    with open(out_dir / "bench.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    summary = {"synthetic": True, "threshold_mm": threshold_mm,
               "metric_note": "mtre = 3D landmark error (primary); mpe = mean projection "
                              "error on the detector; mrpd = mean re-projection distance; "
                              "dgeo = double geodesic (radius SDD/2)", "methods": {},
               "kernel_warmup_s": round(warm["seconds"], 3),
               "timing_note": "time_s per case excludes the first-use compile / cache load "
                              "of the DRR kernels (kernel_warmup_s, before the first case)"}
    for method in methods:
        sel = [r for r in rows if r["method"] == method]
        s = summarize([r["mtre_mm"] for r in sel], threshold=threshold_mm)
        s.update(time_s=float(np.mean([r["time_s"] for r in sel])),
                 time_s_median=float(np.median([r["time_s"] for r in sel])),
                 time_s_range=[float(min(r["time_s"] for r in sel)),
                               float(max(r["time_s"] for r in sel))],
                 mpe_mm_median=float(np.median([r["mpe_mm"] for r in sel])),
                 mrpd_mm_median=float(np.median([r["mrpd_mm"] for r in sel])),
                 dgeo_mm_median=float(np.median([r["dgeo_mm"] for r in sel])))
        summary["methods"][method] = s
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _bench_plots(rows, methods, out_dir)
    return summary


def _bench_plots(rows, methods, out_dir: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    data = [[r["mtre_mm"] for r in rows if r["method"] == m] for m in methods]
    axes[0].boxplot(data)
    axes[0].set_xticks(range(1, len(methods) + 1), methods)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("final mTRE (mm, 3D)")
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        axes[1].scatter([r["initial_mtre_mm"] for r in sel], [r["mtre_mm"] for r in sel], label=m, s=12)
    axes[1].set_xlabel("initial mTRE (mm)")
    axes[1].set_ylabel("final mTRE (mm)")
    axes[1].set_yscale("log")
    axes[1].legend()
    fig.suptitle("FluoroReg on simulated (synthetic) X-rays")
    fig.tight_layout()
    fig.savefig(out_dir / "bench.png", dpi=100)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    if getattr(args, "model", None):  # learned benchmark from the nominal view
        from .learned.cli import cmd_bench_model  # noqa: PLC0415

        return cmd_bench_model(args)
    if not args.cases:
        raise InputError("cases: --cases is required (a folder made by 'surgreg fluoro simulate')")
    args.methods = args.methods or "ncc,gradncc"
    from SurgicalReg2D3DLib.outputs import check_output_dir  # noqa: PLC0415

    from .preflight import method_options  # noqa: PLC0415

    check_output_dir(args.out, [args.cases], "--out")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    summary = run_bench(Path(args.cases), methods, Path(args.out), n_views=args.views,
                        threshold_mm=args.success_mm, max_cases=args.max_cases,
                        options=method_options(args))
    print(f"\nSMSR = share of cases with 3D mTRE < {args.success_mm} mm (synthetic cases)")
    print(f"{'method':16s} {'n':>4s} {'SMSR%':>7s} {'median':>8s} {'p75':>8s} {'p95':>8s} "
          f"{'mPE mm':>8s} {'mRPD mm':>8s} {'dgeo mm':>8s} {'s/case':>7s}")
    for m, s in summary["methods"].items():
        print(f"{m:16s} {s['n']:4d} {s['smsr']:7.1f} {s['median']:8.3f} {s['p75']:8.3f} "
              f"{s['p95']:8.3f} {s['mpe_mm_median']:8.3f} {s['mrpd_mm_median']:8.3f} "
              f"{s['dgeo_mm_median']:8.3f} {s['time_s']:7.2f}")
    return 0


def _add_method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", type=_floats, help="pyramid downsampling factors, e.g. 4,2,1")
    p.add_argument("--iterations", type=int, help="iterations per pyramid level")
    p.add_argument("--n-samples", dest="n_samples", type=int, help="DRR samples per ray")
    p.add_argument("--drr-method", dest="drr_method", choices=["trilinear", "siddon"])


def register_cli(subparsers) -> None:
    """Add ``fluoro`` with ``register``, ``simulate`` and ``bench`` to ``surgreg``."""
    fluoro = subparsers.add_parser("fluoro", help="CT to X-ray registration (FluoroReg)")
    sub = fluoro.add_subparsers(dest="fluoro_command", metavar="COMMAND")
    fluoro.set_defaults(func=lambda args: (fluoro.print_help(), 2)[1])

    reg = sub.add_parser("register", help="register a CT to one or more X-ray images")
    reg.add_argument("--ct", required=True, help="CT volume file (NIfTI/NRRD/MHA) or DICOM folder")
    reg.add_argument("--xray", required=True, action="append",
                     help="X-ray image (DICOM, NRRD, MHA, PNG...); repeat for multi-view")
    reg.add_argument("--geometry", action="append",
                     help="geometry JSON per --xray (optional for DICOM with geometry tags)")
    reg.add_argument("--init", help="INIT.json with the initial ct_to_camera (per view)")
    reg.add_argument("--method", default="ncc", help="ncc, gradncc, ncc-adam, gradncc-adam, ppc (best two-view in benchmarks/results/fluoro_accuracy.md), ppc+gradncc, ppc+ncc, ncc-multiview, gradncc-multiview")
    reg.add_argument("--out", required=True, help="OUT.json with the result")
    reg.add_argument("--negative-log", action="store_true",
                     help="the images are raw detector counts: apply -log(I / I0)")
    reg.add_argument("--device", default=None,
                     help="torch device: cpu, cuda, cuda:N, mps or auto (default: "
                          "SURGREG_DEVICE, else the first CUDA GPU when available, else CPU)")
    reg.add_argument("--allow-uneven-slices", dest="allow_uneven_slices", action="store_true",
                     help="load a DICOM CT series with a missing or unevenly spaced slice "
                          "anyway (refused by default)")
    reg.add_argument("--no-quality", dest="no_quality", action="store_true",
                     help="skip the calibrated quality value (and the retry of a failed case); "
                          "a result that ended worse than it started is still 'failed'")
    reg.add_argument("--calibrate-quality", dest="calibrate_quality", type=int, default=0,
                     metavar="N", help="calibrate the quality estimate on N simulated X-rays "
                     "of this CT first (cached per CT and geometry; e.g. 12)")
    reg.add_argument("--quality-polish", dest="quality_polish", default=None,
                     choices=("flagged", "all", "off"),
                     help="detector-model polish (intensity-domain blur) of results the quality "
                          "does not judge 'ok' (flagged, the default), of every result (all, "
                          "the default with --model), or none (off: for X-rays that are not a "
                          "linear function of -log intensity, e.g. gamma-corrected)")
    _add_method_options(reg)
    reg.set_defaults(func=cmd_register)

    sim = sub.add_parser("simulate", help="make simulated (synthetic) evaluation cases from a CT")
    sim.add_argument("--ct", required=True)
    sim.add_argument("--out", required=True, help="output folder")
    sim.add_argument("--cases", type=int, default=10)
    sim.add_argument("--views", default="AP", help="AP, LAT or AP,LAT (multi-view)")
    sim.add_argument("--size", type=int, default=128, help="image size (pixels, square)")
    sim.add_argument("--spacing", type=float, default=2.0, help="detector pixel spacing (mm)")
    sim.add_argument("--sdd", type=float, default=1000.0, help="source-to-detector distance (mm)")
    sim.add_argument("--distance", type=float, default=600.0, help="source-to-CT-centre distance (mm)")
    sim.add_argument("--mtre-min", dest="mtre_min", type=float, default=0.0)
    sim.add_argument("--mtre-max", dest="mtre_max", type=float, default=45.0)
    sim.add_argument("--rot-min", dest="rot_min", type=float, default=5.0, help="start rotation (deg)")
    sim.add_argument("--rot-max", dest="rot_max", type=float, default=15.0)
    sim.add_argument("--photons", type=float, default=1e4, help="unattenuated photons per pixel")
    sim.add_argument("--landmarks", type=int, default=20, help="landmarks for mTRE")
    sim.add_argument("--downsample", type=int, default=1, help="CT block-average factor")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="run methods on simulated cases: SMSR, mTRE, time")
    bench.add_argument("--cases", help="folder made by 'fluoro simulate'")
    bench.add_argument("--methods", default="ncc,gradncc")
    bench.add_argument("--views", type=int, default=0, help="views to use (0 = all)")
    bench.add_argument("--out", default="fluoro-bench")
    bench.add_argument("--success-mm", dest="success_mm", type=float, default=1.0,
                       help="mTRE threshold of a successful registration (SMSR)")
    bench.add_argument("--max-cases", dest="max_cases", type=int, default=0)
    _add_method_options(bench)
    bench.set_defaults(func=cmd_bench)

    from .learned.cli import add_bench_options, add_register_options, add_train_parser  # noqa: PLC0415

    add_register_options(reg)
    add_bench_options(bench)
    add_train_parser(sub)
