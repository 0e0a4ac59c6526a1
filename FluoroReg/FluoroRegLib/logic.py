"""Entry points of FluoroReg that the Slicer module, the command line and the demo call.

- :func:`register_arrays`: CT array + X-ray images + cameras + start pose(s) -> result;
- :func:`register_nodes`: the same on MRML nodes (CT volume node, single-slice X-ray
  volume nodes, initial transform node), writing a linear transform node
  (``ct_to_camera``: CT RAS -> camera of view 0) and a DRR volume node that overlays the
  first X-ray node in the slice views.

Methods are looked up in :data:`.methods.METHODS` (name -> function; importable from
here too), so that other packages (the learned methods) can add theirs with
:func:`.methods.register_method`. A method function has the signature ``fn(volume,
views, init_ct_to_camera, progress=None, cancel=None, **options) -> RegistrationResult``
(see :mod:`.refine`). The quality step is :func:`.recovery.assess_result`.

Multi-view: every X-ray has its own camera; the relative C-arm motion between views is
taken from the initial poses (``camera0_to_view = init[k] @ inv(init[0])``) and held
fixed, so only the CT's pose is solved.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from .geometry import camera_parameters, look_at_pose
from .methods import METHODS, available_methods, register_method
from .refine import RegistrationResult, XRayView, check_pose, pose_errors

def default_initial_pose(volume, camera, view: str = "AP") -> np.ndarray:
    """A start ``ct_to_camera``: the CT centre on the central ray at 60% of the
    source-to-detector distance, standard AP (or LAT) orientation."""
    p = camera_parameters(camera)
    return look_at_pose(volume.center_ras(), view, 0.6 * p.f)


def make_views(images: Sequence, cameras: Sequence, init_poses: Sequence) -> tuple:
    """Views with fixed relative C-arm motion from the initial poses; returns
    ``(views, init_ct_to_camera_of_view_0)``."""
    if len(images) == 0:
        raise InputError("X-ray images: at least one image is needed")
    if len(cameras) != len(images):
        raise InputError(f"X-ray geometry: {len(images)} X-ray images but {len(cameras)} "
                         "geometries; give one geometry per image")
    if len(init_poses) != len(images):
        raise InputError(f"initial pose: {len(images)} X-ray images but {len(init_poses)} "
                         "initial ct_to_camera matrices; give one per view")
    names = ["initial ct_to_camera"] if len(images) == 1 else \
        [f"initial ct_to_camera of view {k + 1}" for k in range(len(images))]
    poses = [check_pose(p, n) for p, n in zip(init_poses, names)]
    inv0 = np.linalg.inv(poses[0])
    views = [XRayView(img, cam, pose @ inv0) for img, cam, pose in zip(images, cameras, poses)]
    return views, poses[0]


def register_arrays(hu: np.ndarray, ijk_to_ras: np.ndarray, images: Sequence, cameras: Sequence,
                    init_poses: Optional[Sequence] = None, method: str = "ncc",
                    labels: Optional[np.ndarray] = None, label_subset=None,
                    landmarks_ras: Optional[np.ndarray] = None,
                    true_ct_to_camera: Optional[np.ndarray] = None, device=None,
                    progress=None, cancel=None, quality: bool = False,
                    quality_model=None, quality_retry: bool = True,
                    quality_polish: str = "flagged", progress_start=None,
                    **options) -> RegistrationResult:
    """Register a CT (HU array (K, J, I), ``ijk_to_ras``) to X-ray images (H, W).

    ``init_poses``: one ``ct_to_camera`` per image (default for one image: an AP view,
    see :func:`default_initial_pose`). ``options`` go to the method (``levels``,
    ``iterations``, ``n_samples``, ``drr_method``...). With ``landmarks_ras`` and
    ``true_ct_to_camera`` the result's metrics hold mTRE and the other errors.
    ``quality``: also judge the result (``result.quality``, ``result.view_qualities``,
    :mod:`.quality`; ``quality_model`` from ``quality.calibrate``), retrying a ``failed``
    case along its weak direction when ``quality_retry`` (``result.retry`` lists both).
    ``quality_polish``: ``"flagged"`` (polish with the detector model only a result not
    judged ``ok``), ``"all"`` or ``"off"`` (:func:`.recovery.assess_result`).
    ``progress_start``: the ``ct_to_camera`` of view 0 that the "ended worse than it
    started" rule compares with (default: ``init_poses[0]``; a chain of methods passes the
    chain's start, e.g. the regressor's pose before the learned similarity).
    """
    from .drr import DRRVolume  # noqa: PLC0415

    from SurgicalReg2D3DLib.checks import check_index_matrix  # noqa: PLC0415

    from . import preflight  # noqa: PLC0415

    names = available_methods()
    if method not in METHODS:
        raise InputError(f"method: expected one of {names}, got {method!r}")
    check_index_matrix(ijk_to_ras, "CT volume")
    preflight.check_options(options)
    volume = DRRVolume.from_hu(hu, ijk_to_ras, labels=labels, label_subset=label_subset,
                               device=device)
    if len(cameras) != len(images):
        raise InputError(f"X-ray geometry: {len(images)} X-ray images but {len(cameras)} "
                         "geometries; give one geometry per image")
    if init_poses is None:
        if len(images) > 1:
            raise InputError("initial pose: multi-view registration needs one initial "
                             "ct_to_camera per view (they fix the relative C-arm motion)")
        init_poses = [default_initial_pose(volume, cameras[0])]
    views, init = make_views(images, cameras, init_poses)
    preflight.check_start(volume.shape, ijk_to_ras, cameras,
                          [v.camera0_to_view @ init for v in views])
    result = METHODS[method](volume, views, init, progress=progress, cancel=cancel, **options)
    result.method = method
    # the plain rule: a result that ended worse than it started is not a registration
    measure = preflight.similarity_measure(method)
    rule_init = init if progress_start is None else check_pose(progress_start, "progress start")
    s0, s1 = preflight.start_and_end_similarity(
        volume, views, rule_init, result.ct_to_camera, measure,
        drr_method=options.get("drr_method") or "trilinear", n_samples=options.get("n_samples"))
    result.similarity_start = s0
    from SurgicalReg2D3DLib.checks import no_progress_quality  # noqa: PLC0415

    failed = no_progress_quality(s0, s1, f"{measure} similarity")
    if failed is not None:
        result.quality = failed
    if quality:  # trust value (FluoroRegLib.quality): per case, per view, retry when failed
        from .recovery import assess_result  # noqa: PLC0415

        first_pose = np.array(result.ct_to_camera, float)
        # a result that ended worse than it started is not polished (the restarts still run)
        result = assess_result(volume, views, init, result, method, options,
                               model=quality_model, retry=quality_retry, cancel=cancel,
                               polish=quality_polish if failed is None else "off")
        if failed is not None and not np.allclose(result.ct_to_camera, first_pose):
            # the polish / a restart moved the result: judge the rule on what is kept
            _, s1 = preflight.start_and_end_similarity(
                volume, views, rule_init, result.ct_to_camera, measure,
                drr_method=options.get("drr_method") or "trilinear",
                n_samples=options.get("n_samples"))
            failed = no_progress_quality(s0, s1, f"{measure} similarity")
    if failed is not None and getattr(result, "quality", None) is not None \
            and result.quality is not failed:
        if result.quality.verdict != "failed":
            result.quality = failed   # ended worse than it started: failed whatever else says
        else:
            result.quality.reasons.extend(r for r in failed.reasons
                                          if r not in result.quality.reasons)
    if landmarks_ras is not None and true_ct_to_camera is not None:
        truth = check_pose(true_ct_to_camera, "true ct_to_camera")
        result.metrics.update(pose_errors(result.ct_to_camera, truth,
                                          np.asarray(landmarks_ras, float), cameras[0]))
    return result


def register_nodes(ctx, ct_node, xray_nodes, cameras, init_transform_nodes=None,
                   method: str = "ncc", output_transform_node=None, drr_node=None,
                   fiducials_node=None, true_transform_node=None, negative_log: bool = False,
                   progress=None, cancel=None, quality: bool = True,
                   apply_failed: bool = True, **options) -> RegistrationResult:
    """Node-level registration (the Slicer module's logic).

    ``ct_node``: scalar volume node (HU); ``xray_nodes``: single-slice scalar volume
    nodes (one per view; pixel values attenuation-bright); ``cameras``: one
    ``XRayCamera`` per X-ray; ``init_transform_nodes``: linear transform nodes (or 4x4
    arrays) holding each view's initial ``ct_to_camera`` (default: AP view for one
    X-ray). Writes ``output_transform_node`` (created when None) with the result
    ``ct_to_camera`` of view 0 and ``drr_node`` (created when None): the DRR at the final
    pose with the first X-ray node's geometry, so the two overlay in slice views.
    ``fiducials_node`` (markups on the CT) and ``true_transform_node`` give the mTRE.
    ``negative_log``: the X-rays are raw detector counts (``-log(I / I0)`` is applied).
    ``quality``: judge the result (``result.quality``); with ``apply_failed=False`` a
    ``failed`` result is not written to ``output_transform_node`` (``result.outputs``
    then has ``"not_applied"``; :func:`apply_result` writes it once the user agrees).
    Input nodes are not modified.
    """
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    from .drr import DRRVolume, render_drr  # noqa: PLC0415

    if ct_node is None:
        raise InputError("CT volume: no volume selected")
    ct = nodes.volume_from_node(ct_node, name="CT volume")
    if ct.array.ndim != 3:
        raise InputError(f"CT volume: expected a scalar volume, got shape {ct.array.shape}")
    if not xray_nodes:
        raise InputError("X-ray images: no X-ray image selected")
    images, xray_geometries = [], []
    for k, node in enumerate(xray_nodes):
        name = "X-ray image" if len(xray_nodes) == 1 else f"X-ray image {k + 1}"
        if node is None:
            raise InputError(f"{name}: no image selected")
        try:
            img, m = nodes.image2d_from_node(node, name=name)
        except InputError as exc:
            if "expected a 2D image" in str(exc):
                raise InputError(f"{name}: expected a 2D image, got a 3D volume") from None
            raise
        if img.ndim == 3:
            img = img[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114])
        if negative_log:
            from .xray_io import negative_log as _neglog  # noqa: PLC0415

            img = _neglog(img, name=name)
        images.append(img.astype(np.float32))
        xray_geometries.append(m)
    init_poses = None
    if init_transform_nodes:
        init_poses = [np.asarray(t, float) if isinstance(t, (np.ndarray, list)) else
                      nodes.matrix_from_transform_node(t, name="initial transform")
                      for t in init_transform_nodes]
    landmarks = truth = None
    if fiducials_node is not None and true_transform_node is not None:
        landmarks = nodes.points_from_markups(fiducials_node, name="fiducials")
        truth = nodes.matrix_from_transform_node(true_transform_node, name="true transform")
    result = register_arrays(ct.array.astype(np.float32), ct.ijk_to_ras, images, list(cameras),
                             init_poses, method=method, landmarks_ras=landmarks,
                             true_ct_to_camera=truth, progress=progress, cancel=cancel,
                             quality=quality, **options)
    q = getattr(result, "quality", None)
    if q is not None and q.verdict == "failed" and not apply_failed:
        result.outputs["not_applied"] = "failed"
        out = None
    else:
        out = nodes.matrix_to_transform_node(ctx, result.ct_to_camera, "FluoroReg ct_to_camera",
                                             node=output_transform_node)
    volume = DRRVolume.from_hu(ct.array.astype(np.float32), ct.ijk_to_ras)
    drr = render_drr(volume, cameras[0], result.ct_to_camera)[0].detach().cpu().numpy()
    drr_out = nodes.volume_to_node(ctx, drr[None].astype(np.float32), xray_geometries[0],
                                   "FluoroReg DRR", node=drr_node)
    if out is not None:
        result.outputs["output_transform_node"] = out.GetID()
    result.outputs["drr_node"] = drr_out.GetID()
    return result


def apply_result(ctx, result, output_transform_node=None):
    """Write ``result.ct_to_camera`` to a transform node (e.g. a ``failed`` result the user
    chose to apply); returns the node."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    out = nodes.matrix_to_transform_node(ctx, result.ct_to_camera, "FluoroReg ct_to_camera",
                                         node=output_transform_node)
    result.outputs["output_transform_node"] = out.GetID()
    result.outputs.pop("not_applied", None)
    return out


