"""``surgreg laparo ...`` command line (registered by ``SurgicalReg2D3DLib.cli``).

``surgreg laparo register --mesh MESH (--image IMG | --image-size W H) --camera CAM
[--distortion D.txt] [--mask MASK] [--contours2d C2.json --contours3d C3.json]
[--init INIT.json] [--method pnp|pnp+silhouette|silhouette] [--nonrigid]
[--deformed-mesh OUT.vtk] [--ground-truth GT] [--structure VESSELS.vtk ...]
[--lens-model auto|keep|none] [--no-distortion] --out OUT.json``

The frame is used for its size only: ``--image-size W H`` (or a mask, or a P2ILF camera
JSON, which holds the size) can stand in for it. ``--lens-model`` (default ``auto``): a
distortion model that folds over inside the frame is replaced by ``K`` only, with a note
on stderr (``camera.frame_valid_camera``); ``keep`` keeps it, ``none`` (= the older
``--no-distortion``) always drops it. The printed JSON holds the challenge's own score
``p2ilf_task2_rpe_px`` (``metrics.challenge_rpe``) beside the project's per-class ones.

``--structure`` (repeatable): vessels / tumours in the mesh's frame; with ``--nonrigid``
each is deformed by the liver's deformation and written next to ``OUT.json`` as
``<stem>_<structure stem>_deformed.vtk`` (model frame, same vertex order).
``--no-distortion``: ignore the camera's distortion coefficients (the P2ILF challenge's
own evaluation projects with ``K`` only; see ``docs/laparo.md``).

``INIT.json`` / ``OUT.json`` hold ``{"model_to_camera": 4x4}`` (mesh mm -> OpenCV camera
mm). ``OUT.json`` adds ``method``, ``metrics`` and ``timing``; next to it the P2ILF
outputs are written: ``<stem>_mesh_camera.obj`` (mesh in the camera frame, same vertex
order), ``<stem>_contours2d.json`` (projected 3D contours) and ``<stem>_contours3d.json``.

``surgreg laparo bench [--mesh MESH ...] [--quick]`` prints px error, Dice, rotation and
translation errors on synthetic renders and on the shipped real P2ILF case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, InputError


def read_pose_json(path, name: str = "initial pose") -> np.ndarray:
    """``{"model_to_camera": 4x4}`` -> (4, 4) float64."""
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    try:
        data = json.loads(path.read_text())
        T = np.asarray(data["model_to_camera"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FileReadError(f"{name}: {path} is not a {{\"model_to_camera\": 4x4}} JSON file "
                            f"({exc})") from None
    if T.shape != (4, 4):
        raise InputError(f"{name}: model_to_camera must be 4x4, got shape {T.shape}")
    return T


def read_image(path, name: str = "image") -> np.ndarray:
    """PNG/JPG/BMP -> ``(H, W)`` or ``(H, W, 3)`` RGB uint8 (row 0 = top of the file)."""
    import cv2  # noqa: PLC0415

    from SurgicalReg2D3DLib.checks import check_file_complete  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    check_file_complete(path, name)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise FileReadError(f"{name}: cannot read an image from {path}")
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return img


def mask_from_image(img: np.ndarray, name: str = "mask") -> np.ndarray:
    """Liver mask from a mask image: the pixels above half the image's maximum (so 0/1,
    0/255 and 0/65535 masks all work, and JPEG noise near 0 is not liver)."""
    gray = img.max(axis=2) if img.ndim == 3 else img
    top = float(gray.max()) if gray.size else 0.0
    if not top > 0:
        raise InputError(f"{name}: the liver mask is empty (all pixels are 0)")
    return gray > top / 2.0


def output_paths(args) -> list:
    """``[(path, what), ...]`` of every file ``laparo register`` writes (the result JSON
    and its side files), known before any work."""
    out = Path(args.out)
    paths = [(out, "--out"), (out.with_name(out.stem + "_mesh_camera.obj"),
                              "--out (posed mesh side file)")]
    if args.contours3d:
        paths += [(out.with_name(out.stem + "_contours3d.json"), "--out (3D contours side file)"),
                  (out.with_name(out.stem + "_contours2d.json"), "--out (2D contours side file)")]
    if args.deformed_mesh:
        paths.append((Path(args.deformed_mesh), "--deformed-mesh"))
    for p in args.structure or ():
        paths.append((out.with_name(f"{out.stem}_{Path(p).stem}_deformed.vtk"),
                      f"--out (deformed structure side file of {Path(p).name})"))
    return paths


def run_register(args) -> int:
    import sys  # noqa: PLC0415

    from .camera import load_camera  # noqa: PLC0415
    from .logic import register  # noqa: PLC0415
    from .mesh import load_mesh  # noqa: PLC0415
    from .p2ilf import read_contours_2d, read_contours_3d  # noqa: PLC0415
    from SurgicalReg2D3DLib.outputs import check_outputs  # noqa: PLC0415

    inputs = [args.mesh, args.image, args.camera, args.distortion, args.mask,
              args.contours2d, args.contours3d, args.init, args.ground_truth,
              getattr(args, "model", None), *(args.structure or ())]
    check_outputs(output_paths(args), inputs, create_folder=True)  # before any work
    if args.deformed_mesh:
        from .mesh import _WRITERS  # noqa: PLC0415

        if Path(args.deformed_mesh).suffix.lower() not in _WRITERS:
            raise InputError(f"--deformed-mesh: unsupported format "
                             f"{Path(args.deformed_mesh).suffix!r} (expected one of "
                             f"{', '.join(sorted(_WRITERS))})")
    if args.method == "learned":
        return run_register_learned(args)
    mesh = load_mesh(args.mesh, "mesh")
    structures = [load_mesh(p, f"structure {Path(p).name}") for p in args.structure or ()]
    image = read_image(args.image, "image") if args.image else None
    mask = None
    if args.mask:
        mask = mask_from_image(read_image(args.mask, "mask"), "mask")
    if args.image_size is not None:
        w, h = args.image_size
        if w <= 0 or h <= 0:
            raise InputError(f"image size: width and height must be positive, got {w} x {h}")
        if image is not None and image.shape[:2] != (h, w):
            raise InputError(f"image size: --image-size {w} {h} does not match the image "
                             f"({image.shape[1]} x {image.shape[0]})")
    elif image is not None:
        w, h = image.shape[1], image.shape[0]
    elif mask is not None:
        w, h = mask.shape[1], mask.shape[0]
    else:
        w = h = None            # a P2ILF camera JSON holds the size
    notes = []
    policy = "none" if args.no_distortion else args.lens_model
    camera = load_camera(args.camera, width=w, height=h, distortion_path=args.distortion,
                         distortion=policy, notes=notes)
    if w is not None and (camera.width, camera.height) != (w, h):
        raise InputError(f"image size: the frame is {w} x {h} but the camera is "
                         f"{camera.width} x {camera.height}")
    for note in notes:
        print(note, file=sys.stderr)
    if (args.contours2d is None) != (args.contours3d is None):
        raise InputError("contours: give both --contours2d and --contours3d")
    c2 = read_contours_2d(args.contours2d) if args.contours2d else None
    c3 = read_contours_3d(args.contours3d, len(mesh.vertices)) if args.contours3d else None
    init = read_pose_json(args.init) if args.init else None
    gt = read_pose_json(args.ground_truth, "ground truth pose") if args.ground_truth else None
    result = register(mesh, camera, image=image, mask=mask, contours2d=c2, contours3d=c3,
                      init=init, method=args.method, nonrigid=args.nonrigid, ground_truth=gt,
                      structures=structures, quality=not args.no_quality)
    _write_outputs(args, result, mesh, camera, c3)
    for note in result.metrics.get("notes", []):
        print(note, file=sys.stderr)
    summary = {"method": result.method}
    if "p2ilf_task2_rpe_px" in result.metrics:
        # the challenge's own number first, then the project's per-class figures
        summary["p2ilf_task2_rpe_px"] = result.metrics["p2ilf_task2_rpe_px"]
        summary["project_reprojection_hausdorff_px_per_class"] = {
            k: v["hausdorff_px"] for k, v in result.metrics["reprojection"].items()}
    if result.quality is not None:
        summary["quality"] = result.quality.to_dict()
    print(json.dumps(dict(summary, metrics=result.metrics,
                          total_s=round(result.timings.get("total_s", 0.0), 3))))
    if result.quality is not None:
        from SurgicalReg2D3DLib.quality import warning_line  # noqa: PLC0415

        name = Path(args.image).name if args.image else Path(args.out).stem
        line = warning_line(f"laparo frame {name}", result.quality)
        if line:
            print(line, file=sys.stderr)
    return 0


def _write_outputs(args, result, mesh, camera, c3=None) -> None:
    """``--out`` and its side files as one consistent set (every file to a temporary name,
    renamed only when all are written): the result JSON, the posed mesh in the camera frame,
    the 3D contours and their projection (with ``c3``), the deformed mesh and structures."""
    from SurgicalReg2D3DLib.outputs import OutputSet  # noqa: PLC0415

    from .mesh import MeshData, save_mesh  # noqa: PLC0415
    from .metrics import project_contours_3d  # noqa: PLC0415
    from .p2ilf import write_contours_2d, write_contours_3d  # noqa: PLC0415

    out = Path(args.out)
    T = result.model_to_camera
    verts = mesh.vertices if result.deformed_vertices is None else result.deformed_vertices
    with OutputSet("--out") as outs:
        outs.write_json(out, result.to_dict())
        outs.write(out.with_name(out.stem + "_mesh_camera.obj"),
                   lambda tmp: save_mesh(MeshData(verts @ T[:3, :3].T + T[:3, 3], mesh.faces),
                                         tmp))
        if c3:
            outs.write(out.with_name(out.stem + "_contours3d.json"),
                       lambda tmp: write_contours_3d(c3, tmp))
            outs.write(out.with_name(out.stem + "_contours2d.json"),
                       lambda tmp: write_contours_2d(project_contours_3d(c3, verts, T, camera),
                                                     tmp))
        if args.deformed_mesh:
            outs.write(args.deformed_mesh,
                       lambda tmp: save_mesh(MeshData(verts, mesh.faces), tmp))
        for path, s in zip(args.structure or (), result.deformed_structures):
            outs.write(out.with_name(f"{out.stem}_{Path(path).stem}_deformed.vtk"),
                       lambda tmp, s=s: save_mesh(s, tmp))


def _view_prior(args):
    """``(view_axis, how)`` of ``--view-axis``: "auto" takes the prior's axis from the
    coordinate system the mesh file declares (Slicer's ``SPACE=`` header comment; LPS when
    it says nothing, as in Slicer)."""
    from SurgicalReg2D3DLib.io import mesh_file_coordinate_system  # noqa: PLC0415

    from .learned.landmarks_search import AXIS_BY_SPACE, parse_view_axis  # noqa: PLC0415

    text = args.view_axis or "auto"
    if text.strip().lower() == "auto":
        space = mesh_file_coordinate_system(args.mesh)
        how = (f"auto: the mesh file declares SPACE={space}" if space
               else "auto: the mesh file declares no SPACE, LPS assumed (as Slicer does)")
        return AXIS_BY_SPACE[space or "LPS"], how
    return parse_view_axis(text, "--view-axis"), f"--view-axis {text}"


def run_register_learned(args) -> int:
    """``register --method learned``: no --init, no contours (see ``learned/infer.py``)."""
    from .camera import load_camera, without_distortion  # noqa: PLC0415
    from .learned.infer import register_learned  # noqa: PLC0415
    from .learned.shared import check_liver_scale  # noqa: PLC0415
    from .mesh import load_mesh  # noqa: PLC0415

    if args.init or args.contours2d or args.contours3d:
        raise InputError("method: --method learned takes no --init and no contours")
    mesh = load_mesh(args.mesh, "mesh", validate=False)
    check_liver_scale(mesh.vertices, "mesh")
    structures = [load_mesh(p, f"structure {Path(p).name}") for p in args.structure or ()]
    image = read_image(args.image, "image")
    camera = load_camera(args.camera, width=image.shape[1], height=image.shape[0],
                         distortion_path=args.distortion)
    if args.no_distortion:
        camera = without_distortion(camera)
    mask = mask_from_image(read_image(args.mask, "mask"), "mask") if args.mask else None
    gt = read_pose_json(args.ground_truth, "ground truth pose") if args.ground_truth else None
    view_axis, prior = _view_prior(args)
    result = register_learned(mesh, camera, image=image, mask=mask, model=args.model,
                              nonrigid=args.nonrigid, ground_truth=gt, structures=structures,
                              view_axis=view_axis, cone_deg=args.view_cone)
    if "learned" in result.metrics:
        result.metrics["learned"]["view_prior"] = prior
    _write_outputs(args, result, mesh, camera)
    from SurgicalReg2D3DLib.quality import warning_line  # noqa: PLC0415

    line = warning_line("learned registration", result.quality)
    if line:
        import sys  # noqa: PLC0415
        print(line, file=sys.stderr)
    print(json.dumps({"method": "learned", "metrics": result.metrics,
                      "quality": result.quality.to_dict(),
                      "correspondences": len(result.correspondences),
                      "total_s": round(result.timings.get("total_s", 0.0), 3)}))
    return 0


def run_bench(args) -> int:
    if getattr(args, "learned", False):
        from .learned.evaluation import run_bench as _learned, summarise  # noqa: PLC0415

        rows, s2, _ = _learned(args.model, frames=3 if args.quick else 10, seed=args.seed,
                               stage2_frames=1 if args.quick else 4, quick=args.quick,
                               log=lambda m: None)
        for row in rows + s2:
            print(json.dumps(row))
        print(json.dumps({"summary": summarise(rows)}))
        return 0
    from .bench import run_bench as _bench  # noqa: PLC0415

    rows = _bench(meshes=args.mesh, quick=args.quick, seed=args.seed)
    for row in rows:
        print(json.dumps(row))
    return 0


def register_cli(subparsers) -> None:
    """Add ``laparo`` with ``register`` and ``bench`` to a ``surgreg`` subparsers object."""
    p = subparsers.add_parser("laparo", help="liver model to laparoscopic frame (LiverLaparoReg)")
    sub = p.add_subparsers(dest="laparo_command", required=True)
    r = sub.add_parser("register", help="register a liver mesh to a frame")
    r.add_argument("--mesh", required=True, help="liver mesh (.obj .ply .vtk .vtp .stl), mm")
    r.add_argument("--image", default=None,
                   help="frame (PNG/JPG/BMP); only its size is used (or give --image-size)")
    r.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="frame size in pixels, instead of --image")
    r.add_argument("--camera", required=True,
                   help="P2ILF camera JSON or a 3x3 intrinsics text file")
    r.add_argument("--distortion", default=None, help="distortion text file (with a 3x3 file)")
    r.add_argument("--mask", default=None,
                   help="liver mask image (liver = pixels above half the maximum: 0/1 or "
                        "0/255 masks)")
    r.add_argument("--contours2d", default=None, help="P2ILF 2D contour JSON")
    r.add_argument("--contours3d", default=None, help="P2ILF 3D contour JSON")
    r.add_argument("--init", default=None, help='{"model_to_camera": 4x4} JSON')
    r.add_argument("--method", default=None, choices=None,
                   help="pnp | pnp+silhouette | silhouette | learned (default: chosen from the "
                        "inputs: contours + mask -> pnp+silhouette, contours -> pnp, mask + "
                        "init -> silhouette; learned needs neither contours nor a start)")
    r.add_argument("--nonrigid", action="store_true", help="non-rigid refinement")
    r.add_argument("--deformed-mesh", default=None, help="write the deformed mesh here")
    r.add_argument("--ground-truth", default=None, help="ground-truth pose JSON for metrics")
    r.add_argument("--structure", action="append", default=None,
                   help="vessels / tumours mesh in the liver mesh's frame (repeatable); "
                        "deformed with the liver when --nonrigid")
    r.add_argument("--lens-model", choices=("auto", "keep", "none"), default="auto",
                   help="auto: use the camera's distortion unless it folds over inside the "
                        "frame, then K only (with a note); keep: always use it; none: K only")
    r.add_argument("--no-distortion", action="store_true",
                   help="same as --lens-model none (project with K only)")
    r.add_argument("--no-quality", dest="no_quality", action="store_true",
                   help="skip the quality value (and the restarts it may run)")
    r.add_argument("--out", required=True, help="output JSON")
    r.set_defaults(func=run_register)
    r.add_argument("--model", default=None,
                   help="learned model file (--method learned; default: the bundled model)")
    r.add_argument("--view-axis", default="auto",
                   help="--method learned: the direction the laparoscope looks along, in the "
                        "mesh file's frame (a prior of the search): auto (from the file's "
                        "SPACE= header: +y for LPS, the default, -y for RAS, i.e. looking at "
                        "the anterior surface), +x, -x, +y, -y, +z, -z, 'x,y,z', or any "
                        "(the whole sphere, about 1.7 x slower)")
    from .learned.landmarks_search import VIEW_CONE_DEG  # noqa: PLC0415

    r.add_argument("--view-cone", type=float, default=VIEW_CONE_DEG,
                   help="--method learned: half-angle (deg) of the searched viewing "
                        f"directions around --view-axis (default {VIEW_CONE_DEG:g})")
    from .learned.train_cli import add_train_parser  # noqa: PLC0415

    add_train_parser(sub)
    b = sub.add_parser("bench", help="accuracy and timing on synthetic and shipped cases")
    b.add_argument("--mesh", action="append", default=None, help="mesh(es) for synthetic cases")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--learned", action="store_true",
                   help="learned vs contour-PnP vs silhouette on SYNTHETIC frames of the "
                        "held-out liver (benchmarks/laparo_learned.py protocol)")
    b.add_argument("--model", default=None, help="learned model file (default: bundled)")
    b.set_defaults(func=run_bench)
