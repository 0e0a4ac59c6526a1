"""Batched DRR throughput (DRRs per second): FluoroReg's renderer against nanodrr and DiffDRR.

Where DRR speed matters: per-patient training renders batches of small DRRs (the learned
FluoroReg trainer, ``FluoroRegLib/learned``: 64 px images, batches of 32, CT block-averaged
so that a voxel is about one training pixel at the CT, ``max(32, 1.2 x largest CT
dimension)`` samples per ray, forward only), and intensity registration renders batches of
7-13 poses per Levenberg-Marquardt step. This script renders ``B`` poses per call at 64,
128 and 256 px with that same training rule for the CT resolution and sample count
(``--ct-factor``/``--n-samples`` override it), forward (``torch.no_grad``) and forward +
backward (gradient of a weighted image sum w.r.t. the B x 6 pose parameters).

Renderers (all trilinear, the same attenuation volume, geometry mapping and adapters of
``benchmarks/fluoro_drr_peers.py``, imported, not copied):

================  ===================================================================
ours              ``render_drr`` as shipped (compiled numba kernel on the CPU)
ours-torch        ``render_drr`` with ``FLUOROREG_DRR_KERNELS=torch`` (grid_sample path)
nanodrr-torch     nanodrr ``DRR(..., backend="torch")``
diffdrr           DiffDRR ``DRR(renderer="trilinear")``
================  ===================================================================

Timing: one warm-up call per renderer and mode, then ``--repeats`` rounds; inside a round
every renderer runs once, in a rotated order, so load from other processes hits all of them
alike. Reported: DRRs/s from the median time, the min-max spread, and the ratio of each
peer's time to ours *in the same round* (median and range over rounds), which is robust to
load that changes between rounds. The first call of ours in the process (numba compile or
cache load) is reported separately. Agreement: the largest pixel difference of every
renderer against ``ours-torch`` relative to its maximum, at the benchmark's first pose
(and, as a sanity check that the measure can fail, ours at a pose moved 2 mm / 1 degree).

Run (peers live in a separate benchmark environment, never the project's runtime)::

    /tmp/speed/bench-venv/bin/python benchmarks/drr_throughput.py            # ~4 min quiet
    /tmp/speed/bench-venv/bin/python benchmarks/drr_throughput.py --quick    # ~1 min

with ``PYTHONPATH`` set as ``/work/wtenv.sh`` does. Results go to
``benchmarks/results/drr_throughput.{md,json}`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fluoro_drr_peers as peers  # noqa: E402

RESULTS = HERE / "results" / "drr_throughput"
RENDERERS = ("ours", "ours-torch", "nanodrr-torch", "diffdrr")
#: Default batch per detector size (DiffDRR's autograd at 256 px needs GBs per pose).
BATCH = {64: 32, 128: 8, 256: 2}
NOMINAL_DEPTH_MM = peers.SOURCE_TO_CENTER_MM


def training_setup(size: int, voxel_mm: float):
    """(camera, CT block-average factor) as the learned trainer picks them: the detector
    scaled to ``size`` px on its long side, a CT voxel about one pixel at the CT."""
    full = peers.make_camera(512)
    factor = 512 / float(size)
    cam = full.scaled(factor) if factor != 1 else full
    from FluoroRegLib.geometry import camera_parameters  # noqa: PLC0415

    p = camera_parameters(full)
    pixel_at_ct = max(p.sx, p.sy) * factor * NOMINAL_DEPTH_MM / p.f
    return cam, max(1, int(round(pixel_at_ct / voxel_mm)))


def poses_around(volume, b: int, seed: int = 0):
    """``b`` ct_to_camera around the benchmark's oblique AP view (+-5 deg, +-10 mm)."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    xi = np.concatenate([rng.uniform(-0.09, 0.09, (b, 3)), rng.uniform(-10, 10, (b, 3))], 1)
    xi[0] = 0
    base = torch.as_tensor(peers.base_pose(volume), dtype=torch.float64)
    return (se3_exp(torch.as_tensor(xi)) @ base).to(torch.float32)


class Bench:
    """One renderer at one size: batched forward and forward+backward callables."""

    def __init__(self, name, volume, camera, poses, n_samples):
        import torch  # noqa: PLC0415

        from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415

        self.name = name
        peer = "ours-trilinear" if name.startswith("ours") else (
            "diffdrr-trilinear" if name == "diffdrr" else name)
        self.batch = peers.build_batch_renderer(peer, volume, camera, n_samples)
        self.env = "torch" if name == "ours-torch" else ""
        self.poses = poses
        self.se3_exp = se3_exp
        w, h = camera.size_px
        v, u = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.weights = 1.0 + 0.5 * u + 0.25 * v

    def render(self, poses):
        os.environ["FLUOROREG_DRR_KERNELS"] = self.env
        return self.batch(poses)

    def forward(self):
        import torch  # noqa: PLC0415

        with torch.no_grad():
            return self.render(self.poses)

    def forward_backward(self):
        import torch  # noqa: PLC0415

        xi = torch.zeros(self.poses.shape[0], 6, requires_grad=True)
        img = self.render(self.se3_exp(xi) @ self.poses)
        (img * self.weights).mean().backward()
        return xi.grad


