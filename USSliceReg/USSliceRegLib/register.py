"""Pose refinement of 2D ultrasound frames against a 3D ultrasound volume (masked LNCC + LM).

The unknown is a rigid *correction* of the tracked pose, expressed in the volume's
reference frame and applied on the left::

    image_to_reference = correction @ start_image_to_reference,
    correction = Tc @ expm(hat(x)) @ inv(Tc) @ correction_init,

where ``x = (omega, v)`` (rad, mm) and ``Tc`` translates to the centre of the frame's fan
in reference mm, so rotations turn about the frame rather than the far-away reference
origin. ``correction`` is a ``tracked_reference_to_reference`` 4x4: it maps where the
tracking says a point is to where the volume says it is.

Cost: ``0.5 * ||r||^2 ~ 1 - LNCC`` with ``r`` the difference of the locally normalised
frame and slice on the fan pixels (fan pixels outside the volume keep their residual, so
leaving the volume never pays; see :mod:`lncc`), minimised by
``SurgicalReg2D3DLib.optimize.levenberg_marquardt``, batched over frames, on the fan's
bounding box. Default pyramid (:class:`RegistrationConfig`):

1. 1/32 resolution, translation only, global NCC on a smoothed volume whose empty voxels
   count as black, from three starts (the given one and +-4 mm along the plane normal, the
   direction one frame constrains least); the lowest cost wins;
2. 1/16, 6 DoF, same metric;
3. 1/8 (about 0.65 mm pixels), 6 DoF, masked LNCC (7 x 7 window) on the voxels that hold
   data.

A frame whose final LNCC is below its start keeps its start (a diverged search is never
returned). The Jacobian is analytic: the volume gradient (precomputed, sampled with the
intensities in one ``grid_sample``) times the derivative of the plane points, pushed
through the local normalisation (:func:`lncc.local_normalise_jvp`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from SurgicalReg2D3DLib.optimize import levenberg_marquardt
from SurgicalReg2D3DLib.progress import check_cancel, report

from .lncc import local_normalise, local_normalise_jvp, masked_lncc
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
    #: True: fan pixels outside the volume keep a residual (no gain from leaving the
    #: volume); False: the residual covers the overlap only.
    penalise_lost_overlap: bool = True
    #: LM stops a level when an accepted step lowers the cost by less than this fraction.
    tol_cost: float = 1e-3
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
    t = t.float()
    if not torch.isfinite(t).all():
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


def _twist_exp(x: torch.Tensor) -> torch.Tensor:
    """``(B, 6)`` twists ``(omega, v)`` -> ``(B, 4, 4)`` = ``expm(hat(x))``.

    Same result as ``SurgicalReg2D3DLib.poses.se3_exp`` (checked in the tests), via
    ``torch.linalg.matrix_exp``: cheaper in this hot loop (no input checks).
    """
    hat = torch.zeros(x.shape[0], 4, 4, dtype=x.dtype, device=x.device)
    wx, wy, wz = x[:, 0], x[:, 1], x[:, 2]
    hat[:, 0, 1], hat[:, 0, 2], hat[:, 1, 2] = -wz, wy, -wx
    hat[:, 1, 0], hat[:, 2, 0], hat[:, 2, 1] = wz, -wy, wx
    hat[:, :3, 3] = x[:, 3:]
    return torch.linalg.matrix_exp(hat)


def _translation(c: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` -> ``(B, 4, 4)`` pure translations."""
    T = torch.eye(4, dtype=c.dtype, device=c.device).repeat(c.shape[0], 1, 1)
    T[:, :3, 3] = c
    return T


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
        offset = np.eye(4)
        offset[:2, 3] = [c0, r0]
        self._offset = torch.as_tensor(offset, device=self.device)
        mask = vol_np > 0 if volume_mask is None else np.asarray(volume_mask, dtype=bool)
        self._volumes: Dict[float, PreparedVolume] = {}
        for level in self.config.levels:
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
        self._fans = {}
        for level in self.config.levels:
            self._fan_level(level.step)
        # Fan centre in image pixels (rotation centre of the increments).
        rows, cols = np.nonzero(fan)
        self.fan_centre_px = np.array([cols.mean(), rows.mean(), 0.0, 1.0])
        self._centre_c = self.fan_centre_px - np.array([c0, r0, 0.0, 0.0])
        ref = next(iter(self._volumes.values()))
        self._check_fov(ref)

    # ------------------------------------------------------------------ helpers
    def _fan_level(self, step: int) -> torch.Tensor:
        if step not in self._fans:
            f = downsample_frame(torch.as_tensor(self._fan_c.astype(np.float32)), step)
            self._fans[step] = (f > 0.999).to(self.device)
        return self._fans[step]

    def _check_fov(self, vol: PreparedVolume) -> None:
        """Reject a frame plane far larger than the volume (nothing sensible to match)."""
        self._vol_extent = float(np.linalg.norm(np.ptp(vol.bounds_reference(), axis=0)))

    def frame_extent_mm(self, image_to_reference: np.ndarray) -> float:
        rows, cols = np.nonzero(self.fan)
        corners = np.array([[cols.min(), rows.min(), 0, 1], [cols.max(), rows.max(), 0, 1]],
                           dtype=float)
        pts = corners @ np.asarray(image_to_reference, dtype=float).T
        return float(np.linalg.norm(pts[1, :3] - pts[0, :3]))

    def _to_cropped(self, image_to_reference: torch.Tensor) -> torch.Tensor:
        """Full-frame ``image_to_reference`` -> the cropped-frame one."""
        return image_to_reference @ self._offset.to(image_to_reference.dtype)

    def _centre_reference(self, image_to_reference_c: torch.Tensor) -> torch.Tensor:
        """Fan centre in reference mm for cropped-frame poses ``(B, 4, 4)``."""
        c = torch.as_tensor(self._centre_c, dtype=image_to_reference_c.dtype,
                            device=image_to_reference_c.device)
        return (image_to_reference_c @ c)[..., :3]

    def overlap(self, image_to_reference, step: int = 8) -> np.ndarray:
        """Fraction ``(B,)`` of the (downsampled) fan inside the volume's data."""
        vol = next(iter(self._volumes.values()))
        poses = _poses_tensor(image_to_reference, "image_to_reference",
                              np.shape(image_to_reference)[0] if np.ndim(image_to_reference) == 3
                              else 1).to(self.device)
        poses = self._to_cropped(poses).float()
        _, inside = slice_volume(vol, poses, self._shape, step=step, channels=2)
        fan = self._fan_level(step)
        return ((inside & fan).sum(dim=(1, 2)).float() / fan.sum().float()).cpu().numpy()

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
        if window <= 0:
            return masked_lncc(fd, vals[:, 0], mask, 0).cpu().numpy()
        return masked_lncc(fd, vals[:, 0], mask, window).cpu().numpy()

    # ------------------------------------------------------------------ registration
    def validate_starts(self, starts: torch.Tensor, indices: Sequence[int]) -> np.ndarray:
        ext = self.frame_extent_mm(starts[0].cpu().numpy())
        if ext > 2.0 * self._vol_extent:
            raise GeometryError(
                f"US frame: field of view ({ext:.0f} mm across the fan) is larger than twice "
                f"the volume's extent ({self._vol_extent:.0f} mm); check the calibration "
                "units (mm per pixel)")
        ov = self.overlap(starts.cpu().numpy())
        bad = [(int(i), float(o)) for i, o in zip(indices, ov) if o < self.config.min_overlap]
        if bad:
            i, o = bad[0]
            raise GeometryError(
                f"US frame {i}: no overlap with the volume at the start pose ({100 * o:.0f}% "
                f"of the fan inside the volume's data, need {100 * self.config.min_overlap:.0f}%)"
                f"; {len(bad)} frame(s) affected")
        return ov

    def register(self, frames, starts, init_corrections=None, indices=None,
                 progress=None, cancel=None) -> List[FrameResult]:
        """Refine ``starts`` ``(B, 4, 4)`` for ``frames`` ``(B, H, W)``, all in one batch.

        ``init_corrections`` ``(B, 4, 4)`` (default identity) are applied before refining.
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
        overlap0 = self.validate_starts(init_poses, indices)
        first = self.config.levels[-1]
        lncc_start = self.similarity(f, init_poses, first.step, first.window)
        corr = corr0.clone()
        f_c = f[(slice(None),) + self._crop]
        starts_c = self._to_cropped(starts_t)
        history: List[List[float]] = [[] for _ in range(B)]
        total_iter = 0
        n_levels = len(self.config.levels)
        for li, level in enumerate(self.config.levels):
            check_cancel(cancel, "US registration")
            if li == 0 and self.config.normal_starts:
                corr, res = self._multi_start_level(f_c, starts_c, corr, level, cancel)
            else:
                corr, res = self._refine_level(f_c, starts_c, corr, level, cancel)
            total_iter += res.iterations
            for b in range(B):
                history[b].extend(float(c) for c in res.history[:, b])
            report(progress, (li + 1) / n_levels, f"US registration level {li + 1}/{n_levels}")
        final = corr @ starts_t
        lncc_final = self.similarity(f, final, first.step, first.window)
        # Safety: a frame whose similarity got worse (a diverged search) keeps its start.
        worse = torch.as_tensor(lncc_final < lncc_start, device=self.device)
        if bool(worse.any()):
            corr = torch.where(worse[:, None, None], corr0, corr)
            final = corr @ starts_t
            lncc_final = np.where(lncc_final < lncc_start, lncc_start, lncc_final)
        seconds = (time.perf_counter() - t0) / B
        out = []
        for b in range(B):
            out.append(FrameResult(
                start_image_to_reference=starts_t[b].cpu().numpy(),
                image_to_reference=final[b].cpu().numpy(),
                correction=corr[b].cpu().numpy(),
                lncc_start=float(lncc_start[b]), lncc=float(lncc_final[b]),
                overlap=float(overlap0[b]), iterations=total_iter, seconds=seconds,
                history=history[b]))
        return out

    def _multi_start_level(self, frames, starts, corr0, level: Level, cancel):
        """First level from several starts shifted along the plane normal (the direction
        the frame content constrains least); each frame keeps its lowest-cost result."""
        offsets = [0.0] + [o for d in self.config.normal_starts for o in (d, -d)]
        S, B = len(offsets), frames.shape[0]
        base = corr0 @ starts
        normal = torch.linalg.cross(base[:, :3, 0], base[:, :3, 1])
        normal = normal / normal.norm(dim=-1, keepdim=True)
        shifted = []
        for o in offsets:
            shifted.append(_translation(o * normal) @ corr0)
        corr_all = torch.cat(shifted)  # (S * B, 4, 4), start-major
        corr, res = self._refine_level(frames.repeat(S, 1, 1), starts.repeat(S, 1, 1),
                                       corr_all, level, cancel)
        cost = res.cost.view(S, B)
        best = cost.argmin(dim=0)  # (B,)
        pick = best * B + torch.arange(B, device=best.device)
        res.cost = res.cost[pick]
        res.history = res.history[:, pick]
        res.x = res.x[pick]
        return corr[pick], res

    def _refine_level(self, frames: torch.Tensor, starts: torch.Tensor, corr0: torch.Tensor,
                      level: Level, cancel):
        vol = self._volumes[level.sigma_vox]
        dtype = torch.float32
        fd = downsample_frame(frames, level.step)  # (B, h, w)
        fan = self._fan_level(level.step)
        B, h, w = fd.shape
        base = (corr0 @ starts)  # (B, 4, 4) float64
        centre = self._centre_reference(base)  # (B, 3)
        Tc = _translation(centre)
        Tc_inv = _translation(-centre)
        pix = plane_pixels(self._shape, level.step, device=self.device, dtype=dtype)
        cache: List[Tuple[torch.Tensor, torch.Tensor]] = []
        fan_f = fan.to(dtype).expand(B, h, w)
        n_fan = fan_f.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
        nf = local_normalise(fd, fan_f, level.window)

        def poses_of(x: torch.Tensor) -> torch.Tensor:
            return Tc @ _twist_exp(x) @ Tc_inv @ base

        def evaluate(x: torch.Tensor) -> torch.Tensor:
            poses = poses_of(x)
            vals, inside = slice_volume(vol, poses.to(dtype), self._shape, step=level.step,
                                        slab_mm=self.config.slab_mm,
                                        slab_samples=self.config.slab_samples,
                                        use_data_mask=level.data_mask)
            mask = (inside & fan).to(dtype)
            s = vals[:, 0]
            grad = vals[:, 2:5].permute(0, 2, 3, 1)  # (B, h, w, 3) d s / d p_reference
            pts = torch.einsum("bij,hwj->bhwi", poses[:, :3, :].to(dtype), pix)
            q = pts - centre.to(dtype)[:, None, None, :]
            # d p / d(omega, v) = [-[q]x, I]  =>  d s / d omega = q x g, d s / d v = g.
            js = torch.cat([torch.linalg.cross(q, grad, dim=-1), grad], dim=-1)  # (B,h,w,6)
            # Fixed pixel set (the fan) and fixed normalisation: fan pixels outside the
            # overlap keep their residual n_f (as if uncorrelated), so the optimiser gains
            # nothing by sliding the frame out of the volume.
            ns = local_normalise(s, mask, level.window)
            if self.config.penalise_lost_overlap:
                n = n_fan
                r = ((nf - ns) * fan_f / torch.sqrt(n)).reshape(B, -1)
            else:
                n = mask.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
                r = ((local_normalise(fd, mask, level.window) - ns) / torch.sqrt(n)).reshape(B, -1)
            # The Jacobian is only needed where LM accepts the step: keep what it needs.
            cache.append((x.detach().clone(), (s, js, mask, n)))
            del cache[:-3]
            return r.double()

        def jacobian_of(saved) -> torch.Tensor:
            s, js, mask, n = saved
            _, jn = local_normalise_jvp(s, js.permute(0, 3, 1, 2), mask, level.window)
            J = (-jn.permute(0, 2, 3, 1) / torch.sqrt(n)[..., None]).reshape(B, -1, 6)
            if not level.rotations:
                J = torch.cat([torch.zeros_like(J[..., :3]), J[..., 3:]], dim=-1)
            return J

        def jacobian(x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(B, h * w, 6, dtype=torch.float64, device=x.device)
            todo = torch.ones(B, dtype=torch.bool, device=x.device)
            for xc, saved in reversed(cache):
                hit = todo & (xc == x).all(dim=1)
                if bool(hit.any()):
                    out[hit] = jacobian_of(saved)[hit].double()
                todo &= ~hit
            if bool(todo.any()):
                evaluate(x)
                out[todo] = jacobian_of(cache[-1][1])[todo].double()
            return out

        x0 = torch.zeros(B, 6, dtype=torch.float64, device=self.device)
        res = levenberg_marquardt(evaluate, x0, max_iter=level.max_iter,
                                  lambda_init=self.config.lambda_init, lambda_up=4.0,
                                  lambda_down=0.3, tol_step=self.config.tol_step,
                                  tol_cost=self.config.tol_cost,
                                  jacobian=jacobian, cancel=cancel)
        corr = Tc @ _twist_exp(res.x) @ Tc_inv @ corr0
        return corr, res


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
