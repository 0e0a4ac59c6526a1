"""Compiled DRR kernels (FluoroRegLib.drr_kernels) against the torch renderer they replace.

The torch path (``FLUOROREG_DRR_KERNELS=torch``: grid_sample, autograd) is the independent
reference; volumes are small synthetic phantoms (labelled synthetic).
"""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from FluoroRegLib import drr_kernels
from FluoroRegLib.drr import DRRVolume, render_drr
from FluoroRegLib.geometry import make_camera
from SurgicalReg2D3DLib.poses import se3_exp

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not drr_kernels.AVAILABLE, reason="numba not installed")


def _volume(padding: bool):
    # Synthetic smooth texture; with ``padding`` an air margin around it (exercises the
    # non-zero box shortcut), without it the texture touches every face (border padding).
    rng = np.random.default_rng(3)
    mu = gaussian_filter(rng.random((22, 26, 30)), 2.0).astype(np.float32) * 0.03
    if padding:
        mu[:4] = 0
        mu[:, -5:] = 0
        mu[:, :, :3] = 0
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.deg2rad([5, 10, -7])).as_matrix() @ np.diag([1.4, 1.1, 1.8])
    m[:3, 3] = (-20, -15, -18)
    return DRRVolume.from_mu(mu, m)


def _poses(n):
    out = []
    for b in range(n):
        pose = np.eye(4)
        pose[:3, :3] = Rotation.from_rotvec(np.deg2rad([10 + 7 * b, -25 + 9 * b, 5])).as_matrix()
        pose[:3, 3] = (2.0 - b, -3.0 + 2 * b, 420.0 + 15 * b)
        out.append(pose)
    return np.stack(out)


def _render(monkeypatch, backend, *args, **kwargs):
    monkeypatch.setenv("FLUOROREG_DRR_KERNELS", backend)
    return render_drr(*args, **kwargs)


@pytest.mark.parametrize("padding", [True, False])
def test_forward_matches_torch_renderer(monkeypatch, padding):
    vol = _volume(padding)
    # A wide detector: some rays miss the volume, some graze it.
    cam = make_camera(800.0, (1.6, 1.4), (36, 30), principal_point_px=(16.3, 15.2))
    poses = _poses(3)
    ref = _render(monkeypatch, "torch", vol, cam, poses, n_samples=57)
    out = _render(monkeypatch, "numba", vol, cam, poses, n_samples=57)
    assert ref.shape == out.shape == (3, 30, 36)
    assert float(ref.max()) > 0.1 and bool((ref == 0).any())  # hits and misses
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.max()))


@pytest.mark.parametrize("padding", [True, False])
def test_pose_gradient_matches_torch_autograd(monkeypatch, padding):
    vol = _volume(padding)
    cam = make_camera(800.0, (1.6, 1.4), (24, 20))
    base = torch.as_tensor(_poses(2), dtype=torch.float64)
    weights = torch.as_tensor(np.random.default_rng(4).standard_normal((2, 20, 24)), dtype=torch.float32)
    grads = {}
    for backend in ("torch", "numba"):
        xi = torch.tensor([[0.01, -0.02, 0.015, 1.0, -0.5, 2.0],
                           [-0.03, 0.01, 0.0, -2.0, 1.0, 0.5]], dtype=torch.float64,
                          requires_grad=True)
        pose = (se3_exp(xi) @ base).to(torch.float32)
        img = _render(monkeypatch, backend, vol, cam, pose, n_samples=48)
        (img * weights).sum().backward()
        grads[backend] = xi.grad.clone()
    ref, out = grads["torch"], grads["numba"]
    assert float(ref.abs().max()) > 1e-3
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3 * float(ref.abs().max()))


def test_nonzero_box_is_where_samples_can_be_nonzero():
    mu = np.zeros((6, 7, 8), np.float32)
    mu[2, 3, 4] = 1.0
    mu[3, 5, 4] = 2.0
    box = drr_kernels.nonzero_box(mu)
    # (i, j, k) ranges of non-zero voxels: i 4..4, j 3..5, k 2..3, widened by one voxel.
    np.testing.assert_array_equal(box, [3, 2, 1, 5, 6, 4])
    assert drr_kernels.nonzero_box(np.zeros((3, 3, 3), np.float32))[0] > 0  # empty: lo > hi
    # cached per tensor object, renewed by an in-place change
    t = torch.from_numpy(mu.copy())
    np.testing.assert_array_equal(drr_kernels.volume_box(t), box)
    np.testing.assert_array_equal(drr_kernels.volume_box(t), box)  # hit: same object
    t[0, 0, 0] = 1.0
    np.testing.assert_array_equal(drr_kernels.volume_box(t), [-1, -1, -1, 5, 6, 4])


