"""Rigid registration from matched landmark curves: arc-length correspondences + EPnP.

Given P2ILF-style 2D contours (image polylines, px) and 3D contours (mesh vertex paths)
with labels, every 2D curve is matched to a 3D curve of the same label. The matching
(which curve goes with which when a label has several) and each curve's direction are
unknown, so all hypotheses are tried (at most ``max_hypotheses``): for each, both curves
are resampled at ``n_per_curve`` points equally spaced in arc length (the 3D curve in 3D,
the 2D curve in the image), plain EPnP (OpenCV) gives a pose, and the hypothesis with the
smallest mean curve-to-curve distance (projected 3D curve vs 2D curve, nearest point)
ranks the hypotheses. For the best one, EPnP + RANSAC (core ``optimize.epnp_ransac``) is
always run on the same correspondences too (a few ms), and both poses are refined by
iterated closest points in the image (3D curve samples re-paired with the nearest 2D
curve samples, reprojection error minimised with ``cv2.solvePnPRefineLM``), which fixes
the arc-length assumption when a 2D curve shows only part of its 3D curve. Unless that
already fits well, the ``top_k`` best hypotheses also get the sub-curve search below
(EPnP + RANSAC again on the chosen sub-curves). The pose with the smallest curve distance
wins and is then polished (:func:`.polish.polish_pose`): the mean over pairs of a power mean of
the point-to-polyline distances in both directions, a smooth stand-in for the P2ILF
challenge's per-pair Hausdorff distance. The silhouette refinement with a mask is the
separate method ``pnp+silhouette`` (see :mod:`.silhouette`).

Partial curves (``subcurves=True``): real annotations (P2ILF) often list a 3D curve
that covers only part of its 2D curve, or the reverse, so end-to-end arc-length pairing
is wrong. For the best hypotheses a coordinate search over sub-interval hypotheses is run
(each pair: which fraction ``[s0, s1]`` of the 2D curve, or of the 3D curve, the other
curve spans), every candidate scored by a robust (truncated) symmetric curve distance
after EPnP; the winners are then refined by the image ICP, and the final pose is the one
with the smallest robust distance (poses that put a mesh vertex behind the camera are
skipped). With ``faces`` the 3D curves are densified along mesh-edge geodesics (Dijkstra)
instead of straight chords.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from scipy.spatial import cKDTree

from .metrics import ArcLengthCurve, densify_polyline, directed_distances
from .p2ilf import Contour2D, Contour3D, group_by_label
from .polish import PolishTerm, polish_pose


@dataclass
class PnPRegistration:
    """Result of :func:`register_pnp` (``model_to_camera`` maps model mm to camera mm)."""

    model_to_camera: np.ndarray
    curve_distance_px: float
    n_hypotheses: int
    pairs: List[tuple] = field(default_factory=list)   # (2D index, 3D index, reversed)
    timings: Dict[str, float] = field(default_factory=dict)
    #: per pair ``(side, s0, s1)`` of the selected sub-curve hypothesis (None: full curves)
    intervals: Optional[list] = None


def _hypotheses(c2: Sequence[Contour2D], c3: Sequence[Contour3D], max_hypotheses: int):
    """Yield lists of (i2, i3, reversed) pairings, same label, each curve used once."""
    g2 = {}
    g3 = {}
    for i, c in enumerate(c2):
        g2.setdefault(c.label, []).append(i)
    for j, c in enumerate(c3):
        g3.setdefault(c.label, []).append(j)
    per_label = []
    for label, idx2 in g2.items():
        idx3 = g3.get(label, [])
        if not idx3:
            continue
        options = []
        k = min(len(idx2), len(idx3))
        for sub2 in itertools.combinations(idx2, k):
            for perm3 in itertools.permutations(idx3, k):
                options.append(list(zip(sub2, perm3)))
        per_label.append(options)
    if not per_label:
        return
    count = 0
    for combo in itertools.product(*per_label):
        pairs = [p for group in combo for p in group]
        for flips in itertools.product((False, True), repeat=len(pairs)):
            if count >= max_hypotheses:
                return
            count += 1
            yield [(a, b, f) for (a, b), f in zip(pairs, flips)]


def curve_distance_px(model_to_camera, camera, curves3d_pts, curves2d_pts) -> float:
    """Mean symmetric nearest distance (px) between projected 3D curves and 2D curves,
    averaged over the pairs. ``inf`` when a curve point is behind the camera."""
    T = np.asarray(model_to_camera)
    total = []
    for p3, p2 in zip(curves3d_pts, curves2d_pts):
        pc = p3 @ T[:3, :3].T + T[:3, 3]
        if np.any(pc[:, 2] <= 1e-3):
            return float("inf")
        uv = camera.project(pc).numpy()
        total.append(0.5 * (directed_distances(uv, p2).mean() + directed_distances(p2, uv).mean()))
    return float(np.mean(total))


def register_pnp(vertices: np.ndarray, camera, contours2d: Sequence[Contour2D],
                 contours3d: Sequence[Contour3D], n_per_curve: int = 40,
                 ransac_px: Optional[float] = None, icp_iterations: int = 20,
                 max_hypotheses: int = 256, top_k: int = 2, faces=None,
                 subcurves: bool = True, good_fraction: float = 0.004, polish: bool = True,
                 use_silhouette: bool = False,
                 progress=None, cancel=None) -> PnPRegistration:
    """Pose from matched landmark curves (see the module docstring).

    ``vertices (V, 3)`` model mm; contours already validated (``p2ilf.validate_*``).
    With ``faces (F, 3)`` the 3D curves follow mesh-edge geodesics, and with
    ``use_silhouette`` (off by default: it made the real P2ILF case worse, see
    ``docs/laparo.md``) 2D ``Silhouette`` contours (which have no 3D counterpart) also take
    part in the image ICP: each of their samples is paired with the nearest projected
    occluding-contour point of the mesh at the current pose. ``polish``: the final
    :func:`.polish.polish_pose` stage. A 2D curve that
    touches the image border is matched one way only (2D -> 3D), as its 3D curve may
    extend outside the frame.

    Speed: every curve is parametrised by arc length once (:class:`.metrics.ArcLengthCurve`), scores use
    ``n_score`` samples per curve, and when the best end-to-end hypothesis, after the
    image ICP, already fits within ``good_fraction`` of the image diagonal (robust mean
    distance) the sub-curve search is skipped.
    Raises ``InputError`` when no label is shared by the 2D and 3D contours or fewer than
    4 correspondences result.
    """
    import cv2  # noqa: PLC0415
    from SurgicalReg2D3DLib.optimize import epnp_ransac  # noqa: PLC0415

    t0 = time.perf_counter()
    v = np.asarray(vertices, dtype=np.float64)
    K, dist = camera.K, camera.dist_coeffs if camera.has_distortion else np.zeros(5)
    diag = float(np.hypot(camera.width, camera.height))
    if ransac_px is None:
        ransac_px = 0.02 * diag
    step_mm = max(0.25, float(np.ptp(v, axis=0).max()) / 400.0)
    if faces is not None:
        c3_pts = [densify_polyline(v[geodesic_vertex_path(v, np.asarray(faces), c.vertices)],
                                   step_mm) for c in contours3d]
    else:
        c3_pts = [densify_polyline(v[c.vertices], step_mm) for c in contours3d]
    c2_pts = [densify_polyline(c.points, 1.0) for c in contours2d]
    hyps = list(_hypotheses(contours2d, contours3d, max_hypotheses))
    if not hyps:
        labels2 = sorted(group_by_label(contours2d))
        labels3 = sorted(group_by_label(contours3d))
        raise InputError(f"contours: no label is shared by the 2D contours {labels2} and the "
                         f"3D contours {labels3}")
    tau = 0.05 * diag
    sc = _Scorer(c3_pts, c2_pts, K, dist, tau)
    screened = []
    for h_i, pairs in enumerate(hyps):
        check_cancel(cancel, "PnP hypotheses")
        report(progress, 0.3 * h_i / len(hyps), f"PnP hypothesis {h_i + 1}/{len(hyps)}")
        p3, p2 = sc.samples(pairs, n_per_curve)
        # fast screening: plain EPnP on all samples
        T_h = _epnp(cv2, p3, p2, K, dist)
        if T_h is None:
            continue
        screened.append((sc.mean_score(T_h, pairs), h_i, T_h, pairs))
    if not screened:
        raise InputError("contours: EPnP found no pose for any curve matching; check that the "
                         "2D and 3D contours describe the same landmarks")
    t1 = time.perf_counter()
    screened.sort(key=lambda item: item[0])
    sil2d = [densify_polyline(c.points, 1.0) for c in contours2d if c.label == "Silhouette"]
    sil2d = np.concatenate(sil2d) if (sil2d and faces is not None and use_silhouette) else None
    border = 10.0

    def touches_border(p):
        return bool(np.any((p[:, 0] < border) | (p[:, 1] < border)
                           | (p[:, 0] > camera.width - 1 - border)
                           | (p[:, 1] > camera.height - 1 - border)))

    best = None

    def consider(candidates, pairs, intervals=None):
        nonlocal best
        p3_all = [c3_pts[b] for _, b, _ in pairs]
        p2_all = [c2_pts[a] for a, _, _ in pairs]
        one_way = [touches_border(p) for p in p2_all]
        if len(candidates) > 2:         # image ICP from the two best-scoring candidates
            scores = [sc.robust_score(T_c, pairs) for T_c in candidates]
            candidates = [candidates[i] for i in np.argsort(scores)[:2]]
        for T_c in candidates:
            T_r = _icp(T_c, p3_all, p2_all, K, dist, icp_iterations, one_way,
                       sil2d, None if sil2d is None else (v, np.asarray(faces)))
            for T_x in (T_c, T_r):
                if best is not None and _behind_camera(T_x, v):
                    continue            # the camera cannot be inside/behind the organ
                s_x = sc.robust_score(T_x, pairs) if subcurves else sc.mean_score(T_x, pairs)
                if best is None or s_x < best[0]:
                    best = (s_x, T_x, pairs, intervals)

    # end-to-end pairing of the best hypothesis first: often enough (full curves); EPnP +
    # RANSAC on the same correspondences always runs too (a few ms)
    report(progress, 0.3, "PnP refinement")
    first = [screened[0][2]]
    p3, p2 = sc.samples(screened[0][3], n_per_curve)
    try:
        first.append(epnp_ransac(p3, p2, K, dist, reprojection_px=ransac_px, iterations=100,
                                 min_inliers=max(6, len(p3) // 5)).model_to_camera)
    except InputError:
        pass
    consider(first, screened[0][3])
    if not (subcurves and best[0] <= good_fraction * diag):
        for k, (score, _, T_h, pairs) in enumerate(screened[:top_k]):
            check_cancel(cancel, "PnP refinement")
            report(progress, 0.3 + 0.7 * k / min(top_k, len(screened)), "PnP refinement")
            candidates = [T_h] if k else []
            intervals = None
            if subcurves:
                T_s, intervals = _subcurve_search(pairs, sc, n_per_curve, K, dist)
                if T_s is not None:
                    candidates.append(T_s)
            p3, p2 = sc.samples(pairs, n_per_curve, intervals)
            try:
                candidates.append(epnp_ransac(p3, p2, K, dist, reprojection_px=ransac_px,
                                              iterations=100,
                                              min_inliers=max(6, len(p3) // 5)).model_to_camera)
            except InputError:
                pass
            consider(candidates, pairs, intervals)
    _, T, pairs, intervals = best
    t2 = time.perf_counter()
    if polish:
        # final stage: the symmetric curve distance of the whole paired curves (both
        # directions, power mean ~ Hausdorff), from the selected pose
        # (all pairs in both directions, also a 2D curve cut by the frame border: a 3D
        # curve allowed to run out of the frame escapes the fit, 83.7 vs 61.7 px on the
        # P2ILF case; the 2D and 3D contours of a pair are annotated as the same extent)
        terms = []
        for (a, b, flip), (side, s0, s1) in zip(pairs, intervals or [(2, 0.0, 1.0)] * len(pairs)):
            p3, p2 = v[contours3d[b].vertices], contours2d[a].points
            if (s0, s1) != (0.0, 1.0):      # selected sub-curve hypothesis: that part only
                if side == 2:
                    lo, hi = (1.0 - s1, 1.0 - s0) if flip else (s0, s1)
                    p2 = sc.c2[a].sample(lo, hi, 200)
                else:
                    p3 = sc.c3[b].sample(s0, s1, 48)
            terms.append(PolishTerm(p3, p2))
        T_p, _ = polish_pose(T, terms, K, dist)
        if not _behind_camera(T_p, v):
            T = T_p
    score = _score(T, camera, pairs, c3_pts, c2_pts)
    report(progress, 1.0, "PnP done")
    return PnPRegistration(T, score, len(hyps), pairs,
                           {"hypotheses_s": t1 - t0, "refine_s": t2 - t1,
                            "polish_s": time.perf_counter() - t2}, intervals)


def _epnp(cv2, p3, p2, K, dist):
    """Plain EPnP -> 4x4 or None."""
    ok, rvec, tvec = cv2.solvePnP(p3, p2, K, dist, flags=cv2.SOLVEPNP_EPNP)
    if not ok or not np.all(np.isfinite(tvec)):
        return None
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.ravel()
    return T


#: added to the score of a pose that needs curve points beyond the lens model's fold
#: radius: such poses rank after every valid one (but still above none at all)
INVALID_PENALTY = 1e6


def fold_radius(dist) -> float:
    """Normalised image radius ``r = |(x, y)| / z`` beyond which the radial distortion
    ``r (1 + k1 r^2 + k2 r^4 + k3 r^6)`` stops increasing (``inf`` when it never does
    for ``r <= 3``). Past it, points far outside the field of view project back into
    the image, so poses that need such points are ranked last. ``dist``: OpenCV order
    ``(k1, k2, p1, p2[, k3])``."""
    d = np.zeros(5) if dist is None else np.ravel(np.asarray(dist, dtype=np.float64))
    k1, k2 = (d[0], d[1]) if d.size >= 2 else (0.0, 0.0)
    k3 = d[4] if d.size >= 5 else 0.0
    r = np.linspace(0.0, 3.0, 3001)
    slope = 1 + 3 * k1 * r ** 2 + 5 * k2 * r ** 4 + 7 * k3 * r ** 6
    bad = np.nonzero(slope <= 0)[0]
    return float(r[bad[0]]) if bad.size else float("inf")


class _Scorer:
    """Arc-length samples and cheap curve-distance scores for pose hypotheses.

    ``c3_pts`` / ``c2_pts``: densified 3D (mm) and 2D (px) curves. Scores use
    ``n_score`` samples per curve (k-d trees of the 2D samples built once)."""

    def __init__(self, c3_pts, c2_pts, K, dist, tau: float, n_score: int = 120):
        self.c3 = [ArcLengthCurve(p) for p in c3_pts]
        self.c2 = [ArcLengthCurve(p) for p in c2_pts]
        self.K, self.dist, self.tau = K, dist, tau
        self.s3 = [c.sample(0.0, 1.0, n_score) for c in self.c3]
        self.s2 = [c.sample(0.0, 1.0, n_score) for c in self.c2]
        self.t2 = [cKDTree(p) for p in self.s2]
        self.r_fold = fold_radius(dist)

    def samples(self, pairs, n: int, intervals=None):
        """Arc-length aligned samples ``(P, 3)`` and ``(P, 2)`` of the paired curves,
        optionally on sub-intervals ``(side, s0, s1)`` (see :func:`_subcurve_search`)."""
        p3, p2 = [], []
        intervals = intervals or [(2, 0.0, 1.0)] * len(pairs)
        for (a, b, flip), (side, s0, s1) in zip(pairs, intervals):
            r2 = (s0, s1) if side == 2 else (0.0, 1.0)
            r3 = (s0, s1) if side == 3 else (0.0, 1.0)
            p3.append(self.c3[b].sample(r3[0], r3[1], n))
            p2.append(self.c2[a].sample(r2[0], r2[1], n, reverse=flip))
        return np.ascontiguousarray(np.concatenate(p3)), np.ascontiguousarray(np.concatenate(p2))

    def _distances(self, T, pairs):
        """``(per pair (d(proj 3D -> 2D), d(2D -> proj 3D)) nearest distances, valid)``,
        or ``(None, False)`` when a sample is behind the camera. ``valid`` is False when
        a sample lies beyond the lens model's fold radius (:func:`fold_radius`)."""
        import cv2  # noqa: PLC0415

        pts = np.concatenate([self.s3[b] for _, b, _ in pairs])
        pc = pts @ T[:3, :3].T + T[:3, 3]
        if np.any(pc[:, 2] <= 1e-3):
            return None, False
        valid = not (np.isfinite(self.r_fold) and np.any(
            np.hypot(pc[:, 0], pc[:, 1]) > self.r_fold * pc[:, 2]))
        rvec = cv2.Rodrigues(T[:3, :3])[0]
        uv = cv2.projectPoints(pts, rvec, T[:3, 3], self.K, self.dist)[0].reshape(-1, 2)
        out, i = [], 0
        for a, b, _ in pairs:
            u = uv[i:i + len(self.s3[b])]
            i += len(self.s3[b])
            out.append((self.t2[a].query(u)[0], cKDTree(u).query(self.s2[a])[0]))
        return out, valid

    def mean_score(self, T, pairs) -> float:
        """Mean symmetric nearest distance (px) averaged over the pairs (``inf`` when a
        curve point is behind the camera)."""
        d, valid = self._distances(T, pairs)
        if d is None:
            return float("inf")
        return float(np.mean([0.5 * (d1.mean() + d2.mean()) for d1, d2 in d])) + \
            (0.0 if valid else INVALID_PENALTY)

    def robust_score(self, T, pairs) -> float:
        """As :meth:`mean_score`, each distance truncated at ``tau`` px."""
        d, valid = self._distances(T, pairs)
        if d is None:
            return float("inf")
        t = self.tau
        return float(np.mean([0.5 * (np.minimum(d1, t).mean() + np.minimum(d2, t).mean())
                              for d1, d2 in d])) + (0.0 if valid else INVALID_PENALTY)


