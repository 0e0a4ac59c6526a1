"""SYNTHETIC full-size test frames and error measures for the learned registration
(used by ``benchmarks/laparo_learned.py`` and the demo).

:func:`full_frame` renders a :mod:`.data` sample of a mesh with a given camera: the
frame is the network-resolution rendering (128 x 96) upscaled to the camera size, the
liver mask is rendered at 480 px wide, upscaled, minus the instruments.
"""

from __future__ import annotations

import time

import numpy as np


def held_out_train_mesh():
    """The held-out SciKit-Surgery liver (``models/liver.vtk``) as a :class:`.data.TrainMesh`
    whose view axis is the viewing direction of its real shipped laparoscope pose, with
    that pose's camera: ``(mesh, train_mesh, camera)``."""
    from ..sample_data import held_out_mesh  # noqa: PLC0415
    from ..mesh import load_mesh  # noqa: PLC0415
    from . import data  # noqa: PLC0415

    mesh = load_mesh(held_out_mesh())
    _, T_real, cam = data.sksurgery_mesh_and_pose()
    tm = data.train_mesh(mesh, view_axis=T_real[:3, :3].T @ np.array([0.0, 0.0, 1.0]))
    return mesh, tm, cam


def full_frame(tm, cam, rng, bend: float = 0.0):
    """A SYNTHETIC full-size frame: ``(sample, image (H, W, 3) uint8, mask (H, W) bool)``."""
    import cv2  # noqa: PLC0415

    from ..raster import render_mask  # noqa: PLC0415
    from . import data  # noqa: PLC0415

    s = data.make_sample(tm, rng, camera=cam, preop=False, bend_curvature=bend, keep_meshes=True)
    img = cv2.resize(np.transpose(s.image, (1, 2, 0)), (cam.width, cam.height),
                     interpolation=cv2.INTER_LINEAR)
    f = max(1.0, cam.width / 480.0)
    m = render_mask(s.intraop_vertices, s.faces, s.model_to_camera, cam.scaled(f))[0].numpy()
    m = cv2.resize(m.astype(np.uint8), (cam.width, cam.height),
                   interpolation=cv2.INTER_NEAREST).astype(bool)
    for o in s.extras.get("occluders", []):
        m &= ~cv2.resize(o.astype(np.uint8), (cam.width, cam.height),
                         interpolation=cv2.INTER_NEAREST).astype(bool)
    return s, (np.clip(img, 0, 1) * 255).astype(np.uint8), m


def visible_vertices(vertices, faces, T, cam) -> np.ndarray:
    """Vertices visible at pose ``T`` (depth test at 480 px wide)."""
    from . import data  # noqa: PLC0415

    c = cam.scaled(max(1.0, cam.width / 480.0))
    depth, face, _, uv, z = data.render_ids(vertices, faces, T, c)
    return data.vertex_visibility(uv, z, depth, face >= 0)


def reprojection_px(T_est, T_true, vertices, visible, cam):
    """Median image distance (px) between the ``visible`` vertices projected with the
    estimated and with the true pose (inf when the estimate puts some behind the camera;
    the median because, in close-ups, vertices near the camera plane project far out)."""
    if not np.any(visible):
        return None
    v = np.asarray(vertices)[visible]
    a = cam.project(v @ T_true[:3, :3].T + T_true[:3, 3]).numpy()
    pc = v @ T_est[:3, :3].T + T_est[:3, 3]
    if (pc[:, 2] <= 1).any():
        return float("inf")
    return float(np.median(np.linalg.norm(a - cam.project(pc).numpy(), axis=1)))


