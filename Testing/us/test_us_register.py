"""USSliceReg registration, reconstruction and temporal mode.

Synthetic ground truth (a smooth random volume, frames sampled from it by scipy at known
poses) and the shipped real spine sweep (ground truth = the tracked chain; the volume is
rebuilt without the tested frame).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from SurgicalReg2D3DLib.errors import CancelledError, GeometryError, InputError
from SurgicalReg2D3DLib.progress import CancelToken
from USSliceRegLib.methods import make_method
from USSliceRegLib.reconstruct import reconstruct_volume
from USSliceRegLib.config import Level, RegistrationConfig
from USSliceRegLib.pose_utils import perturb_about_point, pose_errors, random_perturbations
from USSliceRegLib.register import SliceRegistrar
from USSliceRegLib.temporal import LiveRegistration, register_sequence

SYN_CONFIG = RegistrationConfig(levels=(Level(4, 0, 15, 1.0), Level(2, 5, 15, 0.0)))
H, W = 48, 64


def _synthetic_volume():
    """Synthetic: smooth random texture, 40^3 voxels of 1 mm, reference = ijk + (-20)."""
    rng = np.random.default_rng(0)
    vol = gaussian_filter(rng.random((40, 40, 40)), 1.5)
    vol = (vol - vol.min()) / (vol.max() - vol.min()) * 200 + 20
    ijk_to_ref = np.eye(4)
    ijk_to_ref[:3, 3] = -20.0
    return vol.astype(np.float32), ijk_to_ref


def _pose(angles_deg, centre):
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ np.diag(
        [0.5, 0.5, 0.5])
    T[:3, 3] = np.asarray(centre) - T[:3, :3] @ np.array([W / 2, H / 2, 0.0])
    return T


def _frame(vol, ijk_to_ref, image_to_ref):
    rr, cc = np.mgrid[0:H, 0:W]
    pix = np.stack([cc.ravel(), rr.ravel(), 0 * cc.ravel(), 1 + 0 * cc.ravel()]).astype(float)
    ijk = np.linalg.inv(ijk_to_ref) @ image_to_ref @ pix
    return map_coordinates(vol.astype(float), ijk[[2, 1, 0]], order=1).reshape(H, W)


@pytest.fixture(scope="module")
def synthetic():
    vol, ijk = _synthetic_volume()
    truths = [_pose([90 + 5 * k, 10 * k, 0], [0, 2 * k - 3, 1.0]) for k in range(4)]
    frames = np.stack([_frame(vol, ijk, t) for t in truths])
    return vol, ijk, truths, frames


@pytest.mark.parametrize("method", ["lncc", "sitk"])
def test_recovers_known_pose_synthetic(synthetic, method):
    vol, ijk, truths, frames = synthetic
    fn = make_method(method, vol, ijk, (H, W), np.ones((H, W), bool), config=SYN_CONFIG)
    centre = np.array([W / 2, H / 2, 0, 1.0])
    twists = np.array([[0.04, -0.03, 0.02, 2.0, -1.5, 1.0], [-0.03, 0.05, 0.0, -1.0, 2.0, -2.0]])
    starts = np.stack([perturb_about_point(truths[k], twists[k], centre) for k in range(2)])
    for k in range(2):
        r0, t0 = pose_errors(starts[k], truths[k], centre)
        assert r0 > 3 and t0 > 2.5
    results = fn(frames[:2], starts)
    for k, res in enumerate(results):
        rot, tra = pose_errors(res.image_to_reference, truths[k], centre)
        tol = 0.2 if method == "lncc" else 0.6
        assert rot < tol and tra < tol, (method, rot, tra)
        np.testing.assert_allclose(res.correction @ starts[k], res.image_to_reference, atol=1e-9)
        assert res.lncc > res.lncc_start


def test_pose_errors_analytic():
    T = _pose([0, 0, 0], [0, 0, 0])
    P = np.eye(4)
    P[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 deg about z through the origin
    rot, tra = pose_errors(P @ T, T, np.array([W / 2 + 20, H / 2, 0, 1]))
    assert rot == pytest.approx(90.0)
    assert tra == pytest.approx(np.hypot(10, 10))  # point at (10, 0, 0) mm goes to (0, 10, 0)
    tw = random_perturbations(200, 10, 10, seed=1)
    assert np.degrees(np.linalg.norm(tw[:, :3], axis=1)).max() <= 10
    assert np.linalg.norm(tw[:, 3:], axis=1).max() <= 10


def test_temporal_initialisation_and_live(synthetic):
    """A constant tracking offset (synthetic 'patient motion'): the 2nd frame starts from
    the 1st frame's correction, so it starts (much) closer than without temporal init."""
    vol, ijk, truths, frames = synthetic
    fn = make_method("lncc", vol, ijk, (H, W), np.ones((H, W), bool), config=SYN_CONFIG)
    offset = np.eye(4)
    offset[:3, 3] = [2.0, -2.0, 1.5]
    tracked = np.stack([np.linalg.inv(offset) @ t for t in truths[:3]])
    seq_t = register_sequence(fn, frames[:3], tracked, temporal=True)
    seq_n = register_sequence(fn, frames[:3], tracked, temporal=False)
    for res in seq_t + seq_n:
        np.testing.assert_allclose(res.correction, offset, atol=0.05)
    assert seq_t[1].lncc_start > 0.95 > seq_n[1].lncc_start
    # Frames after the first run the short tracking search (finest level only): fewer
    # LM iterations than the full pyramid from the tracked pose, same answer.
    assert seq_t[0].iterations == seq_n[0].iterations
    assert seq_t[1].iterations < seq_n[1].iterations
    live = LiveRegistration(fn)
    r1 = live.update(frames[0], tracked[0])
    r2 = live.update(frames[1], tracked[1])
    assert live.count == 2 and r2.lncc_start > 0.95
    np.testing.assert_allclose(live.correction, r2.correction)
    np.testing.assert_allclose(r1.correction, offset, atol=0.05)


