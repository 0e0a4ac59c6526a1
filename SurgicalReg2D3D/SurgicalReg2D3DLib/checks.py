"""Input checks shared by every reader: image geometry, files cut short, DICOM slice spacing,
camera principal points and the plain "ended worse than it started" rule.

One geometry rule for every volume reader (MRML ``io.load_volume``, the FluoroReg CLI CT
reader, the USSliceReg volume reader): spacing finite and in ``(0, MAX_SPACING_MM]``, a
finite orthonormal direction matrix (no shear, no scale; a reflection is allowed), a
finite origin within ``MAX_ORIGIN_MM``. Files cut short: :func:`check_file_complete`
(from :mod:`.file_checks`). A DICOM series with a missing, unreadable or unevenly spaced
slice is refused unless the caller opts in.

Pure numpy + the standard library (no torch, no Qt). Every error is an
:class:`~SurgicalReg2D3DLib.errors.InputError` subclass whose message starts with the
input's name.
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from .errors import GeometryError, InputError
from .file_checks import check_file_complete  # noqa: F401 - one import for every reader

#: largest voxel/pixel spacing accepted (mm); 1 m voxels are not a medical image
MAX_SPACING_MM = 1000.0
#: largest |origin| coordinate accepted (mm)
MAX_ORIGIN_MM = 1.0e6
#: relative tolerance of the DICOM slice spacing (a missing slice doubles one gap)
SLICE_SPACING_TOLERANCE = 0.1

def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in np.ravel(values)) + ")"


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def check_geometry(spacing, direction, origin, what: str, where=None) -> None:
    """GeometryError unless spacing, direction and origin describe a sane image grid.

    ``spacing`` (D,), ``direction`` (D, D) with column ``i`` the direction of index axis
    ``i``, ``origin`` (D,). ``where`` (a path) is added to the message.
    """
    tail = f": {where}" if where is not None else ""
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    dim = spacing.size
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0.0):
        raise GeometryError(f"{what}: spacing must be positive, got {_fmt(spacing)}{tail}")
    if np.any(spacing > MAX_SPACING_MM):
        raise GeometryError(f"{what}: spacing {_fmt(spacing)} mm is implausibly large "
                            f"(more than {MAX_SPACING_MM:g} mm per voxel){tail}")
    try:
        direction = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    except ValueError:
        raise GeometryError(f"{what}: direction matrix must be {dim}x{dim}{tail}") from None
    if not np.all(np.isfinite(direction)) or not np.allclose(direction.T @ direction,
                                                             np.eye(dim), atol=1e-4):
        raise GeometryError(f"{what}: direction matrix is not orthonormal{tail}")
    origin = np.asarray(origin, dtype=np.float64).ravel()
    if not np.all(np.isfinite(origin)):
        raise GeometryError(f"{what}: origin must be finite, got {_fmt(origin)}{tail}")
    if np.any(np.abs(origin) > MAX_ORIGIN_MM):
        raise GeometryError(f"{what}: origin {_fmt(origin)} mm is implausibly far "
                            f"(more than {MAX_ORIGIN_MM:g} mm){tail}")


def check_index_matrix(ijk_to_xyz, what: str, where=None) -> None:
    """:func:`check_geometry` of a (4, 4) index-to-physical matrix (columns = axis * spacing)."""
    m = np.asarray(ijk_to_xyz, dtype=np.float64)
    if m.shape != (4, 4):
        raise GeometryError(f"{what}: expected a 4x4 index-to-physical matrix, got shape "
                            f"{m.shape}")
    if not np.all(np.isfinite(m)):
        tail = f": {where}" if where is not None else ""
        raise GeometryError(f"{what}: geometry contains NaN or infinite values{tail}")
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / np.where(spacing > 0, spacing, 1.0)
    check_geometry(spacing, direction, m[:3, 3], what, where)


def check_sitk_geometry(image_or_reader, what: str, where=None) -> None:
    """:func:`check_geometry` of a SimpleITK image or of an ``ImageFileReader`` after
    ``ReadImageInformation``."""
    dim = image_or_reader.GetDimension()
    check_geometry(image_or_reader.GetSpacing(),
                   np.asarray(image_or_reader.GetDirection(), dtype=np.float64).reshape(dim, dim),
                   image_or_reader.GetOrigin(), what, where)


def check_not_constant(array, what: str) -> None:
    """InputError for an array whose values are all equal (or NaN/inf)."""
    a = np.asarray(array)
    if a.size == 0:
        raise InputError(f"{what}: is empty")
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{what}: contains NaN or infinite values")
    if lo == hi:
        raise InputError(f"{what}: all voxels have the same value ({lo:g}); nothing to "
                         "register against")


def check_principal_point(cx: float, cy: float, width: int, height: int, what: str) -> None:
    """GeometryError when the principal point lies more than one image size off the image
    (a calibration in the wrong unit or for another image)."""
    cx, cy = float(cx), float(cy)
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise GeometryError(f"{what}: principal point must be finite, got ({cx:g}, {cy:g})")
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise GeometryError(f"{what}: principal point ({cx:g}, {cy:g}) px is far outside the "
                            f"{width} x {height} image (allowed: within one image size of it)")


def check_points_on_image(points, width: int, height: int, what: str,
                          margin: float = 0.1) -> None:
    """InputError when 2D points (N, 2) px lie outside the image (plus ``margin`` of its size)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if p.size == 0:
        return
    mx, my = margin * width, margin * height
    bad = ((p[:, 0] < -mx - 0.5) | (p[:, 0] > width - 0.5 + mx)
           | (p[:, 1] < -my - 0.5) | (p[:, 1] > height - 0.5 + my))
    if np.any(bad):
        k = int(np.argmax(bad))
        raise InputError(f"{what}: {int(bad.sum())} of {len(p)} points lie outside the "
                         f"{width} x {height} image, e.g. ({p[k, 0]:g}, {p[k, 1]:g}) px")


