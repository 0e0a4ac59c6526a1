"""Landmark segmentation network (Stage I, kind ``"landmarks"``): a compact U-Net in
plain torch that reads a laparoscopic frame (RGB) and the liver mask at the network
resolution (:data:`.data.NET_H` x :data:`.data.NET_W`) and predicts, per pixel, three
independent landmark probabilities: anterior **ridge** (sharp edge of the liver, from
mesh curvature in training), falciform **ligament**, and **silhouette** (occluding
contour of the liver, not the frame border or an instrument's edge). Background is the
absence of all three.

Unlike the 256-way matcher of :mod:`.net`, this network knows nothing about a particular
mesh: it labels image structure, and the 3D side (ridges from curvature, occluding
contour at a pose hypothesis) stays geometric (:mod:`.landmarks_infer`).

With ``normals=True`` (the bundled model from v3 on) three
more output channels give the camera-frame surface normal of the visible liver per
pixel (:func:`.render.normal_map`), normalised at use: a dense cue of the surface
orientation from the shading, which the pose search compares with the mesh's normals.

Loss (:func:`landmark_losses`): per class a binary cross-entropy with a positive weight
(the landmark pixels are rare) plus a soft Dice term; with normals, plus a weight
(``W_NORMAL`` by default) times the mean normal error over the mask: the angle between
predicted and true normals in radians (``normal_loss="angle"``, the default since the
bundled v4: its gradient does not fade as the error gets small, as that of ``1 - cos ~
angle^2 / 2`` does) or ``1 - cos`` (``"cos"``, v3).

With ``normal_scale=True`` a seventh channel gives, per pixel, the network's own
uncertainty of its normal: ``s = log b``, ``b`` the scale (radians) of a Laplace
distribution of the angle error (a Laplace negative log-likelihood: the uncertainty head
of the Land-Reg paper's Eq. 1 with the L1 error of the angle). It is trained on the
DETACHED error (``theta / b + log b`` with ``theta`` held fixed), so the normals are never
made worse to fit a scale: the normal channels get the same gradient as without it (the
shared layers also learn from the scale's loss). The pose search weights each point's
normal error by ``1 / b`` (:mod:`.landmarks_align`).

With ``ray_normals=True`` the network is told the camera: two more input channels carry
each pixel's viewing ray ``((u - cx) / fx, (v - cy) / fy)`` of the network image
(:func:`ray_map`), and its three normal channels are the normal in the pixel's RAY frame
(z along the ray, :func:`ray_rotation`), turned into the camera frame inside
:meth:`forward`, so that the output is the camera-frame normal as without the option. A
convolution sees the same shading (the light sits at the laparoscope: brightness follows
the angle to the ray) and the same occluding contour (its normal is perpendicular to
the ray) wherever they are in the image and whatever the field of view; in the camera
frame the same image patch means a different normal at another place or with another
lens (the training cameras span 55-95 deg), which the image coordinates alone cannot
tell.
"""

from __future__ import annotations

#: landmark channels of the network output (``CLASS_NAMES`` of :mod:`.data` minus "none")
LANDMARKS = ("ridge", "ligament", "silhouette")
#: BCE positive weights per channel (landmark pixels are 2-10 % of the frame)
POS_WEIGHT = (4.0, 8.0, 6.0)
#: default weight of the normal term (mean error over the liver pixels) in the total loss
W_NORMAL = 2.0
#: normal error measures of :func:`landmark_losses`
NORMAL_LOSSES = ("cos", "angle")
#: clamp of the scale channel ``s = log b`` (b in radians: 0.4 deg to 156 deg; an
#: untrained head starts near s = 0, inside the range, so its gradient is not clamped away)
LOG_SCALE_RANGE = (-5.0, 1.0)


def normal_scale(s):
    """The Laplace scale ``b`` (radians) of the network's scale channel ``s`` (clamped to
    :data:`LOG_SCALE_RANGE`)."""
    return s.clamp(*LOG_SCALE_RANGE).exp()


def ray_map(fx: float, fy: float, cx: float, cy: float, H: int, W: int):
    """``(2, H, W)`` float32 numpy array: the viewing ray ``((u - cx) / fx, (v - cy) / fy)``
    of each pixel centre ``(u, v)`` of an ``H x W`` image (the ray is ``(x, y, 1)``)."""
    import numpy as np  # noqa: PLC0415

    u = (np.arange(W, dtype=np.float64) - cx) / fx
    v = (np.arange(H, dtype=np.float64) - cy) / fy
    return np.stack([np.broadcast_to(u[None, :], (H, W)),
                     np.broadcast_to(v[:, None], (H, W))]).astype(np.float32)


