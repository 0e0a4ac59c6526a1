"""USSliceReg learned method (DeepRS2V): tiny trainings in seconds on a synthetic volume.

Synthetic data: a smooth random texture volume, frames cut from it with scipy's
``map_coordinates`` (independent of the torch sampling the method uses), errors measured
with ``register.pose_errors`` against the poses the frames were cut at.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.errors import FileReadError, InputError
from SurgicalReg2D3DLib.progress import CancelToken

H, W = 48, 64  # frame pixels (0.5 mm)


def _volume(seed=0, n=48):
    """Synthetic: smooth random texture, n^3 voxels of 1 mm centred on the origin."""
    rng = np.random.default_rng(seed)
    vol = gaussian_filter(rng.random((n, n, n)), 2.5)
    vol = (vol - vol.min()) / (vol.max() - vol.min()) * 200 + 20
    ijk = np.eye(4)
    ijk[:3, 3] = -(n - 1) / 2.0
    return vol.astype(np.float32), ijk


def _pose(y_mm, tilt_deg=0.0):
    """Frame plane ~ perpendicular to y (the sweep direction), centre at (0, y, 0)."""
    T = np.eye(4)
    R = Rotation.from_euler("xz", [90, tilt_deg], degrees=True).as_matrix()
    T[:3, :3] = R @ np.diag([0.5, 0.5, 0.5])
    T[:3, 3] = np.array([0.0, y_mm, 0.0]) - T[:3, :3] @ np.array([W / 2, H / 2, 0.0])
    return T


def _frame(vol, ijk, image_to_ref):
    rr, cc = np.mgrid[0:H, 0:W]
    pix = np.stack([cc.ravel(), rr.ravel(), 0 * cc.ravel(), 1 + 0 * cc.ravel()]).astype(float)
    p = np.linalg.inv(ijk) @ image_to_ref @ pix
    return map_coordinates(vol.astype(float), p[[2, 1, 0]], order=1).reshape(H, W)


def _tiny_config(**kw):
    from USSliceRegLib.learned.losses import LossWeights
    from USSliceRegLib.learned.train import TrainConfig

    base = dict(max_minutes=5.0, max_steps=2, seed=0, batch_size=8, lr=3e-3, max_mm=6.0,
                max_deg=6.0, side_mm=40.0, n2=32, n3=16, width=8,
                loss=LossWeights(lncc=0.2, lncc_kernel=5), real_fraction=0.3,
                jitter_mm=1.0, jitter_deg=2.0, val_samples=16, log_every=1000)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def sweep():
    vol, ijk = _volume()
    poses = np.stack([_pose(y) for y in np.arange(-10, 10.1, 2.5)])
    frames = np.stack([_frame(vol, ijk, p) for p in poses]).astype(np.float32)
    fan = np.ones((H, W), bool)
    return vol, ijk, poses, frames, fan


def _train(sweep, out, **kw):
    from USSliceRegLib.learned.train import train_model

    vol, ijk, poses, frames, fan = sweep
    torch.set_num_threads(1)
    return train_model(vol, ijk, out, fan=fan, poses=poses, frames=frames,
                       frame_shape=(H, W), config=_tiny_config(**kw), command="test",
                       log=None)


@pytest.fixture(scope="module")
def tiny_model(sweep):
    d = tempfile.mkdtemp(prefix="usdeep_")
    path = os.path.join(d, "tiny.pt")
    _train(sweep, path, max_steps=150)
    return path


def test_training_lowers_pose_error_on_held_out_perturbations(sweep, tiny_model):
    from USSliceRegLib.learned.infer import DeepRegistrar
    from USSliceRegLib.register import perturb_about_point, pose_errors, random_perturbations

    vol, ijk, poses, frames, fan = sweep
    centre = np.array([W / 2 - 0.5, H / 2 - 0.5, 0, 1.0])
    # held out: poses between the training sweep's and perturbations of another seed
    truths = [_pose(y, t) for y, t in zip(np.arange(-8.75, 8.8, 2.5), (1, -1, 2, -2, 0, 1, -1, 2))]
    test_frames = np.stack([_frame(vol, ijk, t) for t in truths]).astype(np.float32)
    twists = random_perturbations(len(truths), 5.0, 5.0, seed=123)
    starts = np.stack([perturb_about_point(t, tw, centre) for t, tw in zip(truths, twists)])
    deep = DeepRegistrar(tiny_model, vol, ijk, (H, W), fan)
    corr = deep.predict(test_frames, starts)
    before = np.array([pose_errors(s, t, centre) for s, t in zip(starts, truths)])
    after = np.array([pose_errors(c @ s, t, centre) for c, s, t in zip(corr, starts, truths)])
    # translation (mm) clearly lower; rotation not worse
    assert after[:, 1].mean() < 0.7 * before[:, 1].mean(), (before.mean(0), after.mean(0))
    assert after[:, 0].mean() < before[:, 0].mean() + 0.5


def test_traced_network_equals_the_eager_one_for_any_batch(sweep, tiny_model):
    """The inference copy (traced and frozen once, with a batch of 2) gives the eager
    network's output for other batch sizes too, and the same corrections."""
    from USSliceRegLib.learned.infer import DeepRegistrar

    vol, ijk, poses, frames, fan = sweep
    deep = DeepRegistrar(tiny_model, vol, ijk, (H, W), fan)
    assert deep._raw is not None
    n2, n3 = deep.net.n2, deep.net.n3
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in (1, 3):
            x2 = torch.randn(b, 2, n2, n2, generator=gen)
            x3 = torch.randn(b, 2, n3, n3, n3, generator=gen)
            torch.testing.assert_close(deep._raw(x2, x3), deep.net.raw(x2, x3),
                                       rtol=1e-4, atol=1e-5)
    traced = deep.predict(frames[:3], poses[:3])
    deep._raw = None  # the eager path
    np.testing.assert_allclose(deep.predict(frames[:3], poses[:3]), traced, atol=1e-4)


