"""Registration accuracy metrics.

Definitions (papers mix these up, so they are spelled out here). ``T_est`` and ``T_true``
are 4x4 matrices that map points from the *source* frame (e.g. CT / model, mm) to the
*target* frame (e.g. the X-ray source or laparoscope camera, mm); ``points`` are target
points of interest (landmarks) given in the source frame.

- **mTRE** (mean target registration error, mm, 3D): mean over points of
  ``|| T_est p - T_true p ||``.
- **mPE** (mean projection error, also "projected mTRE" / mPD, on the detector): both
  transformed points are projected with the same camera and the 2D distances are averaged;
  reported in pixels and, given the pixel spacing, in mm *on the detector plane* (for an
  X-ray this is magnified by source-to-detector / source-to-object distance).
- **mRPD** (mean re-projection distance, mm, van de Kraats et al. 2005): the ray from
  the projection centre through the estimated projection of ``p`` is back-projected into
  3D and the distance from the true point ``T_true p`` to that ray is measured; roughly the
  2D error scaled back to the depth of the target. Errors along the viewing ray (depth)
  are invisible to it, unlike mTRE.
- **SMSR** (success rate): percentage of cases with an error below a threshold
  (sub-millimetre success rate for threshold 1 mm).

All functions accept torch tensors or numpy arrays (numpy becomes float64), are batched
over a leading dimension where stated, and return torch tensors unless stated otherwise.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import InputError

__all__ = [
    "mtre",
    "mean_projection_error",
    "projected_mtre",
    "reprojection_distance_mm",
    "smsr",
    "percentiles",
    "summarize",
    "rotation_error_deg",
    "geodesic_angle_error_deg",
    "translation_error_mm",
    "reprojection_error_px",
    "dice",
]


def _t(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected a numeric array, got {type(x).__name__}") from None
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: contains NaN or infinite values")


def _poses(T, name: str) -> torch.Tensor:
    t = _t(T, name)
    if t.dim() < 2 or tuple(t.shape[-2:]) != (4, 4):
        raise InputError(f"{name}: expected a 4x4 matrix or a batch (B, 4, 4), got {tuple(t.shape)}")
    _finite(t, name)
    return t


def _points(points, name: str = "points") -> torch.Tensor:
    p = _t(points, name)
    if p.dim() < 2 or p.shape[-1] != 3 or p.shape[-2] == 0:
        raise InputError(f"{name}: expected shape (N, 3) or (B, N, 3) with N >= 1, got {tuple(p.shape)}")
    _finite(p, name)
    return p


def _transform(T: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Apply ``(..., 4, 4)`` to points ``(..., N, 3)`` (broadcast) -> ``(..., N, 3)``."""
    return p @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def _pair(T_est, T_true, points):
    Te, Tt = _poses(T_est, "T_est"), _poses(T_true, "T_true")
    p = _points(points)
    dtype = torch.promote_types(torch.promote_types(Te.dtype, Tt.dtype), p.dtype)
    Te, Tt, p = Te.to(dtype), Tt.to(dtype), p.to(dtype)
    try:
        torch.broadcast_shapes(Te.shape[:-2], Tt.shape[:-2], p.shape[:-2])
    except RuntimeError:
        raise InputError(
            f"T_est: batch shape {tuple(Te.shape[:-2])} does not match T_true {tuple(Tt.shape[:-2])} "
            f"and points {tuple(p.shape[:-2])}"
        ) from None
    return _transform(Te, p), _transform(Tt, p)


def mtre(T_est, T_true, points) -> torch.Tensor:
    """Mean target registration error (mm): mean over points of ``||T_est p - T_true p||``.

    Args:
        T_est, T_true: ``(4, 4)`` or ``(B, 4, 4)``, source -> target.
        points: ``(N, 3)`` or ``(B, N, 3)`` targets in the source frame.

    Returns:
        ``()`` or ``(B,)`` tensor (differentiable).
    """
    pe, pt = _pair(T_est, T_true, points)
    return (pe - pt).norm(dim=-1).mean(dim=-1)


