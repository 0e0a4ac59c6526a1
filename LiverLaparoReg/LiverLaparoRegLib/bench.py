"""Accuracy / timing evaluation (``surgreg laparo bench``, ``benchmarks/laparo_bench.py``).

Cases:
- SYNTHETIC: each mesh seen by a 640 x 480 camera with distortion at a random pose,
  three synthetic landmark curves with 1 px noise (:mod:`.synthetic`) -> ``pnp``;
  and (unless quick) a silhouette refinement from a perturbed pose at 128 x 96.
- REAL: the shipped P2ILF patient (mesh, 2D and 3D contours, camera) -> ``pnp``; no
  ground-truth pose exists, the P2ILF reprojection error (Hausdorff px per class) is
  reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.cameras import PinholeCamera


def sample_data_dir() -> Path:
    """``Resources/SampleData`` (core ``paths.sample_data_dir``)."""
    from SurgicalReg2D3DLib.paths import sample_data_dir as _dir  # noqa: PLC0415

    return Path(_dir())


def default_meshes() -> List[Path]:
    d = sample_data_dir()
    return [d / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj",
            d / "liver_sksurgery" / "liver" / "liver_sub.ply"]


def random_pose(mesh_vertices: np.ndarray, rng, distance_mm: float = 450.0) -> np.ndarray:
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    T[:3, 3] = [0.0, 0.0, distance_mm] - T[:3, :3] @ mesh_vertices.mean(0)
    return T


def perturb(T: np.ndarray, mesh_vertices: np.ndarray, angle_deg: float, shift_mm: float, rng):
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    d = rng.normal(size=3)
    d *= shift_mm / np.linalg.norm(d)
    P = np.eye(4)
    P[:3, :3] = Rotation.from_rotvec(np.radians(angle_deg) * axis).as_matrix()
    pivot = T[:3, :3] @ mesh_vertices.mean(0) + T[:3, 3]
    P[:3, 3] = pivot - P[:3, :3] @ pivot + d
    return P @ T


def real_p2ilf_case():
    """The shipped real P2ILF case: (mesh, camera, 2D contours, 3D contours)."""
    from .camera import load_camera  # noqa: PLC0415
    from .mesh import load_mesh  # noqa: PLC0415
    from .p2ilf import read_contours_2d, read_contours_3d  # noqa: PLC0415

    d = sample_data_dir() / "p2ilf"
    mesh = load_mesh(d / "evaluation_GT" / "3d-liver-model.obj")
    cam = load_camera(d / "cameraparams" / "acquisition-camera-metadata.json")
    c2 = read_contours_2d(d / "evaluation_GT" / "patient2_1_2D-contours.json")
    c3 = read_contours_3d(d / "evaluation_GT" / "patient2_1_3D-contours.json", len(mesh.vertices))
    return mesh, cam, c2, c3


def run_bench(meshes: Optional[Sequence] = None, quick: bool = False, seed: int = 0) -> List[dict]:
    from . import synthetic  # noqa: PLC0415
    from .logic import evaluate, register  # noqa: PLC0415
    from .mesh import load_mesh  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    rows = []
    n_poses = 1 if quick else 3
    cam = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480,
                        dist=(-0.2, 0.1, 0.0, 0.0, 0.0))
    small = cam.scaled(5.0)
    for path in (meshes or default_meshes()):
        mesh = load_mesh(path)
        for k in range(n_poses):
            T = random_pose(mesh.vertices, rng)
            case = synthetic.make_case(mesh, cam, T, noise_px=1.0, render=False, seed=k)
            t = time.perf_counter()
            r = register(mesh, cam, contours2d=case.contours2d, contours3d=case.contours3d,
                         method="pnp", ground_truth=T)
            rows.append({"case": f"synthetic {Path(path).name} pose {k}", "method": "pnp",
                         "seconds": round(time.perf_counter() - t, 3),
                         "reprojection_hausdorff_px": round(r.metrics["reprojection"]["all"]["hausdorff_px"], 2),
                         "rotation_deg": round(r.metrics["rotation_deg"], 3),
                         "translation_mm": round(r.metrics["translation_mm"], 3),
                         "centroid_error_mm": round(r.metrics["centroid_error_mm"], 3)})
            if quick:
                continue
            from .raster import render_mask  # noqa: PLC0415

            mask = render_mask(mesh.vertices, mesh.faces, T, small)[0].numpy()
            T0 = perturb(T, mesh.vertices, 4.0, 10.0, rng)
            d_init = evaluate(mesh, small, T0, mask=mask)["mask_dice"]
            r0 = register(mesh, small, mask=mask, init=T0, method="silhouette", ground_truth=T)
            rows.append({"case": f"synthetic {Path(path).name} pose {k}", "method": "silhouette",
                         "seconds": round(r0.timings["total_s"], 3),
                         "dice": round(r0.metrics["mask_dice"], 4),
                         "rotation_deg": round(r0.metrics["rotation_deg"], 3),
                         "translation_mm": round(r0.metrics["translation_mm"], 3),
                         "centroid_error_mm": round(r0.metrics["centroid_error_mm"], 3),
                         "initial_dice": round(float(d_init), 4)})
    mesh, cam_real, c2, c3 = real_p2ilf_case()
    t = time.perf_counter()
    r = register(mesh, cam_real, contours2d=c2, contours3d=c3, method="pnp")
    row = {"case": "real P2ILF patient2_1", "method": "pnp",
           "seconds": round(time.perf_counter() - t, 3)}
    row.update({f"hausdorff_px_{k}": round(v["hausdorff_px"], 1)
                for k, v in r.metrics["reprojection"].items()})
    rows.append(row)
    return rows
