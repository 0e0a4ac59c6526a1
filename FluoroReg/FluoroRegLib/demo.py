"""FluoroReg part of ``surgreg demo``: register the shipped CT to simulated X-rays.

The CT is real (Resources/SampleData/ct, TotalSegmentator sample, see its licence); the
X-ray images are SYNTHETIC: DRRs of that CT at a random known pose with simulated
detector effects. The demo starts from a pose 10-20 mm (mTRE) away, registers with NCC +
Levenberg-Marquardt (one view, then two views AP + lateral) and writes:

- ``fluoro_overlay.png``: X-ray, DRR at the start and at the result, blended overlays;
- ``fluoro_convergence.png``: 1 - NCC per iteration and pyramid level;
- the returned metrics dict (initial/final mTRE and the other error measures).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SAMPLE_CT = Path(__file__).resolve().parents[2] / "Resources" / "SampleData" / "ct" / \
    "thorax_aorta_ct_cropped.nii.gz"


def _overlay(ax, xray, drr, title):
    def norm(a):
        a = np.asarray(a, float)
        return (a - a.min()) / max(a.max() - a.min(), 1e-12)

    rgb = np.stack([norm(xray), norm(drr), norm(xray)], -1)  # X-ray magenta, DRR green
    ax.imshow(rgb)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def run_demo(out_dir: Path, quick: bool = False) -> dict:
    """Run the demo into ``out_dir``; returns a metrics dict (all on synthetic X-rays)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from .drr import DRRVolume, render_drr  # noqa: PLC0415
    from .geometry import make_camera  # noqa: PLC0415
    from .logic import register_arrays  # noqa: PLC0415
    from .simulate import downsample_ct, read_ct, sample_landmarks, simulate_case  # noqa: PLC0415

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    hu, m = read_ct(SAMPLE_CT)
    hu, m = downsample_ct(hu, m, 2)  # 3 mm voxels keep the demo fast on a CPU
    volume = DRRVolume.from_hu(hu, m)
    size = 48 if quick else 96
    camera = make_camera(1000.0, (240.0 / size, 240.0 / size), (size, size))
    landmarks = sample_landmarks(hu, m, 20, seed=0)
    case = simulate_case(volume, camera, np.random.default_rng(7), landmarks,
                         views=("AP", "LAT"), mtre_range_mm=(10, 20), rotation_range_deg=(5, 10))
    options = {"levels": (2, 1), "iterations": 8,
               "n_samples": 64 if quick else 96}
    from .drr_kernels import warm_up  # noqa: PLC0415

    warm = warm_up()  # first use (numba compile or cache load), reported apart from time_s
    results = {}
    for n_views in ((1,) if quick else (1, 2)):
        res = register_arrays(hu, m, case.images[:n_views], case.cameras[:n_views],
                              case.init_ct_to_camera[:n_views], method="ncc",
                              landmarks_ras=landmarks, true_ct_to_camera=case.true_ct_to_camera[0],
                              **options)
        results[n_views] = res
    best = results[max(results)]

    with torch.no_grad():
        drr_init = render_drr(volume, camera, case.init_ct_to_camera[0])[0].numpy()
        drr_final = render_drr(volume, camera, best.ct_to_camera)[0].numpy()
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    axes[0].imshow(case.images[0], cmap="gray")
    axes[0].set_title("simulated X-ray (synthetic)", fontsize=9)
    axes[0].axis("off")
    axes[1].imshow(drr_final, cmap="gray")
    axes[1].set_title("DRR at the result", fontsize=9)
    axes[1].axis("off")
    _overlay(axes[2], case.images[0], drr_init, f"start: mTRE {case.initial_mtre_mm:.1f} mm")
    _overlay(axes[3], case.images[0], drr_final,
             f"result: mTRE {best.metrics['mtre_mm']:.2f} mm")
    fig.tight_layout()
    fig.savefig(out_dir / "fluoro_overlay.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n_views, res in results.items():
        ax.plot([h["loss"] for h in res.history], marker=".", label=f"{n_views} view(s)")
    ax.set_xlabel("iteration (all pyramid levels)")
    ax.set_ylabel("1 - NCC")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("FluoroReg convergence (synthetic X-rays)")
    fig.tight_layout()
    fig.savefig(out_dir / "fluoro_convergence.png", dpi=100)
    plt.close(fig)

    from .scene3d import demo_picture  # noqa: PLC0415

    n_best = max(results)
    demo_picture(out_dir / "fluoro_3d.png", hu, m, case.images[:n_best], case.cameras[:n_best],
                 best.views_ct_to_camera[:n_best])
    metrics = {"synthetic_xrays": True, "ct": SAMPLE_CT.name, "image_px": size,
               "initial_mtre_mm": case.initial_mtre_mm,
               "kernel_warmup_s": round(float(warm["seconds"]), 3),
               "timing_note": "time_s per registration excludes the DRR kernels' first use "
                              "(kernel_warmup_s: numba compile or cache load, once per "
                              "process)"}
    for n_views, res in results.items():
        key = f"{n_views}view"
        metrics[key] = {k: float(v) for k, v in res.metrics.items()}
        metrics[key]["similarity"] = res.similarity
        metrics[key]["time_s"] = res.time_s
    metrics.update(_learned_demo(quick))
    metrics["total_time_s"] = time.perf_counter() - start
    return metrics


def _learned_demo(quick: bool) -> dict:
    """Register from the nominal view with the bundled pose regressor (when present):
    a synthetic case in the model's range, regressor start, ``ppc`` refinement (quick:
    the regressor alone)."""
    from .learned.bench import make_cases  # noqa: PLC0415
    from .learned.register import register_with_model  # noqa: PLC0415
    from .simulate import downsample_ct, read_ct  # noqa: PLC0415

    model = Path(__file__).resolve().parent / "weights" / "fluoro_pose_regressor_v1.pt"
    if not model.is_file():
        return {"learned": "no bundled model"}
    hu, m = read_ct(SAMPLE_CT)
    from .learned.model_file import load_model_file  # noqa: PLC0415

    data = load_model_file(model)
    case = make_cases(hu, m, data, 1, seed=7)[0]
    hu2, m2 = downsample_ct(hu, m, 2)
    res = register_with_model(hu, m, case["images"][:1], [case["camera"]], data,
                              method="regressor" if quick else "ppc", refine_hu=hu2,
                              refine_ijk_to_ras=m2, landmarks_ras=case["landmarks"],
                              true_ct_to_camera=case["truth"][0])
    return {"learned_from_nominal_1view": {
        "method": res.method, "nominal_mtre_mm": _mtre(case["nominal"][0], case),
        "regressor_start_mtre_mm": float(res.metrics["start_mtre_mm"]),
        "final_mtre_mm": float(res.metrics["mtre_mm"]), "time_s": res.time_s}}


def _mtre(pose, case) -> float:
    from .simulate import mtre_np  # noqa: PLC0415

    return mtre_np(pose, case["truth"][0], case["landmarks"])
