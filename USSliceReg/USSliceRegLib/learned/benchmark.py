"""Benchmark of the learned methods against lncc and sitk (``surgreg us bench --methods deep
deep+lncc lncc sitk``, ``benchmarks/us_deep_bench.py``).

Protocol (same frames, same starts for every method):

1. Volume: reconstructed from the *even* frames of the tracked sweep (as ``run_bench``'s
   ``holdout="alternate"``); the test frames are the odd ones (never in the volume, and
   never used to train a model for it: ``surgreg us train --frames`` even frames only).
   A test frame counts only if at least ``bench.MIN_TRUTH_COVERAGE`` of its fan at the true
   pose lies in the volume's data (as ``run_bench``).
2. Starts, per range ``(min_mm, max_mm, min_deg, max_deg)``: the tracked (true) pose moved
   by a random rigid motion about the fan centre: the centre moves ``U[min_mm, max_mm]``
   in a random direction and the frame turns ``U[min_deg, max_deg]`` about a random axis
   (:func:`.data.random_rigid`). A start whose fan overlaps the volume's data by less than
   ``min_overlap`` is redrawn (up to 20 times; the redraws are the same for every method).
3. Errors (:func:`..register.pose_errors`): rotation angle and fan-centre displacement;
   per axis, the displacement and the rotation vector of the error in the true pose's fan
   frame (x = lateral / image columns, y = axial / depth, z = elevation / plane normal).
4. Time per frame: wall time of the method's call for that frame, and its CPU time
   (``time.process_time``; steadier than the wall time on a shared machine); the volume
   preparation is reported apart, the first call (compilation, allocations) is a
   warm-up that is not counted.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel

from ..bench import MIN_TRUTH_COVERAGE, _Sweep, default_paths, make_bench_method
from ..reconstruct import reconstruct_volume
from ..register import RegistrationConfig, pose_errors
from .data import random_rigid
from .geometry import fan_to_reference

RANGES = {"near": (0.0, 10.0, 0.0, 10.0), "far": (10.0, 20.0, 10.0, 20.0)}


def axis_errors(estimate, truth, centre_px) -> Tuple[np.ndarray, np.ndarray]:
    """Translation ``(3,)`` mm and rotation vector ``(3,)`` deg of the error
    ``estimate @ inv(truth)`` in the true pose's fan frame."""
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    E = np.asarray(estimate, float) @ np.linalg.inv(np.asarray(truth, float))
    Ft = fan_to_reference(truth, centre_px)
    p = np.asarray(truth, float) @ centre_px
    dp = (E @ p - p)[:3]
    rv = np.degrees(Rotation.from_matrix(E[:3, :3]).as_rotvec())
    return Ft[:3, :3].T @ dp, Ft[:3, :3].T @ rv


def run_deep_bench(methods: Sequence[str] = ("deep", "deep+lncc", "lncc", "sitk"),
                   ranges: Optional[Dict[str, Tuple[float, float, float, float]]] = None,
                   seeds: Sequence[int] = (0,), frames: Optional[Sequence[int]] = None,
                   model=None, force: bool = False,
                   config: Optional[RegistrationConfig] = None, sequence_path=None,
                   calibration_path=None, recon_pixel_step: int = 3, cancel=None,
                   verbose: bool = False) -> dict:
    """Run the protocol above; returns ``{"rows": [...], "summary": {range: {method:
    {...}}}, ...}``."""
    ranges = dict(RANGES if ranges is None else ranges)
    for name, (a, b, c, d) in ranges.items():
        if not (0 <= a <= b and 0 <= c <= d <= 90):
            raise InputError(f"range {name}: need 0 <= min <= max (deg <= 90), got "
                             f"{(a, b, c, d)}")
    d_seq, d_cal, _ = default_paths()
    sweep = _Sweep(sequence_path or d_seq, calibration_path or d_cal)
    seq, truth, usable, fan, centre_px = (sweep.seq, sweep.truth, sweep.usable, sweep.fan,
                                          sweep.centre_px)
    train = usable[0::2]
    test = [i for i in usable[1::2] if frames is None or i in {int(f) for f in frames}]
    if not test:
        raise InputError("frames: no odd (held-out) frame among the requested ones")
    rec = reconstruct_volume(seq.images[train], np.stack([truth[i] for i in train]), fan,
                             pixel_step=recon_pixel_step, fill_radius=4)
    built, prep = {}, {}
    for m in methods:
        t = time.perf_counter()
        kw = {"model": model, "force": force} if m.startswith("deep") else {}
        built[m] = make_bench_method(m, rec.array, rec.ijk_to_reference, seq.frame_shape,
                                     fan, volume_mask=rec.filled, config=config, **kw)
        prep[m] = time.perf_counter() - t
    checker = next(iter(built.values())).registrar
    cover = checker.overlap(np.stack([truth[i] for i in test]))
    skipped = {i: float(c) for i, c in zip(test, cover) if c < MIN_TRUTH_COVERAGE}
    test = [i for i in test if i not in skipped]
    if not test:
        raise InputError(f"frames: no held-out frame lies in the volume's data "
                         f"(skipped {sorted(skipped)})")
    # Warm-up (compiled kernels, first-call allocations), not timed.
    for fn in built.values():
        fn(seq.images[test[0]][None], truth[test[0]][None], indices=[test[0]])
    load = [os.getloadavg()[0]]
    rows: List[dict] = []
    for rname, (mn, mx, dmn, dmx) in ranges.items():
        for sd in seeds:
            rng = np.random.default_rng([int(sd), int(1000 * mx), int(1000 * dmx)])
            for i in test:
                check_cancel(cancel, "US deep benchmark")
                start = None
                for _ in range(21):
                    P = random_rigid(1, mx, dmx, rng, mn, dmn)[0]
                    c = (truth[i] @ centre_px)[:3]
                    P[:3, 3] = c - P[:3, :3] @ c + P[:3, 3]
                    cand = P @ truth[i]
                    if checker.overlap(cand[None])[0] >= checker.config.min_overlap:
                        start = cand
                        break
                if start is None:
                    continue
                r0, t0 = pose_errors(start, truth[i], centre_px)
                for m, fn in built.items():
                    t, tc = time.perf_counter(), time.process_time()
                    res = fn(seq.images[i][None], start[None], indices=[i])[0]
                    ms = 1000 * (time.perf_counter() - t)
                    cpu_ms = 1000 * (time.process_time() - tc)
                    r1, t1 = pose_errors(res.image_to_reference, truth[i], centre_px)
                    ta, ra = axis_errors(res.image_to_reference, truth[i], centre_px)
                    q = getattr(res, "quality", None)
                    rows.append({"range": rname, "seed": int(sd), "frame": i, "method": m,
                                 "start_translation_mm": t0, "start_rotation_deg": r0,
                                 "translation_mm": t1, "rotation_deg": r1,
                                 "tx_mm": float(ta[0]), "ty_mm": float(ta[1]),
                                 "tz_mm": float(ta[2]), "rx_deg": float(ra[0]),
                                 "ry_deg": float(ra[1]), "rz_deg": float(ra[2]),
                                 "ms": ms, "cpu_ms": cpu_ms, "lncc": float(res.lncc),
                                 "verdict": q.verdict if q is not None else None})
                    if verbose:
                        print(f"{rname} seed {sd} frame {i:3d} {m:9s} start {t0:5.2f} mm "
                              f"{r0:5.2f} deg -> {t1:6.2f} mm {r1:6.2f} deg {ms:7.1f} ms",
                              flush=True)
    if not rows:
        raise InputError("frames: no test frame could be registered")
    load.append(os.getloadavg()[0])
    return {"rows": rows, "summary": summarise_deep(rows), "frames": test,
            "load_average_1min_start_end": load, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "train_frames": train, "skipped_uncovered_frames": skipped,
            "ranges": ranges, "seeds": [int(s) for s in seeds],
            "volume_preparation_s": prep}


