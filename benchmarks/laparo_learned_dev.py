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
  (:func:`other_liver_mesh`). Its frames are SYNTHETIC renders like all the others.

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

#: the ``twisted`` shape: twist (deg, end to end) about the longest principal axis and
#: the scale factors along the second and third axes
TWIST_DEG, STRETCH = 40.0, (1.15, 0.85)


def twisted_mesh(tm):
    """The ``twisted`` development shape of the training mesh ``tm`` (module docstring):
    ``(MeshData, TrainMesh)``; the view axis of ``tm`` is kept (the frames look at the
    same surface)."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    R, c = data.canonical_frame(v)
    x = (v - c) @ R.T                                  # principal axes, longest first
    half = np.abs(x[:, 0]).max()
    a = np.radians(TWIST_DEG / 2.0) * x[:, 0] / half
    y, z = x[:, 1] * STRETCH[0], x[:, 2] * STRETCH[1]
    x2 = np.stack([x[:, 0], np.cos(a) * y - np.sin(a) * z, np.sin(a) * y + np.cos(a) * z], 1)
    mesh = MeshData(x2 @ R + c, np.asarray(tm.faces), name="p2ilf_twisted_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


#: the ``smooth`` shape: Taubin smoothing (lambda, mu, iterations) of the training mesh
SMOOTH = (0.5, -0.53, 40)


def smooth_mesh(tm):
    """The ``smooth`` development shape of the training mesh ``tm``: Taubin-smoothed
    (:data:`SMOOTH`, uniform neighbour weights; the volume is kept, the ridges and folds
    are rounded), so that the shape is less distinctive: a probe of whether the
    development frames can show the gap between the network and the oracle that the
    held-out liver shows. ``(MeshData, TrainMesh)``, the view axis of ``tm`` kept."""
    from LiverLaparoRegLib.learned import data, shapes
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    A = shapes.neighbour_mean(v, f)
    lam, mu, n = SMOOTH
    for _ in range(n):
        v = v + lam * (A @ v - v)
        v = v + mu * (A @ v - v)
    mesh = MeshData(v, f, name="p2ilf_smooth_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


#: the ``turned`` shape: the angle (deg) between the view axis and the longest principal
#: axis of the shape, as it is seen in the frames (training mesh: 59 deg)
TURN_TO_LONG_AXIS_DEG = 30.0


def turned_mesh(tm):
    """The ``turned`` development shape: the training mesh ``tm`` rigidly rotated about
    its centroid so that the frames, drawn around the view axis of ``tm`` (kept), see it
    along a direction :data:`TURN_TO_LONG_AXIS_DEG` from its longest principal axis
    instead of 59 deg: the training mesh from a side the training frames rarely show (the
    held-out liver's view axis is 28 deg from its own longest axis). The shape is the
    training mesh's; only the side in view and the silhouettes differ. ``(MeshData,
    TrainMesh)``."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    R, c = data.canonical_frame(v)
    w0 = np.asarray(tm.view_axis, float) / np.linalg.norm(tm.view_axis)
    e1 = R[0] if R[0] @ w0 >= 0 else -R[0]
    u = w0 - (w0 @ e1) * e1                            # the plane of e1 and w0
    u /= np.linalg.norm(u)
    t = np.radians(TURN_TO_LONG_AXIS_DEG)
    a_new = np.cos(t) * e1 + np.sin(t) * u             # the direction to be seen
    k = np.cross(a_new, w0)                            # rotate a_new onto w0
    Rt = data.rotation(k, np.arctan2(np.linalg.norm(k), a_new @ w0))
    mesh = MeshData((v - c) @ Rt.T + c, np.asarray(tm.faces), name="p2ilf_turned_dev")
    return mesh, data.train_mesh(mesh, view_axis=w0)


#: the ``blob`` shape: Laplacian steps (of 0.5) of the training mesh, then each principal
#: axis stretched back to its original extent
BLOB_STEPS = 150


