"""Overlay picture: the registered liver outline and internal structures on the frame."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


def overlay_image(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                  model_to_camera: np.ndarray, camera,
                  structures: Optional[Dict[str, np.ndarray]] = None,
                  contours2d: Sequence = ()) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` copy of ``image`` (``(H, W)`` or ``(H, W, 3)``) with the
    rendered liver outline (cyan), ``structures`` (name -> model-frame points ``(N, 3)``,
    drawn as dots) and the 2D contours (P2ILF colours). The input is not modified."""
    import cv2  # noqa: PLC0415

    from .p2ilf import LABEL_COLORS  # noqa: PLC0415
    from .raster import render_mask  # noqa: PLC0415

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    out = np.ascontiguousarray(img[..., :3]).astype(np.float64)
    out = np.clip(255 * (out - out.min()) / max(1e-9, np.ptp(out)), 0, 255).astype(np.uint8) \
        if out.max() > 255 or out.dtype != np.uint8 else out.astype(np.uint8)
    out = out.copy()
    scale = max(1.0, camera.width / 480.0)
    cam = camera.scaled(scale) if scale > 1 else camera
    mask = render_mask(vertices, faces, model_to_camera, cam)[0].numpy().astype(np.uint8)
    cnts, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    sx, sy = camera.width / cam.width, camera.height / cam.height
    for c in cnts:
        p = c.reshape(-1, 2).astype(float)
        p = np.c_[(p[:, 0] + 0.5) * sx - 0.5, (p[:, 1] + 0.5) * sy - 0.5]
        cv2.polylines(out, [np.round(p).astype(np.int32)], True, (0, 255, 255), 2)
    T = np.asarray(model_to_camera)
    colours = [(255, 0, 255), (0, 0, 255), (255, 0, 0), (0, 255, 0)]
    for k, (name, pts) in enumerate((structures or {}).items()):
        pc = np.asarray(pts) @ T[:3, :3].T + T[:3, 3]
        pc = pc[pc[:, 2] > 1.0]
        if len(pc):
            for u, v in np.round(camera.project(pc).numpy()).astype(int):
                if 0 <= u < out.shape[1] and 0 <= v < out.shape[0]:
                    out[v, u] = colours[k % len(colours)]
    for c in contours2d:
        cv2.polylines(out, [np.round(c.points).astype(np.int32)], False,
                      LABEL_COLORS.get(c.label, (255, 255, 255)), 2)
    return out
