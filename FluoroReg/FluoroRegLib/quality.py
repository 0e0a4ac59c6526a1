"""How far to trust a FluoroReg result: signals, a per-CT calibration and the verdict.

:func:`assess` turns one registration result (a ``ct_to_camera`` of view 0, the CT, the
X-ray views) into a :class:`SurgicalReg2D3DLib.quality.Quality` with an mTRE estimate
(mm) and interval, a verdict and reasons. It does not need the method that produced the
pose, so the learned methods call it on their results too.

Signals (:func:`measure_signals`, all at the result pose, full detector resolution):

- ``similarity`` / ``similarity_views``: NCC of the DRR and each X-ray;
- ``cost_ratio``: ``1 - NCC`` divided by the X-ray's own noise floor (``1 - NCC`` of the
  image and a lightly smoothed copy of itself), so images with more noise are not judged
  worse;
- ``sigma_mm`` / ``sigma_weak_mm``: the Gauss-Newton covariance ``s^2 (J^T J)^-1`` of the
  pose (``J``: the similarity residuals' Jacobian, ``s^2``: residual variance) propagated
  to points inside the CT box (RMS displacement, mm), overall and along the weakest
  direction (in one view: mostly along the central ray); ``weak_direction`` is that
  direction as a twist (rotation rad, translation mm) about the CT centre;
- ``probe_gain``: relative decrease of ``1 - NCC`` found by probing the pose along the
  principal directions of ``J^T J`` (the result is not a local optimum when > 0; ``failed``
  from :data:`PROBE_FAIL_GAIN` on);
- ``moved_mm`` (CT box corners, start -> result), ``iterations_capped`` (the optimiser
  stopped at its iteration limit at the finest level), ``stayed`` (the pose did not move).
- multi-view: ``view_disagreement_mm`` when the method reports it.

The mTRE estimate is ``exp(a + b . features)`` with coefficients learned per CT and X-ray
geometry (:func:`calibrate`: X-rays simulated from the CT around the result pose,
registrations from starts at and beyond the capture range, least squares of log true
mTRE on the signals, thresholds chosen on the same simulations); without a calibration
a conservative default model (:data:`DEFAULT_MODEL`, fitted on the benchmark protocol
of ``benchmarks/fluoro_quality.py``) is used and the verdict says so. A result polished
with the detector model (:mod:`.detector`) is measured with that model's DRRs
(``detector=``) and judged by :data:`DEFAULT_POLISHED_MODEL`.
:func:`FluoroRegLib.recovery.assess_result` (what ``register`` calls) polishes results
that are not ``ok`` and runs the restarts of :func:`FluoroRegLib.recovery.recover` for
what is still not ``ok``; this module imports neither (nor :mod:`.logic`).

Frames: ``ct_to_camera`` maps CT RAS mm to the camera of view 0 (source at the origin,
+z towards the detector).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.quality import Quality

#: signal names used as regression features (log-transformed where noted in _features)
FEATURES = ("log_cost_ratio", "log_noise_floor", "probe_gain", "log_disagreement")


@dataclass
class QualityModel:
    """Linear model of log mTRE on :data:`FEATURES`, with its residual spread and the
    verdict thresholds (mm of estimated mTRE)."""

    coef: List[float]
    intercept: float
    resid_q: List[float] = field(default_factory=lambda: [-0.7, 0.7])  # 10th / 90th pct
    fail_mm: float = 1.0
    doubt_mm: float = 0.7
    source: str = "default"
    n: int = 0

    def predict_log(self, feats: np.ndarray) -> float:
        return float(self.intercept + np.dot(self.coef, feats))

    def to_dict(self) -> dict:
        return {"coef": list(map(float, self.coef)), "intercept": float(self.intercept),
                "resid_q": list(map(float, self.resid_q)), "fail_mm": float(self.fail_mm),
                "doubt_mm": float(self.doubt_mm), "source": self.source, "n": int(self.n),
                "features": list(FEATURES)}

    @classmethod
    def from_dict(cls, d: dict) -> "QualityModel":
        return cls(list(d["coef"]), float(d["intercept"]), list(d.get("resid_q", [-0.7, 0.7])),
                   float(d.get("fail_mm", 1.0)), float(d.get("doubt_mm", 0.7)),
                   d.get("source", "file"), int(d.get("n", 0)))


#: used when no per-CT calibration is given: fitted by ``benchmarks/fluoro_quality.py``
#: on 49 single-view simulations of the shipped CT (seeds 0-1, ncc, 96 px, 3.1 mm pixels;
#: see benchmarks/results/fluoro_quality.md); :func:`calibrate` refits it for another CT.
#: The view-disagreement coefficient (0.3) is a prior, not fitted (no multi-view rows).
DEFAULT_MODEL = QualityModel(coef=[0.70, 1.52, 0.02, 0.30], intercept=11.27,
                             resid_q=[-0.62, 0.58], fail_mm=0.65, doubt_mm=0.46,
                             source="default (simulations of the shipped CT)")


#: the same for results polished with the detector model (signals measured with it:
#: ``detector_sigma_px`` present); fitted by ``benchmarks/fluoro_quality.py fit`` on the
#: 50 polished single-view rows of the shipped CT, seeds 0-1 (seeds 2-3 and the crop2mm
#: CT are held out; see benchmarks/results/fluoro_quality.md). The view-disagreement
#: coefficient (0.3) is a prior, not fitted (no multi-view rows).
DEFAULT_POLISHED_MODEL = QualityModel(coef=[1.04, 0.57, 0.626, 0.3], intercept=3.466,
                                      resid_q=[-0.74, 0.50], fail_mm=0.50, doubt_mm=0.35,
                                      source="default polished (simulations of the shipped CT)")


def default_model(sig: Optional[Dict[str, object]] = None) -> QualityModel:
    """:data:`DEFAULT_POLISHED_MODEL` for signals measured with the detector model
    (a polished result), else :data:`DEFAULT_MODEL`."""
    if sig and sig.get("detector_sigma_px") is not None:
        return DEFAULT_POLISHED_MODEL
    return DEFAULT_MODEL


# -- signals -------------------------------------------------------------------------------
def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], float)


def probe_points_ras(volume) -> np.ndarray:
    """27 points on a 3x3x3 grid spanning the central half of the CT box (RAS mm): where
    the anatomy of interest is, independent of user landmarks."""
    corners = volume.corners_ras()
    c = corners.mean(0)
    half = np.abs(corners - c).max(0) * 0.5
    g = np.array([[a, b, d] for a in (-1, 0, 1) for b in (-1, 0, 1) for d in (-1, 0, 1)], float)
    return c + g * half


def _box_corner_distance(a: np.ndarray, b: np.ndarray, corners: np.ndarray) -> float:
    p = np.c_[corners, np.ones(len(corners))]
    return float(np.linalg.norm((p @ a.T - p @ b.T)[:, :3], axis=1).mean())


def _noise_floor(image, similarity: str) -> float:
    """``1 - similarity`` of an X-ray and a Gaussian-smoothed (sigma 1 px) copy of itself:
    how much of the image is fine detail / noise that no DRR reproduces."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    from .refine import image_similarity  # noqa: PLC0415

    img = torch.as_tensor(np.asarray(image, np.float32))
    x = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * x ** 2)
    k = k / k.sum()
    sm = F.conv2d(F.pad(img[None, None], (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7))
    sm = F.conv2d(F.pad(sm, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1))[0, 0]
    s = float(image_similarity(sm[None], img, similarity)[0])
    return max(1.0 - s, 1e-6)


def _view_signals(prob, r0, jac, rp, per_view, floors, gs) -> List[Dict[str, float]]:
    """Each view's share of the joint signals, from the joint renders (no render more):
    its similarity, noise floor and cost ratio; its Gauss-Newton ``sigma_mm`` from its
    rows of the joint Jacobian (the same twist, so the same point displacements); its
    ``probe_gain`` at the joint probes. ``r0``/``jac``/``rp``: the joint residuals,
    Jacobian and probe residuals (each view's block holds ``r_k / sqrt(n_views)``)."""
    n_v = len(prob.targets)
    out = []
    start_k = 0
    for k, target in enumerate(prob.targets):
        size_k = target[0].numel()
        blk = slice(start_k, start_k + size_k)
        start_k += size_k
        rk = r0[blk] * math.sqrt(n_v)
        v = {"similarity": float(per_view[k]), "noise_floor": float(floors[k]),
             "cost_ratio": float((1.0 - per_view[k]) / max(floors[k], 1e-6))}
        jk = (jac[blk] * math.sqrt(n_v)).cpu().numpy()
        s2 = float((rk ** 2).sum()) / max(size_k - 6, 1)
        try:
            jtj = jk.T @ jk
            cov = s2 * np.linalg.inv(jtj + 1e-12 * np.trace(jtj) * np.eye(6))
            v["sigma_mm"] = float(np.mean(np.sqrt(np.maximum(
                [np.trace(g @ cov @ g.T) for g in gs], 0.0))))
        except np.linalg.LinAlgError:
            v["sigma_mm"] = float("nan")
        if rp is not None:
            cost_k = float(0.5 * (rk ** 2).sum())
            best_k = float((0.5 * n_v * (rp[:, blk] ** 2).sum(1)).min())
            v["probe_gain"] = float(max(cost_k - best_k, 0.0) / max(cost_k, 1e-12))
        else:
            v["probe_gain"] = float("nan")
        out.append(v)
    return out


def measure_signals(volume, views, ct_to_camera, init_ct_to_camera=None, history=None,
                    iterations: Optional[int] = None, similarity: str = "ncc",
                    metrics: Optional[dict] = None, drr_method: str = "trilinear",
                    n_samples: Optional[int] = None,
                    detector: Optional[dict] = None) -> Dict[str, object]:
    """The raw signals of one result (see the module doc); never raises on odd numbers
    (a signal that cannot be computed is NaN and handled by :func:`assess`).
    ``detector``: ``{"slope": [k per view], "sigma_px": s}`` of
    :func:`FluoroRegLib.detector.polish`: the DRRs are then those of the detector model
    (intensity-domain blur), as the polish optimised them."""
    import torch  # noqa: PLC0415

    from .refine import _Problem, check_pose, fd_steps, prepare_views  # noqa: PLC0415

    views = prepare_views(views)
    pose = check_pose(ct_to_camera, "ct_to_camera")
    center_cam = (pose @ np.r_[volume.center_ras(), 1.0])[:3]
    cams = [v.camera for v in views]
    sig: Dict[str, object] = {}
    with torch.no_grad():
        prob = _Problem(volume, views, cams, pose, center_cam, similarity, drr_method,
                        n_samples)
        if detector:
            from .detector import modelled_problem  # noqa: PLC0415

            prob = modelled_problem(prob, detector)
        steps = fd_steps(cams[0], center_cam, volume.device)
        x0 = torch.zeros(1, 6, dtype=torch.float64, device=volume.device)
        r0 = prob.residuals(x0)[0].double()
        jac = prob.jacobian(x0, steps)[0].double()  # (R, 6)
        cost0 = float(0.5 * (r0 ** 2).sum())
        # per-view similarity (same residual definition: 0.5|r_k|^2 = 1 - sim_k), from
        # r0's block of view k (r0 holds r_k / sqrt(n_views)), not rendered again
        per_view = []
        n_v = len(prob.targets)
        start_k = 0
        for target in prob.targets:
            size_k = target[0].numel()
            rk = r0[start_k:start_k + size_k] * math.sqrt(n_v)
            start_k += size_k
            per_view.append(1.0 - float(0.5 * (rk ** 2).sum()))
        sig["similarity"] = float(np.mean(per_view))
        sig["similarity_views"] = per_view
        floors = [_noise_floor(v.image.cpu().numpy(), similarity) for v in views]
        sig["noise_floor_views"] = [float(x) for x in floors]
        # several views: the best-exposed view bounds the precision (a noisier lateral view
        # does not make the joint pose worse than the AP view alone)
        sig["noise_floor"] = float(np.min(floors))
        sig["cost"] = cost0
        sig["cost_ratio"] = float(np.mean([(1.0 - sv) / max(fl, 1e-6)
                                           for sv, fl in zip(per_view, floors)]))
        # Gauss-Newton covariance propagated to points in the CT box
        jtj = (jac.T @ jac).cpu().numpy()
        n_res = r0.numel()
        s2 = float((r0 ** 2).sum()) / max(n_res - 6, 1)
        pts = probe_points_ras(volume)
        pts_cam = (np.c_[pts, np.ones(len(pts))] @ pose.T)[:, :3]
        gs = [np.hstack([-_skew(p - center_cam), np.eye(3)]) for p in pts_cam]
        metric = sum(g.T @ g for g in gs) / len(gs)  # mean squared displacement per twist
        try:
            cov = s2 * np.linalg.inv(jtj + 1e-12 * np.trace(jtj) * np.eye(6))
            var_pts = [float(np.trace(g @ cov @ g.T)) for g in gs]
            sig["sigma_mm"] = float(np.mean(np.sqrt(np.maximum(var_pts, 0.0))))
            # generalized eigenproblem jtj v = lam metric v (Cholesky of the metric)
            lc = np.linalg.cholesky(metric)
            li = np.linalg.inv(lc)
            w, u = np.linalg.eigh(li @ jtj @ li.T)
            dirs = li.T @ u  # columns: twists with unit RMS displacement (mm)
            sig["sigma_weak_mm"] = float(math.sqrt(s2 / max(w[0], 1e-30)))
            sig["weak_direction"] = [float(v) for v in dirs[:, 0]]
            sig["sigma_axes_mm"] = [float(math.sqrt(s2 / max(x, 1e-30))) for x in w]
        except np.linalg.LinAlgError:
            dirs = None
            sig["sigma_mm"] = float("nan")
            sig["sigma_weak_mm"] = float("nan")
        # probes along the principal directions: +- max(2 sigma_i, 0.5 mm), and the weak
        # direction at +- 2, 5 mm
        if dirs is not None:
            probes = []
            for i in range(6):
                a = max(2.0 * sig["sigma_axes_mm"][i], 0.5)
                probes += [a * dirs[:, i], -a * dirs[:, i]]
            for a in (2.0, 5.0):
                probes += [a * dirs[:, 0], -a * dirs[:, 0]]
            xp = torch.as_tensor(np.array(probes), dtype=torch.float64, device=volume.device)
            rp = prob.residuals(xp).double()
            costs = 0.5 * (rp ** 2).sum(1)
            best = float(costs.min())
            sig["probe_gain"] = float(max(cost0 - best, 0.0) / max(cost0, 1e-12))
            ib = int(costs.argmin())
            sig["probe_best_twist"] = [float(v) for v in probes[ib]]
        else:
            rp = None
            sig["probe_gain"] = float("nan")
        if n_v > 1:
            sig["views"] = _view_signals(prob, r0, jac, rp, per_view, floors, gs)
    corners = volume.corners_ras()
    if init_ct_to_camera is not None:
        init = np.asarray(init_ct_to_camera, float)
        sig["moved_mm"] = _box_corner_distance(init, pose, corners)
        sig["stayed"] = bool(sig["moved_mm"] < 1e-3)
    if history:
        last = max(h.get("level", 0) for h in history)
        its = [h.get("iteration", 0) for h in history if h.get("level", 0) == last]
        sig["iterations_last_level"] = int(max(its) if its else 0)
        if iterations:
            sig["iterations_capped"] = bool(sig["iterations_last_level"] >= int(iterations))
    if metrics and "view_disagreement_mm" in metrics:
        sig["view_disagreement_mm"] = float(metrics["view_disagreement_mm"])
    sig["n_views"] = len(views)
    sig["similarity_measure"] = similarity
    if detector:
        sig["detector_sigma_px"] = float(detector["sigma_px"])
        sig["detector_slope"] = [float(k) for k in detector["slope"]]
    return sig


#: a result whose probes (``probe_gain``) find a pose with a ``1 - NCC`` lower by this
#: fraction or more is ``failed``: the optimiser stopped short of the similarity's optimum.
#: Chosen on the shipped CT's rows of ``benchmarks/fluoro_quality.py`` (no success of the
#: 148 plain or polished single-view results there reaches it; 17 of its 32 failures do);
#: the ``crop2mm`` CT's rows are the held-out check (``fluoro_quality.md``). The probes are
#: deterministic renders, so a converged result has a gain of exactly 0. Applied only to a
#: pose an optimiser returned (``history`` given): the exact true pose, for one, is not at
#: the similarity's optimum (detector blur biases it) and must not be ``failed``.
PROBE_FAIL_GAIN = 1e-3


def features(sig: Dict[str, object]) -> np.ndarray:
    """The regression features of :data:`FEATURES` from a signals dict (NaN where missing)."""
    def f(name, default=float("nan")):
        v = sig.get(name, default)
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    def lg(x):
        return math.log(max(x, 1e-9)) if math.isfinite(x) else float("nan")

    return np.array([lg(f("cost_ratio")), lg(f("noise_floor")), f("probe_gain"),
                     math.log(max(f("view_disagreement_mm", 0.0), 0.05) / 0.05)])


# -- verdict -------------------------------------------------------------------------------
def quality_from_signals(sig: Dict[str, object], model: Optional[QualityModel] = None,
                         threshold_mm: float = 1.0) -> Quality:
    """The :class:`Quality` of a signals dict under ``model`` (default: the calibration
    given, else :func:`default_model` of the signals)."""
    model = model or default_model(sig)
    reasons: List[str] = []
    feats = features(sig)
    bad = [n for n, v in zip(FEATURES, feats) if not math.isfinite(float(v))]
    feats = np.where(np.isfinite(feats), feats, 0.0)
    log_est = model.predict_log(feats)
    est = float(math.exp(min(max(log_est, -10.0), 10.0)))
    lo = est * math.exp(model.resid_q[0])
    hi = est * math.exp(model.resid_q[1])
    verdict = "ok"
    if est >= model.fail_mm:
        verdict = "failed"
        reasons.append(f"estimated mTRE {est:.2f} mm is at or above {model.fail_mm:.2f} mm, "
                       f"where errors of {threshold_mm:g} mm and more begin (calibration)")
    elif est >= model.doubt_mm:
        verdict = "doubtful"
        reasons.append(f"estimated mTRE {est:.2f} mm is near the failure level "
                       f"{model.fail_mm:.2f} mm")
    pg = float(sig.get("probe_gain", float("nan")))
    # only for a pose an optimiser returned (its history given): any other pose, even a
    # perfect one, need not sit at the similarity's optimum
    if math.isfinite(pg) and pg >= PROBE_FAIL_GAIN and "iterations_last_level" in sig:
        verdict = "failed"
        reasons.append(f"a nearby pose fits the X-ray better (1 - NCC {100 * pg:.1f} % lower "
                       "at a probe): the optimiser stopped short of the optimum")
    cr = float(sig.get("cost_ratio", float("nan")))
    if math.isfinite(cr) and cr > 1.5:
        reasons.append(f"the similarity at the result is below what correct poses reach "
                       f"(1 - NCC is {cr:.1f} x the image's noise floor)")
    if sig.get("iterations_capped"):
        reasons.append("the optimiser hit its iteration limit")
    if float(sig.get("view_disagreement_mm", 0.0) or 0.0) > 2.0:
        reasons.append(f"the views disagree by {float(sig['view_disagreement_mm']):.1f} mm")
    if sig.get("stayed"):
        verdict = "doubtful" if verdict == "ok" else verdict
        reasons.append("the pose stayed at its start")
    if bad:
        if verdict == "ok":
            verdict = "doubtful"
        reasons.append("signal(s) could not be computed: " + ", ".join(bad))
    if verdict == "ok":
        reasons = []
    sig = dict(sig)
    sig["model"] = model.source
    return Quality(verdict, {"mtre_mm": est}, {"mtre_mm": [lo, hi]}, reasons, sig)


def fit_model(feature_rows: Sequence[np.ndarray], mtre_mm: Sequence[float],
              source: str = "fitted", threshold_mm: float = 1.0, ridge: float = 0.1,
              prior: Optional[QualityModel] = None, max_false_flag: float = 0.05) -> QualityModel:
    """Least squares of log true mTRE on the features (ridge towards ``prior``), residual
    10th/90th percentiles as the interval, and the ``failed`` threshold on the estimate:
    the lowest that flags at most ``max_false_flag`` of the true successes (never below
    ``threshold_mm``); ``doubtful`` from 0.7 of it."""
    X = np.asarray(feature_rows, float)
    y = np.log(np.maximum(np.asarray(mtre_mm, float), 1e-3))
    X = np.where(np.isfinite(X), X, 0.0)
    prior = prior or DEFAULT_MODEL
    p = X.shape[1]
    A = np.c_[np.ones(len(X)), X]
    w0 = np.r_[prior.intercept, prior.coef]
    reg = ridge * len(X) * np.diag([0.0] + [1.0] * p)
    w = np.linalg.solve(A.T @ A + reg, A.T @ y + reg @ w0)
    pred = A @ w
    res = y - pred
    q = [float(np.quantile(res, 0.1)), float(np.quantile(res, 0.9))] if len(res) >= 5 else [-0.8, 0.8]
    est = np.exp(pred)
    ok = np.asarray(mtre_mm, float) < threshold_mm
    fail_mm = threshold_mm
    if ok.any():
        cand = sorted(set(np.round(est[ok], 4)))
        allowed = [c for c in cand if (est[ok] >= c).mean() <= max_false_flag]
        if allowed:
            fail_mm = max(threshold_mm * 0.5, min(allowed))
    return QualityModel(list(map(float, w[1:])), float(w[0]), q, float(fail_mm),
                        float(0.7 * fail_mm), source, int(len(X)))


def assess(volume, views, ct_to_camera, init_ct_to_camera=None, history=None,
           iterations: Optional[int] = None, metrics: Optional[dict] = None,
           model: Optional[QualityModel] = None, threshold_mm: float = 1.0,
           similarity: str = "ncc", drr_method: str = "trilinear",
           n_samples: Optional[int] = None, detector: Optional[dict] = None) -> Quality:
    """The :class:`Quality` of one FluoroReg pose (module doc); any method's result.

    ``volume``: :class:`~FluoroRegLib.drr.DRRVolume`; ``views``: the
    :class:`~FluoroRegLib.refine.XRayView` list; ``ct_to_camera``: the result (view 0);
    ``init_ct_to_camera``, ``history``, ``iterations`` (the per-level cap) and
    ``metrics`` (e.g. ``view_disagreement_mm``) add signals when known. Never NaN; a
    pose that cannot be assessed is ``doubtful`` (or ``failed`` when not finite).
    """
    try:
        pose = np.asarray(ct_to_camera, float)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            return Quality("failed", reasons=["the pose is not a finite 4x4 matrix"])
        sig = measure_signals(volume, views, pose, init_ct_to_camera, history, iterations,
                              similarity, metrics, drr_method, n_samples, detector)
    except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
        return Quality("doubtful", reasons=[f"quality could not be computed: {exc}"])
    return quality_from_signals(sig, model, threshold_mm)


#: a view whose ``1 - NCC`` at the joint pose is this many times its own noise floor or
#: more does not fit the pose: correct single-view poses end below it (the polished
#: successes of ``benchmarks/fluoro_quality.py``); on correct two-view results both views
#: stay at 1.0-1.3, and a patient motion of 2-4 mm / 1-3 deg between the exposures puts
#: at least one view above it (``benchmarks/results/fluoro_view_quality.md``)
VIEW_FIT_FAIL_RATIO = 1.5


def view_qualities(case: Quality, n_views: int) -> List[Quality]:
    """One :class:`Quality` per view of a multi-view result, from the case's own signals
    (no render more: :func:`measure_signals` keeps each view's share of the joint renders
    in ``signals["views"]``).

    The views share one pose, so each view carries the case's mTRE estimate and interval;
    its verdict is the case's, made ``failed`` when the view itself does not fit the pose
    (its cost ratio at or above :data:`VIEW_FIT_FAIL_RATIO`: for example the patient moved
    between the exposures, or the view's geometry is wrong). A view is not judged alone in
    its own camera: one view cannot fix the depth that the other view gives, so that
    judgement would flag correct joint poses (it flagged the lateral view of every correct
    two-view case it was measured on)."""
    per = case.signals.get("views") if case.signals else None
    if not per or len(per) != n_views:
        return [Quality(case.verdict, dict(case.estimate), dict(case.interval),
                        list(case.reasons), dict(case.signals or {})) for _ in range(n_views)]
    out = []
    for k, v in enumerate(per):
        verdict, reasons = case.verdict, list(case.reasons)
        ratio = float(v.get("cost_ratio", float("nan")))
        if not math.isfinite(ratio):
            verdict = "doubtful" if verdict == "ok" else verdict
            reasons.append(f"view {k + 1}: its fit to the pose could not be computed")
        elif ratio >= VIEW_FIT_FAIL_RATIO:
            verdict = "failed"
            reasons.append(f"view {k + 1} does not fit the pose: 1 - NCC is {ratio:.1f} x its "
                           f"noise floor (correct poses stay below {VIEW_FIT_FAIL_RATIO:g} x; "
                           "did the patient move between the exposures?)")
        sig = dict(v)
        sig.update(view=k + 1, n_views=n_views, case_verdict=case.verdict,
                   model=case.signals.get("model"))
        out.append(Quality(verdict, dict(case.estimate), dict(case.interval),
                           reasons if verdict != "ok" else [], sig))
    return out


def _rank(q: Quality) -> tuple:
    order = {"ok": 0, "doubtful": 1, "failed": 2, "skipped": 3}
    return (order[q.verdict], q.estimate.get("mtre_mm", 1e9))


# -- per-CT calibration from simulated X-rays ----------------------------------------------
def fingerprint(volume, cameras, method: str, options: Optional[dict] = None) -> str:
    """A short hash of the CT (attenuation values and geometry), the cameras, the method
    and its options: the key of a cached calibration."""
    h = hashlib.sha1()
    mu = volume.mu.detach().cpu().numpy()
    h.update(np.ascontiguousarray(mu[::2, ::2, ::2]).tobytes())
    h.update(np.asarray(volume.ijk_to_ras, float).tobytes())
    h.update(str(mu.shape).encode())
    for cam in cameras:
        h.update(json.dumps(cam.to_dict(), sort_keys=True).encode())
    h.update(method.encode())
    h.update(json.dumps(options or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where calibrations are cached (``$SURGREG_CACHE`` or ``~/.cache/surgreg``)."""
    root = os.environ.get("SURGREG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "surgreg")
    return Path(root) / "fluoro_quality"


def calibrate(volume, camera, ct_to_camera, method: str = "ncc", options: Optional[dict] = None,
              n_cases: int = 12, seed: int = 0, mtre_range_mm=(5.0, 40.0),
              photons: float = 2e4, use_cache: bool = True, progress=None,
              cancel=None, polish: bool = True) -> QualityModel:
    """A :class:`QualityModel` for THIS CT and X-ray geometry from simulated perturbations.

    ``n_cases`` X-rays are simulated from ``volume`` (SYNTHETIC: DRR + Poisson noise and
    blur, :func:`FluoroRegLib.simulate.xray_effects`) at poses jittered around
    ``ct_to_camera`` (about 5 deg / 10 mm), each registered with ``method`` from a start
    whose mTRE lies in ``mtre_range_mm`` (at and beyond the capture range); the signals
    and true mTRE of these registrations refit the model (ridge towards
    :data:`DEFAULT_MODEL`) and the ``failed`` threshold. Cached on disk by
    :func:`fingerprint` (plus ``n_cases``, ``seed``): a second call is instant.
    """
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.progress import check_cancel, report  # noqa: PLC0415

    from .drr import render_drr  # noqa: PLC0415
    from .methods import METHODS  # noqa: PLC0415
    from .refine import XRayView  # noqa: PLC0415
    from .simulate import mtre_np, perturb_pose, random_initial_pose, xray_effects  # noqa: PLC0415

    options = dict(options or {})
    key = f"{fingerprint(volume, [camera], method, options)}-n{n_cases}-s{seed}" + \
        ("-p" if polish else "")
    path = cache_dir() / f"{key}.json"
    if use_cache and path.is_file():
        try:
            return QualityModel.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError):
            pass
    rng = np.random.default_rng(seed)
    center = volume.center_ras()
    pts = probe_points_ras(volume)
    feats, errs = [], []
    for i in range(int(n_cases)):
        check_cancel(cancel, "FluoroReg quality calibration")
        truth = perturb_pose(ct_to_camera, center, rng.normal(0, 3.0, 3), rng.normal(0, 6.0, 3))
        with torch.no_grad():
            L = render_drr(volume, camera, truth, method="siddon")[0].cpu().numpy()
        img = xray_effects(L, rng, photons=photons)
        init = random_initial_pose(truth, center, pts, rng, mtre_range_mm, (3.0, 15.0))
        view = [XRayView(img, camera)]
        res = METHODS[method](volume, view, init, **options)
        det = None
        if polish:  # judge what the pipeline returns: the polished result
            from .detector import polished_result  # noqa: PLC0415

            res, det = polished_result(volume, view, res, cancel=cancel)
        sig = measure_signals(volume, view, res.ct_to_camera, init, res.history,
                              options.get("iterations", 30), metrics=res.metrics,
                              detector=det)
        feats.append(features(sig))
        errs.append(mtre_np(res.ct_to_camera, truth, pts))
        report(progress, (i + 1) / n_cases, f"quality calibration: case {i + 1}/{n_cases}")
    model = fit_model(feats, errs, source=f"calibrated on {n_cases} simulated X-rays of this CT",
                      ridge=0.5, prior=DEFAULT_POLISHED_MODEL if polish else DEFAULT_MODEL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model.to_dict(), indent=2))
    except OSError:
        pass
    return model


def result_quality_dict(result) -> dict:
    """JSON fields of a judged result: ``quality`` (case), ``view_quality`` (per view),
    ``retry`` (attempts, when a retry ran)."""
    out = {}
    q = getattr(result, "quality", None)
    if q is not None:
        out["quality"] = q.to_dict()
        out["view_quality"] = [v.to_dict() for v in getattr(result, "view_qualities", [q])]
        if getattr(result, "retry", None):
            out["retry"] = result.retry
    return out
