"""LiverLaparoReg learned registration benchmark (SYNTHETIC frames of a held-out mesh).

Run::

    nice -n 10 python benchmarks/laparo_learned.py [--model M.pt] [--frames 10] [--quick]

Writes ``benchmarks/results/laparo_learned.{md,json}`` (``--out DIR`` elsewhere).

Cases: SYNTHETIC frames (``learned/data.py``: the appearance model, instruments, blur,
noise) of the SciKit-Surgery liver (``liver_sksurgery/models/liver.vtk``), which is NOT
used in training (the bundled model is trained on the P2ILF mesh only). Cameras
alternate between the P2ILF camera (1920 x 1080, its distortion) and the SciKit-Surgery
left camera (1920 x 540); poses: 80-250 mm from the liver within 50 deg of the real
shipped SciKit-Surgery laparoscope pose's viewing direction. The frame is rendered at the
network's 128 x 96 and upscaled; the liver mask is rendered at 480 px wide and upscaled,
minus the instruments.

Methods, each from NO initial pose unless stated:

- ``learned stage I``: network correspondences + EPnP/RANSAC;
- ``learned``: + the silhouette refinement;
- ``contour-pnp``: the existing ``pnp`` method on three synthetic landmark curves
  (``synthetic.make_case``, 1 px noise) clipped to the part visible in the frame and
  inside the mask (short / partial contours, as in a close-up);
- ``silhouette (init 10 deg / 20 mm)``: the existing mask-only method, started from the
  true pose perturbed by 10 deg and 20 mm (it cannot start from nothing).

Metrics: rotation error (deg), translation error of the model origin (mm) and of the
liver centroid (mm), rendered-mask Dice (480 px wide), reprojection error = median image
distance (px, full frame) between the liver vertices visible at the true pose projected
with the estimated and with the true pose; failures (an error raised) count as wrong;
time per frame (wall, shared CPU: see the load average in the output).

Stage II: frames of the same mesh *bent* (near-isometric, up to 1/160 mm^-1 curvature);
Stage II runs at the true rigid pose with the Stage I inlier pairs of that frame (oracle
rigid pose, to isolate the deformation), full and without the reprojection term /
without the isometry term; 3D vertex error (mm) to the true bent shape before and after,
over all vertices and over the visible ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _r(x, n=3):
    return None if x is None else round(float(x), n)


from LiverLaparoRegLib.learned.evaluation import run_bench as run, summarise  # noqa: E402


def markdown(summ, s2, meta, notes=""):
    L = ["# LiverLaparoReg learned registration: benchmark (SYNTHETIC frames, held-out mesh)", "",
         "Produced by `benchmarks/laparo_learned.py` (see its docstring for the protocol). "
         "All frames are SYNTHETIC renders of the SciKit-Surgery liver, which the model "
         "never saw in training. Timings on a CPU shared with other jobs (1 torch thread; "
         f"load average at the end {[round(x, 1) for x in meta['load_average_end']]}).", "",
         f"Model: `{meta['model']}`; training: {meta['model_training']}", "",
         "| method | frames | failed | wrong (>20 deg or failed) | median rot deg | median "
         "centroid mm | median origin transl. mm | median Dice | median reproj. px | "
         "< 10 deg | < 5 deg & < 5 mm | median s/frame |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, v in summ.items():
        L.append(f"| {m} | {v['frames']} | {v['failed']} | {v['wrong_gt20deg_or_failed']} "
                 f"({v['fraction_wrong']}) | {v['median_rotation_deg']} | "
                 f"{v['median_centroid_error_mm']} | {v['median_translation_mm']} | "
                 f"{v['median_dice']} | {v['median_reprojection_px']} | "
                 f"{v['frames_under_10deg']} | {v['frames_under_5deg_5mm']} | "
                 f"{v['median_seconds']} |")
    L += ["", "Medians are over the frames where the method returned a pose; 'wrong' counts "
          "failures too.", "", "## Stage II (bent frames, oracle rigid pose, Stage I pairs)", "",
          "| frame | pairs | bend mean disp. mm | before all / visible mm | full | no "
          "reprojection | no isometry |", "|---|---|---|---|---|---|---|"]
    for r in s2:
        def c(k):
            return f"{r[k]['all_mm']} / {r[k]['visible_mm']}"
        L.append(f"| {r['frame']} | {r['pairs']} | {r['bend_mean_displacement_mm']} | "
                 f"{r['before_all_mm']} / {r['before_visible_mm']} | {c('full')} | "
                 f"{c('no reprojection')} | {c('no isometry')} |")
    L += ["", "(vertex error to the true bent shape, mm, all vertices / visible vertices)", ""]
    return "\n".join(L) + "\n" + notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--stage2-frames", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    t0 = time.time()
    rows, s2, rec = run(a.model, a.frames, a.seed, a.stage2_frames, a.quick)
    summ = summarise(rows)
    meta = {"model": rec.get("path"), "model_training": {k: rec.get(k) for k in
                                                         ("data", "command", "seed", "steps",
                                                          "wall_s", "load_average")},
            "frames": a.frames, "seed": a.seed, "wall_s": round(time.time() - t0, 1),
            "load_average_end": list(os.getloadavg()), "cpu": platform.processor() or
            platform.machine(), "torch_threads": 1}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "laparo_learned.json").write_text(json.dumps({"meta": meta, "summary": summ,
                                                         "rows": rows, "stage2": s2}, indent=1))
    notes_file = out / "laparo_learned_notes.md"
    notes = notes_file.read_text() if notes_file.is_file() else ""
    (out / "laparo_learned.md").write_text(markdown(summ, s2, meta, notes))
    print(json.dumps({"summary": summ, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
