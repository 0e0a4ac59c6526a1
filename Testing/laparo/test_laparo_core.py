"""LiverLaparoReg core: P2ILF formats, camera loading, rasteriser, metrics, mesh checks.

References are independent: the json module, OpenCV projectPoints, matplotlib point in
polygon tests, scipy's directed_hausdorff, brute-force numpy distances.
"""

import json

import numpy as np
import pytest
import torch

from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError
from LiverLaparoRegLib import metrics, p2ilf, raster
from LiverLaparoRegLib.camera import check_image_size, load_camera
from LiverLaparoRegLib.mesh import MeshData, load_mesh, save_mesh, validate_mesh


@pytest.fixture(scope="module")
def p2ilf_dir(sample_data):
    return sample_data / "p2ilf"


# ---------------------------------------------------------------- P2ILF contour files
def test_read_write_contours_roundtrip(p2ilf_dir, tmp_path):
    gt = p2ilf_dir / "evaluation_GT"
    raw2 = json.loads((gt / "patient2_1_2D-contours.json").read_text())
    raw3 = json.loads((gt / "patient2_1_3D-contours.json").read_text())
    mesh = load_mesh(gt / "3d-liver-model.obj")
    c2 = p2ilf.read_contours_2d(gt / "patient2_1_2D-contours.json")
    c3 = p2ilf.read_contours_3d(gt / "patient2_1_3D-contours.json", len(mesh.vertices))
    assert [c.label for c in c2] == [c["contourType"] for c in raw2["contour"]]
    assert [c.label for c in c3] == ["Ridge", "Ridge", "Ligament"]
    for c, r in zip(c2, raw2["contour"]):
        np.testing.assert_array_equal(c.points[:, 0], r["imagePoints"]["x"])
        np.testing.assert_array_equal(c.points[:, 1], r["imagePoints"]["y"])
    for c, r in zip(c3, raw3["contour"]):
        np.testing.assert_array_equal(c.vertices, r["modelPoints"]["vertices"])
    p2ilf.write_contours_2d(c2, tmp_path / "c2.json")
    p2ilf.write_contours_3d(c3, tmp_path / "c3.json")
    assert json.loads((tmp_path / "c2.json").read_text())["numOfContours"] == len(c2)
    back2 = p2ilf.read_contours_2d(tmp_path / "c2.json")
    back3 = p2ilf.read_contours_3d(tmp_path / "c3.json", len(mesh.vertices))
    for a, b in zip(c2, back2):
        assert a.label == b.label
        np.testing.assert_array_equal(a.points, b.points)
    for a, b in zip(c3, back3):
        np.testing.assert_array_equal(a.vertices, b.vertices)


def test_contour_bad_inputs(tmp_path):
    ok = np.arange(10.0).reshape(5, 2)
    with pytest.raises(InputError, match=r"^2D contours: contour 0 \(Ridge\) has 3 points; "
                                         r"at least 4 are needed"):
        p2ilf.validate_contours_2d([p2ilf.Contour2D("Ridge", ok[:3])])
    with pytest.raises(InputError, match=r"^2D contours: contour 0: unknown contour label "
                                         r"'Vessel'"):
        p2ilf.validate_contours_2d([p2ilf.Contour2D("Vessel", ok)])
    with pytest.raises(InputError, match=r"^3D contours: contour 0 \(Ligament\): vertex index "
                                         r"out of range \[0, 9\]"):
        p2ilf.validate_contours_3d([p2ilf.Contour3D("ligament", np.array([1, 2, 3, 10]))], 10)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FileReadError, match=r"^2D contours: cannot read JSON"):
        p2ilf.read_contours_2d(tmp_path / "bad.json")


# ---------------------------------------------------------------- camera
def test_camera_p2ilf_projection_matches_opencv(p2ilf_dir):
    import cv2

    cam = load_camera(p2ilf_dir / "cameraparams" / "acquisition-camera-metadata.json")
    assert (cam.width, cam.height) == (1920, 1080)
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-60, 60, (50, 2)), rng.uniform(100, 200, 50)]
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.K, cam.dist_coeffs)
    uv, _ = raster.project_vertices(torch.as_tensor(pts), torch.eye(4, dtype=torch.float64), cam)
    np.testing.assert_allclose(uv[0].numpy(), ref.reshape(-1, 2), atol=1e-6)


