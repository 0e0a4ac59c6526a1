"""Laparoscope pinhole camera with OpenCV lens distortion.

Frames
------
``camera``: OpenCV convention, origin at the optical centre, x right, y down, z forward
(towards the scene), millimetres. A point ``p_camera = (x, y, z)`` is projected to the pixel
``(u, v)`` (``u`` = column, ``v`` = row, row 0 = first row of the image array) by

    x' = x / z, y' = y / z, r^2 = x'^2 + y'^2
    radial = 1 + k1 r^2 + k2 r^4 + k3 r^6
    x'' = x' radial + 2 p1 x' y' + p2 (r^2 + 2 x'^2)
    y'' = y' radial + p1 (r^2 + 2 y'^2) + 2 p2 x' y'
    u = fx x'' + skew y'' + cx,  v = fy y'' + cy

which is OpenCV's ``projectPoints`` model with distortion ``(k1, k2, p1, p2, k3)``.

This is a private camera class of the LiverLaparoReg module: the shared core
``SurgicalReg2D3DLib.cameras.PinholeCamera`` is accepted everywhere through
:func:`as_laparo_camera` (duck typing on ``fx, fy, cx, cy, width, height, dist``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError

PathLike = Union[str, Path]

#: Names of the five OpenCV distortion coefficients, in OpenCV's order.
DIST_NAMES = ("k1", "k2", "p1", "p2", "k3")


@dataclass(frozen=True)
class LaparoCamera:
    """Pinhole camera with OpenCV distortion ``(k1, k2, p1, p2, k3)``.

    ``width`` and ``height`` are the image size in pixels; ``fx, fy`` focal lengths in
    pixels; ``cx, cy`` the principal point (pixel coordinates, 0 = centre of the first
    pixel).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    dist: Tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    skew: float = 0.0
    name: str = field(default="camera", compare=False)

    def __post_init__(self) -> None:
        validate_camera(self)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_matrix(cls, K, width: int, height: int, dist: Optional[Sequence[float]] = None,
                    name: str = "camera") -> "LaparoCamera":
        """From a 3x3 intrinsic matrix ``K`` and an image size."""
        K = np.asarray(K, dtype=float)
        if K.shape != (3, 3):
            raise GeometryError(f"{name}: intrinsic matrix must be 3x3, got shape {K.shape}")
        if not np.all(np.isfinite(K)):
            raise GeometryError(f"{name}: intrinsic matrix contains NaN or infinite values")
        if abs(K[2, 2]) < 1e-12:
            raise GeometryError(f"{name}: intrinsic matrix has K[2, 2] = 0")
        K = K / K[2, 2]
        if abs(K[1, 0]) > 1e-9 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9:
            raise GeometryError(f"{name}: intrinsic matrix is not upper triangular: {K.tolist()}")
        return cls(fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
                   width=int(width), height=int(height), dist=_dist5(dist, name),
                   skew=float(K[0, 1]), name=name)

    @classmethod
    def from_p2ilf_json(cls, path: PathLike, name: str = "camera") -> "LaparoCamera":
        """Read the P2ILF ``acquisition-camera-metadata.json`` (values stored as strings)."""
        data = _read_json(path, name)
        if not isinstance(data, dict):
            raise FileReadError(f"{name}: {path} is not a JSON object")
        missing = [k for k in ("fx", "fy", "cx", "cy", "width", "height") if k not in data]
        if missing:
            raise GeometryError(f"{name}: {path} lacks the intrinsics {', '.join(missing)}")
        try:
            vals = {k: float(data[k]) for k in ("fx", "fy", "cx", "cy", "width", "height")}
            dist = tuple(float(data.get(k, 0.0)) for k in DIST_NAMES)
            skew = float(data.get("skew", 0.0))
            k4 = float(data.get("k4", 0.0))
        except (TypeError, ValueError) as exc:
            raise GeometryError(f"{name}: {path} has a non-numeric intrinsic value ({exc})") from None
        if k4 != 0.0:
            raise GeometryError(f"{name}: k4 = {k4} (rational/fisheye models) is not supported")
        return cls(fx=vals["fx"], fy=vals["fy"], cx=vals["cx"], cy=vals["cy"],
                   width=int(round(vals["width"])), height=int(round(vals["height"])),
                   dist=dist, skew=skew, name=name)

    @classmethod
    def from_opencv_text(cls, intrinsics_path: PathLike, width: int, height: int,
                         distortion_path: Optional[PathLike] = None,
                         name: str = "camera") -> "LaparoCamera":
        """Read a 3x3 intrinsic matrix text file (+ optional distortion text file).

        The distortion file holds 4, 5 (or more, the extra ones must be zero)
        whitespace-separated coefficients in OpenCV order.
        """
        K = _read_numbers(intrinsics_path, name)
        if K.size != 9:
            raise GeometryError(f"{name}: {intrinsics_path} must hold 9 numbers (a 3x3 matrix), "
                                f"got {K.size}")
        dist = None
        if distortion_path is not None:
            d = _read_numbers(distortion_path, name).ravel()
            if d.size < 4:
                raise GeometryError(f"{name}: distortion file {distortion_path} must hold at least "
                                    f"4 coefficients, got {d.size}")
            if np.any(d[5:] != 0):
                raise GeometryError(f"{name}: only 5 distortion coefficients (k1, k2, p1, p2, k3) "
                                    f"are supported, got {d.size} non-zero ones")
            dist = d[:5]
        return cls.from_matrix(K.reshape(3, 3), width, height, dist, name=name)

    # ------------------------------------------------------------------ properties
    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix (float64)."""
        return np.array([[self.fx, self.skew, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist_array(self) -> np.ndarray:
        """Distortion ``(k1, k2, p1, p2, k3)`` as a float64 array, OpenCV order."""
        return np.asarray(self.dist, dtype=float)

    @property
    def size(self) -> Tuple[int, int]:
        """``(height, width)`` in pixels, the shape of an image array."""
        return (self.height, self.width)

    def has_distortion(self) -> bool:
        return any(abs(d) > 0 for d in self.dist)

    def scaled(self, factor: float) -> "LaparoCamera":
        """The same camera for an image resized by ``factor`` (e.g. 0.25 = 4x smaller).

        Pixel centres map as ``u' = (u + 0.5) factor - 0.5`` so the resized image stays
        aligned with ``cv2.resize(..., INTER_AREA)``. Distortion is unchanged (it acts on
        normalised coordinates).
        """
        if not factor > 0:
            raise InputError(f"{self.name}: scale factor must be positive, got {factor}")
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        sx, sy = w / self.width, h / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, skew=self.skew * sx,
                       cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5,
                       width=w, height=h)

    def to_dict(self) -> dict:
        """P2ILF-style JSON dictionary (numbers, not strings)."""
        d = {"projection": "frame", "width": self.width, "height": self.height,
             "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "skew": self.skew}
        d.update({k: float(v) for k, v in zip(DIST_NAMES, self.dist)})
        d["k4"] = 0.0
        return d

    # ------------------------------------------------------------------ projection
    def project(self, points_camera, return_depth: bool = False):
        """Project camera-frame points ``(..., 3)`` (mm) to pixels ``(..., 2)``.

        Torch tensors stay on their device and are differentiable; numpy arrays give numpy.
        Points with ``z <= 0`` get meaningless pixels: use ``return_depth`` to mask them.
        """
        import torch  # noqa: PLC0415

        is_numpy = not isinstance(points_camera, torch.Tensor)
        p = torch.as_tensor(np.asarray(points_camera, dtype=np.float64)) if is_numpy else points_camera
        z = p[..., 2]
        zs = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
        x = p[..., 0] / zs
        y = p[..., 1] / zs
        k1, k2, p1, p2, k3 = self.dist
        if self.has_distortion():
            r2 = x * x + y * y
            radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        else:
            xd, yd = x, y
        uv = torch.stack([self.fx * xd + self.skew * yd + self.cx, self.fy * yd + self.cy], dim=-1)
        if is_numpy:
            uv = uv.numpy()
            z = z.numpy()
        return (uv, z) if return_depth else uv

    def undistort_points(self, uv) -> np.ndarray:
        """Pixels ``(N, 2)`` -> normalised undistorted image coordinates ``(N, 2)`` (cv2)."""
        import cv2  # noqa: PLC0415

        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
        return cv2.undistortPoints(uv, self.K, self.dist_array).reshape(-1, 2)


def validate_camera(cam) -> None:
    """Raise :class:`GeometryError` for absurd intrinsics (non-positive focal, size...)."""
    name = getattr(cam, "name", "camera")
    vals = [cam.fx, cam.fy, cam.cx, cam.cy, cam.skew, *cam.dist]
    if not all(math.isfinite(float(v)) for v in vals):
        raise GeometryError(f"{name}: intrinsics contain NaN or infinite values")
    if not (cam.fx > 0 and cam.fy > 0):
        raise GeometryError(f"{name}: focal lengths must be positive, got fx={cam.fx}, fy={cam.fy}")
    if not (int(cam.width) > 0 and int(cam.height) > 0):
        raise GeometryError(f"{name}: image size must be positive, got {cam.width}x{cam.height}")
    if len(cam.dist) != 5:
        raise GeometryError(f"{name}: expected 5 distortion coefficients, got {len(cam.dist)}")


def as_laparo_camera(cam, name: str = "camera") -> LaparoCamera:
    """Accept a :class:`LaparoCamera`, the core ``PinholeCamera`` or a dict."""
    if isinstance(cam, LaparoCamera):
        return cam
    if cam is None:
        raise GeometryError(f"{name}: intrinsics are missing")
    if isinstance(cam, dict):
        try:
            dist = tuple(float(cam.get(k, 0.0)) for k in DIST_NAMES)
            return LaparoCamera(fx=float(cam["fx"]), fy=float(cam["fy"]), cx=float(cam["cx"]),
                                cy=float(cam["cy"]), width=int(float(cam["width"])),
                                height=int(float(cam["height"])), dist=dist,
                                skew=float(cam.get("skew", 0.0)), name=name)
        except KeyError as exc:
            raise GeometryError(f"{name}: intrinsics lack {exc.args[0]!r}") from None
    needed = ("fx", "fy", "cx", "cy", "width", "height")
    if all(hasattr(cam, a) for a in needed):
        dist = getattr(cam, "dist", None)
        return LaparoCamera(fx=float(cam.fx), fy=float(cam.fy), cx=float(cam.cx), cy=float(cam.cy),
                            width=int(cam.width), height=int(cam.height), dist=_dist5(dist, name),
                            skew=float(getattr(cam, "skew", 0.0) or 0.0), name=name)
    raise GeometryError(f"{name}: cannot use an object of type {type(cam).__name__} as a camera")


def load_camera(path: PathLike, width: Optional[int] = None, height: Optional[int] = None,
                distortion_path: Optional[PathLike] = None, name: str = "camera") -> LaparoCamera:
    """A P2ILF camera JSON, or a 3x3 intrinsics text file (then ``width``/``height`` needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    if path.suffix.lower() == ".json":
        return LaparoCamera.from_p2ilf_json(path, name=name)
    if width is None or height is None:
        raise GeometryError(f"{name}: a 3x3 intrinsics text file needs the image size "
                            f"(width and height)")
    return LaparoCamera.from_opencv_text(path, width, height, distortion_path, name=name)


def _dist5(dist, name: str) -> Tuple[float, float, float, float, float]:
    if dist is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    d = np.asarray(dist, dtype=float).ravel()
    if d.size < 4:
        raise GeometryError(f"{name}: expected 4 or 5 distortion coefficients, got {d.size}")
    if np.any(d[5:] != 0):
        raise GeometryError(f"{name}: only 5 distortion coefficients (k1, k2, p1, p2, k3) are "
                            f"supported")
    d = np.concatenate([d[:5], np.zeros(max(0, 5 - d.size))])
    return tuple(float(v) for v in d)


def _read_json(path: PathLike, name: str):
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileReadError(f"{name}: cannot read JSON from {path} ({exc})") from None


def _read_numbers(path: PathLike, name: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    try:
        return np.array([float(t) for t in path.read_text().replace(",", " ").split()])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FileReadError(f"{name}: {path} is not a whitespace-separated number file ({exc})") from None