def test_model_file_records_provenance_and_is_refused_for_another_volume(sweep, tiny_model):
    from USSliceRegLib.learned.geometry import volume_fingerprint
    from USSliceRegLib.learned.infer import DeepRegistrar
    from USSliceRegLib.learned.model_io import FORMAT_VERSION, load_model

    vol, ijk, poses, frames, fan = sweep
    m = load_model(tiny_model)
    assert m["format_version"] == FORMAT_VERSION
    assert m["volume_fingerprint"] == volume_fingerprint(vol, ijk)
    assert m["command"] == "test" and m["seed"] == 0
    assert m["range"] == {"max_mm": 6.0, "max_deg": 6.0}
    # the same volume as a Slicer node (RAS = diag(-1, -1, 1) LPS) is accepted
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepRegistrar(tiny_model, vol, np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk, (H, W), fan)
    other, ijk2 = _volume(seed=1)
    with pytest.raises(InputError, match="another volume"):
        DeepRegistrar(tiny_model, other, ijk2, (H, W), fan)
    shifted = ijk.copy()
    shifted[:3, :3] *= 1.5  # same voxels, other spacing: another volume
    with pytest.raises(InputError, match="another volume"):
        DeepRegistrar(tiny_model, vol, shifted, (H, W), fan)
    with pytest.warns(UserWarning, match="another volume"):
        deep = DeepRegistrar(tiny_model, other, ijk2, (H, W), fan, force=True)
    assert np.isfinite(deep.predict(frames[:1], poses[:1])).all()


def test_corrupt_or_foreign_model_file_is_a_named_error(sweep, tiny_model, tmp_path):
    from USSliceRegLib.learned.infer import DeepRegistrar
    from USSliceRegLib.learned.model_io import load_model

    vol, ijk, _, _, fan = sweep
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model" * 100)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(tiny_model, "rb").read()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for path, what in ((garbage, "corrupt"), (truncated, "corrupt"),
                       (foreign, "not a DeepRS2V model"), (tmp_path / "missing.pt", "exist")):
        with pytest.raises(FileReadError, match=what) as err:
            DeepRegistrar(str(path), vol, ijk, (H, W), fan)
        assert str(err.value).startswith("model file")
    assert load_model(tiny_model)["format"] == "USSliceReg-DeepRS2V"


