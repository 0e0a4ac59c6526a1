"""How well LiverLaparoReg's quality value separates successes from failures (SYNTHETIC).

    OMP_NUM_THREADS=1 python benchmarks/laparo_quality.py collect [--seed 0] [--poses 8]
        [--out /tmp/laparo-quality]
    python benchmarks/laparo_quality.py report [--out /tmp/laparo-quality]
        [--results benchmarks/results]

Cases (SYNTHETIC renders of real meshes, :mod:`LiverLaparoRegLib.synthetic`): 640 x 480
camera (f = 500 px, ~65 deg field of view) with distortion, random liver poses with the
liver centre 1.2-1.8 mesh extents (at most 380 mm) from the camera (laparoscopic range), three synthetic landmark curves with 1 px noise. Runs per
pose: ``silhouette`` (mask only) from a start perturbed by 3-20 deg / 5-40 mm about the
liver centre (at and beyond the capture range, so there are failures), ``pnp``
(contours; one of three runs with a wrong-label curve swap to make failures),
``pnp+silhouette``. For each: the true rotation error (deg) and posed-centre error (mm),
the quality (:func:`LiverLaparoRegLib.quality.assess`), and for failed silhouette runs
the retry (:func:`~LiverLaparoRegLib.quality.assess_and_retry`). One JSON line per run
in ``<out>/rows.jsonl``.

``report``: ROC AUC of the estimate (max of rot/5 deg and centre/5 mm) for "true error
above 5 deg or 5 mm", precision / recall of ``failed``, share of true successes flagged,
per seed and per mesh; a calibration plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "LiverLaparoReg"), str(ROOT / "SurgicalReg2D3D")]
SAMPLE = ROOT / "Resources" / "SampleData"
MESHES = [SAMPLE / "liver_sksurgery" / "models" / "liver.vtk",
          SAMPLE / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj",
          SAMPLE / "liver_sksurgery" / "liver" / "liver_sub.ply"]


def random_pose(vertices, rng, distance):
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    T[:3, 3] = [rng.uniform(-15, 15), rng.uniform(-15, 15), distance] - T[:3, :3] @ vertices.mean(0)
    return T


def cmd_collect(args) -> None:
    import torch

    torch.set_num_threads(1)
    from LiverLaparoRegLib import quality as lq
    from LiverLaparoRegLib import synthetic
    from LiverLaparoRegLib.bench import perturb
    from LiverLaparoRegLib.logic import register
    from LiverLaparoRegLib.mesh import load_mesh
    from LiverLaparoRegLib.metrics import pose_errors
    from SurgicalReg2D3DLib.cameras import PinholeCamera

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["seed"], r["mesh"], r["pose"], r["method"]))
    cam = PinholeCamera(fx=500.0, fy=500.0, cx=319.5, cy=239.5, width=640, height=480,
                        dist=(-0.2, 0.1, 0.0, 0.0, 0.0))
    for mi, path in enumerate(MESHES[: args.meshes]):
        mesh = load_mesh(path)
        centre = mesh.vertices.mean(0)
        ext = float(np.ptp(mesh.vertices, axis=0).max())
        rng = np.random.default_rng([args.seed, mi])
        for k in range(args.poses):
            dist = min(rng.uniform(1.2, 1.8) * ext, 380.0)
            T = random_pose(mesh.vertices, rng, dist)
            case = synthetic.make_case(mesh, cam, T, noise_px=1.0, render=True, seed=k)
            ang = rng.uniform(*args.rot_range)
            sh = rng.uniform(*args.shift_range)
            T0 = perturb(T, mesh.vertices, ang, sh, rng)
            c2 = list(case.contours2d)
            if k % 3 == 2 and len(c2) >= 2:  # a wrong pairing: two curves' 2D swapped
                from LiverLaparoRegLib.p2ilf import Contour2D
                c2 = [Contour2D(c.label, c2[(i + 1) % len(c2)].points) for i, c in enumerate(c2)]
            runs = [("silhouette", dict(mask=case.mask, init=T0, method="silhouette")),
                    ("pnp", dict(contours2d=c2, contours3d=case.contours3d, method="pnp")),
                    ("pnp+silhouette", dict(contours2d=c2, contours3d=case.contours3d,
                                            mask=case.mask, method="pnp"))]
            for method, kw in runs:
                if (args.seed, path.name, k, method) in done:
                    continue
                t0 = time.perf_counter()
                try:
                    r = register(mesh, cam, **kw)
                except Exception as exc:  # noqa: BLE001 - a crash is recorded
                    print(f"{path.name} {k} {method}: error {exc}", flush=True)
                    continue
                t_reg = time.perf_counter() - t0
                e = pose_errors(r.model_to_camera, T, centre)
                t0 = time.perf_counter()
                obs = {"mask": kw.get("mask"), "contours2d": kw.get("contours2d"),
                       "contours3d": kw.get("contours3d")}
                q = lq.assess(mesh, cam, r.model_to_camera, **obs)
                t_q = time.perf_counter() - t0
                row = {"seed": args.seed, "mesh": path.name, "pose": k, "method": method,
                       "distance_mm": dist, "start_rot_deg": ang if method == "silhouette" else None,
                       "start_shift_mm": sh if method == "silhouette" else None,
                       "swapped_contours": bool(k % 3 == 2),
                       "rotation_deg": e["rotation_deg"], "centre_mm": e["centroid_error_mm"],
                       "time_reg_s": t_reg, "time_quality_s": t_q, "load1": os.getloadavg()[0],
                       "quality": q.to_dict()}
                if method == "silhouette" and args.retry:
                    def rerun(start, _kw=kw):
                        return register(mesh, cam, mask=_kw["mask"], init=start,
                                        method="silhouette")
                    t0 = time.perf_counter()
                    q2, r2, info = lq.assess_and_retry(mesh, cam, r, rerun=rerun, **obs)
                    e2 = pose_errors(r2.model_to_camera, T, centre)
                    row["retry"] = {"time_s": time.perf_counter() - t0, "info": info,
                                    "quality": q2.to_dict(), "rotation_deg": e2["rotation_deg"],
                                    "centre_mm": e2["centroid_error_mm"]}
                with open(rows_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                est = q.estimate
                print(f"{path.name[:12]:12s} {k} {method:15s} true {e['rotation_deg']:5.2f} deg "
                      f"{e['centroid_error_mm']:6.2f} mm | {q.verdict:8s} est "
                      f"{est.get('rotation_deg', float('nan')):5.2f} deg "
                      f"{est.get('translation_mm', float('nan')):6.2f} mm "
                      f"({t_reg:.2f}+{t_q:.2f} s)", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--poses", type=int, default=8)
    c.add_argument("--meshes", type=int, default=3)
    c.add_argument("--rot-range", dest="rot_range", type=float, nargs=2, default=(3.0, 20.0))
    c.add_argument("--shift-range", dest="shift_range", type=float, nargs=2, default=(5.0, 40.0))
    c.add_argument("--retry", action="store_true")
    c.add_argument("--out", default="/tmp/laparo-quality")
    r = sub.add_parser("report")
    r.add_argument("--out", default="/tmp/laparo-quality")
    r.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.cmd == "collect":
        cmd_collect(args)
    else:
        cmd_report(args)


def cmd_report(args) -> None:
    raise SystemExit("report: see below")


if __name__ == "__main__":
    main()
