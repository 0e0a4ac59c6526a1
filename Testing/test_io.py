"""File reading and writing (io.py) on a real slicer-core scene with the shipped sample data.

Independent references: SimpleITK (volume geometry, transforms), pydicom (DICOM slice
positions), OpenCV (image pixels and row order), plain-text parsing of PLY/OBJ files and
the JSON of Markups files. Large volumes are cropped in memory before writing.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import slicer.util
import vtk

from SurgicalReg2D3DLib import io, nodes
from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _sitk_matrix(image) -> np.ndarray:
    """Index -> LPS 4x4 of a 3D SimpleITK image, built here from its own getters."""
    m = np.eye(4)
    d = np.array(image.GetDirection()).reshape(3, 3)
    m[:3, :3] = d @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def _rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


# ----------------------------------------------------------------------------- volumes
def test_load_nifti_ct_matches_simpleitk(ctx, sample_data):
    import SimpleITK as sitk

    path = sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz"
    digest = _sha(path)
    node = io.load_volume(ctx, path)
    assert node.GetName() == "thorax_aorta_ct_cropped"
    data = nodes.volume_from_node(node, "CT")
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(data.ijk_to_ras, LPS_TO_RAS @ _sitk_matrix(image), atol=1e-6)
    np.testing.assert_array_equal(data.array, sitk.GetArrayViewFromImage(image))
    assert _sha(path) == digest


def test_volume_file_node_array_node_file_keeps_geometry(ctx, sample_data, tmp_path):
    """Crop the real CT in memory, write NRRD and NIfTI, compare with SimpleITK's crop."""
    import SimpleITK as sitk

    path = sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz"
    node = io.load_volume(ctx, path, name="ct")
    data = nodes.volume_from_node(node, "CT")
    k0, j0, i0 = 100, 30, 40
    crop = data.array[k0:k0 + 12, j0:j0 + 20, i0:i0 + 16]
    shift = np.eye(4)
    shift[:3, 3] = [i0, j0, k0]
    cropped = nodes.volume_to_node(ctx, crop, data.ijk_to_ras @ shift, "ct crop")
    mtime = cropped.GetMTime()
    reference = sitk.ReadImage(str(path))[i0:i0 + 16, j0:j0 + 20, k0:k0 + 12]
    for suffix in (".nrrd", ".nii.gz", ".mha"):
        out = io.save_volume(cropped, tmp_path / f"crop{suffix}")
        written = sitk.ReadImage(str(out))
        assert written.GetSize() == reference.GetSize() == (16, 20, 12)
        np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written),
                                      sitk.GetArrayViewFromImage(reference))
        back = nodes.volume_from_node(io.load_volume(ctx, out), "crop")
        np.testing.assert_array_equal(back.array, crop)
        np.testing.assert_allclose(back.ijk_to_ras, data.ijk_to_ras @ shift, atol=1e-4)
    assert cropped.GetMTime() == mtime  # saving does not touch the node
    assert cropped.GetStorageNode() is None


