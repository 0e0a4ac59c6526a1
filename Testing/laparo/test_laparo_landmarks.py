"""LiverLaparoReg learned registration, landmark model kind: per-pixel 2D landmarks learned,
3D side geometric. SYNTHETIC data only (rendered here); tiny models train in seconds."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError  # noqa: E402

from LiverLaparoRegLib import metrics as lmetrics  # noqa: E402
from LiverLaparoRegLib.learned import data, infer, landmarks_infer as li, modelfile, shapes  # noqa: E402
from LiverLaparoRegLib.learned import landmarks_align as lalign  # noqa: E402
from LiverLaparoRegLib.learned import landmarks_icp as licp  # noqa: E402
from LiverLaparoRegLib.learned import landmarks_search as lsearch  # noqa: E402
from LiverLaparoRegLib.learned.landmarks_net import LandmarkNet, landmark_losses  # noqa: E402
from LiverLaparoRegLib.learned.landmarks_train import train_landmarks  # noqa: E402


@pytest.fixture(scope="module")
def held_out():
    from LiverLaparoRegLib.learned.evaluation import held_out_train_mesh  # noqa: PLC0415

    return held_out_train_mesh()


@pytest.fixture(scope="module")
def frame(held_out):
    """A SYNTHETIC frame of the held-out SciKit-Surgery liver (P2ILF camera, no bend)."""
    from LiverLaparoRegLib.sample_data import sample_data_dir  # noqa: PLC0415
    from LiverLaparoRegLib.camera import load_camera  # noqa: PLC0415
    from LiverLaparoRegLib.learned.evaluation import full_frame  # noqa: PLC0415

    mesh, tm, _ = held_out
    cam = load_camera(sample_data_dir() / "p2ilf" / "cameraparams" /
                      "acquisition-camera-metadata.json")
    s, img, mask = full_frame(tm, cam, np.random.default_rng([0, 1000]))
    return mesh, tm, cam, s.model_to_camera, img, mask


def test_training_samples_have_landmark_maps():
    """Ridge / silhouette labels exist and lie on the liver (ridge) or its outline."""
    from LiverLaparoRegLib.learned.landmarks_data import landmark_sample  # noqa: PLC0415

    tm = data.p2ilf_train_mesh()
    s = landmark_sample(tm, np.random.default_rng([0, 3]))
    assert s["image"].shape == (3, data.NET_H, data.NET_W)
    assert s["target"].shape == (3, data.NET_H, data.NET_W)
    assert s["target"][2].any() and s["valid"].tolist() == [1, 1, 1]
    ridge = s["target"][0].astype(bool)
    assert np.all(s["mask"][ridge])                       # ridge pixels are visible liver


def test_tiny_model_trains_and_resumes(tmp_path):
    """A tiny U-Net on 16 SYNTHETIC frames: the loss and the normal error drop; the model
    file records kind, version, data, command and seed; --resume continues from the step
    count."""
    out = tmp_path / "lm.pt"
    rec = train_landmarks(out, steps=60, max_minutes=3, seed=1, batch=4, samples=16, base=4,
                          data_cache=tmp_path / "cache", device="cpu", command="test cmd",
                          log=lambda m: None)
    h = np.array(rec["loss_history"])
    assert len(h) == 3 and h[-1, 1] < h[0, 1]
    assert h[-1, 5] < h[0, 5]                     # the normal map's angular error drops
    d = modelfile.read_model_file(out, "landmarks")
    assert d["kind"] == "landmarks" and d["version"] == modelfile.VERSION
    assert d["training"]["seed"] == 1 and d["training"]["command"] == "test cmd"
    assert "SYNTHETIC" in d["training"]["data"]
    assert modelfile.model_kind(out) == "landmarks"
    net, _ = modelfile.load_model(out, kind="landmarks")
    with pytest.raises(FileReadError, match="^model: .*'landmarks' model, expected 'stage1'"):
        modelfile.load_model(out)
    rec2 = train_landmarks(out, steps=80, max_minutes=3, seed=1, batch=4, samples=16, base=4,
                           data_cache=tmp_path / "cache", device="cpu", resume=out,
                           log=lambda m: None)
    assert rec2["steps"] == 80


def test_tiny_ray_normal_model_trains_on_the_same_cache(tmp_path):
    """``ray_normals``: a tiny ray-normal U-Net trains on cached frames (which keep their
    network camera) and its normal error drops; the option is recorded and kept by the
    model file, so the loaded network asks for rays."""
    out = tmp_path / "lm.pt"
    rec = train_landmarks(out, steps=60, max_minutes=3, seed=1, batch=4, samples=16, base=4,
                          data_cache=tmp_path / "cache", device="cpu", ray_normals=True,
                          log=lambda m: None)
    h = np.array(rec["loss_history"])
    assert h[-1, 1] < h[0, 1] and h[-1, 5] < h[0, 5]
    assert rec["ray_normals"] is True
    net, _ = modelfile.load_model(out, kind="landmarks")
    assert net.config["ray_normals"] is True


def test_loss_prefers_the_true_map():
    t = torch.zeros(1, 3, 8, 8)
    t[0, 0, 2:4] = 1
    good = landmark_losses(torch.where(t > 0, 5.0, -5.0), t)["total"]
    bad = landmark_losses(torch.where(t > 0, -5.0, 5.0), t)["total"]
    assert float(good) < float(bad)


def test_true_curves_to_correspondences_to_pose(frame):
    """The 2D-curve -> correspondence -> pose step with the TRUE 2D landmark maps (the
    labels the network is trained on): from a start 10 deg / 10 mm off, the image ICP on
    ridge + silhouette pairs comes back to the true pose (independent reference), and
    EPnP + RANSAC on its correspondences agrees."""
    from SurgicalReg2D3DLib.optimize import epnp_ransac  # noqa: PLC0415

    from LiverLaparoRegLib.bench import perturb  # noqa: PLC0415

    mesh, tm, cam, T, img, mask = frame
    maps = li.true_maps(mesh.vertices, mesh.faces, T, cam, ridge=tm.ridge)
    obs = li.observations(maps, mask, cam)
    lm = lsearch.MeshLandmarks(mesh)
    T0 = perturb(T, mesh.vertices, 10.0, 10.0, np.random.default_rng(5))
    e0 = lmetrics.pose_errors(T0, T, lm.c)
    T1, pairs = licp.icp(T0, lm, cam, obs)
    e1 = lmetrics.pose_errors(T1, T, lm.c)
    assert e0["rotation_deg"] > 9.0
    assert e1["rotation_deg"] < 2.5 and e1["centroid_error_mm"] < 3.0
    corr = licp.correspondences_of(pairs, cam)
    assert {c["class"] for c in corr} == {"ridge", "silhouette"}
    assert all(0 <= c["vertex"] < len(mesh.vertices) for c in corr)
    p3 = np.concatenate([p[3] for p in pairs])
    p2 = np.concatenate([p[1] for p in pairs])
    r = epnp_ransac(p3, p2, cam.K, None, reprojection_px=0.02 * np.hypot(cam.width, cam.height))
    assert lmetrics.pose_errors(r.model_to_camera, T, lm.c)["rotation_deg"] < 5.0
    # the search cost prefers the true pose to the perturbed start
    rm = ((maps[0] >= 0.5) & (obs["mask_net"] > 0)).astype(np.uint8)
    o2 = li.observed_2d(obs, rm, cam)
    assert lalign.pose_cost(T, lm, o2) < lalign.pose_cost(T0, lm, o2) - 0.3


def test_outside_distance_frees_instrument_edges():
    """Beyond the liver's own outline a point costs its distance to the mask; beyond an
    edge that is not on the outline (an instrument's, the frame's) it costs nothing."""
    m = np.zeros((20, 30), bool)
    m[5:15, 5:20] = True
    outline = np.array([[5.0, y] for y in range(5, 15)])          # the left edge only
    d = lalign._outside_distance(m, outline)
    assert np.allclose(d[10, 0:5], [5, 4, 3, 2, 1], atol=0.05)      # left of the outline
    assert np.all(d[10, 20:] == 0) and np.all(d[0:5, 10] == 0)     # instrument / border
    assert np.all(d[m] == 0)


def test_sparse_cost_points_do_not_see_through_the_surface():
    """Two parallel plates facing the camera, 100 and 140 mm away (the back one stands for
    a fold behind the liver's front surface). The cost points are a sparse 3 x 3 grid of
    the front plate plus the back plate's points; the occluders a dense grid of the front
    plate. Every back point behind the front plate is hidden and every front point seen;
    the cost points' own z-buffer (what the coarse stage used before) lets back points
    through its gaps."""
    import torch  # noqa: PLC0415

    K = np.array([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    obs = lalign.Observed2D(np.ones((64, 64), bool), np.zeros((0, 2)), None, K)

    def plate(n, z, half=25.0):
        g = np.linspace(-half, half, n)
        x, y = np.meshgrid(g, g)
        return np.stack([x.ravel(), y.ravel(), np.full(n * n, z)], 1)

    front, back = plate(3, 100.0), plate(12, 140.0, half=20.0)
    Q = torch.as_tensor(np.concatenate([front, back]), dtype=torch.float32)
    N = torch.tensor([0.0, 0.0, -1.0]).expand(len(Q), 3)
    R, t = torch.eye(3)[None], torch.zeros(1, 3)
    Y = Q[None].clone()
    u, v, z = lalign.project_pinhole(Y, obs.K)
    is_back = np.arange(len(Q)) >= len(front)

    def seen(Qo):
        mp = lalign.ModelPoints(Q, 25.0, Q[:0], N[:0], 0.0, N, Qo, N[:1].expand(len(Qo), 3))
        zb = lalign._occluders(R, t, mp, Y, u, v, z, obs)
        return lalign._unoccluded(zb, u, v, z)[0].numpy()

    dense = torch.as_tensor(plate(40, 100.0), dtype=torch.float32)
    with_dense = seen(dense)
    assert with_dense[~is_back].all() and not with_dense[is_back].any()
    assert seen(Q)[is_back].sum() > 10                 # the sparse set's own gaps leak
    # model_points gives the coarse set OCCLUDER_POINTS occluders, the fine set itself
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    lm = lsearch.MeshLandmarks(MeshData(*_sphere()))               # 3,482 vertices
    coarse, fine = lalign.model_points(lm, 50), lalign.model_points(lm, lalign.FINE_POINTS)
    assert len(coarse.Qo) == lalign.OCCLUDER_POINTS and len(coarse.Q) == 50
    assert fine.Qo is fine.Q


def test_inner_side_of_the_surface_counts_against_a_pose():
    """A sphere (closed, normals outward) seen from 200 mm: the mask's cells show its outer
    side (fraction facing away ~0) and the normal term against the TRUE normals is near 0.
    The camera inside the sphere sees only its inner side: fraction ~1, and the normal
    term is CAP_NORMAL, the largest error, not a mean over the few points that face the
    camera."""
    import torch  # noqa: PLC0415

    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    lm = lsearch.MeshLandmarks(MeshData(*_sphere(radius=50.0)))
    K = np.array([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    yy, xx = np.mgrid[0:64, 0:64]
    ray = np.stack([(xx - 32) / 60.0, (yy - 32) / 60.0, np.ones((64, 64))])
    ray /= np.linalg.norm(ray, axis=0)
    c = np.array([0.0, 0.0, 200.0])                # the TRUE normal map at 200 mm: the
    dc = np.einsum("ihw,i->hw", ray, c)            # ray's first cut with the sphere
    disc = dc ** 2 - c @ c + 50.0 ** 2
    hit = ray * (dc - np.sqrt(np.maximum(disc, 0)))[None] - c[:, None, None]
    normals = np.where(disc[None] > 0, hit / 50.0, -ray)
    obs = lalign.Observed2D(np.ones((64, 64), bool), np.zeros((0, 2)), None, K,
                            normal_map=normals)
    mp = lalign.model_points(lm, lalign.COARSE_POINTS)
    R = torch.eye(3)[None]

    def terms(depth, back=None):
        t = torch.tensor([[0.0, 0.0, depth]])
        Y = torch.einsum("bij,nj->bni", R, mp.Q) + t[:, None]
        u, v, z = lalign.project_pinhole(Y, obs.K)
        zb = lalign._occluders(R, t, mp, Y, u, v, z, obs)
        if back is not None:                      # the blend alone, a given fraction
            zb = zb._replace(back=torch.tensor([back]))
        return float(zb.back[0]), float(lalign._normal_term(R, Y, u, v, z, mp.N, obs, zb)[0])

    back_out, n_out = terms(200.0)
    back_in, n_in = terms(0.0)
    assert back_out < 0.05 and back_in > 0.95
    assert n_out < 0.05 and n_in == pytest.approx(lalign.CAP_NORMAL, abs=0.03)
    n_out0 = terms(200.0, back=0.0)[1]            # (1 - back) x mean + back x CAP_NORMAL
    assert terms(200.0, back=0.6)[1] == pytest.approx(0.4 * n_out0 + 0.6 * lalign.CAP_NORMAL,
                                                      abs=1e-5)


def test_normal_uncertainty_weights_the_normal_term():
    """The normals' uncertainty (Laplace scale b per pixel): on the sphere at its TRUE pose
    with a normal map whose left half is wrong (turned 60 deg), the plain normal term is
    large; with the wrong half marked uncertain (b = 1 rad) and the right half sure (b =
    0.05 rad) it is the weighted mean by 1 / b, computed here independently from the
    per-point errors, and far smaller; a uniform b gives the plain term back."""
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    lm = lsearch.MeshLandmarks(MeshData(*_sphere(radius=50.0)))
    K = np.array([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    yy, xx = np.mgrid[0:64, 0:64]
    ray = np.stack([(xx - 32) / 60.0, (yy - 32) / 60.0, np.ones((64, 64))])
    ray /= np.linalg.norm(ray, axis=0)
    c = np.array([0.0, 0.0, 200.0])
    dc = np.einsum("ihw,i->hw", ray, c)
    disc = dc ** 2 - c @ c + 50.0 ** 2
    hit = ray * (dc - np.sqrt(np.maximum(disc, 0)))[None] - c[:, None, None]
    normals = np.where(disc[None] > 0, hit / 50.0, -ray)
    a = np.radians(60.0)                           # the left half turned about y
    Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    left = xx < 32
    normals[:, left] = np.einsum("ij,jn->in", Ry, normals[:, left])
    b = np.where(left, 1.0, 0.05)
    mp = lalign.model_points(lm, lalign.COARSE_POINTS)
    R, t = torch.eye(3)[None], torch.tensor([[0.0, 0.0, 200.0]])
    Y = torch.einsum("bij,nj->bni", R, mp.Q) + t[:, None]
    u, v, z = lalign.project_pinhole(Y, torch.as_tensor(K, dtype=torch.float32))

    def term(scale, cache=None):
        obs = lalign.Observed2D(np.ones((64, 64), bool), np.zeros((0, 2)), None, K,
                                normal_map=normals, normal_scale=scale)
        zb = lalign._occluders(R, t, mp, Y, u, v, z, obs)
        return (float(lalign._normal_term(R, Y, u, v, z, mp.N, obs, zb, cache)[0]),
                float(zb.back[0]))

    plain, back = term(None)
    seen = {}
    weighted, _ = term(b, seen)
    assert back < 0.05 and plain > 0.1
    # the reference: per point the term counts (its "seen" set: visibility is tested
    # above), its error against the map's normal at its pixel and its weight, both
    # interpolated by scipy (bilinear, pixel centres at integer coordinates)
    from scipy.ndimage import map_coordinates  # noqa: PLC0415

    Yn, N = Y[0].numpy(), mp.N.numpy()
    uu, vv = u[0].numpy(), v[0].numpy()
    vis = seen["seen"][0].numpy()
    assert vis.sum() > 20 and ((N[vis] * Yn[vis]).sum(1) < 0).all()
    at = np.stack([vv[vis], uu[vis]])
    pred = np.stack([map_coordinates(normals[k], at, order=1, mode="nearest")
                     for k in range(3)], 1)
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    e = np.minimum(1 - (N[vis] * pred).sum(1), lalign.CAP_NORMAL)
    w = map_coordinates(1.0 / np.maximum(b, lalign.NORMAL_SCALE_MIN), at, order=1,
                        mode="nearest")
    assert weighted == pytest.approx((e * w).sum() / w.sum(), abs=0.01)
    assert plain == pytest.approx(e.mean(), abs=0.01)
    assert weighted < 0.2 * plain
    assert term(np.full((64, 64), 0.3))[0] == pytest.approx(plain, abs=1e-5)


def test_normal_uncertainty_head_learns_without_touching_the_normals(tmp_path, frame):
    """The uncertainty channel (``normal_scale``): the loss's gradient on the normal
    channels is the same with and without it (it is trained on the detached error); a
    tiny model with it trains (its Laplace NLL drops), records it in the model file, and
    ``predict_maps`` gives a seventh channel, the scale b > 0 (radians), which the
    search's observations turn into the weights 1 / max(b, NORMAL_SCALE_MIN)."""
    from LiverLaparoRegLib.learned.landmarks_net import LOG_SCALE_RANGE  # noqa: PLC0415

    rng = np.random.default_rng(0)
    t = torch.as_tensor((rng.uniform(size=(2, 3, 8, 8)) > 0.8).astype(np.float32))
    n = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(2, 3, 8, 8)),
                                                      dtype=torch.float32), dim=1)
    m = torch.ones(2, 8, 8)
    lg = torch.as_tensor(rng.normal(size=(2, 7, 8, 8)), dtype=torch.float32)
    grads = []
    for ch in (6, 7):
        x = lg[:, :ch].clone().requires_grad_(True)
        L = landmark_losses(x, t, None, n, m)
        L["total"].backward()
        grads.append(x.grad[:, :6])
        assert ("scale_nll" in L) == (ch == 7)
    torch.testing.assert_close(grads[0], grads[1])
    out = tmp_path / "lm7.pt"
    rec = train_landmarks(out, steps=60, max_minutes=3, seed=1, batch=4, samples=16, base=4,
                          data_cache=tmp_path / "cache", device="cpu", normal_scale=True,
                          log=lambda msg: None)
    h = np.array(rec["loss_history"])
    assert h[-1, 6] < h[0, 6]                      # the scale's NLL drops
    assert rec["normal_scale"] is True
    net, _ = modelfile.load_model(out, kind="landmarks")
    assert net.config["normal_scale"] is True
    mesh, tm, cam, T, img, mask = frame
    maps = li.predict_maps(net, img, mask, cam, flips=2)
    assert maps.shape == (7, data.NET_H, data.NET_W)
    assert np.exp(LOG_SCALE_RANGE[0]) - 1e-6 <= maps[6].min()
    assert maps[6].max() <= np.exp(LOG_SCALE_RANGE[1]) + 1e-6
    obs = li.observations(maps, mask, cam)
    o7 = li.search_observations(maps, obs, cam)
    np.testing.assert_allclose(o7.normal_w.numpy(),
                               1.0 / np.maximum(maps[6], lalign.NORMAL_SCALE_MIN), rtol=1e-6)
    assert li.search_observations(maps[:6], obs, cam).normal_w is None
    assert li.search_observations(maps, obs, cam, w_normal=0.0).normal_w is None


