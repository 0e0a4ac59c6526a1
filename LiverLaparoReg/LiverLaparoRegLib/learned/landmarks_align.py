"""Global pose search of the learned landmark registration by 2D-3D chamfer alignment.

Where it sits in the flow (:mod:`.landmarks_infer`, step 4): the 2D side is the liver
mask, its outline (frame border and instrument edges removed: :func:`.landmarks_infer.
observations`) and the predicted ridge pixels, all on the network grid; the 3D side is
the mesh's surface points and curvature-ridge vertices (:class:`.landmarks_search.
MeshLandmarks`). A hypothesis ``(R, t)`` (rotation about the liver centre, camera-frame
position of the centre) is scored by :func:`chamfer_cost`, in network pixels, lower is
better:

- **containment**: surface points that project inside the frame must fall inside the mask
  (distance to the mask, capped at ``CAP_IN``). Only where the mask's nearest edge is the
  liver's own outline: beyond the frame border or an instrument's edge the liver may go
  on hidden, so a point there costs nothing (:func:`_outside_distance`);
- **coverage**: every outline pixel must have a projected surface point near it (one-sided
  chamfer, capped), less half the projected point spacing, so that a liver near the
  camera (sparse projection) is not disfavoured against a far one;
- **ridge** (weight ``w_ridge``): the ridge vertices that are visible (front-facing, not
  behind the surface in a coarse z-buffer, inside the mask) near predicted ridge pixels
  and predicted ridge pixels near visible ridge vertices (both directions, capped);
- **normals** (weight ``w_normal``, only with a predicted normal map): at the visible
  surface points inside the mask, ``1 - cos`` between the mesh's normal turned by ``R``
  and the predicted camera-frame normal at the point's pixel. Unlike the outline, it
  depends on the rotation directly, so it separates poses whose silhouettes agree. The
  part of the mask where the hypothesis shows the inner side of the surface (the camera
  inside the liver) counts as the largest error.

Visibility (normal and ridge terms) is decided by a coarse z-buffer of at least
``OCCLUDER_POINTS`` surface points, whatever the size of the cost's point set.

:func:`align_search` (no initial pose):

1. every rotation of the grid (:func:`.landmarks_search.rotation_grid`) starts from the
   mask-moment translation and has its translation optimised (Adam on the image position
   of the centre and the log depth) on a coarse point set;
2. the best distinct rotations have rotation and translation optimised together on denser
   point sets;
3. the best distinct hypotheses (> 15 deg apart) are returned with their costs (the
   winner's margin over the best pose far from it is the ambiguity signal of the
   quality, :mod:`.landmarks_infer`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

from .landmarks_search import VIEW_AXIS, VIEW_CONE_DEG, MeshLandmarks, \
    correlation_translations, distinct_hypotheses, moment_translations, project_pinhole, \
    rotation_grid

#: caps (network px) of the per-point distances: beyond them a point is an outlier
CAP_IN, CAP_COVER, CAP_RIDGE = 4.0, 12.0, 8.0
#: weight of the ridge terms (the silhouette terms have weight 1 each)
W_RIDGE = 0.5
#: weight (network px per unit of mean ``1 - cos``) of the normal term, and the cap of a
#: point's ``1 - cos`` (60 deg: a point behind a fold that the coarse z-buffer misses is
#: an outlier, not a vote against the pose). Chosen on 12 SYNTHETIC development frames of
#: the training (P2ILF) mesh with the bundled v3 network: within 10 deg 7 of 12 at
#: weight 4; comparing only the normals' image-plane direction 6 (weight 4) and 5 (weight
#: 8); without normals 5; with the TRUE normal map 9 of 12 at weight 4. Re-checked with
#: v4 on 24 development frames (seeds 5-8): 17 at weight 4, 17 at 6, 16 at 8
W_NORMAL, CAP_NORMAL = 4.0, 0.5
#: search sizes: grid directions x rolls, coarse points / outline samples, candidates
#: optimised in 6 DOF, candidates returned. The fine stage's 2,000 points (640 before
#: 2026-12-06): in a close-up the 640 points (10 mm apart) left parts of the outline
#: uncovered at the true pose (0.5 px of coverage cost against 0.0 with 2,000 points,
#: on a development frame of the training mesh)
GRID_DIRECTIONS, GRID_ROLLS = 480, 24
COARSE_POINTS, COARSE_OUTLINE, FINE_POINTS, FINE_OUTLINE = 192, 64, 2000, 160
#: ridge samples: 3D ridge vertices, 2D ridge pixels (coarse, fine)
RIDGE_POINTS, COARSE_RIDGE, FINE_RIDGE = 160, 64, 160
FINE_CANDIDATES, RETURNED = 32, 8
#: fewest surface points whose z-buffer decides visibility (normal and ridge terms): the
#: coarse stage's 192 points alone leave gaps through which hidden points count as seen
#: (on a close-up of the held-out liver, 5 of 23 "seen" coarse points at the TRUE pose
#: were hidden, and their normal errors tripled the term; found by the search-misses
#: diagnosis, 2026-12-07)
OCCLUDER_POINTS = 2000
#: a surface point faces away from the camera when the cosine between its normal and the
#: viewing ray exceeds this (0: exactly side-on; a margin for the grazing points of the
#: outline)
BACK_FACING_COS = 0.1
#: with a normal map's uncertainty (Laplace scale b, radians, per pixel), each point's
#: normal error is weighted by 1 / max(b, NORMAL_SCALE_MIN): 3 deg, below which the term
#: (whose cap is 60 deg) cannot tell errors apart anyway
NORMAL_SCALE_MIN = float(np.radians(3.0))
#: visibility of the ridge points: z-buffer cell (network px) and depth tolerance (mm)
OCCLUSION_CELL, OCCLUSION_TOL_MM = 4, 10.0
#: optimiser steps between two nearest-point pairings
PAIR_EVERY = 5
#: how the first stage starts each grid rotation's translation (:func:`align_search`)
TRANSLATION_STARTS = ("moment", "correlation", "both")


def check_translation_start(name: str) -> str:
    """``name`` if it is one of :data:`TRANSLATION_STARTS`, else a one-line error."""
    if name not in TRANSLATION_STARTS:
        raise InputError(f"translation start: one of {', '.join(TRANSLATION_STARTS)}, got "
                         f"{name!r}")
    return name


class Observed2D:
    """The 2D side on the network grid (``H x W``): mask distance map, outline samples,
    ridge distance map and samples, optional camera-frame normal map ``(3, H, W)`` with
    optional per-pixel uncertainty ``normal_scale (H, W)`` (Laplace scale of the angle
    error, radians; the normal term weights each point by ``1 / max(b, NORMAL_SCALE_MIN)``);
    ``K`` the network camera's ``3 x 3`` (pinhole)."""

    def __init__(self, mask_net, outline_net, ridge_map, K, normal_map=None,
                 normal_scale=None):
        import cv2  # noqa: PLC0415
        import torch  # noqa: PLC0415

        self.mask = np.asarray(mask_net) > 0
        self.H, self.W = self.mask.shape
        self.K = torch.as_tensor(np.asarray(K, np.float64), dtype=torch.float32)
        outline_net = np.asarray(outline_net, np.float64).reshape(-1, 2)
        self.dt_out = torch.as_tensor(np.minimum(_outside_distance(self.mask, outline_net),
                                                 CAP_IN), dtype=torch.float32)
        self.outline = torch.as_tensor(outline_net, dtype=torch.float32)
        self.mask_t = torch.as_tensor(self.mask, dtype=torch.float32)
        self.normals = (None if normal_map is None    # normalised where sampled
                        else torch.as_tensor(np.asarray(normal_map, np.float32)))
        self.normal_w = None
        if normal_scale is not None and normal_map is not None:
            b = np.maximum(np.asarray(normal_scale, np.float32), NORMAL_SCALE_MIN)
            self.normal_w = torch.as_tensor(1.0 / b, dtype=torch.float32)
        self.ridge = None
        if ridge_map is not None and int((np.asarray(ridge_map) > 0).sum()) >= 3:
            rm = np.asarray(ridge_map) > 0
            dt_r = cv2.distanceTransform((~rm).astype(np.uint8), cv2.DIST_L2, 5)
            self.dt_ridge = torch.as_tensor(np.minimum(dt_r, CAP_RIDGE), dtype=torch.float32)
            r, c = np.nonzero(rm)
            self.ridge = torch.as_tensor(np.stack([c, r], 1), dtype=torch.float32)

    def outline_sample(self, n: int):
        """At most ``n`` outline pixels, evenly picked along the list."""
        return _subsample(self.outline, n)

    def ridge_sample(self, n: int):
        """At most ``n`` ridge pixels (None without a ridge map)."""
        return None if self.ridge is None else _subsample(self.ridge, n)


