"""How well FluoroReg's quality value separates successes from failures (SYNTHETIC X-rays).

    OMP_NUM_THREADS=1 python benchmarks/fluoro_quality.py collect [--seed 0] [--cases 30]
        [--views 1] [--method ncc] [--ct CT] [--crop] [--out /tmp/fluoro-quality]
    python benchmarks/fluoro_quality.py report [--out /tmp/fluoro-quality]
        [--results benchmarks/results]

``collect``: simulated X-rays of a CT (Siddon, full resolution, Poisson + electronic
noise, blur), starts with a 3D mTRE of ``--mtre-range`` (default 10-45 mm, at and beyond
the capture range so that there are failures), registration on the CT block-averaged x2;
for every case the signals of :func:`FluoroRegLib.quality.measure_signals`, the true mTRE,
and (``--retry``) the result of :func:`FluoroRegLib.quality.assess_and_retry`. One JSON
line per case in ``<out>/rows.jsonl`` (a cut-off run keeps what it wrote; a re-run skips
finished cases). ``--crop`` registers against a cropped, resampled variant of the CT (a
second CT geometry the defaults were not fitted on).

``report``: per signal the ROC AUC for "true mTRE >= 1 mm"; for the calibrated estimate
(leave-one-seed-out: the model is fitted on the other seeds' cases, or, with a per-CT
calibration, on that CT's simulations only) the AUC, precision / recall of ``failed``,
success rate over unflagged cases, share flagged, per seed; a calibration plot
(estimated vs true mTRE).
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
sys.path[:0] = [str(ROOT / "FluoroReg"), str(ROOT / "SurgicalReg2D3D")]
CT = ROOT / "Resources" / "SampleData" / "ct" / "thorax_aorta_ct_cropped.nii.gz"


def crop_variant(hu, m):
    """A different CT geometry from the shipped one: the upper 70 % of the slices, the
    central 80 % in-plane, resampled to 2.0 mm (not the 1.5 mm of the file)."""
    from scipy.ndimage import zoom

    k, j, i = hu.shape
    sub = hu[int(0.3 * k):, int(0.1 * j): int(0.9 * j), int(0.1 * i): int(0.9 * i)]
    off = np.array([int(0.1 * i), int(0.1 * j), int(0.3 * k), 1.0])
    f = 1.5 / 2.0
    out = zoom(sub, f, order=1).astype(np.float32)
    m2 = m.copy()
    m2[:3, 3] = (m @ off)[:3]
    m2[:3, :3] = m[:3, :3] / f
    # voxel i' centre is at old index i'/f + (1/f - 1)/2 approximately; keep it simple
    m2[:3, 3] += m[:3, :3] @ np.full(3, (1 / f - 1) / 2)
    return out, m2


def cmd_collect(args) -> None:
    import torch

    torch.set_num_threads(1)
    from FluoroRegLib import quality as fq
    from FluoroRegLib.drr import DRRVolume
    from FluoroRegLib.geometry import make_camera
    from FluoroRegLib.logic import make_views, METHODS
    from FluoroRegLib.refine import pose_errors
    from FluoroRegLib.simulate import downsample_ct, read_ct, sample_landmarks, simulate_cases

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hu, m = read_ct(args.ct)
    if args.crop:
        hu, m = crop_variant(hu, m)
    sim_vol = DRRVolume.from_hu(hu, m)
    reg_hu, reg_m = downsample_ct(hu, m, 2)
    reg_vol = DRRVolume.from_hu(reg_hu, reg_m)
    landmarks = sample_landmarks(hu, m, 20, seed=args.seed)
    spacing = args.fov_mm / args.size
    camera = make_camera(1000.0, (spacing, spacing), (args.size, args.size))
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["seed"], r["case"], r["views"], r["method"], r["ct_variant"]))
    variant = "crop2mm" if args.crop else "shipped"
    options = {"levels": (4, 2, 1), "iterations": args.iterations}
    for ci in range(args.cases):
        key = (args.seed, ci, args.views, args.method, variant)
        if key in done:
            continue
        case = simulate_cases(sim_vol, camera, landmarks, 1, seed=args.seed, first_case=ci,
                              views=("AP", "LAT")[: args.views],
                              mtre_range_mm=tuple(args.mtre_range),
                              rotation_range_deg=tuple(args.rot_range),
                              effects={"photons": 2e4})[0]
        views, init = make_views(case.images, case.cameras, case.init_ct_to_camera)
        t0 = time.perf_counter()
        res = METHODS[args.method](reg_vol, views, init, **options)
        t_reg = time.perf_counter() - t0
        truth = case.true_ct_to_camera[0]
        err = pose_errors(res.ct_to_camera, truth, landmarks, camera)
        t0 = time.perf_counter()
        sig = fq.measure_signals(reg_vol, views, res.ct_to_camera, init, res.history,
                                 args.iterations, metrics=res.metrics)
        t_sig = time.perf_counter() - t0
        row = {"seed": args.seed, "case": ci, "views": args.views, "method": args.method,
               "ct_variant": variant, "initial_mtre_mm": case.initial_mtre_mm,
               "mtre_mm": err["mtre_mm"], "rot_deg": err["rot_deg"],
               "trans_mm": err["trans_mm"], "time_reg_s": t_reg, "time_signals_s": t_sig,
               "load1": os.getloadavg()[0], "signals": sig,
               "truth": truth.tolist(), "result": res.ct_to_camera.tolist()}
        if args.retry:
            t0 = time.perf_counter()
            q, res2, info = fq.assess_and_retry(reg_vol, views, res, init, method=args.method,
                                                 options=options)
            row["retry"] = {"time_s": time.perf_counter() - t0, "quality": q.to_dict(),
                            "info": info,
                            "mtre_mm": pose_errors(res2.ct_to_camera, truth, landmarks,
                                                   camera)["mtre_mm"]}
        with open(rows_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"seed {args.seed} case {ci}: {case.initial_mtre_mm:.1f} -> {err['mtre_mm']:.2f} mm"
              f" cost_ratio {sig['cost_ratio']:.2f} sigma {sig['sigma_mm']:.2f} probe "
              f"{sig['probe_gain']:.3g} ({t_reg:.1f}+{t_sig:.1f} s)", flush=True)


def auc(scores, labels) -> float:
    """ROC AUC (probability that a random positive scores above a random negative)."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def load_rows(out: Path):
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line]
    return rows