def _training_mesh_frame(seed):
    """A SYNTHETIC frame of the P2ILF (training) mesh with the P2ILF camera, its TRUE 2D
    maps and observations: ``(train mesh, camera, true pose, maps, observations,
    MeshLandmarks)``."""
    from LiverLaparoRegLib.sample_data import sample_data_dir  # noqa: PLC0415
    from LiverLaparoRegLib.camera import load_camera  # noqa: PLC0415
    from LiverLaparoRegLib.learned.evaluation import full_frame  # noqa: PLC0415
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    tm = data.p2ilf_train_mesh()
    cam = load_camera(sample_data_dir() / "p2ilf" / "cameraparams" /
                      "acquisition-camera-metadata.json")
    s, img, mask = full_frame(tm, cam, np.random.default_rng(seed))
    T = s.model_to_camera
    maps = li.true_maps(tm.vertices, tm.faces, T, cam, ridge=tm.ridge)
    return (tm, cam, T, maps, li.observations(maps, mask, cam),
            lsearch.MeshLandmarks(MeshData(tm.vertices, tm.faces)))


def test_correlation_translation_start_finds_a_liver_cut_by_the_frame():
    """The correlation start (``landmarks_search.correlation_translations``) at the true
    rotation of a SYNTHETIC close-up of the P2ILF mesh whose left part is outside the
    frame: the liver centre's pixel is found within 3 network px (the mask moments miss it
    by more: the cut mask's centroid is not the liver's) and the depth within 30 %; an
    unknown start is refused, naming it."""
    tm, cam, T, maps, obs, lm = _training_mesh_frame([6, 1002])
    nc = data.net_camera(cam)
    K = np.asarray(nc.K, float)
    R = T[:3, :3]
    z = (R @ lm.c + T[:3, 3])[2] * 0.5
    u, v = K[0, 2] - 0.3 * data.NET_W, K[1, 2]                 # centre 30 % left of the axis
    c_true = np.array([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])
    T2 = T.copy()
    T2[:3, 3] = c_true - R @ lm.c
    face = data.render_ids(tm.vertices, tm.faces, T2, nc)[1]
    m = (face >= 0).astype(np.float32)
    assert m[:, 0].any() and not m[:, -1].any()               # cut by the left border
    Ym = torch.as_tensor((lm.v[lm.moment] - lm.c) @ R.T, dtype=torch.float32)[None]
    Kt = torch.as_tensor(K, dtype=torch.float32)
    t_mom = lsearch.moment_translations(Ym, Kt, m)
    t_cor = lsearch.correlation_translations(Ym, t_mom, Kt, m)

    def pixel(t):
        t = t[0].numpy().astype(float)
        return np.array([K[0, 0] * t[0] / t[2] + K[0, 2], K[1, 1] * t[1] / t[2] + K[1, 2]])

    assert np.linalg.norm(pixel(t_cor) - [u, v]) < 3.0
    assert np.linalg.norm(pixel(t_mom) - [u, v]) > 6.0
    assert 0.7 < float(t_cor[0, 2]) / z < 1.3
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    full = np.zeros((cam.height, cam.width), bool)
    full[300:800, 500:1400] = True
    with pytest.raises(InputError, match="^translation start: "):
        li.register_landmarks(MeshData(tm.vertices, tm.faces), cam, None, full, maps=maps,
                              translation_start="fft")


