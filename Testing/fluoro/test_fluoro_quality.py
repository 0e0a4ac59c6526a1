"""FluoroReg quality value: verdicts at known poses, never NaN, retry, CLI output.

X-ray images are SYNTHETIC (simulated from the shipped real CT, block-averaged x2).
"""

import json
import math

import numpy as np
import pytest
import torch

from FluoroRegLib import logic
from FluoroRegLib import quality as fq
from FluoroRegLib import recovery
from FluoroRegLib.geometry import make_camera
from FluoroRegLib.refine import RegistrationResult, XRayView, register_intensity
from FluoroRegLib.simulate import mtre_np, perturb_pose, simulate_case
from FluoroRegLib.xray_io import save_xray, write_pose_json
from SurgicalReg2D3DLib.cli import main as surgreg_main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def case96(ct3mm):
    """One single-view case at the geometry the default model was fitted for (96 px,
    3.125 mm pixels, SDD 1000 mm)."""
    hu, m, vol, lm = ct3mm
    cam = make_camera(1000.0, (300 / 96, 300 / 96), (96, 96))
    case = simulate_case(vol, cam, np.random.default_rng(3), lm, views=("AP",),
                         mtre_range_mm=(20, 25), rotation_range_deg=(8, 12),
                         effects={"photons": 2e4})
    return vol, cam, case, lm


def _finite_everywhere(d):
    if isinstance(d, dict):
        return all(_finite_everywhere(v) for v in d.values())
    if isinstance(d, (list, tuple)):
        return all(_finite_everywhere(v) for v in d)
    if isinstance(d, float):
        return math.isfinite(d)
    return True


def test_true_pose_is_ok_and_wrong_pose_failed(case96):
    vol, cam, case, lm = case96
    views = [XRayView(case.images[0], cam)]
    truth = case.true_ct_to_camera[0]
    # the similarity's optimum next to the truth (what a successful registration returns)
    res = register_intensity(vol, views, truth, levels=(1,), iterations=10)
    assert mtre_np(res.ct_to_camera, truth, lm) < 1.0
    q_ok = fq.assess(vol, views, res.ct_to_camera, truth, res.history, 10)
    assert q_ok.verdict == "ok", q_ok.summary()
    assert q_ok.estimate["mtre_mm"] < 1.0
    lo, hi = q_ok.interval["mtre_mm"]
    assert lo <= q_ok.estimate["mtre_mm"] <= hi
    # 6 deg about the CT centre: an mTRE of many mm, far outside any success
    wrong = perturb_pose(truth, vol.center_ras(), (0.0, 6.0, 0.0), (0.0, 0.0, 0.0))
    assert mtre_np(wrong, truth, lm) > 5.0
    q_bad = fq.assess(vol, views, wrong)
    assert q_bad.verdict == "failed", q_bad.summary()
    assert q_bad.estimate["mtre_mm"] > q_ok.estimate["mtre_mm"]
    assert q_bad.reasons
    assert _finite_everywhere(q_ok.to_dict()) and _finite_everywhere(q_bad.to_dict())


def test_never_nan(case96):
    vol, cam, case, _ = case96
    views = [XRayView(case.images[0], cam)]
    q = fq.assess(vol, views, np.full((4, 4), np.nan))
    assert q.verdict == "failed" and _finite_everywhere(q.to_dict())
    # CT entirely outside the field of view: the DRR is empty, nothing to compare
    away = case.true_ct_to_camera[0].copy()
    away[0, 3] += 5000.0
    q = fq.assess(vol, views, away)
    d = q.to_dict()
    assert d["verdict"] in ("doubtful", "failed")
    assert _finite_everywhere(d)
    assert all(v is None or math.isfinite(v) for v in d["estimate"].values())


