"""Learned FluoroReg (pose regressor from the nominal view): training-pose sampling, tiny
training runs, model files and their refusal, bad inputs, the CLI, DDP replicas.

All images are SYNTHETIC: DRRs of a small synthetic phantom (an ellipsoid of water with
three bone spheres placed asymmetrically), so each training run takes seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from FluoroRegLib.geometry import look_at_pose, make_camera
from FluoroRegLib.learned import sampling
from FluoroRegLib.learned.model_file import (ModelFileError, ModelMismatchError,
                                             load_model_file, save_model)
from FluoroRegLib.learned.register import register_with_model
from FluoroRegLib.learned.train import TrainConfig, pick_device, train_model
from FluoroRegLib.simulate import perturb_pose
from SurgicalReg2D3DLib.cli import main as surgreg_main
from SurgicalReg2D3DLib.errors import CancelledError, InputError
from SurgicalReg2D3DLib.progress import CancelToken

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def phantom(shift=(0.0, 0.0, 0.0)):
    """(hu (K, J, I), ijk_to_ras): 24 x 22 x 20 voxels of 5 mm, SYNTHETIC."""
    k, j, i = 24, 22, 20
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    hu = np.full((k, j, i), -1000.0, np.float32)
    body = ((ii - 9.5) / 8.5) ** 2 + ((jj - 10.5) / 8.0) ** 2 + ((kk - 11.5) / 11.0) ** 2 < 1
    hu[body] = 0.0
    for (a, b, c, r) in ((6, 7, 5, 3.0), (14, 12, 16, 2.5), (8, 15, 11, 2.0)):
        hu[(ii - a - shift[0]) ** 2 + (jj - b - shift[1]) ** 2 + (kk - c - shift[2]) ** 2 < r * r] = 1000.0
    m = np.diag([5.0, 5.0, 5.0, 1.0])
    m[:3, 3] = [-50.0, -55.0, -60.0]
    return hu, m


CAMERA = make_camera(1000.0, (6.0, 6.0), (32, 32))


def nominal_of(hu, m):
    k, j, i = hu.shape
    c = (m @ [(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0])[:3]
    return look_at_pose(c, "AP", 600.0), c


def small_config(**kw):
    base = dict(rotation_deg=(10, 10, 10), translation_mm=(10, 10, 10), max_minutes=5,
                max_steps=150, batch_size=16, image_size=32, width=8, lr=2e-3, n_val=32,
                n_samples=32, checkpoint_every_s=1e9, seed=0, randomisation=0.0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model of the phantom (150 steps)."""
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    out = tmp_path_factory.mktemp("learned") / "model.pt"
    res = train_model(hu, m, CAMERA, nominal, small_config(), out)
    return hu, m, nominal, out, res


# -- training poses: exactly the documented definition -----------------------------------
def test_training_poses_follow_the_definition():
    hu, m = phantom()
    nominal, centre = nominal_of(hu, m)
    rng = sampling.PoseRange((20.0, 5.0, 10.0), (30.0, 10.0, 40.0))
    gen = torch.Generator().manual_seed(3)
    r, t = sampling.sample_deltas(gen, 2000, rng)
    deg = np.rad2deg(r.numpy())
    # components uniform in +-range: bounds and the spread of a uniform distribution
    for axis, half in enumerate(rng.rotation_deg):
        assert np.abs(deg[:, axis]).max() <= half + 1e-9
        assert np.abs(deg[:, axis]).max() > 0.95 * half
        assert abs(deg[:, axis].std() - half / np.sqrt(3)) < 0.06 * half
    for axis, half in enumerate(rng.translation_mm):
        assert np.abs(t[:, axis].numpy()).max() <= half + 1e-9
    from SurgicalReg2D3DLib.poses import so3_exp

    c = torch.as_tensor(sampling.nominal_center_cam(nominal, centre))
    poses = sampling.delta_to_pose(so3_exp(r[:20]), t[:20], torch.as_tensor(nominal), c).numpy()
    for n in range(20):
        # independent reference: simulate.perturb_pose (scipy rotation about the CT centre)
        ref = perturb_pose(nominal, centre, deg[n], t[n].numpy())
        np.testing.assert_allclose(poses[n], ref, atol=1e-9)
        # the CT centre lands at c + t
        np.testing.assert_allclose((poses[n] @ np.r_[centre, 1])[:3], c.numpy() + t[n].numpy(), atol=1e-9)
    R, tt = sampling.pose_to_delta(torch.as_tensor(poses), torch.as_tensor(nominal),
                                   torch.as_tensor(centre), c)
    np.testing.assert_allclose(tt.numpy(), t[:20].numpy(), atol=1e-9)
    np.testing.assert_allclose(R.numpy(), so3_exp(r[:20]).numpy(), atol=1e-9)


