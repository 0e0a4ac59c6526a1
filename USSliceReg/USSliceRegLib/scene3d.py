"""USSliceReg's 3D scene: the frame at its registered pose inside the volume, and slice views
resliced along it (as SlicerIGT's Volume Reslice Driver does).

- :func:`frame_plane_model`: the frame as a textured plane model at ``image_to_ras`` (a copy;
  the frame node is not modified), shown in the 3D view inside the volume.
- :func:`drive_slice_views`: sets slice nodes to the frame's plane
  (``views3d.set_slice_node_to_image``), so the slice view shows the volume along the frame,
  to compare with the frame itself (blend or checkerboard in the panel).
- :func:`scene_items`: the same objects (plus the volume's outline and the volume resliced
  on the frame plane) for an off-screen picture.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib import render3d, views3d


def frame_plane_model(ctx, frame: np.ndarray, image_to_ras, name: str = "US frame in 3D",
                      node=None):
    """A textured plane model of ``frame`` (H, W) placed at ``image_to_ras``."""
    f = np.asarray(frame)
    plane = render3d.textured_plane(np.asarray(image_to_ras, float), f.shape[1], f.shape[0])
    return render3d.add_model_node(ctx, plane, name, texture=f, node=node)


def drive_slice_views(slice_nodes: Sequence, image_to_ras, frame_shape) -> np.ndarray:
    """Point every slice node at the frame's plane; returns the ``SliceToRAS`` used.
    The field of view is the frame's extent."""
    M = np.asarray(image_to_ras, float)
    rows, cols = int(frame_shape[0]), int(frame_shape[1])
    fov = (float(np.linalg.norm(M[:3, 0]) * cols), float(np.linalg.norm(M[:3, 1]) * rows))
    S = None
    for node in slice_nodes:
        S = views3d.set_slice_node_to_image(node, M, (rows, cols), fov)
    return S if S is not None else views3d.slice_to_ras_from_image(M, (rows, cols))


def _outline(volume_shape, ijk_to_ras):
    """The volume's bounding box (12 edges) in RAS."""
    k, j, i = volume_shape
    corners = np.array([[a, b, c, 1.0] for c in (0, k - 1) for b in (0, j - 1)
                        for a in (0, i - 1)]) @ np.asarray(ijk_to_ras, float).T
    return views3d.lines_polydata(corners[:, :3], (
        (0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7),
        (0, 4), (1, 5), (2, 6), (3, 7)))


def scene_items(volume: np.ndarray, ijk_to_ras, frame: np.ndarray, image_to_ras,
                resliced: Optional[np.ndarray] = None, offset_mm: float = 0.0
                ) -> List[render3d.SceneItem]:
    """Volume outline, the frame at ``image_to_ras`` and (when given) the volume resliced on
    the same plane, drawn ``offset_mm`` beside it along the plane normal."""
    M = np.asarray(image_to_ras, float)
    f = np.asarray(frame)
    items = [render3d.SceneItem(_outline(np.shape(volume), ijk_to_ras), color=(0.7, 0.7, 0.7),
                                lighting=False),
             render3d.SceneItem(render3d.textured_plane(M, f.shape[1], f.shape[0]), texture=f)]
    if resliced is not None:
        n = np.cross(M[:3, 0], M[:3, 1])
        shifted = M.copy()
        shifted[:3, 3] += offset_mm * n / np.linalg.norm(n)
        items.append(render3d.SceneItem(render3d.textured_plane(shifted, f.shape[1], f.shape[0]),
                                        texture=np.asarray(resliced)))
    return items


def demo_picture(path, volume, ijk_to_ras, frame, image_to_ras, resliced) -> None:
    """The frame inside the volume's outline (3D) and the slice view along it, one PNG."""
    items = scene_items(volume, ijk_to_ras, frame, image_to_ras)
    pic3d = render3d.render_offscreen(items, size=(420, 360), azimuth=35, elevation=25)
    f = np.asarray(frame, float)
    r = np.asarray(resliced, float)

    def norm(a):
        lo, hi = np.percentile(a, [1, 99])
        return np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)

    blend = np.stack([norm(f), norm(r), norm(f)], -1)
    blend = (blend * 255).astype(np.uint8)
    render3d.save_pictures(path, [pic3d, blend],
                           ["frame at its registered pose in the volume (outline)",
                            "slice view resliced along the frame: frame magenta, volume green"],
                           "USSliceReg 3D view and reslice (real PLUS sweep)")


def demo_picture_from_sweep(path, seq, chain, frame_index: int, fan, rec, seed: int = 5) -> dict:
    """Register one held-out frame of a sweep (start 10 mm / 10 deg off) to ``rec`` (a
    reconstruction without it) and draw :func:`demo_picture` at the result. All in the
    sweep's reference frame. Returns the frame's LNCC before/after."""
    from .methods import make_method  # noqa: PLC0415
    from .pose_utils import perturb_about_point, random_perturbations  # noqa: PLC0415

    fn = make_method("lncc", rec.array, rec.ijk_to_reference, seq.frame_shape, fan,
                     volume_mask=rec.filled)
    k = [int(i) for i in chain.indices].index(int(frame_index))
    truth = chain.image_to_reference[k]
    start = perturb_about_point(truth, random_perturbations(1, 10.0, 10.0, seed=seed)[0],
                                fn.registrar.fan_centre_px)
    res = fn(seq.images[frame_index][None], start[None])[0]
    vals, inside = fn.registrar.resample_volume(res.image_to_reference[None], step=1)
    resliced = np.where(inside[0].numpy(), vals[0].numpy(), 0.0)
    demo_picture(path, rec.array, rec.ijk_to_reference, seq.images[frame_index],
                 res.image_to_reference, resliced)
    return {"frame": int(frame_index), "lncc_start": float(res.lncc_start),
            "lncc": float(res.lncc)}
