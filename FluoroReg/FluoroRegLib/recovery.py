"""Second chances for a FluoroReg result: a detector-model polish and restarts.

Why a polish. On the synthetic benchmark the results that end at 1.0-1.7 mm mTRE are
shifted along the central ray (away from the source) and registering from the TRUE pose
ends at the same place. The shift comes from the detector: blur acts on the X-ray
*intensity* (scintillator light spread, focal spot), before the ``-log``; because
``-log(mean(exp(-L))) < mean(L)`` the edges of attenuating structures move inwards, the
anatomy looks smaller, and a plain DRR (line integrals ``L``, no blur) matches it best
when the CT is moved away from the source. Without that blur the same cases register to
< 0.1 mm from the truth (``benchmarks/results/fluoro_quality.md``).

:func:`polish` models the detector: the DRR becomes ``-log(G_sigma * exp(-k L))`` with
``k`` the slope of the X-ray on the DRR (the X-ray's units per DRR unit, least squares at
the current pose) and ``sigma`` (detector pixels) a free parameter solved jointly with the
pose (Levenberg-Marquardt over 7 unknowns at the finest level, forward differences; the
``sigma`` column needs no new render). ``sigma = 0`` is the plain DRR, so the polish can
only explain the image at least as well. It is skipped (``None``) when the X-ray does not
look like ``-log`` intensities (slope not positive).

:func:`recover` is what runs for a case still judged ``failed`` or ``doubtful`` after the
polish: restarts of the method from other starts (+- along the weakest direction of
``J^T J`` at two step sizes, the result rolled about the central ray); the two ends with
the best similarity are polished and judged; the best verdict wins and every attempt is
reported. :func:`assess_and_retry` is the older retry (+-5 mm along the weak direction,
no polish), kept for its callers.

Frames: ``ct_to_camera`` maps CT RAS mm to the camera of view 0 (source at the origin,
+z towards the detector); twists rotate about the CT centre (as in :mod:`.refine`).
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import numpy as np


def _blur(img, sigma: float):
    """Separable Gaussian blur (pixels) of (B, H, W), replicate padding; sigma <= 0.05:
    unchanged."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    if sigma <= 0.05:
        return img
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(img[:, None], (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1))[:, 0]


def detector_drr(line_integrals, k: float, sigma: float):
    """The DRR as the detector records it: ``-log(G_sigma * exp(-k L)) / k`` for (B, H, W)
    line integrals (intensity-domain blur of ``sigma`` pixels)."""
    import torch  # noqa: PLC0415

    if sigma <= 0.05:
        return line_integrals
    inten = torch.exp(-k * line_integrals.double())
    return (-torch.log(_blur(inten, sigma).clamp_min(1e-300)) / k).to(line_integrals.dtype)


def intensity_slope(drr, image) -> float:
    """Least-squares slope of the X-ray on the DRR (X-ray units per DRR unit)."""
    d = np.asarray(drr, float).ravel()
    x = np.asarray(image, float).ravel()
    d = d - d.mean()
    return float(np.dot(d, x - x.mean()) / max(np.dot(d, d), 1e-30))


