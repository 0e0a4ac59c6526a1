"""Point-to-plane correspondence (PPC) registration of a CT to X-ray images.

Classic (non-learned) PPC, after Wang et al. (2017), in four steps per iteration:

1. **3D edge points** (once): a 3D Canny-like detector on the smoothed CT: voxels whose
   gradient magnitude is a local maximum along the gradient direction and above a
   quantile threshold; each point keeps its unit gradient (surface normal) in RAS.
2. **Contour selection** at the current pose: points whose surface is tangent to the
   viewing ray (``|n . ray| < cos_tangent``) form the projected contour. Their 2D normal
   is the projection of the 3D normal onto the detector.
3. **2D matching** along the contour normal: the gradient profile of the DRR at the
   current pose (taken along the normal around the projected point) is correlated with
   the X-ray's gradient profile at shifts in ``[-search, search]`` pixels; the best
   shift gives the matched 2D point, the correlation its weight.
4. **Weighted PPC solve**: the matched 2D point and the contour tangent span, with the
   X-ray source, a plane; the 3D point must lie on it. With a small motion
   ``(omega, v)`` about the CT centre (camera-0 frame) each correspondence gives one
   linear equation ``m . (P + omega x (P - c) + v) + d = 0``; the weighted (Huber
   re-weighted) least-squares solution updates the pose.

Multi-view: equations of all views are stacked, with each view's plane moved into the
camera-0 frame through the fixed C-arm motion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from .geometry import camera_parameters
from .refine import (RegistrationResult, XRayView, check_pose, image_similarity, prepare_views)


@dataclass
class EdgePoints:
    """3D edge points of a CT: ``points`` (N, 3) RAS mm, ``normals`` (N, 3) unit RAS,
    ``strength`` (N,) gradient magnitude (mu per mm)."""

    points: np.ndarray
    normals: np.ndarray
    strength: np.ndarray


def edge_points_3d(mu: np.ndarray, ijk_to_ras: np.ndarray, sigma_vox: float = 1.0,
                   quantile: float = 0.9, max_points: int = 4000, seed: int = 0) -> EdgePoints:
    """3D Canny-like edge points of an attenuation (or HU) volume (K, J, I)."""
    from scipy import ndimage  # noqa: PLC0415

    vol = ndimage.gaussian_filter(np.asarray(mu, np.float32), sigma_vox)
    gk, gj, gi = np.gradient(vol)
    g_ijk = np.stack([gi, gj, gk], -1)  # d/di, d/dj, d/dk
    mag = np.linalg.norm(g_ijk, axis=-1)
    thr = np.quantile(mag[mag > 0], quantile) if np.any(mag > 0) else np.inf
    cand = np.argwhere(mag > thr)  # (k, j, i)
    if len(cand) == 0:
        raise InputError("CT volume: no edges found for point-to-plane correspondence")
    g = g_ijk[cand[:, 0], cand[:, 1], cand[:, 2]]
    d = g / np.linalg.norm(g, axis=1, keepdims=True)
    # Non-maximum suppression along the gradient (in voxel units).
    kji = cand.astype(float)
    dkji = d[:, ::-1]
    m0 = mag[cand[:, 0], cand[:, 1], cand[:, 2]]
    plus = ndimage.map_coordinates(mag, (kji + dkji).T, order=1, mode="nearest")
    minus = ndimage.map_coordinates(mag, (kji - dkji).T, order=1, mode="nearest")
    keep = (m0 >= plus) & (m0 >= minus)
    cand, g, m0 = cand[keep], g[keep], m0[keep]
    if len(cand) > max_points:
        rng = np.random.default_rng(seed)
        sel = rng.choice(len(cand), max_points, replace=False, p=m0 / m0.sum())
        cand, g, m0 = cand[sel], g[sel], m0[sel]
    m = np.asarray(ijk_to_ras, float)
    pts = np.c_[cand[:, ::-1].astype(float), np.ones(len(cand))] @ m.T
    # Gradient in RAS: g_ras = inv(M)^T g_ijk.
    g_ras = g @ np.linalg.inv(m[:3, :3])
    n = g_ras / np.linalg.norm(g_ras, axis=1, keepdims=True)
    return EdgePoints(pts[:, :3], n, m0)


def _smoothed_gradients(img: np.ndarray, sigma: float):
    from scipy import ndimage  # noqa: PLC0415

    s = ndimage.gaussian_filter(np.asarray(img, np.float64), sigma)
    return np.gradient(s)[1], np.gradient(s)[0]  # d/du (columns), d/dv (rows)


def _match_view(points_cam, normals_cam, camera, xray, drr, search_px: float,
                cos_tangent: float, sigma_px: float, half_window: int = 4):
    """Correspondences of one view: returns plane normals ``m`` (M, 3), 3D points (M, 3)
    (camera frame), weights (M,) and the matched 2D points (M, 2)."""
    from scipy import ndimage  # noqa: PLC0415

    p = camera_parameters(camera)
    ray = points_cam / np.linalg.norm(points_cam, axis=1, keepdims=True)
    tangent = np.abs((normals_cam * ray).sum(1)) < cos_tangent
    P, N = points_cam[tangent], normals_cam[tangent]
    if len(P) == 0:
        return None
    uv = np.stack([P[:, 0] / P[:, 2] * p.f / p.sx + p.cx, P[:, 1] / P[:, 2] * p.f / p.sy + p.cy], 1)
    Q = P + 0.5 * N
    uv2 = np.stack([Q[:, 0] / Q[:, 2] * p.f / p.sx + p.cx, Q[:, 1] / Q[:, 2] * p.f / p.sy + p.cy], 1)
    n2 = uv2 - uv
    n2_len = np.linalg.norm(n2, axis=1)
    ok = n2_len > 1e-9
    margin = 2.0  # profiles leaving the image read the border (nearest) values
    ok &= (uv[:, 0] > margin) & (uv[:, 0] < p.width - 1 - margin)
    ok &= (uv[:, 1] > margin) & (uv[:, 1] < p.height - 1 - margin)
    P, uv, n2 = P[ok], uv[ok], n2[ok] / n2_len[ok, None]
    if len(P) == 0:
        return None
    gx_x, gy_x = _smoothed_gradients(xray, sigma_px)
    gx_d, gy_d = _smoothed_gradients(drr, sigma_px)
    r = int(np.ceil(search_px))
    offs = np.arange(-(r + half_window), r + half_window + 1, dtype=float)
    coords = uv[:, None, :] + offs[None, :, None] * n2[:, None, :]  # (M, L, 2) (u, v)
    rc = [coords[..., 1].ravel(), coords[..., 0].ravel()]
    prof_x = (ndimage.map_coordinates(gx_x, rc, order=1, mode="nearest") * np.repeat(n2[:, 0], len(offs)) +
              ndimage.map_coordinates(gy_x, rc, order=1, mode="nearest") * np.repeat(n2[:, 1], len(offs))
              ).reshape(len(P), -1)
    prof_d = (ndimage.map_coordinates(gx_d, rc, order=1, mode="nearest") * np.repeat(n2[:, 0], len(offs)) +
              ndimage.map_coordinates(gy_d, rc, order=1, mode="nearest") * np.repeat(n2[:, 1], len(offs))
              ).reshape(len(P), -1)
    centre = r + half_window
    tmpl = prof_d[:, centre - half_window: centre + half_window + 1]
    tmpl = tmpl - tmpl.mean(1, keepdims=True)
    tn = np.linalg.norm(tmpl, axis=1)
    scores = np.full((len(P), 2 * r + 1), -np.inf)
    for s in range(-r, r + 1):
        win = prof_x[:, centre + s - half_window: centre + s + half_window + 1]
        win = win - win.mean(1, keepdims=True)
        scores[:, s + r] = (win * tmpl).sum(1) / np.maximum(np.linalg.norm(win, axis=1) * tn, 1e-12)
    best = scores.argmax(1)
    best_score = scores[np.arange(len(P)), best]
    # Sub-pixel peak by a parabola through the neighbours.
    shift = (best - r).astype(float)
    inner = (best > 0) & (best < 2 * r)
    if np.any(inner):
        a = scores[inner, best[inner] - 1]
        b = scores[inner, best[inner]]
        c = scores[inner, best[inner] + 1]
        den = a - 2 * b + c
        shift[inner] += np.where(np.abs(den) > 1e-12, 0.5 * (a - c) / np.where(den == 0, 1, den), 0.0)
    good = (best_score > 0.5) & (tn > 1e-12)
    if not np.any(good):
        return None
    P, uv, n2, shift, w = P[good], uv[good], n2[good], shift[good], best_score[good]
    q = uv + shift[:, None] * n2
    # Plane through the source, the matched point and the contour tangent direction.
    Qd = np.stack([(q[:, 0] - p.cx) * p.sx, (q[:, 1] - p.cy) * p.sy, np.full(len(q), p.f)], 1)
    t3 = np.stack([-n2[:, 1] * p.sx, n2[:, 0] * p.sy, np.zeros(len(q))], 1)
    m = np.cross(Qd, t3)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m, P, w, q


def register_ppc(volume, views: Sequence[XRayView], init_ct_to_camera,
                 levels: Sequence[float] = (2, 1), iterations: int = 15,
                 search_px: float = 6.0, cos_tangent: float = 0.25, max_points: int = 4000,
                 drr_method: str = "trilinear", n_samples: Optional[int] = None,
                 damping: float = 0.05, max_step_mm: float = 5.0,
                 progress=None, cancel=None, **_ignored) -> RegistrationResult:
    """PPC registration (see the module docstring). ``levels``: detector downsampling
    per stage; ``search_px``: matching range along the normal at each level (pixels);
    ``damping``: Levenberg-style damping relative to the mean curvature; ``max_step_mm``:
    largest motion per iteration (rotation counted at 100 mm from the CT centre)."""
    import torch  # noqa: PLC0415

    from .drr import render_drr  # noqa: PLC0415
    from .refine import _downsample_image  # noqa: PLC0415

    if int(iterations) < 1:
        raise InputError(f"iterations: must be >= 1, got {iterations}")
    views = prepare_views(views)
    init = check_pose(init_ct_to_camera, "initial ct_to_camera")
    start = time.perf_counter()
    edges = edge_points_3d(volume.mu.float().cpu().numpy(), volume.ijk_to_ras,
                           max_points=max_points)
    pts_h = np.c_[edges.points, np.ones(len(edges.points))]
    current = init.copy()
    centre_ras = np.r_[volume.center_ras(), 1.0]
    history: List[dict] = []
    total = len(levels) * int(iterations)
    step = 0
    for li, factor in enumerate(levels):
        cams = [v.camera if factor == 1 else v.camera.scaled(factor) for v in views]
        imgs = [_downsample_image(v.image, c).numpy() for v, c in zip(views, cams)]
        for it in range(int(iterations)):
            check_cancel(cancel, "FluoroReg PPC registration")
            c0 = (current @ centre_ras)[:3]
            rows, rhs, weights = [], [], []
            with torch.no_grad():
                for v, cam, img in zip(views, cams, imgs):
                    pose_k = v.camera0_to_view @ current
                    drr = render_drr(volume, cam, pose_k, method=drr_method,
                                     n_samples=n_samples)[0].cpu().numpy()
                    pc = (pts_h @ pose_k.T)[:, :3]
                    nc = edges.normals @ pose_k[:3, :3].T
                    match = _match_view(pc, nc, cam, img, drr, search_px, cos_tangent, 1.0)
                    if match is None:
                        continue
                    m, P, w, _ = match
                    # Move the planes into camera 0: x_k = R x_0 + t (camera0_to_view).
                    R, t = v.camera0_to_view[:3, :3], v.camera0_to_view[:3, 3]
                    m0 = m @ R  # rows: R^T m
                    P0 = (P - t) @ R  # back to camera 0
                    d = (m * t).sum(1)
                    rows.append(np.c_[np.cross(P0 - c0, m0), m0])
                    rhs.append(-((m0 * P0).sum(1) + d))
                    weights.append(w)
            if not rows and history:
                break  # lost the contours: keep the last pose
            if not rows:
                raise InputError("X-ray image: no contour correspondences found; check the "
                                 "initial pose and the geometry")
            A, b, w = np.concatenate(rows), np.concatenate(rhs), np.concatenate(weights)
            huber = np.ones_like(b)
            # Parameters scaled to mm at 100 mm from the centre, so that damping treats
            # rotation and translation alike.
            scale = np.array([100.0, 100.0, 100.0, 1.0, 1.0, 1.0])
            As = A / scale
            huber = np.ones_like(b)
            for _ in range(3):  # iteratively re-weighted least squares (Huber, 2 mm)
                sw = w * huber
                H = (As * sw[:, None]).T @ As
                g = (As * sw[:, None]).T @ b
                # Levenberg-style damping: weakly observed directions (depth, in one view)
                # move little instead of jumping.
                H += damping * np.trace(H) / 6.0 * np.eye(6)
                y = np.linalg.solve(H, g)
                res = np.abs(As @ y - b)
                huber = np.where(res < 2.0, 1.0, 2.0 / np.maximum(res, 1e-12))
            # Trust region: at most max_step_mm of motion per iteration.
            y *= min(1.0, max_step_mm / max(np.linalg.norm(y), 1e-12))
            x = y / scale
            from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415

            delta = se3_exp(torch.as_tensor(x, dtype=torch.float64)).numpy()
            shift = np.eye(4)
            shift[:3, 3] = c0
            current = shift @ delta @ np.linalg.inv(shift) @ current
            mean_dist = float(np.average(np.abs(b), weights=w))
            history.append({"level": li, "factor": factor, "iteration": it + 1,
                            "loss": mean_dist, "correspondences": int(len(b))})
            step += 1
            report(progress, step / total, f"PPC level {li + 1} iteration {it + 1}: "
                   f"{len(b)} correspondences, mean point-to-plane distance {mean_dist:.2f} mm")
            if np.linalg.norm(x[:3]) < 1e-5 and np.linalg.norm(x[3:]) < 1e-3:
                break
    with torch.no_grad():
        views_pose = [v.camera0_to_view @ current for v in views]
        sims = [float(image_similarity(render_drr(volume, v.camera, p, method=drr_method,
                                                  n_samples=n_samples), v.image, "ncc")[0])
                for v, p in zip(views, views_pose)]
    report(progress, 1.0, "PPC registration done")
    return RegistrationResult(current, views_pose, float(np.mean(sims)), "ppc", history,
                              time.perf_counter() - start)


def register_ppc_intensity(volume, views: Sequence[XRayView], init_ct_to_camera,
                           similarity: str = "gradncc", ppc_levels: Sequence[float] = (2, 1),
                           ppc_iterations: int = 15, levels: Sequence[float] = (2, 1),
                           iterations: int = 15, progress=None, cancel=None,
                           **options) -> RegistrationResult:
    """Hybrid: PPC (wide capture range, contour-based) then intensity refinement
    (``similarity`` = ``"gradncc"`` or ``"ncc"`` with Levenberg-Marquardt) from the PPC
    pose, on the finer pyramid ``levels`` only (PPC already removed the large error).

    Same inputs as :func:`register_ppc`; ``options`` (``drr_method``, ``n_samples``) go
    to both stages. The result's ``history`` holds both stages (``stage`` key).
    """
    from SurgicalReg2D3DLib.progress import sub_progress  # noqa: PLC0415

    from .refine import SIMILARITIES, register_intensity  # noqa: PLC0415

    if similarity not in SIMILARITIES:  # checked before the (slower) PPC stage
        raise InputError(f"similarity: expected one of {SIMILARITIES}, got {similarity!r}")
    start = time.perf_counter()
    common = {k: options[k] for k in ("drr_method", "n_samples") if k in options}
    first = register_ppc(volume, views, init_ct_to_camera, levels=ppc_levels,
                         iterations=ppc_iterations, progress=sub_progress(progress, 0.0, 0.4),
                         cancel=cancel, **common)
    second = register_intensity(volume, views, first.ct_to_camera, similarity=similarity,
                                optimizer="lm", levels=levels, iterations=iterations,
                                progress=sub_progress(progress, 0.4, 1.0), cancel=cancel,
                                **common)
    history = [dict(h, stage="ppc") for h in first.history] + \
        [dict(h, stage=similarity) for h in second.history]
    return RegistrationResult(second.ct_to_camera, second.views_ct_to_camera,
                              second.similarity, f"ppc+{similarity}", history,
                              time.perf_counter() - start)
