"""The compiled CPU kernels (USSliceRegLib.kernels) against the torch path they mirror.

Each kernel is checked against the torch code of ``register`` / ``lncc`` / ``grid_sample``
on the same inputs (float64 sums vs float32: agreement to ~1e-5 relative), and the two
backends of ``SliceRegistrar`` are checked to register the same frames to the same poses.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from SurgicalReg2D3DLib.errors import InputError
from USSliceRegLib import kernels
from USSliceRegLib.lncc import _box, local_normalise, masked_lncc
from USSliceRegLib.config import Level, RegistrationConfig
from USSliceRegLib.pose_utils import perturb_about_point, pose_errors
from USSliceRegLib.register import SliceRegistrar

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")

H, W = 48, 64


def _volume(seed=0, shape=(30, 34, 38)):
    rng = np.random.default_rng(seed)
    vol = gaussian_filter(rng.random(shape), 1.5) * 1000
    ijk_to_ref = np.diag([0.9, 1.1, 1.0, 1.0])
    ijk_to_ref[:3, 3] = [-15.0, -18.0, -14.0]
    return vol.astype(np.float32), ijk_to_ref


def _pose(angles_deg, centre):
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() * 0.5
    T[:3, 3] = np.asarray(centre) - T[:3, :3] @ np.array([W / 2, H / 2, 0.0])
    return T


def test_sampling_matches_grid_sample_inside_on_edges_and_outside():
    """Trilinear sampling = grid_sample(align_corners=True, zeros padding), for points
    inside, on the last voxel layer, partly outside (corners outside count zero) and
    fully outside; the inside flag = all of |grid coordinate| <= 1."""
    rng = np.random.default_rng(1)
    K, J, I, C = 6, 7, 8, 5
    vol = rng.random((K, J, I, C)).astype(np.float32)
    pts = np.concatenate([rng.uniform(-1.5, [I + 0.5, J + 0.5, K + 0.5], size=(400, 3)),
                          [[I - 1, J - 1, K - 1], [0, 0, 0], [I - 1, 2.5, 3.5],
                           [-0.5, 3, 3], [3, 3, K - 0.5], [-1, -1, -1], [I, J, K]]])
    # Points as (col, row) of a plane with A = [[1, 0, 0, x0] ...]: one point per call.
    vals = np.zeros((len(pts), C))
    inside = np.zeros(len(pts), dtype=bool)
    for n, (x, y, z) in enumerate(pts):
        A = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, z]])
        v, ins = kernels.sample_points(vol, A, np.array([x]), np.array([y]), C)
        vals[n], inside[n] = v[0], ins[0]
    size = np.array([I - 1, J - 1, K - 1], dtype=float)
    g = torch.as_tensor(2 * pts / size - 1, dtype=torch.float64).view(1, -1, 1, 1, 3)
    ref = F.grid_sample(torch.as_tensor(vol, dtype=torch.float64).permute(3, 0, 1, 2)[None],
                        g, mode="bilinear", padding_mode="zeros", align_corners=True)
    np.testing.assert_allclose(vals, ref.view(C, -1).T.numpy(), atol=1e-6)
    np.testing.assert_array_equal(inside, (np.abs(2 * pts / size - 1) <= 1).all(axis=1))
    assert 50 < inside.sum() < len(pts) - 50  # both kinds are exercised


@pytest.mark.parametrize("h, w, window", [(13, 17, 7), (9, 11, 5), (5, 6, 9), (1, 8, 3)])
def test_box_sums_match_torch(h, w, window):
    """Box sums (odd windows, as the levels use, also larger than the image) = lncc._box."""
    src = np.random.default_rng(2).random((h * w, 3))
    got = kernels.box_sums(src, h, w, window)
    ref = _box(torch.as_tensor(src.T.reshape(3, h, w)), window).reshape(3, -1).T
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [0, 5, 7])
def test_normalisation_and_lncc_match_torch(window):
    rng = np.random.default_rng(3)
    h, w = 12, 15
    a = gaussian_filter(rng.random((h, w)), 1.0) * 300 + 500  # large offset
    b = a * 0.7 + rng.random((h, w)) * 30
    m = (rng.random((h, w)) > 0.2).astype(float)
    ta, tb, tm = (torch.as_tensor(x)[None] for x in (a, b, m))
    np.testing.assert_allclose(kernels.local_normalise(a.ravel(), m.ravel(), h, w, window),
                               local_normalise(ta, tm, window)[0].numpy().ravel(), atol=1e-7)
    got = kernels.masked_lncc(a.ravel(), b.ravel(), m.ravel(), h, w, window)
    assert got == pytest.approx(float(masked_lncc(ta, tb, tm, window)[0]), abs=1e-9)
    assert 0.5 < got < 1.0


@pytest.fixture(scope="module")
def pair():
    """A torch and a compiled registrar on the same volume, frames from it at known poses
    (the fan a disc, part of the volume without data)."""
    vol, ijk = _volume()
    mask = np.ones(vol.shape, bool)
    mask[:, :, :6] = False
    vol = np.where(mask, vol, 0).astype(np.float32)
    rr, cc = np.mgrid[0:H, 0:W]
    fan = (rr - H / 2) ** 2 + (cc - W / 2) ** 2 < (H / 2) ** 2
    truths = [_pose([90 + 6 * k, 8 * k, 3], [1.0, 2 * k - 1.0, 0.5]) for k in range(3)]
    config = RegistrationConfig(levels=(Level(4, 0, 6, 1.0, rotations=False, data_mask=False),
                                        Level(4, 0, 15, 0.0), Level(2, 5, 15, 0.0)))
    regs = {b: SliceRegistrar(vol, ijk, (H, W), fan, config=replace(config, backend=b),
                              volume_mask=mask) for b in ("torch", "numba")}
    frames = regs["torch"].resample_volume(np.stack(truths), step=1)[0].numpy()
    return regs, np.stack(truths), frames, fan


def test_backend_choice(pair):
    regs, _, _, _ = pair
    assert regs["numba"]._compiled and not regs["torch"]._compiled
    vol, ijk = _volume()
    with pytest.raises(InputError, match="US registration backend: unknown 'cuda'; choose "
                                         "auto, torch or numba"):
        SliceRegistrar(vol, ijk, (H, W), config=RegistrationConfig(backend="cuda"))
    with pytest.raises(InputError, match="backend 'numba' unavailable: "
                                         "penalise_lost_overlap=False is not compiled"):
        SliceRegistrar(vol, ijk, (H, W), config=RegistrationConfig(
            backend="numba", penalise_lost_overlap=False))
    # auto falls back to torch where the kernels do not apply.
    assert not SliceRegistrar(vol, ijk, (H, W), config=RegistrationConfig(
        penalise_lost_overlap=False))._compiled
    assert SliceRegistrar(vol, ijk, (H, W))._compiled


@pytest.mark.parametrize("li", [0, 1, 2])
def test_level_cost_and_normal_equations_match_torch(pair, li):
    """Cost, J^T J and J^T r of one LM iteration of each level (translation-only global,
    6-DoF global on a smoothed volume, LNCC): kernels vs the torch path, at a pose where
    part of the fan lies outside the data. max_iter=1 makes the kernel return after one
    step, whose size depends on J^T J and J^T r; the torch path's step is formed the
    same way from its own normal equations."""
    regs, truths, frames, _ = pair
    tr, nb = regs["torch"], regs["numba"]
    level = replace(tr.config.levels[li], max_iter=1)
    start = tr._to_cropped(torch.as_tensor(truths[1:2])).numpy()
    corr0 = perturb_about_point(np.eye(4), [0.04, -0.03, 0.02, 1.5, -1.0, 0.8],
                                [0, 0, 0, 1])[None]
    f = torch.as_tensor(frames[1:2])[(slice(None),) + tr._crop]
    fd = F.avg_pool2d(f[:, None], level.step)[:, 0]
    # torch: cost and normal equations at the start
    geo = tr._level_geometry(level.step, level.window > 0)
    frame = tr._level_frame(fd, level, geo)
    centre = (corr0 @ start @ tr._centre_c)[:, :3]
    cost_t, saved = tr._evaluate(level, geo, corr0 @ start, centre, frame)
    JtJ_t, Jtr_t = tr._normal_equations(level, geo, saved)
    # kernels: the same quantities through the internal functions
    kg = nb._kernel_geometry(level.step, level.window > 0)
    vol = nb._kernel_volumes[(level.sigma_vox, level.data_mask)]
    fr = fd.reshape(-1).double().numpy()
    pose = corr0[0] @ start[0]
    A = nb._ref_to_ijk @ pose
    T = kernels.step_basis(pose, nb._centre_c, centre[0])
    n_fan = kg.fan.sum()
    if level.window:
        nf = kernels.local_normalise(fr, kg.fan, *kg.grid_shape, level.window)
        out = kernels._evaluate_lncc(vol, A, kg.cols, kg.rows, kg.fan, nf, n_fan ** -0.5,
                                     *kg.grid_shape, level.window,
                                     tr.config.lost_overlap_weight)
        cost_k = out[0]
        JtJ_k, Jtr_k = kernels._normal_equations_lncc(*out[1:], kg.feat, T, n_fan ** -0.5,
                                                      *kg.grid_shape, level.window)
    else:
        fs = fr[kg.index]
        nf = (fs - fs.mean()) / np.sqrt(fs.var() + 1e-3)
        cost_k, G = kernels._evaluate_global(vol, A, kg.cols, kg.rows, kg.feat, nf,
                                             (nf ** 2).sum(), 1.0 / n_fan)
        JtJ_k, Jtr_k = kernels._normal_equations_global(G, T, 1.0 / n_fan)
    assert cost_k == pytest.approx(cost_t[0], rel=1e-4)
    assert cost_k > 0.05  # a real misalignment
    if not level.rotations:  # the torch path zeroes the rotation block here
        JtJ_k[:3, :], JtJ_k[:, :3], Jtr_k[:3] = 0.0, 0.0, 0.0
        JtJ_k[:3, :3] = np.eye(3)
    scale = np.abs(JtJ_t[0]).max()
    np.testing.assert_allclose(JtJ_k, JtJ_t[0], rtol=1e-3, atol=1e-5 * scale)
    np.testing.assert_allclose(Jtr_k, Jtr_t[0], rtol=1e-3, atol=1e-5 * np.abs(Jtr_t).max())
    # One LM step of the whole level function = the torch level's first step.
    args = (vol, nb._ref_to_ijk, start[0], corr0[0], kg.cols, kg.rows, kg.feat, kg.fan,
            fr if kg.index is None else np.ascontiguousarray(fr[kg.index]),
            kg.index is None, *kg.grid_shape, level.window, level.rotations, 1,
            1e-3, 1e-4, 1e-2, 2, nb._centre_c, tr.config.lost_overlap_weight)
    corr_k, cost1_k, hist_k, it_k = kernels.refine_level(*args)
    corr_t, cost1_t, hist_t, it_t = tr._refine_level(fd, start, corr0, level, None)
    assert it_k == it_t == 1 and len(hist_k) == hist_t.shape[0] == 2
    np.testing.assert_allclose(hist_k, hist_t[:, 0], rtol=1e-4)
    np.testing.assert_allclose(corr_k, corr_t[0], atol=1e-5)


def test_backends_register_to_the_same_poses(pair):
    """Whole registrations (three frames, 2-3 mm / 2.5-3.5 deg starts): both backends
    register (to ~1 deg / 0.1 mm on this smooth synthetic texture), report the same
    similarities and end within 0.02 mm / 0.05 deg of each other (float64 vs float32
    sums could change an accepted step at the finest level)."""
    regs, truths, frames, _ = pair
    centre = regs["torch"].fan_centre_px
    twists = [[0.04, -0.025, 0.03, 1.5, -1.0, 0.75], [-0.03, 0.035, 0.0, -1.0, 1.5, -1.0],
              [0.0, 0.0, 0.05, 0.0, 0.0, 2.0]]
    starts = np.stack([perturb_about_point(t, tw, centre) for t, tw in zip(truths, twists)])
    out = {b: r.register(frames, starts) for b, r in regs.items()}
    for k in range(3):
        a, b = out["torch"][k], out["numba"][k]
        for res in (a, b):
            rot, tra = pose_errors(res.image_to_reference, truths[k], centre)
            assert rot < 1.2 and tra < 0.15, (k, rot, tra)
        rot, tra = pose_errors(b.image_to_reference, a.image_to_reference, centre)
        assert rot < 0.05 and tra < 0.02, (k, rot, tra)
        assert b.lncc_start == pytest.approx(a.lncc_start, abs=1e-4)
        assert b.lncc == pytest.approx(a.lncc, abs=1e-3)
        assert b.overlap == pytest.approx(a.overlap, abs=1e-9)
        assert min(pose_errors(starts[k], truths[k], centre)) > 1.9
    # tracking (the finest level only) also agrees
    near = np.stack([perturb_about_point(t, [0.01, 0, 0, 0.3, 0, 0], centre) for t in truths])
    a = regs["torch"].register(frames, near, tracking=True)
    b = regs["numba"].register(frames, near, tracking=True)
    for x, y in zip(a, b):
        assert pose_errors(x.image_to_reference, y.image_to_reference, centre)[1] < 0.02


def test_bench_method_names_choose_a_backend():
    from USSliceRegLib.bench import make_bench_method

    vol, ijk = _volume()
    fn = make_bench_method("lncc:torch", vol, ijk, (H, W), None)
    assert not fn.registrar._compiled
    assert make_bench_method("lncc:numba", vol, ijk, (H, W), None).registrar._compiled
    with pytest.raises(InputError, match=r"method: 'sitk:torch': only lncc has backends"):
        make_bench_method("sitk:torch", vol, ijk, (H, W), None)


def test_score_is_what_register_reports_on_both_backends(pair):
    """``SliceRegistrar.score`` (used by the ``deep`` method) gives the LNCC that
    ``register`` reports at the start and at its result, on both backends, and the fan
    fraction in the volume's data (the left eighth of this volume has none: a pose
    shifted towards it loses overlap)."""
    regs, truths, frames, _ = pair
    centre = regs["torch"].fan_centre_px
    starts = np.stack([perturb_about_point(t, [0.03, -0.02, 0.02, 1.0, -1.0, 0.5], centre)
                       for t in truths])
    for name, reg in regs.items():
        res = reg.register(frames, starts)
        l0, ov0 = reg.score(frames, starts)
        l1, _ = reg.score(frames, np.stack([r.image_to_reference for r in res]))
        for k, r in enumerate(res):
            assert l0[k] == pytest.approx(r.lncc_start, abs=1e-4), (name, k)
            assert l1[k] == pytest.approx(r.lncc, abs=1e-4), (name, k)
        assert np.all((ov0 > 0.3) & (ov0 <= 1.0))
    shifted = truths.copy()
    shifted[:, 0, 3] -= 8.0  # towards the voxels without data (x < -9.6 mm)
    ov_t = regs["torch"].score(frames, truths)[1]
    ov_s = regs["torch"].score(frames, shifted)[1]
    assert np.all(ov_s < ov_t - 0.05)
    assert regs["numba"].score(frames, shifted)[1] == pytest.approx(ov_s, abs=1e-6)
