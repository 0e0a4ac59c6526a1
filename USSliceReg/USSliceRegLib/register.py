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

1. 1/32 resolution, translation only (at most 6 iterations), global NCC on a smoothed
   volume whose empty voxels count as black, from three starts (the given one and +-4 mm
   along the plane normal, the direction one frame constrains least); the lowest cost
   wins;
2. 1/16, 6 DoF, same metric;
3. 1/8 (about 0.65 mm pixels), 6 DoF, masked LNCC (7 x 7 window) on the voxels that hold
   data.

Speed (the live case registers one frame at a time, so the number of small operations per
LM iteration matters more than arithmetic): levels with a global metric sample only the
fan's pixels (a sparse point list); the LNCC level samples the fan's bounding box (the
window needs a grid). Every evaluation samples intensity, support (data mask, or the voxel
grid) and the precomputed volume gradient in one ``grid_sample`` of a ``(B, 3, 4)`` map of
the pixels. The derivative of a sample along the step is ``T @ (feat (x) g)``
(:meth:`SliceRegistrar._step_basis`: ``T`` ``(B, 6, 9)`` from the pose, ``feat`` the pixel
about the fan centre, ``g`` the gradient), so

* a global-NCC level reduces cost, ``J^T J`` and ``J^T r`` (exact) to one Gram matrix
  ``sum m z z^T`` of ``z = [feat (x) g, s, 1, f]`` (``(B, 12, 12)``, one batched matmul),
  the rest is float64 numpy on 12 x 12 matrices (:func:`_global_ncc`);
* the LNCC level keeps its local statistics and forms the exact ``J`` (the chain of
  :func:`lncc.local_normalise_jvp`, one box-filter call for 12 channels) for accepted
  steps only.