def _project_fn(camera) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn a 3x3 K, a ``project`` callable or an object with ``.project`` into a function."""
    if hasattr(camera, "project") and callable(camera.project):
        return camera.project
    if callable(camera):
        return camera
    K = _t(camera, "camera")
    if tuple(K.shape) != (3, 3):
        raise InputError(
            f"camera: expected a 3x3 matrix K, a project(points) callable or a camera object, "
            f"got shape {tuple(K.shape)}"
        )
    _finite(K, "camera")

    def project(pc: torch.Tensor) -> torch.Tensor:
        Kc = K.to(device=pc.device, dtype=pc.dtype)
        uvw = pc @ Kc.T
        return uvw[..., :2] / uvw[..., 2:3]

    return project


def mean_projection_error(
    camera,
    T_est,
    T_true,
    points,
    pixel_spacing_mm: Optional[Union[float, Sequence[float]]] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Mean projection error (mPE, "projected mTRE") in pixels and in mm on the detector.

    Both ``T_est p`` and ``T_true p`` (camera frame) are projected with ``camera`` and the
    mean 2D distance is returned. The mm value scales the u (column) and v (row)
    differences by the pixel spacing ``(su, sv)`` before taking the norm.

    Args:
        camera: a 3x3 intrinsic matrix K (pinhole ``u = fx x/z + cx``), a callable
            ``project(points_camera (..., N, 3)) -> (..., N, 2)``, or an object with such a
            ``.project`` method (e.g. ``cameras.XRayCamera``).
        T_est, T_true: ``(4, 4)`` or ``(B, 4, 4)``, source -> camera.
        points: ``(N, 3)`` or ``(B, N, 3)``, source frame.
        pixel_spacing_mm: a float or ``(su, sv)``; if None, taken from
            ``camera.pixel_spacing_mm`` when present, else the mm value is None.

    Returns:
        ``(mpe_px, mpe_mm)``, each ``()`` or ``(B,)`` (``mpe_mm`` may be None).
    """
    project = _project_fn(camera)
    pe, pt = _pair(T_est, T_true, points)
    if bool((pe[..., 2] <= 0).any()) or bool((pt[..., 2] <= 0).any()):
        raise InputError("points: some points are behind the camera (z <= 0) under T_est or T_true")
    uv_e, uv_t = project(pe), project(pt)
    uv_e, uv_t = torch.as_tensor(uv_e), torch.as_tensor(uv_t)
    diff = uv_e - uv_t
    mpe_px = diff.norm(dim=-1).mean(dim=-1)
    if pixel_spacing_mm is None:
        pixel_spacing_mm = getattr(camera, "pixel_spacing_mm", None)
    if pixel_spacing_mm is None:
        return mpe_px, None
    s = _t(pixel_spacing_mm, "pixel_spacing_mm").to(diff.dtype).to(diff.device).reshape(-1)
    if s.numel() == 1:
        s = s.repeat(2)
    if s.numel() != 2 or not bool((s > 0).all()):
        raise InputError(f"pixel_spacing_mm: expected one or two positive values, got {pixel_spacing_mm!r}")
    mpe_mm = (diff * s).norm(dim=-1).mean(dim=-1)
    return mpe_px, mpe_mm


projected_mtre = mean_projection_error


def reprojection_distance_mm(T_est, T_true, points) -> torch.Tensor:
    """Mean re-projection distance (mRPD, mm).

    For each point, the line from the projection centre (the camera origin: the X-ray
    source or the pinhole) through ``T_est p`` is the back-projection of its estimated
    projection (independent of the intrinsics for a central projection); the distance of
    ``T_true p`` to that line is averaged over points.

    Args:
        T_est, T_true: ``(4, 4)`` or ``(B, 4, 4)``, source -> camera (origin = projection
            centre).
        points: ``(N, 3)`` or ``(B, N, 3)``, source frame.

    Returns:
        ``()`` or ``(B,)`` tensor.
    """
    pe, pt = _pair(T_est, T_true, points)
    norm = pe.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise InputError("points: a point maps onto the projection centre under T_est")
    d = pe / norm
    along = (pt * d).sum(dim=-1, keepdim=True)
    return (pt - along * d).norm(dim=-1).mean(dim=-1)


