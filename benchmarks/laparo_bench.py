"""LiverLaparoReg benchmark: per-frame time and accuracy (synthetic renders + real P2ILF).

Run: ``OMP_NUM_THREADS=1 python benchmarks/laparo_bench.py [--quick]``. Same code as
``surgreg laparo bench`` (``LiverLaparoRegLib.bench.run_bench``). No peer method is run
(pytorch3d / kaolin / nvdiffrast do not install on CPU), so no ratios are printed.
"""

import argparse
import json

from LiverLaparoRegLib.bench import run_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mesh", action="append", default=None)
    a = ap.parse_args()
    for row in run_bench(meshes=a.mesh, quick=a.quick):
        print(json.dumps(row))
