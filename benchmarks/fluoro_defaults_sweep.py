"""FluoroReg command defaults: time and accuracy of candidate option sets on the same cases.

Cases (SYNTHETIC X-rays of the shipped CT): ``surgreg fluoro simulate --cases N --seed 3``
at the command's defaults (128 px, 2 mm pixels, SDD 1000 mm, start mTRE up to 45 mm),
once with ``--views AP`` (single view) and once with ``--views AP,LAT`` (two views).
Each configuration runs ``register_arrays(method="ncc")`` (what ``surgreg fluoro register``
runs) on the full-resolution CT, one torch/numba thread; reported per case: mTRE (mm),
process CPU time and wall time of the registration (CPU time is the better guide on a
shared machine), LM iterations.

Configurations:

- ``A_old_defaults``: the command before issue 17 (full CT at every level, 1.5 samples
  per voxel of the largest dimension, 30 LM iterations per level);
- ``N1_new_it30``: CT block-averaged per level (``ct_resolution=1``), 1.0 samples per
  voxel, 30 iterations;
- ``N2_new_it10``: the same with 10 iterations per level (the defaults until the stopping
  rule below);
- ``N4_l421_stop`` / ``N6_l421_stop01``: N2 plus the stopping rule ``stop_px`` 0.02 / 0.01
  (end a pyramid level once LM's proposed step moves the CT by less than that many
  pixels of the level); **N6 is the command's default now**;
- ``N5_l42_stop``: no full-resolution level (``levels=(4, 2)``), ``stop_px`` 0.02.

``--source accuracy`` runs the configurations on the cases of
``benchmarks/fluoro_accuracy.py`` instead (seed 0, 20 cases, 96 px, 3.125 mm pixels, CT
block-averaged x2, X-rays rendered by Siddon from the full CT), through its own generator.

Run::

    source /work/wtenv.sh
    python benchmarks/fluoro_defaults_sweep.py --cases 8 --configs N2_new_it10 N6_l421_stop01
    python benchmarks/fluoro_defaults_sweep.py --source accuracy --cases 20 \
        --configs N2_new_it10 N6_l421_stop01 --out /tmp/fluoro-defaults.jsonl
    # a few CPU seconds per case and configuration (A_old_defaults: ~5x more)

Rows are appended to ``--out`` (JSON lines); ``--report`` prints the markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT / "Resources" / "SampleData" / "ct" / "thorax_aorta_ct_cropped.nii.gz"
CONFIGS = {
    "A_old_defaults": dict(levels=(4, 2, 1), iterations=30, ct_resolution=None, sample_density=1.5,
                    stop_px=None),
    "N1_new_it30": dict(levels=(4, 2, 1), iterations=30, ct_resolution=1.0, sample_density=1.0,
                    stop_px=None),
    "N2_new_it10": dict(levels=(4, 2, 1), iterations=10, ct_resolution=1.0, sample_density=1.0,
                    stop_px=None),
    "N4_l421_stop": dict(levels=(4, 2, 1), iterations=10, ct_resolution=1.0, sample_density=1.0,
                         stop_px=0.02),
    "N6_l421_stop01": dict(levels=(4, 2, 1), iterations=10, ct_resolution=1.0,
                           sample_density=1.0, stop_px=0.01),
    "N5_l42_stop": dict(levels=(4, 2), iterations=10, ct_resolution=1.0, sample_density=1.0,
                        stop_px=0.02),
}


def accuracy_cases(n: int, cache_dir: Path):
    """The cases of ``benchmarks/fluoro_accuracy.py`` (seed 0, 96 px, CT x2 for the
    registration; X-rays from the full CT by Siddon), through its own generator."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fluoro_accuracy  # noqa: PLC0415

    args = argparse.Namespace(register_downsample=2, seed=0, cases=n, size=96, fov_mm=300.0,
                              mtre_range=[10.0, 30.0], rot_range=[5.0, 15.0])
    cache_dir.mkdir(parents=True, exist_ok=True)
    cases, landmarks, reg_hu, reg_m, _ = fluoro_accuracy.make_cases(args, cache_dir)
    return cases, landmarks, reg_hu, reg_m


