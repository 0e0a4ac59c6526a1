"""Benchmark of registration from the C-arm's nominal view (SYNTHETIC X-rays).

Cases (:func:`make_cases`): for case ``i`` of ``seed`` (``simulate.case_generators``),
the true pose of view 1 is ``Delta @ nominal`` with ``Delta`` drawn exactly as the
training poses are (uniform per camera-frame component in the model's range, see
:mod:`.sampling`), so the start (the nominal view) is up to the range away from the
truth; view 2 is at the fixed C-arm motion AP -> lateral about the CT centre (the same
for truth and start). Images: exact Siddon DRRs of the full-resolution CT with simulated
detector effects (``simulate.xray_effects``: Poisson noise at 2e4 photons, electronic
noise, blur); the refinements use the CT block-averaged x2 and trilinear DRRs.

Methods, all from the nominal view: ``nominal`` (no registration: the start error),
``regressor`` (the regressor alone), classic refinements started at the nominal view
(default ``ppc``: the capture-range gap), and ``regressor+<method>`` (``ppc``, and the
hybrid ``ppc+gradncc``).
Per case: mTRE (20 landmarks), mPE, time; summary: SMSR (mTRE < 1 mm), median / p75 /
p95 mTRE, the regressor's start error distribution.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DEFAULT_METHODS = ("nominal", "regressor", "ppc", "regressor+ppc", "regressor+ppc+gradncc")


def lateral_motion(center_ras, nominal: np.ndarray) -> np.ndarray:
    """``camera0_to_view1``: the C-arm motion AP -> lateral about the CT centre at the
    nominal view's source distance."""
    from ..geometry import look_at_pose  # noqa: PLC0415

    c = (np.asarray(nominal) @ np.r_[center_ras, 1.0])[:3]
    d = float(np.linalg.norm(c))
    ap = look_at_pose(center_ras, "AP", d)
    lat = look_at_pose(center_ras, "LAT", d)
    return lat @ np.linalg.inv(ap)


def draw_true_pose(pose_rng, pose_range, nominal: np.ndarray, center_ras):
    """``(truth, x)``: a true ``ct_to_camera`` ``Delta @ nominal`` drawn from ``pose_rng``
    (numpy) in ``pose_range`` (the training convention of :mod:`.sampling`: rotation vector
    and translation uniform per camera-frame component, rotation about the CT centre), and
    ``x`` = that rotation vector (rad) and translation (mm), (6,)."""
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    c = (nominal @ np.r_[center_ras, 1.0])[:3]
    half = np.r_[np.deg2rad(pose_range.rotation_deg), pose_range.translation_mm]
    x = pose_rng.uniform(-1, 1, 6) * half
    delta = np.eye(4)
    delta[:3, :3] = Rotation.from_rotvec(x[:3]).as_matrix()
    delta[:3, 3] = c - delta[:3, :3] @ c + x[3:]
    return delta @ nominal, x


