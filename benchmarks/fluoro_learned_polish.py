"""From the C-arm's nominal view: the bundled pose regressor + classic `ppc`, without and
with the command's quality step (polish of flagged results, or of every result, with the
detector model of ``FluoroRegLib.recovery``), one and two views, several case seeds.

    python benchmarks/fluoro_learned_polish.py [--seeds 1,2,3] [--cases 20] [--out FILE.jsonl]

Cases: ``FluoroRegLib.learned.bench.make_cases`` (SYNTHETIC X-rays of the shipped CT, true
poses drawn in the model's range, as ``benchmarks/results/fluoro_learned.md``); the
refinement on the CT block-averaged x2. One JSON row per case, view count and polish mode
(mTRE of 20 landmarks, seconds, verdict); the summary (SMSR = mTRE < 1 mm) is printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time

import torch


def main() -> None:
    from FluoroRegLib.learned.bench import bench_inputs, make_cases
    from FluoroRegLib.learned.register import register_with_model
    from FluoroRegLib.refine import pose_errors

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--model", default=os.path.join(
        os.path.dirname(__file__), "..", "FluoroReg", "FluoroRegLib", "weights",
        "fluoro_pose_regressor_v1.pt"))
    ap.add_argument("--out", default="fluoro_learned_polish.jsonl")
    ap.add_argument("--polish", nargs="+", default=["none", "flagged", "all"],
                    choices=["none", "flagged", "all"], help="quality steps to run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hu, m, data, hu2, m2 = bench_inputs(args.model)
    rows = []
    with open(args.out, "w") as out:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for c in make_cases(hu, m, data, args.cases, seed=seed):
                for nv in (1, 2):
                    for pol in args.polish:
                        kw = {"quality": False} if pol == "none" else \
                            {"quality": True, "quality_polish": pol}
                        t = time.perf_counter()
                        r = register_with_model(hu, m, c["images"][:nv], [c["camera"]] * nv, data,
                                                method="ppc", nominal_views=c["nominal"][:nv],
                                                refine_hu=hu2, refine_ijk_to_ras=m2, **kw)
                        e = pose_errors(r.ct_to_camera, c["truth"][0], c["landmarks"],
                                        c["camera"])["mtre_mm"]
                        row = {"seed": seed, "case": c["index"], "views": nv, "polish": pol,
                               "mtre": float(e), "t": time.perf_counter() - t,
                               "verdict": r.quality.verdict if pol != "none" else None,
                               "load": os.getloadavg()[0]}
                        rows.append(row)
                        out.write(json.dumps(row) + "\n")
                        out.flush()
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["views"], r["polish"])].append(r)
    print("| views | quality step | cases | SMSR (< 1 mm) | per seed | median / p95 mTRE mm | "
          "s per case median (max) |")
    print("|---|---|---|---|---|---|---|")
    for (nv, pol), rr in sorted(groups.items()):
        mt = sorted(r["mtre"] for r in rr)
        per_seed = collections.defaultdict(list)
        for r in rr:
            per_seed[r["seed"]].append(r["mtre"] < 1.0)
        seeds = " / ".join(f"{100 * sum(v) / len(v):.0f} %" for _, v in sorted(per_seed.items()))
        print(f"| {nv} | {pol} | {len(rr)} | {100 * sum(x < 1 for x in mt) / len(mt):.0f} % | "
              f"{seeds} | {statistics.median(mt):.2f} / {mt[int(0.95 * len(mt)) - 1]:.2f} | "
              f"{statistics.median(r['t'] for r in rr):.2f} ({max(r['t'] for r in rr):.2f}) |")


if __name__ == "__main__":
    main()
