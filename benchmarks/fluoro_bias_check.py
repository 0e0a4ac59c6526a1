"""Is an intensity method's error an optimiser failure or a bias of the similarity optimum?

    OMP_NUM_THREADS=1 python benchmarks/fluoro_bias_check.py [--cases 9 15 20 0 1]
        [--out fluoro-accuracy] [--results benchmarks/results] [--clean]

Uses the cached SYNTHETIC cases of ``benchmarks/fluoro_accuracy.py run`` (seed 0, 96 px,
``<out>/cases_v2_seed0_n40_px96.pkl``). For each case, two-view NCC and gradient NCC
(Levenberg-Marquardt, finest level, 15 iterations) are started AT THE TRUE POSE with the
registration model of the accuracy benchmark (CT block-averaged x2 to 3 mm, trilinear
DRR). The two-view similarity (mean over views, same measure as the method) of the true
pose and of the pose it ends at is then evaluated under two models:

- ``benchmark model``: the model above;
- ``simulator model``: the full-resolution CT with the exact Siddon DRR, i.e. the model the
  X-rays were simulated with (they differ from it only by noise and detector blur).

Reading: if the method moves away from the truth to a pose that it scores higher, the
error is a bias of the similarity optimum, not a local minimum of the optimiser. If the
simulator model also scores that pose higher than the truth, the bias is not caused by
the registration renderer (3 mm CT, trilinear) but by the simulated image formation that
no DRR reproduces (Poisson and electronic noise, blur in count space, the detector floor).
``--clean`` first re-renders the cases' X-rays without any X-ray effect (exact Siddon DRR of
the full-resolution CT at the true pose: no noise, no blur) to separate the two causes.
Writes ``<results>/fluoro_bias_check.json`` (``fluoro_bias_check_clean.json`` with ``--clean``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "FluoroReg"), str(ROOT / "SurgicalReg2D3D")]
CT = ROOT / "Resources" / "SampleData" / "ct" / "thorax_aorta_ct_cropped.nii.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[9, 15, 20, 0, 1])
    ap.add_argument("--out", default="fluoro-accuracy", help="folder of the cached cases")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--clean", action="store_true", help="noise- and blur-free X-rays")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from FluoroRegLib.drr import DRRVolume, render_drr
    from FluoroRegLib.logic import register_arrays
    from FluoroRegLib.refine import image_similarity
    from FluoroRegLib.simulate import downsample_ct, read_ct

    with open(Path(args.out) / "cases_v2_seed0_n40_px96.pkl", "rb") as fh:
        cases, landmarks, setup = pickle.load(fh)
    hu, m = read_ct(CT)
    reg_hu, reg_m = downsample_ct(hu, m, 2)
    models = {"benchmark": (DRRVolume.from_hu(reg_hu, reg_m), "trilinear"),
              "simulator": (DRRVolume.from_hu(hu, m), "siddon")}

    def similarity(model, method, case, pose):
        volume, drr_method = models[model]
        sims = []
        with torch.no_grad():
            for k in range(2):
                rel = case.true_ct_to_camera[k] @ np.linalg.inv(case.true_ct_to_camera[0])
                drr = render_drr(volume, case.cameras[k], rel @ pose, method=drr_method)
                img = torch.as_tensor(case.images[k])
                sims.append(float(image_similarity(drr, img, method)[0]))
        return float(np.mean(sims))

    rows = []
    for ci in args.cases:
        case = cases[ci]
        if args.clean:
            with torch.no_grad():
                case.images = [render_drr(models["simulator"][0], cam, pose, method="siddon")[0]
                               .cpu().numpy() for cam, pose in zip(case.cameras,
                                                                   case.true_ct_to_camera)]
        truth = case.true_ct_to_camera[0]
        for method in ("gradncc", "ncc"):
            t0 = time.perf_counter()
            res = register_arrays(reg_hu, reg_m, case.images[:2], case.cameras[:2],
                                  case.true_ct_to_camera[:2], method=method, levels=(1,),
                                  iterations=15, landmarks_ras=landmarks, true_ct_to_camera=truth)
            row = {"case": ci, "method": method, "views": 2, "start": "true pose",
                   "mtre_mm": res.metrics["mtre_mm"], "rot_deg": res.metrics["rot_deg"],
                   "time_s": time.perf_counter() - t0}
            for model in models:
                row[f"{model}_sim_truth"] = similarity(model, method, case, truth)
                row[f"{model}_sim_end"] = similarity(model, method, case, res.ct_to_camera)
            rows.append(row)
            print(f"case {ci:2d} {method:8s}: from the truth -> mTRE {row['mtre_mm']:.3f} mm "
                  f"({row['rot_deg']:.2f} deg); similarity truth / end: benchmark model "
                  f"{row['benchmark_sim_truth']:.5f} / {row['benchmark_sim_end']:.5f}, simulator "
                  f"model {row['simulator_sim_truth']:.5f} / {row['simulator_sim_end']:.5f}",
                  flush=True)
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    name = "fluoro_bias_check_clean.json" if args.clean else "fluoro_bias_check.json"
    (res_dir / name).write_text(json.dumps(
        {"synthetic": True, "what": __doc__.split("\n\n")[2].strip(), "setup": setup,
         "images": "noise- and blur-free Siddon DRRs" if args.clean else "the cases' X-rays",
         "load1": os.getloadavg()[0], "rows": rows}, indent=2, default=float))
    print(f"wrote {res_dir / name}")


if __name__ == "__main__":
    main()
