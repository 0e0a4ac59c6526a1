"""DRR renderer: analytic line integrals, Siddon vs trilinear, projection geometry, gradients.

All volumes here are small synthetic phantoms (labelled synthetic); references are
analytic chord lengths and OpenCV's pinhole projection, never the renderer itself.
"""

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from FluoroRegLib.drr import DRRVolume, hu_to_mu, render_drr
from FluoroRegLib.geometry import make_camera, pyramid_cameras
from SurgicalReg2D3DLib.errors import GeometryError, InputError

torch.set_num_threads(1)


def _pose(rotvec_deg=(0, 0, 0), t=(0, 0, 500)):
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_rotvec(np.deg2rad(rotvec_deg)).as_matrix()
    pose[:3, 3] = t
    return pose


def _ijk_to_ras(spacing, origin, rot_deg=(0, 0, 0)):
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.deg2rad(rot_deg)).as_matrix() @ np.diag(spacing)
    m[:3, 3] = origin
    return m


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_uniform_slab_matches_analytic_chord(method):
    # Synthetic: a uniform slab 16 mm thick (z), much wider than the imaged footprint.
    mu = np.zeros((10, 60, 60), np.float32)
    mu[1:9] = 0.02
    spacing = (1.0, 1.0, 2.0)
    vol = DRRVolume.from_mu(mu, _ijk_to_ras(spacing, (-29.5, -29.5, -9.0)))
    cam = make_camera(1000.0, (0.8, 0.8), (32, 32))
    drr = render_drr(vol, cam, _pose(t=(0, 0, 500)), method=method, n_samples=400)[0].numpy()
    # Analytic: ray to pixel (u, v) crosses z in [491, 507] mm (voxels 1..8 at 2 mm) over
    # a length 16 * |d| / f, |d| = distance from the source to the pixel centre.
    u, v = np.meshgrid(np.arange(32), np.arange(32))
    d = np.sqrt(((u - 15.5) * 0.8) ** 2 + ((v - 15.5) * 0.8) ** 2 + 1000.0 ** 2)
    expected = 0.02 * 16.0 * d / 1000.0
    rtol = 1e-4 if method == "siddon" else 2e-3
    np.testing.assert_allclose(drr, expected, rtol=rtol)


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_ball_matches_analytic_chord_with_rotated_anisotropic_grid(method):
    # Synthetic ball of radius 14 mm, voxelised on a rotated, anisotropic grid.
    spacing = np.array([0.7, 0.8, 0.9])
    m = _ijk_to_ras(spacing, (0, 0, 0), rot_deg=(10, -20, 30))
    shape = (44, 44, 44)
    k, j, i = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ras = np.stack([i, j, k, np.ones_like(i)], -1) @ m.T
    centre = m @ np.array([21.5, 21.5, 21.5, 1.0])
    inside = np.linalg.norm(ras[..., :3] - centre[:3], axis=-1) <= 14.0
    vol = DRRVolume.from_mu(inside.astype(np.float32) * 0.01, m)
    pose = _pose(rotvec_deg=(25, 40, -15))
    pose[:3, 3] += np.array([0, 0, 600]) - (pose @ centre)[:3]  # ball centre on the axis
    cam = make_camera(900.0, (0.5, 0.5), (48, 48))
    drr = render_drr(vol, cam, pose, method=method, n_samples=300)[0].numpy()
    # Analytic chord: 2 sqrt(r^2 - dist^2), dist = distance from the centre to the ray.
    u, v = np.meshgrid(np.arange(48), np.arange(48))
    dirs = np.stack([(u - 23.5) * 0.5, (v - 23.5) * 0.5, np.full(u.shape, 900.0)], -1)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    c = np.array([0, 0, 600.0])
    dist = np.linalg.norm(np.cross(dirs, c), axis=-1)
    chord = 2 * np.sqrt(np.clip(14.0 ** 2 - dist ** 2, 0, None))
    core = dist < 11.0
    # Voxelisation changes a chord by about one voxel at most.
    np.testing.assert_allclose(drr[core], 0.01 * chord[core], atol=0.01 * 1.2)
    err_mm = drr[core] / 0.01 - chord[core]
    assert abs(err_mm.mean()) < 0.05  # no bias: only voxelisation noise
    assert np.abs(err_mm).mean() < 0.4
    assert np.all(drr[dist > 15.5] == 0)


