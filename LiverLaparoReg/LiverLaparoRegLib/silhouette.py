"""Rigid pose refinement from the liver mask only (differentiable silhouette rendering).

From an initial ``model_to_camera`` the pose is updated as
``model_to_camera = increment(params) @ initial`` with ``params = (omega[3] rad,
t[3] mm)`` a rotation about the posed mesh centroid (camera frame, so rotation and
translation are decoupled) followed by a translation. The loss is the soft Dice
``1 - 2 sum(S M) / (sum S + sum M)`` between the soft silhouette ``S`` (:mod:`.raster`,
sigma in pixels of the current level; times the weight of the pixels that count when
an ``ignore`` region is given) and the target mask ``M``, optimised with Adam on
a coarse-to-fine pyramid (the mask area-averaged to ``1 / factor`` of its size, the
camera scaled with ``PinholeCamera.scaled(factor)``). The best pose of the last level is
kept. Everything runs on the device of ``vertices`` if it is a tensor (else CPU).

The silhouette is rendered by :func:`.raster.soft_silhouette_band` (gradients only in a
band around the outline, no seams inside): about 20-35 ms per step at 80-160 px on one
CPU core with an ~600-face decimated mesh, so ~40 steps fit in well under a second.

Joint refinement (after PnP): with ``contours`` = pairs of (3D curve samples, 2D curve
samples) the loss adds ``contour_weight *`` the truncated symmetric mean nearest
distance (px at full resolution, divided by the image diagonal) between the projected
3D curves and the 2D curves, so the silhouette Dice cannot pull the landmarks away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.poses import axis_angle_to_matrix
from SurgicalReg2D3DLib.progress import check_cancel, report

from .raster import project_vertices, soft_silhouette_band


@dataclass
class SilhouetteResult:
    """Result of :func:`refine_silhouette`."""

    model_to_camera: np.ndarray
    soft_dice: float
    history: List[float] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)


def increment_pose(params: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
    """4x4 camera-frame increment: rotate by ``params[:3]`` about ``pivot (3,)``, then
    translate by ``params[3:]`` (mm). Differentiable."""
    R = axis_angle_to_matrix(params[:3])
    t = params[3:] + pivot - R @ pivot
    top = torch.cat([R, t[:, None]], 1)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=params.dtype, device=params.device)
    return torch.cat([top, bottom], 0)


def downsample_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-average a ``(H, W)`` mask to ``(height, width)`` (values in [0, 1])."""
    m = mask.to(torch.float32)[None, None]
    return F.adaptive_avg_pool2d(m, (height, width))[0, 0]


