"""Training data for the learned FluoroReg methods: poses around a nominal C-arm view,
batched DRRs of one CT, and domain randomisation.

Training poses (the exact definition, also in ``docs/fluoro.md``)
-----------------------------------------------------------------
``nominal`` is a ``ct_to_camera`` (CT RAS mm -> X-ray camera mm) that the C-arm's
nominal view implies. Let ``c = nominal @ [centre_ras, 1]`` be where the CT's centre
(the centre of its voxel box) lands in the camera frame. A training pose is

    pose = Delta @ nominal,     Delta = [[R, c - R c + t], [0, 1]]

with ``R = exp(hat(r))``: ``r`` a rotation vector whose camera-frame components are drawn
independently and uniformly, ``r_x in [-RX, RX]``, ``r_y in [-RY, RY]``, ``r_z in
[-RZ, RZ]`` (degrees, converted to radians), and ``t`` a camera-frame translation with
``t_x in [-TX, TX]``, ``t_y in [-TY, TY]``, ``t_z in [-TZ, TZ]`` mm. So ``Delta`` rotates
about ``c`` and then translates: the CT centre moves from ``c`` to ``c + t`` and the CT
turns by ``R`` (camera axes). :func:`pose_to_delta` inverts this: ``R = pose_R @
nominal_R^T`` and ``t = pose @ centre - c``.

Rendering
---------
:class:`TrainingRenderer` holds the CT (block-averaged so that a voxel is about the size
of a training pixel back-projected to the CT) and the training camera (the detector
downsampled to ``image_size`` pixels on its long side, ``XRayCamera.scaled``); it renders
a batch of poses in one :func:`~FluoroRegLib.drr.render_drr` call (trilinear).

Domain randomisation (:func:`randomise`)
----------------------------------------
Applied per image, each with its own probability, to the DRR line integrals:
detector effects first (Poisson noise at a random photon count, a Gaussian blur, the
contrast range: a random scaling of the line integrals), then the spherical-similarity
paper's list: 3x3 / 5x5 smoothing, Gaussian noise, window normalisation (clip to random
percentiles), linear, gamma and sine intensity changes, random erasing. Every image is
finally standardised (zero mean, unit std), the same as :func:`standardise` does to a
real X-ray at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from SurgicalReg2D3DLib.errors import GeometryError, InputError

MAX_ROTATION_DEG = 90.0  # per component; a range at or above this is refused


@dataclass(frozen=True)
class PoseRange:
    """Half-widths of the training range: rotation (deg) and translation (mm), camera axes."""

    rotation_deg: Tuple[float, float, float]
    translation_mm: Tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"rotation_deg": list(self.rotation_deg), "translation_mm": list(self.translation_mm)}

    @classmethod
    def from_dict(cls, d: dict) -> "PoseRange":
        return cls(tuple(float(v) for v in d["rotation_deg"]),
                   tuple(float(v) for v in d["translation_mm"]))


def check_range(rotation_deg: Sequence[float], translation_mm: Sequence[float],
                camera=None, nominal: Optional[np.ndarray] = None,
                center_ras: Optional[np.ndarray] = None) -> PoseRange:
    """A checked :class:`PoseRange`.

    Errors: not three finite numbers each; a negative half-width; all six zero (an empty
    range); a rotation of ``MAX_ROTATION_DEG`` (90 deg) or more per axis (the views would
    not look like the nominal one any more; 180 deg is ambiguous); with ``camera``,
    ``nominal`` and ``center_ras``: a translation that moves the CT centre out of the
    image or behind the source / past the detector at a corner of the translation box.
    """
    rot = _three(rotation_deg, "rotation range")
    tra = _three(translation_mm, "translation range")
    if all(v == 0 for v in rot + tra):
        raise InputError("training range: empty (all rotation and translation half-widths are 0)")
    if any(v >= MAX_ROTATION_DEG for v in rot):
        raise InputError(f"rotation range: each half-width must be below {MAX_ROTATION_DEG:g} deg, "
                         f"got {list(rot)}")
    if camera is not None and nominal is not None and center_ras is not None:
        from ..geometry import camera_parameters  # noqa: PLC0415

        p = camera_parameters(camera)
        c = (np.asarray(nominal, float) @ np.r_[np.asarray(center_ras, float), 1.0])[:3]
        if not (0 < c[2] < p.f):
            raise GeometryError(f"nominal pose: the CT centre is at depth {c[2]:.1f} mm, not "
                                f"between the source and the detector (0, {p.f:g}) mm")
        for sx in (-1, 1):
            for sy in (-1, 1):
                for sz in (-1, 1):
                    q = c + np.array([sx * tra[0], sy * tra[1], sz * tra[2]])
                    if not (0.05 * p.f < q[2] < p.f):
                        raise InputError(f"translation range: {list(tra)} mm moves the CT centre "
                                         f"to depth {q[2]:.1f} mm, outside the source-detector "
                                         f"span (0, {p.f:g}) mm")
                    u = q[0] / q[2] * p.f / p.sx + p.cx
                    v = q[1] / q[2] * p.f / p.sy + p.cy
                    if not (-0.5 <= u <= p.width - 0.5 and -0.5 <= v <= p.height - 0.5):
                        raise InputError(f"translation range: {list(tra)} mm moves the CT centre "
                                         f"out of the image (to pixel ({u:.0f}, {v:.0f}) of a "
                                         f"{p.width} x {p.height} image)")
    return PoseRange(rot, tra)


def _three(values, name: str) -> Tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected three numbers, got {values!r}") from None
    if len(vals) != 3:
        raise InputError(f"{name}: expected three numbers (x, y, z), got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"{name}: contains NaN or infinite values")
    if any(v < 0 for v in vals):
        raise InputError(f"{name}: half-widths must be >= 0, got {list(vals)}")
    return vals


# -- poses -------------------------------------------------------------------------------
def nominal_center_cam(nominal: np.ndarray, center_ras: np.ndarray) -> np.ndarray:
    """``c``: the CT centre in the camera frame of the nominal pose (3,)."""
    return (np.asarray(nominal, float) @ np.r_[np.asarray(center_ras, float), 1.0])[:3]


def sample_deltas(rng: torch.Generator, n: int, pose_range: PoseRange,
                  dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(r, t)``: ``n`` rotation vectors (rad, camera frame) and translations (mm), each
    component uniform in its ``[-half, half]`` (drawn on the CPU from ``rng``)."""
    u = torch.rand(n, 6, generator=rng, dtype=torch.float64) * 2.0 - 1.0
    half = torch.tensor([math.radians(v) for v in pose_range.rotation_deg]
                        + list(pose_range.translation_mm), dtype=torch.float64)
    x = (u * half).to(dtype)
    return x[:, :3], x[:, 3:]


