"""DeepRS2V benchmark: deep, deep+lncc, lncc and sitk on the same held-out frames and starts,
two start ranges (<= 10 mm / 10 deg and 10-20 mm / 10-20 deg), several seeds.

    python benchmarks/us_deep_bench.py [--model MODEL.pt] [--seeds 0,1,2] [--out DIR]

Protocol: :mod:`USSliceRegLib.learned.benchmark` (volume from the even frames of the shipped
spine sweep, odd frames registered; the bundled model was trained on the even frames only).
Writes ``us_deep_bench.json`` and prints the markdown table for
``benchmarks/results/us_deep.md``. Run it niced on a shared machine; the timings are wall
times of one call per frame on one thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from USSliceRegLib.learned.benchmark import run_deep_bench, summary_markdown


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", nargs="+", default=["deep", "deep+lncc", "lncc", "sitk"])
    ap.add_argument("--out", default="us-deep-bench")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = time.time()
    res = run_deep_bench(methods=args.methods, seeds=[int(s) for s in args.seeds.split(",")],
                         model=args.model, verbose=True)
    res["wall_s"] = time.time() - t
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "us_deep_bench.json").write_text(json.dumps(res, indent=1, default=float))
    print(summary_markdown(res))
    print(f"frames {res['frames']}, skipped {res['skipped_uncovered_frames']}, load "
          f"{res['load_average_1min_start_end']}, wall {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