def _errors_np(errors, name: str = "errors") -> np.ndarray:
    if isinstance(errors, torch.Tensor):
        errors = errors.detach().cpu().numpy()
    try:
        e = np.asarray(errors, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected numbers, got {type(errors).__name__}") from None
    if e.size == 0:
        raise InputError(f"{name}: is empty")
    return e


def smsr(errors, threshold: float = 1.0) -> float:
    """Success rate (%): share of errors strictly below ``threshold`` (NaN counts as failure)."""
    if not (float(threshold) > 0):
        raise InputError(f"threshold: must be positive, got {threshold!r}")
    e = _errors_np(errors)
    with np.errstate(invalid="ignore"):
        return float(100.0 * np.mean(np.where(np.isfinite(e), e < threshold, False)))


def smsr_interval(successes: int, n: int, z: float = 1.96):
    """Wilson score interval (in %, default 95 %) of a success rate ``successes / n``;
    ``(nan, nan)`` when ``n == 0``."""
    import math  # noqa: PLC0415

    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return 100 * max(0.0, mid - half), 100 * min(1.0, mid + half)


def roc_auc(scores, positive) -> float:
    """ROC AUC of ``scores`` against the boolean ``positive`` labels: the probability that a
    positive scores above a negative, ties counted half (the Mann-Whitney U over
    ``n_pos * n_neg``). A NaN score counts as the highest (a result whose error estimate
    could not be computed is suspect). NaN when one class is empty. The modules' trust
    benchmarks use it to say how well an error estimate separates failures."""
    s = np.asarray(scores, dtype=float)
    s = np.where(np.isnan(s), np.inf, s)
    y = np.asarray(positive, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def percentiles(errors, q: Sequence[float] = (50, 75, 95)) -> Dict[str, float]:
    """Percentiles of the finite errors (linear interpolation), keys ``"p50"``, ``"p75"``...

    Returns NaN values when no error is finite.
    """
    e = _errors_np(errors)
    qs = [float(v) for v in q]
    if any(not 0 <= v <= 100 for v in qs):
        raise InputError(f"q: percentiles must be in [0, 100], got {tuple(q)}")
    finite = e[np.isfinite(e)]
    vals = np.percentile(finite, qs) if finite.size else [math.nan] * len(qs)
    return {f"p{v:g}": float(x) for v, x in zip(qs, vals)}


def summarize(errors, threshold: float = 1.0) -> Dict[str, float]:
    """Summary of a list of per-case errors.

    Keys: ``n`` (cases), ``n_failed`` (non-finite errors, e.g. failed registrations),
    ``mean``, ``std`` (population, ddof = 0), ``median``, ``p75``, ``p95`` (over the finite
    errors) and ``smsr`` (% below ``threshold``; failures count as not successful).
    """
    e = _errors_np(errors)
    finite = e[np.isfinite(e)]
    out = {"n": int(e.size), "n_failed": int(e.size - finite.size)}
    if finite.size:
        out.update(mean=float(finite.mean()), std=float(finite.std()), median=float(np.median(finite)))
    else:
        out.update(mean=math.nan, std=math.nan, median=math.nan)
    p = percentiles(e, (75, 95))
    out.update(p75=p["p75"], p95=p["p95"], smsr=smsr(e, threshold))
    return out


def _rotations(R, name: str) -> torch.Tensor:
    r = _t(R, name)
    if r.dim() >= 2 and tuple(r.shape[-2:]) == (4, 4):
        r = r[..., :3, :3]
    if r.dim() < 2 or tuple(r.shape[-2:]) != (3, 3):
        raise InputError(
            f"{name}: expected rotation matrices (..., 3, 3) or poses (..., 4, 4), got {tuple(r.shape)}"
        )
    _finite(r, name)
    return r


def rotation_error_deg(R_est, R_true) -> torch.Tensor:
    """Geodesic angle (degrees) of ``R_est^T R_true``; accepts ``(..., 3, 3)`` or ``(..., 4, 4)``.

    Computed as ``atan2(|sin|, cos)`` from the skew and trace parts, accurate near 0 and
    180 degrees (no ``acos`` of a rounded value).
    """
    a, b = _rotations(R_est, "R_est"), _rotations(R_true, "R_true")
    dtype = torch.promote_types(a.dtype, b.dtype)
    M = a.to(dtype).transpose(-1, -2) @ b.to(dtype)
    cos = (M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2] - 1.0) / 2.0
    s = torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], dim=-1
    )
    sin = s.norm(dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sin, cos))


