"""Multi-view registration with cross-view pose consistency and test-time refinement.

N X-ray views of the same CT with known C-arm motion ``camera0_to_view[k]`` (identity for
view 0). All poses here are the CT's pose in camera 0, ``ct_to_camera`` (CT RAS mm ->
camera 0 mm); view ``k`` sees the CT at ``camera0_to_view[k] @ ct_to_camera``. If every
view were registered perfectly on its own, the N estimates of ``ct_to_camera`` would be
identical; their disagreement measures how far the views are from a consistent solution.

:func:`register_multiview` runs three stages:

1. **independent**: each view is registered on its own at the coarsest level
   (``per_view_levels[0]``); the spread of the N estimates is reported as
   ``view_disagreement_before_mm``.
2. **consistency** (joint image loss + cross-view pose-consistency terms): each view
   ``k`` keeps its own estimate ``T_k`` (a twist ``xi_k`` about the CT centre, 6N
   unknowns in all), and one Levenberg-Marquardt problem minimises

       sum_k |r_img_k(T_k)|^2 / N  +  w^2 sum_{j<k} |c(T_j, T_k)|^2,

   where ``r_img_k`` are view k's NCC / gradient-NCC residuals (as in
   :mod:`.refine`) and the consistency residual of a pair is the relative pose
   ``D = inv(C) T_j inv(T_k) C`` about the CT centre ``C`` (so the known C-arm motion
   between the views cancels: both estimates are in camera 0) written in millimetres:
   ``c = (L * so3_log(R_D), t_D)`` — rotation vector scaled by a length ``L`` (the RMS
   radius of the CT box), and the displacement of the CT centre. ``w``
   (``consistency_weight``, per mm) trades image fit for agreement. The spread after
   this stage is ``view_disagreement_after_mm``.
3. **test-time refinement**: the hard-constrained joint solve (one ``ct_to_camera``,
   all views stacked, :func:`FluoroRegLib.refine.register_intensity`) starts from the
   similarity-weighted chordal mean of the consistent estimates (an estimate more than
   ``outlier_mm`` from the mean is left out of the average) and runs on ``levels``.

The disagreement of a set of estimates is the mean, over pairs, of the mean distance of
the 8 CT box corners mapped by the two estimates (mm).
"""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.optimize import levenberg_marquardt
from SurgicalReg2D3DLib.poses import so3_log
from SurgicalReg2D3DLib.progress import check_cancel, report, sub_progress

from .refine import (SIMILARITIES, RegistrationResult, XRayView, _check_levels, _Problem,
                     check_pose, fd_steps, prepare_views, register_intensity)


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


def view_disagreement_mm(estimates: Sequence[np.ndarray], corners_ras: np.ndarray) -> float:
    """Mean over pairs of the mean CT-box-corner distance (mm) between per-view
    ``ct_to_camera`` estimates (all in camera 0); 0 for a single estimate."""
    d = [_corner_distance(a, b, corners_ras)
         for i, a in enumerate(estimates) for b in estimates[i + 1:]]
    return float(np.mean(d)) if d else 0.0


def rotation_length_mm(volume) -> float:
    """RMS distance from the centre of points spread uniformly in the CT box (mm):
    ``sqrt((ex^2 + ey^2 + ez^2) / 12)`` for box edge lengths ``e``."""
    corners = volume.corners_ras()
    c = corners.mean(0)
    half = np.abs(corners - c).max(0)  # axis-aligned half extents in RAS (approximate)
    return float(np.sqrt(((2 * half) ** 2).sum() / 12.0))


def consistency_residuals(poses: Sequence[torch.Tensor], center_cam, length_mm: float,
                          weight: float) -> torch.Tensor:
    """Pose-disagreement residuals (B, 6 * pairs) of per-view ``ct_to_camera`` estimates.

    ``poses``: N tensors (B, 4, 4) (CT -> camera 0); ``center_cam``: (3,) CT centre in
    camera 0. For each pair ``j < k``: ``D = inv(C) T_j inv(T_k) C`` and the residual is
    ``weight * (length_mm * so3_log(R_D), t_D)`` (mm * weight). Zero when all agree.
    """
    t0 = poses[0]
    c = torch.eye(4, dtype=t0.dtype, device=t0.device)
    c[:3, 3] = torch.as_tensor(center_cam, dtype=t0.dtype, device=t0.device)
    c_inv = torch.linalg.inv(c)
    out = []
    for j in range(len(poses)):
        for k in range(j + 1, len(poses)):
            d = c_inv @ poses[j] @ torch.linalg.inv(poses[k]) @ c
            out.append(torch.cat([length_mm * so3_log(d[..., :3, :3]), d[..., :3, 3]], dim=-1))
    if not out:
        return torch.zeros(t0.shape[0], 0, dtype=t0.dtype, device=t0.device)
    return weight * torch.cat(out, dim=-1)


