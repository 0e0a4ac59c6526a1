"""From the C-arm's nominal view: the bundled pose regressor + classic `ppc` + the command's
quality step (the `--model` path of `surgreg fluoro register`), without and with the learned
spherical similarity between the regressor and `ppc` (`--model REG.pt --model SIM.pt`),
one and two views, several case seeds.

    python benchmarks/fluoro_learned_similarity.py [--seeds 1,2] [--cases 20] \
        [--sim se3=FluoroReg/FluoroRegLib/weights/fluoro_similarity_v1.pt --sim so4=/tmp/so4.pt] \
        [--method ppc|regressor] [--no-baseline] [--out FILE.jsonl]

Protocol of ``benchmarks/fluoro_learned_polish.py``: cases from
``FluoroRegLib.learned.bench.make_cases`` (SYNTHETIC X-rays of the shipped CT, true poses
drawn in the regressor's range), refinement on the CT block-averaged x2, the quality step
with the polish of every result (the command's default). One JSON row per case, view count
and pipeline: final mTRE (20 landmarks), the regressor's start mTRE, the mTRE after the LM
on the learned features (pipelines with a similarity), seconds (the registration call), the
verdict and the 1-min load average. The summary table is printed (SMSR = mTRE < 1 mm).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time

import numpy as np
import torch


def _pct(v, q):
    return float(np.percentile(np.asarray(v, float), q))


def main() -> None:
    from FluoroRegLib.learned.bench import bench_inputs, make_cases
    from FluoroRegLib.learned.model_file import load_model_file
    from FluoroRegLib.learned.register import register_with_model

    weights = os.path.join(os.path.dirname(__file__), "..", "FluoroReg", "FluoroRegLib", "weights")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--model", default=os.path.join(weights, "fluoro_pose_regressor_v1.pt"))
    ap.add_argument("--sim", action="append", default=None,
                    help="LABEL=PATH of a similarity model (repeatable)")
    ap.add_argument("--views", default="1,2")
    ap.add_argument("--method", default="ppc",
                    help="refinement after the start / similarity ('regressor': none, e.g. to "
                         "measure the similarity LM alone)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip regressor+ppc (e.g. one more similarity model on the same cases)")
    ap.add_argument("--out", default="fluoro_learned_similarity.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sims = args.sim or [f"se3={os.path.join(weights, 'fluoro_similarity_v1.pt')}"]
    tail = "" if args.method == "regressor" else "+" + args.method
    pipelines = [("regressor" + tail, None)] * bool(args.baseline) + [
        (f"regressor+sim[{s.split('=', 1)[0]}]{tail}", load_model_file(s.split("=", 1)[1]))
        for s in sims]
    hu, m, data, hu2, m2 = bench_inputs(args.model)
    rows = []
    with open(args.out, "w") as out:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for c in make_cases(hu, m, data, args.cases, seed=seed):
                for nv in [int(v) for v in args.views.split(",")]:
                    for name, sim in pipelines:
                        t = time.perf_counter()
                        r = register_with_model(
                            hu, m, c["images"][:nv], [c["camera"]] * nv, data,
                            method=args.method,
                            nominal_views=c["nominal"][:nv], refine_hu=hu2, refine_ijk_to_ras=m2,
                            landmarks_ras=c["landmarks"], true_ct_to_camera=c["truth"][0],
                            similarity_model=sim, quality=True, quality_polish="all")
                        row = {"seed": seed, "case": c["index"], "views": nv, "pipeline": name,
                               "mtre": float(r.metrics["mtre_mm"]),
                               "start_mtre": float(r.metrics["start_mtre_mm"]),
                               "sim_mtre": float(r.metrics.get("similarity_mtre_mm", float("nan"))),
                               "sim_t": float(r.metrics.get("similarity_time_s", float("nan"))),
                               "t": time.perf_counter() - t, "verdict": r.quality.verdict,
                               "method": r.method,
                               "load": os.getloadavg()[0]}
                        rows.append(row)
                        out.write(json.dumps(row) + "\n")
                        out.flush()
    summarise(rows)


def summarise(rows) -> None:
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["views"], r["pipeline"])].append(r)
    print("| views | pipeline | cases | SMSR (< 1 mm) | per seed | median / p75 / p95 mTRE mm | "
          "after the similarity LM: median / p95 mTRE mm, < 1 mm | s per case median (max) | "
          "verdicts ok / doubtful / failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (nv, name), rr in sorted(groups.items()):
        mt = [r["mtre"] for r in rr]
        per_seed = collections.defaultdict(list)
        for r in rr:
            per_seed[r["seed"]].append(r["mtre"] < 1.0)
        seeds = " / ".join(f"{100 * sum(v) / len(v):.0f} %" for _, v in sorted(per_seed.items()))
        sm = [r["sim_mtre"] for r in rr if np.isfinite(r["sim_mtre"])]
        sim_txt = (f"{statistics.median(sm):.2f} / {_pct(sm, 95):.2f}, "
                   f"{100 * sum(x < 1 for x in sm) / len(sm):.0f} %") if sm else "-"
        v = collections.Counter(r["verdict"] for r in rr)
        print(f"| {nv} | {name} | {len(rr)} | {100 * sum(x < 1 for x in mt) / len(mt):.0f} % | "
              f"{seeds} | {statistics.median(mt):.2f} / {_pct(mt, 75):.2f} / {_pct(mt, 95):.2f} | "
              f"{sim_txt} | {statistics.median(r['t'] for r in rr):.2f} "
              f"({max(r['t'] for r in rr):.2f}) | {v['ok']} / {v['doubtful']} / {v['failed']} |")
    st = [r["start_mtre"] for r in rows]
    print(f"\nregressor start mTRE: median {statistics.median(st):.2f} mm, p95 {_pct(st, 95):.2f} mm; "
          f"load average {min(r['load'] for r in rows):.1f}-{max(r['load'] for r in rows):.1f}")


if __name__ == "__main__":
    main()