def test_retry_keeps_the_better_verdict(case96):
    vol, cam, case, lm = case96
    views = [XRayView(case.images[0], cam)]
    truth = case.true_ct_to_camera[0]
    # a "result" 6 deg off: failed; the retry (ncc from +-5 mm along the weak direction,
    # finest two levels) must come back near the truth and be kept
    start = perturb_pose(truth, vol.center_ras(), (0.0, 3.0, 0.0), (0.0, 0.0, 0.0))
    bad = RegistrationResult(start, [start], 0.0, "ncc", [], 0.0)
    q, kept, info = recovery.assess_and_retry(vol, views, bad, start, method="ncc",
                                        options={"levels": (2, 1), "iterations": 10})
    assert info["attempts"][0]["verdict"] == "failed"
    assert len(info["attempts"]) == 3  # the original and two retries, all reported
    assert info["chosen"] > 0
    assert q.verdict != "failed"
    assert mtre_np(kept.ct_to_camera, truth, lm) < mtre_np(start, truth, lm)
    assert q.signals["attempts"] == info["attempts"]
    # a result that is already fine is not retried
    good = RegistrationResult(truth, [truth], 0.0, "ncc", [], 0.0)
    q2, kept2, info2 = recovery.assess_and_retry(vol, views, good, start, method="ncc")
    assert len(info2["attempts"]) == 1 and kept2 is good and q2.verdict == "ok"


def test_fit_model_separates_and_sets_threshold():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, len(fq.FEATURES)))
    err = np.exp(0.8 * x[:, 0] - 0.3)
    m = fq.fit_model(x, err, ridge=0.0)
    assert m.coef[0] == pytest.approx(0.8, abs=1e-6)
    est = np.exp([m.predict_log(r) for r in x])
    flagged_ok = (est[err < 1.0] >= m.fail_mm).mean()
    assert flagged_ok <= 0.05
    assert (est[err >= 1.0] >= m.fail_mm).mean() > 0.8


