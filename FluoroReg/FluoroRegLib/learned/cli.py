"""Command-line parts of the learned FluoroReg methods (hooked into ``surgreg fluoro``).

``surgreg fluoro train --ct CT --geometry G.json --center NOMINAL.json
--rotation-range-deg RX RY RZ --translation-range-mm TX TY TZ [--kind regressor|ppc|all]
[--max-minutes M] [--max-steps N] [--seed S] [--device D] [--resume CKPT] --out MODEL.pt``
    Trains a model for this CT and detector (see :mod:`.train`; ``--kind ppc``: the
    learned PPC update, :mod:`.ppc_train`; ``--kind all``: both, the PPC update to
    ``<out stem>.ppc.pt``). ``NOMINAL.json`` is ``{"ct_to_camera": 4x4}``, the pose of
    the nominal view. Every kind trains under ``torchrun`` (DistributedDataParallel).

``surgreg fluoro register ... --model MODEL.pt [--model PPC.pt | --model SIM.pt]
[--ppc-updates N] [--nominal NOMINAL.json] [--force]``
    Without ``--init``: the regressor gives the start, ``--method`` refines (default
    ``ppc``; ``regressor`` = no refinement); with a similarity model (``--kind
    similarity``) LM steps on the learned features come first (:mod:`.sim_register`). ``--nominal`` (``{"views": [...]}``) gives
    the C-arm motion between views for multi-view. ``--init`` skips the regressor.
    With a ``ppc`` model: start (``--init`` > regressor > the model's nominal view) ->
    N learned PPC updates -> ``--method`` (``learned-ppc``: none).

``surgreg fluoro bench --model MODEL.pt --ct CT [--n-cases N] [--views 1|2]``
    The learned benchmark from the nominal view (:mod:`.bench`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from SurgicalReg2D3DLib.errors import InputError


def add_train_parser(sub) -> None:
    """Add ``train`` to the ``surgreg fluoro`` subcommands."""
    tr = sub.add_parser("train", help="train a learned model (pose regressor) for one CT and detector")
    tr.add_argument("--ct", required=True, help="CT volume file (NIfTI/NRRD/MHA) or DICOM folder")
    tr.add_argument("--geometry", required=True, help="geometry JSON of the detector")
    tr.add_argument("--center", required=True,
                    help='NOMINAL.json {"ct_to_camera": 4x4}: the pose of the nominal view')
    tr.add_argument("--rotation-range-deg", dest="rotation_range_deg", type=float, nargs=3,
                    required=True, metavar=("RX", "RY", "RZ"),
                    help="half-widths of the rotation range (camera axes, deg)")
    tr.add_argument("--translation-range-mm", dest="translation_range_mm", type=float, nargs=3,
                    required=True, metavar=("TX", "TY", "TZ"),
                    help="half-widths of the translation range (camera axes, mm)")
    tr.add_argument("--kind", default="regressor",
                    help="regressor, ppc (the learned PPC update), all (both: the regressor "
                         "to --out, the PPC update to <out stem>.ppc.pt, half the time each), "
                         "or similarity (spherical deep similarity for the LM refinement)")
    tr.add_argument("--distance", default=None, choices=["se3", "so4"],
                    help="similarity: geodesic distance whose gradient it learns (default se3)")
    tr.add_argument("--euclidean", action="store_true",
                    help="similarity: Euclidean features instead of the hypersphere (ablation)")
    tr.add_argument("--lm-steps", dest="lm_steps", type=int, default=None,
                    help="similarity: LM steps at registration (default 6)")
    tr.add_argument("--refine-range", dest="refine_range", type=float, nargs=2, default=None,
                    metavar=("DEG", "MM"),
                    help="similarity: errors it learns to correct, +-DEG about each camera "
                         "axis and +-MM along each (default 6 15)")
    tr.add_argument("--max-minutes", dest="max_minutes", type=float, default=30.0)
    tr.add_argument("--max-steps", dest="max_steps", type=int, default=None)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default=None, help="cpu, cuda, cuda:N (a missing GPU: CPU + warning)")
    tr.add_argument("--resume", default=None, help="checkpoint to continue from (<out>.ckpt.pt)")
    tr.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                    help="default 32 (regressor), 8 (similarity: 7 DRRs per sample)")
    tr.add_argument("--image-size", dest="image_size", type=int, default=64)
    tr.add_argument("--width", type=int, default=16, help="channels of the first conv stage")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--ct-downsample", dest="ct_downsample", type=int, default=None)
    tr.add_argument("--n-samples", dest="n_samples", type=int, default=None)
    tr.add_argument("--checkpoint-every-s", dest="checkpoint_every_s", type=float, default=60.0)
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--save-replicas", dest="save_replicas", action="store_true",
                    help=argparse.SUPPRESS)
    tr.add_argument("--out", required=True, help="MODEL.pt")
    tr.set_defaults(func=cmd_train)


def train_command(args: argparse.Namespace) -> str:
    """The ``surgreg fluoro train`` command line equivalent to ``args`` (recorded in the model)."""
    parts = ["surgreg", "fluoro", "train", "--ct", args.ct, "--geometry", args.geometry,
             "--center", args.center, "--rotation-range-deg",
             *[f"{v:g}" for v in args.rotation_range_deg], "--translation-range-mm",
             *[f"{v:g}" for v in args.translation_range_mm], "--kind", args.kind,
             "--max-minutes", f"{args.max_minutes:g}", "--seed", str(args.seed)]
    for flag, key in (("--max-steps", "max_steps"), ("--device", "device"),
                      ("--resume", "resume"), ("--batch-size", "batch_size"),
                      ("--image-size", "image_size"), ("--width", "width"), ("--lr", "lr"),
                      ("--ct-downsample", "ct_downsample"), ("--n-samples", "n_samples"),
                      ("--threads", "threads"), ("--distance", "distance"),
                      ("--lm-steps", "lm_steps")):
        value = getattr(args, key, None)
        if value is not None:
            parts += [flag, str(value)]
    if getattr(args, "euclidean", False):
        parts.append("--euclidean")
    if getattr(args, "refine_range", None):
        parts += ["--refine-range", *[f"{v:g}" for v in args.refine_range]]
    parts += ["--out", args.out]
    return " ".join(shlex.quote(str(p)) for p in parts)


def _similarity_extra(args: argparse.Namespace) -> dict:
    extra = {}
    if args.distance:
        extra["distance"] = args.distance
    if args.euclidean:
        extra["spherical"] = False
    if args.lm_steps is not None:
        if args.lm_steps < 1:
            raise InputError(f"lm-steps: must be >= 1, got {args.lm_steps}")
        extra["lm_steps"] = int(args.lm_steps)
    if args.refine_range:
        extra["refine_rotation_deg"], extra["refine_translation_mm"] = map(float, args.refine_range)
    if extra and args.kind != "similarity":
        raise InputError("--distance / --euclidean / --lm-steps / --refine-range: only with "
                         "--kind similarity")
    return extra


def cmd_train(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from ..geometry import load_geometry  # noqa: PLC0415
    from ..simulate import read_ct  # noqa: PLC0415
    from ..xray_io import read_pose_json  # noqa: PLC0415
    from .train import TrainConfig, train_model  # noqa: PLC0415

    if args.max_minutes is None or not args.max_minutes > 0:
        raise InputError(f"max-minutes: must be > 0, got {args.max_minutes}")
    from SurgicalReg2D3DLib.outputs import check_output  # noqa: PLC0415

    # before any work: the model file must not overwrite an input
    check_output(args.out, [args.ct, args.geometry, args.center], "--out", create_folder=True)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    camera = load_geometry(args.geometry)
    nominal = read_pose_json(args.center, "nominal pose")
    if len(nominal) != 1:
        raise InputError(f"nominal pose: expected one ct_to_camera in {args.center}, got {len(nominal)}")
    hu, m = read_ct(args.ct)
    command = train_command(args)
    extra = _similarity_extra(args)
    batch = args.batch_size or (8 if args.kind == "similarity" else 32)
    cfg = TrainConfig(rotation_deg=args.rotation_range_deg, translation_mm=args.translation_range_mm,
                      kind=args.kind, max_minutes=args.max_minutes, max_steps=args.max_steps,
                      seed=args.seed, device=args.device, batch_size=batch, extra=extra,
                      image_size=args.image_size, width=args.width, lr=args.lr,
                      ct_downsample=args.ct_downsample, n_samples=args.n_samples,
                      checkpoint_every_s=args.checkpoint_every_s, command=command,
                      save_replicas=args.save_replicas)
    if args.kind in ("ppc", "all"):
        return _train_ppc_kinds(args, cfg, hu, m, camera, nominal[0])
    res = train_model(hu, m, camera, nominal[0], cfg, args.out, resume=args.resume,
                      log=lambda s: print(s, flush=True))
    va = res["training"]["val_after"]
    if res["kind"] == "similarity":
        print(f"[fluoro train] similarity model -> {args.out}: held-out corner error median "
              f"{va['start_corner_mm_median']:.1f} mm at the starts -> "
              f"{va['corner_mm_median']:.1f} mm after LM ({res['training']['steps']} steps, "
              f"{res['training']['elapsed_s'] / 60:.1f} min)")
        return 0
    print(f"[fluoro train] model -> {args.out}: held-out corner error median "
          f"{va['corner_mm_median']:.1f} mm, rotation median {va['rotation_deg_median']:.1f} deg "
          f"({res['training']['steps']} steps, {res['training']['elapsed_s'] / 60:.1f} min)")
    return 0


def ppc_out_path(out) -> Path:
    """Where ``--kind all --out M.pt`` writes the learned PPC update: ``M.ppc.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".ppc" + (out.suffix or ".pt"))


