"""LiverLaparoReg benchmark: per-frame time and accuracy (synthetic renders + real P2ILF).

Run (final timing runs, one core, never two timing runs at once)::

    flock /tmp/core1.lock taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/laparo_bench.py

Writes ``benchmarks/results/laparo_bench.{md,json}`` (``--out DIR`` elsewhere; ``--quick``
prints a short run and writes nothing unless ``--out`` is given). Same cases as
``surgreg laparo bench`` (``LiverLaparoRegLib.bench``). Synthetic cases: renders of the
held-out SciKit-Surgery liver (``liver_sksurgery/models/liver.vtk``, never used to tune
anything) and of the P2ILF liver (used while tuning). No peer method is run
(pytorch3d / kaolin / nvdiffrast do not install on CPU), so no speed ratios are given.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from LiverLaparoRegLib.bench import held_out_mesh, run_bench

ROOT = Path(__file__).resolve().parents[1]

FINDING = """\
### Why the real-case reprojection error is large (investigation)

1. **The camera file's distortion cannot reach the annotations.** With the shipped
   coefficients (k1 = -0.23, k2 = 0.34, k3 = -0.24, OpenCV order k1 k2 p1 p2 k3, as
   the challenge's converter reads them) the radial map `r (1 + k1 r^2 + k2 r^4 +
   k3 r^6)` stops increasing at r = 1.06 (`pnp.fold_radius`), where it reaches 0.88:
   no 3D point can project farther than ~840 px from the principal point, yet the
   annotated ligament reaches ~990 px (x = 1871, y = 537). Beyond the fold, points far
   outside the field of view project back into the image; the previous 158 px figure
   came from a pose that used this artefact (ligament vertices at 4-6 times the field
   of view). PnP now ranks such poses last, which gives the larger but honest
   "camera file distortion" row above.
2. **The challenge evaluates with `K` only.** Its reprojection script
   (`teamEvaluations/metric_reprejectionError.py` in the P2ILF repository) projects the
   registered mesh with `cv2.projectPoints(..., K, [])`: no distortion. Registering
   and evaluating with `K` only (`surgreg laparo register --no-distortion`,
   `camera.without_distortion`) fits the annotations far better ("K only" row): the
   2D annotations are consistent with the `K`-only geometry. This is the clear fix we
   found; as it is a convention of the data it is an option, not a silent default.
3. **The 3D contours are short and sparse.** The 3D ridge / ridge / ligament curves are
   4, 9 and 6 listed vertices spanning 24, 42 and 41 mm, while their 2D curves are 668,
   793 and 401 px long. The 3D curves cover only part of what the 2D curves show (or
   the camera is very close: the solutions put the nearest vertex 6-20 mm from the
   camera), and a symmetric Hausdorff distance counts the uncovered part in full,
   whatever the pose. An exploratory global search with `K` only (Powell from ~25
   random starts minimising the mean curve distance; not part of this benchmark) found
   no pose below about 75 px class-pooled Hausdorff, so most of the remaining "K only"
   error is a property of the annotations, not of the optimiser.
4. **Pairing.** The challenge pairs the k-th 2D contour of a class with the k-th 3D
   contour of that class (file order). Our hypothesis search found exactly that pairing
   without being told; the per-pair Hausdorff (the challenge's own number) is listed
   next to the class-pooled one.
5. Not applicable here: 3D chamfer (the 3D contours are inputs; there is no 3D ground
   truth of the registered mesh for this case) and mask Dice (no liver mask is shipped
   for patient2_1).
"""


def _machine() -> dict:
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    import torch

    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "affinity": affinity, "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "python": platform.python_version()}


def _stat(values, fn):
    v = [x for x in values if x is not None]
    return None if not v else float(fn(v))


def summarize(rows):
    """Per (mesh, method): n, mean / median / max of the errors and times."""
    groups = {}
    for r in rows:
        if not r["case"].startswith("synthetic"):
            continue
        mesh = r["case"].split()[1]
        groups.setdefault((mesh, r["method"]), []).append(r)
    out = []
    keys = ("rotation_deg", "centroid_error_mm", "centre_lateral_mm", "centre_depth_mm",
            "reprojection_mean_px", "reprojection_hausdorff_px", "dice", "initial_dice",
            "vertex_error_mm", "initial_vertex_error_mm", "seconds", "total_seconds")
    for (mesh, method), rs in groups.items():
        s = {"mesh": mesh, "method": method, "n": len(rs)}
        for k in keys:
            vals = [r.get(k) for r in rs]
            if any(v is not None for v in vals):
                s[k] = {"mean": _stat(vals, np.mean), "median": _stat(vals, np.median),
                        "max": _stat(vals, np.max)}
        s["share_under_1s"] = float(np.mean([r["seconds"] < 1.0 for r in rs]))
        out.append(s)
    return out


def _f(s, key, stat="median", digits=2):
    v = s.get(key, {}).get(stat)
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(rows, summary, meta) -> str:
    lines = ["# LiverLaparoReg benchmark (generated by benchmarks/laparo_bench.py)", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['machine']}", "",
             f"Load average (1, 5, 15 min) before: {meta['load']['before']}, after: "
             f"{meta['load']['after']}; wall time {meta['wall_s']:.0f} s; date {meta['date']}", "",
             "Synthetic cases are our own renders (SYNTHETIC, not real observations) of real "
             "meshes: 640 x 480 camera with distortion, random poses at 450 mm, three "
             "synthetic landmark curves with 1 px noise. **Held-out mesh**: "
             f"`{meta['held_out']}` (SciKit-Surgery liver, 20k faces): no parameter was "
             "tuned on it (its 2.5k-face subsample `liver_sub.ply` was used only to profile "
             "speed). The P2ILF liver `3d-liver-model.obj` was used while tuning the "
             "settings, so its rows are not held out.", "",
             "`seconds` = registration time per frame (validation + method, wall clock, "
             "one core); `total` adds the metrics. Target: rigid < 1 s per frame; "
             "rotation < 5 deg and translation < 5 mm from contours on the held-out mesh. "
             "Translation is reported as the error of the posed liver centre (the model "
             "origin of the SciKit-Surgery liver lies ~400 mm away from the liver, which "
             "turns 0.3 deg into ~2 mm), split into image-plane (lateral) and depth parts.",
             "", "## Synthetic: medians (max) over poses", "",
             "| mesh | method | n | rot deg | centre mm | lateral mm | depth mm | reproj px | "
             "Dice | start Dice | vertex mm (start) | s/frame | max s | total s | < 1 s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        vert = "-" if "vertex_error_mm" not in s else \
            f"{_f(s, 'vertex_error_mm')} ({_f(s, 'initial_vertex_error_mm')})"
        lines.append(
            f"| {s['mesh']} | {s['method']} | {s['n']} | {_f(s, 'rotation_deg')} "
            f"({_f(s, 'rotation_deg', 'max')}) | {_f(s, 'centroid_error_mm')} "
            f"({_f(s, 'centroid_error_mm', 'max')}) | {_f(s, 'centre_lateral_mm')} | "
            f"{_f(s, 'centre_depth_mm')} | {_f(s, 'reprojection_mean_px')} | "
            f"{_f(s, 'dice', digits=4)} | {_f(s, 'initial_dice', digits=4)} | {vert} | "
            f"{_f(s, 'seconds')} | {_f(s, 'seconds', 'max')} | {_f(s, 'total_seconds')} | "
            f"{100 * s['share_under_1s']:.0f} % |")
    lines += ["", "Methods: `pnp` = contours only; `pnp+silhouette` = contours + mask (joint "
              "reprojection + soft Dice refinement at 128 px); `silhouette` = mask only from "
              "the true pose perturbed by 4 deg / 10 mm about the liver centre (start Dice "
              "shown); `nonrigid` = the non-rigid step alone (`nonrigid.deform`, 30 Adam steps) "
              "on the mask and contours of a copy stretched by (1.08, 0.94, 1) about its "
              "centre, at the true rigid pose; vertex error = mean distance to the stretched "
              "mesh, after (before).", "",
              "## Real P2ILF case (patient2_1, shipped)", "",
              "| camera | s/frame | Hausdorff px per class (pooled) | mean px per class | "
              "Hausdorff px per pair (challenge pairing) | contour Dice @10 px | "
              "mesh depth range mm |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["case"].startswith("real"):
            pairs = ", ".join(f"{p['label']} {p['pair'][0]}-{p['pair'][1]}: {p['hausdorff_px']}"
                              for p in r["hausdorff_px_per_pair"])
            lines.append(f"| {r['case'].split('(')[1].rstrip(')')} | {r['seconds']:.2f} | "
                         f"{r['hausdorff_px_per_class']} | {r['mean_px_per_class']} | "
                         f"{pairs} (mean {r['mean_pair_hausdorff_px']}) | "
                         f"{r['contour_dice_10px']} | {r['mesh_depth_range_mm']} |")
    lines += ["", FINDING]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mesh", action="append", default=None)
    ap.add_argument("--poses", type=int, default=None, help="random poses per mesh (5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results folder (default "
                    "benchmarks/results unless --quick)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    load = {"before": [round(x, 2) for x in os.getloadavg()]}
    rows = run_bench(meshes=a.mesh, quick=a.quick, seed=a.seed, n_poses=a.poses)
    load["after"] = [round(x, 2) for x in os.getloadavg()]
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k not in ("timing", "model_to_camera")}))
    summary = summarize(rows)
    meta = {"command": " ".join(["python"] + sys.argv), "machine": _machine(), "load": load,
            "wall_s": time.perf_counter() - t0, "seed": a.seed,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "held_out": str(held_out_mesh().relative_to(ROOT))}
    out = Path(a.out) if a.out else (None if a.quick else ROOT / "benchmarks" / "results")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "laparo_bench.json").write_text(json.dumps(
            {"meta": meta, "summary": summary, "rows": rows}, indent=1))
        (out / "laparo_bench.md").write_text(markdown(rows, summary, meta))
        print(f"written {out / 'laparo_bench.md'} and .json")


if __name__ == "__main__":
    main()
