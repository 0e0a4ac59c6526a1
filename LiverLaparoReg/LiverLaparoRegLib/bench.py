"""Accuracy / timing evaluation (``surgreg laparo bench``, ``benchmarks/laparo_bench.py``).

Cases:
- SYNTHETIC (our renders of real meshes at random poses; 640 x 480 camera with
  distortion; three synthetic landmark curves with 1 px noise, :mod:`.synthetic`):
  ``pnp`` (contours), ``pnp+silhouette`` (contours + rendered mask, joint refinement),
  ``silhouette`` (mask only, from the true pose perturbed by 4 deg / 10 mm about the
  liver centre) and ``nonrigid`` (``nonrigid.deform`` alone on the mask and contours of
  an anisotropically stretched copy of the mesh at the true rigid pose: vertex error to
  the stretched mesh before/after).
- REAL: the shipped P2ILF patient (mesh, 2D and 3D contours, camera) -> ``pnp``, with
  the camera file's distortion and with ``K`` only (as the challenge's evaluation code
  projects). No ground-truth pose exists: the P2ILF reprojection errors (Hausdorff px,
  per class pooled and per contour pair) are reported.

Every row carries ``seconds`` = the registration time of the frame (``logic.register``'s
``rigid_s`` + ``nonrigid_s``: validation and the method) and ``total_seconds`` = the
wall time of the whole ``logic.register`` call (metrics included). A warm-up call runs
first (imports, first torch calls); the decimated rendering mesh is cached per mesh, so
its one-off cost (~0.2 s for 20k faces) is paid by the first frame of each mesh.
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


def _round(x, n=3):
    return None if x is None else round(float(x), n)


def _centre_errors(T_est, T_true, centre):
    """Camera-frame error (mm) of the posed liver centre: lateral (x, y) and depth (z)."""
    d = (T_est[:3, :3] - T_true[:3, :3]) @ centre + T_est[:3, 3] - T_true[:3, 3]
    return float(np.linalg.norm(d[:2])), float(abs(d[2]))


def synthetic_rows(mesh_path, n_poses: int, rng, quick: bool = False) -> List[dict]:
    """All synthetic rows of one mesh (see the module docstring)."""
    from . import synthetic  # noqa: PLC0415
    from .logic import evaluate, register  # noqa: PLC0415
    from .mesh import MeshData, load_mesh  # noqa: PLC0415
    from .nonrigid import deform  # noqa: PLC0415

    mesh = load_mesh(mesh_path)
    name = Path(mesh_path).name
    cam = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480,
                        dist=(-0.2, 0.1, 0.0, 0.0, 0.0))
    centre = mesh.vertices.mean(0)
    rows = []
    for k in range(n_poses):
        T = random_pose(mesh.vertices, rng)
        case = synthetic.make_case(mesh, cam, T, noise_px=1.0, render=True, seed=k)
        T0 = perturb(T, mesh.vertices, 4.0, 10.0, rng)
        runs = [("pnp", dict(contours2d=case.contours2d, contours3d=case.contours3d,
                             method="pnp"))]
        if not quick:
            runs += [("pnp+silhouette", dict(contours2d=case.contours2d,
                                             contours3d=case.contours3d, mask=case.mask,
                                             method="pnp")),
                     ("silhouette", dict(mask=case.mask, init=T0, method="silhouette"))]
        for method, kw in runs:
            t, c0 = time.perf_counter(), time.process_time()
            r = register(mesh, cam, ground_truth=T, **kw)
            dt, cpu = time.perf_counter() - t, time.process_time() - c0
            lat, dep = _centre_errors(r.model_to_camera, T, centre)
            row = {"case": f"synthetic {name} pose {k}", "method": method,
                   "seconds": _round(r.timings["rigid_s"]), "total_seconds": _round(dt),
                   "total_cpu_seconds": _round(cpu),
                   "rotation_deg": _round(r.metrics["rotation_deg"]),
                   "translation_mm": _round(r.metrics["translation_mm"]),
                   "centroid_error_mm": _round(r.metrics["centroid_error_mm"]),
                   "centre_lateral_mm": _round(lat), "centre_depth_mm": _round(dep)}
            ev = r.metrics if "reprojection" in r.metrics else evaluate(
                mesh, cam, r.model_to_camera, None, case.contours2d, case.contours3d)
            row["reprojection_mean_px"] = _round(ev["reprojection"]["all"]["mean_px"])
            row["reprojection_hausdorff_px"] = _round(ev["reprojection"]["all"]["hausdorff_px"])
            d = r.metrics.get("mask_dice")
            if d is None:
                d = evaluate(mesh, cam, r.model_to_camera, mask=case.mask)["mask_dice"]
            row["dice"] = _round(d, 4)
            if method == "silhouette":
                e0 = evaluate(mesh, cam, T0, mask=case.mask, ground_truth=T)
                row.update({"initial_dice": _round(e0["mask_dice"], 4),
                            "initial_rotation_deg": _round(e0["rotation_deg"]),
                            "initial_centroid_error_mm": _round(e0["centroid_error_mm"])})
            row["timing"] = {a: _round(b) for a, b in r.timings.items()}
            rows.append(row)
        if quick:
            continue
        # non-rigid: observations of a stretched copy, the rigid pose is the true one
        warped = MeshData(centre + (mesh.vertices - centre) * [1.08, 0.94, 1.0], mesh.faces)
        wcase = synthetic.make_case(warped, cam, T, noise_px=1.0, render=True, seed=k,
                                    contours3d=case.contours3d)
        # the non-rigid step alone, at the true rigid pose (nonrigid.deform, as
        # logic.register runs it after the rigid method)
        t = time.perf_counter()
        d = deform(mesh, cam, T, mask=wcase.mask, contours2d=wcase.contours2d,
                   contours3d=wcase.contours3d)
        dt = time.perf_counter() - t
        before = evaluate(mesh, cam, T, wcase.mask, wcase.contours2d, wcase.contours3d)
        after = evaluate(mesh, cam, T, wcase.mask, wcase.contours2d, wcase.contours3d,
                         deformed_vertices=d.vertices)
        err0 = np.linalg.norm(mesh.vertices - warped.vertices, axis=1).mean()
        err1 = np.linalg.norm(d.vertices - warped.vertices, axis=1).mean()
        rows.append({"case": f"synthetic {name} pose {k} (stretched 1.08 x 0.94)",
                     "method": "nonrigid", "seconds": _round(dt), "total_seconds": _round(dt),
                     "dice": _round(after["mask_dice"], 4),
                     "initial_dice": _round(before["mask_dice"], 4),
                     "reprojection_mean_px": _round(after["reprojection"]["all"]["mean_px"]),
                     "initial_reprojection_mean_px":
                         _round(before["reprojection"]["all"]["mean_px"]),
                     "vertex_error_mm": _round(err1), "initial_vertex_error_mm": _round(err0)})
    return rows


def real_rows() -> List[dict]:
    """The shipped real P2ILF case, with the file's distortion and with ``K`` only."""
    from .camera import without_distortion  # noqa: PLC0415
    from .logic import register  # noqa: PLC0415
    from .metrics import paired_reprojection_errors  # noqa: PLC0415

    mesh, cam, c2, c3 = real_p2ilf_case()
    rows = []
    for label, camera in (("camera file distortion", cam), ("K only", without_distortion(cam))):
        t = time.perf_counter()
        r = register(mesh, camera, contours2d=c2, contours3d=c3, method="pnp")
        dt = time.perf_counter() - t
        rep = r.metrics["reprojection"]
        paired = paired_reprojection_errors(c2, c3, mesh.vertices, r.model_to_camera, camera)
        T = r.model_to_camera
        z = mesh.vertices @ T[2, :3] + T[2, 3]
        rows.append({"case": f"real P2ILF patient2_1 ({label})", "method": "pnp",
                     "seconds": _round(r.timings["rigid_s"]), "total_seconds": _round(dt),
                     "hausdorff_px_per_class": {k: _round(v["hausdorff_px"], 1)
                                                for k, v in rep.items()},
                     "mean_px_per_class": {k: _round(v["mean_px"], 1) for k, v in rep.items()},
                     "contour_dice_10px": {k: _round(v["dice"], 3) for k, v in rep.items()
                                           if "dice" in v},
                     "hausdorff_px_per_pair": [
                         {"label": p["label"], "pair": [p["index2d"], p["index3d"]],
                          "hausdorff_px": _round(p["hausdorff_px"], 1)} for p in paired["pairs"]],
                     "mean_pair_hausdorff_px": _round(paired.get("mean_hausdorff_px"), 1),
                     "mesh_depth_range_mm": [_round(z.min(), 1), _round(z.max(), 1)],
                     "model_to_camera": np.round(T, 5).tolist(),
                     "timing": {a: _round(b) for a, b in r.timings.items()}})
    return rows


def held_out_mesh() -> Path:
    """The mesh held out from every tuning (see ``docs/laparo.md``)."""
    return sample_data_dir() / "liver_sksurgery" / "models" / "liver.vtk"


def run_bench(meshes: Optional[Sequence] = None, quick: bool = False, seed: int = 0,
              n_poses: Optional[int] = None) -> List[dict]:
    """Rows for the synthetic cases of ``meshes`` (default: the held-out SciKit-Surgery
    liver, then the P2ILF liver used for tuning) and the real P2ILF case."""
    from .logic import register  # noqa: PLC0415
    from .mesh import load_mesh  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    warm = load_mesh(default_meshes()[0])           # warm-up: imports, first torch calls
    small = PinholeCamera(fx=100.0, fy=100.0, cx=39.5, cy=29.5, width=80, height=60)
    register(warm, small, mask=np.ones((60, 80), bool),
             init=random_pose(warm.vertices, np.random.default_rng(123)), method="silhouette")
    if n_poses is None:
        n_poses = 1 if quick else 5
    rows: List[dict] = []
    for path in (meshes or [held_out_mesh(), *default_meshes()[:1]]):
        rows += synthetic_rows(path, n_poses, rng, quick=quick)
    rows += real_rows()
    return rows
