"""The learned point-to-plane correspondence (PPC) update: flow network, attention
weights and the weighted PPC solve as a differentiable layer.

One update from a pose ``T`` (``ct_to_camera`` of view 0), per view:

1. **Contour points** (:func:`contour_points`, batched torch): the 3D edge points of the
   CT (``ppc.edge_points_3d``, the classic detector) whose surface is tangent to the
   viewing ray at ``T`` (``|n . ray| < cos_tangent``), projected to pixels ``uv`` with
   their 2D contour normal ``n2`` (same geometry as the classic ``ppc._match_view``).
2. **Flow**: the fixed X-ray and the DRR at ``T`` (both standardised, at the model's
   training resolution) give a 2D displacement (pixels) and a feature vector per point;
   the matched point is ``q = uv + flow``. Two networks (plain torch): the default
   :class:`ProfileFlow` (profiles of both images along each point's normal, a correlation
   layer, a 1D CNN and a soft-argmax over the shifts) and :class:`FlowNet` (a dense
   encoder-decoder flow field read at ``uv``; ``flow="dense"``).
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


class ProfileFlow(nn.Module):
    """Flow at contour points from image profiles along each point's 2D normal.

    For every point: the fixed X-ray and the DRR are smoothed (sigma 1 px) and read
    (bilinear) on 3 lines along the normal, ``L = 2 (search_px + half_window) + 1`` samples
    1 px apart; their mean and its derivative along the normal are the profiles. A
    correlation layer gives the normalised cross-correlation of the DRR's derivative
    template (``2 half_window + 1`` samples at the point) with the X-ray's at every shift
    in ``[-search_px, search_px]`` (the classic matching score, as in
    ``ppc._match_view``). A 1D CNN on [profiles, correlation] gives a logit per shift,
    added to ``corr_scale`` (learned, initially 30) x the correlation; the soft-argmax is
    the displacement along the normal (differentiable, sub-pixel); the flow is that times
    the normal (the tangential part is not observable on a contour and not used by PPC).
    The features (peak probability, entropy, spread, the correlation at the match and a
    pooled CNN feature) feed the attention, and ``prior_scale * (correlation at the match
    - 0.5)`` (learned, initially 10) is added to the attention's logit (the classic rule
    keeps matches above 0.5). With the CNN's last layer at zero it starts as a soft
    classic matcher with classic-like weights; training teaches it what the classic rule
    misses.
    """

    def __init__(self, search_px: int = 16, half_window: int = 4, hidden: int = 32,
                 features: int = 16, corr_scale: float = 30.0):
        super().__init__()
        self.search_px, self.half_window = int(search_px), int(half_window)
        self.hidden, self.n_features, self.corr_scale0 = int(hidden), int(features), float(corr_scale)
        h = self.hidden
        self.cnn = nn.Sequential(nn.Conv1d(5, h, 5, padding=2), nn.SiLU(),
                                 nn.Conv1d(h, h, 5, padding=4, dilation=2), nn.SiLU(),
                                 nn.Conv1d(h, h, 5, padding=2), nn.SiLU())
        self.logit = nn.Conv1d(h, 1, 1)
        nn.init.zeros_(self.logit.weight)
        nn.init.zeros_(self.logit.bias)
        # log-parametrised scales (Adam moves them by a relative amount per step)
        self.log_corr_scale = nn.Parameter(torch.tensor(float(np.log(corr_scale))))
        self.log_prior_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        self.feat = nn.Linear(h + 4, self.n_features)

    def arch(self) -> dict:
        return {"search_px": self.search_px, "half_window": self.half_window,
                "hidden": self.hidden, "features": self.n_features,
                "corr_scale": self.corr_scale0}

    def profiles(self, img: torch.Tensor, uv: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        """(B, H, W) image, (B, K, 2) points and normals -> (B, K, L) mean profiles."""
        R = self.search_px + self.half_window
        offs = torch.arange(-R, R + 1, dtype=uv.dtype, device=uv.device)
        across = torch.tensor([-1.0, 0.0, 1.0], dtype=uv.dtype, device=uv.device)
        t2 = torch.stack([-n2[..., 1], n2[..., 0]], -1)
        pts = (uv[:, :, None, None] + offs[None, None, :, None, None] * n2[:, :, None, None]
               + across[None, None, None, :, None] * t2[:, :, None, None])  # (B, K, L, 3, 2)
        b, k, L = pts.shape[:3]
        h, w = img.shape[-2:]
        vals = sample_at(img[:, None], pts.reshape(b, k * L * 3, 2), (w, h))[..., 0]
        return vals.reshape(b, k, L, 3).mean(-1)

    @staticmethod
    def smooth(img: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
        """Gaussian smoothing (sigma 1 px, 7 taps, separable) of (B, H, W) images, as the
        classic matcher smooths before its gradients."""
        x = torch.arange(7, dtype=img.dtype, device=img.device) - 3
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        y = F.pad(img[:, None], (3, 3, 3, 3), mode="replicate")
        y = F.conv2d(y, k.view(1, 1, 1, 7))
        return F.conv2d(y, k.view(1, 1, 7, 1))[:, 0]

    def forward(self, fixed, moving, uv, n2):
        R, hw = self.search_px, self.half_window
        pf = self.profiles(self.smooth(fixed), uv, n2)
        pm = self.profiles(self.smooth(moving), uv, n2)

        def deriv(p):
            d = 0.5 * (p[..., 2:] - p[..., :-2])
            return F.pad(d, (1, 1))

        df, dm = deriv(pf), deriv(pm)
        c = R + hw
        tmpl = dm[..., c - hw: c + hw + 1]
        tmpl = tmpl - tmpl.mean(-1, keepdim=True)
        tn = tmpl.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        win = df.unfold(-1, 2 * hw + 1, 1)  # (B, K, 2R + 1, 2hw + 1)
        win = win - win.mean(-1, keepdim=True)
        corr = (win * tmpl[..., None, :]).sum(-1) / (win.norm(dim=-1) * tn).clamp_min(1e-6)
        b, k, L = pf.shape
        x = torch.stack([pf, df, pm, dm, F.pad(corr, (hw, hw))], 2).reshape(b * k, 5, L)
        hid = self.cnn(x)[..., hw: L - hw]  # (B K, h, 2R + 1)
        logits = self.logit(hid)[:, 0].reshape(b, k, -1) + self.log_corr_scale.exp() * corr
        prob = torch.softmax(logits, -1)
        shifts = torch.arange(-R, R + 1, dtype=prob.dtype, device=prob.device)
        shift = (prob * shifts).sum(-1)
        spread = ((prob * (shifts - shift[..., None]) ** 2).sum(-1) + 1e-6).sqrt() / R
        entropy = -(prob * prob.clamp_min(1e-12).log()).sum(-1) / np.log(2 * R + 1)
        pooled = (hid.reshape(b, k, self.hidden, -1) * prob[:, :, None]).sum(-1)
        peak = (prob * corr).sum(-1)  # the correlation at the (soft) match
        feats = self.feat(torch.cat([pooled, prob.max(-1).values[..., None], entropy[..., None],
                                     spread[..., None], peak[..., None]], -1))
        prior = self.log_prior_scale.exp() * (peak - 0.5)  # the classic rule: correlation above 0.5
        return shift[..., None] * n2.to(shift.dtype), feats, prior


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
        nn.init.zeros_(self.out[-1].bias)  # starts at 0.5 everywhere (or at the prior)

    def forward(self, x: torch.Tensor, valid: torch.Tensor,
                prior: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Weights (B, K); ``prior`` (B, K): a logit added before the sigmoid."""
        loc = self.local(x)
        masked = torch.where(valid[..., None], loc, torch.full_like(loc, -1e4))
        glob = masked.max(dim=1, keepdim=True).values.expand_as(loc)
        glob = torch.where(valid.any(1)[:, None, None], glob, torch.zeros_like(glob))
        logit = self.out(torch.cat([loc, glob], -1))[..., 0]
        if prior is not None:
            logit = logit + prior.to(logit.dtype)
        return torch.sigmoid(logit) * valid


