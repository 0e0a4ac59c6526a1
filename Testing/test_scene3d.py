"""The modules' 3D scenes on a real MRML scene, and the off-screen pictures of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SurgicalReg2D3DLib import nodes, render3d, views3d
from SurgicalReg2D3DLib.cameras import PinholeCamera, XRayCamera
from SurgicalReg2D3DLib.poses import make_pose, so3_exp


def _pose(rotvec, t):
    R = so3_exp(torch.tensor(rotvec, dtype=torch.float64)).numpy()
    return make_pose(R, np.asarray(t, float)).numpy()


def _points(poly):
    from vtk.util import numpy_support

    return numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)


def test_fluoro_scene_places_xray_plane_and_frustum(ctx):
    from FluoroRegLib.scene3d import build_scene

    hu = np.full((20, 24, 28), -1000.0, np.float32)
    hu[6:14, 8:16, 10:18] = 800.0                      # a bone block
    ijk_to_ras = np.diag([-2.0, -2.0, 2.0, 1.0])
    ct_node = nodes.volume_to_node(ctx, hu, ijk_to_ras, "CT")
    before = nodes.volume_from_node(ct_node).array.copy()
    cams = [XRayCamera(1000.0, (1.0, 1.0), (40, 30)),
            XRayCamera(1000.0, (1.0, 1.0), (40, 30), principal_point_px=(10.0, 20.0))]
    poses = [_pose([1.5, 0, 0], [0, 0, 600.0]), _pose([1.2, 1.2, -1.2], [5, -3, 650.0])]
    images = [np.random.default_rng(k).random((30, 40)).astype(np.float32) for k in range(2)]
    ids = build_scene(ctx, ct_node, images, cams, poses, bone_hu=200.0, downsample=1)
    assert len(ids["xray_planes"]) == 2 and len(ids["frusta"]) == 2 and len(ids["bone"]) == 1
    for k, (cam, T) in enumerate(zip(cams, poses)):
        plane = ctx.scene.GetNodeByID(ids["xray_planes"][k])
        corners = _points(plane.GetPolyData())
        ijk = views3d.xray_ijk_to_ras(cam, T)
        expected = (np.array([[-0.5, -0.5, 0, 1], [39.5, -0.5, 0, 1], [39.5, 29.5, 0, 1],
                              [-0.5, 29.5, 0, 1]]) @ ijk.T)[:, :3]
        np.testing.assert_allclose(corners, expected, atol=1e-4)
        assert plane.GetDisplayNode().GetTextureImageDataConnection() is not None
        frustum = _points(ctx.scene.GetNodeByID(ids["frusta"][k]).GetPolyData())
        np.testing.assert_allclose(frustum[0], np.linalg.inv(T)[:3, 3], atol=1e-4)  # source
        # the detector corners are 1000 mm from the source, on the X-ray plane
        np.testing.assert_allclose(frustum[1:], expected, atol=1e-4)
    bone = ctx.scene.GetNodeByID(ids["bone"][0]).GetPolyData()
    b = bone.GetBounds()
    # the block spans i 10..17 -> R -20..-34 mm (surface half a voxel beyond at the threshold)
    assert -36.0 < b[0] < -33.0 and -22.0 < b[1] < -19.0
    np.testing.assert_array_equal(nodes.volume_from_node(ct_node).array, before)


def _sphere_mesh(radius=40.0):
    import vtk

    s = vtk.vtkSphereSource()
    s.SetRadius(radius)
    s.SetThetaResolution(48)
    s.SetPhiResolution(48)
    s.Update()
    poly = s.GetOutput()
    from vtk.util import numpy_support

    v = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    cells = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return v, cells


@pytest.mark.parametrize("cx,cy", [(119.5, 79.5), (150.0, 60.0)])
def test_ar_view_renders_the_liver_where_the_rasteriser_puts_it(cx, cy):
    """The AR view (VTK, off screen) and LiverLaparoReg's own rasteriser agree on the
    silhouette of a mesh seen by the laparoscope (off-centre principal point included)."""
    from LiverLaparoRegLib.arview import ar_camera_parameters, ar_items
    from LiverLaparoRegLib.raster import render_mask

    W, H = 240, 160
    cam = PinholeCamera(260.0, 260.0, cx, cy, W, H)
    v, f = _sphere_mesh()
    v = v * np.array([1.0, 0.7, 0.5]) + np.array([10.0, -5.0, 0.0])
    T = _pose([0.3, -0.4, 0.2], [8.0, -6.0, 200.0])
    items = ar_items(cam, T, None, [(v, f)], opacity=1.0, colors=[(1.0, 1.0, 1.0)])
    items[0].lighting = False
    picture = render3d.render_offscreen(items, size=(W, H),
                                        camera=ar_camera_parameters(cam, T),
                                        background=(0, 0, 0))
    drawn = picture[..., 0] > 127
    ref = render_mask(v, f, T, cam)[0].numpy() > 0.5
    dice = 2 * (drawn & ref).sum() / (drawn.sum() + ref.sum())
    assert ref.sum() > 2000 and dice > 0.97


def test_ar_view_sets_the_camera_node_and_frame_background(ctx):
    import slicer

    from LiverLaparoRegLib.arview import setup_ar_view

    cam = PinholeCamera(300.0, 300.0, 100.0, 70.0, 200, 150)
    T = _pose([0.2, 0.1, 0.0], [0.0, 0.0, 150.0])
    camera_node = ctx.scene.AddNewNodeByClass("vtkMRMLCameraNode")
    frame = np.random.default_rng(0).integers(0, 255, (150, 200, 3)).astype(np.uint8)
    out = setup_ar_view(ctx, camera_node, cam, T, frame=frame, background_depth_mm=500.0)
    got = views3d.vtk_project(camera_node.GetCamera(), np.array([[0.0, 0.0, 0.0]]), 200, 150)
    # model origin (RAS 0) is at camera (0, 0, 150) @ ... -> projected by the pinhole
    p = (T @ np.array([0, 0, 0, 1.0]))[:3]
    np.testing.assert_allclose(got[0], cam.project(torch.as_tensor(p[None]))[0].numpy(),
                               atol=0.5)
    plane = _points(ctx.scene.GetNodeByID(out["frame"]).GetPolyData())
    # the frame plane's corners project onto the image corners
    uv = views3d.vtk_project(camera_node.GetCamera(), plane, 200, 150)
    np.testing.assert_allclose(uv, [[-0.5, -0.5], [199.5, -0.5], [199.5, 149.5], [-0.5, 149.5]],
                               atol=0.05)


def test_us_scene_frame_plane_and_slice_views(ctx):
    from USSliceRegLib.scene3d import drive_slice_views, frame_plane_model

    image_to_ras = _pose([0.1, 0.2, -0.3], [4.0, 2.0, -8.0])
    image_to_ras[:3, :2] *= 0.2
    frame = np.random.default_rng(2).random((50, 70)).astype(np.float32)
    model = frame_plane_model(ctx, frame, image_to_ras)
    corners = _points(model.GetPolyData())
    np.testing.assert_allclose(corners[0], (image_to_ras @ [-0.5, -0.5, 0, 1])[:3], atol=1e-5)
    import slicer

    red = ctx.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    S = drive_slice_views([red], image_to_ras, frame.shape)
    centre = image_to_ras @ np.array([34.5, 24.5, 0, 1])
    np.testing.assert_allclose(S[:3, 3], centre[:3], atol=1e-9)
    np.testing.assert_allclose(red.GetFieldOfView()[:2], [70 * 0.2, 50 * 0.2], atol=1e-6)


def test_offscreen_picture_shows_a_textured_plane():
    """A textured plane seen head-on reproduces its texture's layout (row 0 at the top)."""
    tex = np.zeros((40, 60, 3), np.uint8)
    tex[:20, :30] = (255, 0, 0)          # red top-left quarter
    cam = PinholeCamera(200.0, 200.0, 59.5, 39.5, 120, 80)
    params = views3d.vtk_camera_parameters(200.0, 200.0, 59.5, 39.5, 120, 80, np.eye(4))
    plane = render3d.textured_plane(views3d.pinhole_pixel_to_camera(100.0, 100.0, 29.5, 19.5,
                                                                    100.0), 60, 40)
    pic = render3d.render_offscreen([render3d.SceneItem(plane, texture=tex)], size=(120, 80),
                                    camera=params, background=(0, 0, 1))
    assert pic.shape == (80, 120, 3)
    assert pic[10, 10, 0] > 200 and pic[10, 10, 2] < 50            # top-left red
    assert pic[60, 100, 0] < 50 and pic[60, 100, 2] < 50           # bottom-right black
