"""The pinhole camera with OpenCV distortion (laparoscope, any video camera).

Where it sits in the flow: a calibration (OpenCV text files, a P2ILF JSON, a dict) becomes
a checked, immutable :class:`PinholeCamera`; it projects camera-frame points to distorted
pixels (:mod:`.cameras_distortion` for the lens model), undistorts and back-projects
pixels, gives every pixel's ray, and scales itself for an image pyramid. Built on
:mod:`.cameras_base`; :class:`~.cameras_xray.XRayCamera` converts to it
(``to_pinhole``). Re-exported by :mod:`.cameras`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from .cameras_base import (PathLike, _as_depth, _as_points, _check_factor, _check_keys,
                           _fmt, _positive, _pyramid_pixel, _read_json, _read_text,
                           _scaled_size, _to_float)
from .cameras_distortion import (_DIST_LENGTHS, _DIST_NAMES, distort_normalized,
                                 undistort_normalized)
from .errors import FileReadError, GeometryError, InputError


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

