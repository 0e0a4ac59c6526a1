"""Tests of SurgicalReg2D3DLib.optimize against scipy / known synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.errors import CancelledError, InputError
from SurgicalReg2D3DLib.optimize import (
    adam_loop,
    epnp_ransac,
    jacobian_forward,
    levenberg_marquardt,
    sgd_loop,
)
from SurgicalReg2D3DLib.progress import CancelToken


def rosenbrock_torch(x):
    """Rosenbrock as residuals, batched: (B, 2) -> (B, 2); minimum 0 at (1, 1)."""
    return torch.stack([10.0 * (x[:, 1] - x[:, 0] ** 2), 1.0 - x[:, 0]], dim=1)


def rosenbrock_np(x):
    return np.array([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


# Synthetic exponential-decay data (fixed seed) for a curve fit y = a * exp(-b t) + c.
_T = np.linspace(0.0, 4.0, 40)
_Y = 2.5 * np.exp(-1.3 * _T) + 0.4 + np.random.default_rng(0).normal(scale=0.02, size=_T.size)


def expfit_torch(x):
    t = torch.as_tensor(_T, dtype=x.dtype)
    y = torch.as_tensor(_Y, dtype=x.dtype)
    return x[:, 0:1] * torch.exp(-x[:, 1:2] * t) + x[:, 2:3] - y


def test_lm_rosenbrock_matches_scipy():
    x0 = np.array([-1.2, 1.0])
    ref = least_squares(rosenbrock_np, x0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    res = levenberg_marquardt(rosenbrock_torch, torch.from_numpy(x0[None]), max_iter=100)
    np.testing.assert_allclose(res.x[0].numpy(), [1.0, 1.0], atol=1e-8)
    np.testing.assert_allclose(res.x[0].numpy(), ref.x, atol=1e-8)
    assert bool(res.converged[0])
    assert res.cost[0].item() < 1e-16
    assert res.x.dtype == torch.float64


def test_lm_float32_converges():
    res = levenberg_marquardt(rosenbrock_torch, torch.tensor([[-1.2, 1.0]]), max_iter=100)
    assert res.x.dtype == torch.float32
    torch.testing.assert_close(res.x, torch.ones(1, 2), atol=1e-4, rtol=0)
    assert bool(res.converged[0]), res.reason


def test_lm_curve_fit_matches_scipy_and_history_monotone():
    x0 = np.array([1.0, 0.5, 0.0])

    def fun(p):
        return p[0] * np.exp(-p[1] * _T) + p[2] - _Y

    ref = least_squares(fun, x0, method="lm", xtol=1e-14, ftol=1e-14)
    res = levenberg_marquardt(expfit_torch, torch.from_numpy(x0[None]), max_iter=200, tol_cost=1e-14)
    np.testing.assert_allclose(res.x[0].numpy(), ref.x, rtol=1e-6, atol=1e-8)
    assert res.cost[0].item() == pytest.approx(ref.cost, rel=1e-8)
    hist = res.history[:, 0].numpy()
    assert hist.shape == (res.iterations + 1,)
    assert np.all(np.diff(hist) <= 0.0)
    assert hist[-1] < hist[0]


def test_lm_batched_items_are_independent():
    # Three Rosenbrock problems with different difficulty (one already solved).
    x0 = torch.tensor([[-1.2, 1.0], [0.9, 0.8], [1.0, 1.0], [-3.0, -2.0]], dtype=torch.float64)
    res = levenberg_marquardt(rosenbrock_torch, x0, max_iter=200)
    torch.testing.assert_close(res.x, torch.ones(4, 2, dtype=torch.float64), atol=1e-8, rtol=0)
    assert bool(res.converged.all())
    assert res.reason[2] == "zero cost"
    # Same answer as solving each problem alone.
    for i in range(4):
        alone = levenberg_marquardt(rosenbrock_torch, x0[i:i + 1], max_iter=200)
        torch.testing.assert_close(alone.x[0], res.x[i], atol=1e-10, rtol=0)
    assert torch.all(res.history[1:] <= res.history[:-1])
    assert torch.equal(x0[0], torch.tensor([-1.2, 1.0], dtype=torch.float64))  # input untouched


def test_lm_damping_adapts_and_jacobian_options_agree():
    x0 = torch.tensor([[-1.2, 1.0]], dtype=torch.float64)
    # A huge initial damping still converges: lambda decreases after accepted steps.
    res = levenberg_marquardt(rosenbrock_torch, x0, lambda_init=1e4, max_iter=300)
    torch.testing.assert_close(res.x, torch.ones(1, 2, dtype=torch.float64), atol=1e-8, rtol=0)
    fin = levenberg_marquardt(rosenbrock_torch, x0, jacobian="finite", max_iter=100)
    torch.testing.assert_close(fin.x, torch.ones(1, 2, dtype=torch.float64), atol=1e-7, rtol=0)

    def analytic(x):
        J = torch.zeros(x.shape[0], 2, 2, dtype=x.dtype)
        J[:, 0, 0] = -20.0 * x[:, 0]
        J[:, 0, 1] = 10.0
        J[:, 1, 0] = -1.0
        return J

    ana = levenberg_marquardt(rosenbrock_torch, x0, jacobian=analytic, max_iter=100)
    torch.testing.assert_close(ana.x, res.x, atol=1e-8, rtol=0)
    xs = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(jacobian_forward(rosenbrock_torch, xs), analytic(xs))

    class Square(torch.autograd.Function):
        """x**2 with a backward only: forward-mode AD cannot trace it (fallback path)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2.0 * x * grad

    def rosen_custom(x):
        return torch.stack([10.0 * (x[:, 1] - Square.apply(x[:, 0])), 1.0 - x[:, 0]], dim=1)

    torch.testing.assert_close(jacobian_forward(rosen_custom, xs), analytic(xs))


