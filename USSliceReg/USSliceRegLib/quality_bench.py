"""Benchmarks of the US trust value (:mod:`quality`) and of the odd-frames protocol.

``run_detection``: how well the verdict separates successes from failures. Volumes:
``"plus"`` (PLUS's reconstruction of the shipped sweep, all frames tested: optimistic,
the frames are in the volume) and ``"even"`` (a volume from the even frames, the odd
frames tested); starts with rotation and translation magnitudes uniform in
``[min, max]`` (default 0-20 mm / 0-20 deg: at and beyond the capture range, so that
there are failures), one start per frame and seed. Every start is registered once
(``first``: the verdict of that result, no retry) and then with the retries of
:func:`recovery.register_one_checked` (``final``). A true failure is an error above
2 mm or 2 deg. Reported: ROC AUC of the error estimate (score ``max(translation_mm / 2,
rotation_deg / 2)``), precision and recall of ``failed`` (and of ``failed`` or
``doubtful``), the share of true successes flagged, and estimate vs true error.

``run_odd_frames``: the odd-frames accuracy protocol (issue #12): a volume from the even
frames, the odd frames whose true plane has data (>= :data:`bench.MIN_TRUTH_COVERAGE`)
registered from starts 3-10 mm / 3-10 deg, several start seeds; means over all frames and
over the frames not flagged (verdict ``ok`` or ``doubtful`` after retries), per seed.

``run_issue_check``: the 21-frame check of the issue: the shipped sweep and PLUS's volume,
every frame from a start 3-10 mm / 3-10 deg away with at least 60 % of the fan on the
data (``surgreg us register --init``): every frame must end correct or flagged.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.metrics import roc_auc

from .bench import MIN_TRUTH_COVERAGE, _Sweep, default_paths
from .config import RegistrationConfig
from .methods import make_method
from .plus_io import read_reference_volume
from .pose_utils import perturb_about_point, pose_errors
from .quality import (FAIL_DEG, FAIL_MM, QualityConfig, assess, calibration_for,
                      reference_of, rejudge)
from .recovery import register_checked
from .reconstruct import reconstruct_volume


def ranged_perturbations(n: int, min_mm: float, max_mm: float, min_deg: float,
                         max_deg: float, seed: int) -> np.ndarray:
    """``(n, 6)`` twists (rotation vector rad, translation mm): random axes and
    directions, magnitudes uniform in ``[min, max]``."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    ang = np.radians(rng.uniform(min_deg, max_deg, size=(n, 1)))
    dist = rng.uniform(min_mm, max_mm, size=(n, 1))
    return np.concatenate([axes * ang, dirs * dist], axis=1)


def _setup(volume: str, config: Optional[RegistrationConfig] = None,
           recon_pixel_step: int = 3, method: str = "lncc"):
    sweep = _Sweep(*default_paths()[:2])
    if volume == "plus":
        vol = read_reference_volume(default_paths()[2])
        fn = make_method(method, vol.array, vol.ijk_to_reference, sweep.seq.frame_shape,
                         sweep.fan, config=config)
        tests = list(sweep.usable)
    elif volume == "even":
        train = sweep.usable[0::2]
        rec = reconstruct_volume(sweep.seq.images[train], np.stack([sweep.truth[i]
                                                                     for i in train]),
                                 sweep.fan, pixel_step=recon_pixel_step, fill_radius=4)
        fn = make_method(method, rec.array, rec.ijk_to_reference, sweep.seq.frame_shape,
                         sweep.fan, volume_mask=rec.filled, config=config)
        tests = list(sweep.usable[1::2])
    else:
        raise ValueError(f"volume: expected 'plus' or 'even', got {volume!r}")
    return sweep, fn, tests


def _start(fn, truth, twists, centre, min_overlap):
    for tw in twists:
        cand = perturb_about_point(truth, tw, centre)
        if fn.registrar.overlap(cand[None])[0] >= min_overlap:
            return cand
    return None


def _score(q) -> float:
    e = q.estimate
    if "translation_mm" not in e:
        return float("inf") if q.verdict in ("failed", "skipped") else float("nan")
    return max(e["translation_mm"] / FAIL_MM, e["rotation_deg"] / FAIL_DEG)


