"""Spherical deep similarity and the differentiable Levenberg-Marquardt (learned FluoroReg
building blocks) on a small SYNTHETIC phantom."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fluoro_learned import CAMERA, nominal_of, phantom  # noqa: E402

from FluoroRegLib.drr import DRRVolume, render_drr  # noqa: E402
from FluoroRegLib.learned import spherical as sph  # noqa: E402
from FluoroRegLib.learned.sampling import PoseRange, TrainingRenderer  # noqa: E402
from FluoroRegLib.simulate import perturb_pose  # noqa: E402

torch.set_num_threads(1)


def test_exp_map_at_north_pole():
    theta = torch.tensor([0.0, 0.3, 1.2, 3.0]).reshape(4, 1, 1, 1)
    phi = sph.exp_north_pole(theta)  # S^1: (sin, cos)
    np.testing.assert_allclose(phi[:, 0, 0, 0].numpy(), np.sin(theta.flatten().numpy()), atol=1e-6)
    np.testing.assert_allclose(phi[:, 1, 0, 0].numpy(), np.cos(theta.flatten().numpy()), atol=1e-6)
    v = torch.randn(2, 5, 4, 4)
    phi = sph.exp_north_pole(v)
    np.testing.assert_allclose(phi.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # geodesic distance to the pole = |v| (for |v| < pi)
    v = v / v.norm(dim=1, keepdim=True) * 1.1
    np.testing.assert_allclose(torch.acos(sph.exp_north_pole(v)[:, -1]).numpy(), 1.1, atol=1e-5)


def test_eps_is_sum_of_squared_residuals():
    a = sph.exp_north_pole(torch.randn(2, 3, 5, 5))
    b = sph.exp_north_pole(torch.randn(2, 3, 5, 5))
    eps = sph.similarity_eps(a, b)
    ref = (1 - (a * b).sum(1)).sum((1, 2))
    torch.testing.assert_close(eps, ref)
    torch.testing.assert_close(eps, (sph.residuals(a, b) ** 2).sum(1), rtol=1e-5, atol=1e-5)


def _setup():
    hu, m = phantom()
    nominal, centre = nominal_of(hu, m)
    vol = DRRVolume.from_hu(hu, m)
    rng = PoseRange((8.0, 8.0, 8.0), (8.0, 8.0, 8.0))
    return hu, m, nominal, centre, vol, TrainingRenderer(vol, CAMERA, nominal, rng, n_samples=24)


def test_gradients_flow_through_the_lm_steps():
    _, _, nominal, centre, vol, ren = _setup()
    torch.manual_seed(0)
    net = sph.SphericalFeatureNet(channels=4, width=8).double()
    truth = perturb_pose(nominal, centre, (3, -2, 2), (3, 2, -2))
    with torch.no_grad():
        fixed = render_drr(vol, CAMERA, truth, n_samples=24)[0].double()
    c = torch.as_tensor((nominal @ np.r_[centre, 1])[:3])

    def final_error(model, steps):
        fn = sph.lm_residual_fn(model, vol, CAMERA, fixed, 24)
        T, costs = sph.differentiable_lm(fn, torch.as_tensor(nominal), c, steps=steps)
        return sph.geodesic(T[None], torch.as_tensor(truth)[None], "se3", 100.0)[0], costs

    # one step: the gradient through residuals, Jacobian and the damped normal equations
    # equals central differences of the whole solve (a float32 DRR limits this to one
    # step: deeper unrolls amplify its rounding in the differences)
    err, costs = final_error(net, 1)
    err.backward()
    p = net.out.bias
    k = int(p.grad.abs().argmax())
    h = 1e-4
    with torch.no_grad():
        p[k] += h
        up = final_error(net, 1)[0]
        p[k] -= 2 * h
        down = final_error(net, 1)[0]
        p[k] += h
    fd = float(up - down) / (2 * h)
    assert abs(fd) > 1e-3
    assert math.isclose(float(p.grad[k]), fd, rel_tol=1e-3), (float(p.grad[k]), fd)
    # two steps: the LM lowers its cost and the gradient still reaches the network
    net.zero_grad()
    err2, costs = final_error(net, 2)
    assert costs[1] < costs[0]
    err2.backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0
    # with the graph cut (detached features), nothing reaches the network
    net.zero_grad()
    fn = sph.lm_residual_fn(net, vol, CAMERA, fixed, 24)
    T, _ = sph.differentiable_lm(lambda P: fn(P).detach(), torch.as_tensor(nominal), c, steps=2)
    assert not T.requires_grad


@pytest.mark.parametrize("distance", ["se3", "so4"])
def test_similarity_training_signal_fits_a_fixed_batch(distance):
    """The gradient-matching loss (d eps / d pose vs d geodesic / d pose) is trainable:
    a few Adam steps on one fixed batch lower it (generalisation needs far longer runs and
    is not claimed here)."""
    _, _, nominal, centre, vol, ren = _setup()
    torch.manual_seed(1)
    net = sph.SphericalFeatureNet(channels=4, width=8)
    gen = torch.Generator().manual_seed(3)
    drr, _, _, truth = ren.sample(gen, 4)
    moving = torch.stack([torch.as_tensor(perturb_pose(truth[i].numpy(), centre, d, -np.asarray(d, float)))
                          for i, d in enumerate(([4, -3, 2], [-3, 3, 4], [2, 4, -4], [-4, -2, -3]))])
    c = torch.as_tensor((nominal @ np.r_[centre, 1])[:3])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = sph.gradient_matching_loss(net, vol, CAMERA, moving, truth, drr, c, 80.0,
                                          distance, 24)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert 0 <= losses[0] <= 2
    assert min(losses[-5:]) < 0.6 * losses[0], losses
