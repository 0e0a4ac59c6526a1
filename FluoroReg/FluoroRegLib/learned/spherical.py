"""Spherical deep similarity and a differentiable Levenberg-Marquardt (core only).

Status: the building blocks and a small training step, tested on a synthetic phantom;
NOT yet wired into ``surgreg fluoro train --kind similarity`` or ``register`` and with no
bundled model or benchmark (see ``docs/fluoro.md``).

Features on the hypersphere
    :class:`SphericalFeatureNet` maps an image (B, 1, H, W) to per-pixel tangent vectors
    ``v`` (B, C, H, W) at the north pole of ``S^C`` and takes the exponential map there
    (:func:`exp_north_pole`): ``phi = (sin|v| v / |v|, cos|v|)`` (B, C + 1, H, W), unit
    length per pixel. ``spherical=False`` gives the Euclidean ablation (raw ``v``).

Similarity
    ``eps = sum over pixels (1 - <phi_moving, phi_fixed>)`` (:func:`similarity_eps`), which
    equals ``sum |r|^2`` with residuals ``r = (phi_m - phi_f) / sqrt(2)`` (unit vectors);
    Euclidean ablation: ``eps = 0.5 sum |v_m - v_f|^2`` with ``r = (v_m - v_f) / sqrt(2)``.

Training signal (:func:`gradient_matching_loss`)
    For a true pose ``T*`` and a nearby pose ``T``, the gradient of ``eps`` with respect to
    a left se(3) increment ``xi`` at ``T`` (``pose(xi) = C exp(xi) C^-1 T``, ``C`` = the CT
    centre in the camera frame) should point like the gradient of a geodesic distance
    ``d(pose(xi), T*)``: ``"se3"`` = ``poses.se3_log_distance`` (rotation at the CT's RMS
    radius ``L``) or ``"so4"`` = ``poses.so4_distance`` of the SO(4) embedding
    (``poses.pose_to_so4``, characteristic length ``L``). Loss: ``1 - cos`` of the two
    gradients, rotation parts divided by ``L`` (so both are per mm).

Differentiable LM (:func:`differentiable_lm`)
    ``K`` steps, each: residuals at the current pose and at 6 perturbed poses in one batch
    (forward differences, the Jacobian ``J``), weighted normal equations
    ``(J^T W J + lambda_k diag(J^T W J)) delta = -J^T W r`` with the damping schedule
    ``lambda_k = lambda_0 * decay^k`` (no accept/reject branch, so the map is smooth), and
    the increment composed on the left, ``T <- C exp(delta) C^-1 T``. Nothing is detached:
    a loss on the final pose back-propagates through every step into the feature network
    (and through the DRRs into the poses of earlier steps).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from SurgicalReg2D3DLib.poses import se3_exp, se3_log_distance, so4_distance


def exp_north_pole(v: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Exponential map of tangent vectors ``v`` (..., C, ...) at the north pole
    ``e_{C+1}`` of ``S^C`` -> unit vectors (..., C + 1, ...)."""
    n = v.norm(dim=dim, keepdim=True)
    small = n < 1e-4
    safe = torch.where(small, torch.ones_like(n), n)
    sinc = torch.where(small, 1.0 - n * n / 6.0, torch.sin(safe) / safe)
    return torch.cat([sinc * v, torch.cos(n)], dim=dim)


class SphericalFeatureNet(nn.Module):
    """Per-pixel features: a small encoder-decoder (one /2 level) + exp map at the pole."""

    def __init__(self, channels: int = 8, width: int = 16, spherical: bool = True):
        super().__init__()
        self.channels, self.width, self.spherical = int(channels), int(width), bool(spherical)
        w = self.width

        def block(a, b, stride=1):
            return nn.Sequential(nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.GroupNorm(4, b), nn.SiLU())

        self.enc1 = block(1, w)
        self.enc2 = nn.Sequential(block(w, 2 * w, 2), block(2 * w, 2 * w))
        self.dec = block(3 * w, w)
        self.out = nn.Conv2d(w, self.channels, 1)

    def arch(self) -> dict:
        return {"channels": self.channels, "width": self.width, "spherical": self.spherical}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.enc2(a)
        up = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        v = self.out(self.dec(torch.cat([a, up], dim=1)))
        return exp_north_pole(v) if self.spherical else v