class _DetectorProblem:
    """Residuals of all views for a batch of 7-vectors (twist about the CT centre, sigma
    in pixels) at full detector resolution."""

    def __init__(self, volume, views, init, similarity, drr_method, n_samples, slopes):
        import torch  # noqa: PLC0415

        from .refine import _features  # noqa: PLC0415

        dev = volume.device
        self.volume, self.views = volume, views
        self.similarity, self.drr_method, self.n_samples = similarity, drr_method, n_samples
        center = (init @ np.r_[volume.center_ras(), 1.0])[:3]
        c = torch.eye(4, dtype=torch.float64)
        c[:3, 3] = torch.as_tensor(center)
        self.c, self.c_inv = c.to(dev), torch.linalg.inv(c).to(dev)
        self.init = torch.as_tensor(init, dtype=torch.float64, device=dev)
        self.rel = [torch.as_tensor(v.camera0_to_view, dtype=torch.float64, device=dev)
                    for v in views]
        self.targets = [_features(v.image.to(dev)[None], similarity) for v in views]
        self.slopes = slopes
        self.center_cam = center

    def pose(self, twist):
        from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415

        return self.c @ se3_exp(twist.double()) @ self.c_inv @ self.init

    def line_integrals(self, twist) -> List:
        """Per view: (B, H, W) plain DRRs of the twists (B, 6)."""
        import torch  # noqa: PLC0415

        from .drr import render_drr  # noqa: PLC0415

        pose = self.pose(twist)
        with torch.no_grad():
            return [render_drr(self.volume, v.camera, (rel @ pose).float(),
                               method=self.drr_method, n_samples=self.n_samples)
                    for v, rel in zip(self.views, self.rel)]

    def residuals_from(self, drrs, sigmas):
        import torch  # noqa: PLC0415

        from .refine import similarity_residuals  # noqa: PLC0415

        out = []
        for drr, target, k in zip(drrs, self.targets, self.slopes):
            model = torch.stack([detector_drr(drr[i:i + 1], k, float(s))[0]
                                 for i, s in enumerate(sigmas)])
            out.append(similarity_residuals(model, target, self.similarity)
                       / math.sqrt(len(self.views)))
        return torch.cat(out, dim=1).double()

    def residuals(self, x):
        x = x.double()
        sig = x[:, 6].clamp(0.0, 4.0).tolist()
        return self.residuals_from(self.line_integrals(x[:, :6]), sig)

    def jacobian(self, x, steps):
        import torch  # noqa: PLC0415

        x = x.double()
        b = x.shape[0]
        pert = x[:, None, :6] + torch.diag(steps[:6])[None]
        allx = torch.cat([x[:, None, :6], pert], dim=1).reshape(-1, 6)
        drrs = self.line_integrals(allx)
        sig = x[:, 6].clamp(0.0, 4.0)
        sig_rep = sig.repeat_interleave(7).tolist()
        r = self.residuals_from(drrs, sig_rep).reshape(b, 7, -1)
        base = [d.reshape(b, 7, *d.shape[1:])[:, 0] for d in drrs]
        hs = float(steps[6])
        r_s = self.residuals_from(base, (sig + hs).clamp(0.0, 4.0).tolist())
        cols = (r[:, 1:] - r[:, :1]) / steps[None, :6, None]
        col_s = (r_s - r[:, 0]) / hs
        return torch.cat([cols, col_s[:, None]], dim=1).transpose(1, 2)


def polish(volume, views, ct_to_camera, similarity: str = "ncc", iterations: int = 15,
           sigma0: float = 0.5, drr_method: str = "trilinear", n_samples=None,
           cancel=None) -> Optional[Dict[str, object]]:
    """Refine ``ct_to_camera`` (view 0) with the detector model of the module doc.

    Returns ``{"ct_to_camera", "sigma_px", "slope", "similarity" (detector-model
    similarity at the result, mean over views), "similarity_plain_start",
    "similarity_model_start", "shift_mm" (RMS motion of the CT box corners),
    "iterations", "time_s"}``, or ``None`` when the X-rays do not behave like ``-log``
    intensities of the DRR (slope <= 0 or not finite) or the polish made the similarity
    worse.
    """
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.optimize import levenberg_marquardt  # noqa: PLC0415
    from SurgicalReg2D3DLib.progress import check_cancel  # noqa: PLC0415

    from .refine import check_pose, fd_steps, prepare_views  # noqa: PLC0415

    t0 = time.perf_counter()
    views = prepare_views(views)
    pose = check_pose(ct_to_camera, "ct_to_camera")
    if n_samples is None:  # as the registration's finest level (sample_density 1)
        n_samples = max(16, int(max(volume.shape)))
    slopes = []
    rels = [np.asarray(v.camera0_to_view, float) for v in views]
    from .drr import render_drr  # noqa: PLC0415

    with torch.no_grad():
        for v, rel in zip(views, rels):
            drr = render_drr(volume, v.camera, rel @ pose, method=drr_method,
                             n_samples=n_samples)[0]
            slopes.append(intensity_slope(drr.cpu().numpy(), v.image.cpu().numpy()))
    if not all(np.isfinite(s) and s > 1e-3 for s in slopes):
        return None
    prob = _DetectorProblem(volume, views, pose, similarity, drr_method, n_samples, slopes)
    steps6 = fd_steps(views[0].camera, prob.center_cam, volume.device)
    steps = torch.cat([steps6, torch.tensor([0.05], dtype=torch.float64,
                                            device=volume.device)])
    x0 = torch.zeros(1, 7, dtype=torch.float64, device=volume.device)
    x0[0, 6] = float(sigma0)

    def callback(it, x, cost):
        check_cancel(cancel, "FluoroReg polish")
        return False

    with torch.no_grad():
        r_plain = prob.residuals_from(prob.line_integrals(x0[:, :6]), [0.0])
        r_start = prob.residuals(x0)
        res = levenberg_marquardt(prob.residuals, x0, max_iter=int(iterations),
                                  jacobian=lambda x: prob.jacobian(x, steps),
                                  tol_step=1e-6, tol_cost=1e-5, callback=callback)
        x = res.x
        r_end = prob.residuals(x)
        new_pose = prob.pose(x[:, :6])[0].cpu().numpy()
    sim_plain0 = 1.0 - 0.5 * float((r_plain ** 2).sum())
    sim_start = 1.0 - 0.5 * float((r_start ** 2).sum())
    sim_end = 1.0 - 0.5 * float((r_end ** 2).sum())
    if not np.isfinite(sim_end) or sim_end < sim_plain0 - 1e-9:
        return None
    corners = volume.corners_ras()
    p = np.c_[corners, np.ones(len(corners))]
    shift = float(np.sqrt((np.linalg.norm((p @ new_pose.T - p @ pose.T)[:, :3], axis=1) ** 2)
                          .mean()))
    return {"ct_to_camera": new_pose, "sigma_px": float(x[0, 6].clamp(0.0, 4.0)),
            "slope": [float(s) for s in slopes], "similarity": sim_end,
            "similarity_plain_start": sim_plain0, "similarity_model_start": sim_start,
            "shift_mm": shift, "iterations": int(getattr(res, "iterations", 0) or 0),
            "time_s": time.perf_counter() - t0}


