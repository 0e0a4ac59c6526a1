"""Camera models: a pinhole camera with OpenCV lens distortion and an X-ray cone-beam camera.

Both cameras project points given in their own ``camera`` frame (see docs/architecture.md):

- :class:`PinholeCamera` (laparoscope): OpenCV frame, x right, y down, z forward, mm.
  ``(u, v) = (fx * x'' + skew * y'' + cx, fy * y'' + cy)`` where ``(x'', y'')`` are the
  distorted normalised coordinates of ``(X / Z, Y / Z)`` (OpenCV's model, see
  :func:`distort_normalized`). OpenCV itself ignores ``skew``; with ``skew == 0`` the
  projection is the one of ``cv2.projectPoints``.
- :class:`XRayCamera` (fluoroscope): origin at the X-ray source, +z towards the detector,
  +x along image columns, +y along image rows. A pixel is
  ``(u, v) = (x / z * f / sx + cx, y / z * f / sy + cy)`` with ``f`` the source-to-detector
  distance and ``(sx, sy)`` the detector pixel spacing (mm); ``u`` is the column, ``v`` the
  row, row 0 the first row of the image array as read from the file.

Pixel-centre convention (both cameras): pixel ``(i, j)`` of an image array ``img[j, i]``
has its centre at the continuous pixel coordinate ``(u, v) = (i, j)``; the image covers
``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. This is OpenCV's convention and the one of
``torch.nn.functional.grid_sample(..., align_corners=False)`` once coordinates are
normalised with ``(2 * u + 1) / W - 1``.

Image pyramids (``scaled(factor)``): an image of ``W x H`` pixels resampled to
``W' x H'`` over the same extent (``cv2.resize``, ``F.interpolate(size=(H', W'),
align_corners=False)``, ``F.avg_pool2d`` with ``W`` divisible by the factor) maps a point
``u`` to ``u' = (u + 0.5) * W' / W - 0.5``. ``scaled`` uses ``W' = floor(W / factor)``
(as ``F.avg_pool2d`` / ``F.interpolate(scale_factor=1 / factor)`` do) and the exact ratio
``W' / W`` per axis, so the scaled camera matches the resampled image even when ``W`` is
not divisible by the factor.

All projection functions are torch, batched over leading dimensions, differentiable, and
run on the device and in the dtype of the points given (numpy arrays are accepted and
converted; integer inputs become the default float dtype). Camera parameters are plain
Python floats, so a camera can be used with points on any device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import FileReadError, GeometryError, InputError

__all__ = [
    "PinholeCamera",
    "XRayCamera",
    "distort_normalized",
    "undistort_normalized",
    "radial_fold_radius",
    "distortion_fold_check",
]

# Number of OpenCV distortion coefficients supported, and their names in OpenCV order.
_DIST_NAMES = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6", "s1", "s2", "s3", "s4")
_DIST_LENGTHS = (0, 4, 5, 8, 12)

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    """Format a user value for an error message: ints as ints, floats as Python floats."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(v) for v in list(np.asarray(value, dtype=object).ravel()))\
            + "]"
    return repr(value)


def _to_float(value: Any, what: str, owner: str) -> float:
    """Convert a number (or a numeric string, as in P2ILF files) to float, or raise."""
    if isinstance(value, bool) or value is None:
        raise GeometryError(f"{owner}: {what} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise GeometryError(f"{owner}: {what} must be a number, got {value!r}") from None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.detach().cpu().reshape(()).item()
    if not isinstance(value, numbers.Real):
        raise GeometryError(f"{owner}: {what} must be a number, got {value!r}")
    return float(value)


def _positive(value: Any, what: str, owner: str) -> float:
    number = _to_float(value, what, owner)
    if not math.isfinite(number):
        raise GeometryError(f"{owner}: {what} must be finite, got {_fmt(number)}")
    if number <= 0:
        raise GeometryError(f"{owner}: {what} must be positive, got {_fmt(value)}")
    return number


def _as_points(points: Any, name: str, last: int) -> torch.Tensor:
    """Return ``points`` as a float tensor (..., N, last), checking its shape and values.

    The input is never modified: numpy arrays are wrapped (``torch.as_tensor``) and only
    read; tensors keep their device, dtype and autograd graph.
    """
    if isinstance(points, torch.Tensor):
        tensor = points
    else:
        try:
            tensor = torch.as_tensor(np.asarray(points))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name}: expected an array of numbers, got "
                             f"{type(points).__name__} ({exc})") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise InputError(f"{name}: expected real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dim() < 2 or tensor.shape[-1] != last:
        raise InputError(f"{name}: expected shape (..., N, {last}), got "
                         f"{tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name}: contains NaN or infinite values")
    return tensor


def _as_depth(depth: Any, like: torch.Tensor, name: str = "depth") -> torch.Tensor:
    """Depth (z, mm) broadcastable to ``like[..., 0]``; returned as a tensor like ``like``."""
    if isinstance(depth, torch.Tensor):
        tensor = depth.to(device=like.device, dtype=like.dtype)
    else:
        try:
            tensor = torch.as_tensor(np.asarray(depth, dtype=np.float64),
                                     dtype=like.dtype, device=like.device)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: expected numbers, got {type(depth).__name__} "
                             f"({exc})") from None
    try:
        torch.broadcast_shapes(tensor.shape, like.shape[:-1])
    except RuntimeError:
        raise InputError(f"{name}: shape {tuple(tensor.shape)} does not broadcast to the "
                         f"pixels' shape {tuple(like.shape[:-1])}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name}: contains NaN or infinite values")
    if bool((tensor <= 0).any()):
        raise InputError(f"{name}: must be positive (z in front of the camera)")
    return tensor


