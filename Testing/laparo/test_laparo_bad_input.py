"""Data safety (issue 16) for ``surgreg laparo register``: named errors instead of
tracebacks, outputs checked first and written as one set, inputs never modified.

SYNTHETIC case: a small octahedron "liver", its rendered mask, a 64 x 48 camera.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from SurgicalReg2D3DLib.cameras import PinholeCamera
from SurgicalReg2D3DLib.errors import InputError
from LiverLaparoRegLib.mesh import MeshData, save_mesh

from safety_helpers import assert_refused, files_in, hashes, run_cli, truncate

W, H = 64, 48


@pytest.fixture()
def case(tmp_path):
    import cv2
    from LiverLaparoRegLib import raster

    d = tmp_path / "in"
    d.mkdir()
    v = np.array([[30, 0, 0], [-30, 0, 0], [0, 25, 0], [0, -25, 0], [0, 0, 20], [0, 0, -20.0]])
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                  [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    save_mesh(MeshData(v, f), d / "liver.obj")
    cam = PinholeCamera(fx=60.0, fy=60.0, cx=31.5, cy=23.5, width=W, height=H)
    np.savetxt(d / "K.txt", cam.K)
    T = np.eye(4)
    T[2, 3] = 150.0
    mask = raster.render_mask(v, f, T, cam)[0].numpy()
    cv2.imwrite(str(d / "mask01.png"), mask.astype(np.uint8))  # a 0/1 label mask
    cv2.imwrite(str(d / "frame.png"), np.full((H, W, 3), 90, np.uint8))
    cv2.imwrite(str(d / "frame.jpg"), np.random.default_rng(0).integers(0, 255, (H, W, 3),
                                                                          dtype=np.uint8))
    T0 = T.copy()
    T0[:3, 3] += [2.0, -1.0, 0.0]
    (d / "init.json").write_text(json.dumps({"model_to_camera": T0.tolist()}))
    return {"dir": d, "T": T, "mesh": MeshData(v, f), "camera": cam, "mask": mask}


def _argv(case, out, **over):
    d = case["dir"]
    argv = ["laparo", "register", "--mesh", over.get("mesh", d / "liver.obj"),
            "--image", over.get("image", d / "frame.png"), "--camera", over.get("camera", d / "K.txt"),
            "--mask", over.get("mask", d / "mask01.png"), "--init", over.get("init", d / "init.json"),
            "--out", out]
    return argv + list(over.get("extra", []))


def _refused(argv, capsys, case, folder, *fragments):
    before = hashes([case["dir"]])
    listing = files_in(folder)
    rc, _, err = run_cli(argv, capsys)
    line = assert_refused(rc, err, *fragments)
    assert hashes([case["dir"]]) == before and files_in(folder) == listing
    return line


def _init(case, tmp_path, shift):
    T = case["T"].copy()
    T[:3, 3] += shift
    p = tmp_path / "bad_init.json"
    p.write_text(json.dumps({"model_to_camera": T.tolist()}))
    return p


@pytest.mark.parametrize("shift,fragment", [
    ([0, 0, -300.0], "initial pose: the liver mesh lies behind the camera"),
    ([500.0, 0, 0], "initial pose: the liver mesh projects outside the 64 x 48 image"),
    ([0, -900.0, 100.0], "initial pose: the liver mesh projects outside"),
])
def test_liver_outside_the_image_is_a_named_error(case, tmp_path, capsys, shift, fragment):
    init = _init(case, tmp_path, shift)
    _refused(_argv(case, tmp_path / "o.json", init=init), capsys, case, tmp_path, fragment)


def test_silhouette_guard_without_the_up_front_check(case):
    """refine_silhouette itself: a mesh that draws nothing is an InputError (was:
    'element 0 of tensors does not require grad')."""
    from LiverLaparoRegLib.silhouette import refine_silhouette

    T = case["T"].copy()
    T[2, 3] = -150.0
    with pytest.raises(InputError, match=r"^initial pose: the liver mesh does not appear"):
        refine_silhouette(case["mesh"].vertices, case["mesh"].faces, case["camera"],
                          case["mask"], T, factors=(1.0,), iterations=(3,))


def test_binary_mask_is_accepted(case, tmp_path, capsys):
    rc, out, err = run_cli(_argv(case, tmp_path / "o.json"), capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "o.json").read_text())["metrics"]["mask_dice"] > 0.8


def test_mask_from_image():
    from LiverLaparoRegLib.cli import mask_from_image

    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 1
    for scale in (1, 255):
        np.testing.assert_array_equal(mask_from_image(m * scale), m.astype(bool))
    noisy = m * 250 + 3  # JPEG-like noise near 0 is not liver
    np.testing.assert_array_equal(mask_from_image(np.dstack([noisy] * 3)), m.astype(bool))
    with pytest.raises(InputError, match=r"^mask: the liver mask is empty"):
        mask_from_image(np.zeros((4, 5), np.uint8))


@pytest.mark.parametrize("which", ["mesh", "image", "camera", "mask", "init"])
def test_output_onto_an_input_is_refused(case, tmp_path, capsys, which):
    d = case["dir"]
    target = {"mesh": d / "liver.obj", "image": d / "frame.png", "camera": d / "K.txt",
              "mask": d / "mask01.png", "init": d / "init.json"}[which]
    _refused(_argv(case, target), capsys, case, tmp_path, "--out: would overwrite the input")


def test_side_file_named_like_an_input_is_refused(case, tmp_path, capsys):
    """A mesh called ``<out>_mesh_camera.obj`` would be replaced by the posed-mesh side
    file; so would the mesh given as --deformed-mesh."""
    d = case["dir"]
    (d / "res_mesh_camera.obj").write_bytes((d / "liver.obj").read_bytes())
    _refused(_argv(case, d / "res.json", mesh=d / "res_mesh_camera.obj"), capsys, case, d,
             "--out (posed mesh side file): would overwrite the input",
             "res_mesh_camera.obj")
    _refused(_argv(case, tmp_path / "o.json", extra=["--deformed-mesh", d / "liver.obj"]),
             capsys, case, tmp_path, "--deformed-mesh: would overwrite the input")


def test_deformed_mesh_format_is_checked_first(case, tmp_path, capsys):
    _refused(_argv(case, tmp_path / "o.json", extra=["--deformed-mesh", tmp_path / "d.xyz"]),
             capsys, case, tmp_path, "--deformed-mesh: unsupported format '.xyz'")


def test_side_file_error_leaves_no_output(case, tmp_path, capsys, monkeypatch):
    """An error while writing a side file (here: the disk fills at the second file) leaves
    neither OUT.json nor any side file nor a temporary file."""
    from LiverLaparoRegLib import mesh as mesh_module

    real = mesh_module.save_mesh
    calls = []

    def failing(m, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(m, path)

    monkeypatch.setattr(mesh_module, "save_mesh", failing)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, _, err = run_cli(_argv(case, out_dir / "o.json",
                               extra=["--deformed-mesh", out_dir / "def.vtk"]), capsys)
    assert_refused(rc, err, "--out: cannot write", "No space left on device")
    assert len(calls) == 2 and files_in(out_dir) == set()


@pytest.mark.parametrize("name", ["frame.png", "frame.jpg"])
def test_truncated_image_is_refused(case, tmp_path, capsys, name):
    short = truncate(case["dir"] / name, tmp_path / ("short_" + name), 0.6)
    _refused(_argv(case, tmp_path / "o.json", image=short), capsys, case, tmp_path,
             "image: file is truncated", short.name)


def test_principal_point_and_contours_far_off_the_image(case, tmp_path, capsys):
    from LiverLaparoRegLib.logic import register
    from LiverLaparoRegLib.p2ilf import Contour2D, Contour3D

    K = case["camera"].K.copy()
    K[0, 2] = 1e5
    np.savetxt(tmp_path / "Kbad.txt", K)
    _refused(_argv(case, tmp_path / "o.json", camera=tmp_path / "Kbad.txt"), capsys, case,
             tmp_path, "camera: principal point (100000, 23.5) px is far outside the 64 x 48")
    c3 = [Contour3D("Ridge", np.array([0, 2, 1, 3]))]
    for pts in ([[10, 10], [20, 12], [30, 14], [1e5, 16]], [[10, -2e4], [20, 12], [30, 14],
                                                            [40, 16]]):
        with pytest.raises(InputError, match=r"^2D contours: contour 0 \(Ridge\): 1 of 4 points "
                                             r"lie outside the 64 x 48 image"):
            register(case["mesh"], case["camera"], contours2d=[Contour2D("Ridge", np.array(pts, float))],
                     contours3d=c3)