def _behind_camera(T, vertices) -> bool:
    """True when a mesh vertex is at or behind the camera plane (z <= 0)."""
    return bool(np.any(vertices @ T[2, :3] + T[2, 3] <= 0.0))


def _score(T, camera, pairs, c3_pts, c2_pts) -> float:
    return curve_distance_px(T, camera, [c3_pts[b] for _, b, _ in pairs],
                             [c2_pts[a] for a, _, _ in pairs])


def occluding_contour_points(vertices: np.ndarray, faces: np.ndarray,
                             model_to_camera: np.ndarray) -> np.ndarray:
    """Midpoints ``(M, 3)`` (model frame) of the mesh edges shared by a front-facing and
    a back-facing triangle as seen from the camera centre at ``model_to_camera``: the
    occluding contour (contour generator) whose projection contains the silhouette."""
    T = np.asarray(model_to_camera)
    pc = vertices @ T[:3, :3].T + T[:3, 3]
    a, b, c = pc[faces[:, 0]], pc[faces[:, 1]], pc[faces[:, 2]]
    front = (np.cross(b - a, c - a) * ((a + b + c) / 3.0)).sum(1) < 0
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    f_of_e = np.tile(np.arange(len(faces)), 3)
    key = np.sort(e, axis=1)
    order = np.lexsort((key[:, 1], key[:, 0]))
    key, f_sorted = key[order], f_of_e[order]
    same = np.all(key[1:] == key[:-1], axis=1)
    i = np.nonzero(same)[0]
    mixed = front[f_sorted[i]] != front[f_sorted[i + 1]]
    edges = key[i[mixed]]
    return 0.5 * (vertices[edges[:, 0]] + vertices[edges[:, 1]])