The LM loop keeps its 6 x 6 bookkeeping in float64 numpy (tiny; the heavy work stays in
torch on the volume's device), runs under ``torch.inference_mode``, and stops an item when
the decrease predicted by the linear model is negligible (an already-registered start costs
one evaluation), when an accepted step gains little, or after
:attr:`RegistrationConfig.max_rejections` rejected steps in a row (at the minimum, steps
keep failing on interpolation noise). ``tracking=True`` (temporal mode: the start already
carries the previous frame's correction) runs :attr:`RegistrationConfig.tracking_levels`
instead (by default the finest level only, at most 5 iterations, no multi-start). Frames
are cropped to the fan's bounding box before anything else; the overlap check and the
start/final LNCC share two samplings of the volume as given.

A frame whose final LNCC is below its start keeps its start (a diverged search is never
returned).

Batches (``register(frames (B, H, W), ...)``, the offline ``--no-temporal`` path) are
independent items: each has its own damping, rejection count and stop, only the items
that try a step are evaluated, and the float32 products whose rounding could depend on
the batch (a broadcast matmul folded over the batch, a one-column bmm, BLAS alignment)
are arranged so that a frame in a batch gets bitwise the result it gets alone
(``Testing/us/test_us_register.py::test_batched_items_converge_independently``).
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

from . import kernels
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
    levels: Tuple[Level, ...] = (Level(32, 0, 6, 3.0, rotations=False, data_mask=False),
                                 Level(16, 0, 15, 2.0, data_mask=False),
                                 Level(8, 7, 12, 1.0))
    #: Levels used with ``tracking=True`` (temporal mode: the start already holds the
    #: previous frame's correction, so it is close); no multi-start either. ``None``: the
    #: finest level only, at most 5 iterations (the live latency budget).
    tracking_levels: Optional[Tuple[Level, ...]] = None
    #: True: fan pixels outside the volume keep a residual (no gain from leaving the
    #: volume); False: the residual covers the overlap only.
    penalise_lost_overlap: bool = True
    #: With ``penalise_lost_overlap``, the windowed-LNCC level's residual of a fan pixel
    #: off the volume's data is this times the normalised frame pixel. ``sqrt(2)`` makes
    #: a lost pixel cost what a matched pixel of zero local correlation costs
    #: (``0.5 |n_f - n_s|^2 ~ 1 - rho``); with 1 it cost as much as a pixel of
    #: correlation 0.5, so where the volume matches the frame at rho < 0.5 (a volume from
    #: a sparse sweep, the frame in a gap between acquired planes) tilting the plane out
    #: of the data lowered the cost (benchmarks/results/us_quality.md).
    lost_overlap_weight: float = math.sqrt(2.0)
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
    #: An item stops after this many consecutive rejected LM steps (at a minimum the
    #: steps keep failing on interpolation noise while the damping grows).
    max_rejections: int = 2
    #: Where the levels run: ``"auto"`` (the compiled CPU kernels of :mod:`kernels` on a
    #: CPU when numba is installed and ``penalise_lost_overlap`` holds, else torch),
    #: ``"torch"`` (batched, any device) or ``"numba"`` (the kernels, or an error).
    backend: str = "auto"


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


def _frames_tensor(frames, frame_shape=None, crop=None) -> torch.Tensor:
    """Frames as a float32 tensor ``(B, H, W)`` (or only their ``crop`` window), checked."""
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
    if t.is_floating_point() and not torch.isfinite(t).all():  # integers are always finite
        raise InputError("US frame: contains NaN or inf")
    if crop is not None:
        t = t[(slice(None),) + tuple(crop)]
    return t.float()


def _poses_tensor(poses, name: str, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(poses, dtype=np.float64)) if not isinstance(poses, torch.Tensor) \
        else poses.double()
    if t.ndim == 2:
        t = t[None]
    if t.shape != (n, 4, 4):
        raise InputError(f"{name}: expected ({n}, 4, 4), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or inf")
    if float(np.abs(np.linalg.det(t[:, :3, :3].cpu().numpy())).min()) < 1e-12:
        raise GeometryError(f"{name}: singular matrix")
    return t


@dataclass
class _LevelGeometry:
    """Sampling points of one level in cropped-frame pixels.

    ``pix`` ``(N, 4)`` homogeneous ``(col, row, 0, 1)`` (``pixT`` its transpose); ``feat``
    ``(3, 1, N)`` the same points relative to the fan centre, ``(col - cc, row - rc, 1)``
    (the Jacobian's pixel factors, see :meth:`SliceRegistrar._step_basis`). ``dense``: the
    points are the whole downsampled bounding box ``grid_shape`` ``(h, w)`` (windowed LNCC
    needs neighbours), else ``index`` ``(N,)`` picks the fan's pixels out of the flattened
    ``(h, w)`` image. ``fan`` ``(N,)`` float, 1 on the fan.
    """

    pix: torch.Tensor
    pixT: torch.Tensor
    feat: torch.Tensor
    index: Optional[torch.Tensor]
    grid_shape: Tuple[int, int]
    fan: torch.Tensor
    dense: bool


@dataclass
class _KernelGeometry:
    """A level's points for :mod:`kernels` (float64 numpy): pixel ``cols``, ``rows``
    ``(N,)``, ``feat`` ``(3, N)``, ``fan`` ``(N,)``; ``index`` picks sparse points out of
    the flattened downsampled frame (``None``: dense, the whole ``grid_shape``)."""

    cols: np.ndarray
    rows: np.ndarray
    feat: np.ndarray
    fan: np.ndarray
    index: Optional[np.ndarray]
    grid_shape: Tuple[int, int]


# Rows of the Gram matrix of the global-NCC levels (see SliceRegistrar._evaluate_global):
# z = [pixel factor (x) volume gradient (9), slice s, 1, frame f].
_Y, _S, _ONE, _F = slice(0, 9), 9, 10, 11


class SliceRegistrar:
    """Registers frames of one sweep geometry (frame size, fan) to one volume.

    Parameters
    ----------
    volume : ``(K, J, I)`` array/tensor; ijk_to_reference : 4x4.
    frame_shape : ``(H, W)`` of the frames.
    fan : ``(H, W)`` bool valid-area mask (default: whole frame).
    config : :class:`RegistrationConfig`.
    device : torch device (default: the volume's, else CPU).
    volume_mask : ``(K, J, I)`` bool, voxels that hold data (default: volume > 0).
    """

    def __init__(self, volume, ijk_to_reference, frame_shape, fan=None,
                 config: Optional[RegistrationConfig] = None, device=None, volume_mask=None):
        from scipy import ndimage  # noqa: PLC0415

        self.config = config or RegistrationConfig()
        if self.config.backend not in ("auto", "torch", "numba"):
            raise InputError(f"US registration backend: unknown {self.config.backend!r}; "
                             "choose auto, torch or numba")
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
        # The volume as given (intensity and data mask): overlap, similarity, display.
        self.volume = prepare_volume(vol_np.astype(np.float32), ijk_to_reference,
                                     volume_mask=mask, device=self.device)
        # One volume per (smoothing, data mask) of the levels: intensity minus the mean of
        # the data (NCC ignores offsets; keeps float32 sums of s^2 from cancelling),
        # support (the data mask, or 1 on the whole grid when empty voxels count as
        # black), gradient in reference mm.
        self._volumes: Dict[Tuple[float, bool], PreparedVolume] = {}
        all_levels = tuple(self.config.levels) + self._tracking_levels()
        for level in all_levels:
            key = (level.sigma_vox, level.data_mask)
            if key in self._volumes:
                continue
            v = vol_np.astype(np.float32)
            if level.sigma_vox > 0:
                # Normalised convolution: smooth data and mask, so empty voxels do not
                # darken the edge of the swept region.
                num = ndimage.gaussian_filter(v * mask, level.sigma_vox)
                den = ndimage.gaussian_filter(mask.astype(np.float32), level.sigma_vox)
                v = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
            v = (v - v[mask].mean()).astype(np.float32)
            support = mask if level.data_mask else np.ones_like(mask)
            self._volumes[key] = prepare_volume(v, ijk_to_reference, volume_mask=support,
                                                with_gradient=True, device=self.device)
        # The compiled CPU kernels (one frame per call, see kernels.py) read channels-last
        # copies; the torch level volumes are then not needed.
        self._compiled = self._use_compiled()
        if self._compiled:
            self._kernel_volumes = {k: v.data[0].permute(1, 2, 3, 0).contiguous().numpy()
                                    for k, v in self._volumes.items()}
            self._volumes = {}
            self._kernel_volume_given = self.volume.data[0, :2].permute(1, 2, 3, 0) \
                .contiguous().numpy()
            self._ref_to_ijk = np.linalg.inv(np.asarray(ijk_to_reference,
                                                        dtype=np.float64))[:3].copy()
            self._kernel_geometries: Dict[Tuple[int, bool], _KernelGeometry] = {}
        # reference mm -> grid_sample's normalised coordinates (x = i, y = j, z = k in
        # [-1, 1], align_corners=True), as one (3, 4) matrix.
        K, J, I = self.volume.shape
        size = torch.tensor([I - 1, J - 1, K - 1], dtype=torch.float64)
        r2i = torch.linalg.inv(torch.as_tensor(np.asarray(ijk_to_reference, dtype=np.float64)))
        to_grid = (2.0 / size)[:, None] * r2i[:3, :]
        to_grid[:, 3] -= 1.0
        self._reference_to_grid_np = to_grid.numpy()
        # Fan centre in image pixels (rotation centre of the increments).
        self.fan_centre_px = np.array([cols.mean(), rows.mean(), 0.0, 1.0])
        self._centre_c = self.fan_centre_px - np.array([c0, r0, 0.0, 0.0])
        self._fans = {}
        self._geometry: Dict[Tuple[int, bool], _LevelGeometry] = {}
        for level in all_levels:
            self._level_geometry(level.step, level.window > 0)
        self._check_fov(self.volume)

    # ------------------------------------------------------------------ helpers
    def _tracking_levels(self) -> Tuple[Level, ...]:
        if self.config.tracking_levels:
            return tuple(self.config.tracking_levels)
        last = self.config.levels[-1]
        return (replace(last, max_iter=min(last.max_iter, 5)),)

    def _use_compiled(self) -> bool:
        """Whether the levels run on the compiled kernels (:attr:`RegistrationConfig.
        backend`)."""
        backend = self.config.backend
        if backend == "torch":
            return False
        why = None
        if not kernels.AVAILABLE:
            why = "numba is not installed"
        elif self.device.type != "cpu":
            why = f"the registrar runs on {self.device}, the kernels on the CPU only"
        elif not self.config.penalise_lost_overlap:
            why = "penalise_lost_overlap=False is not compiled"
        if why and backend == "numba":
            raise InputError(f"US registration backend 'numba' unavailable: {why}")
        return why is None

    def _kernel_geometry(self, step: int, dense: bool) -> "_KernelGeometry":
        """:meth:`_level_geometry` as float64 numpy arrays for the kernels (cached)."""
        key = (step, dense)
        if key not in self._kernel_geometries:
            geo = self._level_geometry(step, dense)
            pix = geo.pix.double().cpu().numpy()
            self._kernel_geometries[key] = _KernelGeometry(
                cols=np.ascontiguousarray(pix[:, 0]), rows=np.ascontiguousarray(pix[:, 1]),
                feat=np.ascontiguousarray(geo.feat.view(3, -1).double().cpu().numpy()),
                fan=geo.fan.double().cpu().numpy(),
                index=None if geo.index is None else geo.index.cpu().numpy(),
                grid_shape=geo.grid_shape)
        return self._kernel_geometries[key]

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
            feat = pix[:, [0, 1, 3]].T.clone()
            feat[:2] -= torch.as_tensor(self._centre_c[:2, None], dtype=torch.float32,
                                        device=self.device)
            self._geometry[key] = _LevelGeometry(
                pix=pix.contiguous(), pixT=pix.T.contiguous(),
                feat=feat.view(3, 1, -1).contiguous(), index=index,
                grid_shape=(h, w), fan=fan_flat.to(torch.float32), dense=dense)
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

    def _sample(self, vol: PreparedVolume, poses_c, geo: _LevelGeometry,
                channels: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sample ``vol`` at the level's points for cropped-frame poses ``(B, 4, 4)``
        (float64 numpy or torch). Returns ``values (C, B, N)`` and ``support (B, N)``
        (float, 1 where the point lies on the voxel grid and the support channel, the
        data mask or 1, is > 0.5)."""
        data = vol.data if channels is None else vol.data[:, :channels]
        if isinstance(poses_c, torch.Tensor):
            poses_c = poses_c.cpu().numpy()
        G = torch.as_tensor(self._reference_to_grid_np @ poses_c, dtype=torch.float32,
                            device=self.device)
        # (B, 3, N) grid_sample coordinates. bmm, not a broadcast matmul: torch folds the
        # latter into one (B * 3, 4) x (4, N) product whose rounding depends on B, and a
        # batched item must get the same result as the frame registered alone.
        g3 = torch.bmm(G, geo.pixT.expand(G.shape[0], -1, -1))
        B, N = g3.shape[0], g3.shape[2]
        vals = F.grid_sample(data, g3.transpose(1, 2)[None, :, :, None], mode="bilinear",
                             padding_mode="zeros", align_corners=True)
        vals = vals.view(data.shape[1], B, N)
        support = (g3.abs().amax(dim=1) <= 1.0) & (vals[1] > 0.5)
        return vals, support.to(vals.dtype)

    def overlap(self, image_to_reference, step: int = 8) -> np.ndarray:
        """Fraction ``(B,)`` of the (downsampled) fan inside the volume's data."""
        n = np.shape(image_to_reference)[0] if np.ndim(image_to_reference) == 3 else 1
        poses = _poses_tensor(image_to_reference, "image_to_reference", n).to(self.device)
        return self._overlap_c(self._to_cropped(poses), step)

    def _overlap_c(self, poses_c: torch.Tensor, step: int) -> np.ndarray:
        geo = self._level_geometry(step, dense=False)
        _, inside = self._sample(self.volume, poses_c, geo, channels=2)
        return (inside.sum(dim=1).double() / max(1, geo.pix.shape[0])).cpu().numpy()

    def resample_volume(self, image_to_reference, step: int = 4):
        """The volume (as given) resampled on the frame plane: ``(values (B, h, w),
        inside (B, h, w) bool)`` for full-frame poses ``(B, 4, 4)`` (display, checks)."""
        n = np.shape(image_to_reference)[0] if np.ndim(image_to_reference) == 3 else 1
        poses = _poses_tensor(image_to_reference, "image_to_reference", n).to(self.device)
        vals, inside = slice_volume(self.volume, poses.float(), self.frame_shape, step=step,
                                    channels=2)
        return vals[:, 0], inside

    def similarity(self, frames, image_to_reference, step: int = 8, window: int = 7):
        """Masked LNCC ``(B,)`` of frames and slices at the given poses (overlap only)."""
        f = _frames_tensor(frames, self.frame_shape).to(self.device)
        f = f[(slice(None),) + self._crop]
        poses = _poses_tensor(image_to_reference, "image_to_reference", f.shape[0])
        vals, inside = slice_volume(self.volume, self._to_cropped(poses.to(self.device)).float(),
                                    self._shape, step=step, slab_mm=self.config.slab_mm,
                                    slab_samples=self.config.slab_samples, channels=2)
        fd = downsample_frame(f, step)
        mask = inside & self._fan_level(step)
        return masked_lncc(fd, vals[:, 0], mask, max(0, window)).cpu().numpy()

    def _slice_c(self, poses_c, step: int) -> Tuple[torch.Tensor, np.ndarray]:
        """The volume (as given) on the level's whole grid at cropped-frame poses
        ``(B, 4, 4)``: ``(intensity, mask) (2, B, N)`` (mask: fan pixels inside the volume's
        data) and the fraction ``(B,)`` of the fan inside the volume's data."""
        geo = self._level_geometry(step, dense=True)
        vals, inside = self._sample(self.volume, poses_c, geo, channels=2)
        mask = inside * geo.fan
        overlap = mask.sum(dim=1).double() / float(geo.fan.sum().clamp_min(1.0))
        return torch.stack([vals[0], mask]), overlap.cpu().numpy()

    def _similarity_c(self, fd: torch.Tensor, vals: torch.Tensor, step: int,
                      window: int) -> np.ndarray:
        """:meth:`similarity` ``(B,)`` of cropped, downsampled frames ``fd`` ``(B, h, w)``
        and their slices ``vals`` from :meth:`_slice_c`."""
        geo = self._level_geometry(step, dense=True)
        B = fd.shape[0]
        mask = (vals[1] > 0.5).view(B, *geo.grid_shape)
        return masked_lncc(fd, vals[0].view(B, *geo.grid_shape), mask,
                           max(0, window)).cpu().numpy()

    # ------------------------------------------------------------------ registration
    def validate_starts(self, starts: torch.Tensor, indices: Sequence[int],
                        overlaps: Optional[np.ndarray] = None) -> np.ndarray:
        """Raise :class:`GeometryError` for a field of view far larger than the volume or a
        start whose fan barely overlaps the volume's data; returns the overlaps ``(B,)``
        (``overlaps``: already measured, e.g. by :meth:`score`, not measured again)."""
        self._check_fov_of(starts)
        ov = self._overlap_c(self._to_cropped(starts.to(self.device)), 8) \
            if overlaps is None else np.asarray(overlaps, dtype=np.float64)
        self._check_overlap(ov, indices)
        return ov

    @torch.inference_mode()
    def score(self, frames, image_to_reference) -> Tuple[np.ndarray, np.ndarray]:
        """The finest level's masked LNCC ``(B,)`` (the ``lncc_start`` / ``lncc`` that
        :meth:`register` reports) of frames ``(B, H, W)`` at full-frame poses ``(B, 4, 4)``,
        and the fraction ``(B,)`` of the fan inside the volume's data; one pass (the
        compiled kernel on the CPU when available). For methods that place a frame
        without this registrar's search (``deep``) and must report the same numbers."""
        f = _frames_tensor(frames, self.frame_shape, self._crop).to(self.device)
        B = f.shape[0]
        poses = _poses_tensor(image_to_reference, "image_to_reference", B).to(self.device)
        poses_c = self._to_cropped(poses).cpu().numpy()
        last = self.config.levels[-1]
        fd = _pyramid(f, [last.step])[last.step]
        if self._compiled:
            g = self._kernel_geometry(last.step, True)
            fd_np = fd.reshape(B, -1).double().cpu().numpy()
            out = [kernels.slice_similarity(
                self._kernel_volume_given, self._ref_to_ijk @ poses_c[b], g.cols, g.rows,
                g.fan, fd_np[b], *g.grid_shape, max(0, last.window)) for b in range(B)]
            return (np.array([o[0] for o in out], dtype=np.float64),
                    np.array([o[1] for o in out], dtype=np.float64))
        sl, overlap = self._slice_c(poses_c, last.step)
        return self._similarity_c(fd, sl, last.step, last.window), overlap

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
        f = _frames_tensor(frames, self.frame_shape, self._crop).to(self.device)
        B = f.shape[0]
        indices = list(range(B)) if indices is None else list(indices)
        starts_t = _poses_tensor(starts, "start image_to_reference", B).to(self.device)
        if init_corrections is None:
            corr0 = np.tile(np.eye(4), (B, 1, 1))
        else:
            corr0 = _poses_tensor(init_corrections, "initial correction", B).cpu().numpy()
        starts_np = self._to_cropped(starts_t).cpu().numpy()
        self._check_fov_of(torch.as_tensor(corr0 @ starts_t.cpu().numpy()))
        levels = self._tracking_levels() if tracking else tuple(self.config.levels)
        run = self._register_compiled if self._compiled else self._register_torch
        corr, history, total_iter, overlap0, lncc_start, lncc_final = run(
            f, starts_np, corr0, levels, tracking, indices, progress, cancel)
        # Safety: a frame whose similarity got worse (a diverged search) keeps its start.
        worse = lncc_final < lncc_start
        corr = np.where(worse[:, None, None], corr0, corr)
        lncc_final = np.where(worse, lncc_start, lncc_final)
        start_np = starts_t.cpu().numpy()
        final_np = corr @ start_np
        seconds = (time.perf_counter() - t0) / B
        return [FrameResult(
            start_image_to_reference=start_np[b], image_to_reference=final_np[b],
            correction=corr[b], lncc_start=float(lncc_start[b]), lncc=float(lncc_final[b]),
            overlap=float(overlap0[b]), iterations=total_iter, seconds=seconds,
            history=history[b]) for b in range(B)]

    def _register_torch(self, f, starts_np, corr0, levels, tracking, indices, progress,
                        cancel):
        """:meth:`register` on the torch path (any device, batched). Returns
        ``(correction (B, 4, 4), histories, iterations, start overlap (B,), start LNCC (B,),
        final LNCC (B,))``."""
        B = f.shape[0]
        last = levels[-1]
        slice0, overlap0 = self._slice_c(corr0 @ starts_np, last.step)
        self._check_overlap(overlap0, indices)
        pyramid = _pyramid(f, [lv.step for lv in levels])
        corr = corr0
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
        # Start and final similarity in one batch (masked LNCC on the overlap).
        slice1, _ = self._slice_c(corr @ starts_np, last.step)
        both = self._similarity_c(pyramid[last.step].repeat(2, 1, 1),
                                  torch.cat([slice0, slice1], dim=1), last.step, last.window)
        return corr, history, total_iter, overlap0, both[:B], both[B:]

    def _register_compiled(self, f, starts_np, corr0, levels, tracking, indices, progress,
                           cancel):
        """:meth:`register` with the compiled CPU kernels (:mod:`kernels`), one frame and
        one start at a time (each is a single call per level); same returns as
        :meth:`_register_torch`."""
        cfg = self.config
        B = f.shape[0]
        last = levels[-1]
        pyramid = {k: v.reshape(v.shape[0], -1).double().cpu().numpy()
                   for k, v in _pyramid(f, [lv.step for lv in levels]).items()}
        g_last = self._kernel_geometry(last.step, True)

        def similarity(c):
            out = [kernels.slice_similarity(
                self._kernel_volume_given, self._ref_to_ijk @ (c[b] @ starts_np[b]),
                g_last.cols, g_last.rows, g_last.fan, pyramid[last.step][b],
                *g_last.grid_shape, max(0, last.window)) for b in range(B)]
            return np.array([o[0] for o in out]), np.array([o[1] for o in out])

        lncc_start, overlap0 = similarity(corr0)
        self._check_overlap(overlap0, indices)
        corr = corr0.copy()
        history: List[List[float]] = [[] for _ in range(B)]
        total_iter = 0
        for li, level in enumerate(levels):
            check_cancel(cancel, "US registration")
            finest = li == len(levels) - 1
            tol_cost = cfg.tol_cost if finest else max(cfg.tol_cost, cfg.tol_cost_coarse)
            geo = self._kernel_geometry(level.step, level.window > 0)
            vol = self._kernel_volumes[(level.sigma_vox, level.data_mask)]
            multi = li == 0 and bool(cfg.normal_starts) and not tracking
            starts_b = self._normal_start_corrections(corr, starts_np) if multi else corr[None]
            level_iter = 0
            for b in range(B):
                check_cancel(cancel, "US registration")
                frame = pyramid[level.step][b]
                if geo.index is not None:
                    frame = frame[geo.index]
                best = None
                for c0 in starts_b[:, b]:  # the first of equal costs wins, as on torch
                    out = kernels.refine_level(
                        vol, self._ref_to_ijk, starts_np[b], c0, geo.cols,
                        geo.rows, geo.feat, geo.fan, np.ascontiguousarray(frame),
                        geo.index is None, *geo.grid_shape, level.window, level.rotations,
                        level.max_iter, tol_cost, cfg.tol_step, cfg.lambda_init,
                        cfg.max_rejections, self._centre_c, cfg.lost_overlap_weight)
                    level_iter = max(level_iter, out[3])
                    if best is None or out[1] < best[1]:
                        best = out
                corr[b] = best[0]
                history[b].extend(float(c) for c in best[2])
            total_iter += level_iter
            report(progress, (li + 1) / len(levels),
                   f"US registration level {li + 1}/{len(levels)}")
        lncc_final, _ = similarity(corr)
        return corr, history, total_iter, overlap0, lncc_start, lncc_final

    @torch.inference_mode()
    def local_fit(self, frame, image_to_reference, level: Optional[Level] = None) -> dict:
        """The finest level's cost at one full-frame pose and its normal equations (for
        the trust value, :mod:`quality`): ``{"cost", "JtJ" (6, 6), "Jtr" (6,),
        "points" (fan pixels on the data), "fan_points", "centre" (3,) (reference mm,
        the rotation centre of the steps: the fan centre)}``; steps ``(omega, v)`` as in
        the LM (rotation about the fan centre, rad, then translation, mm). Either
        backend."""
        level = level or self.config.levels[-1]
        f = _frames_tensor(frame, self.frame_shape, self._crop).to(self.device)
        pose = _poses_tensor(image_to_reference, "image_to_reference", 1).to(self.device)
        pose_c = self._to_cropped(pose).cpu().numpy()
        fd = _pyramid(f, [level.step])[level.step]
        centre = (pose_c @ self._centre_c)[:, :3]
        dense = level.window > 0
        if self._compiled:
            geo = self._kernel_geometry(level.step, dense)
            vol = self._kernel_volumes[(level.sigma_vox, level.data_mask)]
            fr = fd.reshape(-1).double().cpu().numpy()
            A = self._ref_to_ijk @ pose_c[0]
            T = kernels.step_basis(pose_c[0], self._centre_c, centre[0])
            n_fan = max(1.0, float(geo.fan.sum()))
            if dense:
                nf = kernels.local_normalise(fr, geo.fan, *geo.grid_shape, level.window)
                out = kernels._evaluate_lncc(vol, A, geo.cols, geo.rows, geo.fan, nf,
                                             n_fan ** -0.5, *geo.grid_shape, level.window,
                                             self.config.lost_overlap_weight)
                cost, m = out[0], out[3]
                JtJ, Jtr = kernels._normal_equations_lncc(*out[1:], geo.feat, T,
                                                          n_fan ** -0.5, *geo.grid_shape,
                                                          level.window)
                points = float(m.sum())
            else:
                fs = np.ascontiguousarray(fr[geo.index])
                nf = (fs - fs.mean()) / np.sqrt(fs.var() + _EPS)
                cost, G = kernels._evaluate_global(vol, A, geo.cols, geo.rows, geo.feat, nf,
                                                   (nf ** 2).sum(), 1.0 / n_fan)
                JtJ, Jtr = kernels._normal_equations_global(G, T, 1.0 / n_fan)
                points = float(G[10, 10])
            fan_points = n_fan
        else:
            geo = self._level_geometry(level.step, dense)
            frame_l = self._level_frame(fd, level, geo)
            cost_b, saved = self._evaluate(level, geo, pose_c, centre, frame_l)
            JtJ_b, Jtr_b = self._normal_equations(level, geo, saved)
            cost, JtJ, Jtr = float(cost_b[0]), JtJ_b[0], Jtr_b[0]
            points = float(saved[2].sum()) if dense else float(saved[0][0, 10, 10])
            fan_points = float(geo.fan.sum())
        return {"cost": float(cost), "JtJ": np.asarray(JtJ, dtype=float),
                "Jtr": np.asarray(Jtr, dtype=float), "points": points,
                "fan_points": fan_points, "centre": centre[0]}

    def _normal_start_corrections(self, corr0: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The first level's starts ``(S, B, 4, 4)``: ``corr0`` ``(B, 4, 4)`` and the same
        shifted by ``+-normal_starts`` mm along each frame's plane normal (given one
        first, so it wins ties)."""
        offsets = [0.0] + [o for d in self.config.normal_starts for o in (d, -d)]
        base = corr0 @ starts
        normal = np.cross(base[:, :3, 0], base[:, :3, 1])
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        T = np.tile(np.eye(4), (len(offsets), corr0.shape[0], 1, 1))
        T[:, :, :3, 3] = np.asarray(offsets)[:, None, None] * normal[None]
        return T @ corr0[None]

    def _multi_start_level(self, fd, starts, corr0, level: Level, cancel, finest: bool):
        """First level from several starts shifted along the plane normal (the direction
        the frame content constrains least); each frame keeps its lowest-cost result."""
        shifted = self._normal_start_corrections(corr0, starts)  # (S, B, 4, 4)
        S, B = shifted.shape[:2]
        corr, cost, hist, it = self._refine_level(fd.repeat(S, 1, 1), np.tile(starts, (S, 1, 1)),
                                                  shifted.reshape(-1, 4, 4), level, cancel,
                                                  finest)
        pick = cost.reshape(S, B).argmin(axis=0) * B + np.arange(B)  # start-major
        return corr[pick], hist[:, pick], it

    def _step_basis(self, poses_c: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """``T`` ``(B, 6, 9)``: the derivative of a sampled intensity along the LM step
        ``(omega, v)`` is ``T @ (feat (x) g)``, with ``g`` the volume gradient (reference
        mm) and ``feat = (col - cc, row - rc, 1)`` the pixel relative to the fan centre
        ``(cc, rc)`` (``(x)``: ``y[3 k + j] = feat[k] * g[j]``).

        About the rotation ``centre`` ``(B, 3)`` a pixel lies at
        ``q = (col - cc) a + (row - rc) b + e`` (``a``, ``b``: the pose's column and row
        axes, ``e``: the fan centre about ``centre``), and ``d s / d omega = q x g``,
        ``d s / d v = g``; ``q x g = sum_k feat[k] [axis_k]_x g``.
        """
        e = poses_c[:, :3, :] @ self._centre_c - centre
        axes = np.stack([poses_c[:, :3, 0], poses_c[:, :3, 1], e], axis=1)  # (B, k, 3)
        T = np.zeros((poses_c.shape[0], 6, 9))
        T[:, :3] = _hat(axes).transpose(0, 2, 1, 3).reshape(-1, 3, 9)  # [axis_k]_x blocks
        T[:, 3:, 6:] = np.eye(3)
        return T

    def _level_frame(self, fd: torch.Tensor, level: Level, geo: _LevelGeometry) -> "_Frame":
        """The frame's side of the cost on a level (fixed while the pose changes)."""
        B = fd.shape[0]
        flat = fd.reshape(B, -1)
        penalise = self.config.penalise_lost_overlap
        n_fan = max(1.0, float(geo.fan.sum()))
        if geo.dense:
            fan_img = geo.fan.view(1, *geo.grid_shape).expand(B, -1, -1)
            nf = local_normalise(fd, fan_img, level.window).reshape(B, -1)
            return _Frame(nf=nf, raw=None if penalise else flat,
                          weight=torch.full((B, 1), n_fan ** -0.5, device=fd.device))
        vals = flat[:, geo.index]
        if penalise:  # normalised once on the whole fan
            mu = vals.mean(dim=1, keepdim=True)
            f = (vals - mu) * torch.rsqrt(((vals - mu) ** 2).mean(dim=1, keepdim=True) + _EPS)
            nf_sq = (f.double() ** 2).sum(dim=1).cpu().numpy()
        else:  # normalised on the overlap at every evaluation (from the Gram matrix)
            f = vals - vals.mean(dim=1, keepdim=True)
            nf_sq = None
        return _Frame(nf=f, raw=None, weight=None, nf_sq=nf_sq, w2=1.0 / n_fan,
                      consts=torch.stack([torch.ones_like(f), f]))

    def _evaluate(self, level: Level, geo: _LevelGeometry, poses_c: np.ndarray,
                  centre: np.ndarray, frame: "_Frame"):
        """Cost ``(B,)`` (float64 numpy) at cropped-frame poses ``poses_c`` ``(B, 4, 4)``
        (float64 numpy), and what :meth:`_normal_equations` needs.

        One ``grid_sample`` reads intensity, support and gradient at the level's points.
        Global-NCC levels reduce everything (cost, ``J^T J``, ``J^T r``) to one Gram
        matrix ``sum_n m z z^T`` of ``z = [feat (x) g, s, 1, f]`` (``(B, 12, 12)``, one
        batched matmul; :func:`_global_ncc`); the LNCC level keeps its local statistics
        for the Jacobian (only built for accepted steps). ``centre`` ``(B, 3)``: rotation
        centre of the LM steps (reference mm).
        """
        vol = self._volumes[(level.sigma_vox, level.data_mask)]
        vals, m = self._sample(vol, poses_c, geo)  # (5, B, N), (B, N)
        _, B, N = vals.shape
        if not geo.dense:
            y = (geo.feat.view(3, 1, 1, N) * vals[2:5].view(1, 3, B, N)).view(9, B, N)
            z = torch.cat([y, vals[:1], frame.consts], dim=0)  # (12, B, N)
            gram = torch.bmm((z * m).transpose(0, 1), z.permute(1, 2, 0))
            gram = gram.double().cpu().numpy()
            cost, terms = _global_ncc(gram, frame.nf_sq, frame.w2)
            return cost, (gram, terms, poses_c, centre)
        m = m * geo.fan
        s = vals[0]
        h, w = geo.grid_shape
        # Local (window x window) statistics of the slice on the mask, three box sums in
        # one call (same formulas as lncc.local_normalise; the volume is centred).
        sm = s * m
        sums = _box(torch.stack([m, sm, sm * s], dim=1).view(B * 3, h, w), level.window)
        sums = sums.view(B, 3, N)
        count = sums[:, 0].clamp_min(1.0)
        mom = sums[:, 1:] / count[:, None]
        mu = mom[:, 0]
        d = s - mu
        inv_sd = torch.rsqrt((mom[:, 1] - mu * mu).clamp_min(0.0) + _EPS)
        ns = d * inv_sd * m
        nf, weight = frame.nf, frame.weight
        if frame.raw is not None:
            nf = local_normalise(frame.raw.view(B, h, w), m.view(B, h, w),
                                 level.window).view(B, N)
            weight = torch.rsqrt(m.sum(dim=1, keepdim=True).clamp_min(1.0))
        if frame.raw is None and self.config.lost_overlap_weight != 1.0:
            # fan pixels off the data (nf is 0 off the fan) keep lost_overlap_weight * nf
            nf = nf * (1.0 + (self.config.lost_overlap_weight - 1.0) * (1.0 - m))
        r = (nf - ns) * weight  # (B, N)
        cost = 0.5 * (r * r).sum(dim=1)
        return cost.double().cpu().numpy(), (vals, s, m, r, weight, count, mu, d, inv_sd,
                                              poses_c, centre)

    def _normal_equations(self, level: Level, geo: _LevelGeometry, saved):
        """``J^T J`` ``(B, 6, 6)`` and ``J^T r`` ``(B, 6)`` (float64 numpy) of an
        evaluation, ``J`` = d r / d(omega, v) (analytic)."""
        if not geo.dense:
            gram, terms, poses_c, centre = saved
            T = self._step_basis(poses_c, centre)
            JtJ, Jtr = _global_ncc_normal_equations(gram, terms, T)
        else:
            vals, s, m, r, weight, count, mu, d, inv_sd, poses_c, centre = saved
            B, N = r.shape
            h, w = geo.grid_shape
            T = torch.as_tensor(self._step_basis(poses_c, centre), dtype=torch.float32,
                                device=r.device)
            y = (geo.feat.view(3, 1, 1, N) * vals[2:5].view(1, 3, B, N)).view(9, B, N)
            js = torch.matmul(T, y.transpose(0, 1))  # (B, 6, N): d s / d(omega, v)
            mjs = js * m[:, None]
            boxed = _box(torch.cat([mjs, mjs * s[:, None]], dim=1).view(-1, h, w),
                         level.window).view(B, 12, N)
            # Derivative of lncc.local_normalise (see local_normalise_jvp): with
            # dmu = box(m js) / count, dvar = 2 box(m s js) / count - 2 mu dmu,
            # dn = (js - dmu - d dvar / (2 (var + eps))) inv_sd m and J = -weight dn, i.e.
            # J = c1 js - c2 box(m js) - c3 box(m s js) with per-pixel c1, c2, c3.
            c1 = -weight * inv_sd * m
            k = inv_sd * inv_sd * d
            c2 = c1 * (1.0 - k * mu) / count
            c3 = c1 * k / count
            J = js * c1[:, None] - boxed[:, :6] * c2[:, None] - boxed[:, 6:] * c3[:, None]
            # [J^T J | J^T r] (B, 6, 7) in one bmm on [J | r] zero-padded to N_pad points,
            # a multiple of 16: every item then starts 64-byte aligned, as a frame
            # registered alone does (float32 BLAS rounds differently at other
            # alignments, and a 1-column bmm takes a matrix-vector path whose rounding
            # depends on B): a batched item gets the same result as alone.
            Jr = J.new_zeros(B, 7, -(-N // 16) * 16)
            Jr[:, :6, :N] = J
            Jr[:, 6, :N] = r
            JJr = torch.bmm(Jr[:, :6], Jr.transpose(1, 2)).double().cpu().numpy()
            JtJ, Jtr = JJr[:, :, :6], JJr[:, :, 6]
        if not level.rotations:  # translation only: the rotation steps solve to 0
            JtJ[:, :3, :] = 0.0
            JtJ[:, :, :3] = 0.0
            JtJ[:, :3, :3] = np.eye(3)
            Jtr[:, :3] = 0.0
        return JtJ, Jtr

    def _refine_level(self, fd: torch.Tensor, starts: np.ndarray, corr0: np.ndarray,
                      level: Level, cancel, finest: bool = True):
        """Batched Levenberg-Marquardt on one level.

        ``fd`` ``(B, h, w)`` cropped frames at the level's step (torch), ``starts``
        ``(B, 4, 4)`` cropped tracked poses, ``corr0`` ``(B, 4, 4)`` corrections to start
        from (float64 numpy); ``finest``: use ``tol_cost`` (else ``tol_cost_coarse``).
        The 6 x 6 bookkeeping is float64 numpy (tiny; the sampling and normalisation stay
        in torch on the volume's device). Returns
        ``(correction (B, 4, 4), cost (B,), history (iterations + 1, B), iterations)``.
        """
        cfg = self.config
        tol_cost = cfg.tol_cost if finest else max(cfg.tol_cost, cfg.tol_cost_coarse)
        geo = self._level_geometry(level.step, level.window > 0)
        B = fd.shape[0]
        frame = self._level_frame(fd, level, geo)
        corr = corr0.copy()
        centre = (corr @ starts @ self._centre_c)[:, :3]  # (B, 3), fixed for the level

        def evaluate(c):
            return self._evaluate(level, geo, c @ starts, centre, frame)

        cost, saved = evaluate(corr)
        JtJ, Jtr = self._normal_equations(level, geo, saved)
        lam = np.full(B, cfg.lambda_init)
        rejected = np.zeros(B, dtype=int)  # consecutive rejected steps
        active = np.ones(B, dtype=bool)
        history = [cost.copy()]
        eye = np.eye(6)
        scale_x = np.array([100.0] * 3 + [1.0] * 3)  # tol_step: rotations at 100 mm
        it = 0
        for it in range(1, level.max_iter + 1):
            check_cancel(cancel, "US registration")
            diag = np.diagonal(JtJ, axis1=1, axis2=2)
            damp = lam[:, None] * np.maximum(diag, 1e-12 * diag.max(axis=1, keepdims=True)
                                             + 1e-30)
            A = JtJ + damp[:, :, None] * eye
            try:
                dx = -np.linalg.solve(A, Jtr[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                dx = -np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(A, Jtr)])
            ok = active & np.isfinite(dx).all(axis=1)
            dx[~ok] = 0.0
            # Decrease predicted by the linear model, -Jtr.dx - dx.JtJ.dx / 2, which is
            # (-Jtr.dx + dx.damp.dx) / 2 since (JtJ + damp) dx = -Jtr; a converged item
            # (e.g. a tracking start that is already right) stops without trying the step.
            predicted = 0.5 * (dx * (damp * dx - Jtr)).sum(axis=1)
            flat_model = ok & (predicted <= 0.25 * tol_cost * cost)
            active &= ~flat_model
            ok &= ~flat_model
            dx[~ok] = 0.0
            if not active.any():
                break
            corr_try = _step_matrix_np(dx, centre) @ corr
            # Only the items that try a step are evaluated (in a batch, items that have
            # stopped would otherwise be sampled for nothing until the last one stops).
            sub = None if ok.all() else np.flatnonzero(ok)
            if sub is None:
                cost_t, saved_t = evaluate(corr_try)
            else:
                cost_t = np.full(B, np.inf)
                if sub.size:
                    cost_t[sub], saved_t = self._evaluate(
                        level, geo, corr_try[sub] @ starts[sub], centre[sub],
                        frame.subset(sub))
            better = ok & (cost_t < cost)  # NaN compares False
            small_decrease = better & (cost - cost_t <= tol_cost * cost)
            small_step = ok & (((dx * scale_x) ** 2).sum(axis=1) <= cfg.tol_step ** 2)
            if better.all():
                corr, cost = corr_try, cost_t
            elif better.any():
                corr[better], cost[better] = corr_try[better], cost_t[better]
            lam = np.where(better, lam * 0.3, lam * 4.0)
            rejected = np.where(better, 0, rejected + ok)
            history.append(cost.copy())
            active &= ~small_decrease & ~small_step & (lam < 1e8) \
                & (rejected < cfg.max_rejections)
            if not active.any() or it == level.max_iter:
                break
            # Normal equations at the accepted poses, only for items that go on.
            refresh = better & active
            if refresh.all():
                JtJ, Jtr = self._normal_equations(level, geo, saved_t)
            elif refresh.any():  # saved_t holds the evaluated items (sub) only
                JtJ_t, Jtr_t = self._normal_equations(level, geo, saved_t)
                pick = refresh if sub is None else refresh[sub]
                JtJ[refresh], Jtr[refresh] = JtJ_t[pick], Jtr_t[pick]
        return corr, cost, np.stack(history), it


@dataclass
class _Frame:
    """The frame's side of a level's cost. Dense (LNCC) levels: ``nf`` ``(B, N)`` the
    locally normalised frame, ``weight`` ``(B, 1)``, ``raw`` the frame when it is
    normalised on the overlap at every evaluation. Global levels: ``consts``
    ``(2, B, N)`` = ``[1, f]`` rows of the Gram matrix, ``nf_sq`` ``(B,)`` the sum of the
    normalised frame's squares on the fan (``None``: normalise on the overlap instead),
    ``w2`` the residual weight squared."""

    nf: torch.Tensor
    raw: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    consts: Optional[torch.Tensor] = None
    nf_sq: Optional[np.ndarray] = None
    w2: float = 1.0

    def subset(self, items: np.ndarray) -> "_Frame":
        """The same frame side for the batch items ``items`` (indices) only."""
        idx = torch.as_tensor(items, device=self.nf.device)
        return _Frame(nf=self.nf[idx], raw=None if self.raw is None else self.raw[idx],
                      weight=None if self.weight is None else self.weight[idx],
                      consts=None if self.consts is None else self.consts[:, idx],
                      nf_sq=None if self.nf_sq is None else self.nf_sq[items], w2=self.w2)


def _global_ncc(G: np.ndarray, nf_sq: Optional[np.ndarray], w2: float):
    """Cost ``(B,)`` of the global-NCC levels from the Gram matrix ``G`` ``(B, 12, 12)``
    (rows ``_Y``, ``_S``, ``_ONE``, ``_F``; sums over the overlap ``m``), and the terms
    :func:`_global_ncc_normal_equations` reuses.

    ``r = sqrt(w2) * (nf - ns)`` on the fan with ``ns = m (s - mean) / sd`` (moments of
    ``s`` on the overlap), ``nf`` the frame normalised on the fan (``nf_sq`` = its sum of
    squares), or with ``nf_sq = None`` on the overlap (``w2 = 1 / count`` then).
    """
    c = np.maximum(G[:, _ONE, _ONE], 1.0)
    mean_s = G[:, _S, _ONE] / c
    var_s = np.maximum(G[:, _S, _S] / c - mean_s ** 2, 0.0)
    inv_sd = 1.0 / np.sqrt(var_s + _EPS)
    if nf_sq is None:  # nf = (f - mean_f) * inv_sdf on the overlap
        mean_f = G[:, _F, _ONE] / c
        var_f = np.maximum(G[:, _F, _F] / c - mean_f ** 2, 0.0)
        inv_sdf = 1.0 / np.sqrt(var_f + _EPS)
        s_nf = np.zeros_like(c)
        s_snf = inv_sdf * (G[:, _S, _F] - mean_f * G[:, _S, _ONE])
        nf_sq = c * var_f * inv_sdf ** 2
        w2 = 1.0 / c
    else:
        mean_f, inv_sdf = None, None
        s_nf, s_snf = G[:, _F, _ONE], G[:, _S, _F]
    s_dnf = s_snf - mean_s * s_nf  # sum m d nf, d = s - mean_s
    cost = 0.5 * w2 * (nf_sq - 2.0 * inv_sd * s_dnf + c * var_s * inv_sd ** 2)
    return cost, (c, mean_s, var_s, inv_sd, s_nf, s_dnf, mean_f, inv_sdf, w2)


def _global_ncc_normal_equations(G: np.ndarray, terms, T: np.ndarray):
    """``J^T J`` ``(B, 6, 6)``, ``J^T r`` ``(B, 6)`` of :func:`_global_ncc` (exact) from
    the same Gram matrix; ``T`` ``(B, 6, 9)`` maps its ``_Y`` rows to ``u = d s / dx``
    (:meth:`SliceRegistrar._step_basis`).

    With ``v = u - dmu - a d dvar`` (``dmu = sum m u / c``, ``dvar = 2 sum m u d / c``,
    ``a = 1 / (2 (var + eps))``) the derivative of ``ns`` is ``inv_sd m v``, and since
    ``sum m d = 0``, ``sum m d^2 = c var``:
    ``sum m v v^T = U - c dmu dmu^T + (a^2 var - a) c dvar dvar^T`` (``U = sum m u u^T``).
    """
    c, mean_s, var_s, inv_sd, s_nf, s_dnf, mean_f, inv_sdf, w2 = terms
    # One congruence maps the _Y rows to u: W = [T 0; 0 I] G [T 0; 0 I]^T holds
    # U = sum m u u^T and the sums of m u, m u s, m u f in its first six rows.
    Ta = np.zeros((T.shape[0], 9, 12))
    Ta[:, :6, :9] = T
    Ta[:, 6:, 9:] = np.eye(3)
    Wm = Ta @ G @ Ta.transpose(0, 2, 1)
    U, sus, su, suf = Wm[:, :6, :6], Wm[:, :6, 6], Wm[:, :6, 7], Wm[:, :6, 8]
    cc = c[:, None]
    dmu = su / cc
    dvar = 2.0 * (sus - mean_s[:, None] * su) / cc
    a = 0.5 * inv_sd ** 2
    k = ((a * a * var_s - a) * c)[:, None, None]
    vv = U - cc[:, :, None] * dmu[:, :, None] * dmu[:, None, :] \
        + k * dvar[:, :, None] * dvar[:, None, :]
    JtJ = (w2 * inv_sd ** 2)[:, None, None] * vv
    s_unf = suf if mean_f is None else inv_sdf[:, None] * (suf - mean_f[:, None] * su)
    s_vnf = s_unf - dmu * s_nf[:, None] - (a * s_dnf)[:, None] * dvar
    s_vd = dvar * (c * (0.5 - a * var_s))[:, None]
    Jtr = -(w2 * inv_sd)[:, None] * (s_vnf - inv_sd[:, None] * s_vd)
    return JtJ, Jtr


def _pyramid(frames: torch.Tensor, steps: Sequence[int]) -> Dict[int, torch.Tensor]:
    """Block means ``{step: (B, H // step, W // step)}`` of ``frames`` ``(B, H, W)``; a
    step that is a multiple of a smaller one is pooled from it (same block means)."""
    out: Dict[int, torch.Tensor] = {}
    for step in sorted(set(steps)):
        base = max((s for s in out if step % s == 0), default=None)
        out[step] = downsample_frame(frames, step) if base is None else \
            downsample_frame(out[base], step // base)
    return out


# [w]_x (the cross-product matrix) of w = (w0, w1, w2), flattened row-major:
# [[0, -w2, w1], [w2, 0, -w0], [-w1, w0, 0]] = w[_HAT_IDX] * _HAT_SIGN.
_HAT_IDX = np.array([0, 2, 1, 2, 0, 0, 1, 0, 0])
_HAT_SIGN = np.array([0.0, -1.0, 1.0, 1.0, 0.0, -1.0, -1.0, 1.0, 0.0])


def _hat(w: np.ndarray) -> np.ndarray:
    """Cross-product matrices ``(..., 3, 3)`` of vectors ``w`` ``(..., 3)``."""
    return (w[..., _HAT_IDX] * _HAT_SIGN).reshape(w.shape[:-1] + (3, 3))


def _step_matrix_np(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``S(x)`` ``(B, 4, 4)``: rotate by ``x[:, :3]`` (Rodrigues) about ``centre``
    ``(B, 3)``, then translate by ``x[:, 3:]`` (reference mm). float64 numpy."""
    t = np.sqrt((x[:, :3] ** 2).sum(axis=1))[:, None, None]
    K = _hat(x[:, :3])
    # sin(t) / t and (1 - cos t) / t^2 = sinc(t / 2)^2 / 2, exact at t = 0.
    R = np.eye(3) + np.sinc(t / np.pi) * K + 0.5 * np.sinc(t / (2 * np.pi)) ** 2 * (K @ K)
    S = np.zeros((x.shape[0], 4, 4))
    S[:, :3, :3] = R
    S[:, :3, 3] = centre - (R @ centre[:, :, None])[:, :, 0] + x[:, 3:]
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
