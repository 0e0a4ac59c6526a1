"""Rendering for the SYNTHETIC learned-registration data: a z-buffer (visible face,
perspective-correct barycentrics, depth) on top of :mod:`..raster`'s face-pixel
enumeration, per-vertex visibility, and the appearance model (tissue-coloured textured
background, liver colour x texture x Lambert shading from a light near the camera +
Phong speculars, gain, vignetting, occluding instruments, blur, noise). Nothing rendered
here is a real image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def render_ids(vertices: np.ndarray, faces: np.ndarray, model_to_camera: np.ndarray, cam,
               near: float = 1.0):
    """Z-buffer of a mesh: ``depth (H, W)`` mm (inf = background), ``face (H, W)`` (-1 =
    background), ``bary (H, W, 3)`` perspective-correct barycentrics, ``uv (V, 2)`` and
    ``z (V,)`` of the vertices."""
    import torch  # noqa: PLC0415

    from ..raster import _face_pairs, _inside, project_vertices  # noqa: PLC0415

    H, W = cam.height, cam.width
    with torch.no_grad():
        v = torch.as_tensor(vertices, dtype=torch.float64)
        f = torch.as_tensor(faces, dtype=torch.long)
        uv, z = project_vertices(v, torch.as_tensor(model_to_camera, dtype=torch.float64), cam)
        tri, pix, flat, _, fid = _face_pairs(uv, z, f, H, W, 0.0, near, with_faces=True)
        ins = _inside(tri, pix)
        tri, pix, flat, fid = tri[ins], pix[ins], flat[ins], fid[ins]
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]

        def cross(p, q, r):
            return (q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0])

        area = cross(a, b, c)
        area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
        l0, l1, l2 = cross(pix, b, c) / area, cross(a, pix, c) / area, cross(a, b, pix) / area
        zf = z[0][f[fid]]                                   # (P, 3)
        w = torch.stack([l0, l1, l2], 1).clamp(min=0) / zf
        depth = 1.0 / w.sum(1)
        bary = w * depth[:, None]
        zbuf = torch.full((H * W,), float("inf"), dtype=torch.float64)
        zbuf = zbuf.scatter_reduce(0, flat, depth, reduce="amin", include_self=True)
        win = depth <= zbuf[flat]
        face = torch.full((H * W,), -1, dtype=torch.long)
        face[flat[win]] = fid[win]
        bb = torch.zeros(H * W, 3, dtype=torch.float64)
        bb[flat[win]] = bary[win]
    return (zbuf.reshape(H, W).numpy(), face.reshape(H, W).numpy(), bb.reshape(H, W, 3).numpy(),
            uv[0].numpy(), z[0].numpy())


def vertex_visibility(uv: np.ndarray, z: np.ndarray, depth: np.ndarray, mask: np.ndarray,
                      near: float = 1.0) -> np.ndarray:
    """Vertices in the frame, in front of the camera, passing the depth test at their
    pixel and not hidden by an occluder (``mask`` False there)."""
    H, W = depth.shape
    u = np.round(uv[:, 0]).astype(np.int64)
    r = np.round(uv[:, 1]).astype(np.int64)
    ok = (z > near) & (u >= 0) & (u < W) & (r >= 0) & (r < H) & np.isfinite(uv).all(1)
    vis = np.zeros(len(z), bool)
    i = np.nonzero(ok)[0]
    dz = depth[r[i], u[i]]
    vis[i] = (z[i] <= dz + 0.03 * dz + 2.0) & mask[r[i], u[i]]
    return vis


def _smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    import cv2  # noqa: PLC0415

    g = rng.normal(size=(cells, max(2, int(cells * w / h)))).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _instrument(rng, h: int, w: int) -> np.ndarray:
    """A shaft entering from the border: a thick line (bool mask)."""
    import cv2  # noqa: PLC0415

    m = np.zeros((h, w), np.uint8)
    side = rng.integers(4)
    t = rng.uniform(0.1, 0.9)
    p0 = [(t * w, -5), (t * w, h + 5), (-5, t * h), (w + 5, t * h)][side]
    p1 = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
    cv2.line(m, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1,
             int(rng.uniform(0.06, 0.14) * w))
    return m.astype(bool)


def surface_at_pixels(face: np.ndarray, bary: np.ndarray, vertices_cam: np.ndarray,
                      normals_cam: np.ndarray, faces: np.ndarray):
    """The rendered surface per pixel: ``fg (H, W)`` (``face >= 0``) and, for its ``P``
    pixels, the camera-frame point ``p (P, 3)`` and unit normal ``n (P, 3)`` (interpolated
    vertex normals, turned to face the camera)."""
    fg = face >= 0
    fi = faces[face[fg]]                                     # (P, 3)
    b = bary[fg][..., None]
    p = (vertices_cam[fi] * b).sum(1)
    n = (normals_cam[fi] * b).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    return fg, p, np.where((n * p).sum(1, keepdims=True) > 0, -n, n)


def normal_map(face: np.ndarray, bary: np.ndarray, vertices_cam: np.ndarray,
               normals_cam: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Camera-frame unit normals ``(3, H, W)`` float32 of the rendered surface
    (:func:`surface_at_pixels`), zero where nothing is rendered."""
    out = np.zeros((3,) + face.shape, np.float32)
    fg, _, n = surface_at_pixels(face, bary, vertices_cam, normals_cam, faces)
    out[:, fg] = n.T
    return out


