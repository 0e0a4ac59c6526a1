"""LiverLaparoReg learned registration: data, network, model files, training, bad inputs.

Everything here runs on SYNTHETIC data rendered by ``learned/data.py`` and tiny models
trained in the test (seconds on one CPU core).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from SurgicalReg2D3DLib.cameras import PinholeCamera  # noqa: E402
from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError  # noqa: E402

from LiverLaparoRegLib.learned import data, infer, modelfile, net as lnet, shapes, train  # noqa: E402
from LiverLaparoRegLib.mesh import MeshData  # noqa: E402


def _box_mesh():
    """A closed box surface (160 x 120 x 80 mm) made of subdivided faces, centred at 0."""
    v, f, _ = _box_at(3)
    return MeshData(v, f, "box")


@pytest.fixture(scope="module")
def box():
    return _box_mesh()


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return lnet.StageOne(dim=16, gdim=32).eval()


def _camera(w=320, h=240):
    return PinholeCamera(fx=300.0, fy=300.0, cx=w / 2, cy=h / 2, width=w, height=h)


# ----------------------------------------------------------------------------- data
def test_render_ids_depth_of_a_plane():
    """A square at z = 100 mm facing the camera: depth 100 inside, background outside."""
    v = np.array([[-20, -20, 0], [20, -20, 0], [20, 20, 0], [-20, 20, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    T = np.eye(4)
    T[2, 3] = 100.0
    cam = _camera(64, 64)
    cam = PinholeCamera(fx=60.0, fy=60.0, cx=31.5, cy=31.5, width=64, height=64)
    depth, face, bary, uv, z = data.render_ids(v, f, T, cam)
    # the square spans +-20 mm at 100 mm -> +-12 px around the centre
    assert face[32, 32] >= 0 and face[0, 0] == -1
    inside = face >= 0
    assert np.allclose(depth[inside], 100.0)
    assert np.allclose(bary[inside].sum(-1), 1.0)
    assert abs(inside.sum() - 24 * 24) <= 2 * 24 + 4


def test_ridge_vertices_are_box_edges(box):
    """On a box, the sharpest vertices are those on its 12 edges."""
    v = box.vertices
    half = np.array([80.0, 60.0, 40.0])
    on_edge = (np.isclose(np.abs(v), half, atol=1e-6).sum(1) >= 2)
    ridge = data.ridge_vertices(v, box.faces, fraction=on_edge.mean())
    assert (ridge & on_edge).sum() >= 0.7 * on_edge.sum()
    # and the other ridge vertices are next to an edge (one-ring smoothing), not mid-face
    d_edge = np.sort(half - np.abs(v), axis=1)[:, 1]
    assert d_edge[ridge].max() <= 20.0 + 1e-6


def _box_at(subdivisions: int, half=(80.0, 60.0, 40.0)):
    """The box of :func:`_box_mesh` at another resolution: ``(vertices, faces, distance of
    each vertex to the nearest box edge, mm)``."""
    import vtk  # noqa: PLC0415
    from vtk.util.numpy_support import vtk_to_numpy  # noqa: PLC0415

    src = vtk.vtkCubeSource()
    src.SetXLength(2 * half[0])
    src.SetYLength(2 * half[1])
    src.SetZLength(2 * half[2])
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(src.GetOutputPort())
    clean = vtk.vtkCleanPolyData()
    clean.SetInputConnection(tri.GetOutputPort())
    sub = vtk.vtkLinearSubdivisionFilter()
    sub.SetInputConnection(clean.GetOutputPort())
    sub.SetNumberOfSubdivisions(subdivisions)
    sub.Update()
    out = sub.GetOutput()
    v = vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64)
    f = vtk_to_numpy(out.GetPolys().GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    d_edge = np.sort(np.asarray(half) - np.abs(v), axis=1)[:, 1]   # 2nd smallest gap
    return v, f, d_edge


def test_scale_ridges_are_the_same_band_at_any_resolution():
    """``definition="scale"``: on a box (90 deg edges) meshed 2.5-5 mm and 1.25-2.5 mm
    apart, the ridge is the band of the surface within about RIDGE_RADIUS_MM of an edge
    (distances to the analytic edges), the same in mm at both resolutions; the one-ring
    definition's band is one ring wide, so it halves when the spacing does."""
    r = data.RIDGE_RADIUS_MM
    widths = {}
    for sub in (5, 6):
        v, f, d = _box_at(sub)
        ridge = data.ridge_vertices(v, f, definition="scale")
        assert ridge[d <= r - 2.5].all()           # near an edge: ridge
        assert not ridge[d >= r].any()             # beyond the radius: not
        widths[sub, "scale"] = d[ridge].max()
        widths[sub, "ring"] = d[data.ridge_vertices(v, f, definition="ring")].max()
    assert abs(widths[5, "scale"] - widths[6, "scale"]) <= 2.5
    assert widths[5, "ring"] >= 1.8 * widths[6, "ring"]      # one ring: halves with it


