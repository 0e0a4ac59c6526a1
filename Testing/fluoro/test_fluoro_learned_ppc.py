"""Learned PPC update (``FluoroRegLib/learned/ppc_*``): the differentiable PPC solve against
the classic ``ppc.register_ppc`` step, the plane geometry, gradients, a tiny training run,
registration with a ``ppc`` model, the CLI, and bad inputs.

All images are SYNTHETIC: DRRs of a small synthetic phantom (an ellipsoid of water with
three bone spheres placed asymmetrically), so each training run takes seconds.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from FluoroRegLib.drr import DRRVolume, render_drr
from FluoroRegLib.geometry import look_at_pose, make_camera
from FluoroRegLib.learned.model_file import ModelFileError, ModelMismatchError, save_model
from FluoroRegLib.learned.ppc_net import (LearnedPPC, apply_update, camera_tensor,
                                          edge_set, ppc_rows, ppc_solve)
from FluoroRegLib.learned.ppc_register import (LearnedPPCUpdater, check_ppc_model,
                                               classic_one_update, register_learned_ppc)
from FluoroRegLib.learned.register import register_with_model
from FluoroRegLib.learned.train import TrainConfig
from FluoroRegLib.refine import XRayView
from FluoroRegLib.simulate import mtre_np, perturb_pose
from SurgicalReg2D3DLib.cli import main as surgreg_main
from SurgicalReg2D3DLib.errors import FileReadError, InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fluoro_learned import CAMERA, nominal_of, phantom  # noqa: E402  (the shared phantom)

torch.set_num_threads(1)


def tiny_config(**kw):
    base = dict(kind="ppc", rotation_deg=(8, 8, 8), translation_mm=(12, 12, 12), max_minutes=5,
                max_steps=60, batch_size=6, image_size=32, width=4, lr=3e-3, n_val=24,
                n_samples=32, checkpoint_every_s=1e9, seed=0, randomisation=0.0,
                extra={"points": 64, "edge_max_points": 600})
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny learned PPC model of the phantom with the dense flow network (50 steps): it
    starts as a no-op (zero flow), so what training adds is plain to see."""
    from FluoroRegLib.learned.ppc_train import train_ppc

    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    out = tmp_path_factory.mktemp("ppc") / "dense.pt"
    res = train_ppc(hu, m, CAMERA, nominal, tiny_config(
        max_steps=50, extra={"points": 64, "edge_max_points": 600, "flow": "dense",
                             "epe_weight": 1.0}), out)
    return hu, m, nominal, out, res


@pytest.fixture(scope="module")
def profile_model(tmp_path_factory):
    """A learned PPC model with the default profile flow network (2 steps: it starts as a
    soft classic matcher), for the registration and bad-input tests."""
    from FluoroRegLib.learned.ppc_train import train_ppc

    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    out = tmp_path_factory.mktemp("ppc") / "profile.pt"
    res = train_ppc(hu, m, CAMERA, nominal, tiny_config(
        max_steps=2, n_val=8, extra={"points": 64, "edge_max_points": 600, "search_px": 8}), out)
    return hu, m, nominal, out, res


# -- the differentiable solve is the classic solve ------------------------------------------
def test_solve_matches_classic_step_for_same_correspondences_and_weights():
    from FluoroRegLib.ppc import _match_view, edge_points_3d

    hu, m = phantom()
    nominal, centre = nominal_of(hu, m)
    cam = make_camera(1000.0, (3.0, 3.0), (64, 64))
    volume = DRRVolume.from_hu(hu, m)
    truth = perturb_pose(nominal, centre, (2, -1, 3), (3, -2, 4))
    start = perturb_pose(truth, centre, (-2, 2, 1), (-4, 3, -2))
    xray = render_drr(volume, cam, truth)[0]
    # the classic: one iteration at full resolution, no trust region
    classic = classic_one_update(volume, [XRayView(xray, cam)], start, level=1.0,
                                 max_step_mm=1e9)
    # the same correspondences by hand (classic matching), solved by the torch layer
    edges = edge_points_3d(volume.mu.numpy(), volume.ijk_to_ras, max_points=4000)
    pc = (np.c_[edges.points, np.ones(len(edges.points))] @ start.T)[:, :3]
    nc = edges.normals @ start[:3, :3].T
    drr = render_drr(volume, cam, start)[0].numpy()
    mm, P, w, _ = _match_view(pc, nc, cam, xray.numpy(), drr, 6.0, 0.25, 1.0)
    c0 = torch.as_tensor((start @ np.r_[volume.center_ras(), 1.0])[:3])[None]
    x = ppc_solve(torch.as_tensor(P)[None], torch.as_tensor(mm)[None],
                  torch.zeros(1, len(P), dtype=torch.float64), torch.as_tensor(w)[None], c0,
                  damping=0.05, huber_iterations=3)
    mine = apply_update(torch.as_tensor(start)[None], x, c0)[0].numpy()
    np.testing.assert_allclose(mine, classic, atol=1e-9)
    # and the step is a real one (not a no-op that would match trivially)
    assert np.abs(classic - start).max() > 0.1


