"""Data safety (issue 16) for ``surgreg us``: corrupt or inconsistent inputs are refused
with a message naming the input, a frame that ended worse than it started is reported as
``failed`` (and does not seed the next frame), outputs are checked before any work.

Inputs are the shipped spine phantom files (real), edited copies of them, and SYNTHETIC
fake methods where the test needs a registration that ends worse than it started.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from safety_helpers import assert_refused, files_in, hashes, run_cli, truncate


@pytest.fixture()
def spine(sample_data, tmp_path):
    """Copies of the shipped spine sweep, its reconstruction and calibration."""
    src = sample_data / "ultrasound"
    d = tmp_path / "in"
    d.mkdir()
    names = {"sequence": "SpinePhantomFreehand.igs.mha",
             "volume": "SpinePhantomFreehandReconstructed.mha",
             "calibration": "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"}
    out = {}
    for key, name in names.items():
        shutil.copy(src / name, d / name)
        out[key] = d / name
    out["dir"] = d
    return out


def _argv(spine, out, **over):
    argv = ["us", "register", "--volume", over.get("volume", spine["volume"]),
            "--sequence", over.get("sequence", spine["sequence"]),
            "--calibration", over.get("calibration", spine["calibration"]), "--out", out,
            "--quiet"]
    return argv + list(over.get("extra", []))


def _refused(argv, capsys, spine, tmp_path, *fragments, extra_inputs=()):
    before = hashes([spine["dir"], *extra_inputs])
    listing = files_in(tmp_path)
    rc, _, err = run_cli(argv, capsys)
    line = assert_refused(rc, err, *fragments)
    assert hashes([spine["dir"], *extra_inputs]) == before
    assert files_in(tmp_path) == listing
    return line


def _edit_header(path, pattern: bytes, repl: bytes, dst=None):
    """Copy of a MetaImage file with a regular-expression edit of its header only."""
    raw = path.read_bytes()
    end = raw.index(b"ElementDataFile")
    head, n = re.subn(pattern, repl, raw[:end])
    assert n >= 1
    dst = dst or path.with_name("edited_" + path.name)
    dst.write_bytes(head + raw[end:])
    return dst


# ------------------------------------------------------------------------ corrupt input
@pytest.mark.parametrize("which,fragment", [
    ("volume", "volume "), ("sequence", "sequence file ")])
def test_truncated_files_are_refused_and_named(spine, tmp_path, capsys, which, fragment):
    short = truncate(spine[which], tmp_path / ("short_" + spine[which].name), 0.7)
    line = _refused(_argv(spine, tmp_path / "o.json", **{which: short}), capsys, spine,
                    tmp_path, fragment + str(short), extra_inputs=[short])
    assert "truncated" in line or "corrupt" in line
    if which == "volume":
        assert "sequence file" not in line


@pytest.mark.parametrize("spacing", [b"0.5 x 0.5", b"0.5 0.5", b"", b"0.5 -0.5 0.5",
                                     b"nan 0.5 0.5"])
def test_malformed_element_spacing_is_named(spine, tmp_path, capsys, spacing):
    vol = _edit_header(spine["volume"], rb"ElementSpacing = [^\n]*", b"ElementSpacing = " + spacing,
                       tmp_path / "vol.mha")
    line = _refused(_argv(spine, tmp_path / "o.json", volume=vol), capsys, spine, tmp_path,
                    "volume vol.mha:", extra_inputs=[vol])
    assert "ElementSpacing" in line or "spacing must be positive" in line


def test_sheared_and_constant_volumes_are_refused(spine, tmp_path, capsys):
    vol = _edit_header(spine["volume"], rb"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                       b"TransformMatrix = 1 0 0 0.2 1 0 0 0 1", tmp_path / "shear.mha")
    _refused(_argv(spine, tmp_path / "o.json", volume=vol), capsys, spine, tmp_path,
             "volume shear.mha: direction matrix is not orthonormal", extra_inputs=[vol])
    import SimpleITK as sitk

    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 20, 20), 7, np.uint8)), str(flat))
    _refused(_argv(spine, tmp_path / "o.json", volume=flat), capsys, spine, tmp_path,
             "volume flat.mha: all voxels have the same value (7)", extra_inputs=[flat])


@pytest.mark.parametrize("frame", [0, 7])
def test_singular_reference_to_tracker_names_the_frame(spine, tmp_path, capsys, frame):
    zeros = b"0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1"
    seq = _edit_header(spine["sequence"],
                       rb"Seq_Frame%04d_ReferenceToTrackerTransform = [^\n]*" % frame,
                       b"Seq_Frame%04d_ReferenceToTrackerTransform = " % frame + zeros,
                       tmp_path / "seq.igs.mha")
    _refused(_argv(spine, tmp_path / "o.json", sequence=seq), capsys, spine, tmp_path,
             f"frame {frame} ReferenceToTrackerTransform is singular", extra_inputs=[seq])


# ------------------------------------------------------------------------------ outputs
def test_output_onto_an_input_is_refused(spine, tmp_path, capsys):
    init = tmp_path / "init.json"
    init.write_text(json.dumps({"frames": []}))
    for out in (spine["calibration"], spine["volume"], spine["sequence"], init):
        _refused(_argv(spine, out, extra=["--init", init]), capsys, spine, tmp_path,
                 "--out: would overwrite the input", extra_inputs=[init])
    (tmp_path / "afile").write_text("x")
    _refused(_argv(spine, tmp_path / "afile" / "o.json"), capsys, spine, tmp_path,
             "--out: output folder is not a folder")
    _refused(_argv(spine, tmp_path), capsys, spine, tmp_path, "--out: is a folder")


@pytest.mark.parametrize("frames,fragment", [
    ("3,3", "--frames: 3 is listed more than once"), ("", "--frames: empty list"),
    (" ", "--frames: empty list"), ("2,5,2,5", "--frames: 2 is listed more than once")])
def test_frames_option(spine, tmp_path, capsys, frames, fragment):
    _refused(_argv(spine, tmp_path / "o.json", extra=["--frames", frames]), capsys, spine,
             tmp_path, fragment)


def test_frames_api_rejects_duplicates_and_empty(spine):
    from USSliceRegLib.logic import load_inputs, register_tracked

    volume, seq, chain = load_inputs(spine["volume"], spine["sequence"], spine["calibration"])
    with pytest.raises(InputError, match=r"^frames: frame 4 is listed more than once"):
        register_tracked(volume, seq, chain, frames=[4, 4])
    with pytest.raises(InputError, match=r"^frames: the list of frames is empty"):
        register_tracked(volume, seq, chain, frames=[])


# ------------------------------------------------------------- ended worse than it started
def _fake_factory(log, worse_frames):
    """SYNTHETIC method: frames in ``worse_frames`` end with a lower LNCC than at their
    start (and a 5 mm correction); others improve (1 mm). ``log`` records the start
    corrections each call received."""
    from USSliceRegLib.config import FrameResult

    def factory(volume, ijk, frame_shape, fan, volume_mask=None, config=None, device=None):
        def method(frames, starts, init_corrections=None, indices=None, cancel=None,
                   tracking=False):
            out = []
            for n, i in enumerate(indices):
                c0 = np.eye(4) if init_corrections is None else np.asarray(init_corrections[n])
                log.append((i, c0.copy()))
                step = np.eye(4)
                step[0, 3] = 5.0 if i in worse_frames else 1.0
                corr = step @ c0
                out.append(FrameResult(starts[n], corr @ starts[n], corr, 0.7,
                                       0.1 if i in worse_frames else 0.8, 1.0, 1, 0.0))
            return out

        return method

    return factory


@pytest.mark.parametrize("worse", [[10], [10, 11, 12]])
def test_failed_frames_are_reported_and_do_not_seed_the_next(spine, tmp_path, capsys, worse):
    from USSliceRegLib import methods

    log = []
    methods.METHODS["test-worse"] = _fake_factory(log, set(worse))
    try:
        out = tmp_path / "o.json"
        rc, _, err = run_cli(_argv(spine, out, extra=["--method", "test-worse", "--frames",
                                                      "9,10,11,12,13", "--temporal",
                                                      "--no-quality"]), capsys)
    finally:
        methods.METHODS.pop("test-worse", None)
    assert rc == 1 and "Traceback" not in err
    assert f"{len(worse)} of 5 frames failed" in err
    res = json.loads(out.read_text())
    verdicts = {f["index"]: f.get("quality", {}).get("verdict") for f in res["frames"]}
    assert {i for i, v in verdicts.items() if v == "failed"} == set(worse)
    for i in worse:
        assert f"warning: frame {i}: failed (ended worse than it started: LNCC 0.7000 -> " \
               "0.1000" in err
    # temporal seeding: each frame starts from the last GOOD frame's correction
    starts = {i: c for i, c in log}
    good_shift = 0.0
    for i in (9, 10, 11, 12, 13):
        assert starts[i][0, 3] == pytest.approx(good_shift)
        if i not in worse:
            good_shift += 1.0


def test_no_failed_frames_exit_zero(spine, tmp_path, capsys):
    from USSliceRegLib import methods

    methods.METHODS["test-worse"] = _fake_factory([], set())
    try:
        rc, _, err = run_cli(_argv(spine, tmp_path / "o.json", extra=[
            "--method", "test-worse", "--frames", "3,4", "--no-quality"]), capsys)
    finally:
        methods.METHODS.pop("test-worse", None)
    assert rc == 0 and "failed" not in err
    res = json.loads((tmp_path / "o.json").read_text())
    assert all("quality" not in f for f in res["frames"])


def test_live_registration_keeps_the_last_good_correction():
    from USSliceRegLib.temporal import LiveRegistration

    log = []
    live = LiveRegistration(_fake_factory(log, {1})(None, None, None, None))
    frame, pose = np.zeros((8, 8)), np.eye(4)
    for _ in range(3):
        live.update(frame, pose)
    assert [c[0, 3] for _, c in log] == [0.0, 1.0, 1.0]


def test_geometry_error_type(spine, tmp_path):
    from USSliceRegLib.plus_io import read_reference_volume

    vol = _edit_header(spine["volume"], rb"Offset = [^\n]*", b"Offset = 0 inf 0",
                       tmp_path / "v.mha")
    with pytest.raises(GeometryError, match=r"^volume v.mha: origin must be finite"):
        read_reference_volume(vol)