def make_cases(hu, m, data: dict, n_cases: int, seed: int = 1, photons: float = 2e4):
    """Synthetic cases in the model's range (see the module docstring)."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.cameras import XRayCamera  # noqa: PLC0415

    from ..drr import DRRVolume, render_drr  # noqa: PLC0415
    from ..simulate import case_generators, sample_landmarks, xray_effects  # noqa: PLC0415
    from .sampling import PoseRange  # noqa: PLC0415

    camera = XRayCamera.from_json(data["geometry"])
    nominal = np.asarray(data["nominal_ct_to_camera"], float)
    rng_range = PoseRange.from_dict(data["range"])
    volume = DRRVolume.from_hu(hu, m)
    center = volume.center_ras()
    rel = lateral_motion(center, nominal)
    landmarks = sample_landmarks(hu, m, 20, seed=seed)
    cases = []
    for i in range(int(n_cases)):
        pose_rng, noise_rng = case_generators(seed, i)
        truth, x = draw_true_pose(pose_rng, rng_range, nominal, center)
        images = []
        with torch.no_grad():
            for pose in (truth, rel @ truth):
                L = render_drr(volume, camera, pose, method="siddon")[0].cpu().numpy()
                images.append(xray_effects(L, noise_rng, photons=photons))
        cases.append({"index": i, "images": images, "camera": camera, "truth": [truth, rel @ truth],
                      "nominal": [nominal, rel @ nominal], "landmarks": landmarks,
                      "rotation_deg": float(np.rad2deg(np.linalg.norm(x[:3]))),
                      "translation_mm": float(np.linalg.norm(x[3:]))})
    return cases


def bench_inputs(model_path, ct_path=None):
    """What the learned benchmark scripts start from: ``(hu, mask, model data, hu at half
    resolution, mask at half resolution)`` for the shipped cropped thorax CT (or
    ``ct_path``) and the model file ``model_path``."""
    from SurgicalReg2D3DLib.paths import sample_data_path  # noqa: PLC0415

    from ..simulate import downsample_ct, read_ct  # noqa: PLC0415
    from .model_file import load_model_file  # noqa: PLC0415

    hu, m = read_ct(str(ct_path or sample_data_path("ct/thorax_aorta_ct_cropped.nii.gz")))
    hu2, m2 = downsample_ct(hu, m, 2)
    return hu, m, load_model_file(model_path), hu2, m2


def run_learned_bench(ct_path, model_path, out_dir: Path, n_cases: int = 20, seed: int = 1,
                      views: Sequence[int] = (1, 2), methods: Optional[Sequence[str]] = None,
                      threshold_mm: float = 1.0, print_rows: bool = True,
                      on_update=None) -> dict:
    """Run the benchmark; writes ``learned_bench.csv`` and ``learned_summary.json`` into
    ``out_dir`` (after every case) and returns the summary; ``on_update(summary)`` is
    called after every case."""
    from ..logic import register_arrays  # noqa: PLC0415
    from ..refine import pose_errors  # noqa: PLC0415
    from ..simulate import downsample_ct, read_ct  # noqa: PLC0415
    from .model_file import load_model_file  # noqa: PLC0415
    from .register import load_regressor, register_with_model  # noqa: PLC0415

    methods = list(methods or DEFAULT_METHODS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_model_file(model_path)
    hu, m = read_ct(ct_path)
    data, _ = load_regressor(data, hu, m, None)
    t0 = time.perf_counter()
    cases = make_cases(hu, m, data, n_cases, seed)
    t_cases = time.perf_counter() - t0
    hu2, m2 = downsample_ct(hu, m, 2)
    rows = []
    for case in cases:
        for nv in views:
            imgs, cams = case["images"][:nv], [case["camera"]] * nv
            truth, noms, lm = case["truth"][0], case["nominal"][:nv], case["landmarks"]
            for method in methods:
                t1 = time.perf_counter()
                try:
                    if method == "nominal":
                        est, start_err = noms[0], None
                        metrics = pose_errors(est, truth, lm, cams[0])
                    elif method == "regressor" or method.startswith("regressor+"):
                        refine = method.split("+", 1)[1] if "+" in method else "regressor"
                        res = register_with_model(hu, m, imgs, cams, data, method=refine,
                                                  nominal_views=noms, refine_hu=hu2,
                                                  refine_ijk_to_ras=m2, landmarks_ras=lm,
                                                  true_ct_to_camera=truth)
                        metrics, start_err = res.metrics, res.metrics.get("start_mtre_mm")
                    else:
                        res = register_arrays(hu2, m2, imgs, cams, noms, method=method,
                                              landmarks_ras=lm, true_ct_to_camera=truth)
                        metrics, start_err = res.metrics, None
                except Exception as exc:  # noqa: BLE001  (a crash counts as a failure)
                    metrics = {"mtre_mm": float("inf"), "mpe_mm": float("inf"),
                               "mpe_px": float("inf"), "error": str(exc)[:100]}
                    start_err = None
                dt = time.perf_counter() - t1
                row = {"method": method, "views": nv, "case": case["index"],
                       "true_rotation_deg": case["rotation_deg"],
                       "true_translation_mm": case["translation_mm"],
                       "initial_mtre_mm": pose_errors(noms[0], truth, lm, cams[0])["mtre_mm"],
                       "start_mtre_mm": start_err, "mtre_mm": float(metrics["mtre_mm"]),
                       "mpe_mm": float(metrics.get("mpe_mm", float("nan"))),
                       "mpe_px": float(metrics.get("mpe_px", float("nan"))),
                       "time_s": dt, "load": os.getloadavg()[0]}
                rows.append(row)
                if print_rows:
                    print(f"[learned bench] {method} {nv}-view case {case['index']}: "
                          f"{row['initial_mtre_mm']:.1f} -> {row['mtre_mm']:.2f} mm "
                          f"({dt:.1f} s, load {row['load']:.1f})", flush=True)
        _write(rows, out_dir, data, model_path, n_cases, seed, views, methods, threshold_mm,
               t_cases, on_update)
    return _write(rows, out_dir, data, model_path, n_cases, seed, views, methods, threshold_mm,
                  t_cases, None)


def _write(rows, out_dir, data, model_path, n_cases, seed, views, methods, threshold_mm,
           t_cases, on_update):
    """Write the CSV and the summary of the rows so far (after every case: a run cut off
    still leaves its results)."""
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.metrics import summarize  # noqa: PLC0415

    with open(out_dir / "learned_bench.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    tr = data["training"]
    summary = {"synthetic": True, "threshold_mm": threshold_mm, "n_cases": len({r["case"] for r in rows}), "n_cases_planned": int(n_cases),
               "seed": int(seed), "model": str(model_path), "range": data["range"],
               "training": {"elapsed_s": tr.get("elapsed_s"), "steps": tr.get("steps"),
                            "images": tr.get("images"), "command": tr.get("command"),
                            "seed": tr.get("seed"), "val_after": tr.get("val_after")},
               "case_generation_s": t_cases, "torch_threads": torch.get_num_threads(),
               "results": []}
    for nv in views:
        for method in methods:
            sel = [r for r in rows if r["method"] == method and r["views"] == nv]
            if not sel:
                continue
            s = summarize([r["mtre_mm"] for r in sel], threshold=threshold_mm)
            s = {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in s.items()}
            s.update(method=method, views=nv,
                     mpe_mm_median=float(np.median([r["mpe_mm"] for r in sel])),
                     time_s=float(np.mean([r["time_s"] for r in sel])),
                     time_s_max=float(np.max([r["time_s"] for r in sel])),
                     load_mean=float(np.mean([r["load"] for r in sel])),
                     failed=[r["case"] for r in sel if not r["mtre_mm"] < threshold_mm])
            starts = [r["start_mtre_mm"] for r in sel if r["start_mtre_mm"] is not None]
            if starts:
                s["start_mtre"] = {"median": float(np.median(starts)),
                                   "p75": float(np.percentile(starts, 75)),
                                   "p95": float(np.percentile(starts, 95)),
                                   "max": float(np.max(starts))}
            summary["results"].append(s)
    (out_dir / "learned_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if on_update is not None:
        on_update(summary)
    return summary


def print_summary(summary: dict) -> None:
    print(f"\nSMSR = share of cases with 3D mTRE < {summary['threshold_mm']} mm (synthetic cases, "
          "all started from the nominal view)")
    print(f"{'method':22s} {'views':>5s} {'n':>4s} {'SMSR%':>7s} {'median':>8s} {'p75':>8s} "
          f"{'p95':>8s} {'mPE mm':>8s} {'s/case':>7s}")
    for s in summary["results"]:
        print(f"{s['method']:22s} {s['views']:5d} {int(s['n']):4d} {s['smsr']:7.1f} "
              f"{s['median']:8.3f} {s['p75']:8.3f} {s['p95']:8.3f} {s['mpe_mm_median']:8.3f} "
              f"{s['time_s']:7.2f}")
