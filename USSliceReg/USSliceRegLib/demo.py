"""``surgreg demo`` part of USSliceReg: the shipped tracked spine-phantom sweep (real data).

A volume is reconstructed from the sweep without the test frames (odd frames 3..17; 7 and
9 in quick mode); the test frames (never used in that volume) start from their tracked
pose perturbed by up to 10 mm / 10 deg and are registered back (masked LNCC + LM, and
the SimpleITK baseline unless ``quick``). Written to ``out_dir``: ``us_overlays.png``
(frame, slice at the start, slice after registration), ``us_errors.png`` (per-frame error
and latency) and ``us_demo.csv``. With the bundled DeepRS2V model, the metrics add
``deep``: deep+lncc and lncc on the odd frames from 10-20 mm / 10-20 deg starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .bench import default_paths, run_bench
from .methods import make_method
from .plus_io import image_to_reference_chain, read_calibration, read_sequence
from .reconstruct import reconstruct_volume
from .pose_utils import perturb_about_point, random_perturbations
from .slicing import fan_mask


def _overlay_figure(path: Path, seq, chain, frames, fan, volume, ijk, mask, seed: int = 3):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fn = make_method("lncc", volume, ijk, seq.frame_shape, fan, volume_mask=mask)
    reg = fn.registrar
    k_of = {int(i): k for k, i in enumerate(chain.indices)}
    twists = random_perturbations(len(frames), 10.0, 10.0, seed=seed)
    fig, axes = plt.subplots(len(frames), 3, figsize=(10, 3.0 * len(frames)), squeeze=False)
    for row, i in enumerate(frames):
        truth = chain.image_to_reference[k_of[i]]
        start = perturb_about_point(truth, twists[row], reg.fan_centre_px)
        res = fn(seq.images[i][None], start[None])[0]
        frame = seq.images[i].astype(float)
        for col, (pose, title) in enumerate(((None, f"frame {i} (held out)"),
                                             (start, f"start, LNCC {res.lncc_start:.2f}"),
                                             (res.image_to_reference,
                                              f"registered, LNCC {res.lncc:.2f}"))):
            ax = axes[row, col]
            ax.imshow(frame, cmap="gray")
            if pose is not None:
                vals, inside = reg.resample_volume(pose[None], step=4)
                sl = np.where(inside[0].numpy(), vals[0].numpy(), np.nan)
                h, w = sl.shape
                ax.imshow(sl, cmap="magma", alpha=0.45, extent=(-0.5, w * 4 - 0.5, h * 4 - 0.5,
                                                                -0.5))
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle("USSliceReg: held-out frames (grey) and volume slice (colour)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def run_demo(out_dir: Path, quick: bool = False) -> dict:
    """Run the demo into ``out_dir``; returns a metrics dict (errors, ms per frame)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seq_path, cal_path, _ = default_paths()
    seq = read_sequence(seq_path)
    chain = image_to_reference_chain(seq, read_calibration(cal_path))
    usable = [int(i) for i in chain.indices]
    test = usable[3:-2:2] if not quick else usable[7:10:2]
    methods = ("lncc",) if quick else ("lncc", "sitk")
    summary = run_bench(seq_path, cal_path, holdout="alternate", frames=test, max_mm=10.0,
                        max_deg=10.0, seed=0, methods=methods, out_dir=out_dir)
    # Overlay pictures on a volume built without the test frames.
    train = [i for i in usable if i not in set(test)]
    fan = fan_mask(seq.images[chain.indices])
    k_of = {i: k for k, i in enumerate(usable)}
    rec = reconstruct_volume(seq.images[train], chain.image_to_reference[[k_of[i] for i in train]],
                             fan, pixel_step=3, fill_radius=4)
    _overlay_figure(out_dir / "us_overlays.png", seq, chain, test[:1 if quick else 3], fan,
                    rec.array, rec.ijk_to_reference, rec.filled)
    from .scene3d import demo_picture_from_sweep  # noqa: PLC0415

    scene3d = demo_picture_from_sweep(out_dir / "us_3d.png", seq, chain, test[0], fan, rec)
    (out_dir / "us_bench.csv").rename(out_dir / "us_demo.csv")
    (out_dir / "us_bench.png").rename(out_dir / "us_errors.png")
    metrics = {"data": "real: PLUS spine phantom tracked sweep (21 frames)",
               "protocol": "volume reconstructed without the test frames; test frames "
                           "registered from starts up to 10 mm / 10 deg",
               "frames": len(test) - len(summary["skipped_uncovered_frames"]),
               "skipped_frames_outside_volume": sorted(summary["skipped_uncovered_frames"]),
               "seconds": round(time.perf_counter() - t0, 1)}
    metrics["kernel_warmup_s"] = summary.get("kernel_warmup_s")
    metrics["timing"] = summary.get("timing_note")
    metrics["start"] = summary.get("start", {})
    metrics["scene3d"] = scene3d
    for m, s in summary["methods"].items():
        metrics[m] = {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}
    if "speedup_lncc_vs_sitk" in summary:
        metrics["speedup_lncc_vs_sitk"] = round(summary["speedup_lncc_vs_sitk"], 2)
    metrics["deep"] = _deep_demo(quick)
    return metrics


def _deep_demo(quick: bool) -> dict:
    """DeepRS2V (the bundled model, trained on the sweep's even frames only) on the odd
    held-out frames from far starts (10-20 mm / 10-20 deg), next to LNCC alone."""
    from SurgicalReg2D3DLib.errors import InputError  # noqa: PLC0415

    from .learned.benchmark import RANGES, run_deep_bench  # noqa: PLC0415

    try:
        res = run_deep_bench(methods=("deep+lncc", "lncc") if quick else
                             ("deep", "deep+lncc", "lncc"), ranges={"far": RANGES["far"]},
                             frames=[7, 9] if quick else None, seeds=[0])
    except InputError as exc:  # no bundled model for this volume
        return {"status": f"not run: {exc}"}
    return {"protocol": "volume from the even frames, odd frames from starts 10-20 mm / "
                        "10-20 deg; model trained on the even frames only",
            **{m: {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()
                   if k != "mean_abs_axis"}
               for m, s in res["summary"]["far"].items()}}