#: OpenCV LM stopping rule inside each ICP step (the ICP loop itself iterates)
_LM_CRITERIA = (3, 10, 1e-10)      # cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS


def _icp(T, p3_all, p2_all, K, dist, iterations: int, one_way=None, sil2d=None,
         mesh=None) -> np.ndarray:
    """Iterated closest points in the image: re-pair projected 3D curve samples with
    their nearest 2D samples (both directions unless ``one_way``; outliers beyond 3x the
    median dropped), silhouette samples ``sil2d`` with the projected occluding contour of
    ``mesh = (vertices, faces)``, and minimise the reprojection error
    (``cv2.solvePnPRefineLM``)."""
    import cv2  # noqa: PLC0415

    rvec, _ = cv2.Rodrigues(T[:3, :3])
    tvec = T[:3, 3].reshape(3, 1).copy()
    one_way = one_way or [False] * len(p3_all)
    # at most ~64 samples per curve: enough for the pose, keeps the LM cheap
    p3_all = [np.ascontiguousarray(p[::max(1, len(p) // 64)]) for p in p3_all]
    p2_all = [np.ascontiguousarray(p[::max(1, len(p) // 64)]) for p in p2_all]
    trees2 = [cKDTree(p) for p in p2_all]       # the 2D samples do not move
    for _ in range(iterations):
        previous = np.r_[np.asarray(rvec).ravel(), np.asarray(tvec).ravel()]
        src, dst = [], []
        if sil2d is not None:
            Tc = np.eye(4)
            Tc[:3, :3] = cv2.Rodrigues(rvec)[0]
            Tc[:3, 3] = np.asarray(tvec).ravel()
            occ = occluding_contour_points(mesh[0], mesh[1], Tc)
            if len(occ) >= 4:
                uv, _ = cv2.projectPoints(occ, rvec, tvec, K, dist)
                d2, i3 = _nearest(sil2d, uv.reshape(-1, 2))
                keep2 = d2 <= max(3.0 * np.median(d2), 2.0)
                src.append(occ[i3[keep2]])
                dst.append(sil2d[keep2])
        for p3, p2, ow, tree2 in zip(p3_all, p2_all, one_way, trees2):
            uv, _ = cv2.projectPoints(p3, rvec, tvec, K, dist)
            uv = uv.reshape(-1, 2)
            if not ow:
                d, j = tree2.query(uv)
                keep = d <= max(3.0 * np.median(d), 2.0)
                src.append(p3[keep])
                dst.append(p2[j[keep]])
            d2, i3 = _nearest(p2, uv)
            keep2 = d2 <= max(3.0 * np.median(d2), 2.0)
            src.append(p3[i3[keep2]])
            dst.append(p2[keep2])
        src, dst = np.concatenate(src), np.concatenate(dst)
        if len(src) < 4:
            break
        rvec, tvec = cv2.solvePnPRefineLM(src, dst, K, dist, rvec, tvec, _LM_CRITERIA)
        change = np.abs(np.r_[np.asarray(rvec).ravel(), np.asarray(tvec).ravel()] - previous)
        if change[:3].max() < 1e-5 and change[3:].max() < 1e-3:
            break                       # converged: the pairing no longer changes the pose
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(rvec)[0]
    out[:3, 3] = np.asarray(tvec).ravel()
    return out


def geodesic_vertex_path(vertices: np.ndarray, faces: np.ndarray,
                         listed: Sequence[int]) -> np.ndarray:
    """Vertex indices of the mesh-edge path through the ``listed`` vertices in order,
    consecutive listed vertices joined by their shortest edge path (Dijkstra on edge
    lengths). Unconnected pairs are joined directly."""
    from scipy.sparse.csgraph import dijkstra  # noqa: PLC0415

    from .mesh import edge_graph  # noqa: PLC0415

    listed = np.asarray(listed, dtype=np.int64)
    if len(listed) < 2:
        return listed.copy()
    _, pred = dijkstra(edge_graph(vertices, faces), indices=listed[:-1],
                       return_predecessors=True)
    out = [int(listed[0])]
    for k, (a, b) in enumerate(zip(listed[:-1], listed[1:])):
        seg = [int(b)]
        while seg[-1] != a and pred[k, seg[-1]] >= 0:
            seg.append(int(pred[k, seg[-1]]))
        if seg[-1] != a:       # not connected: straight chord
            seg = [int(b)]
        out.extend(seg[::-1][1:] if seg[-1] == a else seg)
    return np.asarray(out, dtype=np.int64)


_INTERVALS = ((0.0, 1.0), (0.0, 0.5), (0.25, 0.75), (0.5, 1.0), (0.0, 0.75), (0.25, 1.0),
              (0.0, 0.33), (0.33, 0.67), (0.67, 1.0))


def _subcurve_search(pairs, scorer: "_Scorer", n_per_curve, K, dist, rounds: int = 2):
    """Coordinate search over sub-interval hypotheses (see the module docstring).

    Per pair, an interval is ``(side, s0, s1)``: the other curve spans the arc-length
    fraction ``[s0, s1]`` of the 2D curve (side 2) or of the 3D curve (side 3). Each
    candidate is solved by plain EPnP and scored by :meth:`_Scorer.robust_score`.
    Returns ``(best pose or None, intervals)``."""
    import cv2  # noqa: PLC0415

    options = [(2, s0, s1) for s0, s1 in _INTERVALS] + \
        [(3, s0, s1) for s0, s1 in _INTERVALS[1:]]
    current = [(2, 0.0, 1.0)] * len(pairs)

    def evaluate(intervals):
        p3, p2 = scorer.samples(pairs, n_per_curve, intervals)
        T = _epnp(cv2, p3, p2, K, dist)
        if T is None:
            return float("inf"), None
        return scorer.robust_score(T, pairs), T

    best = evaluate(current)
    for _ in range(rounds):
        changed = False
        for i in range(len(pairs)):
            for opt in options:
                if opt == current[i]:
                    continue
                trial = list(current)
                trial[i] = opt
                s, T = evaluate(trial)
                if s < best[0]:
                    best, current, changed = (s, T), trial, True
        if not changed:
            break
    return best[1], current


def _nearest(a: np.ndarray, b: np.ndarray):
    from scipy.spatial import cKDTree  # noqa: PLC0415

    d, j = cKDTree(b).query(a)
    return d, j
