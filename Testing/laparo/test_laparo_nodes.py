"""Node-level LiverLaparoReg on a real MRML scene (slicer-core)."""

import numpy as np

from SurgicalReg2D3DLib import io, nodes
from LiverLaparoRegLib import logic, metrics, p2ilf
from LiverLaparoRegLib.camera import load_camera
from LiverLaparoRegLib.mesh import load_mesh


def test_register_nodes_real_p2ilf_and_markups(ctx, sample_data):
    d = sample_data / "p2ilf"
    obj = d / "evaluation_GT" / "3d-liver-model.obj"
    model = io.load_model(ctx, obj)                       # Slicer's default: file = LPS
    vertices_before = nodes.model_from_node(model, "model")[0].copy()
    mesh = load_mesh(obj)
    frame = nodes.image2d_to_node(ctx, np.zeros((1080, 1920, 3), np.uint8), "frame")
    cam = load_camera(d / "cameraparams" / "acquisition-camera-metadata.json")
    c2 = p2ilf.read_contours_2d(d / "evaluation_GT" / "patient2_1_2D-contours.json")
    c3 = p2ilf.read_contours_3d(d / "evaluation_GT" / "patient2_1_3D-contours.json",
                                len(mesh.vertices))
    res = logic.register_nodes(ctx, model, cam, frame_node=frame, contours2d=c2, contours3d=c3)
    # same answer as the array-level entry point on the file's coordinates
    ref = logic.register(mesh, cam, contours2d=c2, contours3d=c3)
    np.testing.assert_allclose(res.model_to_camera, ref.model_to_camera, atol=1e-6)
    tnode = ctx.scene.GetFirstNodeByName("model_to_camera")
    np.testing.assert_allclose(nodes.matrix_from_transform_node(tnode), res.model_to_camera,
                               atol=1e-9)
    np.testing.assert_array_equal(nodes.model_from_node(model, "model")[0], vertices_before)
    # contours as markups curves: 3D on the model (RAS = LPS flipped), 2D on the frame
    curves = logic.contours_to_markups(ctx, c2, c3, mesh.vertices)
    assert len(curves) == len(c2) + len(c3)
    p = nodes.points_from_markups(curves[len(c2)])
    np.testing.assert_allclose(p, mesh.vertices[c3[0].vertices] * [-1, -1, 1], atol=1e-4)
    q = nodes.points_from_markups(curves[0])
    np.testing.assert_allclose(q[:, :2], c2[0].points, atol=1e-4)


def test_pose_errors_centroid_analytic():
    from scipy.spatial.transform import Rotation

    c = np.array([0.0, 0.0, 300.0])
    R = Rotation.from_rotvec([0, 0.1, 0]).as_matrix()
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = c - R @ c                                  # rotation about c
    e = metrics.pose_errors(T, np.eye(4), centre=c)
    assert abs(e["rotation_deg"] - np.degrees(0.1)) < 1e-9
    assert abs(e["translation_mm"] - np.linalg.norm(c - R @ c)) < 1e-9
    assert e["centroid_error_mm"] < 1e-9


def test_model_node_arrays_are_file_coordinates(ctx, sample_data):
    from SurgicalReg2D3DLib.io import load_mesh_arrays

    for rel in ("liver_sksurgery/liver/liver_sub.ply", "p2ilf/evaluation_GT/3d-liver-model.obj"):
        node = io.load_model(ctx, sample_data / rel)
        v, f = logic.model_mesh_arrays(node)
        fv, ff = load_mesh_arrays(sample_data / rel)
        np.testing.assert_allclose(v, fv, atol=1e-4)
        np.testing.assert_array_equal(f, ff)