def network_ray_map(camera):
    """:func:`ray_map` of the network image of a frame seen by ``camera``
    (:func:`.data.net_camera`, ``NET_H x NET_W``)."""
    from .data import NET_H, NET_W, net_camera  # noqa: PLC0415

    nc = net_camera(camera)
    return ray_map(nc.fx, nc.fy, nc.cx, nc.cy, NET_H, NET_W)


def ray_rotation(rays):
    """``(B, 3, 3, H, W)``: per pixel the smallest rotation that turns the camera's z axis
    onto the unit ray ``d = normalise(x, y, 1)`` of ``rays (B, 2, H, W)``; it maps a vector
    given in the pixel's ray frame to the camera frame (its third column is ``d``)."""
    import torch  # noqa: PLC0415

    d = torch.cat([rays, torch.ones_like(rays[:, :1])], 1)
    d = d / d.norm(dim=1, keepdim=True)
    a, b, c = d[:, 0], d[:, 1], d[:, 2]
    k = 1.0 / (1.0 + c)                          # c > 0: the ray is in front of the camera
    rows = [[1 - a * a * k, -a * b * k, a], [-a * b * k, 1 - b * b * k, b], [-a, -b, c]]
    return torch.stack([torch.stack(r, 1) for r in rows], 1)


def ray_to_camera(n, rays):
    """Vectors ``n (B, 3, H, W)`` given in each pixel's ray frame, in the camera frame."""
    return (ray_rotation(rays) * n[:, None]).sum(2)


def _block(cin, cout):
    import torch.nn as nn  # noqa: PLC0415

    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def LandmarkNet(base: int = 12, in_channels: int = 4, levels: int = 4, normals: bool = False,
                normal_scale: bool = False, ridge_definition: str = "ring",
                ray_normals: bool = False):
    """The U-Net (a factory so that torch is imported lazily). ``config`` holds the
    constructor arguments (written to the model file); ``normals`` adds the three
    normal channels, ``normal_scale`` (with ``normals``) their uncertainty channel;
    ``ridge_definition`` (:data:`.data.RIDGE_DEFINITIONS`) is the ridge label the network
    was trained on, which the registration then uses for the mesh's 3D ridges;
    ``ray_normals`` (with ``normals``): the viewing rays as input and the normals predicted
    in the ray frame (module docstring)."""
    if normal_scale and not normals:
        raise ValueError("normal scale: a network without normals has none")
    if ray_normals and not normals:
        raise ValueError("ray normals: a network without normals has none")
    import torch  # noqa: PLC0415
    import torch.nn as nn  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    class _Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = {"base": int(base), "in_channels": int(in_channels),
                           "levels": int(levels), "normals": bool(normals)}
            if normal_scale:        # only when used: the bundled v5's config has no key
                self.config["normal_scale"] = True
            if ridge_definition != "ring":                  # likewise
                self.config["ridge_definition"] = str(ridge_definition)
            if ray_normals:                                 # likewise
                self.config["ray_normals"] = True
            ch = [base * 2 ** k for k in range(levels)]
            self.enc = nn.ModuleList()
            c = in_channels + 2 + (2 if ray_normals else 0)  # + CoordConv x, y (+ rays)
            for k in range(levels):
                self.enc.append(_block(c, ch[k]))
                c = ch[k]
            self.dec = nn.ModuleList()
            for k in range(levels - 2, -1, -1):
                self.dec.append(_block(ch[k + 1] + ch[k], ch[k]))
                # output channels of each decoder stage = ch[k]
            self.head = nn.Conv2d(ch[0], len(LANDMARKS) + (3 if normals else 0)
                                  + (1 if normal_scale else 0), 1)

        def forward(self, image, mask, rays=None):
            """``image (B, 3, H, W)`` in [0, 1], ``mask (B, H, W)`` -> logits
            ``(B, 3, H, W)`` (with ``normals``: ``(B, 6, H, W)``, channels 3-5 the
            unnormalised camera-frame normal; with ``normal_scale``: ``(B, 7, H, W)``,
            channel 6 the log scale ``s``). ``rays (B, 2, H, W)`` (:func:`ray_map` of each
            sample's network camera): needed with ``ray_normals``, ignored without."""
            B, _, H, W = image.shape
            yy = torch.linspace(-1, 1, H, device=image.device).view(1, 1, H, 1).expand(B, 1, H, W)
            xx = torch.linspace(-1, 1, W, device=image.device).view(1, 1, 1, W).expand(B, 1, H, W)
            parts = [image - 0.5, mask[:, None] - 0.5, xx, yy]
            if ray_normals:
                if rays is None or tuple(rays.shape) != (B, 2, H, W):
                    raise ValueError("rays: a network with ray normals needs the viewing rays "
                                     f"(B, 2, H, W) = {(B, 2, H, W)}, got "
                                     f"{None if rays is None else tuple(rays.shape)}")
                parts.append(rays.to(image.dtype))
            x = torch.cat(parts, 1)
            skips = []
            for k, blk in enumerate(self.enc):
                if k:
                    x = F.max_pool2d(x, 2)
                x = blk(x)
                skips.append(x)
            for j, blk in enumerate(self.dec):
                s = skips[-2 - j]
                x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
                x = blk(torch.cat([x, s], 1))
            out = self.head(x)
            if ray_normals:                        # ray frame -> camera frame
                k = len(LANDMARKS)
                n = ray_to_camera(out[:, k:k + 3], rays.to(out.dtype))
                out = torch.cat([out[:, :k], n, out[:, k + 3:]], 1)
            return out

    return _Net()


