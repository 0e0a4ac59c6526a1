"""Differentiable digitally reconstructed radiographs (DRRs) in plain torch.

A DRR pixel is the line integral of the CT's linear attenuation along the ray from the
X-ray source to that pixel's centre on the detector:

    drr(u, v) = integral over the ray of mu(p) dl       (mm * 1/mm = dimensionless)

which is what a detector measures after the negative log, ``-log(I / I0)``.

Frames (see ``docs/architecture.md``): the CT array is indexed ``[k, j, i]`` and
``ijk_to_ras`` maps voxel indices to RAS mm; the pose ``ct_to_camera`` (B, 4, 4) maps CT
RAS mm to the X-ray camera frame (origin at the source, +z to the detector). Rays are
built in the camera frame, moved into the CT's IJK frame with
``camera_to_ijk = ras_to_ijk @ inverse(ct_to_camera)`` (one matrix per pose) and
integrated there; voxel ``(i, j, k)`` covers ``[i - 0.5, i + 0.5] x ...`` in IJK.

Two integrators:

- ``"trilinear"``: ``n_samples`` equally spaced samples per ray (mid-point rule) between
  the ray's entry and exit of the volume box, trilinear interpolation with
  ``torch.nn.functional.grid_sample`` (the volume is stored once; all poses and rays
  sample the same tensor).
- ``"siddon"``: exact ray-voxel intersection lengths (Siddon 1985): the ray parameters
  where it crosses the voxel planes (per axis only the planes the rays can cross inside
  the volume box, not all of them) are merged and sorted; each segment's length times
  its voxel's attenuation is summed. Differentiable w.r.t. the pose through the
  crossing parameters.

On the CPU (float32 volume) the trilinear integral runs in the compiled kernels of
:mod:`.drr_kernels` (the same integral, no work tensors, several times faster); set
``FLUOROREG_DRR_KERNELS=torch`` to force the torch path below (GPU volumes always use it).

Work is chunked over rays so that peak memory is bounded (``max_elements`` floats per
chunk); with gradients enabled each chunk is check-pointed, so memory stays bounded in
the backward pass too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from SurgicalReg2D3DLib.poses import invert_pose

from .geometry import camera_parameters, detector_points

#: Linear attenuation of water used for HU -> mu, in 1/mm (about 70 keV: 0.19 1/cm).
MU_WATER_PER_MM = 0.019

METHODS = ("trilinear", "siddon")


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    """Linear attenuation (1/mm) from Hounsfield units: ``mu_w * (1 + HU / 1000)``, >= 0."""
    return torch.clamp(mu_water * (1.0 + hu / 1000.0), min=0.0)


def _check_matrix(m, name: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (4, 4):
        raise GeometryError(f"{name}: expected a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise GeometryError(f"{name}: contains NaN or infinite values")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise GeometryError(f"{name}: the 3x3 part is singular")
    return m


@dataclass
class DRRVolume:
    """A CT prepared for rendering: attenuation stored once, with its geometry.

    ``mu``          (K, J, I) linear attenuation in 1/mm (float32, or float16 on GPU)
    ``ijk_to_ras``  (4, 4) float64 numpy, voxel indices -> RAS mm
    """

    mu: torch.Tensor
    ijk_to_ras: np.ndarray

    @classmethod
    def from_hu(cls, hu, ijk_to_ras, labels=None, label_subset: Optional[Iterable[int]] = None,
                mu_water: float = MU_WATER_PER_MM, device=None,
                dtype: torch.dtype = torch.float32, name: str = "CT volume") -> "DRRVolume":
        """Prepare a CT given in Hounsfield units.

        ``hu``: (K, J, I) numpy array or tensor (not modified). ``labels``: optional
        (K, J, I) integer segmentation; with ``label_subset`` only voxels whose label is in
        the subset attenuate (e.g. one vertebra).
        """
        if isinstance(hu, torch.Tensor):
            device = device if device is not None else hu.device
            hu_t = hu.detach().to(device=device, dtype=torch.float32)
        else:
            hu_np = np.asarray(hu)
            if hu_np.dtype == object or not np.issubdtype(hu_np.dtype, np.number):
                raise InputError(f"{name}: expected a numeric array, got dtype {hu_np.dtype}")
            hu_t = torch.as_tensor(hu_np.astype(np.float32, copy=False), device=device)
        if hu_t.ndim != 3:
            raise InputError(f"{name}: expected a 3D volume (K, J, I), got shape {tuple(hu_t.shape)}")
        if min(hu_t.shape) < 2:
            raise InputError(f"{name}: every dimension must be >= 2, got shape {tuple(hu_t.shape)}")
        if not torch.isfinite(hu_t).all():
            raise InputError(f"{name}: contains NaN or infinite values")
        if float(hu_t.max()) == float(hu_t.min()):
            raise InputError(f"{name}: all voxels have the same value ({float(hu_t.min()):g}); "
                             "nothing to register")
        m = _check_matrix(ijk_to_ras, f"{name} ijk_to_ras")
        mu = hu_to_mu(hu_t, mu_water)
        if label_subset is not None:
            if labels is None:
                raise InputError(f"{name}: label_subset given without a label volume")
            lab = torch.as_tensor(np.asarray(labels), device=mu.device)
            if tuple(lab.shape) != tuple(mu.shape):
                raise InputError(f"label volume: shape {tuple(lab.shape)} does not match the CT "
                                 f"{tuple(mu.shape)}")
            keep = torch.zeros_like(mu, dtype=torch.bool)
            for value in label_subset:
                keep |= lab == int(value)
            if not keep.any():
                raise InputError(f"label volume: none of the labels {sorted(label_subset)} "
                                 "is present")
            mu = mu * keep
        return cls(mu.to(dtype).contiguous(), m)

    @classmethod
    def from_mu(cls, mu, ijk_to_ras, device=None, dtype=torch.float32) -> "DRRVolume":
        """A volume that already holds attenuation (1/mm), e.g. synthetic phantoms."""
        mu_t = torch.as_tensor(np.asarray(mu) if not isinstance(mu, torch.Tensor) else mu,
                               device=device).to(dtype)
        if mu_t.ndim != 3:
            raise InputError(f"attenuation volume: expected 3D, got shape {tuple(mu_t.shape)}")
        return cls(mu_t.contiguous(), _check_matrix(ijk_to_ras, "attenuation volume ijk_to_ras"))

    @property
    def shape(self):
        return tuple(self.mu.shape)

    @property
    def device(self):
        return self.mu.device

    def center_ras(self) -> np.ndarray:
        """RAS mm of the volume's centre."""
        k, j, i = self.shape
        c = self.ijk_to_ras @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0])
        return c[:3]

    def corners_ras(self) -> np.ndarray:
        """(8, 3) RAS mm of the volume box corners (voxel edges)."""
        k, j, i = self.shape
        ijk = np.array([[a, b, c, 1.0] for a in (-0.5, i - 0.5) for b in (-0.5, j - 0.5)
                        for c in (-0.5, k - 0.5)])
        return (ijk @ self.ijk_to_ras.T)[:, :3]