def run_detection(volume: str = "plus", seeds: Sequence[int] = (0, 1, 2),
                  min_mm: float = 0.0, max_mm: float = 20.0, min_deg: float = 0.0,
                  max_deg: float = 20.0, min_start_overlap: float = 0.1,
                  config: Optional[QualityConfig] = None, verbose: bool = False) -> dict:
    """See the module docstring; returns ``{"rows": [...], "calibration": {...}}``."""
    cfg = config or QualityConfig()
    sweep, fn, tests = _setup(volume)
    reg = fn.registrar
    c = sweep.centre_px
    calib = calibration_for(fn, np.stack([sweep.truth[i] for i in tests]), cfg)
    rows: List[dict] = []
    for sd in seeds:
        tw = ranged_perturbations(len(sweep.usable) * 30, min_mm, max_mm, min_deg, max_deg,
                                  1000 + int(sd))
        frames, starts, idx = [], [], []
        for n, i in enumerate(tests):
            truth = sweep.truth[i]
            if float(reg.overlap(truth[None])[0]) < MIN_TRUTH_COVERAGE:
                continue
            start = _start(fn, truth, tw[n * 30:(n + 1) * 30], c,
                           max(min_start_overlap, reg.config.min_overlap))
            if start is not None:
                frames.append(sweep.seq.images[i])
                starts.append(start)
                idx.append(i)
        # First attempt of every frame (no retry), judged with the sequence's reference
        # (the median similarity of the frames judged ok), as register_checked does.
        firsts = []
        for img, start, i in zip(frames, starts, idx):
            r = fn(img[None], start[None], indices=[i])[0]
            firsts.append(assess(fn, img, r, calib, cfg))
        ref = reference_of([r.lncc for r, q in firsts if q.verdict == "ok"], cfg)
        firsts = [(r, rejudge(q, calib, cfg, ref)) for r, q in firsts]
        # The whole checked path (retries, skips), frames independent (--init).
        checked = register_checked(fn, np.stack(frames), np.stack(starts), temporal=False,
                                   indices=idx, config=cfg, calibration=calib)
        for (first, q1), cf, start, i in zip(firsts, checked, starts, idx):
            truth = sweep.truth[i]
            s_deg, s_mm = pose_errors(start, truth, c)
            f_deg, f_mm = pose_errors(first.image_to_reference, truth, c)
            res, q2 = cf.result, cf.quality
            if res is None:
                e_deg, e_mm = s_deg, s_mm
            else:
                e_deg, e_mm = pose_errors(res.image_to_reference, truth, c)
            row = {"volume": volume, "frame": i, "seed": int(sd), "start_mm": s_mm,
                   "start_deg": s_deg, "first_mm": f_mm, "first_deg": f_deg,
                   "first_verdict": q1.verdict, "first_score": _score(q1),
                   "first_estimate": dict(q1.estimate), "first_reasons": list(q1.reasons),
                   "final_mm": e_mm, "final_deg": e_deg, "final_verdict": q2.verdict,
                   "final_score": _score(q2), "final_estimate": dict(q2.estimate),
                   "final_reasons": list(q2.reasons), "lncc": first.lncc,
                   "reference_lncc": ref,
                   "restart_mm": q1.signals.get("restart_mm"),
                   "restart_deg": q1.signals.get("restart_deg"),
                   "overlap": q1.signals.get("overlap")}
            rows.append(row)
            if verbose:
                print(f"{volume} frame {i:2d} seed {sd} start {s_mm:5.1f} mm {s_deg:5.1f} deg"
                      f" -> {f_mm:5.2f} mm {f_deg:5.2f} deg {q1.verdict:8s} | after retry "
                      f"{e_mm:5.2f} mm {e_deg:5.2f} deg {q2.verdict}", flush=True)
    return {"rows": rows, "calibration": calib.to_dict()}


def detection_summary(rows: List[dict], stage: str = "first") -> dict:
    """AUC, precision / recall of ``failed`` (and of not-``ok``) against true failures."""
    if not rows:
        return {}
    fail = np.array([r[f"{stage}_mm"] > FAIL_MM or r[f"{stage}_deg"] > FAIL_DEG
                     for r in rows])
    verdict = np.array([r[f"{stage}_verdict"] for r in rows])
    flagged_failed = np.isin(verdict, ["failed", "skipped"])
    flagged_any = verdict != "ok"

    def pr(flag):
        tp = int((flag & fail).sum())
        return {"precision": tp / max(1, int(flag.sum())) if flag.any() else float("nan"),
                "recall": tp / max(1, int(fail.sum())) if fail.any() else float("nan"),
                "flagged_successes": float(flag[~fail].mean()) if (~fail).any()
                else float("nan")}

    return {"n": len(rows), "true_failures": int(fail.sum()),
            "auc": roc_auc([r[f"{stage}_score"] for r in rows], fail),
            "failed": pr(flagged_failed), "failed_or_doubtful": pr(flagged_any),
            "verdicts": {v: int((verdict == v).sum()) for v in ("ok", "doubtful", "failed",
                                                                "skipped")}}


