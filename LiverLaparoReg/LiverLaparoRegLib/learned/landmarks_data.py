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
  at the frame border and edges made by instruments are not silhouette.

Nothing here is a real image.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from . import data


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
                    instruments: bool = True, max_tries: int = 20) -> Dict[str, np.ndarray]:
    """One SYNTHETIC frame with its landmark maps: a dict with ``image (3, H, W)`` float32,
    ``mask (H, W)`` uint8 (instruments removed), ``target (3, H, W)`` uint8 (ridge,
    ligament, silhouette), ``valid (3,)`` uint8, ``model_to_camera (4, 4)`` (base mesh
    -> camera, rigid part; the frame shows the bent copy) and ``vertices`` (the shape
    seen in the frame, same vertex ids as the base mesh unless cut)."""
    v0, f0 = tm.vertices, tm.faces
    ids0 = np.arange(len(v0))
    if preop:
        vs = data.rbf_warp(v0, rng, rng.uniform(0, 8.0))
        vs = (vs - vs.mean(0)) * rng.uniform(0.85, 1.15, 3) + vs.mean(0)
        fs = f0
        if rng.uniform() < 0.3:
            vs, fs, ids0 = data.cut(vs, f0, rng)
    else:
        vs, fs = v0.copy(), f0
    ridge, lig = tm.ridge[ids0], tm.ligament[ids0]
    vi = data.bend(vs, rng, bend_curvature) if bend_curvature > 0 else vs.copy()
    if preop:
        vi = data.rbf_warp(vi, rng, rng.uniform(0, 4.0))
    ni = data.vertex_normals(vi, fs)
    for _ in range(max_tries):
        cam = camera if camera is not None else data.training_camera(rng)
        ncam = data.net_camera(cam)
        T = (np.asarray(model_to_camera, float) if model_to_camera is not None
             else data.sample_pose(vi, ni, rng, tm.view_axis))
        vc = vi @ T[:3, :3].T + T[:3, 3]
        if model_to_camera is None and vc[:, 2].min() < 5.0:
            continue
        depth, face, bary, uv, z = data.render_ids(vi, fs, T, ncam)
        liver = face >= 0
        if model_to_camera is None and liver.mean() < 0.04:
            continue
        break
    occ = []
    if instruments:
        occ = [data._instrument(rng, data.NET_H, data.NET_W)
               for _ in range(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    mask = liver.copy()
    for o in occ:
        mask &= ~o
    img = data.shade(face, bary, vc, ni @ T[:3, :3].T, fs, rng, occ)
    near = np.full(face.shape, -1, np.int64)
    near[liver] = fs[face[liver], bary[liver].argmax(1)]
    tgt = np.zeros((3,) + face.shape, np.uint8)
    tgt[0] = mask & (near >= 0) & ridge[np.maximum(near, 0)]
    tgt[1] = mask & (near >= 0) & lig[np.maximum(near, 0)]
    tgt[2] = silhouette_map(face, depth, mask)
    valid = np.array([1, int(bool(tm.ligament.any())), 1], np.uint8)
    return {"image": np.transpose(img, (2, 0, 1)).copy(), "mask": mask.astype(np.uint8),
            "target": tgt, "valid": valid, "model_to_camera": T, "camera": cam,
            "vertices": vi, "faces": fs, "kept": ids0}


def pack(s: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The arrays of a sample as stored in the training cache (uint8)."""
    return {"image": np.round(s["image"] * 255).astype(np.uint8), "mask": s["mask"],
            "target": s["target"], "valid": s["valid"]}