def _as_pose_batch(ct_to_camera, device, dtype=torch.float32) -> torch.Tensor:
    """(4, 4) or (B, 4, 4) numpy/tensor -> (B, 4, 4) tensor (keeps autograd)."""
    if isinstance(ct_to_camera, torch.Tensor):
        pose = ct_to_camera.to(device=device, dtype=dtype)
    else:
        pose = torch.as_tensor(np.asarray(ct_to_camera, dtype=np.float64), device=device).to(dtype)
    if pose.ndim == 2:
        pose = pose.unsqueeze(0)
    if pose.ndim != 3 or pose.shape[-2:] != (4, 4):
        raise GeometryError(f"ct_to_camera: expected (4, 4) or (B, 4, 4), got {tuple(pose.shape)}")
    if not torch.isfinite(pose.detach()).all():
        raise GeometryError("ct_to_camera: contains NaN or infinite values")
    return pose


def rays_in_ijk(volume: DRRVolume, camera, ct_to_camera, pixel_points: Optional[torch.Tensor] = None):
    """Source positions and ray vectors in IJK.

    Returns ``source_ijk`` (B, 3), ``direction_ijk`` (B, P, 3) (source -> pixel centre,
    so parameter t = 1 is the detector) and ``length_mm`` (P,) the source-to-pixel
    distance; ``pixel_points`` (P, 3) camera-frame targets default to all pixel centres.
    """
    dev = volume.device
    pose = _as_pose_batch(ct_to_camera, dev)
    if pixel_points is None:
        pixel_points = detector_points(camera, device=dev).reshape(-1, 3)
    ras_to_ijk = torch.as_tensor(np.linalg.inv(volume.ijk_to_ras), device=dev, dtype=torch.float32)
    camera_to_ijk = ras_to_ijk.unsqueeze(0) @ invert_pose(pose)  # (B, 4, 4)
    source_ijk = camera_to_ijk[:, :3, 3]
    direction_ijk = pixel_points.unsqueeze(0) @ camera_to_ijk[:, :3, :3].transpose(1, 2)
    return source_ijk, direction_ijk, pixel_points.norm(dim=-1)