GEOMETRY_ATTRIBUTE = "FluoroReg.Geometry"


def camera_for_xray_node(node, geometry_path=None, name: str = "X-ray image"):
    """The camera of an X-ray node: from ``geometry_path`` (JSON) when given, else from
    the node attribute ``FluoroReg.Geometry`` (geometry JSON text, set by
    :func:`set_node_geometry`), else from the DICOM tags of the file the node was loaded
    from (:func:`dicom_file_for_node`; ``XRayCamera.from_dicom``)."""
    from .geometry import load_geometry  # noqa: PLC0415

    if geometry_path:
        return load_geometry(geometry_path)
    text = node.GetAttribute(GEOMETRY_ATTRIBUTE) if node is not None else None
    if not text and node is not None:
        dicom_file = dicom_file_for_node(node)
        if dicom_file is not None:
            from SurgicalReg2D3DLib.cameras import XRayCamera  # noqa: PLC0415

            return XRayCamera.from_dicom(dicom_file)
    if not text:
        label = node.GetName() if node is not None else "?"
        raise GeometryError(f"X-ray geometry: missing for {name.lower()} '{label}'; choose a "
                            "geometry JSON file")
    import json  # noqa: PLC0415

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GeometryError(f"X-ray geometry: attribute {GEOMETRY_ATTRIBUTE} is not JSON: {exc}") from None
    return load_geometry(data)


