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


def test_vector_volume_and_image2d(ctx):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, size=(1, 8, 12, 3)).astype(np.uint8)
    node = nodes.volume_to_node(ctx, rgb, np.eye(4), "frame")
    assert node.IsA("vtkMRMLVectorVolumeNode")
    assert node.GetImageData().GetNumberOfScalarComponents() == 3
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
    np.testing.assert_array_equal(nodes.points_from_markups(node, "landmarks"), points)
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


def test_sequence_errors(ctx):
    with pytest.raises(InputError, match=r"^sweep: expected 2 image_to_reference matrices "
                                         r"\(T, 4, 4\), got shape \(3, 4, 4\)$"):
        nodes.frames_to_sequence(ctx, np.zeros((2, 4, 5)), [np.eye(4)] * 3, "sweep")
    with pytest.raises(InputError, match=r"^sweep: expected frames of shape \(T, H, W\) or "
                                         r"\(T, H, W, C\), got \(4, 5\)$"):
        nodes.frames_to_sequence(ctx, np.zeros((4, 5)), [np.eye(4)], "sweep")
    with pytest.raises(InputError, match="^sequence: expected a sequence node"):
        nodes.sequence_items(ctx.add_node("vtkMRMLModelNode", "m"))
