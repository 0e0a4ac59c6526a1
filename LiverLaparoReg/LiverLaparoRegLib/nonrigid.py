"""Non-rigid refinement of a posed liver: smooth radial-basis displacements per frame.

Deformation (model frame, mm): ``x' = x + sum_k w_k exp(-|x - c_k|^2 / (2 r^2))`` with
``K`` control points ``c_k`` (farthest-point samples of the vertices) and weights
``w_k (K, 3)``: low-dimensional and smooth, so the same function is applied to the
vessels and tumours (:meth:`Deformation.apply`). Optimised with Adam on

- ``1 - soft Dice`` between the rendered silhouette (:mod:`.raster`) and the mask,
- the landmark reprojection loss over *paired* correspondences: each 3D contour is
  paired with one 2D contour (``pairs`` from PnP, else the P2ILF order: the k-th 2D
  contour of a label with the k-th 3D contour of that label, silhouettes skipped); along
  a pair, the 3D curve samples (equal 3D arc length) are matched once, at the rigid
  pose, to the points of the 2D curve at the same *projected* arc-length fraction
  (perspective foreshortening accounted for, direction chosen by the smaller distance);
  the loss is the mean distance in px between the projected deformed samples and their
  matched 2D points, divided by the image diagonal,
- a local-isometry regulariser: squared relative change of the kNN edge lengths on a
  farthest-point subset of the vertices;
- a prior against displacement along the viewing direction (``depth_weight`` times the
  mean squared camera-z component of the displacement of those points, relative to the
  liver size): one frame barely observes it, and without the prior the other terms
  moved the liver wrongly in depth (measured: bending along the viewing direction raised
  the vertex error in 3 of 4 cases without it, lowered it in 4 of 4 with it).

The rigid ``model_to_camera`` pose is kept fixed (the non-rigid run needs it).

What it is for, measured (``benchmarks/results/laparo_bench.md``): near-isometric
bending of the liver (:func:`bend`) seen from one view. Bending within the image plane
changes the outline and the landmarks and is recovered in part; bending along the
viewing direction is nearly invisible in one frame and is recovered only a little.
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


def bend(vertices: np.ndarray, axis, direction, angle_deg: float,
         centre: Optional[np.ndarray] = None) -> np.ndarray:
    """SYNTHETIC near-isometric test deformation: bend ``vertices (V, 3)`` like a beam.

    ``axis`` (3,): the long direction along which the bend angle grows; ``direction``
    (3,): where the ends move (made perpendicular to ``axis``). A point at signed distance
    ``s`` along ``axis`` from ``centre`` (default: the centroid) and ``h`` along
    ``direction`` is put on a circular arc of total angle ``angle_deg`` over the mesh's
    extent along ``axis``: lengths along the mid-surface are kept (pure bending), strain
    ``h / R`` off it."""
    v = np.asarray(vertices, dtype=np.float64)
    c = v.mean(0) if centre is None else np.asarray(centre, dtype=np.float64)
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    n = np.asarray(direction, dtype=np.float64)
    n = n - a * (n @ a)
    n = n / np.linalg.norm(n)
    rel = v - c
    s = rel @ a
    h = rel @ n
    length = float(np.ptp(s))
    theta_total = np.radians(angle_deg)
    if abs(theta_total) < 1e-12:
        return v.copy()
    R = length / theta_total                   # radius of the mid-surface arc
    th = s / R
    # centre of curvature at +R along n (ends move towards +n)
    s_new = (R - h) * np.sin(th)
    h_new = R - (R - h) * np.cos(th)
    return v + a[None] * (s_new - s)[:, None] + n[None] * (h_new - h)[:, None]


def landmark_pairs(contours2d, contours3d, pairs=None):
    """``[(index2d, index3d)]``: the curve pairs of the landmark term (see the module
    docstring); ``pairs`` = PnP's ``(index2d, index3d, reversed)`` list when known."""
    if pairs:
        return [(int(a), int(b)) for a, b, *_ in pairs]
    rank2 = {}
    for i, c in enumerate(contours2d or ()):
        if c.label != "Silhouette":
            rank2.setdefault(c.label, []).append(i)
    used, out = {}, []
    for j, c in enumerate(contours3d or ()):
        k = used.get(c.label, 0)
        used[c.label] = k + 1
        if k < len(rank2.get(c.label, ())):
            out.append((rank2[c.label][k], j))
    return out