def test_camera_bad_inputs(sample_data, tmp_path):
    txt = sample_data / "liver_sksurgery" / "liver" / "calib.left.intrinsics.txt"
    with pytest.raises(GeometryError, match=r"^camera: the intrinsics text file .* has no "
                                            r"image size"):
        load_camera(txt)
    with pytest.raises(FileReadError, match=r"^camera: file not found"):
        load_camera(tmp_path / "nope.json")
    bad = tmp_path / "bad.txt"
    bad.write_text("-5 0 10\n0 5 10\n0 0 1\n")
    with pytest.raises(GeometryError, match=r"^camera: invalid intrinsics"):
        load_camera(bad, 64, 48)
    cam = load_camera(txt, 1920, 540)
    check_image_size((540, 1920, 3), cam, "frame")
    with pytest.raises(InputError, match=r"^frame: image size 1920x1080 does not match the "
                                         r"camera size 1920x540"):
        check_image_size((1080, 1920, 3), cam, "frame")


# ---------------------------------------------------------------- rasteriser
def _small_scene():
    from SurgicalReg2D3DLib.cameras import PinholeCamera

    cam = PinholeCamera(fx=60.0, fy=55.0, cx=31.5, cy=23.5, width=64, height=48,
                        dist=(-0.1, 0.02, 0.0, 0.0, 0.0))
    # an octahedron (8 faces) seen off-axis
    v = np.array([[30, 0, 0], [-30, 0, 0], [0, 25, 0], [0, -25, 0], [0, 0, 20], [0, 0, -20.0]])
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                  [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    T = np.eye(4)
    c, s = np.cos(0.4), np.sin(0.4)
    T[:3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    T[:3, 3] = [5, -3, 120]
    return cam, v, f, T


def test_hard_mask_matches_point_in_triangle_reference():
    from matplotlib.path import Path

    cam, v, f, T = _small_scene()
    mask = raster.render_mask(v, f, T, cam)[0].numpy()
    uv = raster.project_vertices(torch.as_tensor(v), torch.as_tensor(T), cam)[0][0].numpy()
    jj, ii = np.mgrid[0:cam.height, 0:cam.width]
    centres = np.c_[ii.ravel(), jj.ravel()].astype(float)
    ref = np.zeros(len(centres), bool)
    for tri in f:
        ref |= Path(uv[tri]).contains_points(centres, radius=1e-9)
        ref |= Path(uv[tri[::-1]]).contains_points(centres, radius=1e-9)
    ref = ref.reshape(cam.height, cam.width)
    assert 100 < mask.sum() < mask.size - 100
    # only pixel centres lying (numerically) on an edge may differ
    assert (mask != ref).sum() <= 2


def test_soft_silhouette_thresholds_to_hard_mask_and_has_gradients():
    cam, v, f, T = _small_scene()
    hard = raster.render_mask(v, f, T, cam)[0]
    vt = torch.as_tensor(v, dtype=torch.float64).requires_grad_(True)
    soft = raster.render_mask(vt, f, T, cam, soft=True, sigma=0.5)[0]
    sd = soft.detach()
    assert ((sd > 0.5) == hard).float().mean() > 0.995
    assert float(sd[hard].min()) >= 0.5 and float(sd[~hard].max()) <= 0.5
    soft.sum().backward()
    g = vt.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # moving the object away shrinks its silhouette: d(area)/dz < 0 summed over vertices
    gz = (g @ torch.as_tensor(T[:3, :3], dtype=torch.float64).T)[:, 2].sum()
    assert gz < 0


# ---------------------------------------------------------------- metrics
def test_hausdorff_and_chamfer_against_references():
    from scipy.spatial.distance import directed_hausdorff

    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 100, (40, 2)), rng.uniform(0, 100, (55, 2))
    ref = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert metrics.hausdorff_px(a, b) == pytest.approx(ref, abs=1e-9)
    a3, b3 = rng.normal(size=(30, 3)), rng.normal(size=(20, 3))
    d = np.linalg.norm(a3[:, None] - b3[None], axis=2)
    assert metrics.chamfer_mm(a3, b3) == pytest.approx(0.5 * (d.min(1).mean() + d.min(0).mean()))
    with pytest.raises(InputError, match=r"^points b: contains NaN"):
        metrics.hausdorff_px(a, np.full((3, 2), np.nan))


def test_contour_prf_analytic():
    line = np.c_[np.arange(0, 101.0), np.zeros(101)]
    shifted = line + [0, 5.0]
    assert metrics.contour_prf(shifted, line, 4.0) == {"precision": 0.0, "recall": 0.0, "dice": 0.0}
    assert metrics.contour_prf(shifted, line, 6.0)["dice"] == 1.0
    half = line[:51]                                    # predicted covers half the reference
    r = metrics.contour_prf(half, line, 0.5)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(51 / 101)


def test_reprojection_errors_zero_at_true_pose_and_known_under_shift(sample_data):
    from SurgicalReg2D3DLib.cameras import PinholeCamera

    cam = PinholeCamera(fx=500.0, fy=500.0, cx=320.0, cy=240.0, width=640, height=480)
    v = np.c_[np.linspace(-50, 50, 11), np.zeros(11), np.zeros(11)]
    c3 = [p2ilf.Contour3D("Ridge", np.arange(11))]
    T = np.eye(4)
    T[2, 3] = 500.0
    uv = cam.project(v @ T[:3, :3].T + T[:3, 3]).numpy()
    c2 = [p2ilf.Contour2D("Ridge", uv)]
    e = metrics.reprojection_errors(c2, c3, v, T, cam)
    assert e["Ridge"]["hausdorff_px"] == pytest.approx(0.0, abs=1e-9)
    T2 = T.copy()
    T2[1, 3] = 10.0                                     # 10 mm at 500 mm, f = 500 -> 10 px
    e = metrics.reprojection_errors(c2, c3, v, T2, cam)
    assert e["Ridge"]["hausdorff_px"] == pytest.approx(10.0, abs=1e-9)
    assert e["all"]["hausdorff_px"] == pytest.approx(10.0, abs=1e-9)


# ---------------------------------------------------------------- mesh checks
def test_mesh_bad_inputs_and_roundtrip(sample_data, tmp_path):
    with pytest.raises(InputError, match=r"^mesh: mesh has no triangle faces"):
        validate_mesh(MeshData(np.eye(3), np.zeros((0, 3), int)))
    with pytest.raises(GeometryError, match=r"^mesh: degenerate scale, bounding box extent "
                                            r"0.002 mm"):
        validate_mesh(MeshData(np.eye(3) * 0.002, np.array([[0, 1, 2]])))
    m = load_mesh(sample_data / "liver_sksurgery" / "liver" / "liver_sub.ply")
    assert m.vertices.shape == (1252, 3)
    save_mesh(m, tmp_path / "m.vtk")
    back = load_mesh(tmp_path / "m.vtk")
    np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-4)
    np.testing.assert_array_equal(back.faces, m.faces)