def modelled_problem(prob, detector: dict):
    """A copy of a :class:`FluoroRegLib.refine._Problem` whose DRRs go through the
    detector model (``detector``: ``{"slope": [k per view], "sigma_px": s}``)."""
    from .refine import _Problem  # noqa: PLC0415

    class _Modelled(_Problem):
        def residuals(self, xi):
            import torch  # noqa: PLC0415

            from .drr import render_drr  # noqa: PLC0415
            from .refine import similarity_residuals  # noqa: PLC0415

            pose = self.pose(xi)
            out = []
            for rel, cam, target, k in zip(self.rel, self.cameras, self.targets,
                                           self.det_slopes):
                drr = render_drr(self.volume, cam, (rel @ pose).to(torch.float32),
                                 method=self.drr_method, n_samples=self.n_samples)
                drr = detector_drr(drr, k, self.det_sigma)
                out.append(similarity_residuals(drr, target, self.similarity)
                           / np.sqrt(self.n_views))
            return torch.cat(out, dim=1).to(xi.dtype)

    obj = _Modelled.__new__(_Modelled)
    obj.__dict__.update(prob.__dict__)
    obj.det_slopes = [float(k) for k in detector["slope"]]
    obj.det_sigma = float(detector["sigma_px"])
    return obj


def polished_result(volume, views, result, cancel=None, **kw):
    """``(result', detector)``: a copy of a :class:`~FluoroRegLib.refine.RegistrationResult`
    moved by :func:`polish` (``metrics`` gain ``polish_shift_mm``,
    ``detector_sigma_px``; ``similarity`` is the detector-model NCC), and the detector
    dict for :func:`FluoroRegLib.quality.assess`; ``(result, None)`` when the polish did
    not apply."""
    import copy  # noqa: PLC0415

    p = polish(volume, views, result.ct_to_camera, cancel=cancel, **kw)
    if p is None:
        return result, None
    out = copy.copy(result)
    out.metrics = dict(result.metrics)
    out.history = list(result.history)
    pose = np.asarray(p["ct_to_camera"], float)
    out.ct_to_camera = pose
    out.views_ct_to_camera = [np.asarray(v.camera0_to_view, float) @ pose for v in views]
    out.similarity = float(p["similarity"])
    out.metrics["polish_shift_mm"] = float(p["shift_mm"])
    out.metrics["detector_sigma_px"] = float(p["sigma_px"])
    out.time_s = float(result.time_s) + float(p["time_s"])
    return out, {"slope": p["slope"], "sigma_px": p["sigma_px"]}


def moved_pose(volume, pose, twist) -> np.ndarray:
    """``pose`` moved by a twist (rotation rad, translation mm) about the CT centre."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415

    c = np.eye(4)
    c[:3, 3] = (pose @ np.r_[volume.center_ras(), 1.0])[:3]
    d = se3_exp(torch.as_tensor(np.asarray(twist, float), dtype=torch.float64)).numpy()
    return c @ d @ np.linalg.inv(c) @ pose


def restart_starts(volume, pose, signals: dict, init=None, steps_mm=(5.0, 15.0),
                   roll_deg: float = 8.0) -> List[tuple]:
    """Named start poses for a restart: the result +- ``steps_mm`` along the weakest
    direction of ``J^T J`` (unit RMS displacement, mm), the result rolled +-``roll_deg``
    about the central ray through the CT centre, and the probe's best nearby pose."""
    starts = []
    wd = signals.get("weak_direction")
    if wd is not None and np.all(np.isfinite(wd)):
        for a in steps_mm:
            starts += [(f"result + {a:g} mm weak", moved_pose(volume, pose, a * np.asarray(wd))),
                       (f"result - {a:g} mm weak", moved_pose(volume, pose, -a * np.asarray(wd)))]
    if roll_deg:
        c = (pose @ np.r_[volume.center_ras(), 1.0])[:3]
        axis = c / max(np.linalg.norm(c), 1e-9)
        for sgn in (1, -1):
            tw = np.r_[sgn * np.deg2rad(roll_deg) * axis, 0.0, 0.0, 0.0]
            starts.append((f"result rolled {sgn * roll_deg:+g} deg", moved_pose(volume, pose, tw)))
    return starts


