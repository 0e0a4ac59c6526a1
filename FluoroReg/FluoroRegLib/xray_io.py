"""Reading and writing X-ray images with their cone-beam geometry.

Supported inputs:

- DICOM (X-ray angiography / radiography / any single-frame DICOM): pixels from pydicom,
  geometry from the tags (``XRayCamera.from_dicom``: DistanceSourceToDetector,
  ImagerPixelSpacing, Rows, Columns) unless a geometry JSON is given;
- NRRD, MHA/MHD, NIfTI, PNG, TIFF, JPG (one slice; RGB is converted to gray) plus a
  geometry JSON (required: these files carry no cone-beam geometry);
- raw detector images (counts: bright where the beam is unattenuated) with
  ``negative_log=True``: ``-log(I / I0)``, ``I0`` = the 99.9th percentile of ``I`` unless
  given, so that attenuation becomes bright like a DRR.

Image rows: row 0 is the first row of the array as stored in the file (top of a PNG),
which is image row ``v = 0`` of the camera model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from SurgicalReg2D3DLib.cameras import XRayCamera
from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError

from .geometry import camera_parameters, load_geometry

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def negative_log(raw, i0: Optional[float] = None, name: str = "X-ray image") -> np.ndarray:
    """``-log(I / I0)`` of a raw detector image (float32, >= 0)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        raise InputError(f"{name}: image is empty")
    if np.any(raw < 0):
        raise InputError(f"{name}: raw detector counts must be >= 0 for the negative log, "
                         f"got a minimum of {raw.min():g}")
    ref = float(np.percentile(raw, 99.9)) if i0 is None else float(i0)
    if not ref > 0:
        raise InputError(f"{name}: the unattenuated intensity I0 must be > 0, got {ref:g}")
    out = -np.log(np.clip(raw, ref * 1e-6, None) / ref)
    return np.clip(out, 0.0, None).astype(np.float32)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _read_dicom(path: Path, name: str) -> Tuple[np.ndarray, Optional[XRayCamera]]:
    import pydicom  # noqa: PLC0415

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types
        raise FileReadError(f"{name}: cannot read DICOM file {path}: {exc}") from None
    img = np.asarray(pixels, dtype=np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    img = img * slope + intercept
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        img = img.max() - img  # MONOCHROME1: low values are bright
    try:
        camera = XRayCamera.from_dicom(ds)
    except GeometryError:
        camera = None
    return img, camera


def _read_itk(path: Path, name: str) -> np.ndarray:
    import SimpleITK as sitk  # noqa: PLC0415

    from SurgicalReg2D3DLib.checks import check_file_complete  # noqa: PLC0415

    check_file_complete(path, name)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise FileReadError(f"{name}: cannot read {path}: "
                            f"{str(exc).strip().splitlines()[-1]}") from None
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if image.GetNumberOfComponentsPerPixel() in (3, 4):
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a grayscale or RGB image, got "
                         f"{image.GetNumberOfComponentsPerPixel()} components per pixel")
    return arr