def demo_case(out_dir, seed: int = 3) -> dict:
    """The demo's learned case: the default learned method (the bundled landmark model,
    :func:`.landmarks_infer.register_landmarks`) on one SYNTHETIC frame of the held-out
    SciKit-Surgery liver (P2ILF camera); writes ``laparo_learned_overlay.png`` (frame,
    true outline, estimated outline, correspondences: inliers green, outliers red)."""
    from pathlib import Path  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from ..sample_data import sample_data_dir  # noqa: PLC0415
    from ..camera import load_camera  # noqa: PLC0415
    from ..raster import mesh_outline_uv  # noqa: PLC0415
    from .landmarks_infer import register_landmarks  # noqa: PLC0415
    from .modelfile import load_model  # noqa: PLC0415

    try:
        net, rec = load_model(None, kind="landmarks")
    except Exception as exc:  # noqa: BLE001  (no bundled model: say so, do not fail)
        return {"skipped": f"no bundled learned model ({exc})"}
    mesh, tm, _ = held_out_train_mesh()
    cam = load_camera(sample_data_dir() / "p2ilf" / "cameraparams" /
                      "acquisition-camera-metadata.json")
    s, img, mask = full_frame(tm, cam, np.random.default_rng(seed))
    T = s.model_to_camera
    out = {"case": "SYNTHETIC frame of the held-out SciKit-Surgery liver, P2ILF camera",
           "model": rec.get("path")}
    try:
        r = register_landmarks(mesh, cam, img, mask, net=net, ground_truth=T)
    except Exception as exc:  # noqa: BLE001
        out["error"] = str(exc)
        return out
    m = r.metrics
    out.update(rotation_deg=m.get("rotation_deg"), centroid_error_mm=m.get("centroid_error_mm"),
               stage1_rotation_deg=m.get("stage1", {}).get("rotation_deg"),
               mask_dice=m.get("mask_dice"), correspondences=len(r.correspondences),
               inliers=m["learned"]["inliers"], quality=r.quality.verdict,
               seconds=r.timings.get("total_s"))
    small = cam.scaled(4.0)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.imshow(img)
    for T_, col, lab in ((T, "w", "true"), (r.model_to_camera, "c", "learned")):
        for k, c in enumerate(mesh_outline_uv(mesh.vertices, mesh.faces, T_, small)):
            ax.plot((c[:, 0] + 0.5) * 4 - 0.5, (c[:, 1] + 0.5) * 4 - 0.5, col + "-", lw=1,
                    label=lab if k == 0 else None)
    p = np.array([c["pixel"] for c in r.correspondences])
    inl = np.array([c["inlier"] for c in r.correspondences])
    ax.plot(p[inl, 0], p[inl, 1], "g.", ms=4, label="inlier matches")
    ax.plot(p[~inl, 0], p[~inl, 1], "r.", ms=4, label="outlier matches")
    ax.set_xlim(0, cam.width)
    ax.set_ylim(cam.height, 0)
    ax.legend(loc="lower right", fontsize=6)
    ax.set_title(f"SYNTHETIC frame, held-out liver: learned (no init, no contours) rot "
                 f"{out['rotation_deg']:.1f} deg, centroid {out['centroid_error_mm']:.1f} mm, "
                 f"Dice {out['mask_dice']:.3f}; its verdict: {out['quality']}", fontsize=8)
    fig.savefig(Path(out_dir) / "laparo_learned_overlay.png", dpi=100)
    plt.close(fig)
    out["picture"] = "laparo_learned_overlay.png"
    return out


def _r(x, n=3):
    return None if x is None else round(float(x), n)


def clip_contours(case, mask):
    """The synthetic contours' 2D points inside the frame and the mask (>= 5 kept)."""
    from ..p2ilf import Contour2D  # noqa: PLC0415

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


def frame_scorer(mesh, cam, T, mask, k: int, rows: list, log=None, **fields):
    """``(base, score)`` of one benchmark frame: ``base`` holds the frame's fields (index,
    camera, liver fraction in the mask, median depth, plus ``fields``; add to it and later
    rows carry it), ``score(method, T_est, seconds, extra=None)`` appends one row to
    ``rows`` with the errors of ``T_est`` against the true ``T`` (rotation, translation,
    centroid, mask Dice, reprojection px) or ``failed`` when ``T_est`` is None."""
    import json  # noqa: PLC0415

    from ..result import evaluate  # noqa: PLC0415

    vis = visible_vertices(mesh.vertices, mesh.faces, T, cam)
    base = dict(fields, frame=k,
                camera="P2ILF 1920x1080" if k % 2 == 0 else "SciKit-Surgery 1920x540",
                liver_in_mask_fraction=_r(mask.mean(), 3),
                distance_mm=_r(np.median((mesh.vertices[vis] @ T[:3, :3].T + T[:3, 3])[:, 2])
                               if vis.any() else None, 1))

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
                       reprojection_px=_r(reprojection_px(T_est, T, mesh.vertices, vis, cam), 1))
        row.update(extra or {})
        rows.append(row)
        if log is not None:
            log(json.dumps(row))

    return base, score