def cmd_signals(args) -> None:
    """Quick look: AUC of each raw signal."""
    rows = load_rows(Path(args.out))
    y = [r["mtre_mm"] >= 1.0 for r in rows]
    print(f"{len(rows)} rows, {sum(y)} failures")
    for name in ("cost_ratio", "cost", "similarity", "sigma_mm", "sigma_weak_mm", "probe_gain",
                 "moved_mm", "iterations_capped", "noise_floor"):
        vals = [float(r["signals"].get(name, np.nan) or 0) for r in rows]
        print(f"{name:20s} AUC {auc(vals, y):.3f}")
    for r in sorted(rows, key=lambda r: r["mtre_mm"]):
        s = r["signals"]
        print(f"{r['mtre_mm']:7.2f} rot {r['rot_deg']:5.2f} cr {s['cost_ratio']:6.3f} sig "
              f"{s['sigma_mm']:6.3f} weak {s['sigma_weak_mm']:6.3f} probe {s['probe_gain']:.4f} "
              f"cap {s.get('iterations_capped')} it {s.get('iterations_last_level')}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--cases", type=int, default=30)
    c.add_argument("--views", type=int, default=1)
    c.add_argument("--method", default="ncc")
    c.add_argument("--iterations", type=int, default=30)
    c.add_argument("--size", type=int, default=96)
    c.add_argument("--fov-mm", dest="fov_mm", type=float, default=300.0)
    c.add_argument("--mtre-range", dest="mtre_range", type=float, nargs=2, default=(10.0, 45.0))
    c.add_argument("--rot-range", dest="rot_range", type=float, nargs=2, default=(5.0, 20.0))
    c.add_argument("--ct", default=str(CT))
    c.add_argument("--crop", action="store_true")
    c.add_argument("--retry", action="store_true")
    c.add_argument("--out", default="/tmp/fluoro-quality")
    s = sub.add_parser("signals")
    s.add_argument("--out", default="/tmp/fluoro-quality")
    args = p.parse_args(argv)
    {"collect": cmd_collect, "signals": cmd_signals}[args.cmd](args)


if __name__ == "__main__":
    main()