def test_cancel(synthetic):
    vol, ijk, truths, frames = synthetic
    fn = make_method("lncc", vol, ijk, (H, W), np.ones((H, W), bool), config=SYN_CONFIG)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        register_sequence(fn, frames[:2], np.stack(truths[:2]), cancel=token)


def test_bad_inputs(synthetic):
    vol, ijk, truths, frames = synthetic
    reg = SliceRegistrar(vol, ijk, (H, W), np.ones((H, W), bool), config=SYN_CONFIG)
    far = truths[0].copy()
    far[:3, 3] += 100
    with pytest.raises(GeometryError, match=r"^US frame 0: no overlap with the volume at the "
                                            r"start pose \(0% of the fan"):
        reg.register(frames[:1], far[None])
    huge = truths[0].copy()
    huge[:3, :3] *= 50  # calibration in the wrong units
    with pytest.raises(GeometryError, match=r"^US frame: field of view \(\d+ mm across the fan\) "
                                            r"is larger than twice the volume's extent"):
        reg.register(frames[:1], huge[None])
    with pytest.raises(InputError, match=r"^US volume: expected a 3D volume \(K, J, I\), got "
                                         r"shape \(40, 40\)"):
        SliceRegistrar(vol[0], ijk, (H, W))
    with pytest.raises(InputError, match=r"^start image_to_reference: contains NaN or inf"):
        reg.register(frames[:1], np.full((1, 4, 4), np.nan))
    with pytest.raises(InputError, match=r"^US frame: shape \(40, 64\) differs from the "
                                         r"registrar's \(48, 64\)"):
        reg.register(frames[:1, :40], truths[0][None])
    with pytest.raises(InputError, match=r"^method: unknown 'nope'; choose one of lncc, sitk"):
        make_method("nope", vol, ijk, (H, W), None)