def ray_box_intersection(source: torch.Tensor, direction: torch.Tensor, low: torch.Tensor,
                         high: torch.Tensor, eps: float = 1e-9):
    """Slab method: parameters ``t_in, t_out`` (B, P) where ``source + t * direction``
    enters/leaves the box ``[low, high]``, clipped to ``[0, 1]`` (source to detector).
    ``t_out <= t_in`` means the ray misses the box.
    """
    d = direction
    safe = torch.where(d.abs() < eps, torch.full_like(d, eps), d)
    t1 = (low - source.unsqueeze(1)) / safe
    t2 = (high - source.unsqueeze(1)) / safe
    t_near = torch.minimum(t1, t2)
    t_far = torch.maximum(t1, t2)
    # Rays parallel to a slab: inside it -> no constraint, outside -> miss.
    parallel = d.abs() < eps
    inside = (source.unsqueeze(1) >= low) & (source.unsqueeze(1) <= high)
    big = torch.full_like(t_near, 1e30)
    t_near = torch.where(parallel, torch.where(inside, -big, big), t_near)
    t_far = torch.where(parallel, torch.where(inside, big, -big), t_far)
    t_in = t_near.amax(dim=-1).clamp(min=0.0, max=1.0)
    t_out = t_far.amin(dim=-1).clamp(min=0.0, max=1.0)
    return t_in, t_out