def _machine(threads: int) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch  # noqa: PLC0415

    try:
        import numba  # noqa: PLC0415
        nb = numba.__version__
    except ImportError:
        nb = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "numba": nb, "python": platform.python_version()}


def _versions() -> dict:
    out = {}
    for mod in ("diffdrr", "nanodrr"):
        try:
            from importlib.metadata import version  # noqa: PLC0415
            out[mod] = version(mod)
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def run(args) -> dict:
    import torch  # noqa: PLC0415

    from FluoroRegLib.drr import DRRVolume  # noqa: PLC0415
    from FluoroRegLib.simulate import downsample_ct  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    avail = peers.available_renderers(["ours", "ours-torch", "nanodrr-torch", "diffdrr-trilinear"])
    names = [n for n in args.renderers
             if avail.get("diffdrr-trilinear" if n == "diffdrr" else n) is None]
    missing = {n: avail.get("diffdrr-trilinear" if n == "diffdrr" else n)
               for n in args.renderers if n not in names}
    hu, m = peers.load_ct()
    voxel = float(np.linalg.norm(m[:3, :3], axis=0).min())
    code = peers.ours_fingerprint()
    out = {"machine": _machine(args.threads), "peers": _versions(), "ours_drr": code,
           "load_start": [round(x, 2) for x in os.getloadavg()], "missing": missing,
           "repeats": args.repeats, "cases": []}
    first_call = None
    for size in args.sizes:
        cam, ct_factor = training_setup(size, voxel)
        ct_factor = args.ct_factor or ct_factor
        hu_s, m_s = downsample_ct(hu, m, ct_factor) if ct_factor > 1 else (hu, m)
        volume = DRRVolume.from_hu(hu_s, m_s)
        k, j, i = volume.shape
        n_samples = args.n_samples or max(32, int(1.2 * max(i, j, k)))
        b = args.batch or BATCH.get(size, 4)
        poses = poses_around(volume, b)
        benches = {n: Bench(n, volume, cam, poses, n_samples) for n in names}
        if first_call is None and "ours" in benches:
            start = time.perf_counter()
            benches["ours"].forward()
            first_call = time.perf_counter() - start
            out["ours_first_call_s"] = first_call
        # agreement at pose 0 (rendered alone) against the torch path
        agree = {}
        ref = benches["ours-torch"].forward()[0].numpy() if "ours-torch" in benches else None
        for n, bench in benches.items():
            img = bench.forward()[0].numpy()
            if ref is not None:
                agree[n] = peers.image_difference(img, ref)
        # the same on the CT padded with air: removes the renderers' different conventions
        # within half a voxel of the volume's faces (see fluoro_drr_peers.pad_with_air)
        padded = peers.pad_with_air(volume)
        pad_img = {n: Bench(n, padded, cam, poses[:1], n_samples).forward()[0].numpy()
                   for n in names}
        if "ours-torch" in pad_img:
            for n, img in pad_img.items():
                agree[n + "@air_padded"] = peers.image_difference(img, pad_img["ours-torch"])
        if ref is not None and "ours" in benches:
            moved = torch.as_tensor(peers.perturbed_pose(poses[0].double().numpy()),
                                    dtype=torch.float32)
            agree["ours@moved"] = peers.image_difference(
                benches["ours"].render(moved[None])[0].detach().numpy(), ref)
        for mode in args.modes:
            times = {n: [] for n in names}
            cpu = {n: [] for n in names}
            for n in names:  # warm-up
                getattr(benches[n], mode)()
            for r in range(args.repeats):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    fn = getattr(benches[n], mode)
                    start, c0 = time.perf_counter(), time.process_time()
                    fn()
                    times[n].append(time.perf_counter() - start)
                    cpu[n].append(time.process_time() - c0)
            row = {"size": size, "batch": b, "mode": mode, "ct_factor": ct_factor,
                   "ct_shape": [k, j, i], "n_samples": n_samples, "renderers": {}}
            for n in names:
                t = times[n]
                rec = {"times_s": t, "median_s": statistics.median(t), "min_s": min(t),
                       "max_s": max(t), "drr_per_s": b / statistics.median(t),
                       "cpu_times_s": cpu[n], "cpu_median_s": statistics.median(cpu[n])}
                if "ours" in times and n != "ours":
                    ratios = [a / o for a, o in zip(t, times["ours"])]
                    rec["ratio_to_ours"] = {"median": statistics.median(ratios),
                                            "min": min(ratios), "max": max(ratios)}
                    rec["cpu_ratio_to_ours"] = (statistics.median(cpu[n])
                                                / max(statistics.median(cpu["ours"]), 1e-9))
                rec["agreement_vs_ours_torch"] = agree.get(n)
                rec["agreement_vs_ours_torch_air_padded"] = agree.get(n + "@air_padded")
                row["renderers"][n] = rec
            row["ours_moved_vs_ours_torch"] = agree.get("ours@moved")
            out["cases"].append(row)
            print(f"{size} px B={b} {mode}: " + ", ".join(
                f"{n} {row['renderers'][n]['drr_per_s']:.1f}/s"
                + (f" ({row['renderers'][n]['ratio_to_ours']['median']:.2f}x ours)"
                   if "ratio_to_ours" in row["renderers"][n] else "") for n in names), flush=True)
    out["load_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _num(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def write_markdown(res: dict, path: Path) -> None:
    mach = res["machine"]
    lines = [
        "# Batched DRR throughput (`benchmarks/drr_throughput.py`)",
        "",
        f"Shipped CT (`thorax_aorta_ct_cropped`), C-arm geometry of `fluoro_drr_peers.py`; "
        f"the training rule for CT block-average factor and samples per ray. "
        f"CPU: {mach['cpu']} ({mach['cores']} cores), {mach['threads']} thread(s) per renderer "
        f"(torch and numba), torch {mach['torch']}, numba {mach['numba']}; peers {res['peers']}. "
        f"Load average at start {res['load_start']}, at end {res['load_end']} "
        f"({'cores shared with other jobs' if max(res['load_start'][0], res['load_end'][0]) > 0.5 * mach['cores'] else 'quiet machine'}). "
        f"{res['repeats']} interleaved rounds after one warm-up; ours = `render_drr` "
        f"(drr.py {res['ours_drr']['sha256_12']}).",
        "",
        f"First call of ours in the process (numba compile or cache load + render): "
        f"{res.get('ours_first_call_s', float('nan')):.2f} s (not in the figures below).",
        "",
        "Agreement: max abs pixel difference / image max against `ours-torch` (the torch "
        "renderer the tests check) at pose 0, on the CT as shipped and with 2 voxels of air "
        "around it (`as shipped / air-padded`; the shipped CT is cut through the body, where "
        "the peers fade to zero over half a voxel and ours clamps to the border voxel).",
        "",
        "| size | B | CT (x factor) | samples | mode | renderer | DRRs/s (median) | spread (min-max s) | CPU s per call (median) | peer time / ours, same round (median, range) | peer CPU / ours CPU | max diff vs ours-torch (rel., as shipped / air-padded) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["cases"]:
        for n, rec in row["renderers"].items():
            ratio = rec.get("ratio_to_ours")
            rtxt = (f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"
                    if ratio else "1 (reference)")
            ag = rec.get("agreement_vs_ours_torch")
            ap = rec.get("agreement_vs_ours_torch_air_padded")
            atxt = (f"{ag['max_rel']:.1e}" if ag else "-") + (f" / {ap['max_rel']:.1e}" if ap else "")
            lines.append(
                f"| {row['size']} | {row['batch']} | {'x'.join(map(str, row['ct_shape']))} "
                f"(x{row['ct_factor']}) | {row['n_samples']} | {row['mode'].replace('_', '+')} | {n} | "
                f"{rec['drr_per_s']:.3g} | {rec['min_s']:.3f}-{rec['max_s']:.3f} | "
                f"{_num(rec.get('cpu_median_s'), '.3f')} | {rtxt} | "
                f"{_num(rec.get('cpu_ratio_to_ours'), '.2f', 'x') if ratio else '1'} | {atxt} |")
    moved = [r["ours_moved_vs_ours_torch"] for r in res["cases"] if r.get("ours_moved_vs_ours_torch")]
    if moved:
        lines += ["", "Sanity check of the agreement measure: ours at a pose moved by 2 mm / 1 degree "
                  f"differs from ours-torch by {min(m['max_rel'] for m in moved):.2f}-"
                  f"{max(m['max_rel'] for m in moved):.2f} (relative max), so the small "
                  "differences above are not an insensitive measure."]
    if res.get("missing"):
        lines += ["", f"Not measured (not importable): {res['missing']}"]
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=None, help=f"poses per call (default {BATCH})")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-samples", type=int, default=None, help="default: the training rule")
    ap.add_argument("--ct-factor", type=int, default=None, help="default: the training rule")
    ap.add_argument("--renderers", nargs="+", default=list(RENDERERS))
    ap.add_argument("--modes", nargs="+", default=["forward", "forward_backward"])
    ap.add_argument("--quick", action="store_true", help="64 and 128 px, 3 rounds")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = [64, 128]
        args.repeats = 3
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    res = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    write_markdown(res, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