def shade(face: np.ndarray, bary: np.ndarray, vertices_cam: np.ndarray, normals_cam: np.ndarray,
          faces: np.ndarray, rng, occluders: Sequence[np.ndarray] = ()) -> np.ndarray:
    """RGB float image ``(H, W, 3)`` in [0, 1] (see the module docstring, step 4)."""
    import cv2  # noqa: PLC0415

    H, W = face.shape
    fg, p, n = surface_at_pixels(face, bary, vertices_cam, normals_cam, faces)
    bg_col = np.array([rng.uniform(0.35, 0.7), rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.25)])
    img = bg_col * (0.6 + 0.25 * _smooth_noise(rng, H, W, 6))[..., None]
    img *= (1 + 0.15 * _smooth_noise(rng, H, W, 24))[..., None]
    if fg.any():
        light = np.array([rng.normal(0, 15), rng.normal(0, 15), 0.0])
        l_dir = light - p
        l_dir /= np.linalg.norm(l_dir, axis=1, keepdims=True)
        view = -p / np.linalg.norm(p, axis=1, keepdims=True)
        diff = np.clip((n * l_dir).sum(1), 0, 1)
        h = l_dir + view
        h /= np.linalg.norm(h, axis=1, keepdims=True)
        spec = np.clip((n * h).sum(1), 0, 1) ** rng.uniform(15, 80) * rng.uniform(0.0, 0.8)
        col = np.array([rng.uniform(0.45, 0.75), rng.uniform(0.12, 0.3), rng.uniform(0.08, 0.2)])
        tex = (1 + 0.2 * _smooth_noise(rng, H, W, 16))[fg]
        falloff = np.clip((150.0 / np.linalg.norm(p, axis=1)) ** 2, 0.3, 2.0) * rng.uniform(0.6, 1.2)
        amb = rng.uniform(0.15, 0.35)
        img[fg] = col * (tex * (amb + (1 - amb) * diff * falloff))[:, None] + spec[:, None]
    for occ in occluders:
        grey = rng.uniform(0.3, 0.8)
        shade_occ = grey * (0.7 + 0.3 * _smooth_noise(rng, H, W, 4))
        img[occ] = np.stack([shade_occ] * 3, -1)[occ]
    yy, xx = np.mgrid[0:H, 0:W]
    vig = 1 - rng.uniform(0.0, 0.5) * (((xx - W / 2) / W) ** 2 + ((yy - H / 2) / H) ** 2) * 2
    img = img * vig[..., None] * rng.uniform(0.7, 1.3)
    s = rng.uniform(0.0, 1.2)
    if s > 0.3:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), s)
    img = img + rng.normal(0, rng.uniform(0.0, 0.04), img.shape)
    return np.clip(img, 0, 1).astype(np.float32)
