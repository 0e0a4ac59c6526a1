"""Accuracy / speed benchmark of the slice-to-volume methods on a tracked sweep.

Protocol (``surgreg us bench``, ``benchmarks/us_bench.py``, the demo):

1. Ground truth = the tracked chain ``image_to_reference`` of each test frame (the same
   poses PLUS used to reconstruct the shipped volume; they are consistent with it to
   about 0.98 NCC).
2. Volume: ``holdout="loo"`` reconstructs, for every test frame, a volume from all the
   *other* frames (pixel nearest neighbour, :mod:`reconstruct`), so the test frame never
   contributed to the volume it is registered to (honest); ``"alternate"`` reconstructs
   once from the even frames and tests odd frames (the odd-frames protocol of issue #12;
   :func:`quality_bench.run_odd_frames` runs it with starts 3-10 mm / 3-10 deg, several
   seeds and the trust value, ``benchmarks/us_quality.py``); ``"none"`` uses the given
   volume (e.g. PLUS's reconstruction from all frames: optimistic, labelled as such).
3. Start = ground truth perturbed by a random rigid motion about the fan centre:
   rotation angle uniform in [0, max_deg] about a random axis, translation length uniform
   in [0, max_mm] along a random direction (fixed seed). Starts whose fan leaves the
   volume's data (< 10 % overlap) are redrawn (up to 20 times), then the frame is dropped.
   A test frame counts only if at least :data:`MIN_TRUTH_COVERAGE` of its fan, at the true
   pose, lies in the volume's data; the others are skipped and listed: a held-out frame in
   a gap of the sweep wider than the reconstruction's hole filling (frames 11-14 of the
   spine sweep, 4-5 mm between their neighbours, 2 mm filling) has nothing to register to
   there, and its ground truth cannot be checked.
   ``seeds`` (several) gives every frame one start per seed, so that a frame whose start
   happens to fall in a rotation local minimum does not decide the figure; the pooled
   figures and the per-seed means are reported.
4. Each method registers each frame alone (the live use case); the time per frame is the
   wall time of that call, not counting volume preparation (reported apart). With
   ``repeats > 1`` the call is repeated and the frame's median (and minimum) is kept: on a
   shared machine the median and minimum are steadier than one run.
5. Errors (:func:`pose_utils.pose_errors`): rotation angle of ``estimate @ inv(truth)`` and
   displacement of the fan centre, in mm.

:func:`run_stream_bench` measures the live (temporal) case: a volume from the even frames,
the odd frames streamed in order with one constant tracking error (a simulated patient
shift); the first frame is registered with the full search, the next ones with
``tracking=True`` from the previous frame's correction.

:func:`run_throughput_bench` measures offline sweep throughput (``surgreg us register
--no-temporal``: independent frames registered in batches), not live latency: one volume
from the even frames (a leave-one-out volume per frame cannot be batched), the odd
held-out frames from the latency table's starts, several batch sizes, and the SimpleITK
baseline one frame at a time on the same volume, frames and starts.
"""

from __future__ import annotations

import csv
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from .config import RegistrationConfig
from .methods import make_method
from .warmup import warm_up_kernels
from .plus_io import image_to_reference_chain, read_calibration, read_reference_volume, \
    read_sequence
from .reconstruct import reconstruct_volume
from .pose_utils import perturb_about_point, pose_errors, random_perturbations
from .slicing import fan_mask

#: Fraction of a test frame's fan, at its true pose, that must lie in the volume's data
#: for the frame to count (all three protocols below).
MIN_TRUTH_COVERAGE = 0.5


def default_paths():
    """The shipped spine phantom sweep, its calibration and PLUS's reconstruction."""
    from SurgicalReg2D3DLib.paths import sample_data_path  # noqa: PLC0415

    return (sample_data_path("ultrasound/SpinePhantomFreehand.igs.mha"),
            sample_data_path("ultrasound/PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"),
            sample_data_path("ultrasound/SpinePhantomFreehandReconstructed.mha"))


