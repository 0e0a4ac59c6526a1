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
### Depth bias of the silhouette refinement: cause and fix (measured)

Measured on the P2ILF liver, 640 x 480 camera without distortion, one pose, at the
refinement's fine level (128 px, decimated 600-face mesh, sigma 0.7 px): the soft-Dice
loss scanned along the camera z axis, and the areas that could bias it.

| candidate | measured | effect on depth |
|---|---|---|
| mask pyramid (area average of the full-resolution hard mask) | 3262.8 px = full-resolution area / 25 exactly | none |
| pixel-centre convention (hard render at 128 px vs the averaged mask) | 3268 vs 3262.8 px (0.16 %) | ~0.4 mm |
| decimated mesh (600 vs 8000 faces, hard area at 128 px) | 3258 vs 3268 px (0.3 %) | ~0.7 mm, either sign |
| **soft silhouette wider than the hard one** (old band renderer: sum of S at the true pose) | **3309 vs 3268 px (+1.3 %)** | **loss optimum +1.7 (600 faces) to +2.3 mm (full mesh) at this pose, now -0.9 / +1.0 mm; refinements from 5-15 deg / mm ended +6.4 mm on average (8 of 8 too far), now -0.1 mm** |

Cause: inside the silhouette the band renderer used the pixel-centre distance transform
as the distance to the outline. For the first row of pixels inside, that is >= 1 px where
the true distance is 0-1 px, so inside pixels were too bright and the soft silhouette
looked ~0.2 px wider all round; soft Dice then preferred a smaller projected liver, i.e.
a liver farther away. Fix (`raster.soft_silhouette_band`): inside band pixels take the
signed distance to the line of the outline edge nearest to their nearest outside pixel
(exact Euclidean distance transform), with gradients; the sum of S now matches the hard
area (3258 vs 3268 px) and the loss optimum lies within 1 mm of the true depth
(`Testing/laparo/test_laparo_realcam.py`). Same 8 starts (5-15 deg / 5-15 mm), old vs
new renderer: depth error +6.38 mm mean (all 8 too far) -> -0.13 mm mean. Masks are
rendered through the full distortion model (vertices projected with the camera's
distortion, straight edges between them); a test compares them with an ideal render
resampled at OpenCV's undistortion of every pixel.

### The real P2ILF case

