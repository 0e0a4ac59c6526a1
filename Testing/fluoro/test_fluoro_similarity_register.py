"""Registration with a learned similarity (``surgreg fluoro register --model REG.pt --model
SIM.pt``): the multi-view LM on the learned features, the chain regressor -> similarity ->
classic refinement, the command line and its bad inputs.

SYNTHETIC: DRRs of the small phantom of the learned-method tests; the similarity models are
trained for one step (mechanics only; the benchmark measures usefulness).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fluoro_learned import (CAMERA, _write_inputs, nominal_of, phantom,  # noqa: E402
                                 small_config)

from FluoroRegLib.drr import DRRVolume, render_drr  # noqa: E402
from FluoroRegLib.geometry import look_at_pose  # noqa: E402
from FluoroRegLib.learned.model_file import load_model_file  # noqa: E402
from FluoroRegLib.learned.register import register_with_model  # noqa: E402
from FluoroRegLib.learned.sim_register import SimilarityRefiner, refine_starts  # noqa: E402
from FluoroRegLib.learned.train import train_model  # noqa: E402
from FluoroRegLib.logic import register_arrays  # noqa: E402
from FluoroRegLib.simulate import perturb_pose  # noqa: E402
from SurgicalReg2D3DLib.cli import main as surgreg_main  # noqa: E402
from SurgicalReg2D3DLib.errors import InputError  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A similarity model of the phantom (one training step) and a regressor (2 steps)."""
    hu, m = phantom()
    nominal, centre = nominal_of(hu, m)
    d = tmp_path_factory.mktemp("simreg")
    cfg = small_config(kind="similarity", max_steps=1, batch_size=2, n_val=2,
                       extra={"channels": 4, "width": 8, "lm_every": 0, "lm_steps": 4})
    train_model(hu, m, CAMERA, nominal, cfg, d / "sim.pt")
    train_model(hu, m, CAMERA, nominal, small_config(max_steps=2, batch_size=4, n_val=4),
                d / "reg.pt")
    return hu, m, nominal, centre, d


def _two_views(hu, m, truth, centre):
    """X-rays of ``truth`` and of a lateral view (C-arm turned 90 deg about the centre)."""
    lat = look_at_pose(centre, "LAT", 600.0) @ np.linalg.inv(look_at_pose(centre, "AP", 600.0))
    vol = DRRVolume.from_hu(hu, m)
    poses = [truth, lat @ truth]
    imgs = [render_drr(vol, CAMERA, p, n_samples=64)[0].numpy() for p in poses]
    return imgs, poses, lat


def _centre_error(T, truth, centre):
    return float(np.linalg.norm((T @ np.r_[centre, 1] - truth @ np.r_[centre, 1])[:3]))


def test_two_view_lm_stays_at_the_truth_and_moves_towards_it(sim):
    """At the true poses of both views the X-rays equal the DRRs, so the LM stays; from a
    start 3 deg / 4 mm off, the LM on the features of both views ends closer to the truth
    than it started; the second view takes part (depth error)."""
    hu, m, nominal, centre, d = sim
    truth = perturb_pose(nominal, centre, (2, -1, 3), (3, -2, 2))
    imgs, poses, lat = _two_views(hu, m, truth, centre)
    before = [im.copy() for im in imgs]
    ref = SimilarityRefiner(load_model_file(d / "sim.pt"), hu, m)
    out, costs = ref.refine(imgs, [CAMERA, CAMERA], poses, steps=2)
    assert _centre_error(out[0], truth, centre) < 0.5
    np.testing.assert_allclose(out[1], lat @ out[0], atol=1e-9)  # the views move together
    for a, b in zip(imgs, before):
        np.testing.assert_array_equal(a, b)
    start = perturb_pose(truth, centre, (3, -3, 2), (4, -3, 3))
    out, costs = ref.refine(imgs, [CAMERA, CAMERA], [start, lat @ start], steps=6)
    e0, e1 = _centre_error(start, truth, centre), _centre_error(out[0], truth, centre)
    assert e1 < 0.5 * e0, (e0, e1)
    assert costs[-1] < costs[0]
    # 10 mm along view 1's central ray: the lateral view sees it fully, so the two-view LM
    # ends much closer than the single-view one (each view's DRR at its own pose)
    shift = np.eye(4)
    shift[2, 3] = 10.0
    start = shift @ truth
    one, _ = ref.refine(imgs[:1], [CAMERA], [start], steps=4)
    two, _ = ref.refine(imgs, [CAMERA] * 2, [start, lat @ start], steps=4)
    e1, e2 = _centre_error(one[0], truth, centre), _centre_error(two[0], truth, centre)
    assert e2 < 0.5 * e1 and e1 < 2.0, (e1, e2)


