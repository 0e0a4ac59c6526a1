"""Non-rigid refinement of a posed liver: smooth radial-basis displacements per frame.

Deformation (model frame, mm): ``x' = x + sum_k w_k exp(-|x - c_k|^2 / (2 r^2))`` with
``K`` control points ``c_k`` (farthest-point samples of the vertices) and weights
``w_k (K, 3)``: low-dimensional and smooth, so the same function is applied to the
vessels and tumours (:meth:`Deformation.apply`). Optimised with Adam on

- ``1 - soft Dice`` between the rendered silhouette (:mod:`.raster`) and the mask,
- the landmark reprojection loss (mean nearest distance in px between projected 3D
  contour samples and the 2D contour, divided by the image diagonal),
- a local-isometry regulariser: squared relative change of the kNN edge lengths on a
  farthest-point subset of the vertices.

The rigid ``model_to_camera`` pose is kept fixed (the non-rigid run needs it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from .mesh import MeshData
from .raster import project_vertices, soft_silhouette_band
from .synthetic import farthest_point_indices


@dataclass
class Deformation:
    """Radial-basis displacement field: ``centres (K, 3)``, ``weights (K, 3)``, ``radius`` mm."""

    centres: np.ndarray
    weights: np.ndarray
    radius: float
    history: List[float] = field(default_factory=list)
    vertices: Optional[np.ndarray] = None          # deformed input mesh vertices (V, 3)

    def apply(self, points) -> np.ndarray:
        """Deform model-frame points ``(N, 3)`` (vessels, tumours, the liver)."""
        p = torch.as_tensor(np.asarray(points, dtype=np.float64))
        return _displace(p, torch.as_tensor(self.centres), torch.as_tensor(self.weights),
                         self.radius).numpy()


def _displace(p, centres, weights, radius):
    d2 = ((p[:, None, :] - centres[None]) ** 2).sum(-1)
    return p + torch.exp(-d2 / (2 * radius ** 2)) @ weights


def deform(mesh: MeshData, camera, model_to_camera, mask=None, contours2d=None,
           contours3d=None, n_controls: int = 16, iterations: int = 30,
           isometry_weight: float = 10.0, landmark_weight: float = 1.0,
           scale: Optional[float] = None, progress=None, cancel=None) -> Deformation:
    """Optimise the deformation (see the module docstring). Returns a :class:`Deformation`
    whose ``vertices`` are the deformed ``mesh.vertices`` (same order)."""
    if model_to_camera is None:
        raise InputError("nonrigid: a non-rigid registration needs a rigid pose first")
    if mask is None and not contours2d:
        raise InputError("nonrigid: needs a liver mask or 2D/3D contours")
    from .logic import decimated  # noqa: PLC0415

    v_full = torch.as_tensor(mesh.vertices, dtype=torch.float64)
    coarse = decimated(mesh, 800)
    vc = torch.as_tensor(coarse.vertices, dtype=torch.float64)
    fc = torch.as_tensor(coarse.faces, dtype=torch.long)
    extent = float(np.ptp(mesh.vertices, axis=0).max())
    radius = 0.35 * extent
    centres = torch.as_tensor(mesh.vertices[farthest_point_indices(mesh.vertices, n_controls)])
    sub = torch.as_tensor(mesh.vertices[farthest_point_indices(mesh.vertices, 200)])
    dd = torch.cdist(sub, sub)
    knn = dd.topk(7, largest=False).indices[:, 1:]
    rest = dd.gather(1, knn)
    T = torch.as_tensor(np.asarray(model_to_camera, dtype=np.float64))
    if scale is None:
        scale = max(1.0, camera.width / 160.0)
    cam = camera.scaled(scale) if scale > 1 else camera
    target = None
    if mask is not None:
        from .silhouette import downsample_mask, soft_dice_loss  # noqa: PLC0415

        target = downsample_mask(torch.as_tensor(np.asarray(mask) != 0), cam.height, cam.width)
        target = target.float()
    lm = []
    if contours2d and contours3d:
        by2 = {}
        for c in contours2d:
            by2.setdefault(c.label, []).append(c.points)
        for c in contours3d:
            if c.label in by2:
                lm.append((torch.as_tensor(mesh.vertices[c.vertices]),
                           torch.as_tensor(np.concatenate(by2[c.label]))))
    diag = float(np.hypot(camera.width, camera.height))
    w = torch.zeros(n_controls, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.5)
    history: List[float] = []
    best = (float("inf"), w.detach().clone())
    for it in range(iterations):
        check_cancel(cancel, "non-rigid refinement")
        opt.zero_grad()
        loss = torch.zeros((), dtype=torch.float64)
        if target is not None:
            # float32 rendering (pixel precision is ample), deformation in float64
            uv, z = project_vertices(_displace(vc, centres, w, radius).float(), T.float(), cam)
            s = soft_silhouette_band(uv, z, fc, cam.height, cam.width, sigma=0.7)[0]
            loss = loss + soft_dice_loss(s, target)
        for p3, p2 in lm:
            uv, _ = project_vertices(_displace(p3, centres, w, radius), T, camera)
            loss = loss + landmark_weight * torch.cdist(uv[0], p2).amin(1).mean() / diag
        ds = _displace(sub, centres, w, radius)
        cur = (ds[:, None, :] - ds[knn]).norm(dim=-1)
        loss = loss + isometry_weight * (((cur - rest) / rest.clamp(min=1e-6)) ** 2).mean()
        lv = float(loss.detach())
        history.append(lv)
        if lv < best[0]:
            best = (lv, w.detach().clone())
        loss.backward()
        opt.step()
        report(progress, (it + 1) / iterations, f"non-rigid: loss {lv:.4f}")
    d = Deformation(centres.numpy(), best[1].numpy(), radius, history)
    d.vertices = d.apply(v_full.numpy())
    return d