def _outside_distance(mask, outline_net) -> np.ndarray:
    """Per pixel, the distance (px) to the mask where the nearest mask pixel lies on the
    liver's own outline (``outline_net``: silhouette pixels, within 1.5 px), else 0: beyond
    an instrument's edge the liver may go on hidden, so a point there costs nothing."""
    import cv2  # noqa: PLC0415

    dt, lab = cv2.distanceTransformWithLabels((~mask).astype(np.uint8), cv2.DIST_L2, 5,
                                              labelType=cv2.DIST_LABEL_PIXEL)
    H, W = mask.shape
    sil = np.zeros((H, W), np.uint8)
    if len(outline_net):
        uv = np.round(outline_net).astype(np.int64)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        sil[uv[ok, 1], uv[ok, 0]] = 1
    sil = cv2.dilate(sil, np.ones((3, 3), np.uint8)).astype(bool) & mask
    own = np.zeros(int(lab.max()) + 1, bool)          # label of a mask pixel -> on outline
    own[lab[sil]] = True
    return np.where(mask | ~own[lab], 0.0, dt).astype(np.float32)


def _subsample(P, n):
    if len(P) <= n:
        return P
    return P[np.linspace(0, len(P) - 1, n).round().astype(np.int64)]


def _sample_map(m, u, v):
    """Bilinear lookup of map ``m (H, W)`` at ``(u, v) (B, N)`` pixel coordinates
    (clamped to the border): ``(B, N)``."""
    return _sample_maps(m[None], u, v)[:, 0]