def _train_ppc_kinds(args, cfg, hu, m, camera, nominal) -> int:
    """``--kind ppc`` (the learned PPC update to ``--out``) and ``--kind all`` (the
    regressor to ``--out`` and the PPC update to :func:`ppc_out_path`, each with half of
    ``--max-minutes`` / ``--max-steps``)."""
    import dataclasses  # noqa: PLC0415

    from .ppc_train import train_ppc  # noqa: PLC0415
    from .train import train_model  # noqa: PLC0415

    def say(s):
        print(s, flush=True)

    if args.kind == "all":
        if args.resume:
            raise InputError("resume: --kind all trains two models; resume each with its own "
                             "--kind (regressor or ppc) and checkpoint")
        half = dataclasses.replace(cfg, max_minutes=cfg.max_minutes / 2.0,
                                   max_steps=None if cfg.max_steps is None
                                   else max(1, cfg.max_steps // 2))
        res = train_model(hu, m, camera, nominal, dataclasses.replace(half, kind="regressor"),
                          args.out, log=say)
        va = res["training"]["val_after"]
        print(f"[fluoro train] regressor -> {args.out}: held-out corner error median "
              f"{va['corner_mm_median']:.1f} mm")
        cfg, out = dataclasses.replace(half, kind="ppc"), ppc_out_path(args.out)
    else:
        out = Path(args.out)
    res = train_ppc(hu, m, camera, nominal, cfg, out, resume=args.resume, log=say)
    va = res["training"]["val_after"]
    print(f"[fluoro train] learned PPC update -> {out}: held-out one-update mTRE median "
          f"{va['mtre_before_median']:.1f} -> {va['mtre_after_median']:.2f} mm (reduction factor "
          f"median {va['ratio_median']:.3f}; {res['training']['steps']} steps, "
          f"{res['training']['elapsed_s'] / 60:.1f} min)")
    return 0


def add_register_options(reg) -> None:
    """Add ``--model``, ``--nominal`` and ``--force`` to ``surgreg fluoro register``."""
    reg.add_argument("--model", default=None, action="append",
                     help="learned model (surgreg fluoro train); without --init the regressor "
                          "gives the start, --method refines (default ppc; 'regressor' = none). "
                          "Give it twice (a regressor and a ppc model) for regressor start -> "
                          "learned PPC updates -> --method; a ppc model alone starts at --init "
                          "or at its nominal view; --method learned-ppc: no classic refinement. "
                          "A similarity model (--kind similarity) instead of the ppc model: "
                          "LM on the learned features from the start, then --method")
    reg.add_argument("--ppc-updates", dest="ppc_updates", type=int, default=None,
                     help="number of learned PPC updates with a ppc model (default 3)")
    reg.add_argument("--nominal", default=None,
                     help='with --model and several --xray: {"views": [{"ct_to_camera": ...}]} '
                          "nominal poses (the C-arm motion between views)")
    reg.add_argument("--force", action="store_true",
                     help="use a model made for another CT or detector anyway")
    reg.set_defaults(method=None)  # None: ncc (classic) or ppc (after the regressor)


def cmd_register_model(args: argparse.Namespace) -> int:
    """``surgreg fluoro register --model M`` (called by ``cli.cmd_register``)."""
    from ..simulate import read_ct  # noqa: PLC0415
    from ..xray_io import read_pose_json, write_pose_json  # noqa: PLC0415
    from .model_file import load_model_file  # noqa: PLC0415
    from .register import register_with_model  # noqa: PLC0415

    from SurgicalReg2D3DLib.device import parse_device  # noqa: PLC0415
    from SurgicalReg2D3DLib.outputs import check_output  # noqa: PLC0415

    xrays = args.xray
    geometries = args.geometry or []
    model_paths = args.model if isinstance(args.model, list) else [args.model]
    # before any work: the output must not overwrite an input; the device must exist
    check_output(args.out, [args.ct, *xrays, *geometries, args.init, *model_paths,
                            args.nominal], "--out", create_folder=True)
    device = parse_device(args.device, "--device")
    if geometries and len(geometries) != len(xrays):
        raise InputError(f"X-ray geometry: {len(xrays)} X-ray images but {len(geometries)} "
                         "geometries; give one --geometry per --xray")
    from .register import DEFAULT_REFINEMENT  # noqa: PLC0415

    method = args.method or DEFAULT_REFINEMENT
    data, ppc_data, sim_data = None, None, None
    for path in model_paths:
        loaded = load_model_file(path)
        if loaded["kind"] == "ppc":
            if ppc_data is not None:
                raise InputError("model: two learned PPC models given; give at most one")
            ppc_data = loaded
        elif loaded["kind"] == "similarity":
            if sim_data is not None:
                raise InputError("model: two similarity models given; give at most one")
            sim_data = loaded
        elif data is not None:
            raise InputError("model: two pose regressors given; give at most one")
        else:
            data = loaded
    hu, m = read_ct(args.ct, allow_uneven_slices=getattr(args, "allow_uneven_slices", False))
    from ..xray_io import load_xrays  # noqa: PLC0415

    images, cameras = load_xrays(xrays, geometries, negative_log_raw=args.negative_log)
    init = read_pose_json(args.init) if args.init else None
    nominal = read_pose_json(args.nominal, "nominal pose") if args.nominal else None
    from ..preflight import method_options  # noqa: PLC0415

    result = register_with_model(hu, m, images, cameras, data, method=method,
                                 nominal_views=nominal, init_poses=init, force=args.force,
                                 device=device, ppc_model=ppc_data,
                                 ppc_updates=getattr(args, "ppc_updates", None),
                                 similarity_model=sim_data,
                                 quality=not getattr(args, "no_quality", False),
                                 quality_polish=getattr(args, "quality_polish", None) or "all",
                                 **method_options(args))
    extra = {"similarity": result.similarity, "method": result.method,
             "time_s": round(result.time_s, 3), "iterations": len(result.history),
             "convergence": [h["loss"] for h in result.history],
             "metrics": {k: float(v) for k, v in result.metrics.items()}}
    if getattr(result, "start_ct_to_camera", None) is not None:
        extra["regressor_ct_to_camera"] = result.start_ct_to_camera.tolist()
    if getattr(result, "learned_ct_to_camera", None) is not None:  # after the learned PPC
        extra["learned_ppc_ct_to_camera"] = np.asarray(result.learned_ct_to_camera).tolist()
    if getattr(result, "similarity_ct_to_camera", None) is not None:  # after the LM on
        extra["similarity_ct_to_camera"] = np.asarray(result.similarity_ct_to_camera).tolist()
    q = getattr(result, "quality", None)
    if q is not None:
        extra["quality"] = q.to_dict()
    write_pose_json(args.out, result.views_ct_to_camera, extra)
    print(f"[fluoro] {result.method}: similarity {result.similarity:.4f} in "
          f"{result.time_s:.1f} s -> {args.out}")
    if q is not None:
        from SurgicalReg2D3DLib.quality import warning_line  # noqa: PLC0415

        line = warning_line("registration", q)
        if line:
            print(line, file=sys.stderr)
        if q.verdict == "failed":
            return 1
    return 0


def add_bench_options(bench) -> None:
    """Add the learned benchmark's options to ``surgreg fluoro bench``."""
    bench.add_argument("--model", default=None,
                       help="learned model: benchmark from the nominal view on cases drawn in "
                            "its training range (needs --ct)")
    bench.add_argument("--ct", default=None, help="the model's CT (with --model)")
    bench.add_argument("--n-cases", dest="n_cases", type=int, default=20)
    bench.add_argument("--seed", type=int, default=1)
    bench.set_defaults(methods=None)  # None: ncc,gradncc (classic) or the learned list


def cmd_bench_model(args: argparse.Namespace) -> int:
    from .bench import print_summary, run_learned_bench  # noqa: PLC0415

    if not args.ct:
        raise InputError("CT file: --ct is needed with --model")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    views = [args.views] if args.views in (1, 2) else [1, 2]
    summary = run_learned_bench(args.ct, args.model, Path(args.out), n_cases=args.n_cases,
                                seed=args.seed, views=views, methods=methods,
                                threshold_mm=args.success_mm)
    print_summary(summary)
    return 0