def test_reconstruction_of_synthetic_sweep(synthetic):
    """Frames sampled at known poses compound back to the volume they came from."""
    vol, ijk, _, _ = synthetic
    poses = [_pose([90, 0, 0], [0, y, 0]) for y in np.arange(-6, 6.1, 0.5)]
    frames = np.stack([_frame(vol, ijk, t) for t in poses])
    rec = reconstruct_volume(frames, np.stack(poses), spacing_mm=1.0, fill_radius=2)
    kk, jj, ii = np.indices(rec.array.shape)
    centres = np.einsum("ab,bkji->akji", rec.ijk_to_reference,
                        np.stack([ii, jj, kk, np.ones_like(ii)]))[:3]
    swept = (np.abs(centres[0]) < 15.5) & (np.abs(centres[1]) < 5.5) & (np.abs(centres[2]) < 11.5)
    outside = (np.abs(centres[0]) > 17) | (np.abs(centres[1]) > 7) | (np.abs(centres[2]) > 13)
    assert rec.filled[swept].mean() > 0.99  # gaps between frames are filled
    assert not rec.filled[outside].any()  # nothing is invented around the sweep
    k, j, i = np.nonzero(rec.filled)
    ref = rec.ijk_to_reference @ np.stack([i, j, k, np.ones_like(i)])
    truth = map_coordinates(vol.astype(float), (np.linalg.inv(ijk) @ ref)[[2, 1, 0]], order=1)
    err = np.abs(rec.array[rec.filled] - truth)
    # Nearest-neighbour placement moves a pixel by up to half a voxel diagonal (0.87 mm):
    # small errors relative to the 200-unit intensity range, high correlation.
    corr = np.corrcoef(rec.array[rec.filled], truth)[0, 1]
    assert np.median(err) < 5.0 and corr > 0.97, (np.median(err), corr)
    with pytest.raises(InputError, match=r"^image_to_reference: contains NaN or inf"):
        reconstruct_volume(frames[:1], np.full((1, 4, 4), np.nan))