def _sample_maps(m, u, v):
    """Bilinear lookup of the channels of ``m (C, H, W)`` at ``(u, v) (B, N)`` pixel
    coordinates (clamped to the border), all channels in one pass: ``(B, C, N)``."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    C, H, W = m.shape
    g = torch.stack([(u + 0.5) / W * 2 - 1, (v + 0.5) / H * 2 - 1], -1)
    return F.grid_sample(m[None].expand(u.shape[0], C, H, W), g[:, None], mode="bilinear",
                         padding_mode="border", align_corners=False)[:, :, 0]


def _nearest(P, uv, valid=None, cache=None, key=""):
    """Distance ``(B, M)`` from each 2D point ``P (M, 2)`` to the nearest of ``uv (B, N,
    2)`` (only ``valid (B, N)`` ones; none valid -> 1e4). The nearest point is found
    without gradient, the distance to it carries it (cheap backward). With a ``cache``
    dict, the pairing stored under ``key`` is reused unless ``cache["refresh"]`` (the
    pairs change slowly between optimiser steps, as in ICP)."""
    import torch  # noqa: PLC0415

    if cache is not None and not cache.get("refresh", True) and key in cache:
        j, far = cache[key]
    else:
        with torch.no_grad():
            D = torch.cdist(P[None].expand(len(uv), -1, -1), uv)
            if valid is not None:
                D = D + (1 - valid)[:, None, :] * 1e4
            j = D.argmin(2)
            far = D.gather(2, j[..., None])[..., 0] >= 1e4
        if cache is not None:
            cache[key] = (j, far)
    q = uv.gather(1, j[..., None].expand(-1, -1, 2))
    d = ((q - P[None]) ** 2).sum(-1).add(1e-6).sqrt()
    return torch.where(far, torch.full_like(d, 1e4), d), j


def _beyond_spacing(d, j, z, h, f):
    """``d`` less half the projected spacing (``h`` mm at depth ``z`` of the paired point,
    focal ``f`` px): a sparse point set is not penalised for its gaps, so a liver near
    the camera (sparse projection) is not disfavoured against a far one."""
    if h <= 0:
        return d
    return (d - 0.5 * h * f / z.gather(1, j).clamp(min=1.0)).clamp(min=0.0)


class ModelPoints(NamedTuple):
    """The 3D side of the cost: centred surface points ``Q (N, 3)`` with their spacing
    ``h`` (mm), ridge points ``Qr`` with normals ``Nr`` and spacing ``hr``, the surface
    points' normals ``N``, and the occluders ``Qo`` with their normals ``No``: the
    surface points whose z-buffer decides what is hidden (:func:`_zbuffer`; at least
    ``OCCLUDER_POINTS``, so that a sparse cost set does not see through the surface)."""

    Q: object
    h: float
    Qr: object
    Nr: object
    hr: float
    N: object
    Qo: object
    No: object


def model_points(lm: MeshLandmarks, n: int) -> ModelPoints:
    """``n`` spread surface points, up to ``RIDGE_POINTS`` spread ridge points and
    ``max(n, OCCLUDER_POINTS)`` occluders (the same tensor as ``Q`` when ``n`` is larger)."""
    import torch  # noqa: PLC0415

    def f32(a):
        return torch.as_tensor(a, dtype=torch.float32)

    rid = lm.spread(RIDGE_POINTS, ridge=True)
    ids = lm.spread(n)
    Q, N = f32(lm.v[ids] - lm.c), f32(lm.n[ids])
    if n >= OCCLUDER_POINTS:
        Qo, No = Q, N
    else:
        oid = lm.spread(OCCLUDER_POINTS)
        Qo, No = f32(lm.v[oid] - lm.c), f32(lm.n[oid])
    return ModelPoints(Q, lm.spacing(n), f32(lm.v[rid] - lm.c), f32(lm.n[rid]),
                       lm.spacing(RIDGE_POINTS, ridge=True), N, Qo, No)


class ZBuffer(NamedTuple):
    """Nearest depth (mm) per ``cell`` px cell of the network grid, ``(B, gh * gw)``, and
    ``back``: per hypothesis, the fraction of the mask's cells whose nearest surface
    point faces away from the camera (``(B,)``, None when not asked for)."""

    buf: object
    gh: int
    gw: int
    cell: int
    back: object = None


def _zbuffer(u, v, z, H, W, cell: int = OCCLUSION_CELL, facing_away=None,
             in_mask=None) -> ZBuffer:
    """A coarse z-buffer of projected surface points ``(u, v, z)`` (each ``(B, N)``):
    ``cell`` px cells, nearest depth, then the 3 x 3 minimum to close the gaps between
    points. With ``facing_away`` and ``in_mask`` (both ``(B, N)`` bool), also the
    fraction of mask cells whose nearest point faces away (a cell's nearest point counts
    only if it is not a point seen through a gap: within ``OCCLUSION_TOL_MM`` of the 3 x 3
    minimum). A closed surface seen from outside shows its outer side everywhere; a pose
    with the camera inside the liver shows its inner side."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    gh, gw = -(-H // cell), -(-W // cell)
    B = u.shape[0]
    iu, iv = torch.floor((u + 0.5) / cell).long(), torch.floor((v + 0.5) / cell).long()
    ok = (iu >= 0) & (iu < gw) & (iv >= 0) & (iv < gh) & (z > 1.0)
    idx = torch.where(ok, iv * gw + iu, torch.full_like(iu, gh * gw))
    raw = torch.full((B, gh * gw + 1), float("inf"), dtype=z.dtype)
    raw.scatter_reduce_(1, idx, z, reduce="amin")
    buf = raw[:, :-1].view(B, 1, gh, gw).nan_to_num(posinf=1e9)
    buf = -F.max_pool2d(-buf, 3, 1, 1).view(B, -1)
    back = None
    if facing_away is not None:
        pooled = torch.cat([buf, torch.full((B, 1), 1e9, dtype=z.dtype)], 1)
        nearest = ok & (z <= raw.gather(1, idx)) \
            & (z <= pooled.gather(1, idx) + OCCLUSION_TOL_MM) & in_mask
        back = (nearest & facing_away).sum(1) / nearest.sum(1).clamp(min=1)
    return ZBuffer(buf, gh, gw, cell, back)


