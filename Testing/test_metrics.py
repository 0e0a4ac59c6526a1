"""Tests of SurgicalReg2D3DLib.metrics against hand-computed values, numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.metrics import (
    dice,
    geodesic_angle_error_deg,
    mean_projection_error,
    mtre,
    percentiles,
    projected_mtre,
    reprojection_distance_mm,
    reprojection_error_px,
    rotation_error_deg,
    smsr,
    summarize,
    translation_error_mm,
)


def _pose(R, t):
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def test_mtre_hand_computed_and_batched():
    pts = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]])
    T_true = np.eye(4)
    T_shift = _pose(np.eye(3), [3.0, 4.0, 0.0])  # every point moves 5 mm
    assert mtre(T_shift, T_true, pts).item() == pytest.approx(5.0)
    # 90 degrees about z: distances 0, 10*sqrt(2), 10*sqrt(2) -> mean 20 sqrt(2) / 3.
    T_rot = _pose(Rotation.from_euler("z", 90, degrees=True).as_matrix(), [0, 0, 0])
    assert mtre(T_rot, T_true, pts).item() == pytest.approx(20 * math.sqrt(2) / 3)
    batch = mtre(np.stack([T_shift, T_rot]), np.stack([T_true, T_true]), pts)
    np.testing.assert_allclose(batch.numpy(), [5.0, 20 * math.sqrt(2) / 3])
    # Against a plain numpy computation with random poses and per-item points.
    rng = np.random.default_rng(0)
    Te = np.stack([_pose(Rotation.random(random_state=i).as_matrix(), rng.normal(size=3)) for i in range(3)])
    Tt = np.stack([_pose(Rotation.random(random_state=10 + i).as_matrix(), rng.normal(size=3)) for i in range(3)])
    P = rng.normal(size=(3, 7, 3)) * 20
    hom = np.concatenate([P, np.ones((3, 7, 1))], axis=2)
    want = [np.linalg.norm((Te[i] @ hom[i].T - Tt[i] @ hom[i].T)[:3], axis=0).mean() for i in range(3)]
    np.testing.assert_allclose(mtre(Te, Tt, P).numpy(), want, rtol=1e-12)


def test_mtre_differentiable_and_validation():
    T = torch.eye(4, dtype=torch.float64).requires_grad_(True)
    val = mtre(T, torch.eye(4, dtype=torch.float64) + 0.0, torch.ones(2, 3, dtype=torch.float64) * 0.5)
    assert val.item() == 0.0
    with pytest.raises(InputError, match=r"^T_est: expected a 4x4 matrix or a batch \(B, 4, 4\), got \(3, 3\)$"):
        mtre(np.eye(3), np.eye(4), np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"^points: expected shape \(N, 3\) or \(B, N, 3\) with N >= 1, got \(4, 2\)$"):
        mtre(np.eye(4), np.eye(4), np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"^points: contains NaN or infinite values$"):
        mtre(np.eye(4), np.eye(4), np.full((1, 3), np.nan))


def test_mean_projection_error_with_K_callable_and_spacing():
    K = np.array([[1000.0, 0, 256], [0, 1000.0, 256], [0, 0, 1]])
    pts = np.array([[0.0, 0, 0], [20, -10, 5]])
    T_true = _pose(np.eye(3), [0, 0, 1000.0])
    T_est = _pose(np.eye(3), [1.0, 0, 1000.0])  # 1 mm lateral shift
    # Hand values: u shifts by 1000 * 1 / z for each point; v unchanged.
    want_px = np.mean([1000.0 / 1000.0, 1000.0 / 1005.0])
    px, mm = mean_projection_error(K, T_est, T_true, pts, pixel_spacing_mm=(0.2, 0.3))
    assert px.item() == pytest.approx(want_px)
    assert mm.item() == pytest.approx(0.2 * want_px)
    px2, mm2 = projected_mtre(K, T_est, T_true, pts)
    assert mm2 is None and px2.item() == pytest.approx(want_px)

    class Cam:
        pixel_spacing_mm = 0.5

        def project(self, p):
            return p[..., :2] / p[..., 2:] * 1000.0 + 256.0

    px3, mm3 = mean_projection_error(Cam(), T_est, T_true, pts)
    assert px3.item() == pytest.approx(want_px) and mm3.item() == pytest.approx(0.5 * want_px)
    with pytest.raises(InputError, match=r"^camera: expected a 3x3 matrix K"):
        mean_projection_error(np.eye(4), T_est, T_true, pts)
    with pytest.raises(InputError, match=r"^points: some points are behind the camera"):
        mean_projection_error(K, np.eye(4), T_true, pts)


def test_reprojection_distance_ignores_depth_errors():
    pts = np.array([[0.0, 0, 0], [10, 0, 0]])
    T_true = _pose(np.eye(3), [0, 0, 500.0])
    # Moving along the viewing direction of point 0 leaves point 0's RPD at 0.
    T_depth = _pose(np.eye(3), [0, 0, 600.0])
    # Point 1 true (10, 0, 500); estimated ray through (10, 0, 600): distance from the point
    # to the line = |(10,0,500) x d| with d = (10,0,600)/|.| -> hand formula below.
    d = np.array([10, 0, 600.0]) / np.linalg.norm([10, 0, 600.0])
    p = np.array([10, 0, 500.0])
    want = np.mean([0.0, np.linalg.norm(p - p.dot(d) * d)])
    assert reprojection_distance_mm(T_depth, T_true, pts).item() == pytest.approx(want)
    assert mtre(T_depth, T_true, pts).item() == pytest.approx(100.0)
    # A lateral shift of 2 mm at depth 500: RPD ~ 2 mm (small-angle), exact value by formula.
    T_lat = _pose(np.eye(3), [2.0, 0, 500.0])
    assert reprojection_distance_mm(T_lat, T_true, pts[:1]).item() == pytest.approx(
        2.0 * 500.0 / math.hypot(2.0, 500.0))


def test_smsr_percentiles_summarize():
    e = np.array([0.5, 0.9, 1.0, 1.5, 3.0, np.nan])
    assert smsr(e, 1.0) == pytest.approx(100 * 2 / 6)  # strict <, NaN = failure
    assert smsr(torch.tensor([0.1, 0.2]), 1.0) == 100.0
    fin = e[np.isfinite(e)]
    p = percentiles(e, (50, 75, 95))
    assert p == pytest.approx({"p50": np.percentile(fin, 50), "p75": np.percentile(fin, 75),
                               "p95": np.percentile(fin, 95)})
    assert p["p50"] == 1.0
    # by hand (linear interpolation of the 5 sorted finite errors at rank q/100 * 4)
    assert p["p75"] == pytest.approx(1.5) and p["p95"] == pytest.approx(1.5 + 0.8 * 1.5)
    s = summarize(e, threshold=2.0)
    assert s["n"] == 6 and s["n_failed"] == 1
    assert s["mean"] == pytest.approx(6.9 / 5) and s["std"] == pytest.approx(np.std(fin))
    assert s["median"] == 1.0 and s["smsr"] == pytest.approx(100 * 4 / 6)
    with pytest.raises(InputError, match=r"^errors: is empty$"):
        summarize([])
    with pytest.raises(InputError, match=r"^q: percentiles must be in \[0, 100\]"):
        percentiles(e, (50, 120))


def test_rotation_and_geodesic_errors_against_scipy():
    r1 = Rotation.from_rotvec([0.1, 0.2, -0.3])
    r2 = Rotation.from_rotvec([-0.4, 0.0, 0.25])
    want = np.degrees((r1.inv() * r2).magnitude())
    assert rotation_error_deg(r1.as_matrix(), r2.as_matrix()).item() == pytest.approx(want, rel=1e-10)
    assert rotation_error_deg(_pose(r1.as_matrix(), [1, 2, 3]), _pose(r2.as_matrix(), [0, 0, 0])).item() \
        == pytest.approx(want, rel=1e-10)
    # Tiny and 180-degree angles stay accurate.
    small = Rotation.from_rotvec([1e-7, 0, 0]).as_matrix()
    assert rotation_error_deg(np.eye(3), small).item() == pytest.approx(np.degrees(1e-7), rel=1e-6)
    half = Rotation.from_rotvec([0, math.pi, 0]).as_matrix()
    assert rotation_error_deg(np.eye(3), half).item() == pytest.approx(180.0)
    # Quaternions (w, x, y, z), sign-invariant.
    q1 = np.roll(r1.as_quat(), 1)
    q2 = np.roll(r2.as_quat(), 1)
    assert geodesic_angle_error_deg(q1, -q2).item() == pytest.approx(want, rel=1e-10)
    batch = geodesic_angle_error_deg(np.stack([r1.as_matrix()] * 2), np.stack([r2.as_matrix(), r1.as_matrix()]))
    np.testing.assert_allclose(batch.numpy(), [want, 0.0], atol=1e-10)


def test_translation_and_reprojection_error():
    assert translation_error_mm([1.0, 2.0, 2.0], [0.0, 0.0, 0.0]).item() == pytest.approx(3.0)
    assert translation_error_mm(_pose(np.eye(3), [1, 1, 1]), _pose(np.eye(3), [1, 1, 4])).item() == 3.0
    est = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    true = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    mean, std = reprojection_error_px(est, true)
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(np.std([1.0, 5.0, 0.0]))
    m, s = reprojection_error_px(np.stack([est, true]), np.stack([true, true]))
    np.testing.assert_allclose(m.numpy(), [2.0, 0.0])
    with pytest.raises(InputError, match=r"^pts_true: expected the shape of pts_est \(3, 2\), got \(2, 2\)$"):
        reprojection_error_px(est, true[:2])


def test_dice():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True  # 8 pixels
    b[0, 1:3] = True  # 8 pixels, 4 shared -> 2*4/16 = 0.5
    # item 1: both empty -> 1.0
    np.testing.assert_allclose(dice(a, b, batched=True).numpy(), [0.5, 1.0])
    assert dice(a, b).item() == pytest.approx(0.5)
    assert dice(a[0], np.zeros((4, 4))).item() == 0.0
    with pytest.raises(InputError, match=r"^mask_b: expected the shape of mask_a \(2, 4, 4\), got \(4, 4\)$"):
        dice(a, b[0])


def test_metrics_do_not_modify_their_inputs():
    rng = np.random.default_rng(4)
    R = Rotation.from_rotvec([0.1, -0.2, 0.05]).as_matrix()
    T_true = _pose(np.eye(3), [1.0, 2.0, 300.0])
    T_est_np = _pose(R, [1.5, 2.0, 298.0])
    T_est = torch.from_numpy(T_est_np.copy())
    points = rng.uniform(-20, 20, (6, 3))
    K = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    uv_a, uv_b = rng.uniform(0, 500, (6, 2)), rng.uniform(0, 500, (6, 2))
    masks = (rng.random((2, 5, 5)) > 0.5, rng.random((2, 5, 5)) > 0.5)
    errors = np.array([0.5, np.nan, 2.0, 0.1])
    inputs = [T_true, T_est_np, points, K, uv_a, uv_b, masks[0], masks[1], errors]
    copies = [x.copy() for x in inputs]
    tensor_copy = T_est.clone()
    mtre(T_est, T_true, points)
    mean_projection_error(K, T_est_np, T_true, points, pixel_spacing_mm=0.3)
    reprojection_distance_mm(T_est, T_true, points)
    rotation_error_deg(T_est, T_true)
    translation_error_mm(T_est_np, T_true)
    reprojection_error_px(uv_a, uv_b)
    dice(masks[0], masks[1], batched=True)
    summarize(errors)
    for x, c in zip(inputs, copies):
        np.testing.assert_array_equal(x, c)
    assert torch.equal(T_est, tensor_copy)


def test_smsr_interval_is_the_wilson_score_interval():
    from scipy.stats import binomtest

    from SurgicalReg2D3DLib.metrics import smsr_interval

    for k, n in ((17, 20), (3, 11), (40, 40), (0, 20)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = smsr_interval(k, n)
        assert lo == pytest.approx(100 * ci.low, abs=0.02)
        assert hi == pytest.approx(100 * ci.high, abs=0.02)
    assert smsr_interval(40, 40)[0] == pytest.approx(100 * 40 / (40 + 1.96 ** 2))
    assert all(math.isnan(v) for v in smsr_interval(0, 0))


def test_roc_auc_is_the_normalised_mann_whitney_u():
    from scipy.stats import mannwhitneyu

    from SurgicalReg2D3DLib.metrics import roc_auc

    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=40), 1)          # ties included
    labels = rng.random(40) < 0.4
    u = mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert roc_auc(scores, labels) == pytest.approx(u / (labels.sum() * (~labels).sum()))
    assert roc_auc([1.0, 2.0, float("nan")], [False, False, True]) == 1.0   # NaN = suspect
    assert math.isnan(roc_auc([1.0, 2.0], [True, True]))