def blob_mesh(tm):
    """The ``blob`` development shape: the training mesh Laplacian-smoothed until its
    notches and folds are gone (:data:`BLOB_STEPS`; it shrinks), then stretched back to the
    training mesh's extents along each principal axis: a rounded liver-sized shape whose
    outline fits many poses alike; a probe (session 16) for development frames where the
    outline does not fix the pose. ``(MeshData, TrainMesh)``, the view axis of ``tm``
    kept."""
    from LiverLaparoRegLib.learned import data, shapes
    from LiverLaparoRegLib.mesh import MeshData

    v0 = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    # S^k v itself, not shapes.rounded's v - (v - S^k v): the two differ by 1e-14 mm, and
    # the development frames' registrations recorded since session 16 are of this one
    v = shapes.laplacian_smooth(v0, shapes.neighbour_mean(v0, f), BLOB_STEPS)
    mesh = MeshData(shapes.stretched_to(v, v0), f, name="p2ilf_blob_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


#: the ``sharp`` shape: the training mesh's detail band (Laplacian steps 4 to k) added
#: with gain g, then stretched back to its extents (``shapes.sharpened``)
SHARP = (20, 1.0)


def sharp_mesh(tm):
    """The ``sharp`` development shape: the training mesh ``tm`` with its detail between
    4 and ``SHARP[0]`` Laplacian steps amplified (gain ``SHARP[1]``, as the sharper half of
    ``train --relief`` draws it) and stretched back to its extents: `scale` ridges on 20 %
    of its area (training mesh 8 %, the held-out liver 20 %), a probe (session 18) of
    whether a sharper unseen shape shows the held-out liver's gap. ``(MeshData,
    TrainMesh)``, the view axis of ``tm`` kept."""
    from LiverLaparoRegLib.learned import data, shapes
    from LiverLaparoRegLib.mesh import MeshData

    v0 = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    mesh = MeshData(shapes.sharpened(v0, shapes.neighbour_mean(v0, f), *SHARP), f,
                    name="p2ilf_sharp_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


def fine_mesh(tm):
    """The ``fine`` development shape: the training mesh ``tm`` with each triangle split
    into four at its edge midpoints (the same surface, 16,002 vertices, mean edge 3.2 mm,
    near the held-out liver's 3.9 mm against the training mesh's 6.4 mm): a probe
    (session 18) of whether the mesh's resolution alone (the `ring` ridge band follows
    it) opens the held-out liver's gap. ``(MeshData, TrainMesh)``, the view axis kept."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.mesh import MeshData

    v = np.asarray(tm.vertices, float)
    f = np.asarray(tm.faces, np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, inv = np.unique(edges, axis=0, return_inverse=True)
    mid = len(v) + inv.reshape(3, -1).T               # midpoint ids of (01, 12, 20)
    a, b, c = f.T
    ab, bc, ca = mid.T
    f2 = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c),
                                                   (ab, bc, ca))])
    v2 = np.concatenate([v, v[uniq].mean(1)])
    mesh = MeshData(v2, f2, name="p2ilf_fine_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm.view_axis)


def rigid_shape_alignment(a, b, iterations: int = 60):
    """The rotation ``R`` (3x3) that best turns the point set ``a`` onto ``b`` as shapes:
    both centred and scaled to unit RMS radius, point-to-point ICP from each of the 24
    proper rotations that map ``a``'s principal axes onto ``b``'s, the start with the
    lowest symmetric mean closest-point distance kept. ``(R, [score of each start,
    best first])``."""
    import itertools

    from scipy.spatial import cKDTree

    def unit(x):
        x = np.asarray(x, float) - np.mean(x, 0)
        return x / np.sqrt((x ** 2).sum(1).mean())

    a, b = unit(a), unit(b)
    tree = cKDTree(b)
    va, vb = np.linalg.svd(a, full_matrices=False)[2], np.linalg.svd(b, full_matrices=False)[2]
    results = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            M = np.zeros((3, 3))
            M[list(perm), [0, 1, 2]] = signs
            R = vb.T @ M @ va
            if np.linalg.det(R) < 0:
                continue
            t = np.zeros(3)
            for _ in range(iterations):
                x = a @ R.T + t
                y = b[tree.query(x)[1]]
                mx, my = x.mean(0), y.mean(0)
                U, _, Wt = np.linalg.svd((x - mx).T @ (y - my))
                dR = Wt.T @ np.diag([1.0, 1.0, np.linalg.det(Wt.T @ U.T)]) @ U.T
                R, t = dR @ R, dR @ (t - mx) + my
            x = a @ R.T + t
            score = 0.5 * (tree.query(x)[0].mean() + cKDTree(x).query(b)[0].mean())
            results.append((score, R))
    results.sort(key=lambda r: r[0])
    return results[0][1], [r[0] for r in results]


def other_liver_mesh():
    """The ``other`` development shape: a second real liver (the P2ILF repository's
    ``originalMesh/meshGT.obj``, shipped in ``Resources/SampleData/p2ilf``), never in
    training. Its file mixes face orders (``load_mesh`` puts them in one outward order:
    ``mesh.outward_faces``) and is not in the patient frame, so the mesh is turned about its centroid by its
    shape alignment to the held-out liver (:func:`rigid_shape_alignment`; only the
    held-out MESH is used, no frame of it), which puts it in a patient (LPS) frame as the
    module expects of a mesh, and its frames are drawn around the held-out liver's view
    axis (the real SciKit-Surgery laparoscope's direction in that frame).
    ``(MeshData, TrainMesh)``."""
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.learned.evaluation import held_out_train_mesh
    from LiverLaparoRegLib.mesh import MeshData, load_mesh
    from LiverLaparoRegLib.sample_data import sample_data_dir

    raw = load_mesh(sample_data_dir() / "p2ilf" / "originalMesh" / "meshGT.obj")
    v = np.asarray(raw.vertices, float)
    _, tm_h, _ = held_out_train_mesh()
    R, _ = rigid_shape_alignment(v, tm_h.vertices)
    c = v.mean(0)
    mesh = MeshData((v - c) @ R.T + c, raw.faces, name="p2ilf_other_dev")
    return mesh, data.train_mesh(mesh, view_axis=tm_h.view_axis)


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


def shape_and_cameras(shape: str):
    """``(mesh, train mesh, camera_of)`` of the frames of ``shape`` (``train``, ``twisted``
    or ``held-out``, the last for diagnosis only): ``camera_of(k)`` is the P2ILF camera
    for even ``k``, the SciKit-Surgery camera for odd ``k`` (as the held-out protocol)."""
    from LiverLaparoRegLib.camera import load_camera
    from LiverLaparoRegLib.learned import data
    from LiverLaparoRegLib.learned.evaluation import held_out_train_mesh
    from LiverLaparoRegLib.mesh import MeshData
    from LiverLaparoRegLib.sample_data import sample_data_dir

    mesh_h, tm_h, cam_sks = held_out_train_mesh()
    cam_p2 = load_camera(sample_data_dir() / "p2ilf" / "cameraparams"
                         / "acquisition-camera-metadata.json")
    if shape == "held-out":
        mesh, tm = mesh_h, tm_h
    elif shape == "twisted":
        mesh, tm = twisted_mesh(data.p2ilf_train_mesh())
    elif shape == "smooth":
        mesh, tm = smooth_mesh(data.p2ilf_train_mesh())
    elif shape == "turned":
        mesh, tm = turned_mesh(data.p2ilf_train_mesh())
    elif shape == "blob":
        mesh, tm = blob_mesh(data.p2ilf_train_mesh())
    elif shape == "sharp":
        mesh, tm = sharp_mesh(data.p2ilf_train_mesh())
    elif shape == "fine":
        mesh, tm = fine_mesh(data.p2ilf_train_mesh())
    elif shape == "other":
        mesh, tm = other_liver_mesh()
    else:
        tm = data.p2ilf_train_mesh()
        mesh = MeshData(np.asarray(tm.vertices), np.asarray(tm.faces), name="development")
    return mesh, tm, (lambda k: cam_p2 if k % 2 == 0 else cam_sks)


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
    """One run from the runs in ``files`` (the same model and options on other seeds, run
    in parallel): rows concatenated, summary made again, meta of the first with the
    seeds, wall times and load averages of all."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    meta = dict(parts[0]["meta"])
    for k in ("shape", "model"):
        if any(p["meta"].get(k) != meta.get(k) for p in parts):
            raise SystemExit(f"--merge: the runs differ in {k}")
    rows = [r for p in parts for r in p["rows"]]
    meta.update(tag=tag, seeds=[sd for p in parts for sd in p["meta"]["seeds"]],
                wall_s=[p["meta"]["wall_s"] for p in parts],
                load_average_end=[max(p["meta"]["load_average_end"][k] for p in parts)
                                  for k in range(3)],
                merged_from=[str(f) for f in files])
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