def _unoccluded(zb: ZBuffer, ur, vr, zr, tol_mm: float = OCCLUSION_TOL_MM):
    """``(B, M)`` True where a point ``(ur, vr, zr)`` is not behind the surface of the
    z-buffer ``zb`` (by more than ``tol_mm``)."""
    import torch  # noqa: PLC0415

    ju = torch.floor((ur + 0.5) / zb.cell).long().clamp(0, zb.gw - 1)
    jv = torch.floor((vr + 0.5) / zb.cell).long().clamp(0, zb.gh - 1)
    return zr <= zb.buf.gather(1, jv * zb.gw + ju) + tol_mm


def _occluders(R, t, mp: ModelPoints, Y, u, v, z, obs: Observed2D, cache=None) -> ZBuffer:
    """The z-buffer of the occluders ``mp.Qo`` posed by ``R, t`` (the cost points'
    projection ``Y, u, v, z`` when they are the occluders), with the fraction of the
    mask's cells that show the inner side of the surface (:class:`ZBuffer`), without
    gradient; with a ``cache`` (see :func:`_nearest`) made again only when the pairs
    are."""
    import torch  # noqa: PLC0415

    if cache is not None and not cache.get("refresh", True) and "zbuf" in cache:
        return cache["zbuf"]
    with torch.no_grad():
        if mp.Qo is not mp.Q:
            Y = torch.einsum("bij,nj->bni", R, mp.Qo) + t[:, None]
            u, v, z = project_pinhole(Y, obs.K)
        Y, u, v, z = Y.detach(), u.detach(), v.detach(), z.detach()
        Nc = torch.einsum("bij,nj->bni", R.detach(), mp.No)
        away = (Nc * Y).sum(-1) > BACK_FACING_COS * Y.square().sum(-1).sqrt()
        zb = _zbuffer(u, v, z, obs.H, obs.W, facing_away=away,
                      in_mask=_sample_map(obs.mask_t, u, v) > 0.5)
    if cache is not None:
        cache["zbuf"] = zb
    return zb


