"""Volume reconstruction from a tracked 2D ultrasound sweep (pixel nearest neighbour).

As PLUS's ``vtkVolumeReconstructor`` with ``Interpolation="NEAREST_NEIGHBOR"`` and
``CompoundingMode="MEAN"``: every (fan) pixel of every frame is mapped to reference mm by
its ``image_to_reference``, rounded to the nearest voxel of the output grid and averaged
there; voxels no pixel reached are then filled from the mean of their filled neighbours in
a growing ``3 x 3 x 3`` window (a simple stand-in for PLUS's hole filling), at most
``fill_iterations`` times, so that gaps between frames are closed but the empty space
outside the sweep stays empty.

The grid: ``ijk_to_reference`` (axis-aligned with the reference frame unless given) and
shape ``(K, J, I)``, either given or the bounding box of the frames' fans plus a margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

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


def reconstruct_volume(frames, image_to_reference, fan=None, spacing_mm: float = 0.5,
                       ijk_to_reference=None, shape=None, fill_iterations: int = 3,
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
    kernel = torch.ones(1, 1, 3, 3, 3, dtype=torch.float64, device=device)
    for _ in range(fill_iterations):
        check_cancel(cancel, "volume reconstruction")
        s = F.conv3d((vol * filled)[None, None], kernel, padding=1)[0, 0]
        c = F.conv3d(filled.double()[None, None], kernel, padding=1)[0, 0]
        grow = (~filled) & (c >= 3)  # at least 3 filled neighbours: a gap, not the outside
        vol = torch.where(grow, s / c.clamp_min(1), vol)
        filled = filled | grow
    report(progress, 1.0, "reconstruction done")
    return Reconstruction(array=vol.float().cpu().numpy(), ijk_to_reference=np.asarray(
        ijk_to_reference, dtype=float), filled=filled.cpu().numpy(),
        hit_voxels=int(hit.sum()))
