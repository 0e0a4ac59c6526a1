"""Inputs as nodes (issue: the clinician's workflow): contours as Markups curves, the mask
from a Segmentation, the camera stored with the frame, the X-ray camera from DICOM tags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SurgicalReg2D3DLib import nodes
from SurgicalReg2D3DLib.cameras import PinholeCamera, XRayCamera
from SurgicalReg2D3DLib.errors import GeometryError, InputError


def _frame_node(ctx, w=64, h=48, origin=(10.0, -5.0, 3.0)):
    m = np.diag([-0.5, -0.5, 1.0, 1.0])       # 0.5 mm pixels, like an image loaded in LPS
    m[:3, 3] = origin
    return nodes.image2d_to_node(ctx, np.zeros((h, w), np.float32), "frame", ijk_to_ras=m), m


def test_2d_contours_round_trip_through_markups_and_p2ilf_json(ctx, tmp_path):
    from LiverLaparoRegLib.logic import contours_to_markups
    from LiverLaparoRegLib.node_inputs import contours2d_from_markups, save_contours_2d
    from LiverLaparoRegLib.p2ilf import Contour2D, read_contours_2d

    frame, m = _frame_node(ctx)
    c2 = [Contour2D("Ridge", np.array([[3.0, 4.0], [10, 12], [20, 18], [30, 22]])),
          Contour2D("Ligament", np.array([[40.0, 5.0], [42, 15], [44, 25], [45, 35.5]]))]
    curves = contours_to_markups(ctx, contours2d=c2, frame_ijk_to_ras=m)
    back = contours2d_from_markups(curves, frame)
    assert [c.label for c in back] == ["Ridge", "Ligament"]
    for a, b in zip(c2, back):
        np.testing.assert_allclose(b.points, a.points, atol=1e-6)
    out = tmp_path / "c2.json"
    save_contours_2d(curves, frame, out)
    again = read_contours_2d(out)
    np.testing.assert_allclose(again[1].points, np.rint(c2[1].points))
    data = json.loads(out.read_text())
    assert data["numOfContours"] == 2 and data["contour"][0]["contourType"] == "Ridge"


def test_2d_contour_class_from_name_and_errors(ctx):
    from LiverLaparoRegLib.node_inputs import contours2d_from_markups

    frame, m = _frame_node(ctx)
    pts = np.c_[np.array([[1.0, 2.0], [5, 6], [9, 9]]), np.zeros(3), np.ones(3)] @ m.T
    curve = nodes.points_to_markups(ctx, pts[:, :3], "silhouette left", kind="curve")
    assert contours2d_from_markups([curve], frame)[0].label == "Silhouette"
    unnamed = nodes.points_to_markups(ctx, pts[:, :3], "my curve", kind="curve")
    with pytest.raises(InputError, match="contour 'my curve': no landmark class"):
        contours2d_from_markups([unnamed], frame)
    off = nodes.points_to_markups(ctx, pts[:, :3] + [0, 0, 5.0], "Ridge off", kind="curve")
    with pytest.raises(GeometryError, match="not on the frame"):
        contours2d_from_markups([off], frame)


def test_3d_contours_snap_to_mesh_vertices(ctx):
    from LiverLaparoRegLib.logic import contours_to_markups
    from LiverLaparoRegLib.node_inputs import contours3d_from_markups
    from LiverLaparoRegLib.p2ilf import Contour3D

    rng = np.random.default_rng(0)
    verts = rng.uniform(-50, 50, (300, 3))
    c3 = [Contour3D("Ligament", np.array([5, 17, 42, 99, 120]))]
    curves = contours_to_markups(ctx, contours3d=c3, vertices=verts)
    back = contours3d_from_markups(curves, verts)
    np.testing.assert_array_equal(back[0].vertices, c3[0].vertices)
    assert back[0].label == "Ligament"
    far = nodes.points_to_markups(ctx, np.array([[500.0, 0, 0], [510, 0, 0]]), "Ridge far",
                                  kind="curve")
    with pytest.raises(GeometryError, match="from the liver model"):
        contours3d_from_markups([far], verts)


def test_mask_from_segment_editor_segmentation(ctx):
    from LiverLaparoRegLib.node_inputs import mask_from_node

    frame, m = _frame_node(ctx)
    label = np.zeros((48, 64), np.uint8)
    label[10:30, 20:50] = 1
    label_node = nodes.image2d_to_node(ctx, label.astype(np.float32), "liver label",
                                       ijk_to_ras=m)
    label_node_lm = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "liver lm")
    nodes.volume_to_node(ctx, label[None], m, "liver lm", node=label_node_lm)
    seg = nodes.labelmap_to_segmentation(ctx, label_node_lm, name="liver seg")
    got = mask_from_node(ctx, seg, frame)
    np.testing.assert_array_equal(got, label != 0)
    np.testing.assert_array_equal(mask_from_node(ctx, label_node, frame), label != 0)
    empty = nodes.image2d_to_node(ctx, np.zeros((48, 64), np.float32), "empty", ijk_to_ras=m)
    with pytest.raises(InputError, match="mask: 'empty' is empty"):
        mask_from_node(ctx, empty, frame)
    small = nodes.image2d_to_node(ctx, np.ones((10, 10), np.float32), "small")
    with pytest.raises(InputError, match="does not match the frame size"):
        mask_from_node(ctx, small, frame)


def test_camera_stored_with_the_frame_node(ctx):
    from LiverLaparoRegLib.node_inputs import camera_for_frame_node, set_frame_camera

    frame, _ = _frame_node(ctx)
    with pytest.raises(GeometryError, match="camera: none stored with frame 'frame'"):
        camera_for_frame_node(frame)
    cam = PinholeCamera(800.0, 810.0, 31.0, 22.5, 64, 48, dist=(-0.2, 0.1, 0.0, 0.0, 0.01))
    set_frame_camera(frame, cam)
    assert camera_for_frame_node(frame) == cam


def test_xray_camera_from_the_dicom_file_of_the_node(ctx, tmp_path):
    from dicom_helpers import write_xray_dicom

    from FluoroRegLib.logic import camera_for_xray_node
    from SurgicalReg2D3DLib import io

    path = write_xray_dicom(tmp_path / "xa.dcm", DistanceSourceToDetector=1100.0,
                            ImagerPixelSpacing=[0.4, 0.3])
    node = io.load_image2d(ctx, path)
    cam = camera_for_xray_node(node)
    assert cam == XRayCamera.from_dicom(path)
    assert cam.source_to_detector_mm == 1100.0 and cam.pixel_spacing_mm == (0.3, 0.4)
    png = nodes.image2d_to_node(ctx, np.zeros((8, 8), np.float32), "plain")
    with pytest.raises(GeometryError, match="X-ray geometry: missing"):
        camera_for_xray_node(png)


def test_resolve_inputs_prefers_files_and_falls_back_to_nodes(ctx, tmp_path):
    from LiverLaparoRegLib.logic import contours_to_markups
    from LiverLaparoRegLib.node_inputs import camera_for_frame_node, resolve_inputs
    from LiverLaparoRegLib.p2ilf import Contour2D, Contour3D, write_contours_2d

    frame, m = _frame_node(ctx)
    verts = np.random.default_rng(3).uniform(-50, 50, (200, 3))
    c2 = [Contour2D("Ridge", np.array([[3.0, 4.0], [10, 12], [20, 18], [30, 22]]))]
    c3 = [Contour3D("Ridge", np.array([1, 7, 9, 30]))]
    curves2 = contours_to_markups(ctx, contours2d=c2, frame_ijk_to_ras=m)
    curves3 = contours_to_markups(ctx, contours3d=c3, vertices=verts)
    with pytest.raises(GeometryError, match="none stored with frame"):
        resolve_inputs(ctx, frame, verts, curves2d=curves2, curves3d=curves3)
    cam_file = tmp_path / "K.txt"
    cam_file.write_text("500 0 31.5\n0 500 23.5\n0 0 1\n")
    cam, got2, got3, mask = resolve_inputs(ctx, frame, verts, camera_path=cam_file,
                                           curves2d=curves2, curves3d=curves3)
    assert (cam.width, cam.height, cam.fx) == (64, 48, 500.0)
    assert camera_for_frame_node(frame) == cam            # remembered with the frame
    np.testing.assert_allclose(got2[0].points, c2[0].points, atol=1e-6)
    np.testing.assert_array_equal(got3[0].vertices, c3[0].vertices)
    assert mask is None
    other = [Contour2D("Ligament", np.array([[1.0, 1.0], [2, 2], [3, 3], [4, 4]]))]
    write_contours_2d(other, tmp_path / "c2.json")
    cam2, got2, _, _ = resolve_inputs(ctx, frame, verts, contours2d_path=tmp_path / "c2.json",
                                      curves2d=curves2)
    assert cam2 == cam and got2[0].label == "Ligament"      # the file wins over the curves
