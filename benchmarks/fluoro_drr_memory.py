"""Peak memory of the FluoroRegLib DRR renderer with a 512^3 CT (synthetic volume).

    OMP_NUM_THREADS=2 python benchmarks/fluoro_drr_memory.py [--size 512] [--pixels 128]

The CT is a SYNTHETIC 512^3 int16 HU volume (a water cylinder with a bone block in air,
0.7 mm voxels) — only its size matters here. Prints the process's peak resident memory
(``ru_maxrss``) after preparing the volume (``DRRVolume.from_hu``) and after each
render: trilinear forward, trilinear forward + backward (pose gradient), Siddon forward,
and a batch of 4 poses. The target is to fit a 24 GiB CPU machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "FluoroReg"), str(ROOT / "SurgicalReg2D3D")]


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--pixels", type=int, default=128)
    args = ap.parse_args()

    import torch

    from FluoroRegLib.drr import DRRVolume, render_drr
    from FluoroRegLib.geometry import look_at_pose, make_camera

    n = args.size
    hu = np.full((n, n, n), -1000, np.int16)
    yy, xx = np.mgrid[:n, :n]
    body = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.4 * n) ** 2
    hu[:, body] = 0
    hu[n // 3: 2 * n // 3, n // 3: n // 2, n // 3: 2 * n // 3] = 1200
    m = np.diag([0.7, 0.7, 0.7, 1.0])
    m[:3, 3] = -0.35 * (n - 1)
    print(f"synthetic CT {n}^3 int16: {hu.nbytes / 2**30:.2f} GiB; peak so far {peak_gib():.2f} GiB")
    t = time.perf_counter()
    vol = DRRVolume.from_hu(hu, m)
    print(f"DRRVolume.from_hu: {time.perf_counter() - t:.1f} s, peak {peak_gib():.2f} GiB "
          f"(mu float32 {vol.mu.numel() * 4 / 2**30:.2f} GiB)")
    cam = make_camera(1000.0, (400.0 / args.pixels,) * 2, (args.pixels, args.pixels))
    pose = look_at_pose(vol.center_ras(), "AP", 600.0, (5, 10, 0))
    for label, fn in [
        ("trilinear fwd", lambda: render_drr(vol, cam, pose, n_samples=n)),
        ("trilinear fwd+bwd", lambda: _fwd_bwd(render_drr, vol, cam, pose, n)),
        ("siddon fwd", lambda: render_drr(vol, cam, pose, method="siddon")),
        ("trilinear fwd, 4 poses", lambda: render_drr(vol, cam, np.stack([pose] * 4), n_samples=n)),
    ]:
        t = time.perf_counter()
        with torch.no_grad() if "bwd" not in label else torch.enable_grad():
            out = fn()
        print(f"{label:24s} {time.perf_counter() - t:7.1f} s  max {float(out.max()):.2f}  "
              f"peak {peak_gib():.2f} GiB")


def _fwd_bwd(render_drr, vol, cam, pose, n):
    import torch

    p = torch.as_tensor(pose, dtype=torch.float32).requires_grad_(True)
    img = render_drr(vol, cam, p, n_samples=n)
    img.square().mean().backward()
    assert torch.isfinite(p.grad).all()
    return img.detach()


if __name__ == "__main__":
    main()
