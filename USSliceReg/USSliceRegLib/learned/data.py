"""Training samples for DeepRS2V, made per volume.

One sample = (frame on the plane grid, volume cube at the start pose, the true correction
``D = start_fan_to_true_fan``, ``F_start``). Made by :class:`SampleMaker`:

1. *True pose* ``F_true`` (a fan frame): with a tracked sweep (``base_poses``, the
   sequence's tracked ``image_to_reference`` of the frames allowed for training), a pose
   interpolated between two neighbouring tracked poses (translation linear, rotation
   slerp) plus a small jitter (``jitter_mm`` / ``jitter_deg``); without a sweep, planes
   across the volume's principal direction (the axis of largest spread of its data
   voxels is taken as the sweep direction, the plane normal), through the data centroid
   line, with the same jitter. Poses whose plane has less than ``min_coverage`` of the
   fan inside the volume's data are redrawn.
2. *Frame*: with probability ``real_fraction`` (only with real frames) one of the real
   tracked frames at its tracked pose; else the volume sliced at ``F_true`` on the plane
   grid (only the plane is sampled), in the fan mask, with augmentations: speckle-like
   multiplicative noise (smoothed Gaussian), gain (a gamma curve), depth attenuation
   ``exp(-a * depth)`` with ``a`` of either sign (time-gain compensation), additive noise.
3. *Start*: ``F_start = P @ F_true`` with ``P`` a rigid motion about the fan centre,
   rotation angle uniform in ``[0, max_deg]`` about a random axis and translation length
   uniform in ``[0, max_mm]`` in a random direction (the range recorded in the model).
4. *Cube*: the volume resampled on the grid's cube at ``F_start``.

Frames and cubes are normalised per item on their masks (mean 0, std 1).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from SurgicalReg2D3DLib.errors import InputError

from .geometry import (GridSpec, VolumeSampler, cube_points, fan_to_reference,
                       frames_on_grid, invert_rigid, normalise_masked, plane_points)


def random_rigid(n: int, max_mm: float, max_deg: float, rng: np.random.Generator,
                 min_mm: float = 0.0, min_deg: float = 0.0) -> np.ndarray:
    """``(n, 4, 4)`` rigid motions about the origin: rotation angle uniform in
    ``[min_deg, max_deg]`` about a random axis, translation length uniform in
    ``[min_mm, max_mm]`` along a random direction."""
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    ang = np.radians(rng.uniform(min_deg, max_deg, size=(n, 1)))
    dist = rng.uniform(min_mm, max_mm, size=(n, 1))
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = Rotation.from_rotvec(axes * ang).as_matrix()
    T[:, :3, 3] = dirs * dist
    return T


def perturb_fan(F_true: np.ndarray, P_local: np.ndarray) -> np.ndarray:
    """``F_start = P @ F_true`` for a motion ``P_local`` given about the fan centre in
    reference axes (rotation about the centre, then translation)."""
    c = F_true[:, :3, 3]
    P = P_local.copy()
    R = P[:, :3, :3]
    P[:, :3, 3] = c - (R @ c[:, :, None])[:, :, 0] + P_local[:, :3, 3]
    return P @ F_true


def _slerp_frames(Fa: np.ndarray, Fb: np.ndarray, s: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    Rrel = Rotation.from_matrix(np.swapaxes(Fa[:, :3, :3], 1, 2) @ Fb[:, :3, :3])
    R = Fa[:, :3, :3] @ Rotation.from_rotvec(Rrel.as_rotvec() * s[:, None]).as_matrix()
    out = np.tile(np.eye(4), (len(s), 1, 1))
    out[:, :3, :3] = R
    out[:, :3, 3] = (1 - s[:, None]) * Fa[:, :3, 3] + s[:, None] * Fb[:, :3, 3]
    return out


class SampleMaker:
    """Makes training batches for one volume (see the module docstring).

    ``fan`` ``(H, W)`` bool and ``image_to_fan`` (a 4x4 from a tracked pose) define the fan
    on the plane grid; ``base_poses`` ``(N, 4, 4)`` tracked ``image_to_reference`` (or
    ``None``); ``real_frames`` ``(N, H, W)`` the frames at those poses (or ``None``).
    """

    def __init__(self, sampler: VolumeSampler, grid: GridSpec, fan_grid: torch.Tensor,
                 base_fans: Optional[np.ndarray], real_frames_grid=None,
                 max_mm: float = 20.0, max_deg: float = 20.0, jitter_mm: float = 2.0,
                 jitter_deg: float = 3.0, real_fraction: float = 0.3,
                 min_coverage: float = 0.5, principal=None):
        if max_mm < 0 or max_deg < 0 or max_deg > 90:
            raise InputError(f"training range: need 0 <= max_mm and 0 <= max_deg <= 90, got "
                             f"{max_mm}, {max_deg}")
        self.sampler, self.grid = sampler, grid
        self.device = sampler.device
        self.fan_grid = fan_grid.to(self.device)
        self.base = base_fans
        self.real = real_frames_grid  # (values (N, n2, n2), masks (N, n2, n2)) or None
        self.max_mm, self.max_deg = float(max_mm), float(max_deg)
        self.jitter_mm, self.jitter_deg = float(jitter_mm), float(jitter_deg)
        self.real_fraction = float(real_fraction) if self.real is not None else 0.0
        self.min_coverage = float(min_coverage)
        self.principal = principal
        self.plane = plane_points(grid, self.device)
        self.cube = cube_points(grid, self.device)
        a = grid.axis(grid.n2, self.device)
        self.depth = (a - a[0])[:, None].expand(grid.n2, grid.n2)  # mm below the grid top

    # ------------------------------------------------------------------ poses
    def _true_poses(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.base is not None and len(self.base) > 1:
            i = rng.integers(0, len(self.base) - 1, size=n)
            s = rng.uniform(0, 1, size=n)
            Ft = _slerp_frames(self.base[i], self.base[i + 1], s)
        elif self.base is not None:
            Ft = np.repeat(self.base, n, axis=0)
        else:
            axes, centre, lo, hi = self.principal
            Ft = np.tile(np.eye(4), (n, 1, 1))
            Ft[:, :3, :3] = axes
            Ft[:, :3, 3] = centre + rng.uniform(lo, hi, size=(n, 1)) * axes[:, 2]
        return perturb_fan(Ft, random_rigid(n, self.jitter_mm, self.jitter_deg, rng))

    def _coverage(self, Ft: np.ndarray) -> np.ndarray:
        _, data = self.sampler.sample(torch.as_tensor(Ft, dtype=torch.float32), self.plane)
        m = self.fan_grid[None]
        return ((data > 0.5).float() * m).sum((1, 2)).cpu().numpy() / float(m.sum())

    # ------------------------------------------------------------------ batches
    @torch.no_grad()
    def batch(self, n: int, rng: np.random.Generator, min_mm: float = 0.0,
              min_deg: float = 0.0) -> dict:
        """A batch of ``n`` samples: ``frame (n, 2, n2, n2)``, ``cube (n, 2, n3, n3, n3)``,
        ``D (n, 4, 4)``, ``F_start (n, 4, 4)``, ``frame_norm``, ``frame_mask``
        ``(n, n2, n2)`` (tensors on the sampler's device, float32)."""
        n_real = int(rng.binomial(n, self.real_fraction)) if self.real_fraction > 0 else 0
        Ft_list, fr_list, fm_list = [], [], []
        if n_real:
            idx = rng.integers(0, len(self.base), size=n_real)
            Ft_list.append(self.base[idx])
            fr_list.append(self.real[0][idx])
            fm_list.append(self.real[1][idx])
        need = n - n_real
        tries = 0
        while need > 0:
            cand = self._true_poses(max(2 * need, 4), rng)
            ok = cand[self._coverage(cand) >= self.min_coverage][:need]
            if len(ok):
                Ft_list.append(ok)
                vals, frm = self._synthetic_frames(ok, rng)
                fr_list.append(vals)
                fm_list.append(frm)
                need -= len(ok)
            tries += 1
            if tries > 50:
                raise InputError("US volume: no plausible probe pose has the fan inside the "
                                 "volume's data (wrong sweep, calibration or volume?)")
        Ft = np.concatenate(Ft_list)
        frames = torch.cat([torch.as_tensor(x).to(self.device) for x in fr_list])
        fmask = torch.cat([torch.as_tensor(x).to(self.device) for x in fm_list])
        Fs = perturb_fan(Ft, random_rigid(n, self.max_mm, self.max_deg, rng, min_mm, min_deg))
        D = invert_rigid(Fs) @ Ft
        out = self.inputs(frames, fmask, Fs)
        out["D"] = torch.as_tensor(D, dtype=torch.float32, device=self.device)
        return out

    def inputs(self, frames: torch.Tensor, fmask: torch.Tensor, Fs: np.ndarray) -> dict:
        """Network inputs for frames on the plane grid and start fan frames."""
        Fs_t = torch.as_tensor(Fs, dtype=torch.float32, device=self.device)
        fn = normalise_masked(frames.float(), fmask.float(), (1, 2))
        vals, data = self.sampler.sample(Fs_t, self.cube)
        dm = (data > 0.5).float()
        vn = normalise_masked(vals * dm, dm, (1, 2, 3))
        return {"frame": torch.stack([fn, fmask.float()], 1),
                "cube": torch.stack([vn, dm], 1), "F_start": Fs_t,
                "frame_norm": fn, "frame_mask": fmask.float()}

    def _synthetic_frames(self, Ft: np.ndarray, rng: np.random.Generator):
        n = len(Ft)
        vals, data = self.sampler.sample(torch.as_tensor(Ft, dtype=torch.float32), self.plane)
        mask = (data > 0.5).float() * self.fan_grid[None]
        x = vals * self.sampler.std + self.sampler.mean  # back to intensities
        x = x.clamp_min(0.0) / max(self.sampler.mean + 2 * self.sampler.std, 1e-6)
        g = torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2 ** 31 - 1)))
        dev = x.device
        def u(lo, hi):  # noqa: E306
            return torch.as_tensor(rng.uniform(lo, hi, size=(n, 1, 1)), dtype=torch.float32,
                                   device=dev)
        # speckle-like multiplicative noise, correlated over ~1 grid cell
        noise = torch.randn(n, 1, *x.shape[1:], generator=g).to(dev)
        noise = F.avg_pool2d(noise, 3, 1, 1)[:, 0] * 3.0
        x = x * (1 + u(0.0, 0.5) * noise).clamp_min(0.0)
        x = x.clamp_min(0.0) ** u(0.7, 1.4)  # gain curve
        x = x * torch.exp(-u(-0.015, 0.03) * self.depth[None])  # depth attenuation / TGC
        x = x + u(0.0, 0.05) * torch.randn(x.shape, generator=g).to(dev)
        return (x * mask).cpu(), mask.cpu()


