"""``surgreg demo`` part of LiverLaparoReg: register the shipped liver data, draw overlays.

1. SciKit-Surgery liver (SYNTHETIC observations of a real mesh): ``liver_sub.ply`` seen by
   a 640 x 480 laparoscope at its shipped ``model_to_camera`` pose pulled back 150 mm (the
   shipped 1920 x 540 intrinsics frame only a close-up part of the liver, where the landmark
   curves leave the frame); rendered at 1/2 size (1/4 in quick mode). The mask is our rendering
   and three landmark curves are synthetic mesh paths with 1 px noise. Registration:
   ``pnp`` (contours) + silhouette refinement (mask). Errors against the known pose,
   mask Dice; the overlay draws the liver outline, vessels and tumours
   (``models/*.vtk``, same model frame) on the synthetic mask.
2. Real P2ILF patient (mesh, annotated 2D/3D contours, camera with ``K`` only, as the
   challenge evaluates): ``pnp``; P2ILF
   reprojection error (Hausdorff px per class). The 2D contours belong to a frame that is
   not shipped, so the overlay is drawn on a blank 1920 x 1080 canvas.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _outline(mask: np.ndarray):
    import cv2  # noqa: PLC0415

    cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1, 2) for c in cnts if len(c) > 2]


def run_demo(out_dir: Path, quick: bool = False) -> dict:
    """Run both cases, write ``laparo_sksurgery_overlay.png`` and ``laparo_p2ilf_overlay.png``
    into ``out_dir``, return the metrics."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from SurgicalReg2D3DLib.io import read_matrix_txt  # noqa: PLC0415

    from . import synthetic  # noqa: PLC0415
    from .sample_data import real_p2ilf_case, sample_data_dir  # noqa: PLC0415
    from .logic import evaluate, register  # noqa: PLC0415
    from .mesh import load_mesh  # noqa: PLC0415
    from .metrics import project_contours_3d  # noqa: PLC0415
    from .p2ilf import LABEL_COLORS  # noqa: PLC0415
    from .raster import render_mask  # noqa: PLC0415

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    d = sample_data_dir() / "liver_sksurgery"
    # a 640 x 480 laparoscope, the liver at its shipped pose pulled back 150 mm so that the
    # whole liver (and every landmark curve) is in the frame; the shipped 1920 x 540
    # intrinsics show only a close-up part of it, where the curves leave the frame
    from SurgicalReg2D3DLib.cameras import PinholeCamera  # noqa: PLC0415

    cam_full = PinholeCamera(500.0, 500.0, 319.5, 239.5, 640, 480)
    cam = cam_full.scaled(4.0 if quick else 2.0)
    mesh = load_mesh(d / "liver" / "liver_sub.ply")
    T_true = read_matrix_txt(d / "liver" / "model_to_camera.txt")
    T_true[2, 3] += 150.0
    # contours at full resolution (no rendering needed), the mask rendered at small size
    case = synthetic.make_case(mesh, cam_full, T_true, noise_px=1.0, render=False)
    case.mask = render_mask(mesh.vertices, mesh.faces, T_true, cam)[0].numpy()
    # contours only (the liver overflows this close-up frame, so the clipped mask adds
    # little); the mask is used for the Dice evaluation
    res = register(mesh, cam_full, contours2d=case.contours2d, contours3d=case.contours3d,
                   ground_truth=T_true)
    T = res.model_to_camera
    res.metrics.update(evaluate(mesh, cam, T, mask=case.mask))
    out = {"sksurgery_synthetic": {"method": res.method, **{k: v for k, v in res.metrics.items()
                                                            if k != "reprojection"},
                                   "reprojection_hausdorff_px":
                                       res.metrics["reprojection"]["all"]["hausdorff_px"],
                                   "contour_image_size": [cam_full.width, cam_full.height],
                                   "seconds": res.timings["total_s"]}}
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.imshow(case.mask, cmap="gray", vmin=0, vmax=2.5)
    for c in _outline(render_mask(mesh.vertices, mesh.faces, T, cam)[0].numpy()):
        ax.plot(c[:, 0], c[:, 1], "c-", lw=1)
    structures = {"portal_vein.vtk": "b", "hepatic_veins.vtk": "m", "liver_tumours.vtk": "r"}
    for name, colour in structures.items():
        p = d / "models" / name
        if p.is_file():
            v = load_mesh(p, validate=False).vertices[::7]
            pc = v @ T[:3, :3].T + T[:3, 3]
            uv = cam.project(pc[pc[:, 2] > 1]).numpy()
            ax.plot(uv[:, 0], uv[:, 1], ".", color=colour, ms=1, label=name[:-4])
    sx, sy = cam.width / cam_full.width, cam.height / cam_full.height
    for c in case.contours2d:
        ax.plot((c.points[:, 0] + 0.5) * sx - 0.5, (c.points[:, 1] + 0.5) * sy - 0.5, "y-", lw=1)
    ax.set_xlim(0, cam.width)
    ax.set_ylim(cam.height, 0)
    ax.legend(loc="lower right", fontsize=6)
    m = out["sksurgery_synthetic"]
    ax.set_title(f"SYNTHETIC mask/contours of liver_sub.ply: {res.method}, "
                 f"rot {m['rotation_deg']:.2f} deg, trans {m['translation_mm']:.2f} mm, "
                 f"Dice {m['mask_dice']:.3f}", fontsize=8)
    fig.savefig(out_dir / "laparo_sksurgery_overlay.png", dpi=100)
    plt.close(fig)
    from .arview import demo_picture  # noqa: PLC0415

    meshes3d = [(s.vertices, s.faces) for s in (load_mesh(d / "models" / n, validate=False)
                                                 for n in ("portal_vein.vtk", "liver_tumours.vtk"))]
    demo_picture(out_dir / "laparo_3d.png", cam, T_true, T, (mesh.vertices, mesh.faces), meshes3d)

    from .camera import without_distortion  # noqa: PLC0415

    mesh_r, cam_r, c2, c3 = real_p2ilf_case()
    # K only, as the challenge evaluates (the file's distortion cannot reach the
    # annotations; see benchmarks/results/laparo_bench.md)
    cam_r = without_distortion(cam_r)
    res_r = register(mesh_r, cam_r, contours2d=c2, contours3d=c3, method="pnp")
    out["p2ilf_real"] = {"method": "pnp", "camera": "K only", "seconds": res_r.timings["total_s"],
                         "hausdorff_px": {k: v["hausdorff_px"]
                                          for k, v in res_r.metrics["reprojection"].items()}}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.imshow(np.zeros((cam_r.height, cam_r.width)), cmap="gray")
    for c in c2:
        ax.plot(c.points[:, 0], c.points[:, 1], "-", color=np.array(LABEL_COLORS[c.label]) / 255,
                lw=2, label=f"2D {c.label}")
    for c in project_contours_3d(c3, mesh_r.vertices, res_r.model_to_camera, cam_r):
        ax.plot(c.points[:, 0], c.points[:, 1], "w--o", ms=3, lw=1)
    for c in _outline(render_mask(mesh_r.vertices, mesh_r.faces, res_r.model_to_camera,
                                  cam_r.scaled(4.0))[0].numpy()):
        ax.plot((c[:, 0] + 0.5) * 4 - 0.5, (c[:, 1] + 0.5) * 4 - 0.5, "c-", lw=1)
    ax.set_xlim(0, cam_r.width)
    ax.set_ylim(cam_r.height, 0)
    ax.legend(loc="lower right", fontsize=6)
    h = out["p2ilf_real"]["hausdorff_px"].get("all", float("nan"))
    ax.set_title(f"REAL P2ILF patient2_1 (frame not shipped): pnp (K only), mean class Hausdorff "
                 f"{h:.1f} px (white: projected 3D contours, cyan: outline)", fontsize=8)
    fig.savefig(out_dir / "laparo_p2ilf_overlay.png", dpi=100)
    plt.close(fig)
    # 3. the bundled learned model on a SYNTHETIC frame of the held-out liver (no init,
    # no contours; learned/evaluation.py)
    from .learned.evaluation import demo_case  # noqa: PLC0415

    out["learned_synthetic"] = demo_case(out_dir)
    out["seconds"] = time.perf_counter() - t0
    out["pictures"] = ["laparo_sksurgery_overlay.png", "laparo_p2ilf_overlay.png",
                       "laparo_3d.png"] + ([out["learned_synthetic"]["picture"]]
                                           if "picture" in out["learned_synthetic"] else [])
    return out
