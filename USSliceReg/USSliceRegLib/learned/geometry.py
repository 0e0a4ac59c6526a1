"""Frames and sampling grids of the learned method (DeepRS2V).

``fan`` frame (of one pose): origin at the fan centre of the frame (reference mm), x along
the image columns, y along the image rows (orthogonalised), z = x cross y, unit axes, mm.
``fan_to_reference`` (``F``) is built from an ``image_to_reference`` (which may carry the
pixel scale, or a shear) by :func:`fan_to_reference`; ``image_to_fan = inv(F) @
image_to_reference`` maps pixels ``(col, row, 0, 1)`` into the plane ``z ~ 0``.

The network sees, on a :class:`GridSpec` (a cube of side ``side_mm`` centred on the fan
centre of the *start* pose):

* the frame resampled on the plane ``z = 0`` at ``n2 x n2`` points (rows = y, columns = x);
* the volume resampled on ``n3^3`` points of the cube at the start pose, array order
  ``(z, y, x)`` (the volume as the probe believes it sees it).

The correction it predicts, ``D = start_fan_to_true_fan`` (a rigid 4x4 in the start's fan
frame), is composed on the right of the start's fan frame: ``F_true = F_start @ D``, so
``image_to_reference = F_start @ D @ inv(F_start) @ start_image_to_reference`` and the
left correction (``tracked_reference_to_reference``, as :mod:`..register` reports) is
``F_start @ D @ inv(F_start)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from SurgicalReg2D3DLib.errors import GeometryError, InputError


@dataclass(frozen=True)
class GridSpec:
    """The network's sampling grids: cube side (mm), frame plane points per side, volume
    cube points per side."""

    side_mm: float = 64.0
    n2: int = 64
    n3: int = 32

    def to_dict(self) -> dict:
        return {"side_mm": float(self.side_mm), "n2": int(self.n2), "n3": int(self.n3)}

    @classmethod
    def from_dict(cls, d: dict) -> "GridSpec":
        return cls(float(d["side_mm"]), int(d["n2"]), int(d["n3"]))

    def axis(self, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """Cell centres ``(n,)`` in mm along one axis, centred on 0."""
        s = float(self.side_mm)
        return (torch.arange(n, device=device, dtype=dtype) + 0.5) * (s / n) - s / 2


def fan_to_reference(image_to_reference, centre_px) -> np.ndarray:
    """``F`` ``(B, 4, 4)`` (or ``(4, 4)``) float64: the fan frame of each pose (see the
    module docstring). Raises :class:`GeometryError` for degenerate image axes."""
    A = np.asarray(image_to_reference, dtype=np.float64)
    single = A.ndim == 2
    A = A.reshape(-1, 4, 4)
    c = A @ np.asarray(centre_px, dtype=np.float64)
    u = A[:, :3, 0]
    v = A[:, :3, 1]
    nu = np.linalg.norm(u, axis=1, keepdims=True)
    if (nu < 1e-12).any():
        raise GeometryError("image_to_reference: zero column axis")
    u = u / nu
    v = v - (v * u).sum(1, keepdims=True) * u
    nv = np.linalg.norm(v, axis=1, keepdims=True)
    if (nv < 1e-12).any():
        raise GeometryError("image_to_reference: column and row axes are parallel")
    v = v / nv
    n = np.cross(u, v)
    out = np.zeros_like(A)
    out[:, :3, 0], out[:, :3, 1], out[:, :3, 2] = u, v, n
    out[:, :3, 3] = c[:, :3]
    out[:, 3, 3] = 1.0
    return out[0] if single else out


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4s ``(..., 4, 4)`` (float64)."""
    T = np.asarray(T, dtype=np.float64)
    out = np.zeros_like(T)
    Rt = np.swapaxes(T[..., :3, :3], -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def plane_points(grid: GridSpec, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n2, n2, 4)`` homogeneous fan-frame points of the plane ``z = 0`` (rows = y)."""
    a = grid.axis(grid.n2, device, dtype)
    yy, xx = torch.meshgrid(a, a, indexing="ij")
    return torch.stack([xx, yy, torch.zeros_like(xx), torch.ones_like(xx)], dim=-1)


def cube_points(grid: GridSpec, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n3, n3, n3, 4)`` homogeneous fan-frame points of the cube, order ``(z, y, x)``."""
    a = grid.axis(grid.n3, device, dtype)
    zz, yy, xx = torch.meshgrid(a, a, a, indexing="ij")
    return torch.stack([xx, yy, zz, torch.ones_like(xx)], dim=-1)


class VolumeSampler:
    """A volume ``(K, J, I)`` and its data mask on a device, sampled at fan-frame points.

    ``sample(fan_to_reference (B, 4, 4) tensor, points (..., 4))`` returns
    ``(intensity, mask)`` each ``(B, ...)`` (trilinear; mask 0 outside the grid),
    differentiable with respect to the poses.
    """

    def __init__(self, array, ijk_to_reference, volume_mask=None, device=None):
        vol = np.asarray(array, dtype=np.float32)
        if vol.ndim != 3 or min(vol.shape) < 2:
            raise InputError(f"US volume: expected a 3D volume (K, J, I), got shape {vol.shape}")
        if not np.isfinite(vol).all():
            raise InputError("US volume: contains NaN or inf values")
        mask = vol > 0 if volume_mask is None else np.asarray(volume_mask, dtype=bool)
        if mask.shape != vol.shape:
            raise InputError(f"US volume mask: shape {mask.shape} differs from the volume's "
                             f"{vol.shape}")
        if not mask.any():
            raise InputError("US volume: no voxel holds data (all zero or masked)")
        m = np.asarray(ijk_to_reference, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise GeometryError("US volume: ijk_to_reference must be a finite, invertible 4x4")
        self.device = torch.device(device or "cpu")
        data = vol[mask]
        self.mean, self.std = float(data.mean()), float(data.std() + 1e-6)
        norm = np.where(mask, (vol - self.mean) / self.std, 0.0).astype(np.float32)
        self.data = torch.as_tensor(np.stack([norm, mask.astype(np.float32)]))[None] \
            .to(self.device).contiguous(memory_format=torch.channels_last_3d)
        K, J, I = vol.shape
        size = np.array([I - 1, J - 1, K - 1], dtype=np.float64)
        to_grid = (2.0 / size)[:, None] * np.linalg.inv(m)[:3, :]
        to_grid[:, 3] -= 1.0
        self.reference_to_grid = torch.as_tensor(to_grid, dtype=torch.float32,
                                                 device=self.device)
        self.reference_to_ijk = np.linalg.inv(m)[:3, :]
        self.shape = vol.shape

    def _compiled(self, fan_to_ref: torch.Tensor, points: torch.Tensor) -> bool:
        """Whether :meth:`sample` can use the compiled CPU kernel (inference on the CPU:
        no gradient wanted; ``grid_sample``'s 3D CPU kernel costs ~60 ns per point)."""
        from .. import kernels  # noqa: PLC0415

        return (kernels.AVAILABLE and self.device.type == "cpu"
                and not (torch.is_grad_enabled() and (fan_to_ref.requires_grad
                                                      or points.requires_grad)))

    def sample(self, fan_to_ref: torch.Tensor, points: torch.Tensor):
        B = fan_to_ref.shape[0]
        if self._compiled(fan_to_ref, points):
            from .. import kernels  # noqa: PLC0415

            # data (1, 2, K, J, I) is stored channels-last: a (K, J, I, 2) view
            vol = np.ascontiguousarray(self.data[0].permute(1, 2, 3, 0).numpy())
            pts = points.reshape(-1, 4)[:, :3].detach().cpu().numpy().astype(np.float64)
            F_np = fan_to_ref.detach().cpu().numpy().astype(np.float64).reshape(B, 4, 4)
            vals = [kernels.sample_xyz2(vol, self.reference_to_ijk @ F_np[b], pts)
                    for b in range(B)]  # each (2, N)
            out = torch.from_numpy(np.stack(vals, axis=1)).reshape(2, B, *points.shape[:-1])
            return out[0], out[1]
        G = self.reference_to_grid @ fan_to_ref.to(self.device, torch.float32)  # (B, 3, 4)
        shp = points.shape[:-1]
        p = points.reshape(-1, 4).to(self.device, torch.float32)
        # (B, N, 3); matmuls, faster than einsum; one pose: a plain 2D product (~0.4 ms less)
        g = (p @ G[0].T)[None] if B == 1 else torch.matmul(p, G.transpose(1, 2))
        out = F.grid_sample(self.data, g.reshape(1, B, -1, 1, 3), mode="bilinear",
                            padding_mode="zeros", align_corners=True)  # (1, 2, B, N, 1)
        out = out[0, :, :, :, 0].reshape(2, B, *shp)
        return out[0], out[1]


def frame_grid_pixels(image_to_fan: np.ndarray, grid: GridSpec) -> np.ndarray:
    """Pixel coordinates ``(B, n2, n2, 2)`` ``(col, row)`` of the plane grid's points for
    frames whose ``image_to_fan`` ``(B, 4, 4)`` is given (the in-plane 2x2 inverted)."""
    M = np.asarray(image_to_fan, dtype=np.float64).reshape(-1, 4, 4)
    A2 = M[:, :2, :2]
    if (np.abs(np.linalg.det(A2)) < 1e-12).any():
        raise GeometryError("image_to_reference: the frame plane is degenerate")
    inv = np.linalg.inv(A2)
    a = grid.axis(grid.n2, dtype=torch.float64).numpy()
    yy, xx = np.meshgrid(a, a, indexing="ij")
    xy = np.stack([xx, yy], -1)  # (n2, n2, 2)
    rel = xy[None] - M[:, None, None, :2, 3]
    return np.einsum("bij,bhwj->bhwi", inv, rel)


class FrameResampler:
    """:func:`frames_on_grid` for one fan and one ``image_to_fan`` (a calibration: the
    same for every pose of a rigidly moved frame), with the sampling grid and the fan on
    it computed once."""

    def __init__(self, fan, image_to_fan, grid: GridSpec, device=None):
        fan = np.asarray(fan, dtype=bool)
        rows, cols = np.nonzero(fan)
        self.crop = (slice(int(rows.min()), int(rows.max()) + 1),
                     slice(int(cols.min()), int(cols.max()) + 1))
        M = np.asarray(image_to_fan, dtype=np.float64).reshape(4, 4)
        px_mm = float(np.sqrt(abs(np.linalg.det(M[:2, :2]))))
        self.step = max(1, int(grid.side_mm / grid.n2 / max(px_mm, 1e-9) / 2))
        self.key = M
        ones = np.ones((1,) + fan.shape, dtype=np.float32)
        _, self.mask = frames_on_grid(ones, fan, M[None], grid, device)
        pix = frame_grid_pixels(M[None], grid)[0] - np.array(
            [self.crop[1].start, self.crop[0].start], dtype=np.float64)
        h = (self.crop[0].stop - self.crop[0].start) // self.step
        w = (self.crop[1].stop - self.crop[1].start) // self.step
        st = self.step
        g = np.stack([((pix[..., 0] - (st - 1) / 2) / st) / max(w - 1, 1) * 2 - 1,
                      ((pix[..., 1] - (st - 1) / 2) / st) / max(h - 1, 1) * 2 - 1], -1)
        self.grid = torch.as_tensor(g[None], dtype=torch.float32, device=device)
        self.device = device

    def matches(self, image_to_fan) -> bool:
        """Same calibration (linear part within 1e-6, i.e. ~1e-3 mm over 1000 pixels;
        offset within 1e-3 mm)."""
        d = np.abs(np.asarray(image_to_fan, dtype=np.float64) - self.key)
        return bool(d[:3, :3].max() < 1e-6 and d[:3, 3].max() < 1e-3)

    def __call__(self, frames):
        """``(values (B, n2, n2), mask (B, n2, n2))`` of frames ``(B, H, W)``."""
        f = torch.as_tensor(np.ascontiguousarray(np.asarray(frames)[(slice(None),) + self.crop]))
        f = f.to(self.device, torch.float32)[:, None]
        if self.step > 1:
            f = F.avg_pool2d(f, self.step, self.step)
        B = f.shape[0]
        vals = F.grid_sample(f, self.grid.expand(B, -1, -1, -1), mode="bilinear",
                             padding_mode="zeros", align_corners=True)[:, 0]
        mask = self.mask.expand(B, -1, -1)
        return vals * mask, mask


def frames_on_grid(frames, fan, image_to_fan, grid: GridSpec, device=None):
    """Frames ``(B, H, W)`` resampled on the plane grid: ``(values (B, n2, n2), mask (B, n2,
    n2) float)``; ``mask`` is the fan (``(H, W)`` bool) sampled the same way (> 0.5).

    Frames are box-averaged first so that a pixel is about half a grid cell (no aliasing).
    """
    fan = np.asarray(fan, dtype=bool)
    rows, cols = np.nonzero(fan)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    arr = np.asarray(frames)
    arr = arr[None] if arr.ndim == 2 else arr
    # only the fan's bounding box matters (pixels are shifted by (c0, r0) below)
    f = torch.as_tensor(np.ascontiguousarray(arr[:, r0:r1, c0:c1], dtype=np.float32)).to(device)
    fan = fan[r0:r1, c0:c1]
    M = np.asarray(image_to_fan, dtype=np.float64).reshape(-1, 4, 4)
    px_mm = float(np.sqrt(abs(np.linalg.det(M[0, :2, :2]))))
    cell = grid.side_mm / grid.n2
    step = max(1, int(cell / max(px_mm, 1e-9) / 2))
    pix = frame_grid_pixels(M, grid) - np.array([c0, r0], dtype=np.float64)
    pix = torch.as_tensor(pix, dtype=torch.float32, device=f.device)
    fanf = torch.as_tensor(np.asarray(fan, dtype=np.float32), device=f.device)[None, None]
    if step > 1:
        f = F.avg_pool2d(f[:, None], step, step)[:, 0]
        fanf = F.avg_pool2d(fanf, step, step)
    h, w = f.shape[-2:]
    # pixel (col, row) of the full frame -> the pooled frame's pixel centres -> [-1, 1]
    gx = ((pix[..., 0] - (step - 1) / 2) / step) / max(w - 1, 1) * 2 - 1
    gy = ((pix[..., 1] - (step - 1) / 2) / step) / max(h - 1, 1) * 2 - 1
    g = torch.stack([gx, gy], -1)
    vals = F.grid_sample(f[:, None], g, mode="bilinear", padding_mode="zeros",
                         align_corners=True)[:, 0]
    fm = F.grid_sample(fanf.expand(g.shape[0], -1, -1, -1), g, mode="bilinear",
                       padding_mode="zeros", align_corners=True)[:, 0]
    mask = (fm > 0.5).float()
    return vals * mask, mask


def normalise_masked(x: torch.Tensor, mask: torch.Tensor, dims) -> torch.Tensor:
    """``(x - mean) / std`` over ``mask`` per item (0 outside the mask)."""
    n = mask.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mu = (x * mask).sum(dim=dims, keepdim=True) / n
    var = (((x - mu) ** 2) * mask).sum(dim=dims, keepdim=True) / n
    return (x - mu) / torch.sqrt(var + 1e-6) * mask


def volume_fingerprint(array, ijk_to_reference) -> str:
    """Hex SHA-256 of a volume: its float32 voxels, shape and ``ijk_to_reference``
    (rounded to 1e-4 mm, so a volume read back from a file matches)."""
    vol = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    h = hashlib.sha256()
    h.update(repr(tuple(int(s) for s in vol.shape)).encode())
    h.update(np.round(np.asarray(ijk_to_reference, dtype=np.float64), 4).astype(np.float64)
             .tobytes())
    h.update(vol.tobytes())
    return h.hexdigest()


def rigid_from_6d(rot6: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rigid 4x4s ``(B, 4, 4)`` from 6D rotations ``(B, 6)`` and translations ``(B, 3)``."""
    from SurgicalReg2D3DLib.poses import rotation_6d_to_matrix  # noqa: PLC0415

    R = rotation_6d_to_matrix(rot6)
    B = R.shape[0]
    T = torch.zeros(B, 4, 4, dtype=R.dtype, device=R.device)
    T[:, :3, :3] = R
    T[:, :3, 3] = t
    T[:, 3, 3] = 1.0
    return T


def volume_fingerprints(array, ijk_to_reference):
    """The fingerprints of a volume in both patient conventions: ``ijk_to_reference`` as
    given and with LPS <-> RAS flipped (``diag(-1, -1, 1)``): a volume node in Slicer (RAS)
    is the same volume as its file (LPS), and the network only sees poses relative to it."""
    m = np.asarray(ijk_to_reference, dtype=np.float64)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return [volume_fingerprint(array, m), volume_fingerprint(array, flip @ m)]
