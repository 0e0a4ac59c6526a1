"""``surgreg laparo train``: the command's arguments (:func:`add_train_parser`) and its
dispatch (:func:`run_train`) to the trainer of the chosen ``--kind``: the Stage I point
matcher (:func:`.train.train_stage1`) or the landmark network
(:func:`.landmarks_train.train_landmarks`). The trainers import nothing from here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from SurgicalReg2D3DLib.errors import InputError

from .data import RIDGE_DEFINITIONS
from .train import render_cache, train_stage1, training_meshes


def run_train(args) -> int:
    """CLI entry (``surgreg laparo train``)."""
    import torch  # noqa: PLC0415

    if args.stage != 1:
        raise InputError("stage: only --stage 1 is trained; Stage II is optimised at run time "
                         "per frame (register --nonrigid) and has no trained weights")
    torch.set_num_threads(max(1, int(args.threads)))
    if getattr(args, "kind", "stage1") == "landmarks":
        return _run_train_landmarks(args)
    if getattr(args, "view_axis", None) is not None:
        raise InputError("view axis: --view-axis is an option of --kind landmarks")
    log_path = Path(str(args.out) + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)
        if int(os.environ.get("RANK", "0")) == 0:
            with open(log_path, "a") as fh:
                fh.write(msg + "\n")

    if args.render_only:
        cache = Path(args.data_cache) if args.data_cache else Path(str(args.out) + ".data")
        t0 = time.time()
        files = render_cache(cache, args.samples, args.seed, training_meshes(args.meshes),
                             t0 + 60.0 * args.max_minutes, log)
        print(json.dumps({"cache": str(cache), "chunks": len(files),
                          "wall_s": round(time.time() - t0, 1)}))
        return 0
    rec = train_stage1(args.out, steps=args.steps, max_minutes=args.max_minutes, seed=args.seed,
                       batch=args.batch, lr=args.lr if args.lr is not None else 1e-3,
                       samples=args.samples, meshes=args.meshes,
                       data_cache=args.data_cache, resume=_resume(args), device=args.device,
                       align=not args.no_align, uncertainty=not args.no_uncertainty,
                       checkpoint_minutes=args.checkpoint_minutes,
                       command="surgreg laparo train " + " ".join(sys.argv[3:]), log=log)
    h = rec["loss_history"]
    print(json.dumps({"out": str(args.out), "steps": rec["steps"], "wall_s": round(rec["wall_s"], 1),
                      "first_loss": h[0][1] if h else None, "last_loss": h[-1][1] if h else None}))
    return 0


def _landmarks_command(args) -> str:
    """The effective ``train --kind landmarks`` command (from the parsed arguments, so it
    is right however the CLI was called)."""
    parts = ["surgreg laparo train --stage 1 --kind landmarks",
             f"--samples {args.samples}", f"--max-minutes {args.max_minutes:g}",
             f"--steps {args.steps}", f"--seed {args.seed}", f"--batch {args.batch}",
             f"--base {args.base}", f"--levels {args.levels}", f"--threads {args.threads}",
             f"--device {args.device}",
             f"--checkpoint-minutes {args.checkpoint_minutes:g}",
             f"--normal-loss {args.normal_loss}"]
    if args.normal_weight is not None:
        parts.append(f"--normal-weight {args.normal_weight:g}")
    if args.lr is not None:
        parts.append(f"--lr {args.lr:g}")
    if args.warp_mm is not None:
        parts.append(f"--warp-mm {args.warp_mm:g}")
    if args.normal_scale:
        parts.append("--normal-scale")
    if args.ridge_definition != "ring":
        parts.append(f"--ridge-definition {args.ridge_definition}")
    if args.relief:
        parts.append(f"--relief {args.relief:g}")
    if args.ray_normals:
        parts.append("--ray-normals")
    if args.meshes:
        parts.append("--meshes " + " ".join(str(m) for m in args.meshes))
    if args.view_axis is not None:
        parts.append(f"--view-axis {args.view_axis}")
    if args.data_cache:
        parts.append(f"--data-cache {args.data_cache}")
    if args.resume:
        parts.append(f"--resume {args.resume}")
    parts.append(f"--out {args.out}")
    return " ".join(parts)


def _view_axis(args):
    """``--view-axis`` as a unit vector (None: any direction); only with ``--meshes``
    (the default P2ILF mesh has its annotated axis)."""
    from .landmarks_search import parse_view_axis  # noqa: PLC0415

    if args.view_axis is None:
        return None
    if not args.meshes:
        raise InputError("view axis: --view-axis applies to the meshes given with --meshes "
                         "(the default P2ILF mesh has its own annotated view axis)")
    return parse_view_axis(args.view_axis, "--view-axis")


def _resume(args):
    """``--resume`` as a model file: ``bundled`` is the bundled model of the ``--kind``
    trained (e.g. a per-patient fine-tune of the landmark model)."""
    from .modelfile import BUNDLED_LANDMARKS, BUNDLED_STAGE1, bundled_model_path  # noqa: PLC0415

    if args.resume != "bundled":
        return args.resume
    landmarks = getattr(args, "kind", "stage1") == "landmarks"
    return str(bundled_model_path(BUNDLED_LANDMARKS if landmarks else BUNDLED_STAGE1))


def _run_train_landmarks(args) -> int:
    """``train --stage 1 --kind landmarks`` (see :mod:`.landmarks_train`)."""
    from .landmarks_train import train_landmarks  # noqa: PLC0415

    log_path = Path(str(args.out) + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)
        with open(log_path, "a") as fh:
            fh.write(msg + "\n")

    rec = train_landmarks(args.out, steps=args.steps, max_minutes=args.max_minutes,
                          seed=args.seed, batch=args.batch,
                          lr=args.lr if args.lr is not None else 2e-3,
                          samples=args.samples, meshes=args.meshes, data_cache=args.data_cache,
                          resume=_resume(args), device=args.device, base=args.base,
                          levels=args.levels, checkpoint_minutes=args.checkpoint_minutes,
                          normal_loss=args.normal_loss, normal_weight=args.normal_weight,
                          warp_mm=args.warp_mm, normal_scale=args.normal_scale,
                          ridge_definition=args.ridge_definition, relief_prob=args.relief,
                          ray_normals=args.ray_normals, view_axis=_view_axis(args),
                          command=_landmarks_command(args), log=log)
    h = rec["loss_history"]
    print(json.dumps({"out": str(args.out), "kind": "landmarks", "steps": rec["steps"],
                      "wall_s": round(rec["wall_s"], 1),
                      "first_loss": h[0][1] if h else None, "last_loss": h[-1][1] if h else None}))
    return 0


def add_train_parser(sub) -> None:
    """``surgreg laparo train`` arguments."""
    t = sub.add_parser("train", help="train the learned registration (Stage I)")
    t.add_argument("--stage", type=int, default=1, choices=(1, 2))
    t.add_argument("--meshes", nargs="+", default=None,
                   help="training meshes (default: the shipped P2ILF mesh)")
    t.add_argument("--max-minutes", type=float, default=60.0)
    t.add_argument("--steps", type=int, default=100000)
    t.add_argument("--samples", type=int, default=2048, help="synthetic frames to render")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-3 for stage1, 2e-3 for landmarks)")
    t.add_argument("--kind", default="stage1", choices=("stage1", "landmarks"),
                   help="stage1: the image-to-mesh point matcher; landmarks: per-pixel "
                        "ridge / ligament / silhouette segmentation (3D side geometric)")
    t.add_argument("--base", type=int, default=12, help="landmarks U-Net base width")
    t.add_argument("--levels", type=int, default=4,
                   help="landmarks U-Net levels (resolutions, each halves the grid; 2-5; "
                        "the bundled v5: 4)")
    t.add_argument("--normal-loss", default="angle", choices=("cos", "angle"),
                   help="landmarks: the normal map's error in the loss, the angle (radians; "
                        "v4 and the bundled v5) or 1 - cos (v3)")
    t.add_argument("--normal-weight", type=float, default=None,
                   help="landmarks: weight of the normal term (default 2; the bundled v5: 4)")
    t.add_argument("--warp-mm", type=float, default=None,
                   help="landmarks: largest amplitude (mm) of the random smooth warp of the "
                        "training shapes (default 8, the bundled v5; more = more shapes)")
    t.add_argument("--normal-scale", action="store_true",
                   help="landmarks: add the normal map's uncertainty channel (a Laplace "
                        "scale per pixel, trained on the detached angle error; the pose "
                        "search weights the normals by it)")
    t.add_argument("--ridge-definition", default="ring", choices=RIDGE_DEFINITIONS,
                   help="landmarks: the ridge label (ring: the sharpest 8 %% of vertices by "
                        "a one-ring curvature, the bundled v5; scale: curvature at a fixed "
                        "physical scale above a fixed sharpness, any mesh resolution)")
    t.add_argument("--relief", type=float, default=0.0,
                   help="landmarks: the probability that a training shape is made rounder "
                        "or sharper (a Laplacian band of its detail scaled; needs "
                        "--ridge-definition scale; default 0)")
    t.add_argument("--ray-normals", action="store_true",
                   help="landmarks: give the network each pixel's viewing ray and let it "
                        "predict the normal in the ray frame (the same shading or contour "
                        "means the same normal anywhere in the image, with any lens)")
    t.add_argument("--view-axis", default=None,
                   help="landmarks, with --meshes: the laparoscope's usual viewing direction "
                        "in the meshes' frame (+y: anterior to posterior in LPS, the pose "
                        "search's prior; -y in RAS; 'x,y,z'; 'any'); 75 %% of the frames "
                        "look within 50 deg of it (default: any direction). A per-patient "
                        "fine-tune: --resume bundled --meshes PATIENT --view-axis +y "
                        "(docs/laparo.md)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    t.add_argument("--resume", default=None,
                   help="model file to continue from ('bundled': the bundled model of the "
                        "--kind trained)")
    t.add_argument("--data-cache", default=None, help="folder of rendered samples")
    t.add_argument("--render-only", action="store_true",
                   help="only render the training frames into the data cache")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--no-align", action="store_true", help="ablation: no latent alignment")
    t.add_argument("--no-uncertainty", action="store_true", help="ablation: no uncertainty head")
    t.add_argument("--out", required=True, help="model file to write (.pt)")
    t.set_defaults(func=run_train)
