"""Per-view quality of two-view FluoroReg results: what the per-view verdict says on correct
two-view registrations, and whether it finds the view that does not fit.

SYNTHETIC cases (``fluoro simulate``'s generator and defaults: AP + LAT, 128 px, 2 mm
pixels, 1e4 photons, starts 10-30 mm mTRE) of the shipped CT and of its ``crop2mm`` variant
(``benchmarks/fluoro_quality.py``: another field of view, 2 mm voxels). Two kinds of case:

* ``still``: both X-rays of the same patient pose (what the method assumes);
* ``moved``: the patient moved between the two exposures -- the second X-ray is rendered
  with the CT moved by 2-4 mm and 1-3 deg (random direction and axis, about the CT
  centre). No single pose fits both views; the second view is the one that does not fit
  the first view's pose.

Each case is registered as ``surgreg fluoro register`` does (``register_arrays``, method
``ncc``, its defaults, quality on). Written per case (JSONL): the true mTRE of the joint
pose (against view 1's truth), the case verdict, each view's signals and verdict.

    python benchmarks/fluoro_view_quality.py collect --seeds 0,1 --cases 6 --out DIR
    python benchmarks/fluoro_view_quality.py report DIR/rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "FluoroReg"), str(ROOT / "SurgicalReg2D3D"), str(ROOT / "benchmarks")]
CT = ROOT / "Resources" / "SampleData" / "ct" / "thorax_aorta_ct_cropped.nii.gz"


def _motion(center, rng):
    """A CT-frame rigid motion (4x4, CT RAS -> CT RAS): 2-4 mm, 1-3 deg about the centre."""
    from scipy.spatial.transform import Rotation

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    R = Rotation.from_rotvec(np.deg2rad(rng.uniform(1.0, 3.0)) * axis).as_matrix()
    d = rng.normal(size=3)
    d *= rng.uniform(2.0, 4.0) / np.linalg.norm(d)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = center - R @ center + d
    return M


def cmd_collect(args) -> None:
    import torch

    from fluoro_quality import crop_variant
    from FluoroRegLib.drr import DRRVolume, render_drr
    from FluoroRegLib.geometry import make_camera
    from FluoroRegLib.logic import register_arrays
    from FluoroRegLib.simulate import (case_generators, mtre_np, read_ct, sample_landmarks,
                                       simulate_case, xray_effects)

    torch.set_num_threads(1)
    from rows_file import append_row, rows_path_and_done

    rows_path, done = rows_path_and_done(args.out, ("ct", "seed", "case", "kind"))
    camera = make_camera(1000.0, (2.0, 2.0), (128, 128))
    for ct_name in args.cts.split(","):
        hu, m = read_ct(CT)
        if ct_name == "crop2mm":
            hu, m = crop_variant(hu, m)
        vol = DRRVolume.from_hu(hu, m)
        for seed in [int(s) for s in args.seeds.split(",")]:
            landmarks = sample_landmarks(hu, m, 20, seed=seed)
            for c in range(args.cases):
                for kind in ("still", "moved"):
                    if (ct_name, seed, c, kind) in done:
                        continue
                    pose_rng, noise_rng = case_generators(seed, c)
                    case = simulate_case(vol, camera, pose_rng, landmarks, views=("AP", "LAT"),
                                         noise_rng=noise_rng, effects={"photons": 1e4})
                    images = list(case.images)
                    if kind == "moved":
                        mrng = np.random.default_rng([seed, c, 7])
                        M = _motion(vol.center_ras(), mrng)
                        with torch.no_grad():
                            L = render_drr(vol, camera, case.true_ct_to_camera[1] @ M,
                                           method="siddon")[0]
                        images[1] = xray_effects(L.cpu().numpy(), mrng, photons=1e4)
                    t = time.perf_counter()
                    res = register_arrays(hu, m, images, case.cameras, case.init_ct_to_camera,
                                          method="ncc", quality=True)
                    sec = time.perf_counter() - t
                    q = res.quality
                    err = mtre_np(res.ct_to_camera, case.true_ct_to_camera[0], landmarks)
                    row = {"ct": ct_name, "seed": seed, "case": c, "kind": kind,
                           "mtre_mm": float(err), "seconds": sec, "case_verdict": q.verdict,
                           "case_estimate_mm": q.estimate.get("mtre_mm"),
                           "case_signals": {k: v for k, v in q.signals.items()
                                            if isinstance(v, (int, float, str, list))},
                           "views_new": q.signals.get("views"),
                           "views_old": [{"verdict": v.verdict,
                                          "estimate_mm": v.estimate.get("mtre_mm"),
                                          "cost_ratio": v.signals.get("cost_ratio"),
                                          "probe_gain": v.signals.get("probe_gain"),
                                          "sigma_mm": v.signals.get("sigma_mm")}
                                         for v in res.view_qualities],
                           "views_verdict": [v.verdict for v in res.view_qualities]}
                    append_row(rows_path, row)
                    print(f"{ct_name} seed {seed} case {c} {kind}: mTRE {err:.2f} mm, case "
                          f"{q.verdict}, views {row['views_verdict']}, cost ratios "
                          f"{[round(v['cost_ratio'], 2) for v in (row['views_new'] or [])]}"
                          f" ({sec:.1f} s)", flush=True)


def cmd_report(args) -> None:
    from FluoroRegLib import quality as fq
    from SurgicalReg2D3DLib.quality import Quality

    rows = [json.loads(x) for x in Path(args.rows).read_text().splitlines() if x.strip()]
    lines = ["| CT | case kind | n | joint mTRE median (max) mm | case verdicts ok/doubtful/failed "
             "| per view, old (each view alone): flagged view 1 / view 2 | per view, new: "
             "flagged view 1 / view 2 | new: cost ratio view 1 / view 2 (range) | s per case "
             "median |", "|---|---|---|---|---|---|---|---|---|"]
    for ct in sorted({r["ct"] for r in rows}):
        for kind in ("still", "moved"):
            rs = [r for r in rows if r["ct"] == ct and r["kind"] == kind]
            if not rs:
                continue
            old = np.array([[v != "ok" for v in r["views_verdict"]] for r in rs])
            new = []
            for r in rs:
                q = Quality(r["case_verdict"], {"mtre_mm": r["case_estimate_mm"]}, {}, [],
                            {"views": r["views_new"]})
                new.append([v.verdict != "ok" for v in fq.view_qualities(q, 2)])
            new = np.array(new)
            cr = np.array([[v["cost_ratio"] for v in r["views_new"]] for r in rs])
            mt = np.array([r["mtre_mm"] for r in rs])
            cv = [sum(r["case_verdict"] == v for r in rs) for v in ("ok", "doubtful", "failed")]
            lines.append(
                f"| {ct} | {kind} | {len(rs)} | {np.median(mt):.2f} ({mt.max():.2f}) | "
                f"{cv[0]}/{cv[1]}/{cv[2]} | {old[:, 0].sum()}/{len(rs)}, {old[:, 1].sum()}/{len(rs)}"
                f" | {new[:, 0].sum()}/{len(rs)}, {new[:, 1].sum()}/{len(rs)} | "
                f"{cr[:, 0].min():.2f}-{cr[:, 0].max():.2f} / {cr[:, 1].min():.2f}-"
                f"{cr[:, 1].max():.2f} | {np.median([r['seconds'] for r in rs]):.1f} |")
    print("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--cts", default="shipped,crop2mm")
    c.add_argument("--seeds", default="0,1")
    c.add_argument("--cases", type=int, default=6)
    c.add_argument("--out", required=True)
    c.set_defaults(fn=cmd_collect)
    r = sub.add_parser("report")
    r.add_argument("rows")
    r.set_defaults(fn=cmd_report)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
