"""Differentiable resampling of a 3D volume on the plane of a 2D ultrasound frame.

Only the frame's own points are sampled (``grid_sample`` at plane coordinates mapped to the
volume's voxel coordinates), never a whole transformed volume, so a slice costs
``O(B * h * w)`` whatever the volume size.

Frames (see docs/architecture.md and :mod:`plus_io`):
``image``     frame pixel ``(col, row, 0, 1)``; a frame downsampled by ``step`` is sampled
              at the centres of its ``step x step`` blocks, ``col = step * c + (step-1)/2``.
``reference`` the volume's millimetre frame; ``ijk_to_reference`` maps voxel indices
              ``(i, j, k)`` of the array ``[k, j, i]`` to it.

Everything is torch, batched over frames ``B``, on the device of the prepared volume, and
differentiable with respect to ``image_to_reference`` (autograd through ``grid_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from SurgicalReg2D3DLib.errors import GeometryError, InputError


@dataclass
class PreparedVolume:
    """A volume ready for slicing.

    ``data``: ``(1, C, K, J, I)`` with channels ``[intensity, data_mask]`` and, when
    prepared ``with_gradient``, ``[d/dx, d/dy, d/dz]`` of the intensity in reference
    millimetres; ``reference_to_ijk``: ``(4, 4)``; ``shape``: ``(K, J, I)``.
    """

    data: torch.Tensor
    reference_to_ijk: torch.Tensor
    ijk_to_reference: torch.Tensor
    shape: Tuple[int, int, int]
    has_gradient: bool

    @property
    def device(self) -> torch.device:
        return self.data.device

    def bounds_reference(self) -> np.ndarray:
        """``(8, 3)`` corners of the voxel grid in reference mm."""
        k, j, i = self.shape
        corners = np.array([[a, b, c, 1.0] for a in (0, i - 1) for b in (0, j - 1)
                            for c in (0, k - 1)])
        return (corners @ self.ijk_to_reference.cpu().double().numpy().T)[:, :3]


def prepare_volume(array, ijk_to_reference, volume_mask=None, with_gradient: bool = False,
                   device=None, dtype=torch.float32) -> PreparedVolume:
    """Put a volume ``(K, J, I)`` on ``device`` for :func:`slice_volume`.

    ``volume_mask`` ``(K, J, I)`` marks voxels that hold data (default: intensity > 0, as a
    reconstructed ultrasound volume is 0 where no frame passed). Raises
    :class:`InputError` for a volume that is not 3D (a 2D image, or a single slice), empty or
    with NaN, and :class:`GeometryError` for a singular ``ijk_to_reference``. The input
    array is not modified.
    """
    if isinstance(array, torch.Tensor):
        vol = array.detach()
        device = device or vol.device
    else:
        vol = torch.as_tensor(np.asarray(array))
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise InputError(f"US volume: expected a 3D volume (K, J, I) with at least 2 voxels "
                         f"per axis, got shape {tuple(vol.shape)}")
    vol = vol.to(device=device, dtype=dtype)
    if not torch.isfinite(vol).all():
        raise InputError("US volume: contains NaN or inf values")
    m = torch.as_tensor(np.asarray(ijk_to_reference, dtype=np.float64)
                        if not isinstance(ijk_to_reference, torch.Tensor)
                        else ijk_to_reference.detach().double().cpu())
    if m.shape != (4, 4) or not torch.isfinite(m).all():
        raise GeometryError(f"US volume: ijk_to_reference must be a finite 4x4, got shape "
                            f"{tuple(m.shape)}")
    if abs(float(torch.linalg.det(m[:3, :3]))) < 1e-12:
        raise GeometryError("US volume: ijk_to_reference is singular (zero spacing?)")
    if volume_mask is None:
        mask = (vol > 0).to(dtype)
    else:
        mask = torch.as_tensor(np.asarray(volume_mask)).to(device=vol.device, dtype=dtype)
        if mask.shape != vol.shape:
            raise InputError(f"US volume mask: shape {tuple(mask.shape)} differs from the "
                             f"volume's {tuple(vol.shape)}")
    if float(mask.sum()) == 0:
        raise InputError("US volume: no voxel holds data (all zero or masked)")
    channels = [vol, mask]
    reference_to_ijk = torch.linalg.inv(m)
    if with_gradient:
        # Central differences in voxel units, then chain rule to reference mm:
        # d/dp V(A p + b) = A^T grad_ijk V.
        gk, gj, gi = torch.gradient(vol)
        grad_ijk = torch.stack([gi, gj, gk], dim=-1)  # (K, J, I, 3) in (i, j, k) order
        a = reference_to_ijk[:3, :3].to(device=vol.device, dtype=dtype)
        grad_ref = grad_ijk @ a  # row vector g^T A  ==  (A^T g)^T
        channels += [grad_ref[..., 0], grad_ref[..., 1], grad_ref[..., 2]]
    data = torch.stack(channels)[None]
    # Channels-last layout: grid_sample reads all channels of a voxel at once (2x faster).
    data = data.contiguous(memory_format=torch.channels_last_3d)
    return PreparedVolume(data=data,
                          reference_to_ijk=reference_to_ijk.to(device=vol.device, dtype=dtype),
                          ijk_to_reference=m.to(device=vol.device, dtype=dtype),
                          shape=tuple(int(s) for s in vol.shape), has_gradient=with_gradient)


def plane_pixels(frame_shape, step: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """Homogeneous pixel coordinates ``(h, w, 4)`` = ``(col, row, 0, 1)`` of block centres.

    ``frame_shape = (H, W)``; ``h = H // step``, ``w = W // step``.
    """
    H, W = int(frame_shape[0]), int(frame_shape[1])
    h, w = H // step, W // step
    off = (step - 1) / 2.0
    cols = torch.arange(w, device=device, dtype=dtype) * step + off
    rows = torch.arange(h, device=device, dtype=dtype) * step + off
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([cc, rr, torch.zeros_like(cc), torch.ones_like(cc)], dim=-1)


def downsample_frame(frame, step: int) -> torch.Tensor:
    """Box-average a frame ``(H, W)`` or batch ``(B, H, W)`` by ``step`` -> ``(.., H//step, W//step)``."""
    t = torch.as_tensor(frame)
    squeeze = t.ndim == 2
    t = t.float()[None] if squeeze else t.float()
    if step > 1:
        t = F.avg_pool2d(t[:, None], step, step)[:, 0]
    return t[0] if squeeze else t


def _as_pose_batch(image_to_reference, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(image_to_reference) if not isinstance(image_to_reference, torch.Tensor) \
        else image_to_reference
    t = t.to(device=device, dtype=dtype)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[-2:] != (4, 4):
        raise InputError(f"image_to_reference: expected (B, 4, 4) or (4, 4), got shape "
                         f"{tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError("image_to_reference: contains NaN or inf")
    return t


def plane_points_reference(image_to_reference: torch.Tensor, pixels: torch.Tensor,
                           slab_offsets_mm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Points of the frame plane in reference mm.

    ``image_to_reference`` ``(B, 4, 4)``, ``pixels`` ``(h, w, 4)`` -> ``(B, S, h, w, 3)``
    with ``S`` = number of slab offsets (1 without a slab). Slab points are shifted along
    the unit normal of the plane (cross product of the column and row axes).
    """
    pts = torch.einsum("bij,hwj->bhwi", image_to_reference[:, :3, :], pixels)  # (B,h,w,3)
    pts = pts[:, None]
    if slab_offsets_mm is not None and slab_offsets_mm.numel() > 1:
        normal = torch.linalg.cross(image_to_reference[:, :3, 0], image_to_reference[:, :3, 1])
        normal = normal / normal.norm(dim=-1, keepdim=True)
        pts = pts + slab_offsets_mm.view(1, -1, 1, 1, 1) * normal.view(-1, 1, 1, 1, 3)
    return pts


def slice_volume(volume: PreparedVolume, image_to_reference, frame_shape, step: int = 1,
                 slab_mm: float = 0.0, slab_samples: int = 1, channels: Optional[int] = None,
                 use_data_mask: bool = True):
    """Resample ``volume`` on the frame plane(s) at ``image_to_reference``.

    Parameters
    ----------
    volume : PreparedVolume
    image_to_reference : ``(B, 4, 4)`` or ``(4, 4)`` tensor/array (differentiable).
    frame_shape : ``(H, W)`` of the full-resolution frame.
    step : downsampling factor (block centres are sampled, see :func:`plane_pixels`).
    slab_mm, slab_samples : a thin slab of total thickness ``slab_mm`` sampled at
        ``slab_samples`` offsets along the plane normal and averaged.
    channels : how many channels of ``volume.data`` to return (default all).
    use_data_mask : False: ``inside`` only tests the voxel grid (empty voxels count as
        intensity 0, as image-registration toolkits do).

    Returns
    -------
    values : ``(B, C, h, w)`` sampled channels (``C`` = ``channels``); channel 0 is the
        intensity, channel 1 the data mask (trilinear, 0..1), then gradients if prepared.
    inside : ``(B, h, w)`` bool, True where every slab point lies inside the voxel grid and
        the data mask is > 0.5.
    """
    if slab_samples < 1 or slab_mm < 0 or step < 1:
        raise InputError(f"slab/step: need slab_samples >= 1, slab_mm >= 0, step >= 1, got "
                         f"{slab_samples}, {slab_mm}, {step}")
    data = volume.data if channels is None else volume.data[:, :channels]
    device, dtype = data.device, data.dtype
    poses = _as_pose_batch(image_to_reference, device, dtype)
    pixels = plane_pixels(frame_shape, step, device=device, dtype=dtype)
    offsets = None
    if slab_samples > 1:
        offsets = torch.linspace(-slab_mm / 2, slab_mm / 2, slab_samples, device=device,
                                 dtype=dtype)
    pts = plane_points_reference(poses, pixels, offsets)  # (B, S, h, w, 3)
    r2i = volume.reference_to_ijk
    ijk = pts @ r2i[:3, :3].T + r2i[:3, 3]
    K, J, I = volume.shape
    size = torch.tensor([I - 1, J - 1, K - 1], device=device, dtype=dtype)
    grid = ijk / size * 2 - 1  # grid_sample wants (x=i, y=j, z=k) in [-1, 1]
    B, S, h, w, _ = grid.shape
    sampled = F.grid_sample(data, grid.reshape(1, B * S, h, w, 3), mode="bilinear",
                            padding_mode="zeros", align_corners=True)  # (1, C, B*S, h, w)
    sampled = sampled[0].reshape(-1, B, S, h, w).mean(dim=2).permute(1, 0, 2, 3)
    in_grid = ((ijk >= 0) & (ijk <= size)).all(dim=-1).all(dim=1)  # (B, h, w)
    use = use_data_mask and sampled.shape[1] > 1
    inside = in_grid & (sampled[:, 1] > 0.5) if use else in_grid
    return sampled, inside


def fan_mask(frames, threshold: float = 0.0, erode_px: int = 2) -> np.ndarray:
    """Valid (fan) area ``(H, W)`` bool of a frame ``(H, W)`` or sweep ``(N, H, W)``.

    The union over frames of ``pixel > threshold``, holes filled, eroded by ``erode_px``
    so that the fan's edge (interpolation ramp to 0) is excluded.
    """
    from scipy import ndimage  # noqa: PLC0415

    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise InputError(f"US frame: expected (H, W) or (N, H, W), got shape {np.shape(frames)}")
    mask = (arr > threshold).any(axis=0)
    mask = ndimage.binary_fill_holes(mask)
    if erode_px > 0:
        mask = ndimage.binary_erosion(mask, iterations=erode_px)
    return mask
