"""MRML node <-> numpy adapters (nodes.py) on a real slicer-core scene.

References are independent of nodes.py: slicer.util's array accessors, the nodes' own
GetSpacing/GetOrigin/GetIJKToRASDirections, VTK transforms, and analytic values.
All volumes and meshes here are small and synthetic.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import slicer.util
import vtk

from SurgicalReg2D3DLib import nodes
from SurgicalReg2D3DLib.errors import GeometryError, InputError


def _rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique_ijk_to_ras(spacing=(0.7, 1.3, 2.5), origin=(-12.0, 40.5, 7.25)):
    m = np.eye(4)
    m[:3, :3] = _rotation([1, 2, 3], 33.0) * np.asarray(spacing)
    m[:3, 3] = origin
    return m


# ----------------------------------------------------------------------------- volumes
def test_volume_round_trip_exact_geometry_and_values(ctx):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)
    ijk_to_ras = _oblique_ijk_to_ras()
    array_before = array.copy()
    node = nodes.volume_to_node(ctx, array, ijk_to_ras, "synthetic ct")
    # independent reads of the node
    assert node.GetImageData().GetDimensions() == (7, 6, 5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    np.testing.assert_allclose(node.GetSpacing(), [0.7, 1.3, 2.5], rtol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), [-12.0, 40.5, 7.25], atol=1e-12)
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    np.testing.assert_allclose(directions, _rotation([1, 2, 3], 33.0), atol=1e-12)
    assert node.GetDisplayNode() is not None
    np.testing.assert_array_equal(array, array_before)  # input not modified

    data = nodes.volume_from_node(node, "synthetic ct")
    assert data.array.dtype == np.int16
    np.testing.assert_array_equal(data.array, array)
    np.testing.assert_allclose(data.ijk_to_ras, ijk_to_ras, atol=1e-12)
    np.testing.assert_allclose(data.spacing, [0.7, 1.3, 2.5], rtol=1e-12)
    np.testing.assert_allclose(data.origin, [-12.0, 40.5, 7.25])
    np.testing.assert_allclose(data.direction, _rotation([1, 2, 3], 33.0), atol=1e-12)
    np.testing.assert_allclose(data.ijk_to_lps, np.diag([-1, -1, 1, 1.0]) @ ijk_to_ras)
    assert data.shape_ijk == (7, 6, 5) and data.num_components == 1
    # voxel (i, j, k) = (2, 3, 4) through the node's own VTK matrix
    vmatrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vmatrix)
    expected = vmatrix.MultiplyPoint((2, 3, 4, 1))
    np.testing.assert_allclose(data.ijk_to_ras @ [2, 3, 4, 1], expected, atol=1e-9)

    # a copy, never a view: changing it leaves the node alone
    mtime = node.GetMTime()
    data.array[:] = 0
    assert slicer.util.arrayFromVolume(node)[4, 5, 6] == array[4, 5, 6]
    assert node.GetMTime() == mtime


def test_volume_to_node_updates_given_node_and_accepts_torch(ctx):
    torch = pytest.importorskip("torch")
    node = nodes.volume_to_node(ctx, np.zeros((2, 3, 4), np.float32), np.eye(4), "v")
    display = node.GetDisplayNode()
    tensor = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    m = np.diag([2.0, 2.0, 3.0, 1.0])
    same = nodes.volume_to_node(ctx, tensor, torch.tensor(m), "v", node=node)
    assert same is node and node.GetDisplayNode() is display
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), tensor.numpy())
    np.testing.assert_allclose(node.GetSpacing(), [2, 2, 3])


def test_volume_data_to_tensor_dtypes_devices_and_copies(ctx):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for dtype, torch_dtype in [(np.int16, torch.int16), (np.uint8, torch.uint8),
                               (np.uint16, torch.int32), (np.float32, torch.float32),
                               (np.float64, torch.float64)]:
        array = (rng.random((3, 4, 5)) * 200).astype(dtype)
        node = nodes.volume_to_node(ctx, array, _oblique_ijk_to_ras(), "v")
        data = nodes.volume_from_node(node, "v")
        tensor = data.to_tensor()
        assert tensor.dtype == torch_dtype and tuple(tensor.shape) == (3, 4, 5)
        np.testing.assert_array_equal(tensor.numpy(), slicer.util.arrayFromVolume(node))
        tensor.fill_(7)  # a copy: the VolumeData and the node keep their voxels
        np.testing.assert_array_equal(data.array, array)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    as_float = data.to_tensor("cpu", torch.float32)
    assert as_float.dtype == torch.float32 and as_float.device.type == "cpu"
    m = data.ijk_to_ras_tensor()
    assert m.dtype == torch.float64
    vmatrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vmatrix)
    np.testing.assert_allclose(m.numpy() @ [1, 2, 3, 1], vmatrix.MultiplyPoint((1, 2, 3, 1)),
                               atol=1e-12)
    # vector volumes keep their component axis last
    rgb = rng.integers(0, 255, size=(1, 4, 6, 3)).astype(np.uint8)
    vec = nodes.volume_from_node(nodes.volume_to_node(ctx, rgb, np.eye(4), "rgb"), "rgb",
                                 require_3d=False)
    np.testing.assert_array_equal(vec.to_tensor().numpy(), rgb)


def test_vector_volume_and_image2d(ctx):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, size=(1, 8, 12, 3)).astype(np.uint8)
    node = nodes.volume_to_node(ctx, rgb, np.eye(4), "frame")
    assert node.IsA("vtkMRMLVectorVolumeNode")
    assert node.GetImageData().GetNumberOfScalarComponents() == 3
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), rgb)
    mtime = node.GetMTime()
    image, ijk_to_ras = nodes.image2d_from_node(node, "frame")
    assert node.GetMTime() == mtime
    image[:] = 0  # a copy: the node keeps its pixels
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), rgb)
    image, ijk_to_ras = nodes.image2d_from_node(node, "frame")
    assert image.shape == (8, 12, 3)
    np.testing.assert_array_equal(image, rgb[0])
    np.testing.assert_allclose(ijk_to_ras, np.eye(4))
    # image2d_to_node: image[row, col] -> voxel (i=col, j=row, k=0)
    gray = rng.random((6, 9)).astype(np.float32)
    gnode = nodes.image2d_to_node(ctx, gray, "gray")
    assert gnode.GetImageData().GetDimensions() == (9, 6, 1)
    assert gnode.GetImageData().GetScalarComponentAsDouble(7, 2, 0, 0) == pytest.approx(
        float(gray[2, 7]))


def test_volume_errors(ctx):
    empty = ctx.add_node("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="^CT: volume node 'empty' has no image data$"):
        nodes.volume_from_node(empty, "CT")
    with pytest.raises(InputError, match="^CT: no volume node given"):
        nodes.volume_from_node(None, "CT")
    model = ctx.add_node("vtkMRMLModelNode", "m")
    with pytest.raises(InputError, match=r"^CT: expected a volume node \(vtkMRMLVolumeNode\)"
                                         r", got vtkMRMLModelNode$"):
        nodes.volume_from_node(model, "CT")

    flat = nodes.volume_to_node(ctx, np.zeros((1, 64, 64), np.uint8), np.eye(4), "flat")
    with pytest.raises(InputError, match="^CT: expected a 3D volume, got a 2D image of size "
                                         "64 x 64$"):
        nodes.volume_from_node(flat, "CT")
    assert nodes.volume_from_node(flat, "CT", require_3d=False).array.shape == (1, 64, 64)

    vol = nodes.volume_to_node(ctx, np.zeros((30, 64, 64), np.uint8), np.eye(4), "vol")
    with pytest.raises(InputError, match="^X-ray: expected a 2D image, got a volume of "
                                         "64 x 64 x 30$"):
        nodes.image2d_from_node(vol, "X-ray")

    bad = nodes.volume_to_node(ctx, np.zeros((3, 4, 5), np.int16), np.eye(4), "bad")
    bad.SetSpacing(1.0, 0.0, 2.0)
    with pytest.raises(GeometryError, match=r"^CT: spacing must be positive, got \(1, 0, 2\)$"):
        nodes.volume_from_node(bad, "CT")
    bad.SetSpacing(1.0, -1.5, 2.0)
    with pytest.raises(GeometryError, match=r"^CT: spacing must be positive, got "
                                            r"\(1, -1.5, 2\)$"):
        nodes.volume_from_node(bad, "CT")
    with pytest.raises(GeometryError, match=r"^CT: spacing must be positive"):
        nodes.labelmap_from_node(bad, "CT")
    bad.SetSpacing(1.0, 1.0, 1.0)
    bad.SetIJKToRASDirections(1, 0.5, 0, 0, 1, 0, 0, 0, 1)  # shear
    with pytest.raises(GeometryError, match="^CT: direction matrix is not orthonormal$"):
        nodes.volume_from_node(bad, "CT")

    nan = np.zeros((3, 4, 5), np.float32)
    nan[1, 2, 3] = np.nan
    node = nodes.volume_to_node(ctx, np.zeros((3, 4, 5), np.float32), np.eye(4), "nan")
    slicer.util.arrayFromVolume(node)[1, 2, 3] = np.nan  # NaN put in by someone else
    with pytest.raises(InputError, match="^CT: volume node 'nan' contains NaN or infinite "
                                         "voxel values$"):
        nodes.volume_from_node(node, "CT")

    with pytest.raises(InputError, match="^CT: array contains NaN or infinite values$"):
        nodes.volume_to_node(ctx, nan, np.eye(4), "CT")
    with pytest.raises(InputError, match=r"^CT: expected an array of shape \(K, J, I\) or "
                                         r"\(K, J, I, C\), got shape \(4, 5\)$"):
        nodes.volume_to_node(ctx, np.zeros((4, 5)), np.eye(4), "CT")
    with pytest.raises(InputError, match=r"^CT: array is empty, shape \(0, 4, 5\)$"):
        nodes.volume_to_node(ctx, np.zeros((0, 4, 5)), np.eye(4), "CT")
    m = np.eye(4)
    m[0, 3] = np.nan
    with pytest.raises(GeometryError, match="^CT ijk_to_ras: matrix contains NaN"):
        nodes.volume_to_node(ctx, np.zeros((2, 2, 2)), m, "CT")
    with pytest.raises(GeometryError, match="^CT ijk_to_ras: direction matrix is not "
                                            "orthonormal$"):
        nodes.volume_to_node(ctx, np.zeros((2, 2, 2)),
                             np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.]]),
                             "CT")
    with pytest.raises(GeometryError, match=r"^CT ijk_to_ras: expected a 4x4 matrix, got "
                                            r"shape \(3, 3\)$"):
        nodes.volume_to_node(ctx, np.zeros((2, 2, 2)), np.eye(3), "CT")


# ----------------------------------------------------------------------------- models
def test_model_round_trip_and_frames(ctx):
    vertices = np.array([[0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30.0]])
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    node = nodes.model_to_node(ctx, vertices, faces, "tetra")
    assert node.GetDisplayNode() is not None
    np.testing.assert_array_equal(slicer.util.arrayFromModelPoints(node), vertices)
    legacy = vtk.vtkIdTypeArray()
    node.GetPolyData().GetPolys().ExportLegacyFormat(legacy)
    ids = np.array([legacy.GetValue(i) for i in range(legacy.GetNumberOfValues())]).reshape(-1, 4)
    np.testing.assert_array_equal(ids[:, 0], 3)
    np.testing.assert_array_equal(ids[:, 1:], faces)
    mtime = node.GetMTime()
    v, f = nodes.model_from_node(node, "tetra")
    assert node.GetMTime() == mtime
    assert v.dtype == np.float64 and f.dtype == np.int64
    np.testing.assert_array_equal(v, vertices)
    np.testing.assert_array_equal(f, faces)
    v_lps, _ = nodes.model_from_node(node, "tetra", frame="LPS")
    np.testing.assert_array_equal(v_lps, vertices * [-1, -1, 1])
    # vertices given in LPS are stored flipped to RAS
    node_lps = nodes.model_to_node(ctx, vertices, faces, "tetra lps", frame="LPS")
    np.testing.assert_array_equal(slicer.util.arrayFromModelPoints(node_lps),
                                  vertices * [-1, -1, 1])


def test_model_from_node_triangulates_quads(ctx):
    # a 2 x 3 rectangle as one quad: two triangles with total area 6
    poly = vtk.vtkPolyData()
    points = vtk.vtkPoints()
    for p in [(0, 0, 0), (2, 0, 0), (2, 3, 0), (0, 3, 0)]:
        points.InsertNextPoint(p)
    quad = vtk.vtkCellArray()
    quad.InsertNextCell(4, [0, 1, 2, 3])
    poly.SetPoints(points)
    poly.SetPolys(quad)
    node = ctx.add_node("vtkMRMLModelNode", "quad")
    node.SetAndObservePolyData(poly)
    v, f = nodes.model_from_node(node, "quad")
    assert f.shape == (2, 3)
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]),
                                axis=1).sum()
    assert area == pytest.approx(6.0)
    assert set(f.ravel()) == {0, 1, 2, 3}


def test_model_errors(ctx):
    empty = ctx.add_node("vtkMRMLModelNode", "nothing")
    with pytest.raises(InputError, match="^liver: model 'nothing' has no triangles$"):
        nodes.model_from_node(empty, "liver")
    lines = vtk.vtkPolyData()
    pts = vtk.vtkPoints()
    pts.InsertNextPoint(0, 0, 0)
    pts.InsertNextPoint(1, 0, 0)
    cells = vtk.vtkCellArray()
    cells.InsertNextCell(2, [0, 1])
    lines.SetPoints(pts)
    lines.SetLines(cells)
    line_node = ctx.add_node("vtkMRMLModelNode", "a line")
    line_node.SetAndObservePolyData(lines)
    with pytest.raises(InputError, match="^liver: model 'a line' has no triangles$"):
        nodes.model_from_node(line_node, "liver")
    with pytest.raises(InputError, match="^liver: frame must be 'RAS' or 'LPS', got 'XYZ'$"):
        nodes.model_from_node(line_node, "liver", frame="XYZ")

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]])
    f = np.array([[0, 1, 2]])
    nodes.check_mesh(v, f, "liver")  # valid
    bad = v.copy()
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match="^liver: vertices contain NaN or infinite values$"):
        nodes.check_mesh(bad, f, "liver")
    with pytest.raises(InputError, match=r"^liver: mesh has zero extent \(all vertices "
                                         r"coincide\)$"):
        nodes.check_mesh(np.ones((3, 3)), f, "liver")
    with pytest.raises(InputError, match=r"^liver: face indices must be in \[0, 2\], got "
                                         r"\[0, 3\]$"):
        nodes.check_mesh(v, np.array([[0, 1, 3]]), "liver")
    with pytest.raises(InputError, match=r"^liver: vertices must have shape \(N, 3\), got "
                                         r"\(3, 2\)$"):
        nodes.check_mesh(v[:, :2], f, "liver")
    with pytest.raises(InputError, match=r"^liver: mesh has no triangles \(3 vertices, "
                                         r"0 faces\)$"):
        nodes.check_mesh(v, np.zeros((0, 3), int), "liver")


# ----------------------------------------------------------------------------- transforms
def test_transform_matrices_and_world_chain(ctx):
    a = np.eye(4)
    a[:3, :3] = _rotation([0, 0, 1], 90)
    a[:3, 3] = [10, 0, 0]
    b = np.eye(4)
    b[:3, :3] = _rotation([1, 0, 0], 30)
    b[:3, 3] = [0, 5, -2]
    parent = nodes.matrix_to_transform_node(ctx, a, "parent_to_world")
    child = nodes.matrix_to_transform_node(ctx, b, "child_to_parent")
    child.SetAndObserveTransformNodeID(parent.GetID())
    np.testing.assert_allclose(nodes.matrix_from_transform_node(child, "child"), b, atol=1e-12)
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(child), b, atol=1e-12)
    np.testing.assert_allclose(nodes.world_matrix(child), a @ b, atol=1e-12)
    # a model under the child: its points in world = a @ b @ p (checked with VTK)
    model = nodes.model_to_node(ctx, np.eye(3), np.array([[0, 1, 2]]), "tri")
    model.SetAndObserveTransformNodeID(child.GetID())
    world = nodes.world_matrix(model)
    general = vtk.vtkGeneralTransform()
    child.GetTransformToWorld(general)
    np.testing.assert_allclose(world[:3, :3] @ [1, 2, 3] + world[:3, 3],
                               general.TransformPoint(1, 2, 3), atol=1e-9)
    np.testing.assert_allclose(nodes.world_matrix(parent), a, atol=1e-12)
    loose = nodes.model_to_node(ctx, np.eye(3), np.array([[0, 1, 2]]), "free")
    np.testing.assert_array_equal(nodes.world_matrix(loose), np.eye(4))
    # update an existing node
    same = nodes.matrix_to_transform_node(ctx, np.eye(4), "child_to_parent", node=child)
    assert same is child
    np.testing.assert_allclose(nodes.world_matrix(child), a, atol=1e-12)


def test_transform_errors(ctx):
    scaled = np.diag([2.0, 1.0, 1.0, 1.0])
    node = nodes.matrix_to_transform_node(ctx, scaled, "scaled")
    np.testing.assert_allclose(nodes.matrix_from_transform_node(node, "pose"), scaled)
    pytest.importorskip("SurgicalReg2D3DLib.poses")
    with pytest.raises(GeometryError, match="^pose: rotation part is not orthonormal"):
        nodes.matrix_from_transform_node(node, "pose", require_rigid=True)
    rigid = nodes.matrix_to_transform_node(ctx, np.eye(4), "rigid")
    nodes.matrix_from_transform_node(rigid, "pose", require_rigid=True)

    # a non-linear (thin-plate spline) transform
    tps = vtk.vtkThinPlateSplineTransform()
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p in [(0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10), (10, 10, 10)]:
        src.InsertNextPoint(p)
        dst.InsertNextPoint(p[0] + 1, p[1], p[2] + 0.1 * p[0])
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    tps.SetBasisToR()
    warp = ctx.add_node("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(tps)
    with pytest.raises(InputError, match="^pose: transform 'warp' is not linear; a 4x4 "
                                         "matrix cannot represent it$"):
        nodes.matrix_from_transform_node(warp, "pose")
    model = nodes.model_to_node(ctx, np.eye(3), np.array([[0, 1, 2]]), "tri")
    model.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="^tri: the transform to world of 'tri' is not "
                                         "linear"):
        nodes.world_matrix(model, "tri")

    with pytest.raises(GeometryError, match=r"^pose: last row of the 4x4 matrix must be "
                                            r"\(0, 0, 0, 1\), got \(0.0, 0.0, 1.0, 1.0\)$"):
        bad = np.eye(4)
        bad[3, 2] = 1
        nodes.matrix_to_transform_node(ctx, bad, "pose")
    with pytest.raises(GeometryError, match=r"^pose: matrix is singular \(determinant 0\)$"):
        nodes.matrix_to_transform_node(ctx, np.diag([1.0, 0.0, 1.0, 1.0]), "pose")
    nan = np.eye(4)
    nan[1, 3] = np.nan
    n_nodes = ctx.scene.GetNumberOfNodes()
    with pytest.raises(GeometryError, match="^pose: matrix contains NaN or infinite values$"):
        nodes.matrix_to_transform_node(ctx, nan, "pose")
    assert ctx.scene.GetNumberOfNodes() == n_nodes  # no half-made node left behind
    # a transform node that someone filled with NaN: rejected, and left as it is
    holder = nodes.matrix_to_transform_node(ctx, np.eye(4), "holder")
    holder.SetMatrixTransformToParent(nodes.numpy_to_vtk_matrix(nan))
    mtime = holder.GetMTime()
    with pytest.raises(GeometryError, match="^initial pose: matrix contains NaN or infinite "
                                            "values$"):
        nodes.matrix_from_transform_node(holder, "initial pose", require_rigid=True)
    assert holder.GetMTime() == mtime


# ----------------------------------------------------------------------------- markups
@pytest.mark.parametrize("kind,class_name", [
    ("fiducial", "vtkMRMLMarkupsFiducialNode"),
    ("curve", "vtkMRMLMarkupsCurveNode"),
    ("closed_curve", "vtkMRMLMarkupsClosedCurveNode"),
])
def test_markups_round_trip(ctx, kind, class_name):
    points = np.array([[1.5, -2.0, 3.0], [4.0, 5.0, -6.25], [7.0, 8.0, 9.0]])
    node = nodes.points_to_markups(ctx, points, "landmarks", kind=kind,
                                   labels=["a", "b", "c"])
    assert node.GetClassName() == class_name
    np.testing.assert_array_equal(slicer.util.arrayFromMarkupsControlPoints(node), points)
    mtime = node.GetMTime()
    np.testing.assert_array_equal(nodes.points_from_markups(node, "landmarks"), points)
    assert node.GetMTime() == mtime  # reading does not modify the node
    assert nodes.markups_labels(node) == ["a", "b", "c"]
    # overwrite in place with fewer points
    same = nodes.points_to_markups(ctx, points[:2] * 2, "landmarks", kind=kind, node=node)
    assert same is node and node.GetNumberOfControlPoints() == 2
    np.testing.assert_array_equal(nodes.points_from_markups(node), points[:2] * 2)


def test_markups_errors(ctx):
    empty = ctx.add_node("vtkMRMLMarkupsFiducialNode", "F")
    with pytest.raises(InputError, match="^landmarks: markups 'F' has no control points$"):
        nodes.points_from_markups(empty, "landmarks")
    with pytest.raises(InputError, match=r"^landmarks: expected points of shape \(N, 3\), "
                                         r"got \(4, 2\)$"):
        nodes.points_to_markups(ctx, np.zeros((4, 2)), "landmarks")
    with pytest.raises(InputError, match="^landmarks: kind must be one of"):
        nodes.points_to_markups(ctx, np.zeros((4, 3)), "landmarks", kind="plane")
    with pytest.raises(InputError, match="^landmarks: got 1 labels for 2 points$"):
        nodes.points_to_markups(ctx, np.zeros((2, 3)), "landmarks", labels=["x"])
    with pytest.raises(InputError, match="^landmarks: points contain NaN or infinite values$"):
        nodes.points_to_markups(ctx, np.full((2, 3), np.nan), "landmarks")
    unplaced = ctx.add_node("vtkMRMLMarkupsFiducialNode", "U")
    unplaced.AddControlPoint(1, 2, 3, "p0")
    unplaced.SetNthControlPointPositionMissing(0)
    with pytest.raises(InputError, match=r"^landmarks: control point 0 \('p0'\) of markups "
                                         r"'U' has no position$"):
        nodes.points_from_markups(unplaced, "landmarks")


# ----------------------------------------------------------------------------- sequences
def test_frames_to_sequence_moves_frame_with_its_transform(ctx):
    rng = np.random.default_rng(2)
    frames = rng.random((3, 4, 5)).astype(np.float32)
    mats = []
    for t in range(3):
        m = np.eye(4)
        m[:3, :3] = _rotation([0, 1, 0], 20.0 * t) * 0.3  # 0.3 mm per pixel
        m[:3, 3] = [t * 10.0, -5.0, 2.0 * t]
        mats.append(m)
    image_seq, transform_seq, browser = nodes.frames_to_sequence(ctx, frames, mats, "sweep")
    assert image_seq.GetNumberOfDataNodes() == 3 and transform_seq.GetNumberOfDataNodes() == 3
    items = nodes.sequence_items(image_seq)
    for t, item in enumerate(items):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(item)[0], frames[t])
    for t, item in enumerate(nodes.sequence_items(transform_seq)):
        np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(item), mats[t],
                                   atol=1e-12)

    for t in (2, 0, 1):
        browser.SetSelectedItemNumber(t)
        ctx.logic("Sequences").UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(image_seq)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(proxy)[0], frames[t])
        # pixel (col=3, row=2) in world, through MRML's own transform chain
        ijk_to_ras = vtk.vtkMatrix4x4()
        proxy.GetIJKToRASMatrix(ijk_to_ras)
        local = ijk_to_ras.MultiplyPoint((3, 2, 0, 1))[:3]
        to_world = vtk.vtkGeneralTransform()
        proxy.GetParentTransformNode().GetTransformToWorld(to_world)
        np.testing.assert_allclose(to_world.TransformPoint(local), (mats[t] @ [3, 2, 0, 1])[:3],
                                   atol=1e-9)


def test_frames_from_sequence_matches_mrml_transform_chain(ctx):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, size=(3, 5, 6)).astype(np.uint8)
    mats = []
    for t in range(3):
        m = np.eye(4)
        m[:3, :3] = _rotation([1, 0, 1], 15.0 * t) * [0.2, 0.25, 1.0]  # anisotropic pixels
        m[:3, 3] = [-3.0 * t, 4.0, 1.5 * t]
        mats.append(m)
    image_seq, transform_seq, browser = nodes.frames_to_sequence(ctx, frames, mats, "sweep")
    got_frames, image_to_reference = nodes.frames_from_sequence(image_seq, transform_seq)
    np.testing.assert_array_equal(got_frames, frames)
    assert image_to_reference.shape == (3, 4, 4)
    for t in range(3):
        browser.SetSelectedItemNumber(t)
        ctx.logic("Sequences").UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(image_seq)
        ijk_to_ras = vtk.vtkMatrix4x4()
        proxy.GetIJKToRASMatrix(ijk_to_ras)
        to_world = vtk.vtkGeneralTransform()
        proxy.GetParentTransformNode().GetTransformToWorld(to_world)
        for col, row in [(0, 0), (5, 4), (2, 3)]:
            local = ijk_to_ras.MultiplyPoint((col, row, 0, 1))[:3]
            np.testing.assert_allclose((image_to_reference[t] @ [col, row, 0, 1])[:3],
                                       to_world.TransformPoint(local), atol=1e-9)
    # without transforms: each frame's own ijk_to_ras (identity here)
    _, plain = nodes.frames_from_sequence(image_seq)
    np.testing.assert_allclose(plain, np.tile(np.eye(4), (3, 1, 1)))
    empty = ctx.add_node("vtkMRMLSequenceNode", "nothing")
    with pytest.raises(InputError, match="^sweep: sequence 'nothing' has no frames$"):
        nodes.frames_from_sequence(empty, name="sweep")


def test_sequence_errors(ctx):
    with pytest.raises(InputError, match=r"^sweep: expected 2 image_to_reference matrices "
                                         r"\(T, 4, 4\), got shape \(3, 4, 4\)$"):
        nodes.frames_to_sequence(ctx, np.zeros((2, 4, 5)), [np.eye(4)] * 3, "sweep")
    with pytest.raises(InputError, match=r"^sweep: expected frames of shape \(T, H, W\) or "
                                         r"\(T, H, W, C\), got \(4, 5\)$"):
        nodes.frames_to_sequence(ctx, np.zeros((4, 5)), [np.eye(4)], "sweep")
    with pytest.raises(InputError, match="^sequence: expected a sequence node"):
        nodes.sequence_items(ctx.add_node("vtkMRMLModelNode", "m"))


# ----------------------------------------------------------------------------- segmentations
def _sphere_polydata(center, radius):
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*center)
    sphere.SetRadius(radius)
    sphere.SetThetaResolution(48)
    sphere.SetPhiResolution(48)
    sphere.Update()
    return sphere.GetOutput()


def test_segmentation_to_labelmap_rasterises_spheres_on_an_oblique_grid(ctx):
    """Two synthetic spheres (closed surfaces) on an oblique CT-like grid, checked against
    the analytic distance of every voxel centre to the sphere centres."""
    centers = {"ball": np.array([3.0, -2.0, 5.0]), "vertebra": np.array([-6.0, 4.0, -3.0])}
    radii = {"ball": 4.0, "vertebra": 3.0}
    segmentation = ctx.add_node("vtkMRMLSegmentationNode", "spine")
    segmentation.SetSourceRepresentationToClosedSurface()  # as a model-based segmentation
    for name in ("ball", "vertebra"):
        segmentation.AddSegmentFromClosedSurfaceRepresentation(
            _sphere_polydata(centers[name], radii[name]), name, [1.0, 0.0, 0.0])
    ijk_to_ras = np.eye(4)
    spacing = np.array([0.8, 0.9, 1.0])
    ijk_to_ras[:3, :3] = _rotation([1, 1, 2], 20.0) * spacing
    ijk_to_ras[:3, 3] = [-14.0, -12.0, -13.0]
    reference = nodes.volume_to_node(ctx, np.zeros((28, 30, 32), np.int16), ijk_to_ras, "CT")
    mtime = segmentation.GetMTime()
    representation = segmentation.GetSegmentation().GetSourceRepresentationName()
    assert not segmentation.GetSegmentation().ContainsRepresentation("Binary labelmap")

    labelmap = nodes.segmentation_to_labelmap(ctx, segmentation, reference)
    assert labelmap.IsA("vtkMRMLLabelMapVolumeNode") and labelmap.GetName() == "spine labels"
    data = nodes.labelmap_from_node(labelmap, "spine labels")
    assert data.array.dtype == np.int32 and data.array.shape == (28, 30, 32)
    np.testing.assert_allclose(data.ijk_to_ras, ijk_to_ras, atol=1e-6)
    # voxel centres in RAS, from the reference node's own VTK matrix
    vmatrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(vmatrix)
    k, j, i = np.meshgrid(*[np.arange(n) for n in (28, 30, 32)], indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], -1).reshape(-1, 4).astype(float)
    ras = (ijk1 @ nodes.vtk_matrix_to_numpy(vmatrix).T)[:, :3].reshape(28, 30, 32, 3)
    half_diagonal = 0.5 * np.linalg.norm(spacing)
    for label, name in ((1, "ball"), (2, "vertebra")):
        distance = np.linalg.norm(ras - centers[name], axis=-1)
        inside = data.array == label
        assert np.all(inside[distance < radii[name] - half_diagonal])
        assert not np.any(inside[distance > radii[name] + half_diagonal])
        volume = inside.sum() * np.prod(spacing)
        assert volume == pytest.approx(4.0 / 3.0 * np.pi * radii[name] ** 3, rel=0.06)
    # the input segmentation is not modified (no binary labelmap added to it)
    assert segmentation.GetMTime() == mtime
    assert segmentation.GetSegmentation().GetSourceRepresentationName() == representation
    assert not segmentation.GetSegmentation().ContainsRepresentation("Binary labelmap")
    assert ctx.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1

    # a parent transform of the segmentation moves the spheres (RAS +5 mm along x)
    shift = np.eye(4)
    shift[0, 3] = 5.0
    segmentation.SetAndObserveTransformNodeID(
        nodes.matrix_to_transform_node(ctx, shift, "segmentation_to_ras").GetID())
    moved = nodes.labelmap_from_node(nodes.segmentation_to_labelmap(ctx, segmentation,
                                                                    reference)).array
    distance = np.linalg.norm(ras - (centers["ball"] + [5.0, 0.0, 0.0]), axis=-1)
    assert np.all(moved[distance < radii["ball"] - half_diagonal] == 1)
    assert not np.any(moved[distance > radii["ball"] + half_diagonal] == 1)
    segmentation.SetAndObserveTransformNodeID(None)

    # one segment, chosen by name, into a given node: label 1, the other sphere is gone
    only = nodes.segment_ids(segmentation, names=["vertebra"])
    assert only == [nodes.segment_ids(segmentation)[1]]
    same = nodes.segmentation_to_labelmap(ctx, segmentation, reference, segment_ids=only,
                                          node=labelmap)
    assert same is labelmap
    vertebra = nodes.labelmap_from_node(labelmap).array
    assert set(np.unique(vertebra)) == {0, 1}
    np.testing.assert_array_equal(vertebra == 1, data.array == 2)


def test_labelmap_segmentation_round_trip_on_a_shifted_grid(ctx):
    """Synthetic labels -> segmentation -> label map on a grid shifted by whole voxels:
    the result is the numpy-shifted label array (labels renumbered in segment order)."""
    labels = np.zeros((6, 7, 8), np.int16)
    labels[1:3, 2:4, 3:6] = 5
    labels[4, 1:6, 1:7] = 9
    m = np.diag([0.5, 0.7, 2.0, 1.0])
    m[:3, 3] = [1.0, 2.0, 3.0]
    labelmap = nodes.volume_to_node(ctx, labels, m, "labels",
                                    node_class="vtkMRMLLabelMapVolumeNode")
    mtime = labelmap.GetMTime()
    segmentation = nodes.labelmap_to_segmentation(ctx, labelmap, "seg")
    assert labelmap.GetMTime() == mtime
    ids = nodes.segment_ids(segmentation)
    assert len(ids) == 2
    # a reference grid moved by (+2, -1, +1) voxels along (i, j, k)
    shifted = m.copy()
    shifted[:3, 3] += m[:3, :3] @ [2, -1, 1]
    reference = nodes.volume_to_node(ctx, np.zeros((6, 7, 8), np.uint8), shifted, "ref")
    out = nodes.labelmap_from_node(nodes.segmentation_to_labelmap(ctx, segmentation,
                                                                  reference))
    expected = np.zeros_like(labels)
    expected[:-1, 1:, :-2] = labels[1:, :-1, 2:]  # voxel (i, j, k) of ref = (i+2, j-1, k+1)
    renumbered = np.select([expected == 5, expected == 9], [1, 2], 0)
    np.testing.assert_array_equal(out.array, renumbered)
    np.testing.assert_allclose(out.ijk_to_ras, shifted, atol=1e-9)
    # a label subset of a label map
    np.testing.assert_array_equal(nodes.labelmap_from_node(labelmap, labels=[9]).array,
                                  np.where(labels == 9, 9, 0))


def test_segmentation_errors(ctx):
    segmentation = ctx.add_node("vtkMRMLSegmentationNode", "empty seg")
    segmentation.SetSourceRepresentationToClosedSurface()
    reference = nodes.volume_to_node(ctx, np.zeros((3, 4, 5), np.int16), np.eye(4), "CT")
    with pytest.raises(InputError, match="^segmentation: segmentation 'empty seg' has no "
                                         "segments$"):
        nodes.segmentation_to_labelmap(ctx, segmentation, reference)
    segmentation.AddSegmentFromClosedSurfaceRepresentation(
        _sphere_polydata((1, 1, 1), 1.0), "ball", [1.0, 0.0, 0.0])
    with pytest.raises(InputError, match="^segmentation: no segment with ID 'nope' in "
                                         "'empty seg'$"):
        nodes.segmentation_to_labelmap(ctx, segmentation, reference, segment_ids=["nope"])
    with pytest.raises(InputError, match=r"^spine: no segment named 'L1' in 'empty seg' "
                                         r"\(segments: \['ball'\]\)$"):
        nodes.segment_ids(segmentation, names=["L1"], name="spine")
    no_image = ctx.add_node("vtkMRMLScalarVolumeNode", "no image")
    with pytest.raises(InputError, match="^reference volume: volume node 'no image' has no "
                                         "image data$"):
        nodes.segmentation_to_labelmap(ctx, segmentation, no_image)
    with pytest.raises(InputError, match=r"^segmentation: expected a segmentation node "
                                         r"\(vtkMRMLSegmentationNode\), got "
                                         r"vtkMRMLScalarVolumeNode$"):
        nodes.segmentation_to_labelmap(ctx, reference, reference)
    fractional = nodes.volume_to_node(ctx, np.full((2, 3, 4), 1.5, np.float32), np.eye(4), "f")
    with pytest.raises(InputError, match=r"^labels: label values must be whole numbers "
                                         r"\(volume node 'f' has fractional voxels\)$"):
        nodes.labelmap_from_node(fractional, "labels")
    rgb = nodes.volume_to_node(ctx, np.zeros((2, 3, 4, 3), np.uint8), np.eye(4), "rgb")
    with pytest.raises(InputError, match="^labels: expected a single-component label map, "
                                         "got 3 components per voxel$"):
        nodes.labelmap_from_node(rgb, "labels")
    model = ctx.add_node("vtkMRMLModelNode", "m")
    with pytest.raises(InputError, match=r"^labels: expected a label map node "
                                         r"\(vtkMRMLScalarVolumeNode\), got vtkMRMLModelNode$"):
        nodes.labelmap_from_node(model, "labels")
    with pytest.raises(InputError, match="^label map: expected a label map node"):
        nodes.labelmap_to_segmentation(ctx, reference)
