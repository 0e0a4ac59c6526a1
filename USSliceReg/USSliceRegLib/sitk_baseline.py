"""SimpleITK baseline: 2D frame to 3D volume with global NCC and gradient descent.

For comparison only (benchmarks, ``--method sitk``). The frame becomes a one-voxel-thick 3D
*fixed* image placed at its start pose (origin, spacing and direction from
``image_to_reference``), the volume is the *moving* image in the same physical space
(ITK calls it LPS; here it is the reference frame, see :mod:`plus_io`), and an
``Euler3DTransform`` centred on the fan centre is optimised with SimpleITK's
``Correlation`` metric (global normalised cross-correlation, GNCC) restricted to the fan
mask, by regular-step gradient descent over the same frame pyramid as the LNCC method.

Only the fixed image's points are sampled, so this is a fair plane-to-volume comparison.
ITK images need an orthonormal direction: a calibration with skew is approximated by the
nearest rotation (SVD) and the column norms as pixel spacing, noted in the result.
"""

from __future__ import annotations

import time
from typing import List, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from .config import FrameResult


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def _fixed_image(sitk, frame: np.ndarray, mask: np.ndarray, pose: np.ndarray, step: int):
    """One-slice 3D images (frame, mask) whose voxel (c, r, 0) sits at pixel block centre."""
    h, w = frame.shape[0] // step, frame.shape[1] // step
    f = frame[: h * step, : w * step].astype(np.float32).reshape(h, step, w, step).mean((1, 3))
    m = mask[: h * step, : w * step].reshape(h, step, w, step).all(axis=(1, 3))
    a0, a1 = pose[:3, 0], pose[:3, 1]
    normal = np.cross(a0, a1)
    normal /= np.linalg.norm(normal)
    direction = _nearest_rotation(np.stack([a0 / np.linalg.norm(a0), a1 / np.linalg.norm(a1),
                                             normal], axis=1))
    off = (step - 1) / 2.0
    origin = (pose @ np.array([off, off, 0.0, 1.0]))[:3]
    spacing = (step * np.linalg.norm(a0), step * np.linalg.norm(a1), 1.0)
    img = sitk.GetImageFromArray(f[None])
    msk = sitk.GetImageFromArray(m[None].astype(np.uint8))
    for im in (img, msk):
        im.SetOrigin(tuple(origin))
        im.SetSpacing(spacing)
        im.SetDirection(tuple(direction.ravel()))
    return img, msk


def moving_image(array: np.ndarray, ijk_to_reference: np.ndarray):
    """The volume as a SimpleITK image in reference (ITK "LPS") coordinates."""
    import SimpleITK as sitk  # noqa: PLC0415

    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    m = np.asarray(ijk_to_reference, dtype=float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    img.SetSpacing(tuple(spacing))
    img.SetDirection(tuple((m[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(m[:3, 3]))
    return img


def register_sitk(array, ijk_to_reference, frames, starts, fan, steps: Sequence[int] = (16, 8),
                  iterations: int = 100, indices=None, progress=None, cancel=None,
                  moving=None) -> List[FrameResult]:
    """Register frames ``(N, H, W)`` from ``starts`` ``(N, 4, 4)`` with SimpleITK.

    Returns :class:`~.config.FrameResult` per frame (``lncc`` fields hold SimpleITK's
    final correlation, sign flipped to be positive when similar).
    """
    import SimpleITK as sitk  # noqa: PLC0415

    frames = np.asarray(frames)
    starts = np.asarray(starts, dtype=float)
    if frames.ndim == 2:
        frames, starts = frames[None], starts.reshape(1, 4, 4)
    if frames.ndim != 3 or starts.shape != (frames.shape[0], 4, 4):
        raise InputError(f"US frames: expected (N, H, W) with (N, 4, 4) starts, got "
                         f"{frames.shape} and {starts.shape}")
    if not np.all(np.isfinite(starts)):
        raise InputError("start image_to_reference: contains NaN or inf")
    fan = np.asarray(fan, dtype=bool)
    moving = moving if moving is not None else moving_image(array, ijk_to_reference)
    rows, cols = np.nonzero(fan)
    centre_px = np.array([cols.mean(), rows.mean(), 0.0, 1.0])
    out = []
    for n in range(frames.shape[0]):
        check_cancel(cancel, "SimpleITK registration")
        t0 = time.perf_counter()
        start = starts[n]
        centre = (start @ centre_px)[:3]
        tfm = sitk.Euler3DTransform()
        tfm.SetCenter(tuple(centre))
        value0 = value = float("nan")
        for li, step in enumerate(steps):
            fixed, fmask = _fixed_image(sitk, frames[n], fan, start, step)
            reg = sitk.ImageRegistrationMethod()
            reg.SetMetricAsCorrelation()
            reg.SetMetricFixedMask(fmask)
            reg.SetInterpolator(sitk.sitkLinear)
            reg.SetOptimizerAsRegularStepGradientDescent(
                learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
            reg.SetOptimizerScalesFromPhysicalShift()
            reg.SetInitialTransform(tfm, inPlace=True)
            if li == 0:
                value0 = -reg.MetricEvaluate(fixed, moving)
            reg.Execute(fixed, moving)
            value = -reg.GetMetricValue()
        # ITK's transform maps fixed physical points (frame at the start pose) to moving
        # physical points (reference): p_ref = R (p - c) + c + t.
        R = np.array(tfm.GetMatrix()).reshape(3, 3)
        t = np.array(tfm.GetTranslation())
        c = np.array(tfm.GetCenter())
        corr = np.eye(4)
        corr[:3, :3] = R
        corr[:3, 3] = c + t - R @ c
        seconds = time.perf_counter() - t0
        out.append(FrameResult(start_image_to_reference=start, image_to_reference=corr @ start,
                               correction=corr, lncc_start=float(value0), lncc=float(value),
                               overlap=float("nan"), iterations=iterations, seconds=seconds))
        report(progress, (n + 1) / frames.shape[0], f"SimpleITK frame {n + 1}")
    return out