# --------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------
def check_slice_positions(positions, normal, what: str, folder=None,
                          allow_uneven: bool = False) -> Optional[str]:
    """Check that slice positions (N, 3) mm are evenly spaced along ``normal`` (3,).

    A missing or unreadable slice leaves a gap twice as wide as the others; a duplicated
    slice a zero gap. Raises :class:`InputError` naming the gap unless ``allow_uneven``;
    then returns the warning text (None when the spacing is even).
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n = np.asarray(normal, dtype=np.float64)
    if len(pos) < 2 or not np.all(np.isfinite(pos)) or not np.all(np.isfinite(n)) \
            or np.linalg.norm(n) == 0:
        return None
    d = np.sort(pos @ (n / np.linalg.norm(n)))
    gaps = np.diff(d)
    typical = float(np.median(gaps))
    tail = f" in {folder}" if folder is not None else ""
    if typical <= 1e-6:
        problem = "several slices share one position (duplicated slices)"
    else:
        bad = np.abs(gaps - typical) > SLICE_SPACING_TOLERANCE * typical + 1e-3
        if not np.any(bad):
            return None
        k = int(np.argmax(bad))
        gap = float(gaps[k])
        if gap <= 0.01 * typical + 1e-3:
            kind = "duplicated slice"
        elif gap > 1.5 * typical:
            kind = (f"about {int(round(gap / typical)) - 1} slice(s) missing or unreadable"
                    if gap / typical < 1e3 else "a gap")
        else:
            kind = "uneven spacing"
        problem = (f"uneven slice spacing: gap of {gap:g} mm between slices {k} and {k + 1} "
                   f"where the others are {typical:g} mm ({kind}; "
                   f"{int(bad.sum())} uneven gap(s) among {len(pos)} slices)")
    text = f"{what}: {problem}{tail}"
    if not allow_uneven:
        raise InputError(text + "; refusing to load a distorted volume (opt in with "
                         "allow_uneven_slices=True / --allow-uneven-slices)")
    return text


def check_sitk_series(reader, what: str, folder=None, allow_uneven: bool = False
                      ) -> Optional[str]:
    """:func:`check_slice_positions` for a SimpleITK ``ImageSeriesReader`` executed with
    ``MetaDataDictionaryArrayUpdateOn()`` (tags 0020|0032 and 0020|0037 of each slice)."""
    positions = []
    normal = None
    names = reader.GetFileNames()
    for i in range(len(names)):
        try:
            if not reader.HasMetaDataKey(i, "0020|0032"):
                return None
            positions.append([float(v) for v in
                              reader.GetMetaData(i, "0020|0032").replace(",", "\\").split("\\")])
            if normal is None and reader.HasMetaDataKey(i, "0020|0037"):
                cosines = [float(v) for v in reader.GetMetaData(i, "0020|0037").split("\\")]
                if len(cosines) == 6:
                    normal = np.cross(cosines[:3], cosines[3:])
        except (RuntimeError, ValueError, IndexError):
            return None
    if normal is None or any(len(p) != 3 for p in positions):
        return None
    return check_slice_positions(positions, normal, what, folder, allow_uneven)


# --------------------------------------------------------------------------------------
# "ended worse than it started"
# --------------------------------------------------------------------------------------
#: a similarity this much below the start's counts as "ended worse" (below it: numerical
#: noise of a start that was already at the optimum)
WORSE_TOLERANCE = 1e-3


def no_progress_quality(start: float, end: float, what: str = "similarity",
                        tolerance: float = WORSE_TOLERANCE, **signals):
    """A ``failed`` :class:`~SurgicalReg2D3DLib.quality.Quality` when a registration ended
    with a lower similarity (higher is better) than it started, or with a non-finite one;
    None otherwise. The plain rule, before any calibrated verdict."""
    from .quality import Quality  # noqa: PLC0415

    sig = {f"{what}_start": float(start), f"{what}_end": float(end), **signals}
    if not (math.isfinite(float(end)) and math.isfinite(float(start))):
        return Quality(verdict="failed", reasons=[f"{what} could not be computed "
                                                  f"(start {start}, end {end})"], signals=sig)
    if float(end) < float(start) - tolerance:
        return Quality(verdict="failed",
                       reasons=[f"ended worse than it started: {what} {float(start):.4f} -> "
                                f"{float(end):.4f}; the result is not a registration"],
                       signals=sig)
    return None


def ended_worse(start: float, end: float, tolerance: float = WORSE_TOLERANCE) -> bool:
    """True when ``end`` is not finite or lower than ``start`` (higher is better)."""
    try:
        s, e = float(start), float(end)
    except (TypeError, ValueError):
        return True
    return not math.isfinite(e) or (math.isfinite(s) and e < s - tolerance)


__all__ = ["MAX_SPACING_MM", "MAX_ORIGIN_MM", "check_geometry", "check_index_matrix",
           "check_sitk_geometry", "check_not_constant", "check_principal_point",
           "check_points_on_image", "check_file_complete", "check_slice_positions",
           "check_sitk_series", "no_progress_quality", "ended_worse", "int_list"]


def int_list(text: Optional[str], option: str) -> Optional[List[int]]:
    """A command-line option's ``"1,2,3"`` -> ``[1, 2, 3]`` (``None`` stays ``None``), with a clear error; an empty
    list and a number listed twice are errors (they would mean "all" and give two
    results for one item)."""
    if text is None:
        return None
    if not text.strip():
        raise InputError(f"{option}: empty list; give comma-separated integers or leave "
                         "the option out")
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"{option}: expected comma-separated integers, got {text!r}") \
            from None
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise InputError(f"{option}: {dup[0]} is listed more than once")
    return values
