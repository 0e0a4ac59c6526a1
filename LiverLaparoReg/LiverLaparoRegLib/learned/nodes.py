"""Node-level helpers of the learned registration for the GUI (Qt-free, MRML only).

The GUI workflow: predict the correspondences, show them as a markups point list on the
frame (one control point per match, labelled ``v<vertex id> <class> <confidence>``), let
the user delete or drag points, then compute the pose from what is left
(:func:`register_from_markups`: EPnP + RANSAC, silhouette refinement with the mask). The
liver mask can come from a segmentation painted in the Segment Editor on the frame
(:func:`mask_from_segmentation`).

Node-level entry points the module's buttons call: :func:`predict_correspondence_nodes`
("Predict correspondences": the learned registration on the frame, its correspondences as
the point list) and :func:`register_nodes_from_markups` ("Register from the edited
correspondences": the pose into a transform node). Input nodes are never modified.

Pixel ``(u, v)`` of the frame <-> RAS: ``frame_ijk_to_ras @ (u, v, 0, 1)`` (the frame is
a single-slice volume node).
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

_LABEL = re.compile(r"^v(\d+)\b")


def mask_from_segmentation(ctx, segmentation_node, frame_node,
                           segment_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """``(H, W)`` bool liver mask of the frame from Segment Editor segments (all segments
    unless ``segment_names``), rasterised on the frame's grid."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    ids = nodes.segment_ids(segmentation_node, segment_names, "mask segmentation")
    if not ids:
        raise InputError("mask segmentation: the segmentation has no segments")
    lab = nodes.segmentation_to_labelmap(ctx, segmentation_node, frame_node, ids)
    try:
        data = nodes.labelmap_from_node(lab, "mask segmentation")
    finally:
        ctx.scene.RemoveNode(lab)
    arr = data.array
    if arr.shape[0] != 1:
        raise InputError(f"mask segmentation: expected a single-slice frame, got {arr.shape[0]} "
                         f"slices")
    mask = arr[0] != 0
    if not mask.any():
        raise InputError("mask: the liver mask is empty (the segmentation covers no pixel of "
                         "the frame)")
    return mask


def correspondences_to_markups(ctx, correspondences: Sequence[dict], frame_ijk_to_ras=None,
                               name: str = "learned correspondences", node=None):
    """A markups point list with one control point per correspondence (see module doc)."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    if not correspondences:
        raise InputError("correspondences: no correspondences to show")
    M = np.eye(4) if frame_ijk_to_ras is None else np.asarray(frame_ijk_to_ras, np.float64)
    uv = np.asarray([c["pixel"] for c in correspondences], np.float64)
    ras = (np.c_[uv, np.zeros(len(uv)), np.ones(len(uv))] @ M.T)[:, :3]
    labels = [f"v{int(c['vertex'])} {c.get('class', 'none')} {float(c.get('confidence', 0)):.2f}"
              for c in correspondences]
    return nodes.points_to_markups(ctx, ras, name, kind="fiducial", labels=labels, node=node)


def correspondences_from_markups(markups_node, frame_ijk_to_ras=None) -> List[dict]:
    """The (possibly edited) correspondences back from the point list: control points the
    user deleted are gone, dragged ones have their new pixel; the vertex id is read from
    the label (``v<id> ...``; points with another label are an error)."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    ras = nodes.points_from_markups(markups_node, "correspondences")
    labels = nodes.markups_labels(markups_node, "correspondences")
    M = np.eye(4) if frame_ijk_to_ras is None else np.asarray(frame_ijk_to_ras, np.float64)
    ijk = (np.c_[ras, np.ones(len(ras))] @ np.linalg.inv(M).T)[:, :3]
    out = []
    for k, (lab, p) in enumerate(zip(labels, ijk)):
        m = _LABEL.match(lab.strip())
        if m is None:
            raise InputError(f"correspondences: control point {k} is labelled {lab!r}; expected "
                             f"'v<vertex id> ...' (add points by copying a predicted one)")
        parts = lab.split()
        out.append({"pixel": [float(p[0]), float(p[1])], "vertex": int(m.group(1)),
                    "class": parts[1] if len(parts) > 1 else "none",
                    "confidence": float(parts[2]) if len(parts) > 2 else 1.0})
    return out


def register_from_markups(mesh, camera, markups_node, frame_ijk_to_ras=None, mask=None,
                          refine: bool = True):
    """Pose from the edited correspondences: ``(model_to_camera, PnPResult)``; EPnP +
    RANSAC, then the silhouette refinement when a mask is given."""
    from ..silhouette import refine_from_mask  # noqa: PLC0415
    from .infer import pose_from_correspondences  # noqa: PLC0415
    from ..camera import check_mask  # noqa: PLC0415

    corr = correspondences_from_markups(markups_node, frame_ijk_to_ras)
    for c in corr:
        if not 0 <= c["vertex"] < len(mesh.vertices):
            raise InputError(f"correspondences: vertex id {c['vertex']} is not a vertex of the "
                             f"mesh ({len(mesh.vertices)} vertices)")
    T, r = pose_from_correspondences(mesh, camera, corr)
    if refine and mask is not None:
        mask = check_mask(mask, camera)
        T, _, _ = refine_from_mask(mesh, camera, mask, T)
    return T, r


def _mesh_of(model_node):
    from ..logic import model_mesh_arrays  # noqa: PLC0415
    from ..mesh import MeshData  # noqa: PLC0415

    if model_node is None:
        raise InputError("mesh: select the liver model")
    v, f = model_mesh_arrays(model_node)
    return MeshData(v, f, "mesh")


def predict_correspondence_nodes(ctx, model_node, frame_node, camera, mask=None, model=None,
                                 markups_node=None, progress=None, cancel=None,
                                 learned_options=None):
    """Run the learned registration on the frame (the bundled model unless ``model``) and
    show its correspondences as a point list on the frame (``markups_node``, created when
    None). Returns ``(markups node, LearnedResult)``. A frame where the model finds no
    usable correspondences raises its :class:`InputError` and creates no node.
    ``learned_options``: more keyword arguments of ``infer.register_learned`` (the view
    prior: ``view_axis``, ``cone_deg``)."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    from .infer import register_learned  # noqa: PLC0415

    if frame_node is None:
        raise InputError("image: select a frame")
    mesh = _mesh_of(model_node)
    image, ijk = nodes.image2d_from_node(frame_node, "image")
    result = register_learned(mesh, camera, image=image, mask=mask, model=model,
                              progress=progress, cancel=cancel, **dict(learned_options or {}))
    node = correspondences_to_markups(ctx, result.correspondences, ijk,
                                      "LiverLaparoReg learned correspondences", node=markups_node)
    return node, result


def register_nodes_from_markups(ctx, model_node, frame_node, camera, markups_node, mask=None,
                                output_transform_node=None, refine: bool = True):
    """The pose from the (edited) point list into ``output_transform_node`` (created when
    None) as ``model_to_camera``; returns ``(model_to_camera, PnPResult, transform node)``."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    if frame_node is None:
        raise InputError("image: select a frame")
    if markups_node is None:
        raise InputError("correspondences: predict them first (no point list)")
    mesh = _mesh_of(model_node)
    _image, ijk = nodes.image2d_from_node(frame_node, "image")
    T, r = register_from_markups(mesh, camera, markups_node, ijk, mask=mask, refine=refine)
    out = nodes.matrix_to_transform_node(ctx, T, "model_to_camera", node=output_transform_node)
    return T, r, out