def _read_text(path: PathLike, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileReadError(f"{what}: cannot read '{path}': {exc}") from None


def _read_json(source: Union[PathLike, Mapping[str, Any]], what: str) -> dict:
    """A dict from a mapping, a JSON text (starting with '{') or a JSON file path."""
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text, where = source, "JSON text"
    elif isinstance(source, (str, Path)):
        text, where = _read_text(source, what), f"'{source}'"
    else:
        raise InputError(f"{what}: expected a path, a JSON text or a dict, got "
                         f"{type(source).__name__}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileReadError(f"{what}: {where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FileReadError(f"{what}: {where} must hold a JSON object, got "
                            f"{type(data).__name__}")
    return data


def _check_keys(data: Mapping[str, Any], required: Sequence[str],
                optional: Sequence[str], owner: str) -> None:
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise GeometryError(f"{owner}: unknown keys {unknown}; allowed keys are "
                            f"{list(required) + list(optional)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise GeometryError(f"{owner}: missing keys {missing}")


def _pair(value: Any, what: str, owner: str) -> Tuple[Any, Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise GeometryError(f"{owner}: {what} must be a pair of numbers, got {value!r}")
    items = list(np.asarray(value, dtype=object).ravel()) \
        if isinstance(value, np.ndarray) else list(value)
    if len(items) != 2:
        raise GeometryError(f"{owner}: {what} must be a pair of numbers, got {_fmt(items)}")
    return items[0], items[1]


def _pyramid_pixel(coordinate: float, ratio: float) -> float:
    """Map a pixel coordinate (integer = pixel centre) to an image resampled by ``ratio``."""
    return (coordinate + 0.5) * ratio - 0.5


def _scaled_size(size: int, factor: float, owner: str) -> int:
    new = int(math.floor(size / factor + 1e-9))
    if new < 1:
        raise GeometryError(f"{owner}: scale factor {_fmt(factor)} leaves no pixel of an "
                            f"image {size} pixels wide")
    return new


def _check_factor(factor: Any, owner: str) -> float:
    return _positive(factor, "scale factor", owner)


# --------------------------------------------------------------------------------------
# OpenCV distortion on normalised coordinates
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Pinhole camera
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera with OpenCV distortion (laparoscope, any video camera).

    Attributes:
        fx, fy: focal lengths in pixels (> 0).
        cx, cy: principal point in pixels (pixel centres at integer coordinates).
        width, height: image size in pixels (> 0).
        skew: ``K[0, 1]`` (pixels); OpenCV functions ignore it, keep 0 to match them.
        dist: 0, 4, 5, 8 or 12 OpenCV coefficients
            (k1, k2, p1, p2[, k3[, k4, k5, k6[, s1, s2, s3, s4]]]); 8 = rational model.

    The camera frame is OpenCV's: x right, y down, z forward (mm). Instances are immutable;
    use ``dataclasses.replace`` to change a field.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    skew: float = 0.0
    dist: Tuple[float, ...] = ()

    _OWNER = "camera"

    def __post_init__(self) -> None:
        owner = self._OWNER
        fx = _positive(self.fx, "fx", owner)
        fy = _positive(self.fy, "fy", owner)
        cx = _to_float(self.cx, "cx", owner)
        cy = _to_float(self.cy, "cy", owner)
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise GeometryError(f"{owner}: principal point must be finite, got "
                                f"({_fmt(cx)}, {_fmt(cy)})")
        skew = _to_float(self.skew, "skew", owner)
        if not math.isfinite(skew):
            raise GeometryError(f"{owner}: skew must be finite, got {_fmt(skew)}")
        width, height = _image_size(self.width, self.height, owner)
        dist = _distortion(self.dist, owner)
        for name, value in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy),
                            ("width", width), ("height", height), ("skew", skew),
                            ("dist", dist)):
            object.__setattr__(self, name, value)

    # -- matrices ----------------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix (float64 numpy): ``[[fx, skew, cx], [0, fy, cy], [0, 0, 1]]``."""
        return np.array([[self.fx, self.skew, self.cx],
                         [0.0, self.fy, self.cy],
                         [0.0, 0.0, 1.0]])

    @property
    def dist_coeffs(self) -> np.ndarray:
        """Distortion coefficients as a float64 numpy vector (empty when none)."""
        return np.array(self.dist, dtype=np.float64)

    @property
    def has_distortion(self) -> bool:
        return any(self.dist)

    # -- projection --------------------------------------------------------------------
    def _normalized_to_pixels(self, xy: torch.Tensor) -> torch.Tensor:
        x, y = xy[..., 0], xy[..., 1]
        return torch.stack((self.fx * x + self.skew * y + self.cx, self.fy * y + self.cy),
                           dim=-1)

    def _pixels_to_normalized(self, uv: torch.Tensor) -> torch.Tensor:
        y = (uv[..., 1] - self.cy) / self.fy
        x = (uv[..., 0] - self.cx - self.skew * y) / self.fx
        return torch.stack((x, y), dim=-1)

    def project(self, points_camera: Any) -> torch.Tensor:
        """Project camera-frame points to distorted pixel coordinates.

        Args:
            points_camera: (..., N, 3) points in the camera frame (mm), tensor or numpy.
                Points with ``z <= 0`` (behind the camera) give meaningless or infinite
                pixels; mask them with ``points_camera[..., 2] > 0``.

        Returns:
            (..., N, 2) pixels ``(u, v)`` (u = column), same device/dtype as the input.
        """
        points = _as_points(points_camera, "points_camera", 3)
        xy = points[..., :2] / points[..., 2:3]
        return self._normalized_to_pixels(distort_normalized(xy, self.dist))

    def undistort_points(self, pixels: Any, normalized: bool = False,
                         iterations: int = 20) -> torch.Tensor:
        """Remove lens distortion from pixel coordinates.

        Args:
            pixels: (..., N, 2) observed (distorted) pixels ``(u, v)``.
            normalized: if True return normalised coordinates ``(X / Z, Y / Z)`` (what
                ``cv2.undistortPoints(pixels, K, dist)`` returns); if False (default)
                return ideal pixels of the same camera without distortion (what
                ``cv2.undistortPoints(pixels, K, dist, P=K)`` returns).
            iterations: maximum Newton iterations (see :func:`undistort_normalized`).

        Returns:
            (..., N, 2) tensor, same device/dtype as the input.
        """
        uv = _as_points(pixels, "pixels", 2)
        xy = undistort_normalized(self._pixels_to_normalized(uv), self.dist, iterations)
        return xy if normalized else self._normalized_to_pixels(xy)

    def back_project(self, pixels: Any, depth: Any) -> torch.Tensor:
        """Camera-frame points seen at distorted ``pixels`` at the given depth.

        Args:
            pixels: (..., N, 2) observed pixels ``(u, v)``.
            depth: z coordinate (mm, > 0; distance along the optical axis, not along the
                ray), a number or an array broadcastable to (..., N).

        Returns:
            (..., N, 3) points ``(x * z, y * z, z)``; ``project`` maps them back to
            ``pixels``.
        """
        uv = _as_points(pixels, "pixels", 2)
        z = _as_depth(depth, uv)
        xy = undistort_normalized(self._pixels_to_normalized(uv), self.dist)
        z = torch.broadcast_to(z, uv.shape[:-1])
        return torch.stack((xy[..., 0] * z, xy[..., 1] * z, z), dim=-1)

    def pixel_rays(self, device: Any = None, dtype: torch.dtype = torch.float32
                   ) -> torch.Tensor:
        """Unit directions (H, W, 3) from the camera centre through every pixel centre,
        lens distortion removed (``[j, i]`` = column i, row j). Pixels where the distortion
        model has no inverse (see :func:`undistort_normalized`) are NaN."""
        v, u = torch.meshgrid(torch.arange(self.height, device=device, dtype=dtype),
                              torch.arange(self.width, device=device, dtype=dtype),
                              indexing="ij")
        xy = undistort_normalized(self._pixels_to_normalized(torch.stack((u, v), -1)),
                                  self.dist)
        rays = torch.cat((xy, torch.ones_like(xy[..., :1])), dim=-1)
        return rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True)

    # -- pyramids ----------------------------------------------------------------------
    def scaled(self, factor: float) -> "PinholeCamera":
        """The camera of the image downsampled by ``factor`` (2 = half size).

        New size ``floor(W / factor) x floor(H / factor)``; with the exact ratios
        ``rx = W' / W``, ``ry = H' / H``: ``fx' = fx * rx``, ``cx' = (cx + 0.5) * rx - 0.5``
        (pixel centres at integer coordinates), likewise in y; distortion coefficients
        (defined on normalised coordinates) are unchanged.
        """
        factor = _check_factor(factor, self._OWNER)
        width = _scaled_size(self.width, factor, self._OWNER)
        height = _scaled_size(self.height, factor, self._OWNER)
        rx, ry = width / self.width, height / self.height
        return PinholeCamera(fx=self.fx * rx, fy=self.fy * ry,
                             cx=_pyramid_pixel(self.cx, rx), cy=_pyramid_pixel(self.cy, ry),
                             width=width, height=height, skew=self.skew * rx,
                             dist=self.dist)

    # -- files -------------------------------------------------------------------------
    @classmethod
    def from_opencv_text(cls, intrinsics_path: PathLike,
                         distortion_path: Optional[PathLike] = None,
                         width: Optional[int] = None,
                         height: Optional[int] = None) -> "PinholeCamera":
        """Read a 3x3 intrinsic matrix (and optionally distortion) from whitespace text.

        ``intrinsics_path`` holds ``fx skew cx / 0 fy cy / 0 0 1`` (as written by
        ``numpy.savetxt`` / scikit-surgery); ``distortion_path`` holds 4, 5, 8 or 12 numbers
        in OpenCV order (any layout). The files carry no image size, so ``width`` and
        ``height`` are required.
        """
        owner = "camera intrinsics file"
        if width is None or height is None:
            raise GeometryError(f"{owner}: '{intrinsics_path}' holds no image size; pass "
                                f"width= and height=")
        matrix = _read_numbers(intrinsics_path, owner)
        if matrix.size != 9:
            raise FileReadError(f"{owner}: '{intrinsics_path}' must hold a 3x3 matrix "
                                f"(9 numbers), got {matrix.size} numbers")
        matrix = matrix.reshape(3, 3)
        if not np.allclose(matrix[2], [0.0, 0.0, 1.0]) or matrix[1, 0] != 0:
            raise GeometryError(f"{owner}: '{intrinsics_path}' is not an intrinsic matrix "
                                f"(expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]]), got "
                                f"{matrix.tolist()}")
        dist: Tuple[float, ...] = ()
        if distortion_path is not None:
            dist = tuple(_read_numbers(distortion_path, "camera distortion file").tolist())
        return cls(fx=matrix[0, 0], fy=matrix[1, 1], cx=matrix[0, 2], cy=matrix[1, 2],
                   width=width, height=height, skew=matrix[0, 1], dist=dist)

    @classmethod
    def from_p2ilf_json(cls, path: Union[PathLike, Mapping[str, Any]],
                        use_distortion: bool = True) -> "PinholeCamera":
        """Read a P2ILF challenge ``acquisition-camera-metadata.json``.

        Keys (numbers stored as strings): ``projection`` ("frame"), ``width``, ``height``,
        ``fx``, ``fy``, ``cx``, ``cy``, ``skew``, ``k1``, ``k2``, ``k3``, ``k4``, ``p1``,
        ``p2``. They map to OpenCV order as ``dist = (k1, k2, p1, p2, k3)``.

        About ``k4``: the file has tangential terms (p1, p2), so it is not OpenCV's fisheye
        (Kannala-Brandt) model, which has k1..k4 and no tangential terms; and a lone k4
        without k5, k6 is not a usual rational-model calibration either. The challenge does
        not document it and its official evaluation code projects with ``K`` only (no
        distortion at all); every released file we know has ``k4 = 0``. We therefore read
        k4 only when it is zero and raise ``GeometryError`` otherwise rather than guess.
        ``use_distortion=False`` drops k1..p2, reproducing the challenge's own evaluation.
        """
        owner = "P2ILF camera metadata"
        data = _read_json(path, owner)
        required = ("width", "height", "fx", "fy", "cx", "cy", "k1", "k2", "k3", "p1", "p2")
        missing = [key for key in required if key not in data]
        if missing:
            raise GeometryError(f"{owner}: missing keys {missing}")
        projection = data.get("projection", "frame")
        if projection != "frame":
            raise GeometryError(f"{owner}: projection must be 'frame', got {projection!r}")
        number = {key: _to_float(data[key], key, owner)
                  for key in required + ("skew", "k4") if key in data}
        if number.get("k4", 0.0) != 0.0:
            raise GeometryError(f"{owner}: k4 = {_fmt(number['k4'])} is not supported (its "
                                f"model is undocumented; only k4 = 0 can be read)")
        dist: Tuple[float, ...] = ()
        if use_distortion:
            dist = tuple(number[key] for key in ("k1", "k2", "p1", "p2", "k3"))
        return cls(fx=number["fx"], fy=number["fy"], cx=number["cx"], cy=number["cy"],
                   width=_integral(number["width"], "width", owner),
                   height=_integral(number["height"], "height", owner),
                   skew=number.get("skew", 0.0), dist=dist)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict with the dataclass fields (dist as a list)."""
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "width": self.width, "height": self.height, "skew": self.skew,
                "dist": list(self.dist)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PinholeCamera":
        """Inverse of :meth:`to_dict`; ``skew`` and ``dist`` are optional, other keys
        are rejected."""
        if not isinstance(data, Mapping):
            raise InputError(f"camera: expected a dict, got {type(data).__name__}")
        _check_keys(data, ("fx", "fy", "cx", "cy", "width", "height"), ("skew", "dist"),
                    "camera")
        return cls(**dict(data))


def _integral(value: Any, what: str, owner: str) -> int:
    number = _to_float(value, what, owner)
    if not math.isfinite(number) or number != int(number):
        raise GeometryError(f"{owner}: {what} must be an integer, got {_fmt(value)}")
    return int(number)


def _image_size(width: Any, height: Any, owner: str) -> Tuple[int, int]:
    w = _to_float(width, "image width", owner)
    h = _to_float(height, "image height", owner)
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        raise GeometryError(f"{owner}: image size must be positive, got "
                            f"{_fmt(width)} x {_fmt(height)}")
    if w != int(w) or h != int(h):
        raise GeometryError(f"{owner}: image size must be whole pixels, got "
                            f"{_fmt(width)} x {_fmt(height)}")
    return int(w), int(h)


def _distortion(dist: Any, owner: str) -> Tuple[float, ...]:
    if dist is None:
        return ()
    if isinstance(dist, (str, bytes)) or not hasattr(dist, "__len__"):
        raise GeometryError(f"{owner}: dist must be a sequence of numbers, got {dist!r}")
    values = np.asarray(dist, dtype=object).ravel().tolist() \
        if isinstance(dist, (np.ndarray, torch.Tensor)) else list(dist)
    if len(values) not in _DIST_LENGTHS:
        raise GeometryError(f"{owner}: dist must have 0, 4, 5, 8 or 12 coefficients "
                            f"(OpenCV order k1, k2, p1, p2[, k3[, k4, k5, k6[, s1, s2, s3, "
                            f"s4]]]), got {len(values)}")
    numbers_ = tuple(_to_float(v, f"dist[{i}] ({_DIST_NAMES[i]})", owner)
                     for i, v in enumerate(values))
    if not all(math.isfinite(v) for v in numbers_):
        raise GeometryError(f"{owner}: dist must be finite, got {_fmt(list(numbers_))}")
    return numbers_


def _read_numbers(path: PathLike, owner: str) -> np.ndarray:
    text = _read_text(path, owner)
    try:
        values = np.array([float(token) for token in text.replace(",", " ").split()])
    except ValueError as exc:
        raise FileReadError(f"{owner}: '{path}' must hold numbers only: {exc}") from None
    if values.size == 0:
        raise FileReadError(f"{owner}: '{path}' is empty")
    if not np.isfinite(values).all():
        raise GeometryError(f"{owner}: '{path}' holds NaN or infinite values")
    return values


# --------------------------------------------------------------------------------------
# X-ray camera
# --------------------------------------------------------------------------------------
_XRAY = "X-ray geometry"
_XRAY_KEYS = ("source_to_detector_mm", "pixel_spacing_mm", "size_px")
_XRAY_OPTIONAL = ("principal_point_px",)


@dataclasses.dataclass(frozen=True)
class XRayCamera:
    """Cone-beam X-ray projection geometry (point source, flat detector).

    Attributes:
        source_to_detector_mm: distance ``f`` from the source to the detector plane (mm).
        pixel_spacing_mm: ``(sx, sy)`` detector pixel size (mm) along columns (x) and rows
            (y). Note DICOM's ImagerPixelSpacing is in the other order (row spacing first).
        size_px: ``(W, H)`` image width (columns) and height (rows).
        principal_point_px: ``(cx, cy)``, the foot of the perpendicular from the source on
            the detector, in pixels; ``None`` means the image centre
            ``((W - 1) / 2, (H - 1) / 2)`` (pixel centres at integer coordinates).

    Camera frame: origin at the source, +z towards the detector, +x along image columns,
    +y along image rows. Pixel ``(u, v) = (x / z * f / sx + cx, y / z * f / sy + cy)``,
    ``u`` = column, ``v`` = row, row 0 = first row of the image array as read from the
    file. The detector is the plane ``z = f``.
    """

    source_to_detector_mm: float
    pixel_spacing_mm: Tuple[float, float]
    size_px: Tuple[int, int]
    principal_point_px: Optional[Tuple[float, float]] = None

    def __post_init__(self) -> None:
        f = _positive(self.source_to_detector_mm, "source_to_detector_mm", _XRAY)
        sx, sy = _pair(self.pixel_spacing_mm, "pixel_spacing_mm", _XRAY)
        spacing = (_to_float(sx, "pixel_spacing_mm", _XRAY),
                   _to_float(sy, "pixel_spacing_mm", _XRAY))
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"{_XRAY}: pixel_spacing_mm must be two positive numbers "
                                f"[sx, sy], got {_fmt([sx, sy])}")
        w, h = _pair(self.size_px, "size_px", _XRAY)
        size = (_to_float(w, "size_px", _XRAY), _to_float(h, "size_px", _XRAY))
        if not all(math.isfinite(s) and s > 0 and s == int(s) for s in size):
            raise GeometryError(f"{_XRAY}: size_px must be two positive integers [W, H], "
                                f"got {_fmt([w, h])}")
        principal = None
        if self.principal_point_px is not None:
            px, py = _pair(self.principal_point_px, "principal_point_px", _XRAY)
            principal = (_to_float(px, "principal_point_px", _XRAY),
                         _to_float(py, "principal_point_px", _XRAY))
            if not all(math.isfinite(c) for c in principal):
                raise GeometryError(f"{_XRAY}: principal_point_px must be finite, got "
                                    f"{_fmt([px, py])}")
        object.__setattr__(self, "source_to_detector_mm", f)
        object.__setattr__(self, "pixel_spacing_mm", spacing)
        object.__setattr__(self, "size_px", (int(size[0]), int(size[1])))
        object.__setattr__(self, "principal_point_px", principal)

    # -- derived values ----------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.size_px[0]

    @property
    def height(self) -> int:
        return self.size_px[1]

    @property
    def principal_point(self) -> Tuple[float, float]:
        """``(cx, cy)`` in pixels, the image centre when ``principal_point_px`` is None."""
        if self.principal_point_px is None:
            return ((self.width - 1) / 2.0, (self.height - 1) / 2.0)
        return self.principal_point_px

    @property
    def fx(self) -> float:
        return self.source_to_detector_mm / self.pixel_spacing_mm[0]

    @property
    def fy(self) -> float:
        return self.source_to_detector_mm / self.pixel_spacing_mm[1]

    @property
    def intrinsics(self) -> np.ndarray:
        """3x3 float64 matrix ``[[f / sx, 0, cx], [0, f / sy, cy], [0, 0, 1]]``."""
        cx, cy = self.principal_point
        return np.array([[self.fx, 0.0, cx], [0.0, self.fy, cy], [0.0, 0.0, 1.0]])

    K = intrinsics

    # -- projection --------------------------------------------------------------------
    def project(self, points_camera: Any) -> torch.Tensor:
        """Project camera-frame points (mm) to pixels.

        Args:
            points_camera: (..., N, 3) points, tensor or numpy. Points need ``z > 0``
                (between source and detector or beyond); others give meaningless pixels.

        Returns:
            (..., N, 2) pixels ``(u, v)`` (u = column, v = row), same device/dtype.
        """
        points = _as_points(points_camera, "points_camera", 3)
        cx, cy = self.principal_point
        z = points[..., 2]
        return torch.stack((points[..., 0] / z * self.fx + cx,
                            points[..., 1] / z * self.fy + cy), dim=-1)

    def back_project(self, pixels: Any, depth: Any) -> torch.Tensor:
        """Points (..., N, 3) on the rays through ``pixels`` (..., N, 2) at z = ``depth``
        (mm, > 0, a number or broadcastable to (..., N)); ``depth = f`` gives detector
        points."""
        uv = _as_points(pixels, "pixels", 2)
        z = torch.broadcast_to(_as_depth(depth, uv), uv.shape[:-1])
        cx, cy = self.principal_point
        return torch.stack(((uv[..., 0] - cx) / self.fx * z,
                            (uv[..., 1] - cy) / self.fy * z, z), dim=-1)

    def detector_points(self, device: Any = None, dtype: torch.dtype = torch.float32
                        ) -> torch.Tensor:
        """Camera-frame positions (H, W, 3) of the pixel centres on the detector ``z = f``.

        ``[j, i]`` is pixel column ``i``, row ``j``:
        ``((i - cx) * sx, (j - cy) * sy, f)``. With the source at the origin these are
        the end points of the DRR rays.
        """
        cx, cy = self.principal_point
        sx, sy = self.pixel_spacing_mm
        # float64 for the grid where the device has it (Apple MPS has no float64)
        work = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
        y = (torch.arange(self.height, device=device, dtype=work) - cy) * sy
        x = (torch.arange(self.width, device=device, dtype=work) - cx) * sx
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        zz = torch.full_like(xx, self.source_to_detector_mm)
        return torch.stack((xx, yy, zz), dim=-1).to(dtype)

    def pixel_rays(self, device: Any = None, dtype: torch.dtype = torch.float32
                   ) -> torch.Tensor:
        """Unit directions (H, W, 3) from the source (origin) to every pixel centre."""
        points = self.detector_points(device=device, dtype=torch.float64
                                      if torch.device(device or "cpu").type != "mps"
                                      else torch.float32)
        return (points / torch.linalg.vector_norm(points, dim=-1, keepdim=True)).to(dtype)

    def check_image_shape(self, shape: Sequence[int], name: str = _XRAY) -> None:
        """Raise ``GeometryError`` unless the last two entries of ``shape`` are (H, W)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise InputError(f"{name}: expected an image shape (..., H, W), got {shape}")
        if shape[-2:] != (self.height, self.width):
            raise GeometryError(f"{name}: size_px [W, H] = [{self.width}, {self.height}] "
                                f"does not match the image (H, W) = "
                                f"({shape[-2]}, {shape[-1]})")

    # -- conversions -------------------------------------------------------------------
    def scaled(self, factor: float) -> "XRayCamera":
        """Geometry of the image downsampled by ``factor`` (resolution pyramid).

        ``size' = floor(size / factor)``; with the exact ratio ``r = W' / W`` (per axis)
        ``spacing' = spacing / r`` (= spacing * factor when W is divisible) and
        ``c' = (c + 0.5) * r - 0.5``, so a 3D point projects to the same place on the
        detector at both scales. An explicit principal point stays explicit; ``None``
        stays ``None`` (the image centre maps to the image centre).
        """
        factor = _check_factor(factor, _XRAY)
        width = _scaled_size(self.width, factor, _XRAY)
        height = _scaled_size(self.height, factor, _XRAY)
        rx, ry = width / self.width, height / self.height
        principal = None
        if self.principal_point_px is not None:
            principal = (_pyramid_pixel(self.principal_point_px[0], rx),
                         _pyramid_pixel(self.principal_point_px[1], ry))
        return XRayCamera(self.source_to_detector_mm,
                          (self.pixel_spacing_mm[0] / rx, self.pixel_spacing_mm[1] / ry),
                          (width, height), principal)

    def to_pinhole(self) -> PinholeCamera:
        """The equivalent :class:`PinholeCamera` (no distortion)."""
        cx, cy = self.principal_point
        return PinholeCamera(fx=self.fx, fy=self.fy, cx=cx, cy=cy, width=self.width,
                             height=self.height)

    def to_dict(self) -> dict:
        """JSON-ready dict with exactly the keys of the JSON format."""
        data = {"source_to_detector_mm": self.source_to_detector_mm,
                "pixel_spacing_mm": list(self.pixel_spacing_mm),
                "size_px": list(self.size_px)}
        if self.principal_point_px is not None:
            data["principal_point_px"] = list(self.principal_point_px)
        return data

    def to_json(self, path: Optional[PathLike] = None) -> str:
        """JSON text ``{"source_to_detector_mm": f, "pixel_spacing_mm": [sx, sy],
        "size_px": [W, H], "principal_point_px": [cx, cy]}`` (principal point only when
        set); also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            try:
                Path(path).write_text(text + "\n")
            except OSError as exc:
                raise FileReadError(f"{_XRAY} file: cannot write '{path}': {exc}") from None
        return text

    @classmethod
    def from_json(cls, path_or_dict: Union[PathLike, Mapping[str, Any]]) -> "XRayCamera":
        """Read the format of :meth:`to_json` from a file path, JSON text or dict.

        Unknown or missing keys raise ``GeometryError`` naming them;
        ``principal_point_px`` is optional (absent or null = image centre).
        """
        data = _read_json(path_or_dict, _XRAY)
        _check_keys(data, _XRAY_KEYS, _XRAY_OPTIONAL, _XRAY)
        return cls(data["source_to_detector_mm"], data["pixel_spacing_mm"], data["size_px"],
                   data.get("principal_point_px"))

    @classmethod
    def from_dicom(cls, path_or_dataset: Any) -> "XRayCamera":
        """Geometry from a DICOM X-ray header (file path or ``pydicom.Dataset``).

        Uses DistanceSourceToDetector (0018,1110), ImagerPixelSpacing (0018,1164) (DICOM
        order: [row spacing = y, column spacing = x]), Rows (0028,0010) and Columns
        (0028,0011). Without ImagerPixelSpacing, PixelSpacing (0028,0030) is used with a
        warning: in projection images it may already be calibrated to the patient plane
        (magnification corrected), which is wrong for a detector model.
        DetectorActiveOrigin and similar detector-position tags are ignored; the
        principal point is the image centre.
        """
        import pydicom  # local: pydicom is only needed here

        if isinstance(path_or_dataset, pydicom.Dataset):
            ds, where = path_or_dataset, "DICOM dataset"
        elif isinstance(path_or_dataset, (str, Path)):
            where = f"DICOM file '{path_or_dataset}'"
            try:
                ds = pydicom.dcmread(str(path_or_dataset), stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types for bad files
                raise FileReadError(f"{_XRAY} DICOM file: cannot read '{path_or_dataset}': "
                                    f"{exc}") from None
        else:
            raise InputError(f"{_XRAY}: expected a DICOM path or pydicom Dataset, got "
                             f"{type(path_or_dataset).__name__}")

        def tag(keyword: str, number: str) -> Any:
            value = ds.get(keyword)
            if value is None or value == "":
                raise GeometryError(f"{_XRAY}: {where} has no {keyword} {number}")
            return value

        sdd = tag("DistanceSourceToDetector", "(0018,1110)")
        if ds.get("ImagerPixelSpacing") not in (None, ""):
            spacing = ds.ImagerPixelSpacing
        elif ds.get("PixelSpacing") not in (None, ""):
            warnings.warn(f"{_XRAY}: {where} has no ImagerPixelSpacing (0018,1164); "
                          f"using PixelSpacing (0028,0030), which may be calibrated to the "
                          f"patient plane rather than the detector", stacklevel=2)
            spacing = ds.PixelSpacing
        else:
            raise GeometryError(f"{_XRAY}: {where} has no ImagerPixelSpacing "
                                f"(0018,1164) (nor PixelSpacing (0028,0030))")
        if len(spacing) != 2:
            raise GeometryError(f"{_XRAY}: DICOM pixel spacing must have 2 values, got "
                                f"{list(spacing)}")
        rows = tag("Rows", "(0028,0010)")
        columns = tag("Columns", "(0028,0011)")
        row_spacing, column_spacing = float(spacing[0]), float(spacing[1])
        return cls(float(sdd), (column_spacing, row_spacing), (int(columns), int(rows)))
