"""LiverLaparoReg on real-camera conditions (issue 19): the silhouette depth optimum, masks
rendered through lens distortion, distortion models that fold inside the frame, the P2ILF
challenge's own Task 2 score, the input contract and the non-rigid step on bending.

All images here are SYNTHETIC renders of the real shipped meshes (except the real P2ILF
annotations and camera file)."""

import json

import numpy as np
import pytest
import torch

from SurgicalReg2D3DLib.cameras import PinholeCamera, distortion_fold_check, radial_fold_radius
from SurgicalReg2D3DLib.errors import GeometryError, InputError
from LiverLaparoRegLib import metrics, nonrigid, raster, synthetic
from LiverLaparoRegLib.bench import perturb, random_pose
from LiverLaparoRegLib.camera import frame_valid_camera, load_camera
from LiverLaparoRegLib.logic import register
from LiverLaparoRegLib.mesh import decimated
from LiverLaparoRegLib.mesh import MeshData, load_mesh
from LiverLaparoRegLib.p2ilf import Contour2D, Contour3D
from LiverLaparoRegLib.silhouette import downsample_mask, soft_dice_loss

CAM_DIST = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480,
                         dist=(-0.2, 0.1, 0.0, 0.0, 0.0))
CAM_K = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480)


@pytest.fixture(scope="module")
def liver(sample_data):
    return load_mesh(sample_data / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj")


def _centre_depth_error(T_est, T_true, centre):
    return float(((T_est[:3, :3] - T_true[:3, :3]) @ centre + T_est[:3, 3] - T_true[:3, 3])[2])


# ------------------------------------------------------------------ 1. depth bias
@pytest.mark.parametrize("cam", [CAM_K, CAM_DIST], ids=["K only", "distorted"])
def test_soft_dice_optimum_along_depth_is_at_the_true_depth(liver, cam):
    """Loss of the rendered (decimated, 128 px) soft silhouette against the area-averaged
    full-resolution mask, scanned along the camera z axis: the parabola through the
    minimum lies within 1 mm of the true depth (the old band renderer put it ~2 mm
    too far at this setting, and refinements ended 6 mm too far on average)."""
    T = random_pose(liver.vertices, np.random.default_rng(1))
    target = downsample_mask(raster.render_mask(liver.vertices, liver.faces, T, cam)[0],
                             96, 128)
    low = cam.scaled(cam.width / 128)
    coarse = decimated(liver, 600)
    v = torch.as_tensor(coarse.vertices, dtype=torch.float32)
    f = torch.as_tensor(coarse.faces)
    dz = np.arange(-4.0, 4.01, 1.0)
    losses = []
    for shift in dz:
        S = np.eye(4)
        S[2, 3] = shift
        uv, z = raster.project_vertices(v, torch.as_tensor(S @ T, dtype=torch.float32), low)
        s = raster.soft_silhouette_band(uv, z, f, low.height, low.width, sigma=0.7)[0]
        losses.append(float(soft_dice_loss(s, target)))
    a, b, _ = np.polyfit(dz, losses, 2)
    assert a > 0
    assert abs(-b / (2 * a)) < 1.0
    # the soft silhouette's total equals the hard area (no inflated outline)
    uv, z = raster.project_vertices(v, torch.as_tensor(T, dtype=torch.float32), low)
    s = raster.soft_silhouette_band(uv, z, f, low.height, low.width, sigma=0.7)[0]
    hard = raster.hard_mask(uv, z, f, low.height, low.width)[0]
    assert float(s.sum()) == pytest.approx(float(hard.sum()), rel=0.01)


@pytest.mark.parametrize("cam", [CAM_K, CAM_DIST], ids=["K only", "distorted"])
def test_silhouette_refinement_converges_in_depth(liver, cam):
    """Mask-only refinement from a 12 deg / 12 mm start: liver centre < 3 mm, depth error
    < 2.5 mm (previously +5 to +16 mm, always too far), rotation better than half the start
    (a single case; the benchmark's medians over poses are below 2 deg)."""
    rng = np.random.default_rng(5)
    T = random_pose(liver.vertices, rng)
    mask = raster.render_mask(liver.vertices, liver.faces, T, cam)[0].numpy()
    T0 = perturb(T, liver.vertices, 12.0, 12.0, rng)
    r = register(liver, cam, mask=mask, init=T0, method="silhouette", ground_truth=T)
    assert r.metrics["rotation_deg"] < 6.0
    assert r.metrics["centroid_error_mm"] < 3.0
    assert abs(_centre_depth_error(r.model_to_camera, T, liver.vertices.mean(0))) < 2.5


def test_mask_rendered_through_distortion_matches_undistorted_reference(liver):
    """Render with the distorted camera vs an independent reference: an ideal (K only)
    render at 2x resolution sampled at OpenCV's undistortion of every pixel centre."""
    import cv2

    cam = PinholeCamera(fx=400.0, fy=400.0, cx=159.5, cy=119.5, width=320, height=240,
                        dist=(-0.3, 0.12, 0.001, -0.002, 0.0))
    T = random_pose(liver.vertices, np.random.default_rng(2), 300.0)
    ours = raster.render_mask(liver.vertices, liver.faces, T, cam)[0].numpy()
    big = PinholeCamera(fx=800.0, fy=800.0, cx=639.5, cy=479.5, width=1280, height=960)
    ideal = raster.render_mask(liver.vertices, liver.faces, T, big)[0].numpy()
    vv, uu = np.mgrid[0:240, 0:320].astype(np.float64)
    pts = np.stack([uu.ravel(), vv.ravel()], 1)[:, None, :]
    xy = cv2.undistortPointsIter(pts, cam.K, cam.dist_coeffs, np.eye(3), np.eye(3),
                                 (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)) \
        if hasattr(cv2, "undistortPointsIter") else \
        cv2.undistortPoints(pts, cam.K, cam.dist_coeffs, None, np.eye(3), np.eye(3),
                            (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12))
    xy = xy.reshape(-1, 2)
    ub = np.clip(np.round(xy[:, 0] * 800.0 + 639.5).astype(int), 0, 1279)
    vb = np.clip(np.round(xy[:, 1] * 800.0 + 479.5).astype(int), 0, 959)
    ref = ideal[vb, ub].reshape(240, 320)
    assert ref.sum() > 2000
    differ = ours != ref
    # only pixels on the outline may differ (straight edges between projected vertices)
    assert differ.sum() < 0.01 * ref.sum()
    edge = cv2.dilate(cv2.morphologyEx(ref.astype(np.uint8), cv2.MORPH_GRADIENT,
                                       np.ones((3, 3), np.uint8)), np.ones((3, 3), np.uint8))
    assert not np.any(differ & (edge == 0))


# ------------------------------------------------------------------ 2. lens fold
def test_p2ilf_distortion_folds_inside_the_frame_and_k_only_is_used(sample_data):
    path = sample_data / "p2ilf" / "cameraparams" / "acquisition-camera-metadata.json"
    kept = load_camera(path, distortion="keep")
    chk = distortion_fold_check(kept)
    # r (1 + k1 r^2 + k2 r^4 + k3 r^6) stops growing at r ~ 1.06 (839 px reach), while
    # the frame corners lie at normalised radius up to ~1.23
    assert chk["fold_radius"] == pytest.approx(1.06, abs=0.005)
    assert chk["max_reach_px"] == pytest.approx(839.0, abs=2.0)
    assert chk["corner_radius"] == pytest.approx(1.233, abs=0.002)
    assert not chk["valid"]
    notes = []
    cam = load_camera(path, notes=notes)                       # default: auto
    assert not cam.has_distortion
    assert (cam.fx, cam.cx, cam.cy, cam.width) == (kept.fx, kept.cx, kept.cy, kept.width)
    assert len(notes) == 1 and notes[0].startswith("camera: the lens distortion folds over")
    # a model valid over its frame is kept as is; a single k1 folds where 1 + 3 k1 r^2 = 0
    assert frame_valid_camera(CAM_DIST) == (CAM_DIST, None)
    assert radial_fold_radius((-0.3, 0.0, 0.0, 0.0)) == pytest.approx(np.sqrt(1 / 0.9), abs=1e-3)
    assert distortion_fold_check(CAM_K)["valid"]
    with pytest.raises(InputError, match=r"^camera distortion: expected one of"):
        frame_valid_camera(CAM_K, "maybe")


# ------------------------------------------------------------------ 3. challenge RPE
def _challenge_case():
    """Hand-made case, K = [[100, 0, 50], [0, 100, 50]], contours posed by a rigid T.

    Projected (before truncation) Ridge: (10.4, 10.6) (30.3, 10.5) (30.5, 30.7)
    (-5.5, 30.4) -> int (10, 10) (30, 10) (30, 30) (-5, 30) [towards zero, not -6];
    2D Ridge (10, 12) (30, 12) (30, 40) (0, 40). Vertices of A to segments of B: 2, 2, 0
    and |(-5, 30) - (0, 40)| = sqrt(125); vertices of B to segments of A: 2, 0, 10, 10:
    Hausdorff sqrt(125) = 11.1803.
    Ligament: int (50, 50) (60, 50) (70, 50) (80, 50) against (50, 53) (60, 53) (70, 53)
    (80, 57): A -> B max 6.4993 (to the last segment), B -> A max 7 ((80, 57) to (80, 50)):
    Hausdorff 7."""
    from scipy.spatial.transform import Rotation

    cam = PinholeCamera(fx=100.0, fy=100.0, cx=50.0, cy=50.0, width=100, height=100,
                        dist=(-0.3, 0.1, 0.0, 0.0, 0.0))     # ignored by the challenge
    uv = np.array([[10.4, 10.6], [30.3, 10.5], [30.5, 30.7], [-5.5, 30.4],
                   [50.5, 50.5], [60.5, 50.5], [70.5, 50.5], [80.5, 50.5]])
    z = np.linspace(2.0, 3.0, len(uv))
    pc = np.c_[(uv - 50.0) / 100.0 * z[:, None], z]
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", (10, -20, 30), degrees=True).as_matrix()
    T[:3, 3] = [5.0, -3.0, 40.0]
    verts = (pc - T[:3, 3]) @ T[:3, :3]                       # model frame
    c3 = [Contour3D("Ridge", np.arange(4)), Contour3D("Ligament", np.arange(4, 8))]
    c2 = [Contour2D("Ridge", np.array([[10, 12], [30, 12], [30, 40], [0, 40.0]])),
          Contour2D("Silhouette", np.array([[0, 0], [9, 0], [9, 9], [0, 9.0]])),
          Contour2D("Ligament", np.array([[50, 53], [60, 53], [70, 53], [80, 57.0]]))]
    return cam, verts, T, c2, c3


def test_challenge_rpe_hand_computed():
    cam, verts, T, c2, c3 = _challenge_case()
    assert metrics.challenge_pairs(c2, c3) == [(0, 0), (2, 1)]     # silhouette skipped
    r = metrics.challenge_rpe(c2, c3, verts, T, cam)
    h = [p["hausdorff_px"] for p in r["pairs"]]
    assert h[0] == pytest.approx(np.sqrt(125.0), abs=1e-9)
    assert h[1] == pytest.approx(7.0, abs=1e-9)
    assert r["rpe_px"] == pytest.approx((np.sqrt(125.0) + 7.0) / 2, abs=1e-9)
    # the challenge script appends -1 when fewer than two pairs exist (kept on purpose)
    one = metrics.challenge_rpe(c2, c3[:1], verts, T, cam)
    assert one["rpe_px"] == pytest.approx((np.sqrt(125.0) - 1.0) / 2, abs=1e-9)
    # the direction of the vertex -> segment distance matters: a plain vertex-to-vertex
    # Hausdorff would give sqrt(3^2 + 4^2 + ...) on the ligament instead of 7
    assert metrics.polyline_hausdorff([[0, 0], [10, 0]], [[5, 1], [5, 2]]) == \
        pytest.approx(np.hypot(5, 1), abs=1e-12)


# ------------------------------------------------------------------ 4/5. real case, CLI
def test_cli_real_p2ilf_image_size_challenge_rpe_and_integer_contours(sample_data, tmp_path,
                                                                      capsys):
    import argparse

    from LiverLaparoRegLib import cli

    d = sample_data / "p2ilf"
    p = argparse.ArgumentParser(prog="surgreg")
    cli.register_cli(p.add_subparsers(dest="command"))
    out = tmp_path / "out.json"
    args = p.parse_args([
        "laparo", "register", "--mesh", str(d / "evaluation_GT" / "3d-liver-model.obj"),
        "--image-size", "1920", "1080",
        "--camera", str(d / "cameraparams" / "acquisition-camera-metadata.json"),
        "--contours2d", str(d / "evaluation_GT" / "patient2_1_2D-contours.json"),
        "--contours3d", str(d / "evaluation_GT" / "patient2_1_3D-contours.json"),
        "--out", str(out)])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "camera: the lens distortion folds over" in captured.err
    assert "Silhouette contours are not used" in captured.err
    printed = json.loads(captured.out.strip().splitlines()[-1])
    res = json.loads(out.read_text())
    rpe = res["metrics"]["p2ilf_task2_rpe_px"]
    assert printed["p2ilf_task2_rpe_px"] == pytest.approx(rpe)
    # a direct search on the challenge metric finds ~60 px for these annotations
    # (benchmarks/results/laparo_bench.md); the tool was at 80-166 px before
    assert rpe < 66.0
    c2 = json.loads(out.with_name("out_contours2d.json").read_text())
    assert all(isinstance(x, int) for c in c2["contour"] for x in c["imagePoints"]["x"])
    # the size must match the camera file's
    args = p.parse_args(["laparo", "register", "--mesh",
                         str(d / "evaluation_GT" / "3d-liver-model.obj"),
                         "--image-size", "640", "480", "--camera",
                         str(d / "cameraparams" / "acquisition-camera-metadata.json"),
                         "--contours2d", str(d / "evaluation_GT" / "patient2_1_2D-contours.json"),
                         "--contours3d", str(d / "evaluation_GT" / "patient2_1_3D-contours.json"),
                         "--method", "pnp+silhouette", "--out", str(out)])
    with pytest.raises(InputError, match=r"^image size: the frame is 640 x 480"):
        args.func(args)


def test_pnp_silhouette_method_name_and_mask_requirement(liver):
    T = random_pose(liver.vertices, np.random.default_rng(4))
    case = synthetic.make_case(liver, CAM_DIST, T, noise_px=1.0, render=True)
    with pytest.raises(InputError, match=r"^mask: method 'pnp\+silhouette' needs a liver mask"):
        register(liver, CAM_DIST, contours2d=case.contours2d, contours3d=case.contours3d,
                 method="pnp+silhouette")
    r = register(liver, CAM_DIST, contours2d=case.contours2d, contours3d=case.contours3d,
                 mask=case.mask, ground_truth=T)
    assert r.method == "pnp+silhouette"
    assert r.metrics["rotation_deg"] < 3.0 and r.metrics["centroid_error_mm"] < 5.0


def test_text_intrinsics_without_size_are_rejected(tmp_path):
    np.savetxt(tmp_path / "K.txt", CAM_K.K)
    with pytest.raises(GeometryError, match=r"^camera: .*--image-size W H"):
        load_camera(tmp_path / "K.txt")


# ------------------------------------------------------------------ 6. non-rigid
@pytest.mark.parametrize("kind", ["in-plane", "out-of-plane"])
def test_bend_is_near_isometric_and_nonrigid_lowers_vertex_error(liver, kind):
    """SYNTHETIC: the liver bent by 30 deg within the image plane (or along the viewing
    direction); the non-rigid step at the true rigid pose, with the mask and paired
    landmark curves, lowers the mean 3D vertex error to the bent shape (by 10 % in the
    image plane; along the viewing direction, which one frame barely shows, it must at
    least not raise it)."""
    v = liver.vertices
    c = v.mean(0)
    axis = np.linalg.eigh(np.cov((v - c).T))[1][:, -1]
    T = random_pose(v, np.random.default_rng(3))
    view = T[:3, :3].T @ np.array([0.0, 0.0, 1.0])
    direction = np.cross(axis, view) if kind == "in-plane" else view
    bent = nonrigid.bend(v, axis, direction, 30.0)
    # pure bending keeps lengths along the mid-surface: edge lengths change little
    e = liver.faces[:, :2]
    ratio = np.linalg.norm(bent[e[:, 0]] - bent[e[:, 1]], axis=1) / \
        np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    assert np.median(np.abs(ratio - 1)) < 0.05
    case = synthetic.make_case(MeshData(bent, liver.faces), CAM_DIST, T, noise_px=1.0, seed=1)
    assert nonrigid.landmark_pairs(case.contours2d, case.contours3d) == [(0, 0), (1, 1), (2, 2)]
    d = nonrigid.deform(liver, CAM_DIST, T, mask=case.mask, contours2d=case.contours2d,
                        contours3d=case.contours3d)
    before = np.linalg.norm(v - bent, axis=1).mean()
    after = np.linalg.norm(d.vertices - bent, axis=1).mean()
    assert after < (0.9 if kind == "in-plane" else 1.0) * before