def test_planes_contain_the_true_point_in_every_view():
    """``ppc_rows``: with q = the projection of the moved point, the plane (moved into
    camera 0 through the C-arm motion) contains it: m0 . X0 + d = 0."""
    cam = camera_tensor(CAMERA)
    g = torch.Generator().manual_seed(1)
    X0 = torch.randn(40, 3, generator=g, dtype=torch.float64) * 30 + torch.tensor([0, 0, 600.0],
                                                                                 dtype=torch.float64)
    rel = torch.as_tensor(perturb_pose(np.eye(4), (0, 0, 600), (0, 90, 0), (0, 0, 0)))
    for c0v in (torch.eye(4, dtype=torch.float64), rel):
        Xk = X0 @ c0v[:3, :3].T + c0v[:3, 3]
        uv = torch.stack([Xk[:, 0] / Xk[:, 2] * cam[0] / cam[1] + cam[3],
                          Xk[:, 1] / Xk[:, 2] * cam[0] / cam[2] + cam[4]], -1)
        ang = torch.rand(40, generator=g, dtype=torch.float64) * 6.3
        n2 = torch.stack([ang.cos(), ang.sin()], -1)
        m0, P0, d = ppc_rows(Xk, uv, n2, cam, c0v)
        assert torch.allclose((m0 * X0).sum(-1) + d, torch.zeros(40, dtype=torch.float64),
                              atol=1e-9)
        assert torch.allclose(P0, X0, atol=1e-9)
        # a point moved along the contour normal is off the plane
        off = ppc_rows(Xk, uv + 2.0 * n2, n2, cam, c0v)
        assert ((off[0] * X0).sum(-1) + off[2]).abs().min() > 1e-3