def principal_planes(sampler_array_mask, ijk_to_reference):
    """Fallback plausible poses without a sweep: ``(axes (3, 3), centre (3,), lo, hi)``.

    The plane normal is the axis of largest spread of the data voxels (taken as the sweep
    direction), the in-plane axes the other two; centres range over the 10th..90th
    percentile along the normal."""
    mask = np.asarray(sampler_array_mask, dtype=bool)
    k, j, i = np.nonzero(mask)
    step = max(1, len(i) // 20000)
    ijk = np.stack([i[::step], j[::step], k[::step], np.ones_like(i[::step])], 1).astype(float)
    pts = (ijk @ np.asarray(ijk_to_reference, dtype=float).T)[:, :3]
    centre = pts.mean(0)
    w, V = np.linalg.eigh(np.cov((pts - centre).T))
    normal, a2, a3 = V[:, 2], V[:, 1], V[:, 0]
    axes = np.stack([a2, a3, np.cross(a2, a3)], 1)
    if np.dot(axes[:, 2], normal) < 0:
        axes[:, 1] *= -1
        axes[:, 2] *= -1
    s = (pts - centre) @ axes[:, 2]
    return axes, centre, float(np.percentile(s, 10)), float(np.percentile(s, 90))


def base_fans_from_poses(poses, centre_px) -> Optional[np.ndarray]:
    if poses is None:
        return None
    return fan_to_reference(np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4), centre_px)


def real_frames_on_grid(frames, poses, fan, centre_px, grid: GridSpec, device=None):
    """Real frames at their tracked poses on the plane grid: ``(values, masks)`` on CPU."""
    Fs = fan_to_reference(poses, centre_px)
    M = invert_rigid(Fs) @ np.asarray(poses, dtype=np.float64)
    vals, masks = [], []
    for a in range(0, len(frames), 8):
        v, m = frames_on_grid(frames[a:a + 8], fan, M[a:a + 8], grid, device)
        vals.append(v.cpu())
        masks.append(m.cpu())
    return torch.cat(vals), torch.cat(masks)