def landmark_losses(logits, target, valid=None, normals=None, mask=None,
                    normal_loss: str = "angle", normal_weight: float = W_NORMAL):
    """``logits (B, 3, H, W)``, ``target (B, 3, H, W)`` in {0, 1}; ``valid (B, 3)``: 0
    where a sample has no ground truth for a channel (e.g. no ligament on the mesh).
    With 6 logit channels, ``normals (B, 3, H, W)`` (true unit normals) and ``mask (B, H,
    W)`` (where they count) add ``normal_weight`` times the normal term (``normal_loss``:
    "cos" or "angle", module docstring); a seventh channel (the log scale) adds, with
    weight 1, the Laplace negative log-likelihood of the detached angle error, mean over
    the mask (logged as ``scale_nll``). Returns a dict with ``total``,
    per-channel ``bce`` and ``dice`` and ``f1`` (hard, threshold 0.5) and, with normals,
    ``normal_deg`` (median angular error over the mask) for logging."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    extra = {}
    n_term = 0.0
    if logits.shape[1] > len(LANDMARKS):
        if normals is None or mask is None:
            raise ValueError("normals: a network with normal channels needs the true "
                             "normals and the mask for its loss")
        if normal_loss not in NORMAL_LOSSES:
            raise ValueError(f"normal loss: one of {NORMAL_LOSSES}, got {normal_loss!r}")
        k = len(LANDMARKS)
        cos = (F.normalize(logits[:, k:k + 3], dim=1, eps=1e-6) * normals).sum(1)
        m = mask.to(cos.dtype)
        err = (1 - cos if normal_loss == "cos"
               else torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)))
        n_term = normal_weight * (err * m).sum() / m.sum().clamp(min=1)
        if logits.shape[1] > k + 3:          # the scale: Laplace NLL of the fixed error
            b = normal_scale(logits[:, k + 3])
            theta = torch.acos(cos.detach().clamp(-1 + 1e-6, 1 - 1e-6))
            nll = ((theta / b + torch.log(b)) * m).sum() / m.sum().clamp(min=1)
            n_term = n_term + nll
            extra["scale_nll"] = nll.detach()
        with torch.no_grad():
            sel = cos[m > 0]
            extra["normal_deg"] = (torch.rad2deg(torch.acos(sel.clamp(-1, 1))).median()
                                   if len(sel) else torch.tensor(float("nan")))
        logits = logits[:, :len(LANDMARKS)]

    pw = torch.tensor(POS_WEIGHT, device=logits.device).view(1, -1, 1, 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    bce = bce.mean((2, 3))                                     # (B, 3)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    dice = 1 - (2 * inter + 1.0) / (p.sum((2, 3)) + target.sum((2, 3)) + 1.0)
    if valid is None:
        valid = torch.ones_like(bce)
    w = valid / valid.sum(0).clamp(min=1)
    bce_c = (bce * w).sum(0)
    dice_c = (dice * w).sum(0)
    with torch.no_grad():
        hard = (p > 0.5).float()
        tp = (hard * target).sum((0, 2, 3))
        f1 = 2 * tp / (hard.sum((0, 2, 3)) + target.sum((0, 2, 3))).clamp(min=1)
    return {"total": bce_c.sum() + 0.5 * dice_c.sum() + n_term,
            "bce": bce_c.detach(), "dice": dice_c.detach(), "f1": f1, **extra}
