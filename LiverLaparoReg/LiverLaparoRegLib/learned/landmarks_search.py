"""The 3D side and the search grid of the learned landmark registration.

Where it sits in the flow (:mod:`.landmarks_infer`, step 3): :class:`MeshLandmarks` holds
the mesh's geometric landmarks (curvature ridges, normals, point sets);
:func:`rotation_grid` spans the viewing directions x camera rolls that the global search
(:mod:`.landmarks_align`, step 4) starts from, each with the mask-moment translation of
:func:`moment_translations`; :func:`distinct_hypotheses` keeps the best hypotheses that are far apart.
"""

from __future__ import annotations

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

#: prior on the laparoscope's viewing direction in the mesh frame: the mesh is assumed to
#: be in its CT's patient frame, where the laparoscope looks at the anterior surface,
#: along about +y (both shipped livers: 15 and 27 deg from +y); directions beyond
#: VIEW_CONE_DEG are not searched. ``view_axis=None`` searches the whole sphere.
VIEW_AXIS, VIEW_CONE_DEG = (0.0, 1.0, 0.0), 80.0
#: the prior's axis by the mesh file's coordinate system: the laparoscope looks from
#: anterior toward posterior, +y in LPS (Slicer's default for mesh files, and the frame
#: the module gives the search for a model node) and -y in RAS
AXIS_BY_SPACE = {"LPS": (0.0, 1.0, 0.0), "RAS": (0.0, -1.0, 0.0)}
_NAMED_AXES = {"+x": (1.0, 0.0, 0.0), "-x": (-1.0, 0.0, 0.0), "+y": (0.0, 1.0, 0.0),
               "-y": (0.0, -1.0, 0.0), "+z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0)}


def parse_view_axis(text, what: str = "view axis"):
    """The search's prior axis from text: ``+y`` (and the other signed axes), ``x,y,z``
    (a direction in the mesh frame) or ``any`` (None: the whole sphere is searched)."""
    t = str(text).strip().lower()
    if t == "any":
        return None
    if t in _NAMED_AXES:
        return _NAMED_AXES[t]
    try:
        a = np.array([float(x) for x in t.split(",")], float)
    except ValueError:
        a = np.zeros(0)
    try:
        return tuple(check_view_axis(a, what))
    except InputError:
        raise InputError(f"{what}: expected +x, -x, +y, -y, +z, -z, 'any' or three numbers "
                         f"'x,y,z' (not all zero), got {text!r}") from None


def check_view_axis(axis, what: str = "view axis"):
    """``axis`` as a unit 3-vector (``None`` stays None: any direction); a clear error for
    anything else."""
    if axis is None:
        return None
    a = np.asarray(axis, float).reshape(-1)
    if a.shape != (3,) or not np.isfinite(a).all() or np.linalg.norm(a) < 1e-9:
        raise InputError(f"{what}: expected a nonzero 3-vector or None (any direction), got "
                         f"{a.tolist()}")
    return a / np.linalg.norm(a)



def view_angle_deg(model_to_camera, axis=VIEW_AXIS) -> float:
    """Angle (deg) between a pose's viewing direction (camera +z in the model frame) and
    ``axis`` (the search's prior): beyond the cone the search does not look."""
    view = np.asarray(model_to_camera, float)[:3, :3].T @ np.array([0.0, 0.0, 1.0])
    a = np.asarray(axis, float)
    return float(np.degrees(np.arccos(np.clip(view @ a / np.linalg.norm(a), -1, 1))))


# ----------------------------------------------------------------------------- 3D side
def fibonacci_directions(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)


def rotation_grid(n_dirs: int = 480, n_rolls: int = 24,
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
    """The geometric 3D side of a mesh: vertices ``v``, faces ``f``, normals ``n``, ridge
    vertex ids ``ridge`` (by ``ridge_definition``, the one the network's labels had:
    :func:`.data.ridge_vertices`), centre ``c``; evenly spread vertex subsets by
    farthest-point sampling (:meth:`spread`, cached)."""

    def __init__(self, mesh, n_moment: int = 800, ridge_definition: str = "ring"):
        from . import data  # noqa: PLC0415

        self.v = np.asarray(mesh.vertices, np.float64)
        self.f = np.asarray(mesh.faces, np.int64)
        self.n = data.vertex_normals(self.v, self.f)
        self.ridge = np.nonzero(data.ridge_vertices(self.v, self.f,
                                                    definition=ridge_definition))[0]
        self.c = self.v.mean(0)
        self._spread = {}
        self.moment = self.spread(n_moment)

    def spread(self, n: int, ridge: bool = False) -> np.ndarray:
        """Ids of ``n`` evenly spread vertices (of the ridge vertices with ``ridge``)."""
        from ..synthetic import farthest_point_indices  # noqa: PLC0415

        key = (n, ridge)
        if key not in self._spread:
            ids = self.ridge if ridge else np.arange(len(self.v))
            self._spread[key] = (ids if len(ids) <= n
                                 else ids[farthest_point_indices(self.v[ids], n)])
        return self._spread[key]

    def spacing(self, n: int, ridge: bool = False) -> float:
        """Median distance (mm) from each point of :meth:`spread` to its nearest other."""
        from scipy.spatial import cKDTree  # noqa: PLC0415

        P = self.v[self.spread(n, ridge)]
        if len(P) < 2:
            return 0.0
        return float(np.median(cKDTree(P).query(P, k=2)[0][:, 1]))


# ----------------------------------------------------------------------------- search
def project_pinhole(Y, K):
    """Camera-frame points ``Y (B, N, 3)`` -> pixels ``u, v`` and depth ``z`` ``(B, N)``
    (pinhole with skew, no distortion: the search is coarse; depths below 1 mm are
    clamped for the division, callers treat such points as behind the camera)."""
    z = Y[..., 2]
    zc = z.clamp(min=1.0)
    u = K[0, 0] * Y[..., 0] / zc + K[0, 1] * Y[..., 1] / zc + K[0, 2]
    v = K[1, 1] * Y[..., 1] / zc + K[1, 2]
    return u, v, z


def moment_translations(Ym, K, mask_net, iterations: int = 3):
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
        u, v, z = project_pinhole(Ym + t[:, None], K)
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


#: depths (x the mask-moment depth) tried by :func:`correlation_translations`
CORRELATION_DEPTHS = (0.45, 0.6, 0.8, 1.0, 1.3)


def correlation_translations(Ym0, t_m, K, mask_net, depths=CORRELATION_DEPTHS):
    """Per rotation, a translation start found by correlation, for views cut by the frame
    (where the mask's moments mislead :func:`moment_translations`): at each depth (x the
    moment depth ``t_m[:, 2]``) the rotated, centred points ``Ym0 (B, N, 3)`` are drawn
    as an occupancy image at half the network grid on a canvas twice the frame, and
    correlated (FFT) with ``2 x mask - 1 x (frame outside the mask)``, zero beyond the
    frame (the liver may go on there unseen); the best shift over all depths gives the
    translation ``(B, 3)``."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    H, W = mask_net.shape
    h, w = H // 2, W // 2
    Hc, Wc = 2 * h, 2 * w
    m = F.avg_pool2d(torch.as_tensor(np.asarray(mask_net, np.float32))[None, None], 2)[0, 0]
    score_map = torch.zeros(Hc, Wc)
    score_map[h // 2:h // 2 + h, w // 2:w // 2 + w] = torch.where(m[:h, :w] > 0.5, 2.0, -1.0)
    FK = torch.fft.rfft2(score_map)
    fx, fy = float(K[0, 0]), float(K[1, 1])
    cx, cy = float(K[0, 2]), float(K[1, 2])
    B = len(Ym0)
    best_s = torch.full((B,), -1e9)
    best_t = t_m.clone()
    for c in depths:
        z = t_m[:, 2] * float(c)
        Z = (Ym0[..., 2] + z[:, None]).clamp(min=1.0)
        u, v = fx * Ym0[..., 0] / Z, fy * Ym0[..., 1] / Z        # px from the centre's ray
        iu = torch.round(u / 2 + Wc / 2).long()
        iv = torch.round(v / 2 + Hc / 2).long()
        ok = (iu >= 0) & (iu < Wc) & (iv >= 0) & (iv < Hc) & (Ym0[..., 2] + z[:, None] > 1.0)
        occ = torch.zeros(B, Hc * Wc)
        occ.scatter_(1, torch.where(ok, iv * Wc + iu, torch.zeros_like(iu)), ok.to(occ.dtype))
        occ = F.max_pool2d(occ.view(B, 1, Hc, Wc), 3, 1, 1)[:, 0]
        # S[s] = sum_q occ(q) score_map(q + s): the liver's centre drawn at canvas centre + s
        S = torch.fft.irfft2(torch.conj(torch.fft.rfft2(occ)) * FK, s=(Hc, Wc))
        sc, arg = S.view(B, -1).max(1)
        sy, sx = arg // Wc, arg % Wc
        sy = torch.where(sy >= Hc // 2, sy - Hc, sy).to(occ.dtype)
        sx = torch.where(sx >= Wc // 2, sx - Wc, sx).to(occ.dtype)
        uc, vc = W / 2 + 2 * sx, H / 2 + 2 * sy                    # the centre's pixel
        t = torch.stack([(uc - cx) / fx * z, (vc - cy) / fy * z, z], 1)
        better = sc > best_s
        best_s = torch.where(better, sc, best_s)
        best_t = torch.where(better[:, None], t, best_t)
    return best_t


def distinct_hypotheses(Rs, ts, scores, k, min_deg):
    """The ``k`` best hypotheses whose rotations are more than ``min_deg`` apart (greedy,
    best score first): a list of ``(R, t, score)``."""
    Rs = np.asarray(Rs, np.float64)
    picked, P = [], np.empty((k, 3, 3))
    for i in np.argsort(-np.asarray(scores)):
        R = Rs[i]
        n = len(picked)                          # angle to every kept rotation at once
        cos = (np.einsum("bij,ij->b", P[:n], R) - 1) / 2
        if n and (np.degrees(np.arccos(np.clip(cos, -1, 1))) < min_deg).any():
            continue
        P[n] = R
        picked.append((R, ts[i], float(scores[i])))
        if len(picked) >= k:
            break
    return picked