def test_siddon_and_trilinear_agree_on_smooth_volume():
    rng = np.random.default_rng(0)
    mu = gaussian_filter(rng.random((24, 28, 32)), 3).astype(np.float32) * 0.02
    vol = DRRVolume.from_mu(mu, _ijk_to_ras((1.5, 1.2, 2.0), (-24, -17, -23), (5, 10, 0)))
    cam = make_camera(800.0, (1.0, 1.0), (40, 36))
    pose = _pose(rotvec_deg=(20, -30, 10), t=(3, -4, 450))
    a = render_drr(vol, cam, pose, method="siddon")[0]
    b = render_drr(vol, cam, pose, method="trilinear", n_samples=256)[0]
    assert a.max() > 0.1
    assert float((a - b).abs().max()) < 0.02 * float(a.max())


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_bead_appears_where_opencv_projects_it(method):
    spacing = (1.1, 0.9, 1.3)
    m = _ijk_to_ras(spacing, (-20, 15, -7), rot_deg=(0, 15, -25))
    mu = np.zeros((30, 30, 30), np.float32)
    bead_ijk = np.array([17, 11, 20])  # (i, j, k)
    mu[bead_ijk[2], bead_ijk[1], bead_ijk[0]] = 5.0
    vol = DRRVolume.from_mu(mu, m)
    bead_ras = (m @ np.r_[bead_ijk, 1.0])[:3]
    pose = _pose(rotvec_deg=(-30, 20, 60))
    centre = m @ np.array([14.5, 14.5, 14.5, 1.0])
    pose[:3, 3] = np.array([3.0, -2.0, 700.0]) - pose[:3, :3] @ centre[:3]
    cam = make_camera(1000.0, (0.6, 0.7), (64, 56), principal_point_px=(30.2, 25.7))
    drr = render_drr(vol, cam, pose, method=method, n_samples=400)[0].numpy()
    row, col = np.unravel_index(np.argmax(drr), drr.shape)
    k_mat = np.array([[1000 / 0.6, 0, 30.2], [0, 1000 / 0.7, 25.7], [0, 0, 1]])
    rvec, _ = cv2.Rodrigues(pose[:3, :3])
    uv, _ = cv2.projectPoints(bead_ras[None], rvec, pose[:3, 3], k_mat, None)
    u, v = uv.ravel()
    assert 2 < u < 61 and 2 < v < 53  # the bead is well inside the image
    assert (col, row) == (int(round(u)), int(round(v)))


def test_batched_poses_and_chunking_match_single_renders():
    rng = np.random.default_rng(1)
    mu = gaussian_filter(rng.random((16, 16, 16)), 2).astype(np.float32) * 0.02
    vol = DRRVolume.from_mu(mu, _ijk_to_ras((2, 2, 2), (-15, -15, -15)))
    cam = make_camera(700.0, (1.2, 1.2), (24, 20))
    poses = np.stack([_pose((0, 0, 0)), _pose((10, 0, 5), (2, 0, 420)), _pose((0, -20, 0))])
    for method in ("siddon", "trilinear"):
        batch = render_drr(vol, cam, poses, method=method, n_samples=64)
        tiny = render_drr(vol, cam, poses, method=method, n_samples=64, max_elements=50000)
        assert batch.shape == (3, 20, 24)
        torch.testing.assert_close(batch, tiny)
        for b in range(3):
            single = render_drr(vol, cam, poses[b], method=method, n_samples=64)[0]
            torch.testing.assert_close(batch[b], single)


