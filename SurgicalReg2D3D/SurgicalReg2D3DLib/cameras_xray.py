"""The cone-beam X-ray camera (fluoroscope): point source, flat detector.

Where it sits in the flow: an X-ray geometry (source-to-detector distance, detector pixel
spacing and size, principal point) from arguments, a JSON file or a DICOM header becomes a
checked, immutable :class:`XRayCamera`; it projects camera-frame points (origin at the
source, +z towards the detector) to detector pixels, back-projects pixels, gives the
detector points and pixel rays that DRR rendering samples along, scales itself for an
image pyramid and converts to the equivalent :class:`~.cameras_pinhole.PinholeCamera`.
Built on :mod:`.cameras_base`; re-exported by :mod:`.cameras`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .cameras_base import (PathLike, _as_depth, _as_points, _check_factor, _check_keys,
                           _fmt, _pair, _positive, _pyramid_pixel, _read_json,
                           _scaled_size, _to_float)
from .cameras_pinhole import PinholeCamera
from .errors import FileReadError, GeometryError, InputError


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