def test_scale_ridges_are_a_local_property():
    """A sphere (50 mm radius) has no ``scale`` ridge (its normal turns 7 deg over the
    radius, far below RIDGE_SHARPNESS's 28 deg), while the one-ring definition, a share
    of the vertices, marks 8 % of it; the threshold is the P2ILF training mesh's
    sharpest 8 % of surface area (how RIDGE_SHARPNESS was set); a bad name is refused."""
    from mesh_helpers import vtk_sphere  # noqa: PLC0415

    v, f = vtk_sphere(50.0, 60)
    assert not data.ridge_vertices(v, f, definition="scale").any()
    assert data.ridge_vertices(v, f, definition="ring").mean() >= 0.07
    tm = data.p2ilf_train_mesh()
    sharp, area = data.ridge_sharpness(tm.vertices, tm.faces)
    share = area[sharp >= data.RIDGE_SHARPNESS].sum() / area.sum()
    assert abs(share - 0.08) < 0.005
    with pytest.raises(InputError, match="ridge definition"):
        data.ridge_vertices(v, f, definition="sharpest")


def test_scale_labels_follow_the_frame_shape():
    """With ``ridge_definition="scale"`` a training frame's ridge labels are those of its
    own preoperative shape: a sphere's frames carry no ridge pixel, while the one-ring
    labels (carried from the base mesh) mark some."""
    from LiverLaparoRegLib.learned import landmarks_data  # noqa: PLC0415
    from mesh_helpers import vtk_sphere  # noqa: PLC0415

    v, f = vtk_sphere(70.0, 48)
    tm = data.train_mesh(MeshData(v, f, "sphere"), view_axis=np.array([0.0, 1.0, 0.0]))
    ring = scale = 0
    for k in range(3):
        ring += landmark_sample_ridge(landmarks_data, tm, k, "ring")
        scale += landmark_sample_ridge(landmarks_data, tm, k, "scale")
    assert scale == 0 and ring > 0


def test_relief_makes_shapes_rounder_and_sharper_of_the_same_extents():
    """``shapes.relief`` on the P2ILF training mesh: every draw keeps the faces, the centroid
    and the extents along the mesh's principal axes (independent check: the bounding
    extents in the canonical frame); draws come out both rounder (less ``scale`` ridge
    area than the mesh's 8 %) and sharper (more), spanning at least 4-15 %; a relief
    change refuses the ``ring`` ridge labels (they belong to the base shape) and a
    probability outside [0, 1], naming the option."""
    from LiverLaparoRegLib.learned.landmarks_train import train_landmarks  # noqa: PLC0415

    tm = data.p2ilf_train_mesh()
    v, f = np.asarray(tm.vertices, float), np.asarray(tm.faces)
    R, c = data.canonical_frame(v)
    ext0 = np.ptp((v - c) @ R.T, 0)

    def ridge_share(x):
        sharp, area = data.ridge_sharpness(x, f)
        return area[sharp >= data.RIDGE_SHARPNESS].sum() / area.sum()

    base = ridge_share(v)
    rng = np.random.default_rng(4)
    A = shapes.neighbour_mean(v, f)
    shares = []
    for _ in range(12):
        x = shapes.relief(v, f, rng, A)
        assert x.shape == v.shape
        assert np.allclose(x.mean(0), v.mean(0), atol=1e-6)
        assert np.allclose(np.ptp((x - c) @ R.T, 0), ext0, rtol=0.03)
        shares.append(ridge_share(x))
    assert min(shares) < min(0.04, base) and max(shares) > max(0.15, base)
    with pytest.raises(InputError, match="^relief: .*--ridge-definition scale"):
        train_landmarks("unused.pt", relief_prob=0.5, ridge_definition="ring")
    with pytest.raises(InputError, match="^relief: --relief must be"):
        train_landmarks("unused.pt", relief_prob=1.5, ridge_definition="scale")


