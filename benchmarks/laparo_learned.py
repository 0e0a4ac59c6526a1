"""LiverLaparoReg learned registration benchmark (SYNTHETIC frames of a held-out mesh).

Run::

    nice -n 10 python benchmarks/laparo_learned.py [--model M.pt] [--frames 10] [--quick]

Writes ``benchmarks/results/laparo_learned.{md,json}`` (``--out DIR`` elsewhere).

Cases: SYNTHETIC frames (``learned/data.py``: the appearance model, instruments, blur,
noise) of the SciKit-Surgery liver (``liver_sksurgery/models/liver.vtk``), which is NOT
used in training (the bundled model is trained on the P2ILF mesh only). Cameras
alternate between the P2ILF camera (1920 x 1080, its distortion) and the SciKit-Surgery
left camera (1920 x 540); poses: 80-250 mm from the liver within 50 deg of the real
shipped SciKit-Surgery laparoscope pose's viewing direction. The frame is rendered at the
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
liver centroid (mm), rendered-mask Dice (480 px wide), reprojection error = mean image
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


def frame(tm, cam, rng, bend=0.0):
    from LiverLaparoRegLib.learned.evaluation import full_frame

    return full_frame(tm, cam, rng, bend)


def visible_vertices(vertices, faces, T, cam):
    from LiverLaparoRegLib.learned.evaluation import visible_vertices as vv

    return vv(vertices, faces, T, cam)


def reproj_px(T_est, T_true, verts, vis, cam):
    from LiverLaparoRegLib.learned.evaluation import reprojection_px

    return reprojection_px(T_est, T_true, verts, vis, cam)


def clip_contours(case, mask):
    from LiverLaparoRegLib.p2ilf import Contour2D

    H, W = mask.shape
    c2, c3, kept = [], [], []
    for a, b in zip(case.contours2d, case.contours3d):
        p = a.points
        u, v = np.round(p[:, 0]).astype(int), np.round(p[:, 1]).astype(int)
        ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        ok[ok] = mask[v[ok], u[ok]]
        if ok.sum() >= 5:
            c2.append(Contour2D(a.label, p[ok]))
            c3.append(b)
        kept.append(float(ok.mean()))
    return c2, c3, kept


def run(model=None, frames=10, seed=0, stage2_frames=4, quick=False, log=print):
    from LiverLaparoRegLib import synthetic
    from LiverLaparoRegLib.learned.infer import register_learned
    from LiverLaparoRegLib.learned.modelfile import load_model
    from LiverLaparoRegLib.learned.stage2 import deform_stage2
    from LiverLaparoRegLib.bench import perturb
    from LiverLaparoRegLib.logic import evaluate, register

    from LiverLaparoRegLib.learned.evaluation import held_out_train_mesh

    net, rec = load_model(model)
    mesh, tm, cam_sks = held_out_train_mesh()
    from LiverLaparoRegLib.bench import sample_data_dir
    from LiverLaparoRegLib.camera import load_camera
    cam_p2 = load_camera(sample_data_dir() / "p2ilf" / "cameraparams" /
                         "acquisition-camera-metadata.json")
    rows = []
    centre = mesh.vertices.mean(0)
    for k in range(frames):
        rng = np.random.default_rng([seed, 1000 + k])
        cam = cam_p2 if k % 2 == 0 else cam_sks
        s, img, mask = frame(tm, cam, rng)
        T = s.model_to_camera
        vis = visible_vertices(mesh.vertices, mesh.faces, T, cam)
        base = {"frame": k, "camera": "P2ILF 1920x1080" if k % 2 == 0 else "SciKit-Surgery 1920x540",
                "liver_in_mask_fraction": _r(mask.mean(), 3),
                "distance_mm": _r(np.median((mesh.vertices[vis] @ T[:3, :3].T + T[:3, 3])[:, 2])
                                  if vis.any() else None, 1)}

        def score(method, T_est, seconds, extra=None):
            row = dict(base, method=method, seconds=_r(seconds))
            if T_est is None:
                row.update(failed=True)
            else:
                ev = evaluate(mesh, cam, T_est, mask=mask, ground_truth=T)
                row.update(failed=False, rotation_deg=_r(ev["rotation_deg"]),
                           translation_mm=_r(ev["translation_mm"]),
                           centroid_error_mm=_r(ev["centroid_error_mm"]),
                           dice=_r(ev["mask_dice"], 4),
                           reprojection_px=_r(reproj_px(T_est, T, mesh.vertices, vis, cam), 1))
            row.update(extra or {})
            rows.append(row)
            log(json.dumps(row))

        t0 = time.perf_counter()
        try:
            r = register_learned(mesh, cam, img, mask, net=net, ground_truth=T)
            dt = time.perf_counter() - t0
            st1 = r.timings.get("network_s", 0) + r.timings.get("pnp_s", 0)
            extra = {"correspondences": len(r.correspondences),
                     "inliers": r.metrics["learned"]["inliers"],
                     "quality": r.quality.verdict}
            score("learned stage I", r.stage1_model_to_camera, st1, extra)
            score("learned", r.model_to_camera, dt, extra)
        except Exception as exc:  # noqa: BLE001  (a failure is a result here)
            dt = time.perf_counter() - t0
            score("learned stage I", None, dt, {"error": str(exc)[:160]})
            score("learned", None, dt, {"error": str(exc)[:160]})
        case = synthetic.make_case(mesh, cam, T, noise_px=1.0, render=False, seed=k)
        c2, c3, kept = clip_contours(case, mask)
        t0 = time.perf_counter()
        try:
            if not c2:
                raise ValueError("no contour visible")
            rp = register(mesh, cam, contours2d=c2, contours3d=c3, method="pnp")
            score("contour-pnp", rp.model_to_camera, time.perf_counter() - t0,
                  {"contour_visible_fraction": [_r(x, 2) for x in kept]})
        except Exception as exc:  # noqa: BLE001
            score("contour-pnp", None, time.perf_counter() - t0,
                  {"error": str(exc)[:160], "contour_visible_fraction": [_r(x, 2) for x in kept]})
        if not quick:
            T0 = perturb(T, mesh.vertices, 10.0, 20.0, rng)
            t0 = time.perf_counter()
            try:
                rs = register(mesh, cam, mask=mask, init=T0, method="silhouette")
                score("silhouette (init 10 deg / 20 mm)", rs.model_to_camera,
                      time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                score("silhouette (init 10 deg / 20 mm)", None, time.perf_counter() - t0,
                      {"error": str(exc)[:160]})
    # ---- Stage II on bent frames (oracle rigid pose, Stage I pairs)
    s2rows = []
    for k in range(stage2_frames):
        rng = np.random.default_rng([seed, 2000 + k])
        cam = cam_p2 if k % 2 == 0 else cam_sks
        s, img, mask = frame(tm, cam, rng, bend=1 / 160.0)
        T, vb = s.model_to_camera, s.intraop_vertices
        vis = visible_vertices(vb, mesh.faces, T, cam)
        try:
            r = register_learned(mesh, cam, img, mask, net=net, refine=False)
            pairs = [c for c in r.correspondences if c.get("inlier")]
        except Exception:  # noqa: BLE001
            pairs = []
        e0 = np.linalg.norm(mesh.vertices - vb, axis=1)
        row = {"frame": k, "pairs": len(pairs), "bend_mean_displacement_mm": _r(e0.mean(), 2),
               "before_all_mm": _r(e0.mean(), 2), "before_visible_mm": _r(e0[vis].mean(), 2)}
        for name, rw, iw in (("full", 10.0, 10.0), ("no reprojection", 0.0, 10.0),
                             ("no isometry", 10.0, 0.0)):
            t0 = time.perf_counter()
            d = deform_stage2(mesh, cam, T, mask=mask, pairs=pairs, reprojection_weight=rw,
                              isometry_weight=iw)
            e1 = np.linalg.norm(d.vertices - vb, axis=1)
            row[name] = {"all_mm": _r(e1.mean(), 2), "visible_mm": _r(e1[vis].mean(), 2),
                         "seconds": _r(time.perf_counter() - t0, 2)}
        s2rows.append(row)
        log(json.dumps(row))
    return rows, s2rows, rec


def summarise(rows):
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        rr = [r for r in rows if r["method"] == m]
        ok = [r for r in rr if not r["failed"]]
        rot = np.array([r["rotation_deg"] for r in ok]) if ok else np.zeros(0)
        wrong = sum(1 for r in rr if r["failed"]) + int((rot > 20).sum())

        def med(key):
            v = [r[key] for r in ok if r.get(key) is not None and np.isfinite(r[key])]
            return _r(np.median(v), 2) if v else None

        out[m] = {"frames": len(rr), "failed": sum(1 for r in rr if r["failed"]),
                  "wrong_gt20deg_or_failed": wrong, "fraction_wrong": _r(wrong / len(rr), 2),
                  "median_rotation_deg": med("rotation_deg"),
                  "median_translation_mm": med("translation_mm"),
                  "median_centroid_error_mm": med("centroid_error_mm"),
                  "median_dice": med("dice"), "median_reprojection_px": med("reprojection_px"),
                  "median_seconds": _r(np.median([r["seconds"] for r in rr]), 2),
                  "frames_under_10deg": int((rot < 10).sum()),
                  "frames_under_5deg_5mm": int(sum(1 for r in ok if r["rotation_deg"] < 5
                                                   and r["centroid_error_mm"] < 5))}
    return out


def markdown(summ, s2, meta, notes=""):
    L = ["# LiverLaparoReg learned registration: benchmark (SYNTHETIC frames, held-out mesh)", "",
         "Produced by `benchmarks/laparo_learned.py` (see its docstring for the protocol). "
         "All frames are SYNTHETIC renders of the SciKit-Surgery liver, which the model "
         "never saw in training. Timings on a CPU shared with other jobs (1 torch thread; "
         f"load average at the end {[round(x, 1) for x in meta['load_average_end']]}).", "",
         f"Model: `{meta['model']}`; training: {meta['model_training']}", "",
         "| method | frames | failed | wrong (>20 deg or failed) | median rot deg | median "
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--stage2-frames", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    t0 = time.time()
    rows, s2, rec = run(a.model, a.frames, a.seed, a.stage2_frames, a.quick)
    summ = summarise(rows)
    meta = {"model": rec.get("path"), "model_training": {k: rec.get(k) for k in
                                                         ("data", "command", "seed", "steps",
                                                          "wall_s", "load_average")},
            "frames": a.frames, "seed": a.seed, "wall_s": round(time.time() - t0, 1),
            "load_average_end": list(os.getloadavg()), "cpu": platform.processor() or
            platform.machine(), "torch_threads": 1}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "laparo_learned.json").write_text(json.dumps({"meta": meta, "summary": summ,
                                                         "rows": rows, "stage2": s2}, indent=1))
    notes_file = out / "laparo_learned_notes.md"
    notes = notes_file.read_text() if notes_file.is_file() else ""
    (out / "laparo_learned.md").write_text(markdown(summ, s2, meta, notes))
    print(json.dumps({"summary": summ, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