def _skew(w):
    z = torch.zeros((), dtype=w.dtype)
    return torch.stack([torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]),
                        torch.stack([-w[1], w[0], z])])


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_pose_gradient_is_finite_and_points_back_to_truth(method):
    rng = np.random.default_rng(2)
    mu = gaussian_filter(rng.random((20, 20, 20)), 2.5).astype(np.float32) * 0.03
    vol = DRRVolume.from_mu(mu, _ijk_to_ras((2, 2, 2), (-19, -19, -19)))
    cam = make_camera(800.0, (1.5, 1.5), (32, 32))
    truth = torch.as_tensor(_pose((5, 5, 0), (0, 0, 450)), dtype=torch.float32)
    target = render_drr(vol, cam, truth, method=method, n_samples=96)
    offset = torch.tensor([0.04, -0.03, 0.02, 3.0, -2.0, 4.0])  # rad, mm (camera frame)
    xi = offset.clone().requires_grad_(True)
    rot = torch.linalg.matrix_exp(_skew(xi[:3]))
    delta = torch.eye(4).index_put((torch.arange(3)[:, None], torch.arange(3)), rot)
    delta = torch.cat([torch.cat([rot, xi[3:, None]], 1), torch.tensor([[0, 0, 0, 1.0]])], 0)
    # Perturb about the volume centre (at camera (0, 0, 450)).
    c = torch.eye(4)
    c[2, 3] = 450.0
    pose = c @ delta @ torch.linalg.inv(c) @ truth
    drr = render_drr(vol, cam, pose, method=method, n_samples=96)
    loss = ((drr - target) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, xi)
    assert torch.isfinite(grad).all()
    assert float(grad.norm()) > 0
    # Moving against the gradient reduces the error; the gradient has a positive
    # component along the offset (the way back to the truth is -grad).
    assert float(grad @ offset) > 0
    with torch.no_grad():
        step = xi - 0.5 * float(loss) / float(grad.norm()) * grad / grad.norm()
        rot2 = torch.linalg.matrix_exp(_skew(step[:3]))
        d2 = torch.cat([torch.cat([rot2, step[3:, None]], 1), torch.tensor([[0, 0, 0, 1.0]])], 0)
        loss2 = ((render_drr(vol, cam, c @ d2 @ torch.linalg.inv(c) @ truth, method=method,
                             n_samples=96) - target) ** 2).mean()
    assert float(loss2) < float(loss.detach())


def test_label_subset_renders_only_selected_labels():
    hu = np.full((12, 12, 12), -1000.0, np.float32)
    labels = np.zeros((12, 12, 12), np.int16)
    hu[2:5, 3:9, 3:9] = 1000.0
    labels[2:5, 3:9, 3:9] = 1
    hu[7:10, 3:9, 3:9] = 1000.0
    labels[7:10, 3:9, 3:9] = 2
    m = _ijk_to_ras((2, 2, 2), (-11, -11, -11))
    cam = make_camera(1000.0, (1.0, 1.0), (16, 16))
    pose = _pose((90, 0, 0), (0, 0, 500))  # beam along the volume's j axis: k is resolved
    full = render_drr(DRRVolume.from_hu(hu, m), cam, pose, method="siddon")
    one = render_drr(DRRVolume.from_hu(hu, m, labels=labels, label_subset=[1]), cam, pose,
                     method="siddon")
    two = render_drr(DRRVolume.from_hu(hu, m, labels=labels, label_subset=[2]), cam, pose,
                     method="siddon")
    torch.testing.assert_close(full, one + two)
    assert float(one.max()) > 0 and float(two.max()) > 0
    assert float((one * two).abs().max()) == 0  # the two blocks project to disjoint rows


def test_hu_to_mu_units():
    mu = hu_to_mu(torch.tensor([-1000.0, -2000.0, 0.0, 1000.0]), mu_water=0.02)
    torch.testing.assert_close(mu, torch.tensor([0.0, 0.0, 0.02, 0.04]))


def test_scaled_camera_keeps_physical_detector():
    cam = make_camera(1000.0, (0.5, 0.4), (64, 48), principal_point_px=(30.0, 20.0))
    half = pyramid_cameras(cam, (2, 1))[0]
    assert tuple(half.size_px) == (32, 24)
    np.testing.assert_allclose(half.pixel_spacing_mm, (1.0, 0.8))
    # The physical detector point of full-res pixel (u, v) maps to half-res ((u+.5)/2-.5).
    p = np.array([[12.0, -7.0, 800.0]])
    uv = cam.project(p)[0]
    np.testing.assert_allclose(np.asarray(half.project(p)[0]), (np.asarray(uv) + 0.5) / 2 - 0.5, atol=1e-9)