def run_accuracy(args) -> None:
    """``--source accuracy``: the configurations on fluoro_accuracy.py's cases."""
    import torch

    torch.set_num_threads(1)
    from FluoroRegLib.logic import register_arrays

    cases, lm, hu, m = accuracy_cases(args.cases, Path(args.cases_dir))
    with open(args.out, "a") as out:
        for nv in args.views:
            for ci, case in enumerate(cases):
                for name in args.configs:
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = register_arrays(hu, m, case.images[:nv], case.cameras[:nv],
                                          case.init_ct_to_camera[:nv], method="ncc",
                                          landmarks_ras=lm,
                                          true_ct_to_camera=case.true_ct_to_camera[0],
                                          **CONFIGS[name])
                    row = dict(source="accuracy", config=name, views=nv, case=ci,
                               wall=time.perf_counter() - t0, cpu=time.process_time() - c0,
                               mtre=res.metrics.get("mtre_mm"), iters=len(res.history),
                               load=os.getloadavg()[0])
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(row, flush=True)


def simulate(cases_dir: Path, n: int) -> None:
    for views, name in (("AP", "c1"), ("AP,LAT", "c2")):
        if (cases_dir / name / "cases.json").exists():
            continue
        subprocess.run([sys.executable, "-c", "import sys; from SurgicalReg2D3DLib.cli import main; "
                        "sys.exit(main())", "fluoro", "simulate", "--ct", str(CT), "--out",
                        str(cases_dir / name), "--cases", str(n), "--views", views, "--seed", "3"],
                       check=True)


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    from FluoroRegLib.logic import register_arrays
    from FluoroRegLib.simulate import read_ct
    from FluoroRegLib.xray_io import load_xray, read_pose_json

    cases_dir = Path(args.cases_dir)
    simulate(cases_dir, args.cases)
    hu, m = read_ct(str(CT))
    with open(args.out, "a") as out:
        for nv, folder in ((1, "c1"), (2, "c2")):
            if nv not in args.views:
                continue
            for ci in range(args.cases):
                d = cases_dir / folder / f"case_{ci:03d}"
                imgs, cams = [], []
                for k in range(nv):
                    img, cam = load_xray(d / f"xray_{k}.nrrd", d / f"geometry_{k}.json")
                    imgs.append(img)
                    cams.append(cam)
                init = read_pose_json(d / "init.json")
                truth = read_pose_json(d / "truth.json")
                lm = np.asarray(json.loads((d / "landmarks.json").read_text())["points"], float)
                for name in args.configs:
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = register_arrays(hu, m, imgs, cams, init, method="ncc", landmarks_ras=lm,
                                          true_ct_to_camera=truth[0], **CONFIGS[name])
                    row = dict(source="command", config=name, views=nv, case=ci,
                               wall=time.perf_counter() - t0,
                               cpu=time.process_time() - c0, mtre=res.metrics.get("mtre_mm"),
                               iters=len(res.history), load=os.getloadavg()[0])
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(row, flush=True)


def report(path: str) -> str:
    rows = [json.loads(line) for line in open(path)]
    by = collections.defaultdict(list)
    for r in rows:
        by[(r.get("source", "command"), r["config"], r["views"])].append(r)
    lines = ["| cases | config | views | cases | mTRE per case (mm) | mTRE median | p75 | "
             "max | mTRE < 1 mm | CPU s per case (median, range) | wall s median (load) | "
             "LM iterations (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (src, c, v), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        rs = sorted(rs, key=lambda r: r["case"])
        cpu = [r["cpu"] for r in rs]
        mt = [r["mtre"] for r in rs]
        per_case = ", ".join("%.3f" % x for x in mt) if len(mt) <= 8 else f"{len(mt)} cases"
        lines.append(
            f"| {src} | {c} | {v} | {rs[0]['case']}-{rs[-1]['case']} | {per_case} | "
            f"{statistics.median(mt):.3f} | {np.percentile(mt, 75):.3f} | {max(mt):.3f} | "
            f"{sum(x < 1.0 for x in mt)}/{len(mt)} | {statistics.median(cpu):.1f} "
            f"({min(cpu):.1f}-{max(cpu):.1f}) | {statistics.median([r['wall'] for r in rs]):.0f} "
            f"({statistics.median([r['load'] for r in rs]):.0f}) | "
            f"{statistics.median([r['iters'] for r in rs]):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--configs", nargs="+", default=["N2_new_it10", "N5_l42_stop"],
                    choices=sorted(CONFIGS))
    ap.add_argument("--cases-dir", default="/tmp/fluoro-defaults-cases")
    ap.add_argument("--out", default="/tmp/fluoro-defaults.jsonl")
    ap.add_argument("--report", action="store_true", help="print the table of --out and exit")
    ap.add_argument("--source", choices=["command", "accuracy"], default="command",
                    help="command: simulated cases at the command's defaults (seed 3, 128 px); "
                         "accuracy: the cases of benchmarks/fluoro_accuracy.py (seed 0, 96 px)")
    args = ap.parse_args(argv)
    if not args.report:
        run_accuracy(args) if args.source == "accuracy" else run(args)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