def test_search_from_no_pose_with_true_maps():
    """The global search (no initial pose) with the TRUE 2D maps of a SYNTHETIC frame of
    the P2ILF mesh: its best hypothesis is within 10 deg / 10 mm of the true pose, which
    it fits better than the best hypothesis far from it (margin > 0.3 px)."""
    tm, cam, T, maps, obs, lm = _training_mesh_frame([6, 1002])
    rm = ((maps[0] >= 0.5) & (obs["mask_net"] > 0)).astype(np.uint8)
    cands = lalign.align_search(lm, cam, li.observed_2d(obs, rm, cam))
    e = lmetrics.pose_errors(cands[0][0], T, lm.c)
    assert e["rotation_deg"] < 10.0 and e["centroid_error_mm"] < 10.0
    far = [c for Tc, c in cands if lmetrics.pose_errors(Tc, T, lm.c)["rotation_deg"] > 30]
    assert far and min(far) > cands[0][1] + 0.3


def test_ridge_tiebreak_reranks_only_near_equal_poses(monkeypatch):
    """``tiebreak_by_ridge`` on a SYNTHETIC frame of the P2ILF mesh: the TRUE mask, and a
    ridge map drawn at a pose turned 20 deg about the view axis, so that the cost with the
    ridge prefers that wrong pose. It fits the outline much worse (> TIE_PX), so it stays
    behind the true one; once the tie band is widened to include it, the ridge puts it
    first. The costs returned include the ridge (independent check:
    ``pose_cost`` with and without the ridge)."""
    tm, cam, T, maps, obs, lm = _training_mesh_frame([6, 1002])
    Rz = np.eye(4)
    Rz[:3, :3] = data.rotation(np.array([0.0, 0.0, 1.0]), np.radians(20.0))
    centre = T[:3, :3] @ lm.c + T[:3, 3]
    T_far = Rz @ T
    T_far[:3, 3] += centre - Rz[:3, :3] @ centre          # turned about the liver centre
    far_maps = li.true_maps(tm.vertices, tm.faces, T_far, cam, ridge=tm.ridge)
    assert (far_maps[0] >= 0.5).sum() > 20
    obs2 = li.observed_2d(obs, (far_maps[0] >= 0.5).astype(np.uint8), cam)
    free = [lalign.pose_cost(X, lm, obs2, 0.0, 0.0) for X in (T, T_far)]
    total = [lalign.pose_cost(X, lm, obs2, 0.5, 0.0) for X in (T, T_far)]
    assert free[1] > free[0] + li.TIE_PX and total[1] < total[0]
    cands = [(T_far, 0.0), (T, 0.0)]
    out, n_tied, out_free = li.tiebreak_by_ridge(cands, lm, obs2, 0.5, 0.0)
    assert n_tied == 1 and out[0][0] is T and out[1][0] is T_far
    assert np.allclose([c for _, c in out], total, atol=1e-5)
    assert np.allclose(out_free, free, atol=1e-5)
    monkeypatch.setattr(li, "TIE_PX", free[1] - free[0] + 1.0)
    out, n_tied, _ = li.tiebreak_by_ridge(cands, lm, obs2, 0.5, 0.0)
    assert n_tied == 2 and out[0][0] is T_far and out[1][0] is T


