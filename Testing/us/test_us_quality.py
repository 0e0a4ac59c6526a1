"""USSliceReg trust value (USSliceRegLib.quality): verdicts, skips, retries, live mode.

Synthetic ground truth (the smooth random volume and frames of test_us_register.py) and the shipped spine sweep for the issue's
identity-correction frame.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_us_register import SYN_CONFIG, H, W, _frame, _pose, _synthetic_volume

from USSliceRegLib.config import FrameResult
from USSliceRegLib.methods import make_method
from USSliceRegLib.pose_utils import perturb_about_point, pose_errors
from USSliceRegLib.quality import QualityConfig, assess, calibrate, judge
from USSliceRegLib.recovery import CheckedLive, register_checked, register_one_checked

QCFG = QualityConfig(calibration_runs=16)
CENTRE = np.array([W / 2, H / 2, 0, 1.0])


@pytest.fixture(scope="module")
def syn():
    vol, ijk = _synthetic_volume()
    truths = [_pose([90 + 5 * k, 10 * k, 0], [0, 2 * k - 3, 1.0]) for k in range(4)]
    frames = np.stack([_frame(vol, ijk, t) for t in truths])
    fn = make_method("lncc", vol, ijk, (H, W), np.ones((H, W), bool), config=SYN_CONFIG)
    calib = calibrate(fn, np.stack(truths), QCFG)
    return fn, calib, truths, frames


def _no_nan(obj):
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_no_nan(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_no_nan(v) for v in obj)
    return True


def test_calibration_of_the_synthetic_volume(syn):
    """Simulated registrations on the volume: both outcomes occur, the similarity that
    correct poses reach and the Hessian's scale are finite and positive."""
    _, calib, _, _ = syn
    assert calib.runs == QCFG.calibration_runs
    assert 0 < calib.failures < calib.runs
    assert 0 < calib.ok_lncc <= 1 and calib.scale_mm > 0 and calib.scale_deg > 0
    assert calib.spread_mm[0] <= calib.scale_mm <= calib.spread_mm[1]


def test_quality_value_is_never_nan():
    """Missing / NaN signals and no calibration: the verdict is doubtful with reasons,
    the dict has no NaN (json with allow_nan=False accepts it)."""
    sig = {"lncc": float("nan"), "overlap": float("nan"), "hessian_mm": float("nan"),
           "hessian_deg": float("nan"), "restart_mm": float("nan"),
           "restart_deg": float("nan")}
    q = judge(sig, None)
    d = q.to_dict()
    assert d["verdict"] == "doubtful" and d["reasons"]
    assert any("could not be computed" in r for r in d["reasons"])
    json.dumps(d, allow_nan=False)
    assert _no_nan(d["estimate"]) and _no_nan(d["interval"])


def test_correct_result_is_ok(syn):
    fn, calib, truths, frames = syn
    start = perturb_about_point(truths[1], [0.03, -0.02, 0.02, 1.5, -1.0, 1.0], CENTRE)
    res, q = register_one_checked(fn, frames[1], start, calib=calib, config=QCFG)
    rot, tra = pose_errors(res.image_to_reference, truths[1], CENTRE)
    assert rot < 0.5 and tra < 0.5
    assert q.verdict == "ok", q.summary()
    assert q.estimate["translation_mm"] < 2 and q.estimate["rotation_deg"] < 2
    lo, hi = q.interval["translation_mm"]
    assert lo <= q.estimate["translation_mm"] <= hi
    assert q.signals["restart_mm"] < 1.0 and q.signals["overlap"] > 0.9
    json.dumps(q.to_dict(), allow_nan=False)


def test_wrong_result_is_failed(syn):
    """A result forced 6 mm / 12 deg off the true pose (the registration's own similarity
    values kept) gets ``failed``: restarts from it end far away; its estimate is large."""
    fn, calib, truths, frames = syn
    good = fn(frames[1][None], truths[1][None])[0]
    wrong_pose = perturb_about_point(truths[1], [0.12, 0.15, -0.1, 4.0, -3.0, 3.0], CENTRE)
    wrong = FrameResult(start_image_to_reference=truths[1], image_to_reference=wrong_pose,
                        correction=wrong_pose @ np.linalg.inv(truths[1]),
                        lncc_start=good.lncc_start, lncc=good.lncc, overlap=good.overlap,
                        iterations=good.iterations, seconds=0.0)
    _, q = assess(fn, frames[1], wrong, calib, QCFG)
    assert q.verdict == "failed", q.summary()
    assert any("restarts" in r for r in q.reasons)
    assert max(q.estimate["translation_mm"] / 2, q.estimate["rotation_deg"] / 2) > 1