def _hat(xi):
    """(B, 6) -> (B, 4, 4) twist matrix of xi = (omega, v), rotation first."""
    B = xi.shape[0]
    w, v = xi[:, :3], xi[:, 3:]
    z = torch.zeros(B, dtype=xi.dtype)
    W = torch.stack([
        torch.stack([z, -w[:, 2], w[:, 1]], 1),
        torch.stack([w[:, 2], z, -w[:, 0]], 1),
        torch.stack([-w[:, 1], w[:, 0], z], 1),
    ], 1)
    top = torch.cat([W, v[:, :, None]], dim=2)
    return torch.cat([top, torch.zeros(B, 1, 4, dtype=xi.dtype)], dim=1)


def test_lm_rigid_point_set_registration_se3():
    rng = np.random.default_rng(3)
    source = rng.uniform(-50, 50, size=(30, 3))  # synthetic points (mm)
    R_true = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    t_true = np.array([10.0, -5.0, 20.0])
    target = source @ R_true.T + t_true
    src = torch.from_numpy(source)
    tgt = torch.from_numpy(target)
    T0 = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    T0[1, :3, 3] = torch.tensor([5.0, 5.0, 5.0])  # second item starts elsewhere

    def residual(xi):
        T = torch.linalg.matrix_exp(_hat(xi)) @ T0  # se(3) increment composed on the left
        moved = src @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
        return (moved - tgt).reshape(xi.shape[0], -1)

    res = levenberg_marquardt(residual, torch.zeros(2, 6, dtype=torch.float64), max_iter=50)
    T_est = torch.linalg.matrix_exp(_hat(res.x)) @ T0
    for i in range(2):
        R_est = T_est[i, :3, :3].numpy()
        angle = np.degrees(Rotation.from_matrix(R_est.T @ R_true).magnitude())
        assert angle < 1e-6
        np.testing.assert_allclose(T_est[i, :3, 3].numpy(), t_true, atol=1e-6)
    assert bool(res.converged.all())


