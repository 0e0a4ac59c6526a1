"""USSliceReg: accuracy of RegistrationConfig variants over several start seeds.

The check behind the "tried and not kept" notes in ``benchmarks/results/us_bench.md``:
each variant runs the benchmark protocol (leave-one-out volumes of the shipped spine sweep,
starts up to +-10 mm / +-10 deg, ``USSliceRegLib.bench.run_bench``) for the LNCC method
only, one start per frame and seed, and prints the pooled and per-seed mean errors. Tune
on some seeds, then check on others that were not looked at: single frames are sensitive
to their start, so a variant that wins on a few seeds can lose on the next ones.

    python benchmarks/us_config_sweep.py --seeds 4,5,6,7,8 default lambda0.1 lambda0.1_cap4

Accuracy only (one call per start); timings belong to ``benchmarks/us_bench.py``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from USSliceRegLib.bench import run_bench
from USSliceRegLib.config import RegistrationConfig


def variants() -> dict:
    base = RegistrationConfig()
    coarse, mid, fine = base.levels

    def caps(c=None, m=None):
        return (replace(coarse, max_iter=c or coarse.max_iter),
                replace(mid, max_iter=m or mid.max_iter), fine)

    return {
        "default": base,
        "lambda0.1": replace(base, lambda_init=0.1),
        "lambda0.1_cap4": replace(base, lambda_init=0.1, levels=caps(c=4)),
        "cap4": replace(base, levels=caps(c=4)),
        "cap3": replace(base, levels=caps(c=3)),
        "cap4_mid8": replace(base, levels=caps(c=4, m=8)),
        "coarse_tol3e-3": replace(base, tol_cost_coarse=3e-3),
        "rejections4": replace(base, max_rejections=4),
    }


def main() -> int:
    known = variants()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(known), metavar="VARIANT",
                        help=f"one or more of: {', '.join(known)}")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated start seeds")
    parser.add_argument("--frames", help="comma-separated test frames (default interior)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    frames = [int(f) for f in args.frames.split(",")] if args.frames else None
    for name in args.names:
        s = run_bench(frames=frames, seeds=seeds, methods=("lncc",), config=known[name])
        m = s["methods"]["lncc"]
        per = "; ".join(f"seed {sd} {v['lncc']['mean_rotation_deg']:.2f} deg "
                        f"{v['lncc']['mean_translation_mm']:.2f} mm"
                        for sd, v in s["per_seed"].items())
        print(f"{name:16s} pooled {m['frames']} starts: {m['mean_translation_mm']:.2f} mm / "
              f"{m['mean_rotation_deg']:.2f} deg mean, ok<=2/2 "
              f"{m['success_rate_2mm_2deg']:.2f}, max "
              f"{max(r['rotation_deg'] for r in s['rows']):.2f} deg  ({per})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
