"""Why does the learned landmark registration get a frame wrong? Sorts the wrong poses
(> 20 deg) on DEVELOPMENT frames into three causes, for the bundled (or a given) landmark
model:

- **view prior**: the true viewing direction lies beyond the search cone
  (``landmarks_search.VIEW_CONE_DEG`` around the prior axis), so no grid rotation is near it;
- **cost**: the search's winner costs less than the true pose's basin (the fine
  optimiser of :mod:`LiverLaparoRegLib.learned.landmarks_align` started at the true
  pose): the network's maps favour the wrong pose, a better search would not help;
- **search miss**: the true basin costs less than the winner, but no search candidate
  reached it.

Frames: SYNTHETIC full-size frames of the TRAINING (P2ILF) mesh, ``--seeds`` x
``--frames`` (frame ``k`` of seed ``s`` drawn from ``numpy.random.default_rng([s, 1000 +
k])``, even ``k`` the P2ILF camera, odd the SciKit-Surgery camera; the development set
of the learned-method notes), never the held-out liver. The search is the one that
``register_landmarks`` runs (same settings); the pose compared is the search's best
candidate, before image ICP and refinement.

``--shape twisted``: frames of the twisted development copy of the training mesh
(``laparo_learned_dev.py``); ``--shape other``: its second real liver; ``--shape
held-out``: the held-out benchmark's frames of the SciKit-Surgery liver (seeds 0-2
there), for DIAGNOSIS only: no setting is chosen on them.

    python benchmarks/laparo_search_misses.py [--model M.pt] [--shape train] [--seeds 5 6] \
        [--frames 6]

Writes ``benchmarks/results/laparo_search_misses[_twisted|_held_out].{md,json}``
(``--out``). One torch thread.
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


def classify(net, tm, cam, seed: int, k: int) -> dict:
    """One development frame: the search's candidates and the true basin's cost."""
    import torch

    from SurgicalReg2D3DLib.metrics import rotation_error_deg

    from LiverLaparoRegLib.learned import landmarks_align as la
    from LiverLaparoRegLib.learned import landmarks_infer as li
    from LiverLaparoRegLib.learned.evaluation import full_frame
    from LiverLaparoRegLib.learned.landmarks_search import VIEW_CONE_DEG, MeshLandmarks, \
        view_angle_deg
    from LiverLaparoRegLib.mesh import MeshData

    def rot_deg(A, B) -> float:
        return float(rotation_error_deg(A[:3, :3], B[:3, :3]))

    rng = np.random.default_rng([seed, 1000 + k])
    s, img, mask = full_frame(tm, cam, rng)
    T = s.model_to_camera
    mesh = MeshData(np.asarray(tm.vertices), np.asarray(tm.faces), name="development")
    lm = MeshLandmarks(mesh)
    view_deg = view_angle_deg(T)
    maps = li.predict_maps(net, img, mask, cam)
    obs = li.observations(maps, mask, cam)
    o2 = li.search_observations(maps, obs, cam)
    w_ridge = li.W_RIDGE_LEARNED
    t0 = time.perf_counter()
    cands = la.align_search(lm, cam, o2, w_ridge=w_ridge)
    search_s = time.perf_counter() - t0
    R0 = torch.as_tensor(T[:3, :3], dtype=torch.float32)[None]
    c0 = torch.as_tensor(T[:3, :3] @ lm.c + T[:3, 3], dtype=torch.float32)[None]
    R1, t1, cost1 = la.refine_hypotheses(R0, c0, lm, o2, w_ridge=w_ridge)
    near = near_truth(lm, o2, T, w_ridge)
    win_err = rot_deg(cands[0][0][:3, :3], T[:3, :3])
    basin = float(cost1[0])
    if win_err <= 20.0:
        cause = "right"
    elif view_deg > VIEW_CONE_DEG:
        cause = "view prior"
    elif cands[0][1] <= basin:
        cause = "cost"
    else:
        cause = "search miss"
    return {"seed": seed, "frame": k, "view_deg_from_prior_axis": round(view_deg, 1),
            "winner_rot_deg": round(win_err, 1), "winner_cost_px": round(float(cands[0][1]), 4),
            "true_basin_cost_px": round(basin, 4),
            "true_basin_rot_deg": round(rot_deg(R1[0].numpy(), T[:3, :3]), 1),
            "candidates_rot_deg": [round(rot_deg(Tc[:3, :3], T[:3, :3]), 1) for Tc, _ in cands],
            "cause": cause, "search_s": round(search_s, 2), **near}


def near_truth(lm, obs, T, w_ridge, near_deg: float = 15.0, ranks: int = 400) -> dict:
    """Where the grid rotations near the truth (within ``near_deg``) stand after the
    search's first stage: the rank of the first of them among the distinct first-stage
    hypotheses (10 deg apart, cheapest first, as the search picks its
    ``FINE_CANDIDATES``; None beyond ``ranks``), its coarse cost against the cheapest, and
    what the fine stage makes of it (rotation error, fine cost). Runs the search's first
    stage again (about twice the time of the search alone)."""
    import torch

    from SurgicalReg2D3DLib.metrics import rotation_error_deg

    from LiverLaparoRegLib.learned import landmarks_align as la
    from LiverLaparoRegLib.learned.landmarks_search import VIEW_AXIS, VIEW_CONE_DEG, \
        distinct_hypotheses, rotation_grid

    Rs = torch.as_tensor(rotation_grid(la.GRID_DIRECTIONS, la.GRID_ROLLS, VIEW_AXIS,
                                       VIEW_CONE_DEG), dtype=torch.float32)
    Rb, tb, cb = la.coarse_stage(lm, obs, Rs, w_ridge=w_ridge)
    is_near = rotation_error_deg(Rb, torch.as_tensor(T[:3, :3], dtype=Rb.dtype)).numpy() \
        <= near_deg
    out = {"near_grid_rotations": int(is_near.sum()), "near_rank": None,
           "near_coarse_cost_px": None, "coarse_best_cost_px": round(float(cb.min()), 4),
           "near_refined_rot_deg": None, "near_refined_cost_px": None}
    if not is_near.any():
        return out
    # the ranks as the search picks its FINE_CANDIDATES (the index rides along as "t")
    picks = distinct_hypotheses(Rb.numpy(), np.arange(len(Rb)), -cb.numpy(), ranks, 10.0)
    out["near_rank"] = next((r + 1 for r, (_, i, _) in enumerate(picks) if is_near[i]), None)
    j = int(np.nonzero(is_near)[0][np.argmin(cb.numpy()[is_near])])   # cheapest near one
    out["near_coarse_cost_px"] = round(float(cb[j]), 4)
    R2, _, c2 = la.refine_hypotheses(Rb[j:j + 1], tb[j:j + 1], lm, obs, w_ridge=w_ridge)
    out["near_refined_rot_deg"] = round(float(rotation_error_deg(R2[0].numpy(),
                                                                 T[:3, :3])), 1)
    out["near_refined_cost_px"] = round(float(c2[0]), 4)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="landmark model (default: the bundled one)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7, 8, 9, 10])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--shape", default="train", choices=("train", "twisted", "other", "held-out"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)

    from LiverLaparoRegLib.learned.landmarks_align import FINE_CANDIDATES
    from LiverLaparoRegLib.learned.modelfile import BUNDLED_LANDMARKS, bundled_model_path, \
        load_model

    model = a.model or str(bundled_model_path(BUNDLED_LANDMARKS))
    net = load_model(model, kind="landmarks")[0]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from laparo_dev_shapes import shape_and_cameras
    _, tm, camera_of = shape_and_cameras(a.shape)     # held-out: diagnosis only (docstring)
    rows = []
    t0 = time.time()
    for seed in a.seeds:
        for k in range(a.frames):
            r = classify(net, tm, camera_of(k), seed, k)
            rows.append(r)
            print(json.dumps(r), flush=True)
    counts = {c: sum(r["cause"] == c for r in rows)
              for c in ("right", "view prior", "cost", "search miss")}
    meta = {"model": Path(model).name, "shape": a.shape, "seeds": a.seeds,
            "frames_per_seed": a.frames,
            "wall_s": round(time.time() - t0, 1), "load_average_end": list(os.getloadavg())}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "laparo_search_misses" + {"train": "", "twisted": "_twisted", "other": "_other",
                                     "held-out": "_held_out"}[a.shape]
    what = {"train": "frames of the TRAINING mesh",
            "twisted": "frames of the twisted development copy of the training mesh",
            "other": "frames of the `other` development liver (a second real liver mesh, "
                     "never in training)",
            "held-out": "the HELD-OUT benchmark's frames (diagnosis only: no setting is "
                        "chosen on them)"}[a.shape]
    (out / f"{name}.json").write_text(json.dumps(
        {"meta": meta, "counts": counts, "rows": rows}, indent=1))
    lines = ["# Learned landmark registration: why the wrong poses are wrong "
             f"(SYNTHETIC frames, shape: {a.shape})", "",
             f"`python benchmarks/laparo_search_misses.py` (see its docstring). Model "
             f"`{meta['model']}`; {what}, seeds {a.seeds}, {a.frames} "
             f"per seed; the search's best candidate before ICP and refinement; wrong = "
             f"> 20 deg. Wall {meta['wall_s']} s, load average at the end "
             f"{[round(x, 1) for x in meta['load_average_end']]}.", "",
             "| frames | right | wrong: view beyond the cone | wrong: cost favours it | "
             "wrong: search miss |", "|---|---|---|---|---|",
             f"| {len(rows)} | {counts['right']} | {counts['view prior']} | {counts['cost']} | "
             f"{counts['search miss']} |", "",
             "| seed/frame | view from prior axis deg | winner rot deg | winner cost px | "
             "true basin cost px | cause | near-truth rank | near coarse / best coarse px "
             "| near refined deg / px |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["cause"] != "right":
            lines.append(f"| {r['seed']}/{r['frame']} | {r['view_deg_from_prior_axis']} | "
                         f"{r['winner_rot_deg']} | {r['winner_cost_px']} | "
                         f"{r['true_basin_cost_px']} | {r['cause']} | {r['near_rank']} | "
                         f"{r['near_coarse_cost_px']} / {r['coarse_best_cost_px']} | "
                         f"{r['near_refined_rot_deg']} / {r['near_refined_cost_px']} |")
    lines += ["", "Near-truth rank: the rank, among the distinct first-stage hypotheses "
              "(10 deg apart, cheapest first), of the first grid rotation within 15 deg of "
              "the truth (the fine stage takes the first "
              f"{FINE_CANDIDATES}); near refined: the fine stage started from the cheapest "
              "such rotation."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({"counts": counts, "meta": meta}))


if __name__ == "__main__":
    main()