def test_randomisation_changes_images_but_not_inputs():
    gen = torch.Generator().manual_seed(0)
    drr = torch.rand(8, 32, 32) * 3
    before = drr.clone()
    out = sampling.randomise(drr, gen, 1.0)
    assert torch.equal(drr, before)
    assert out.shape == drr.shape and torch.isfinite(out).all()
    np.testing.assert_allclose(out.flatten(1).mean(1).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(out.flatten(1).std(1).numpy(), 1, atol=1e-3)
    plain = sampling.randomise(drr, gen, 0.0)
    assert not torch.allclose(out, plain, atol=1e-2)


# -- training ------------------------------------------------------------------------------
def test_tiny_training_lowers_loss_and_held_out_pose_error(trained):
    _, _, _, out, res = trained
    tr = res["training"]
    before, after = tr["val_before"], tr["val_after"]
    # held-out poses (a generator training never uses, randomised images): error down
    # by a fifth at least (this run: about 16 -> 10 mm)
    assert after["corner_mm_mean"] < 0.8 * before["corner_mm_mean"], (before, after)
    assert after["loss"] < 0.8 * before["loss"]
    losses = [h["loss"] for h in tr["history"]]
    assert losses[-1] < 0.75 * losses[0]
    data = load_model_file(out)
    assert data["kind"] == "regressor" and data["training"]["seed"] == 0
    assert data["range"] == {"rotation_deg": [10.0] * 3, "translation_mm": [10.0] * 3}


def test_regressor_start_on_held_out_image_is_closer_than_nominal(trained):
    hu, m, nominal, out, _ = trained
    from FluoroRegLib.drr import DRRVolume, render_drr

    _, centre = nominal_of(hu, m)
    vol = DRRVolume.from_hu(hu, m)
    errs_nom, errs_reg = [], []
    rng = np.random.default_rng(123)
    corners = vol.corners_ras()
    for _ in range(6):
        truth = perturb_pose(nominal, centre, rng.uniform(-8, 8, 3), rng.uniform(-8, 8, 3))
        with torch.no_grad():
            img = render_drr(vol, CAMERA, truth, method="siddon")[0].numpy()
        res = register_with_model(hu, m, [img], [CAMERA], str(out), method="regressor")
        p = np.c_[corners, np.ones(8)]
        errs_reg.append(np.linalg.norm((p @ res.ct_to_camera.T - p @ truth.T)[:, :3], axis=1).mean())
        errs_nom.append(np.linalg.norm((p @ nominal.T - p @ truth.T)[:, :3], axis=1).mean())
    assert np.mean(errs_reg) < 0.8 * np.mean(errs_nom), (errs_reg, errs_nom)


def test_cancel_keeps_checkpoint_and_resume_continues(tmp_path):
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    token = CancelToken()
    calls = []

    def progress(frac, msg):
        calls.append(frac)
        if len(calls) == 5:
            token.cancel()

    out = tmp_path / "m.pt"
    with pytest.raises(CancelledError, match="checkpoint kept"):
        train_model(hu, m, CAMERA, nominal, small_config(max_steps=50), out,
                    progress=progress, cancel=token)
    ckpt = out.with_name("m.pt.ckpt.pt")
    data = load_model_file(ckpt)
    assert data["step"] == 5 and not out.exists()
    res = train_model(hu, m, CAMERA, nominal, small_config(max_steps=8), out, resume=ckpt)
    assert res["training"]["steps"] == 8
    with pytest.raises(InputError, match="range"):
        train_model(hu, m, CAMERA, nominal, small_config(max_steps=8, rotation_deg=(5, 5, 5)),
                    out, resume=ckpt)


# -- model files ---------------------------------------------------------------------------
def test_model_refused_for_other_ct_or_detector(trained):
    hu, m, nominal, out, _ = trained
    from FluoroRegLib.drr import DRRVolume, render_drr

    img = render_drr(DRRVolume.from_hu(hu, m), CAMERA, nominal)[0].numpy()
    other_hu, _ = phantom(shift=(1.0, 0.0, 0.0))
    with pytest.raises(ModelMismatchError, match="another CT"):
        register_with_model(other_hu, m, [img], [CAMERA], str(out), method="regressor")
    m2 = m.copy()
    m2[:3, 3] += 20.0
    with pytest.raises(ModelMismatchError, match="ijk_to_ras"):
        register_with_model(hu, m2, [img], [CAMERA], str(out), method="regressor")
    cam2 = make_camera(1100.0, (6.0, 6.0), (32, 32))
    with pytest.raises(ModelMismatchError, match="detector"):
        register_with_model(hu, m, [img], [cam2], str(out), method="regressor")
    res = register_with_model(other_hu, m, [img], [CAMERA], str(out), method="regressor",
                              force=True)
    assert res.ct_to_camera.shape == (4, 4)


def test_corrupt_and_unknown_version_files_refused(trained, tmp_path):
    _, _, _, out, _ = trained
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model_file(bad)
    data = load_model_file(out)
    data["format_version"] = 99
    save_model(data, tmp_path / "v99.pt")
    with pytest.raises(ModelFileError, match="unknown format version 99"):
        load_model_file(tmp_path / "v99.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a FluoroReg learned model"):
        load_model_file(tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model_file(tmp_path / "missing.pt")


# -- bad inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("rot,tra,match", [
    ((0, 0, 0), (0, 0, 0), "empty"),
    ((180, 10, 10), (10, 10, 10), "rotation range"),
    ((10, 10, 10), (400, 10, 10), "out of the image"),
    ((10, 10, 10), (10, 10, 700), "depth"),
    ((-5, 10, 10), (10, 10, 10), "rotation range"),
])
def test_bad_training_ranges(tmp_path, rot, tra, match):
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    with pytest.raises(InputError, match=match):
        train_model(hu, m, CAMERA, nominal, small_config(rotation_deg=rot, translation_mm=tra),
                    tmp_path / "x.pt")