def geodesic_angle_error_deg(a, b) -> torch.Tensor:
    """Geodesic rotation angle (degrees) between two rotations.

    Accepts rotation matrices ``(..., 3, 3)``, poses ``(..., 4, 4)`` or unit quaternions
    ``(..., 4)`` in ``(w, x, y, z)`` order (``q`` and ``-q`` are the same rotation), both
    inputs of the same kind.
    """
    ta, tb = _t(a, "a"), _t(b, "b")
    if ta.dim() >= 1 and ta.shape[-1] == 4 and (ta.dim() == 1 or ta.shape[-2] != 4):
        if tb.shape[-1] != 4:
            raise InputError(f"b: expected quaternions (..., 4) like a, got {tuple(tb.shape)}")
        _finite(ta, "a")
        _finite(tb, "b")
        qa = ta / ta.norm(dim=-1, keepdim=True)
        qb = tb / tb.norm(dim=-1, keepdim=True)
        dot = (qa * qb).sum(dim=-1).abs()
        # Angle = 2 * atan2(|q_a^-1 q_b|_vector, |w|) where |w| = |<qa, qb>|.
        vec = (qb - (qa * qb).sum(dim=-1, keepdim=True) * qa).norm(dim=-1)
        return torch.rad2deg(2.0 * torch.atan2(vec, dot))
    return rotation_error_deg(ta, tb)


def translation_error_mm(t_est, t_true) -> torch.Tensor:
    """Euclidean distance of translations ``(..., 3)`` (or of the translations of poses ``(..., 4, 4)``)."""
    a, b = _t(t_est, "t_est"), _t(t_true, "t_true")
    if a.dim() >= 2 and tuple(a.shape[-2:]) == (4, 4):
        a = a[..., :3, 3]
    if b.dim() >= 2 and tuple(b.shape[-2:]) == (4, 4):
        b = b[..., :3, 3]
    for name, v in (("t_est", a), ("t_true", b)):
        if v.dim() < 1 or v.shape[-1] != 3:
            raise InputError(
                f"{name}: expected translations (..., 3) or poses (..., 4, 4), got {tuple(v.shape)}"
            )
        _finite(v, name)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return (a.to(dtype) - b.to(dtype)).norm(dim=-1)


def reprojection_error_px(pts_est, pts_true) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation of 2D point distances (pixels).

    Args:
        pts_est, pts_true: ``(N, 2)`` or ``(B, N, 2)``.

    Returns:
        ``(mean, std)``, each ``()`` or ``(B,)``.
    """
    a, b = _t(pts_est, "pts_est"), _t(pts_true, "pts_true")
    if a.dim() < 2 or a.shape[-1] != 2 or a.shape[-2] == 0:
        raise InputError(f"pts_est: expected shape (N, 2) or (B, N, 2), got {tuple(a.shape)}")
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(f"pts_true: expected the shape of pts_est {tuple(a.shape)}, got {tuple(b.shape)}")
    _finite(a, "pts_est")
    _finite(b, "pts_true")
    d = (a - b.to(a.dtype)).norm(dim=-1)
    return d.mean(dim=-1), d.std(dim=-1, unbiased=False)


def dice(mask_a, mask_b, batched: bool = False) -> torch.Tensor:
    """Dice coefficient ``2 |A n B| / (|A| + |B|)`` of binary masks (non-zero = inside).

    Args:
        mask_a, mask_b: same shape, any number of dimensions.
        batched: if True the first dimension indexes independent masks and a ``(B,)``
            tensor is returned; otherwise one value over all elements.

    Returns:
        Dice in [0, 1]; two empty masks give 1.0 (they agree perfectly).
    """
    a = mask_a if isinstance(mask_a, torch.Tensor) else torch.as_tensor(np.asarray(mask_a))
    b = mask_b if isinstance(mask_b, torch.Tensor) else torch.as_tensor(np.asarray(mask_b))
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(f"mask_b: expected the shape of mask_a {tuple(a.shape)}, got {tuple(b.shape)}")
    if a.numel() == 0 or (batched and a.dim() < 2):
        expected = "a non-empty array (B, ...)" if batched else "a non-empty array"
        raise InputError(f"mask_a: expected {expected}, got {tuple(a.shape)}")
    a, b = a != 0, b != 0
    if batched:
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    else:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    inter = (a & b).sum(dim=1).to(torch.float64)
    total = (a.sum(dim=1) + b.sum(dim=1)).to(torch.float64)
    d = torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total))
    return d if batched else d[0]
