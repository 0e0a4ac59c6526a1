"""The training shapes' deformations (SYNTHETIC data, :mod:`.data` step 1): a smooth
random warp of the preoperative shape (:func:`rbf_warp`), a rounder or sharper copy
(:func:`relief`, ``train --relief``), a near-isometric bending into the intraoperative
shape (:func:`bend`) and a planar cut (:func:`cut`, partial models). All take and return
vertex arrays (mm) and draw from the ``numpy`` generator given; none changes its input.
"""

from __future__ import annotations

import numpy as np


def random_unit(rng) -> np.ndarray:
    """A random unit 3-vector (uniform on the sphere)."""
    d = rng.normal(size=3)
    return d / np.linalg.norm(d)


#: largest amplitude (mm) of the preoperative shape's random warp in the training frames
#: (``surgreg laparo train --kind landmarks --warp-mm`` changes it for the landmark model)
PREOP_WARP_MM = 8.0


def rbf_warp(v: np.ndarray, rng, amplitude_mm: float, sigma_mm: float = 60.0,
             n_centres: int = 6) -> np.ndarray:
    """Smooth random displacement: Gaussian bumps at random vertices (max ``amplitude``)."""
    c = v[rng.integers(0, len(v), n_centres)]
    d = rng.normal(size=(n_centres, 3))
    d *= amplitude_mm / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    w = np.exp(-((v[:, None] - c[None]) ** 2).sum(-1) / (2 * sigma_mm ** 2))
    return v + w @ d * rng.uniform(0.3, 1.0)


def neighbour_mean(v: np.ndarray, f: np.ndarray):
    """The sparse ``(V, V)`` operator that averages each vertex's edge neighbours
    (uniform weights): one step of Laplacian smoothing is ``v + lam * (A @ v - v)``."""
    import scipy.sparse as sp  # noqa: PLC0415

    from ..mesh import edge_graph  # noqa: PLC0415

    A = (edge_graph(v, f) > 0).astype(float)
    return sp.diags(1.0 / np.maximum(np.asarray(A.sum(1)).ravel(), 1)) @ A


def laplacian_smooth(v: np.ndarray, A, steps: int, lam: float = 0.5) -> np.ndarray:
    """``steps`` Laplacian steps ``v + lam (A v - v)`` with ``A`` = :func:`neighbour_mean`
    (a new array; the shape shrinks as it rounds)."""
    for _ in range(int(steps)):
        v = v + lam * (A @ v - v)
    return v


def principal_axes(v: np.ndarray):
    """``(R, c)``: the centroid ``c`` and the principal axes of the points about it (rows
    of ``R``, largest variance first; signs as the eigen-solver gives them)."""
    c = v.mean(0)
    x = v - c
    return np.linalg.eigh(x.T @ x / len(x))[1][:, ::-1].T.copy(), c


def stretched_to(v: np.ndarray, v_ref: np.ndarray) -> np.ndarray:
    """``v`` centred on ``v_ref``'s centroid and scaled along ``v_ref``'s principal axes
    to its extents (undoes the shrinking of a smoothing)."""
    R, c = principal_axes(v_ref)
    x0, x = (v_ref - c) @ R.T, (v - v.mean(0)) @ R.T
    return (x * (np.ptp(x0, 0) / np.maximum(np.ptp(x, 0), 1e-9))) @ R + c


#: relief change of the preoperative shape (``train --relief P``: with probability P per
#: frame), half of them rounder, half sharper, then stretched back to the shape's extents
#: (:func:`relief`). Rounder: ``v - u (v - S^k v)``, ``S`` a Laplacian step of 0.5, ``k``
#: in ``RELIEF_ROUND_STEPS``, ``u`` in [0, 1]. Sharper: ``v + g (S^4 v - S^k v)``, ``k`` in
#: ``RELIEF_SHARPEN_STEPS``, ``g`` in [0, ``RELIEF_SHARPEN_GAIN``] (a band of the detail:
#: the finest, the triangulation's, would turn into noise). On the P2ILF mesh, whose
#: ``scale`` ridge covers 8 % of its area, the extremes give about 3 % and 25 %
#: (measured when written, 2026-12-07); the ``blob`` development shape (150 steps of
#: rounding) lies beyond them
RELIEF_ROUND_STEPS, RELIEF_SHARPEN_STEPS, RELIEF_SHARPEN_GAIN = (4, 30), (15, 40), 1.0


