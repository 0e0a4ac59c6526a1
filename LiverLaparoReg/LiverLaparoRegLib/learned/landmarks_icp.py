"""Image ICP of the learned landmark registration: 2D-3D correspondences from a pose.

Where it sits in the flow (:mod:`.landmarks_infer`, step 5): from each candidate of the
global search (:mod:`.landmarks_search`), :func:`icp` pairs the visible 3D ridge vertices
and the projected occluding contour (:func:`visible_landmarks`) with the 2D ridge and
silhouette pixels (closest points in both directions, outliers dropped) and refines the
pose with ``cv2.solvePnPRefineLM``; the winner's last pairs become the result's
correspondence list (:func:`correspondences_of`), which EPnP + RANSAC then checks.
"""

from __future__ import annotations

from typing import List

import numpy as np

from .landmarks_search import MeshLandmarks

# ----------------------------------------------------------------------------- ICP
def _pairs(uv3, p2, tree2, both=True):
    """Nearest pairs (index into uv3, index into p2) in both directions, each direction's
    pairs beyond max(3 x median, 2 px) dropped."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    out = []
    if len(uv3) == 0 or len(p2) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    d, j = tree2.query(uv3)
    keep = d <= max(3 * np.median(d), 2.0)
    out.append((np.nonzero(keep)[0], j[keep], d[keep]))
    if both:
        d2, i3 = cKDTree(uv3).query(p2)
        keep2 = d2 <= max(3 * np.median(d2), 2.0)
        out.append((i3[keep2], np.nonzero(keep2)[0], d2[keep2]))
    a = np.concatenate([o[0] for o in out])
    b = np.concatenate([o[1] for o in out])
    return np.stack([a, b], 1), np.concatenate([o[2] for o in out])


def visible_landmarks(lm: MeshLandmarks, T, camera, width: int = 320):
    """The 3D side at pose ``T``, from a z-buffer at about ``width`` px: the visible
    ridge vertices ``(ids, points)`` and the surface points on the rendered occluding
    contour (outline and folds, frame border excluded; the same definition as the
    training labels) ``(ids, points)``."""
    from . import data  # noqa: PLC0415
    from .landmarks_data import silhouette_map  # noqa: PLC0415

    cam = camera.scaled(max(1.0, camera.width / width))
    depth, face, bary, uv, z = data.render_ids(lm.v, lm.f, T, cam)
    liver = face >= 0
    vis = data.vertex_visibility(uv, z, depth, liver)
    rid = lm.ridge[vis[lm.ridge]]
    sil = silhouette_map(face, depth, liver)
    r, c = np.nonzero(sil & liver)
    fi = lm.f[face[r, c]]
    b = bary[r, c]
    sp = (lm.v[fi] * b[..., None]).sum(1)
    sid = fi[np.arange(len(fi)), b.argmax(1)]
    return (rid, lm.v[rid]), (sid, sp)


def _terms(obs):
    """The 2D terms of ``obs`` with >= 3 pixels: ``(class, pixels, confidences, kd-tree)``."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    terms = []
    for name in ("ridge", "silhouette"):
        p2 = np.asarray(obs.get(name, np.zeros((0, 2))), float)
        if len(p2) >= 3:
            terms.append((name, p2, np.asarray(obs[name + "_conf"], float), cKDTree(p2)))
    return terms


def pairs_at(T, lm: MeshLandmarks, camera, obs, per_term: int = 200, terms=None, rng=None,
             rtvec=None):
    """The 2D-3D pairs at pose ``T``: list of ``(class, 2D px (N, 2), 3D vertex ids (N,),
    3D points (N, 3), confidence (N,), pair distance px (N,))`` (see :func:`icp`);
    ``rtvec``: ``T`` as OpenCV's ``(rvec, tvec)`` when the caller has it."""
    import cv2  # noqa: PLC0415

    terms = _terms(obs) if terms is None else terms
    rng = np.random.default_rng(0) if rng is None else rng
    dist = camera.dist_coeffs if camera.has_distortion else np.zeros(5)
    rvec, tvec = rtvec if rtvec is not None else (cv2.Rodrigues(np.asarray(T)[:3, :3])[0],
                                                  np.asarray(T)[:3, 3].reshape(3, 1))
    (rid, rp), (sid, sp) = visible_landmarks(lm, T, camera)
    pairs = []
    for name, p2, conf, tree in terms:
        ids, P = (rid, rp) if name == "ridge" else (sid, sp)
        if len(P) < 3:
            continue
        uv = cv2.projectPoints(P, rvec, tvec, camera.K, dist)[0].reshape(-1, 2)
        ins = ((uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0)
               & (uv[:, 1] < camera.height))
        P, ids, uv = P[ins], ids[ins], uv[ins]
        if len(P) < 3:
            continue
        pr, d = _pairs(uv, p2, tree)
        if len(pr) > per_term:
            pick = rng.choice(len(pr), per_term, replace=False)
            pr, d = pr[pick], d[pick]
        pairs.append((name, p2[pr[:, 1]], ids[pr[:, 0]], P[pr[:, 0]], conf[pr[:, 1]], d))
    return pairs


def icp(T, lm: MeshLandmarks, camera, obs, iterations: int = 12, per_term: int = 200):
    """Image ICP on ridge + silhouette pairs from ``T`` (module docstring, step 5).
    Returns ``(T, pairs)``; ``pairs``: :func:`pairs_at` of the last iteration."""
    import cv2  # noqa: PLC0415

    K = camera.K
    dist = camera.dist_coeffs if camera.has_distortion else np.zeros(5)
    rng = np.random.default_rng(0)
    terms = _terms(obs)
    rvec = cv2.Rodrigues(T[:3, :3])[0]
    tvec = T[:3, 3].reshape(3, 1).copy()
    pairs = []
    for _ in range(iterations):
        Tc = np.eye(4)
        Tc[:3, :3] = cv2.Rodrigues(rvec)[0]
        Tc[:3, 3] = np.ravel(tvec)
        pairs = pairs_at(Tc, lm, camera, obs, per_term, terms, rng, (rvec, tvec))
        if sum(len(p[1]) for p in pairs) < 6:
            break
        prev = np.r_[np.ravel(rvec), np.ravel(tvec)]
        rvec, tvec = cv2.solvePnPRefineLM(np.concatenate([p[3] for p in pairs]),
                                          np.concatenate([p[1] for p in pairs]), K, dist,
                                          rvec, tvec, (3, 10, 1e-10))
        ch = np.abs(np.r_[np.ravel(rvec), np.ravel(tvec)] - prev)
        if ch[:3].max() < 1e-5 and ch[3:].max() < 1e-3:
            break
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(rvec)[0]
    out[:3, 3] = np.ravel(tvec)
    return out, pairs


def correspondences_of(pairs, camera) -> List[dict]:
    """The ICP's last pairs as the result's correspondence list."""
    diag = float(np.hypot(camera.width, camera.height))
    out = []
    for name, p2, ids, _, conf, d in pairs:
        w = np.exp(-(np.asarray(d) / (0.01 * diag)) ** 2)
        for k in range(len(ids)):
            out.append({"pixel": [float(p2[k, 0]), float(p2[k, 1])], "vertex": int(ids[k]),
                        "class": name, "confidence": float(conf[k] * w[k])})
    return out

