"""One PPC update, learned vs classic: the reduction factor (SYNTHETIC X-rays).

    OMP_NUM_THREADS=1 nice python benchmarks/fluoro_ppc_update.py \
        [--model FluoroReg/FluoroRegLib/weights/fluoro_ppc_update_v1.pt] \
        [--ct Resources/SampleData/ct/thorax_aorta_ct_cropped.nii.gz] [--force] \
        [--seeds 1 2 3] [--per-bin 3] [--views 1] [--out /tmp/fluoro-ppc-update] \
        [--results benchmarks/results/fluoro_learned.md] [--label "shipped CT"]

Cases (``make_update_cases``): for seed ``s`` and case ``i`` (``simulate.case_generators``)
the true pose is ``Delta @ nominal`` with ``Delta`` drawn as the training poses are (the
model's range); the start is ``simulate.random_initial_pose`` with its 20-landmark mTRE
drawn uniformly in bin ``i mod 9`` of 0-5, 5-10, ..., 40-45 mm (rotation up to 15 deg);
the X-ray is an exact Siddon DRR of the full-resolution CT with detector effects
(``simulate.xray_effects``, 2e4 photons). The nominal view is the model's; a CT the
model was not trained on (``--ct`` + ``--force``) uses the nominal AP view of that CT
(its centre on the central ray, 600 mm from the source) and the model's range.

Methods, each ONE update from the same start:

- ``learned``: one :class:`FluoroRegLib.learned.ppc_register.LearnedPPCUpdater` update;
- ``classic``: one iteration of ``ppc.register_ppc`` as shipped (pyramid level 2, search
  6 px, Huber IRLS, damping, trust region 5 mm per iteration), on the CT block-averaged x2;
- ``classic-free``: the same without the trust region (``max_step_mm`` = 1e9), i.e. the
  raw classic correspondence update.

Reduction factor = mTRE after / mTRE before (20 landmarks); per bin: median and mean over
all cases of all seeds, and the spread of the per-seed medians. The markdown section is
written between ``<!-- ppc-update:<label> -->`` markers of ``--results`` (replaced on
rerun, the rest of the page kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for sub in ("SurgicalReg2D3D", "FluoroReg"):
    sys.path.insert(0, str(REPO / sub))

BINS = [(5.0 * b, 5.0 * (b + 1)) for b in range(9)]


def make_update_cases(hu, m, camera, nominal, pose_range, seed: int, n_cases: int,
                      landmarks, photons: float = 2e4):
    import torch  # noqa: PLC0415

    from FluoroRegLib.drr import DRRVolume, render_drr  # noqa: PLC0415
    from FluoroRegLib.learned.bench import draw_true_pose  # noqa: PLC0415
    from FluoroRegLib.simulate import (case_generators, random_initial_pose,  # noqa: PLC0415
                                       xray_effects)

    volume = DRRVolume.from_hu(hu, m)
    center = volume.center_ras()
    cases = []
    for i in range(int(n_cases)):
        pose_rng, noise_rng = case_generators(seed, i)
        truth, _ = draw_true_pose(pose_rng, pose_range, nominal, center)
        lo, hi = BINS[i % len(BINS)]
        start = random_initial_pose(truth, center, landmarks, pose_rng, mtre_range_mm=(lo, hi),
                                    rotation_range_deg=(0.0, 15.0))
        with torch.no_grad():
            L = render_drr(volume, camera, truth, method="siddon")[0].cpu().numpy()
        cases.append({"index": i, "truth": truth, "start": start,
                      "image": xray_effects(L, noise_rng, photons=photons)})
    return cases


def run(args) -> dict:
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.cameras import XRayCamera  # noqa: PLC0415
    from FluoroRegLib.drr import DRRVolume  # noqa: PLC0415
    from FluoroRegLib.geometry import look_at_pose  # noqa: PLC0415
    from FluoroRegLib.learned.model_file import load_model_file  # noqa: PLC0415
    from FluoroRegLib.learned.ppc_register import (LearnedPPCUpdater,  # noqa: PLC0415
                                                   check_ppc_model, classic_one_update)
    from FluoroRegLib.learned.sampling import PoseRange  # noqa: PLC0415
    from FluoroRegLib.refine import XRayView  # noqa: PLC0415
    from FluoroRegLib.simulate import downsample_ct, mtre_np, read_ct, sample_landmarks  # noqa: PLC0415

    torch.set_num_threads(1)
    data = load_model_file(args.model)
    hu, m = read_ct(args.ct)
    camera = XRayCamera.from_json(data["geometry"])
    check_ppc_model(data, hu, m, camera, force=args.force)  # kind, CT, detector
    from FluoroRegLib.learned.model_file import check_model_matches  # noqa: PLC0415

    problems = check_model_matches(data, hu, m, camera, force=True) if args.force else []
    pose_range = PoseRange.from_dict(data["range"])
    if problems:  # another CT: its own nominal AP view
        k, j, i = hu.shape
        centre = (m @ [(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0])[:3]
        nominal = look_at_pose(centre, "AP", 600.0)
    else:
        nominal = np.asarray(data["nominal_ct_to_camera"], float)
    landmarks = sample_landmarks(hu, m, 20, seed=0)
    hu2, m2 = downsample_ct(hu, m, 2)
    vol2 = DRRVolume.from_hu(hu2, m2)
    updaters = {"learned": LearnedPPCUpdater(data, hu, m)}
    for spec in args.ablation or []:
        name, path = spec.split("=", 1)
        extra = load_model_file(path)
        check_ppc_model(extra, hu, m, camera, force=args.force)
        updaters[name] = LearnedPPCUpdater(extra, hu, m)
    methods = list(updaters) + ["classic", "classic-free"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    n_cases = len(BINS) * int(args.per_bin)
    t_all = time.perf_counter()
    for seed in args.seeds:
        cases = make_update_cases(hu, m, camera, nominal, pose_range, seed, n_cases, landmarks)
        for case in cases:
            before = mtre_np(case["start"], case["truth"], landmarks)
            for method in methods:
                t1 = time.perf_counter()
                try:
                    if method in updaters:
                        upd = updaters[method]
                        prepared = upd.prepare([case["image"]], [camera])
                        new, _ = upd.update(prepared, [np.eye(4)], case["start"])
                        est = case["start"] if new is None else new
                    else:
                        views = [XRayView(torch.as_tensor(case["image"]), camera)]
                        est = classic_one_update(vol2, views, case["start"], level=2.0,
                                                 max_step_mm=5.0 if method == "classic" else 1e9)
                    after = mtre_np(est, case["truth"], landmarks)
                except Exception as exc:  # noqa: BLE001  (a failed update keeps the start)
                    print(f"  {method} case {case['index']}: {str(exc)[:80]}", flush=True)
                    after = before
                rows.append({"seed": seed, "case": case["index"], "method": method,
                             "before_mm": before, "after_mm": after, "ratio": after / before,
                             "time_s": time.perf_counter() - t1, "load": os.getloadavg()[0]})
            r = {x["method"]: x["ratio"] for x in rows[-len(methods):]}
            print(f"[ppc update] seed {seed} case {case['index']}: {before:5.1f} mm -> "
                  + ", ".join(f"{k} x{v:.2f}" for k, v in r.items()), flush=True)
        (out / "ppc_update_rows.json").write_text(json.dumps(rows, indent=1))
    summary = summarise(rows, args, methods)
    summary.update(wall_s=time.perf_counter() - t_all, model=str(args.model), ct=str(args.ct),
                   other_ct=bool(problems), problems=problems,
                   training={k: data["training"].get(k) for k in ("command", "seed", "steps",
                                                                  "elapsed_s", "val_after")})
    (out / "ppc_update_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


PIPELINES = ("regressor+ppc", "regressor+learned-ppc+ppc", "nominal+ppc",
             "nominal+learned-ppc+ppc")


def run_pipeline(args) -> dict:
    """Whole registrations from the nominal view (``learned.bench.make_cases``, the cases
    of ``benchmarks/fluoro_learned.py``): the regressor start or the nominal view, with or
    without ``--ppc-updates`` learned updates before the classic ``ppc``."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.metrics import summarize  # noqa: PLC0415
    from FluoroRegLib.learned.bench import make_cases  # noqa: PLC0415
    from FluoroRegLib.learned.model_file import load_model_file  # noqa: PLC0415
    from FluoroRegLib.learned.register import register_with_model  # noqa: PLC0415
    from FluoroRegLib.logic import register_arrays  # noqa: PLC0415
    from FluoroRegLib.simulate import downsample_ct, read_ct  # noqa: PLC0415

    torch.set_num_threads(1)
    ppc_data = load_model_file(args.model)
    reg = load_model_file(args.regressor)
    hu, m = read_ct(args.ct)
    hu2, m2 = downsample_ct(hu, m, 2)
    cases = make_cases(hu, m, reg, args.pipeline, args.pipeline_seed)
    rows = []
    for case in cases:
        for nv in args.views:
            imgs, cams = case["images"][:nv], [case["camera"]] * nv
            truth, noms, lm = case["truth"][0], case["nominal"][:nv], case["landmarks"]
            for method in PIPELINES:
                t1 = time.perf_counter()
                common = dict(refine_hu=hu2, refine_ijk_to_ras=m2, landmarks_ras=lm,
                              true_ct_to_camera=truth, nominal_views=noms)
                if method == "nominal+ppc":
                    res = register_arrays(hu2, m2, imgs, cams, noms, method="ppc",
                                          landmarks_ras=lm, true_ct_to_camera=truth)
                elif method == "regressor+ppc":
                    res = register_with_model(hu, m, imgs, cams, reg, method="ppc", **common)
                else:
                    res = register_with_model(hu, m, imgs, cams,
                                              reg if method.startswith("regressor") else None,
                                              method="ppc", ppc_model=ppc_data,
                                              ppc_updates=args.ppc_updates, **common)
                row = {"method": method, "views": nv, "case": case["index"],
                       "mtre_mm": float(res.metrics["mtre_mm"]),
                       "learned_mtre_mm": float(res.metrics.get("learned_ppc_mtre_mm", float("nan"))),
                       "start_mtre_mm": float(res.metrics.get("start_mtre_mm", float("nan"))),
                       "time_s": time.perf_counter() - t1, "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"[pipeline] {method} {nv}-view case {case['index']}: {row['mtre_mm']:.2f} mm "
                      f"(after learned {row['learned_mtre_mm']:.2f}, {row['time_s']:.1f} s)", flush=True)
    out = {"n_cases": len(cases), "seed": args.pipeline_seed, "ppc_updates": args.ppc_updates,
           "results": []}
    for nv in args.views:
        for method in PIPELINES:
            sel = [r for r in rows if r["method"] == method and r["views"] == nv]
            sm = summarize([r["mtre_mm"] for r in sel], threshold=1.0)
            la = [r["learned_mtre_mm"] for r in sel if np.isfinite(r["learned_mtre_mm"])]
            out["results"].append({"method": method, "views": nv, "n": len(sel),
                                   "smsr": float(sm["smsr"]), "median": float(sm["median"]),
                                   "p95": float(sm["p95"]),
                                   "learned_median": float(np.median(la)) if la else None,
                                   "time_s": float(np.mean([r["time_s"] for r in sel])),
                                   "load": float(np.mean([r["load"] for r in sel]))})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "pipeline_rows.json").write_text(json.dumps(rows, indent=1))
    return out