def test_other_frame_size_is_resampled_with_a_warning(sweep, tiny_model):
    from USSliceRegLib.learned.infer import DeepRegistrar

    vol, ijk, poses, _, _ = sweep
    # the same plane cut as a 60 x 80 frame of 0.4 mm pixels (same field of view)
    T = _pose(0.0)
    T2 = T.copy()
    T2[:3, :3] = T[:3, :3] * 0.8
    T2[:3, 3] = T[:3, 3] + T[:3, :3] @ np.array([-0.4, -0.4, 0.0])
    rr, cc = np.mgrid[0:60, 0:80]
    pix = np.stack([cc.ravel(), rr.ravel(), 0 * cc.ravel(), 1 + 0 * cc.ravel()]).astype(float)
    p = np.linalg.inv(ijk) @ T2 @ pix
    big = map_coordinates(vol.astype(float), p[[2, 1, 0]], order=1).reshape(60, 80)
    with pytest.warns(UserWarning, match="resampled"):
        deep = DeepRegistrar(tiny_model, vol, ijk, (60, 80), np.ones((60, 80), bool))
    corr = deep.predict(big[None], T2[None])
    assert corr.shape == (1, 4, 4) and np.isfinite(corr).all()
    with pytest.raises(InputError, match="US frame"):
        deep.predict(np.zeros((1, 48, 64)), T2[None])


def test_volume_too_small_and_bad_budget(sweep, tiny_model, tmp_path):
    from USSliceRegLib.learned.infer import DeepRegistrar
    from USSliceRegLib.learned.train import train_model

    vol, ijk, poses, frames, fan = sweep
    small = vol[:10]
    with pytest.raises(InputError, match="US volume: too small"):
        DeepRegistrar(tiny_model, small, ijk, (H, W), fan, force=True)
    with pytest.raises(InputError, match="US volume: too small"):
        train_model(small, ijk, tmp_path / "m.pt", config=_tiny_config(), log=None)
    for minutes in (0.0, -1.0):
        with pytest.raises(InputError, match="--max-minutes"):
            train_model(vol, ijk, tmp_path / "m.pt", config=_tiny_config(max_minutes=minutes),
                        log=None)
    assert not (tmp_path / "m.pt").exists()