def test_lm_progress_cancel_and_validation():
    calls = []
    levenberg_marquardt(rosenbrock_torch, torch.tensor([[-1.2, 1.0]]), progress=lambda f, m: calls.append(f))
    assert calls and calls[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in calls)
    assert calls == sorted(calls)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError, match="Levenberg-Marquardt was cancelled"):
        levenberg_marquardt(rosenbrock_torch, torch.tensor([[-1.2, 1.0]]), cancel=token)
    # Cancel after the second iteration through a plain callable.
    count = {"n": 0}

    def cancel():
        count["n"] += 1
        return count["n"] > 2

    with pytest.raises(CancelledError):
        levenberg_marquardt(rosenbrock_torch, torch.tensor([[-1.2, 1.0]]), cancel=cancel)
    with pytest.raises(InputError, match=r"^x0: expected shape \(B, P\), got \(2,\)$"):
        levenberg_marquardt(rosenbrock_torch, torch.tensor([-1.2, 1.0]))
    with pytest.raises(InputError, match=r"^x0: contains NaN or infinite values$"):
        levenberg_marquardt(rosenbrock_torch, torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(InputError, match=r"^residual_fn: must return a tensor of shape \(B, R\) with B = 1"):
        levenberg_marquardt(lambda x: x.sum(), torch.tensor([[1.0, 1.0]]))
    with pytest.raises(InputError, match=r"^lambda_up: must be in \(1, inf\), got 0.5$"):
        levenberg_marquardt(rosenbrock_torch, torch.tensor([[1.0, 1.0]]), lambda_up=0.5)
    stops = levenberg_marquardt(rosenbrock_torch, torch.tensor([[-1.2, 1.0]]), callback=lambda i, x, c: i >= 2)
    assert stops.iterations == 2 and stops.reason == ["stopped by callback"]


def test_adam_loop_converges_and_keeps_input():
    p0 = torch.tensor([0.0, 0.0])
    # Adam with a constant lr oscillates around the minimum; a decaying lr settles it.
    res = adam_loop(lambda p: ((p - torch.tensor([3.0, -1.0])) ** 2).sum(), p0, lr=0.1, max_iter=2000,
                    patience=50, min_delta=1e-9,
                    scheduler=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.995))
    torch.testing.assert_close(res.best_params, torch.tensor([3.0, -1.0]), atol=1e-3, rtol=0)
    assert torch.equal(p0, torch.zeros(2))
    assert res.best_loss.item() == pytest.approx(float(res.history.min()))


def test_adam_loop_early_stopping_on_plateau():
    # The loss is flat (0.5) once |p - 3| < 0.707: no improvement -> stop after `patience`.
    def loss(p):
        return torch.clamp((p - 3.0) ** 2, min=0.5).sum()

    res = adam_loop(loss, torch.tensor([0.0]), lr=0.1, max_iter=1000, patience=15)
    assert res.stopped_early
    assert res.best_loss.item() == pytest.approx(0.5)
    assert res.iterations < 200
    first_flat = int(torch.nonzero(res.history == 0.5)[0])
    assert res.iterations == first_flat + 15  # stops before the step after 15 flat iterations


def test_sgd_loop_keeps_best_parameters_when_diverging():
    # SGD with lr = 1.1 on p^2 overshoots: p -> -1.2 p, so the loss grows every step; the
    # best parameters are the initial ones.
    res = sgd_loop(lambda p: (p**2).sum(), torch.tensor([1.0]), lr=1.1, momentum=0.0, patience=5)
    assert res.stopped_early
    torch.testing.assert_close(res.best_params, torch.tensor([1.0]))
    np.testing.assert_allclose(res.history.numpy()[:3], [1.0, 1.44, 2.0736], rtol=1e-6)


def test_adam_loop_batched_per_item_best_and_list_params():
    target = torch.tensor([[1.0, 2.0], [-4.0, 0.5]])

    def loss(params):
        a, b = params
        return ((a - target) ** 2).sum(dim=1) + (b[:, 0] - 1.0) ** 2

    res = adam_loop(loss, [torch.zeros(2, 2), torch.zeros(2, 1)], lr=0.05, max_iter=3000, patience=30,
                    min_delta=1e-10)
    a, b = res.best_params
    torch.testing.assert_close(a, target, atol=2e-3, rtol=0)
    torch.testing.assert_close(b, torch.ones(2, 1), atol=2e-3, rtol=0)
    assert res.best_loss.shape == (2,) and res.history.shape[1] == 2


def test_adam_loop_cancel_progress_and_validation():
    token = CancelToken()
    seen = []

    def progress(f, m):
        seen.append(f)
        if len(seen) == 3:
            token.cancel()

    with pytest.raises(CancelledError, match="optimisation loop was cancelled"):
        adam_loop(lambda p: (p**2).sum(), torch.ones(3), progress=progress, cancel=token)
    assert len(seen) == 3
    with pytest.raises(InputError, match=r"^loss_fn: returned NaN or infinite loss at the initial parameters$"):
        adam_loop(lambda p: (p * float("nan")).sum(), torch.ones(3))
    with pytest.raises(InputError, match=r"^params: expected a tensor or a non-empty sequence of tensors$"):
        adam_loop(lambda p: p, [])
    with pytest.raises(InputError, match=r"^loss_fn: must return a scalar or \(B,\) tensor, got \(2, 2\)$"):
        adam_loop(lambda p: p * 1.0, torch.ones(2, 2))
    with pytest.raises(InputError, match=r"^optimizer: must be one of"):
        adam_loop(lambda p: p.sum(), torch.ones(2), optimizer="lbfgs")


