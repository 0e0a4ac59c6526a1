"""Level geometry of the US slice registration: where each pyramid level samples.

Where it sits in the flow: after the frames are cropped to the fan's bounding box
(:class:`~.register.SliceRegistrar`), :func:`_pyramid` block-averages them to each
level's step, and :class:`_LevelGeometry` holds that level's sampling points (the fan's
pixels, or the whole downsampled box for windowed LNCC). :class:`_LevelSampling` (a mixin
of :class:`~.register.SliceRegistrar`) maps the points through a cropped-frame pose into
the volume and reads intensity, support and gradient there in one ``grid_sample``; the
optimisation (:mod:`.lm_torch`) and the start / final similarity use these samples.

The mixin's methods use the registrar's state set in ``SliceRegistrar.__init__``:
``device``, ``volume``, ``_shape``, ``_offset``, ``_fan_c``, ``_centre_c``,
``_reference_to_grid_np`` and the caches ``_fans``, ``_geometry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .lncc import masked_lncc
from .slicing import PreparedVolume, downsample_frame, plane_pixels


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


def _pyramid(frames: torch.Tensor, steps: Sequence[int]) -> Dict[int, torch.Tensor]:
    """Block means ``{step: (B, H // step, W // step)}`` of ``frames`` ``(B, H, W)``; a
    step that is a multiple of a smaller one is pooled from it (same block means)."""
    out: Dict[int, torch.Tensor] = {}
    for step in sorted(set(steps)):
        base = max((s for s in out if step % s == 0), default=None)
        out[step] = downsample_frame(frames, step) if base is None else \
            downsample_frame(out[base], step // base)
    return out


class _LevelSampling:
    """Sampling points of the levels and the volume's samples there (mixin of
    :class:`~.register.SliceRegistrar`)."""

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


    def _overlap_c(self, poses_c: torch.Tensor, step: int) -> np.ndarray:
        geo = self._level_geometry(step, dense=False)
        _, inside = self._sample(self.volume, poses_c, geo, channels=2)
        return (inside.sum(dim=1).double() / max(1, geo.pix.shape[0])).cpu().numpy()


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