def delta_to_pose(R: torch.Tensor, t: torch.Tensor, nominal: torch.Tensor,
                  c: torch.Tensor) -> torch.Tensor:
    """``Delta @ nominal`` for rotations ``R`` (B, 3, 3) about ``c`` (3,) and translations
    ``t`` (B, 3) (all camera frame). Differentiable; returns (B, 4, 4)."""
    b = R.shape[0]
    delta = torch.zeros(b, 4, 4, dtype=R.dtype, device=R.device)
    delta[:, :3, :3] = R
    delta[:, :3, 3] = c - (R @ c.unsqueeze(-1)).squeeze(-1) + t
    delta[:, 3, 3] = 1.0
    return delta @ nominal.to(R.dtype)


def pose_to_delta(pose: torch.Tensor, nominal: torch.Tensor, center_ras: torch.Tensor,
                  c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`delta_to_pose`: ``(R, t)`` of poses (B, 4, 4)."""
    R = pose[..., :3, :3] @ nominal[:3, :3].to(pose.dtype).transpose(-1, -2)
    moved = pose[..., :3, :3] @ center_ras.to(pose.dtype) + pose[..., :3, 3]
    return R, moved - c.to(pose.dtype)


# -- rendering ---------------------------------------------------------------------------
def training_factor(camera, image_size: int) -> float:
    """Downsampling factor of the detector so that its long side has ``image_size`` px."""
    from ..geometry import camera_parameters  # noqa: PLC0415

    p = camera_parameters(camera)
    if int(image_size) < 16:
        raise InputError(f"image size: must be >= 16 px, got {image_size}")
    return max(1.0, max(p.width, p.height) / float(image_size))


def ct_factor_for(camera, nominal_depth_mm: float, voxel_mm: float, factor: float) -> int:
    """Integer CT block-average factor so a voxel is about one training pixel at the CT."""
    from ..geometry import camera_parameters  # noqa: PLC0415

    p = camera_parameters(camera)
    pixel_at_ct = max(p.sx, p.sy) * factor * nominal_depth_mm / p.f
    return max(1, int(round(pixel_at_ct / max(voxel_mm, 1e-6))))


def standardise(img: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per image over the last two dims (B, H, W) or (H, W)."""
    flat = img.flatten(-2)
    flat = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True).clamp_min(1e-6)
    return flat.reshape(img.shape)