def _synthetic_pnp(n=40, outlier_fraction=0.3, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-60, 60, size=(n, 3))  # synthetic model points (mm)
    R = Rotation.from_rotvec([0.4, -0.3, 0.2]).as_matrix()
    t = np.array([5.0, -10.0, 300.0])
    K = np.array([[800.0, 0, 320], [0, 780.0, 240], [0, 0, 1]])
    cam = pts @ R.T + t
    uv = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    n_out = int(round(outlier_fraction * n))
    out_idx = rng.choice(n, n_out, replace=False)
    uv[out_idx] += rng.uniform(40, 150, size=(n_out, 2)) * rng.choice([-1, 1], size=(n_out, 2))
    return pts, uv, K, R, t, out_idx


def test_epnp_ransac_recovers_pose_with_outliers():
    pts, uv, K, R, t, out_idx = _synthetic_pnp()
    inputs = [pts.copy(), uv.copy(), K.copy()]
    res = epnp_ransac(pts, uv, K)
    for x, c in zip((pts, uv, K), inputs):
        np.testing.assert_array_equal(x, c)  # inputs untouched
    T = res.model_to_camera
    angle = np.degrees(Rotation.from_matrix(T[:3, :3].T @ R).magnitude())
    assert angle < 1e-3
    assert np.linalg.norm(T[:3, 3] - t) < 1e-3
    assert set(res.inliers.tolist()) == set(range(len(pts))) - set(out_idx.tolist())
    assert res.reprojection_error_px < 1e-6
    assert res.errors_px.shape == (len(pts),)
    assert np.all(res.errors_px[out_idx] > 30)
    # Torch inputs work the same way.
    res_t = epnp_ransac(torch.from_numpy(pts), torch.from_numpy(uv), torch.from_numpy(K), refine=False)
    assert np.linalg.norm(res_t.model_to_camera[:3, 3] - t) < 1e-2


def test_epnp_ransac_errors():
    pts, uv, K, *_ = _synthetic_pnp(n=10, outlier_fraction=0.0)
    with pytest.raises(InputError, match=r"^points_3d: need at least 4 correspondences, got 3$"):
        epnp_ransac(pts[:3], uv[:3], K)
    with pytest.raises(InputError, match=r"^points_2d: expected as many points as points_3d \(10\), got 9$"):
        epnp_ransac(pts, uv[:9], K)
    bad = uv.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match=r"^points_2d: contains NaN or infinite values$"):
        epnp_ransac(pts, bad, K)
    with pytest.raises(InputError, match=r"^K: expected a finite 3x3 camera matrix"):
        epnp_ransac(pts, uv, np.eye(4))
    rng = np.random.default_rng(1)
    noise_uv = rng.uniform(0, 640, size=(10, 2))  # no consistent pose exists
    with pytest.raises(InputError, match=r"^points_2d: RANSAC found no pose with at least 10 inliers"):
        epnp_ransac(pts, noise_uv, K, reprojection_px=1.0, min_inliers=10)


def test_epnp_ransac_refuses_inliers_on_three_model_points():
    """128 pixels paired with only 3 model points 1 mm apart (a pose hypothesis far from
    the image outline pairs every outline pixel with the same few vertices): OpenCV's
    RANSAC reports success with a NaN pose or one kilometres away; epnp_ransac refuses."""
    K = np.array([[1892.3, 0, 1105.9], [0, 944.9, 327.3], [0, 0, 1.0]])
    P = np.array([[-22.78, -58.48, -73.74], [-22.37, -58.48, -73.41], [-21.81, -58.05, -73.05]])
    rng = np.random.default_rng(0)
    p3 = np.concatenate([np.repeat(P[:1], 29, 0), P[1:2], np.repeat(P[2:], 98, 0)])
    p2 = np.concatenate([rng.normal([1837, 380], [43, 6], (29, 2)), [[1892.5, 374.5]],
                         rng.normal([1535, 450], [127, 47], (98, 2))])
    with pytest.raises(InputError, match=r"^points_3d: RANSAC's \d+ inliers hold [1-3] "
                                         r"distinct 3D points; at least 4"):
        epnp_ransac(p3, p2, K, reprojection_px=39.9, iterations=500, min_inliers=4)