def test_register_chain_with_similarity_model(sim):
    hu, m, nominal, centre, d = sim
    truth = perturb_pose(nominal, centre, (2, 2, -1), (3, 2, -2))
    imgs, poses, lat = _two_views(hu, m, truth, centre)
    noms = [nominal, lat @ nominal]
    hu0 = hu.copy()
    # regressor -> similarity, no classic refinement
    r = register_with_model(hu, m, imgs, [CAMERA] * 2, str(d / "reg.pt"), method="regressor",
                            nominal_views=noms, similarity_model=str(d / "sim.pt"))
    assert r.method == "regressor+similarity"
    np.testing.assert_allclose(r.ct_to_camera, r.similarity_ct_to_camera)
    assert r.metrics["similarity_lm_steps"] == 4 and r.metrics["similarity_time_s"] > 0
    assert r.start_ct_to_camera is not None and r.quality is not None
    # ... then ppc (the classic refinement) from the similarity's pose
    r2 = register_with_model(hu, m, imgs, [CAMERA] * 2, str(d / "reg.pt"), method="ppc",
                             nominal_views=noms, similarity_model=str(d / "sim.pt"),
                             landmarks_ras=np.array([centre, centre + 20]),
                             true_ct_to_camera=truth)
    assert r2.method == "regressor+similarity+ppc"
    assert {"start_mtre_mm", "similarity_mtre_mm", "mtre_mm"} <= set(r2.metrics)
    # the similarity model alone starts at its nominal view; --init skips the regressor
    r3 = register_with_model(hu, m, imgs[:1], [CAMERA], None, method="regressor",
                             similarity_model=str(d / "sim.pt"))
    assert r3.method == "nominal+similarity"
    r4 = register_with_model(hu, m, imgs[:1], [CAMERA], None, method="regressor",
                             init_poses=[truth], similarity_model=str(d / "sim.pt"))
    assert r4.method == "similarity" and _centre_error(r4.ct_to_camera, truth, centre) < 0.5
    np.testing.assert_array_equal(hu, hu0)
    # bad inputs
    with pytest.raises(InputError, match="another CT"):
        register_with_model(hu + 1.0, m, imgs[:1], [CAMERA], None, method="regressor",
                            similarity_model=str(d / "sim.pt"))
    with pytest.raises(InputError, match="expected a similarity model"):
        refine_starts(str(d / "reg.pt"), hu, m, imgs[:1], [CAMERA], [truth])
    with pytest.raises(InputError, match="nominal poses"):
        register_with_model(hu, m, imgs, [CAMERA] * 2, None, method="regressor",
                            similarity_model=str(d / "sim.pt"))
    with pytest.raises(InputError, match="similarity LM steps"):
        refine_starts(str(d / "sim.pt"), hu, m, imgs[:1], [CAMERA], [truth], steps=0)


def test_progress_start_is_what_the_no_progress_rule_compares_with(sim):
    """``register_arrays(progress_start=...)``: the start similarity of the rule is taken
    there (a chained caller's start), not at ``init_poses``."""
    hu, m, nominal, centre, d = sim
    truth = perturb_pose(nominal, centre, (2, 2, -1), (3, 2, -2))
    img = render_drr(DRRVolume.from_hu(hu, m), CAMERA, truth, n_samples=64)[0].numpy()
    far = perturb_pose(truth, centre, (8, -6, 5), (15, -10, 10))
    a = register_arrays(hu, m, [img], [CAMERA], [truth], method="ncc", iterations=2)
    b = register_arrays(hu, m, [img], [CAMERA], [truth], method="ncc", iterations=2,
                        progress_start=far)
    assert b.similarity_start < a.similarity_start - 0.05
    np.testing.assert_allclose(a.ct_to_camera, b.ct_to_camera)


def test_cli_register_with_similarity_model(sim, tmp_path, capsys):
    hu, m, nominal, centre, d = sim
    _write_inputs(tmp_path, hu, m, nominal)
    from FluoroRegLib.xray_io import save_xray

    truth = perturb_pose(nominal, centre, (3, -2, 1), (4, 2, -3))
    img = render_drr(DRRVolume.from_hu(hu, m), CAMERA, truth)[0].numpy()
    save_xray(img, CAMERA, tmp_path / "x.nrrd", tmp_path / "gx.json")
    reg = ["fluoro", "register", "--ct", str(tmp_path / "ct.nii.gz"), "--xray",
           str(tmp_path / "x.nrrd"), "--geometry", str(tmp_path / "gx.json"), "--model",
           str(d / "reg.pt"), "--model", str(d / "sim.pt"), "--method", "regressor"]
    assert surgreg_main(reg + ["--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["method"] == "regressor+similarity" and "quality" in out
    np.testing.assert_allclose(out["ct_to_camera"], out["similarity_ct_to_camera"])
    assert np.asarray(out["regressor_ct_to_camera"]).shape == (4, 4)
    capsys.readouterr()
    assert surgreg_main(reg + ["--model", str(d / "sim.pt"), "--out",
                               str(tmp_path / "o2.json")]) == 2
    assert "two similarity models" in capsys.readouterr().err
