"""DRR rendering speed and agreement: FluoroRegLib vs DiffDRR and nanodrr (CPU or GPU).

Run in a SEPARATE environment that has the peers (never a runtime dependency):

    python -m venv /work/bench-venv && . /work/bench-venv/bin/activate
    pip install torch==2.13.0 diffdrr nanodrr
    OMP_NUM_THREADS=2 python benchmarks/fluoro_drr_bench.py [--sizes 128 256] [--device cpu]

All renderers get exactly the same rays (source at the camera origin, targets at the
pixel centres, moved into the CT's voxel frame with the same ``ct_to_camera``) and the
same attenuation volume (``FluoroRegLib.drr.hu_to_mu`` of the shipped CT), so their
images are directly comparable:

- ours-trilinear / nanodrr-torch / diffdrr-trilinear: ``--samples`` samples per ray
  (DiffDRR spreads them over the union of all rays' volume intersections, the others
  clip every ray to the volume);
- ours-siddon / diffdrr-siddon: exact ray-voxel intersection lengths.

Each (renderer, size, mode) runs in a fresh subprocess, so "peak MiB" is that process's
peak resident memory above its state after loading the CT. "fwd" is a forward render,
"fwd+bwd" also back-propagates a scalar loss to the 4x4 pose. Times are medians of
``--repeats`` runs after one warm-up; ratios are peer time / our time for the same
integrator (> 1 means ours is faster). "max |diff|" is the largest pixel difference to
our Siddon image (exact reference) in line-integral units (mu * mm), with the image
maximum for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "FluoroReg"), str(ROOT / "SurgicalReg2D3D")]
CT = ROOT / "Resources" / "SampleData" / "ct" / "thorax_aorta_ct_cropped.nii.gz"
RENDERERS = ["ours-trilinear", "ours-siddon", "nanodrr-torch", "diffdrr-trilinear", "diffdrr-siddon"]


def _setup(size: int, device: str):
    import torch

    from FluoroRegLib.drr import DRRVolume
    from FluoroRegLib.geometry import detector_points, look_at_pose, make_camera
    from FluoroRegLib.simulate import read_ct

    hu, m = read_ct(CT)
    vol = DRRVolume.from_hu(hu, m, device=device)
    cam = make_camera(1000.0, (256.0 / size * 1.2, 256.0 / size * 1.2), (size, size))
    pose = look_at_pose(vol.center_ras(), "AP", 600.0, rotation_deg=(10.0, -15.0, 5.0))
    pose_t = torch.as_tensor(pose, dtype=torch.float32, device=device)
    targets = detector_points(cam, device=device).reshape(-1, 3)
    return vol, cam, pose_t, targets


def _child(args) -> None:
    """Time one renderer in this process; print a JSON line."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    dev = args.device
    vol, cam, pose, targets = _setup(args.size, dev)
    n = args.samples
    name = args.renderer
    size = args.size
    if name.startswith("ours"):
        from FluoroRegLib.drr import render_drr

        method = name.split("-")[1]

        def render(p):
            return render_drr(vol, cam, p, method=method, n_samples=n)[0]
    elif name == "nanodrr-torch":
        from nanodrr.data.subject import Subject
        from nanodrr.drr.backends import render_torch

        mu = vol.mu[None, None]
        v2w = torch.as_tensor(vol.ijk_to_ras, dtype=torch.float32, device=dev)
        subject = Subject(mu, torch.zeros_like(mu), v2w, torch.linalg.inv(v2w),
                          Subject._make_voxel_to_grid(mu.shape).to(dev), v2w[:3, 3],
                          max_label=0, convert_to_mu=False)
        tgt = targets[None]
        src = torch.zeros(1, 1, 3, device=dev)
        step = tgt.norm(dim=-1) / n

        def render(p):
            return render_torch(subject, torch.linalg.inv(p)[None], src, tgt, step, n, size, size)[0, 0]
    else:
        from diffdrr.renderers import Siddon, Trilinear

        from FluoroRegLib.drr import rays_in_ijk

        vol_xyz = vol.mu.permute(2, 1, 0).contiguous()  # DiffDRR indexes volume[i, j, k]
        renderer = Siddon() if name.endswith("siddon") else Trilinear()
        length = targets.norm(dim=-1)

        def render(p):
            s, d, _ = rays_in_ijk(vol, cam, p)
            src = s[:, None, :].expand(-1, d.shape[1], -1)
            tgt = src + d
            kw = {} if name.endswith("siddon") else {"n_points": n}
            img = renderer(vol_xyz, src, tgt, None, **kw)
            return (img[0, 0] * length).reshape(size, size)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for r in range(args.repeats + 1):
        p = pose.clone().requires_grad_(args.mode == "fwd+bwd")
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if args.mode == "fwd":
            with torch.no_grad():
                img = render(p)
        else:
            img = render(p)
            img.square().mean().backward()
        if dev == "cuda":
            torch.cuda.synchronize()
        if r > 0:
            times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024.0
    if args.save:
        np.save(args.save, img.detach().float().cpu().numpy())
    print(json.dumps({"time": float(np.median(times)), "peak_mib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--samples", type=int, default=256, help="samples per ray (trilinear)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--renderers", nargs="+", default=RENDERERS)
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    ap.add_argument("--json", help="write all results here")
    # child mode
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--renderer", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    import torch

    print(f"torch {torch.__version__}, device {args.device}, threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}, CT {CT.name}, "
          f"{args.samples} samples/ray (trilinear)")
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="drrbench"))
    for size in args.sizes:
        for mode in args.modes:
            for name in args.renderers:
                out = tmp / f"{name}_{size}.npy"
                cmd = [sys.executable, __file__, "--child", "--renderer", name, "--size", str(size),
                       "--mode", mode, "--samples", str(args.samples), "--repeats",
                       str(args.repeats), "--device", args.device]
                if mode == "fwd":
                    cmd += ["--save", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"  {name} {size} {mode}: FAILED\n{proc.stderr[-2000:]}")
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row.update(renderer=name, size=size, mode=mode)
                results.append(row)
                print(f"  {size}^2 {mode:8s} {name:18s} {row['time'] * 1000:9.1f} ms  "
                      f"peak +{row['peak_mib']:7.1f} MiB", flush=True)
    # Agreement with our exact Siddon image.
    for size in args.sizes:
        ref_path = tmp / f"ours-siddon_{size}.npy"
        if not ref_path.exists():
            continue
        ref = np.load(ref_path)
        for name in args.renderers:
            path = tmp / f"{name}_{size}.npy"
            if path.exists():
                diff = float(np.abs(np.load(path) - ref).max())
                for r in results:
                    if r["renderer"] == name and r["size"] == size:
                        r["max_abs_diff_to_ours_siddon"] = diff
                        r["image_max"] = float(ref.max())
    print("\nratio = peer time / our time with the same integrator (> 1: ours faster)")
    print(f"{'size':>5s} {'mode':8s} {'renderer':18s} {'ms':>9s} {'ratio':>7s} {'peak MiB':>9s} "
          f"{'max|diff|':>10s} {'img max':>8s}")
    for r in results:
        ours = "ours-siddon" if r["renderer"].endswith("siddon") else "ours-trilinear"
        mine = [x for x in results if x["renderer"] == ours and x["size"] == r["size"]
                and x["mode"] == r["mode"]]
        ratio = r["time"] / mine[0]["time"] if mine else float("nan")
        r["ratio_vs_ours"] = ratio
        print(f"{r['size']:5d} {r['mode']:8s} {r['renderer']:18s} {r['time'] * 1000:9.1f} "
              f"{ratio:7.2f} {r['peak_mib']:9.1f} {r.get('max_abs_diff_to_ours_siddon', float('nan')):10.4f} "
              f"{r.get('image_max', float('nan')):8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