def test_frame_without_data_under_the_plane_is_skipped(syn):
    """A start whose fan lies outside the volume: not registered, skipped with the reason;
    in a sequence it is listed as skipped and the other frames are registered."""
    fn, calib, truths, frames = syn
    off = truths[0].copy()
    off[:3, 3] += [0.0, 0.0, 60.0]
    res, q = register_one_checked(fn, frames[0], off, calib=calib, config=QCFG)
    assert res is None and q.verdict == "skipped"
    assert "no overlap with the volume at the start pose" in q.reasons[0]
    out = register_checked(fn, frames[:2], np.stack([off, truths[1]]), temporal=False,
                           indices=[10, 11], config=QCFG, calibration=calib)
    assert [c.index for c in out] == [10, 11]
    assert out[0].result is None and out[0].quality.verdict == "skipped"
    assert out[1].result is not None and out[1].quality.verdict == "ok"


class _FirstCallWrong:
    """The real method, except that its first call returns a pose 5 mm / 10 deg off
    (a failure the retries must recover from)."""

    def __init__(self, fn):
        self.fn, self.registrar, self.calls = fn, fn.registrar, 0

    def __call__(self, frames, starts, init_corrections=None, **kw):
        out = self.fn(frames, starts, init_corrections=init_corrections, **kw)
        self.calls += 1
        if self.calls == 1:
            r = out[0]
            bad = perturb_about_point(r.image_to_reference, [0.1, -0.12, 0.08, 3, 3, -2.5],
                                      CENTRE)
            r.image_to_reference = bad
            r.correction = bad @ np.linalg.inv(r.start_image_to_reference)
        return out


def test_retry_picks_the_better_verdict(syn):
    fn, calib, truths, frames = syn
    flaky = _FirstCallWrong(fn)
    start = perturb_about_point(truths[2], [0.02, 0.03, -0.02, 1.0, 1.0, -1.0], CENTRE)
    res, q = register_one_checked(flaky, frames[2], start, calib=calib, config=QCFG,
                                  previous_correction=np.eye(4))
    assert q.verdict == "ok", q.summary()
    first = q.signals["first_attempt"]
    assert first["verdict"] == "failed" and first["reasons"]
    assert q.signals["retried_from"] == "the previous good frame's correction"
    assert any("first attempt failed" in r for r in q.reasons)
    rot, tra = pose_errors(res.image_to_reference, truths[2], CENTRE)
    assert rot < 0.5 and tra < 0.5
    # Without retries the failure stays.
    flaky2 = _FirstCallWrong(fn)
    _, q2 = register_one_checked(flaky2, frames[2], start, calib=calib,
                                 config=QualityConfig(retry=False, calibration_runs=16))
    assert q2.verdict == "failed"


def test_live_mode_keeps_the_last_good_correction(syn):
    """Frames 0 and 1 good; frame 2 is noise (nothing to match): failed, the correction
    stays frame 1's and the quality says so; frame 3 starts from frame 1's correction."""
    fn, calib, truths, frames = syn
    fn.registrar._quality_calibration = calib
    offset = perturb_about_point(np.eye(4), [0.02, -0.01, 0.02, 1.0, 0.5, -0.5], CENTRE)
    tracked = [np.linalg.inv(offset) @ t for t in truths]  # tracking error = offset^-1
    live = CheckedLive(fn, QCFG)
    r0, q0 = live.update(frames[0], tracked[0])
    r1, q1 = live.update(frames[1], tracked[1])
    assert q0.verdict == "ok" and q1.verdict == "ok"
    np.testing.assert_allclose(live.correction, r1.correction)
    noise = np.random.default_rng(3).random((H, W)) * 200
    r2, q2 = live.update(noise, tracked[2])
    assert q2.verdict in ("failed", "skipped"), q2.summary()
    assert any("kept the last good correction (frame 1)" in r for r in q2.reasons)
    np.testing.assert_allclose(live.correction, r1.correction)
    assert q2.signals["kept_correction_of"] == 1
    r3, q3 = live.update(frames[3], tracked[3])
    assert q3.verdict == "ok"
    rot, tra = pose_errors(r3.image_to_reference, truths[3], CENTRE)
    assert rot < 0.5 and tra < 0.5
    # The sequence loop: the failed frame never seeds the next one.
    out = register_checked(fn, np.stack([frames[0], noise, frames[3]]),
                           np.stack([tracked[0], tracked[2], tracked[3]]), temporal=True,
                           config=QCFG, calibration=calib)
    assert out[1].quality.verdict in ("failed", "skipped")
    assert out[2].seeded_by == 0 and out[2].quality.verdict == "ok"


