"""How far to trust a LiverLaparoReg result: signals, a per-input calibration, the verdict.

:func:`assess` turns one pose (``model_to_camera``: mesh file mm -> OpenCV camera mm) and
the observations it was fitted to (liver mask and/or P2ILF contours) into a
:class:`SurgicalReg2D3DLib.quality.Quality` with an estimate of the rotation error (deg)
and of the error of the posed liver centre (mm), intervals, a verdict and reasons. It does
not need the method that produced the pose, so learned methods call it on their results.

Calibration from simulated perturbations, per input (no tuning to a shipped mesh): the
mesh is rendered at the result pose (a synthetic observation for which the result would
be exact), then at ``n_perturbations`` random poses around it (rotation about the posed
liver centre 0.3-25 deg, translation 0.3-50 mm, log-uniform, random directions). Each
perturbation's misfit to that synthetic observation (mask Dice deficit, contour
residual px) is compared with the misfit actually observed at the result; the errors of
the perturbations whose misfit resembles the observed one (Gaussian kernel in log misfit)
give the estimate (weighted median) and the interval (weighted 10th-90th percentiles).
So the same Dice deficit means more millimetres for a small, far liver than for a large,
close one, and depth (weakly seen by a silhouette) gets the wide interval it deserves.

Other signals: contour inlier ratio (share of projected 3D-contour samples within
``max(5 px, 1 %`` of the image diagonal) of a 2D contour), the pose range (liver centre
behind the camera, nearest vertex behind the lens, farther than ``max_distance_mm``,
projected centre outside the image), and the disagreement with other starts' results
(``alternatives``, from :func:`assess_and_retry`).

Verdict: ``failed`` when the estimate exceeds ``fail_deg`` / ``fail_mm`` (5 deg / 5 mm),
or the pose is out of range, or the misfit is larger than any simulated perturbation;
``doubtful`` when the upper end of the interval exceeds the thresholds or a signal is
missing; ``ok`` otherwise.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.quality import Quality, better

FAIL_DEG = 5.0
FAIL_MM = 5.0
MAX_DISTANCE_MM = 400.0
WORK_WIDTH = 160  # px: masks are compared at about this width


def _rotvec_matrix(rv: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    return Rotation.from_rotvec(rv).as_matrix()


def perturbations(model_to_camera: np.ndarray, centre_model: np.ndarray, n: int,
                  seed: int = 0, max_deg: float = 25.0, max_mm: float = 50.0):
    """``n`` random poses around ``model_to_camera`` and their (rotation deg, centre mm)
    distances: rotation about the posed centre then translation, each magnitude
    log-uniform in [0.3, max]; half the samples rotate only or translate only."""
    rng = np.random.default_rng(seed)
    T = np.asarray(model_to_camera, float)
    c = T[:3, :3] @ centre_model + T[:3, 3]
    poses, rot, trans = [], [], []
    for i in range(n):
        a = math.exp(rng.uniform(math.log(0.3), math.log(max_deg)))
        t = math.exp(rng.uniform(math.log(0.3), math.log(max_mm)))
        if i % 4 == 1:
            a = 0.0
        elif i % 4 == 2:
            t = 0.0
        ax = rng.normal(size=3)
        ax /= np.linalg.norm(ax)
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        P = np.eye(4)
        P[:3, :3] = _rotvec_matrix(np.radians(a) * ax)
        P[:3, 3] = c - P[:3, :3] @ c + t * d
        poses.append(P @ T)
        rot.append(a)
        trans.append(t)
    return np.array(poses), np.array(rot), np.array(trans)


def _work_camera(camera):
    scale = max(1.0, camera.width / WORK_WIDTH)
    return camera.scaled(scale) if scale > 1 else camera


def _dice(a, b) -> np.ndarray:
    """Dice of (B, H, W) bool tensors against (H, W) or (B, H, W)."""
    a = a.reshape(a.shape[0], -1).float()
    b = b.reshape(-1 if b.dim() == 2 else b.shape[0], a.shape[1]).float()
    inter = (a * b).sum(1)
    return (2 * inter / (a.sum(1) + b.sum(1)).clamp(min=1e-9)).numpy()


def _contour_samples(mesh, contours3d, step_mm: float):
    from .metrics import densify_polyline  # noqa: PLC0415

    pts = [densify_polyline(mesh.vertices[c.vertices], step_mm) for c in contours3d]
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def _project(camera, pts_model, T):
    import torch  # noqa: PLC0415

    pc = pts_model @ T[:3, :3].T + T[:3, 3]
    pc[:, 2] = np.maximum(pc[:, 2], 1e-6)
    return camera.project(torch.as_tensor(pc)).detach().cpu().numpy()


def measure_signals(mesh, camera, model_to_camera, mask=None, contours2d=None,
                    contours3d=None, alternatives: Optional[Sequence[np.ndarray]] = None,
                    n_perturbations: int = 48, seed: int = 0,
                    max_distance_mm: float = MAX_DISTANCE_MM) -> Dict[str, object]:
    """All signals of one pose plus the perturbation table (see the module doc)."""
    import torch  # noqa: PLC0415
    from scipy.spatial import cKDTree  # noqa: PLC0415

    from .metrics import densify_polyline  # noqa: PLC0415
    from .raster import render_mask  # noqa: PLC0415
    from .silhouette import downsample_mask  # noqa: PLC0415

    T = np.asarray(model_to_camera, float)
    v = np.asarray(mesh.vertices, float)
    centre = v.mean(0)
    sig: Dict[str, object] = {}
    # -- range
    pc = v @ T[:3, :3].T + T[:3, 3]
    cz = float((T[:3, :3] @ centre + T[:3, 3])[2])
    sig["centre_depth_mm"] = cz
    sig["nearest_vertex_depth_mm"] = float(pc[:, 2].min())
    sig["vertices_in_front"] = float((pc[:, 2] > 1.0).mean())
    if cz > 1.0:
        uv = _project(camera, centre[None], T)[0]
        sig["centre_in_image"] = bool(0 <= uv[0] < camera.width and 0 <= uv[1] < camera.height)
    else:
        sig["centre_in_image"] = False
    sig["max_distance_mm"] = float(max_distance_mm)
    poses, prot, ptrans = perturbations(T, centre, n_perturbations, seed)
    table_sig = []
    obs = []
    # -- mask
    if mask is not None:
        cam = _work_camera(camera)
        m = downsample_mask(torch.as_tensor(np.asarray(mask) != 0), cam.height, cam.width) >= 0.5
        from .mesh import decimated  # noqa: PLC0415

        low = decimated(mesh, 800) if len(mesh.faces) > 1600 else mesh
        with torch.no_grad():  # one pose at a time: batched rendering is slower on CPU
            ref = render_mask(low.vertices, low.faces, T, cam)[0]
            pert = torch.stack([render_mask(low.vertices, low.faces, P, cam)[0] for P in poses])
        dice_obs = float(_dice(ref[None], m)[0])
        sig["mask_dice"] = dice_obs
        obs.append(max(1.0 - dice_obs, 0.0))
        table_sig.append(np.maximum(1.0 - _dice(pert, ref), 0.0))
    # -- contours
    if contours2d and contours3d:
        step = max(0.25, float(np.ptp(v, axis=0).max()) / 400.0)
        samples = _contour_samples(mesh, contours3d, step)
        two_d = np.concatenate([densify_polyline(np.asarray(c.points, float), 1.0)
                                for c in contours2d])
        tree = cKDTree(two_d)
        d_obs = tree.query(_project(camera, samples, T))[0]
        diag = math.hypot(camera.width, camera.height)
        tol = max(5.0, 0.01 * diag)
        sig["contour_residual_px"] = float(d_obs.mean())
        sig["contour_inlier_ratio"] = float((d_obs <= tol).mean())
        sig["contour_inlier_tolerance_px"] = tol
        ref_uv = _project(camera, samples, T)
        dens = np.concatenate([densify_polyline(ref_uv[i:i + 2], 1.0)
                               for i in range(len(ref_uv) - 1)]) if len(ref_uv) > 1 else ref_uv
        rtree = cKDTree(dens)
        obs.append(float(d_obs.mean()))
        table_sig.append(np.array([rtree.query(_project(camera, samples, P))[0].mean()
                                   for P in poses]))
    # -- calibrated estimate: perturbations whose misfit resembles the observed one
    if obs:
        eps = np.array(([0.003] if mask is not None else []) +
                       ([0.5] if contours2d and contours3d else []))
        S = np.log(np.stack(table_sig, 1) + eps)
        o = np.log(np.array(obs) + eps)
        d2 = ((S - o) ** 2).sum(1)
        h = 0.4
        w = np.exp(-0.5 * d2 / h ** 2)
        sig["perturbation_weight"] = float(w.sum())
        sig["misfit_observed"] = [float(x) for x in obs]
        # observed misfit beyond every simulated perturbation -> larger than they span
        sig["misfit_beyond_perturbations"] = bool(np.all(np.array(obs)[None] > np.stack(table_sig, 1)
                                                         .max(0)[None]))
        if w.sum() < 1e-3:
            # no perturbation looks like the observation: nearest ones in misfit space
            w = np.exp(-0.5 * (d2 - d2.min()) / h ** 2)
        # log-uniform prior (as sampled) and a uniform-magnitude prior (re-weighted)
        wu = w * np.maximum(prot, 0.3) * np.maximum(ptrans, 0.3)
        for name, vals in (("rotation_deg", prot), ("translation_mm", ptrans)):
            sig[name + "_q"] = [float(x) for x in _wquantiles(vals, w, (0.1, 0.5, 0.9))]
            sig[name + "_qu"] = [float(x) for x in _wquantiles(vals, wu, (0.1, 0.5, 0.9))]
    if alternatives:
        from .metrics import pose_errors  # noqa: PLC0415

        errs = [pose_errors(a, T, centre) for a in alternatives]
        sig["multistart_rotation_deg"] = float(max(e["rotation_deg"] for e in errs))
        sig["multistart_centre_mm"] = float(max(e["centroid_error_mm"] for e in errs))
    return sig


def _wquantiles(values: np.ndarray, weights: np.ndarray, qs) -> List[float]:
    order = np.argsort(values)
    v = values[order]
    c = np.cumsum(weights[order])
    c = c / c[-1]
    return [float(np.interp(q, c, v)) for q in qs]


def verdict_from_signals(sig: Dict[str, object], fail_deg: float = FAIL_DEG,
                         fail_mm: float = FAIL_MM) -> Quality:
    """The Quality of a signals dict (see the module doc)."""
    reasons: List[str] = []
    est: Dict[str, float] = {}
    interval: Dict[str, List[float]] = {}
    failed = doubtful = False
    if "rotation_deg_q" in sig:
        for key in ("rotation_deg", "translation_mm"):
            lo, mid, hi = sig[key + "_qu"]
            est[key] = mid
            interval[key] = [lo, hi]
        if est["rotation_deg"] > fail_deg or est["translation_mm"] > fail_mm:
            failed = True
            reasons.append(f"the misfit at the result matches poses about "
                           f"{est['rotation_deg']:.1f} deg / {est['translation_mm']:.1f} mm "
                           f"away (limit {fail_deg:g} deg / {fail_mm:g} mm)")
        elif interval["rotation_deg"][1] > 2 * fail_deg or interval["translation_mm"][1] > 2 * fail_mm:
            doubtful = True
            reasons.append("the error interval reaches beyond "
                           f"{2 * fail_deg:g} deg / {2 * fail_mm:g} mm (weakly constrained pose)")
        if sig.get("misfit_beyond_perturbations"):
            failed = True
            reasons.append("the misfit is larger than any simulated perturbation")
    else:
        doubtful = True
        reasons.append("no mask or contours to judge the pose by")
    cz = float(sig.get("centre_depth_mm", float("nan")))
    if not cz > 0:
        failed = True
        reasons.append("the liver centre is behind the camera")
    elif cz > float(sig.get("max_distance_mm", MAX_DISTANCE_MM)):
        failed = True
        reasons.append(f"the liver centre is {cz:.0f} mm from the camera (outside the "
                       f"laparoscopic range, > {float(sig.get('max_distance_mm')):.0f} mm)")
    if float(sig.get("vertices_in_front", 1.0)) < 0.5:
        failed = True
        reasons.append("most of the liver lies behind the lens")
    if cz > 0 and not sig.get("centre_in_image", True):
        doubtful = True
        reasons.append("the liver centre projects outside the image")
    if "mask_dice" in sig and float(sig["mask_dice"]) < 0.5:
        failed = True
        reasons.append(f"mask Dice at the result is {float(sig['mask_dice']):.2f}")
    if "contour_inlier_ratio" in sig and float(sig["contour_inlier_ratio"]) < 0.5:
        doubtful = True
        reasons.append(f"only {100 * float(sig['contour_inlier_ratio']):.0f} % of the contour "
                       "points reproject near a 2D contour")
    if "multistart_rotation_deg" in sig and (
            sig["multistart_rotation_deg"] > fail_deg or sig["multistart_centre_mm"] > fail_mm):
        failed = True
        reasons.append(f"another start converged {sig['multistart_rotation_deg']:.1f} deg / "
                       f"{sig['multistart_centre_mm']:.1f} mm away")
    verdict = "failed" if failed else ("doubtful" if doubtful else "ok")
    clean = {k: v for k, v in sig.items()}
    return Quality(verdict, est, interval, reasons, clean)


def assess(mesh, camera, model_to_camera, mask=None, contours2d=None, contours3d=None,
           alternatives=None, n_perturbations: int = 48, seed: int = 0,
           max_distance_mm: float = MAX_DISTANCE_MM, fail_deg: float = FAIL_DEG,
           fail_mm: float = FAIL_MM) -> Quality:
    """The :class:`Quality` of one laparoscopic pose (module doc). Never raises on odd
    numbers: a pose that cannot be assessed is ``doubtful`` with the reason."""
    try:
        T = np.asarray(model_to_camera, float)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            return Quality("failed", reasons=["the pose is not a finite 4x4 matrix"])
        sig = measure_signals(mesh, camera, T, mask, contours2d, contours3d, alternatives,
                              n_perturbations, seed, max_distance_mm)
    except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
        return Quality("doubtful", reasons=[f"quality could not be computed: {exc}"])
    return verdict_from_signals(sig, fail_deg, fail_mm)


def _rank(q: Quality) -> tuple:
    order = {"ok": 0, "doubtful": 1, "failed": 2, "skipped": 3}
    e = q.estimate
    return (order[q.verdict], e.get("rotation_deg", 1e9) / FAIL_DEG + e.get("translation_mm", 1e9) / FAIL_MM)


def assess_and_retry(mesh, camera, result, mask=None, contours2d=None, contours3d=None,
                     rerun=None, depth_fraction: float = 0.08, multistart: str = "auto", **kw):
    """Assess ``result`` (a :class:`~.result.LaparoResult`) with restarts where they help.

    ``rerun(init) -> LaparoResult`` is a mask-driven refinement from a start (the
    silhouette method). Restarts begin at the result moved along the viewing ray by
    +-``depth_fraction`` of its depth (the direction a silhouette constrains least). They
    run when ``multistart`` is ``"always"``, or ``"auto"`` and either the result is
    ``failed`` or there are no contours (mask only: the depth is only weakly seen). The
    spread of the restarts' results is a signal (``multistart_rotation_deg`` /
    ``multistart_centre_mm``); the attempt with the best verdict (then the smallest
    estimate) is kept, and every attempt is reported.

    Returns ``(quality, result, info)``; ``info["attempts"]`` lists every attempt's
    verdict and estimate (the first is the original), ``info["chosen"]`` its index.
    """
    from .metrics import pose_errors  # noqa: PLC0415

    q = assess(mesh, camera, result.model_to_camera, mask, contours2d, contours3d, **kw)
    info = {"attempts": [{"start": "original", "verdict": q.verdict,
                          "estimate": dict(q.estimate)}], "chosen": 0}
    run = rerun is not None and mask is not None and (
        multistart == "always" or (multistart == "auto" and (
            q.verdict == "failed" or not (contours2d and contours3d))))
    if not run:
        return q, result, info
    T = np.asarray(result.model_to_camera, float)
    centre = mesh.vertices.mean(0)
    c = T[:3, :3] @ centre + T[:3, 3]
    ray = c / max(np.linalg.norm(c), 1e-9)
    results = [result]
    for sgn in (+1.0, -1.0):
        start = T.copy()
        start[:3, 3] += sgn * depth_fraction * np.linalg.norm(c) * ray
        results.append(rerun(start))
    quals = [q]
    for k, r2 in enumerate(results[1:]):
        alts = [x.model_to_camera for j, x in enumerate(results) if j != k + 1]
        q2 = assess(mesh, camera, r2.model_to_camera, mask, contours2d, contours3d,
                    alternatives=alts, **kw)
        quals.append(q2)
        info["attempts"].append({"start": f"depth {'+' if k == 0 else '-'}"
                                          f"{100 * depth_fraction:.0f} %",
                                 "verdict": q2.verdict, "estimate": dict(q2.estimate)})
    # the original, judged with the restarts as alternatives
    quals[0] = assess(mesh, camera, T, mask, contours2d, contours3d,
                      alternatives=[r.model_to_camera for r in results[1:]], **kw)
    info["attempts"][0]["verdict"] = quals[0].verdict
    info["attempts"][0]["estimate"] = dict(quals[0].estimate)
    best = min(range(len(quals)), key=lambda i: _rank(quals[i]))
    info["chosen"] = best
    spread = max(pose_errors(a.model_to_camera, b.model_to_camera, centre)["centroid_error_mm"]
                 for i, a in enumerate(results) for b in results[i + 1:])
    info["spread_centre_mm"] = float(spread)
    best_q, best_r = quals[best], results[best]
    best_q.signals["retried"] = True
    best_q.signals["attempts"] = info["attempts"]
    if best:
        best_q.reasons.append(f"retried: the start {info['attempts'][best]['start']} gave a "
                              f"better verdict than the original "
                              f"({info['attempts'][0]['verdict']})")
    return best_q, best_r, info


__all__ = ["assess", "assess_and_retry", "measure_signals", "verdict_from_signals",
           "perturbations", "better"]
