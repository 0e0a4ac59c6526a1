"""Geometry of the 3D views (views3d), against the cameras' own projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SurgicalReg2D3DLib import views3d
from SurgicalReg2D3DLib.cameras import PinholeCamera, XRayCamera
from SurgicalReg2D3DLib.errors import GeometryError
from SurgicalReg2D3DLib.poses import make_pose, so3_exp


def _pose(rotvec, t):
    R = so3_exp(torch.tensor(rotvec, dtype=torch.float64)).numpy()
    return make_pose(R, np.asarray(t, float)).numpy()


@pytest.mark.parametrize("principal", [None, (20.0, 71.5)])
def test_xray_plane_places_each_projection_on_its_pixel(principal):
    """A CT point, projected by the camera, and the point where the ray from the source
    through it meets the placed X-ray plane, mapped back to IJK, are the same pixel."""
    cam = XRayCamera(1020.0, (0.8, 0.6), (96, 128), principal_point_px=principal)
    ct_to_camera = _pose([0.3, -0.2, 1.1], [15.0, -30.0, 700.0])
    ijk_to_ras = views3d.xray_ijk_to_ras(cam, ct_to_camera)
    rng = np.random.default_rng(0)
    pts_ras = rng.uniform(-60, 60, (25, 3))
    pts_cam = (np.c_[pts_ras, np.ones(25)] @ ct_to_camera.T)[:, :3]
    uv = cam.project(torch.as_tensor(pts_cam)).numpy()
    source_ras = np.linalg.inv(ct_to_camera)[:3, 3]
    # plane: points ijk_to_ras @ (i, j, 0, 1); normal = third column
    origin = ijk_to_ras[:3, 3]
    normal = ijk_to_ras[:3, 2] / np.linalg.norm(ijk_to_ras[:3, 2])
    for p, expected in zip(pts_ras, uv):
        d = p - source_ras
        s = ((origin - source_ras) @ normal) / (d @ normal)
        hit = source_ras + s * d
        ijk = np.linalg.solve(ijk_to_ras, np.r_[hit, 1.0])
        assert abs(ijk[2]) < 1e-6
        np.testing.assert_allclose(ijk[:2], expected, atol=1e-6)


def test_frustum_corners_are_the_image_corners_on_the_detector():
    cam = XRayCamera(1000.0, (1.0, 1.0), (64, 32))
    pts = views3d.frustum_points(64, 32, views3d.xray_pixel_to_camera(cam))
    np.testing.assert_allclose(pts[0], 0.0)
    np.testing.assert_allclose(pts[1:, 2], 1000.0)
    np.testing.assert_allclose(pts[1], [-32.0, -16.0, 1000.0])
    np.testing.assert_allclose(pts[3], [32.0, 16.0, 1000.0])
    poly = views3d.frustum_polydata(pts, np.eye(4))
    assert poly.GetNumberOfPoints() == 5 and poly.GetNumberOfLines() == 8


@pytest.mark.parametrize("cx,cy,fx,fy", [(239.5, 134.5, 500.0, 500.0),     # centred
                                         (300.0, 90.0, 520.0, 520.0),      # off-centre
                                         (210.0, 150.0, 530.0, 505.0)])    # fx != fy
def test_vtk_camera_reproduces_the_pinhole_projection(cx, cy, fx, fy):
    """A vtkMRMLCameraNode's camera set from the intrinsics projects like PinholeCamera."""
    import slicer

    W, H = 480, 270
    pin = PinholeCamera(fx, fy, cx, cy, W, H)
    world_to_camera = _pose([0.4, 0.9, -0.3], [20.0, -10.0, 180.0])
    params = views3d.vtk_camera_parameters(fx, fy, cx, cy, W, H, world_to_camera)
    node = slicer.vtkMRMLCameraNode()
    views3d.apply_vtk_camera(node.GetCamera(), params)
    rng = np.random.default_rng(1)
    cam_pts = np.c_[rng.uniform(-40, 40, (30, 2)), rng.uniform(120, 250, 30)]
    world = (np.c_[cam_pts, np.ones(30)] @ np.linalg.inv(world_to_camera).T)[:, :3]
    expected = pin.project(torch.as_tensor(cam_pts)).numpy()
    got = views3d.vtk_project(node.GetCamera(), world, W, H)
    assert np.abs(got - expected).max() < 0.5


def test_vtk_camera_rejects_bad_intrinsics_and_poses():
    with pytest.raises(GeometryError, match="camera intrinsics"):
        views3d.vtk_camera_parameters(0.0, 500, 10, 10, 100, 100, np.eye(4))
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(GeometryError, match="world_to_camera"):
        views3d.vtk_camera_parameters(500, 500, 10, 10, 100, 100, bad)


def test_us_slice_plane_matches_image_to_ras():
    """Every frame pixel lies on the slice plane, at the in-plane position the slice axes
    give (x along columns, y up = against rows), centred on the frame."""
    import slicer

    rows, cols = 60, 80
    image_to_ras = _pose([0.2, -0.5, 0.7], [5.0, 12.0, -40.0])
    image_to_ras[:3, :2] *= np.array([0.3, 0.25])   # mm per pixel, columns and rows
    node = slicer.vtkMRMLSliceNode()
    S = views3d.set_slice_node_to_image(node, image_to_ras, (rows, cols), (30.0, 20.0))
    from SurgicalReg2D3DLib.nodes import vtk_matrix_to_numpy

    np.testing.assert_allclose(vtk_matrix_to_numpy(node.GetSliceToRAS()), S, atol=1e-9)
    px = np.array([[0, 0], [cols - 1, 0], [0, rows - 1], [17, 33]], float)
    ras = (np.c_[px, np.zeros(4), np.ones(4)] @ image_to_ras.T)
    in_slice = ras @ np.linalg.inv(S).T
    np.testing.assert_allclose(in_slice[:, 2], 0.0, atol=1e-9)
    np.testing.assert_allclose(in_slice[:, 0], (px[:, 0] - (cols - 1) / 2) * 0.3, atol=1e-9)
    np.testing.assert_allclose(in_slice[:, 1], -(px[:, 1] - (rows - 1) / 2) * 0.25, atol=1e-9)