def _normal_term(R, Y, u, v, z, N, obs: Observed2D, zb: ZBuffer, cache=None):
    """Mean ``1 - cos`` ``(B,)`` (each point's capped at ``CAP_NORMAL``; weighted by the
    network's confidence where ``obs`` has the normals' uncertainty) between the turned
    mesh normals and the predicted normal map at the visible surface points (front-facing,
    not behind the occluders' z-buffer ``zb``) inside the mask (``CAP_NORMAL`` where none
    is visible), as the mask's cells that show the outer side of the surface; the cells
    that show its inner side (``zb.back``: the camera inside the liver) count
    ``CAP_NORMAL`` each. With a ``cache`` (see :func:`_nearest`) the visibility is found
    again only when the pairs are."""
    import torch  # noqa: PLC0415

    Nc = torch.einsum("bij,nj->bni", R, N)
    if cache is not None and not cache.get("refresh", True) and "seen" in cache:
        seen = cache["seen"]
    else:
        with torch.no_grad():
            seen = ((Nc * Y).sum(-1) < 0) & (z > 1.0) \
                & (_sample_map(obs.mask_t, u, v) > 0.5) \
                & (u >= -0.5) & (u <= obs.W - 0.5) & (v >= -0.5) & (v <= obs.H - 0.5) \
                & _unoccluded(zb, u, v, z)
        if cache is not None:
            cache["seen"] = seen
    pred = _sample_maps(obs.normals, u, v)                                  # (B, 3, N)
    # (the sum of squares, not torch's norm over the short channel axis: 10 x faster here)
    cos = (Nc.transpose(1, 2) * pred).sum(1) / (pred * pred).sum(1).clamp(min=1e-12).sqrt()
    sf = seen.to(Y.dtype)
    n_seen = sf.sum(1)
    w = sf if obs.normal_w is None else sf * _sample_map(obs.normal_w, u, v)  # confidence
    err = ((1 - cos).clamp(max=CAP_NORMAL) * w).sum(1) / w.sum(1).clamp(min=1e-6)
    err = torch.where(n_seen > 0, err, torch.full_like(err, CAP_NORMAL))
    return err if zb.back is None else (1 - zb.back) * err + zb.back * CAP_NORMAL