def run_odd_frames(seeds: Sequence[int] = (0, 1, 2, 3, 4), min_mm: float = 3.0,
                   max_mm: float = 10.0, min_deg: float = 3.0, max_deg: float = 10.0,
                   min_start_overlap: float = 0.6, config: Optional[QualityConfig] = None,
                   registration: Optional[RegistrationConfig] = None,
                   recon_pixel_step: int = 3, verbose: bool = False) -> dict:
    """The odd-frames protocol (module docstring). Returns rows and summaries."""
    cfg = config or QualityConfig()
    sweep, fn, tests = _setup("even", registration, recon_pixel_step)
    reg = fn.registrar
    c = sweep.centre_px
    calib = calibration_for(fn, np.stack([sweep.truth[i] for i in tests]), cfg)
    rows: List[dict] = []
    uncovered: Dict[int, float] = {}
    for sd in seeds:
        tw = ranged_perturbations(len(sweep.usable) * 30, min_mm, max_mm, min_deg, max_deg,
                                  int(sd))
        frames, starts, idx = [], [], []
        for n, i in enumerate(tests):
            truth = sweep.truth[i]
            coverage = float(reg.overlap(truth[None])[0])
            if coverage < MIN_TRUTH_COVERAGE:
                uncovered[i] = coverage
                continue
            start = _start(fn, truth, tw[n * 30:(n + 1) * 30], c, min_start_overlap)
            if start is not None:
                frames.append(sweep.seq.images[i])
                starts.append(start)
                idx.append(i)
        checked = register_checked(fn, np.stack(frames), np.stack(starts), temporal=False,
                                   indices=idx, config=cfg, calibration=calib)
        for img, start, i, cf in zip(frames, starts, idx, checked):
            truth = sweep.truth[i]
            plain = fn(img[None], start[None], indices=[i])[0]
            p_deg, p_mm = pose_errors(plain.image_to_reference, truth, c)
            res, q = cf.result, cf.quality
            e_deg, e_mm = pose_errors((res or plain).image_to_reference, truth, c)
            rows.append({"frame": i, "seed": int(sd), "plain_mm": p_mm, "plain_deg": p_deg,
                         "mm": e_mm, "deg": e_deg, "verdict": q.verdict,
                         "estimate": dict(q.estimate), "reasons": list(q.reasons)})
            if verbose:
                print(f"odd frame {i:2d} seed {sd}: plain {p_mm:5.2f} mm {p_deg:5.2f} deg, "
                      f"checked {e_mm:5.2f} mm {e_deg:5.2f} deg {q.verdict}", flush=True)

    def means(rr, mm="mm", deg="deg"):
        if not rr:
            return {"n": 0}
        a = np.array([r[mm] for r in rr])
        b = np.array([r[deg] for r in rr])
        return {"n": len(rr), "mean_mm": float(a.mean()), "mean_deg": float(b.mean()),
                "median_mm": float(np.median(a)), "median_deg": float(np.median(b)),
                "max_mm": float(a.max()), "max_deg": float(b.max())}

    unflagged = [r for r in rows if r["verdict"] in ("ok", "doubtful")]
    per_seed = {str(sd): {"plain": means([r for r in rows if r["seed"] == sd], "plain_mm",
                                         "plain_deg"),
                          "unflagged": means([r for r in unflagged if r["seed"] == sd])}
                for sd in seeds}
    return {"rows": rows, "uncovered": uncovered, "calibration": calib.to_dict(),
            "plain": means(rows, "plain_mm", "plain_deg"), "checked_all": means(rows),
            "unflagged": means(unflagged), "ok_only": means([r for r in rows
                                                             if r["verdict"] == "ok"]),
            "flagged": len(rows) - len(unflagged), "per_seed": per_seed,
            "seeds": list(seeds)}


def run_issue_check(seeds: Sequence[int] = (0, 1, 2), config: Optional[QualityConfig] = None,
                    verbose: bool = False) -> dict:
    """The issue's 21-frame check (module docstring): every frame correct or flagged,
    through the same path as ``surgreg us register --init`` (:func:`logic.register_tracked`
    with quality)."""
    from .logic import register_tracked  # noqa: PLC0415

    cfg = config or QualityConfig()
    sweep = _Sweep(*default_paths()[:2])
    vol = read_reference_volume(default_paths()[2])
    probe = make_method("lncc", vol.array, vol.ijk_to_reference, sweep.seq.frame_shape,
                        sweep.fan)
    c = sweep.centre_px
    out = []
    for sd in seeds:
        tw = ranged_perturbations(len(sweep.usable) * 30, 3, 10, 3, 10, int(sd))
        init = {}
        for n, i in enumerate(sweep.usable):
            s = _start(probe, sweep.truth[i], tw[n * 30:(n + 1) * 30], c, 0.6)
            if s is not None:
                init[i] = s
        reg = register_tracked(vol, sweep.seq, sweep.chain, init=init, quality=cfg,
                               frames=sorted(init))
        frames = []
        for i, r, q in zip(reg.indices, reg.results, reg.qualities):
            d, m = pose_errors(r.image_to_reference, sweep.truth[i], c)
            correct = m <= FAIL_MM and d <= FAIL_DEG
            frames.append({"frame": i, "mm": m, "deg": d, "verdict": q.verdict,
                           "correct": correct, "flagged": q.verdict != "ok",
                           "reasons": list(q.reasons)})
            if verbose:
                print(f"issue check seed {sd} frame {i:2d}: {m:5.2f} mm {d:5.2f} deg "
                      f"{q.verdict} {'; '.join(q.reasons)}", flush=True)
        skipped = [{"frame": int(i), "reason": why} for i, why in reg.skipped]
        bad = [f for f in frames if not f["correct"] and not f["flagged"]]
        out.append({"seed": int(sd), "frames": frames, "skipped": skipped,
                    "silent_failures": len(bad), "correct": sum(f["correct"] for f in frames),
                    "flagged": sum(f["flagged"] for f in frames)})
    return {"runs": out}