def test_bad_ct_and_budget(tmp_path):
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    with pytest.raises(InputError, match="CT volume: expected a 3D volume"):
        train_model(hu[0], m, CAMERA, nominal, small_config(), tmp_path / "x.pt")
    with pytest.raises(InputError, match="CT volume: all voxels have the same value"):
        train_model(np.zeros_like(hu), m, CAMERA, nominal, small_config(), tmp_path / "x.pt")
    for bad in (0, -1):
        with pytest.raises(InputError, match="max-minutes"):
            train_model(hu, m, CAMERA, nominal, small_config(max_minutes=bad), tmp_path / "x.pt")
    with pytest.raises(InputError, match="kind: expected one of"):
        train_model(hu, m, CAMERA, nominal, small_config(kind="pose"), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_missing_gpu_falls_back_to_cpu_with_warning():
    with pytest.warns(RuntimeWarning, match="CPU instead"):
        dev = pick_device("cuda")
    assert dev.type == "cpu"


# -- command line --------------------------------------------------------------------------
def _write_inputs(tmp_path, hu, m, nominal):
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing([5.0, 5.0, 5.0])
    # RAS diag(5) -> LPS diag(-5, -5, 5): direction flips x, y
    img.SetDirection([-1, 0, 0, 0, -1, 0, 0, 0, 1])
    img.SetOrigin([-m[0, 3], -m[1, 3], m[2, 3]])
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    (tmp_path / "g.json").write_text(json.dumps(CAMERA.to_dict()))
    (tmp_path / "nominal.json").write_text(json.dumps({"ct_to_camera": nominal.tolist()}))


def test_cli_train_and_register_from_nominal(tmp_path, capsys):
    hu, m = phantom()
    nominal, centre = nominal_of(hu, m)
    _write_inputs(tmp_path, hu, m, nominal)
    args = ["fluoro", "train", "--ct", str(tmp_path / "ct.nii.gz"), "--geometry",
            str(tmp_path / "g.json"), "--center", str(tmp_path / "nominal.json"),
            "--rotation-range-deg", "10", "10", "10", "--translation-range-mm", "10", "10", "10",
            "--max-steps", "20", "--batch-size", "8", "--image-size", "32", "--width", "8",
            "--n-samples", "32", "--seed", "4", "--out", str(tmp_path / "model.pt")]
    assert surgreg_main(args) == 0
    data = load_model_file(tmp_path / "model.pt")
    assert "fluoro train" in data["training"]["command"] and data["training"]["seed"] == 4
    from FluoroRegLib.drr import DRRVolume, render_drr
    from FluoroRegLib.xray_io import save_xray

    truth = perturb_pose(nominal, centre, (3, -2, 1), (4, 2, -3))
    img = render_drr(DRRVolume.from_hu(hu, m), CAMERA, truth)[0].numpy()
    save_xray(img, CAMERA, tmp_path / "x.nrrd", tmp_path / "gx.json")
    reg = ["fluoro", "register", "--ct", str(tmp_path / "ct.nii.gz"), "--xray",
           str(tmp_path / "x.nrrd"), "--geometry", str(tmp_path / "gx.json"), "--model",
           str(tmp_path / "model.pt"), "--method", "regressor", "--out", str(tmp_path / "o.json")]
    assert surgreg_main(reg) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert np.asarray(out["ct_to_camera"]).shape == (4, 4)
    assert out["method"] == "regressor" and "quality" in out
    # with a refinement the command runs the classic quality step (polish of every result
    # by default with --model) and reports its calibrated estimate
    rc = surgreg_main(reg[:-4] + ["--method", "ncc", "--out", str(tmp_path / "o2.json")])
    out2 = json.loads((tmp_path / "o2.json").read_text())
    assert rc == (1 if out2["quality"]["verdict"] == "failed" else 0)
    assert out2["method"] == "regressor+ncc" and out2["quality"]["estimate"]["mtre_mm"] >= 0
    # the learned benchmark from the nominal view (surgreg fluoro bench --model)
    bench = ["fluoro", "bench", "--model", str(tmp_path / "model.pt"), "--ct",
             str(tmp_path / "ct.nii.gz"), "--n-cases", "2", "--views", "1", "--methods",
             "nominal,regressor", "--out", str(tmp_path / "bench")]
    assert surgreg_main(bench) == 0
    summary = json.loads((tmp_path / "bench" / "learned_summary.json").read_text())
    assert [(r["method"], r["views"], r["n"]) for r in summary["results"]] == \
        [("nominal", 1, 2), ("regressor", 1, 2)]
    assert summary["results"][0]["smsr"] == 0.0  # the nominal view is not the truth
    # a bad input: one line, exit code 2
    capsys.readouterr()
    assert surgreg_main(args[:-2] + ["--max-minutes", "0", "--out", str(tmp_path / "y.pt")]) == 2
    assert "max-minutes" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    assert surgreg_main(reg[:-4] + ["--model", str(tmp_path / "bad.pt"), "--out",
                                    str(tmp_path / "o2.json")]) == 2
    assert "corrupt" in capsys.readouterr().err


# -- DDP -----------------------------------------------------------------------------------
def test_ddp_two_cpu_processes_keep_replicas_equal(tmp_path):
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    _write_inputs(tmp_path, hu, m, nominal)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "SurgicalReg2D3DLib",
           "fluoro", "train", "--ct", str(tmp_path / "ct.nii.gz"), "--geometry",
           str(tmp_path / "g.json"), "--center", str(tmp_path / "nominal.json"),
           "--rotation-range-deg", "10", "10", "10", "--translation-range-mm", "10", "10", "10",
           "--max-steps", "4", "--batch-size", "4", "--image-size", "32", "--width", "8",
           "--n-samples", "24", "--device", "cpu", "--save-replicas",
           "--out", str(tmp_path / "ddp.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = load_model_file(tmp_path / "ddp.pt.rank0.pt")
    r1 = load_model_file(tmp_path / "ddp.pt.rank1.pt")
    assert r0["training"]["world_size"] == 2 and r0["training"]["steps"] == 4
    changed = False
    from FluoroRegLib.learned.regressor import PoseRegressor

    torch.manual_seed(0)
    init = PoseRegressor(32, 8).state_dict()
    # parameters equal by DDP's all-reduce; BatchNorm statistics taken from rank 0 at the end
    for k, v in r0["state_dict"].items():
        torch.testing.assert_close(v, r1["state_dict"][k], rtol=0, atol=0)
        changed |= not torch.equal(v, init[k])
    assert changed  # the replicas trained (moved away from the initial weights)


# -- node-level logic (what the GUI calls) -------------------------------------------------
def test_node_logic_trains_and_registers_without_touching_inputs(ctx, trained, tmp_path):
    from FluoroRegLib.drr import DRRVolume, render_drr
    from FluoroRegLib.learned.nodes_logic import register_nodes_from_model, train_for_nodes
    from SurgicalReg2D3DLib import nodes

    hu, m, nominal, out, _ = trained
    ct_node = nodes.volume_to_node(ctx, hu, m, "CT")
    nominal_node = nodes.matrix_to_transform_node(ctx, nominal, "nominal")
    res = train_for_nodes(ct_node, CAMERA, nominal_node, tmp_path / "n.pt",
                          small_config(max_steps=3))
    assert res["training"]["steps"] == 3 and (tmp_path / "n.pt").is_file()
    _, centre = nominal_of(hu, m)
    truth = perturb_pose(nominal, centre, (4, -3, 2), (5, -4, 3))
    img = render_drr(DRRVolume.from_hu(hu, m), CAMERA, truth, method="siddon")[0].numpy()
    xray_node = nodes.image2d_to_node(ctx, img, "X-ray")
    before = nodes.image2d_from_node(xray_node)[0].copy()
    result = register_nodes_from_model(ctx, ct_node, [xray_node], [CAMERA], str(out),
                                       method="regressor")
    node = ctx.scene.GetNodeByID(result.outputs["output_transform_node"])
    np.testing.assert_allclose(nodes.matrix_from_transform_node(node), result.ct_to_camera, atol=1e-6)
    np.testing.assert_array_equal(nodes.image2d_from_node(xray_node)[0], before)
    np.testing.assert_array_equal(nodes.volume_from_node(ct_node).array, hu)
    with pytest.raises(InputError, match="CT volume: no volume selected"):
        register_nodes_from_model(ctx, None, [xray_node], [CAMERA], str(out))
    # "Register from nominal view" in the module: the same regressor start, handed to
    # the classic node registration as its initial pose.
    from FluoroRegLib.learned.nodes_logic import starts_for_nodes

    starts = starts_for_nodes(ct_node, [xray_node], [CAMERA], str(out))
    assert len(starts) == 1
    np.testing.assert_allclose(starts[0], result.ct_to_camera, atol=1e-9)
    with pytest.raises(InputError, match="X-ray image: no image selected"):
        starts_for_nodes(ct_node, [None], [CAMERA], str(out))
    with pytest.raises(InputError, match="nominal poses: 2 X-ray images need one nominal"):
        starts_for_nodes(ct_node, [xray_node, xray_node], [CAMERA, CAMERA], str(out))