1. **The camera file's distortion folds over inside the frame.** With k1 = -0.23,
   k2 = 0.34, k3 = -0.24 the radial map `r (1 + k1 r^2 + k2 r^4 + k3 r^6)` stops
   increasing at r = 1.06 (reach 839 px from the principal point) while the frame corners
   lie at normalised radius up to 1.23. `SurgicalReg2D3DLib.cameras.distortion_fold_check`
   detects this when the camera is loaded; `LiverLaparoRegLib.camera.load_camera` then
   uses `K` only and says so (`--lens-model keep` keeps the file's model). The challenge's
   own evaluation projects with `K` only too.
2. **The challenge's score.** `metrics.challenge_rpe` reimplements the Task 2 RPE of
   `teamEvaluations/metric_reprejectionError.py`: pairs by file order with the
   silhouette skipped, `K`-only projection truncated to int, GEOS/shapely discrete
   Hausdorff (vertices against the other polyline's segments), mean over pairs (with the
   script's `-1` appended when there is a single pair). It is printed by the CLI and
   stored here beside the project's class-pooled numbers.
3. **The optimiser.** The contour PnP now ends with a polish of the symmetric power-mean
   (p = 12) curve distance between each 2D contour and the projected polyline of its 3D
   contour (both directions, every pair weighted equally, as in the challenge's mean),
   from the selected pose (sub-curves where a partial-curve hypothesis won). The
   reference row is a direct search on the challenge metric itself (Powell from the
   tool's pose and 10 perturbations of it); the gap between the two is listed.
4. **Silhouette contours.** The 2D `Silhouette` contour has no 3D counterpart. Pairing it
   with the mesh's occluding contour in the image ICP (faces now passed) made this case
   worse (challenge RPE 164 px vs 73 px before the polish), so the contour PnP does not
   use it and says so in `metrics["notes"]` / on stderr; a liver mask
   (`pnp+silhouette`) is the way to use the outline.
5. The 3D contours are short (4, 9 and 6 listed vertices spanning 24-42 mm) against
   2D curves of 400-800 px, so even the best rigid pose keeps ~60 px.
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
            "centre_depth_signed_mm", "initial_rotation_deg", "initial_centroid_error_mm",
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
        if all("vertex_error_mm" in r for r in rs):
            s["lowered"] = int(sum(r["vertex_error_mm"] < r["initial_vertex_error_mm"]
                                   for r in rs))
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
             "meshes: 640 x 480 camera with distortion (k1 = -0.2, k2 = 0.1; the `K-only` "
             "rows use the same camera without distortion, mask rendered with it), random "
             "poses at 450 mm, three synthetic landmark curves with 1 px noise. "
             "**Held-out mesh**: "
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
             "| mesh | method | n | rot deg | centre mm | lateral mm | depth mm | depth bias mm "
             "| reproj px | Dice | start Dice | vertex mm (start) | lowered | s/frame | max s | "
             "total s | < 1 s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        vert = "-" if "vertex_error_mm" not in s else \
            f"{_f(s, 'vertex_error_mm')} ({_f(s, 'initial_vertex_error_mm')})"
        lowered = "-" if "lowered" not in s else f"{s['lowered']}/{s['n']}"
        lines.append(
            f"| {s['mesh']} | {s['method']} | {s['n']} | {_f(s, 'rotation_deg')} "
            f"({_f(s, 'rotation_deg', 'max')}) | {_f(s, 'centroid_error_mm')} "
            f"({_f(s, 'centroid_error_mm', 'max')}) | {_f(s, 'centre_lateral_mm')} | "
            f"{_f(s, 'centre_depth_mm')} | {_f(s, 'centre_depth_signed_mm', 'mean')} | "
            f"{_f(s, 'reprojection_mean_px')} | "
            f"{_f(s, 'dice', digits=4)} | {_f(s, 'initial_dice', digits=4)} | {vert} | {lowered} | "
            f"{_f(s, 'seconds')} | {_f(s, 'seconds', 'max')} | {_f(s, 'total_seconds')} | "
            f"{100 * s['share_under_1s']:.0f} % |")
    lines += ["", "Methods: `pnp` = contours only (EPnP + RANSAC + image ICP + curve polish); "
              "`pnp+silhouette` = contours + mask (joint reprojection + soft Dice refinement at "
              "128 px; here its steps never lowered the joint loss below the PnP pose's, so "
              "its rows equal the `pnp` rows: the synthetic contours already fix the pose); `silhouette` / `silhouette K-only` = mask only from the true pose "
              "perturbed by 5-15 deg / 5-15 mm about the liver centre, with the distorted "
              "camera / the same camera without distortion (depth bias = mean signed depth "
              "error of the liver centre, positive = too far); `nonrigid bend ...` = the "
              "non-rigid step alone (`nonrigid.deform`, 30 Adam steps) on the mask and "
              "contours of a copy bent by 20-35 deg (`nonrigid.bend`, near-isometric) within "
              "the image plane or along the viewing direction, at the true rigid pose; "
              "vertex error = mean distance to the bent mesh, after (before); lowered = "
              "cases where the step lowered it.", "",
              "## Real P2ILF case (patient2_1, shipped)", "",
              "| run | s/frame | **P2ILF Task 2 RPE px (challenge definition)** | per pair "
              "| project: Hausdorff px per class (pooled) | project: mean px per class | "
              "mesh depth range mm |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["case"].startswith("real") and "direct search" not in r["method"]:
            pairs = ", ".join(f"{p['label']} {p['pair'][0]}-{p['pair'][1]}: {p['hausdorff_px']}"
                              for p in r["p2ilf_task2_rpe_pairs"])
            lines.append(f"| {r['case'].split('(', 1)[1].rstrip(')')} | {r['seconds']:.2f} | "
                         f"**{r['p2ilf_task2_rpe_px']}** | {pairs} | "
                         f"{r['hausdorff_px_per_class']} | {r['mean_px_per_class']} | "
                         f"{r['mesh_depth_range_mm']} |")
    for r in rows:
        if "direct search" in r["method"]:
            lines += ["", f"Best rigid pose found by a direct search on the challenge RPE "
                      f"(reference, {r['evaluations']} evaluations, {r['seconds']:.0f} s): "
                      f"**{r['p2ilf_task2_rpe_px']} px**; the tool's default run: "
                      f"**{r['tool_p2ilf_task2_rpe_px']} px** (gap {r['gap_px']} px; "
                      f"target < 5 px)."]
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