def dicom_file_for_node(node):
    """The DICOM file an X-ray node was loaded from, or None: the node's storage file or
    the file named by ``io.SOURCE_FILE_ATTRIBUTE`` (set by ``io.load_image2d``) when it is
    DICOM, else (in the Slicer application) the file of its first instance UID (attribute
    ``DICOM.instanceUIDs``, set by Slicer's DICOM module) in Slicer's DICOM database."""
    from pathlib import Path  # noqa: PLC0415

    candidates = []
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    if storage is not None and storage.GetFileName():
        candidates.append(storage.GetFileName())
    if node.GetAttribute("SurgicalReg2D3D.SourceFile"):   # io.load_image2d
        candidates.append(node.GetAttribute("SurgicalReg2D3D.SourceFile"))
    uids = node.GetAttribute("DICOM.instanceUIDs")
    if uids:
        try:
            import slicer  # noqa: PLC0415

            database = getattr(slicer, "dicomDatabase", None)
            if database is not None:
                candidates.append(database.fileForInstance(uids.split()[0]))
        except ImportError:
            pass
    for name in candidates:
        path = Path(name) if name else None
        if path is not None and path.is_file():
            with open(path, "rb") as f:
                head = f.read(132)
            if len(head) == 132 and head[128:132] == b"DICM":
                return path
    return None


def set_node_geometry(node, camera) -> None:
    """Store a camera on an X-ray node (attribute ``FluoroReg.Geometry``, JSON text)."""
    import json  # noqa: PLC0415

    node.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(camera.to_dict()))


def check_views_and_geometries(n_xrays: int, n_geometries: int) -> None:
    """Raise the error for a count mismatch between X-ray images and geometries."""
    if n_xrays != n_geometries:
        raise InputError(f"X-ray geometry: {n_xrays} X-ray images but {n_geometries} "
                         "geometries; give one geometry per image")


__all__ = ["METHODS", "register_method", "available_methods", "register_arrays",
           "register_nodes", "default_initial_pose", "make_views", "GeometryError"]