def _matched_samples(p3, p2, model_to_camera, camera, n: int = 32):
    """``(3D samples (n, 3), matched 2D points (n, 2))`` of one curve pair (module
    docstring): equal 3D arc length, matched by projected arc-length fraction."""
    from .metrics import ArcLengthCurve  # noqa: PLC0415

    T = np.asarray(model_to_camera, dtype=np.float64)
    s3 = ArcLengthCurve(p3).sample(0.0, 1.0, n)
    pc = s3 @ T[:3, :3].T + T[:3, 3]
    uv = camera.project(pc).detach().cpu().numpy()
    seg = np.linalg.norm(np.diff(uv, axis=0), axis=1)
    frac = np.r_[0.0, np.cumsum(seg)] / max(seg.sum(), 1e-9)
    c2 = ArcLengthCurve(p2)
    best = None
    for reverse in (False, True):
        m = np.stack([c2.sample(f, f, 1, reverse=reverse)[0] for f in frac])
        e = np.linalg.norm(m - uv, axis=1).mean()
        if best is None or e < best[0]:
            best = (e, m)
    return s3, best[1]


def deform(mesh: MeshData, camera, model_to_camera, mask=None, contours2d=None,
           contours3d=None, n_controls: int = 16, iterations: int = 30,
           isometry_weight: float = 10.0, landmark_weight: float = 1.0,
           scale: Optional[float] = None, pairs=None, depth_weight: float = 30.0,
           progress=None, cancel=None) -> Deformation:
    """Optimise the deformation (see the module docstring). Returns a :class:`Deformation`
    whose ``vertices`` are the deformed ``mesh.vertices`` (same order). ``pairs``: PnP's
    curve pairs ``(index2d, index3d, reversed)`` (default: the P2ILF order)."""
    if model_to_camera is None:
        raise InputError("nonrigid: a non-rigid registration needs a rigid pose first")
    if mask is None and not contours2d:
        raise InputError("nonrigid: needs a liver mask or 2D/3D contours")
    from .mesh import decimated  # noqa: PLC0415

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
    view = T[2, :3]                     # camera z axis in the model frame
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
        from .metrics import densify_polyline  # noqa: PLC0415

        step = max(0.25, extent / 400.0)
        for a, b in landmark_pairs(contours2d, contours3d, pairs):
            p3 = densify_polyline(mesh.vertices[contours3d[b].vertices], step)
            s3, m2 = _matched_samples(p3, contours2d[a].points, model_to_camera, camera)
            lm.append((torch.as_tensor(s3), torch.as_tensor(m2)))
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
        if lm:
            lm_loss = torch.zeros((), dtype=torch.float64)
            for p3, p2 in lm:
                uv, _ = project_vertices(_displace(p3, centres, w, radius), T, camera)
                lm_loss = lm_loss + (uv[0] - p2).norm(dim=1).mean()
            loss = loss + landmark_weight * lm_loss / (len(lm) * diag)
        ds = _displace(sub, centres, w, radius)
        cur = (ds[:, None, :] - ds[knn]).norm(dim=-1)
        loss = loss + isometry_weight * (((cur - rest) / rest.clamp(min=1e-6)) ** 2).mean()
        if depth_weight:
            # displacement along the viewing direction is (nearly) unobservable in one frame
            dz = (ds - sub) @ view
            loss = loss + depth_weight * ((dz / extent) ** 2).mean()
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