def test_registration_with_the_ridge_as_tiebreaker():
    """``register_landmarks(ridge_tiebreak=True)`` with the TRUE 2D maps of a SYNTHETIC
    frame of the P2ILF mesh (no start pose): within 5 deg of the true pose; the result
    records the tie-break (the ridge kept out of the ICP and refinement)."""
    from LiverLaparoRegLib.learned.evaluation import full_frame  # noqa: PLC0415
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    tm, cam, T, maps, obs, lm = _training_mesh_frame([6, 1002])
    mask = full_frame(tm, cam, np.random.default_rng([6, 1002]))[2]
    mesh = MeshData(tm.vertices, tm.faces)
    r = li.register_landmarks(mesh, cam, None, mask, maps=maps, ridge_tiebreak=True,
                              w_ridge=0.5, refine=False)
    info = r.metrics["learned"]
    assert lmetrics.pose_errors(r.model_to_camera, T, lm.c)["rotation_deg"] < 5.0
    assert info["ridge_tiebreak"]["tied_candidates"] >= 1
    assert info["ridge_tiebreak"]["ridge_free_margin_px"] == info["search_margin_px"] >= 0.0
    assert info["ridge_in_refinement"] is False and info["ridge_weight"] == 0.5


def test_pose_chosen_by_the_ridge_alone_is_never_ok(monkeypatch):
    """The tie-break's verdict: with every search pose tied (``TIE_PX`` widened) and a
    heavy ridge term whose ridge map was drawn at a pose turned 40 deg from the true one,
    the ridge picks a pose far from the one the outline prefers; such a pose is at best
    "doubtful", with the reason given, and its ridge-free margin is negative."""
    from LiverLaparoRegLib.learned.evaluation import full_frame  # noqa: PLC0415
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    tm, cam, T, maps, obs, lm = _training_mesh_frame([6, 1002])
    mask = full_frame(tm, cam, np.random.default_rng([6, 1002]))[2]
    Rz = np.eye(4)
    Rz[:3, :3] = data.rotation(np.array([0.0, 0.0, 1.0]), np.radians(40.0))
    centre = T[:3, :3] @ lm.c + T[:3, 3]
    T_far = Rz @ T
    T_far[:3, 3] += centre - Rz[:3, :3] @ centre
    wrong = np.array(maps, np.float32)
    wrong[0] = li.true_maps(tm.vertices, tm.faces, T_far, cam, ridge=tm.ridge)[0]
    monkeypatch.setattr(li, "TIE_PX", 100.0)
    r = li.register_landmarks(MeshData(tm.vertices, tm.faces), cam, None, mask, maps=wrong,
                              ridge_tiebreak=True, w_ridge=50.0, refine=False)
    tb = r.metrics["learned"]["ridge_tiebreak"]
    assert tb["ridge_free_margin_px"] < 0
    assert r.quality.verdict in ("doubtful", "failed")
    assert any(x.startswith("chosen by the ridge map") for x in r.quality.reasons)


def _tiny_model(tmp_path):
    torch.manual_seed(0)
    net = LandmarkNet(base=4).eval()
    return modelfile.save_model(tmp_path / "tiny_lm.pt", net, "landmarks",
                                {"data": "synthetic", "command": "test", "seed": 0})


def test_bad_inputs(tmp_path, frame):
    mesh, tm, cam, T, img, mask = frame
    model = _tiny_model(tmp_path)
    with pytest.raises(InputError, match="^mask: size"):
        infer.register_learned(mesh, cam, img, mask[:-1], model=str(model))
    with pytest.raises(InputError, match="^mask: the liver mask is empty"):
        infer.register_learned(mesh, cam, img, np.zeros_like(mask), model=str(model))
    with pytest.raises(InputError, match="^mask: the learned landmark method needs"):
        li.register_landmarks(mesh, cam, img, None, model=str(model))
    tiny = np.zeros_like(mask)
    tiny[100:102, 100:102] = True                          # a speck: no liver visible
    with pytest.raises(GeometryError, match="^correspondences: no correspondences"):
        infer.register_learned(mesh, cam, img, tiny, model=str(model))
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(FileReadError, match="^model: .*corrupt"):
        infer.register_learned(mesh, cam, img, mask, model=str(bad))
    d = torch.load(model, weights_only=True)
    d["version"] = 99
    torch.save(d, tmp_path / "v99.pt")
    with pytest.raises(FileReadError, match="^model: .*version 99"):
        infer.register_learned(mesh, cam, img, mask, model=str(tmp_path / "v99.pt"))
    # the mesh's 3D ridges follow the model's ridge label: an unknown one is named
    d = torch.load(model, weights_only=True)
    d["config"]["ridge_definition"] = "sharpest"
    torch.save(d, tmp_path / "ridge.pt")
    with pytest.raises(InputError, match="^ridge definition: .*'sharpest'"):
        li.register_landmarks(mesh, cam, img, mask, model=str(tmp_path / "ridge.pt"))
    with pytest.raises(GeometryError, match="^mesh: .*metres"):
        from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415
        infer.register_learned(MeshData(mesh.vertices / 1000.0, mesh.faces), cam, img, mask,
                               model=str(model))


