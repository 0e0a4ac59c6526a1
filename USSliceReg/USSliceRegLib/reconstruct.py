"""Volume reconstruction from a tracked 2D ultrasound sweep (pixel nearest neighbour).

As PLUS's ``vtkVolumeReconstructor`` with ``Interpolation="NEAREST_NEIGHBOR"`` and
``CompoundingMode="MEAN"``: every (fan) pixel of every frame is mapped to reference mm by
its ``image_to_reference``, rounded to the nearest voxel of the output grid and averaged
there. Holes are then filled, a simple stand-in for PLUS's "stick" hole filling: an empty
voxel that lies on a *stick* along one of the grid axes, i.e. between two filled voxels at
most ``2 * fill_radius`` voxels apart (a gap between frames of up to ``fill_radius``
voxels on each side of its middle), gets the linear interpolation of the stick's two ends
(the shortest such stick over the three axes wins); the empty space around the sweep stays
empty (0). (Until session 5 each end was searched only ``fill_radius`` voxels away, so a
gap between ``fill_radius`` and ``2 * fill_radius`` voxels was filled only in a thin sheet
at its middle: a volume from every other frame of a sweep had data on the acquired planes
and on the mid-planes only, and frames between them registered onto those sheets; see
``benchmarks/results/us_quality.md``.)

The grid: ``ijk_to_reference`` (axis-aligned with the reference frame unless given) and
shape ``(K, J, I)``, either given or the bounding box of the frames' fans plus a margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from .slicing import plane_pixels


@dataclass
class Reconstruction:
    """``array`` ``(K, J, I)`` float32 (0 = no data), ``ijk_to_reference`` 4x4,
    ``filled`` ``(K, J, I)`` bool (voxels hit by a pixel or hole-filled)."""

    array: np.ndarray
    ijk_to_reference: np.ndarray
    filled: np.ndarray
    hit_voxels: int


def bounding_grid(image_to_reference: np.ndarray, fan: np.ndarray, spacing_mm: float,
                  margin_mm: float = 2.0) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Axis-aligned grid ``(ijk_to_reference, (K, J, I))`` covering all fans."""
    rows, cols = np.nonzero(fan)
    corners = np.array([[c, r, 0, 1] for c in (cols.min(), cols.max())
                        for r in (rows.min(), rows.max())], dtype=float)
    pts = np.einsum("nij,cj->nci", np.asarray(image_to_reference, float), corners)[..., :3]
    lo = pts.reshape(-1, 3).min(0) - margin_mm
    hi = pts.reshape(-1, 3).max(0) + margin_mm
    size = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    m = np.eye(4)
    m[:3, :3] *= spacing_mm
    m[:3, 3] = lo
    return m, (int(size[2]), int(size[1]), int(size[0]))


def _shift(x: torch.Tensor, axis: int, r: int) -> torch.Tensor:
    """``y[n] = x[n - r]`` along ``axis`` (zeros where ``n - r`` is outside)."""
    n = x.shape[axis]
    if abs(r) >= n:
        return torch.zeros_like(x)
    pad = torch.zeros_like(x.narrow(axis, 0, abs(r)))
    if r > 0:
        return torch.cat([pad, x.narrow(axis, 0, n - r)], dim=axis)
    return torch.cat([x.narrow(axis, -r, n + r), pad], dim=axis)


def _fill_holes(vol: torch.Tensor, filled: torch.Tensor, radius: int):
    """Stick filling: an empty voxel between two filled voxels along a grid axis that are
    at most ``2 * radius`` voxels apart gets the linear interpolation of those two (the
    nearest on each side; the shortest such stick over the three axes wins)."""
    out = vol.clone()
    best = torch.full(vol.shape, float("inf"), dtype=vol.dtype, device=vol.device)
    max_len = 2 * radius
    for axis in range(3):
        ends = []
        for sign in (1, -1):  # +1: the voxel at n - r (before), -1: at n + r (after)
            dist = torch.full(vol.shape, float("inf"), dtype=vol.dtype, device=vol.device)
            val = torch.zeros_like(vol)
            for r in range(max_len - 1, 0, -1):  # nearest last: overwrites farther ones
                f = _shift(filled, axis, sign * r)
                dist = torch.where(f, torch.full_like(dist, r), dist)
                val = torch.where(f, _shift(vol, axis, sign * r), val)
            ends.append((dist, val))
        (db, vb), (da, va) = ends
        length = db + da
        use = (~filled) & (length <= max_len) & (length < best)
        interp = (vb * da + va * db) / torch.where(torch.isfinite(length), length,
                                                     torch.ones_like(length))
        out = torch.where(use, interp, out)
        best = torch.where(use, length, best)
    return out, filled | torch.isfinite(best)


