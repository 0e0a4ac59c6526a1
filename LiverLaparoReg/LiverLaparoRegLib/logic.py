"""LiverLaparoReg entry points: array-level (:func:`register`, :func:`evaluate`) and
node-level (:func:`register_nodes`) registration.

Frames: ``model`` = the mesh file's coordinates (mm, as in the file); ``camera`` = OpenCV
laparoscope frame (x right, y down, z forward, mm). The result pose is
``model_to_camera``. Images are ``(H, W)`` or ``(H, W, 3)`` arrays, row 0 = the top of
the file; masks ``(H, W)`` non-zero = liver.

The methods (``pnp``, ``pnp+silhouette``, ``silhouette``, ``learned``) are in the
registry :data:`.methods.METHODS` (name -> function; also importable from here, with
:func:`.methods.choose_method`, which picks the best the inputs allow when no method is
named). The result class and the metrics are in :mod:`.result`. This module checks the
inputs, runs the method, judges the pose (:mod:`.quality`) and runs the optional
non-rigid step (:mod:`.nonrigid`); none of those import it back.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import report, sub_progress

from .camera import as_camera, check_image_size, check_mask
from .mesh import MeshData, outward_faces, validate_mesh
from .methods import METHODS, choose_method
from .p2ilf import Contour2D, Contour3D, validate_contours_2d, validate_contours_3d
from .result import LaparoResult, check_pose, evaluate

__all__ = ["METHODS", "LaparoResult", "check_mesh_in_view", "choose_method",
           "contours_to_markups", "evaluate", "model_mesh_arrays", "register",
           "register_nodes"]


def check_mesh_in_view(vertices, model_to_camera, camera, name: str,
                       min_share: float = 0.01) -> None:
    """InputError when the mesh at ``model_to_camera`` lies behind the camera or projects
    outside the image (fewer than ``min_share`` of its vertices on the image, pinhole
    without distortion): a silhouette cannot be compared there, nothing would be
    registered."""
    v = np.asarray(vertices, dtype=np.float64)
    T = np.asarray(model_to_camera, dtype=np.float64)
    pc = v @ T[:3, :3].T + T[:3, 3]
    front = pc[:, 2] > 1e-3
    if not np.any(front):
        raise InputError(f"{name}: the liver mesh lies behind the camera (all vertices have "
                         "z <= 0 in the camera frame; +z looks into the scene)")
    z = pc[front, 2]
    u = camera.fx * pc[front, 0] / z + camera.skew * pc[front, 1] / z + camera.cx
    w = camera.fy * pc[front, 1] / z + camera.cy
    inside = (u >= -0.5) & (u <= camera.width - 0.5) & (w >= -0.5) & (w <= camera.height - 0.5)
    share = float(inside.sum()) / len(v)
    if share < min_share:
        raise InputError(f"{name}: the liver mesh projects outside the "
                         f"{camera.width} x {camera.height} image ({100 * share:.1f} % of its "
                         "vertices on the image); check the initial pose and the camera")


def register(mesh: MeshData, camera, image: Optional[np.ndarray] = None,
             mask: Optional[np.ndarray] = None,
             contours2d: Optional[Sequence[Contour2D]] = None,
             contours3d: Optional[Sequence[Contour3D]] = None,
             init: Optional[np.ndarray] = None, method: Optional[str] = None,
             nonrigid: bool = False, ground_truth: Optional[np.ndarray] = None,
             structures: Optional[Sequence[MeshData]] = None,
             progress=None, cancel=None, quality: bool = False,
             learned_options: Optional[dict] = None) -> LaparoResult:
    """Register ``mesh`` (model frame, mm) to a laparoscopic frame.

    ``learned_options``: keyword arguments of the learned method (``method="learned"``)
    for ``learned.infer.register_learned`` (``view_axis``, ``cone_deg``).

    ``structures``: optional extra meshes in the same model frame (vessels, tumours).
    The rigid pose applies to them as to the liver; with ``nonrigid`` the liver's
    deformation field is evaluated at their vertices and the deformed copies are
    returned in ``result.deformed_structures`` (same order, same faces).

    Validates every input first (messages start with the input's name), runs the chosen
    method and computes the metrics: P2ILF reprojection errors (when contours are given),
    mask Dice (when a mask is given), rotation / translation errors (when
    ``ground_truth`` model_to_camera is given). Inputs are not modified.
    ``quality``: judge the rigid pose (``result.quality``, :mod:`.quality`); with a mask,
    restarts along the viewing ray run when it is failed or there are no contours, and
    the best verdict is kept (``result.retry`` lists the attempts).
    """
    t0 = time.perf_counter()
    mesh = validate_mesh(mesh, "mesh")
    camera = as_camera(camera)
    from SurgicalReg2D3DLib.checks import check_principal_point  # noqa: PLC0415

    check_principal_point(camera.cx, camera.cy, camera.width, camera.height, "camera")
    if image is not None:
        check_image_size(np.shape(image), camera, "image")
    if mask is not None:
        mask = check_mask(mask, camera, "mask")
    if (contours2d is None) != (contours3d is None) or (contours2d is not None and (
            len(contours2d) == 0 or len(contours3d) == 0)):
        raise InputError("contours: both 2D and 3D contours are needed (non-empty)")
    if contours2d is not None:
        contours2d = validate_contours_2d(contours2d, "2D contours")
        contours3d = validate_contours_3d(contours3d, len(mesh.vertices), "3D contours")
        from SurgicalReg2D3DLib.checks import check_points_on_image  # noqa: PLC0415

        for k, c in enumerate(contours2d):
            check_points_on_image(c.points, camera.width, camera.height,
                                  f"2D contours: contour {k} ({c.label})")
    structures = [validate_mesh(s, f"structure {k} ({s.name})")
                  for k, s in enumerate(structures or ())]
    if init is not None:
        init = check_pose(init, "initial pose")
    if ground_truth is not None:
        ground_truth = check_pose(ground_truth, "ground truth pose")
    if method is None:
        method = choose_method(contours2d is not None, mask is not None, init is not None)
    if method not in METHODS:
        raise InputError(f"method: unknown method {method!r} (available: "
                         f"{', '.join(sorted(METHODS))})")
    if method == "silhouette" and init is not None:
        check_mesh_in_view(mesh.vertices, init, camera, "initial pose")
    if nonrigid and init is None and contours2d is None and method != "learned":
        raise InputError("nonrigid: a non-rigid registration needs a rigid pose first "
                         "(give an initial pose or contours)")
    ctx = {"mesh": mesh, "camera": camera, "mask": mask, "contours2d": contours2d,
           "contours3d": contours3d, "init": init, "image": image,
           "learned_options": dict(learned_options or {})}
    report(progress, 0.0, f"LiverLaparoReg: {method}")
    T, timings, history = METHODS[method](ctx, sub_progress(progress, 0.0, 0.9), cancel)
    timings["rigid_s"] = time.perf_counter() - t0
    result = LaparoResult(np.asarray(T, dtype=np.float64), method, timings=timings,
                          history=list(history))
    if quality:
        _judge(result, ctx, cancel)
    if nonrigid:
        from .nonrigid import deform  # noqa: PLC0415

        t1 = time.perf_counter()
        d = deform(mesh, camera, result.model_to_camera, mask=mask, contours2d=contours2d,
                   contours3d=contours3d, pairs=ctx.get("pairs"),
                   progress=sub_progress(progress, 0.9, 1.0), cancel=cancel)
        result.deformed_vertices = d.vertices
        result.deformation = d
        # the same field moves vessels and tumours (copies; inputs untouched)
        result.deformed_structures = [MeshData(d.apply(s.vertices), np.array(s.faces, copy=True),
                                               s.name) for s in structures]
        result.timings["nonrigid_s"] = time.perf_counter() - t1
    result.metrics = evaluate(mesh, camera, result.model_to_camera, mask, contours2d,
                              contours3d, ground_truth, result.deformed_vertices)
    warning = _camera_warning(camera)
    if warning:
        result.metrics["camera_warning"] = warning
    if ctx.get("notes"):
        result.metrics["notes"] = list(ctx["notes"])
    result.timings["total_s"] = time.perf_counter() - t0
    report(progress, 1.0, "LiverLaparoReg: done")
    return result


def _camera_warning(camera) -> Optional[str]:
    """A note when the camera's distortion folds over inside its frame (see
    ``camera.frame_valid_camera``; :func:`.camera.load_camera` already replaces such a
    model by ``K`` only unless asked to keep it)."""
    from .camera import frame_valid_camera  # noqa: PLC0415

    return frame_valid_camera(camera, "keep")[1]


def _judge(result: LaparoResult, ctx: dict, cancel=None) -> None:
    """Attach the quality (and the kept pose of the restarts) to ``result``."""
    from .quality import assess_and_retry  # noqa: PLC0415
    from .silhouette import refine_from_mask  # noqa: PLC0415

    t0 = time.perf_counter()

    def rerun(start):
        T2, _, _ = refine_from_mask(ctx["mesh"], ctx["camera"], ctx["mask"], start,
                                    cancel=cancel)
        return LaparoResult(np.asarray(T2, dtype=np.float64), "silhouette")

    q, kept, info = assess_and_retry(ctx["mesh"], ctx["camera"], result, ctx["mask"],
                                     ctx["contours2d"], ctx["contours3d"],
                                     rerun=rerun if ctx["mask"] is not None else None)
    result.model_to_camera = np.asarray(kept.model_to_camera, dtype=np.float64)
    result.quality = q
    result.retry = info if len(info["attempts"]) > 1 else None
    result.timings["quality_s"] = time.perf_counter() - t0


# ----------------------------------------------------------------------------- nodes
def register_nodes(ctx, model_node, camera, frame_node=None, mask_node=None,
                   contours2d=None, contours3d=None, init_transform_node=None,
                   method: Optional[str] = None, nonrigid: bool = False,
                   output_transform_node=None, output_model_node=None,
                   structure_nodes=None, output_structure_nodes=None,
                   progress=None, cancel=None, quality: bool = True,
                   apply_failed: bool = True, learned_options: Optional[dict] = None
                   ) -> LaparoResult:
    """Node-level entry point (Slicer logic and tests). ``learned_options``: see
    :func:`register`.

    ``structure_nodes``: optional model nodes of vessels / tumours (same convention as
    ``model_node``). With ``nonrigid``, a deformed copy of each is written to the
    matching node of ``output_structure_nodes`` (a list; a missing or None entry creates
    a node named ``"<name> deformed"``); the created / filled nodes are returned in
    ``result.structure_nodes``.

    ``model_node``: the liver model. Its stored RAS points are flipped back to LPS, which
    gives the file coordinates for models loaded with Slicer's default (LPS) convention;
    that is the ``model`` frame. Slicer's OBJ reader splits vertices (one per face corner),
    which breaks P2ILF vertex-index contours: when the node's vertex count differs from its
    file's, the file is read with ``io.load_mesh_arrays`` instead (exact file order). The
    result goes into ``output_transform_node`` (created
    when None) as ``model_to_camera`` and, when non-rigid, the deformed mesh (model frame,
    again stored as LPS -> RAS) into ``output_model_node``. Input nodes are not modified.
    """
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    v, f = model_mesh_arrays(model_node)
    mesh = MeshData(v, f, "mesh")
    image = None
    if frame_node is not None:
        image, _ = nodes.image2d_from_node(frame_node, "image")
    mask = None
    if mask_node is not None:
        mask, _ = nodes.image2d_from_node(mask_node, "mask")
        if mask.ndim == 3:
            mask = mask.max(axis=2)
    init = None
    if init_transform_node is not None:
        init = nodes.matrix_from_transform_node(init_transform_node, "initial pose",
                                                require_rigid=True)
    structures = []
    for node in structure_nodes or ():
        sv, sf = model_mesh_arrays(node)
        structures.append(MeshData(sv, sf, node.GetName()))
    result = register(mesh, camera, image=image, mask=mask, contours2d=contours2d,
                      contours3d=contours3d, init=init, method=method, nonrigid=nonrigid,
                      structures=structures, progress=progress, cancel=cancel,
                      quality=quality, learned_options=learned_options)
    if result.quality is not None and result.quality.verdict == "failed" and not apply_failed:
        result.metrics["not_applied"] = "failed"  # the GUI asks before writing it
    else:
        nodes.matrix_to_transform_node(ctx, result.model_to_camera, "model_to_camera",
                                       node=output_transform_node)
    if result.deformed_vertices is not None:
        nodes.model_to_node(ctx, result.deformed_vertices, mesh.faces, "deformed liver",
                            node=output_model_node, frame="LPS")
    outs = list(output_structure_nodes or ())
    result.structure_nodes = []
    for k, s in enumerate(result.deformed_structures):
        target = outs[k] if k < len(outs) else None
        result.structure_nodes.append(nodes.model_to_node(
            ctx, s.vertices, s.faces, f"{s.name} deformed", node=target, frame="LPS"))
    return result


def model_mesh_arrays(model_node):
    """``(vertices (V, 3), faces (F, 3))`` of a model node in the model frame (file
    coordinates; see :func:`register_nodes` about OBJ files), faces in one outward order
    (:func:`.mesh.outward_faces`)."""
    from SurgicalReg2D3DLib import io, nodes  # noqa: PLC0415

    v, f = nodes.model_from_node(model_node, "mesh", frame="LPS")
    storage = model_node.GetStorageNode()
    path = storage.GetFileName() if storage is not None else None
    if path and path.lower().endswith(".obj"):
        import os  # noqa: PLC0415

        if os.path.isfile(path):
            fv, ff = io.load_mesh_arrays(path, "mesh")
            if fv.shape[0] != v.shape[0]:
                v, f = fv, ff
    return v, outward_faces(v, f)


def contours_to_markups(ctx, contours2d=None, contours3d=None, vertices=None,
                        frame_ijk_to_ras=None, prefix: str = "") -> list:
    """P2ILF contours as Markups curve nodes (one per contour, named ``<label> 2D k`` /
    ``<label> 3D k``).

    2D contours lie on the frame: pixel ``(u, v)`` -> RAS ``frame_ijk_to_ras @ (u, v, 0, 1)``
    (identity when None). 3D contours lie on the model: the mesh ``vertices`` (model frame
    = file coordinates, read by Slicer as LPS) are flipped to RAS like the model node.
    """
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    out = []
    M = np.eye(4) if frame_ijk_to_ras is None else np.asarray(frame_ijk_to_ras, dtype=np.float64)
    for k, c in enumerate(contours2d or ()):
        p = np.c_[c.points, np.zeros(len(c.points)), np.ones(len(c.points))] @ M.T
        out.append(nodes.points_to_markups(ctx, p[:, :3], f"{prefix}{c.label} 2D {k}",
                                           kind="curve"))
        out[-1].SetAttribute("LiverLaparoReg.LandmarkClass", c.label)
    if contours3d:
        if vertices is None:
            raise InputError("3D contours: the mesh vertices are needed to place them")
        for k, c in enumerate(contours3d):
            p = np.asarray(vertices, dtype=np.float64)[c.vertices] * [-1.0, -1.0, 1.0]
            out.append(nodes.points_to_markups(ctx, p, f"{prefix}{c.label} 3D {k}",
                                               kind="curve"))
            out[-1].SetAttribute("LiverLaparoReg.LandmarkClass", c.label)
    return out