class LearnedPPC(nn.Module):
    """Flow network + optional attention: images and contour points -> (flow (B, K, 2)
    pixels, weights (B, K))."""

    def __init__(self, width: int = 16, features: int = 16, flow_scale_px: float = 4.0,
                 attention: bool = True, hidden: int = 64, flow: str = "profile",
                 search_px: int = 16):
        super().__init__()
        if flow not in ("profile", "dense"):
            raise ValueError(f"flow: expected 'profile' or 'dense', got {flow!r}")
        self.kind = flow
        self.width, self.n_features = int(width), int(features)
        self.flow_scale_px, self.search_px = float(flow_scale_px), int(search_px)
        if flow == "dense":
            self.flow = FlowNet(width, features, flow_scale_px)
        else:
            self.flow = ProfileFlow(search_px, 4, 2 * int(width), features)
        self.use_attention = bool(attention)
        self.hidden = int(hidden)
        self.attention = PointAttention(features + 6, hidden) if self.use_attention else None

    def arch(self) -> dict:
        return {"width": self.width, "features": self.n_features,
                "flow_scale_px": self.flow_scale_px, "attention": self.use_attention,
                "hidden": self.hidden, "flow": self.kind, "search_px": self.search_px}

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, uv: torch.Tensor,
                n2: torch.Tensor, valid: torch.Tensor):
        """``fixed``/``moving`` (B, H, W) standardised; ``uv``/``n2`` (B, K, 2); ``valid``
        (B, K). Returns ``(flow (B, K, 2), weights (B, K))``."""
        h, w = fixed.shape[-2:]
        if self.kind == "dense":
            fl, feat = self.flow(torch.stack([fixed, moving], 1))
            flow_k = sample_at(fl, uv, (w, h))
            feat_k = sample_at(feat, uv, (w, h))
            prior = None
        else:
            flow_k, feat_k, prior = self.flow(fixed, moving, uv, n2)
        if self.attention is None:
            if prior is not None:  # no attention network: the classic-like rule alone
                return flow_k, torch.sigmoid(prior) * valid
            return flow_k, valid.to(flow_k.dtype)
        pos = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1).to(feat_k.dtype)
        x = torch.cat([feat_k, flow_k / self.flow_scale_px, n2.to(feat_k.dtype), pos], -1)
        return flow_k, self.attention(x, valid, prior)


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