class _CoupledProblem:
    """Per-view estimates ``T_k = C exp(xi_k) inv(C) T_k_start`` (x = (B, 6N)) with the
    image residuals of each view and the cross-view consistency residuals."""

    def __init__(self, volume, views, cams, starts: Sequence[np.ndarray], center_cam,
                 similarity: str, drr_method: str, n_samples, weight: float, length_mm: float):
        self.n = len(views)
        self.probs = [_Problem(volume, [v], [cam], start, center_cam, similarity, drr_method,
                               n_samples) for v, cam, start in zip(views, cams, starts)]
        self.center_cam = np.asarray(center_cam, float)
        self.weight = float(weight)
        self.length_mm = float(length_mm)

    def poses(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [p.pose(x[:, 6 * k: 6 * k + 6]) for k, p in enumerate(self.probs)]

    def consistency(self, x: torch.Tensor) -> torch.Tensor:
        return consistency_residuals(self.poses(x), self.center_cam, self.length_mm, self.weight)

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        img = [p.residuals(x[:, 6 * k: 6 * k + 6]) / np.sqrt(self.n)
               for k, p in enumerate(self.probs)]
        return torch.cat(img + [self.consistency(x).to(img[0].dtype)], dim=1).to(x.dtype)

    def jacobian(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """(B, R, 6N): block-diagonal image part (batched forward differences, one DRR
        call per view), consistency part by central differences (cheap 4x4 algebra)."""
        b = x.shape[0]
        blocks = [p.jacobian(x[:, 6 * k: 6 * k + 6], steps) / np.sqrt(self.n)
                  for k, p in enumerate(self.probs)]
        rows = sum(blk.shape[1] for blk in blocks)
        n_cons = 6 * self.n * (self.n - 1) // 2
        jac = torch.zeros(b, rows + n_cons, 6 * self.n, dtype=x.dtype, device=x.device)
        r0 = 0
        for k, blk in enumerate(blocks):
            jac[:, r0: r0 + blk.shape[1], 6 * k: 6 * k + 6] = blk.to(x.dtype)
            r0 += blk.shape[1]
        all_steps = steps.repeat(self.n).to(x.dtype)
        with torch.no_grad():
            for p in range(6 * self.n):
                e = torch.zeros_like(x)
                e[:, p] = all_steps[p]
                jac[:, rows:, p] = (self.consistency(x + e) - self.consistency(x - e)) / (2 * all_steps[p])
        return jac


def register_consistent(volume, views: Sequence[XRayView], starts: Sequence[np.ndarray],
                        similarity: str = "ncc", levels: Sequence[float] = (4, 2),
                        iterations: int = 15, consistency_weight: float = 0.05,
                        length_mm: Optional[float] = None, drr_method: str = "trilinear",
                        n_samples: Optional[int] = None, history: Optional[list] = None,
                        progress=None, cancel=None) -> List[np.ndarray]:
    """Stage 2 of :func:`register_multiview`: per-view estimates solved jointly with the
    cross-view consistency term (see the module doc). ``starts``: N (4, 4)
    ``ct_to_camera`` (camera 0), one per view. Returns the N refined estimates."""
    if similarity not in SIMILARITIES:
        raise InputError(f"similarity: expected one of {SIMILARITIES}, got {similarity!r}")
    if not np.isfinite(consistency_weight) or consistency_weight < 0:
        raise InputError(f"consistency_weight: must be a number >= 0, got {consistency_weight}")
    views = prepare_views(views)
    if len(starts) != len(views):
        raise InputError(f"per-view starts: {len(views)} views but {len(starts)} start poses")
    current = [check_pose(s, f"start ct_to_camera of view {k + 1}") for k, s in enumerate(starts)]
    levels = _check_levels(levels)
    length = rotation_length_mm(volume) if length_mm is None else float(length_mm)
    center_cam = (average_poses(current) @ np.r_[volume.center_ras(), 1.0])[:3]
    dev = volume.device
    for li, factor in enumerate(levels):
        check_cancel(cancel, "FluoroReg multi-view registration")
        cams = [v.camera if factor == 1 else v.camera.scaled(factor) for v in views]
        prob = _CoupledProblem(volume, views, cams, current, center_cam, similarity,
                               drr_method, n_samples, consistency_weight, length)
        steps = fd_steps(cams[0], center_cam, dev)
        sub = sub_progress(progress, li / len(levels), (li + 1) / len(levels))

        def callback(it, x, cost, _li=li, _factor=factor, _sub=sub):
            if history is not None:
                history.append({"stage": "consistency", "level": _li, "factor": _factor,
                                "iteration": it, "loss": float(cost[0])})
            report(_sub, it / iterations, f"consistency level {_li + 1}/{len(levels)} "
                   f"iteration {it}: cost {float(cost[0]):.4f}")
            check_cancel(cancel, "FluoroReg multi-view registration")
            return False

        x0 = torch.zeros(1, 6 * len(views), dtype=torch.float64, device=dev)
        res = levenberg_marquardt(prob.residuals, x0, max_iter=int(iterations),
                                  jacobian=lambda x: prob.jacobian(x, steps), tol_step=1e-6,
                                  tol_cost=1e-5, callback=callback, cancel=cancel)
        with torch.no_grad():
            current = [p[0].cpu().numpy() for p in prob.poses(res.x)]
    return current


def register_multiview(volume, views: Sequence[XRayView], init_ct_to_camera, method: str = "ncc",
                       per_view_levels: Sequence[float] = (4, 2), levels: Sequence[float] = (2, 1),
                       iterations: int = 15, consistency_weight: float = 0.05,
                       outlier_mm: float = 10.0, drr_method: str = "trilinear",
                       n_samples: Optional[int] = None, landmarks_ras=None,
                       true_ct_to_camera=None, progress=None, cancel=None) -> RegistrationResult:
    """Independent per-view registration, consistency stage, joint refinement (module doc).

    ``volume``: :class:`~FluoroRegLib.drr.DRRVolume`; ``views``: :class:`XRayView` list
    with their ``camera0_to_view``; ``init_ct_to_camera``: (4, 4) start (camera 0).
    ``method``: similarity ``"ncc"`` or ``"gradncc"``. ``per_view_levels``: pyramid of
    stages 1 (first level only) and 2; ``levels``: pyramid of the joint stage 3;
    ``iterations`` per level. Metrics: ``view_disagreement_before_mm`` (after stage 1),
    ``view_disagreement_after_mm`` (after stage 2), ``view_disagreement_mm`` (= after),
    ``views_kept`` (estimates averaged into the start of stage 3), plus the errors of
    :func:`FluoroRegLib.refine.pose_errors` when landmarks and the truth are given.
    """
    if method not in SIMILARITIES:
        raise InputError(f"method: multi-view similarity must be one of {SIMILARITIES}, "
                         f"got {method!r}")
    views = prepare_views(views)
    init = check_pose(init_ct_to_camera, "initial ct_to_camera")
    per_view_levels = _check_levels(per_view_levels)
    start = time.perf_counter()
    n = len(views)
    common = {"drr_method": drr_method, "n_samples": n_samples}
    history: List[dict] = []
    corners = volume.corners_ras()

    # 1. independent per-view registration at the coarsest level
    estimates, sims = [], []
    for k, view in enumerate(views):
        rel = view.camera0_to_view
        res = register_intensity(volume, [XRayView(view.image, view.camera)], rel @ init,
                                 similarity=method, levels=per_view_levels[:1],
                                 iterations=iterations,
                                 progress=sub_progress(progress, 0.2 * k / n, 0.2 * (k + 1) / n),
                                 cancel=cancel, **common)
        history += [dict(h, stage=f"view {k + 1}") for h in res.history]
        estimates.append(np.linalg.inv(rel) @ res.ct_to_camera)
    before = view_disagreement_mm(estimates, corners)

    # 2. per-view estimates coupled by the consistency term
    if n > 1:
        estimates = register_consistent(volume, views, estimates, similarity=method,
                                        levels=per_view_levels, iterations=iterations,
                                        consistency_weight=consistency_weight, history=history,
                                        progress=sub_progress(progress, 0.2, 0.5), cancel=cancel,
                                        **common)
    after = view_disagreement_mm(estimates, corners)
    with torch.no_grad():
        from .drr import render_drr  # noqa: PLC0415
        from .refine import image_similarity  # noqa: PLC0415

        for view, est in zip(views, estimates):
            drr = render_drr(volume, view.camera, view.camera0_to_view @ est,
                             method=drr_method, n_samples=n_samples)
            sims.append(max(float(image_similarity(drr, view.image.to(drr.device), method)[0]), 1e-3))
    mean = average_poses(estimates)
    keep = [_corner_distance(e, mean, corners) <= outlier_mm for e in estimates]
    if not any(keep):
        keep = [True] * n
    joint_start = average_poses([e for e, k in zip(estimates, keep) if k],
                                [s for s, k in zip(sims, keep) if k])

    # 3. test-time refinement: one CT pose, all views
    result = register_intensity(volume, views, joint_start, similarity=method,
                                levels=levels, iterations=iterations,
                                landmarks_ras=landmarks_ras, true_ct_to_camera=true_ct_to_camera,
                                progress=sub_progress(progress, 0.5, 1.0), cancel=cancel, **common)
    result.history = history + [dict(h, stage="joint") for h in result.history]
    result.metrics.update(view_disagreement_before_mm=before, view_disagreement_after_mm=after,
                          view_disagreement_mm=after, views_kept=float(sum(keep)))
    result.time_s = time.perf_counter() - start
    result.method = f"{method}-multiview"
    report(progress, 1.0, "multi-view registration done")
    return result
