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

The models live in :mod:`.cameras_base` (shared checks), :mod:`.cameras_distortion`
(OpenCV distortion), :mod:`.cameras_pinhole` and :mod:`.cameras_xray`; this module
re-exports them: ``from SurgicalReg2D3DLib.cameras import ...`` is the public path
(``docs/architecture.md``, *Core API*).
"""

from __future__ import annotations

from .cameras_distortion import (distort_normalized, distortion_fold_check,
                                 radial_fold_radius, undistort_normalized)
from .cameras_pinhole import PinholeCamera
from .cameras_xray import XRayCamera

__all__ = [
    "PinholeCamera",
    "XRayCamera",
    "distort_normalized",
    "undistort_normalized",
    "radial_fold_radius",
    "distortion_fold_check",
]
