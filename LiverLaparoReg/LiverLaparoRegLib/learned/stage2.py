"""Stage II: a deforming autoencoder optimised at run time on the posed liver.

Network (plain torch, a few thousand parameters, fresh per frame):

- encoder: a PointNet (shared MLP + max pooling) on the *posed* point cloud (an FPS
  subset of the mesh vertices in the camera frame, centred, in decimetres) -> latent
  ``z`` (32);
- decoder: an MLP from ``z`` to the weights ``W (K, 3)`` of ``K`` Gaussian radial basis
  functions at FPS vertices (radius 0.35 x the mesh extent), the displacement
  ``D(x) = sum_k phi_k(x) W_k`` (mm, model frame). The deformation ``x' = x + D(x)`` is
  a smooth function of position, so the same field moves vessels and tumours
  (:meth:`NetDeformation.apply`).

Run-time optimisation (all weights, Adam):

1. **warm-up** (reconstruction): ``warmup`` steps minimising the squared distance
   between the decoded cloud and the input cloud (the autoencoder starts as the
   identity, whatever its random initialisation); the optimiser is then restarted;
2. **shape-constrained fit**: ``1 - soft Dice`` of the rendered silhouette (decimated
   mesh, :func:`..raster.soft_silhouette_band`) against the mask +
   ``reprojection_weight`` x the mean reprojection error (px / image diagonal) of the
   Stage I **matched pairs** (inliers; 3D vertex -> its 2D pixel) +
   ``isometry_weight`` x the local-isometry term (relative change of kNN edge lengths on
   an FPS subset of the vertices) + ``shape_weight`` x the reconstruction term kept from
   the warm-up (squared displacement / scale^2: stay near the preoperative shape where
   the data do not say otherwise; with a mask alone and no pairs the fit otherwise moves
   unseen parts freely and the 3D error can grow). Weight 0 switches a term off
   (ablations).

The rigid ``model_to_camera`` is kept fixed. The best iterate (lowest loss) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError


class _AutoDeformer:
    """Encoder + decoder (built lazily so torch is imported only when used).

    The decoder maps the latent code to the weights of ``n_basis`` Gaussian radial basis
    functions centred at FPS vertices (radius ``0.35 x`` the mesh extent):
    ``D(x, z) = sum_k phi_k(x) W_k(z)``. A per-point MLP decoder was tried first: it
    fits the matched pairs far more slowly (63 -> 50 px in 100 Adam steps on a bent
    frame, where this decoder reaches a few px)."""

    def __init__(self, centres, radius: float, latent: int = 32, hidden: int = 64,
                 seed: int = 0):
        import torch  # noqa: PLC0415
        import torch.nn as nn  # noqa: PLC0415

        torch.manual_seed(seed)
        self.centres = torch.as_tensor(np.asarray(centres, np.float64))
        self.radius = float(radius)
        k = self.centres.shape[0]
        self.enc = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, 3 * k))
        self.enc.double()
        self.dec.double()

    def parameters(self):
        return list(self.enc.parameters()) + list(self.dec.parameters())

    def latent(self, posed_cloud):
        return self.enc(posed_cloud).max(0).values

    def displace(self, x, z, scale_mm: float):
        """``x (N, 3)`` model-frame mm -> displacement ``(N, 3)`` mm."""
        import torch  # noqa: PLC0415

        W = self.dec(z).reshape(-1, 3) * scale_mm
        d2 = ((x[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return torch.exp(-d2 / (2 * self.radius ** 2)) @ W


@dataclass
class NetDeformation:
    """The optimised deformation (model frame, mm)."""

    history: List[float] = field(default_factory=list)
    vertices: Optional[np.ndarray] = None
    _net: object = None
    _z: object = None
    _centre: Optional[np.ndarray] = None
    _scale_mm: float = 10.0

    def apply(self, points) -> np.ndarray:
        import torch  # noqa: PLC0415

        p = torch.as_tensor(np.asarray(points, dtype=np.float64))
        with torch.no_grad():
            return (p + self._net.displace(p, self._z, self._scale_mm)).numpy()


def deform_stage2(mesh, camera, model_to_camera, mask=None, pairs: Sequence[dict] = (),
                  iterations: int = 60, warmup: int = 30, reprojection_weight: float = 10.0,
                  isometry_weight: float = 10.0, n_cloud: int = 256, seed: int = 0,
                  lr: float = 1e-2, scale_mm: float = 10.0, n_basis: int = 24,
                  shape_weight: float = 0.1,
                  progress=None, cancel=None) -> NetDeformation:
    """Optimise the Stage II deformation (module docstring). ``pairs``: Stage I matches,
    dicts with ``vertex`` and ``pixel``. Returns a :class:`NetDeformation` whose
    ``vertices`` are the deformed mesh vertices (same order)."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.progress import check_cancel, report  # noqa: PLC0415

    from ..mesh import decimated  # noqa: PLC0415
    from ..raster import project_vertices, soft_silhouette_band  # noqa: PLC0415
    from ..silhouette import downsample_mask, soft_dice_loss  # noqa: PLC0415
    from ..synthetic import farthest_point_indices  # noqa: PLC0415

    if model_to_camera is None:
        raise InputError("nonrigid: Stage II needs the rigid pose first")
    if mask is None and not pairs:
        raise InputError("nonrigid: Stage II needs a liver mask or matched pairs")
    v = np.asarray(mesh.vertices, np.float64)
    T = torch.as_tensor(np.asarray(model_to_camera, np.float64))
    centre = v.mean(0)
    extent = float(np.ptp(v, axis=0).max())
    net = _AutoDeformer(v[farthest_point_indices(v, min(n_basis, len(v)))], 0.35 * extent,
                        seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    cloud_ids = farthest_point_indices(v, min(n_cloud, len(v)))
    cloud = torch.as_tensor(v[cloud_ids])
    posed = cloud @ T[:3, :3].T + T[:3, 3]
    posed_n = (posed - posed.mean(0)) / 100.0
    x_cloud = cloud
    # displacement unit (mm) of the decoder output
    # 1. warm-up: reconstruct the input cloud (identity)
    for _ in range(warmup):
        opt.zero_grad()
        z = net.latent(posed_n)
        loss = (net.displace(x_cloud, z, scale_mm) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
    # 2. shape-constrained fit (fresh optimiser state: the warm-up's moment estimates,
    # built on near-zero gradients, stall the fit otherwise)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    coarse = decimated(mesh, 800)
    vc = torch.as_tensor(coarse.vertices)
    xc = vc
    fc = torch.as_tensor(coarse.faces, dtype=torch.long)
    scale = max(1.0, camera.width / 160.0)
    cam = camera.scaled(scale) if scale > 1 else camera
    target = None
    if mask is not None:
        target = downsample_mask(torch.as_tensor(np.asarray(mask) != 0), cam.height,
                                 cam.width).float()
    pv = np.asarray([p["vertex"] for p in pairs], np.int64)
    p2 = torch.as_tensor(np.asarray([p["pixel"] for p in pairs], np.float64).reshape(-1, 2))
    p3 = torch.as_tensor(v[pv]) if len(pv) else None
    x3 = p3
    sub_ids = farthest_point_indices(v, min(200, len(v)))
    sub = torch.as_tensor(v[sub_ids])
    xs = sub
    dd = torch.cdist(sub, sub)
    knn = dd.topk(7, largest=False).indices[:, 1:]
    rest = dd.gather(1, knn)
    diag = float(np.hypot(camera.width, camera.height))
    history: List[float] = []
    best = (float("inf"), None)
    for it in range(iterations):
        check_cancel(cancel, "Stage II")
        opt.zero_grad()
        z = net.latent(posed_n)
        loss = torch.zeros((), dtype=torch.float64)
        if target is not None:
            dv = vc + net.displace(xc, z, scale_mm)
            uv, zz = project_vertices(dv.float(), T.float(), cam)
            s = soft_silhouette_band(uv, zz, fc, cam.height, cam.width, sigma=0.7)[0]
            loss = loss + soft_dice_loss(s, target)
        if reprojection_weight > 0 and p3 is not None and len(pv):
            uv, _ = project_vertices(p3 + net.displace(x3, z, scale_mm), T, camera)
            loss = loss + reprojection_weight * (uv[0] - p2).norm(dim=1).mean() / diag
        if shape_weight > 0:
            # keep the reconstruction term (the preoperative shape) with a small weight
            loss = loss + shape_weight * (net.displace(x_cloud, z, scale_mm) ** 2).sum(1).mean() \
                / scale_mm ** 2
        if isometry_weight > 0:
            ds = sub + net.displace(xs, z, scale_mm)
            cur = (ds[:, None, :] - ds[knn]).norm(dim=-1)
            loss = loss + isometry_weight * (((cur - rest) / rest.clamp(min=1e-6)) ** 2).mean()
        lv = float(loss.detach())
        history.append(lv)
        if lv < best[0]:
            best = (lv, [p.detach().clone() for p in net.parameters()])
        loss.backward()
        opt.step()
        report(progress, (it + 1) / iterations, f"Stage II: loss {lv:.4f}")
    if best[1] is not None:
        with torch.no_grad():
            for p, b in zip(net.parameters(), best[1]):
                p.copy_(b)
    with torch.no_grad():
        z = net.latent(posed_n)
    d = NetDeformation(history=history, _net=net, _z=z, _centre=centre, _scale_mm=scale_mm)
    d.vertices = d.apply(v)
    return d