def test_cli_register_reports_quality_and_warns(ct3mm, case96, tmp_path, capsys):
    hu, m, vol, lm = ct3mm
    _, cam, case, _ = case96
    import SimpleITK as sitk

    ct_path = tmp_path / "ct.nrrd"
    img = sitk.GetImageFromArray(hu)
    from SurgicalReg2D3DLib.nodes import LPS_TO_RAS
    lps = LPS_TO_RAS @ m
    img.SetSpacing([float(s) for s in np.linalg.norm(lps[:3, :3], axis=0)])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    d = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
    img.SetDirection([float(v) for v in d.ravel()])
    sitk.WriteImage(img, str(ct_path))
    save_xray(case.images[0], cam, tmp_path / "x.nrrd", tmp_path / "g.json")
    # a start 70 deg off with one iteration: the result cannot be right, and the
    # recovery's restarts (near the result) and polish cannot rescue it either
    far = perturb_pose(case.true_ct_to_camera[0], vol.center_ras(), (0, 70, 0), (0, 0, 0))
    write_pose_json(tmp_path / "init.json", [far])
    out = tmp_path / "out.json"
    rc = surgreg_main(["fluoro", "register", "--ct", str(ct_path), "--xray", str(tmp_path / "x.nrrd"),
                       "--geometry", str(tmp_path / "g.json"), "--init", str(tmp_path / "init.json"),
                       "--levels", "2", "--iterations", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1, captured.err   # a failed verdict: the exit code says so too
    res = json.loads(out.read_text())
    assert res["quality"]["verdict"] == "failed"
    assert res["quality"]["estimate"]["mtre_mm"] > 1.0
    assert len(res["view_quality"]) == 1
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning: fluoro case")]
    assert len(warnings) == 1 and "failed" in warnings[0]
    assert "retry" in res and res["retry"]["attempts"][0]["start"] == "original"
    # --quality-polish all from the true pose: the result is polished (and judged with
    # the detector model) even though it is fine; a success exits 0
    write_pose_json(tmp_path / "true.json", [case.true_ct_to_camera[0]])
    rc = surgreg_main(["fluoro", "register", "--ct", str(ct_path), "--xray", str(tmp_path / "x.nrrd"),
                       "--geometry", str(tmp_path / "g.json"), "--init", str(tmp_path / "true.json"),
                       "--levels", "1", "--iterations", "3", "--quality-polish", "all",
                       "--out", str(out)])
    captured = capsys.readouterr()
    res = json.loads(out.read_text())
    assert rc == 0, captured.err
    assert "polish_shift_mm" in res["metrics"] and 0.2 < res["metrics"]["detector_sigma_px"] < 1.5
    assert "detector_sigma_px" in res["quality"]["signals"]


def test_calibrate_per_ct_is_cached(ct3mm, tmp_path, monkeypatch):
    _, _, vol, _ = ct3mm
    monkeypatch.setenv("SURGREG_CACHE", str(tmp_path))
    cam = make_camera(1000.0, (8.0, 8.0), (32, 32))
    pose = logic.default_initial_pose(vol, cam)
    opts = {"levels": (1,), "iterations": 2}
    m1 = fq.calibrate(vol, cam, pose, options=opts, n_cases=3, seed=1)
    files = list((tmp_path / "fluoro_quality").glob("*.json"))
    assert len(files) == 1 and m1.n == 3 and "calibrated" in m1.source
    assert all(math.isfinite(c) for c in m1.coef) and m1.fail_mm > 0
    # the second call reads the cache (same numbers, no new file); another CT does not
    m2 = fq.calibrate(vol, cam, pose, options=opts, n_cases=3, seed=1)
    assert m2.to_dict() == m1.to_dict()
    assert fq.fingerprint(vol, [cam], "ncc", opts) != fq.fingerprint(vol, [cam.scaled(2)], "ncc", opts)
    q = fq.assess(vol, [XRayView(np.ones((32, 32), np.float32) + np.eye(32, dtype=np.float32), cam)],
                  pose, model=m1)
    assert q.signals["model"] == m1.source and _finite_everywhere(q.to_dict())


def test_two_view_quality_per_view_from_the_joint_renders(ct3mm):
    """Per view of a two-view result: each view's similarity equals a DRR of that view
    rendered apart; its sigma agrees with the view measured alone; at the true pose both
    views fit. When the patient moved between the exposures (the second X-ray of the CT
    moved by 3 mm / 2 deg), the second view is judged ``failed`` as not fitting the pose,
    the first is not."""
    from FluoroRegLib.drr import render_drr
    from FluoroRegLib.logic import make_views
    from FluoroRegLib.refine import image_similarity
    from FluoroRegLib.simulate import xray_effects

    hu, m, vol, lm = ct3mm
    cam = make_camera(1000.0, (300 / 96, 300 / 96), (96, 96))
    case = simulate_case(vol, cam, np.random.default_rng(5), lm, views=("AP", "LAT"),
                         effects={"photons": 2e4})
    views, truth = make_views(case.images, case.cameras, case.true_ct_to_camera)
    q = fq.assess(vol, views, truth)
    per = fq.view_qualities(q, 2)
    assert len(per) == 2 and q.signals["views"]
    for k, (v, vq) in enumerate(zip(views, per)):
        with torch.no_grad():
            drr = render_drr(vol, cam, torch.as_tensor(v.camera0_to_view @ truth,
                                                       dtype=torch.float32))
            sim = float(image_similarity(drr, torch.as_tensor(v.image), "ncc")[0])
        assert vq.signals["similarity"] == pytest.approx(sim, abs=2e-4)
        alone = fq.measure_signals(vol, [XRayView(v.image, cam)], v.camera0_to_view @ truth)
        assert vq.signals["sigma_mm"] == pytest.approx(alone["sigma_mm"], rel=0.25)
        assert vq.signals["cost_ratio"] < fq.VIEW_FIT_FAIL_RATIO
        assert vq.estimate == q.estimate and vq.signals["view"] == k + 1
    # the patient moved between the exposures: view 2 is of the moved CT
    c = vol.center_ras()
    motion = perturb_pose(np.eye(4), c, (0.0, 0.0, 2.0), (3.0, 0.0, 0.0))
    with torch.no_grad():
        line = render_drr(vol, cam, case.true_ct_to_camera[1] @ motion, method="siddon")[0]
    moved = [case.images[0], xray_effects(line.numpy(), np.random.default_rng(1), photons=2e4)]
    views, truth = make_views(moved, case.cameras, case.true_ct_to_camera)
    per = fq.view_qualities(fq.assess(vol, views, truth), 2)
    assert per[1].verdict == "failed", per[1].summary()
    assert any("does not fit the pose" in r for r in per[1].reasons)
    assert per[0].signals["cost_ratio"] < fq.VIEW_FIT_FAIL_RATIO
    assert not any("does not fit" in r for r in per[0].reasons)
