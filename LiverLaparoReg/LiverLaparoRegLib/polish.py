"""Final stage of the contour PnP: polish a pose on the symmetric curve distance.

For each 2D/3D curve pair (:class:`PolishTerm`) the 3D contour's listed vertices are
posed and projected (camera distortion included when given) and joined by straight image
segments, as the P2ILF challenge joins them; the distances from every 2D sample to that
polyline and from every projected vertex to the 2D polyline are pooled, and their power
mean (exponent :data:`POLISH_POWER`; the maximum, i.e. the Hausdorff distance, as the
exponent grows) is the pair's distance. :func:`polish_energy` is the mean over pairs
(each pair counts equally, like the challenge's mean over pairs); :func:`polish_pose`
minimises it over the 6 pose parameters with scipy's L-BFGS-B on torch gradients.
Used by :func:`.pnp.register_pnp`.
"""

from __future__ import annotations

import numpy as np

#: exponent of the power mean in :func:`polish_pose` (p -> inf: the Hausdorff distance)
POLISH_POWER = 12.0


class PolishTerm:
    """One curve pair of :func:`polish_pose`: projected 3D polyline vertices ``p3 (N, 3)``
    (model mm) against the 2D polyline ``p2 (M, 2)`` (px), in both directions."""

    def __init__(self, p3, p2, n3: int = 48, n2: int = 96):
        from .metrics import resample_curve  # noqa: PLC0415

        p3 = np.asarray(p3, dtype=np.float64)
        if len(p3) > n3:                   # keep the listed vertices' shape, fewer of them
            p3 = p3[np.unique(np.linspace(0, len(p3) - 1, n3).round().astype(int))]
        self.p3 = p3
        self.p2 = resample_curve(np.asarray(p2, dtype=np.float64), n2)


def _project(T, p3, K, dist):
    import cv2  # noqa: PLC0415

    pc = p3 @ T[:3, :3].T + T[:3, 3]
    if np.any(pc[:, 2] <= 1e-3):
        return None
    if dist is None or not np.any(dist):
        return np.stack([K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2],
                         K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]], 1)
    rvec = cv2.Rodrigues(T[:3, :3])[0]
    return cv2.projectPoints(p3, rvec, T[:3, 3], K, dist)[0].reshape(-1, 2)


def polish_energy(T, terms, K, dist, power: float = POLISH_POWER) -> float:
    """Mean over curve pairs of the power mean (exponent ``power``) of the point-to-
    polyline distances (px) in both directions: a smooth stand-in for the mean per-pair
    symmetric Hausdorff distance (the P2ILF Task 2 score). ``inf`` when a point is
    behind the camera."""
    from .metrics import _point_segment_distances  # noqa: PLC0415

    total = []
    for t in terms:
        uv = _project(T, t.p3, K, dist)
        if uv is None:
            return float("inf")
        d = np.r_[_point_segment_distances(t.p2, uv), _point_segment_distances(uv, t.p2)]
        m = d.max()
        total.append(m * np.mean((d / max(m, 1e-12)) ** power) ** (1.0 / power))
    return float(np.mean(total))


def _torch_segment_distances(p, q):
    """Distance from each point ``p (N, 2)`` to the polyline ``q (M, 2)`` (torch)."""
    import torch  # noqa: PLC0415

    a, e = q[:-1], q[1:] - q[:-1]
    w = p[:, None, :] - a[None]
    ee = (e * e).sum(1).clamp(min=1e-12)
    t = ((w * e[None]).sum(2) / ee).clamp(0, 1)
    d = w - t[..., None] * e[None]
    return torch.sqrt((d * d).sum(2) + 1e-12).amin(1)


def polish_pose(T, terms, K, dist, power: float = POLISH_POWER, iterations: int = 60):
    """Refine a pose by minimising :func:`polish_energy` (6 parameters: rotation vector
    about the posed curves' centre and a translation) with L-BFGS on exact gradients
    (torch autograd, scipy's L-BFGS-B; OpenCV distortion through
    ``cameras.distort_normalized``). Each
    pair counts equally, as in the challenge's mean over pairs. Returns ``(pose,
    energy)``; the input pose comes back when nothing improves."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.cameras import distort_normalized  # noqa: PLC0415
    from SurgicalReg2D3DLib.poses import axis_angle_to_matrix  # noqa: PLC0415

    T = np.asarray(T, dtype=np.float64)
    e0 = polish_energy(T, terms, K, dist, power)
    if not np.isfinite(e0):
        return T, e0
    dist_t = tuple(float(x) for x in np.ravel(dist)) if dist is not None and np.any(dist) else ()
    pts = np.concatenate([t.p3 for t in terms])
    pc0 = pts @ T[:3, :3].T + T[:3, 3]
    pivot = torch.as_tensor(pc0.mean(0))
    step_mm = max(1.0, 0.02 * float(pc0[:, 2].mean()))
    scale = torch.as_tensor(np.r_[np.full(3, 0.02), np.full(3, step_mm)])
    T0 = torch.as_tensor(T)
    P3 = [torch.as_tensor(t.p3) for t in terms]
    P2 = [torch.as_tensor(t.p2) for t in terms]
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))

    def pose(x):
        y = x * scale
        R = axis_angle_to_matrix(y[:3])
        t = pivot - R @ pivot + y[3:]
        return R @ T0[:3, :3], R @ T0[:3, 3] + t

    def energy(x):
        R, t = pose(x)
        total = []
        for p3, p2 in zip(P3, P2):
            pc = p3 @ R.T + t
            if bool((pc[:, 2] <= 1e-3).any()):
                return None
            xy = pc[:, :2] / pc[:, 2:3]
            if dist_t:
                xy = distort_normalized(xy, dist_t)
            uv = torch.stack([fx * xy[:, 0] + cx, fy * xy[:, 1] + cy], 1)
            d = torch.cat([_torch_segment_distances(p2, uv), _torch_segment_distances(uv, p2)])
            m = d.detach().max().clamp(min=1e-9)
            total.append(m * ((d / m) ** power).mean() ** (1.0 / power))
        return torch.stack(total).mean()

    from scipy.optimize import minimize  # noqa: PLC0415

    def value_and_grad(xn):
        x = torch.as_tensor(xn, dtype=torch.float64).requires_grad_(True)
        e = energy(x)
        if e is None or not bool(torch.isfinite(e)):
            return 1e9, np.zeros(6)
        e.backward()
        return float(e.detach()), x.grad.numpy().copy()

    # scipy's L-BFGS with torch gradients (torch.optim's first import costs seconds)
    res = minimize(value_and_grad, np.zeros(6), jac=True, method="L-BFGS-B",
                   options={"maxiter": iterations, "gtol": 1e-9, "ftol": 1e-10})
    with torch.no_grad():
        R, t = pose(torch.as_tensor(res.x, dtype=torch.float64))
    T_n = np.eye(4)
    T_n[:3, :3] = R.numpy()
    T_n[:3, 3] = t.numpy()
    e_n = polish_energy(T_n, terms, K, dist, power)
    if not e_n < e0:
        return T, e0
    return T_n, e_n