def summarise_deep(rows: List[dict]) -> dict:
    out: dict = {}
    for rname in dict.fromkeys(r["range"] for r in rows):
        out[rname] = {}
        for m in dict.fromkeys(r["method"] for r in rows):
            rr = [r for r in rows if r["range"] == rname and r["method"] == m]
            if not rr:
                continue
            t = np.array([r["translation_mm"] for r in rr])
            a = np.array([r["rotation_deg"] for r in rr])
            ms = np.array([r["ms"] for r in rr])
            ax = {k: float(np.mean(np.abs([r[k] for r in rr])))
                  for k in ("tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg")}
            out[rname][m] = {
                "n": len(rr),
                "mean_translation_mm": float(t.mean()), "median_translation_mm": float(np.median(t)),
                "mean_rotation_deg": float(a.mean()), "median_rotation_deg": float(np.median(a)),
                "mean_abs_axis": ax,
                "success_2mm_2deg": float(np.mean((t < 2) & (a < 2))),
                "success_10mm": float(np.mean(t < 10)),
                "mean_ms": float(ms.mean()), "median_ms": float(np.median(ms)),
                "median_cpu_ms": float(np.median([r["cpu_ms"] for r in rr])),
                "start_mean_translation_mm": float(np.mean([r["start_translation_mm"] for r in rr])),
                "start_mean_rotation_deg": float(np.mean([r["start_rotation_deg"] for r in rr])),
            }
    return out


def summary_markdown(result: dict) -> str:
    """The results table (one row per range and method)."""
    lines = ["| starts | method | n | mean / median translation (mm) | mean / median rotation "
             "(deg) | mean abs x / y / z (mm) | mean abs rx / ry / rz (deg) | < 2 mm & 2 deg |"
             " < 10 mm | ms/frame mean / median (CPU median) |", "|" + "---|" * 10]
    for rname, ms in result["summary"].items():
        for m, s in ms.items():
            ax = s["mean_abs_axis"]
            lines.append(
                f"| {rname} | {m} | {s['n']} | {s['mean_translation_mm']:.2f} / "
                f"{s['median_translation_mm']:.2f} | {s['mean_rotation_deg']:.2f} / "
                f"{s['median_rotation_deg']:.2f} | {ax['tx_mm']:.2f} / {ax['ty_mm']:.2f} / "
                f"{ax['tz_mm']:.2f} | {ax['rx_deg']:.2f} / {ax['ry_deg']:.2f} / "
                f"{ax['rz_deg']:.2f} | {100 * s['success_2mm_2deg']:.0f}% | "
                f"{100 * s['success_10mm']:.0f}% | {s['mean_ms']:.1f} / {s['median_ms']:.1f} "
                f"({s['median_cpu_ms']:.1f}) |")
    return "\n".join(lines)
