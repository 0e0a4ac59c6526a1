"""The 3D side and the global pose search of the learned landmark registration.

Where it sits in the flow (:mod:`.landmarks_infer`, steps 3-4): after the network's maps
became 2D observations, :class:`MeshLandmarks` holds the mesh's geometric landmarks
(curvature ridges, normals, search point sets) and :func:`global_search` scores every
rotation of a grid over the viewing directions (:func:`rotation_grid`) x camera rolls,
the translation following from the mask's moments, by the IoU of the splatted silhouette
with the mask plus the ridge agreement; the best distinct rotations go on to the image
ICP (:mod:`.landmarks_icp`). :func:`score_pose` scores one pose the same way.
"""

from __future__ import annotations

import numpy as np

#: search grid: viewing directions (Fibonacci sphere) x camera rolls
SEARCH_DIRECTIONS, SEARCH_ROLLS = 480, 24
#: prior on the laparoscope's viewing direction in the mesh frame: the mesh is assumed to
#: be in its CT's patient frame, where the laparoscope looks at the anterior surface,
#: along about +y (both shipped livers: 15 and 27 deg from +y); directions beyond
#: VIEW_CONE_DEG are not searched. ``view_axis=None`` searches the whole sphere.
VIEW_AXIS, VIEW_CONE_DEG = (0.0, 1.0, 0.0), 80.0
#: candidates refined by the image ICP (distinct by > 20 deg)
SEARCH_CANDIDATES = 8


# ----------------------------------------------------------------------------- 3D side
def fibonacci_directions(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)