def test_paired_reprojection_errors_follow_the_challenge_pairing():
    """Hand-made case: three straight 3D curves (horizontal lines in the image) and their
    exact projections, listed as in the P2ILF files (2D: Ridge, Silhouette, Ridge,
    Ligament; 3D: Ridge, Ridge, Ligament). Shifting the second 2D ridge by 7 px across
    its line gives exactly 7 px for that pair only; swapping the ridge order shows the
    pairing is by file order, not by nearest curve."""
    from SurgicalReg2D3DLib.cameras import PinholeCamera
    from LiverLaparoRegLib.metrics import paired_reprojection_errors
    from LiverLaparoRegLib.p2ilf import Contour2D, Contour3D

    cam = PinholeCamera(fx=100.0, fy=100.0, cx=50.0, cy=50.0, width=100, height=100)
    x = np.linspace(-20.0, 20.0, 9)
    lines = [np.c_[x, np.full(9, y), np.full(9, 100.0)] for y in (-20.0, 0.0, 20.0)]
    vertices = np.concatenate(lines)
    c3 = [Contour3D("Ridge", np.arange(0, 9)), Contour3D("Ridge", np.arange(9, 18)),
          Contour3D("Ligament", np.arange(18, 27))]
    uv = [cam.project(p).numpy() for p in lines]            # v = 30, 50, 70 px
    sil = Contour2D("Silhouette", np.c_[np.arange(10.0), np.zeros(10)])
    c2 = [Contour2D("Ridge", uv[0]), sil, Contour2D("Ridge", uv[1] + [0.0, 7.0]),
          Contour2D("Ligament", uv[2])]
    out = paired_reprojection_errors(c2, c3, vertices, np.eye(4), cam)
    got = [(p["label"], p["index2d"], p["index3d"], round(p["hausdorff_px"], 6))
           for p in out["pairs"]]
    assert got == [("Ridge", 0, 0, 0.0), ("Ridge", 2, 1, 7.0), ("Ligament", 3, 2, 0.0)]
    assert out["mean_hausdorff_px"] == pytest.approx(7.0 / 3.0)
    swapped = [c2[2], sil, c2[0], c2[3]]                    # ridge curves in the other order
    h = [p["hausdorff_px"] for p in paired_reprojection_errors(swapped, c3, vertices,
                                                               np.eye(4), cam)["pairs"]]
    assert h[0] == pytest.approx(27.0) and h[1] == pytest.approx(20.0)


