"""How far to trust each registered US frame: signals, a per-volume calibration, verdicts,
automatic retries and the sequence / live loops that use them.

Every registered frame gets a :class:`SurgicalReg2D3DLib.quality.Quality` (see that
module for the contract) computed by :func:`assess` from signals measured at the result:

``lncc``          masked LNCC of the frame and the volume's slice at the result (the
                  similarity the registration reports);
``overlap``       fraction of the fan on the volume's data at the result (a plane that
                  slid off the data "matches" nothing);
``lncc_gain``     ``lncc - lncc_start``;
``moved_mm/deg``  size of the correction found, for the record;
``unchanged``     the search did not improve on its start (the registrar then returns
                  the start unchanged);
``hessian_mm/deg`` standard deviation of the pose along its weakest direction, from the
                  finest level's ``J^T J`` and residual (Gauss-Newton covariance), fan
                  centre translation in mm and rotation in deg;
``restart_mm/deg`` (when restarts ran) how far registrations restarted +-3 mm along the
                  plane normal ended from the result (multi-start disagreement).

Which signals separate successes from failures was measured on the shipped sweep
(``benchmarks/results/us_quality.md``): within one volume the LNCC at the result
separates them completely (ROC AUC 1.0 on two volumes), but the level correct poses
reach depends on the volume (about 0.8 on PLUS's reconstruction, 0.4-0.5 on a volume from
every other frame), so a fixed threshold does not transfer. Hence the per-volume
:class:`Calibration` (:func:`calibrate`): planes sampled around given poses in the volume,
simulated frames made from the volume's own slices plus correlated noise, registered
from a few dozen starts from 0 to 20 mm / 0 to 20 deg. It yields the LNCC that *wrong*
poses reach on this volume (``null_lncc``, the failures' 95th percentile) and the factor
from the Hessian's standard deviation to the error of correct registrations. A result is

``failed``   when its LNCC is at the wrong poses' level, when less than
             :attr:`QualityConfig.min_overlap_failed` of the fan lies on the data, or when
             restarts disagree by more than 2 mm / 2 deg;
``doubtful`` when its LNCC is less than :attr:`QualityConfig.doubtful_factor` times that
             level, the overlap is low, the estimate exceeds 2 mm / 2 deg, or restarts
             disagree by more than 1 mm / 1 deg, or when a signal could not be computed;
``ok``       otherwise.

The estimate of an ``ok``/``doubtful`` frame is the calibrated Hessian standard deviation
(at least the restart disagreement); the estimate of a ``failed`` frame is what the
calibration's failed simulations were off (median, interval 10th-90th percentile).

The retries of failed frames, the skips and the checked sequence / live loops are in
:mod:`recovery` (``register_one_checked``, ``register_checked``, ``CheckedLive``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from SurgicalReg2D3DLib.progress import check_cancel
from SurgicalReg2D3DLib.quality import Quality

from .config import FrameResult
from .pose_utils import pose_errors

#: An error above this (mm and deg) counts as a failure (issue #12's US threshold).
FAIL_MM = 2.0
FAIL_DEG = 2.0


@dataclass
class QualityConfig:
    """Settings of :func:`assess` / :func:`register_checked`."""

    #: Restarts (+-``restart_mm`` along the plane normal) for the disagreement signal,
    #: the one signal that separated successes from failures on every volume measured,
    #: in physical units (two more registrations per frame): ``"always"``, ``"auto"``
    #: (only when the single-pass verdict is not ``ok``: cheaper, but the single-pass
    #: signals miss failures whose similarity is high) or ``"never"``.
    restarts: str = "always"
    restart_mm: float = 3.0
    #: Live mode (:class:`CheckedLive`) once the stream's reference similarity exists
    #: (``reference_min_frames`` ok frames): the restart policy. ``"auto"``: restarts only
    #: for a frame whose single-pass verdict is not ok (live latency; measured: the
    #: single-pass signals with the reference caught 94-100 % of the failures, the
    #: restarts then judge the flagged ones).
    live_restarts: str = "auto"
    #: Retry a failed frame from other starts (see the module docstring).
    retry: bool = True
    retry_mm: float = 4.0
    #: Below this fraction of the fan on the volume's data at the result: failed.
    min_overlap_failed: float = 0.25
    #: ... below this: doubtful.
    min_overlap_doubtful: float = 0.6
    #: LNCC below this fraction of what correct simulated registrations reach on the
    #: volume (:attr:`Calibration.ok_lncc`): doubtful. (The LNCC of correct poses depends
    #: on the volume and the frames, and the simulated frames' does not match the real
    #: ones' closely, so the similarity alone is not used to fail a frame.)
    doubtful_lncc_fraction: float = 0.5
    #: LNCC at or below this: failed (nothing matches).
    min_lncc_failed: float = 0.05
    #: LNCC below this fraction of :attr:`Calibration.ok_lncc`: failed.
    failed_lncc_fraction: float = 0.25
    #: In a sequence / live stream: LNCC below these fractions of the median LNCC of the
    #: frames judged ``ok`` so far (at least ``reference_min_frames``): failed / doubtful.
    #: (Measured: correct frames reach 0.79-0.85 on PLUS's volume of the shipped sweep and
    #: 0.38-0.49 on a volume from every other frame, wrong poses at most 0.36 and 0.17.)
    failed_reference_fraction: float = 0.5
    doubtful_reference_fraction: float = 0.7
    reference_min_frames: int = 3
    #: A result whose LNCC is this much below its start's: failed / doubtful.
    max_lncc_loss_failed: float = 0.1
    max_lncc_loss_doubtful: float = 0.02
    #: This many ``doubtful`` reasons together make a frame ``failed``.
    doubts_to_fail: int = 3
    #: Calibration: number of simulated registrations and their start range.
    calibration_runs: int = 36
    calibration_max_mm: float = 20.0
    calibration_max_deg: float = 20.0
    #: Correlated noise added to the simulated frames (std relative to the slice's), so
    #: that their LNCC at the true pose is well below 1, as real frames' is.
    calibration_noise: float = 0.25
    seed: int = 0


@dataclass
class Calibration:
    """What the registration reaches on one volume (from :func:`calibrate`)."""

    null_lncc: float  # 95th percentile of the LNCC of failed simulated registrations
    ok_lncc: float  # 5th percentile of the LNCC of correct simulated registrations
    scale_mm: float  # median of true error / Hessian std (correct simulations)
    scale_deg: float
    spread_mm: Tuple[float, float]  # [10th, 90th] percentiles of error / Hessian std
    spread_deg: Tuple[float, float]
    failed_mm: Tuple[float, float, float]  # failed simulations: median, 10th, 90th pct
    failed_deg: Tuple[float, float, float]
    runs: int
    failures: int
    seconds: float
    rows: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("null_lncc", "ok_lncc", "scale_mm", "scale_deg",
                                           "spread_mm", "spread_deg", "failed_mm",
                                           "failed_deg", "runs", "failures", "seconds")}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


#: Display colours of the verdicts (GUI).
VERDICT_COLOURS = {"ok": "#2e7d32", "doubtful": "#ef6c00", "failed": "#c62828",
                   "skipped": "#616161"}


def status_text(q: Optional[Quality]) -> str:
    """A short status for a GUI label, e.g. ``"ok: ~0.3 mm / 0.9 deg"``."""
    if q is None:
        return ""
    e = q.estimate
    text = q.verdict
    if "translation_mm" in e and "rotation_deg" in e:
        text += f": ~{e['translation_mm']:.1f} mm / {e['rotation_deg']:.1f} deg"
    if q.verdict != "ok" and q.reasons:
        text += f" ({q.reasons[0]})"
        kept = [r for r in q.reasons[1:] if r.startswith("kept the last good")
                or r.startswith("no good correction yet")]
        if kept:
            text += f"; {kept[0]}"
    return text


# ----------------------------------------------------------------------------- signals
def _normal(pose: np.ndarray) -> np.ndarray:
    n = np.cross(pose[:3, 0], pose[:3, 1])
    return n / max(np.linalg.norm(n), 1e-12)


def _shifted(pose: np.ndarray, direction: np.ndarray, mm: float) -> np.ndarray:
    P = np.eye(4)
    P[:3, 3] = mm * np.asarray(direction, dtype=float)
    return P @ pose


def hessian_signals(registrar, frame, image_to_reference) -> dict:
    """Gauss-Newton standard deviations of the pose at ``image_to_reference`` (finest
    level): ``hessian_mm`` (fan centre, largest over directions), ``hessian_deg``, and
    ``weak_direction`` (unit translation, reference mm, of the least constrained
    combination). NaN where ``J^T J`` is singular (no data under the plane)."""
    fit = registrar.local_fit(frame, image_to_reference)
    JtJ = fit["JtJ"]
    n = max(fit["fan_points"] - 6.0, 1.0)
    sigma2 = 2.0 * fit["cost"] / n
    out = {"hessian_mm": float("nan"), "hessian_deg": float("nan"),
           "weak_direction": None, "cost": fit["cost"],
           "points_on_data": fit["points"] / max(fit["fan_points"], 1.0)}
    if fit["points"] < 12 or not np.all(np.isfinite(JtJ)):
        return out
    # Scale rotations to 100 mm so that the eigenvectors mix comparable units.
    S = np.diag([100.0] * 3 + [1.0] * 3)
    A = S @ JtJ @ S
    w, V = np.linalg.eigh(A)
    if w[-1] <= 0 or w[0] <= 1e-9 * w[-1]:
        return out
    cov = sigma2 * (S @ np.linalg.inv(A) @ S)
    out["hessian_deg"] = float(np.degrees(math.sqrt(max(np.linalg.eigvalsh(cov[:3, :3])[-1],
                                                        0.0))))
    out["hessian_mm"] = float(math.sqrt(max(np.linalg.eigvalsh(cov[3:, 3:])[-1], 0.0)))
    weak = V[3:, 0]
    out["weak_direction"] = (weak / np.linalg.norm(weak)).tolist() \
        if np.linalg.norm(weak) > 1e-6 else None
    return out


def measure(registrar, frame, result: FrameResult, init_correction=None,
            start_lncc: Optional[float] = None) -> dict:
    """The single-pass signals of one result (see the module docstring); ``start_lncc``:
    the similarity of the caller's start when ``result`` comes from another start (a
    retry), so that the gain is measured against what the caller had."""
    pose = np.asarray(result.image_to_reference, dtype=float)
    start = np.asarray(result.start_image_to_reference, dtype=float)
    if init_correction is not None:
        start = np.asarray(init_correction, dtype=float) @ start
    centre = registrar.fan_centre_px
    m_deg, m_mm = pose_errors(pose, start, centre)
    lncc0 = float(result.lncc_start if start_lncc is None else start_lncc)
    sig = {"lncc": float(result.lncc), "lncc_start": lncc0,
           "lncc_gain": float(result.lncc - lncc0),
           "overlap_start": float(result.overlap),
           "overlap": float(registrar.overlap(pose[None])[0]),
           "moved_mm": float(m_mm), "moved_deg": float(m_deg),
           "unchanged": bool(np.allclose(pose, start, atol=1e-9)),
           "iterations": int(result.iterations)}
    try:
        sig.update(hessian_signals(registrar, frame, pose))
    except (InputError, GeometryError, np.linalg.LinAlgError):
        sig.update({"hessian_mm": float("nan"), "hessian_deg": float("nan"),
                    "weak_direction": None})
    return sig


def restart_signals(method, frame, result: FrameResult, distance_mm: float,
                    tracked_start=None) -> Tuple[dict, List[FrameResult]]:
    """Register ``frame`` again from the result shifted +-``distance_mm`` along its plane
    normal; returns ``({"restart_mm", "restart_deg"}, restart results)`` (the largest
    distance of a restart's result from ``result``; restarts that cannot start, e.g. off
    the volume, are left out)."""
    pose = np.asarray(result.image_to_reference, dtype=float)
    tracked = np.asarray(result.start_image_to_reference if tracked_start is None
                         else tracked_start, dtype=float)
    registrar = method.registrar
    n = _normal(pose)
    outs: List[FrameResult] = []
    dist_mm, dist_deg = 0.0, 0.0
    for sign in (1.0, -1.0):
        alt = _shifted(pose, n, sign * distance_mm)
        corr = alt @ np.linalg.inv(tracked)
        try:
            r = method(frame[None], tracked[None], init_corrections=corr[None])[0]
        except GeometryError:
            continue
        if np.allclose(r.image_to_reference, alt, atol=1e-9):
            continue  # the restart did not move (e.g. off the sweep's data): no information
        outs.append(r)
        d_deg, d_mm = pose_errors(r.image_to_reference, pose, registrar.fan_centre_px)
        dist_mm, dist_deg = max(dist_mm, d_mm), max(dist_deg, d_deg)
    if not outs:
        return {"restart_mm": float("nan"), "restart_deg": float("nan")}, outs
    return {"restart_mm": float(dist_mm), "restart_deg": float(dist_deg)}, outs


# ----------------------------------------------------------------------------- verdict
def judge(sig: dict, calib: Optional[Calibration],
          config: Optional[QualityConfig] = None,
          reference_lncc: Optional[float] = None) -> Quality:
    """The verdict, estimate and reasons from the signals of :func:`measure` (plus the
    restart signals when present), the volume's :class:`Calibration` and, when known,
    ``reference_lncc``: the median similarity of the frames of the same sequence judged
    ``ok`` (what correct poses reach with these frames on this volume)."""
    cfg = config or QualityConfig()
    reasons_failed: List[str] = []
    reasons_doubt: List[str] = []
    lncc, ov = sig.get("lncc", float("nan")), sig.get("overlap", float("nan"))
    low = cfg.doubtful_lncc_fraction * calib.ok_lncc if calib is not None else float("nan")
    if not math.isfinite(ov):
        reasons_doubt.append("the overlap at the result could not be computed")
    elif ov < cfg.min_overlap_failed:
        reasons_failed.append(f"only {100 * ov:.0f}% of the fan lies on the volume's data "
                              "at the result")
    elif ov < cfg.min_overlap_doubtful:
        reasons_doubt.append(f"only {100 * ov:.0f}% of the fan lies on the volume's data "
                             "at the result")
    if not math.isfinite(lncc):
        reasons_doubt.append("the similarity at the result could not be computed")
    elif lncc <= cfg.min_lncc_failed:
        reasons_failed.append(f"similarity {lncc:.2f} at the result: nothing matches")
    elif reference_lncc is not None and math.isfinite(reference_lncc) \
            and lncc < cfg.failed_reference_fraction * reference_lncc:
        reasons_failed.append(f"similarity {lncc:.2f} at the result is less than "
                              f"{cfg.failed_reference_fraction:.0%} of what this sequence's "
                              f"good frames reach ({reference_lncc:.2f})")
    elif math.isfinite(low) and lncc < cfg.failed_lncc_fraction * calib.ok_lncc:
        reasons_failed.append(f"similarity {lncc:.2f} at the result is below "
                              f"{cfg.failed_lncc_fraction:.0%} of what correct poses of "
                              f"simulated frames reach on this volume ({calib.ok_lncc:.2f})")
    elif reference_lncc is not None and math.isfinite(reference_lncc) \
            and lncc < cfg.doubtful_reference_fraction * reference_lncc:
        reasons_doubt.append(f"similarity {lncc:.2f} at the result is below "
                             f"{cfg.doubtful_reference_fraction:.0%} of what this sequence's "
                             f"good frames reach ({reference_lncc:.2f})")
    elif not math.isfinite(low):
        reasons_doubt.append("no calibration for this volume")
    elif lncc < low:
        reasons_doubt.append(f"similarity {lncc:.2f} at the result is below half of what "
                             f"correct poses of simulated frames reach on this volume "
                             f"({calib.ok_lncc:.2f})")
    gain = sig.get("lncc_gain")
    if gain is not None and math.isfinite(gain) and math.isfinite(lncc):
        # (The LNCC method never returns a result worse than its start; other methods
        # can, e.g. one optimising another similarity.)
        if gain < -cfg.max_lncc_loss_failed:
            reasons_failed.append(f"similarity fell from {lncc - gain:.2f} at the start to "
                                  f"{lncc:.2f} (the start matched better)")
        elif gain < -cfg.max_lncc_loss_doubtful:
            reasons_doubt.append(f"similarity fell from {lncc - gain:.2f} at the start to "
                                 f"{lncc:.2f}")
    if sig.get("unchanged"):
        # Not a failure by itself: a start that is already right is returned unchanged
        # too; the restarts and the similarity decide. It is said, and retried.
        reasons_doubt.append("the search did not improve the similarity from its start "
                             "(start returned unchanged)")
    rmm, rdeg = sig.get("restart_mm"), sig.get("restart_deg")
    if rmm is not None and rdeg is not None and math.isfinite(rmm) and math.isfinite(rdeg):
        if rmm > FAIL_MM or rdeg > FAIL_DEG:
            reasons_failed.append(f"restarts +-3 mm along the normal end {rmm:.1f} mm / "
                                  f"{rdeg:.1f} deg away (multi-start disagreement)")
        elif rmm > 0.5 * FAIL_MM or rdeg > 0.5 * FAIL_DEG:
            reasons_doubt.append(f"restarts end {rmm:.1f} mm / {rdeg:.1f} deg away")
    # Estimate.
    h_mm, h_deg = sig.get("hessian_mm", float("nan")), sig.get("hessian_deg", float("nan"))
    est: Dict[str, float] = {}
    iv: Dict[str, List[float]] = {}
    if reasons_failed and calib is not None:
        # What failed simulations on this volume were off, at least the restarts'
        # disagreement (one of the two poses is that far from the other).
        r_mm = rmm if rmm is not None and math.isfinite(rmm) else 0.0
        r_deg = rdeg if rdeg is not None and math.isfinite(rdeg) else 0.0
        est = {"translation_mm": max(calib.failed_mm[0], r_mm),
               "rotation_deg": max(calib.failed_deg[0], r_deg)}
        iv = {"translation_mm": [min(calib.failed_mm[1], est["translation_mm"]),
                                 max(calib.failed_mm[2], est["translation_mm"])],
              "rotation_deg": [min(calib.failed_deg[1], est["rotation_deg"]),
                               max(calib.failed_deg[2], est["rotation_deg"])]}
    elif calib is not None and math.isfinite(h_mm) and math.isfinite(h_deg):
        est = {"translation_mm": calib.scale_mm * h_mm, "rotation_deg": calib.scale_deg * h_deg}
        iv = {"translation_mm": [calib.spread_mm[0] * h_mm, calib.spread_mm[1] * h_mm],
              "rotation_deg": [calib.spread_deg[0] * h_deg, calib.spread_deg[1] * h_deg]}
        if rmm is not None and math.isfinite(rmm):  # disagreement bounds the error below
            est["translation_mm"] = max(est["translation_mm"], float(rmm))
            est["rotation_deg"] = max(est["rotation_deg"], float(rdeg))
            iv["translation_mm"][1] = max(iv["translation_mm"][1], est["translation_mm"])
            iv["rotation_deg"][1] = max(iv["rotation_deg"][1], est["rotation_deg"])
        if not reasons_failed and (est["translation_mm"] > FAIL_MM
                                   or est["rotation_deg"] > FAIL_DEG):
            reasons_doubt.append("the estimated error exceeds 2 mm / 2 deg (weakly "
                                 "constrained pose)")
    else:
        reasons_doubt.append("the error estimate could not be computed")
    evidence = [r for r in reasons_doubt if "could not be computed" not in r
                and "no calibration" not in r]
    if not reasons_failed and len(evidence) >= cfg.doubts_to_fail:
        # Several independent warning signs together (measured: a frame 6 deg off at the
        # end of the sweep, half off the data, similarity 60 % of its neighbours').
        reasons_failed.append(f"{len(evidence)} warning signs together")
        if calib is not None:
            est = {"translation_mm": max(calib.failed_mm[0], est.get("translation_mm", 0.0)),
                   "rotation_deg": max(calib.failed_deg[0], est.get("rotation_deg", 0.0))}
            iv = {"translation_mm": [calib.failed_mm[1], max(calib.failed_mm[2],
                                                             est["translation_mm"])],
                  "rotation_deg": [calib.failed_deg[1], max(calib.failed_deg[2],
                                                            est["rotation_deg"])]}
    verdict = "failed" if reasons_failed else ("doubtful" if reasons_doubt else "ok")
    signals = {k: v for k, v in sig.items() if k != "weak_direction"}
    if calib is not None:
        signals["calibration_ok_lncc"] = calib.ok_lncc
    if reference_lncc is not None:
        signals["reference_lncc"] = float(reference_lncc)
    return Quality(verdict=verdict, estimate=est, interval=iv,
                   reasons=reasons_failed + reasons_doubt, signals=signals)


# ------------------------------------------------------------------------- calibration
def simulated_frame(registrar, pose: np.ndarray, rng: np.random.Generator,
                    noise: float = 1.0) -> Optional[np.ndarray]:
    """A frame ``(H, W)`` made of the volume's slice at ``pose`` plus noise correlated
    over 8 x 8 pixel blocks (the registration's finest scale), std ``noise`` times the
    slice's on the fan; ``None`` when the slice has no contrast."""
    H, W = registrar.frame_shape
    # Sampled at every 4th pixel and repeated: the registration's finest level averages
    # 8 x 8 pixel blocks, so the detail lost here is never used.
    vals, inside = registrar.resample_volume(np.asarray(pose)[None], step=4)
    sl = (vals[0] * inside[0]).double().cpu().numpy().repeat(4, 0).repeat(4, 1)
    inside = inside[0].cpu().numpy().repeat(4, 0).repeat(4, 1)
    pad = ((0, max(0, H - sl.shape[0])), (0, max(0, W - sl.shape[1])))
    sl = np.pad(sl, pad, mode="edge")[:H, :W]
    inside = np.pad(inside, pad, mode="edge")[:H, :W] > 0
    fan = registrar.fan & inside
    if fan.sum() < 16:
        return None
    sd = float(sl[fan].std())
    if not sd > 0:
        return None
    coarse = rng.normal(size=(-(-H // 8), -(-W // 8)))
    field_ = coarse.repeat(8, 0).repeat(8, 1)[:H, :W]
    out = sl + noise * sd * field_
    return out.astype(np.float32)


def calibrate(method, poses, config: Optional[QualityConfig] = None, cancel=None
              ) -> Calibration:
    """Simulated registrations on this volume (see the module docstring): planes near
    ``poses`` (image_to_reference 4x4s, e.g. the frames' starts) with at least 90 % of
    the fan on the data, frames simulated there, registered from starts 0-20 mm /
    0-20 deg away by the LNCC registration of ``method.registrar`` (the registrar every
    method of :mod:`methods` exposes; the LNCC method itself, the checker of the others)."""
    from .pose_utils import perturb_about_point, random_perturbations  # noqa: PLC0415

    cfg = config or QualityConfig()
    t0 = time.perf_counter()
    registrar = method.registrar
    rng = np.random.default_rng(cfg.seed)
    poses = np.asarray(poses, dtype=float).reshape(-1, 4, 4)
    centre = registrar.fan_centre_px
    # Half of the starts within 8 mm / 8 deg (mostly successes: the Hessian's scale and
    # the similarity correct poses reach), half up to the full range (failures).
    near = random_perturbations(cfg.calibration_runs * 2, 8.0, 8.0, seed=cfg.seed + 7)
    far = random_perturbations(cfg.calibration_runs * 2, cfg.calibration_max_mm,
                               cfg.calibration_max_deg, seed=cfg.seed + 8)
    tw = np.stack([near, far], axis=1).reshape(-1, 6)
    rows: List[dict] = []
    k = 0
    attempts = 0
    while len(rows) < cfg.calibration_runs and attempts < 12 * cfg.calibration_runs:
        check_cancel(cancel, "US quality calibration")
        attempts += 1
        base = poses[rng.integers(len(poses))]
        # Planes near the given poses; wider as attempts fail (poses off the data).
        grow = 1.0 if attempts <= 2 * cfg.calibration_runs \
            else 1.0 + 3.0 * attempts / (6.0 * cfg.calibration_runs)
        jitter = rng.normal(size=6) * np.array([0.03, 0.03, 0.03, 2.0, 2.0, 2.0]) * grow
        truth = perturb_about_point(base, jitter, centre)
        if registrar.overlap(truth[None])[0] < (0.9 if attempts <= 6 * cfg.calibration_runs
                                                else 0.7):
            continue
        frame = simulated_frame(registrar, truth, rng, cfg.calibration_noise)
        if frame is None:
            continue
        start = None
        for _ in range(5):
            cand = perturb_about_point(truth, tw[k % len(tw)], centre)
            k += 1
            if registrar.overlap(cand[None])[0] >= registrar.config.min_overlap:
                start = cand
                break
        if start is None:
            continue
        # The registrar's own LNCC registration (the volume's behaviour; fast whatever
        # the method, e.g. the SimpleITK baseline shares the registrar as its checker).
        res = registrar.register(frame[None], start[None])[0]
        e_deg, e_mm = pose_errors(res.image_to_reference, truth, centre)
        try:
            h = hessian_signals(registrar, frame, res.image_to_reference)
        except (InputError, GeometryError, np.linalg.LinAlgError):
            h = {"hessian_mm": float("nan"), "hessian_deg": float("nan")}
        rows.append({"error_mm": e_mm, "error_deg": e_deg, "lncc": res.lncc,
                     "overlap": float(registrar.overlap(res.image_to_reference[None])[0]),
                     "hessian_mm": h["hessian_mm"], "hessian_deg": h["hessian_deg"]})
    return _fit_calibration(rows, cfg, time.perf_counter() - t0)


def _fit_calibration(rows: List[dict], cfg: QualityConfig, seconds: float) -> Calibration:
    fail = [r for r in rows if r["error_mm"] > FAIL_MM or r["error_deg"] > FAIL_DEG]
    good = [r for r in rows if r not in fail]
    # Failures that slid off the data say nothing about the similarity of wrong poses.
    fail_on = [r for r in fail if r["overlap"] >= cfg.min_overlap_failed
               and math.isfinite(r["lncc"])]
    null = float(np.percentile([r["lncc"] for r in fail_on], 95)) if len(fail_on) >= 3 \
        else float("nan")
    ok_l = float(np.percentile([r["lncc"] for r in good], 5)) if good else float("nan")
    if not math.isfinite(null) and math.isfinite(ok_l):
        null = 0.5 * ok_l  # no wrong pose found: half of what correct poses reach
    ratio_mm = [r["error_mm"] / r["hessian_mm"] for r in good
                if math.isfinite(r["hessian_mm"]) and r["hessian_mm"] > 0]
    ratio_deg = [r["error_deg"] / r["hessian_deg"] for r in good
                 if math.isfinite(r["hessian_deg"]) and r["hessian_deg"] > 0]

    def pct(v, q, default):
        return float(np.percentile(v, q)) if len(v) >= 3 else default

    f_mm = [r["error_mm"] for r in fail]
    f_deg = [r["error_deg"] for r in fail]
    return Calibration(
        null_lncc=null, ok_lncc=ok_l,
        scale_mm=pct(ratio_mm, 50, float("nan")), scale_deg=pct(ratio_deg, 50, float("nan")),
        spread_mm=(pct(ratio_mm, 10, float("nan")), pct(ratio_mm, 90, float("nan"))),
        spread_deg=(pct(ratio_deg, 10, float("nan")), pct(ratio_deg, 90, float("nan"))),
        failed_mm=(pct(f_mm, 50, 10.0), pct(f_mm, 10, FAIL_MM), pct(f_mm, 90, 20.0)),
        failed_deg=(pct(f_deg, 50, 10.0), pct(f_deg, 10, FAIL_DEG), pct(f_deg, 90, 20.0)),
        runs=len(rows), failures=len(fail), seconds=seconds, rows=rows)


def calibration_for(method, poses, config: Optional[QualityConfig] = None,
                    cancel=None) -> Calibration:
    """:func:`calibrate`, cached on the method's registrar (one per volume)."""
    registrar = method.registrar
    cal = getattr(registrar, "_quality_calibration", None)
    if cal is None:
        cal = calibrate(method, poses, config, cancel=cancel)
        registrar._quality_calibration = cal
    return cal


# ----------------------------------------------------------------------------- assess
def assess(method, frame, result: FrameResult, calib: Optional[Calibration],
           config: Optional[QualityConfig] = None, init_correction=None,
           reference_lncc: Optional[float] = None,
           start_lncc: Optional[float] = None) -> Tuple[FrameResult, Quality]:
    """The quality of ``result`` (one frame ``(H, W)``); with restarts (see
    :attr:`QualityConfig.restarts`) a restart that reaches a clearly better similarity
    replaces the result. Returns ``(result, quality)``."""
    cfg = config or QualityConfig()
    sig = measure(method.registrar, frame, result, init_correction, start_lncc)
    q = judge(sig, calib, cfg, reference_lncc)
    if cfg.restarts == "always" or (cfg.restarts == "auto" and q.verdict != "ok"):
        rs, outs = restart_signals(method, frame, result, cfg.restart_mm)
        best = max(outs, key=lambda r: r.lncc, default=None)
        if best is not None and best.lncc > result.lncc + 0.02:
            # The result was a local optimum: the restart's pose is better.
            sig2 = measure(method.registrar, frame, best, init_correction,
                           result.lncc_start if start_lncc is None else start_lncc)
            rs2, _ = restart_signals(method, frame, best, cfg.restart_mm)
            sig2.update(rs2)
            sig2["replaced_by_restart"] = True
            return best, judge(sig2, calib, cfg, reference_lncc)
        sig.update(rs)
        q = judge(sig, calib, cfg, reference_lncc)
    return result, q

def reference_of(ok_lncc: Sequence[float], config: QualityConfig) -> Optional[float]:
    """The median LNCC of the frames judged ``ok`` so far, once there are enough."""
    if len(ok_lncc) < config.reference_min_frames:
        return None
    return float(np.median(ok_lncc))

def rejudge(q: Quality, calib: Optional[Calibration], config: QualityConfig,
            reference_lncc: Optional[float]) -> Quality:
    """``q`` judged again from its own signals with ``reference_lncc``; the retry record
    (``first_attempt``...) is kept."""
    q2 = judge(dict(q.signals), calib, config, reference_lncc)
    extra = [r for r in q.reasons if r.startswith("first attempt") or r.startswith("retried")]
    for k in ("first_attempt", "retried_from", "retries"):
        if k in q.signals:
            q2.signals[k] = q.signals[k]
    q2.reasons.extend(extra)
    return q2