def test_fewer_than_four_pairs_is_refused(frame):
    """Observations with (almost) nothing: the ICP yields < 4 pairs -> a clear error,
    never a pose."""
    mesh, tm, cam, T, img, mask = frame
    obs = {"ridge": np.zeros((0, 2)), "ridge_conf": np.zeros(0),
           "silhouette": np.zeros((0, 2)), "silhouette_conf": np.zeros(0)}
    _, pairs = licp.icp(T, lsearch.MeshLandmarks(mesh), cam, obs)
    assert licp.correspondences_of(pairs, cam) == []


def test_cli_train_kind_landmarks(tmp_path, capsys, frame):
    """`surgreg laparo train --stage 1 --kind landmarks` writes a landmarks model file
    whose record holds the command and the seed; ``--levels 5`` gives a five-level U-Net
    that the inference loads and runs at the network grid (with ``--ray-normals``: the
    option recorded in the command and the config, the rays given at inference);
    ``--levels 6`` is refused in one line."""
    from SurgicalReg2D3DLib.cli import main  # noqa: PLC0415

    from LiverLaparoRegLib.learned.modelfile import load_model  # noqa: PLC0415

    out = tmp_path / "cli_lm.pt"
    args = ["laparo", "train", "--stage", "1", "--kind", "landmarks", "--samples", "8",
            "--steps", "20", "--batch", "4", "--base", "4", "--max-minutes", "2",
            "--seed", "3", "--device", "cpu", "--data-cache", str(tmp_path / "c")]
    rc = main(args + ["--levels", "5", "--warp-mm", "20", "--ray-normals", "--out", str(out)])
    assert rc == 0
    d = modelfile.read_model_file(out, "landmarks")
    assert d["training"]["seed"] == 3 and d["training"]["steps"] == 20
    assert "--kind landmarks" in d["training"]["command"]
    assert "--warp-mm 20" in d["training"]["command"] and d["training"]["warp_mm"] == 20.0
    assert "warp <= 20 mm" in d["training"]["data"]
    from LiverLaparoRegLib.learned.landmarks_train import _chunk_file  # noqa: PLC0415

    # a cache never mixes two warps: non-default frames are named by theirs
    # (chunks "lmk": with the network camera, session 20)
    assert _chunk_file(tmp_path, 3, 0, 20.0).name == "lmk_s3_w20_c00000.npz"
    assert _chunk_file(tmp_path, 3, 0, shapes.PREOP_WARP_MM).name == "lmk_s3_c00000.npz"
    assert "--levels 5" in d["training"]["command"] and d["config"]["levels"] == 5
    assert "--ray-normals" in d["training"]["command"] and d["config"]["ray_normals"] is True
    net = load_model(out, kind="landmarks")[0]
    assert len(net.enc) == 5
    mesh, tm, cam, T, img, mask = frame
    maps = li.predict_maps(net, img, mask, cam)
    assert maps.shape == (6, data.NET_H, data.NET_W) and np.isfinite(maps).all()
    capsys.readouterr()
    rc = main(args + ["--levels", "6", "--out", str(tmp_path / "bad.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "levels" in err and "2-5" in err
    assert not (tmp_path / "bad.pt").exists()
    rc = main(args + ["--warp-mm", "100", "--out", str(tmp_path / "bad.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--warp-mm" in err
    assert not (tmp_path / "bad.pt").exists()


def test_train_patient_mesh_view_axis_and_fine_tune(tmp_path, capsys):
    """A per-patient fine-tune: ``--meshes PATIENT --view-axis +y`` draws the frames of the
    given mesh around +y (the viewing directions within 65 deg of it: 50 deg of the cone +
    15 deg of aim, against the 29 % of the sphere that any direction gives), ``--resume``
    continues a model on that mesh, and the record names the mesh, the axis and the
    command; ``--view-axis`` without ``--meshes``, with ``--kind stage1`` or as a zero
    vector is refused in one line."""
    from SurgicalReg2D3DLib.cli import main  # noqa: PLC0415

    from LiverLaparoRegLib.learned.train import training_meshes  # noqa: PLC0415
    from LiverLaparoRegLib.sample_data import sample_data_dir  # noqa: PLC0415

    patient = sample_data_dir() / "liver_sksurgery" / "liver" / "liver_sub.ply"
    near = {}
    for axis in ((0.0, 1.0, 0.0), None):
        tm = training_meshes([str(patient)], axis)[0]
        assert (tm.view_axis is None) == (axis is None)
        rng = np.random.default_rng(4)
        looks = np.array([data.sample_pose(tm.vertices, data.vertex_normals(
            tm.vertices, tm.faces), rng, tm.view_axis)[2, :3] for _ in range(400)])
        near[axis is None] = float(np.mean(looks[:, 1] > np.cos(np.radians(65.0))))
    assert near[False] > 0.7 and near[True] < 0.4, near
    common = ["laparo", "train", "--stage", "1", "--kind", "landmarks", "--samples", "8",
              "--batch", "4", "--max-minutes", "2", "--seed", "3", "--device", "cpu"]
    base = common + ["--base", "4"]
    first = tmp_path / "base.pt"
    assert main(base + ["--steps", "10", "--data-cache", str(tmp_path / "c0"),
                        "--out", str(first)]) == 0
    out = tmp_path / "patient.pt"
    assert main(base + ["--steps", "20", "--resume", str(first), "--meshes", str(patient),
                        "--view-axis", "+y", "--lr", "5e-4",
                        "--data-cache", str(tmp_path / "c1"), "--out", str(out)]) == 0
    d = modelfile.read_model_file(out, "landmarks")
    tr = d["training"]
    assert tr["steps"] == 20 and tr["view_axis"] == [0.0, 1.0, 0.0]
    assert tr["meshes"] == "liver_sub" and "[liver_sub]" in tr["data"]
    assert "--view-axis +y" in tr["command"] and f"--resume {first}" in tr["command"]
    assert tr["resumed_from"] == "base.pt"
    w0 = modelfile.read_model_file(first, "landmarks")["state_dict"]
    assert any(not torch.equal(w0[k], v) for k, v in d["state_dict"].items())
    # "--resume bundled": the bundled landmark model, two more steps on the patient mesh
    bundled = modelfile.read_model_file(modelfile.bundled_model_path(
        modelfile.BUNDLED_LANDMARKS), "landmarks")
    n0 = int(bundled["training"]["steps"])
    out2 = tmp_path / "patient_from_bundled.pt"
    assert main(common + ["--steps", str(n0 + 2), "--resume", "bundled",
                          "--meshes", str(patient), "--view-axis", "+y",
                          "--data-cache", str(tmp_path / "c2"), "--out", str(out2)]) == 0
    d2 = modelfile.read_model_file(out2, "landmarks")
    assert d2["config"] == bundled["config"] and d2["training"]["steps"] == n0 + 2
    assert d2["training"]["resumed_from"] == modelfile.BUNDLED_LANDMARKS + ".pt"
    assert "--resume bundled" in d2["training"]["command"]
    capsys.readouterr()
    for extra, word in ((["--view-axis", "+y"], "--meshes"),
                        (["--meshes", str(patient), "--view-axis", "0,0,0"], "--view-axis")):
        rc = main(base + ["--steps", "2"] + extra + ["--out", str(tmp_path / "bad.pt")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and word in err, err
    rc = main(["laparo", "train", "--stage", "1", "--view-axis", "+y",
               "--out", str(tmp_path / "bad.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--kind landmarks" in err, err
    assert not (tmp_path / "bad.pt").exists()


def test_training_shape_warp_amplitude():
    """``warp_mm`` sets the preoperative shape's random warp: at 0 the shape is the base
    mesh scaled per axis (an exact affine map), at 24 mm it departs from every affine map
    of the base by more than the default 8 mm allows on average, never by more than
    24 mm at a vertex (an independent least-squares check)."""
    tm = data.p2ilf_train_mesh()
    v0 = np.asarray(tm.vertices, float)
    A = np.c_[v0, np.ones(len(v0))]

    def off_affine(vs):
        X = np.linalg.lstsq(A, vs, rcond=None)[0]
        return np.linalg.norm(A @ X - vs, axis=1)

    res = {}
    for w in (0.0, 8.0, 24.0):
        r = []
        for k in range(6):
            fr = data.render_frame(tm, np.random.default_rng([11, k]), warp_mm=w,
                                   bend_curvature=0.0, instruments=False)
            if len(fr["vs"]) == len(v0):          # uncut: same vertex ids as the base
                r.append(off_affine(fr["vs"]))
        assert r
        res[w] = r
    assert max(x.max() for x in res[0.0]) < 1e-6
    assert max(x.max() for x in res[24.0]) <= 24.0 * 1.5   # lstsq spreads a bump a bit
    assert np.mean([x.max() for x in res[24.0]]) > np.mean([x.max() for x in res[8.0]])


_DDP_WORKER = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
from LiverLaparoRegLib.learned.landmarks_train import train_landmarks
rec = train_landmarks(sys.argv[1], steps=3, max_minutes=5, seed=2, batch=2, samples=4, base=4,
                      data_cache=sys.argv[2], device="cpu", log=lambda m: None)
with open(sys.argv[1] + f".rank{os.environ['RANK']}.json", "w") as fh:
    json.dump({"checksum": rec["param_checksum"], "world": rec["world_size"],
               "steps": rec["steps"]}, fh)
"""


def test_landmarks_ddp_two_process_gloo_replicas_equal(tmp_path):
    """``train --kind landmarks`` under torchrun (2 CPU processes, gloo): the replicas end
    equal and trained, each on frames of its own (different rendered frames per rank)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    out, cache = tmp_path / "lm.pt", tmp_path / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29533", str(worker), str(out), str(cache)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r0, r1 = (json.loads(Path(f"{out}.rank{k}.json").read_text()) for k in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] == 3
    assert r0["checksum"] == r1["checksum"]
    torch.manual_seed(2)
    fresh = float(sum(q.detach().double().abs().sum() for q in LandmarkNet(base=4).parameters()))
    assert r0["checksum"] != fresh
    d = modelfile.read_model_file(out, "landmarks")
    assert d["training"]["world_size"] == 2
    # each rank renders frames of its own: the rank is part of the random stream
    from LiverLaparoRegLib.learned.landmarks_train import _Pool
    from LiverLaparoRegLib.learned.train import training_meshes

    tms = training_meshes(None)
    imgs = []
    for rank in (0, 1):
        pool = _Pool(tmp_path / f"p{rank}", 2, tms, 1, stream=rank)
        pool.render_one()
        imgs.append(pool.arrays()["image"][0])
    assert not np.array_equal(imgs[0], imgs[1])


def test_close_up_candidate_is_pushed_in_front(frame):
    """A hypothesis with vertices behind the camera (a close-up the search's point subset
    allowed) is moved back along its centre's ray until every vertex is >= 5 mm in front;
    the rotation and the centre's image position are kept."""
    mesh, tm, cam, T, img, mask = frame
    lm = lsearch.MeshLandmarks(mesh)
    T0 = np.array(T, float)
    cc = T0[:3, :3] @ lm.c + T0[:3, 3]
    T0[:3, 3] -= 0.9 * cc                                # centre at 10 % of its depth
    assert not li._in_front(T0, lm)
    T1 = li._pushed_in_front(T0, lm)
    z = lm.v @ T1[2, :3] + T1[2, 3]
    assert li._in_front(T1, lm) and abs(z.min() - 5.0) < 1e-6
    assert np.allclose(T1[:3, :3], T0[:3, :3])
    c0, c1 = T0[:3, :3] @ lm.c + T0[:3, 3], T1[:3, :3] @ lm.c + T1[:3, 3]
    assert np.allclose(c0[:2] / c0[2], c1[:2] / c1[2])


# ----------------------------------------------------------------------------- normal map
def _sphere(radius=50.0, res=60):
    from mesh_helpers import vtk_sphere  # noqa: PLC0415

    return vtk_sphere(radius, res)


def test_true_normal_map_of_a_sphere_is_radial():
    """The camera-frame normal map of a sphere, against the analytic normal at the surface
    point of each pixel (the pixel's ray cut with the sphere): within 3 deg, and every
    normal faces the camera. A 30 deg turn of the sphere leaves the map the same (a sphere
    has no orientation), a shift moves it."""
    from LiverLaparoRegLib.camera import PinholeCamera  # noqa: PLC0415

    v, f = _sphere()
    cam = PinholeCamera(fx=900.0, fy=900.0, cx=640.0, cy=480.0, width=1280, height=960)
    T = np.eye(4)
    T[:3, 3] = [10.0, -5.0, 200.0]
    nm = li.true_maps(v, f, T, cam, normals=True)[3:]
    K = data.net_camera(cam).K
    on = np.linalg.norm(nm, axis=0) > 0.5
    assert 200 < on.sum() < data.NET_H * data.NET_W
    r, c = np.nonzero(on)
    ray = np.linalg.solve(K, np.stack([c, r, np.ones_like(c)]).astype(float))
    ray /= np.linalg.norm(ray, axis=0)
    ctr = T[:3, 3][:, None]
    b = (ray * ctr).sum(0)                        # |s ray - ctr| = R: nearer root
    s = b - np.sqrt(np.maximum(b ** 2 - (ctr ** 2).sum() + 50.0 ** 2, 0))
    n_ref = (s * ray - ctr) / 50.0
    ang = np.degrees(np.arccos(np.clip((nm[:, on] * n_ref).sum(0), -1, 1)))
    inner = np.linalg.norm(n_ref[:2], axis=0) < 0.9     # not the grazing rim pixels
    assert np.median(ang) < 1.5 and ang[inner].max() < 3.0
    assert np.all((nm[:, on] * ray).sum(0) < 0.05)
    Rz = np.eye(4)
    Rz[:3, :3] = np.array([[np.cos(0.5), -np.sin(0.5), 0], [np.sin(0.5), np.cos(0.5), 0],
                           [0, 0, 1]])
    assert np.median(np.abs(li.true_maps(v, f, T @ Rz, cam, normals=True)[3:] - nm)[:, on]) < 0.02


def test_normal_loss_and_flip_augmentation():
    """The normal term is 0 for the true normals and large for opposite ones; a
    horizontally flipped training sample gets its normal map mirrored with x negated (the
    camera's x is mirrored), the other components mirrored only."""
    from LiverLaparoRegLib.learned import landmarks_data as ld  # noqa: PLC0415
    from LiverLaparoRegLib.learned.landmarks_train import _batch  # noqa: PLC0415

    s = ld.landmark_sample(data.p2ilf_train_mesh(), np.random.default_rng([0, 3]))
    m = torch.as_tensor(s["mask"][None].astype(np.float32))
    n = torch.as_tensor(s["normals"][None])
    t = torch.as_tensor(s["target"][None].astype(np.float32))
    logits = torch.cat([torch.where(t > 0, 5.0, -5.0), 3.0 * n], 1)
    good = landmark_losses(logits, t, None, n, m)
    bad = landmark_losses(torch.cat([logits[:, :3], -3.0 * n], 1), t, None, n, m)
    assert float(good["normal_deg"]) < 1.0 and float(bad["normal_deg"]) > 179.0
    assert float(bad["total"]) - float(good["total"]) > 3.0
    with pytest.raises(ValueError, match="^normals: "):
        landmark_losses(logits, t)
    arrs = {k: v[None] for k, v in ld.pack(s).items()}
    true_n = ld.unpack_normals(arrs["normals"][0])
    seen = set()
    sil = s["target"][2] > 0
    for k in range(12):
        img, _, tgt, _, nrm, mask, rays = _batch(arrs, np.array([0]), np.random.default_rng(k))
        flipped = not np.allclose(mask[0].numpy(), s["mask"])
        expect = true_n[:, :, ::-1] * np.array([-1.0, 1.0, 1.0])[:, None, None] if flipped \
            else true_n
        np.testing.assert_allclose(nrm[0].numpy(), expect, atol=1e-6)
        # the rays go with the (mirrored) frame: the occluding contour's normals are
        # about perpendicular to their viewing rays (the label is 2 px wide, the normals
        # interpolated: |cos| 0.25, not 0), more so than to parallel rays or to rays with
        # the wrong x sign; the surface's normals face their rays
        on = tgt[0, 2].numpy() > 0
        inside = mask[0].numpy() > 0
        assert on.sum() == sil.sum() > 50

        def abs_cos(r):
            d = np.concatenate([r, np.ones((1,) + sil.shape, np.float32)])
            return np.abs((nrm[0].numpy() * d / np.linalg.norm(d, axis=0)).sum(0))

        r = rays[0].numpy()
        at_contour = np.median(abs_cos(r)[on])
        assert at_contour < 0.3 < np.median(abs_cos(r)[inside])
        assert at_contour < np.median(abs_cos(0 * r)[on]) - 0.08
        assert at_contour < np.median(abs_cos(r * np.array([-1.0, 1.0])[:, None, None])[on]) - 0.08
        d = np.concatenate([r, np.ones((1,) + sil.shape, np.float32)])
        assert np.all((nrm[0].numpy() * d).sum(0)[inside] < 0.05)
        seen.add(flipped)
    assert seen == {True, False}


def test_search_with_true_normals_from_no_pose():
    """The global search (no initial pose, silhouette + TRUE normal map, no ridge) on a
    SYNTHETIC frame of the P2ILF mesh: the best hypothesis is within 5 deg / 10 mm of the
    true pose, with a clear margin over the best pose far from it; the normal term is near
    0 at the true pose and grows with a rotation about the viewing axis."""
    tm, cam, T, maps, obs, lm = _training_mesh_frame([5, 1000])
    nm = li.true_maps(tm.vertices, tm.faces, T, cam, ridge=tm.ridge, normals=True)[3:]
    o2 = li.observed_2d(obs, None, cam, nm)
    mp = lalign.model_points(lm, lalign.FINE_POINTS)

    def normal_term(Tx):
        R = torch.as_tensor(Tx[:3, :3], dtype=torch.float32)[None]
        t = torch.as_tensor(Tx[:3, :3] @ lm.c + Tx[:3, 3], dtype=torch.float32)[None]
        Y = torch.einsum("bij,nj->bni", R, mp.Q) + t[:, None]
        u, v, z = lalign.project_pinhole(Y, o2.K)
        zb = lalign._occluders(R, t, mp, Y, u, v, z, o2)
        return float(lalign._normal_term(R, Y, u, v, z, mp.N, o2, zb)[0])

    turned = []
    for deg in (10.0, 25.0):
        a = np.radians(deg)
        Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
        Tx = T.copy()
        Tx[:3, :3] = Rz @ T[:3, :3]
        Tx[:3, 3] = Rz @ (T[:3, :3] @ lm.c + T[:3, 3]) - Tx[:3, :3] @ lm.c
        turned.append(normal_term(Tx))
    assert normal_term(T) < 0.01 < turned[0] < turned[1]
    cands = lalign.align_search(lm, cam, o2, w_ridge=0.0)
    e = lmetrics.pose_errors(cands[0][0], T, lm.c)
    assert e["rotation_deg"] < 5.0 and e["centroid_error_mm"] < 10.0
    far = [c for Tc, c in cands if lmetrics.pose_errors(Tc, T, lm.c)["rotation_deg"] > 30]
    assert far and min(far) > cands[0][1] + 0.3


def test_network_with_normals_gives_unit_normals_and_maps_are_checked(tmp_path, frame):
    """A (tiny, untrained) network with normal channels: ``predict_maps`` returns 3
    probabilities in [0, 1] and a unit normal per pixel; ``register_landmarks`` refuses
    given maps of another shape, naming them."""
    mesh, tm, cam, T, img, mask = frame
    torch.manual_seed(0)
    net = LandmarkNet(base=4, normals=True).eval()
    maps = li.predict_maps(net, img, mask, cam)
    assert maps.shape == (6, data.NET_H, data.NET_W)
    assert maps[:3].min() >= 0 and maps[:3].max() <= 1
    np.testing.assert_allclose(np.linalg.norm(maps[3:], axis=0), 1.0, atol=1e-4)
    with pytest.raises(InputError, match=r"^maps: expected shape \(3, 96, 128\), \(6"):
        li.register_landmarks(mesh, cam, img, mask, maps=maps[:5])


def test_flip_averaged_maps_turn_with_the_frame():
    """``predict_maps(flips=k)``: with ``flips=1`` the single forward pass; the 2-view
    (180 deg turn) and 4-view (also the mirrors) averages are equivariant: the maps of the
    turned / mirrored frame are the turned / mirrored maps, with the normal's x and / or y
    negated (an independent property of the average, whatever the weights); a
    ``flips`` other than 1, 2, 4 is refused, naming it."""
    torch.manual_seed(1)
    net = LandmarkNet(base=4, normals=True).eval()
    rng = np.random.default_rng(0)
    H, W = data.NET_H, data.NET_W                 # at the network grid: no resampling
    cam = None                                    # the network image needs no camera
    img = (rng.uniform(size=(H, W, 3)) * 255).astype(np.uint8)
    mask = np.zeros((H, W), bool)
    mask[20:80, 10:90] = True
    with torch.no_grad():
        lg = net(torch.as_tensor(np.transpose(img, (2, 0, 1)) / 255.0, dtype=torch.float32)[None],
                 torch.as_tensor(mask, dtype=torch.float32)[None])[0]
    one = li.predict_maps(net, img, mask, cam, flips=1)
    np.testing.assert_allclose(one[:3], torch.sigmoid(lg[:3]).numpy(), atol=1e-6)
    assert np.array_equal(one[3:], torch.nn.functional.normalize(lg[3:6], dim=0,
                                                                 eps=1e-6).numpy())
    assert not np.allclose(li.predict_maps(net, img[::-1, ::-1], mask[::-1, ::-1], cam)[:3],
                           one[:3, ::-1, ::-1], atol=1e-3)  # the network alone is not
    for flips, turns in ((2, [(True, True)]), (4, [(True, True), (False, True), (True, False)])):
        m = li.predict_maps(net, img, mask, cam, flips=flips)
        np.testing.assert_allclose(np.linalg.norm(m[3:], axis=0), 1.0, atol=1e-4)
        for rows, cols in turns:
            sl = (slice(None, None, -1) if rows else slice(None),
                  slice(None, None, -1) if cols else slice(None))
            t = li.predict_maps(net, np.ascontiguousarray(img[sl]),
                                np.ascontiguousarray(mask[sl]), cam, flips=flips)
            want = m[(slice(None),) + sl].copy()
            if cols:
                want[3] *= -1
            if rows:
                want[4] *= -1
            np.testing.assert_allclose(t, want, atol=1e-4)
    with pytest.raises(InputError, match="^flips: expected 1, 2 or 4"):
        li.predict_maps(net, img, mask, cam, flips=3)


def test_ray_frame_rotation_turns_z_onto_the_ray():
    """``ray_rotation``: a rotation per pixel (orthonormal, det 1) whose third column is
    the unit viewing ray; it keeps the vector perpendicular to both the camera's z axis
    and the ray (the smallest rotation turns about that axis); ``ray_map`` of a camera
    gives the ray through each pixel centre (an analytic pinhole reference)."""
    from LiverLaparoRegLib.learned.landmarks_net import ray_map, ray_rotation, \
        ray_to_camera  # noqa: PLC0415

    r = ray_map(70.0, 50.0, 60.5, 40.0, 96, 128)
    assert r.shape == (2, 96, 128)
    assert r[0, 7, 100] == pytest.approx((100 - 60.5) / 70.0)
    assert r[1, 7, 100] == pytest.approx((7 - 40.0) / 50.0)
    rt = torch.as_tensor(r)[None]
    R = ray_rotation(rt)[0].permute(2, 3, 0, 1).double()          # (H, W, 3, 3)
    np.testing.assert_allclose((R @ R.transpose(-1, -2)).numpy(),
                               np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_allclose(torch.linalg.det(R).numpy(), 1.0, atol=1e-5)
    d = np.concatenate([r, np.ones((1, 96, 128), np.float32)])
    d /= np.linalg.norm(d, axis=0)
    np.testing.assert_allclose(R[..., 2].permute(2, 0, 1).numpy(), d, atol=1e-6)
    axis = np.stack([-d[1], d[0], np.zeros_like(d[0])])              # z x d
    axis /= np.maximum(np.linalg.norm(axis, axis=0), 1e-12)
    turned = ray_to_camera(torch.as_tensor(axis[None], dtype=torch.float32), rt)[0].numpy()
    off = np.linalg.norm(r, axis=0) > 0.05
    np.testing.assert_allclose(turned[:, off], axis[:, off], atol=1e-5)


def test_ray_normal_network_turns_its_ray_frame_into_the_camera_frame(frame):
    """A ray-normal network whose normal head says "along the ray" (zero weights, bias
    (0, 0, 1) in the ray frame) gives each pixel's camera-frame viewing ray, with every
    ``flips`` (the flipped views get flipped rays, so their average is the same map);
    such a network called without rays is refused, naming them; its model file keeps
    ``ray_normals`` in its config."""
    mesh, tm, cam, T, img, mask = frame
    from LiverLaparoRegLib.learned.landmarks_net import ray_map  # noqa: PLC0415

    torch.manual_seed(2)
    net = LandmarkNet(base=4, normals=True, ray_normals=True).eval()
    assert net.config["ray_normals"] is True and "ray_normals" not in LandmarkNet(
        base=4, normals=True).config
    with torch.no_grad():
        net.head.weight[3:6] = 0.0
        net.head.bias[3:6] = torch.tensor([0.0, 0.0, 1.0])
    nc = data.net_camera(cam)
    r = ray_map(nc.fx, nc.fy, nc.cx, nc.cy, data.NET_H, data.NET_W)
    d = np.concatenate([r, np.ones((1,) + r.shape[1:], np.float32)])
    d /= np.linalg.norm(d, axis=0)
    assert np.degrees(np.arccos(d[2].min())) > 20.0        # the rays differ across the frame
    for flips in (1, 2, 4):
        m = li.predict_maps(net, img, mask, cam, flips=flips)
        np.testing.assert_allclose(m[3:6], d, atol=1e-5)
    with pytest.raises(ValueError, match="^rays: "):
        net(torch.zeros(1, 3, data.NET_H, data.NET_W), torch.zeros(1, data.NET_H, data.NET_W))
    with pytest.raises(ValueError, match="^ray normals: "):
        LandmarkNet(base=4, ray_normals=True)


def test_view_prior_from_text_and_from_the_mesh_file(tmp_path):
    """``--view-axis``: named axes, a direction, 'any'; bad text names the input. 'auto'
    reads the ``SPACE=`` comment Slicer writes into mesh files: +y for LPS or no comment
    (Slicer's assumption), -y for RAS."""
    import argparse  # noqa: PLC0415

    from LiverLaparoRegLib.cli import _view_prior  # noqa: PLC0415

    assert lsearch.parse_view_axis("+y") == (0.0, 1.0, 0.0)
    assert lsearch.parse_view_axis(" -Z ") == (0.0, 0.0, -1.0)
    assert lsearch.parse_view_axis("any") is None
    np.testing.assert_allclose(lsearch.parse_view_axis("3,0,4"), (0.6, 0.0, 0.8))
    for bad in ("up", "0,0,0", "1,2", "1,nan,0"):
        with pytest.raises(InputError, match="^view axis: "):
            lsearch.parse_view_axis(bad)
    tri = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
    files = {"ras.obj": "# SPACE=RAS\n" + tri, "lps.obj": "# 3D Slicer output. SPACE=LPS\n" + tri,
             "none.obj": tri, "both.obj": "# SPACE=RAS SPACE=LPS\n" + tri}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    from SurgicalReg2D3DLib.io import mesh_file_coordinate_system  # noqa: PLC0415

    assert [mesh_file_coordinate_system(tmp_path / n) for n in files] == ["RAS", "LPS", "", ""]
    assert mesh_file_coordinate_system(tmp_path / "missing.obj") == ""
    for name, axis in (("ras.obj", (0.0, -1.0, 0.0)), ("lps.obj", (0.0, 1.0, 0.0)),
                       ("none.obj", (0.0, 1.0, 0.0))):
        got, how = _view_prior(argparse.Namespace(view_axis="auto", mesh=tmp_path / name))
        assert got == axis and how.startswith("auto: ")
    got, how = _view_prior(argparse.Namespace(view_axis="any", mesh=tmp_path / "ras.obj"))
    assert got is None and how == "--view-axis any"
    with pytest.raises(InputError, match="^--view-axis: "):
        _view_prior(argparse.Namespace(view_axis="sideways", mesh=tmp_path / "ras.obj"))


def test_search_of_a_mesh_in_ras_coordinates_needs_the_ras_axis():
    """The same SYNTHETIC frame with the mesh's coordinates in RAS (x, y negated): its
    true viewing direction is > 80 deg from the default +y axis (the default prior cannot
    reach it) and the search with the -y axis (what ``--view-axis auto`` gives a file
    that declares SPACE=RAS) finds the pose within 5 deg / 10 mm."""
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415

    tm, cam, T, maps, obs, lm = _training_mesh_frame([5, 1000])
    nm = li.true_maps(tm.vertices, tm.faces, T, cam, ridge=tm.ridge, normals=True)[3:]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])                  # RAS <-> LPS
    v_ras = tm.vertices * np.array([-1.0, -1.0, 1.0])
    T_ras = T @ flip                                         # model (RAS) -> camera
    np.testing.assert_allclose((v_ras @ T_ras[:3, :3].T + T_ras[:3, 3])[:50],
                               (tm.vertices @ T[:3, :3].T + T[:3, 3])[:50], atol=1e-9)
    look = T_ras[:3, :3].T @ np.array([0.0, 0.0, 1.0])      # viewing direction, mesh frame
    assert np.degrees(np.arccos(look @ np.array(lsearch.VIEW_AXIS))) > 80.0
    lm_ras = lsearch.MeshLandmarks(MeshData(v_ras, tm.faces))
    cands = lalign.align_search(lm_ras, cam, li.observed_2d(obs, None, cam, nm),
                                view_axis=lsearch.AXIS_BY_SPACE["RAS"], w_ridge=0.0)
    e = lmetrics.pose_errors(cands[0][0], T_ras, lm_ras.c)
    assert e["rotation_deg"] < 5.0 and e["centroid_error_mm"] < 10.0