def landmark_sample_ridge(landmarks_data, tm, k, definition):
    s = landmarks_data.landmark_sample(tm, np.random.default_rng([3, k]), instruments=False,
                                       warp_mm=0.0, ridge_definition=definition)
    return int(s["target"][0].sum())


def test_bend_is_near_isometric(box):
    rng = np.random.default_rng(0)
    vb = shapes.bend(box.vertices, rng, max_curvature=1 / 150.0)
    e = np.concatenate([box.faces[:, [0, 1]], box.faces[:, [1, 2]]])
    l0 = np.linalg.norm(box.vertices[e[:, 0]] - box.vertices[e[:, 1]], axis=1)
    l1 = np.linalg.norm(vb[e[:, 0]] - vb[e[:, 1]], axis=1)
    assert np.abs(vb - box.vertices).max() > 1.0            # it did deform
    assert np.median(np.abs(l1 / l0 - 1)) < 0.2


def test_arc_length_pairs_on_a_line():
    c3 = np.c_[np.linspace(0, 10, 7), np.zeros(7), np.zeros(7)]
    c2 = np.c_[np.linspace(100, 0, 50), np.full(50, 5.0)]   # reversed direction
    proj = np.c_[np.linspace(0, 100, 7), np.full(7, 5.0)]
    p3, p2 = data.arc_length_pairs(c3, c2, n=11, projected3d=proj)
    assert np.allclose(p3[:, 0], np.linspace(0, 10, 11))
    assert np.allclose(p2[:, 0], np.linspace(0, 100, 11))


def test_make_sample_ground_truth_is_consistent(box):
    """The matched point of every grid cell is visible and near the cell's surface."""
    tm = data.train_mesh(box, view_axis=np.array([0, 0, 1.0]))
    s = data.make_sample(tm, np.random.default_rng(1), keep_meshes=True, instruments=False)
    assert s.image.shape == (3, data.NET_H, data.NET_W)
    assert s.points.shape == (data.N_POINTS, 6)
    m = s.pix_match[s.pix_match >= 0]
    assert len(m) > 5
    assert s.overlap[m].mean() > 0.8            # matched points are mostly visible
    assert 0 < s.overlap.mean() < 1


