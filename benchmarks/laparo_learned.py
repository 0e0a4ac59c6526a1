"""LiverLaparoReg learned registration benchmark (SYNTHETIC frames of a held-out mesh).

Run::

    nice -n 10 python benchmarks/laparo_learned.py [--model M.pt] [--frames 10] [--seeds 0 1]
    nice -n 10 python benchmarks/laparo_learned.py --stage1-matcher [--frames 6]   # older

Default (landmark protocol, :func:`run_landmarks`): the landmark model (kind
``landmarks``: 2D landmark maps and camera-frame normal map learned, 3D side geometric,
global search, image ICP, refinement), its ablations (no normal map; ridge weight 0.5),
the same pipeline fed the TRUE 2D landmark maps with and without the TRUE normal map
(oracles that isolate the network from the geometric steps), the old Stage I matcher, contour-PnP and the
silhouette method, on the frames described below (``--seeds``: frame sets; frame ``k``
of seed ``S`` from ``numpy.random.default_rng([S, 1000 + k])``). Writes
``benchmarks/results/laparo_learned.{md,json}`` (+ ``.rows.jsonl`` while it runs); the
``--stage1-matcher`` protocol (below, with Stage II) writes ``laparo_learned_stage1.*``.
A run per seed in parallel (``--out`` each) is merged by ``--merge``; ``--learned-only
--keep-rows-from OLD.json`` re-runs the learned method alone and keeps the other
methods' rows of an earlier run on the same frames (for a change that touches only the
learned method; the markdown says which rows are kept).

Cases: SYNTHETIC frames (``learned/data.py``: the appearance model, instruments, blur,
noise) of the SciKit-Surgery liver (``liver_sksurgery/models/liver.vtk``), which is NOT
used in training (the bundled model is trained on the P2ILF mesh only). Cameras
alternate between the P2ILF camera (1920 x 1080, its distortion) and the SciKit-Surgery
left camera (1920 x 540); poses: 80-250 mm from the liver, the viewing direction within
50 deg of the real shipped SciKit-Surgery laparoscope pose's (75 %) or from any direction
(25 %: ``data.sample_pose``). Each row records the angle between the true viewing
direction and the search's prior axis (``view_deg_from_search_axis``): frames beyond the
search cone (80 deg) cannot be found by the search and are kept and counted, not
skipped. The frame is rendered at the
network's 128 x 96 and upscaled; the liver mask is rendered at 480 px wide and upscaled,
minus the instruments.

Methods, each from NO initial pose unless stated:

- ``learned stage I``: network correspondences + EPnP/RANSAC;
- ``learned``: + the silhouette refinement;
- ``contour-pnp``: the existing ``pnp`` method on three synthetic landmark curves
  (``synthetic.make_case``, 1 px noise) clipped to the part visible in the frame and
  inside the mask (short / partial contours, as in a close-up);
- ``silhouette (init 10 deg / 20 mm)``: the existing mask-only method, started from the
  true pose perturbed by 10 deg and 20 mm (it cannot start from nothing).

Metrics: rotation error (deg), translation error of the model origin (mm) and of the
liver centroid (mm), rendered-mask Dice (480 px wide), reprojection error = median image
distance (px, full frame) between the liver vertices visible at the true pose projected
with the estimated and with the true pose; failures (an error raised) count as wrong;
time per frame (wall, shared CPU: see the load average in the output).

Stage II: frames of the same mesh *bent* (near-isometric, up to 1/160 mm^-1 curvature);
Stage II runs at the true rigid pose with the Stage I inlier pairs of that frame (oracle
rigid pose, to isolate the deformation), full and without the reprojection term /
without the isometry term; 3D vertex error (mm) to the true bent shape before and after,
over all vertices and over the visible ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _r(x, n=3):
    return None if x is None else round(float(x), n)


from LiverLaparoRegLib.learned.evaluation import run_bench as run, summarise  # noqa: E402


def method_table(summ) -> list:
    """The markdown table (lines) of :func:`summarise`'s per-method summary."""
    L = ["| method | frames | failed | wrong (>20 deg or failed) | median rot deg | median "
         "centroid mm | median origin transl. mm | median Dice | median reproj. px | "
         "< 10 deg | < 5 deg & < 5 mm | median s/frame |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, v in summ.items():
        L.append(f"| {m} | {v['frames']} | {v['failed']} | {v['wrong_gt20deg_or_failed']} "
                 f"({v['fraction_wrong']}) | {v['median_rotation_deg']} | "
                 f"{v['median_centroid_error_mm']} | {v['median_translation_mm']} | "
                 f"{v['median_dice']} | {v['median_reprojection_px']} | "
                 f"{v['frames_under_10deg']} | {v['frames_under_5deg_5mm']} | "
                 f"{v['median_seconds']} |")
    return L


def markdown(summ, s2, meta, notes=""):
    L = ["# LiverLaparoReg learned registration: benchmark (SYNTHETIC frames, held-out mesh)", "",
         "Produced by `benchmarks/laparo_learned.py` (see its docstring for the protocol). "
         "All frames are SYNTHETIC renders of the SciKit-Surgery liver, which the model "
         "never saw in training. Timings on a CPU shared with other jobs (1 torch thread; "
         f"load average at the end {[round(x, 1) for x in meta['load_average_end']]}).", "",
         f"Model: `{meta['model']}`; training: {meta['model_training']}", ""]
    kept = meta.get("rows_kept_from")
    if kept:
        L += [f"Rows of {', '.join(kept['methods'])}: from the earlier run(s) "
              f"{', '.join(kept['files'])} on the same frames (`--keep-rows-from`; their code "
              f"did not change, only the learned method's did).", ""]
    L += method_table(summ)
    L += ["", "Medians are over the frames where the method returned a pose; 'wrong' counts "
          "failures too.", "", "## Stage II (bent frames, oracle rigid pose, Stage I pairs)", "",
          "| frame | pairs | bend mean disp. mm | before all / visible mm | full | no "
          "reprojection | no isometry |", "|---|---|---|---|---|---|---|"]
    for r in s2:
        def c(k):
            return f"{r[k]['all_mm']} / {r[k]['visible_mm']}"
        L.append(f"| {r['frame']} | {r['pairs']} | {r['bend_mean_displacement_mm']} | "
                 f"{r['before_all_mm']} / {r['before_visible_mm']} | {c('full')} | "
                 f"{c('no reprojection')} | {c('no isometry')} |")
    L += ["", "(vertex error to the true bent shape, mm, all vertices / visible vertices)", ""]
    return "\n".join(L) + "\n" + notes


def matched_pixels(p, t, tol_px: int = 1) -> dict:
    """Pixel counts of a predicted ``p`` against a true ``t`` boolean map, a pixel
    counting as matched within ``tol_px``: ``pred_px``, ``pred_on_true_px`` (precision's
    numerator), ``true_px``, ``true_found_px`` (recall's); counts, so runs can be pooled."""
    import cv2

    k = np.ones((2 * tol_px + 1, 2 * tol_px + 1), np.uint8)
    return {"pred_px": int(p.sum()), "true_px": int(t.sum()),
            "pred_on_true_px": int((p & cv2.dilate(t.astype(np.uint8), k).astype(bool)).sum()),
            "true_found_px": int((t & cv2.dilate(p.astype(np.uint8), k).astype(bool)).sum())}


def map_f1(pred, true, mask_net, tol_px: int = 1):
    """Per landmark (ridge, silhouette) F1 of the predicted maps (p >= 0.5) against the
    true maps at the network grid, a pixel counting as matched within ``tol_px``."""
    out = {}
    for c, name in ((0, "ridge"), (2, "silhouette")):
        p = (pred[c] >= 0.5) & (mask_net > 0 if c == 0 else True)
        t = true[c] > 0.5
        if not t.any() and not p.any():
            continue
        n = matched_pixels(p, t, tol_px)
        prec = n["pred_on_true_px"] / max(1, n["pred_px"])
        rec = n["true_found_px"] / max(1, n["true_px"])
        out[name] = _r(2 * prec * rec / max(1e-9, prec + rec), 3)
    return out


def normal_error_deg(pred, true, mask_net):
    """Median angle (deg) between predicted and true camera-frame normals ``(3, H, W)``
    over the mask's pixels where the true map has a normal."""
    on = (mask_net > 0) & (np.linalg.norm(true, axis=0) > 0.5)
    if not on.any():
        return None
    p = pred[:, on] / np.maximum(np.linalg.norm(pred[:, on], axis=0), 1e-9)
    t = true[:, on] / np.linalg.norm(true[:, on], axis=0)
    return _r(np.degrees(np.median(np.arccos(np.clip((p * t).sum(0), -1, 1)))), 1)


def run_landmarks(model=None, frames=10, seeds=(0,), oracle=True, old_model=True,
                  baselines=True, log=print, out_rows=None, flips=1, variants_too=True,
                  translation_start="moment"):
    """The landmark-model protocol (see the module docstring): per SYNTHETIC frame of the
    held-out liver, the landmark model (Stage I = search + ICP, then the refinement), the
    same pipeline with the TRUE 2D landmark maps (oracle: isolates the network), the old
    Stage I matcher, contour-PnP and the silhouette method from a 10 deg / 20 mm start.
    ``flips``: the network's test-time flips (``predict_maps``); ``variants_too=False``
    runs the learned method alone (no ablation variants); ``translation_start``: the
    search's (``register_landmarks``)."""

    from LiverLaparoRegLib.sample_data import sample_data_dir
    from LiverLaparoRegLib.camera import load_camera
    from LiverLaparoRegLib.learned import landmarks_infer as li
    from LiverLaparoRegLib.learned.evaluation import (frame_scorer, full_frame,
                                                      held_out_train_mesh, run_baselines)
    from LiverLaparoRegLib.learned.infer import register_learned
    from LiverLaparoRegLib.learned.landmarks_search import VIEW_AXIS, view_angle_deg
    from LiverLaparoRegLib.learned.modelfile import load_model

    net, rec = load_model(model, kind="landmarks")
    old = None
    if old_model:
        try:
            old = load_model(None)[0]
        except Exception:  # noqa: BLE001
            old = None
    mesh, tm, cam_sks = held_out_train_mesh()
    cam_p2 = load_camera(sample_data_dir() / "p2ilf" / "cameraparams" /
                         "acquisition-camera-metadata.json")
    rows = [] if out_rows is None else out_rows
    for seed in seeds:
        for k in range(frames):
            rng = np.random.default_rng([seed, 1000 + k])
            cam = cam_p2 if k % 2 == 0 else cam_sks
            s, img, mask = full_frame(tm, cam, rng)
            T = s.model_to_camera
            base, score = frame_scorer(mesh, cam, T, mask, k, rows, log, seed=seed)

            true_n = li.true_maps(mesh.vertices, mesh.faces, T, cam, ridge=tm.ridge,
                                  normals=True)
            true = true_n[:3]
            pred = li.predict_maps(net, img, mask, cam, flips=flips)
            base["view_deg_from_search_axis"] = round(view_angle_deg(T, VIEW_AXIS), 1)
            mask_net = li.observations(true, mask, cam)["mask_net"]
            base["map_f1"] = map_f1(pred, true, mask_net=mask_net)
            nk = {"net": net, "flips": flips, "translation_start": translation_start}
            variants = [("learned landmarks", nk)]
            if len(pred) >= 6:                    # the normal map: its error
                base["normal_error_deg_median"] = normal_error_deg(pred[3:6], true_n[3:],
                                                                   mask_net)
            if variants_too:
                if len(pred) >= 6:                # ablation: the search without it
                    variants.append(("learned landmarks, no normals", dict(nk, w_normal=0.0)))
                if len(pred) == 7:                # ablation: no uncertainty weighting
                    variants.append(("learned landmarks, no normal uncertainty",
                                     dict(nk, normal_uncertainty=False)))
                # no view prior: what a mesh in an unknown frame costs (whole sphere searched)
                variants.append(("learned landmarks, any viewing direction",
                                 dict(nk, view_axis=None)))
                if li.W_RIDGE_LEARNED > 0:       # the other choice of the ridge weight
                    variants.append(("learned landmarks, silhouette only", dict(nk, w_ridge=0.0)))
                else:
                    variants.append((f"learned landmarks, ridge weight {li.W_RIDGE}",
                                     dict(nk, w_ridge=li.W_RIDGE)))
            if oracle:
                variants.append(("landmarks with TRUE 2D maps and normals", {"maps": true_n}))
                variants.append(("landmarks with TRUE 2D maps, no normals", {"maps": true}))
            for name, kw in variants:
                t0 = time.perf_counter()
                try:
                    r = li.register_landmarks(mesh, cam, img, mask, ground_truth=T, **kw)
                    dt = time.perf_counter() - t0
                    st1 = sum(r.timings.get(x, 0) for x in ("network_s", "search_s", "icp_s"))
                    lr = r.metrics["learned"]
                    extra = {"correspondences": len(r.correspondences),
                             "inliers": lr["inliers"], "quality": r.quality.verdict,
                             "search_margin_px": lr.get("search_margin_px"),
                             "best_candidate_rot_deg": min(
                                 (c.get("icp_rot_err_deg", c.get("search_rot_err_deg", 999))
                                  for c in lr["candidates"]),
                                 default=None)}
                    score(name + " stage I", r.stage1_model_to_camera, st1, extra)
                    score(name, r.model_to_camera, dt, extra)
                except Exception as exc:  # noqa: BLE001  (a failure is a result here)
                    dt = time.perf_counter() - t0
                    score(name + " stage I", None, dt, {"error": str(exc)[:160]})
                    score(name, None, dt, {"error": str(exc)[:160]})
            if old is not None:
                t0 = time.perf_counter()
                try:
                    r = register_learned(mesh, cam, img, mask, net=old, ground_truth=T)
                    score("old stage1 matcher", r.model_to_camera, time.perf_counter() - t0,
                          {"quality": r.quality.verdict})
                except Exception as exc:  # noqa: BLE001
                    score("old stage1 matcher", None, time.perf_counter() - t0,
                          {"error": str(exc)[:160]})
            if not baselines:
                continue
            run_baselines(mesh, cam, T, mask, k, rng, score)
    return rows, rec


def markdown_landmarks(summ, meta, notes=""):
    L = ["# LiverLaparoReg learned registration: benchmark (SYNTHETIC frames, held-out mesh)", "",
         "Produced by `benchmarks/laparo_learned.py` (landmark protocol; see its docstring). "
         "All frames are SYNTHETIC renders of the SciKit-Surgery liver, which no model saw in "
         "training. No method gets an initial pose except the silhouette baseline; contour-PnP "
         "gets synthetic landmark curves (1 px noise) clipped to the visible part. Timings on a "
         "CPU shared with other jobs (1 torch thread; load average at the end "
         f"{[round(x, 1) for x in meta['load_average_end']]}).", "",
         f"Frames: {meta['frames']} per seed, seeds {meta['seeds']}. Landmark model: "
         f"`{meta['model']}`; training: {meta['model_training']}", "",
         "Network maps on the held-out frames (F1 against the true maps at the 128 x 96 grid, "
         f"1 px tolerance), median: {meta.get('median_map_f1_held_out')}; normal map, "
         f"angle to the true normal over the mask (per-frame medians): "
         f"{meta.get('normal_error_deg_held_out')}", ""]
    kept = meta.get("rows_kept_from")
    if kept:
        L += [f"Rows of {', '.join(kept['methods'])}: from the earlier run(s) "
              f"{', '.join(kept['files'])} on the same frames (`--keep-rows-from`; their code "
              f"did not change, only the learned method's did).", ""]
    L += method_table(summ)
    L += ["", "Medians are over the frames where the method returned a pose; 'wrong' counts "
          "failures too. 'stage I' rows: the pose before the refinement (their time: network "
          "+ search + ICP).", ""]
    v = [(m, x["verdicts"]) for m, x in summ.items() if "verdicts" in x]
    if v:
        L += ["Quality verdict against the truth (ok / doubtful / failed):", "",
              "| method | right (< 10 deg) | wrong (> 20 deg) |", "|---|---|---|"]
        for m, x in v:
            a, b = x["right_lt10deg"], x["wrong_gt20deg"]
            L.append(f"| {m} | {a['ok']} / {a['doubtful']} / {a['failed']} | "
                     f"{b['ok']} / {b['doubtful']} / {b['failed']} |")
        L.append("")
    return "\n".join(L) + "\n" + notes


def _write_landmarks(out: Path, rows, meta) -> None:
    """``laparo_learned.{json,md}`` of the landmark protocol from its rows (the notes file
    ``laparo_learned_notes.md`` appended to the markdown)."""
    summ = summarise(rows)
    f1 = [r["map_f1"] for r in rows if r["method"] == "learned landmarks"]
    ne = [r["normal_error_deg_median"] for r in rows if r["method"] == "learned landmarks"
          and r.get("normal_error_deg_median") is not None]
    if ne:
        meta["normal_error_deg_held_out"] = {"median_of_frame_medians": _r(np.median(ne), 1),
                                             "max_of_frame_medians": _r(np.max(ne), 1)}
    meta["median_map_f1_held_out"] = {
        c: _r(np.median([x[c] for x in f1 if c in x]), 3)
        for c in ("ridge", "silhouette") if any(c in x for x in f1)}
    (out / "laparo_learned.json").write_text(json.dumps({"meta": meta, "summary": summ,
                                                         "rows": rows}, indent=1))
    notes_file = out / "laparo_learned_notes.md"
    notes = notes_file.read_text() if notes_file.is_file() else ""
    (out / "laparo_learned.md").write_text(markdown_landmarks(summ, meta, notes))
    print(json.dumps({"summary": summ, "meta": meta}, indent=1))


def merged_runs(files):
    """The run files ``files`` (JSON with ``meta`` and ``rows``; the same model and options
    on other seeds, run in parallel) read, and one meta for them: the first's, with the
    seeds of all, each run's wall time, the highest load averages and the files merged.
    ``(parts, meta)``; also used by ``laparo_learned_dev.py --merge``."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    meta = dict(parts[0]["meta"])
    meta["seeds"] = sorted({sd for p in parts for sd in p["meta"]["seeds"]})
    meta["wall_s"] = [p["meta"]["wall_s"] for p in parts]
    meta["load_average_end"] = [max(p["meta"]["load_average_end"][k] for p in parts)
                                for k in range(3)]
    meta["merged_from"] = [str(f) for f in files]
    return parts, meta


def main():
    from LiverLaparoRegLib.learned.landmarks_align import TRANSLATION_STARTS
    from LiverLaparoRegLib.learned.landmarks_infer import FLIPS

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--stage1-matcher", action="store_true",
                    help="the older protocol of the Stage I matcher (kind stage1) + Stage II")
    ap.add_argument("--stage2-frames", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--flips", type=int, default=1, choices=FLIPS,
                    help="landmark protocol: the network's test-time flips (predict_maps)")
    ap.add_argument("--translation-start", default="moment",
                    choices=TRANSLATION_STARTS,
                    help="landmark protocol: the search's translation start")
    ap.add_argument("--learned-only", action="store_true",
                    help="landmark protocol: the learned method alone (no ablation variants, "
                         "no old matcher; with --no-oracle --quick nothing else)")
    ap.add_argument("--keep-rows-from", nargs="+", default=None, metavar="JSON",
                    help="landmark protocol: add the rows of earlier runs' "
                         "laparo_learned.json files for this run's seeds and frames whose "
                         "methods this run did not run (e.g. the oracle and the baselines, "
                         "when only the learned method changed); recorded in the meta")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="landmark protocol: merge the laparo_learned.json files of runs on "
                         "other seeds (e.g. run in parallel with different --out) into "
                         "--out's laparo_learned.{md,json}; runs nothing")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    t0 = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.merge:
        parts, meta = merged_runs(a.merge)
        rows = [r for p in parts for r in p["rows"]]
        kept = [p["meta"]["rows_kept_from"] for p in parts if p["meta"].get("rows_kept_from")]
        if kept:
            meta["rows_kept_from"] = {"files": [f for k in kept for f in k["files"]],
                                      "methods": sorted({m for k in kept for m in k["methods"]})}
        _write_landmarks(out, rows, meta)
        return
    if not a.stage1_matcher:
        rows = []
        partial = out / "laparo_learned.rows.jsonl"
        partial.write_text("")

        def log(line):
            print(line, flush=True)
            with open(partial, "a") as fh:
                fh.write(line + "\n")

        rows, rec = run_landmarks(a.model, a.frames, a.seeds, oracle=not a.no_oracle,
                                  flips=a.flips, variants_too=not a.learned_only,
                                  old_model=not a.learned_only,
                                  translation_start=a.translation_start,
                                  baselines=not a.quick, log=log, out_rows=rows)
        meta = {"model": rec.get("path"), "model_training": {
                    k: rec.get(k) for k in ("data", "command", "seed", "steps", "wall_s",
                                            "load_average")},
                "frames": a.frames, "seeds": a.seeds, "flips": a.flips,
                "translation_start": a.translation_start,
                "wall_s": round(time.time() - t0, 1),
                "load_average_end": list(os.getloadavg()),
                "cpu": platform.processor() or platform.machine(), "torch_threads": 1}
        if a.keep_rows_from:
            ran = {r["method"] for r in rows}
            frames_run = {(r["seed"], r["frame"]) for r in rows}
            kept = [r for f in a.keep_rows_from
                    for r in json.loads(Path(f).read_text())["rows"]
                    if r["method"] not in ran and (r["seed"], r["frame"]) in frames_run
                    and not r["method"].startswith("learned landmarks")]  # never the
            # learned method's own variants: they belong to the earlier model
            rows += kept
            meta["rows_kept_from"] = {"files": [str(f) for f in a.keep_rows_from],
                                      "methods": sorted({r["method"] for r in kept})}
        _write_landmarks(out, rows, meta)
        return
    rows, s2, rec = run(a.model, a.frames, a.seed, a.stage2_frames, a.quick)
    summ = summarise(rows)
    meta = {"model": rec.get("path"), "model_training": {k: rec.get(k) for k in
                                                         ("data", "command", "seed", "steps",
                                                          "wall_s", "load_average")},
            "frames": a.frames, "seed": a.seed, "wall_s": round(time.time() - t0, 1),
            "load_average_end": list(os.getloadavg()), "cpu": platform.processor() or
            platform.machine(), "torch_threads": 1}
    (out / "laparo_learned_stage1.json").write_text(json.dumps({"meta": meta, "summary": summ,
                                                                "rows": rows, "stage2": s2},
                                                               indent=1))
    (out / "laparo_learned_stage1.md").write_text(markdown(summ, s2, meta))
    print(json.dumps({"summary": summ, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
