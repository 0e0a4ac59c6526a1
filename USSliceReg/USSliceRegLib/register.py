"""Pose refinement of 2D ultrasound frames against a 3D ultrasound volume (masked LNCC + LM).

The unknown is a rigid *correction* of the tracked pose, expressed in the volume's
reference frame and applied on the left::

    image_to_reference = correction @ start_image_to_reference.

``correction`` is a ``tracked_reference_to_reference`` 4x4: it maps where the tracking says
a point is to where the volume says it is. It is refined on the manifold: every
Levenberg-Marquardt step ``x = (omega, v)`` (rad, mm) is composed on the left,
``correction <- S(x) @ correction`` with ``S(x)`` = rotation ``exp(hat(omega))`` about the
centre ``c`` of the frame's fan (reference mm) followed by the translation ``v``, so the
Jacobian is always taken at ``x = 0`` where it is exact:
``d p / d(omega, v) = [-[p - c]_x, I]``.

Cost: ``0.5 * ||r||^2 ~ 1 - NCC`` with ``r`` the difference of the normalised frame and
slice on the fan pixels (fan pixels outside the volume keep their residual, so leaving the
volume never pays; see :mod:`lncc`). Default pyramid (:class:`RegistrationConfig`):

1. 1/32 resolution, translation only, global NCC on a smoothed volume whose empty voxels
   count as black, from three starts (the given one and +-4 mm along the plane normal, the
   direction one frame constrains least); the lowest cost wins;
2. 1/16, 6 DoF, same metric;
3. 1/8 (about 0.65 mm pixels), 6 DoF, masked LNCC (7 x 7 window) on the voxels that hold
   data.

Speed (the live case registers one frame at a time, so per-call overhead matters more than
arithmetic): levels with a global metric sample only the fan's pixels (a sparse point
list); the LNCC level samples the fan's bounding box (the window needs a grid). Every
evaluation maps the pixels with one ``(B, 6, 4)`` matrix (grid coordinates and points
about the centre), samples intensity, data mask and the precomputed volume gradient in one
``grid_sample`` and returns the cost; the analytic normal equations ``J^T J``, ``J^T r``
(the chain of :func:`lncc.local_normalise_jvp`, reusing the evaluation's local statistics)
are only formed for accepted steps. The LM loop keeps its 6 x 6 bookkeeping in float64
numpy (tiny; the heavy work stays in torch on the volume's device), runs under
``torch.inference_mode`` and stops an item when the decrease predicted by the linear model
is negligible, so an already-registered start costs one evaluation. ``tracking=True``
(temporal mode: the start already carries the previous frame's correction) runs
:attr:`RegistrationConfig.tracking_levels` instead (by default the finest level only, at
most 5 iterations, no multi-start).

A frame whose final LNCC is below its start keeps its start (a diverged search is never
returned).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from .lncc import _EPS, _box, local_normalise, masked_lncc
from .slicing import (PreparedVolume, downsample_frame, plane_pixels, prepare_volume,
                      slice_volume)


@dataclass
class Level:
    """One pyramid level: frame downsampling ``step``, LNCC ``window`` (downsampled px,
    0 = global NCC), LM ``max_iter``, Gaussian smoothing of the volume (voxels) and whether
    rotations are refined (a translation-only stage first widens the capture range)."""

    step: int
    window: int
    max_iter: int
    sigma_vox: float = 0.0
    rotations: bool = True  # False: translation only (a first, robust stage)
    data_mask: bool = True  # False: empty voxels count as black (edges of the sweep help)


@dataclass
class RegistrationConfig:
    """Settings of :class:`SliceRegistrar` (defaults tuned on the spine phantom sweep)."""

    # Translation first, then 6 DoF, with global NCC on the smoothed volume where empty
    # voxels count as black (widest capture range), then masked LNCC at 1/8 resolution.
    levels: Tuple[Level, ...] = (Level(32, 0, 10, 3.0, rotations=False, data_mask=False),
                                 Level(16, 0, 15, 2.0, data_mask=False),
                                 Level(8, 7, 12, 1.0))
    #: Levels used with ``tracking=True`` (temporal mode: the start already holds the
    #: previous frame's correction, so it is close); no multi-start either. ``None``: the
    #: finest level only, at most 5 iterations (the live latency budget).
    tracking_levels: Optional[Tuple[Level, ...]] = None
    #: True: fan pixels outside the volume keep a residual (no gain from leaving the
    #: volume); False: the residual covers the overlap only.
    penalise_lost_overlap: bool = True
    #: LM stops a level when an accepted step lowers the cost by less than this fraction.
    tol_cost: float = 1e-3
    #: ... the same for the coarser levels (looser values save iterations but cost
    #: accuracy on the spine sweep: 3e-3 lost one held-out frame of fifteen).
    tol_cost_coarse: float = 1e-3
    #: ... or when the step moves the fan by less than this (mm and rad * 100 mm).
    tol_step: float = 1e-4
    #: First-level extra starts shifted by +-these mm along the plane normal (the
    #: elevational direction, least constrained by one frame); the best cost wins.
    normal_starts: Tuple[float, ...] = (4.0,)
    slab_mm: float = 0.0
    slab_samples: int = 1
    min_overlap: float = 0.1
    lambda_init: float = 1e-2


@dataclass
class FrameResult:
    """Registration of one frame. 4x4s are float64 numpy arrays."""

    start_image_to_reference: np.ndarray
    image_to_reference: np.ndarray
    correction: np.ndarray  # tracked_reference_to_reference
    lncc_start: float
    lncc: float
    overlap: float
    iterations: int
    seconds: float
    history: List[float] = field(default_factory=list)


def _frames_tensor(frames, frame_shape=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"US frame: expected (H, W) or (B, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] < 8 or t.shape[2] < 8:
        raise InputError(f"US frame: empty or too small, shape {tuple(t.shape)}")
    if frame_shape is not None and tuple(t.shape[1:]) != tuple(frame_shape):
        raise InputError(f"US frame: shape {tuple(t.shape[1:])} differs from the registrar's "
                         f"{tuple(frame_shape)}")
    floating = t.is_floating_point()
    t = t.float()
    if floating and not torch.isfinite(t).all():  # integer pixels are always finite
        raise InputError("US frame: contains NaN or inf")
    return t


def _poses_tensor(poses, name: str, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(poses, dtype=np.float64)) if not isinstance(poses, torch.Tensor) \
        else poses.double()
    if t.ndim == 2:
        t = t[None]
    if t.shape != (n, 4, 4):
        raise InputError(f"{name}: expected ({n}, 4, 4), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or inf")
    if abs(float(torch.linalg.det(t[:, :3, :3]).abs().min())) < 1e-12:
        raise GeometryError(f"{name}: singular matrix")
    return t


@dataclass
class _LevelGeometry:
    """Sampling points of one level in cropped-frame pixels.

    ``pix`` ``(N, 4)`` homogeneous ``(col, row, 0, 1)``; ``grid_shape`` ``(h, w)`` when the
    points are the full downsampled bounding box (LNCC needs neighbours), else ``None``
    and ``index`` ``(N,)`` picks the fan pixels out of the flattened ``(h, w)`` image.
    ``fan`` ``(N,)`` float, 1 on the fan.
    """

    pix: torch.Tensor
    pixT: torch.Tensor
    index: Optional[torch.Tensor]
    grid_shape: Tuple[int, int]
    fan: torch.Tensor
    dense: bool


class SliceRegistrar:
    """Registers frames of one sweep geometry (frame size, fan) to one volume.

    Parameters
    ----------
    volume : ``(K, J, I)`` array/tensor; ijk_to_reference : 4x4.
    frame_shape : ``(H, W)`` of the frames.
    fan : ``(H, W)`` bool valid-area mask (default: whole frame).
    config : :class:`RegistrationConfig`.
    device : torch device (default: the volume's, else CPU).
    """

    def __init__(self, volume, ijk_to_reference, frame_shape, fan=None,
                 config: Optional[RegistrationConfig] = None, device=None, volume_mask=None):
        from scipy import ndimage  # noqa: PLC0415

        self.config = config or RegistrationConfig()
        vol_np = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) \
            else np.asarray(volume)
        if device is None and isinstance(volume, torch.Tensor):
            device = volume.device
        self.device = torch.device(device or "cpu")
        if vol_np.ndim != 3 or min(vol_np.shape) < 2:
            raise InputError(f"US volume: expected a 3D volume (K, J, I), got shape "
                             f"{vol_np.shape}")
        if len(frame_shape) != 2 or min(frame_shape) < 8:
            raise InputError(f"US frame: expected frame_shape (H, W) >= 8 px, got {frame_shape}")
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        if fan is None:
            fan = np.ones(self.frame_shape, dtype=bool)
        fan = np.asarray(fan, dtype=bool)
        if fan.shape != self.frame_shape:
            raise InputError(f"US fan mask: shape {fan.shape} differs from the frame's "
                             f"{self.frame_shape}")
        if not fan.any():
            raise InputError("US fan mask: empty (no valid pixel)")
        self.fan = fan
        # Work on the fan's bounding box only (about half of a PLUS frame): internal
        # "cropped image" pixel (c, r) is full pixel (c + c0, r + r0).
        rows, cols = np.nonzero(fan)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        self._crop = (slice(int(r0), int(r1)), slice(int(c0), int(c1)))
        self._shape = (int(r1 - r0), int(c1 - c0))
        self._fan_c = fan[self._crop]
        self._fan_corners = np.array([[c0, r0, 0, 1], [c1 - 1, r1 - 1, 0, 1]], dtype=float)
        offset = np.eye(4)
        offset[:2, 3] = [c0, r0]
        self._offset = torch.as_tensor(offset, device=self.device)
        mask = vol_np > 0 if volume_mask is None else np.asarray(volume_mask, dtype=bool)
        self._volumes: Dict[float, PreparedVolume] = {}
        all_levels = tuple(self.config.levels) + self._tracking_levels()
        for level in all_levels:
            if level.sigma_vox not in self._volumes:
                v = vol_np.astype(np.float32)
                if level.sigma_vox > 0:
                    # Normalised convolution: smooth data and mask, so empty voxels do not
                    # darken the edge of the swept region.
                    num = ndimage.gaussian_filter(v * mask, level.sigma_vox)
                    den = ndimage.gaussian_filter(mask.astype(np.float32), level.sigma_vox)
                    v = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
                self._volumes[level.sigma_vox] = prepare_volume(
                    v, ijk_to_reference, volume_mask=mask, with_gradient=True,
                    device=self.device)
        ref = next(iter(self._volumes.values()))
        # reference mm -> grid_sample's normalised coordinates (x = i, y = j, z = k in
        # [-1, 1], align_corners=True), as one (3, 4) matrix.
        K, J, I = ref.shape
        size = torch.tensor([I - 1, J - 1, K - 1], dtype=torch.float64)
        r2i = torch.linalg.inv(torch.as_tensor(np.asarray(ijk_to_reference, dtype=np.float64)))
        to_grid = (2.0 / size)[:, None] * r2i[:3, :]
        to_grid[:, 3] -= 1.0
        self._reference_to_grid = to_grid.to(self.device)
        self._reference_to_grid_np = to_grid.numpy()
        self._fans = {}
        self._geometry: Dict[Tuple[int, bool], _LevelGeometry] = {}
        for level in all_levels:
            self._fan_level(level.step)
        # Fan centre in image pixels (rotation centre of the increments).
        self.fan_centre_px = np.array([cols.mean(), rows.mean(), 0.0, 1.0])
        self._centre_c = self.fan_centre_px - np.array([c0, r0, 0.0, 0.0])
        self._check_fov(ref)

    # ------------------------------------------------------------------ helpers
    def _tracking_levels(self) -> Tuple[Level, ...]:
        if self.config.tracking_levels:
            return tuple(self.config.tracking_levels)
        last = self.config.levels[-1]
        return (replace(last, max_iter=min(last.max_iter, 5)),)

    def _fan_level(self, step: int) -> torch.Tensor:
        if step not in self._fans:
            f = downsample_frame(torch.as_tensor(self._fan_c.astype(np.float32)), step)
            self._fans[step] = (f > 0.999).to(self.device)
        return self._fans[step]

    def _level_geometry(self, step: int, dense: bool) -> _LevelGeometry:
        """Sampling points of a level (cached): the fan's pixels (sparse) or the whole
        downsampled bounding box (dense, for windowed LNCC)."""
        key = (step, dense)
        if key not in self._geometry:
            fan = self._fan_level(step)
            h, w = fan.shape
            pix = plane_pixels(self._shape, step, device=self.device,
                               dtype=torch.float32).reshape(-1, 4)
            fan_flat = fan.reshape(-1)
            index = None
            if not dense:
                index = torch.nonzero(fan_flat).flatten()
                pix = pix[index]
                fan_flat = fan_flat[index]
            self._geometry[key] = _LevelGeometry(pix=pix.contiguous(), pixT=pix.T.contiguous(),
                                                 index=index,
                                                 grid_shape=(h, w),
                                                 fan=fan_flat.to(torch.float32), dense=dense)
        return self._geometry[key]

    def _check_fov(self, vol: PreparedVolume) -> None:
        """Reject a frame plane far larger than the volume (nothing sensible to match)."""
        self._vol_extent = float(np.linalg.norm(np.ptp(vol.bounds_reference(), axis=0)))

    def frame_extent_mm(self, image_to_reference: np.ndarray) -> float:
        pts = self._fan_corners @ np.asarray(image_to_reference, dtype=float).T
        return float(np.linalg.norm(pts[1, :3] - pts[0, :3]))

    def _to_cropped(self, image_to_reference: torch.Tensor) -> torch.Tensor:
        """Full-frame ``image_to_reference`` -> the cropped-frame one."""
        return image_to_reference @ self._offset.to(image_to_reference.dtype)

    def _centre_reference(self, image_to_reference_c: torch.Tensor) -> torch.Tensor:
        """Fan centre in reference mm for cropped-frame poses ``(B, 4, 4)``."""
        c = torch.as_tensor(self._centre_c, dtype=image_to_reference_c.dtype,
                            device=image_to_reference_c.device)
        return (image_to_reference_c @ c)[..., :3]

    def _sample(self, vol: PreparedVolume, poses_c: torch.Tensor, geo: _LevelGeometry,
                channels: Optional[int] = None):
        """Sample ``vol`` at the level's points for cropped-frame poses ``(B, 4, 4)``
        float64. Returns ``values (C, B, N)`` and ``in_grid (B, N)`` bool."""
        data = vol.data if channels is None else vol.data[:, :channels]
        G = (self._reference_to_grid @ poses_c).to(torch.float32)  # (B, 3, 4)
        grid = torch.matmul(geo.pix, G.transpose(1, 2))  # (B, N, 3)
        B, N = grid.shape[:2]
        vals = F.grid_sample(data, grid.view(1, B, N, 1, 3), mode="bilinear",
                             padding_mode="zeros", align_corners=True)
        in_grid = (grid.abs() <= 1.0).all(dim=-1)
        return vals.reshape(data.shape[1], B, N), in_grid

    def overlap(self, image_to_reference, step: int = 8) -> np.ndarray:
        """Fraction ``(B,)`` of the (downsampled) fan inside the volume's data."""
        n = np.shape(image_to_reference)[0] if np.ndim(image_to_reference) == 3 else 1
        poses = _poses_tensor(image_to_reference, "image_to_reference", n).to(self.device)
        return self._overlap_c(self._to_cropped(poses), step).cpu().numpy()

    def _overlap_c(self, poses_c: torch.Tensor, step: int) -> torch.Tensor:
        vol = next(iter(self._volumes.values()))
        geo = self._level_geometry(step, dense=False)
        vals, in_grid = self._sample(vol, poses_c, geo, channels=2)
        inside = in_grid & (vals[1] > 0.5)
        return inside.sum(dim=1).float() / max(1, geo.pix.shape[0])

    def similarity(self, frames, image_to_reference, step: int = 8, window: int = 7):
        """Masked LNCC ``(B,)`` of frames and slices at the given poses (overlap only)."""
        f = _frames_tensor(frames, self.frame_shape).to(self.device)
        f = f[(slice(None),) + self._crop]
        poses = _poses_tensor(image_to_reference, "image_to_reference", f.shape[0])
        vol = self._volumes[min(self._volumes)]
        vals, inside = slice_volume(vol, self._to_cropped(poses.to(self.device)).float(),
                                    self._shape, step=step, slab_mm=self.config.slab_mm,
                                    slab_samples=self.config.slab_samples, channels=2)
        fd = downsample_frame(f, step)
        mask = inside & self._fan_level(step)
        return masked_lncc(fd, vals[:, 0], mask, max(0, window)).cpu().numpy()

    def _similarity_c(self, fd: torch.Tensor, poses_c: torch.Tensor, step: int,
                      window: int) -> torch.Tensor:
        """:meth:`similarity` for cropped, downsampled frames ``(B, h, w)`` (no checks),
        and the fraction ``(B,)`` of the fan inside the volume's data (numpy)."""
        vol = self._volumes[min(self._volumes)]
        geo = self._level_geometry(step, dense=True)
        vals, in_grid = self._sample(vol, poses_c, geo, channels=2)
        B = fd.shape[0]
        inside = in_grid & (vals[1] > 0.5) & (geo.fan > 0)
        overlap = (inside.sum(dim=1).float() / geo.fan.sum().clamp_min(1.0)).cpu().numpy()
        mask = inside.view(B, *geo.grid_shape)
        return masked_lncc(fd, vals[0].view(B, *geo.grid_shape), mask, max(0, window)), overlap

    # ------------------------------------------------------------------ registration
    def validate_starts(self, starts: torch.Tensor, indices: Sequence[int]) -> np.ndarray:
        """Raise :class:`GeometryError` for a field of view far larger than the volume or a
        start whose fan barely overlaps the volume's data; returns the overlaps ``(B,)``."""
        self._check_fov_of(starts)
        ov = self._overlap_c(self._to_cropped(starts.to(self.device)), 8).cpu().numpy()
        self._check_overlap(ov, indices)
        return ov

    def _check_fov_of(self, starts: torch.Tensor) -> None:
        ext = self.frame_extent_mm(starts[0].cpu().numpy())
        if ext > 2.0 * self._vol_extent:
            raise GeometryError(
                f"US frame: field of view ({ext:.0f} mm across the fan) is larger than twice "
                f"the volume's extent ({self._vol_extent:.0f} mm); check the calibration "
                "units (mm per pixel)")

    def _check_overlap(self, ov: np.ndarray, indices: Sequence[int]) -> None:
        bad = [(int(i), float(o)) for i, o in zip(indices, ov) if o < self.config.min_overlap]
        if bad:
            i, o = bad[0]
            raise GeometryError(
                f"US frame {i}: no overlap with the volume at the start pose ({100 * o:.0f}% "
                f"of the fan inside the volume's data, need {100 * self.config.min_overlap:.0f}%)"
                f"; {len(bad)} frame(s) affected")

    @torch.inference_mode()  # no autograd bookkeeping: the Jacobian is analytic
    def register(self, frames, starts, init_corrections=None, indices=None,
                 progress=None, cancel=None, tracking: bool = False) -> List[FrameResult]:
        """Refine ``starts`` ``(B, 4, 4)`` for ``frames`` ``(B, H, W)``, all in one batch.

        ``init_corrections`` ``(B, 4, 4)`` (default identity) are applied before refining.
        ``tracking``: the start is already close (temporal mode, the previous frame's
        correction): run :attr:`RegistrationConfig.tracking_levels`.
        Returns one :class:`FrameResult` per frame. Inputs are not modified.
        """
        t0 = time.perf_counter()
        f = _frames_tensor(frames, self.frame_shape).to(self.device)
        B = f.shape[0]
        indices = list(range(B)) if indices is None else list(indices)
        starts_t = _poses_tensor(starts, "start image_to_reference", B).to(self.device)
        if init_corrections is None:
            corr0 = torch.eye(4, dtype=torch.float64, device=self.device).repeat(B, 1, 1)
        else:
            corr0 = _poses_tensor(init_corrections, "initial correction", B).to(self.device)
        init_poses = corr0 @ starts_t
        self._check_fov_of(init_poses)
        levels = self._tracking_levels() if tracking else tuple(self.config.levels)
        last = levels[-1]
        f_c = f[(slice(None),) + self._crop]
        starts_c = self._to_cropped(starts_t)
        pyramid = _pyramid(f_c, [lv.step for lv in levels])
        # One sampling at the finest level: overlap check (at that level's step) and the
        # start LNCC of the final safety test.
        lncc_start, overlap0 = self._similarity_c(pyramid[last.step], corr0 @ starts_c,
                                                  last.step, last.window)
        self._check_overlap(overlap0, indices)
        starts_np = starts_c.cpu().numpy()
        corr = corr0.cpu().numpy()
        history: List[List[float]] = [[] for _ in range(B)]
        total_iter = 0
        for li, level in enumerate(levels):
            check_cancel(cancel, "US registration")
            fd = pyramid[level.step]
            if li == 0 and self.config.normal_starts and not tracking:
                corr, hist, it = self._multi_start_level(fd, starts_np, corr, level, cancel,
                                                         li == len(levels) - 1)
            else:
                corr, _, hist, it = self._refine_level(fd, starts_np, corr, level, cancel,
                                                       li == len(levels) - 1)
            total_iter += it
            for b in range(B):
                history[b].extend(float(c) for c in hist[:, b])
            report(progress, (li + 1) / len(levels),
                   f"US registration level {li + 1}/{len(levels)}")
        corr = torch.as_tensor(corr, device=self.device)
        lncc_final, _ = self._similarity_c(pyramid[last.step], corr @ starts_c, last.step,
                                           last.window)
        # Safety: a frame whose similarity got worse (a diverged search) keeps its start.
        worse = lncc_final < lncc_start
        if bool(worse.any()):
            corr = torch.where(worse[:, None, None], corr0, corr)
            lncc_final = torch.where(worse, lncc_start, lncc_final)
        final = corr @ starts_t
        seconds = (time.perf_counter() - t0) / B
        lncc_start, lncc_final = lncc_start.cpu().numpy(), lncc_final.cpu().numpy()
        start_np, final_np, corr_np = starts_t.cpu().numpy(), final.cpu().numpy(), \
            corr.cpu().numpy()
        return [FrameResult(
            start_image_to_reference=start_np[b], image_to_reference=final_np[b],
            correction=corr_np[b], lncc_start=float(lncc_start[b]), lncc=float(lncc_final[b]),
            overlap=float(overlap0[b]), iterations=total_iter, seconds=seconds,
            history=history[b]) for b in range(B)]

    def _multi_start_level(self, fd, starts, corr0, level: Level, cancel, finest: bool):
        """First level from several starts shifted along the plane normal (the direction
        the frame content constrains least); each frame keeps its lowest-cost result."""
        offsets = [0.0] + [o for d in self.config.normal_starts for o in (d, -d)]
        S, B = len(offsets), fd.shape[0]
        base = corr0 @ starts
        normal = np.cross(base[:, :3, 0], base[:, :3, 1])
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        shifted = []
        for o in offsets:
            T = np.tile(np.eye(4), (B, 1, 1))
            T[:, :3, 3] = o * normal
            shifted.append(T @ corr0)
        corr, cost, hist, it = self._refine_level(fd.repeat(S, 1, 1), np.tile(starts, (S, 1, 1)),
                                                  np.concatenate(shifted), level, cancel,
                                                  finest)
        pick = cost.reshape(S, B).argmin(axis=0) * B + np.arange(B)  # start-major
        return corr[pick], hist[:, pick], it

    def _evaluate(self, level: Level, geo: _LevelGeometry, poses_c: np.ndarray,
                  centre: np.ndarray, frame: Tuple[torch.Tensor, torch.Tensor],
                  raw: Optional[torch.Tensor]):
        """Cost ``(B,)`` (float64 numpy) at cropped-frame poses ``poses_c`` ``(B, 4, 4)``.

        ``centre`` ``(B, 3)``: rotation centre of the LM steps (reference mm); ``frame`` =
        the normalised frame on the level's points ``(B, N)`` and ``1 / sqrt(count)``
        ``(B, 1)``; ``raw`` the frame on the points when the overlap is not penalised
        (normalised on the overlap at every evaluation instead). Also returns what
        :meth:`_normal_equations` needs (the Jacobian is only built for accepted steps).
        """
        vol = self._volumes[level.sigma_vox]
        # One (B, 6, 4) matrix maps the level's pixels to grid_sample coordinates (rows
        # 0-2) and to reference mm relative to the rotation centre (rows 3-5).
        rel = poses_c[:, :3, :].copy()
        rel[:, :, 3] -= centre
        M = np.concatenate([self._reference_to_grid_np @ poses_c, rel], axis=1)
        M = torch.as_tensor(M, dtype=torch.float32, device=self.device)
        gq = torch.matmul(M, geo.pixT)  # (B, 6, N)
        B, N = gq.shape[0], gq.shape[2]
        grid = gq[:, :3].transpose(1, 2).contiguous()  # (B, N, 3)
        vals = F.grid_sample(vol.data, grid.view(1, B, N, 1, 3), mode="bilinear",
                             padding_mode="zeros", align_corners=True).reshape(-1, B, N)
        inside = grid.abs().amax(dim=-1) <= 1.0
        if level.data_mask:
            inside = inside & (vals[1] > 0.5)
        m = inside.to(torch.float32) * geo.fan
        s = vals[0]  # (B, N)
        nf, weight = frame
        stats = None
        if geo.dense:
            # Local (window x window) statistics of the slice on the mask, three box sums
            # in one call; kept for the Jacobian (same formulas as lncc.local_normalise).
            h, w = geo.grid_shape
            # Centred first: float32 box sums of s^2 would cancel in E[s^2] - mu^2.
            s = s - (s * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
            sm = s * m
            sums = _box(torch.stack([m, sm, sm * s], dim=1).view(B * 3, h, w), level.window)
            sums = sums.view(B, 3, N)
            count = sums[:, 0].clamp_min(1.0)
            mu = sums[:, 1] / count
            d = s - mu
            var = (sums[:, 2] / count - mu * mu).clamp_min(0.0)
            inv_sd = torch.rsqrt(var + _EPS)
            ns = d * inv_sd * m
            stats = (count, d, inv_sd)
            if raw is not None:
                nf = local_normalise(raw.view(B, h, w), m.view(B, h, w), level.window).view(B, N)
        else:
            count = m.sum(dim=1, keepdim=True).clamp_min(1.0)
            d = s - (s * m).sum(dim=1, keepdim=True) / count
            inv_sd = torch.rsqrt((d * d * m).sum(dim=1, keepdim=True) / count + _EPS)
            ns = d * inv_sd * m
            stats = (count, d, inv_sd)
            if raw is not None:
                fdv = raw - (raw * m).sum(dim=1, keepdim=True) / count
                nf = fdv * torch.rsqrt((fdv * fdv * m).sum(dim=1, keepdim=True) / count
                                       + _EPS) * m
        if raw is not None:
            weight = torch.rsqrt(m.sum(dim=1, keepdim=True).clamp_min(1.0))
        r = (nf - ns) * weight  # (B, N)
        cost = 0.5 * (r * r).sum(dim=1)
        return cost.double().cpu().numpy(), (vals, s, gq, m, r, weight, stats)

    def _normal_equations(self, level: Level, geo: _LevelGeometry, saved):
        """``J^T J`` ``(B, 6, 6)`` and ``J^T r`` ``(B, 6)`` (float64 numpy) of an
        evaluation, ``J`` = d r / d(omega, v) (analytic)."""
        vals, s, gq, m, r, weight, stats = saved
        B, N = r.shape
        g = vals[2:5]  # (3, B, N) volume gradient in reference mm
        q = gq[:, 3:]  # (B, 3, N) points relative to the rotation centre
        # d p / d(omega, v) = [-[q]_x, I]  =>  d s / d omega = q x g, d s / d v = g.
        js = torch.stack([q[:, 1] * g[2] - q[:, 2] * g[1], q[:, 2] * g[0] - q[:, 0] * g[2],
                          q[:, 0] * g[1] - q[:, 1] * g[0], g[0], g[1], g[2]], dim=1)
        if not level.rotations:
            js = js[:, 3:]
        P = js.shape[1]
        count, d, inv_sd = stats
        mjs = js * m[:, None]
        if geo.dense:  # derivative of lncc.local_normalise (see local_normalise_jvp)
            h, w = geo.grid_shape
            boxed = _box(torch.cat([mjs, mjs * s[:, None]], dim=1).view(-1, h, w),
                         level.window).view(B, 2 * P, N) / count[:, None]
            dmu = boxed[:, :P]
            # var = E[s^2] - mu^2  =>  d var = 2 E[s js] - 2 mu d mu  (mu = s - d).
            dvar = 2.0 * boxed[:, P:] - 2.0 * (s - d)[:, None] * dmu
            dn = (js - dmu - d[:, None] * dvar * (0.5 * inv_sd * inv_sd)[:, None]) \
                * (inv_sd * m)[:, None]
        else:
            dmu = mjs.sum(dim=2, keepdim=True) / count[:, None]
            dvar = 2.0 * (mjs * d[:, None]).sum(dim=2, keepdim=True) / count[:, None]
            dn = (js - dmu - d[:, None] * dvar * (0.5 * inv_sd * inv_sd)[:, None]) \
                * (inv_sd * m)[:, None]
        J = dn * (-weight[:, None])  # (B, P, N)
        JtJ = torch.bmm(J, J.transpose(1, 2)).double().cpu().numpy()
        Jtr = torch.bmm(J, r[:, :, None])[:, :, 0].double().cpu().numpy()
        if not level.rotations:  # pad to 6 parameters; the rotation steps solve to 0
            full = np.zeros((B, 6, 6))
            full[:, :3, :3] = np.eye(3)
            full[:, 3:, 3:] = JtJ
            JtJ, Jtr = full, np.concatenate([np.zeros((B, 3)), Jtr], axis=1)
        return JtJ, Jtr

    def _refine_level(self, fd: torch.Tensor, starts: np.ndarray, corr0: np.ndarray,
                      level: Level, cancel, finest: bool = True):
        """Batched Levenberg-Marquardt on one level.

        ``fd`` ``(B, h, w)`` cropped frames at the level's step (torch), ``starts``
        ``(B, 4, 4)`` cropped tracked poses, ``corr0`` ``(B, 4, 4)`` corrections to start
        from (float64 numpy); ``finest``: use ``tol_cost`` (else ``tol_cost_coarse``).
        The 6 x 6 bookkeeping is float64 numpy (tiny; the sampling
        and normalisation stay in torch on the volume's device). Returns
        ``(correction (B, 4, 4), cost (B,), history (iterations + 1, B), iterations)``.
        """
        cfg = self.config
        tol_cost = cfg.tol_cost if finest else max(cfg.tol_cost, cfg.tol_cost_coarse)
        dense = level.window > 0
        geo = self._level_geometry(level.step, dense)
        B = fd.shape[0]
        flat = fd.reshape(B, -1)
        raw = None
        if dense:
            fan_img = geo.fan.view(1, *geo.grid_shape).expand(B, -1, -1)
            nf = local_normalise(fd, fan_img, level.window).reshape(B, -1)
            if not cfg.penalise_lost_overlap:
                raw = flat
        else:
            vals = flat[:, geo.index]
            mu = vals.mean(dim=1, keepdim=True)
            nf = (vals - mu) * torch.rsqrt(((vals - mu) ** 2).mean(dim=1, keepdim=True) + _EPS)
            if not cfg.penalise_lost_overlap:
                raw = vals
        weight = torch.full((B, 1), 1.0 / math.sqrt(max(1.0, float(geo.fan.sum()))),
                            device=fd.device)
        frame = (nf, weight)
        corr = corr0.copy()
        centre = (corr @ starts @ self._centre_c)[:, :3]  # (B, 3), fixed for the level

        def evaluate(c):
            return self._evaluate(level, geo, c @ starts, centre, frame, raw)

        cost, saved = evaluate(corr)
        JtJ, Jtr = self._normal_equations(level, geo, saved)
        lam = np.full(B, cfg.lambda_init)
        active = np.ones(B, dtype=bool)
        history = [cost.copy()]
        eye = np.eye(6)
        scale_x = np.array([100.0] * 3 + [1.0] * 3)  # tol_step: rotations at 100 mm
        it = 0
        for it in range(1, level.max_iter + 1):
            check_cancel(cancel, "US registration")
            diag = np.diagonal(JtJ, axis1=1, axis2=2)
            floor = 1e-12 * np.maximum(diag.max(axis=1, keepdims=True), 1e-30)
            A = JtJ + (lam[:, None] * np.maximum(diag, floor))[:, :, None] * eye
            try:
                dx = -np.linalg.solve(A, Jtr[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                dx = -np.linalg.lstsq(A[0], Jtr[0], rcond=None)[0][None] if B == 1 else \
                    -np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(A, Jtr)])
            ok = active & np.isfinite(dx).all(axis=1)
            dx[~ok] = 0.0
            # Decrease predicted by the linear model; a converged item (e.g. a tracking
            # start that is already right) stops here without trying the step.
            predicted = -(Jtr * dx).sum(axis=1) - 0.5 * np.einsum("bi,bij,bj->b", dx, JtJ, dx)
            flat_model = ok & (predicted <= 0.25 * tol_cost * cost)
            active &= ~flat_model
            ok &= ~flat_model
            dx[~ok] = 0.0
            if not active.any():
                break
            corr_try = _step_matrix_np(dx, centre) @ corr
            cost_t, saved_t = evaluate(corr_try)
            better = ok & np.isfinite(cost_t) & (cost_t < cost)
            small_decrease = better & (cost - cost_t <= tol_cost * cost)
            small_step = ok & (np.linalg.norm(dx * scale_x, axis=1) <= cfg.tol_step)
            if better.any():
                JtJ_t, Jtr_t = self._normal_equations(level, geo, saved_t)
                corr[better], cost[better] = corr_try[better], cost_t[better]
                JtJ[better], Jtr[better] = JtJ_t[better], Jtr_t[better]
            lam = np.where(better, lam * 0.3, lam * 4.0)
            history.append(cost.copy())
            active &= ~small_decrease & ~small_step & (lam < 1e8)
            if not active.any():
                break
        return corr, cost, np.stack(history), it


def _pyramid(frames: torch.Tensor, steps: Sequence[int]) -> Dict[int, torch.Tensor]:
    """Block means ``{step: (B, H // step, W // step)}`` of ``frames`` ``(B, H, W)``; a
    step that is a multiple of a smaller one is pooled from it (same block means)."""
    out: Dict[int, torch.Tensor] = {}
    for step in sorted(set(steps)):
        base = max((s for s in out if step % s == 0), default=None)
        out[step] = downsample_frame(frames, step) if base is None else \
            downsample_frame(out[base], step // base)
    return out


def _step_matrix_np(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``S(x)`` ``(B, 4, 4)``: rotate by ``x[:, :3]`` (Rodrigues) about ``centre``
    ``(B, 3)``, then translate by ``x[:, 3:]`` (reference mm). float64 numpy."""
    w = x[:, :3]
    t2 = (w * w).sum(axis=1)
    t = np.sqrt(t2)
    small = t < 1e-4
    ts = np.where(small, 1.0, t)
    a = np.where(small, 1.0 - t2 / 6.0, np.sin(ts) / ts)
    b = np.where(small, 0.5 - t2 / 24.0, (1.0 - np.cos(ts)) / (ts * ts))
    K = np.zeros((x.shape[0], 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
    R = np.eye(3) + a[:, None, None] * K + b[:, None, None] * (K @ K)
    S = np.zeros((x.shape[0], 4, 4))
    S[:, :3, :3] = R
    S[:, :3, 3] = centre - np.einsum("bij,bj->bi", R, centre) + x[:, 3:]
    S[:, 3, 3] = 1.0
    return S


# ---------------------------------------------------------------------------- metrics
def pose_errors(estimate, truth, point_image) -> Tuple[float, float]:
    """Rotation (deg) and translation (mm) error of an ``image_to_reference`` estimate.

    ``E = estimate @ inv(truth)`` (reference -> reference, rigid when both share the
    calibration); rotation = angle of ``E``'s rotation, translation = displacement of
    ``point_image`` (pixel ``(col, row, 0, 1)``, e.g. the fan centre) by the error.
    """
    estimate = np.asarray(estimate, dtype=float)
    truth = np.asarray(truth, dtype=float)
    E = estimate @ np.linalg.inv(truth)
    R = E[:3, :3]
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(R) - 1) / 2))))
    p = truth @ np.asarray(point_image, dtype=float)
    return angle, float(np.linalg.norm((E @ p - p)[:3]))


def random_perturbations(n: int, max_mm: float, max_deg: float, seed: int = 0) -> np.ndarray:
    """``(n, 6)`` twists: random axes/directions, magnitudes uniform in [0, max].

    Rotation angle uniform in ``[0, max_deg]`` about a uniformly random axis, translation
    length uniform in ``[0, max_mm]`` along a uniformly random direction.
    """
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    ang = np.radians(rng.uniform(0, max_deg, size=(n, 1)))
    dist = rng.uniform(0, max_mm, size=(n, 1))
    return np.concatenate([axes * ang, dirs * dist], axis=1)


def perturb_about_point(image_to_reference, twist, point_image) -> np.ndarray:
    """Apply a rigid perturbation (rotation about the frame point ``point_image``, then a
    translation, both in reference axes) on the left of ``image_to_reference``."""
    T = np.asarray(image_to_reference, dtype=float)
    c = (T @ np.asarray(point_image, dtype=float))[:3]
    omega = np.asarray(twist[:3], dtype=float)
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    R = Rotation.from_rotvec(omega).as_matrix()
    P = np.eye(4)
    P[:3, :3] = R
    P[:3, 3] = c - R @ c + np.asarray(twist[3:], dtype=float)
    return P @ T
