"""Second chances for a FluoroReg result, and the quality step that gives them.

:func:`assess_result` (what ``logic.register_arrays`` calls with ``quality=True``) judges a
result (:func:`.quality.assess`), polishes it with the detector model
(:func:`.detector.polish`) when asked or when it is not judged
``ok``, and runs :func:`recover` for what is still not ``ok``.

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

import time
from typing import List, Optional

import numpy as np

from .detector import polished_result


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
    from .methods import METHODS  # noqa: PLC0415
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
    retry the registration (``method`` from :data:`FluoroRegLib.methods.METHODS`, its
    finest two pyramid levels) from the result moved by +-``step_mm`` along the weakest
    direction of ``J^T J`` (single view: mostly the central ray), and from the initial
    pose moved the same way. The best verdict (then the smallest estimate) wins.

    Returns ``(quality, result, info)``; ``info["attempts"]`` holds each attempt's start,
    verdict, estimate and similarity (the original first), ``info["chosen"]`` the index
    of the kept one. The kept quality's ``signals["attempts"]`` repeats them.
    """
    from .methods import METHODS  # noqa: PLC0415
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


def assess_result(volume, views, init_ct_to_camera, result, method: str,
                  options: Optional[dict] = None, model=None,
                  retry: bool = True, cancel=None, polish: str = "flagged"):
    """The hook :func:`FluoroRegLib.logic.register_arrays` calls: judges ``result`` (per
    case and, with several views, per view) and returns the kept result with ``.quality``
    (case), ``.view_qualities`` (list, one per view) and ``.retry`` (the attempts, or None).

    ``polish``: ``"all"`` polishes every result with the detector model
    (:func:`.detector.polish`, about as long as one pyramid level),
    ``"flagged"`` only a result judged ``doubtful`` or ``failed`` without it (with a
    per-CT ``model``: every result, as the calibration judged polished results), ``"off"``
    never. ``retry``: a result still ``failed`` (or ``doubtful``) after that is registered
    again from other starts (:func:`recover`); the better verdict wins and every attempt
    is reported. ``model``: a per-CT :class:`.quality.QualityModel`
    (:func:`.quality.calibrate`), None for the default models.
    """
    from .quality import assess, view_qualities  # noqa: PLC0415
    from .refine import prepare_views  # noqa: PLC0415

    if polish not in ("all", "flagged", "off"):
        from SurgicalReg2D3DLib.errors import InputError  # noqa: PLC0415

        raise InputError(f"polish: expected 'all', 'flagged' or 'off', got {polish!r}")
    views = prepare_views(views)
    if model is not None and polish == "flagged":
        polish = "all"  # a per-CT calibration (:func:`.quality.calibrate`) judges polished results
    its = (options or {}).get("iterations", 30)
    kept, det = result, None
    q = None
    if polish == "flagged":
        q = assess(volume, views, result.ct_to_camera, init_ct_to_camera, result.history,
                   its, result.metrics, model)
    if polish == "all" or (q is not None and q.verdict != "ok"):
        kept, det = polished_result(volume, views, result, cancel=cancel)
        q = None
    if q is None:
        q = assess(volume, views, kept.ct_to_camera, init_ct_to_camera, kept.history, its,
                   kept.metrics, model, detector=det)
    retry_info = None
    if retry and q.verdict != "ok":
        q, kept, retry_info = recover(volume, views, kept, q, init_ct_to_camera, method,
                                      options, model, polish=polish != "off", cancel=cancel)
    kept.method = result.method
    for k, v in result.metrics.items():  # keep metrics the method reported
        kept.metrics.setdefault(k, v)
    kept.quality = q
    kept.view_qualities = view_qualities(q, len(views)) if len(views) > 1 else [q]
    kept.retry = retry_info
    return kept
