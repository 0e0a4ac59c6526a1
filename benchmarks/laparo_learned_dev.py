"""Development frames for choices about the learned landmark registration (never the
held-out liver).

Model and setting choices of the learned method are made here, then checked once on the
held-out frames of ``benchmarks/laparo_learned.py``. SYNTHETIC development shapes:

- ``train``: the training (P2ILF) mesh itself, as the frames of the earlier sessions'
  choices (the network has seen this shape, so a gain here may be a gain on this shape
  only: session 12's lesson, ``results/laparo_learned_notes.md``);
- ``twisted``: the P2ILF mesh twisted about its longest principal axis (``TWIST_DEG``
  from end to end, linear along the axis) and stretched / squashed along the other two
  (``STRETCH``). Neither the training generator (smooth radial-basis bumps, per-axis
  scaling within 0.85-1.15, a bend about one plane, planar cuts) nor the held-out liver
  made it, so it stands in for "a shape the network has not seen" without touching the
  held-out liver. It is a deformed copy of the training mesh, not a second patient;
- ``smooth``: the training mesh Taubin-smoothed (``SMOOTH``): a probe (session 15) of
  whether a less distinctive shape shows the network-vs-oracle gap of the held-out liver
  (it did not: v5 10 of 12 within 10 deg, the oracle 11);
- ``turned``: the training mesh turned so that the frames see it from the side the
  held-out protocol sees its liver from (``TURN_TO_LONG_AXIS_DEG``; session 16: no gap
  either, v5 8 of 12, the oracle 10);
- ``blob``: the training mesh rounded by Laplacian smoothing and stretched back to its
  extents (``BLOB_STEPS``): an outline that fits many poses. Session 16: v5 4 of 12, the
  oracle 9, the oracle without normals 7, the held-out liver's pattern (what v5 lacks
  is mostly the ridge);
- ``sharp``: the training mesh's detail amplified and stretched back to its extents
  (``SHARP``): `scale` ridges on 20 % of its area, as the held-out liver (session 18);
- ``fine``: the training mesh with each triangle split in four (the same surface at the
  held-out liver's finer resolution; session 18).
- ``other``: a second REAL liver mesh (the P2ILF repository's ``originalMesh/meshGT.obj``,
  not the training liver; session 19), put in the patient frame by its shape alignment
  to the held-out liver and seen around the held-out liver's real view axis
  (``laparo_dev_shapes.other_liver_mesh``). Its frames are SYNTHETIC renders like all
  the others.

The shapes are built in ``laparo_dev_shapes.py`` (:func:`laparo_dev_shapes.
shape_and_cameras`); this script renders their frames, runs the registration and
writes the runs, their summaries (:func:`summarise`, :func:`merge`) and the table.

``--diagnosis-held-out`` runs the held-out liver's frames (seeds 0-2 are its benchmark's)
for diagnosis only, never for a choice; ``--true-part`` feeds some of the TRUE maps
(ridge, ligament, silhouette, normals, 2d) and the network's for the rest (half
oracles: which map the network gets wrong; with given maps the ridge is searched at
weight 0.5 unless ``--w-ridge 0``, so a half oracle that keeps the network's ridge map
should say ``--w-ridge 0`` to differ from the network in one map only: session 19).
``--true-normal-blend ALPHA`` moves the network's normal map part of the way to the TRUE
one (how good a normal map must be); ``--true-normal-part slant|tilt`` gives the normal
map the TRUE slant (angle to the viewing ray) or the TRUE tilt (direction about it) with
the network's other part.

Frame ``k`` of seed ``S``: ``numpy.random.default_rng([S, 1000 + k])`` (as the held-out
protocol; seeds 5 and up are the development seeds), even ``k`` the P2ILF camera, odd the
SciKit-Surgery camera, poses around the P2ILF mesh's view axis (its annotated surface).
Per frame: the rotation error of Stage I and of the final pose, the centroid error of the
final pose, the quality verdict, the network's normal error over the mask (median angle
to the true normal map) and the view angle from the search's prior axis. ``--true-maps``
feeds the pipeline the TRUE 2D maps and normal map (an oracle of the geometric steps).

    python benchmarks/laparo_learned_dev.py [--model M.pt] [--shape twisted] \\
        [--seeds 5 6] [--frames 6] [--flips 1] [--translation-start moment] \\
        [--maps-only] [--true-maps [--no-normals]] [--true-part PARTS] \\
        [--diagnosis-held-out] [--ignore-normal-scale] [--w-ridge W] \\
        [--ridge-definition ring|scale] [--ridge-search-only] [--ridge-tiebreak] \\
        [--normal-ridge PER_MM] [--no-ridge-channel] [--ridge-oracle and|or] \\
        [--w-normal W] [--true-normal-blend ALPHA] [--true-normal-part slant|tilt] \\
        [--tag NAME] [--out DIR]

Writes ``<out>/laparo_dev_<shape>_<tag>.json`` (rows + summary) and prints one line per
frame. One torch thread. ``--table RUN.json ... --md OUT.md`` writes the runs' summaries
as one markdown table, with the runs (rows included) in the ``.json`` beside it (runs
nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for sub in ("SurgicalReg2D3D", "LiverLaparoReg"):
    sys.path.insert(0, str(ROOT / sub))
sys.path.insert(0, str(ROOT / "benchmarks"))

from laparo_dev_shapes import shape_and_cameras  # noqa: E402  (the development shapes)

def ridge_agreement(pred_ridge, true_ridge, mask_net) -> dict:
    """The network's ridge pixels (probability >= 0.5 inside the mask, network grid; the
    network loaded, also in oracle runs; ``--ridge-model``'s where given) against the
    TRUE ridge map of the run's definition, one-pixel tolerance (``laparo_learned.
    matched_pixels``): pixel counts for a pooled precision and recall."""
    from laparo_learned import matched_pixels

    m = np.asarray(mask_net) > 0
    n = matched_pixels((np.asarray(pred_ridge) >= 0.5) & m, (np.asarray(true_ridge) >= 0.5) & m)
    return {f"ridge_{k}": v for k, v in n.items()}


#: slant above which a normal's tilt (its direction about the ray) is scored
TILT_MIN_SLANT_DEG = 15.0


def unit_rays(camera) -> np.ndarray:
    """``(3, NET_H, NET_W)``: the unit viewing ray of each network pixel of ``camera``."""
    from LiverLaparoRegLib.learned.landmarks_net import network_ray_map

    r = network_ray_map(camera)
    d = np.concatenate([r, np.ones((1,) + r.shape[1:], np.float32)])
    return d / np.linalg.norm(d, axis=0)


def slant_and_tilt(n, d):
    """Normals ``n (3, ...)`` split along the unit rays ``d (3, ...)``: the slant (radians,
    the angle between the normal and the reversed ray, which the shading of a light at
    the laparoscope carries) and the unit tilt vector (the normal's direction about the
    ray)."""
    n = n / np.maximum(np.linalg.norm(n, axis=0), 1e-9)
    c = -(n * d).sum(0)
    q = n + c * d
    return np.arccos(np.clip(c, -1, 1)), q / np.maximum(np.linalg.norm(q, axis=0), 1e-9)


def normal_error_parts(pred, true, mask_net, camera) -> dict:
    """The normal map's error split along the viewing ray (session 20), medians over the
    mask's pixels with a true normal: the slant's absolute error and its signed bias
    (predicted minus true), and the tilt's error, scored where the true slant is above
    :data:`TILT_MIN_SLANT_DEG` (:func:`slant_and_tilt`)."""
    on = (np.asarray(mask_net) > 0) & (np.linalg.norm(true, axis=0) > 0.5)
    if not on.any():
        return {}
    d = unit_rays(camera)[:, on]
    (sp, qp), (st, qt) = slant_and_tilt(pred[:, on], d), slant_and_tilt(true[:, on], d)
    slant_p, slant_t = np.degrees(sp), np.degrees(st)
    tilt = np.degrees(np.arccos(np.clip((qp * qt).sum(0), -1, 1)))
    w = slant_t > TILT_MIN_SLANT_DEG
    return {"slant_error_deg": round(float(np.median(np.abs(slant_p - slant_t))), 2),
            "slant_bias_deg": round(float(np.median(slant_p - slant_t)), 2),
            "tilt_error_deg": round(float(np.median(tilt[w])), 2) if w.any() else None}


def mixed_slant_tilt(pred, true, camera, true_part: str) -> np.ndarray:
    """A normal map ``(3, H, W)`` with the TRUE ``slant`` and the network's tilt, or the
    TRUE ``tilt`` and the network's slant (:func:`slant_and_tilt`; a half oracle of the
    normal map, session 20); the network's normal where the true map has none."""
    d = unit_rays(camera)
    (sp, qp), (st, qt) = slant_and_tilt(pred, d), slant_and_tilt(true, d)
    slant, q = (st, qp) if true_part == "slant" else (sp, qt)
    n = -np.cos(slant) * d + np.sin(slant) * q
    return np.where((np.linalg.norm(true, axis=0) > 0.5)[None], n, pred).astype(np.float32)


