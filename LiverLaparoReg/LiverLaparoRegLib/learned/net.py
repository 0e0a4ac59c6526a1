"""Stage I network (plain torch, CPU-trainable) and its losses.

- **Point encoder** (PointNet++-style): the ``N_POINTS`` input points come in FPS order,
  so the ``N_MATCH`` set-abstraction centres of level 1 are their prefix; level 2 takes
  64 centres by farthest-point sampling (:func:`.data.fps`, plain torch); each level
  groups neighbours by ball query (radius, at most ``k``, padded with the nearest),
  runs a shared MLP on (relative xyz, features) and max-pools. A feature-propagation
  step (inverse-distance 3-NN interpolation) brings level-2 features back to the
  ``N_MATCH`` tokens. A global point feature is the max over level 2.
- **Image encoder**: a small ResNet (stem + 4 residual blocks, stride 4) on RGB + the
  liver mask channel (+ two CoordConv channels), ``NET_H x NET_W`` -> ``GRID_H x GRID_W``
  tokens; a stride-16 branch gives the global feature (mean + max pooling) and, upsampled,
  is added back to the tokens (``context=True``): without it a token sees ~23 px of the
  128 px frame and cannot tell where on the liver it lies (the first 500-step run's
  matching loss stayed at ~5.25 = log 190 of 256 points).
- **Cross-modal latent alignment** (``align=True``): symmetric branches; each modality's
  tokens are fused with the other's global feature by a 1x1 convolution, then each
  attends to the other (cross-attention, residual). ``align=False`` (ablation) skips it.
- **Heads**: L2-normalised descriptors (pixels, points); per point an overlap score with
  a Gaussian-NLL uncertainty head (predicted mean ``mu = sigmoid(a)`` and log variance
  ``s``: ``L = (y - mu)^2 / (2 exp(s)) + s / 2``, Eq. 1 of the Land-Reg paper as we read
  it; ``uncertainty=False`` -> plain binary cross-entropy) and landmark class logits
  (none / ridge / ligament / silhouette); per grid cell a liver logit and class logits.
- **Loss**: contrastive (InfoNCE, temperature ``TAU``) from each matched grid cell to
  its ground-truth point against all ``N_MATCH`` points, plus ``0.5 x`` the detector
  losses (the paper's 0.5 balance), plus an auxiliary coordinate regression (each matched
  cell regresses its point's position in the point-encoder frame, smooth L1; ours, not the
  paper's: the contrastive loss alone stayed on its plateau in our CPU budget). At
  inference the coordinate head gives a second set of correspondences (nearest vertex
  of the regressed point); the set with more RANSAC inliers is used.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import N_MATCH, fps

TAU = 0.07
N_CLASSES = 4


def ball_query(centres: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """``(B, M, k)`` indices of up to ``k`` points within ``radius`` of each centre
    (nearest first); slots beyond the points in the ball repeat the nearest one."""
    d = torch.cdist(centres, points)                              # (B, M, N)
    k = min(k, points.shape[1])
    dk, ik = d.topk(k, dim=-1, largest=False)
    return torch.where(dk <= radius, ik, ik[..., :1].expand_as(ik))


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x (B, N, C)``, ``idx (B, ...)`` -> ``(B, ..., C)``."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(x, 1, flat[..., None].expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def mlp(sizes, last_act: bool = True) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            layers += [nn.LayerNorm(sizes[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


class SetAbstraction(nn.Module):
    def __init__(self, c_in: int, c_out: int, radius: float, k: int):
        super().__init__()
        self.radius, self.k = radius, k
        self.mlp = mlp([c_in + 3, c_out // 2, c_out])

    def forward(self, xyz_c, xyz, feats):
        idx = ball_query(xyz_c, xyz, self.radius, self.k)
        rel = gather(xyz, idx) - xyz_c[:, :, None]
        g = torch.cat([rel / self.radius, gather(feats, idx)], -1)
        return self.mlp(g).max(2).values


class PointEncoder(nn.Module):
    """PointNet++-style encoder -> ``(tokens (B, N_MATCH, D), global (B, G))``."""

    def __init__(self, dim: int = 64, gdim: int = 128):
        super().__init__()
        self.sa1 = SetAbstraction(3, dim, radius=0.25, k=16)     # 25 mm
        self.sa2 = SetAbstraction(dim, gdim, radius=0.6, k=16)   # 60 mm
        self.fp = mlp([dim + gdim, dim, dim])
        self.glob = mlp([gdim, gdim])

    def forward(self, points: torch.Tensor):
        xyz, nrm = points[..., :3], points[..., 3:6]
        c1 = xyz[:, :N_MATCH]
        f1 = self.sa1(c1, xyz, nrm)                                # (B, 256, dim)
        i2 = fps(c1.detach(), 64, 0)                               # (B, 64)
        c2 = gather(c1, i2)
        f2 = self.sa2(c2, c1, f1)                                  # (B, 64, gdim)
        d = torch.cdist(c1, c2)
        dk, ik = d.topk(3, dim=-1, largest=False)
        w = 1.0 / (dk + 1e-3)
        w = w / w.sum(-1, keepdim=True)
        interp = (gather(f2, ik) * w[..., None]).sum(2)
        tokens = self.fp(torch.cat([f1, interp], -1))
        return tokens, self.glob(f2).max(1).values


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = nn.GroupNorm(8, c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = nn.GroupNorm(8, c_out)
        self.skip = (nn.Conv2d(c_in, c_out, 1, stride, bias=False)
                     if (stride != 1 or c_in != c_out) else nn.Identity())

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        return F.relu(self.n2(self.c2(y)) + self.skip(x))


class ImageEncoder(nn.Module):
    """Small ResNet, stride 4 -> ``(tokens (B, D, GH, GW), global (B, G))``."""

    def __init__(self, dim: int = 64, gdim: int = 128, in_ch: int = 4, context: bool = True):
        super().__init__()
        self.context = context
        if context:
            in_ch += 2                       # CoordConv: normalised (u, v) channels
            self.up = nn.Conv2d(gdim, dim, 1)  # coarse (stride 16) context back to the tokens
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 32, 3, 2, 1, bias=False),
                                  nn.GroupNorm(8, 32), nn.ReLU())
        self.b1 = ResBlock(32, 32)
        self.b2 = ResBlock(32, dim, stride=2)
        self.b3 = ResBlock(dim, dim)
        self.b4 = ResBlock(dim, dim)
        # a wider context for the global feature
        self.g = nn.Sequential(ResBlock(dim, gdim, stride=2), ResBlock(gdim, gdim, stride=2))

    def forward(self, x):
        if self.context:
            B, _, H, W = x.shape
            v, u = torch.meshgrid(torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype),
                                  torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype),
                                  indexing="ij")
            x = torch.cat([x, u.expand(B, 1, H, W), v.expand(B, 1, H, W)], 1)
        f = self.b4(self.b3(self.b2(self.b1(self.stem(x)))))
        g = self.g(f)
        if self.context:
            f = f + F.interpolate(self.up(g), size=f.shape[2:], mode="bilinear",
                                  align_corners=False)
        return f, torch.cat([g.mean((2, 3)), g.amax((2, 3))], 1)


class StageOne(nn.Module):
    """The Stage I network (see the module docstring)."""

    def __init__(self, dim: int = 64, gdim: int = 128, align: bool = True,
                 uncertainty: bool = True, context: bool = True):
        super().__init__()
        self.config = {"dim": dim, "gdim": gdim, "align": align, "uncertainty": uncertainty,
                       "context": context}
        self.align, self.uncertainty = align, uncertainty
        self.points = PointEncoder(dim, gdim)
        self.image = ImageEncoder(dim, gdim, context=context)
        if align:
            self.fuse_img = nn.Conv2d(dim + gdim, dim, 1)          # image tokens + point global
            self.fuse_pt = nn.Conv1d(dim + 2 * gdim, dim, 1)       # point tokens + image global
            self.att_img = nn.MultiheadAttention(dim, 2, batch_first=True)
            self.att_pt = nn.MultiheadAttention(dim, 2, batch_first=True)
            self.ln_img = nn.LayerNorm(dim)
            self.ln_pt = nn.LayerNorm(dim)
        self.desc_img = nn.Conv2d(dim, dim, 1)
        self.desc_pt = nn.Linear(dim, dim)
        self.pt_head = mlp([dim, dim, 2 + N_CLASSES], last_act=False)   # overlap a, s, classes
        self.pix_head = nn.Conv2d(dim, 1 + N_CLASSES, 1)                # liver, classes
        self.xyz_head = nn.Conv2d(dim, 3, 1)        # surface point, point-encoder frame

    def forward(self, image: torch.Tensor, mask: torch.Tensor, points: torch.Tensor
                ) -> Dict[str, torch.Tensor]:
        x = torch.cat([image, mask[:, None]], 1)
        fi, gi = self.image(x)                                     # (B, D, h, w), (B, 2G)
        fp, gp = self.points(points)                               # (B, M, D), (B, G)
        B, D, h, w = fi.shape
        if self.align:
            fi = F.relu(self.fuse_img(torch.cat([fi, gp[:, :, None, None].expand(-1, -1, h, w)], 1)))
            fp = F.relu(self.fuse_pt(torch.cat([fp.transpose(1, 2),
                                                gi[:, :, None].expand(-1, -1, fp.shape[1])], 1)
                                     )).transpose(1, 2)
            ti = fi.flatten(2).transpose(1, 2)                     # (B, h*w, D)
            ti2 = self.ln_img(ti + self.att_img(ti, fp, fp, need_weights=False)[0])
            fp = self.ln_pt(fp + self.att_pt(fp, ti, ti, need_weights=False)[0])
            fi = ti2.transpose(1, 2).reshape(B, D, h, w)
        di = F.normalize(self.desc_img(fi).flatten(2).transpose(1, 2), dim=-1)   # (B, h*w, D)
        dp = F.normalize(self.desc_pt(fp), dim=-1)                               # (B, M, D)
        ph = self.pt_head(fp)
        xh = self.pix_head(fi).flatten(2).transpose(1, 2)                        # (B, h*w, 1+C)
        return {"desc_pix": di, "desc_pt": dp, "overlap_logit": ph[..., 0],
                "overlap_logvar": ph[..., 1].clamp(-6, 6), "pt_class": ph[..., 2:],
                "pix_liver": xh[..., 0], "pix_class": xh[..., 1:],
                "pix_xyz": self.xyz_head(fi).flatten(2).transpose(1, 2)}


def losses(out: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor],
           uncertainty: bool = True, balance: float = 0.5) -> Dict[str, torch.Tensor]:
    """Total loss = contrastive matching + ``balance`` x detector (see module docstring)."""
    m = batch["pix_match"]                                          # (B, P)
    sim = torch.einsum("bpd,bmd->bpm", out["desc_pix"], out["desc_pt"]) / TAU
    valid = m >= 0
    if valid.any():
        l_match = F.cross_entropy(sim[valid], m[valid])
    else:
        l_match = sim.sum() * 0.0
    y = batch["overlap"]
    if uncertainty:
        mu = torch.sigmoid(out["overlap_logit"])
        s = out["overlap_logvar"]
        l_ov = (0.5 * torch.exp(-s) * (y - mu) ** 2 + 0.5 * s).mean()
        # keep the score a calibrated probability as well (the NLL alone is flat where
        # the variance is large)
        l_ov = l_ov + F.binary_cross_entropy_with_logits(out["overlap_logit"], y)
    else:
        l_ov = F.binary_cross_entropy_with_logits(out["overlap_logit"], y)
    l_pc = F.cross_entropy(out["pt_class"].reshape(-1, N_CLASSES), batch["point_class"].reshape(-1))
    l_liv = F.binary_cross_entropy_with_logits(out["pix_liver"], batch["pix_liver"])
    l_xc = F.cross_entropy(out["pix_class"].reshape(-1, N_CLASSES), batch["pix_class"].reshape(-1))
    det = l_ov + l_pc + l_liv + l_xc
    # auxiliary dense coordinate regression: the matched point's position (point-encoder
    # frame, dm) for each matched cell -- a distance-aware signal that the 256-way
    # contrastive loss lacks early in training
    if valid.any():
        tgt = torch.gather(batch["points"][..., :3], 1,
                           m.clamp(min=0)[..., None].expand(-1, -1, 3))
        l_xyz = F.smooth_l1_loss(out["pix_xyz"][valid], tgt[valid], beta=0.1)
    else:
        l_xyz = out["pix_xyz"].sum() * 0.0
    total = l_match + balance * det + l_xyz
    with torch.no_grad():
        acc = ((sim.argmax(-1) == m) & valid).sum().float() / valid.sum().clamp(min=1)
    return {"total": total, "match": l_match, "detector": det, "overlap": l_ov,
            "xyz": l_xyz, "match_acc": acc}
