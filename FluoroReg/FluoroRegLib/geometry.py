"""X-ray (cone-beam) camera geometry used by the FluoroReg renderer and registration.

Camera frame (``camera``, mm): origin at the X-ray source, +z towards the detector, +x
along image columns, +y along image rows. A point ``(x, y, z)`` projects to pixel

    u = x / z * f / sx + cx      (column)
    v = y / z * f / sy + cy      (row, row 0 = first row of the image array)

with ``f`` the source-to-detector distance (mm), ``(sx, sy)`` the detector pixel spacing
(mm/px) and ``(cx, cy)`` the principal point (px). Pixel ``(u, v)`` with integer ``u, v``
is the *centre* of that pixel.

The camera class is the core's ``SurgicalReg2D3DLib.cameras.XRayCamera``; this module
adds the helpers the renderer and the registration need (plain parameters, detector
points, standard C-arm poses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from SurgicalReg2D3DLib.cameras import XRayCamera
from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError


@dataclass(frozen=True)
class CameraParameters:
    """Plain numbers of an X-ray camera: f (mm), spacing (mm/px), size (px), centre (px)."""

    f: float
    sx: float
    sy: float
    width: int
    height: int
    cx: float
    cy: float


def make_camera(source_to_detector_mm: float, pixel_spacing_mm: Sequence[float],
                size_px: Sequence[int], principal_point_px: Optional[Sequence[float]] = None):
    """A core :class:`~SurgicalReg2D3DLib.cameras.XRayCamera` (checked; clear errors)."""
    return XRayCamera(source_to_detector_mm, tuple(pixel_spacing_mm), tuple(size_px),
                      None if principal_point_px is None else tuple(principal_point_px))


def load_geometry(path_or_dict: Union[str, Path, dict]):
    """A camera from a geometry JSON file or dict (see the command-line contract)."""
    if isinstance(path_or_dict, (str, Path)) and not Path(path_or_dict).is_file():
        raise FileReadError(f"X-ray geometry: file not found: {path_or_dict}")
    return XRayCamera.from_json(path_or_dict)


def camera_parameters(camera) -> CameraParameters:
    """The plain numbers of an X-ray camera (principal point resolved to pixels)."""
    if not isinstance(camera, XRayCamera):
        raise GeometryError(f"X-ray camera: expected an XRayCamera, got {type(camera).__name__}")
    cx, cy = camera.principal_point
    (sx, sy), (w, h) = camera.pixel_spacing_mm, camera.size_px
    return CameraParameters(float(camera.source_to_detector_mm), float(sx), float(sy),
                            int(w), int(h), float(cx), float(cy))


def pyramid_cameras(camera, downsample: Sequence[float] = (4, 2, 1)):
    """Cameras of a resolution pyramid, coarse to fine (``camera.scaled(factor)``)."""
    return [camera if f == 1 else camera.scaled(f) for f in downsample]


def detector_points(camera, device=None, dtype=None):
    """``(H, W, 3)`` camera-frame positions (mm) of the pixel centres, all at ``z = f``."""
    import torch  # noqa: PLC0415

    camera_parameters(camera)  # validates the camera type
    return camera.detector_points(device=device, dtype=dtype or torch.float32)


def project_points(camera, points_camera):
    """``(..., 3)`` camera-frame points (mm) -> ``(..., 2)`` pixels ``(u, v)``.

    Works on numpy arrays and torch tensors (differentiable).
    """
    p = camera_parameters(camera)
    x, y, z = points_camera[..., 0], points_camera[..., 1], points_camera[..., 2]
    u = x / z * (p.f / p.sx) + p.cx
    v = y / z * (p.f / p.sy) + p.cy
    if isinstance(points_camera, np.ndarray):
        return np.stack([u, v], axis=-1)
    import torch  # noqa: PLC0415

    return torch.stack([u, v], dim=-1)


def intrinsic_matrix(camera) -> np.ndarray:
    """3x3 pinhole matrix ``K`` equivalent to the X-ray projection (pixels from camera mm)."""
    p = camera_parameters(camera)
    return np.array([[p.f / p.sx, 0.0, p.cx], [0.0, p.f / p.sy, p.cy], [0.0, 0.0, 1.0]])


def look_at_pose(center_ras: Sequence[float], view: str = "AP", source_to_center_mm: float = 600.0,
                 rotation_deg: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """``ct_to_camera`` (4x4) of a C-arm looking at ``center_ras``.

    ``view="AP"``: the source is anterior of the patient and the beam runs posterior
    (camera +z = RAS -A); camera +x = RAS -R (the patient's right on the image's left, as
    a radiograph is viewed) and +y = RAS -S (head at the top). ``view="LAT"``: the source
    is on the patient's left and the beam runs towards +R; +x = RAS -A, +y = RAS -S.
    ``rotation_deg``: extra rotations about the camera x, y, z axes (degrees, applied
    about ``center_ras``); ``source_to_center_mm``: distance from the source to the centre.
    """
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    view = view.upper()
    if view == "AP":
        # camera axes expressed in RAS (rows of R = camera axes): x, y, z
        axes = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]])
    elif view in ("LAT", "LATERAL"):
        axes = np.array([[0, -1.0, 0], [0, 0, -1.0], [1.0, 0, 0]])
    else:
        raise InputError(f"view: expected 'AP' or 'LAT', got {view!r}")
    r_ras_to_cam = axes  # rows are camera axes in RAS -> maps RAS vectors to camera
    extra = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    r = extra @ r_ras_to_cam
    c = np.asarray(center_ras, dtype=float)
    t = np.array([0.0, 0.0, source_to_center_mm]) - r @ c
    pose = np.eye(4)
    pose[:3, :3] = r
    pose[:3, 3] = t
    return pose


def fov_check(camera, ct_to_camera: np.ndarray, points_ras: np.ndarray) -> float:
    """Fraction of ``points_ras`` (N, 3) that project inside the image (for sanity checks)."""
    p = camera_parameters(camera)
    pts = np.c_[points_ras, np.ones(len(points_ras))] @ np.asarray(ct_to_camera).T
    uv = project_points(camera, pts[:, :3])
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= p.width - 0.5) & (uv[:, 1] >= -0.5) & \
             (uv[:, 1] <= p.height - 0.5) & (pts[:, 2] > 0)
    return float(inside.mean()) if len(inside) else math.nan