class _Sweep:
    """A tracked sweep ready for benchmarking: the sequence, its image -> reference chain,
    the ground truth per frame index, the usable (valid-status) indices, the fan mask and
    the fan centre in pixel coordinates (column, row, 0, 1)."""

    def __init__(self, sequence_path, calibration_path):
        self.seq = read_sequence(sequence_path)
        self.chain = image_to_reference_chain(self.seq, read_calibration(calibration_path))
        self.truth = {int(i): self.chain.image_to_reference[k]
                      for k, i in enumerate(self.chain.indices)}
        self.usable = [int(i) for i in self.chain.indices]
        self.fan = fan_mask(self.seq.images[self.chain.indices])
        rows, cols = np.nonzero(self.fan)
        self.centre_px = np.array([cols.mean(), rows.mean(), 0.0, 1.0])


def make_bench_method(name: str, *args, config: Optional[RegistrationConfig] = None,
                      **kwargs):
    """:func:`make_method`, where ``"lncc:torch"`` / ``"lncc:numba"`` name the LNCC
    method on one backend (:attr:`RegistrationConfig.backend`; plain ``"lncc"`` is the
    default choice), so a benchmark can time both in the same run."""
    method, _, backend = name.partition(":")
    if backend:
        if method != "lncc":
            raise InputError(f"method: {name!r}: only lncc has backends (lncc:torch, "
                             "lncc:numba)")
        config = replace(config or RegistrationConfig(), backend=backend)
    return make_method(method, *args, config=config, **kwargs)


