"""Multi-view registration: one CT pose from N X-ray views with known C-arm motion.

The joint image loss itself lives in :func:`FluoroRegLib.refine.register_intensity`
(and :func:`FluoroRegLib.ppc.register_ppc`): residuals of all views are stacked and a
single ``ct_to_camera`` (of view 0) is solved, each view seeing the CT at
``camera0_to_view[k] @ ct_to_camera``. This module adds the cross-view consistency
step of :func:`register_multiview`:

1. each view is first registered on its own (single-view, coarse);
2. the per-view estimates are moved into camera 0 and compared: their disagreement
   (mean distance of the CT box corners between estimates, mm) is reported as
   ``view_disagreement_mm`` — large values flag a view that failed;
3. the estimates whose disagreement with the median estimate is small are averaged
   (rotation: chordal mean, projected back onto SO(3); translation: mean) into the
   start of a joint refinement over all views (test-time refinement).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

from .refine import RegistrationResult, XRayView, check_pose, prepare_views


def average_poses(poses: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Weighted chordal mean of rigid (4, 4) poses (rotation via SVD, mean translation)."""
    poses = np.asarray(poses, float)
    w = np.ones(len(poses)) if weights is None else np.asarray(weights, float)
    if len(poses) == 0 or w.sum() <= 0:
        raise InputError("poses: need at least one pose with a positive weight")
    w = w / w.sum()
    m = np.einsum("n,nij->ij", w, poses[:, :3, :3])
    u, _, vt = np.linalg.svd(m)
    r = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = np.einsum("n,ni->i", w, poses[:, :3, 3])
    return out


def _corner_distance(a: np.ndarray, b: np.ndarray, corners: np.ndarray) -> float:
    p = np.c_[corners, np.ones(len(corners))]
    return float(np.linalg.norm((p @ a.T - p @ b.T)[:, :3], axis=1).mean())


def register_multiview(volume, views: Sequence[XRayView], init_ct_to_camera, method: str = "ncc",
                       per_view_levels: Sequence[float] = (4, 2), outlier_mm: float = 10.0,
                       progress=None, cancel=None, **options) -> RegistrationResult:
    """Per-view registration, consistency check, then joint refinement (see module doc).

    ``method``: a name of :data:`FluoroRegLib.logic.METHODS` used for both stages;
    ``options`` go to the joint stage (``levels``, ``iterations``...).
    """
    from SurgicalReg2D3DLib.progress import sub_progress  # noqa: PLC0415

    from .logic import METHODS  # noqa: PLC0415

    if method not in METHODS:
        raise InputError(f"method: expected one of {list(METHODS)}, got {method!r}")
    views = prepare_views(views)
    init = check_pose(init_ct_to_camera, "initial ct_to_camera")
    start = time.perf_counter()
    n = len(views)
    fn = METHODS[method]
    estimates, sims = [], []
    single_opts = {k: v for k, v in options.items() if k not in ("levels",)}
    for k, view in enumerate(views):
        rel = view.camera0_to_view
        res = fn(volume, [XRayView(view.image, view.camera)], rel @ init,
                 progress=sub_progress(progress, 0.5 * k / n, 0.5 * (k + 1) / n), cancel=cancel,
                 levels=per_view_levels, **single_opts)
        estimates.append(np.linalg.inv(rel) @ res.ct_to_camera)
        sims.append(max(res.similarity, 1e-3))
    corners = volume.corners_ras()
    med = average_poses(estimates)
    dist = [_corner_distance(e, med, corners) for e in estimates]
    keep = [d <= outlier_mm for d in dist]
    if not any(keep):
        keep = [True] * n
    joint_start = average_poses([e for e, k in zip(estimates, keep) if k],
                                [s for s, k in zip(sims, keep) if k])
    disagreement = float(np.mean([_corner_distance(a, b, corners)
                                  for i, a in enumerate(estimates) for b in estimates[i + 1:]]
                                 or [0.0]))
    result = fn(volume, views, joint_start, progress=sub_progress(progress, 0.5, 1.0),
                cancel=cancel, **options)
    result.metrics["view_disagreement_mm"] = disagreement
    result.metrics["views_kept"] = float(sum(keep))
    result.time_s = time.perf_counter() - start
    result.method = f"{method}-multiview"
    return result