def test_reconstruction_fills_gaps_up_to_twice_the_radius(synthetic):
    """Frames 4 mm apart on a 1 mm grid, fill_radius 2: every 4-voxel gap between frames
    is filled, with the linear interpolation of its two ends (before session 5 each end
    was searched only 2 voxels away, so only the middle voxel of such a gap was filled
    and the volume had data on the frames and on thin mid-sheets only); a gap of 6 mm
    (6 voxels, > 2 * radius) stays empty."""
    vol, ijk, _, _ = synthetic
    ys = [-8.0, -4.0, 0.0, 4.0, 10.0]
    poses = [_pose([90, 0, 0], [0, y, 0]) for y in ys]
    frames = np.stack([_frame(vol, ijk, t) for t in poses])
    rec = reconstruct_volume(frames, np.stack(poses), spacing_mm=1.0, fill_radius=2)
    jj = np.arange(rec.array.shape[1])
    y = rec.ijk_to_reference[1, 1] * jj + rec.ijk_to_reference[1, 3]
    centre = rec.filled[rec.array.shape[0] // 2, :, rec.array.shape[2] // 2]
    # y of the volume's row j; frames sit on rows, the fan spans x and z.
    inside = (y > -8) & (y < 4)
    assert centre[inside].all(), y[inside & ~centre]
    assert not centre[(y > 4.5) & (y < 9.5)].any()
    # Each filled voxel in a gap = the linear interpolation of the frames on both sides.
    k0, i0 = rec.array.shape[0] // 2, rec.array.shape[2] // 2
    col = rec.array[k0, :, i0]
    j_of = {v: int(np.argmin(np.abs(y - v))) for v in ys}
    for a, b in ((-8.0, -4.0), (-4.0, 0.0), (0.0, 4.0)):
        ja, jb = j_of[a], j_of[b]
        for j in range(ja + 1, jb):
            w = (y[j] - a) / (b - a)
            assert col[j] == pytest.approx((1 - w) * col[ja] + w * col[jb], rel=1e-4)


@pytest.fixture(scope="module")
def spine(sample_data):
    from USSliceRegLib.plus_io import image_to_reference_chain, read_calibration, read_sequence
    from USSliceRegLib.slicing import fan_mask

    d = sample_data / "ultrasound"
    seq = read_sequence(d / "SpinePhantomFreehand.igs.mha")
    chain = image_to_reference_chain(
        seq, read_calibration(d / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"))
    return seq, chain, fan_mask(seq.images)


def test_reconstruction_matches_plus_volume(spine, sample_data):
    """Our compounding of the real sweep on PLUS's grid correlates with PLUS's own volume."""
    from USSliceRegLib.plus_io import read_reference_volume

    seq, chain, fan = spine
    plus = read_reference_volume(sample_data / "ultrasound" / "SpinePhantomFreehandReconstructed.mha")
    rec = reconstruct_volume(seq.images, chain.image_to_reference, fan, pixel_step=4,
                             ijk_to_reference=plus.ijk_to_reference, shape=plus.array.shape)
    both = rec.filled & (plus.array > 0)
    assert both.sum() > 0.8 * (plus.array > 0).sum()
    assert np.corrcoef(rec.array[both], plus.array[both])[0, 1] > 0.9


def test_real_held_out_frame(spine):
    """Frame 7 of the real sweep, volume rebuilt without it, start 6 mm / 6 deg off."""
    seq, chain, fan = spine
    train = [i for i in range(21) if i != 7]
    rec = reconstruct_volume(seq.images[train], chain.image_to_reference[train], fan,
                             pixel_step=4, fill_radius=4)
    fn = make_method("lncc", rec.array, rec.ijk_to_reference, seq.frame_shape, fan,
                     volume_mask=rec.filled)
    centre = fn.registrar.fan_centre_px
    tw = np.array([np.radians(6.0) / np.sqrt(3)] * 3 + [6.0 / np.sqrt(3)] * 3)
    start = perturb_about_point(chain.image_to_reference[7], tw, centre)
    res = fn(seq.images[7][None], start[None])[0]
    rot, tra = pose_errors(res.image_to_reference, chain.image_to_reference[7], centre)
    assert rot < 2.0 and tra < 1.5, (rot, tra)


def test_step_matrix_is_rotation_about_centre():
    """The LM step S(x): scipy's rotation-vector rotation about the centre, then v."""
    from scipy.spatial.transform import Rotation

    from USSliceRegLib.lm_torch import _step_matrix_np

    x = random_perturbations(6, 10, 30, seed=3)
    x[0, :3] = 1e-7  # below the Taylor threshold
    centre = np.random.default_rng(4).normal(size=(6, 3)) * 50
    S = _step_matrix_np(x, centre)
    for k in range(6):
        np.testing.assert_allclose(S[k, :3, :3], Rotation.from_rotvec(x[k, :3]).as_matrix(),
                                   atol=1e-12)
        np.testing.assert_allclose(S[k, :3, :3] @ centre[k] + S[k, :3, 3], centre[k] + x[k, 3:],
                                   atol=1e-9)
        np.testing.assert_allclose(S[k, 3], [0, 0, 0, 1])


@pytest.mark.parametrize("level, penalise", [
    (Level(4, 0, 1, 0.0), True), (Level(2, 5, 1, 0.0), True),
    (Level(4, 0, 1, 0.0, rotations=False), True), (Level(4, 0, 1, 2.0, data_mask=False), True),
    (Level(4, 0, 1, 0.0), False), (Level(2, 5, 1, 0.0), False)])
def test_cost_and_normal_equations_match_independent_residual(synthetic, level, penalise):
    """Cost, J^T r and J^T J of the registrar (global NCC from one Gram matrix on the fan
    points, windowed LNCC on the grid, translation only, smoothed volume; the frame
    normalised once on the fan, or on the overlap at every pose) against an independent
    float64 residual: slice_volume on the plain volume, normalised on the overlap
    (lncc.local_normalise for the window), and its central differences under the same left
    steps S(x). A smoother volume than the fixture's, so that the precomputed
    central-difference gradient is close to the interpolant's. The frame sits partly off
    the volume (the overlap matters)."""
    from scipy import ndimage

    from USSliceRegLib.lncc import local_normalise
    from USSliceRegLib.lm_torch import _step_matrix_np
    from USSliceRegLib.slicing import prepare_volume, slice_volume

    _, ijk, truths, _ = synthetic
    vol = gaussian_filter(np.random.default_rng(5).random((40, 40, 40)), 3.0) * 1000
    frames = np.stack([_frame(vol, ijk, t) for t in truths[:2]])
    reg = SliceRegistrar(vol, ijk, (H, W), None, config=RegistrationConfig(
        levels=(level,), penalise_lost_overlap=penalise, backend="torch"))
    starts = reg._to_cropped(torch.as_tensor(truths[1])[None]).numpy()
    np.testing.assert_array_equal(starts[0], truths[1])  # no fan: the crop is the frame
    corr = perturb_about_point(np.eye(4), [0.03, -0.02, 0.04, 1.0, -0.5, 0.8], [0, 0, 0, 1])[None]
    off = corr.copy()
    off[0, :3, 3] += [0.0, 0.0, 10.5]  # a strip of the frame leaves the volume
    geo = reg._level_geometry(level.step, level.window > 0)
    fd = torch.nn.functional.avg_pool2d(torch.as_tensor(frames[1:2])[:, None], level.step)[:, 0]
    centre = (corr @ starts @ reg._centre_c)[:, :3]
    ref_vol = vol if level.sigma_vox == 0 else ndimage.gaussian_filter(vol, level.sigma_vox)
    plain = prepare_volume(ref_vol, ijk, dtype=torch.float64)
    if level.window:
        nf = local_normalise(fd, torch.ones_like(fd), level.window)[0]
    else:
        nf = (fd[0] - fd.mean()) / torch.sqrt(fd.var(unbiased=False) + 1e-3)
    weight = 1.0 / np.sqrt(nf.numel())

    def normalise(x, m):
        if level.window:
            return local_normalise(x[None], m[None], level.window)[0]
        mu = (x * m).sum() / m.sum()
        return (x - mu) / torch.sqrt(((x - mu) ** 2 * m).sum() / m.sum() + 1e-3) * m

    def residual(x, c=corr):
        pose = _step_matrix_np(x[None], centre) @ c @ starts
        vals, inside = slice_volume(plain, pose, (H, W), step=level.step)
        s, m = vals[0, 0], inside[0].double()
        if penalise:  # every fan pixel keeps a residual, the frame normalised on the fan
            # (windowed LNCC: a pixel off the volume keeps lost_overlap_weight * nf)
            lost = reg.config.lost_overlap_weight if level.window else 1.0
            nfw = nf * (1.0 + (lost - 1.0) * (1.0 - m))
            return ((nfw - normalise(s, m)) * weight).reshape(-1).numpy()
        # overlap only: both normalised on it, weight 1 / sqrt(overlap)
        return ((normalise(fd[0].double(), m) - normalise(s, m))
                / torch.sqrt(m.sum())).reshape(-1).numpy()

    frame = reg._level_frame(fd.float(), level, geo)
    # Cost, also where part of the fan is off the volume (float32 sampling; scipy's vs.
    # the registrar's normalised-convolution smoothing for the smoothed volume).
    _, inside_off = slice_volume(plain, off @ starts, (H, W), step=level.step)
    assert 0.5 < float(inside_off.double().mean()) < 0.95
    for c in (corr, off):
        r = residual(np.zeros(6), c)
        cost, saved = reg._evaluate(level, geo, c @ starts, centre, frame)
        assert cost[0] == pytest.approx(0.5 * r @ r, rel=1e-3 if level.sigma_vox == 0 else 2e-2)
    # Normal equations where the fan lies inside (J does not model pixels entering or
    # leaving the volume).
    r0 = residual(np.zeros(6))
    cost, saved = reg._evaluate(level, geo, corr @ starts, centre, frame)
    JtJ, Jtr = reg._normal_equations(level, geo, saved)
    eps = np.array([4e-3] * 3 + [0.1] * 3)
    free = range(6) if level.rotations else range(3, 6)
    Jfd = np.zeros((r0.size, 6))
    for k in free:
        e = np.zeros(6)
        e[k] = eps[k]
        Jfd[:, k] = (residual(e) - residual(-e)) / (2 * eps[k])
    g_fd = Jfd.T @ r0
    cos = g_fd @ Jtr[0] / np.linalg.norm(g_fd) / np.linalg.norm(Jtr[0])
    assert cos > 0.98, cos
    np.testing.assert_allclose(np.linalg.norm(Jtr[0]), np.linalg.norm(g_fd), rtol=0.1)
    d_fd, d_an = np.diag(Jfd.T @ Jfd)[list(free)], np.diag(JtJ[0])[list(free)]
    # The analytic J samples a central-difference volume gradient, smaller than the
    # interpolant's slope at high frequencies, which the 5 x 5 LNCC windows emphasise.
    np.testing.assert_allclose(d_an, d_fd, rtol=0.15 if level.window == 0 else 0.5)
    assert np.all(d_an <= 1.1 * d_fd)
    if not level.rotations:
        assert np.all(Jtr[0, :3] == 0)


def test_every_method_accepts_tracking(synthetic):
    """The live / temporal path calls every registry method with ``tracking=``; each
    accepts it and still registers (the LNCC method then runs its short search: the
    finest level only, at most 5 LM iterations)."""
    from USSliceRegLib.methods import METHODS

    vol, ijk, truths, frames = synthetic
    centre = np.array([W / 2, H / 2, 0, 1.0])
    start = perturb_about_point(truths[0], [0.01, -0.01, 0.0, 0.5, -0.4, 0.3], centre)
    assert set(METHODS) >= {"lncc", "sitk"}
    # the learned methods need a model trained for this volume; their tracking path is
    # tested in test_us_deep.py
    for name in [m for m in METHODS if not m.startswith("deep")]:
        fn = make_method(name, vol, ijk, (H, W), np.ones((H, W), bool), config=SYN_CONFIG)
        full = fn(frames[:1], start[None], tracking=False)[0]
        short = fn(frames[:1], start[None], tracking=True)[0]
        for res in (full, short):
            rot, tra = pose_errors(res.image_to_reference, truths[0], centre)
            assert rot < 0.6 and tra < 0.6, (name, rot, tra)
        if name == "lncc":
            assert short.iterations <= 5 < full.iterations


def test_resample_volume_gives_the_frame_at_its_pose(synthetic):
    """The registrar's display / check slice of the volume as given (not the centred,
    smoothed level volumes) reproduces a frame sampled by scipy at its true pose."""
    vol, ijk, truths, frames = synthetic
    reg = SliceRegistrar(vol, ijk, (H, W), None, config=SYN_CONFIG)
    vals, inside = reg.resample_volume(np.stack(truths[:2]), step=1)
    assert vals.shape == (2, H, W) and bool(inside.all())
    np.testing.assert_allclose(vals.numpy(), frames[:2], atol=2e-3 * float(vol.max()))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_batched_items_converge_independently(synthetic, backend):
    """A batch of 3 frames gives each frame the pose, cost history and similarity it gets
    registered alone: every LM item has its own damping, rejection count and stop (the
    offline ``--no-temporal`` path batches frames; the live path registers one).

    The three items need different amounts of work (frame 0 starts 5 deg / 3.5 mm off,
    frame 1 0.3 deg / 0.2 mm off, frame 2 at its true pose, which the coarse levels
    still move from and back to). A damping, rejection count or stop shared across the
    batch changes the histories (and poses) of the items it couples. (The compiled
    kernels run one item per call, so there the check guards the bookkeeping around them.)"""
    vol, ijk, truths, frames = synthetic
    reg = SliceRegistrar(vol, ijk, (H, W), np.ones((H, W), bool),
                         config=replace(SYN_CONFIG, backend=backend))
    centre = np.array([W / 2, H / 2, 0, 1.0])
    twists = [[0.06, -0.05, 0.04, 2.5, -2.0, 1.5], [0.005, 0, 0, 0.2, 0, 0], np.zeros(6)]
    starts = np.stack([perturb_about_point(truths[k], twists[k], centre) for k in range(3)])
    batch = reg.register(frames[:3], starts)
    alone = [reg.register(frames[k:k + 1], starts[k:k + 1])[0] for k in range(3)]
    lengths = [len(a.history) for a in alone]
    assert lengths[2] < lengths[1] < lengths[0] - 3, lengths  # different amounts of work
    for k, (b, a) in enumerate(zip(batch, alone)):
        np.testing.assert_allclose(b.image_to_reference, a.image_to_reference, rtol=0,
                                   atol=1e-6, err_msg=f"frame {k}")
        assert abs(b.lncc - a.lncc) < 1e-6 and abs(b.lncc_start - a.lncc_start) < 1e-6
        # The batch runs each level until its last item stops; an item that stopped keeps
        # its cost, so its batched history is its own history with repeated entries.
        assert len(b.history) >= len(a.history)
        np.testing.assert_allclose(np.unique(b.history), np.unique(a.history), rtol=1e-6,
                                   err_msg=f"frame {k}")
    # And every item did register (the check above must not pass on three failures).
    for k in range(3):
        rot, tra = pose_errors(batch[k].image_to_reference, truths[k], centre)
        assert rot < 0.2 and tra < 0.2, (k, rot, tra)
    assert pose_errors(starts[0], truths[0], centre)[1] > 3.0