def test_volume_file_node_tensor_node_file_keeps_geometry(ctx, sample_data, tmp_path):
    """Real CT: file -> node -> torch tensor (on the chosen device) -> node -> file.

    References: SimpleITK's reading of the original file and SimpleITK's own crop of it.
    """
    import SimpleITK as sitk
    import torch

    from SurgicalReg2D3DLib.device import choose_device

    path = sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz"
    digest = _sha(path)
    data = nodes.volume_from_node(io.load_volume(ctx, path, name="ct"), "CT")
    device = choose_device()
    tensor = data.to_tensor(device)
    ijk_to_ras = data.ijk_to_ras_tensor(device)
    assert tensor.dtype == torch.int16 and tensor.device.type == device.type
    assert tuple(tensor.shape) == (164, 126, 120)
    assert ijk_to_ras.dtype == torch.float64 and tuple(ijk_to_ras.shape) == (4, 4)
    reference = sitk.ReadImage(str(path))

    # the whole volume, straight back from the tensor
    whole = nodes.volume_to_node(ctx, tensor, ijk_to_ras, "ct from tensor")
    out = io.save_volume(whole, tmp_path / "whole.nrrd", compress=False)
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == reference.GetSize()
    assert written.GetPixelID() == reference.GetPixelID()
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written),
                                  sitk.GetArrayViewFromImage(reference))

    # a crop done in torch (voxels and geometry) against SimpleITK's crop of the file
    k0, j0, i0 = 90, 20, 33
    crop = tensor[k0:k0 + 10, j0:j0 + 14, i0:i0 + 12].to(torch.float32)
    shift = torch.eye(4, dtype=torch.float64, device=device)
    shift[:3, 3] = torch.tensor([i0, j0, k0], dtype=torch.float64)
    node = nodes.volume_to_node(ctx, crop, ijk_to_ras @ shift, "ct crop")
    for suffix in (".nii.gz", ".mha"):
        out = io.save_volume(node, tmp_path / f"crop{suffix}")
        written = sitk.ReadImage(str(out))
        expected = reference[i0:i0 + 12, j0:j0 + 14, k0:k0 + 10]
        assert written.GetSize() == expected.GetSize() == (12, 14, 10)
        np.testing.assert_allclose(written.GetOrigin(), expected.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetSpacing(), expected.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(written.GetDirection(), expected.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written),
                                      sitk.GetArrayViewFromImage(expected).astype(np.float32))
    # the tensor is a copy: changing it changes neither the VolumeData nor the file
    tensor.zero_()
    assert int(np.abs(data.array).max()) > 0
    assert _sha(path) == digest


def test_volume_file_geometry_errors(ctx, tmp_path):
    """Hand-written NRRD headers (synthetic) with zero spacing and a sheared direction."""
    def write(name, directions):
        header = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
                  f"sizes: 2 3 4\nspace directions: {directions}\nkinds: domain domain "
                  "domain\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n\n")
        path = tmp_path / name
        path.write_bytes(header.encode() + np.arange(24, dtype="<i2").tobytes())
        return path

    zero = write("zero.nrrd", "(1,0,0) (0,0,0) (0,0,1)")
    digest = _sha(zero)
    n_nodes = ctx.scene.GetNumberOfNodes()
    with pytest.raises(GeometryError, match=r"^volume file: spacing must be positive, got "
                                            r"\(1, 0, 1\): .*zero\.nrrd$"):
        io.load_volume(ctx, zero)
    assert _sha(zero) == digest and ctx.scene.GetNumberOfNodes() == n_nodes
    shear = write("shear.nrrd", "(1,0,0) (0.5,1,0) (0,0,1)")
    with pytest.raises(GeometryError, match=r"^volume file: direction matrix is not "
                                            r"orthonormal: .*shear\.nrrd$"):
        io.load_volume(ctx, shear)
    # SimpleITK agrees that the file says so
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(shear))
    reader.ReadImageInformation()
    d = np.array(reader.GetDirection()).reshape(3, 3)
    assert abs(d[:, 0] @ d[:, 1]) > 0.1


def test_oblique_volume_round_trips_through_nrrd(ctx, tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    array = rng.normal(size=(4, 5, 6)).astype(np.float32)  # synthetic
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = _rotation([1, -2, 0.5], 27.0) @ np.diag([0.8, 1.1, 3.0])
    ijk_to_ras[:3, 3] = [5.0, -7.5, 12.0]
    node = nodes.volume_to_node(ctx, array, ijk_to_ras, "oblique")
    out = io.save_volume(node, tmp_path / "oblique.nrrd")
    image = sitk.ReadImage(str(out))
    np.testing.assert_allclose(LPS_TO_RAS @ _sitk_matrix(image), ijk_to_ras, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), array)
    back = nodes.volume_from_node(io.load_volume(ctx, out), "oblique")
    np.testing.assert_allclose(back.ijk_to_ras, ijk_to_ras, atol=1e-9)
    np.testing.assert_array_equal(back.array, array)
    # a vector (RGB) volume keeps its components
    rgb = rng.integers(0, 255, size=(2, 3, 4, 3)).astype(np.uint8)
    out = io.save_volume(nodes.volume_to_node(ctx, rgb, ijk_to_ras, "rgb"), tmp_path / "rgb.nrrd")
    image = sitk.ReadImage(str(out))
    assert image.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), rgb)
    np.testing.assert_allclose(LPS_TO_RAS @ _sitk_matrix(image), ijk_to_ras, atol=1e-9)