def pooled_ridge_agreement(rows) -> dict:
    """Pooled ridge precision / recall of :func:`ridge_agreement` rows."""
    n = {k: sum(r.get(k, 0) for r in rows) for k in ("ridge_true_px", "ridge_pred_px",
                                                      "ridge_pred_on_true_px",
                                                      "ridge_true_found_px")}
    return {"ridge_precision": round(n["ridge_pred_on_true_px"] / max(n["ridge_pred_px"], 1), 3),
            "ridge_recall": round(n["ridge_true_found_px"] / max(n["ridge_true_px"], 1), 3)}


def table(runs, md: Path, title: str) -> None:
    """One markdown table of the summaries of the run files ``runs``."""
    lines = [f"# {title}", "",
             "`python benchmarks/laparo_learned_dev.py` (see its docstring): SYNTHETIC "
             "development frames, never the held-out liver. Rotation error of the final "
             "pose; a failure (error raised) counts as 180 deg. Wall times on a shared CPU. "
             "Ridge precision / recall (session 17 on): the ridge pixels of the network "
             "loaded (also in TRUE-map runs; --ridge-model's where given) against the TRUE "
             "ridge map of the run's definition, 1-pixel tolerance.",
             "", "| shape | run | flips | translation start | frames | < 10 deg | < 5 deg "
             "| < 5 deg & 5 mm | > 20 deg | median rot. deg | wrong called ok | normal error "
             "deg (mean of frame medians) | ridge precision / recall | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    models, all_runs = {}, []
    for f in runs:
        d = json.loads(Path(f).read_text())
        all_runs.append(d)
        m, s = d["meta"], d["summary"]
        tag = m.get("tag") or Path(f).stem.replace(f"laparo_dev_{m['shape']}_", "")
        models.setdefault(m["model"], (tag, m.get("model_command")))
        lines.append(f"| {m['shape']} | {tag} | {m['flips']} | "
                     f"{m.get('translation_start', 'moment')} | {s['frames']} | "
                     f"{s.get('within_10_deg')} | {s.get('within_5_deg')} | "
                     f"{s.get('within_5_deg_5_mm', '-')} | "
                     f"{s.get('wrong_over_20_deg')} | {s.get('median_rot_deg')} | "
                     f"{s.get('wrong_called_ok')} | {s['normal_error_deg_mean']} | "
                     f"{s.get('ridge_precision', '-')} / {s.get('ridge_recall', '-')} | "
                     f"{m['wall_s']} |")
    lines += ["", "Models (first run named):", ""]
    lines += [f"- `{tag}`: {model} -- `{cmd}`" for model, (tag, cmd) in models.items()]
    md.write_text("\n".join(lines) + "\n")
    md.with_suffix(".json").write_text(json.dumps({"runs": all_runs}, indent=1))


def summarise(rows, maps_only: bool = False) -> dict:
    """The run's summary of its per-frame ``rows`` (a registration that raised counts as
    180 deg)."""
    rot = [r.get("rot_deg") if r.get("rot_deg") is not None else 180.0 for r in rows]
    ne = [r["normal_error_deg"] for r in rows if r["normal_error_deg"] is not None]
    summary = {"frames": len(rows),
               "normal_error_deg_mean": round(float(np.mean(ne)), 2) if ne else None,
               **{f"{k}_mean": round(float(np.mean(x)), 2) for k, x in (
                   (k, [r[k] for r in rows if r.get(k) is not None])
                   for k in ("slant_error_deg", "slant_bias_deg", "tilt_error_deg")) if x},
               **pooled_ridge_agreement(rows)}
    if not maps_only:
        summary.update({
            "within_10_deg": int(sum(x < 10 for x in rot)),
            "within_5_deg": int(sum(x < 5 for x in rot)),
            "within_5_deg_5_mm": int(sum(r.get("rot_deg") is not None and r["rot_deg"] < 5
                                         and r["centroid_mm"] < 5 for r in rows)),
            "wrong_over_20_deg": int(sum(x > 20 for x in rot)),
            "median_rot_deg": round(float(np.median(rot)), 2),
            "wrong_called_ok": int(sum(x > 20 and r.get("quality") == "ok"
                                       for x, r in zip(rot, rows)))})
    return summary


def merge(files, tag: str, out: Path) -> Path:
    """One run from the runs in ``files`` (the same shape, model and options on other
    seeds; ``laparo_learned.merged_runs``): rows concatenated, summary made again."""
    from laparo_learned import merged_runs

    parts, meta = merged_runs(files)
    for k in ("shape", "model"):
        if any(p["meta"].get(k) != meta.get(k) for p in parts):
            raise SystemExit(f"--merge: the runs differ in {k}")
    rows = [r for p in parts for r in p["rows"]]
    meta["tag"] = tag
    maps_only = all("rot_deg" not in r for r in rows)
    path = out / f"laparo_dev_{meta['shape']}_{tag}.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "summary": summarise(rows, maps_only),
                                "rows": rows}, indent=1))
    return path