def chamfer_cost(R, t, mp: ModelPoints, obs: Observed2D, outline, ridge=None,
                 w_ridge: float = None, cache=None, w_normal: float = None):
    """Cost ``(B,)`` (network px) of hypotheses ``R (B, 3, 3)``, ``t (B, 3)`` (centred
    model points -> camera ``R Q + t``); see the module docstring. ``outline``,
    ``ridge``: the 2D samples used (network px)."""
    import torch  # noqa: PLC0415

    Q, h, Qr, Nr, hr, N = mp.Q, mp.h, mp.Qr, mp.Nr, mp.hr, mp.N
    w_ridge = W_RIDGE if w_ridge is None else w_ridge
    w_normal = W_NORMAL if w_normal is None else w_normal
    Y = torch.einsum("bij,nj->bni", R, Q) + t[:, None]
    u, v, z = project_pinhole(Y, obs.K)
    inside = (u >= -0.5) & (u <= obs.W - 0.5) & (v >= -0.5) & (v <= obs.H - 0.5) & (z > 1.0)
    d_in = _sample_map(obs.dt_out, u, v)
    behind = (z <= 1.0).to(Y.dtype)
    contain = (d_in * inside.to(Y.dtype) + CAP_IN * behind).mean(1)
    uv = torch.stack([u, v], -1)
    f = float(np.sqrt(float(obs.K[0, 0]) * float(obs.K[1, 1])))
    if len(outline):
        d, j = _nearest(outline, uv, cache=cache, key="cover")
        cover = _beyond_spacing(d, j, z, h, f).clamp(max=CAP_COVER).mean(1)
    else:
        cover = torch.zeros_like(contain)
    cost = contain + cover
    use_normals = obs.normals is not None and w_normal > 0
    use_ridge = ridge is not None and len(Qr) >= 3 and w_ridge > 0
    if use_normals or use_ridge:
        zb = _occluders(R, t, mp, Y, u, v, z, obs, cache)
    if use_normals:
        cost = cost + w_normal * _normal_term(R, Y, u, v, z, N, obs, zb, cache)
    if not use_ridge:
        return cost
    Yr = torch.einsum("bij,nj->bni", R, Qr) + t[:, None]
    front = ((torch.einsum("bij,nj->bni", R, Nr) * Yr).sum(-1) < 0)
    ur, vr, zr = project_pinhole(Yr, obs.K)
    seen = front & (ur >= -0.5) & (ur <= obs.W - 0.5) & (vr >= -0.5) & (vr <= obs.H - 0.5) \
        & (zr > 1.0) & (_sample_map(obs.dt_out, ur, vr) < 1.0) \
        & _unoccluded(zb, ur.detach(), vr.detach(), zr.detach())
    sf = seen.to(Y.dtype)
    n_seen = sf.sum(1)
    fwd = torch.where(n_seen > 0, (_sample_map(obs.dt_ridge, ur, vr) * sf).sum(1)
                      / n_seen.clamp(min=1), torch.full_like(cost, CAP_RIDGE))
    uvr = torch.stack([ur, vr], -1)
    d, j = _nearest(ridge, uvr, sf, cache, "ridge")
    back = _beyond_spacing(d, j, zr, hr, f).clamp(max=CAP_RIDGE).mean(1)
    return cost + w_ridge * 0.5 * (fwd + back)