def prepare_xray(image, camera, train_camera) -> torch.Tensor:
    """A real X-ray (H, W) at the detector's size -> (1, 1, h, w) standardised network input
    at the training camera's size (area averaging, as ``camera.scaled`` assumes)."""
    from ..geometry import camera_parameters  # noqa: PLC0415

    img = torch.as_tensor(np.asarray(image, np.float32))
    p = camera_parameters(train_camera)
    if tuple(img.shape) != (p.height, p.width):
        img = F.interpolate(img[None, None], size=(p.height, p.width), mode="area")[0, 0]
    return standardise(img)[None, None]


class TrainingRenderer:
    """DRRs of one CT at poses around a nominal view, rendered in batches.

    ``volume``: a ``DRRVolume`` (already block-averaged as wanted); ``camera``: the
    training camera (small); ``nominal``: (4, 4) ``ct_to_camera``; ``pose_range``.
    """

    def __init__(self, volume, camera, nominal: np.ndarray, pose_range: PoseRange,
                 n_samples: Optional[int] = None):
        self.volume = volume
        self.camera = camera
        self.range = pose_range
        self.nominal = torch.as_tensor(np.asarray(nominal, float), dtype=torch.float64)
        self.center_ras = torch.as_tensor(volume.center_ras(), dtype=torch.float64)
        self.c = torch.as_tensor(nominal_center_cam(nominal, volume.center_ras()))
        k, j, i = volume.shape
        self.n_samples = int(n_samples or max(32, int(1.2 * max(i, j, k))))

    def sample(self, rng: torch.Generator, n: int):
        """``(drr (n, H, W), r (n, 3) rad, t (n, 3) mm, poses (n, 4, 4))``."""
        from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415

        from ..drr import render_drr  # noqa: PLC0415

        r, t = sample_deltas(rng, n, self.range)
        poses = delta_to_pose(so3_exp(r), t, self.nominal, self.c)
        with torch.no_grad():
            drr = render_drr(self.volume, self.camera, poses.to(torch.float32),
                             n_samples=self.n_samples)
        return drr.float().cpu(), r, t, poses


# -- domain randomisation ----------------------------------------------------------------
def _rand(rng: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=rng)


def _coin(rng: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=rng) < p