def main():
    from LiverLaparoRegLib.learned.landmarks_align import TRANSLATION_STARTS
    from LiverLaparoRegLib.learned.data import RIDGE_DEFINITIONS
    from LiverLaparoRegLib.learned.landmarks_infer import FLIPS

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="landmark model (default: the bundled one)")
    ap.add_argument("--shape", default="twisted", choices=("train", "twisted", "smooth", "turned",
                                                     "blob", "sharp", "fine", "other"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--flips", type=int, default=1, choices=FLIPS)
    ap.add_argument("--translation-start", default="moment",
                    choices=TRANSLATION_STARTS)
    ap.add_argument("--maps-only", action="store_true",
                    help="only the network's normal error (no registration)")
    ap.add_argument("--true-maps", action="store_true",
                    help="feed the TRUE 2D maps and normal map (the oracle of the geometric "
                         "steps) instead of the network's")
    ap.add_argument("--no-normals", action="store_true",
                    help="with --true-maps: the TRUE 2D maps without the normal map")
    ap.add_argument("--true-part", default=None,
                    help="part of an oracle: these maps TRUE, the others the network's; a "
                         "comma list of ridge, ligament, silhouette, normals, or 2d (= the "
                         "three 2D maps)")
    ap.add_argument("--diagnosis-held-out", action="store_true",
                    help="run on the HELD-OUT liver's frames (seeds 0-2 are its "
                         "benchmark's): for diagnosis only, never for a choice")
    ap.add_argument("--ignore-normal-scale", action="store_true",
                    help="a model with the normals' uncertainty channel: do not weight the "
                         "normal term by it (ablation)")
    ap.add_argument("--w-ridge", type=float, default=None,
                    help="ridge weight of the search (default: the method's, 0 with the "
                         "network's maps, 0.5 with given maps)")
    ap.add_argument("--w-normal", type=float, default=None,
                    help="normal weight of the search (default: the method's, W_NORMAL)")
    ap.add_argument("--ridge-definition", default=None, choices=RIDGE_DEFINITIONS,
                    help="the mesh's 3D ridges (and the TRUE ridge map) by this definition "
                         "instead of the network's")
    ap.add_argument("--ridge-search-only", action="store_true",
                    help="the ridge only in the search, not in the image ICP and the "
                         "refinement (register_landmarks(ridge_in_refinement=False))")
    ap.add_argument("--ridge-tiebreak", action="store_true",
                    help="the ridge (weight --w-ridge) only re-ranks the search's near-equal "
                         "poses (register_landmarks(ridge_tiebreak=True))")
    ap.add_argument("--ridge-model", default=None,
                    help="the ridge map from this landmark model, the other maps from "
                         "--model's (given maps; the mesh's ridges by its definition)")
    ap.add_argument("--normal-ridge", type=float, default=None, metavar="PER_MM",
                    help="the tie-break's ridge map or'ed with the normal map's curvature "
                         ">= PER_MM (register_landmarks(normal_ridge=...)); its ridge "
                         "precision / recall are those at the TRUE depth")
    ap.add_argument("--no-ridge-channel", action="store_true",
                    help="the network's ridge channel zeroed (given maps): with "
                         "--normal-ridge, the normal ridge alone")
    ap.add_argument("--ridge-oracle", default=None, choices=("and", "or"),
                    help="diagnosis: the ridge map (with --normal-ridge: the union at the "
                         "TRUE depth) and'ed (its false pixels removed) or or'ed (its misses "
                         "filled) with the TRUE ridge map, as given maps")
    ap.add_argument("--true-normal-blend", type=float, default=None, metavar="ALPHA",
                    help="diagnosis: the network's normal map moved a fraction ALPHA toward "
                         "the TRUE one (per pixel, (1 - ALPHA) n_net + ALPHA n_true, unit "
                         "length again; given maps): how good a normal map must be")
    ap.add_argument("--true-normal-part", default=None, choices=("slant", "tilt"),
                    help="diagnosis: the TRUE slant (angle to the ray) with the network's "
                         "tilt, or the TRUE tilt with the network's slant")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--out", default="/tmp/laparo_dev")
    ap.add_argument("--table", nargs="+", default=None, metavar="RUN_JSON")
    ap.add_argument("--merge", nargs="+", default=None, metavar="RUN_JSON",
                    help="merge runs of the same model and options on other seeds into one "
                         "run <out>/laparo_dev_<shape>_<tag>.json (runs nothing)")
    ap.add_argument("--md", default=str(ROOT / "benchmarks" / "results" / "laparo_learned_dev.md"))
    ap.add_argument("--title", default="Learned landmark registration: development frames")
    a = ap.parse_args()
    if a.no_normals and not a.true_maps:
        ap.error("--no-normals: only with --true-maps")
    if a.true_part and a.true_maps:
        ap.error("--true-part: instead of --true-maps, not with it")
    parts = {"ridge": [0], "ligament": [1], "silhouette": [2], "normals": [3, 4, 5],
             "2d": [0, 1, 2]}
    true_channels = []
    for w in (a.true_part.split(",") if a.true_part else []):
        if w not in parts:
            ap.error(f"--true-part: unknown part {w!r} (expected {', '.join(parts)})")
        true_channels += parts[w]
    if a.diagnosis_held_out:
        a.shape = "held-out"
    if a.table:
        table(a.table, Path(a.md), a.title)
        return
    if a.merge:
        print(merge(a.merge, a.tag, Path(a.out)))
        return
    import torch
    torch.set_num_threads(1)

    from laparo_learned import normal_error_deg

    from SurgicalReg2D3DLib.metrics import rotation_error_deg
    from LiverLaparoRegLib.metrics import pose_errors
    from LiverLaparoRegLib.learned import landmarks_infer as li
    from LiverLaparoRegLib.learned.evaluation import full_frame
    from LiverLaparoRegLib.learned.landmarks_curvature import with_normal_ridge
    from LiverLaparoRegLib.learned.landmarks_search import view_angle_deg
    from LiverLaparoRegLib.learned.modelfile import load_model

    net, rec = load_model(a.model, kind="landmarks")
    ridge_net = load_model(a.ridge_model, kind="landmarks")[0] if a.ridge_model else None
    mesh, tm, camera_of = shape_and_cameras(a.shape)
    from LiverLaparoRegLib.learned import data
    ridge_def = a.ridge_definition or (ridge_net or net).config.get("ridge_definition", "ring")
    ridge3d = data.ridge_vertices(mesh.vertices, mesh.faces, definition=ridge_def)
    centre = np.asarray(mesh.vertices, float).mean(0)
    rows = []
    t0 = time.time()
    for seed in a.seeds:
        for k in range(a.frames):
            rng = np.random.default_rng([seed, 1000 + k])
            cam = camera_of(k)
            s, img, mask = full_frame(tm, cam, rng)
            T = s.model_to_camera
            true_n = li.true_maps(mesh.vertices, mesh.faces, T, cam, ridge=ridge3d,
                                  normals=True)
            pred = li.predict_maps(net, img, mask, cam, flips=a.flips)
            ridge_channel = (pred[0] if ridge_net is None    # --ridge-model's if given
                             else li.predict_maps(ridge_net, img, mask, cam, flips=a.flips)[0])
            if a.no_ridge_channel:
                ridge_channel = np.zeros_like(ridge_channel)
            m_net = li.observations(true_n[:3], mask, cam)["mask_net"]
            ridge_used = ridge_channel
            if a.normal_ridge:        # the tie-break's ridge map, at the TRUE depth here
                ridge_used = with_normal_ridge(
                    np.concatenate([[ridge_channel], pred[1:6]]), m_net, data.net_camera(cam).K,
                    float(T[2, :3] @ centre + T[2, 3]), a.normal_ridge)[0]
            row = {"seed": seed, "frame": k, "view_deg": round(view_angle_deg(T), 1),
                   "normal_error_deg": normal_error_deg(pred[3:6], true_n[3:], m_net),
                   **normal_error_parts(pred[3:6], true_n[3:], m_net, cam),
                   **ridge_agreement(ridge_used, true_n[0], m_net)}
            t1 = time.perf_counter()
            if a.maps_only:
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            given = ({"maps": true_n[:3] if a.no_normals else true_n} if a.true_maps
                     else {"net": net, "flips": a.flips})   # TRUE maps: the oracle
            # the network's maps changed by the options, given as maps (each composes)
            mixed = np.array(pred[:6], np.float32)
            mixed[0] = ridge_channel                         # --ridge-model, --no-ridge-channel
            if a.ridge_oracle:      # the ridge map used (union at the TRUE depth) and/or TRUE
                both = np.logical_and if a.ridge_oracle == "and" else np.logical_or
                mixed[0] = both(ridge_used >= 0.5, true_n[0] >= 0.5)
            for c in true_channels:                          # part of an oracle
                mixed[c] = true_n[c]
            if a.true_normal_blend is not None:              # a normal map between the two
                n_true = true_n[3:6]
                n = (1 - a.true_normal_blend) * mixed[3:6] + a.true_normal_blend * n_true
                n /= np.maximum(np.linalg.norm(n, axis=0, keepdims=True), 1e-6)
                has_true = np.linalg.norm(n_true, axis=0) > 0.5
                mixed[3:6] = np.where(has_true[None], n, mixed[3:6])
                row["blend_normal_error_deg"] = normal_error_deg(mixed[3:6], true_n[3:], m_net)
            if a.true_normal_part:                           # slant or tilt TRUE
                mixed[3:6] = mixed_slant_tilt(mixed[3:6], true_n[3:6], cam, a.true_normal_part)
                row["mixed_normal_error_deg"] = normal_error_deg(mixed[3:6], true_n[3:], m_net)
            if (ridge_net is not None or a.no_ridge_channel or a.ridge_oracle or true_channels
                    or a.true_normal_blend is not None or a.true_normal_part):
                given = {"maps": mixed}
            try:
                r = li.register_landmarks(mesh, cam, img, mask,
                                          translation_start=a.translation_start,
                                          normal_uncertainty=not a.ignore_normal_scale,
                                          ridge_definition=ridge_def, w_ridge=a.w_ridge,
                                          w_normal=a.w_normal,
                                          ridge_in_refinement=not a.ridge_search_only,
                                          ridge_tiebreak=a.ridge_tiebreak,
                                          normal_ridge=None if a.ridge_oracle else a.normal_ridge,
                                          **given)
                row.update(rot_deg=round(float(rotation_error_deg(r.model_to_camera[:3, :3],
                                                                  T[:3, :3])), 2),
                           stage1_rot_deg=round(float(rotation_error_deg(
                               r.stage1_model_to_camera[:3, :3], T[:3, :3])), 2),
                           centroid_mm=round(pose_errors(r.model_to_camera, T, centre)[
                               "centroid_error_mm"], 2),
                           quality=r.quality.verdict)
            except Exception as exc:  # noqa: BLE001  (a failure is a result here)
                row.update(rot_deg=None, error=str(exc)[:160], quality="error")
            row["seconds"] = round(time.perf_counter() - t1, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = summarise(rows, a.maps_only)
    meta = {"model": ("TRUE maps" + (", no normals" if a.no_normals else "")) if a.true_maps
            else (a.model or "bundled") + (f", TRUE {a.true_part}" if a.true_part else "")
            + (f", ridge from {a.ridge_model}" if a.ridge_model else "")
            + (f", normals {a.true_normal_blend} of the way to TRUE"
               if a.true_normal_blend is not None else "")
            + (f", TRUE normal {a.true_normal_part}" if a.true_normal_part else ""),
            "model_command": rec.get("command"), "tag": a.tag,
            "shape": a.shape, "seeds": a.seeds, "frames": a.frames, "flips": a.flips,
            "translation_start": a.translation_start, "w_ridge": a.w_ridge,
            "w_normal": a.w_normal,
            "ridge_definition": ridge_def, "ridge_search_only": a.ridge_search_only,
            "ridge_tiebreak": a.ridge_tiebreak, "normal_ridge": a.normal_ridge,
            "no_ridge_channel": a.no_ridge_channel, "ridge_oracle": a.ridge_oracle,
            "true_normal_blend": a.true_normal_blend, "true_normal_part": a.true_normal_part,
            "normal_uncertainty_ignored": bool(a.ignore_normal_scale),
            "wall_s": round(time.time() - t0, 1), "load_average_end": list(os.getloadavg())}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"laparo_dev_{a.shape}_{a.tag}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    print(json.dumps({"summary": summary, "meta": meta}))


if __name__ == "__main__":
    main()