def test_without_distortion_keeps_intrinsics_and_drops_coefficients():
    from SurgicalReg2D3DLib.cameras import PinholeCamera
    from LiverLaparoRegLib.camera import without_distortion

    cam = PinholeCamera(fx=900.0, fy=880.0, cx=300.0, cy=200.0, width=640, height=480,
                        dist=(-0.2, 0.1, 0.0, 0.0, 0.0))
    k = without_distortion(cam)
    np.testing.assert_array_equal(k.K, cam.K)
    assert (k.width, k.height) == (640, 480) and not k.has_distortion
    p = np.array([[30.0, -20.0, 100.0]])
    np.testing.assert_allclose(k.project(p).numpy(), [[900 * 0.3 + 300, 880 * -0.2 + 200]])


def test_fold_radius_of_the_radial_distortion():
    """r (1 + k1 r^2) stops increasing at r = sqrt(-1 / (3 k1)); no fold for mild
    coefficients; the shipped P2ILF camera folds at r ~ 1.06, inside its 1920 x 1080
    frame (its right edge is at r ~ 1.09)."""
    from LiverLaparoRegLib.pnp import fold_radius

    assert fold_radius((-0.3, 0.0, 0.0, 0.0)) == pytest.approx(np.sqrt(1 / 0.9), abs=2e-3)
    assert fold_radius((-0.2, 0.1, 0.0, 0.0, 0.0)) == float("inf")
    assert fold_radius(None) == float("inf")
    k1, k2, k3 = -2.3184898303739043e-01, 3.4051349187505525e-01, -2.3860036358921605e-01
    r = fold_radius((k1, k2, 0.0, 0.0, k3))
    slope = lambda x: 1 + 3 * k1 * x ** 2 + 5 * k2 * x ** 4 + 7 * k3 * x ** 6  # noqa: E731
    assert slope(r - 0.002) > 0 >= slope(r) and 1.0 < r < 1.1


def test_arc_length_resampling_of_an_l_shaped_polyline():
    """Hand-computed: an L of legs 3 and 1 (length 4), 5 samples every 1.0 of arc length;
    a sub-curve from the end; a single point stays that point."""
    from LiverLaparoRegLib.metrics import ArcLengthCurve, resample_curve

    poly = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 1.0]])
    np.testing.assert_allclose(resample_curve(poly, 5),
                               [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1]], atol=1e-12)
    np.testing.assert_allclose(ArcLengthCurve(poly).sample(0.0, 0.5, 3, reverse=True),
                               [[3, 1], [3, 0], [2, 0]], atol=1e-12)
    np.testing.assert_allclose(resample_curve(poly[:1], 3), [[0, 0]] * 3)