def similarity_eps(phi_m: torch.Tensor, phi_f: torch.Tensor, spherical: bool = True) -> torch.Tensor:
    """(B,) ``sum_pixels (1 - <phi_m, phi_f>)`` (spherical) or ``0.5 sum |phi_m - phi_f|^2``."""
    if spherical:
        return (1.0 - (phi_m * phi_f).sum(1)).flatten(1).sum(1)
    return 0.5 * ((phi_m - phi_f) ** 2).flatten(1).sum(1)


def residuals(phi_m: torch.Tensor, phi_f: torch.Tensor) -> torch.Tensor:
    """(B, N) residuals with ``sum r^2 = eps`` (both variants)."""
    return ((phi_m - phi_f) / math.sqrt(2.0)).flatten(1)


def _standardise(img: torch.Tensor) -> torch.Tensor:
    flat = img.flatten(-2)
    flat = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True).clamp_min(1e-6)
    return flat.reshape(img.shape)


def left_compose(xi: torch.Tensor, T: torch.Tensor, center_cam: torch.Tensor) -> torch.Tensor:
    """``C exp(xi) C^-1 T``: increments ``xi`` (B, 6) (rotation first) about the camera-frame
    point ``center_cam`` (3,), composed on the left of ``T`` (4, 4) or (B, 4, 4)."""
    C = torch.eye(4, dtype=xi.dtype, device=xi.device).repeat(xi.shape[0], 1, 1)
    C[:, :3, 3] = center_cam.to(xi)
    Ci = torch.eye(4, dtype=xi.dtype, device=xi.device).repeat(xi.shape[0], 1, 1)
    Ci[:, :3, 3] = -center_cam.to(xi)
    return C @ se3_exp(xi) @ Ci @ T.to(xi)


def geodesic(T: torch.Tensor, T_true: torch.Tensor, distance: str, length_mm: float) -> torch.Tensor:
    """(B,) ``"se3"`` (mm, rotation at ``length_mm``) or ``"so4"`` distance."""
    if distance == "se3":
        return se3_log_distance(T_true, T, rotation_length_mm=length_mm)
    if distance == "so4":
        return so4_distance(T, T_true, length_mm)
    raise ValueError(f"distance: expected 'se3' or 'so4', got {distance!r}")


