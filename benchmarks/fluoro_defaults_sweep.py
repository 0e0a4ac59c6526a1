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
- ``N2_new_it10``: the same with 10 iterations per level (the new defaults).

Run::

    source /work/wtenv.sh
    python benchmarks/fluoro_defaults_sweep.py --cases 4 --configs A_old_defaults N2_new_it10
    # ~1 min per case and configuration on a quiet 2-core CPU (A: ~3x longer)

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
    "A_old_defaults": dict(levels=(4, 2, 1), iterations=30, ct_resolution=None, sample_density=1.5),
    "N1_new_it30": dict(levels=(4, 2, 1), iterations=30, ct_resolution=1.0, sample_density=1.0),
    "N2_new_it10": dict(levels=(4, 2, 1), iterations=10, ct_resolution=1.0, sample_density=1.0),
}


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
                    row = dict(config=name, views=nv, case=ci, wall=time.perf_counter() - t0,
                               cpu=time.process_time() - c0, mtre=res.metrics.get("mtre_mm"),
                               iters=len(res.history), load=os.getloadavg()[0])
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(row, flush=True)


def report(path: str) -> str:
    rows = [json.loads(line) for line in open(path)]
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["config"], r["views"])].append(r)
    lines = ["| config | views | cases | mTRE per case (mm) | mTRE median | CPU s per case "
             "(median, range) | wall s median (load) | LM iterations (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for (c, v), rs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs = sorted(rs, key=lambda r: r["case"])
        cpu = [r["cpu"] for r in rs]
        lines.append(
            f"| {c} | {v} | {[r['case'] for r in rs]} | "
            f"{', '.join('%.3f' % r['mtre'] for r in rs)} | "
            f"{statistics.median([r['mtre'] for r in rs]):.3f} | {statistics.median(cpu):.1f} "
            f"({min(cpu):.1f}-{max(cpu):.1f}) | {statistics.median([r['wall'] for r in rs]):.0f} "
            f"({statistics.median([r['load'] for r in rs]):.0f}) | "
            f"{statistics.median([r['iters'] for r in rs]):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--configs", nargs="+", default=["A_old_defaults", "N2_new_it10"],
                    choices=sorted(CONFIGS))
    ap.add_argument("--cases-dir", default="/tmp/fluoro-defaults-cases")
    ap.add_argument("--out", default="/tmp/fluoro-defaults.jsonl")
    ap.add_argument("--report", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args(argv)
    if not args.report:
        run(args)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
