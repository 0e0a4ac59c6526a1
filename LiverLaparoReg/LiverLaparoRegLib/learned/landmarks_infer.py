"""Registration with the landmark segmentation model (kind ``"landmarks"``): the 2D side
is learned, the 3D side is geometric.

:func:`register_landmarks` (frame + liver mask + mesh -> pose, no initial pose, no
contours):

1. inputs checked first (liver-sized mesh, mask size / emptiness, image size);
2. **2D landmarks** (:func:`predict_maps`): the U-Net of :mod:`.landmarks_net` gives per
   network pixel the ridge / ligament / silhouette probabilities; the 2D observations
   (:func:`observations`) are the ridge pixels (p >= 0.5) and the outline of the given
   mask (frame border removed) where the network sees an occluding contour (an
   instrument's edge is not one);
3. **3D landmarks**: the mesh's curvature ridges (:func:`.data.ridge_vertices`, the same
   definition as the training labels) and, per pose, its occluding contour
   (:func:`..pnp.occluding_contour_points`). The ligament is predicted and reported but
   not used for the pose (a mesh carries no ligament annotation here);
4. **global search** (:func:`global_search`, no initial pose): rotations on a grid over
   the whole sphere of viewing directions x camera rolls; per rotation the translation
   follows from the mask's moments (iterated so that a liver cut by the frame border is
   handled); each hypothesis is scored on the network grid by the IoU of its splatted
   silhouette with the mask plus the agreement of its front-facing ridge vertices with
   the predicted ridge map (both directions); the best distinct rotations go on;
5. **correspondences** (:func:`icp`): from each candidate, iterated closest points in the
   full frame: visible 3D ridge vertices <-> 2D ridge pixels and projected occluding
   contour <-> silhouette pixels (both directions, outliers beyond 3x the median dropped),
   ``cv2.solvePnPRefineLM``; the candidate with the best score wins; its final pairs are
   the correspondences (2D px, 3D vertex id, class, confidence), checked by EPnP + RANSAC
   (always run; < 4 inliers -> ``GeometryError``);
6. **refinement**: the silhouette soft Dice jointly with the ridge curve term
   (:func:`..silhouette.refine_silhouette` with ``contours``) from the Stage I pose;
7. quality: :func:`.infer.quality_of` (uncalibrated) plus the search margin.

Files, along that flow: this module (steps 1, 2, 6, 7: checks, network maps,
observations, refinement, quality), :mod:`.landmarks_search` (steps 3-4: the mesh's
landmarks and the global search) and :mod:`.landmarks_icp` (step 5: image ICP and the
correspondences).
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from .landmarks_icp import correspondences_of, icp
from .landmarks_search import VIEW_AXIS, VIEW_CONE_DEG, MeshLandmarks, global_search, score_pose


# ----------------------------------------------------------------------------- 2D side
def predict_maps(net, image, mask, camera, device=None) -> np.ndarray:
    """``(3, NET_H, NET_W)`` float32 probabilities (ridge, ligament, silhouette)."""
    import torch  # noqa: PLC0415

    from .infer import network_image, network_mask  # noqa: PLC0415

    img = network_image(image, camera)
    m = network_mask(mask)
    dev = device or torch.device("cpu")
    with torch.no_grad():
        lg = net(torch.as_tensor(img)[None].to(dev), torch.as_tensor(m)[None].to(dev))
    return torch.sigmoid(lg[0]).cpu().numpy().astype(np.float32)


def true_maps(vertices, faces, model_to_camera, camera, ridge=None, ligament=None) -> np.ndarray:
    """The ground-truth maps of a mesh at a pose (the labels the network is trained on,
    no instruments): for tests of the geometric steps with the true 2D curves."""
    from . import data  # noqa: PLC0415
    from .landmarks_data import silhouette_map  # noqa: PLC0415

    v, f = np.asarray(vertices, float), np.asarray(faces, np.int64)
    ridge = data.ridge_vertices(v, f) if ridge is None else ridge
    ligament = np.zeros(len(v), bool) if ligament is None else ligament
    depth, face, bary, _, _ = data.render_ids(v, f, model_to_camera, data.net_camera(camera))
    liver = face >= 0
    near = np.full(face.shape, -1, np.int64)
    near[liver] = f[face[liver], bary[liver].argmax(1)]
    out = np.zeros((3,) + face.shape, np.float32)
    out[0] = liver & ridge[np.maximum(near, 0)]
    out[1] = liver & ligament[np.maximum(near, 0)]
    out[2] = silhouette_map(face, depth, liver)
    return out


def observations(maps: np.ndarray, mask: np.ndarray, camera, threshold: float = 0.5) -> Dict:
    """2D observations in full-frame pixels: ``ridge``/``ligament`` ``(N, 2)`` points with
    ``*_conf``; ``silhouette`` = the mask outline (at most ~320 px wide sampling), frame
    border removed, kept where the network's silhouette probability (3 x 3 max) is >=
    0.3 (all of it if the network sees less than a third of it); ``mask_net`` the mask at
    the network grid."""
    import cv2  # noqa: PLC0415

    from . import data  # noqa: PLC0415
    from .infer import network_mask  # noqa: PLC0415

    out = {}
    m_net = network_mask(mask)
    out["mask_net"] = m_net
    for k, name in ((0, "ridge"), (1, "ligament")):
        sel = (maps[k] >= threshold) & (m_net > 0)
        r, c = np.nonzero(sel)
        out[name] = data.net_to_full_px(np.stack([c, r], 1).astype(float), camera)
        out[name + "_conf"] = maps[k][r, c]
    f = max(1.0, camera.width / 320.0)
    W, H = int(camera.width // f), int(camera.height // f)
    ms = cv2.resize(mask.astype(np.uint8), (W, H), interpolation=cv2.INTER_AREA) > 0
    m8 = ms.astype(np.uint8)
    edge = (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8))).astype(bool)
    edge[:2, :] = edge[-2:, :] = False
    edge[:, :2] = edge[:, -2:] = False
    r, c = np.nonzero(edge)
    uv = np.stack([(c + 0.5) * camera.width / W - 0.5, (r + 0.5) * camera.height / H - 0.5], 1)
    sil = cv2.dilate(maps[2], np.ones((3, 3), np.uint8))
    un = np.clip(np.round((uv[:, 0] + 0.5) * data.NET_W / camera.width - 0.5), 0, data.NET_W - 1)
    vn = np.clip(np.round((uv[:, 1] + 0.5) * data.NET_H / camera.height - 0.5), 0, data.NET_H - 1)
    p = sil[vn.astype(int), un.astype(int)]
    keep = p >= 0.3
    if keep.sum() < max(8, len(p) / 3):
        keep = np.ones(len(p), bool)
    out["silhouette"], out["silhouette_conf"] = uv[keep], p[keep]
    out["silhouette_net_agreement"] = float(np.mean(p >= 0.3)) if len(p) else 0.0
    return out


def _rot_deg(A, B) -> float:
    R = np.asarray(A)[:3, :3] @ np.asarray(B)[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


#: search-score margin of the winner over the best candidate > 15 deg away: below the
#: first value the pose is "failed" (ambiguous), below the second "doubtful"
AMBIGUOUS_MARGIN = (0.02, 0.08)


# ----------------------------------------------------------------------------- register
def register_landmarks(mesh, camera, image=None, mask=None, model=None, net=None,
                       maps: Optional[np.ndarray] = None, refine: bool = True,
                       nonrigid: bool = False, ground_truth=None, structures=None,
                       view_axis=VIEW_AXIS, cone_deg: float = VIEW_CONE_DEG,
                       progress=None, cancel=None):
    """Learned registration with the landmark model (module docstring). ``model``: model
    file (None = bundled landmarks model); ``net``: a loaded network; ``maps``: given
    ``(3, NET_H, NET_W)`` landmark probabilities instead of the network (tests)."""
    from SurgicalReg2D3DLib.optimize import epnp_ransac  # noqa: PLC0415
    from SurgicalReg2D3DLib.progress import check_cancel, report, sub_progress  # noqa: PLC0415

    from ..logic import SILHOUETTE_FACES, SILHOUETTE_FINE_WIDTH, _check_pose, \
        decimated  # noqa: PLC0415
    from ..mesh import validate_mesh  # noqa: PLC0415
    from ..silhouette import refine_silhouette  # noqa: PLC0415
    from .infer import assemble_result, check_frame_inputs  # noqa: PLC0415
    from .modelfile import load_model  # noqa: PLC0415

    t0 = time.perf_counter()
    mesh, camera, mask = check_frame_inputs(mesh, camera, image, mask)
    if mask is None:
        raise InputError("mask: the learned landmark method needs a liver mask (paint or "
                         "import one); without it there is no liver to register")
    if image is None and maps is None:
        raise InputError("image: the learned method needs the frame")
    if maps is not None:
        from . import data  # noqa: PLC0415
        maps = np.asarray(maps, np.float32)
        if maps.shape != (3, data.NET_H, data.NET_W):
            raise InputError(f"maps: expected shape (3, {data.NET_H}, {data.NET_W}), got "
                             f"{maps.shape}")
    if ground_truth is not None:
        ground_truth = _check_pose(ground_truth, "ground truth pose")
    structures = [validate_mesh(s, f"structure {k} ({s.name})")
                  for k, s in enumerate(structures or ())]
    info = {}
    if maps is None and net is None:
        net, info = load_model(model, kind="landmarks")
    report(progress, 0.0, "LiverLaparoReg: learned landmarks")
    t1 = time.perf_counter()
    if maps is None:
        maps = predict_maps(net, image, mask, camera)
    obs = observations(maps, mask, camera)
    if obs["mask_net"].sum() < 4:
        raise GeometryError("correspondences: no correspondences -- the liver mask covers "
                            "almost nothing of the frame (no liver visible)")
    timings = {"network_s": time.perf_counter() - t1}
    check_cancel(cancel)
    t1 = time.perf_counter()
    lm = MeshLandmarks(mesh)
    ridge_map = ((maps[0] >= 0.5) & (obs["mask_net"] > 0)).astype(np.uint8)
    cands = global_search(lm, camera, obs["mask_net"], ridge_map, view_axis=view_axis,
                          cone_deg=cone_deg, cancel=cancel)
    timings["search_s"] = time.perf_counter() - t1
    report(progress, 0.3, "LiverLaparoReg: correspondences (image ICP)")
    t1 = time.perf_counter()
    best = None
    tried = []
    for T0, s0 in cands:
        check_cancel(cancel)
        T_i, pairs = icp(T0, lm, camera, obs)
        zc = lm.v @ T_i[2, :3] + T_i[2, 3]
        if not np.isfinite(T_i).all() or zc.min() <= 1.0:
            tried.append({"search_score": s0, "score": None})
            continue
        s = score_pose(T_i, lm, camera, obs["mask_net"], ridge_map)
        tried.append({"search_score": round(s0, 4), "score": round(s, 4)})
        if ground_truth is not None:      # diagnostics only (benchmarks): not used
            from .. import metrics as _m  # noqa: PLC0415
            tried[-1]["search_rot_err_deg"] = round(_m.pose_errors(T0, ground_truth)["rotation_deg"], 1)
            tried[-1]["icp_rot_err_deg"] = round(_m.pose_errors(T_i, ground_truth)["rotation_deg"], 1)
        if best is None or s > best[0]:
            best = (s, T_i, pairs)
    timings["icp_s"] = time.perf_counter() - t1
    if best is None:
        raise GeometryError("correspondences: no pose hypothesis keeps the liver in front of "
                            "the camera (no consistent correspondences)")
    s1, T1, pairs = best
    corr = correspondences_of(pairs, camera)
    if len(corr) < 4:
        raise GeometryError(f"correspondences: fewer than 4 inlier correspondences "
                            f"({len(corr)} pairs); no pose can be computed")
    # EPnP + RANSAC on the correspondences (always): the inliers, and a check of the pose
    diag = float(np.hypot(camera.width, camera.height))
    thr = 0.02 * diag
    p3 = np.concatenate([p[3] for p in pairs])
    p2 = np.concatenate([p[1] for p in pairs])
    try:
        rr = epnp_ransac(p3, p2, camera.K, camera.dist_coeffs if camera.has_distortion else None,
                         reprojection_px=thr, iterations=500, min_inliers=4)
    except InputError as exc:
        raise GeometryError(f"correspondences: fewer than 4 inlier correspondences after "
                            f"RANSAC ({exc})") from None
    inl = set(int(i) for i in rr.inliers)
    for k, c in enumerate(corr):
        c["inlier"] = k in inl
    from .. import metrics as lmetrics  # noqa: PLC0415

    ransac_vs_icp = lmetrics.pose_errors(rr.model_to_camera, T1, lm.c)
    T, history = T1, []
    minfo = {"kind": "landmarks", "candidates": tried, "stage1_score": round(s1, 4),
             "ridge_pixels": int(len(obs["ridge"])), "silhouette_pixels": int(len(obs["silhouette"])),
             "ligament_pixels": int(len(obs["ligament"])),
             "silhouette_net_agreement": round(obs["silhouette_net_agreement"], 3),
             "ransac_vs_icp_deg": round(float(ransac_vs_icp["rotation_deg"]), 3),
             "ligament": "predicted, not used for the pose (no 3D ligament on the mesh)"}
    if refine:
        t1 = time.perf_counter()
        pc = lm.v[lm.ridge] @ T1[:3, :3].T + T1[:3, 3]
        front = ((lm.n[lm.ridge] @ T1[:3, :3].T) * pc).sum(1) < 0
        contours = ([(lm.v[lm.ridge[front]], obs["ridge"])]
                    if front.sum() >= 3 and len(obs["ridge"]) >= 3 else None)
        coarse = decimated(mesh, SILHOUETTE_FACES)
        try:
            r = refine_silhouette(coarse.vertices, coarse.faces, camera, mask, T1,
                                  factors=(max(1.0, camera.width / SILHOUETTE_FINE_WIDTH),),
                                  iterations=(30,), sigma_px=0.7, patience=5, lr_rad=0.005,
                                  lr_mm=0.5, contours=contours, progress=sub_progress(
                                      progress, 0.5, 0.8), cancel=cancel)
            T, history = r.model_to_camera, r.history
        except (RuntimeError, InputError):
            minfo["refinement"] = "skipped: the Stage I pose does not overlap the mask"
        timings["refine_s"] = time.perf_counter() - t1
    timings["rigid_s"] = time.perf_counter() - t0
    res = assemble_result(mesh, camera, T, T1, corr, inl, mask, timings, history, minfo, info,
                          rr.reprojection_error_px, thr, nonrigid=nonrigid,
                          structures=structures, ground_truth=ground_truth,
                          progress=progress, cancel=cancel)
    # ambiguity: the best other candidate (rotation > 15 deg away) after its ICP
    others = [c["score"] for c, (Tc, _) in zip(tried, cands) if c["score"] is not None
              and _rot_deg(Tc, T1) > 15.0 and c["score"] != round(s1, 4)]
    margin = s1 - max(others) if others else 1.0
    res.quality.signals["search_margin"] = round(float(margin), 4)
    minfo["search_margin"] = round(float(margin), 4)
    res.metrics["learned"]["search_margin"] = minfo["search_margin"]
    if margin < AMBIGUOUS_MARGIN[0]:
        res.quality.verdict = "failed"
        res.quality.reasons.insert(0, f"ambiguous: another pose far away fits almost as well "
                                      f"(score margin {margin:.3f} < {AMBIGUOUS_MARGIN[0]})")
    elif margin < AMBIGUOUS_MARGIN[1] and res.quality.verdict == "ok":
        res.quality.verdict = "doubtful"
        res.quality.reasons.insert(0, f"another pose far away fits nearly as well (score "
                                      f"margin {margin:.3f} < {AMBIGUOUS_MARGIN[1]})")
    if res.quality.verdict == "ok":
        # the held-out benchmark (benchmarks/results/laparo_learned.md) finds most global
        # searches wrong even with the true 2D maps, so no learned pose is called "ok"
        res.quality.verdict = "doubtful"
        res.quality.reasons.insert(0, "learned landmark pose without a start: not reliable on "
                                      "the held-out benchmark; check the overlay")
    if "refinement" in minfo:
        res.quality.verdict = "failed"
        res.quality.reasons.insert(0, minfo["refinement"])
    res.timings["total_s"] = time.perf_counter() - t0
    report(progress, 1.0, "LiverLaparoReg: done")
    return res
