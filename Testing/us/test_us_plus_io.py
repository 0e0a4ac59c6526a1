"""USSliceReg PLUS readers on the shipped real sweeps (and tiny synthetic files for errors)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError
from USSliceRegLib.plus_io import (LPS_TO_RAS, image_to_reference_chain, load_sequence_to_mrml,
                                   read_calibration, read_reference_volume, read_sequence)

US = "ultrasound"


@pytest.fixture(scope="module")
def spine(sample_data):
    d = sample_data / US
    seq = read_sequence(d / "SpinePhantomFreehand.igs.mha")
    cal = read_calibration(d / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml")
    vol = read_reference_volume(d / "SpinePhantomFreehandReconstructed.mha")
    return seq, cal, vol


def _header_matrix(path, frame, name):
    text = path.read_bytes()[:200_000].decode("latin-1")
    m = re.search(rf"Seq_Frame{frame:04d}_{name}Transform\s*:?=\s*([^\n]+)", text)
    return np.array([float(v) for v in m.group(1).split()]).reshape(4, 4)


def test_transforms_match_raw_header_text(spine, sample_data):
    seq, _, _ = spine
    path = sample_data / US / "SpinePhantomFreehand.igs.mha"
    assert seq.images.shape == (21, 616, 820)
    for frame in (0, 7, 20):
        for name in ("ProbeToTracker", "ReferenceToTracker"):
            np.testing.assert_array_equal(seq.transforms[name][frame],
                                          _header_matrix(path, frame, name))
    assert seq.timestamps[0] == pytest.approx(215.102186)
    assert seq.orientation == "MFA"
    assert seq.statuses["ProbeToTracker"].all()


def test_images_match_simpleitk(spine, sample_data):
    import SimpleITK as sitk

    seq, _, _ = spine
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_data / US / "SpinePhantomFreehand.igs.mha")))
    np.testing.assert_array_equal(seq.images, ref)


def test_volume_geometry_matches_simpleitk_and_slicer(spine, sample_data, ctx):
    import SimpleITK as sitk
    from SurgicalReg2D3DLib.io import load_volume
    from SurgicalReg2D3DLib.nodes import volume_from_node

    _, _, vol = spine
    path = sample_data / US / "SpinePhantomFreehandReconstructed.mha"
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(vol.ijk_to_reference[:3, 3], img.GetOrigin())
    np.testing.assert_allclose(np.diag(vol.ijk_to_reference)[:3], img.GetSpacing())
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))
    node = load_volume(ctx, path)
    np.testing.assert_allclose(volume_from_node(node).ijk_to_ras, vol.ijk_to_ras, atol=1e-4)


def test_nwire_mha_and_nrrd_agree(sample_data):
    a = read_sequence(sample_data / US / "NwirePhantomFreehand.igs.mha")
    b = read_sequence(sample_data / US / "NwirePhantomFreehand.igs.nrrd")
    assert a.images.shape == b.images.shape == (97, 616, 820)
    np.testing.assert_array_equal(a.images, b.images)
    for name in ("ProbeToTracker", "ReferenceToTracker", "StylusToTracker"):
        np.testing.assert_array_equal(a.transforms[name], b.transforms[name])
        np.testing.assert_array_equal(a.statuses[name], b.statuses[name])
    # The stylus is INVALID in this recording, probe and reference are OK.
    assert not a.statuses["StylusToTracker"][0] and a.statuses["ProbeToTracker"].all()


def test_calibration_is_the_full_xml_matrix(spine):
    _, cal, _ = spine
    expected = np.array([[-0.00157821, 0.0785919, -0.00803285, 15.3978],
                         [-0.0839128, 0.00372697, 0.0153803, 49.5705],
                         [0.0159024, 0.00714276, 0.0803604, -8.63446],
                         [0, 0, 0, 1]])
    np.testing.assert_array_equal(cal, expected)


def test_chain_reproduces_recorded_ncc(spine):
    """Sampling PLUS's volume (scipy, independent of our slicer) on each frame's plane at
    inv(ReferenceToTracker) @ ProbeToTracker @ ImageToProbe matches the frame (NCC ~0.98),
    and a 5 mm shift breaks it."""
    from scipy.ndimage import map_coordinates

    seq, cal, vol = spine
    chain = image_to_reference_chain(seq, cal)
    assert list(chain.indices) == list(range(21)) and chain.skipped == []
    probe_to_ref = np.linalg.inv(seq.transforms["ReferenceToTracker"][4]) @ \
        seq.transforms["ProbeToTracker"][4]
    np.testing.assert_allclose(chain.image_to_reference[4], probe_to_ref @ cal)
    rr, cc = np.mgrid[0:616:4, 0:820:4]
    pix = np.stack([cc.ravel(), rr.ravel(), 0 * cc.ravel(), 1 + 0 * cc.ravel()]).astype(float)
    r2i = np.linalg.inv(vol.ijk_to_reference)
    for k in (2, 10, 18):
        nccs = []
        for shift in (0.0, 5.0):
            T = chain.image_to_reference[k].copy()
            T[0, 3] += shift
            ijk = r2i @ T @ pix
            s = map_coordinates(vol.array.astype(float), ijk[[2, 1, 0]], order=1)
            f = seq.images[k][::4, ::4].ravel().astype(float)
            m = (s > 0) & (f > 0)
            nccs.append(np.corrcoef(f[m], s[m])[0, 1])
        assert nccs[0] > 0.97
        assert nccs[1] < 0.93


def test_load_into_mrml_places_frames_in_ras(spine, ctx):
    from SurgicalReg2D3DLib.nodes import matrix_from_transform_node, world_matrix

    seq, cal, _ = spine
    chain = image_to_reference_chain(seq, cal)
    small = type(seq)(**{**seq.__dict__, "images": seq.images[:, ::8, ::8]})
    img_seq, tfm_seq, browser = load_sequence_to_mrml(ctx, small, chain, "spine")
    assert img_seq.GetNumberOfDataNodes() == 21
    browser.SetSelectedItemNumber(3)
    proxy = browser.GetProxyNode(img_seq)
    np.testing.assert_allclose(world_matrix(proxy), LPS_TO_RAS @ chain.image_to_reference[3],
                               atol=1e-6)
    item = tfm_seq.GetNthDataNode(3)
    np.testing.assert_allclose(matrix_from_transform_node(item),
                               LPS_TO_RAS @ chain.image_to_reference[3], atol=1e-6)


# ----------------------------------------------------------------------- bad input (synthetic)
def _write_mha(path, fields, n=2, h=6, w=8):
    """A tiny synthetic PLUS-like sequence (uncompressed MetaImage)."""
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True",
             "BinaryDataByteOrderMSB = False", f"DimSize = {w} {h} {n}",
             "ElementType = MET_UCHAR", "UltrasoundImageOrientation = MF"]
    lines += [f"{k} = {v}" for k, v in fields.items()]
    lines.append("ElementDataFile = LOCAL")
    data = (np.arange(n * h * w) % 251).astype(np.uint8).tobytes()
    path.write_bytes(("\n".join(lines) + "\n").encode() + data)
    return path


EYE = "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"


def test_sequence_without_transforms(tmp_path):
    seq = read_sequence(_write_mha(tmp_path / "a.igs.mha", {"Seq_Frame0000_Timestamp": "1"}))
    with pytest.raises(InputError, match=r"^sequence a.igs.mha: no ProbeToReference or "
                                         r"ProbeToTracker\+ReferenceToTracker transforms"):
        image_to_reference_chain(seq, np.eye(4))


def test_invalid_status_frames_are_skipped_and_reported(tmp_path):
    f = {}
    for i in range(2):
        f[f"Seq_Frame{i:04d}_ProbeToTrackerTransform"] = EYE
        f[f"Seq_Frame{i:04d}_ReferenceToTrackerTransform"] = EYE
    f["Seq_Frame0001_ProbeToTrackerTransformStatus"] = "INVALID"
    seq = read_sequence(_write_mha(tmp_path / "b.igs.mha", f))
    chain = image_to_reference_chain(seq, np.diag([0.1, 0.1, 0.1, 1]))
    assert list(chain.indices) == [0]
    assert chain.skipped == [(1, "ProbeToTracker status INVALID")]


def test_nan_transform_with_ok_status(tmp_path):
    f = {"Seq_Frame0000_ProbeToTrackerTransform": EYE.replace("1 0 0 0 0", "nan 0 0 0 0", 1),
         "Seq_Frame0000_ReferenceToTrackerTransform": EYE}
    seq = read_sequence(_write_mha(tmp_path / "c.igs.mha", f, n=1))
    with pytest.raises(InputError, match=r"^sequence c.igs.mha: frame 0 ProbeToTrackerTransform "
                                         r"contains NaN or inf although its status is OK"):
        image_to_reference_chain(seq, np.eye(4))


@pytest.mark.parametrize("body, error, message", [
    (None, FileReadError, r"^calibration .*missing.xml: no such file"),
    ("<not xml", FileReadError, r"^calibration bad.xml: not a valid XML file"),
    ('<C><Transform From="Probe" To="Tracker" Matrix="%s"/></C>' % EYE, InputError,
     r"^calibration bad.xml: no ImageToProbe transform \(found: ProbeToTracker\)"),
    ('<C><Transform From="Image" To="Probe" Matrix="1 2 3"/></C>', InputError,
     r"^calibration bad.xml: ImageToProbe Matrix: expected 16 numbers, got 3"),
    ('<C><Transform From="Image" To="Probe" Matrix="0 0 0 1 0 0 0 1 0 0 0 1 0 0 0 1"/></C>',
     GeometryError, r"^calibration bad.xml: ImageToProbe Matrix is singular"),
    ('<C><Transform From="Image" To="Probe" Matrix="1 0 0 0 0 1 0 0 0 0 1 0 0 0 2 1"/></C>',
     GeometryError, r"^calibration bad.xml: ImageToProbe last row must be 0 0 0 1"),
])
def test_bad_calibrations(tmp_path, body, error, message):
    path = tmp_path / ("missing.xml" if body is None else "bad.xml")
    if body is not None:
        path.write_text(body)
    with pytest.raises(error, match=message):
        read_calibration(path)


def test_unreadable_and_2d_files(tmp_path):
    (tmp_path / "x.mha").write_text("garbage without header\n")
    with pytest.raises(FileReadError, match=r"^sequence file .*x.mha: malformed header line"):
        read_sequence(tmp_path / "x.mha")
    p = _write_mha(tmp_path / "flat.mha", {}, n=1)
    with pytest.raises(InputError, match=r"^volume flat.mha: expected a 3D volume, got shape"):
        read_reference_volume(p)
