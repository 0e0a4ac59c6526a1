"""SYNTHETIC training frames for the landmark segmentation network (kind ``"landmarks"``).

Same shapes, cameras, poses and appearance as :func:`.data.make_sample` (a deformed, cut,
bent copy of a base mesh seen by a laparoscope 80-250 mm away, P2ILF / SciKit-Surgery /
random cameras, shading, speculars, instruments, blur, noise), but the ground truth is
per pixel of the ``NET_H x NET_W`` network image, three binary maps:

- **ridge**: the visible surface whose nearest vertex is a curvature ridge vertex
  (:func:`.data.ridge_vertices`, the sharpest 8 %);
- **ligament**: the same for the annotated falciform-ligament vertices (only when the
  base mesh has them; otherwise the channel is marked *not valid* for the loss);
- **silhouette**: the occluding contour of the liver: visible liver pixels next to the
  background or to a surface at least 4 % / 3 mm deeper (a fold), dilated to 2 px; pixels
  at the frame border and edges made by instruments are not silhouette;

and one dense map, **normals** ``(3, H, W)``: the unit surface normal of the visible liver
in the camera frame (x right, y down, z along the view; interpolated vertex normals of
the shape in the frame, turned to face the camera: :func:`.render.normal_map`), zero
where the mask is 0. The shading
of a laparoscope (light at the camera) carries the surface orientation; the pose search
compares this map with the mesh's normals (:mod:`.landmarks_align`).

Nothing here is a real image.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from . import data, render, shapes


def silhouette_map(face: np.ndarray, depth: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Occluding-contour pixels (bool ``(H, W)``, see the module docstring)."""
    import cv2  # noqa: PLC0415

    liver = face >= 0
    H, W = liver.shape
    d = np.where(liver, depth, np.inf)
    sil = np.zeros((H, W), bool)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nb = np.full((H, W), np.nan)
        rs = slice(max(0, dr), H + min(0, dr))
        rd = slice(max(0, -dr), H + min(0, -dr))
        cs = slice(max(0, dc), W + min(0, dc))
        cd = slice(max(0, -dc), W + min(0, -dc))
        nb[rd, cd] = d[rs, cs]
        jump = np.isfinite(d) & (np.nan_to_num(nb, nan=-1.0) > d + np.maximum(3.0, 0.04 * d))
        jump &= ~np.isnan(nb)                       # the frame border is no silhouette
        sil |= jump
    sil &= visible
    k = np.ones((2, 2), np.uint8)
    return cv2.dilate(sil.astype(np.uint8), k).astype(bool)


def landmark_sample(tm: "data.TrainMesh", rng, camera=None, model_to_camera=None,
                    preop: bool = True, bend_curvature: float = 1 / 160.0,
                    instruments: bool = True, max_tries: int = 20,
                    warp_mm: float = shapes.PREOP_WARP_MM,
                    ridge_definition: str = "ring",
                    relief_prob: float = 0.0) -> Dict[str, np.ndarray]:
    """One SYNTHETIC frame with its landmark maps: a dict with ``image (3, H, W)`` float32,
    ``mask (H, W)`` uint8 (instruments removed), ``target (3, H, W)`` uint8 (ridge,
    ligament, silhouette), ``valid (3,)`` uint8, ``normals (3, H, W)`` float32 (zero
    outside the mask), ``model_to_camera (4, 4)`` (base mesh
    -> camera, rigid part; the frame shows the bent copy) and ``vertices`` (the shape
    seen in the frame, same vertex ids as the base mesh unless cut); ``warp_mm``: see
    :func:`.data.render_frame`, as ``ridge_definition`` and ``relief_prob``."""
    fr = data.render_frame(tm, rng, camera, model_to_camera, preop, bend_curvature,
                           instruments, max_tries, warp_mm, ridge_definition, relief_prob)
    ids0, ridge, lig, fs, cam, T, vi = (fr[k] for k in ("ids0", "ridge", "lig", "fs", "cam",
                                                        "T", "vi"))
    depth, face, bary, mask, img = (fr[k] for k in ("depth", "face", "bary", "mask", "img"))
    liver = fr["liver"]
    near = np.full(face.shape, -1, np.int64)
    near[liver] = fs[face[liver], bary[liver].argmax(1)]
    tgt = np.zeros((3,) + face.shape, np.uint8)
    tgt[0] = mask & (near >= 0) & ridge[np.maximum(near, 0)]
    tgt[1] = mask & (near >= 0) & lig[np.maximum(near, 0)]
    tgt[2] = silhouette_map(face, depth, mask)
    valid = np.array([1, int(bool(tm.ligament.any())), 1], np.uint8)
    normals = render.normal_map(face, bary, fr["vc"], fr["ni"] @ T[:3, :3].T, fs) * mask
    return {"image": np.transpose(img, (2, 0, 1)).copy(), "mask": mask.astype(np.uint8),
            "target": tgt, "valid": valid, "normals": normals.astype(np.float32),
            "model_to_camera": T, "camera": cam,
            "vertices": vi, "faces": fs, "kept": ids0}


def pack(s: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The arrays of a sample as stored in the training cache (uint8; the normals as
    ``round((n + 1) * 127.5)``, :func:`unpack_normals`; ``K``: the network camera's
    ``fx, fy, cx, cy`` as float32, for the viewing rays of a ray-normal network)."""
    nc = data.net_camera(s["camera"])
    return {"image": np.round(s["image"] * 255).astype(np.uint8), "mask": s["mask"],
            "target": s["target"], "valid": s["valid"],
            "normals": np.round((s["normals"] + 1.0) * 127.5).astype(np.uint8),
            "K": np.array([nc.fx, nc.fy, nc.cx, nc.cy], np.float32)}


def unpack_normals(packed: np.ndarray) -> np.ndarray:
    """The float normals of :func:`pack`'s uint8 (unit length to about 1 %)."""
    return packed.astype(np.float32) / 127.5 - 1.0