def load_xray(path: Union[str, Path], geometry: Union[None, str, Path, dict, XRayCamera] = None,
              negative_log_raw: bool = False, i0: Optional[float] = None,
              name: str = "X-ray image") -> Tuple[np.ndarray, XRayCamera]:
    """Read an X-ray image and its camera.

    Returns ``(image, camera)``: ``image`` float32 (H, W); ``camera`` from ``geometry``
    (JSON path/dict or camera) when given, else from the DICOM tags. The camera's
    ``size_px`` must match the image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    if _is_dicom(path):
        img, camera = _read_dicom(path, name)
    else:
        img, camera = _read_itk(path, name), None
    img = np.squeeze(img) if img.ndim == 3 and 1 in img.shape[:1] else img
    if img.ndim != 2:
        raise InputError(f"{name}: expected a 2D image, got shape {tuple(img.shape)} ({path.name})")
    if geometry is not None:
        camera = geometry if isinstance(geometry, XRayCamera) else load_geometry(geometry)
    if camera is None:
        raise GeometryError(f"X-ray geometry: missing for {path.name}; give a geometry JSON "
                            "(the file has no DistanceSourceToDetector/ImagerPixelSpacing)")
    p = camera_parameters(camera)
    if (p.height, p.width) != img.shape:
        raise GeometryError(f"X-ray geometry: size_px [W, H] = [{p.width}, {p.height}] does not "
                            f"match the image {path.name} (H, W) = {img.shape}")
    from SurgicalReg2D3DLib.checks import check_principal_point  # noqa: PLC0415

    where = (f"X-ray geometry {Path(geometry).name}" if isinstance(geometry, (str, Path))
             else f"X-ray geometry of {path.name}")
    check_principal_point(p.cx, p.cy, p.width, p.height, where)
    if negative_log_raw:
        img = negative_log(img, i0, name)
    return img.astype(np.float32), camera


def save_xray(image, camera, path: Union[str, Path], geometry_path: Union[None, str, Path] = None
              ) -> Path:
    """Write a float image (NRRD/MHA keep floats; PNG is scaled to 16 bit) and its
    geometry JSON (default: ``<path stem>.json`` next to it)."""
    import SimpleITK as sitk  # noqa: PLC0415

    path = Path(path)
    img = np.asarray(image, dtype=np.float32)
    if path.suffix.lower() == ".png":
        lo, hi = float(img.min()), float(img.max())
        scaled = np.round((img - lo) / max(hi - lo, 1e-12) * 65535).astype(np.uint16)
        sitk.WriteImage(sitk.GetImageFromArray(scaled), str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(img), str(path))
    gpath = Path(geometry_path) if geometry_path else path.with_suffix(".json")
    gpath.write_text(json.dumps(camera.to_dict(), indent=2) + "\n")
    return gpath


def read_pose_json(path: Union[str, Path], name: str = "initial pose"):
    """``{"ct_to_camera": 4x4}`` -> [matrix]; ``{"views": [{"ct_to_camera": ...}, ...]}``
    -> list of matrices (numpy float64, not yet checked for rigidity)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileReadError(f"{name}: file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise FileReadError(f"{name}: cannot read {path}: {exc}") from None
    if isinstance(data, dict) and "views" in data:
        items = data["views"]
        if not isinstance(items, list) or not items:
            raise InputError(f"{name}: 'views' must be a non-empty list in {path.name}")
    else:
        items = [data]
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "ct_to_camera" not in item:
            raise InputError(f"{name}: view {k + 1} has no 'ct_to_camera' in {path.name}")
        try:
            m = np.array(item["ct_to_camera"], dtype=np.float64)
        except (TypeError, ValueError):
            raise GeometryError(f"{name}: 'ct_to_camera' must be a 4x4 matrix of numbers") from None
        out.append(m)
    return out


def write_pose_json(path: Union[str, Path], poses, extra: Optional[dict] = None) -> None:
    """Write one pose as ``{"ct_to_camera": ...}`` or several as ``{"views": [...]}``."""
    poses = [np.asarray(p, float) for p in poses]
    data = ({"ct_to_camera": poses[0].tolist()} if len(poses) == 1 else
            {"ct_to_camera": poses[0].tolist(),
             "views": [{"ct_to_camera": p.tolist()} for p in poses]})
    data.update(extra or {})
    from SurgicalReg2D3DLib.outputs import write_text_atomic  # noqa: PLC0415

    write_text_atomic(path, json.dumps(data, indent=2, default=float) + "\n", "pose file")


def load_xrays(xrays, geometries=None, negative_log_raw: bool = False):
    """``(images, cameras)`` of several X-ray files with their geometry files (or their
    DICOM tags), named "X-ray image k" in errors (:func:`load_xray`)."""
    images, cameras = [], []
    for k, path in enumerate(xrays):
        name = "X-ray image" if len(xrays) == 1 else f"X-ray image {k + 1}"
        img, cam = load_xray(path, geometries[k] if geometries else None,
                             negative_log_raw=negative_log_raw, name=name)
        images.append(img)
        cameras.append(cam)
    return images, cameras
