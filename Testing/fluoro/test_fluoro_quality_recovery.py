"""FluoroReg recovery: the detector model, the polish that removes the depth bias of
intensity-domain detector blur, and the restarts of a failed case.

X-ray images are SYNTHETIC (simulated from the shipped real CT, block-averaged x2).
"""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from FluoroRegLib import detector, recovery
from FluoroRegLib.drr import render_drr
from FluoroRegLib.geometry import make_camera
from FluoroRegLib.refine import RegistrationResult, XRayView, register_intensity
from FluoroRegLib.simulate import mtre_np, perturb_pose, random_view_pose, xray_effects

torch.set_num_threads(1)


def test_detector_drr_matches_scipy_and_is_identity_without_blur():
    rng = np.random.default_rng(0)
    L = np.zeros((1, 20, 24))
    L[0, 5:15, 6:18] = 3.0
    L += rng.uniform(0, 0.2, L.shape)
    t = torch.as_tensor(L)
    assert torch.equal(detector.detector_drr(t, 1.3, 0.0), t)
    out = detector.detector_drr(t, 1.3, 1.2)[0].numpy()
    # independent reference: scipy's Gaussian of the intensities ('nearest' = replicate);
    # scipy truncates at 4 sigma, the model at ceil(3 sigma): agree to ~1e-3 of the range
    ref = -np.log(gaussian_filter(np.exp(-1.3 * L[0]), 1.2, mode="nearest", truncate=3.0 / 1.2 * np.ceil(3 * 1.2) / 3.0)) / 1.3
    assert np.abs(out - ref).max() < 1e-6
    # Jensen: next to the edge the detector image is below the blurred line integral
    # (attenuating structures look smaller), far from edges they agree
    lin = gaussian_filter(L[0], 1.2, mode="nearest")
    assert (out[5:15, 5] - lin[5:15, 5]).mean() < -0.05
    assert abs(out[10, 12] - lin[10, 12]) < 0.05


@pytest.fixture(scope="module")
def blurred_case(ct3mm):
    """A noise-free X-ray of the 3 mm CT with 1.0 px blur of the intensities (64 px)."""
    hu, m, vol, lm = ct3mm
    cam = make_camera(1000.0, (300 / 64, 300 / 64), (64, 64))
    truth = random_view_pose(vol.center_ras(), np.random.default_rng(5), "AP", 600.0)
    with torch.no_grad():
        L = render_drr(vol, cam, truth, method="siddon")[0].numpy()
    rng = np.random.default_rng(1)
    img = xray_effects(L, rng, photons=None, electronic_sigma=0.0, blur_sigma_px=1.0)
    sharp = xray_effects(L, rng, photons=None, electronic_sigma=0.0, blur_sigma_px=0.0)
    return vol, cam, truth, lm, img, sharp


def _along_ray(pose, truth, vol):
    c = np.r_[vol.center_ras(), 1.0]
    pc = (truth @ c)[:3]
    return float((pose @ c - truth @ c)[:3] @ pc / np.linalg.norm(pc))


def test_polish_removes_the_blur_depth_bias(blurred_case):
    vol, cam, truth, lm, img, _ = blurred_case
    views = [XRayView(img, cam)]
    # the plain NCC optimum found from the truth: pushed away from the source
    plain = register_intensity(vol, views, truth, levels=(1,), iterations=20).ct_to_camera
    bias = _along_ray(plain, truth, vol)
    assert bias > 0.5
    p = detector.polish(vol, views, plain)
    assert p is not None
    assert 0.6 < p["sigma_px"] < 1.4          # the blur width is recovered
    assert abs(p["slope"][0] - 1.0) < 0.1     # the image is -log intensity of the DRR
    assert abs(_along_ray(p["ct_to_camera"], truth, vol)) < 0.3 * bias
    assert mtre_np(p["ct_to_camera"], truth, lm) < 0.5 * mtre_np(plain, truth, lm)
    assert p["similarity"] >= p["similarity_plain_start"]


def test_polish_without_blur_stays_and_refuses_non_log_images(blurred_case):
    vol, cam, truth, lm, _, sharp = blurred_case
    views = [XRayView(sharp, cam)]
    plain = register_intensity(vol, views, truth, levels=(1,), iterations=20).ct_to_camera
    assert mtre_np(plain, truth, lm) < 0.3
    p = detector.polish(vol, views, plain)
    assert p is not None and p["sigma_px"] < 0.4
    assert mtre_np(p["ct_to_camera"], truth, lm) < 0.3
    # an inverted image (attenuation dark) is not -log intensity: no polish
    assert detector.polish(vol, [XRayView(-sharp, cam)], plain) is None


def test_assess_result_recovers_a_failed_case(blurred_case):
    vol, cam, truth, lm, img, _ = blurred_case
    views = [XRayView(img, cam)]
    bad = perturb_pose(truth, vol.center_ras(), (0.0, 3.0, 0.0), (0.0, 0.0, 0.0))
    assert mtre_np(bad, truth, lm) > 2.0
    res = RegistrationResult(bad, [bad], 0.0, "ncc", [], 0.0)
    kept = recovery.assess_result(vol, views, bad, res, "ncc",
                            {"levels": (2,), "iterations": 8}, polish="flagged")
    att = kept.retry["attempts"]
    assert att[0]["start"] == "original" and att[0]["verdict"] == "failed"
    assert len(att) >= 2 and kept.retry["chosen"] > 0
    assert kept.quality.verdict != "failed"
    assert mtre_np(kept.ct_to_camera, truth, lm) < 1.0
    assert kept.quality.signals["attempts"] == att
    # the kept result was polished and judged by the polished model, with its blur width
    assert kept.quality.signals["model"].startswith("default polished")
    assert 0.6 < kept.quality.signals["detector_sigma_px"] < 1.4
    assert "restart_spread_mm" in kept.quality.signals