def rotation_grid(n_dirs: int = SEARCH_DIRECTIONS, n_rolls: int = SEARCH_ROLLS,
                  view_axis=None, cone_deg: float = 180.0) -> np.ndarray:
    """``(M * n_rolls, 3, 3)`` model -> camera rotations (camera z = each of the ``M`` of
    ``n_dirs`` sphere directions within ``cone_deg`` of ``view_axis``)."""
    out = []
    dirs = fibonacci_directions(n_dirs)
    if view_axis is not None:
        a = np.asarray(view_axis, float) / np.linalg.norm(view_axis)
        dirs = dirs[dirs @ a >= np.cos(np.radians(cone_deg))]
    for z in dirs:
        up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        x = np.cross(up, z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R0 = np.stack([x, y, z])
        for a in np.arange(n_rolls) * 2 * np.pi / n_rolls:
            c, s = np.cos(a), np.sin(a)
            out.append(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ R0)
    return np.asarray(out)


class MeshLandmarks:
    """The geometric 3D side of a mesh: ridge vertices, normals, search point sets."""

    def __init__(self, mesh, n_search: int = 2500, n_moment: int = 800):
        from . import data  # noqa: PLC0415
        from ..synthetic import farthest_point_indices  # noqa: PLC0415

        self.v = np.asarray(mesh.vertices, np.float64)
        self.f = np.asarray(mesh.faces, np.int64)
        self.n = data.vertex_normals(self.v, self.f)
        self.ridge = np.nonzero(data.ridge_vertices(self.v, self.f))[0]
        self.c = self.v.mean(0)
        rng = np.random.default_rng(0)
        self.search = (np.arange(len(self.v)) if len(self.v) <= n_search
                       else np.sort(rng.choice(len(self.v), n_search, replace=False)))
        self.moment = farthest_point_indices(self.v, min(n_moment, len(self.v)))
        self.coarse = self.search[::max(1, len(self.search) // 700)]


# ----------------------------------------------------------------------------- search
def _project(Y, t, K):
    """``Y (B, N, 3)`` centred camera-frame points + ``t (B, 3)`` -> pixels ``(B, N, 2)``,
    depth ``(B, N)`` (pinhole, no distortion: the search is coarse)."""
    P = Y + t[:, None]
    z = P[..., 2]
    zc = z.clamp(min=1e-3)
    u = K[0, 0] * P[..., 0] / zc + K[0, 1] * P[..., 1] / zc + K[0, 2]
    v = K[1, 1] * P[..., 1] / zc + K[1, 2]
    return u, v, z


def _translations(Ym, K, mask_net, iterations: int = 3):
    """Per rotation, the translation that matches the projected points' in-image centroid
    and spread to the mask's (moments, iterated). ``Ym (B, N, 3)``."""
    import torch  # noqa: PLC0415

    H, W = mask_net.shape
    r, c = np.nonzero(mask_net > 0)
    mu = torch.tensor([c.mean(), r.mean()], dtype=Ym.dtype)
    sm = float(np.sqrt(np.sqrt(max(np.linalg.det(np.cov(np.stack([c, r]))), 1e-6))))
    fx, fy = float(K[0, 0]), float(K[1, 1])
    cov = torch.einsum("bni,bnj->bij", Ym[..., :2], Ym[..., :2]) / Ym.shape[1]
    sy = (torch.linalg.det(cov * torch.tensor([[fx * fx, fx * fy], [fx * fy, fy * fy]],
                                              dtype=Ym.dtype)).clamp(min=1e-6)) ** 0.25
    tz = sy / sm
    x = (mu[0] - float(K[0, 2])) / fx * tz
    y = (mu[1] - float(K[1, 2])) / fy * tz
    t = torch.stack([x, y, tz], 1)
    for _ in range(iterations):
        u, v, z = _project(Ym, t, K)
        ins = ((u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1) & (z > 1.0)).to(Ym.dtype)
        n = ins.sum(1).clamp(min=1)
        cu, cv = (u * ins).sum(1) / n, (v * ins).sum(1) / n
        du, dv = u - cu[:, None], v - cv[:, None]
        a = (du * du * ins).sum(1) / n
        b = (du * dv * ins).sum(1) / n
        d = (dv * dv * ins).sum(1) / n
        sp = (a * d - b * b).clamp(min=1e-6) ** 0.25
        scale = torch.where(ins.sum(1) >= 10, (sp / sm).clamp(0.5, 2.0), torch.full_like(sp, 2.0))
        tz_new = t[:, 2] * scale
        # keep the in-image centroid's ray, then move it onto the mask's centroid
        t = torch.stack([t[:, 0] * scale + (mu[0] - cu) / fx * tz_new,
                         t[:, 1] * scale + (mu[1] - cv) / fy * tz_new, tz_new], 1)
    return t


DEPTH_FACTORS = (0.55, 0.75, 1.0, 1.35, 1.8)
#: weight of the ridge agreement in the search score (silhouette IoU has weight 1)
W_RIDGE = 0.5


def _recentre(Ym, t, K, mask_net, iterations: int = 2):
    """Move each hypothesis parallel to the image so that its in-image projected points'
    centroid falls on the mask's centroid (depth kept)."""
    import torch  # noqa: PLC0415

    H, W = mask_net.shape
    r, c = np.nonzero(mask_net > 0)
    mu = (float(c.mean()), float(r.mean()))
    fx, fy = float(K[0, 0]), float(K[1, 1])
    for _ in range(iterations):
        u, v, z = _project(Ym, t, K)
        ins = ((u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1) & (z > 1.0)).to(Ym.dtype)
        n = ins.sum(1).clamp(min=1)
        cu = torch.where(ins.sum(1) > 0, (u * ins).sum(1) / n, u.mean(1))
        cv = torch.where(ins.sum(1) > 0, (v * ins).sum(1) / n, v.mean(1))
        t = torch.stack([t[:, 0] + (mu[0] - cu) / fx * t[:, 2],
                         t[:, 1] + (mu[1] - cv) / fy * t[:, 2], t[:, 2]], 1)
    return t


def _scores(R, t, lm: MeshLandmarks, K, mask_net, ridge_map, w_ridge: float = W_RIDGE,
            points=None):
    """Score of each hypothesis ``(R (B, 3, 3), t (B, 3))`` (centred model frame): IoU of
    the splatted silhouette with the mask (half grid, 3x3 dilation) + ``w_ridge`` x the
    ridge agreement (front ridge vertices near predicted ridge pixels, predicted ridge
    pixels near front ridge vertices)."""
    import cv2  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    H, W = mask_net.shape
    B = R.shape[0]
    Q = torch.as_tensor(lm.v[lm.search if points is None else points] - lm.c, dtype=R.dtype)
    u, v, z = _project(torch.einsum("bij,nj->bni", R, Q), t, K)
    h2, w2 = H // 2, W // 2
    ui, vi = torch.floor(u / 2).long(), torch.floor(v / 2).long()
    ok = (ui >= 0) & (ui < w2) & (vi >= 0) & (vi < h2) & (z > 1.0)
    flat = torch.where(ok, vi * w2 + ui, torch.full_like(ui, h2 * w2))
    occ = torch.zeros(B, h2 * w2 + 1, dtype=R.dtype)
    occ.scatter_(1, flat, 1.0)
    occ = F.max_pool2d(occ[:, :-1].view(B, 1, h2, w2), 3, 1, 1)[:, 0]
    m2 = torch.as_tensor(cv2.resize(mask_net.astype(np.float32), (w2, h2),
                                    interpolation=cv2.INTER_AREA) >= 0.5, dtype=R.dtype)
    inter = (occ * m2).sum((1, 2))
    iou = inter / (occ.sum((1, 2)) + m2.sum() - inter).clamp(min=1)
    behind = (z <= 1.0).float().mean(1)
    score = iou - behind
    if ridge_map is None or ridge_map.sum() < 3 or len(lm.ridge) == 0:
        return score
    dt = cv2.distanceTransform((ridge_map == 0).astype(np.uint8), cv2.DIST_L2, 3)
    dt = torch.as_tensor(np.minimum(dt, 6.0) / 6.0, dtype=R.dtype)
    Qr = torch.as_tensor(lm.v[lm.ridge] - lm.c, dtype=R.dtype)
    Nr = torch.as_tensor(lm.n[lm.ridge], dtype=R.dtype)
    Yr = torch.einsum("bij,nj->bni", R, Qr)
    ur, vr, zr = _project(Yr, t, K)
    front = (torch.einsum("bij,nj->bni", R, Nr) * (Yr + t[:, None])).sum(-1) < 0
    uri, vri = torch.round(ur).long(), torch.round(vr).long()
    inside = (uri >= 0) & (uri < W) & (vri >= 0) & (vri < H) & (zr > 1.0) & front
    mt = torch.as_tensor(mask_net > 0)
    flat_r = torch.where(inside, vri * W + uri, torch.zeros_like(uri))
    inside = inside & mt.view(-1)[flat_r]
    d = dt.view(-1)[flat_r]
    n_in = inside.sum(1)
    prec = torch.where(n_in > 0, ((1 - d) * inside).sum(1) / n_in.clamp(min=1),
                       torch.zeros_like(iou))
    occ_r = torch.zeros(B, H * W + 1, dtype=R.dtype)
    occ_r.scatter_(1, torch.where(inside, flat_r, torch.full_like(flat_r, H * W)), 1.0)
    occ_r = F.max_pool2d(occ_r[:, :-1].view(B, 1, H, W), 7, 1, 3)[:, 0]
    rm = torch.as_tensor(ridge_map > 0, dtype=R.dtype)
    cov = (occ_r * rm).sum((1, 2)) / rm.sum()
    return score + w_ridge * 0.5 * (prec + cov)


def global_search(lm: MeshLandmarks, camera, mask_net, ridge_map, n_dirs=SEARCH_DIRECTIONS,
                  n_rolls=SEARCH_ROLLS, k: int = SEARCH_CANDIDATES, chunk: int = 512,
                  view_axis=VIEW_AXIS, cone_deg: float = VIEW_CONE_DEG, cancel=None):
    """The ``k`` best distinct ``model_to_camera`` hypotheses (> 20 deg apart) and their
    scores, best first (see the module docstring, step 4)."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.progress import check_cancel  # noqa: PLC0415

    from . import data  # noqa: PLC0415

    K = torch.as_tensor(data.net_camera(camera).K, dtype=torch.float32)
    Rs = torch.as_tensor(rotation_grid(n_dirs, n_rolls, view_axis, cone_deg),
                         dtype=torch.float32)
    Qm = torch.as_tensor(lm.v[lm.moment] - lm.c, dtype=torch.float32)
    # stage A: every rotation; its translation from the mask's moments, then depths
    # around it (x 0.55 .. 1.8, a liver cut by the frame border biases the moments), each
    # re-centred on the mask; the best coarse silhouette IoU per rotation
    scores, ts = [], []
    for s in range(0, len(Rs), chunk):
        check_cancel(cancel, "learned pose search")
        R = Rs[s:s + chunk]
        Ym = torch.einsum("bij,nj->bni", R, Qm)
        t = _translations(Ym, K, mask_net)
        best_s, best_t = None, None
        for f in DEPTH_FACTORS:
            tf = _recentre(Ym, t * torch.tensor([f, f, f]), K, mask_net)
            sc = _scores(R, tf, lm, K, mask_net, None, points=lm.coarse)
            if best_s is None:
                best_s, best_t = sc, tf
            else:
                better = sc > best_s
                best_s = torch.where(better, sc, best_s)
                best_t = torch.where(better[:, None], tf, best_t)
        scores.append(best_s)
        ts.append(best_t)
    scores, ts = torch.cat(scores), torch.cat(ts)
    # stage B: the best 8 % scored fully (denser silhouette + ridge agreement)
    top = torch.argsort(-scores)[:max(k, len(Rs) // 12)]
    full = torch.cat([_scores(Rs[top[s:s + chunk]], ts[top[s:s + chunk]], lm, K, mask_net,
                              ridge_map) for s in range(0, len(top), chunk)])
    Rs, ts, scores = Rs[top], ts[top].numpy().astype(np.float64), full.numpy()
    # stage C: the best distinct hypotheses polished by a batched random local search on
    # the same score (rotation about the liver centre, translation relative to depth)
    seeds = _distinct(Rs.numpy().astype(np.float64), ts, scores, 24, 10.0)
    R0 = torch.as_tensor(np.stack([r for r, _, _ in seeds]), dtype=torch.float32)
    t0 = torch.as_tensor(np.stack([t for _, t, _ in seeds]), dtype=torch.float32)
    s0 = torch.as_tensor([sc for _, _, sc in seeds], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    n_s = 32
    for rnd, sig in enumerate((6.0, 4.0, 2.5, 1.5, 1.0)):
        check_cancel(cancel, "learned pose search")
        B = len(R0)
        w = torch.randn(B, n_s, 3, generator=gen) * np.radians(sig)
        dR = _rodrigues(w.view(-1, 3)).view(B, n_s, 3, 3)
        Rn = (dR @ R0[:, None]).view(-1, 3, 3)
        dt = torch.randn(B, n_s, 3, generator=gen) * (sig / 60.0) * t0[:, None, 2:3]
        tn = (t0[:, None] + dt).view(-1, 3)
        sn = _scores(Rn, tn, lm, K, mask_net, ridge_map).view(B, n_s)
        bi = sn.argmax(1)
        better = sn[torch.arange(B), bi] > s0
        R0 = torch.where(better[:, None, None], Rn.view(B, n_s, 3, 3)[torch.arange(B), bi], R0)
        t0 = torch.where(better[:, None], tn.view(B, n_s, 3)[torch.arange(B), bi], t0)
        s0 = torch.where(better, sn[torch.arange(B), bi], s0)
    picked = _distinct(R0.numpy().astype(np.float64), t0.numpy().astype(np.float64),
                       s0.numpy(), k, 20.0)
    out = []
    for R, t, sc in picked:
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = t - R @ lm.c
        out.append((T, sc))
    return out


def _rodrigues(w):
    import torch  # noqa: PLC0415

    th = w.norm(dim=1, keepdim=True).clamp(min=1e-12)
    k = w / th
    Kx = torch.zeros(len(w), 3, 3, dtype=w.dtype)
    Kx[:, 0, 1], Kx[:, 0, 2], Kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    Kx = Kx - Kx.transpose(1, 2)
    s, c = torch.sin(th)[..., None], torch.cos(th)[..., None]
    return torch.eye(3, dtype=w.dtype) + s * Kx + (1 - c) * Kx @ Kx


def _distinct(Rs, ts, scores, k, min_deg):
    """The ``k`` best hypotheses whose rotations are more than ``min_deg`` apart."""
    picked = []
    for i in np.argsort(-np.asarray(scores)):
        R = Rs[i]
        if any(np.degrees(np.arccos(np.clip((np.trace(R @ P.T) - 1) / 2, -1, 1))) < min_deg
               for P, _, _ in picked):
            continue
        picked.append((R, ts[i], float(scores[i])))
        if len(picked) >= k:
            break
    return picked


def score_pose(T, lm: MeshLandmarks, camera, mask_net, ridge_map) -> float:
    """:func:`_scores` of one ``model_to_camera``."""
    import torch  # noqa: PLC0415

    from . import data  # noqa: PLC0415

    K = torch.as_tensor(data.net_camera(camera).K, dtype=torch.float64)
    R = torch.as_tensor(T[:3, :3], dtype=torch.float64)[None]
    t = torch.as_tensor(T[:3, :3] @ lm.c + T[:3, 3], dtype=torch.float64)[None]
    return float(_scores(R, t, lm, K, mask_net, ridge_map)[0])