def run_baselines(mesh, cam, T, mask, seed: int, rng, score, silhouette: bool = True) -> None:
    """The classic baselines on one synthetic frame at the true pose ``T``, reported with
    ``score(name, model_to_camera or None, seconds, extra=None)``: contour-PnP on the
    synthetic landmark curves (1 px noise) clipped to the visible part, and (``silhouette``)
    the silhouette refinement from a start 10 deg / 20 mm off (drawn from ``rng``). A
    failure is a result (``None`` pose, the error in ``extra``)."""
    from .. import synthetic  # noqa: PLC0415
    from ..bench import perturb  # noqa: PLC0415
    from ..logic import register  # noqa: PLC0415

    case = synthetic.make_case(mesh, cam, T, noise_px=1.0, render=False, seed=seed)
    c2, c3, kept = clip_contours(case, mask)
    visible = {"contour_visible_fraction": [_r(x, 2) for x in kept]}
    t0 = time.perf_counter()
    try:
        if not c2:
            raise ValueError("no contour visible")
        rp = register(mesh, cam, contours2d=c2, contours3d=c3, method="pnp")
        score("contour-pnp", rp.model_to_camera, time.perf_counter() - t0, visible)
    except Exception as exc:  # noqa: BLE001  (a failure is a result here)
        score("contour-pnp", None, time.perf_counter() - t0, dict(visible, error=str(exc)[:160]))
    if not silhouette:
        return
    T0 = perturb(T, mesh.vertices, 10.0, 20.0, rng)
    t0 = time.perf_counter()
    try:
        rs = register(mesh, cam, mask=mask, init=T0, method="silhouette")
        score("silhouette (init 10 deg / 20 mm)", rs.model_to_camera, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001
        score("silhouette (init 10 deg / 20 mm)", None, time.perf_counter() - t0,
              {"error": str(exc)[:160]})


def run_bench(model=None, frames=10, seed=0, stage2_frames=4, quick=False, log=print):
    """The benchmark protocol of ``benchmarks/laparo_learned.py`` (see its docstring):
    ``(rows, stage2 rows, model record)``."""
    import json  # noqa: PLC0415

    from ..sample_data import sample_data_dir  # noqa: PLC0415
    from ..camera import load_camera  # noqa: PLC0415
    from .infer import register_learned  # noqa: PLC0415
    from .modelfile import load_model  # noqa: PLC0415
    from .stage2 import deform_stage2  # noqa: PLC0415

    net, rec = load_model(model)
    mesh, tm, cam_sks = held_out_train_mesh()
    cam_p2 = load_camera(sample_data_dir() / "p2ilf" / "cameraparams" /
                         "acquisition-camera-metadata.json")
    rows = []
    for k in range(frames):
        rng = np.random.default_rng([seed, 1000 + k])
        cam = cam_p2 if k % 2 == 0 else cam_sks
        s, img, mask = full_frame(tm, cam, rng)
        T = s.model_to_camera
        base, score = frame_scorer(mesh, cam, T, mask, k, rows, log)

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
        run_baselines(mesh, cam, T, mask, k, rng, score, silhouette=not quick)
    # ---- Stage II on bent frames (oracle rigid pose, Stage I pairs)
    s2rows = []
    for k in range(stage2_frames):
        rng = np.random.default_rng([seed, 2000 + k])
        cam = cam_p2 if k % 2 == 0 else cam_sks
        s, img, mask = full_frame(tm, cam, rng, bend=1 / 160.0)
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
    """Per-method summary of :func:`run_bench` rows."""
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
        if any("quality" in r for r in ok):     # the verdict against the truth
            right = [r.get("quality") for r in ok if r["rotation_deg"] < 10]
            bad = [r.get("quality") for r in ok if r["rotation_deg"] > 20]
            out[m]["verdicts"] = {
                "right_lt10deg": {v: right.count(v) for v in ("ok", "doubtful", "failed")},
                "wrong_gt20deg": {v: bad.count(v) for v in ("ok", "doubtful", "failed")}}
    return out