def recover(volume, views, result, quality, init_ct_to_camera, method: str,
            options: Optional[dict] = None, model=None, polish: bool = True,
            starts: Optional[List[tuple]] = None, n_judge: int = 2, cancel=None):
    """Restarts for a result judged ``doubtful`` or ``failed`` (``quality``): the method
    (its finest two pyramid levels for the intensity methods) from each of
    :func:`restart_starts`; the ``n_judge`` ends with the best similarity are polished
    (``polish``) and judged (the others are reported with their similarity only). The
    best verdict, then the smallest estimate, wins. The spread of the judged ends that are
    not ``failed`` and of the original when it is not ``failed`` (``restart_spread_mm``,
    RMS over the CT box corners) is a multi-start disagreement signal: above 1 mm the kept
    verdict is at best ``doubtful``.

    Returns ``(quality, result, info)``; ``info["attempts"]`` lists every attempt (the
    original first: start, verdict, estimate, similarity, time), ``info["chosen"]`` the
    index of the kept one. The kept quality's ``signals["attempts"]`` repeats them.
    """
    from .logic import METHODS  # noqa: PLC0415
    from .quality import _rank, assess  # noqa: PLC0415

    options = dict(options or {})
    its = options.get("iterations", 30)
    pose = np.asarray(result.ct_to_camera, float)
    info = {"attempts": [{"start": "original", "verdict": quality.verdict,
                          "estimate": dict(quality.estimate),
                          "similarity": float(result.similarity)}], "chosen": 0}
    starts = starts if starts is not None else restart_starts(volume, pose, quality.signals,
                                                              init_ct_to_camera)
    retry_opts = dict(options)
    levels = list(retry_opts.get("levels", (4, 2, 1)))
    if method in ("ncc", "gradncc", "ncc-adam", "gradncc-adam") and len(levels) > 2:
        retry_opts["levels"] = tuple(levels[-2:])
    runs = []
    for name, start in starts:
        t0 = time.perf_counter()
        try:
            r2 = METHODS[method](volume, views, start, cancel=cancel, **retry_opts)
        except (ValueError, RuntimeError) as exc:  # a restart that cannot run is reported
            info["attempts"].append({"start": name, "verdict": "skipped", "error": str(exc)})
            continue
        info["attempts"].append({"start": name, "verdict": "not judged",
                                 "similarity": float(r2.similarity),
                                 "ct_to_camera": np.asarray(r2.ct_to_camera).tolist(),
                                 "time_s": time.perf_counter() - t0})
        runs.append((len(info["attempts"]) - 1, r2, start))
    best_q, best_r = quality, result
    ends = [pose] if quality.verdict != "failed" else []
    runs.sort(key=lambda t: -t[1].similarity if np.isfinite(t[1].similarity) else np.inf)
    for idx, r2, start in runs[:max(int(n_judge), 0)]:
        t0 = time.perf_counter()
        det = None
        if polish:
            r2, det = polished_result(volume, views, r2, cancel=cancel)
        q2 = assess(volume, views, r2.ct_to_camera, start, r2.history, its, r2.metrics,
                    model, detector=det)
        a = info["attempts"][idx]
        a.update({"verdict": q2.verdict, "estimate": dict(q2.estimate),
                  "similarity": float(r2.similarity),
                  "ct_to_camera": np.asarray(r2.ct_to_camera).tolist(),
                  "time_s": a["time_s"] + time.perf_counter() - t0})
        if q2.verdict != "failed":
            ends.append(np.asarray(r2.ct_to_camera, float))
        if _rank(q2) < _rank(best_q):
            best_q, best_r = q2, r2
            info["chosen"] = idx
    spread = 0.0
    if len(ends) > 1:
        corners = volume.corners_ras()
        p = np.c_[corners, np.ones(len(corners))]
        spread = max(float(np.sqrt((np.linalg.norm((p @ a.T - p @ b.T)[:, :3], axis=1) ** 2)
                                   .mean())) for a in ends for b in ends)
    best_q.signals["retried"] = True
    best_q.signals["attempts"] = info["attempts"]
    best_q.signals["restart_spread_mm"] = spread
    if spread > 1.0 and best_q.verdict == "ok":
        best_q.verdict = "doubtful"
        best_q.reasons.append(f"restarts that were not judged failed end {spread:.1f} mm apart "
                              "(multi-start disagreement)")
    if info["chosen"]:
        best_q.reasons.append(f"retried from {info['attempts'][info['chosen']]['start']}: "
                              f"better than the original ({quality.verdict}, "
                              f"{quality.estimate.get('mtre_mm', float('nan')):.2f} mm)")
    else:
        best_q.reasons.append(f"retried from {len(info['attempts']) - 1} other starts: no "
                              "better result")
    return best_q, best_r, info