def run_bench(sequence_path=None, calibration_path=None, volume_path=None,
              holdout: str = "loo", frames: Optional[Sequence[int]] = None,
              max_mm: float = 10.0, max_deg: float = 10.0, seed: int = 0,
              seeds: Optional[Sequence[int]] = None,
              methods: Sequence[str] = ("lncc", "sitk"), out_dir=None,
              config: Optional[RegistrationConfig] = None, recon_pixel_step: int = 3,
              repeats: int = 1, progress=None, cancel=None, verbose: bool = False) -> dict:
    """Run the protocol above; returns a summary dict (and writes CSV/PNG to ``out_dir``).

    ``seeds``: start seeds (default ``[seed]``); the summary pools all starts and adds
    ``per_seed`` means; ``starts`` (for :func:`run_throughput_bench`) are the first
    seed's."""
    if holdout not in ("loo", "alternate", "none"):
        raise InputError(f"holdout: expected 'loo', 'alternate' or 'none', got {holdout!r}")
    if int(repeats) < 1:
        raise InputError(f"repeats: expected >= 1, got {repeats}")
    if max_mm < 0 or max_deg < 0 or max_deg > 90:
        raise InputError(f"perturbation: need 0 <= max_mm and 0 <= max_deg <= 90, got "
                         f"{max_mm}, {max_deg}")
    d_seq, d_cal, d_vol = default_paths() if sequence_path is None else (None, None, None)
    sweep = _Sweep(sequence_path or d_seq, calibration_path or d_cal)
    seq, truth, usable, fan, centre_px = (sweep.seq, sweep.truth, sweep.usable, sweep.fan,
                                          sweep.centre_px)
    if frames is None:
        if holdout == "alternate":
            frames = usable[1::2]
        else:  # interior frames: the sweep's ends have little volume around them
            n = len(usable)
            frames = usable[max(1, n // 7): n - max(1, n // 7)]
    frames = [int(f) for f in frames if int(f) in truth]
    if not frames:
        raise InputError("frames: none of the requested frames is usable")
    seeds = [int(seed)] if seeds is None else [int(x) for x in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"seeds: expected distinct integers, got {seeds}")
    twists = {sd: random_perturbations(len(frames) * 21, max_mm, max_deg, seed=sd)
              for sd in seeds}
    rows_out: List[dict] = []
    starts_out: Dict[int, list] = {}  # frame -> start 4x4 (run_throughput_bench)
    uncovered: Dict[int, float] = {}  # frame -> coverage of its true plane
    prep_s: Dict[str, List[float]] = {m: [] for m in methods}

    def build(volume_array, ijk, mask):
        built = {}
        for m in methods:
            t = time.perf_counter()
            built[m] = make_bench_method(m, volume_array, ijk, seq.frame_shape, fan,
                                         volume_mask=mask, config=config)
            prep_s[m].append(time.perf_counter() - t)
        return built

    # First use of the compiled kernels: compiled (or loaded from numba's cache) here, so
    # the per-frame times below exclude it; its time is reported separately.
    warm = warm_up_kernels(config) if any(m.split(":")[0] == "lncc" for m in methods) else None
    shared = None
    if holdout == "none":
        vol = read_reference_volume(volume_path or d_vol)
        shared = build(vol.array, vol.ijk_to_reference, None)
    elif holdout == "alternate":
        train = [i for i in usable if i not in set(frames)]
        rec = reconstruct_volume(seq.images[train], np.stack([truth[i] for i in train]), fan,
                                 pixel_step=recon_pixel_step, fill_radius=4)
        shared = build(rec.array, rec.ijk_to_reference, rec.filled)
    for n, i in enumerate(frames):
        check_cancel(cancel, "US benchmark")
        if shared is None:
            train = [j for j in usable if j != i]
            rec = reconstruct_volume(seq.images[train], np.stack([truth[j] for j in train]),
                                     fan, pixel_step=recon_pixel_step, fill_radius=4)
            built = build(rec.array, rec.ijk_to_reference, rec.filled)
        else:
            built = shared
        checker = next(iter(built.values())).registrar
        coverage = float(checker.overlap(truth[i][None])[0])
        if coverage < MIN_TRUTH_COVERAGE:
            uncovered[i] = coverage
            if verbose:
                print(f"frame {i:3d} skipped: {100 * coverage:.0f}% of its fan lies in the "
                      f"volume's data at the true pose (need "
                      f"{100 * MIN_TRUTH_COVERAGE:.0f}%)", flush=True)
            report(progress, (n + 1) / len(frames), f"frame {i} skipped")
            continue
        for sd in seeds:
            start = None
            for attempt in range(21):
                tw = twists[sd][n * 21 + attempt]
                cand = perturb_about_point(truth[i], tw, centre_px)
                if checker.overlap(cand[None])[0] >= checker.config.min_overlap:
                    start = cand
                    break
            if start is None:
                continue
            if sd == seeds[0]:
                starts_out[i] = start.tolist()
            r0, t0 = pose_errors(start, truth[i], centre_px)
            for m, fn in built.items():
                walls, cpus = [], []
                for _ in range(int(repeats)):
                    t, c = time.perf_counter(), time.process_time()
                    res = fn(seq.images[i][None], start[None], indices=[i])[0]
                    walls.append(1000 * (time.perf_counter() - t))
                    cpus.append(1000 * (time.process_time() - c))
                ms = float(np.median(walls))
                r1, t1 = pose_errors(res.image_to_reference, truth[i], centre_px)
                rows_out.append({"frame": i, "seed": sd, "method": m,
                                 "start_rotation_deg": r0, "start_translation_mm": t0,
                                 "rotation_deg": r1, "translation_mm": t1, "ms": ms,
                                 "ms_min": float(np.min(walls)),
                                 "cpu_ms": float(np.median(cpus)),
                                 "lncc_start": res.lncc_start, "lncc": res.lncc})
                if verbose:
                    print(f"frame {i:3d} seed {sd} {m:5s} start {r0:5.2f} deg {t0:5.2f} mm -> "
                          f"{r1:5.2f} deg {t1:5.2f} mm  {ms:7.1f} ms", flush=True)
        report(progress, (n + 1) / len(frames), f"frame {i}")
    if not rows_out:
        raise InputError(f"frames: none of {frames} can be tested (true plane outside the "
                         f"volume's data: {sorted(uncovered)}; or no start overlaps it)")
    summary = summarise(rows_out, methods)
    summary["per_seed"] = {
        str(sd): {m: {k: v[k] for k in ("frames", "mean_rotation_deg", "mean_translation_mm",
                                         "success_rate_2mm_2deg")}
                  for m, v in summarise([r for r in rows_out if r["seed"] == sd],
                                        methods)["methods"].items()}
        for sd in seeds}
    summary.update({"holdout": holdout, "max_mm": max_mm, "max_deg": max_deg,
                    "seed": seeds[0], "seeds": seeds, "skipped_uncovered_frames": uncovered,
                    "frames": frames, "starts": starts_out,
                    "kernel_warmup_s": None if warm is None else round(warm["seconds"], 2),
                    "timing_note": "per-frame times exclude the first-use compilation of "
                                   "the numba kernels (kernel_warmup_s, measured separately)",
                    "volume_preparation_s": {
                        m: float(np.mean(v)) if v else None for m, v in prep_s.items()}})
    if out_dir is not None:
        write_outputs(Path(out_dir), rows_out, summary)
    summary["rows"] = rows_out
    return summary


def summarise(rows: List[dict], methods: Sequence[str]) -> dict:
    out: dict = {"methods": {}}
    for m in methods:
        rr = [r for r in rows if r["method"] == m]
        if not rr:
            continue
        rot = np.array([r["rotation_deg"] for r in rr])
        tra = np.array([r["translation_mm"] for r in rr])
        ms = np.array([r["ms"] for r in rr])
        out["methods"][m] = {
            "frames": len(rr),
            "mean_rotation_deg": float(rot.mean()), "median_rotation_deg": float(np.median(rot)),
            "mean_translation_mm": float(tra.mean()),
            "median_translation_mm": float(np.median(tra)),
            "success_rate_2mm_2deg": float(np.mean((rot <= 2) & (tra <= 2))),
            "mean_ms_per_frame": float(ms.mean()), "median_ms_per_frame": float(np.median(ms)),
            "median_min_ms_per_frame": float(np.median([r.get("ms_min", r["ms"]) for r in rr])),
            "median_cpu_ms_per_frame": float(np.median([r.get("cpu_ms", np.nan) for r in rr])),
        }
    start = [r for r in rows if r["method"] == (methods[0] if methods else None)]
    if start:
        out["start"] = {
            "mean_rotation_deg": float(np.mean([r["start_rotation_deg"] for r in start])),
            "mean_translation_mm": float(np.mean([r["start_translation_mm"] for r in start]))}
    ms = out["methods"]
    if "sitk" in ms:  # every other method's speed-up over the baseline, same run
        out["speedups_vs_sitk"] = {
            m: {"means": ms["sitk"]["mean_ms_per_frame"] / r["mean_ms_per_frame"],
                "medians": ms["sitk"]["median_ms_per_frame"] / r["median_ms_per_frame"]}
            for m, r in ms.items() if m != "sitk"}
    if "lncc" in ms and "sitk" in ms:
        out["speedup_lncc_vs_sitk"] = ms["sitk"]["mean_ms_per_frame"] / \
            ms["lncc"]["mean_ms_per_frame"]
        out["speedup_lncc_vs_sitk_median"] = ms["sitk"]["median_ms_per_frame"] / \
            ms["lncc"]["median_ms_per_frame"]
    return out


def run_stream_bench(max_mm: float = 10.0, max_deg: float = 10.0, seed: int = 0,
                     config: Optional[RegistrationConfig] = None, recon_pixel_step: int = 3,
                     repeats: int = 1, verbose: bool = False) -> dict:
    """Live (temporal) case on the shipped sweep, see the module docstring.

    Returns per-frame errors and latencies (the tracking frames' median is the live
    latency; the first frame pays the full search)."""
    from .temporal import LiveRegistration  # noqa: PLC0415

    sweep = _Sweep(*default_paths()[:2])
    seq, truth, usable, fan, centre_px = (sweep.seq, sweep.truth, sweep.usable, sweep.fan,
                                          sweep.centre_px)
    # Even frames build the volume; the odd interior frames are streamed (the sweep's
    # ends have little volume around them, as in run_bench).
    n = len(usable)
    train = usable[0::2]
    lo, hi = usable[max(1, n // 7)], usable[n - 1 - max(1, n // 7)]
    test = [i for i in usable[1::2] if lo <= i <= hi]
    rec = reconstruct_volume(seq.images[train], np.stack([truth[i] for i in train]), fan,
                             pixel_step=recon_pixel_step, fill_radius=4)
    fn = make_method("lncc", rec.array, rec.ijk_to_reference, seq.frame_shape, fan,
                     volume_mask=rec.filled, config=config)
    # The sweep is not monotonic: some odd frames lie outside the even frames' volume
    # (frames 11 and 13 of the spine sweep); they are skipped (listed in the result).
    cover = fn.registrar.overlap(np.stack([truth[i] for i in test]))
    uncovered = [i for i, c in zip(test, cover) if c < MIN_TRUTH_COVERAGE]
    test = [i for i, c in zip(test, cover) if c >= MIN_TRUTH_COVERAGE]
    # One constant tracking error for the whole stream (reference -> tracked reference),
    # redrawn until the first frame's start overlaps the volume.
    twists = random_perturbations(20, max_mm, max_deg, seed=seed)
    for tw in twists:
        shift = perturb_about_point(np.eye(4), tw, np.append(
            (truth[test[0]] @ centre_px)[:3], 1.0))
        if fn.registrar.overlap((shift @ truth[test[0]])[None])[0] >= 0.3:
            break
    out_rows = []
    live = LiveRegistration(fn)
    for n, i in enumerate(test):
        tracked = shift @ truth[i]
        start = live.correction @ tracked  # where this frame's search starts
        walls = []
        mode = "full" if live.count == 0 else "tracking"
        for rep in range(int(repeats)):
            saved = (live.correction.copy(), live.count)
            t = time.perf_counter()
            try:
                res = live.update(seq.images[i], tracked)
            except GeometryError:  # start off the volume: restart the stream (lift-off)
                live.reset()
                res = None
                break
            walls.append(1000 * (time.perf_counter() - t))
            if rep < int(repeats) - 1:  # repeat the same update from the same state
                live.correction, live.count = saved
        if res is None:
            out_rows.append({"frame": i, "mode": "lost (no overlap, reset)"})
            continue
        r0, t0 = pose_errors(tracked, truth[i], centre_px)
        rs, ts = pose_errors(start, truth[i], centre_px)
        r1, t1 = pose_errors(res.image_to_reference, truth[i], centre_px)
        out_rows.append({"frame": i, "mode": mode,
                         "tracked_rotation_deg": r0, "tracked_translation_mm": t0,
                         "start_rotation_deg": rs, "start_translation_mm": ts,
                         "rotation_deg": r1, "translation_mm": t1,
                         "ms": float(np.median(walls)), "ms_min": float(np.min(walls))})
        if verbose:
            print(f"stream frame {i:3d} {out_rows[-1]['mode']:8s} tracked {r0:5.2f} deg "
                  f"{t0:5.2f} mm, start {rs:5.2f} deg {ts:5.2f} mm -> {r1:5.2f} deg {t1:5.2f} mm"
                  f"  {out_rows[-1]['ms']:6.1f} ms",
                  flush=True)
    trk = [r for r in out_rows if r["mode"] == "tracking"]
    if not trk:
        raise InputError("stream: no frame was registered in tracking mode")
    return {"rows": out_rows, "frames": test, "train_frames": train,
            "skipped_uncovered_frames": uncovered,
            "tracking_mean_rotation_deg": float(np.mean([r["rotation_deg"] for r in trk])),
            "tracking_mean_translation_mm": float(np.mean([r["translation_mm"] for r in trk])),
            "tracking_median_ms": float(np.median([r["ms"] for r in trk])),
            "tracking_median_min_ms": float(np.median([r["ms_min"] for r in trk])),
            "first_frame_ms": out_rows[0].get("ms"),
            "lost_frames": [r["frame"] for r in out_rows if r["mode"].startswith("lost")]}


def run_throughput_bench(starts: Dict[int, Sequence], frames: Optional[Sequence[int]] = None,
                         batch_sizes: Sequence[int] = (1, 2, 4, 0), repeat_items: int = 3,
                         methods: Sequence[str] = ("lncc", "sitk"), repeats: int = 1,
                         config: Optional[RegistrationConfig] = None,
                         recon_pixel_step: int = 3, verbose: bool = False) -> dict:
    """Offline sweep throughput (``surgreg us register --no-temporal``), not live latency.

    One volume is reconstructed from the sweep's even frames; the test frames are the odd
    ones among ``starts`` (frame -> start ``image_to_reference`` 4x4, e.g. the latency
    table's ``run_bench(...)["starts"]``, so the starts are the same) that this volume
    covers (>= 50 % of the fan at the tracked pose, as in :func:`run_stream_bench`) and
    whose start overlaps it (``min_overlap``); ``frames`` narrows them further. A volume
    per frame (the latency table's leave-one-out protocol) cannot be batched, hence this
    protocol, used for every method here.

    The LNCC method registers all test frames with
    ``temporal.register_sequence(..., temporal=False, batch_size=b)`` for every ``b`` of
    ``batch_sizes`` (0: all frames in one call); the time per frame is the call's total
    wall (and CPU) time divided by the number of frames (median over ``repeats`` runs).
    ``repeat_items > 1`` adds one timing-only row: the same frames and starts repeated
    ``repeat_items`` times in one batch (a longer sweep's batch; batched items are
    independent, so each repeat gives the same poses). The SimpleITK baseline registers
    the same frames from the same starts on the same volume one at a time (it does not
    batch; ``register_sequence`` would loop over frames the same way). Errors as in
    :func:`run_bench`; ``max_pose_change_vs_b1_mm`` is the largest difference of a
    frame's pose from its batch-size-1 pose (mm, largest entry of the 4x4 difference
    with the rotation part taken at 100 mm).
    """
    from .temporal import register_sequence  # noqa: PLC0415

    if int(repeats) < 1:
        raise InputError(f"repeats: expected >= 1, got {repeats}")
    if not batch_sizes or any(int(b) < 0 for b in batch_sizes):
        raise InputError(f"batch_sizes: expected sizes >= 1 (0 = all frames), got "
                         f"{list(batch_sizes)}")
    sweep = _Sweep(*default_paths()[:2])
    seq, truth, usable, fan, centre_px = (sweep.seq, sweep.truth, sweep.usable, sweep.fan,
                                          sweep.centre_px)
    train = usable[0::2]
    starts = {int(k): np.asarray(v, dtype=float) for k, v in starts.items()}
    candidates = sorted(i for i in starts if i in truth and i not in set(train))
    if frames is not None:
        candidates = [i for i in candidates if i in {int(f) for f in frames}]
    if not candidates:
        raise InputError("throughput: no odd (held-out) frame among the given starts")
    rec = reconstruct_volume(seq.images[train], np.stack([truth[i] for i in train]), fan,
                             pixel_step=recon_pixel_step, fill_radius=4)
    built = {m: make_bench_method(m, rec.array, rec.ijk_to_reference, seq.frame_shape, fan,
                                  volume_mask=rec.filled, config=config) for m in methods}
    checker = next(iter(built.values())).registrar
    cover = checker.overlap(np.stack([truth[i] for i in candidates]))
    start_ov = checker.overlap(np.stack([starts[i] for i in candidates]))
    test = [i for i, c, o in zip(candidates, cover, start_ov)
            if c >= MIN_TRUTH_COVERAGE and o >= checker.config.min_overlap]
    skipped = [i for i in candidates if i not in test]
    if not test:
        raise InputError("throughput: no held-out frame lies in the even frames' volume")
    n = len(test)
    images = seq.images[test]
    S = np.stack([starts[i] for i in test])

    def errors(results):
        e = np.array([pose_errors(r.image_to_reference, truth[i], centre_px)
                      for r, i in zip(results, test)])
        return {"mean_rotation_deg": float(e[:, 0].mean()),
                "median_rotation_deg": float(np.median(e[:, 0])),
                "mean_translation_mm": float(e[:, 1].mean()),
                "median_translation_mm": float(np.median(e[:, 1])),
                "success_rate_2mm_2deg": float(np.mean((e[:, 0] <= 2) & (e[:, 1] <= 2)))}

    def timed(call):
        walls, cpus, out = [], [], None
        for _ in range(int(repeats)):
            t, c = time.perf_counter(), time.process_time()
            out = call()
            walls.append(1000 * (time.perf_counter() - t))
            cpus.append(1000 * (time.process_time() - c))
        return out, float(np.median(walls)), float(np.min(walls)), float(np.median(cpus))

    scale = np.ones((4, 4))
    scale[:3, :3] = 100.0  # rotation entries at 100 mm
    out_rows: List[dict] = []
    poses_b1 = None
    if "lncc" in built:
        sizes = sorted({min(int(b) or n, n) for b in batch_sizes})  # 0 or > n: all frames
        plan = [(b, 1) for b in sizes]
        if int(repeat_items) > 1:
            plan.append((n * int(repeat_items), int(repeat_items)))
        for b, rep in plan:
            imgs, ss = np.concatenate([images] * rep), np.concatenate([S] * rep)
            res, wall, wall_min, cpu = timed(lambda: register_sequence(
                built["lncc"], imgs, ss, temporal=False, batch_size=b))
            items = n * rep
            poses = np.stack([r.image_to_reference for r in res]).reshape(rep, n, 4, 4)
            if poses_b1 is None and b == 1 and rep == 1:
                poses_b1 = poses[0]
            row = {"method": "lncc", "batch_size": min(b, items), "items": items,
                   "repeated_items": rep > 1, "calls": -(-items // b),
                   "total_ms": wall, "ms_per_frame": wall / items,
                   "min_ms_per_frame": wall_min / items, "cpu_ms_per_frame": cpu / items}
            row.update(errors(res[:n]))
            if poses_b1 is not None:
                row["max_pose_change_vs_b1_mm"] = float(np.abs(
                    (poses - poses_b1[None]) * scale).max())
            out_rows.append(row)
            if verbose:
                print(f"throughput lncc batch {row['batch_size']:3d} x {row['calls']} calls "
                      f"({items} items): {row['ms_per_frame']:.1f} ms/frame "
                      f"(CPU {row['cpu_ms_per_frame']:.1f}), {row['mean_translation_mm']:.2f} mm"
                      f" / {row['mean_rotation_deg']:.2f} deg", flush=True)
    for m, fn in built.items():
        if m == "lncc":
            continue
        res, walls, cpus = [], [], []
        for k in range(n):  # one frame at a time (the baseline does not batch)
            r, wall, _, cpu = timed(lambda: fn(images[k:k + 1], S[k:k + 1],
                                               indices=[test[k]])[0])
            res.append(r)
            walls.append(wall)
            cpus.append(cpu)
        row = {"method": m, "batch_size": 1, "items": n, "repeated_items": False, "calls": n,
               "total_ms": float(np.sum(walls)), "ms_per_frame": float(np.mean(walls)),
               "median_ms_per_frame": float(np.median(walls)),
               "cpu_ms_per_frame": float(np.mean(cpus))}
        row.update(errors(res))
        out_rows.append(row)
        if verbose:
            print(f"throughput {m} one at a time: {row['ms_per_frame']:.1f} ms/frame "
                  f"(CPU {row['cpu_ms_per_frame']:.1f}), {row['mean_translation_mm']:.2f} mm"
                  f" / {row['mean_rotation_deg']:.2f} deg", flush=True)
    base = next((r for r in out_rows if r["method"] == "sitk"), None)
    if base is not None:
        for r in out_rows:
            if r["method"] == "lncc":
                r["speedup_vs_sitk"] = base["ms_per_frame"] / r["ms_per_frame"]
                r["cpu_speedup_vs_sitk"] = base["cpu_ms_per_frame"] / r["cpu_ms_per_frame"]
    return {"protocol": "volume from the even frames, odd held-out frames, the latency "
                        "table's starts", "train_frames": train, "frames": test,
            "skipped_frames": skipped, "repeats": int(repeats), "rows": out_rows}


def write_outputs(out_dir: Path, rows: List[dict], summary: dict) -> None:
    """``us_bench.csv`` (one row per frame and method) and ``us_bench.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows:
        with open(out_dir / "us_bench.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    style = "o-" if len(summary["seeds"]) == 1 else "o"  # several starts per frame
    for m in summary["methods"]:
        rr = [r for r in rows if r["method"] == m]
        f = [r["frame"] for r in rr]
        axes[0].plot(f, [r["translation_mm"] for r in rr], style, label=m)
        axes[1].plot(f, [r["rotation_deg"] for r in rr], style, label=m)
        axes[2].plot(f, [r["ms"] for r in rr], style, label=m)
    first = [r for r in rows if r["method"] == next(iter(summary["methods"]), None)]
    axes[0].plot([r["frame"] for r in first], [r["start_translation_mm"] for r in first],
                 "x" if style == "o" else "x:", color="grey", label="start")
    axes[1].plot([r["frame"] for r in first], [r["start_rotation_deg"] for r in first],
                 "x" if style == "o" else "x:", color="grey", label="start")
    for ax, t in zip(axes, ("translation error (mm)", "rotation error (deg)",
                            "time per frame (ms)")):
        ax.set_xlabel("frame")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"USSliceReg benchmark (hold-out: {summary['holdout']}, starts up to "
                 f"{summary['max_mm']} mm / {summary['max_deg']} deg, seeds "
                 f"{summary['seeds']})")
    fig.tight_layout()
    fig.savefig(out_dir / "us_bench.png", dpi=90)
    plt.close(fig)