def test_local_fit_backends_agree(syn):
    """The Hessian signal's cost and J^T J: compiled kernels vs the torch path."""
    from dataclasses import replace

    fn, _, truths, frames = syn
    vol = fn.registrar
    tr = make_method("lncc", vol.volume.data[0, 0].numpy(), vol.volume.ijk_to_reference.numpy(),
                     (H, W), np.ones((H, W), bool),
                     config=replace(SYN_CONFIG, backend="torch")).registrar
    if not vol._compiled:
        pytest.skip("numba not installed")
    pose = perturb_about_point(truths[1], [0.02, 0.0, 0.01, 0.5, 0.3, 0.2], CENTRE)
    a, b = vol.local_fit(frames[1], pose), tr.local_fit(frames[1], pose)
    assert a["cost"] == pytest.approx(b["cost"], rel=1e-3)
    np.testing.assert_allclose(a["JtJ"], b["JtJ"], rtol=2e-3, atol=1e-5 * np.abs(b["JtJ"]).max())


def test_issue_identity_frame_is_retried_or_skipped(sample_data):
    """Issue #12: frame 20 of the shipped sweep against PLUS's volume, from a start
    5.4 mm / 4.7 deg away, came back with an identity correction, unflagged. Now the
    unchanged result is retried from other starts and ends correct, or is skipped with
    the reason, never returned silently."""
    from USSliceRegLib.bench import _Sweep, default_paths
    from USSliceRegLib.plus_io import read_reference_volume
    from USSliceRegLib.quality_bench import ranged_perturbations

    sweep = _Sweep(*default_paths()[:2])
    vol = read_reference_volume(default_paths()[2])
    fn = make_method("lncc", vol.array, vol.ijk_to_reference, sweep.seq.frame_shape, sweep.fan)
    c = sweep.centre_px
    tw = ranged_perturbations(21 * 30, 3, 10, 3, 10, 0)
    for a in range(30):
        start = perturb_about_point(sweep.truth[20], tw[20 * 30 + a], c)
        if fn.registrar.overlap(start[None])[0] >= 0.6:
            break
    plain = fn(sweep.seq.images[20][None], start[None])[0]
    np.testing.assert_allclose(plain.correction, np.eye(4))  # the issue's silent no-op
    calib = calibrate(fn, np.stack([sweep.truth[i] for i in sweep.usable]),
                      QualityConfig(calibration_runs=12))
    res, q = register_one_checked(fn, sweep.seq.images[20], start, calib=calib)
    if res is None:
        assert q.verdict == "skipped"
        assert "start returned unchanged" in q.reasons[0]
    else:
        rot, tra = pose_errors(res.image_to_reference, sweep.truth[20], c)
        assert (rot <= 2 and tra <= 2) or q.verdict != "ok", (rot, tra, q.summary())
        if np.allclose(res.correction, np.eye(4)):  # returned unchanged: never silently
            assert q.verdict != "ok" and any("unchanged" in r for r in q.reasons)


def test_torch_backend_gives_the_same_verdicts(syn):
    """The checks on the torch path (the GPU / reference backend): a correct start is ok,
    the forced wrong pose of test_wrong_result_is_failed is failed."""
    from dataclasses import replace

    fn, calib, truths, frames = syn
    reg = fn.registrar
    tfn = make_method("lncc", reg.volume.data[0, 0].numpy(), reg.volume.ijk_to_reference.numpy(),
                      (H, W), np.ones((H, W), bool), config=replace(SYN_CONFIG, backend="torch"))
    assert not tfn.registrar._compiled
    start = perturb_about_point(truths[1], [0.03, -0.02, 0.02, 1.5, -1.0, 1.0], CENTRE)
    res, q = register_one_checked(tfn, frames[1], start, calib=calib, config=QCFG)
    assert q.verdict == "ok", q.summary()
    wrong_pose = perturb_about_point(truths[1], [0.12, 0.15, -0.1, 4.0, -3.0, 3.0], CENTRE)
    wrong = FrameResult(start_image_to_reference=truths[1], image_to_reference=wrong_pose,
                        correction=wrong_pose @ np.linalg.inv(truths[1]),
                        lncc_start=res.lncc_start, lncc=res.lncc, overlap=res.overlap,
                        iterations=res.iterations, seconds=0.0)
    _, q2 = assess(tfn, frames[1], wrong, calib, QCFG)
    assert q2.verdict == "failed", q2.summary()
