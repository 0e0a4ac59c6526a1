"""Laparoscopic video as a Sequence: reading, loading, temporal registration on nodes."""

from __future__ import annotations

import numpy as np
import pytest

from SurgicalReg2D3DLib import nodes, nodes_volumes
from SurgicalReg2D3DLib.errors import FileReadError


def test_read_video_from_folder_and_file(tmp_path):
    import cv2

    from LiverLaparoRegLib.video import read_video

    yy, xx = np.mgrid[0:24, 0:32]
    frames = np.stack([np.stack([xx * 6 + 10 * t, yy * 8, np.full_like(xx, 40 * t)], -1)
                       for t in range(5)]).astype(np.uint8)   # smooth, distinct frames
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, f in enumerate(frames):
        cv2.imwrite(str(folder / f"f{t:03d}.png"), f[..., ::-1])
    got = read_video(folder)
    np.testing.assert_array_equal(got, frames)            # lossless PNG, RGB order kept
    np.testing.assert_array_equal(read_video(folder, max_frames=2, step=2), frames[[0, 2]])
    avi = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    clip = read_video(avi)
    assert clip.shape == frames.shape
    diff = np.abs(clip.astype(float) - frames).mean(axis=(1, 2, 3))
    assert diff.max() < 6                                      # lossy, but the same frames
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileReadError, match="video: no image files"):
        read_video(tmp_path / "empty")
    with pytest.raises(FileReadError, match="video: not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(FileReadError, match="no frame could be read"):
        read_video(tmp_path / "junk.mp4")


def test_video_registered_frame_by_frame_into_a_synchronised_transform_sequence(ctx, sample_data):
    from LiverLaparoRegLib.camera import SKSURGERY_SIZE, load_camera
    from LiverLaparoRegLib.metrics import pose_errors
    from LiverLaparoRegLib.node_inputs import camera_for_frame_node
    from LiverLaparoRegLib.raster import render_mask
    from LiverLaparoRegLib.video import load_video_to_scene, register_video_nodes
    from SurgicalReg2D3DLib import io
    from SurgicalReg2D3DLib.poses import make_pose, so3_exp
    import torch

    d = sample_data / "liver_sksurgery" / "liver"
    cam = load_camera(d / "calib.left.intrinsics.txt", *SKSURGERY_SIZE).scaled(4.0)
    model_node = io.load_model(ctx, d / "liver_sub.ply")
    from LiverLaparoRegLib.logic import model_mesh_arrays

    v, f = model_mesh_arrays(model_node)
    T0 = io.read_matrix_txt(d / "model_to_camera.txt")
    T0[2, 3] += 150.0                     # step back so the whole liver is in the frame
    centre = v.mean(0)
    poses = []
    for t in range(4):   # the camera drifts 1.5 deg and 1.5 mm per frame (SYNTHETIC video)
        R = so3_exp(torch.tensor([0.0, 0.026 * t, 0.0], dtype=torch.float64)).numpy()
        c = T0[:3, :3] @ centre + T0[:3, 3]
        D = make_pose(R, c - R @ c + np.array([1.5 * t, 0.0, 0.0])).numpy()
        poses.append(D @ T0)
    masks = np.stack([render_mask(v, f, T, cam)[0].numpy() > 0.5 for T in poses])
    frames = np.repeat((masks * 180).astype(np.uint8)[..., None], 3, axis=3)
    image_seq, browser = load_video_to_scene(ctx, frames, camera=cam, name="clip")
    assert camera_for_frame_node(image_seq) == cam
    mask_seq = ctx.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "clip masks")
    import slicer

    for t in range(4):
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetIJKToRASMatrix(nodes.numpy_to_vtk_matrix(np.diag([-1.0, -1, 1, 1])))
        node.SetAndObserveImageData(nodes_volumes._vtk_image_from_array(
            masks[t][None].astype(np.uint8) if t != 2 else np.zeros((1,) + masks[t].shape,
                                                                    np.uint8), 1))
        mask_seq.SetDataNodeAtValue(node, image_seq.GetNthIndexValue(t))
    init = nodes.matrix_to_transform_node(ctx, poses[0], "init")

    # 1. The temporal chain, with a method that records its start and moves by a known step.
    from LiverLaparoRegLib import logic

    starts = []

    def spy(inputs, progress=None, cancel=None):
        starts.append(np.array(inputs["init"]))
        step = np.eye(4)
        step[0, 3] = 1.0
        return step @ inputs["init"], {}, []

    logic.METHODS["test-spy"] = spy
    try:
        reg, out = register_video_nodes(ctx, model_node, cam, image_seq, mask_seq, init,
                                        method="test-spy", browser=browser)
    finally:
        del logic.METHODS["test-spy"]
    assert out.GetNumberOfDataNodes() == 4
    assert browser.IsSynchronizedSequenceNodeID(out.GetID())
    assert [t for t, _ in reg.skipped] == [2]                 # the empty mask is skipped
    assert reg.results[2] is None and len(starts) == 3        # ... not registered
    np.testing.assert_allclose(reg.poses[2], reg.poses[1])    # ... its pose carried over
    np.testing.assert_allclose(starts[0], poses[0])           # frame 0 starts from init
    np.testing.assert_allclose(starts[1], reg.poses[0])       # frame t from frame t-1
    np.testing.assert_allclose(starts[2], reg.poses[1])       # frame 3 from the last good
    np.testing.assert_allclose(reg.poses[3][0, 3], poses[0][0, 3] + 3.0)
    for t in range(4):
        stored = nodes.matrix_from_transform_node(out.GetNthDataNode(t))
        np.testing.assert_allclose(stored, reg.poses[t], atol=1e-9)
    js = reg.to_json()
    assert js["skipped"] == [{"index": 2, "reason": "no liver mask for this frame"}]

    # 2. The real silhouette method follows the drifting camera: each registered frame ends
    #    nearer its truth than its start (the last good pose) was.
    reg, _ = register_video_nodes(ctx, model_node, cam, image_seq, mask_seq, init)
    for t, prev in ((1, 0), (3, 1)):
        before = pose_errors(reg.poses[prev], poses[t], centre)["rotation_deg"]
        after = pose_errors(reg.poses[t], poses[t], centre)["rotation_deg"]
        assert after < 0.8 * before, (t, before, after)
