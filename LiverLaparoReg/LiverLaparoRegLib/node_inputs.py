"""LiverLaparoReg inputs as Slicer nodes: contours as Markups curves, the liver mask from a
Segmentation (Segment Editor) or a labelmap, the camera stored with the frame node.

Contours:
- a 2D landmark contour is a Markups curve drawn on the frame in a slice view; its control
  points (RAS) are mapped to frame pixels through the frame node's ``ijk_to_ras`` (and its
  parent transforms) and must lie on the frame (|k| < 0.5 voxel);
- a 3D contour is a Markups curve on the liver model (control points snapped to the nearest
  mesh vertex, within ``max_distance_mm``), in the model node's RAS;
- the landmark class (``Ridge``, ``Ligament``, ``Silhouette``) is the curve's attribute
  :data:`CLASS_ATTRIBUTE`, or else the first word of its name ("Ridge 2D 0", "ligament").

P2ILF JSON files load into these nodes (``logic.contours_to_markups``, which sets the
attribute) and save back from them (:func:`save_contours_2d`, :func:`save_contours_3d`).

Camera: :func:`set_frame_camera` stores a :class:`PinholeCamera` (intrinsics, distortion,
image size) on the frame or video node as JSON text in :data:`CAMERA_ATTRIBUTE`, so it is
saved with the scene and shown/edited in the panel; :func:`camera_for_frame_node` reads it.
Nodes given here are read, never modified (except by the two setters, which exist for that).
"""

from __future__ import annotations

import json
from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.cameras import PinholeCamera
from SurgicalReg2D3DLib.errors import GeometryError, InputError

from .p2ilf import LABELS, Contour2D, Contour3D, _check_label

CLASS_ATTRIBUTE = "LiverLaparoReg.LandmarkClass"
CAMERA_ATTRIBUTE = "LiverLaparoReg.Camera"
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def _label(node) -> str:
    name = node.GetName() or ""
    attr = node.GetAttribute(CLASS_ATTRIBUTE)
    if attr:
        return _check_label(attr, f"contour '{name}'")
    first = name.replace("_", " ").split(" ")[0] if name else ""
    for known in LABELS:
        if first.lower() == known.lower():
            return known
    raise InputError(f"contour '{name}': no landmark class; name the curve 'Ridge ...', "
                     f"'Ligament ...' or 'Silhouette ...', or set its attribute "
                     f"{CLASS_ATTRIBUTE}")


def _world_points(node) -> np.ndarray:
    n = node.GetNumberOfControlPoints()
    pts = np.zeros((n, 3))
    for i in range(n):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        pts[i] = p
    return pts


def _labelled_points(node, what: str):
    """``(landmark class, control points (N, 3) in world RAS)`` of a curve, N >= 2."""
    label = _label(node)
    p = _world_points(node)
    if len(p) < 2:
        raise InputError(f"{what} '{node.GetName()}': needs at least 2 points, got {len(p)}")
    return label, p