def test_level_volume_block_averages_with_consistent_geometry():
    from FluoroRegLib.refine import level_volume

    rng = np.random.default_rng(5)
    mu = rng.random((9, 10, 12)).astype(np.float32)  # synthetic
    m = np.eye(4)
    m[:3, :3] = np.diag([1.5, 1.2, 2.0])
    m[:3, 3] = (-5, 3, 7)
    vol = DRRVolume.from_mu(mu, m)
    cam = make_camera(1000.0, (4.0, 4.0), (16, 16))  # 2.4 mm per pixel at 600 mm (1.2 voxels)
    cache = {}
    same = level_volume(vol, cam, np.array([0, 0, 600.0]), cache)
    assert same is vol  # 2.4 mm / 2.0 mm -> factor 1
    small = level_volume(vol, cam, np.array([0, 0, 1150.0]), cache)  # 4.6 mm / 2 mm -> factor 2
    ref = mu[:8, :10, :12].reshape(4, 2, 5, 2, 6, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(small.mu.numpy(), ref, rtol=1e-6)
    # voxel (0, 0, 0) of the coarse grid sits at the centre of old voxels 0..1 per axis
    np.testing.assert_allclose(small.ijk_to_ras @ [0, 0, 0, 1], m @ [0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(small.ijk_to_ras @ [1, 0, 0, 1], m @ [2.5, 0.5, 0.5, 1])
    assert level_volume(vol, cam, np.array([0, 0, 1150.0]), cache) is small  # cached
    assert level_volume(vol, cam, np.array([0, 0, 1000.0]), {}, ct_resolution=None) is vol


def test_volume_gradient_still_flows_through_the_torch_path():
    vol = _volume(True)
    mu = vol.mu.clone().requires_grad_(True)
    cam = make_camera(800.0, (1.6, 1.4), (12, 10))
    img = render_drr(DRRVolume(mu, vol.ijk_to_ras), cam, _poses(1), n_samples=32)
    img.sum().backward()
    assert mu.grad is not None and float(mu.grad.abs().sum()) > 0


def test_a_repeated_single_pose_render_is_reused_and_stays_correct(monkeypatch):
    """The result pose is rendered several times per registration: the second render of
    the same volume, camera, pose and samples is not recomputed, and equals a fresh one;
    another pose, camera, sample count or an in-place change of the volume renders."""
    vol = _volume(True)
    cam = make_camera(800.0, (1.6, 1.4), (36, 30))
    pose = _poses(2)
    calls = []
    real = drr_kernels.trilinear_drr
    monkeypatch.setattr(drr_kernels, "trilinear_drr",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        a = render_drr(vol, cam, pose[0], n_samples=40)
        b = render_drr(vol, cam, torch.as_tensor(pose[0]), n_samples=40)
        assert len(calls) == 1 and torch.equal(a, b)
        b[0, 0, 0] = 123.0  # the caller's copy: the remembered image is not changed
        assert torch.equal(render_drr(vol, cam, pose[0], n_samples=40), a)
        assert len(calls) == 1
        render_drr(vol, cam, pose[1], n_samples=40)
        render_drr(vol, cam, pose[0], n_samples=41)
        render_drr(vol, cam.scaled(2.0), pose[0], n_samples=40)
        assert len(calls) == 4
        vol.mu.mul_(2.0)  # in place: the version changes, so the image is rendered again
        c = render_drr(vol, cam, pose[0], n_samples=40)
        assert len(calls) == 5
        torch.testing.assert_close(c, 2.0 * a, rtol=1e-5, atol=1e-7)
    pose_t = torch.as_tensor(pose[0], dtype=torch.float32).requires_grad_(True)
    render_drr(vol, cam, pose_t, n_samples=40).sum().backward()  # gradients: always rendered
    assert len(calls) == 6 and pose_t.grad is not None
