"""Simulation and intensity-based registration on the shipped (real) CT.

The CT is Resources/SampleData/ct/thorax_aorta_ct_cropped.nii.gz downsampled to 3 mm;
the X-rays are SYNTHETIC (DRRs with simulated detector effects) at known poses, so the
registration error is measured against exact ground truth with the core's metrics.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from FluoroRegLib.drr import render_drr
from FluoroRegLib.geometry import make_camera
from FluoroRegLib.refine import XRayView, register_intensity
from FluoroRegLib.simulate import (downsample_ct, mtre_np, random_initial_pose, read_ct,
                                   simulate_case, xray_effects)
from SurgicalReg2D3DLib import metrics
from SurgicalReg2D3DLib.errors import GeometryError, InputError

torch.set_num_threads(1)


def test_read_ct_geometry_matches_simpleitk(sample_data):
    path = sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz"
    hu, m = read_ct(path)
    image = sitk.ReadImage(str(path))
    assert hu.shape == tuple(reversed(image.GetSize()))
    for ijk in [(0, 0, 0), (10, 20, 30), (119, 125, 163)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = m @ np.r_[ijk, 1.0]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
    assert hu[30, 20, 10] == sitk.GetArrayFromImage(image)[30, 20, 10]


def test_downsample_ct_block_means_and_centres():
    rng = np.random.default_rng(0)
    hu = rng.normal(size=(9, 8, 7)).astype(np.float32)
    m = np.array([[0, 0, 1.5, -3], [0, 2.0, 0, 4], [-1.0, 0, 0, 7], [0, 0, 0, 1]])
    small, m2 = downsample_ct(hu, m, 2)
    assert small.shape == (4, 4, 3)
    np.testing.assert_allclose(small[1, 2, 0], hu[2:4, 4:6, 0:2].mean(), rtol=1e-5)
    # New voxel (i, j, k) = (0, 2, 1) sits at the mean RAS position of its 8 old voxels.
    old = np.array([[i, j, k, 1.0] for i in (0, 1) for j in (4, 5) for k in (2, 3)]) @ m.T
    np.testing.assert_allclose(m2 @ [0, 2, 1, 1.0], old.mean(0), atol=1e-12)


def test_random_initial_pose_has_requested_mtre(ct3mm):
    _, _, vol, lm = ct3mm
    rng = np.random.default_rng(3)
    true = np.eye(4)
    true[2, 3] = 600
    for lo, hi in [(0, 5), (10, 20), (30, 45)]:
        init = random_initial_pose(true, vol.center_ras(), lm, rng, (lo, hi))
        e = float(metrics.mtre(torch.tensor(init), torch.tensor(true), torch.tensor(lm)))
        assert lo - 1e-6 <= e <= hi + 1e-6


def test_xray_effects_noiseless_is_identity_and_noise_is_unbiased():
    rng = np.random.default_rng(0)
    L = np.tile(np.linspace(0.1, 3.0, 64), (64, 1))
    clean = xray_effects(L, rng, photons=None, electronic_sigma=0, blur_sigma_px=0)
    np.testing.assert_allclose(clean, L, rtol=1e-5)
    raw = xray_effects(L, rng, photons=None, electronic_sigma=0, blur_sigma_px=0,
                       negative_log=False)
    np.testing.assert_allclose(raw, 1e4 * np.exp(-L), rtol=1e-5)
    noisy = xray_effects(L, rng, photons=1e5, electronic_sigma=0, blur_sigma_px=0)
    assert 0.001 < np.std(noisy - L) < 0.05
    assert abs(np.mean(noisy - L)) < 0.005


def _views(case, n):
    return [XRayView(case.images[k], case.cameras[k],
                     case.true_ct_to_camera[k] @ np.linalg.inv(case.true_ct_to_camera[0]))
            for k in range(n)]


@pytest.mark.parametrize("similarity", ["ncc", "gradncc"])
def test_lm_registers_simulated_xray(ct3mm, similarity):
    _, _, vol, lm = ct3mm
    cam = make_camera(1000.0, (5.0, 5.0), (48, 48))
    case = simulate_case(vol, cam, np.random.default_rng(1), lm, mtre_range_mm=(10, 20),
                         rotation_range_deg=(5, 10))
    assert case.info["synthetic"] is True
    assert 10 <= case.initial_mtre_mm <= 20
    res = register_intensity(vol, _views(case, 1), case.init_ct_to_camera[0],
                             similarity=similarity, optimizer="lm", levels=(2, 1),
                             iterations=10, n_samples=64)
    err = mtre_np(res.ct_to_camera, case.true_ct_to_camera[0], lm)
    assert err < 3.0, err
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_two_view_lm_is_accurate_and_keeps_relative_geometry(ct3mm):
    _, _, vol, lm = ct3mm
    cam = make_camera(1000.0, (5.0, 5.0), (48, 48))
    case = simulate_case(vol, cam, np.random.default_rng(0), lm, views=("AP", "LAT"),
                         mtre_range_mm=(10, 20), rotation_range_deg=(5, 10))
    res = register_intensity(vol, _views(case, 2), case.init_ct_to_camera[0], levels=(2, 1),
                             iterations=10, n_samples=64, landmarks_ras=lm,
                             true_ct_to_camera=case.true_ct_to_camera[0])
    assert res.metrics["mtre_mm"] < 1.0
    assert res.metrics["mtre_mm"] == pytest.approx(
        mtre_np(res.ct_to_camera, case.true_ct_to_camera[0], lm))
    rel_true = case.true_ct_to_camera[1] @ np.linalg.inv(case.true_ct_to_camera[0])
    np.testing.assert_allclose(res.views_ct_to_camera[1], rel_true @ res.ct_to_camera, atol=1e-9)


def test_jacobian_at_an_unchanged_point_is_reused_not_rerendered(ct3mm, monkeypatch):
    """After a rejected LM step the point has not moved: the Jacobian is returned from
    the last evaluation (no render), equal to a fresh one; a moved point renders."""
    import torch

    from FluoroRegLib import refine

    _, _, vol, lm = ct3mm
    cam = make_camera(1000.0, (5.0, 5.0), (32, 32))
    case = simulate_case(vol, cam, np.random.default_rng(2), lm, mtre_range_mm=(5, 10),
                         rotation_range_deg=(5, 10))
    views = refine.prepare_views(_views(case, 1))
    init = case.init_ct_to_camera[0]
    center = (init @ np.r_[vol.center_ras(), 1.0])[:3]
    prob = refine._Problem(vol, views, [cam], init, center, "ncc", "trilinear", 32)
    steps = refine.fd_steps(cam, center, vol.device)
    renders = []
    real = refine.render_drr
    monkeypatch.setattr(refine, "render_drr",
                        lambda *a, **k: renders.append(1) or real(*a, **k))
    x = torch.zeros(1, 6, dtype=torch.float64)
    j1 = prob.jacobian(x, steps)
    n1 = len(renders)
    assert n1 >= 1
    j2 = prob.jacobian(x.clone(), steps)
    assert len(renders) == n1  # same point: nothing rendered
    assert torch.equal(j1, j2)
    fresh = refine._Problem(vol, views, [cam], init, center, "ncc", "trilinear", 32)
    assert torch.equal(fresh.jacobian(x, steps), j1)  # what a fresh evaluation gives
    x2 = x + 1e-3
    j3 = prob.jacobian(x2, steps)
    assert len(renders) > n1 + 1 and not torch.equal(j3, j1)


def test_adam_baseline_reduces_error(ct3mm):
    _, _, vol, lm = ct3mm
    cam = make_camera(1000.0, (5.0, 5.0), (48, 48))
    case = simulate_case(vol, cam, np.random.default_rng(2), lm, mtre_range_mm=(8, 12),
                         rotation_range_deg=(3, 6))
    res = register_intensity(vol, _views(case, 1), case.init_ct_to_camera[0], optimizer="adam",
                             levels=(2, 1), iterations=20, n_samples=64)
    err = mtre_np(res.ct_to_camera, case.true_ct_to_camera[0], lm)
    assert err < 0.3 * case.initial_mtre_mm, (err, case.initial_mtre_mm)


def test_registration_bad_inputs(ct3mm):
    _, _, vol, _ = ct3mm
    cam = make_camera(1000.0, (5.0, 5.0), (16, 16))
    pose = np.eye(4)
    pose[2, 3] = 600
    img = np.random.default_rng(0).random((16, 16))
    with pytest.raises(InputError, match=r"^X-ray image: expected a 2D image, got shape \(3, 16, 16\)"):
        register_intensity(vol, [XRayView(np.stack([img] * 3), cam)], pose)
    with pytest.raises(InputError, match=r"^X-ray image: all pixels are zero"):
        register_intensity(vol, [XRayView(np.zeros((16, 16)), cam)], pose)
    with pytest.raises(GeometryError, match=r"^X-ray geometry: size_px \[W, H\] = \[16, 16\] does not "
                                            r"match x-ray image \(H, W\) = \(16, 20\)"):
        register_intensity(vol, [XRayView(np.random.default_rng(0).random((16, 20)), cam)], pose)
    nan_pose = pose.copy()
    nan_pose[0, 0] = np.nan
    with pytest.raises(GeometryError, match=r"^initial ct_to_camera: contains NaN"):
        register_intensity(vol, [XRayView(img, cam)], nan_pose)
    shear = pose.copy()
    shear[0, 1] = 0.2
    with pytest.raises(GeometryError, match=r"^initial ct_to_camera: rotation part is not orthonormal"):
        register_intensity(vol, [XRayView(img, cam)], shear)
    with pytest.raises(InputError, match=r"^similarity: expected one of"):
        register_intensity(vol, [XRayView(img, cam)], pose, similarity="mi")
    with pytest.raises(InputError, match=r"^X-ray images: at least one view is needed"):
        register_intensity(vol, [], pose)


def test_drr_of_shipped_ct_is_bright_where_the_body_is(ct3mm):
    # Sanity on real data: the body projects inside the image and air rays are ~0.
    _, _, vol, _ = ct3mm
    from FluoroRegLib.geometry import look_at_pose
    cam = make_camera(1000.0, (8.0, 8.0), (48, 48))
    drr = render_drr(vol, cam, look_at_pose(vol.center_ras(), "AP", 600.0))[0]
    assert float(drr[24, 24]) > 1.0          # through the thorax: several mu*mm
    assert float(drr[0, 0]) < 0.05 * float(drr.max())  # outside the CT box
