"""Data safety (issue 16), core and FluoroReg: corrupt input is refused, nothing is claimed
where nothing was registered, outputs are checked first and written safely.

Every refusal is checked for: exit code 2, one message naming the input and the problem,
no traceback, every input file byte-identical, no output (not even a temporary file).
All data are SYNTHETIC (a small block phantom, its DRR) except the shipped DICOM series.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from SurgicalReg2D3DLib import checks, outputs
from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError

from safety_helpers import (assert_refused, files_in, hashes, run_cli, truncate,
                            write_ct_series)

SPACING = (4.0, 4.0, 4.0)


def _phantom() -> np.ndarray:
    """SYNTHETIC CT (K, J, I) HU: air, a soft-tissue block and two bone blocks."""
    hu = np.full((24, 28, 32), -1000.0, np.float32)
    hu[4:20, 5:23, 6:26] = 40.0
    hu[8:16, 8:14, 9:15] = 900.0
    hu[10:18, 16:22, 18:24] = 600.0
    return hu


def _write_ct(path, hu=None, spacing=SPACING, direction=None, compress=False):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(_phantom() if hu is None else hu)
    img.SetSpacing(spacing)
    img.SetOrigin((-64.0, -56.0, -48.0))
    if direction is not None:
        img.SetDirection(tuple(np.asarray(direction, float).ravel()))
    sitk.WriteImage(img, str(path), useCompression=compress)
    return Path(path)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """SYNTHETIC FluoroReg case: CT (.nrrd), its DRR at a known AP pose as the X-ray,
    the geometry JSON and the pose as INIT.json."""
    from FluoroRegLib.drr import DRRVolume, render_drr
    from FluoroRegLib.geometry import look_at_pose, make_camera
    from FluoroRegLib.simulate import read_ct
    from FluoroRegLib.xray_io import save_xray, write_pose_json

    d = tmp_path_factory.mktemp("fluoro_case")
    ct = _write_ct(d / "ct.nrrd")
    hu, m = read_ct(ct)
    vol = DRRVolume.from_hu(hu, m)
    cam = make_camera(1000.0, (6.0, 6.0), (40, 40))
    pose = look_at_pose(vol.center_ras(), "AP", 600.0)
    drr = render_drr(vol, cam, pose)[0].numpy()
    save_xray(drr, cam, d / "xray.nrrd", d / "geometry.json")
    write_pose_json(d / "init.json", [pose])
    return {"dir": d, "ct": ct, "xray": d / "xray.nrrd", "geometry": d / "geometry.json",
            "init": d / "init.json", "pose": pose, "camera": cam}


def _register_argv(case, out, ct=None, **over):
    argv = ["fluoro", "register", "--ct", ct or case["ct"], "--xray", over.get("xray", case["xray"]),
            "--geometry", over.get("geometry", case["geometry"]), "--init",
            over.get("init", case["init"]), "--out", out, "--levels", "1", "--iterations", "2"]
    return argv + list(over.get("extra", []))


def _refused(argv, capsys, inputs, out_dir, *fragments):
    """Run, check the refusal and that inputs and the output folder are untouched."""
    before = hashes(inputs)
    listing = files_in(out_dir)
    rc, _, err = run_cli(argv, capsys)
    line = assert_refused(rc, err, *fragments)
    assert hashes(inputs) == before
    assert files_in(out_dir) == listing
    return line


# ------------------------------------------------------------------------------ class 1
@pytest.mark.parametrize("suffix,compress", [(".nii.gz", True), (".nii", False),
                                             (".mha", False), (".mha", True),
                                             (".nrrd", False), (".nrrd", True)])
def test_truncated_ct_is_refused_by_cli_and_io(case, suffix, compress, tmp_path, capsys, ctx):
    """A CT file cut short (ITK would fill the missing voxels with zeros) is refused by the
    FluoroReg CLI reader and by io.load_volume, with the file named."""
    from SurgicalReg2D3DLib import io

    full = _write_ct(tmp_path / f"full{suffix}", compress=compress)
    short = truncate(full, tmp_path / f"short{suffix}", 0.6)
    out = tmp_path / "out" / "o.json"
    out.parent.mkdir()
    _refused(_register_argv(case, out, ct=short), capsys, [short, case["dir"]], out.parent,
             "CT file: file is truncated", short.name)
    n_nodes = ctx.scene.GetNumberOfNodes()
    with pytest.raises(FileReadError, match=r"^volume file: file is truncated"):
        io.load_volume(ctx, short)
    assert ctx.scene.GetNumberOfNodes() == n_nodes
    # the complete file is accepted by both readers
    assert io.load_volume(ctx, full).GetImageData().GetDimensions() == (32, 28, 24)


def test_truncated_xray_image_is_refused(case, tmp_path, capsys):
    short = truncate(case["xray"], tmp_path / "xray.nrrd", 0.5)
    _refused(_register_argv(case, tmp_path / "o.json", xray=short), capsys,
             [short, case["dir"]], tmp_path, "X-ray image: file is truncated", "xray.nrrd")


def _shipped_series_without(sample_data, tmp_path, index: int):
    """The shipped series with its ``index``-th slice along the normal left out."""
    import pydicom

    src = sample_data / "ct" / "thorax_dicom_series"
    heads = [(pydicom.dcmread(str(f), stop_before_pixels=True), f) for f in src.iterdir()]
    iop = np.array(heads[0][0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    order = [f for h, f in sorted(heads, key=lambda hf: float(
        np.dot(normal, np.array(hf[0].ImagePositionPatient, float))))]
    d = tmp_path / "shipped"
    d.mkdir()
    for f in order:
        if f != order[index]:
            shutil.copy(f, d / f.name)
    return d


def test_shipped_dicom_series_with_a_missing_slice(sample_data, tmp_path, ctx):
    """The shipped series loads; without its 10th slice it is refused (ITK alone would
    stretch the spacing to 2.11 mm), and loads with the explicit opt-in."""
    from SurgicalReg2D3DLib import io

    assert io.load_dicom_series(ctx, sample_data / "ct" / "thorax_dicom_series") \
        .GetImageData().GetDimensions()[2] == 20
    d = _shipped_series_without(sample_data, tmp_path, 9)
    before = hashes([d])
    n_nodes = ctx.scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"^DICOM folder: uneven slice spacing: gap of 4 mm "
                                         r".*where the others are 2 mm \(about 1 slice\(s\) "
                                         r"missing or unreadable"):
        io.load_dicom_series(ctx, d)
    assert ctx.scene.GetNumberOfNodes() == n_nodes and hashes([d]) == before


@pytest.mark.parametrize("mode", ["drop_one", "drop_two", "garbage", "duplicate"])
def test_dicom_series_with_missing_slice_is_refused(tmp_path, ctx, capsys, mode):
    """SYNTHETIC series: a missing, unreadable or duplicated slice is refused by
    io.load_dicom_series and the FluoroReg CLI reader; an explicit opt-in goes on."""
    from SurgicalReg2D3DLib import io

    skip = {"drop_one": [4], "drop_two": [2, 5]}.get(mode, [])
    d = write_ct_series(tmp_path / "dicom", skip=skip)
    if mode == "garbage":
        (d / "s004.dcm").write_bytes(b"not a DICOM file" * 50)
    if mode == "duplicate":  # a second copy of slice 3 (own UID, same position)
        import pydicom
        from pydicom.uid import generate_uid

        ds = pydicom.dcmread(str(d / "s003.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = 99
        ds.save_as(str(d / "s003b.dcm"))
    word = "duplicated" if mode == "duplicate" else "missing or unreadable"
    before = hashes([d])
    n_nodes = ctx.scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=rf"^DICOM folder: uneven slice spacing.*{word}.*"
                                         r"allow_uneven_slices"):
        io.load_dicom_series(ctx, d)
    assert ctx.scene.GetNumberOfNodes() == n_nodes
    node = io.load_dicom_series(ctx, d, allow_uneven_slices=True)
    assert node.GetImageData().GetDimensions()[2] == len(list(d.iterdir())) - (mode == "garbage")
    assert "uneven slice spacing" in capsys.readouterr().err
    rc, _, err = run_cli(["fluoro", "register", "--ct", d, "--xray", tmp_path / "none.png",
                          "--out", tmp_path / "o.json"], capsys)
    assert_refused(rc, err, "CT DICOM series: uneven slice spacing", word,
                   "--allow-uneven-slices")
    # with the opt-in the CT is read; the run then stops at the (missing) X-ray image
    rc, _, err = run_cli(["fluoro", "register", "--ct", d, "--xray", tmp_path / "none.png",
                          "--out", tmp_path / "o.json", "--allow-uneven-slices"], capsys)
    assert_refused(rc, err, "X-ray image: file not found")
    assert "warning: CT DICOM series: uneven slice spacing" in err
    assert hashes([d]) == before and not (tmp_path / "o.json").exists()


def test_complete_synthetic_series_passes(tmp_path, ctx):
    from SurgicalReg2D3DLib import io

    node = io.load_dicom_series(ctx, write_ct_series(tmp_path / "ok"))
    assert node.GetImageData().GetDimensions() == (14, 12, 8)
    assert node.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))


def test_slice_position_rule():
    normal = [0, 0, 1]
    even = [[0, 0, 2.0 * k] for k in range(6)]
    assert checks.check_slice_positions(even, normal, "CT") is None
    for bad, word in [([p for k, p in enumerate(even) if k != 3], "missing"),
                      (even + [[0, 0, 4.0]], "duplicated"),
                      ([[0, 0, z] for z in (0, 2, 4, 6.7, 8, 10)], "uneven")]:
        with pytest.raises(InputError, match=rf"^CT: .*{word}"):
            checks.check_slice_positions(bad, normal, "CT")
        assert "CT:" in checks.check_slice_positions(bad, normal, "CT", allow_uneven=True)


# ------------------------------------------------------------------------------ class 2
def _init_with(case, tmp_path, name, edit):
    pose = np.array(case["pose"], float)
    edit(pose)
    p = tmp_path / name
    p.write_text(json.dumps({"ct_to_camera": pose.tolist()}))
    return p


@pytest.mark.parametrize("name,edit,fragment", [
    ("behind", lambda p: p.__setitem__((2, 3), -600.0), "CT volume: lies behind the X-ray source"),
    ("aside", lambda p: p.__setitem__((0, 3), 2000.0), "CT volume: does not project onto x-ray image"),
    ("inside", lambda p: p.__setitem__((2, 3), 10.0), "the X-ray source of x-ray image lies inside the CT"),
    ("huge", lambda p: p.__setitem__((1, 3), 1e30), "initial ct_to_camera: translation of 1e+30 mm"),
])
def test_start_pose_that_cannot_register_is_refused(case, tmp_path, capsys, name, edit, fragment):
    init = _init_with(case, tmp_path, f"{name}.json", edit)
    _refused(_register_argv(case, tmp_path / "o.json", init=init), capsys,
             [init, case["dir"]], tmp_path, fragment)


@pytest.mark.parametrize("spacing", ["1e6 1e6 1e6", "4 0 4", "-4 4 4", "4 nan 4"])
def test_absurd_ct_spacing_is_refused(case, tmp_path, capsys, spacing):
    """Zero, negative, NaN or absurd spacing: refused by the CLI reader (by the shared
    check, or by ITK itself for zero spacing), the CT named."""
    ct = tmp_path / "ct.mha"
    _write_ct(ct)
    text = ct.read_bytes().replace(b"ElementSpacing = 4 4 4",
                                   b"ElementSpacing = " + spacing.encode())
    assert text != ct.read_bytes()
    ct.write_bytes(text)
    line = _refused(_register_argv(case, tmp_path / "o.json", ct=ct), capsys, [ct, case["dir"]],
                    tmp_path, "CT")
    assert "spacing" in line, line
    if spacing.startswith("1e6"):
        assert "CT volume: spacing (1e+06, 1e+06, 1e+06) mm is implausibly large" in line


def test_principal_point_far_off_the_image_is_refused(case, tmp_path, capsys):
    geo = json.loads(case["geometry"].read_text())
    for pp in ([1e5, 20.0], [20.0, -300.0]):
        g = tmp_path / "g.json"
        g.write_text(json.dumps(dict(geo, principal_point_px=pp)))
        _refused(_register_argv(case, tmp_path / "o.json", geometry=g), capsys,
                 [g, case["dir"]], tmp_path, "X-ray geometry g.json: principal point",
                 "far outside the 40 x 40 image")


def test_result_worse_than_start_is_failed_not_success(case, tmp_path, capsys):
    """A method whose result is worse than its start (here: it moves the CT 25 mm off the
    true start pose) gives exit 1, a warning and quality 'failed' in OUT.json."""
    from FluoroRegLib import logic
    from FluoroRegLib.refine import RegistrationResult

    def worse(volume, views, init, progress=None, cancel=None, **options):
        pose = np.array(init, float)
        pose[0, 3] += 25.0
        return RegistrationResult(pose, [v.camera0_to_view @ pose for v in views], 0.1,
                                  "worse", [{"loss": 0.9}], 0.0)

    logic.register_method("test-worse", worse)
    try:
        out = tmp_path / "o.json"
        rc, _, err = run_cli(_register_argv(case, out) [:-4] + ["--method", "test-worse"], capsys)
    finally:
        logic.METHODS.pop("test-worse", None)
    assert rc == 1 and "Traceback" not in err
    assert "failed" in err and "ended worse than it started" in err
    res = json.loads(out.read_text())
    assert res["quality"]["verdict"] == "failed"
    assert res["similarity_start"] > 0.99  # the X-ray is the DRR at the start pose
    # a real run from the same start does not fail
    rc, _, err = run_cli(_register_argv(case, tmp_path / "ok.json") + ["--no-quality"], capsys)
    assert rc == 0, err
    assert "quality" not in json.loads((tmp_path / "ok.json").read_text())


def test_similarity_rule():
    assert checks.no_progress_quality(0.7, 0.8) is None
    q = checks.no_progress_quality(0.71, 0.0, "LNCC")
    assert q.verdict == "failed" and "LNCC 0.7100 -> 0.0000" in q.reasons[0]
    assert checks.no_progress_quality(0.7, float("nan")).verdict == "failed"
    assert checks.ended_worse(0.5, 0.4) and not checks.ended_worse(0.5, 0.5)
    assert not checks.ended_worse(0.5, 0.4995) and checks.ended_worse(0.5, 0.498)


# ------------------------------------------------------------------------------ class 3
def test_output_that_would_overwrite_an_input_is_refused(case, tmp_path, capsys):
    link = tmp_path / "hardlink.json"
    os.link(case["geometry"], link)
    for out in (case["ct"], case["geometry"], case["init"], case["xray"], link):
        _refused(_register_argv(case, out), capsys, [case["dir"], link], tmp_path,
                 "--out: would overwrite the input")


def test_bad_output_path_is_refused_before_any_work(case, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out, frag in [(tmp_path, "--out: is a folder"),
                      (tmp_path / "afile" / "o.json", "output folder is not a folder"),
                      (tmp_path / "afile" / "sub" / "o.json", "output folder is not a folder")]:
        # the CT does not even exist: the output is checked first
        _refused(_register_argv(case, out, ct=tmp_path / "nope.nii"), capsys, [case["dir"]],
                 tmp_path, frag)


def test_missing_output_folder_is_created(case, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "o.json"
    rc, _, err = run_cli(_register_argv(case, out), capsys)
    assert rc == 0, err
    assert json.loads(out.read_text())["method"] == "ncc"
    assert files_in(tmp_path) == {"new/deeper/o.json"}


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    out = tmp_path / "o.json"
    out.write_text("old")
    with pytest.raises(TypeError):
        outputs.write_json_atomic(out, {"x": object()})
    assert out.read_text() == "old" and files_in(tmp_path) == {"o.json"}
    outputs.write_json_atomic(out, {"x": np.float32(1.5)})
    assert json.loads(out.read_text()) == {"x": 1.5} and files_in(tmp_path) == {"o.json"}


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError, OSError])
def test_output_set_is_all_or_nothing(tmp_path, error):
    (tmp_path / "b.txt").write_text("old b")

    def fail(_tmp):
        raise error("disk full")

    with pytest.raises((error, FileReadError)):
        with outputs.OutputSet() as outs:
            outs.write_json(tmp_path / "a.json", {"a": 1})
            outs.write_text(tmp_path / "b.txt", "new b")
            outs.write(tmp_path / "c.obj", fail)
    assert files_in(tmp_path) == {"b.txt"} and (tmp_path / "b.txt").read_text() == "old b"
    with outputs.OutputSet() as outs:
        outs.write_json(tmp_path / "a.json", {"a": 1})
        outs.write_text(tmp_path / "b.txt", "new b")
    assert files_in(tmp_path) == {"a.json", "b.txt"}


def test_check_outputs_side_files_and_each_other(tmp_path):
    a = tmp_path / "in.obj"
    a.write_text("v 0 0 0\n")
    with pytest.raises(InputError, match=r"^--out \(side\): would overwrite the input"):
        outputs.check_outputs([(tmp_path / "o.json", "--out"), (a, "--out (side)")], [a])
    with pytest.raises(InputError, match=r"^--b: is the same file as --a"):
        outputs.check_outputs([(tmp_path / "x.json", "--a"), (tmp_path / "x.json", "--b")])
    assert outputs.check_output(tmp_path / "new" / "o.json", create_folder=True).name == "o.json"


def test_ctrl_c_prints_one_line_exit_130_no_output(case, tmp_path, capsys, monkeypatch):
    from FluoroRegLib import logic

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(logic, "register_arrays", interrupted)
    before = hashes([case["dir"]])
    rc, out, err = run_cli(_register_argv(case, tmp_path / "o.json"), capsys)
    assert rc == 130 and err.strip() == "surgreg: cancelled by user" and "Traceback" not in err
    assert files_in(tmp_path) == set() and hashes([case["dir"]]) == before


# ------------------------------------------------------------------------------ class 4
def test_device_option(case, tmp_path, capsys):
    from SurgicalReg2D3DLib.device import parse_device

    _refused(_register_argv(case, tmp_path / "o.json", extra=["--device", "gpu0"]), capsys,
             [case["dir"]], tmp_path, "--device: unknown device 'gpu0'")
    lines = []
    assert str(parse_device("cpu")) == "cpu"
    with pytest.raises(InputError, match=r"^--device: unknown device 'tpu'"):
        parse_device("tpu")
    import torch

    if not torch.cuda.is_available():
        assert str(parse_device("cuda:1", warn=lines.append)) == "cpu"
        assert str(parse_device("gpu:0", warn=lambda _line: None)) == "cpu"
        assert lines and lines[0].startswith("warning: --device cuda:1:") \
            and "running on the CPU instead" in lines[0]
        rc, _, err = run_cli(_register_argv(case, tmp_path / "o.json",
                                            extra=["--device", "cuda"]), capsys)
        assert rc == 0 and "warning: --device cuda:" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ class 5
_SHEAR = [[1, 0.3, 0], [0, 1, 0], [0, 0, 1]]


def test_one_geometry_rule_for_every_volume_reader(case, tmp_path, capsys, ctx):
    """A sheared direction matrix is refused the same way by io.load_volume, the
    FluoroReg CLI reader and the USSliceReg volume reader."""
    from SurgicalReg2D3DLib import io
    from USSliceRegLib.plus_io import read_reference_volume

    ct = _write_ct(tmp_path / "shear.mha")
    text = ct.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                   b"TransformMatrix = 1 0 0 0.3 1 0 0 0 1")
    assert text != ct.read_bytes()
    ct.write_bytes(text)
    msg = "direction matrix is not orthonormal"
    with pytest.raises(GeometryError, match=rf"^volume file: {msg}"):
        io.load_volume(ctx, ct)
    _refused(_register_argv(case, tmp_path / "o.json", ct=ct), capsys, [ct, case["dir"]],
             tmp_path, f"CT volume: {msg}")
    with pytest.raises(GeometryError, match=rf"^volume shear.mha: {msg}"):
        read_reference_volume(ct)
    for bad in ([1, 1, 1], [np.nan, 1, 1]):
        with pytest.raises(GeometryError, match=r"^CT: spacing must be positive"):
            checks.check_geometry([0.0, 1, 1] if bad[0] == 1 else bad, np.eye(3), [0, 0, 0], "CT")
    with pytest.raises(GeometryError, match=r"^CT: origin must be finite"):
        checks.check_geometry([1, 1, 1], np.eye(3), [0, np.inf, 0], "CT")


# ------------------------------------------------------------------------------ class 6
@pytest.mark.parametrize("option,value,fragment", [
    ("--n-samples", "0", "--n-samples: must be from 1 to 10000, got 0"),
    ("--n-samples", "100000000", "--n-samples: must be from 1 to 10000"),
    ("--iterations", "0", "--iterations: must be from 1 to 10000, got 0"),
    ("--iterations", "-3", "--iterations: must be from 1 to 10000"),
])
def test_numeric_options_have_bounds(case, tmp_path, capsys, option, value, fragment):
    argv = _register_argv(case, tmp_path / "o.json")
    argv = argv[:argv.index("--iterations")] + [option, value]
    _refused(argv, capsys, [case["dir"]], tmp_path, fragment)


def test_load_model_failure_leaves_no_nodes(ctx, tmp_path):
    from SurgicalReg2D3DLib import io

    for name, data in [("bad.vtk", b"# vtk DataFile Version 3.0\ngarbage\n"),
                       # read, but no points: MRML adds model + display + storage nodes
                       ("empty.vtk", b"# vtk DataFile Version 3.0\nempty\nASCII\n"
                                     b"DATASET POLYDATA\nPOINTS 0 float\n"),
                       ("bad.vtp", b"<?xml version='1.0'?><VTKFile type='PolyData'></VTKFile>"),
                       ("empty.stl", b""), ("junk.ply", b"ply\nformat nonsense\n")]:
        (tmp_path / name).write_bytes(data)
        n = ctx.scene.GetNumberOfNodes()
        with pytest.raises(FileReadError, match=r"^model file: (cannot read mesh|file is "
                                                r"truncated)"):
            io.load_model(ctx, tmp_path / name)
        assert ctx.scene.GetNumberOfNodes() == n


def test_file_checks_pass_on_complete_files(tmp_path, sample_data):
    """The truncation check accepts every complete shipped volume / image file."""
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8), np.uint8))
    for p in [sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz", tmp_path / "a.png",
              tmp_path / "a.jpg"] + sorted((sample_data / "ultrasound").glob("*.mha")) \
            + sorted((sample_data / "ultrasound").glob("*.nrrd")):
        checks.check_file_complete(p, "file")
    for p in (tmp_path / "a.png", tmp_path / "a.jpg"):
        with pytest.raises(FileReadError, match=r"^image: file is truncated"):
            checks.check_file_complete(truncate(p, tmp_path / ("short" + p.suffix), 0.7),
                                       "image")


def test_demo_output_folder_is_checked_first(tmp_path, capsys):
    afile = tmp_path / "report"
    afile.write_text("keep")
    rc, _, err = run_cli(["demo", "--out", afile, "--quick", "--modules", "fluoro"], capsys)
    assert_refused(rc, err, "demo output folder: is a file, expected a folder")
    assert afile.read_text() == "keep" and files_in(tmp_path) == {"report"}


@pytest.mark.parametrize("ext,binary", [(".ply", True), (".ply", False), (".stl", True),
                                        (".stl", False), (".obj", False)])
def test_truncated_mesh_is_refused(sample_data, tmp_path, ctx, ext, binary):
    """A mesh file cut short is refused by load_mesh_arrays and io.load_model (VTK's PLY
    reader crashes the whole process on a binary PLY cut short)."""
    import vtk

    from SurgicalReg2D3DLib import io

    poly_reader = vtk.vtkPLYReader()
    poly_reader.SetFileName(str(sample_data / "liver_sksurgery" / "liver" / "liver_sub.ply"))
    poly_reader.Update()
    full = tmp_path / f"full{ext}"
    if ext == ".obj":
        v, f = io.load_mesh_arrays(sample_data / "liver_sksurgery" / "liver" / "liver_sub.ply")
        full.write_text("".join(f"v {a:.4f} {b:.4f} {c:.4f}\n" for a, b, c in v)
                        + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in f))
    else:
        writer = vtk.vtkPLYWriter() if ext == ".ply" else vtk.vtkSTLWriter()
        writer.SetFileName(str(full))
        writer.SetInputData(poly_reader.GetOutput())
        writer.SetFileTypeToBinary() if binary else writer.SetFileTypeToASCII()
        assert writer.Write()
    v, f = io.load_mesh_arrays(full)
    assert len(f) == 2500
    fractions = (0.2, 0.5, 0.97) if ext != ".obj" else (0.2,)  # OBJ: cut inside a 'v' line
    for frac in fractions:
        raw = full.read_bytes()
        cut = int(len(raw) * frac)
        if ext == ".obj":
            cut = raw.index(b" ", raw.index(b"\nv ", cut) + 3)
        short = tmp_path / f"short{ext}"
        short.write_bytes(raw[:cut])
        before = hashes([short])
        with pytest.raises(FileReadError, match=r"^mesh file: (file is truncated|cannot parse)"):
            io.load_mesh_arrays(short)
        if ext != ".obj":
            n = ctx.scene.GetNumberOfNodes()
            with pytest.raises(FileReadError, match=r"^model file: file is truncated"):
                io.load_model(ctx, short)
            assert ctx.scene.GetNumberOfNodes() == n
        assert hashes([short]) == before