def contours2d_from_markups(curve_nodes: Sequence, frame_node) -> List[Contour2D]:
    """2D contours (pixels) from curves drawn on ``frame_node`` (a single-slice volume)."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    if frame_node is None:
        raise InputError("2D contours: the frame they were drawn on is needed")
    _, ijk_to_ras = nodes.image2d_from_node(frame_node, "frame")
    world = nodes.world_matrix(frame_node, "frame") @ ijk_to_ras
    ras_to_ijk = np.linalg.inv(world)
    out = []
    for node in curve_nodes:
        label, p = _labelled_points(node, "2D contour")
        ijk = np.c_[p, np.ones(len(p))] @ ras_to_ijk.T
        if np.abs(ijk[:, 2]).max() > 0.5:
            raise GeometryError(f"2D contour '{node.GetName()}': its points are not on the "
                                f"frame '{frame_node.GetName()}' (up to "
                                f"{np.abs(ijk[:, 2]).max():.1f} slices off)")
        out.append(Contour2D(label, ijk[:, :2].copy()))
    return out


def contours3d_from_markups(curve_nodes: Sequence, vertices_model: np.ndarray,
                            max_distance_mm: float = 5.0) -> List[Contour3D]:
    """3D contours (vertex ids) from curves placed on the liver model.

    ``vertices_model``: the mesh vertices in the model frame (file coordinates; Slicer shows
    them in RAS with x and y negated). Each control point snaps to its nearest vertex;
    consecutive repeats are dropped.
    """
    from scipy.spatial import cKDTree  # noqa: PLC0415

    v = np.asarray(vertices_model, dtype=np.float64)
    tree = cKDTree(v * RAS_TO_LPS)  # vertices in RAS
    out = []
    for node in curve_nodes:
        label, p = _labelled_points(node, "3D contour")
        dist, idx = tree.query(p)
        if dist.max() > max_distance_mm:
            raise GeometryError(f"3D contour '{node.GetName()}': a point is "
                                f"{dist.max():.1f} mm from the liver model (max "
                                f"{max_distance_mm} mm); place the curve on the model")
        keep = np.r_[True, idx[1:] != idx[:-1]]
        out.append(Contour3D(label, idx[keep].astype(np.int64)))
    return out


def _write_json(path, data) -> None:
    from SurgicalReg2D3DLib.outputs import write_json_atomic  # noqa: PLC0415

    write_json_atomic(path, data, "contours file", indent=1)


def set_contour_class(node, label: str) -> None:
    """Tag a curve node with its landmark class."""
    node.SetAttribute(CLASS_ATTRIBUTE, _check_label(label, f"contour '{node.GetName()}'"))


def save_contours_2d(curve_nodes: Sequence, frame_node, path) -> None:
    """Write the curves drawn on the frame as a P2ILF 2D contours JSON (integer pixels)."""
    from .p2ilf import contours_2d_to_json  # noqa: PLC0415

    contours = contours2d_from_markups(curve_nodes, frame_node)
    for c in contours:  # the challenge schema stores integer pixels
        c.points = np.rint(c.points).astype(np.int64)
    _write_json(path, contours_2d_to_json(contours))


def save_contours_3d(curve_nodes: Sequence, vertices_model: np.ndarray, path) -> None:
    """Write the curves on the model as a P2ILF 3D contours JSON (vertex ids)."""
    from .p2ilf import contours_3d_to_json  # noqa: PLC0415

    _write_json(path, contours_3d_to_json(contours3d_from_markups(curve_nodes, vertices_model)))


def mask_from_node(ctx, node, frame_node, segment_names: Optional[Sequence[str]] = None
                   ) -> np.ndarray:
    """The liver mask ``(H, W)`` bool on the frame's pixel grid, from a Segmentation node
    (painted with the Segment Editor; all segments or ``segment_names``) or a labelmap /
    scalar volume node (non-zero = liver)."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    if node is None:
        raise InputError("mask: no segmentation or labelmap given")
    image, _ = nodes.image2d_from_node(frame_node, "frame")
    if node.IsA("vtkMRMLSegmentationNode"):
        ids = nodes.segment_ids(node, names=segment_names)
        label_node = nodes.segmentation_to_labelmap(ctx, node, frame_node, segment_ids=ids,
                                                    name="__laparo_mask_tmp")
        try:
            mask, _ = nodes.image2d_from_node(label_node, "mask")
        finally:
            ctx.scene.RemoveNode(label_node)
    else:
        mask, _ = nodes.image2d_from_node(node, "mask")
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.shape != image.shape[:2]:
        raise InputError(f"mask: size {mask.shape[1]}x{mask.shape[0]} does not match the frame "
                         f"size {image.shape[1]}x{image.shape[0]}")
    mask = mask != 0
    if not mask.any():
        raise InputError(f"mask: '{node.GetName()}' is empty on the frame")
    return mask


def set_frame_camera(node, camera: PinholeCamera) -> None:
    """Store the laparoscope camera on a frame / video node (attribute, JSON)."""
    node.SetAttribute(CAMERA_ATTRIBUTE, json.dumps(camera.to_dict()))


def camera_for_frame_node(node) -> PinholeCamera:
    """The camera stored on a frame / video node by :func:`set_frame_camera`."""
    text = node.GetAttribute(CAMERA_ATTRIBUTE) if node is not None else None
    if not text:
        name = node.GetName() if node is not None else "?"
        raise GeometryError(f"camera: none stored with frame '{name}'; load a camera file "
                            "(OpenCV / P2ILF / scikit-surgery) in the panel")
    try:
        return PinholeCamera.from_dict(json.loads(text))
    except ValueError as exc:
        raise GeometryError(f"camera: attribute {CAMERA_ATTRIBUTE} is not valid: {exc}") from None


def resolve_inputs(ctx, frame_node, vertices_model, camera_path=None, distortion_path=None,
                   curves2d: Sequence = (), curves3d: Sequence = (), contours2d_path=None,
                   contours3d_path=None, mask_node=None):
    """The registration inputs from nodes, or from files where files are given.

    - camera: ``camera_path`` (+ ``distortion_path``) when given (then also stored on the
      frame node, so the scene remembers it), else the camera stored on the frame node;
    - contours: the P2ILF files when given, else the Markups curves (both 2D and 3D needed);
    - mask: a Segmentation / labelmap / scalar volume node on the frame (``mask_from_node``).

    Returns ``(camera, contours2d or None, contours3d or None, mask or None)``.
    """
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    from .camera import load_camera  # noqa: PLC0415
    from .p2ilf import read_contours_2d, read_contours_3d  # noqa: PLC0415

    if frame_node is None:
        raise InputError("image: select a frame")
    image, _ = nodes.image2d_from_node(frame_node, "image")
    if camera_path:
        camera = load_camera(camera_path, width=image.shape[1], height=image.shape[0],
                             distortion_path=distortion_path)
        set_frame_camera(frame_node, camera)
    else:
        camera = camera_for_frame_node(frame_node)
    c2 = read_contours_2d(contours2d_path) if contours2d_path else None
    c3 = read_contours_3d(contours3d_path, len(vertices_model)) if contours3d_path else None
    if c2 is None and curves2d:
        c2 = contours2d_from_markups(curves2d, frame_node)
    if c3 is None and curves3d:
        c3 = contours3d_from_markups(curves3d, vertices_model)
    mask = mask_from_node(ctx, mask_node, frame_node) if mask_node is not None else None
    return camera, c2, c3, mask