def _gauss_kernel(sigma: torch.Tensor, size: int = 7) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    k = torch.exp(-0.5 * (x[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(-1, keepdim=True)
    return k  # (n, size)


def _blur(img: torch.Tensor, kern1d: torch.Tensor) -> torch.Tensor:
    """Separable per-image blur: ``img`` (n, H, W), ``kern1d`` (n, s)."""
    n, s = kern1d.shape
    x = img[None]  # (1, n, H, W): one group per image
    x = F.conv2d(F.pad(x, (s // 2, s // 2, 0, 0), mode="replicate"), kern1d[:, None, None, :], groups=n)
    x = F.conv2d(F.pad(x, (0, 0, s // 2, s // 2), mode="replicate"), kern1d[:, None, :, None], groups=n)
    return x[0]


def randomise(drr: torch.Tensor, rng: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Domain randomisation of DRR line integrals (n, H, W) -> standardised images.

    ``strength`` in [0, 1] scales the probabilities (0 = standardise only). The input is
    not modified. See the module docstring for the list.
    """
    x = drr.detach().float().clone()
    n = x.shape[0]
    p = float(strength)
    if p <= 0:
        return standardise(x)
    # contrast range of the detector: line integrals scaled
    x = x * _rand(rng, n, 0.7, 1.3)[:, None, None]
    # Poisson noise at a random photon count (log-uniform 3e2 .. 3e4 per pixel)
    m = _coin(rng, n, 0.5 * p)
    if m.any():
        i0 = torch.exp(_rand(rng, n, math.log(3e2), math.log(3e4)))[:, None, None]
        counts = torch.poisson(i0 * torch.exp(-x.clamp(max=30.0)), generator=rng).clamp_min(0.5)
        noisy = -torch.log(counts / i0)
        x = torch.where(m[:, None, None], noisy, x)
    # detector blur / 3x3, 5x5 smoothing
    m = _coin(rng, n, 0.5 * p)
    if m.any():
        sig = _rand(rng, n, 0.3, 1.5)
        x = torch.where(m[:, None, None], _blur(x, _gauss_kernel(sig)), x)
    m = _coin(rng, n, 0.2 * p)
    if m.any():
        size = 3 if bool(_coin(rng, 1, 0.5)) else 5
        box = torch.full((n, size), 1.0 / size)
        x = torch.where(m[:, None, None], _blur(x, box), x)
    x = standardise(x)
    # window normalisation: clip to random low/high percentiles, rescale to [0, 1]
    flat = x.flatten(1)
    m = _coin(rng, n, 0.5 * p)
    lo_q = torch.where(m, _rand(rng, n, 0.0, 0.1), torch.zeros(n))
    hi_q = torch.where(m, _rand(rng, n, 0.9, 1.0), torch.ones(n))
    srt = flat.sort(dim=1).values
    idx_lo = (lo_q * (flat.shape[1] - 1)).long()
    idx_hi = (hi_q * (flat.shape[1] - 1)).long()
    lo = srt.gather(1, idx_lo[:, None])
    hi = srt.gather(1, idx_hi[:, None])
    flat = ((flat - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)
    x = flat.reshape(x.shape)
    # intensity: linear, gamma, sine
    m = _coin(rng, n, 0.5 * p)
    g = torch.where(m, torch.exp(_rand(rng, n, math.log(0.5), math.log(2.0))), torch.ones(n))
    x = x.clamp_min(0) ** g[:, None, None]
    m = _coin(rng, n, 0.2 * p)
    if m.any():
        freq = _rand(rng, n, 0.5, 2.0)[:, None, None]
        x = torch.where(m[:, None, None], 0.5 + 0.5 * torch.sin(math.pi * (freq * x - 0.5)), x)
    x = x * _rand(rng, n, 0.8, 1.2)[:, None, None] + _rand(rng, n, -0.1, 0.1)[:, None, None]
    # Gaussian noise
    m = _coin(rng, n, 0.5 * p)
    sig = torch.where(m, _rand(rng, n, 0.0, 0.05), torch.zeros(n))
    x = x + sig[:, None, None] * torch.randn(x.shape, generator=rng)
    # random erasing: one rectangle (2-15 % of the image) set to a random value
    m = _coin(rng, n, 0.3 * p)
    if m.any():
        h, w = x.shape[-2:]
        area = _rand(rng, n, 0.02, 0.15) * h * w
        aspect = torch.exp(_rand(rng, n, math.log(0.3), math.log(3.3)))
        eh = (area * aspect).sqrt().clamp(1, h - 1).long()
        ew = (area / aspect).sqrt().clamp(1, w - 1).long()
        y0 = (torch.rand(n, generator=rng) * (h - eh)).long()
        x0 = (torch.rand(n, generator=rng) * (w - ew)).long()
        val = torch.rand(n, generator=rng)
        yy = torch.arange(h)[None, :, None]
        xx = torch.arange(w)[None, None, :]
        box = (yy >= y0[:, None, None]) & (yy < (y0 + eh)[:, None, None]) & \
              (xx >= x0[:, None, None]) & (xx < (x0 + ew)[:, None, None]) & m[:, None, None]
        x = torch.where(box, val[:, None, None].expand_as(x), x)
    return standardise(x)