def render_features(net, volume, camera, poses: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Features of DRRs at ``poses`` (B, 4, 4) (differentiable in the poses and the net)."""
    from ..drr import render_drr  # noqa: PLC0415

    # kernels=False: the training differentiates the pose gradient (second order)
    drr = render_drr(volume, camera, poses.to(torch.float32), n_samples=n_samples,
                     kernels=False)
    return net(_standardise(drr).unsqueeze(1).to(next(net.parameters()).dtype))


def gradient_matching_loss(net, volume, camera, poses: torch.Tensor, true_poses: torch.Tensor,
                           fixed_images: torch.Tensor, center_cam: torch.Tensor,
                           length_mm: float, distance: str = "se3",
                           n_samples: int = 32) -> torch.Tensor:
    """Mean ``1 - cos(d eps / d xi, d dist / d xi)`` over the batch (see the module doc).

    ``poses``, ``true_poses``: (B, 4, 4) float64; ``fixed_images`` (B, H, W) the X-rays of
    ``true_poses`` (randomised as wanted). Differentiable in the network's parameters.
    """
    b = poses.shape[0]
    xi = torch.zeros(b, 6, dtype=torch.float64, requires_grad=True)
    moved = left_compose(xi, poses, center_cam)
    phi_m = render_features(net, volume, camera, moved, n_samples)
    phi_f = net(_standardise(fixed_images).unsqueeze(1).to(phi_m.dtype))
    eps = similarity_eps(phi_m, phi_f, net.spherical)
    g_eps = torch.autograd.grad(eps.sum(), xi, create_graph=True)[0]
    xi2 = torch.zeros(b, 6, dtype=torch.float64, requires_grad=True)
    d = geodesic(left_compose(xi2, poses, center_cam), true_poses, distance, length_mm)
    g_geo = torch.autograd.grad(d.sum(), xi2)[0]
    scale = torch.tensor([1 / length_mm] * 3 + [1.0] * 3, dtype=torch.float64)
    return (1.0 - F.cosine_similarity(g_eps * scale, g_geo * scale, dim=1, eps=1e-12)).mean()


def differentiable_lm(residual_fn: Callable[[torch.Tensor], torch.Tensor], T0: torch.Tensor,
                      center_cam: torch.Tensor, steps: int = 5, lambda0: float = 1e-2,
                      decay: float = 0.5, fd_step: Tuple[float, float] = (1e-3, 0.2),
                      weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, List[float]]:
    """``steps`` differentiable LM iterations from ``T0`` (4, 4) (see the module doc).

    ``residual_fn``: poses (P, 4, 4) -> residuals (P, N); ``fd_step``: forward-difference
    steps (rad, mm); ``weights``: optional (N,) residual weights ``W``. Returns the final
    pose (4, 4) (in the autograd graph) and the cost ``sum W r^2`` before each step.
    """
    T = T0.to(torch.float64)
    h = torch.tensor([fd_step[0]] * 3 + [fd_step[1]] * 3, dtype=torch.float64)
    costs = []
    for k in range(int(steps)):
        xis = torch.cat([torch.zeros(1, 6, dtype=torch.float64), torch.diag(h)])
        r = residual_fn(left_compose(xis, T, center_cam)).to(torch.float64)  # (7, N)
        r0 = r[0]
        J = ((r[1:] - r0) / h[:, None]).transpose(0, 1)  # (N, 6)
        w = torch.ones_like(r0) if weights is None else weights.to(r0)
        A = J.transpose(0, 1) @ (w[:, None] * J)
        g = J.transpose(0, 1) @ (w * r0)
        lam = float(lambda0) * float(decay) ** k
        A_d = A + lam * torch.diag(torch.diagonal(A)) + 1e-9 * torch.eye(6, dtype=A.dtype)
        delta = torch.linalg.solve(A_d, -g)
        costs.append(float((w * r0 * r0).sum().detach()))
        T = left_compose(delta[None], T, center_cam)[0]
    return T, costs


def lm_residual_fn(net, volume, camera, fixed_image: torch.Tensor, n_samples: int = 32):
    """``residual_fn`` for :func:`differentiable_lm`: feature residuals of DRRs at the
    poses against the fixed image (H, W)."""
    phi_f = net(_standardise(fixed_image)[None, None].to(next(net.parameters()).dtype))

    def fn(poses: torch.Tensor) -> torch.Tensor:
        phi_m = render_features(net, volume, camera, poses, n_samples)
        return residuals(phi_m, phi_f.expand_as(phi_m))

    return fn


def train_similarity_steps(net, renderer, steps: int, batch_size: int = 4,
                           distance: str = "se3", lr: float = 1e-3, gen=None,
                           randomisation: float = 0.5, lm_steps: int = 0,
                           length_mm: Optional[float] = None) -> List[float]:
    """A few optimiser steps of the similarity network (tests, experiments).

    True poses from ``renderer`` (a :class:`~.sampling.TrainingRenderer`), fixed images =
    their randomised DRRs, moving poses = true poses moved by another draw from the range
    (about the CT centre). Loss: :func:`gradient_matching_loss`, plus, with ``lm_steps``,
    the geodesic distance (/ 10 mm) after that many :func:`differentiable_lm` steps from
    the first moving pose (gradients through the LM). Returns the losses.
    """
    from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415

    from .sampling import delta_to_pose, randomise, sample_deltas  # noqa: PLC0415

    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    L = float(length_mm or 100.0)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(int(steps)):
        drr, _, _, true_poses = renderer.sample(gen, batch_size)
        fixed = randomise(drr, gen, randomisation)
        r, t = sample_deltas(gen, batch_size, renderer.range)
        c_true = (true_poses[:, :3, :3] @ renderer.center_ras + true_poses[:, :3, 3])
        moving = torch.stack([delta_to_pose(so3_exp(r[i:i + 1]), t[i:i + 1], true_poses[i], c_true[i])[0]
                              for i in range(batch_size)])
        loss = gradient_matching_loss(net, renderer.volume, renderer.camera, moving, true_poses,
                                      fixed, renderer.c, L, distance, renderer.n_samples)
        if lm_steps:
            fn = lm_residual_fn(net, renderer.volume, renderer.camera, fixed[0], renderer.n_samples)
            T, _ = differentiable_lm(fn, moving[0], c_true[0], steps=lm_steps)
            loss = loss + geodesic(T[None], true_poses[:1], "se3", L).mean() / 10.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