def rounded(v: np.ndarray, A, steps: int, amount: float = 1.0) -> np.ndarray:
    """``v - amount (v - S^steps v)`` (``S`` a Laplacian step of 0.5, ``A`` =
    :func:`neighbour_mean`) stretched back to ``v``'s extents: a rounder copy."""
    return stretched_to(v - amount * (v - laplacian_smooth(v, A, steps)), v)


def sharpened(v: np.ndarray, A, steps: int, gain: float) -> np.ndarray:
    """``v + gain (S^4 v - S^steps v)`` stretched back to ``v``'s extents: a sharper
    copy (the detail between 4 and ``steps`` Laplacian steps amplified; the finest, the
    triangulation's, left out)."""
    fine = laplacian_smooth(v, A, 4)
    return stretched_to(v + gain * (fine - laplacian_smooth(fine, A, steps - 4)), v)


def relief(v: np.ndarray, f: np.ndarray, rng, A=None) -> np.ndarray:
    """A random relief change of ``v`` (:data:`RELIEF_ROUND_STEPS` ...): a rounder or a
    sharper copy of the same extents. ``A``: :func:`neighbour_mean` of the mesh (computed
    if None)."""
    A = neighbour_mean(v, f) if A is None else A
    sharper = rng.uniform() < 0.5
    k = int(rng.integers(*(RELIEF_SHARPEN_STEPS if sharper else RELIEF_ROUND_STEPS)) + 1)
    if sharper:
        return sharpened(v, A, k, rng.uniform(0, RELIEF_SHARPEN_GAIN))
    return rounded(v, A, k, rng.uniform(0, 1))


def bend(v: np.ndarray, rng, max_curvature: float = 1 / 160.0) -> np.ndarray:
    """Near-isometric bending: points are rolled around a cylinder of radius
    ``1 / kappa`` whose axis is parallel to a random plane through the centroid (the
    classic bend deformer: lengths along the neutral plane are kept)."""
    kappa = rng.uniform(-max_curvature, max_curvature)
    if abs(kappa) < 1e-6:
        return v.copy()
    c = v.mean(0)
    n = random_unit(rng)
    d = np.cross(n, random_unit(rng))
    d /= np.linalg.norm(d)
    a = np.cross(n, d)
    x, y, z = (v - c) @ n, (v - c) @ d, (v - c) @ a
    rho = 1.0 / kappa
    th = x * kappa
    x2 = np.sin(th) * (rho - y)
    y2 = rho - np.cos(th) * (rho - y)
    return c + x2[:, None] * n + y2[:, None] * d + z[:, None] * a


def cut(v: np.ndarray, f: np.ndarray, rng, frac_range=(0.05, 0.2)):
    """Remove the vertices beyond a random plane (``frac`` of them): returns
    ``(v', f', kept)`` with ``kept`` the original ids of the remaining vertices."""
    n = random_unit(rng)
    s = (v - v.mean(0)) @ n
    thr = np.quantile(s, 1.0 - rng.uniform(*frac_range))
    keep = s <= thr
    fk = keep[f].all(1)
    used = np.zeros(len(v), bool)
    used[f[fk].ravel()] = True
    new_id = -np.ones(len(v), np.int64)
    kept = np.nonzero(used)[0]
    new_id[kept] = np.arange(len(kept))
    return v[kept], new_id[f[fk]], kept