def test_bad_inputs_to_renderer():
    m = np.eye(4)
    with pytest.raises(InputError, match=r"^CT volume: expected a 3D volume \(K, J, I\), got shape \(8, 8\)"):
        DRRVolume.from_hu(np.zeros((8, 8)), m)
    with pytest.raises(InputError, match=r"^CT volume: all voxels have the same value \(-1000\)"):
        DRRVolume.from_hu(np.full((4, 4, 4), -1000.0), m)
    with pytest.raises(InputError, match=r"^CT volume: contains NaN"):
        DRRVolume.from_hu(np.array([np.nan] * 8).reshape(2, 2, 2), m)
    vol = DRRVolume.from_hu(np.arange(64.0).reshape(4, 4, 4), m)
    cam = make_camera(1000.0, (1.0, 1.0), (8, 8))
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(GeometryError, match=r"^ct_to_camera: contains NaN"):
        render_drr(vol, cam, bad)
    with pytest.raises(InputError, match=r"^DRR method: expected one of"):
        render_drr(vol, cam, np.eye(4), method="raycast")
    with pytest.raises(GeometryError, match=r"^X-ray geometry: source_to_detector_mm must be positive, got -5"):
        make_camera(-5, (1, 1), (8, 8))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: pixel_spacing_mm must be two positive"):
        make_camera(1000, (1.0, 0.0), (8, 8))


def _siddon_all_planes_reference(mu, ijk_to_ras, pose, focal_mm, spacing_mm, size_px):
    """Plain numpy float64 Siddon over ALL n + 1 planes per axis, one ray at a time."""
    k_n, j_n, i_n = mu.shape
    camera_to_ijk = np.linalg.inv(ijk_to_ras) @ np.linalg.inv(pose)
    source = camera_to_ijk[:3, 3]
    width, height = size_px
    out = np.zeros((height, width))
    for v in range(height):
        for u in range(width):
            pixel = np.array([(u - (width - 1) / 2) * spacing_mm[0],
                              (v - (height - 1) / 2) * spacing_mm[1], focal_mm])
            d = camera_to_ijk[:3, :3] @ pixel
            alphas = [0.0, 1.0]
            for axis, n in enumerate((i_n, j_n, k_n)):
                if abs(d[axis]) > 1e-12:
                    alphas += list((np.arange(n + 1) - 0.5 - source[axis]) / d[axis])
            a = np.sort(np.clip(alphas, 0.0, 1.0))
            mid = source[None] + 0.5 * (a[1:] + a[:-1])[:, None] * d[None]
            idx = np.rint(mid).astype(int)
            inside = np.all((idx >= 0) & (idx < [i_n, j_n, k_n]), axis=1)
            vals = np.zeros(len(mid))
            vals[inside] = mu[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
            out[v, u] = np.sum(vals * np.diff(a)) * np.linalg.norm(pixel)
    return out


def test_siddon_plane_pruning_matches_all_planes_reference():
    # Synthetic random volume, oblique anisotropic grid and an oblique pose so that some
    # rays graze or miss the box: the pruned plane set must give the all-planes image.
    rng = np.random.default_rng(3)
    mu = (rng.random((9, 11, 13)) * 0.03).astype(np.float32)
    m = _ijk_to_ras((1.3, 0.9, 1.7), (-8, -5, -7), rot_deg=(12, -25, 40))
    pose = _pose(rotvec_deg=(35, -20, 15), t=(2.0, -1.5, 300.0))
    cam = make_camera(600.0, (1.1, 0.9), (20, 18))
    drr = render_drr(DRRVolume.from_mu(mu, m), cam, pose, method="siddon")[0].numpy()
    ref = _siddon_all_planes_reference(mu.astype(np.float64), m, pose, 600.0, (1.1, 0.9),
                                       (20, 18))
    assert (ref == 0).any() and (ref > 0.1).any()  # the box edge lies inside the image
    np.testing.assert_allclose(drr, ref, rtol=2e-5, atol=2e-6)