def test_left_handed_file_keeps_every_voxel_at_its_physical_position(ctx, tmp_path):
    """A synthetic left-handed volume: MRML reverses its slice axis, SimpleITK does not;
    each voxel's LPS position (SimpleITK's TransformIndexToPhysicalPoint) still holds the
    same value in the node."""
    import SimpleITK as sitk

    array = np.random.default_rng(8).integers(0, 1000, (4, 5, 6)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))  # det = -1
    path = tmp_path / "left_handed.nrrd"
    sitk.WriteImage(image, str(path))
    data = nodes.volume_from_node(io.load_volume(ctx, path), "left-handed")
    assert np.linalg.det(data.direction) > 0
    k, j, i = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    lps = np.array([image.TransformIndexToPhysicalPoint((int(a), int(b), int(c)))
                    for a, b, c in zip(i.ravel(), j.ravel(), k.ravel())])
    ijk = np.linalg.solve(data.ijk_to_lps, np.c_[lps, np.ones(len(lps))].T)[:3].T
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-6)
    ii, jj, kk = np.round(ijk).astype(int).T
    np.testing.assert_array_equal(data.array[kk, jj, ii], array.ravel())


def test_load_ultrasound_mha_volume(ctx, sample_data):
    import SimpleITK as sitk

    path = sample_data / "ultrasound" / "NwirePhantomFreehandReconstructed.mha"
    data = nodes.volume_from_node(io.load_volume(ctx, path), "US volume")
    image = sitk.ReadImage(str(path))
    assert data.shape_ijk == image.GetSize()
    np.testing.assert_allclose(data.ijk_to_lps, _sitk_matrix(image), atol=1e-5)
    np.testing.assert_array_equal(data.array, sitk.GetArrayViewFromImage(image))


def test_dicom_series_geometry(ctx, sample_data):
    import pydicom
    import SimpleITK as sitk

    folder = sample_data / "ct" / "thorax_dicom_series"
    node = io.load_dicom_series(ctx, folder)
    data = nodes.volume_from_node(node, "DICOM CT")
    assert data.array.shape == (20, 512, 512)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    np.testing.assert_allclose(data.ijk_to_ras, LPS_TO_RAS @ _sitk_matrix(image), atol=1e-6)
    np.testing.assert_array_equal(data.array[::7, ::64, ::64],
                                  sitk.GetArrayViewFromImage(image)[::7, ::64, ::64])
    # pydicom: the first slice along the slice normal is voxel k = 0
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in folder.iterdir()]
    normal = np.cross(*np.array(headers[0].ImageOrientationPatient, float).reshape(2, 3))
    headers.sort(key=lambda h: float(np.dot(normal, np.array(h.ImagePositionPatient, float))))
    first = np.array(headers[0].ImagePositionPatient, float)
    np.testing.assert_allclose(data.ijk_to_lps[:3, 3], first, atol=1e-4)
    row, col = (float(v) for v in headers[0].PixelSpacing)
    gap = np.linalg.norm(np.array(headers[1].ImagePositionPatient, float) - first)
    np.testing.assert_allclose(data.spacing, [col, row, gap], rtol=1e-5)
    np.testing.assert_allclose(data.direction[:, 0],
                               np.array(headers[0].ImageOrientationPatient[:3], float)
                               * [-1, -1, 1], atol=1e-6)
    # one file of the series read as a 2D image is the matching slice of the volume
    one = headers[5].filename
    image, ijk_to_ras = nodes.image2d_from_node(io.load_image2d(ctx, one), "slice")
    np.testing.assert_array_equal(image, data.array[5])
    np.testing.assert_allclose(ijk_to_ras[:, 3], data.ijk_to_ras @ [0, 0, 5, 1], atol=1e-4)
    np.testing.assert_allclose(ijk_to_ras[:3, :2], data.ijk_to_ras[:3, :2], atol=1e-9)