# ----------------------------------------------------------------------------- model files
def test_model_file_round_trip_and_refusals(tmp_path, tiny_net):
    p = modelfile.save_model(tmp_path / "m.pt", tiny_net, "stage1",
                             {"data": "synthetic", "command": "test", "seed": 3})
    net2, rec = modelfile.load_model(p)
    assert rec["seed"] == 3 and rec["command"] == "test"
    for a, b in zip(tiny_net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(FileReadError, match="^model: .*corrupt"):
        modelfile.load_model(bad)
    d = torch.load(p, weights_only=True)
    d["version"] = 99
    torch.save(d, tmp_path / "v99.pt")
    with pytest.raises(FileReadError, match="version 99"):
        modelfile.load_model(tmp_path / "v99.pt")
    d["version"], d["kind"] = modelfile.VERSION, "stage7"
    torch.save(d, tmp_path / "k.pt")
    with pytest.raises(FileReadError, match="stage7"):
        modelfile.load_model(tmp_path / "k.pt")


# ----------------------------------------------------------------------------- bad inputs
def _frame(cam, value=1):
    img = np.zeros((cam.height, cam.width, 3), np.uint8)
    mask = np.zeros((cam.height, cam.width), np.uint8)
    mask[60:180, 80:240] = value
    img[mask > 0] = (150, 60, 40)
    return img, mask


def test_mesh_in_metres_is_refused_before_the_model(box):
    cam = _camera()
    img, mask = _frame(cam)
    metres = MeshData(box.vertices / 1000.0, box.faces)
    with pytest.raises(GeometryError, match="^mesh: .*metres"):
        infer.register_learned(metres, cam, img, mask, model="/nonexistent/model.pt")
    huge = MeshData(box.vertices * 1000.0, box.faces)
    with pytest.raises(GeometryError, match="^mesh: "):
        infer.register_learned(huge, cam, img, mask, model="/nonexistent/model.pt")


def test_mask_size_and_empty_mask(box):
    cam = _camera()
    img, mask = _frame(cam)
    with pytest.raises(InputError, match="^mask: size"):
        infer.register_learned(box, cam, img, mask[:-1], model="/nonexistent/model.pt")
    with pytest.raises(InputError, match="^mask: the liver mask is empty"):
        infer.register_learned(box, cam, img, np.zeros_like(mask), model="/nonexistent/model.pt")


def test_no_liver_visible_gives_no_correspondences(box, tiny_net):
    """No mask and a network that sees no liver anywhere -> 'no correspondences'."""
    cam = _camera()
    img, _ = _frame(cam)
    net = lnet.StageOne(dim=16, gdim=32).eval()
    net.load_state_dict(tiny_net.state_dict())
    with torch.no_grad():
        net.pix_head.bias[0] = -1e3
    with pytest.raises(GeometryError, match="no correspondences"):
        infer.register_learned(box, cam, img, None, net=net)


def test_fewer_than_four_inliers(box):
    cam = _camera()
    corr = [{"pixel": [100.0 + i, 100.0], "vertex": i} for i in range(3)]
    with pytest.raises(GeometryError, match="fewer than 4 inlier"):
        infer.pose_from_correspondences(box, cam, corr)
    rng = np.random.default_rng(0)
    corr = [{"pixel": rng.uniform(0, 320, 2).tolist(), "vertex": int(rng.integers(len(box.vertices)))}
            for _ in range(12)]
    with pytest.raises(GeometryError, match="^correspondences: "):
        infer.pose_from_correspondences(box, cam, corr, threshold_px=0.5)


def test_pose_from_exact_correspondences(box):
    """EPnP + RANSAC recovers the pose from exact matches with 30 % outliers."""
    cam = _camera()
    T = data.look_at(np.array([30.0, -20.0, -250.0]), np.array([-0.1, 0.08, 1.0]), 0.3)
    rng = np.random.default_rng(2)
    ids = rng.choice(len(box.vertices), 40, replace=False)
    uv = cam.project(box.vertices[ids] @ T[:3, :3].T + T[:3, 3]).numpy()
    uv[:12] = rng.uniform(0, 240, (12, 2))
    corr = [{"pixel": uv[k].tolist(), "vertex": int(ids[k])} for k in range(40)]
    T_est, r = infer.pose_from_correspondences(box, cam, corr, threshold_px=3.0)
    assert np.abs(T_est[:3, :3] - T[:3, :3]).max() < 1e-3
    assert np.abs(T_est[:3, 3] - T[:3, 3]).max() < 0.1
    assert set(range(12)).isdisjoint(set(r.inliers.tolist()))


# ----------------------------------------------------------------------------- training
def test_tiny_training_lowers_the_loss(tmp_path, box):
    tm = data.train_mesh(box, view_axis=np.array([0, 0, 1.0]))
    rec_log = []
    from LiverLaparoRegLib.mesh import save_mesh  # noqa: PLC0415

    mesh_file = save_mesh(box, tmp_path / "box.ply")
    rec = train.train_stage1(tmp_path / "m.pt", steps=40, max_minutes=5, seed=0, batch=4,
                             lr=3e-3, samples=8, chunk=8, meshes=[str(mesh_file)], dim=16,
                             command="test", log=rec_log.append)
    h = np.array(rec["loss_history"])
    assert h.shape[0] == 4
    assert h[-1, 1] < 0.95 * h[0, 1]          # total loss, mean of the last 10 vs first 10 steps
    net, r2 = modelfile.load_model(tmp_path / "m.pt")
    assert r2["steps"] == 40 and "SYNTHETIC" in r2["data"]
    del tm


_DDP_WORKER = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
from LiverLaparoRegLib.learned import train
rec = train.train_stage1(sys.argv[1], steps=4, max_minutes=5, seed=0, batch=2, samples=4,
                         chunk=4, meshes=[sys.argv[2]], dim=16, device="cpu", log=lambda m: None)
with open(sys.argv[1] + f".rank{os.environ['RANK']}.json", "w") as fh:
    json.dump({"checksum": rec["param_checksum"], "world": rec["world_size"]}, fh)
"""


def test_ddp_two_process_gloo_replicas_equal(tmp_path, box):
    from LiverLaparoRegLib.mesh import save_mesh  # noqa: PLC0415

    mesh_file = save_mesh(box, tmp_path / "box.ply")
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    out = tmp_path / "ddp.pt"
    # render the shared cache first (rank 0 would do it; doing it here keeps the
    # two processes' start-up short)
    train.render_cache(Path(str(out) + ".data"), 4, 0, train.training_meshes([str(mesh_file)]),
                       chunk=4, log=lambda m: None)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29517", str(worker), str(out), str(mesh_file)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r0 = json.loads(Path(str(out) + ".rank0.json").read_text())
    r1 = json.loads(Path(str(out) + ".rank1.json").read_text())
    assert r0["world"] == 2 and r1["world"] == 2
    assert r0["checksum"] == r1["checksum"]
    # and training moved the weights (the replicas are not equal by being untouched)
    torch.manual_seed(0)
    fresh = lnet.StageOne(dim=16)
    fresh_sum = float(sum(p.detach().double().abs().sum() for p in fresh.parameters()))
    assert r0["checksum"] != fresh_sum


# ----------------------------------------------------------------------------- CLI
def _cli_inputs(tmp_path, mesh):
    import cv2  # noqa: PLC0415

    from LiverLaparoRegLib.mesh import save_mesh  # noqa: PLC0415

    cam = _camera()
    img, mask = _frame(cam, 255)
    cv2.imwrite(str(tmp_path / "f.png"), img)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    np.savetxt(tmp_path / "K.txt", cam.K)
    return save_mesh(mesh, tmp_path / "mesh.ply")


def test_cli_learned_bad_inputs_exit_2(tmp_path, box, capsys):
    from SurgicalReg2D3DLib.cli import main  # noqa: PLC0415

    metres = _cli_inputs(tmp_path, MeshData(box.vertices / 1000.0, box.faces))
    base = ["laparo", "register", "--mesh", str(metres), "--image", str(tmp_path / "f.png"),
            "--camera", str(tmp_path / "K.txt"), "--mask", str(tmp_path / "m.png"),
            "--method", "learned", "--out", str(tmp_path / "o.json")]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mesh:" in err[0] and "metres" in err[0]
    good = _cli_inputs(tmp_path, box)
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a model")
    base[3] = str(good)
    assert main(base + ["--model", str(bad_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("surgreg: error: model:")
    assert main(base + ["--init", str(tmp_path / "x.json")]) == 2


def test_cli_learned_output_contract(tmp_path, box, tiny_net, capsys):
    """A (tiny, untrained) model through the CLI: either a pose with correspondences and a
    quality, or a clean 'correspondences' error -- never a traceback."""
    from SurgicalReg2D3DLib.cli import main  # noqa: PLC0415

    good = _cli_inputs(tmp_path, box)
    model = modelfile.save_model(tmp_path / "tiny.pt", tiny_net, "stage1",
                                 {"data": "synthetic", "command": "test", "seed": 0})
    rc = main(["laparo", "register", "--mesh", str(good), "--image", str(tmp_path / "f.png"),
               "--camera", str(tmp_path / "K.txt"), "--mask", str(tmp_path / "m.png"),
               "--method", "learned", "--model", str(model), "--out", str(tmp_path / "o.json")])
    if rc == 0:
        out = json.loads((tmp_path / "o.json").read_text())
        assert np.asarray(out["model_to_camera"]).shape == (4, 4)
        assert out["quality"]["verdict"] in ("ok", "doubtful", "failed")
        c = out["correspondences"][0]
        assert set(c) >= {"pixel", "vertex", "class", "confidence", "inlier"}
    else:
        assert rc == 2
        assert "correspondences" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Stage II
def test_stage2_reduces_the_error_to_a_bent_shape(box):
    """Matched pairs of a bent box at the true rigid pose: Stage II moves the vertices
    towards the bent shape (3D error goes down), and the moved structures follow."""
    from LiverLaparoRegLib.learned.stage2 import deform_stage2  # noqa: PLC0415

    cam = _camera(640, 480)
    T = data.look_at(np.array([0.0, -40.0, -320.0]), np.array([0.0, 0.12, 1.0]), 0.0)
    rng = np.random.default_rng(5)
    vb = shapes.bend(box.vertices, rng, max_curvature=1 / 150.0)
    pc = vb @ T[:3, :3].T + T[:3, 3]
    uv = cam.project(pc).numpy()
    front = np.nonzero(pc[:, 2] < np.median(pc[:, 2]))[0]
    pairs = [{"vertex": int(i), "pixel": uv[i].tolist()} for i in front[::3]]
    d = deform_stage2(box, cam, T, mask=None, pairs=pairs, iterations=60)
    before = np.linalg.norm(box.vertices - vb, axis=1).mean()
    after = np.linalg.norm(d.vertices - vb, axis=1).mean()
    assert after < 0.9 * before
    assert np.allclose(d.apply(box.vertices), d.vertices)


# ----------------------------------------------------------------------------- GUI helpers
def test_markups_round_trip_edit_and_pose(ctx, box):
    """Correspondences -> markups; the user deletes a wrong one and drags one; the pose
    from the edited list matches the truth."""
    from LiverLaparoRegLib.learned import nodes as lnodes  # noqa: PLC0415

    cam = _camera()
    T = data.look_at(np.array([30.0, -20.0, -250.0]), np.array([-0.1, 0.08, 1.0]), 0.3)
    rng = np.random.default_rng(4)
    ids = rng.choice(len(box.vertices), 12, replace=False)
    uv = cam.project(box.vertices[ids] @ T[:3, :3].T + T[:3, 3]).numpy()
    corr = [{"pixel": uv[k].tolist(), "vertex": int(ids[k]), "class": "ridge",
             "confidence": 0.9} for k in range(12)]
    corr[0]["pixel"] = [5.0, 5.0]                       # a wrong match
    true_p1 = list(corr[1]["pixel"])
    corr[1]["pixel"] = [true_p1[0] + 40, true_p1[1]]    # a misplaced one
    M = np.diag([-1.0, -1.0, 1.0, 1.0])
    M[:3, 3] = [10.0, 20.0, 0.0]
    node = lnodes.correspondences_to_markups(ctx, corr, M)
    assert node.GetNumberOfControlPoints() == 12
    node.RemoveNthControlPoint(0)                       # user deletes the wrong match
    ras = (M @ np.r_[true_p1, 0.0, 1.0])[:3]
    node.SetNthControlPointPosition(0, *ras)            # and drags the misplaced one
    back = lnodes.correspondences_from_markups(node, M)
    assert [c["vertex"] for c in back] == [c["vertex"] for c in corr[1:]]
    assert np.allclose(back[0]["pixel"], true_p1)
    T_est, r = lnodes.register_from_markups(box, cam, node, M)
    assert len(r.inliers) == 11
    assert np.abs(T_est[:3, :3] - T[:3, :3]).max() < 1e-4


def test_mask_from_segmentation(ctx):
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415
    from LiverLaparoRegLib.learned import nodes as lnodes  # noqa: PLC0415

    frame = nodes.image2d_to_node(ctx, np.zeros((40, 60), np.uint8), "frame")
    lab = np.zeros((1, 40, 60), np.int32)
    lab[0, 10:30, 20:50] = 1
    lab_node = nodes.volume_to_node(ctx, lab, np.eye(4), "painted",
                                    node_class="vtkMRMLLabelMapVolumeNode")
    seg = nodes.labelmap_to_segmentation(ctx, lab_node, "liver seg")
    mask = lnodes.mask_from_segmentation(ctx, seg, frame)
    assert mask.shape == (40, 60)
    assert np.array_equal(mask, lab[0] != 0)
    empty = ctx.add_node("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(InputError, match="^mask segmentation"):
        lnodes.mask_from_segmentation(ctx, empty, frame)


def test_bundled_model_is_listed_and_loads():
    """The bundled Stage I model: in the hub registry, fingerprint checked, < 20 MB, with
    its training record (command, seed, synthetic data, SciKit-Surgery liver held out)."""
    from SurgicalReg2D3DLib import models  # noqa: PLC0415

    names = {m.name: m for m in models.list_models("LiverLaparoReg")}
    assert modelfile.BUNDLED_STAGE1 in names
    info = names[modelfile.BUNDLED_STAGE1]
    assert info.size_bytes < 20 * 1024 * 1024
    assert info.created_by_command.startswith("surgreg laparo train --stage 1")
    net, rec = modelfile.load_model()
    assert rec["seed"] == info.seed
    assert "SYNTHETIC" in rec["data"] and "p2ilf" in rec["meshes"]


def test_node_buttons_predict_edit_register(ctx, box, tiny_net, monkeypatch):
    """The module's two buttons on real MRML nodes: "Predict correspondences" shows the
    learned matches as a point list on the frame; "Register from the edited
    correspondences" writes the pose of what the user left. The network is replaced by
    exact matches of a known pose (the learned part has its own tests); a frame where the
    network finds nothing raises its error and creates no point list."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415
    from LiverLaparoRegLib.learned import nodes as lnodes  # noqa: PLC0415

    cam = _camera()
    T = data.look_at(np.array([30.0, -20.0, -250.0]), np.array([-0.1, 0.08, 1.0]), 0.3)
    model_node = nodes.model_to_node(ctx, box.vertices, box.faces, "liver", frame="LPS")
    frame = nodes.image2d_to_node(ctx, np.zeros((cam.height, cam.width), np.uint8), "frame")
    ids = np.random.default_rng(5).choice(len(box.vertices), 12, replace=False)
    uv = cam.project(box.vertices[ids] @ T[:3, :3].T + T[:3, 3]).numpy()
    corr = [{"pixel": uv[k].tolist(), "vertex": int(ids[k]), "class": "ridge",
             "confidence": 0.8} for k in range(12)]
    corr[0]["pixel"] = [3.0, 3.0]  # one wrong match, for the user to delete

    options = []

    def fake(mesh, camera, image=None, mask=None, model=None, progress=None, cancel=None,
             **kw):
        assert np.allclose(mesh.vertices, box.vertices)  # the node's mesh, model frame
        options.append(kw)
        return infer.LearnedResult(model_to_camera=T, method="learned", correspondences=corr)

    def n_lists():
        return ctx.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode")

    monkeypatch.setattr(infer, "register_learned", fake)
    node, res = lnodes.predict_correspondence_nodes(ctx, model_node, frame, cam)
    assert node.GetNumberOfControlPoints() == 12 and res.correspondences is corr
    assert n_lists() == 1 and options == [{}]
    # "Search every viewing direction": the view prior reaches the learned method
    lnodes.predict_correspondence_nodes(ctx, model_node, frame, cam, markups_node=node,
                                        learned_options={"view_axis": None})
    assert options[-1] == {"view_axis": None} and n_lists() == 1
    from LiverLaparoRegLib import logic  # noqa: PLC0415
    mask = np.zeros((cam.height, cam.width), bool)
    mask[60:180, 80:240] = True
    r = logic.register(box, cam, image=np.zeros((cam.height, cam.width), np.uint8), mask=mask,
                       method="learned", learned_options={"view_axis": None, "cone_deg": 30})
    assert options[-1] == {"view_axis": None, "cone_deg": 30} and r.method == "learned"
    node.RemoveNthControlPoint(0)
    T_est, r, out = lnodes.register_nodes_from_markups(ctx, model_node, frame, cam, node)
    assert len(r.inliers) == 11
    np.testing.assert_allclose(nodes.matrix_from_transform_node(out), T_est, atol=1e-9)
    assert np.abs(T_est[:3, :3] - T[:3, :3]).max() < 1e-4
    with pytest.raises(InputError, match="correspondences: predict them first"):
        lnodes.register_nodes_from_markups(ctx, model_node, frame, cam, None)

    def refuse(*a, **k):
        raise InputError("correspondences: no liver found in the frame")

    monkeypatch.setattr(infer, "register_learned", refuse)
    with pytest.raises(InputError, match="no liver found"):
        lnodes.predict_correspondence_nodes(ctx, model_node, frame, cam)
    assert n_lists() == 1