def reconstruct_volume(frames, image_to_reference, fan=None, spacing_mm: float = 0.5,
                       ijk_to_reference=None, shape=None, fill_radius: int = 3,
                       pixel_step: int = 1, max_voxels: int = 64_000_000, device=None,
                       progress=None, cancel=None) -> Reconstruction:
    """Compound frames ``(N, H, W)`` at poses ``(N, 4, 4)`` into a volume.

    ``fan`` ``(H, W)`` bool restricts the pixels used (default all nonzero pixels);
    ``pixel_step`` uses every ``pixel_step``-th row/column (faster, coarser).
    Raises :class:`InputError` for mismatched shapes, NaN poses, empty input or a grid
    larger than ``max_voxels``.
    """
    frames = np.asarray(frames)
    poses = np.asarray(image_to_reference, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[0] == 0:
        raise InputError(f"US frames: expected (N, H, W) with N >= 1, got shape {frames.shape}")
    if poses.shape != (frames.shape[0], 4, 4):
        raise InputError(f"image_to_reference: expected ({frames.shape[0]}, 4, 4), got "
                         f"{poses.shape}")
    if not np.all(np.isfinite(poses)):
        raise InputError("image_to_reference: contains NaN or inf")
    if spacing_mm <= 0 or not np.isfinite(spacing_mm):
        raise InputError(f"spacing_mm: must be positive, got {spacing_mm}")
    H, W = frames.shape[1:]
    if fan is None:
        fan = (frames > 0).any(axis=0)
    fan = np.asarray(fan, dtype=bool)
    if fan.shape != (H, W) or not fan.any():
        raise InputError(f"US fan mask: expected a non-empty (H, W) = {(H, W)} mask")
    if ijk_to_reference is None or shape is None:
        ijk_to_reference, shape = bounding_grid(poses, fan, spacing_mm)
    K, J, I = (int(s) for s in shape)
    if K * J * I > max_voxels:
        raise InputError(f"reconstruction grid: {K}x{J}x{I} voxels exceeds {max_voxels}; "
                         "use a larger spacing_mm")
    device = torch.device(device or "cpu")
    pix = plane_pixels((H, W), 1, device=device, dtype=torch.float64)
    sel = torch.as_tensor(fan, device=device)
    if pixel_step > 1:
        sub = torch.zeros_like(sel)
        sub[::pixel_step, ::pixel_step] = True
        sel = sel & sub
    pix = pix[sel]  # (P, 4)
    rows_cols = torch.nonzero(sel)
    reference_to_ijk = torch.as_tensor(np.linalg.inv(ijk_to_reference), device=device)
    acc = torch.zeros(K * J * I, dtype=torch.float64, device=device)
    cnt = torch.zeros(K * J * I, dtype=torch.float64, device=device)
    size = torch.tensor([I, J, K], device=device)
    for n in range(frames.shape[0]):
        check_cancel(cancel, "volume reconstruction")
        M = reference_to_ijk @ torch.as_tensor(poses[n], device=device)
        ijk = torch.round(pix @ M.T)[:, :3].long()
        ok = ((ijk >= 0) & (ijk < size)).all(dim=1)
        idx = (ijk[ok, 2] * J + ijk[ok, 1]) * I + ijk[ok, 0]
        vals = torch.as_tensor(frames[n], device=device)[rows_cols[ok, 0], rows_cols[ok, 1]]
        acc.index_add_(0, idx, vals.double())
        cnt.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
        report(progress, 0.8 * (n + 1) / frames.shape[0], "compounding frames")
    hit = cnt > 0
    vol = torch.where(hit, acc / cnt.clamp_min(1), torch.zeros_like(acc)).view(K, J, I)
    filled = hit.view(K, J, I)
    if fill_radius > 0:
        check_cancel(cancel, "volume reconstruction")
        vol, filled = _fill_holes(vol, filled, fill_radius)
    report(progress, 1.0, "reconstruction done")
    return Reconstruction(array=vol.float().cpu().numpy(), ijk_to_reference=np.asarray(
        ijk_to_reference, dtype=float), filled=filled.cpu().numpy(),
        hit_voxels=int(hit.sum()))
