"""OpenCV lens distortion on normalised coordinates: apply, invert, and where it folds.

Where it sits in the flow: :class:`~.cameras_pinhole.PinholeCamera` projects a
camera-frame point to normalised coordinates ``(X / Z, Y / Z)``, distorts them here
(:func:`distort_normalized`) and maps them to pixels; back-projection and pixel rays
undistort pixels' normalised coordinates by Newton's method
(:func:`undistort_normalized`, NaN where the model has no inverse).
:func:`radial_fold_radius` and :func:`distortion_fold_check` say where a calibration's
radial model folds over, i.e. which part of a frame it can describe. Public names are
re-exported by :mod:`.cameras`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence, Tuple

import numpy as np
import torch

if TYPE_CHECKING:  # the annotation of distortion_fold_check only (no import cycle)
    from .cameras_pinhole import PinholeCamera

# Number of OpenCV distortion coefficients supported, and their names in OpenCV order.
_DIST_NAMES = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6", "s1", "s2", "s3", "s4")
_DIST_LENGTHS = (0, 4, 5, 8, 12)


def _full_coefficients(dist: Sequence[float]) -> Tuple[float, ...]:
    """The 12 coefficients (k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4), zero-padded."""
    return tuple(dist) + (0.0,) * (12 - len(dist))


def distort_normalized(xy: torch.Tensor, dist: Sequence[float]) -> torch.Tensor:
    """Apply OpenCV lens distortion to normalised coordinates ``(x, y) = (X / Z, Y / Z)``.

    Args:
        xy: (..., 2) tensor of undistorted normalised coordinates.
        dist: 0, 4, 5, 8 or 12 coefficients in OpenCV order
            (k1, k2, p1, p2[, k3[, k4, k5, k6[, s1, s2, s3, s4]]]).

    Returns:
        (..., 2) distorted normalised coordinates ``(x'', y'')``::

            r2 = x^2 + y^2
            radial = (1 + k1 r2 + k2 r2^2 + k3 r2^3) / (1 + k4 r2 + k5 r2^2 + k6 r2^3)
            x'' = x radial + 2 p1 x y + p2 (r2 + 2 x^2) + s1 r2 + s2 r2^2
            y'' = y radial + p1 (r2 + 2 y^2) + 2 p2 x y + s3 r2 + s4 r2^2
    """
    if len(dist) == 0 or not any(dist):
        return xy
    k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4 = _full_coefficients(dist)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    if k4 or k5 or k6:
        radial = radial / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) + r2 * (s1 + s2 * r2)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y + r2 * (s3 + s4 * r2)
    return torch.stack((xd, yd), dim=-1)


def _distortion_jacobian(xy: torch.Tensor, dist: Sequence[float]):
    """Entries (a, b, c, d) of the 2x2 Jacobian d(x'', y'') / d(x, y), each (...)."""
    k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4 = _full_coefficients(dist)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    num = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    dnum = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    dden = k4 + r2 * (2 * k5 + 3 * k6 * r2)
    radial = num / den
    dradial = (dnum * den - num * dden) / (den * den)  # d radial / d r2
    sx = s1 + 2 * s2 * r2  # d (s1 r2 + s2 r2^2) / d r2
    sy = s3 + 2 * s4 * r2
    dxdx = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x + 2 * x * sx
    dxdy = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y + 2 * y * sx
    dydx = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y + 2 * x * sy
    dydy = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x + 2 * y * sy
    return dxdx, dxdy, dydx, dydy


def undistort_normalized(xy_distorted: torch.Tensor, dist: Sequence[float],
                         iterations: int = 20, tolerance: float = 1e-12) -> torch.Tensor:
    """Invert :func:`distort_normalized` by Newton's method (batched, differentiable).

    Starts at the distorted coordinates and applies at most ``iterations`` Newton steps
    on ``distort(xy) - xy_distorted = 0`` with the analytic 2x2 Jacobian; stops early when
    every step is below ``tolerance`` (normalised units). This converges to the same
    solution as OpenCV's fixed-point iteration (``cv2.undistortPoints`` with enough
    iterations) but in fewer steps, and also where that iteration diverges (strong
    barrel distortion at image corners).

    A polynomial distortion model is invertible only up to the radius where the distorted
    radius stops growing (for the P2ILF calibration, distorted radius ~0.88 in normalised
    units, i.e. the corners of the 1920x1080 frame have no inverse at all). Points that
    have no inverse on that physical branch (no convergence, or a solution where the
    radial factor or the Jacobian determinant is not positive, i.e. a point folded over
    the centre) come back as NaN, never as a wrong finite value.

    Args:
        xy_distorted: (..., 2) distorted normalised coordinates.
        dist: OpenCV coefficients as in :func:`distort_normalized`.

    Returns:
        (..., 2) undistorted normalised coordinates ``(X / Z, Y / Z)``.
    """
    if len(dist) == 0 or not any(dist):
        return xy_distorted
    xy = xy_distorted
    for _ in range(int(iterations)):
        residual = distort_normalized(xy, dist) - xy_distorted
        a, b, c, d = _distortion_jacobian(xy, dist)
        det = a * d - b * c
        step_x = (d * residual[..., 0] - b * residual[..., 1]) / det
        step_y = (a * residual[..., 1] - c * residual[..., 0]) / det
        step = torch.stack((step_x, step_y), dim=-1)
        xy = xy - step
        if not bool((step.detach().abs() > tolerance).any()):
            break
    # Keep only true inverses on the physical (monotonic) branch of the model.
    with torch.no_grad():
        residual = (distort_normalized(xy, dist) - xy_distorted).abs().amax(dim=-1)
        a, b, c, d = _distortion_jacobian(xy, dist)
        limit = 100 * torch.finfo(xy.dtype).eps * (1 + xy_distorted.abs().amax(dim=-1))
        k1, k2, _, _, k3, k4, k5, k6 = _full_coefficients(dist)[:8]
        r2 = (xy * xy).sum(dim=-1)
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        valid = (residual <= limit) & (a * d - b * c > 0) & (radial > 0)
    if bool(valid.all()):
        return xy
    return torch.where(valid[..., None], xy, torch.full_like(xy, float("nan")))


def _radial_distorted_radius(r: np.ndarray, dist: Sequence[float]) -> np.ndarray:
    """``r_d(r) = r * radial(r^2)`` of the OpenCV model (radial part, rational included)."""
    k1, k2, _, _, k3, k4, k5, k6 = _full_coefficients(dist)[:8]
    r2 = r * r
    return r * (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))


def radial_fold_radius(dist: Sequence[float], r_max: float = 4.0) -> float:
    """Smallest undistorted normalised radius ``r = |(X, Y)| / Z`` at which the radial
    distortion folds over, i.e. ``d r_d / d r <= 0`` with ``r_d = r * radial(r^2)``
    (OpenCV order ``k1, k2, p1, p2, k3[, k4, k5, k6]``; tangential / thin-prism terms are
    ignored). ``inf`` when the map keeps increasing up to ``r_max``. Beyond the fold,
    points farther out project back towards the centre: the model is not invertible
    there."""
    if len(dist) == 0 or not any(dist):
        return float("inf")
    r = np.linspace(0.0, float(r_max), 40001)
    rd = _radial_distorted_radius(r, dist)
    bad = np.nonzero((np.diff(rd) <= 0) | ~np.isfinite(rd[1:]))[0]
    return float(r[bad[0]]) if bad.size else float("inf")


def distortion_fold_check(camera: "PinholeCamera") -> dict:
    """Whether a pinhole camera's distortion is valid over its whole frame.

    Returns ``{"fold_radius", "max_distorted_radius", "max_reach_px", "corner_radius",
    "valid"}``: the fold radius (:func:`radial_fold_radius`, undistorted normalised),
    the largest distorted normalised radius the model can reach (at the fold), that
    reach in pixels (``max_distorted_radius * min(fx, fy)``), the distorted normalised
    radius of the frame corner farthest from the principal point (outer pixel corners
    ``(-0.5, -0.5)`` ... ``(W - 0.5, H - 0.5)``) and ``valid`` = the model reaches
    every corner (``corner_radius < max_distorted_radius``), i.e. every pixel of the
    frame has an undistorted ray. A camera without distortion is always valid.
    """
    us = (-0.5, camera.width - 0.5)
    vs = (-0.5, camera.height - 0.5)
    corner = max(math.hypot((u - camera.cx - camera.skew * (v - camera.cy) / camera.fy)
                            / camera.fx, (v - camera.cy) / camera.fy)
                 for u in us for v in vs)
    r_fold = radial_fold_radius(camera.dist)
    if math.isfinite(r_fold):
        reach = float(_radial_distorted_radius(np.array([r_fold]), camera.dist)[0])
    else:
        reach = float("inf")
    return {"fold_radius": r_fold, "max_distorted_radius": reach,
            "max_reach_px": reach * min(camera.fx, camera.fy), "corner_radius": corner,
            "valid": bool(corner < reach)}
