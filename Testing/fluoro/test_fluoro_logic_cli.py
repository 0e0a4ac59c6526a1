"""FluoroReg node-level logic, X-ray file reading and the ``surgreg fluoro`` command line.

X-ray images here are SYNTHETIC (simulated from the shipped real CT, or small arrays).
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dicom_helpers import write_xray_dicom
from FluoroRegLib import logic
from FluoroRegLib.geometry import make_camera
from FluoroRegLib.simulate import mtre_np, simulate_case
from FluoroRegLib.xray_io import load_xray, negative_log, save_xray
from SurgicalReg2D3DLib import nodes
from SurgicalReg2D3DLib.cli import main as surgreg_main
from SurgicalReg2D3DLib.errors import GeometryError, InputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_case(ct3mm):
    hu, m, vol, lm = ct3mm
    cam = make_camera(1000.0, (5.0, 5.0), (48, 48))
    case = simulate_case(vol, cam, np.random.default_rng(1), lm, views=("AP", "LAT"),
                         mtre_range_mm=(8, 15), rotation_range_deg=(4, 8))
    return hu, m, lm, cam, case


def test_register_nodes_writes_outputs_and_leaves_inputs_alone(ctx, small_case):
    hu, m, lm, cam, case = small_case
    ct_node = nodes.volume_to_node(ctx, hu, m, "CT")
    xray_node = nodes.image2d_to_node(ctx, case.images[0], "X-ray")
    logic.set_node_geometry(xray_node, cam)
    init_node = nodes.matrix_to_transform_node(ctx, case.init_ct_to_camera[0], "init")
    true_node = nodes.matrix_to_transform_node(ctx, case.true_ct_to_camera[0], "truth")
    fid = nodes.points_to_markups(ctx, lm, "landmarks")
    ct_before = nodes.volume_from_node(ct_node).array.copy()
    cams = [logic.camera_for_xray_node(xray_node)]
    res = logic.register_nodes(ctx, ct_node, [xray_node], cams, [init_node], method="ncc",
                               fiducials_node=fid, true_transform_node=true_node,
                               levels=(2, 1), iterations=8, n_samples=64)
    err = mtre_np(res.ct_to_camera, case.true_ct_to_camera[0], lm)
    assert err < 3.0
    assert res.metrics["mtre_mm"] == pytest.approx(err)
    out = ctx.scene.GetNodeByID(res.outputs["output_transform_node"])
    np.testing.assert_allclose(nodes.matrix_from_transform_node(out), res.ct_to_camera, atol=1e-9)
    drr = ctx.scene.GetNodeByID(res.outputs["drr_node"])
    drr_img, drr_geom = nodes.image2d_from_node(drr)
    assert drr_img.shape == (48, 48)
    np.testing.assert_allclose(drr_geom, nodes.image2d_from_node(xray_node)[1])
    # The DRR at the result correlates with the X-ray.
    assert np.corrcoef(drr_img.ravel(), case.images[0].ravel())[0, 1] > 0.98
    # Inputs unchanged.
    np.testing.assert_array_equal(nodes.volume_from_node(ct_node).array, ct_before)
    np.testing.assert_allclose(nodes.matrix_from_transform_node(init_node), case.init_ct_to_camera[0])


def test_register_nodes_bad_inputs(ctx, small_case):
    hu, m, lm, cam, case = small_case
    ct_node = nodes.volume_to_node(ctx, hu, m, "CT")
    xray_node = nodes.image2d_to_node(ctx, case.images[0], "X-ray")
    flat_ct = nodes.volume_to_node(ctx, np.full((8, 8, 8), 40.0, np.float32), np.eye(4), "flat")
    with pytest.raises(InputError, match=r"^X-ray image: expected a 2D image, got a 3D volume"):
        logic.register_nodes(ctx, ct_node, [ct_node], [cam])
    with pytest.raises(InputError, match=r"^CT volume: expected a 3D volume, got a 2D image"):
        logic.register_nodes(ctx, xray_node, [xray_node], [cam])
    with pytest.raises(InputError, match=r"^CT volume: all voxels have the same value \(40\)"):
        logic.register_nodes(ctx, flat_ct, [xray_node], [cam])
    with pytest.raises(GeometryError, match=r"^X-ray geometry: missing for x-ray image 'X-ray'"):
        logic.camera_for_xray_node(xray_node)
    with pytest.raises(InputError, match=r"^X-ray geometry: 2 X-ray images but 1 geometries"):
        logic.register_nodes(ctx, ct_node, [xray_node, xray_node], [cam])


def _write_dicom(path, pixels, sdd=1100.0, spacing=(0.3, 0.2), photometric="MONOCHROME2"):
    write_xray_dicom(path, pixels, DistanceSourceToDetector=sdd,
                     ImagerPixelSpacing=list(spacing),  # [row spacing, column spacing]
                     PhotometricInterpretation=photometric)


def test_load_xray_dicom_geometry_from_tags(tmp_path):
    pixels = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)
    _write_dicom(tmp_path / "a.dcm", pixels)
    img, cam = load_xray(tmp_path / "a.dcm")
    np.testing.assert_array_equal(img, pixels.astype(np.float32))
    assert cam.source_to_detector_mm == 1100.0
    assert tuple(cam.pixel_spacing_mm) == (0.2, 0.3)  # (sx = column, sy = row)
    assert tuple(cam.size_px) == (32, 24)
    _write_dicom(tmp_path / "b.dcm", pixels, photometric="MONOCHROME1")
    inv, _ = load_xray(tmp_path / "b.dcm")
    np.testing.assert_array_equal(inv, pixels.max() - pixels.astype(np.float32))


def test_load_xray_png_rows_and_negative_log(tmp_path):
    raw = np.full((16, 20), 1000.0)
    raw[0, :] = 100.0  # first row of the file: strongly attenuated
    cam = make_camera(1000.0, (1.0, 1.0), (20, 16))
    save_xray(raw, cam, tmp_path / "x.nrrd", tmp_path / "g.json")
    img, cam2 = load_xray(tmp_path / "x.nrrd", tmp_path / "g.json", negative_log_raw=True, i0=1000.0)
    np.testing.assert_allclose(img[0], -np.log(0.1), rtol=1e-5)
    np.testing.assert_allclose(img[1:], 0.0, atol=1e-6)
    assert tuple(cam2.size_px) == (20, 16)
    png = (np.arange(16)[:, None] * np.ones(20)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(png), str(tmp_path / "rows.png"))
    img, _ = load_xray(tmp_path / "rows.png", tmp_path / "g.json")
    np.testing.assert_array_equal(img[:, 0], np.arange(16))
    np.testing.assert_allclose(negative_log(np.array([[10.0, 100.0]]), i0=100.0),
                               [[np.log(10.0), 0.0]], rtol=1e-6)


def test_load_xray_bad_files(tmp_path):
    cam = make_camera(1000.0, (1.0, 1.0), (20, 16))
    save_xray(np.ones((16, 20)), cam, tmp_path / "x.nrrd", tmp_path / "g.json")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 16, 20), np.float32)), str(tmp_path / "v.nrrd"))
    with pytest.raises(InputError, match=r"^X-ray image: expected a 2D image, got shape \(3, 16, 20\)"):
        load_xray(tmp_path / "v.nrrd", tmp_path / "g.json")
    with pytest.raises(GeometryError, match=r"^X-ray geometry: missing for x.nrrd"):
        load_xray(tmp_path / "x.nrrd")
    (tmp_path / "bad.json").write_text(json.dumps({"source_to_detector_mm": 0, "pixel_spacing_mm": [1, 1],
                                                   "size_px": [20, 16]}))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: source_to_detector_mm must be positive"):
        load_xray(tmp_path / "x.nrrd", tmp_path / "bad.json")
    (tmp_path / "small.json").write_text(json.dumps({"source_to_detector_mm": 1000, "pixel_spacing_mm": [1, 1],
                                                     "size_px": [10, 16]}))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: size_px \[W, H\] = \[10, 16\] does not match"):
        load_xray(tmp_path / "x.nrrd", tmp_path / "small.json")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file")
    with pytest.raises(InputError, match=r"^X-ray image: cannot read DICOM file"):
        load_xray(tmp_path / "junk.dcm", tmp_path / "g.json")


@pytest.fixture(scope="module")
def cli_case(tmp_path_factory, sample_data):
    out = tmp_path_factory.mktemp("fluoro_cases")
    ct = sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz"
    rc = surgreg_main(["fluoro", "simulate", "--ct", str(ct), "--out", str(out), "--cases", "1",
                       "--views", "AP,LAT", "--size", "40", "--spacing", "6", "--downsample", "2",
                       "--mtre-min", "8", "--mtre-max", "12", "--rot-min", "3", "--rot-max", "6"])
    assert rc == 0
    return ct, out


def _run(argv, capsys):
    rc = surgreg_main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _two_view_register_args(ct, case_dir, method, out, iterations, n_samples):
    """`surgreg fluoro register` arguments for the two views of one simulated case folder."""
    c = case_dir
    return ["fluoro", "register", "--ct", str(ct), "--xray", str(c / "xray_0.nrrd"),
            "--xray", str(c / "xray_1.nrrd"), "--geometry", str(c / "geometry_0.json"),
            "--geometry", str(c / "geometry_1.json"), "--init", str(c / "init.json"),
            "--method", method, "--out", str(out), "--levels", "1",
            "--iterations", str(iterations), "--n-samples", str(n_samples),
            "--no-quality"]   # tiny images and few iterations: these tests check the plumbing


def test_cli_simulate_and_register_two_views(cli_case, capsys, tmp_path):
    ct, cases = cli_case
    index = json.loads((cases / "cases.json").read_text())
    assert index["synthetic"] is True and len(index["cases"]) == 1
    c = cases / "case_000"
    out = tmp_path / "out.json"
    rc, stdout, stderr = _run(_two_view_register_args(ct, c, "ncc", out, iterations=6, n_samples=96),
                              capsys)
    assert rc == 0, stderr
    result = json.loads(out.read_text())
    assert {"ct_to_camera", "views", "similarity", "time_s", "method"} <= set(result)
    timing = result["timing_s"]  # where the command's time went
    assert set(timing) == {"imports", "read_inputs", "method", "checks_and_quality"}
    assert timing["method"] == result["time_s"] and min(timing.values()) >= 0.0
    est = np.array(result["ct_to_camera"])
    truth = np.array(json.loads((c / "truth.json").read_text())["ct_to_camera"])
    init = np.array(json.loads((c / "init.json").read_text())["ct_to_camera"])
    lm = np.array(json.loads((c / "landmarks.json").read_text())["points"])
    assert mtre_np(est, truth, lm) < 0.3 * mtre_np(init, truth, lm)
    # View 2's pose keeps the C-arm motion of the initial poses.
    init_views = [np.array(v["ct_to_camera"]) for v in json.loads((c / "init.json").read_text())["views"]]
    rel = init_views[1] @ np.linalg.inv(init_views[0])
    np.testing.assert_allclose(np.array(result["views"][1]["ct_to_camera"]), rel @ est, atol=1e-6)


def test_cli_multiview_method_writes_views_and_disagreement(cli_case, capsys, tmp_path):
    ct, cases = cli_case
    c = cases / "case_000"
    out = tmp_path / "mv.json"
    rc, stdout, stderr = _run(_two_view_register_args(ct, c, "gradncc-multiview", out, iterations=5,
                                                      n_samples=64), capsys)
    assert rc == 0, stderr
    result = json.loads(out.read_text())
    assert result["method"] == "gradncc-multiview" and len(result["views"]) == 2
    assert result["time_s"] > 0 and -1.0 <= result["similarity"] <= 1.0
    m = result["metrics"]
    assert m["view_disagreement_after_mm"] < m["view_disagreement_before_mm"]
    truth = np.array(json.loads((c / "truth.json").read_text())["ct_to_camera"])
    init = np.array(json.loads((c / "init.json").read_text())["ct_to_camera"])
    lm = np.array(json.loads((c / "landmarks.json").read_text())["points"])
    assert mtre_np(np.array(result["ct_to_camera"]), truth, lm) < 0.3 * mtre_np(init, truth, lm)


def test_cli_bench_prints_and_writes_summary(cli_case, capsys, tmp_path):
    import csv

    _, cases = cli_case
    out = tmp_path / "bench"
    rc, stdout, stderr = _run(["fluoro", "bench", "--cases", str(cases), "--methods", "ppc,ncc",
                               "--views", "2", "--out", str(out), "--levels", "1",
                               "--iterations", "4", "--n-samples", "64"], capsys)
    assert rc == 0, stderr
    with open(out / "bench.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["views"], r["case"]) for r in rows] == [
        ("ppc", "2", "case_000"), ("ncc", "2", "case_000")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] is True
    assert (out / "bench.png").stat().st_size > 1000
    # The printed table agrees with the per-case CSV (one case: median = its mTRE).
    for r in rows:
        s = summary["methods"][r["method"]]
        assert s["n"] == 1 and s["median"] == pytest.approx(float(r["mtre_mm"]))
        assert s["smsr"] == (100.0 if float(r["mtre_mm"]) < 1.0 else 0.0)
        line = next(ln for ln in stdout.splitlines() if ln.startswith(r["method"] + " "))
        assert f"{s['median']:8.3f}" in line and f"{s['smsr']:7.1f}" in line
    assert "SMSR = share of cases with 3D mTRE < 1.0 mm" in stdout


def test_cli_bad_inputs(cli_case, capsys, tmp_path):
    ct, cases = cli_case
    c = cases / "case_000"
    base = ["fluoro", "register", "--ct", str(ct), "--out", str(tmp_path / "o.json")]
    one = ["--xray", str(c / "xray_0.nrrd")]
    geo = ["--geometry", str(c / "geometry_0.json")]

    def err(argv):
        rc, _, stderr = _run(base + argv, capsys)
        assert rc == 2
        return stderr

    assert "X-ray geometry: 2 X-ray images but 1 geometries" in err(
        one + ["--xray", str(c / "xray_1.nrrd")] + geo)
    for name, data, msg in [
            ("sdd.json", {"source_to_detector_mm": -1, "pixel_spacing_mm": [6, 6], "size_px": [40, 40]},
             "X-ray geometry: source_to_detector_mm must be positive"),
            ("sp.json", {"source_to_detector_mm": 1000, "pixel_spacing_mm": [0, 6], "size_px": [40, 40]},
             "X-ray geometry: pixel_spacing_mm must be two positive numbers"),
            ("size.json", {"source_to_detector_mm": 1000, "pixel_spacing_mm": [6, 6], "size_px": [41, 40]},
             "X-ray geometry: size_px [W, H] = [41, 40] does not match"),
            ("nokey.json", {"pixel_spacing_mm": [6, 6], "size_px": [40, 40]},
             "X-ray geometry: missing keys ['source_to_detector_mm']")]:
        (tmp_path / name).write_text(json.dumps(data))
        assert msg in err(one + ["--geometry", str(tmp_path / name)])
    init = json.loads((c / "init.json").read_text())
    nan_init = {"ct_to_camera": init["ct_to_camera"]}
    nan_init["ct_to_camera"][0][3] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(nan_init))
    assert "initial ct_to_camera: contains NaN" in err(one + geo + ["--init", str(tmp_path / "nan.json")])
    shear = np.array(init["views"][0]["ct_to_camera"])
    shear[:3, :3] = shear[:3, :3] @ np.array([[1, 0.3, 0], [0, 1, 0], [0, 0, 1]])
    (tmp_path / "shear.json").write_text(json.dumps({"ct_to_camera": shear.tolist()}))
    assert "initial ct_to_camera: rotation part is not orthonormal" in err(
        one + geo + ["--init", str(tmp_path / "shear.json")])
    assert "initial pose: 1 X-ray images but 2 initial ct_to_camera matrices" in err(
        one + geo + ["--init", str(c / "init.json")])
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((40, 40), np.float32)), str(tmp_path / "zero.nrrd"))
    assert "X-ray image: all pixels are zero" in err(["--xray", str(tmp_path / "zero.nrrd")] + geo)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 40, 40), np.float32)), str(tmp_path / "vol.nrrd"))
    assert "X-ray image: expected a 2D image, got shape (3, 40, 40)" in err(["--xray", str(tmp_path / "vol.nrrd")] + geo)
    img2d = sitk.GetImageFromArray(np.ones((40, 40), np.float32))
    sitk.WriteImage(img2d, str(tmp_path / "ct2d.nrrd"))
    rc, _, stderr = _run(["fluoro", "register", "--ct", str(tmp_path / "ct2d.nrrd"), "--out",
                          str(tmp_path / "o.json")] + one + geo, capsys)
    assert rc == 2 and "CT volume: expected a 3D volume" in stderr
    sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 6, 6), 7.0, np.float32)), str(tmp_path / "flat.nrrd"))
    rc, _, stderr = _run(["fluoro", "register", "--ct", str(tmp_path / "flat.nrrd"), "--out",
                          str(tmp_path / "o.json")] + one + geo, capsys)
    assert rc == 2 and "CT volume: all voxels have the same value (7)" in stderr
    assert "method: expected one of" in err(one + geo + ["--method", "magic"])


def test_quick_demo_writes_pictures_and_improves_mtre(tmp_path):
    from FluoroRegLib.demo import run_demo

    metrics = run_demo(tmp_path, quick=True)
    assert metrics["synthetic_xrays"] is True
    assert (tmp_path / "fluoro_overlay.png").stat().st_size > 1000
    assert (tmp_path / "fluoro_convergence.png").stat().st_size > 1000
    assert metrics["1view"]["mtre_mm"] < 0.3 * metrics["initial_mtre_mm"]
    assert metrics["kernel_warmup_s"] >= 0.0  # first use of the kernels reported apart