def pipeline_markdown(res: dict, label: str) -> str:
    lines = [f"<!-- ppc-update:{label} -->",
             f"## Learned PPC updates in the whole registration ({label}; SYNTHETIC X-rays)", "",
             f"`benchmarks/fluoro_ppc_update.py --pipeline {res['n_cases']}`: the cases of the "
             f"nominal-view benchmark above (seed {res['seed']}, true poses in the +-15 deg / "
             "+-30 mm range, all started at the nominal view), each registered four ways: "
             "the regressor's start or the nominal view, with or without "
             f"{res['ppc_updates']} learned PPC updates before the classic `ppc` refinement "
             "(CT block-averaged x2 for the refinement).", "",
             "| method | views | n | SMSR % (< 1 mm) | median mTRE | p95 mTRE | mTRE after the "
             "learned updates (median) | s/case | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        la = "-" if r["learned_median"] is None else f"{r['learned_median']:.2f}"
        lines.append(f"| {r['method']} | {r['views']} | {r['n']} | {r['smsr']:.0f} | "
                     f"{r['median']:.3f} | {r['p95']:.3f} | {la} | {r['time_s']:.1f} | "
                     f"{r['load']:.1f} |")
    lines += ["", f"<!-- /ppc-update:{label} -->"]
    return "\n".join(lines) + "\n"


def summarise(rows, args, methods) -> dict:
    res = {"bins": [], "seeds": list(args.seeds), "per_bin_per_seed": int(args.per_bin),
           "methods": list(methods), "ablations": list(args.ablation or [])}
    for lo, hi in BINS + [(0.0, 45.0)]:
        entry = {"bin": [lo, hi]}
        for method in methods:
            sel = [r for r in rows if r["method"] == method and lo <= r["before_mm"] < hi + 1e-6]
            if not sel:
                continue
            ratios = np.array([r["ratio"] for r in sel])
            per_seed = [float(np.median([r["ratio"] for r in sel if r["seed"] == s]))
                        for s in args.seeds if any(r["seed"] == s for r in sel)]
            entry[method] = {"n": len(sel), "median": float(np.median(ratios)),
                             "mean": float(np.mean(ratios)),
                             "p75": float(np.percentile(ratios, 75)),
                             "worse": int((ratios > 1.0).sum()),
                             "seed_medians": per_seed,
                             "time_s": float(np.mean([r["time_s"] for r in sel]))}
        res["bins"].append(entry)
    res["load_mean"] = float(np.mean([r["load"] for r in rows]))
    return res


def markdown(summary: dict, label: str) -> str:
    tr = summary["training"]
    va = tr.get("val_after") or {}
    lines = [f"<!-- ppc-update:{label} -->",
             f"## One PPC update, learned vs classic: reduction factor ({label}; SYNTHETIC X-rays)",
             "",
             "Generated by `benchmarks/fluoro_ppc_update.py`. Reduction factor = mTRE after ONE "
             "update / mTRE before (20 landmarks; smaller is better, 1 = no change, > 1 = worse). "
             f"Seeds {summary['seeds']}, {summary['per_bin_per_seed']} cases per 5-mm bin of the "
             "initial mTRE per seed; true poses drawn in the model's range around the nominal "
             "view, starts at `simulate.random_initial_pose` (rotation up to 15 deg); X-rays: "
             "Siddon DRRs of the full-resolution CT with Poisson/electronic noise and blur. "
             "Single view.",
             "",
             f"- CT: `{summary['ct']}`" + (" — **not the CT the model was trained on** (used "
                                          "with `--force`; its own nominal AP view)"
                                          if summary["other_ct"] else " (the model's CT)"),
             f"- Model: `{summary['model']}`: `{tr.get('command')}`; {tr.get('steps')} steps, "
             f"{(tr.get('elapsed_s') or 0) / 60:.1f} min; held-out (training-time, randomised "
             f"DRRs) one-update mTRE median {va.get('mtre_before_median', float('nan')):.1f} -> "
             f"{va.get('mtre_after_median', float('nan')):.2f} mm.",
             "- `learned`: one learned update (profile/correlation flow network + attention + "
             "weighted PPC solve with Huber re-weighting, 64 px, no trust region); `classic`: one iteration of `ppc.register_ppc` as shipped (level 2, search "
             "6 px, Huber IRLS, trust region 5 mm); `classic-free`: the same without the trust "
             "region."]
    for spec in summary.get("ablations", []):
        lines.append(f"- `{spec.split('=', 1)[0]}`: the model `{spec.split('=', 1)[1]}` "
                     "(ablation).")
    lines += [""]
    methods = summary["methods"]
    lines += ["| initial mTRE (mm) | n | " + " | ".join(f"{mm} median / mean" for mm in methods)
              + " | worse than start (" + " / ".join(methods) + ") | per-seed medians learned | "
              "per-seed medians classic |",
              "|---|---|" + "---|" * (len(methods) + 3)]
    for e in summary["bins"]:
        if "learned" not in e:
            continue
        lo, hi = e["bin"]
        name = f"**all {lo:g}-{hi:g}**" if (lo, hi) == (0.0, 45.0) else f"{lo:g}-{hi:g}"
        cells = [f"{e[mm]['median']:.3f} / {e[mm]['mean']:.3f}" if mm in e else "-"
                 for mm in methods]
        worse = " / ".join(str(e[mm]["worse"]) if mm in e else "-" for mm in methods)
        lines.append(f"| {name} | {e['learned']['n']} | " + " | ".join(cells) + f" | {worse} | "
                     + ", ".join(f"{v:.2f}" for v in e["learned"]["seed_medians"]) + " | "
                     + ", ".join(f"{v:.2f}" for v in e.get("classic", {}).get("seed_medians", []))
                     + " |")
    allb = summary["bins"][-1]
    lines += ["",
              f"Time per update (mean, s): learned {allb['learned']['time_s']:.2f}, classic "
              f"{allb['classic']['time_s']:.2f} (2-core CPU shared with other jobs, mean 1-min "
              f"load {summary['load_mean']:.1f}, 1 torch thread). Whole run "
              f"{summary['wall_s'] / 60:.1f} min.",
              f"<!-- /ppc-update:{label} -->"]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str, label: str) -> None:
    start, end = f"<!-- ppc-update:{label} -->", f"<!-- /ppc-update:{label} -->"
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        a = old.index(start)
        b = old.index(end) + len(end)
        new = old[:a] + text.rstrip("\n") + old[b:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "FluoroReg/FluoroRegLib/weights/fluoro_ppc_update_v1.pt"))
    ap.add_argument("--ct", default=str(REPO / "Resources/SampleData/ct/thorax_aorta_ct_cropped.nii.gz"))
    ap.add_argument("--force", action="store_true", help="a CT the model was not trained on")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--per-bin", dest="per_bin", type=int, default=3)
    ap.add_argument("--out", default="/tmp/fluoro-ppc-update")
    ap.add_argument("--results", default=None, help="markdown page to add the section to")
    ap.add_argument("--label", default="shipped CT")
    ap.add_argument("--ablation", action="append", default=None, metavar="NAME=MODEL.pt",
                    help="another ppc model to run as method NAME (e.g. untrained=...)")
    ap.add_argument("--pipeline", type=int, default=0, metavar="N",
                    help="instead: N whole registrations per pipeline (needs --regressor)")
    ap.add_argument("--pipeline-seed", dest="pipeline_seed", type=int, default=1)
    ap.add_argument("--regressor", default=str(REPO / "FluoroReg/FluoroRegLib/weights/"
                                                      "fluoro_pose_regressor_v1.pt"))
    ap.add_argument("--ppc-updates", dest="ppc_updates", type=int, default=3)
    ap.add_argument("--views", type=int, nargs="+", default=[1])
    args = ap.parse_args(argv)
    if args.pipeline:
        res = run_pipeline(args)
        text = pipeline_markdown(res, args.label)
        print(text)
        if args.results:
            write_section(Path(args.results), text, args.label)
        return 0
    summary = run(args)
    text = markdown(summary, args.label)
    print(text)
    if args.results:
        write_section(Path(args.results), text, args.label)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
