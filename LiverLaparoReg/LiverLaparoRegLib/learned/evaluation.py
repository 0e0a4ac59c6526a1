"""SYNTHETIC full-size test frames and error measures for the learned registration
(used by ``benchmarks/laparo_learned.py`` and the demo).

:func:`full_frame` renders a :mod:`.data` sample of a mesh with a given camera: the
frame is the network-resolution rendering (128 x 96) upscaled to the camera size, the
liver mask is rendered at 480 px wide, upscaled, minus the instruments.
"""

from __future__ import annotations

import numpy as np


def held_out_train_mesh():
    """The held-out SciKit-Surgery liver (``models/liver.vtk``) as a :class:`.data.TrainMesh`
    whose view axis is the viewing direction of its real shipped laparoscope pose, with
    that pose's camera: ``(mesh, train_mesh, camera)``."""
    from ..bench import held_out_mesh  # noqa: PLC0415
    from ..mesh import load_mesh  # noqa: PLC0415
    from . import data  # noqa: PLC0415

    mesh = load_mesh(held_out_mesh())
    _, T_real, cam = data.sksurgery_mesh_and_pose()
    tm = data.train_mesh(mesh, view_axis=T_real[:3, :3].T @ np.array([0.0, 0.0, 1.0]))
    return mesh, tm, cam


def full_frame(tm, cam, rng, bend: float = 0.0):
    """A SYNTHETIC full-size frame: ``(sample, image (H, W, 3) uint8, mask (H, W) bool)``."""
    import cv2  # noqa: PLC0415

    from ..raster import render_mask  # noqa: PLC0415
    from . import data  # noqa: PLC0415

    s = data.make_sample(tm, rng, camera=cam, preop=False, bend_curvature=bend, keep_meshes=True)
    img = cv2.resize(np.transpose(s.image, (1, 2, 0)), (cam.width, cam.height),
                     interpolation=cv2.INTER_LINEAR)
    f = max(1.0, cam.width / 480.0)
    m = render_mask(s.intraop_vertices, s.faces, s.model_to_camera, cam.scaled(f))[0].numpy()
    m = cv2.resize(m.astype(np.uint8), (cam.width, cam.height),
                   interpolation=cv2.INTER_NEAREST).astype(bool)
    for o in s.extras.get("occluders", []):
        m &= ~cv2.resize(o.astype(np.uint8), (cam.width, cam.height),
                         interpolation=cv2.INTER_NEAREST).astype(bool)
    return s, (np.clip(img, 0, 1) * 255).astype(np.uint8), m


def visible_vertices(vertices, faces, T, cam) -> np.ndarray:
    """Vertices visible at pose ``T`` (depth test at 480 px wide)."""
    from . import data  # noqa: PLC0415

    c = cam.scaled(max(1.0, cam.width / 480.0))
    depth, face, _, uv, z = data.render_ids(vertices, faces, T, c)
    return data.vertex_visibility(uv, z, depth, face >= 0)


def reprojection_px(T_est, T_true, vertices, visible, cam):
    """Mean image distance (px) between the ``visible`` vertices projected with the
    estimated and with the true pose (inf when the estimate puts some behind the camera)."""
    if not np.any(visible):
        return None
    v = np.asarray(vertices)[visible]
    a = cam.project(v @ T_true[:3, :3].T + T_true[:3, 3]).numpy()
    pc = v @ T_est[:3, :3].T + T_est[:3, 3]
    if (pc[:, 2] <= 1).any():
        return float("inf")
    return float(np.linalg.norm(a - cam.project(pc).numpy(), axis=1).mean())