def test_volume_errors(ctx, sample_data, tmp_path):
    missing = tmp_path / "nope.nrrd"
    with pytest.raises(FileReadError, match=f"^volume file: file not found: {missing}$"):
        io.load_volume(ctx, missing)
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10\n\ngarbage")
    digest = _sha(corrupt)
    with pytest.raises(FileReadError, match=r"^volume file: cannot read image file \(unknown "
                                            r"format or corrupt\): .*corrupt\.nrrd$"):
        io.load_volume(ctx, corrupt)
    assert _sha(corrupt) == digest
    jpg = sample_data / "liver_sksurgery" / "images" / "image0232.jpg"
    with pytest.raises(InputError, match="^volume file: expected a 3D volume, got a 2D image "
                                         "of size 1920 x 1080: "):
        io.load_volume(ctx, jpg)
    with pytest.raises(FileReadError, match=f"^DICOM folder: file not found: {missing}$"):
        io.load_dicom_series(ctx, missing)
    with pytest.raises(FileReadError, match=f"^DICOM folder: no DICOM series found in "
                                            f"{tmp_path}$"):
        io.load_dicom_series(ctx, tmp_path)
    empty = ctx.add_node("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="^volume: volume node 'empty' has no image data$"):
        io.save_volume(empty, tmp_path / "x.nrrd")
    vol = nodes.volume_to_node(ctx, np.zeros((2, 2, 2)), np.eye(4), "v")
    with pytest.raises(FileReadError, match="^volume: output folder does not exist: "):
        io.save_volume(vol, tmp_path / "no" / "x.nrrd")


# ----------------------------------------------------------------------------- 2D images
def test_load_image2d_rgb_jpg_row_order(ctx, sample_data):
    import cv2

    path = sample_data / "liver_sksurgery" / "images" / "image0232.jpg"
    digest = _sha(path)
    node = io.load_image2d(ctx, path)
    assert node.IsA("vtkMRMLVectorVolumeNode")
    image, ijk_to_ras = nodes.image2d_from_node(node, "laparoscope frame")
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert image.shape == expected.shape == (1080, 1920, 3)
    # same JPEG decoder family; allow off-by-one rounding between libjpeg builds
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 2
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 0.1
    # row 0 is the top row of the file: compare the top and bottom bands' means
    assert abs(image[:40].mean() - expected[:40].mean()) < 0.5
    assert abs(image[:40].mean() - expected[-40:].mean()) > 1.0
    np.testing.assert_allclose(ijk_to_ras[2], [0, 0, 1, 0])
    assert _sha(path) == digest


def test_load_image2d_png_gray_and_16bit(ctx, tmp_path):
    import cv2

    rng = np.random.default_rng(4)
    gray = rng.integers(0, 255, size=(32, 48)).astype(np.uint8)  # synthetic
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    node = io.load_image2d(ctx, tmp_path / "gray.png", name="g")
    assert node.GetName() == "g" and not node.IsA("vtkMRMLVectorVolumeNode")
    image, _ = nodes.image2d_from_node(node, "g")
    np.testing.assert_array_equal(image, gray)
    deep = rng.integers(0, 65535, size=(16, 20)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(
        nodes.image2d_from_node(io.load_image2d(ctx, tmp_path / "deep.png"), "d")[0], deep)


def test_load_image2d_errors(ctx, sample_data, tmp_path):
    us = sample_data / "ultrasound"
    with pytest.raises(InputError, match="^image file: expected a 2D image, got a volume of "
                                         "820 x 616 x 97: "):
        io.load_image2d(ctx, us / "NwirePhantomFreehand.igs.mha")
    with pytest.raises(InputError, match="^image file: expected a grayscale or RGB\\(A\\) "
                                         "image, got 97 components per pixel: "):
        io.load_image2d(ctx, us / "NwirePhantomFreehand.igs.nrrd")
    with pytest.raises(FileReadError, match="^image file: file not found: "):
        io.load_image2d(ctx, tmp_path / "none.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(FileReadError, match="^image file: cannot read image file"):
        io.load_image2d(ctx, bad)


# ----------------------------------------------------------------------------- models
def _parse_ascii_ply(path):
    lines = open(path).read().splitlines()
    end = lines.index("end_header")
    n_v = int(next(ln.split()[2] for ln in lines if ln.startswith("element vertex")))
    n_f = int(next(ln.split()[2] for ln in lines if ln.startswith("element face")))
    v = np.array([[float(x) for x in ln.split()[:3]] for ln in lines[end + 1:end + 1 + n_v]])
    f = np.array([[int(x) for x in ln.split()[1:4]]
                  for ln in lines[end + 1 + n_v:end + 1 + n_v + n_f]])
    return v, f


def test_ply_model_lps_and_as_in_file(ctx, sample_data):
    path = sample_data / "liver_sksurgery" / "liver" / "liver_sub.ply"
    digest = _sha(path)
    file_v, file_f = _parse_ascii_ply(path)
    assert file_v.shape == (1252, 3) and file_f.shape == (2500, 3)
    v_ras, f = nodes.model_from_node(io.load_model(ctx, path), "liver")
    np.testing.assert_allclose(v_ras, file_v * [-1, -1, 1], atol=1e-4)  # LPS default
    np.testing.assert_array_equal(f, file_f)
    v_as_is, _ = nodes.model_from_node(io.load_model(ctx, path, coordinate_system="RAS"),
                                       "liver")
    np.testing.assert_allclose(v_as_is, file_v, atol=1e-4)
    v_arr, f_arr = io.load_mesh_arrays(path)
    np.testing.assert_allclose(v_arr, file_v, atol=1e-4)
    np.testing.assert_array_equal(f_arr, file_f)
    assert _sha(path) == digest


def test_obj_mesh_arrays_keep_file_vertices(ctx, sample_data):
    path = sample_data / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj"
    text = open(path).read().splitlines()
    file_v = np.array([[float(x) for x in ln.split()[1:4]] for ln in text
                       if ln.startswith("v ")])
    v, f = io.load_mesh_arrays(path)
    assert v.shape == (4002, 3) and f.shape == (8000, 3)
    np.testing.assert_array_equal(v, file_v)
    first_face = next(ln for ln in text if ln.startswith("f "))
    assert list(f[0] + 1) == [int(tok.split("/")[0]) for tok in first_face.split()[1:]]
    # Slicer's OBJ reader duplicates vertices, but the triangles are the same, LPS-flipped
    mv, mf = nodes.model_from_node(io.load_model(ctx, path), "liver", frame="LPS")
    assert mf.shape == (8000, 3)
    np.testing.assert_allclose(mv[mf], v[f], atol=1e-5)


def test_vtk_model_save_round_trip(ctx, sample_data, tmp_path):
    path = sample_data / "liver_sksurgery" / "models" / "gallbladder.vtk"
    node = io.load_model(ctx, path, name="gallbladder")
    assert node.GetName() == "gallbladder"
    v_ras, f = nodes.model_from_node(node, "gallbladder")
    file_v, file_f = io.load_mesh_arrays(path)
    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    assert reader.GetOutput().GetNumberOfPoints() == file_v.shape[0]
    np.testing.assert_allclose(file_v[17], reader.GetOutput().GetPoint(17), atol=1e-6)
    np.testing.assert_allclose(v_ras, file_v * [-1, -1, 1], atol=1e-5)
    np.testing.assert_array_equal(f, file_f)
    mtime = node.GetMTime()
    storage_before = node.GetStorageNodeID()
    for name, cs, sign in [("lps.vtk", "LPS", [-1, -1, 1]), ("ras.stl", "RAS", [1, 1, 1]),
                           ("lps.ply", "LPS", [-1, -1, 1])]:
        out = io.save_model(node, tmp_path / name, coordinate_system=cs)
        assert io.mesh_file_coordinate_system(out) == cs    # the header MRML wrote
        written_v, _ = io.load_mesh_arrays(out)
        if name.endswith(".stl"):  # STL stores facets; compare as point sets
            np.testing.assert_allclose(np.sort(written_v, axis=0),
                                       np.sort(np.unique(v_ras, axis=0), axis=0), atol=1e-4)
        else:
            np.testing.assert_allclose(written_v, v_ras * sign, atol=1e-4)
        # the file says its frame: read back to the same RAS whatever we assume
        for assumed in ("LPS", "RAS"):
            back, _ = nodes.model_from_node(io.load_model(ctx, out, coordinate_system=assumed),
                                            "back")
            if not name.endswith(".stl"):
                np.testing.assert_allclose(back, v_ras, atol=1e-4)
    assert node.GetMTime() == mtime and node.GetStorageNodeID() == storage_before


def test_model_errors(ctx, tmp_path):
    with pytest.raises(FileReadError, match=f"^model file: file not found: "
                                            f"{tmp_path / 'x.vtk'}$"):
        io.load_model(ctx, tmp_path / "x.vtk")
    with pytest.raises(FileReadError, match="^mesh file: file not found: "):
        io.load_mesh_arrays(tmp_path / "x.vtk")
    bad = tmp_path / "bad.vtk"
    bad.write_text("this is not a VTK file\n")
    with pytest.raises(FileReadError, match=r"^model file: cannot read mesh \(corrupt or "
                                            r"empty\): .*bad\.vtk"):
        io.load_model(ctx, bad)
    with pytest.raises(FileReadError, match=r"^mesh file: cannot read mesh \(corrupt or "
                                            r"empty\): .*bad\.vtk$"):
        io.load_mesh_arrays(bad)
    txt = tmp_path / "mesh.txt"
    txt.write_text("1 2 3\n")
    with pytest.raises(FileReadError, match="^model file: unsupported extension '.txt'"):
        io.load_model(ctx, txt)
    with pytest.raises(InputError, match="^model file: coordinate_system must be 'LPS' or "
                                         "'RAS', got 'XYZ'$"):
        io.load_model(ctx, bad, coordinate_system="XYZ")
    obj = tmp_path / "points.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(InputError, match="^mesh file: mesh has no triangles: "):
        io.load_mesh_arrays(obj)
    # an empty model: a valid VTK file with no points, and a points-only mesh
    empty = tmp_path / "empty.vtk"
    writer = vtk.vtkPolyDataWriter()
    writer.SetInputData(vtk.vtkPolyData())
    writer.SetFileName(str(empty))
    writer.Write()
    digest = _sha(empty)
    with pytest.raises(FileReadError, match=r"^model file: cannot read mesh \(corrupt or "
                                            r"empty\): .*empty\.vtk"):
        io.load_model(ctx, empty)
    with pytest.raises(FileReadError, match=r"^mesh file: cannot read mesh \(corrupt or "
                                            r"empty\): .*empty\.vtk$"):
        io.load_mesh_arrays(empty)
    assert _sha(empty) == digest
    points_only = io.load_model(ctx, obj, name="points only")
    with pytest.raises(InputError, match="^liver model: model 'points only' has no "
                                         "triangles$"):
        nodes.model_from_node(points_only, "liver model")


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("suffix", [".tfm", ".h5", ".txt"])
def test_itk_transform_file_vs_simpleitk(ctx, tmp_path, suffix):
    import SimpleITK as sitk

    affine = sitk.AffineTransform(3)
    affine.SetMatrix((_rotation([1, 1, 0], 25) @ np.diag([1.0, 1.2, 0.9])).ravel().tolist())
    affine.SetTranslation((12.0, -4.0, 30.0))
    affine.SetCenter((3.0, 5.0, -2.0))
    path = tmp_path / f"affine{suffix}"
    sitk.WriteTransform(affine, str(path))
    digest = _sha(path)
    node = io.load_transform(ctx, path)
    to_parent = nodes.matrix_from_transform_node(node, "affine")
    points_lps = np.array([[0, 0, 0], [10, -20, 30], [-5.5, 7.0, 100.0]])
    for p in points_lps:
        q = np.array(affine.TransformPoint(p.tolist()))
        # ITK maps parent -> child ("from parent"): RAS point of q = inv(to_parent) @ RAS(p)
        np.testing.assert_allclose(np.linalg.solve(to_parent, LPS_TO_RAS @ [*p, 1])[:3],
                                   (LPS_TO_RAS @ [*q, 1])[:3], atol=1e-6)
    assert _sha(path) == digest

    mtime = node.GetMTime()
    out = io.save_transform(node, tmp_path / f"ours{suffix}")
    assert node.GetMTime() == mtime
    read_back = sitk.ReadTransform(str(out))
    for p in points_lps:
        np.testing.assert_allclose(read_back.TransformPoint(p.tolist()),
                                   affine.TransformPoint(p.tolist()), atol=1e-6)
    again = nodes.matrix_from_transform_node(io.load_transform(ctx, out), "again")
    np.testing.assert_allclose(again, to_parent, atol=1e-9)


def test_transform_errors(ctx, tmp_path):
    with pytest.raises(FileReadError, match="^transform file: file not found: "):
        io.load_transform(ctx, tmp_path / "t.tfm")
    bad = tmp_path / "bad.tfm"
    bad.write_text("#Insight Transform File V1.0\nTransform: Nonsense_double_3_3\n")
    with pytest.raises(FileReadError, match="^transform file: cannot read transform: "
                                            ".*bad\\.tfm"):
        io.load_transform(ctx, bad)
    with pytest.raises(InputError, match="^transform: expected a transform node"):
        io.save_transform(ctx.add_node("vtkMRMLModelNode", "m"), tmp_path / "t.tfm")


def test_read_matrix_txt(sample_data, tmp_path):
    path = sample_data / "liver_sksurgery" / "liver" / "model_to_camera.txt"
    m = io.read_matrix_txt(path)
    np.testing.assert_array_equal(m, np.loadtxt(path))
    out = io.write_matrix_txt(m, tmp_path / "m.txt")
    np.testing.assert_array_equal(io.read_matrix_txt(out), m)
    (tmp_path / "rt.txt").write_text("1, 0, 0, 5\n0, 1, 0, 6\n0, 0, 1, 7\n")
    np.testing.assert_array_equal(io.read_matrix_txt(tmp_path / "rt.txt")[:, 3], [5, 6, 7, 1])
    (tmp_path / "short.txt").write_text("1 2 3\n")
    with pytest.raises(FileReadError, match="^model_to_camera: expected 16 numbers \\(a 4x4 "
                                            "matrix\\), got 3: "):
        io.read_matrix_txt(tmp_path / "short.txt", "model_to_camera")
    (tmp_path / "words.txt").write_text("one two\n")
    with pytest.raises(FileReadError, match="^matrix file: not a text file of numbers: "):
        io.read_matrix_txt(tmp_path / "words.txt")
    (tmp_path / "row.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 2 1\n")
    with pytest.raises(InputError, match="^matrix file: last row of the 4x4 matrix must be "):
        io.read_matrix_txt(tmp_path / "row.txt")
    with pytest.raises(FileReadError, match="^matrix file: file not found: "):
        io.read_matrix_txt(tmp_path / "none.txt")


# ----------------------------------------------------------------------------- markups
@pytest.mark.parametrize("kind", ["fiducial", "closed_curve"])
def test_markups_json_round_trip(ctx, tmp_path, kind):
    points = np.array([[10.5, -20.0, 30.0], [1.0, 2.0, 3.0], [-4.0, 5.5, -6.0]])
    node = nodes.points_to_markups(ctx, points, "landmarks", kind=kind,
                                   labels=["L1", "L2", "L3"])
    mtime = node.GetMTime()
    out = io.save_markups(node, tmp_path / "landmarks.mrk.json")
    assert node.GetMTime() == mtime
    content = json.loads(out.read_text())
    markup = content["markups"][0]
    assert markup["coordinateSystem"] == "LPS"
    np.testing.assert_allclose([cp["position"] for cp in markup["controlPoints"]],
                               points * [-1, -1, 1])
    assert [cp["label"] for cp in markup["controlPoints"]] == ["L1", "L2", "L3"]
    digest = _sha(out)
    back = io.load_markups(ctx, out)
    assert back.GetClassName() == node.GetClassName()
    np.testing.assert_allclose(nodes.points_from_markups(back), points, atol=1e-9)
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(back), points,
                               atol=1e-9)
    assert nodes.markups_labels(back) == ["L1", "L2", "L3"]
    assert _sha(out) == digest
    ras = io.save_markups(node, tmp_path / "ras.mrk.json", coordinate_system="RAS")
    ras_markup = json.loads(ras.read_text())["markups"][0]
    assert ras_markup["coordinateSystem"] == "RAS"
    np.testing.assert_allclose(nodes.points_from_markups(io.load_markups(ctx, ras)), points)


def test_markups_errors(ctx, tmp_path):
    with pytest.raises(FileReadError, match="^markups file: file not found: "):
        io.load_markups(ctx, tmp_path / "none.mrk.json")
    bad = tmp_path / "bad.mrk.json"
    bad.write_text("{ not json")
    with pytest.raises(FileReadError, match="^markups file: cannot read markups: "
                                            ".*bad\\.mrk\\.json"):
        io.load_markups(ctx, bad)