def _trilinear_chunk(mu5: torch.Tensor, source: torch.Tensor, direction: torch.Tensor,
                     length_mm: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Line integrals (B, P) of a chunk of rays by mid-point sampling + grid_sample.

    ``mu5`` (1, 1, K, J, I); ``source`` (B, 3) and ``direction`` (B, P, 3) in IJK;
    ``length_mm`` (P,) source-to-pixel distances.

    The samples are laid out sample-major, grid (B, N, P, 1, 3): consecutive lookups are
    neighbouring rays at the same depth, which touch neighbouring voxels, so the volume
    is read far more cache-friendly than ray by ray. All N x P points are made by one
    fused ``addcmul(entry, fraction, entry_to_exit)``.
    """
    _, _, k, j, i = mu5.shape
    b = source.shape[0]
    dims = torch.tensor([i, j, k], device=source.device, dtype=source.dtype)
    t_in, t_out = ray_box_intersection(source, direction, torch.full_like(dims, -0.5), dims - 0.5)
    span = (t_out - t_in).clamp(min=0.0)  # (B, P)
    # Work directly in grid_sample's normalised coordinates (align_corners=True: index 0
    # -> -1, index n - 1 -> +1).
    scale = 2.0 / (dims - 1)
    dir_g = direction * scale  # (B, P, 3)
    entry_g = torch.addcmul((source * scale - 1.0).unsqueeze(1), t_in.unsqueeze(-1), dir_g)
    entry_to_exit_g = span.unsqueeze(-1) * dir_g  # (B, P, 3)
    frac = (torch.arange(n_samples, device=source.device, dtype=source.dtype) + 0.5) / n_samples
    grid = torch.addcmul(entry_g.unsqueeze(1), frac[None, :, None, None],
                         entry_to_exit_g.unsqueeze(1))  # (B, N, P, 3)
    # Each pose samples the same volume: expand (no copy) to one batch entry per pose.
    values = F.grid_sample(mu5.expand(b, -1, -1, -1, -1), grid.unsqueeze(3).to(mu5.dtype),
                           mode="bilinear", padding_mode="border", align_corners=True)
    values = values[:, 0, :, :, 0].to(source.dtype)  # (B, N, P)
    step_mm = span * length_mm.unsqueeze(0) / n_samples
    return values.sum(1) * step_mm


def _siddon_planes(source: torch.Tensor, direction: torch.Tensor, dims: torch.Tensor):
    """Which voxel planes each ray can cross inside the volume box (no gradient).

    ``source`` (B, 3), ``direction`` (B, P, 3) in IJK; ``dims`` (3,) = (I, J, K).
    Returns ``first_edge`` (B, P, 3), per axis the coordinate of the first voxel edge
    (``m - 0.5``) at or after the smaller of the ray's entry/exit coordinates, and
    ``n_planes`` (3,) ints, per axis the largest number of edges any ray crosses between
    its entry and exit. Edges ``first_edge + 0 .. n_planes - 1`` therefore cover every
    crossing of every ray; the ones beyond a ray's exit are harmless (clamped later).
    """
    with torch.no_grad():
        t_in, t_out = ray_box_intersection(source, direction, torch.full_like(dims, -0.5),
                                           dims - 0.5)
        t_out = torch.maximum(t_in, t_out)
        p_in = torch.addcmul(source.unsqueeze(1), t_in.unsqueeze(-1), direction)  # (B, P, 3)
        p_out = torch.addcmul(source.unsqueeze(1), t_out.unsqueeze(-1), direction)
        low = torch.minimum(p_in, p_out)
        high = torch.maximum(p_in, p_out)
        first_index = torch.ceil(low + 0.5)  # edge m - 0.5 >= low
        count = (torch.floor(high + 0.5) - first_index + 1).clamp(min=0)  # edges in [low, high]
        n_planes = [int(c) for c in count.reshape(-1, 3).amax(dim=0)] if count.numel() else [0] * 3
    return first_index - 0.5, n_planes


def _siddon_chunk(mu5: torch.Tensor, source: torch.Tensor, direction: torch.Tensor,
                  length_mm: torch.Tensor, first_edge: torch.Tensor, n_planes) -> torch.Tensor:
    """Exact line integrals (B, P) through voxels (piecewise constant) for a chunk of rays.

    ``first_edge`` (B, P, 3) and ``n_planes`` (3,) from :func:`_siddon_planes` select, per
    axis, only the voxel planes the rays can cross inside the box (not all n + 1). The
    ray parameters of those crossings, clamped to the ray's entry/exit ``[t_in, t_out]``,
    are sorted together with ``t_in, t_out``; each segment's voxel is looked up at its
    mid-point (nearest) and weighted by the segment length. Gradients flow through the
    lengths (crossing parameters and entry/exit).
    """
    _, _, k, j, i = mu5.shape
    dev, dt = source.device, source.dtype
    dims = torch.tensor([i, j, k], device=dev, dtype=dt)
    b, p = direction.shape[:2]
    t_in, t_out = ray_box_intersection(source, direction, torch.full_like(dims, -0.5), dims - 0.5)
    t_out = torch.maximum(t_in, t_out)  # a missed ray: zero length
    t_in, t_out = t_in.unsqueeze(-1), t_out.unsqueeze(-1)  # (B, P, 1)
    alphas = [t_in, t_out]
    for axis in range(3):
        if n_planes[axis] == 0:
            continue
        edges = first_edge[..., axis:axis + 1] + torch.arange(n_planes[axis], device=dev, dtype=dt)
        d = direction[..., axis:axis + 1]
        inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        alphas.append((edges - source[:, None, axis:axis + 1]) * inv)  # (B, P, n_planes)
    a = torch.minimum(torch.maximum(torch.cat(alphas, dim=-1), t_in), t_out)
    a, _ = torch.sort(a, dim=-1)
    seg = a[..., 1:] - a[..., :-1]  # (B, P, M), parameter units
    with torch.no_grad():
        scale = 2.0 / (dims - 1)
        mid = 0.5 * (a[..., 1:] + a[..., :-1])
        grid = torch.addcmul((source * scale - 1.0)[:, None, None, :], mid.unsqueeze(-1),
                             (direction * scale).unsqueeze(2))
        m = grid.shape[2]
        # Mid-points lie inside the box; border padding only guards against rounding there.
        values = F.grid_sample(mu5, grid.reshape(1, 1, b * p, m, 3).to(mu5.dtype), mode="nearest",
                               padding_mode="border", align_corners=True).reshape(b, p, m).to(dt)
    return (values * seg).sum(-1) * length_mm.unsqueeze(0)


#: the last few single-pose forward renders per volume tensor (compiled kernel path):
#: a registration renders its result pose several times (final similarity, the end-of-run
#: check, the quality signals, each view's quality); the same inputs give the same image.
_RECENT: dict = {}  # id(mu) -> (weakref to mu, {key: (1, H, W) image})
_RECENT_SIZE = 8


def _recent_key(volume: DRRVolume, camera, pose: torch.Tensor, n_samples: int):
    """Cache key of a single-pose render without gradients (else None)."""
    if pose.shape[0] != 1 or pose.requires_grad or volume.mu.requires_grad:
        return None
    to_dict = getattr(camera, "to_dict", None)
    if to_dict is None:
        return None
    import json  # noqa: PLC0415

    cam = json.dumps(to_dict(), sort_keys=True, default=str)
    return (volume.mu._version, cam, pose.detach().cpu().numpy().tobytes(), int(n_samples))


def _recall(mu: torch.Tensor, key):
    entry = _RECENT.get(id(mu))
    if entry is None or entry[0]() is not mu:  # another tensor now has that id
        return None
    return entry[1].get(key)


def _remember(mu: torch.Tensor, key, image: torch.Tensor) -> None:
    import weakref  # noqa: PLC0415

    entry = _RECENT.get(id(mu))
    if entry is None or entry[0]() is not mu:
        for k in [k for k, (ref, _) in _RECENT.items() if ref() is None]:
            del _RECENT[k]  # volumes that are gone
        entry = (weakref.ref(mu), {})
        _RECENT[id(mu)] = entry
    entries = entry[1]
    entries[key] = image.detach().clone()
    while len(entries) > _RECENT_SIZE:
        entries.pop(next(iter(entries)))


def render_drr(volume: DRRVolume, camera, ct_to_camera, method: str = "trilinear",
               n_samples: Optional[int] = None, max_elements: int = 1 << 22,
               checkpoint_chunks: Optional[bool] = None,
               grad_elements_limit: int = 1 << 27, kernels: bool = True) -> torch.Tensor:
    """Render DRRs (line integrals of attenuation, dimensionless) for a batch of poses.

    ``volume``: :class:`DRRVolume`; ``camera``: ``SurgicalReg2D3DLib.cameras.XRayCamera``
    (use ``camera.scaled(f)`` for a coarser pyramid level); ``ct_to_camera``: (4, 4) or (B, 4, 4) numpy/tensor (CT RAS mm
    -> camera mm; a tensor with ``requires_grad`` gives pose gradients).
    ``method``: ``"trilinear"`` (``n_samples`` per ray; default ``1.5 x`` the volume's
    largest dimension) or ``"siddon"`` (exact). Returns (B, H, W) on the volume's device.

    Memory: rays are processed in chunks of about ``max_elements`` floats of work space
    (samples x 4 for trilinear, plane crossings x 6 for Siddon; the default ``1 << 22``,
    16 MiB of float32, keeps a chunk in the CPU caches' reach and is faster than larger
    chunks); with pose gradients, chunks are check-pointed (``checkpoint_chunks``, default: only when more than
    ``grad_elements_limit`` floats would be kept for the backward pass). The volume is
    never copied per pose or per chunk.

    ``kernels``: allow the compiled CPU kernels (:mod:`.drr_kernels`). Their pose gradient
    is first order only; a caller that differentiates the gradient itself (``create_graph``,
    e.g. the spherical similarity's training) passes ``kernels=False``.
    """
    if method not in METHODS:
        raise InputError(f"DRR method: expected one of {METHODS}, got {method!r}")
    p = camera_parameters(camera)
    pose = _as_pose_batch(ct_to_camera, volume.device)
    b = pose.shape[0]
    k, j, i = volume.shape
    source, direction, length_mm = rays_in_ijk(volume, camera, pose)
    if method == "trilinear":
        n_samples = int(n_samples or max(16, int(1.5 * max(i, j, k))))
        if n_samples < 1:
            raise InputError(f"n_samples: must be >= 1, got {n_samples}")
        per_ray = n_samples * 4
    else:
        dims = torch.tensor([i, j, k], device=source.device, dtype=source.dtype)
        first_edge, n_planes = _siddon_planes(source.detach(), direction.detach(), dims)
        per_ray = (sum(n_planes) + 2) * 6
    if method == "trilinear":
        from . import drr_kernels  # noqa: PLC0415

        if kernels and drr_kernels.usable(volume.mu, source, direction, method) \
                and not volume.mu.requires_grad:
            # Compiled CPU kernel: the same integral (see drr_kernels), no work tensors;
            # gradients w.r.t. the pose only (a volume that needs gradients uses torch).
            key = _recent_key(volume, camera, pose, n_samples)
            if key is not None:
                hit = _recall(volume.mu, key)
                if hit is not None:
                    return hit.clone()
            out = drr_kernels.trilinear_drr(volume.mu, source, direction, length_mm, n_samples)
            out = out.reshape(b, p.height, p.width)
            if key is not None:
                _remember(volume.mu, key, out)
            return out
    n_rays = direction.shape[1]
    chunk = max(1, int(max_elements // max(1, per_ray * b)))
    need_grad = torch.is_grad_enabled() and pose.requires_grad
    if checkpoint_chunks is None:
        # Check-pointing re-runs each chunk in the backward pass (and is slow to record on
        # the CPU), so it is only worth it when the saved activations would be large.
        checkpoint_chunks = need_grad and b * n_rays * per_ray > grad_elements_limit
    mu5 = volume.mu[None, None]
    if method == "trilinear":
        def fn(src, dirs, length, sl):
            return _trilinear_chunk(mu5, src, dirs, length, n_samples)
    else:
        def fn(src, dirs, length, sl):
            return _siddon_chunk(mu5, src, dirs, length, first_edge[:, sl], n_planes)
    outs = []
    for start in range(0, n_rays, chunk):
        sl = slice(start, start + chunk)
        if checkpoint_chunks and n_rays > chunk:
            outs.append(checkpoint(fn, source, direction[:, sl], length_mm[sl], sl,
                                   use_reentrant=False))
        else:
            outs.append(fn(source, direction[:, sl], length_mm[sl], sl))
    return torch.cat(outs, dim=1).reshape(b, p.height, p.width)

