"""Recovery and the checked loops of the US trust value (:mod:`quality`).

:func:`register_one_checked` registers one frame and judges it (:func:`quality.assess`):
a frame whose start has no overlap with the volume's data is skipped (never registered),
a ``failed`` or unmoved frame is retried from other starts (the previous good frame's
correction, +-4 mm along the plane normal, +-4 mm along the Hessian's weakest direction),
the better verdict (then the higher similarity) wins and the first attempt is reported;
a frame that still fails without having moved is skipped with the reason.
:func:`register_checked` does this for a sequence (in temporal mode a failed frame never
seeds the next one; the sequence's ``ok`` frames give the reference similarity), and
:class:`CheckedLive` for a live stream (a failed frame leaves the last good correction in
place, and says so).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from SurgicalReg2D3DLib.progress import check_cancel, report
from SurgicalReg2D3DLib.quality import Quality, skipped

from .quality import (Calibration, QualityConfig, _normal, _shifted, assess,
                      calibration_for, hessian_signals, reference_of, rejudge)
from .config import FrameResult
from .temporal import check_live_frame

def _attempt_summary(result: FrameResult, q: Quality, how: str) -> dict:
    return {"start": how, "verdict": q.verdict, "lncc": float(result.lncc),
            "estimate": dict(q.estimate), "reasons": list(q.reasons),
            "correction": np.asarray(result.correction).tolist()}


def register_one_checked(method, frame, start, init_correction=None, calib=None,
                         config: Optional[QualityConfig] = None, index: int = 0,
                         tracking: bool = False, previous_correction=None, cancel=None,
                         reference_lncc: Optional[float] = None
                         ) -> Tuple[Optional[FrameResult], Quality]:
    """Register one frame with the checks and retries of :func:`register_checked`.
    Returns ``(result or None when skipped, quality)``."""
    cfg = config or QualityConfig()
    registrar = method.registrar
    frame = np.asarray(frame)
    start = np.asarray(start, dtype=float)
    corr0 = np.eye(4) if init_correction is None else np.asarray(init_correction, float)
    ov0 = float(registrar.overlap((corr0 @ start)[None])[0])
    if ov0 < registrar.config.min_overlap:
        return None, skipped(f"no overlap with the volume at the start pose ({100 * ov0:.0f}% "
                             f"of the fan on the volume's data, need "
                             f"{100 * registrar.config.min_overlap:.0f}%)",
                             overlap_start=ov0)
    res = method(frame[None], start[None], init_corrections=corr0[None], indices=[index],
                 cancel=cancel, tracking=tracking)[0]
    lncc0 = float(res.lncc_start)  # the similarity of the caller's start
    res, q = assess(method, frame, res, calib, cfg, init_correction=corr0,
                    reference_lncc=reference_lncc)
    if not cfg.retry or q.verdict not in ("failed",) and not q.signals.get("unchanged"):
        return res, q
    # Retry from other starts; the better verdict (then the higher similarity) wins.
    tries: List[Tuple[str, np.ndarray]] = []
    if previous_correction is not None:
        tries.append(("the previous good frame's correction",
                      np.asarray(previous_correction, float)))
    base = corr0 @ start
    n = _normal(base)
    for sign in (1.0, -1.0):
        tries.append((f"{sign * cfg.retry_mm:+.0f} mm along the plane normal",
                      _shifted(base, n, sign * cfg.retry_mm) @ np.linalg.inv(start)))
    weak = None
    try:
        weak = hessian_signals(registrar, frame, res.image_to_reference)["weak_direction"]
    except (InputError, GeometryError, np.linalg.LinAlgError):
        pass
    if weak is not None and abs(float(np.dot(weak, n))) < 0.9:  # not the normal again
        for sign in (1.0, -1.0):
            tries.append((f"{sign * cfg.retry_mm:+.0f} mm along the weakest direction",
                          _shifted(np.asarray(res.image_to_reference), weak,
                                   sign * cfg.retry_mm) @ np.linalg.inv(start)))
    first = _attempt_summary(res, q, "given")
    best_res, best_q, best_how = res, q, "given"
    rank = {"ok": 0, "doubtful": 1, "failed": 2, "skipped": 3}
    for how, corr in tries:
        check_cancel(cancel, "US registration")
        if registrar.overlap((corr @ start)[None])[0] < registrar.config.min_overlap:
            continue
        try:
            r = method(frame[None], start[None], init_corrections=corr[None],
                       indices=[index], cancel=cancel)[0]
        except GeometryError:
            continue
        # Judged against the caller's start (its similarity), not the retry's own start.
        r, rq = assess(method, frame, r, calib, cfg, init_correction=corr,
                       reference_lncc=reference_lncc, start_lncc=lncc0)
        if (rank[rq.verdict], -r.lncc) < (rank[best_q.verdict], -best_res.lncc):
            best_res, best_q, best_how = r, rq, how
        if best_q.verdict == "ok":
            break
    if best_how != "given":
        best_q.signals["first_attempt"] = first
        best_q.signals["retried_from"] = best_how
        best_q.reasons.append(f"first attempt {q.verdict} ({'; '.join(q.reasons) or 'no reason'});"
                              f" retried from {best_how}")
    else:
        best_q.signals["retries"] = len(tries)
        best_q.reasons.append(f"retried from {len(tries)} other starts without a better "
                              "result")
    if best_q.signals.get("unchanged") and best_q.verdict == "failed":
        return None, skipped("the registration did not improve the similarity from its "
                             "start (start returned unchanged), also from "
                             f"{len(tries)} other starts", **{
                                 k: v for k, v in best_q.signals.items()
                                 if isinstance(v, (int, float, str, bool))})
    return best_res, best_q


@dataclass
class CheckedFrame:
    """One frame of :func:`register_checked`: its result (``None`` when skipped) and
    quality."""

    index: int
    result: Optional[FrameResult]
    quality: Quality
    seeded_by: Optional[int] = None  # temporal: the frame whose correction started it


def register_checked(method, frames, starts, temporal: bool = True,
                     indices: Optional[Sequence[int]] = None,
                     config: Optional[QualityConfig] = None,
                     calibration: Optional[Calibration] = None,
                     progress=None, cancel=None) -> List[CheckedFrame]:
    """Register frames ``(N, H, W)`` from ``starts`` ``(N, 4, 4)`` with a quality per
    frame (see the module docstring). ``temporal``: frame ``t`` starts from the last
    *good* (not failed, not skipped) frame's correction; a failed frame never seeds the
    next one."""
    cfg = config or QualityConfig()
    frames = np.asarray(frames)
    starts = np.asarray(starts, dtype=float)
    if frames.ndim != 3 or starts.shape != (frames.shape[0], 4, 4):
        raise InputError(f"US frames: expected (N, H, W) frames and (N, 4, 4) poses, got "
                         f"{frames.shape} and {starts.shape}")
    n = frames.shape[0]
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if getattr(method, "registrar", None) is None:  # a method without the shared checker
        from .temporal import register_sequence  # noqa: PLC0415

        plain = register_sequence(method, frames, starts, temporal=temporal, indices=indices,
                                  progress=progress, cancel=cancel)
        return [CheckedFrame(i, r, Quality(verdict="doubtful", reasons=[
            "this method has no registrar to check its results against the volume"]))
            for i, r in zip(indices, plain)]
    calib = calibration or calibration_for(method, starts, cfg, cancel=cancel)
    out: List[CheckedFrame] = []
    good_corr: Optional[np.ndarray] = None
    good_index: Optional[int] = None
    ok_lncc: List[float] = []
    for t in range(n):
        check_cancel(cancel, "US sequence registration")
        init = good_corr if temporal and good_corr is not None else None
        res, q = register_one_checked(
            method, frames[t], starts[t], init_correction=init, calib=calib, config=cfg,
            index=indices[t], tracking=temporal and init is not None,
            previous_correction=good_corr, cancel=cancel,
            reference_lncc=reference_of(ok_lncc, cfg))
        out.append(CheckedFrame(indices[t], res, q, seeded_by=good_index if init is not None
                                else None))
        if res is not None and q.verdict in ("ok", "doubtful"):
            good_corr, good_index = res.correction, indices[t]
        if res is not None and q.verdict == "ok":
            ok_lncc.append(float(res.lncc))
        report(progress, (t + 1) / n, f"frame {indices[t]} ({t + 1}/{n}): {q.verdict}")
    # Frames judged before the sequence's reference existed: judged again against it (a
    # frame that now fails is retried).
    ref = reference_of(ok_lncc, cfg)
    for t, cf in enumerate(out):
        if ref is None or cf.result is None or "reference_lncc" in cf.quality.signals:
            continue
        q2 = rejudge(cf.quality, calib, cfg, ref)
        if q2.verdict == "failed" and cf.quality.verdict != "failed":
            res, q3 = register_one_checked(
                method, frames[t], starts[t], calib=calib, config=cfg, index=cf.index,
                previous_correction=good_corr, cancel=cancel, reference_lncc=ref)
            out[t] = CheckedFrame(cf.index, res, q3, seeded_by=cf.seeded_by)
        else:
            out[t].quality = q2
    return out






class CheckedLive:
    """Live mode with quality: like :class:`temporal.LiveRegistration`, but a frame judged
    ``failed`` (or skipped) does not replace the correction: :attr:`correction` stays the
    last good one, and the returned quality says so."""

    def __init__(self, method, config: Optional[QualityConfig] = None):
        self.method = method
        self.config = config or QualityConfig()
        self.correction = np.eye(4)
        self.good_index: Optional[int] = None
        self.ok_lncc: List[float] = []
        self.count = 0
        self.last: Optional[FrameResult] = None
        self.last_quality: Optional[Quality] = None

    def reset(self) -> None:
        self.correction = np.eye(4)
        self.good_index = None
        self.ok_lncc = []
        self.count = 0
        self.last = None
        self.last_quality = None

    def update(self, frame, tracked_image_to_reference) -> Tuple[Optional[FrameResult],
                                                                  Quality]:
        frame, pose = check_live_frame(frame, tracked_image_to_reference)
        calib = calibration_for(self.method, pose[None], self.config)
        has_good = self.good_index is not None
        ref = reference_of(self.ok_lncc[-20:], self.config)
        cfg = self.config if ref is None else replace(self.config,
                                                      restarts=self.config.live_restarts)
        res, q = register_one_checked(
            self.method, frame, pose, init_correction=self.correction if has_good else None,
            calib=calib, config=cfg, index=self.count, tracking=has_good,
            previous_correction=self.correction if has_good else None, reference_lncc=ref)
        if res is not None and q.verdict in ("ok", "doubtful"):
            self.correction = res.correction
            self.good_index = self.count
            if q.verdict == "ok":
                self.ok_lncc.append(float(res.lncc))
        else:
            keep = ("kept the last good correction (frame "
                    f"{self.good_index})" if has_good else "no good correction yet: the "
                    "tracked pose is used unchanged")
            q.reasons.append(keep)
            q.signals["kept_correction_of"] = self.good_index
        self.count += 1
        self.last, self.last_quality = res, q
        return res, q
