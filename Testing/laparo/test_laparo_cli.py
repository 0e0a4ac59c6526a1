"""``surgreg laparo register`` contract and the bad-input errors of the logic."""

import argparse
import json

import numpy as np
import pytest

from SurgicalReg2D3DLib.cameras import PinholeCamera
from SurgicalReg2D3DLib.errors import GeometryError, InputError
from LiverLaparoRegLib import cli
from LiverLaparoRegLib.logic import METHODS, choose_method, register
from LiverLaparoRegLib.mesh import MeshData, load_mesh
from LiverLaparoRegLib.p2ilf import Contour2D, Contour3D


def _parser():
    p = argparse.ArgumentParser(prog="surgreg")
    cli.register_cli(p.add_subparsers(dest="command"))
    return p


def test_cli_register_real_p2ilf_contours(sample_data, tmp_path):
    import cv2

    d = sample_data / "p2ilf"
    frame = tmp_path / "frame.png"        # the case's frame is not shipped: blank stand-in
    cv2.imwrite(str(frame), np.zeros((1080, 1920, 3), np.uint8))
    out = tmp_path / "res" / "out.json"
    args = _parser().parse_args([
        "laparo", "register", "--mesh", str(d / "evaluation_GT" / "3d-liver-model.obj"),
        "--image", str(frame), "--camera", str(d / "cameraparams" / "acquisition-camera-metadata.json"),
        "--contours2d", str(d / "evaluation_GT" / "patient2_1_2D-contours.json"),
        "--contours3d", str(d / "evaluation_GT" / "patient2_1_3D-contours.json"),
        "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads(out.read_text())
    T = np.asarray(res["model_to_camera"])
    assert T.shape == (4, 4)
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
    assert res["method"] == "pnp"
    assert set(res["metrics"]["reprojection"]) == {"Ridge", "Ligament", "all"}
    # P2ILF outputs: mesh in the camera frame, same vertex order
    mesh = load_mesh(d / "evaluation_GT" / "3d-liver-model.obj")
    cam_mesh = load_mesh(out.with_name("out_mesh_camera.obj"))
    np.testing.assert_allclose(cam_mesh.vertices, mesh.vertices @ T[:3, :3].T + T[:3, 3], atol=1e-4)
    c2 = json.loads(out.with_name("out_contours2d.json").read_text())
    assert [c["contourType"] for c in c2["contour"]] == ["Ridge", "Ridge", "Ligament"]


def test_cli_init_json_errors(tmp_path):
    p = tmp_path / "init.json"
    p.write_text(json.dumps({"model_to_camera": [[1, 0, 0], [0, 1, 0]]}))
    with pytest.raises(InputError, match=r"^initial pose: model_to_camera must be 4x4"):
        cli.read_pose_json(p)


@pytest.fixture(scope="module")
def small_case():
    v = np.array([[30, 0, 0], [-30, 0, 0], [0, 25, 0], [0, -25, 0], [0, 0, 20], [0, 0, -20.0]])
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                  [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    cam = PinholeCamera(fx=60.0, fy=60.0, cx=31.5, cy=23.5, width=64, height=48)
    T = np.eye(4)
    T[2, 3] = 150.0
    return MeshData(v, f), cam, T


def test_logic_bad_inputs(small_case):
    mesh, cam, T = small_case
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:40] = True
    with pytest.raises(InputError, match=r"^image: image size 32x48 does not match the camera "
                                         r"size 64x48"):
        register(mesh, cam, image=np.zeros((48, 32, 3)), mask=mask, init=T)
    with pytest.raises(InputError, match=r"^mask: size 64x32 does not match the camera size 64x48"):
        register(mesh, cam, mask=np.ones((32, 64)), init=T)
    with pytest.raises(InputError, match=r"^mesh: mesh has no triangle faces"):
        register(MeshData(mesh.vertices, np.zeros((0, 3), int)), cam, mask=mask, init=T)
    with pytest.raises(GeometryError, match=r"^camera: intrinsics are missing"):
        register(mesh, None, mask=mask, init=T)
    with pytest.raises(InputError, match=r"^nonrigid: a non-rigid registration needs a rigid "
                                         r"pose first"):
        register(mesh, cam, mask=mask, method="silhouette", nonrigid=True)
    with pytest.raises(InputError, match=r"^inputs: registration needs 2D \+ 3D contours, or a "
                                         r"liver mask and an initial pose"):
        register(mesh, cam, mask=mask)
    with pytest.raises(InputError, match=r"^method: unknown method 'magic'"):
        register(mesh, cam, mask=mask, init=T, method="magic")
    bad = T.copy()
    bad[0, 0] = 2.0
    with pytest.raises(GeometryError, match=r"^initial pose"):
        register(mesh, cam, mask=mask, init=bad)
    c2 = [Contour2D("Ridge", np.zeros((3, 2)))]
    c3 = [Contour3D("Ridge", np.arange(4))]
    with pytest.raises(InputError, match=r"^2D contours: contour 0 \(Ridge\) has 3 points"):
        register(mesh, cam, contours2d=c2, contours3d=c3)
    with pytest.raises(InputError, match=r"^contours: both 2D and 3D contours are needed"):
        register(mesh, cam, contours2d=c2)


def test_method_choice():
    assert choose_method(True, True, False) == "pnp+silhouette"
    assert choose_method(True, False, False) == "pnp"
    assert choose_method(False, True, True) == "silhouette"
    assert set(METHODS) >= {"pnp", "pnp+silhouette", "silhouette"}


def test_cli_silhouette_nonrigid_with_init_and_mask(tmp_path, sample_data):
    """SYNTHETIC: mask rendered from the real liver_sub.ply at a known pose; --init is that
    pose shifted by 6 mm; silhouette (auto) + --nonrigid; ground truth given for metrics."""
    import cv2
    from SurgicalReg2D3DLib.io import read_matrix_txt
    from LiverLaparoRegLib import raster

    d = sample_data / "liver_sksurgery" / "liver"
    mesh = load_mesh(d / "liver_sub.ply")
    T = np.eye(4)
    T[:3, :3] = read_matrix_txt(d / "model_to_camera.txt")[:3, :3]
    T[:3, 3] = [0, 0, 600] - T[:3, :3] @ mesh.vertices.mean(0)
    K = np.array([[120.0, 0, 47.5], [0, 120.0, 35.5], [0, 0, 1]])
    np.savetxt(tmp_path / "K.txt", K)
    cam = PinholeCamera(fx=120.0, fy=120.0, cx=47.5, cy=35.5, width=96, height=72)
    mask = raster.render_mask(mesh.vertices, mesh.faces, T, cam)[0].numpy()
    cv2.imwrite(str(tmp_path / "mask.png"), mask.astype(np.uint8) * 255)
    cv2.imwrite(str(tmp_path / "frame.png"), np.full((72, 96, 3), 90, np.uint8))
    T0 = T.copy()
    T0[:3, 3] += [6.0, -4.0, 0.0]
    (tmp_path / "init.json").write_text(json.dumps({"model_to_camera": T0.tolist()}))
    (tmp_path / "gt.json").write_text(json.dumps({"model_to_camera": T.tolist()}))
    out = tmp_path / "out.json"
    args = _parser().parse_args([
        "laparo", "register", "--mesh", str(d / "liver_sub.ply"), "--image",
        str(tmp_path / "frame.png"), "--camera", str(tmp_path / "K.txt"), "--mask",
        str(tmp_path / "mask.png"), "--init", str(tmp_path / "init.json"), "--nonrigid",
        "--deformed-mesh", str(tmp_path / "deformed.vtk"), "--ground-truth",
        str(tmp_path / "gt.json"), "--structure", str(d / "liver_sub.ply"), "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads(out.read_text())
    assert res["method"] == "silhouette"
    # the image-plane (x, y) error of the liver centre drops from 7.2 mm to below 1.5 mm;
    # depth is weakly observable at 96 px (1 % of 600 mm = 0.5 px of outline), not checked
    c = mesh.vertices.mean(0)
    Te = np.asarray(res["model_to_camera"])
    lateral = (Te[:3, :3] @ c + Te[:3, 3] - T[:3, :3] @ c - T[:3, 3])[:2]
    assert np.linalg.norm(lateral) < 1.5
    assert res["metrics"]["mask_dice"] > 0.97              # initial pose: 0.943
    deformed = load_mesh(tmp_path / "deformed.vtk")
    assert deformed.vertices.shape == mesh.vertices.shape
    # the liver given again as a "structure" is deformed exactly as the liver itself
    structure = load_mesh(tmp_path / "out_liver_sub_deformed.vtk")
    np.testing.assert_allclose(structure.vertices, deformed.vertices, atol=1e-4)
    assert "nonrigid_s" in res["timing"]


def test_mask_check_takes_a_colour_mask_and_refuses_other_shapes(small_case):
    """``camera.check_mask`` (used by every method, classic and learned): a mask saved as
    RGB(A) counts where any channel is set; a 2-channel or 3D-volume mask is refused
    naming its shape."""
    from LiverLaparoRegLib.camera import check_mask  # noqa: PLC0415

    _, cam, _ = small_case
    gray = np.zeros((48, 64), np.uint8)
    gray[10:30, 20:40] = 255
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[10:30, 20:40, 1] = 255                       # painted in green only
    rgba = np.dstack([rgb, np.full((48, 64), 0, np.uint8)])
    np.testing.assert_array_equal(check_mask(rgb, cam), gray > 0)
    np.testing.assert_array_equal(check_mask(rgba, cam), gray > 0)
    with pytest.raises(InputError, match=r"^mask: expected a 2D \(H, W\) mask, got shape "
                                         r"\(48, 64, 2\)"):
        check_mask(np.zeros((48, 64, 2)), cam)
    with pytest.raises(InputError, match=r"^mask: the liver mask is empty"):
        check_mask(np.zeros((48, 64, 3), np.uint8), cam)
