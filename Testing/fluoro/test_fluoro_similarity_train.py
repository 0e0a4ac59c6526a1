"""Training and use of the spherical deep similarity (``surgreg fluoro train --kind
similarity``) on the small SYNTHETIC phantom of the learned-method tests."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fluoro_learned import CAMERA, nominal_of, phantom, small_config  # noqa: E402

from FluoroRegLib.drr import DRRVolume, render_drr  # noqa: E402
from FluoroRegLib.learned import similarity_train as st  # noqa: E402
from FluoroRegLib.learned import spherical as sph  # noqa: E402
from FluoroRegLib.learned.sampling import PoseRange, TrainingRenderer  # noqa: E402
from FluoroRegLib.learned.train import train_model  # noqa: E402
from FluoroRegLib.simulate import perturb_pose  # noqa: E402
from SurgicalReg2D3DLib.errors import CancelledError, InputError  # noqa: E402

torch.set_num_threads(1)


def test_forward_difference_signal_matches_the_second_order_one():
    """The training signal with ``g_eps`` by forward differences over constant DRRs is the
    one of :func:`spherical.gradient_matching_loss` (autograd through the renderer)."""
    hu, m = phantom()
    nominal, centre = nominal_of(hu, m)
    vol = DRRVolume.from_hu(hu, m)
    ren = TrainingRenderer(vol, CAMERA, nominal, PoseRange((8.0,) * 3, (8.0,) * 3), n_samples=24)
    torch.manual_seed(2)
    net = sph.SphericalFeatureNet(channels=4, width=8)
    drr, _, _, truth = ren.sample(torch.Generator().manual_seed(5), 3)
    moving = torch.stack([torch.as_tensor(perturb_pose(truth[i].numpy(), centre, d, d))
                          for i, d in enumerate(([4, -3, 2], [-3, 3, 4], [2, 4, -4]))])
    c = torch.as_tensor((nominal @ np.r_[centre, 1])[:3])
    s = st.SimilaritySettings(fd_rotation_rad=1e-4, fd_translation_mm=0.02)
    for distance in ("se3", "so4"):
        s.distance = distance
        ref = sph.gradient_matching_loss(net, vol, CAMERA, moving, truth, drr, c, 80.0, distance, 24)
        fd = st.fd_gradient_matching_loss(net, vol, CAMERA, moving, truth, drr, c, 80.0, s, 24)
        assert float(fd.detach()) == pytest.approx(float(ref.detach()), abs=0.03), distance


@pytest.fixture(scope="module")
def sim_model(tmp_path_factory):
    """A tiny similarity training (mechanics only: a few steps, no claim of usefulness)."""
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    out = tmp_path_factory.mktemp("sim") / "sim.pt"
    cfg = small_config(kind="similarity", max_steps=4, batch_size=2, n_val=4,
                       extra={"channels": 4, "width": 8, "refine_rotation_deg": 5.0,
                              "refine_translation_mm": 8.0, "lm_every": 2, "lm_steps": 3,
                              "distance": "so4"})
    res = train_model(hu, m, CAMERA, nominal, cfg, out)
    return hu, m, nominal, out, res


def test_training_writes_a_similarity_model(sim_model):
    hu, m, nominal, out, res = sim_model
    assert out.is_file() and res["kind"] == "similarity" and res["training"]["steps"] == 4
    assert res["similarity"]["distance"] == "so4" and res["similarity"]["lm_steps"] == 3
    assert res["arch"] == {"channels": 4, "width": 8, "spherical": True}
    for key in ("val_before", "val_after"):
        v = res["training"][key]
        assert np.isfinite([v["start_corner_mm_mean"], v["corner_mm_mean"]]).all()
    # the held-out starts are drawn in the refinement range (5 deg / 8 mm about the centre)
    assert 2.0 < res["training"]["val_after"]["start_corner_mm_mean"] < 40.0


def test_refine_with_model_keeps_the_true_pose_and_bad_models(sim_model, tmp_path):
    """At the true pose the X-ray (resampled to the training camera) matches the DRR of
    the block-averaged CT, so the LM stays there whatever the features: a check of the
    camera scaling, CT block averaging and rotation centre of the refinement."""
    hu, m, nominal, out, res = sim_model
    data, net, s = st.load_similarity(str(out), hu, m, CAMERA)
    assert s.distance == "so4" and s.spherical
    k, j, i = hu.shape
    centre = (m @ [(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0])[:3]
    truth = perturb_pose(nominal, centre, (3, -2, 4), (4, -3, 2))
    img = render_drr(DRRVolume.from_hu(hu, m), CAMERA, truth, n_samples=int(data["input"]["n_samples"]))[0].numpy()
    before = hu.copy()
    T = st.refine_with_model(data, net, s, hu, m, img, CAMERA, truth)
    np.testing.assert_array_equal(hu, before)
    moved = np.linalg.norm((T @ np.r_[centre, 1] - truth @ np.r_[centre, 1])[:3])
    assert moved < 0.5, moved
    # another CT is refused, a similarity model is not a regressor
    with pytest.raises(InputError, match="another CT"):
        st.load_similarity(str(out), hu + 1.0, m, CAMERA)
    from FluoroRegLib.learned.register import load_regressor
    with pytest.raises(InputError, match="expected a pose regressor, got kind 'similarity'"):
        load_regressor(str(out))
    ckpt = out.with_name(out.name + ".ckpt.pt")
    with pytest.raises(InputError, match="is a 'similarity' model, not a regressor"):
        train_model(hu, m, CAMERA, nominal, small_config(max_steps=2), tmp_path / "r.pt",
                    resume=str(ckpt))
    with pytest.raises(InputError, match="distance: expected 'se3' or 'so4'"):
        train_model(hu, m, CAMERA, nominal, small_config(kind="similarity", extra={"distance": "l2"}),
                    tmp_path / "x.pt")


def test_cancel_keeps_a_checkpoint_and_resume_continues(tmp_path):
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 4

    cfg = small_config(kind="similarity", max_steps=6, batch_size=2, n_val=2,
                       extra={"channels": 4, "width": 8, "lm_every": 0, "lm_steps": 1})
    out = tmp_path / "c.pt"
    with pytest.raises(CancelledError, match="checkpoint kept"):
        train_model(hu, m, CAMERA, nominal, cfg, out, cancel=cancel)
    ckpt = out.with_name(out.name + ".ckpt.pt")
    assert ckpt.is_file() and not out.exists()
    res = train_model(hu, m, CAMERA, nominal, cfg, out, resume=str(ckpt))
    assert res["training"]["steps"] == 6 and out.is_file()