def soft_dice_loss(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return 1.0 - 2.0 * (s * m).sum() / (s.sum() + m.sum()).clamp(min=1e-9)


def refine_silhouette(vertices, faces, camera, mask, model_to_camera_init,
                      factors: Sequence[float] = (8.0, 4.0), iterations: Sequence[int] = (60, 40),
                      sigma_px: float = 1.0, lr_rad: float = 0.01, lr_mm: float = 1.0,
                      patience: int = 8, min_delta: float = 2e-5, contours=None,
                      contour_weight: float = 10.0, ignore=None,
                      progress=None, cancel=None) -> SilhouetteResult:
    """Refine ``model_to_camera_init`` so the rendered silhouette matches ``mask (H, W)``.

    ``factors``: downsampling factor of each pyramid level (coarse first), relative to
    the camera / mask size; ``iterations``: at most this many Adam steps per level; a
    level stops early when the loss has not improved by ``min_delta`` for ``patience``
    steps. ``contours``: optional list of ``(points3d (N, 3) model mm, points2d (M, 2)
    px)`` curve pairs for the joint loss (see the module docstring). ``ignore (H, W)``:
    optional pixels outside the mask where the liver may go on unseen (behind an
    instrument): the rendered silhouette there is not counted against the pose.
    """
    t0 = time.perf_counter()
    device = vertices.device if isinstance(vertices, torch.Tensor) else torch.device("cpu")
    # float32 rendering (pixel precision is ample), pose algebra in float64
    v = torch.as_tensor(np.asarray(vertices) if not isinstance(vertices, torch.Tensor) else vertices,
                        dtype=torch.float32, device=device)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long, device=device)
    m_full = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask,
                             device=device) != 0
    if tuple(m_full.shape) != (camera.height, camera.width):
        raise InputError(f"mask: size {m_full.shape[1]}x{m_full.shape[0]} does not match the "
                         f"camera size {camera.width}x{camera.height}")
    if not bool(m_full.any()):
        raise InputError("mask: the liver mask is empty")
    care_full = None
    if ignore is not None:
        ign = torch.as_tensor(np.asarray(ignore), device=device) != 0
        if tuple(ign.shape) != tuple(m_full.shape):
            raise InputError(f"ignore: shape {tuple(ign.shape)} does not match the mask's "
                             f"{tuple(m_full.shape)}")
        care_full = ~(ign & ~m_full)
    if len(factors) != len(iterations):
        raise InputError("silhouette levels: factors and iterations must have the same length")
    T0 = torch.as_tensor(np.asarray(model_to_camera_init, dtype=np.float64), device=device)
    pivot = (v.double() @ T0[:3, :3].T + T0[:3, 3]).mean(0).detach()
    params = torch.zeros(6, dtype=torch.float64, device=device)
    curves = []
    for p3, p2 in contours or ():
        p3 = np.asarray(p3, dtype=np.float64)
        p2 = np.asarray(p2, dtype=np.float64)
        curves.append((torch.as_tensor(p3[::max(1, len(p3) // 64)], device=device),
                       torch.as_tensor(p2[::max(1, len(p2) // 64)], device=device)))
    diag = float(np.hypot(camera.width, camera.height))
    tau = 0.05 * diag
    history: List[float] = []
    total = max(1, sum(iterations))
    done = 0
    best_loss, best_params = float("inf"), params.clone()
    for level, (factor, n_it) in enumerate(zip(factors, iterations)):
        cam = camera.scaled(factor) if factor != 1 else camera
        target = downsample_mask(m_full, cam.height, cam.width)
        care = (None if care_full is None
                else downsample_mask(care_full, cam.height, cam.width))
        rot = params[:3].clone().requires_grad_(True)
        trans = params[3:].clone().requires_grad_(True)
        opt = torch.optim.Adam([{"params": [rot], "lr": lr_rad},
                                {"params": [trans], "lr": lr_mm}])
        best_loss = float("inf")
        since_best = 0
        for it in range(n_it):
            check_cancel(cancel, "silhouette refinement")
            opt.zero_grad()
            p = torch.cat([rot, trans])
            T = increment_pose(p, pivot) @ T0
            uv, z = project_vertices(v, T.float(), cam)
            s = soft_silhouette_band(uv, z, f, cam.height, cam.width, sigma=sigma_px)[0]
            loss = soft_dice_loss(s if care is None else s * care, target)
            if curves:
                loss = loss + contour_weight * _curve_loss(curves, T, camera, tau) / diag
            if not loss.requires_grad:  # nothing of the mesh is drawn on the image
                raise InputError("initial pose: the liver mesh does not appear in the image "
                                 "(behind the camera or outside the frame); nothing to "
                                 "register")
            lv = float(loss.detach())
            history.append(lv)
            if lv < best_loss - min_delta:
                since_best = 0
            else:
                since_best += 1
            if lv < best_loss:
                best_loss, best_params = lv, p.detach().clone()
            if since_best >= patience:
                done += n_it - it - 1
                break
            loss.backward()
            opt.step()
            done += 1
            report(progress, done / total, f"silhouette level {level + 1}: loss {lv:.4f}")
        params = best_params.clone()
    T_best = (increment_pose(best_params, pivot) @ T0).detach().cpu().numpy()
    return SilhouetteResult(T_best, 1.0 - best_loss, history,
                            {"silhouette_s": time.perf_counter() - t0})


#: settings of :func:`refine_from_mask` (the silhouette method and the refinements after
#: PnP or a learned pose): finest pyramid level width (px; the coarse level is half of
#: it), Adam steps per level (mask only, from an initial pose), steps at the finest level
#: only for the joint refinement after PnP (already close), faces of the decimated
#: rendering mesh
SILHOUETTE_FINE_WIDTH = 128
SILHOUETTE_ITERATIONS = (60, 20)
JOINT_ITERATIONS = 12
SILHOUETTE_FACES = 600


def refine_from_mask(mesh, camera, mask, model_to_camera_init, contours=None, progress=None,
                     cancel=None):
    """The module's refinement with the settings above: ``mesh`` (a ``MeshData``, model
    frame) is decimated to ~``SILHOUETTE_FACES`` faces for the rendering; without
    ``contours`` a coarse (~64 px wide) then a fine (~128 px) level from the initial
    pose, with ``contours`` (curve pairs, joint refinement after PnP: the pose is
    already close) the fine level only. Returns ``(model_to_camera, timings,
    history)``."""
    from .mesh import decimated  # noqa: PLC0415

    f_fine = max(1.0, camera.width / SILHOUETTE_FINE_WIDTH)
    coarse = decimated(mesh, SILHOUETTE_FACES)
    if contours:
        factors, iterations, patience = (f_fine,), (JOINT_ITERATIONS,), 5
    else:
        factors, iterations, patience = (2 * f_fine, f_fine), SILHOUETTE_ITERATIONS, 8
    r = refine_silhouette(coarse.vertices, coarse.faces, camera, mask, model_to_camera_init,
                          factors=factors, iterations=iterations,
                          sigma_px=0.7, patience=patience, lr_rad=0.01, lr_mm=1.0,
                          contours=contours, progress=progress, cancel=cancel)
    return r.model_to_camera, dict(r.timings), r.history


def _curve_loss(curves, model_to_camera, camera, tau: float) -> torch.Tensor:
    """Mean over curve pairs of the symmetric mean nearest distance (px, each distance
    truncated at ``tau``) between projected 3D samples and 2D samples."""
    total = []
    for p3, p2 in curves:
        uv, _ = project_vertices(p3, model_to_camera, camera)
        d = torch.cdist(uv[0], p2)
        total.append(0.5 * (d.amin(1).clamp(max=tau).mean() + d.amin(0).clamp(max=tau).mean()))
    return torch.stack(total).mean()