def _optimise(R0, t0, mp, obs, outline, ridge, steps: int, rotate: bool,
              lr_pos: float, lr_depth: float, lr_rot: float, pair_every: int = PAIR_EVERY,
              w_ridge=None, w_normal=None, cancel=None):
    """Adam on each hypothesis: image position of the centre ``(a, b)`` (``t = z (a, b,
    1)``), log depth and, with ``rotate``, a rotation about the centre. Returns the best
    ``(R, t, cost)`` seen per hypothesis."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415
    from SurgicalReg2D3DLib.progress import check_cancel  # noqa: PLC0415

    z0 = t0[:, 2].clamp(min=5.0)
    ab = (t0[:, :2] / z0[:, None]).clone().requires_grad_(True)
    s = torch.log(z0).clone().requires_grad_(True)
    w = torch.zeros(len(R0), 3, requires_grad=True)
    groups = [{"params": [ab], "lr": lr_pos}, {"params": [s], "lr": lr_depth}]
    if rotate:
        groups.append({"params": [w], "lr": lr_rot})
    opt = torch.optim.Adam(groups)
    best_c = torch.full((len(R0),), float("inf"))
    best_R, best_t = R0.clone(), t0.clone()
    cache = {}
    for k in range(steps + 1):
        if k % 10 == 0:
            check_cancel(cancel, "learned pose search")
        cache["refresh"] = k % pair_every == 0 or k == steps
        z = torch.exp(s)
        t = torch.cat([ab * z[:, None], z[:, None]], 1)
        R = (so3_exp(w) @ R0) if rotate else R0
        c = chamfer_cost(R, t, mp, obs, outline, ridge, w_ridge=w_ridge, cache=cache,
                         w_normal=w_normal)
        with torch.no_grad():
            better = c < best_c
            best_c = torch.where(better, c, best_c)
            best_t = torch.where(better[:, None], t, best_t)
            best_R = torch.where(better[:, None, None], R, best_R)
        if k == steps:
            break
        opt.zero_grad()
        c.sum().backward()
        opt.step()
    return best_R.detach(), best_t.detach(), best_c.detach()


def refine_hypotheses(R0, t0, lm: MeshLandmarks, obs: Observed2D, w_ridge=None,
                      w_normal=None, cancel=None):
    """The search's fine stage (step 2 of :func:`align_search`): rotation and translation
    of hypotheses ``R0 (B, 3, 3)``, ``t0 (B, 3)`` (centred model -> camera) optimised
    together on the fine point sets. Returns the best ``(R, t, cost)`` per hypothesis
    (also used by ``benchmarks/laparo_search_misses.py`` to find the true pose's basin)."""
    return _optimise(R0, t0, model_points(lm, FINE_POINTS), obs,
                     obs.outline_sample(FINE_OUTLINE), obs.ridge_sample(FINE_RIDGE),
                     steps=60, rotate=True, lr_pos=0.004, lr_depth=0.015, lr_rot=0.01,
                     pair_every=1, w_ridge=w_ridge, w_normal=w_normal, cancel=cancel)


def coarse_stage(lm: MeshLandmarks, obs: Observed2D, Rs, chunk: int = 1024, w_ridge=None,
                 w_normal=None, translation_start: str = "moment", cancel=None):
    """The search's first stage (step 1 of :func:`align_search`): each rotation of ``Rs
    (M, 3, 3)`` (torch) keeps its rotation and has its translation optimised on the coarse
    point sets from the start ``translation_start`` (:data:`TRANSLATION_STARTS`). Returns
    ``(R, t, cost)`` per rotation (``t``: camera-frame position of the mesh centre; also
    used by ``benchmarks/laparo_search_misses.py`` to rank the rotations near the truth)."""
    import torch  # noqa: PLC0415

    check_translation_start(translation_start)
    mc = model_points(lm, COARSE_POINTS)
    oc, rc = obs.outline_sample(COARSE_OUTLINE), obs.ridge_sample(COARSE_RIDGE)
    Qm = torch.as_tensor(lm.v[lm.moment] - lm.c, dtype=torch.float32)
    Rb, tb, cb = [], [], []
    for s0 in range(0, len(Rs), chunk):
        R = Rs[s0:s0 + chunk]
        with torch.no_grad():
            Ym = torch.einsum("bij,nj->bni", R, Qm)
            t = moment_translations(Ym, obs.K, obs.mask)
            if translation_start == "correlation":
                t = correlation_translations(Ym, t, obs.K, obs.mask)
            elif translation_start == "both":     # each rotation from both starts
                t = torch.cat([t, correlation_translations(Ym, t, obs.K, obs.mask)])
                R = torch.cat([R, R])
        r = _optimise(R, t, mc, obs, oc, rc, steps=30, rotate=False, lr_pos=0.01,
                      lr_depth=0.04, lr_rot=0.0, w_ridge=w_ridge, w_normal=w_normal,
                      cancel=cancel)
        if translation_start == "both":           # the cheaper of the two per rotation
            n = len(R) // 2
            second = r[2][n:] < r[2][:n]
            r = (r[0][:n], torch.where(second[:, None], r[1][n:], r[1][:n]),
                 torch.where(second, r[2][n:], r[2][:n]))
        Rb.append(r[0])
        tb.append(r[1])
        cb.append(r[2])
    return torch.cat(Rb), torch.cat(tb), torch.cat(cb)


def align_search(lm: MeshLandmarks, camera, obs: Observed2D, view_axis=VIEW_AXIS,
                 cone_deg: float = VIEW_CONE_DEG, n_dirs: int = GRID_DIRECTIONS,
                 n_rolls: int = GRID_ROLLS, k: int = RETURNED, chunk: int = 1024,
                 w_ridge=None, w_normal=None, translation_start: str = "moment",
                 cancel=None):
    """The ``k`` best distinct ``model_to_camera`` hypotheses (> 15 deg apart) with their
    costs (network px, lower is better), best first (module docstring).
    ``translation_start``: ``"moment"`` (the mask's moments), ``"correlation"``
    (:func:`.landmarks_search.correlation_translations`, about twice the time) or
    ``"both"`` (each rotation's translation optimised from both, the cheaper kept)."""
    import torch  # noqa: PLC0415

    check_translation_start(translation_start)
    Rs = torch.as_tensor(rotation_grid(n_dirs, n_rolls, view_axis, cone_deg),
                         dtype=torch.float32)
    # stage 1: every rotation, translation only
    Rb, tb, cb = coarse_stage(lm, obs, Rs, chunk, w_ridge, w_normal, translation_start,
                              cancel)
    seeds = distinct_hypotheses(Rb.numpy().astype(np.float64),
                                tb.numpy().astype(np.float64), -cb.numpy(), FINE_CANDIDATES,
                                10.0)
    # stage 2: the best distinct rotations, rotation and translation, denser sets
    R0 = torch.as_tensor(np.stack([r for r, _, _ in seeds]), dtype=torch.float32)
    t0 = torch.as_tensor(np.stack([t for _, t, _ in seeds]), dtype=torch.float32)
    R1, t1, c1 = refine_hypotheses(R0, t0, lm, obs, w_ridge=w_ridge, w_normal=w_normal,
                                   cancel=cancel)
    picked = distinct_hypotheses(R1.numpy().astype(np.float64),
                                 t1.numpy().astype(np.float64), -c1.numpy(), k, 15.0)
    out = []
    for R, t, negc in picked:
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = t - R @ lm.c
        out.append((T, -negc))
    return out


def pose_cost(T, lm: MeshLandmarks, obs: Observed2D, w_ridge=None, w_normal=None) -> float:
    """:func:`chamfer_cost` of one ``model_to_camera`` on the fine point sets."""
    import torch  # noqa: PLC0415

    R = torch.as_tensor(T[:3, :3], dtype=torch.float32)[None]
    t = torch.as_tensor(T[:3, :3] @ lm.c + T[:3, 3], dtype=torch.float32)[None]
    with torch.no_grad():
        return float(chamfer_cost(R, t, model_points(lm, FINE_POINTS), obs,
                                  obs.outline_sample(FINE_OUTLINE),
                                  obs.ridge_sample(FINE_RIDGE), w_ridge=w_ridge,
                                  w_normal=w_normal)[0])
