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

Files, along the data flow: :mod:`.config` (settings, checked inputs, :class:`FrameResult`)
-> :mod:`.levels` (the pyramid, each level's sampling points and the volume's samples
there) -> :mod:`.lm_torch` (the per-level LM on torch, global-NCC helpers, step matrices)
or :mod:`.lm_compiled` (the same on the compiled CPU kernels of :mod:`.kernels`) -> this
module (:class:`SliceRegistrar`: set-up, checks, ``register``, ``score``, ``local_fit``;
it inherits the stages' methods from the mixins ``_LevelSampling``, ``_TorchLevels`` and
``_CompiledLevels``, so its API and private names are unchanged).
:mod:`.pose_utils` holds the evaluation helpers (pose errors, perturbations).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from . import kernels
from .config import FrameResult, Level, RegistrationConfig, _frames_tensor, _poses_tensor
from .levels import _LevelGeometry, _LevelSampling, _pyramid
from .lm_compiled import _CompiledLevels, _KernelGeometry
from .lm_torch import _TorchLevels
from .lncc import _EPS, masked_lncc
# Re-exported: ``from USSliceRegLib.register import pose_errors`` (scripting API, docs).
from .pose_utils import perturb_about_point, pose_errors, random_perturbations
from .slicing import PreparedVolume, downsample_frame, prepare_volume, slice_volume

__all__ = ["FrameResult", "Level", "RegistrationConfig", "SliceRegistrar",
           "perturb_about_point", "pose_errors", "random_perturbations"]


class SliceRegistrar(_LevelSampling, _TorchLevels, _CompiledLevels):
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


    def _check_fov(self, vol: PreparedVolume) -> None:
        """Reject a frame plane far larger than the volume (nothing sensible to match)."""
        self._vol_extent = float(np.linalg.norm(np.ptp(vol.bounds_reference(), axis=0)))

    def frame_extent_mm(self, image_to_reference: np.ndarray) -> float:
        pts = self._fan_corners @ np.asarray(image_to_reference, dtype=float).T
        return float(np.linalg.norm(pts[1, :3] - pts[0, :3]))


    def overlap(self, image_to_reference, step: int = 8) -> np.ndarray:
        """Fraction ``(B,)`` of the (downsampled) fan inside the volume's data."""
        n = np.shape(image_to_reference)[0] if np.ndim(image_to_reference) == 3 else 1
        poses = _poses_tensor(image_to_reference, "image_to_reference", n).to(self.device)
        return self._overlap_c(self._to_cropped(poses), step)


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
