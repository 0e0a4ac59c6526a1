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


def demo_case(out_dir, seed: int = 3) -> dict:
    """The demo's learned case: the bundled model on one SYNTHETIC frame of the held-out
    SciKit-Surgery liver (P2ILF camera); writes ``laparo_learned_overlay.png`` (frame,
    true outline, estimated outline, correspondences: inliers green, outliers red)."""
    from pathlib import Path  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from ..bench import sample_data_dir  # noqa: PLC0415
    from ..camera import load_camera  # noqa: PLC0415
    from ..raster import mesh_outline_uv  # noqa: PLC0415
    from .infer import register_learned  # noqa: PLC0415
    from .modelfile import load_model  # noqa: PLC0415

    try:
        net, rec = load_model(None)
    except Exception as exc:  # noqa: BLE001  (no bundled model: say so, do not fail)
        return {"skipped": f"no bundled learned model ({exc})"}
    mesh, tm, _ = held_out_train_mesh()
    cam = load_camera(sample_data_dir() / "p2ilf" / "cameraparams" /
                      "acquisition-camera-metadata.json")
    s, img, mask = full_frame(tm, cam, np.random.default_rng(seed))
    T = s.model_to_camera
    out = {"case": "SYNTHETIC frame of the held-out SciKit-Surgery liver, P2ILF camera",
           "model": rec.get("path")}
    try:
        r = register_learned(mesh, cam, img, mask, net=net, ground_truth=T)
    except Exception as exc:  # noqa: BLE001
        out["error"] = str(exc)
        return out
    m = r.metrics
    out.update(rotation_deg=m.get("rotation_deg"), centroid_error_mm=m.get("centroid_error_mm"),
               stage1_rotation_deg=m.get("stage1", {}).get("rotation_deg"),
               mask_dice=m.get("mask_dice"), correspondences=len(r.correspondences),
               inliers=m["learned"]["inliers"], quality=r.quality.verdict,
               seconds=r.timings.get("total_s"))
    small = cam.scaled(4.0)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.imshow(img)
    for T_, col, lab in ((T, "w", "true"), (r.model_to_camera, "c", "learned")):
        for k, c in enumerate(mesh_outline_uv(mesh.vertices, mesh.faces, T_, small)):
            ax.plot((c[:, 0] + 0.5) * 4 - 0.5, (c[:, 1] + 0.5) * 4 - 0.5, col + "-", lw=1,
                    label=lab if k == 0 else None)
    p = np.array([c["pixel"] for c in r.correspondences])
    inl = np.array([c["inlier"] for c in r.correspondences])
    ax.plot(p[inl, 0], p[inl, 1], "g.", ms=4, label="inlier matches")
    ax.plot(p[~inl, 0], p[~inl, 1], "r.", ms=4, label="outlier matches")
    ax.set_xlim(0, cam.width)
    ax.set_ylim(cam.height, 0)
    ax.legend(loc="lower right", fontsize=6)
    ax.set_title(f"SYNTHETIC frame, held-out liver: learned (no init, no contours) rot "
                 f"{out['rotation_deg']:.1f} deg, centroid {out['centroid_error_mm']:.1f} mm, "
                 f"Dice {out['mask_dice']:.3f}", fontsize=8)
    fig.savefig(Path(out_dir) / "laparo_learned_overlay.png", dpi=100)
    plt.close(fig)
    out["picture"] = "laparo_learned_overlay.png"
    return out
