"""The learned point-to-plane correspondence (PPC) update: flow network, attention
weights and the weighted PPC solve as a differentiable layer.

One update from a pose ``T`` (``ct_to_camera`` of view 0), per view:

1. **Contour points** (:func:`contour_points`, batched torch): the 3D edge points of the
   CT (``ppc.edge_points_3d``, the classic detector) whose surface is tangent to the
   viewing ray at ``T`` (``|n . ray| < cos_tangent``), projected to pixels ``uv`` with
   their 2D contour normal ``n2`` (same geometry as the classic ``ppc._match_view``).
2. **Flow** (:class:`FlowNet`): a small encoder-decoder (plain torch) reads the fixed
   X-ray and the DRR at ``T`` (both standardised, at the model's training resolution)
   and predicts a dense 2D displacement field (pixels) and a feature map; both are read
   at ``uv`` (bilinear). The matched point is ``q = uv + flow``.
3. **Attention** (:class:`PointAttention`, optional, PointNet-style): a shared MLP on
   each point's (features, flow, normal, position), a max-pool over the view's points
   for the global context, and a second MLP gives a weight in (0, 1) per point.
4. **Weighted PPC solve** (:func:`ppc_rows`, :func:`ppc_solve`, torch, differentiable):
   the plane through the source, ``q`` and the contour tangent must contain the moved
   3D point; the normal equations are weighted by the attention, damped like the classic
   solve (``damping * trace(H) / 6``, parameters scaled to mm at 100 mm from the CT
   centre), optionally Huber re-weighted; :func:`apply_update` composes the small motion
   about the CT centre on the left. With the same correspondences, weights and options
   it gives the classic ``ppc.register_ppc`` step (tested).

Gradients flow from the updated pose back through the solve into the flow and the weights,
so the network can be trained with a loss on the pose (mTRE) besides the flow end-point
error (:mod:`.ppc_train`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROTATION_SCALE_MM = 100.0  # rotation counted at 100 mm from the CT centre (as the classic)


# -- geometry (torch, batched) ------------------------------------------------------------
def camera_tensor(camera) -> Tuple[float, float, float, float, float, int, int]:
    """``(f, sx, sy, cx, cy, width, height)`` of an X-ray camera."""
    from ..geometry import camera_parameters  # noqa: PLC0415

    p = camera_parameters(camera)
    return p.f, p.sx, p.sy, p.cx, p.cy, p.width, p.height


def project(points_cam: torch.Tensor, cam) -> torch.Tensor:
    """(..., 3) camera mm -> (..., 2) pixels (u, v)."""
    f, sx, sy, cx, cy = cam[:5]
    z = points_cam[..., 2]
    return torch.stack([points_cam[..., 0] / z * (f / sx) + cx,
                        points_cam[..., 1] / z * (f / sy) + cy], -1)


def contour_points(points_ras: torch.Tensor, normals_ras: torch.Tensor, poses: torch.Tensor,
                   cam, k: int, cos_tangent: float = 0.25, margin_px: float = 2.0,
                   generator: Optional[torch.Generator] = None):
    """Projected contour points of edge points at a batch of poses.

    ``points_ras``/``normals_ras`` (N, 3); ``poses`` (B, 4, 4) ``ct_to_camera``; ``cam``:
    :func:`camera_tensor`. Picks up to ``k`` tangent points inside the image (random with
    ``generator``, else the first in edge-point order). Returns ``(P (B, k, 3) camera mm,
    uv (B, k, 2), n2 (B, k, 2) unit contour normals, valid (B, k) bool, index (B, k))``.
    """
    f, sx, sy, cx, cy, w, h = cam
    dt = poses.dtype
    R, t = poses[:, :3, :3], poses[:, :3, 3]
    P = points_ras.to(dt) @ R.transpose(1, 2) + t[:, None]  # (B, N, 3)
    Nn = normals_ras.to(dt) @ R.transpose(1, 2)
    ray = P / P.norm(dim=-1, keepdim=True)
    tangent = (Nn * ray).sum(-1).abs() < cos_tangent
    uv = project(P, cam)
    n2 = project(P + 0.5 * Nn, cam) - uv
    n2_len = n2.norm(dim=-1)
    ok = tangent & (n2_len > 1e-9) & (P[..., 2] > 1e-3)
    ok &= (uv[..., 0] > margin_px) & (uv[..., 0] < w - 1 - margin_px)
    ok &= (uv[..., 1] > margin_px) & (uv[..., 1] < h - 1 - margin_px)
    b, n = ok.shape
    if generator is not None:
        score = torch.rand(b, n, generator=generator, dtype=torch.float64).to(P.device)
    else:
        score = torch.linspace(1.0, 0.5, n, dtype=torch.float64, device=P.device).expand(b, n)
    score = torch.where(ok, score, torch.full_like(score, -1.0))
    kk = min(int(k), n)
    top, idx = score.topk(kk, dim=1)
    valid = top > -0.5
    gather = idx[..., None].expand(b, kk, 3)
    P_k = P.gather(1, gather)
    uv_k = uv.gather(1, idx[..., None].expand(b, kk, 2))
    n2_k = n2.gather(1, idx[..., None].expand(b, kk, 2))
    n2_k = n2_k / n2_k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return P_k, uv_k, n2_k, valid, idx


def ppc_rows(P: torch.Tensor, q: torch.Tensor, n2: torch.Tensor, cam,
             camera0_to_view: Optional[torch.Tensor] = None):
    """Plane normals and point-to-plane terms of correspondences, moved to camera 0.

    ``P`` (..., 3) 3D points in the view's camera frame, ``q`` (..., 2) matched pixels,
    ``n2`` (..., 2) unit contour normals (pixels). Returns ``(m0, P0, d)``: unit plane
    normals and points in camera 0 and the offsets, so that a point ``X`` (camera 0) lies
    on the plane when ``m0 . X + d = 0`` (``d = 0`` for view 0). Same formulas as the
    classic ``ppc._match_view`` / ``register_ppc``. Differentiable in ``q`` and ``n2``.
    """
    f, sx, sy, cx, cy = cam[:5]
    Qd = torch.stack([(q[..., 0] - cx) * sx, (q[..., 1] - cy) * sy,
                      torch.full_like(q[..., 0], f)], -1)
    t3 = torch.stack([-n2[..., 1] * sx, n2[..., 0] * sy, torch.zeros_like(n2[..., 0])], -1)
    m = torch.cross(Qd, t3, dim=-1)
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if camera0_to_view is None:
        return m, P, torch.zeros_like(m[..., 0])
    Rv = camera0_to_view[..., :3, :3].to(m)
    tv = camera0_to_view[..., :3, 3].to(m)
    m0 = m @ Rv  # R^T m as rows
    P0 = (P - tv) @ Rv
    d = (m * tv).sum(-1)
    return m0, P0, d


def ppc_solve(P0: torch.Tensor, m0: torch.Tensor, d: torch.Tensor, w: torch.Tensor,
              c0: torch.Tensor, damping: float = 0.05, huber_iterations: int = 0,
              huber_mm: float = 2.0, max_step_mm: Optional[float] = None) -> torch.Tensor:
    """The weighted, damped PPC least squares (differentiable): small motions
    ``x = (omega, v)`` (B, 6) about ``c0`` (B, 3) (camera 0).

    ``P0``, ``m0`` (B, M, 3), ``d``, ``w`` (B, M) (a weight of 0 drops an equation).
    Each correspondence gives ``m . (P + omega x (P - c) + v) + d = 0``. Parameters are
    scaled to mm at ``ROTATION_SCALE_MM``; ``H += damping * trace(H) / 6 * I``;
    ``huber_iterations`` > 0: that many solves with Huber weights (``huber_mm``) from the
    previous residuals (the classic uses 3; the weights are not differentiated);
    ``max_step_mm``: the classic's trust region (the step norm in scaled units).
    """
    dt = torch.float64
    P0, m0, d, w, c0 = (x.to(dt) for x in (P0, m0, d, w, c0))
    A = torch.cat([torch.cross(P0 - c0[:, None], m0, dim=-1), m0], -1)  # (B, M, 6)
    b = -((m0 * P0).sum(-1) + d)
    scale = torch.tensor([ROTATION_SCALE_MM] * 3 + [1.0] * 3, dtype=dt, device=A.device)
    As = A / scale
    eye = torch.eye(6, dtype=dt, device=A.device)
    huber = torch.ones_like(b)
    n_solves = max(1, int(huber_iterations))
    y = None
    for _ in range(n_solves):
        sw = w * huber
        Aw = As * sw[..., None]
        H = Aw.transpose(1, 2) @ As
        g = (Aw.transpose(1, 2) @ b[..., None])[..., 0]
        tr = H.diagonal(dim1=1, dim2=2).sum(-1)
        H = H + (damping * tr / 6.0)[:, None, None] * eye + 1e-12 * eye
        y = torch.linalg.solve(H, g[..., None])[..., 0]
        if huber_iterations > 0:
            res = ((As @ y[..., None])[..., 0] - b).abs().detach()
            huber = torch.where(res < huber_mm, torch.ones_like(res),
                                huber_mm / res.clamp_min(1e-12))
    if max_step_mm is not None:
        norm = y.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        y = y * torch.clamp(max_step_mm / norm, max=1.0)
    return y / scale


def apply_update(poses: torch.Tensor, x: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """``shift(c0) @ exp(x) @ shift(-c0) @ poses`` (B, 4, 4), differentiable."""
    from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415

    delta = se3_exp(x.to(torch.float64))
    shift = torch.eye(4, dtype=torch.float64, device=x.device).repeat(x.shape[0], 1, 1)
    shift[:, :3, 3] = c0.to(torch.float64)
    back = torch.eye(4, dtype=torch.float64, device=x.device).repeat(x.shape[0], 1, 1)
    back[:, :3, 3] = -c0.to(torch.float64)
    return shift @ delta @ back @ poses.to(torch.float64)


# -- networks -----------------------------------------------------------------------------
def _block(a: int, b: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.GroupNorm(min(8, b), b),
                         nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(min(8, b), b),
                         nn.SiLU())


class FlowNet(nn.Module):
    """(B, 2, H, W) [fixed X-ray, DRR] (standardised) -> flow (B, 2, H/2, W/2) in pixels of
    the input and features (B, F, H/2, W/2). Encoder to H/16 (the whole image in view),
    decoder with skips back to H/2. Two coordinate channels are appended (CoordConv)."""

    def __init__(self, width: int = 16, features: int = 16, flow_scale_px: float = 4.0):
        super().__init__()
        self.width, self.n_features, self.flow_scale_px = int(width), int(features), float(flow_scale_px)
        c = self.width
        self.e1 = _block(4, c, 2)          # H/2
        self.e2 = _block(c, 2 * c, 2)      # H/4
        self.e3 = _block(2 * c, 4 * c, 2)  # H/8
        self.e4 = _block(4 * c, 4 * c, 2)  # H/16
        self.d3 = _block(8 * c, 4 * c)
        self.d2 = _block(6 * c, 2 * c)
        self.d1 = _block(3 * c, 2 * c)
        self.head = nn.Conv2d(2 * c, 2 + self.n_features, 3, padding=1)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def arch(self) -> dict:
        return {"width": self.width, "features": self.n_features,
                "flow_scale_px": self.flow_scale_px}

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        yy = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
        xx = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
        x = torch.cat([x, torch.stack([xx, yy])[None].expand(b, 2, h, w)], 1)
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        e4 = self.e4(e3)

        def up(a, ref):
            return F.interpolate(a, size=ref.shape[-2:], mode="bilinear", align_corners=False)

        d3 = self.d3(torch.cat([up(e4, e3), e3], 1))
        d2 = self.d2(torch.cat([up(d3, e2), e2], 1))
        d1 = self.d1(torch.cat([up(d2, e1), e1], 1))
        out = self.head(d1)
        return out[:, :2] * self.flow_scale_px, out[:, 2:]


def sample_at(fmap: torch.Tensor, uv: torch.Tensor, size_wh) -> torch.Tensor:
    """Bilinear read of ``fmap`` (B, C, h, w) at pixels ``uv`` (B, K, 2) of an image of
    ``size_wh`` (W, H) pixels (pixel centres at integers; any map resolution)."""
    w, h = size_wh
    gx = (uv[..., 0] + 0.5) / w * 2 - 1
    gy = (uv[..., 1] + 0.5) / h * 2 - 1
    grid = torch.stack([gx, gy], -1)[:, :, None].to(fmap.dtype)  # (B, K, 1, 2)
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)  # (B, K, C)


class PointAttention(nn.Module):
    """PointNet-style weights: shared MLP per point, max-pool over the valid points of the
    view (global context), MLP on [point, global] -> weight in (0, 1)."""

    def __init__(self, in_features: int, hidden: int = 64):
        super().__init__()
        self.in_features, self.hidden = int(in_features), int(hidden)
        self.local = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.constant_(self.out[-1].bias, 2.0)  # starts near 0.88 everywhere

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        loc = self.local(x)
        masked = torch.where(valid[..., None], loc, torch.full_like(loc, -1e4))
        glob = masked.max(dim=1, keepdim=True).values.expand_as(loc)
        glob = torch.where(valid.any(1)[:, None, None], glob, torch.zeros_like(glob))
        return torch.sigmoid(self.out(torch.cat([loc, glob], -1))[..., 0]) * valid


class LearnedPPC(nn.Module):
    """Flow network + optional attention: images and contour points -> (flow (B, K, 2)
    pixels, weights (B, K))."""

    def __init__(self, width: int = 16, features: int = 16, flow_scale_px: float = 4.0,
                 attention: bool = True, hidden: int = 64):
        super().__init__()
        self.flow = FlowNet(width, features, flow_scale_px)
        self.use_attention = bool(attention)
        self.hidden = int(hidden)
        self.attention = PointAttention(features + 6, hidden) if self.use_attention else None

    def arch(self) -> dict:
        return dict(self.flow.arch(), attention=self.use_attention, hidden=self.hidden)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, uv: torch.Tensor,
                n2: torch.Tensor, valid: torch.Tensor):
        """``fixed``/``moving`` (B, H, W) standardised; ``uv``/``n2`` (B, K, 2); ``valid``
        (B, K). Returns ``(flow (B, K, 2), weights (B, K))``."""
        h, w = fixed.shape[-2:]
        fl, feat = self.flow(torch.stack([fixed, moving], 1))
        flow_k = sample_at(fl, uv, (w, h))
        if self.attention is None:
            return flow_k, valid.to(flow_k.dtype)
        feat_k = sample_at(feat, uv, (w, h))
        pos = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1).to(feat_k.dtype)
        x = torch.cat([feat_k, flow_k / self.flow.flow_scale_px, n2.to(feat_k.dtype), pos], -1)
        return flow_k, self.attention(x, valid)


def build_ppc_from_model(data: dict) -> LearnedPPC:
    """The network of a loaded ``ppc`` model file, weights in."""
    from .model_file import ModelFileError  # noqa: PLC0415

    try:
        net = LearnedPPC(**data["arch"])
        net.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"model file: weights do not fit the learned PPC network "
                             f"({str(exc)[:160]})") from None
    net.eval()
    return net


def edge_set(volume, max_points: int = 2000, seed: int = 0):
    """``(points (N, 3), normals (N, 3))`` float64 tensors (RAS): the classic 3D edge
    points (``ppc.edge_points_3d``) of a ``DRRVolume``'s attenuation, the same for
    training and inference."""
    from ..ppc import edge_points_3d  # noqa: PLC0415

    e = edge_points_3d(volume.mu.float().cpu().numpy(), volume.ijk_to_ras,
                       max_points=max_points, seed=seed)
    return (torch.as_tensor(e.points, dtype=torch.float64),
            torch.as_tensor(e.normals, dtype=torch.float64))