def test_gradients_flow_through_the_solve():
    g = torch.Generator().manual_seed(2)
    M = 10
    P = (torch.randn(1, M, 3, generator=g, dtype=torch.float64) * 40
         + torch.tensor([0, 0, 600.0], dtype=torch.float64))
    c0 = torch.tensor([[0, 0, 600.0]], dtype=torch.float64)
    n2 = torch.nn.functional.normalize(torch.randn(1, M, 2, generator=g, dtype=torch.float64), dim=-1)
    cam = camera_tensor(CAMERA)
    uv = torch.stack([P[..., 0] / P[..., 2] * cam[0] / cam[1] + cam[3],
                      P[..., 1] / P[..., 2] * cam[0] / cam[2] + cam[4]], -1)
    q = (uv + torch.randn(1, M, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    w = (torch.rand(1, M, generator=g, dtype=torch.float64) + 0.2).requires_grad_(True)

    def fn(q_, w_):
        m0, P0, d = ppc_rows(P, q_, n2, cam)
        return ppc_solve(P0, m0, d, w_, c0, damping=0.05)

    assert torch.autograd.gradcheck(fn, (q, w), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("flow", ["profile", "dense"])
def test_loss_gradient_reaches_flow_and_attention_weights(flow):
    from FluoroRegLib.learned.ppc_train import PPCSampler, batch_loss
    from FluoroRegLib.learned.sampling import PoseRange

    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    volume = DRRVolume.from_hu(hu, m)
    edges = edge_set(volume, max_points=600)
    sampler = PPCSampler(volume, CAMERA, nominal, PoseRange((8, 8, 8), (12, 12, 12)), 32, edges,
                         64, 0.25, 45.0)
    batch = sampler.sample(torch.Generator().manual_seed(0), 4)
    assert batch["valid"].sum(1).min() >= 8  # contour points found in every sample
    assert float(batch["mtre_before"].max()) <= 45.0 + 1e-6
    net = LearnedPPC(width=4, features=8, flow=flow, search_px=8)
    from FluoroRegLib.learned.sampling import standardise

    loss, _, _ = batch_loss(net, standardise(batch["fixed_raw"]), batch, sampler.cam,
                            sampler.targets, 0.05, 0.1, 8)
    loss.backward()
    head = net.flow.head if flow == "dense" else net.flow.logit
    for name, mod in (("flow head", head), ("attention", net.attention.out[-1])):
        grads = [p.grad for p in mod.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads), name
        assert max(float(gr.abs().max()) for gr in grads) > 0, name


def test_true_flow_solves_to_the_truth():
    """With the true flow and unit weights, one undamped update lands (almost) on the truth:
    the geometry of the training targets and the solve agree."""
    from FluoroRegLib.learned.ppc_train import PPCSampler, mtre_batch
    from FluoroRegLib.learned.sampling import PoseRange

    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    volume = DRRVolume.from_hu(hu, m)
    edges = edge_set(volume, max_points=600)
    sampler = PPCSampler(volume, CAMERA, nominal, PoseRange((5, 5, 5), (5, 5, 5)), 32, edges,
                         64, 0.25, 10.0)
    b = sampler.sample(torch.Generator().manual_seed(3), 4)
    m0, P0, d = ppc_rows(b["P"], b["uv"] + b["flow_true"], b["n2"], sampler.cam)
    x = ppc_solve(P0, m0, d, b["valid"].double(), b["c0"], damping=0.0)
    after = mtre_batch(apply_update(b["start"], x, b["c0"]), b["truth"], sampler.targets)
    assert float((after / b["mtre_before"]).max()) < 0.15


# -- training ---------------------------------------------------------------------------------
def test_tiny_training_lowers_loss_and_one_update_error(trained):
    _, _, _, _, res = trained
    tr = res["training"]
    assert res["kind"] == "ppc" and tr["steps"] == 50 and res["arch"]["flow"] == "dense"
    before, after = tr["val_before"], tr["val_after"]
    assert after["loss"] < 0.95 * before["loss"]  # the training loss, on held-out samples
    # held-out samples: untrained, the update is a no-op (zero flow); trained, it reduces
    assert abs(before["ratio_median"] - 1.0) < 0.02
    assert after["mtre_after_median"] < before["mtre_after_median"]
    assert after["ratio_median"] < 0.97
    assert after["epe_px_mean"] < before["epe_px_mean"]


def test_register_with_ppc_model_and_classic_refinement(profile_model):
    hu, m, nominal, out, _ = profile_model
    _, centre = nominal_of(hu, m)
    volume = DRRVolume.from_hu(hu, m)
    truth = perturb_pose(nominal, centre, (3, -2, 2), (5, -4, 3))
    start = perturb_pose(truth, centre, (-2, 2, -1), (6, 5, -4))
    img = render_drr(volume, CAMERA, truth)[0].numpy()
    img_in = img.copy()
    lm = np.array([[c0, c1, c2] for c0 in (-30, 30) for c1 in (-30, 30) for c2 in (-30, 30)],
                  float) + centre
    res = register_with_model(hu, m, [img], [CAMERA], None, method="learned-ppc",
                              init_poses=[start], ppc_model=str(out), ppc_updates=2)
    assert res.method == "learned-ppc" and len(res.history) == 2
    assert mtre_np(res.ct_to_camera, truth, lm) < mtre_np(start, truth, lm)
    assert res.quality is not None and "verdict" in res.quality.to_dict()
    res2 = register_with_model(hu, m, [img], [CAMERA], None, method="ppc", init_poses=[start],
                               ppc_model=str(out), ppc_updates=1, levels=(1,), iterations=3)
    assert res2.method == "learned-ppc+ppc"
    assert res2.history[0]["stage"] == "learned-ppc" and res2.history[-1]["stage"] == "ppc"
    np.testing.assert_array_equal(img, img_in)  # inputs untouched


def test_two_views_stack_their_planes(profile_model):
    hu, m, nominal, out, _ = profile_model
    _, centre = nominal_of(hu, m)
    volume = DRRVolume.from_hu(hu, m)
    lat = look_at_pose(centre, "LAT", 600.0) @ np.linalg.inv(look_at_pose(centre, "AP", 600.0))
    truth = perturb_pose(nominal, centre, (2, 3, -2), (-4, 3, 5))
    start = perturb_pose(truth, centre, (2, -2, 1), (-5, 4, 3))
    imgs = [render_drr(volume, CAMERA, p)[0].numpy() for p in (truth, lat @ truth)]
    res = register_learned_ppc(hu, m, imgs, [CAMERA, CAMERA], [start, lat @ start],
                               load(out), n_updates=1, refine=None)
    assert len(res.views_ct_to_camera) == 2
    np.testing.assert_allclose(res.views_ct_to_camera[1], lat @ res.ct_to_camera, atol=1e-9)
    assert res.history[0]["correspondences"] > 0


def load(path):
    from FluoroRegLib.learned.model_file import load_model_file

    return load_model_file(path)


# -- bad input ----------------------------------------------------------------------------------
def test_bad_models_and_options_are_refused(profile_model, tmp_path):
    hu, m, nominal, out, _ = profile_model
    data = load(out)
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02 not a model")
    with pytest.raises(FileReadError, match="model file"):
        load(tmp_path / "corrupt.pt")
    wrong = dict(data, kind="regressor")
    with pytest.raises(InputError, match="learned PPC"):
        LearnedPPCUpdater(wrong, hu, m)
    with pytest.raises(InputError, match="learned PPC"):
        check_ppc_model(wrong, hu, m, CAMERA)
    other, _ = phantom(shift=(1.0, 0.0, 0.0))
    with pytest.raises(ModelMismatchError, match="another CT"):
        check_ppc_model(data, other, m, CAMERA)
    assert check_ppc_model(data, other, m, CAMERA, force=True) is data  # --force: used anyway
    with pytest.raises(ModelMismatchError, match="detector"):
        check_ppc_model(data, hu, m, make_camera(1000.0, (5.0, 5.0), (32, 32)))
    broken = dict(data, state_dict={k: v.reshape(-1)[:1] for k, v in data["state_dict"].items()})
    save_model(broken, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="do not fit"):
        LearnedPPCUpdater(load(tmp_path / "broken.pt"), hu, m)
    img = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="needs a learned PPC model"):
        register_with_model(hu, m, [img], [CAMERA], None, method="learned-ppc",
                            init_poses=[nominal])
    with pytest.raises(InputError, match="learned PPC updates"):
        register_with_model(hu, m, [img], [CAMERA], None, init_poses=[nominal],
                            ppc_model=data, ppc_updates=0)
    with pytest.raises(ModelMismatchError):
        register_with_model(other, m, [img], [CAMERA], None, init_poses=[nominal],
                            ppc_model=data)


# -- command line -------------------------------------------------------------------------------
def _write_inputs(tmp_path, hu, m, nominal):
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing([5.0, 5.0, 5.0])
    img.SetDirection([-1, 0, 0, 0, -1, 0, 0, 0, 1])  # RAS diag(5) -> LPS diag(-5, -5, 5)
    img.SetOrigin([-m[0, 3], -m[1, 3], m[2, 3]])
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    (tmp_path / "g.json").write_text(json.dumps(CAMERA.to_dict()))
    (tmp_path / "nominal.json").write_text(json.dumps({"ct_to_camera": nominal.tolist()}))


def test_cli_train_ppc_all_and_register(tmp_path, capsys):
    from FluoroRegLib.xray_io import save_xray

    hu, m = phantom()
    nominal, centre = nominal_of(hu, m)
    _write_inputs(tmp_path, hu, m, nominal)
    base = ["fluoro", "train", "--ct", str(tmp_path / "ct.nii.gz"), "--geometry",
            str(tmp_path / "g.json"), "--center", str(tmp_path / "nominal.json"),
            "--rotation-range-deg", "8", "8", "8", "--translation-range-mm", "10", "10", "10",
            "--max-steps", "4", "--batch-size", "4", "--image-size", "32", "--width", "4",
            "--n-samples", "32", "--seed", "5"]
    assert surgreg_main(base + ["--kind", "all", "--out", str(tmp_path / "m.pt")]) == 0
    reg_data, ppc_data = load(tmp_path / "m.pt"), load(tmp_path / "m.ppc.pt")
    assert (reg_data["kind"], ppc_data["kind"]) == ("regressor", "ppc")
    assert "--kind all" in ppc_data["training"]["command"] and ppc_data["training"]["seed"] == 5
    assert ppc_data["training"]["steps"] == 2  # half of --max-steps each
    # --kind ppc with --resume continues the checkpoint
    assert surgreg_main(base + ["--kind", "ppc", "--resume", str(tmp_path / "m.ppc.pt.ckpt.pt"),
                                "--out", str(tmp_path / "p.pt")]) == 0
    assert load(tmp_path / "p.pt")["training"]["steps"] == 4
    truth = perturb_pose(nominal, centre, (3, -2, 1), (4, 2, -3))
    img = render_drr(DRRVolume.from_hu(hu, m), CAMERA, truth)[0].numpy()
    save_xray(img, CAMERA, tmp_path / "x.nrrd", tmp_path / "gx.json")
    reg = ["fluoro", "register", "--ct", str(tmp_path / "ct.nii.gz"), "--xray",
           str(tmp_path / "x.nrrd"), "--geometry", str(tmp_path / "gx.json"),
           "--model", str(tmp_path / "m.pt"), "--model", str(tmp_path / "p.pt"),
           "--method", "learned-ppc", "--ppc-updates", "2", "--out", str(tmp_path / "o.json")]
    assert surgreg_main(reg) in (0, 1)  # 1 only for a 'failed' quality verdict
    out = json.loads((tmp_path / "o.json").read_text())
    assert np.asarray(out["ct_to_camera"]).shape == (4, 4)
    assert out["method"] == "regressor+learned-ppc" and "quality" in out
    assert "regressor_ct_to_camera" in out and "learned_ppc_ct_to_camera" in out
    np.testing.assert_allclose(out["learned_ppc_ct_to_camera"], out["ct_to_camera"])  # no polish
    # bad input: one line, exit code 2
    capsys.readouterr()
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    assert surgreg_main(reg[:-2] + ["--model", str(tmp_path / "bad.pt"), "--out",
                                    str(tmp_path / "o2.json")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert surgreg_main(reg[:-6] + ["--model", str(tmp_path / "p.pt"), "--out",
                                    str(tmp_path / "o3.json")]) == 2
    assert "two learned PPC models" in capsys.readouterr().err
    assert surgreg_main(base + ["--kind", "ppc", "--max-minutes", "0", "--out",
                                str(tmp_path / "z.pt")]) == 2
    assert "max-minutes" in capsys.readouterr().err
    assert surgreg_main(base + ["--kind", "all", "--resume", str(tmp_path / "p.pt.ckpt.pt"),
                                "--out", str(tmp_path / "z.pt")]) == 2
    assert "resume" in capsys.readouterr().err


def test_cancel_keeps_checkpoint(tmp_path):
    from FluoroRegLib.learned.ppc_train import train_ppc
    from SurgicalReg2D3DLib.errors import CancelledError
    from SurgicalReg2D3DLib.progress import CancelToken

    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError, match="checkpoint kept"):
        train_ppc(hu, m, CAMERA, nominal, tiny_config(n_val=4), tmp_path / "c.pt", cancel=token)
    ckpt = load(tmp_path / "c.pt.ckpt.pt")
    assert ckpt["kind"] == "ppc" and "optimizer" in ckpt and ckpt["step"] == 0
    assert not (tmp_path / "c.pt").exists()
    # several processes (torchrun): Testing/fluoro/test_fluoro_learned_ddp.py