def test_cli_train_rejects_non_positive_budget(capsys, tmp_path):
    from SurgicalReg2D3DLib.cli import main

    rc = main(["us", "train", "--volume", "x.mha", "--max-minutes", "0",
               "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--max-minutes" in err[0]


def test_cancel_keeps_the_model_and_resume_continues(sweep, tmp_path):
    from USSliceRegLib.learned.model_io import load_model

    out = tmp_path / "c.pt"
    token = CancelToken()
    token.cancel()
    p = _train(sweep, str(out), max_steps=5, val_samples=0)
    assert p["training"]["stopped"] == "budget"  # no cancel: max_steps
    from USSliceRegLib.learned.train import train_model

    vol, ijk, poses, frames, fan = sweep
    p2 = train_model(vol, ijk, str(out), fan=fan, poses=poses, frames=frames,
                     frame_shape=(H, W), config=_tiny_config(max_steps=3, val_samples=0),
                     resume=str(out) + ".ckpt", log=None)
    assert p2["training"]["steps"] == 8
    p3 = train_model(vol, ijk, str(out), fan=fan, poses=poses, frames=frames,
                     frame_shape=(H, W), config=_tiny_config(max_steps=3, val_samples=0),
                     resume=str(out) + ".ckpt", cancel=token, log=None)
    assert p3["training"]["stopped"] == "cancelled" and p3["training"]["steps"] == 8
    assert load_model(out)["training"]["stopped"] == "cancelled"
    other, ijk2 = _volume(seed=1)
    with pytest.raises(InputError, match="another volume"):
        train_model(other, ijk2, str(tmp_path / "o.pt"), config=_tiny_config(),
                    resume=str(out) + ".ckpt", log=None)


def test_deep_methods_register_and_report_quality(sweep, tiny_model):
    from USSliceRegLib.logic import SequenceRegistration
    from USSliceRegLib.methods import METHODS, make_method
    from USSliceRegLib.register import RegistrationConfig, Level, pose_errors

    vol, ijk, poses, frames, fan = sweep
    assert "deep" in METHODS and "deep+lncc" in METHODS
    cfg = RegistrationConfig(levels=(Level(4, 0, 15, 1.0), Level(2, 5, 15, 0.0)))
    centre = np.array([W / 2 - 0.5, H / 2 - 0.5, 0, 1.0])
    truth = _pose(1.25, 1.0)
    frame = _frame(vol, ijk, truth).astype(np.float32)
    offset = np.eye(4)
    offset[:3, 3] = [2.0, -2.0, 1.5]
    start = offset @ truth
    for name in ("deep", "deep+lncc"):
        fn = make_method(name, vol, ijk, (H, W), fan, config=cfg, model=tiny_model)
        res = fn(frame[None], start[None])[0]
        assert res.quality.verdict in ("ok", "doubtful", "failed")
        assert np.allclose(res.image_to_reference, res.correction @ start)
        js = SequenceRegistration(name, False, [0], [res]).to_json()
        assert js["frames"][0]["quality"]["signals"]["method"] == name
    r, t = pose_errors(res.image_to_reference, truth, centre)
    assert t < 1.0 and r < 1.0  # deep+lncc lands on the truth from a 3.3 mm start
    # temporal (tracking) mode: LNCC tracking first, the network only if the LNCC drops
    res_t = fn(frame[None], start[None], tracking=True)[0]
    assert isinstance(res_t.quality.signals["network_used"], bool)
    assert np.allclose(res_t.start_image_to_reference, start)
    with pytest.raises(InputError, match="model: none given"):
        make_method("deep", vol, ijk, (H, W), fan, config=cfg)


def _ddp_worker(rank, world, init_file, out_dir, sweep):
    import torch.distributed as dist

    from USSliceRegLib.learned.train import train_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        vol, ijk, poses, frames, fan = sweep
        p = train_model(vol, ijk, os.path.join(out_dir, "ddp.pt"), fan=fan, poses=poses,
                        frames=frames, frame_shape=(H, W),
                        config=_tiny_config(max_steps=3, val_samples=0, seed=0), log=None)
        torch.save(p["state_dict"], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_process_gloo_replicas_stay_equal(sweep, tmp_path):
    import torch.multiprocessing as mp

    from USSliceRegLib.learned.network import DeepRS2VNet

    init_file = tmp_path / "dist_init"
    mp.spawn(_ddp_worker, args=(2, str(init_file), str(tmp_path), sweep), nprocs=2,
             join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(0)
    init = DeepRS2VNet(32, 16, 8).state_dict()
    moved = False
    for k in a:
        assert torch.equal(a[k], b[k]), k
        moved |= not torch.equal(a[k], init[k])
    assert moved  # the replicas trained (and stayed equal)


@pytest.mark.filterwarnings("ignore:US frame. size")
def test_cli_register_with_a_model_writes_quality(sweep, tiny_model, sample_data, tmp_path,
                                                  capsys):
    """Real data (the shipped spine sweep and PLUS's volume) with the synthetic tiny model:
    refused for this volume, accepted with --force; OUT.json keeps its format + quality."""
    import json

    from SurgicalReg2D3DLib.cli import main

    us = sample_data / "ultrasound"
    base = ["us", "register", "--volume", str(us / "SpinePhantomFreehandReconstructed.mha"),
            "--sequence", str(us / "SpinePhantomFreehand.igs.mha"), "--calibration",
            str(us / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"),
            "--method", "deep", "--model", tiny_model, "--frames", "7,8", "--quiet",
            "--out", str(tmp_path / "out.json")]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another volume" in err[0]
    with pytest.warns(UserWarning, match="another volume"):
        rc = main(base + ["--force"])
    out = json.loads((tmp_path / "out.json").read_text())
    assert [f["index"] for f in out["frames"]] == [7, 8]
    verdicts = []
    for f in out["frames"]:
        assert np.asarray(f["image_to_reference"]).shape == (4, 4)
        verdicts.append(f["quality"]["verdict"])
        assert verdicts[-1] in ("ok", "doubtful", "failed")
        assert f["quality"]["signals"]["lncc"] == pytest.approx(f["similarity"])
    # a tiny synthetic model on a real volume it was not trained for: the frames it ruins
    # are flagged, and the exit code says so
    assert rc == (1 if "failed" in verdicts else 0)


def test_bundled_model_is_listed_and_fits_the_even_frame_volume():
    """The hub registry lists the bundled model; its file matches the manifest, is < 20 MB,
    records its command/seed/range, and was trained for the volume the benchmark and the
    demo rebuild from the shipped sweep's even frames (real data)."""
    from SurgicalReg2D3DLib.models import list_models, verify
    from USSliceRegLib.bench import _Sweep, default_paths
    from USSliceRegLib.learned.geometry import volume_fingerprint
    from USSliceRegLib.learned.model_io import find_bundled_model, load_model
    from USSliceRegLib.reconstruct import reconstruct_volume

    info = {m.name: m for m in list_models("USSliceReg")}["us_deeprs2v_spine_even_v1"]
    path = verify(info)
    assert info.size_bytes < 20e6
    model = load_model(path)
    assert model["command"] == info.created_by_command and "--frames 0,2,4" in model["command"]
    assert model["seed"] == info.seed == 0
    assert model["range"] == {"max_mm": 20.0, "max_deg": 20.0}
    s, c, _ = default_paths()
    sw = _Sweep(s, c)
    even = sw.usable[0::2]
    rec = reconstruct_volume(sw.seq.images[even], np.stack([sw.truth[i] for i in even]), sw.fan,
                             pixel_step=3, fill_radius=4)
    fp = volume_fingerprint(rec.array, rec.ijk_to_reference)
    assert model["volume_fingerprint"] == fp == info.metrics["volume_fingerprint"]
    assert find_bundled_model(fp) == path


def test_compiled_volume_sampling_equals_grid_sample():
    """The network's volume input (``VolumeSampler.sample``) taken by the compiled kernel at
    inference gives grid_sample's values (trilinear, zeros outside) at points inside, on
    the border and outside the volume, for several poses; with gradients wanted it stays on
    grid_sample (differentiable)."""
    from USSliceRegLib import kernels
    from USSliceRegLib.learned.geometry import VolumeSampler

    if not kernels.AVAILABLE:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(3)
    vol = rng.random((23, 17, 11)).astype(np.float32)
    vol[vol < 0.3] = 0.0
    ijk_to_ref = np.array([[0.0, 0.7, 0.1, -4.0], [0.9, 0.0, 0.0, 2.0],
                           [0.0, -0.1, 1.2, -6.0], [0, 0, 0, 1.0]])
    s = VolumeSampler(vol, ijk_to_ref)
    lo, hi = np.array([-7.0, -1.0, -11.0]), np.array([13.0, 14.0, 24.0])  # box +- ~3 mm
    pts = torch.as_tensor(np.c_[rng.uniform(lo, hi, (3000, 3)), np.ones(3000)],
                          dtype=torch.float32).reshape(10, 300, 4)
    F = torch.eye(4).repeat(3, 1, 1)
    F[1, :3, 3] = torch.tensor([1.5, -2.0, 3.0])
    F[2, :3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        assert s._compiled(F, pts)
        fast = s.sample(F, pts)
    # reference: grid_sample itself, on the normalised grid coordinates
    G = s.reference_to_grid @ F
    g = torch.einsum("bij,nj->bni", G, pts.reshape(-1, 4))
    ref = torch.nn.functional.grid_sample(s.data.contiguous(), g.reshape(1, 3, -1, 1, 3),
                                          mode="bilinear", padding_mode="zeros",
                                          align_corners=True)[0, :, :, :, 0]
    inside = ((g.abs() <= 1.0).all(-1)).float().mean()
    assert 0.2 < float(inside) < 0.9  # the points cover inside and outside
    for k in range(2):
        assert fast[k].shape == (3, 10, 300)
        torch.testing.assert_close(fast[k].reshape(3, -1), ref[k], atol=5e-5, rtol=1e-5)
    Fg = F.clone().requires_grad_(True)
    assert not s._compiled(Fg, pts)
    vals, _ = s.sample(Fg, pts)
    vals.sum().backward()
    assert Fg.grad is not None and torch.isfinite(Fg.grad).all()