def assess_and_retry(volume, views, result, init_ct_to_camera, method: str = "ncc",
                     options: Optional[dict] = None, model=None,
                     step_mm: float = 5.0, progress=None, cancel=None):
    """Assess a :class:`~FluoroRegLib.refine.RegistrationResult`; when it is ``failed``,
    retry the registration (``method`` from :data:`FluoroRegLib.logic.METHODS`, its
    finest two pyramid levels) from the result moved by +-``step_mm`` along the weakest
    direction of ``J^T J`` (single view: mostly the central ray), and from the initial
    pose moved the same way. The best verdict (then the smallest estimate) wins.

    Returns ``(quality, result, info)``; ``info["attempts"]`` holds each attempt's start,
    verdict, estimate and similarity (the original first), ``info["chosen"]`` the index
    of the kept one. The kept quality's ``signals["attempts"]`` repeats them.
    """
    from .logic import METHODS  # noqa: PLC0415
    from .quality import _rank, assess  # noqa: PLC0415
    from .refine import check_pose  # noqa: PLC0415

    options = dict(options or {})
    its = options.get("iterations", 30)
    q = assess(volume, views, result.ct_to_camera, init_ct_to_camera, result.history, its,
               result.metrics, model)
    info = {"attempts": [{"start": "original", "verdict": q.verdict,
                          "estimate": dict(q.estimate), "similarity": result.similarity}],
            "chosen": 0}
    if q.verdict != "failed" or "weak_direction" not in q.signals:
        return q, result, info
    twist = np.asarray(q.signals["weak_direction"], float)
    pose = check_pose(result.ct_to_camera, "result ct_to_camera")
    from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415
    import torch  # noqa: PLC0415

    def moved(base, a):
        c = np.eye(4)
        c[:3, 3] = (base @ np.r_[volume.center_ras(), 1.0])[:3]
        d = se3_exp(torch.as_tensor(a * twist, dtype=torch.float64)).numpy()
        return c @ d @ np.linalg.inv(c) @ base

    retry_opts = dict(options)
    levels = list(retry_opts.get("levels", (4, 2, 1)))
    if method in ("ncc", "gradncc", "ncc-adam", "gradncc-adam") and len(levels) > 2:
        retry_opts["levels"] = tuple(levels[-2:])
    starts = [("result + weak", moved(pose, step_mm)), ("result - weak", moved(pose, -step_mm))]
    best_q, best_r = q, result
    for name, start in starts:
        try:
            r2 = METHODS[method](volume, views, start, cancel=cancel, **retry_opts)
        except (ValueError, RuntimeError) as exc:  # a retry that cannot run is reported
            info["attempts"].append({"start": name, "verdict": "skipped", "error": str(exc)})
            continue
        q2 = assess(volume, views, r2.ct_to_camera, start, r2.history, its, r2.metrics, model)
        info["attempts"].append({"start": name, "verdict": q2.verdict,
                                 "estimate": dict(q2.estimate), "similarity": r2.similarity})
        if _rank(q2) < _rank(best_q):
            best_q, best_r = q2, r2
            info["chosen"] = len(info["attempts"]) - 1
    best_q.signals["retried"] = True
    best_q.signals["attempts"] = info["attempts"]
    if info["chosen"]:
        best_q.reasons.append(f"retried from {info['attempts'][info['chosen']]['start']}: "
                              f"better than the original ({q.verdict}, "
                              f"{q.estimate.get('mtre_mm', float('nan')):.2f} mm)")
    else:
        best_q.reasons.append("retried from +-%g mm along the weak direction: no better "
                              "result" % step_mm)
    return best_q, best_r, info
