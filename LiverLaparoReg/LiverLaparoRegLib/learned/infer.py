"""Inference of the learned registration: correspondences, pose, quality.

:func:`register_learned` (frame + liver mask + mesh -> pose, no initial pose, no
contours):

1. inputs checked first (mesh scale of a liver, mask size / emptiness, image size);
2. the frame is resized to the network grid (area interpolation), the mesh is
   FPS-sampled in its canonical frame (:func:`.data.point_inputs`, start vertex 0:
   deterministic);
3. the Stage I network gives descriptors, overlap and class scores;
4. **matching**: grid cells inside the liver (the given mask, or the network's own
   liver prediction when no mask is given) against the ``N_MATCH`` points, cosine
   similarity, mutual nearest neighbours; confidence = cosine x overlap probability.
   A second set comes from the coordinate head (each liver cell -> the mesh vertex
   nearest its regressed surface point; confidence from that distance);
5. **pose**: EPnP + RANSAC (always; :func:`SurgicalReg2D3DLib.optimize.epnp_ransac`)
   on each set (3D = mesh vertex, 2D = cell centre in full-frame pixels), the pose with
   more inliers is kept (``metrics["learned"]["source"]``), then the existing silhouette
   refinement (:func:`..silhouette.refine_from_mask`) with the mask;
6. optional Stage II (:mod:`.stage2`) with the matched pairs;
7. quality (:func:`.shared.quality_of`): a simple, *uncalibrated* verdict from the inlier count,
   inlier ratio and mask Dice (the calibrated one is wired by ``LiverLaparoRegLib.quality``
   where available).

Errors: no liver visible -> ``GeometryError("correspondences: no correspondences ...")``;
fewer than 4 inliers -> ``GeometryError("correspondences: fewer than 4 inlier ...")``.

With a model of kind ``landmarks`` (the bundled default) :func:`register_learned` hands
over to :func:`.landmarks_infer.register_landmarks`. What both kinds use (input checks,
the frame at the network grid, :class:`LearnedResult`, :func:`quality_of`) is in
:mod:`.shared`.
"""

from __future__ import annotations

import time
from typing import List, Optional

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from .landmarks_search import VIEW_AXIS, VIEW_CONE_DEG
from .shared import LearnedResult, assemble_result, check_frame_inputs, network_image, \
    network_mask


def predict_correspondences(net, mesh, camera, image, mask: Optional[np.ndarray],
                            min_confidence: float = 0.1, device=None):
    """Run the network and match. Returns ``(list of dicts, info dict)``; each dict has
    ``pixel`` (full-frame u, v), ``vertex`` (mesh vertex id), ``class`` and
    ``confidence``."""
    import cv2  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from .data import CANON_SCALE_MM, CLASS_NAMES, GRID_H, GRID_W, N_MATCH, \
        grid_centres_net, net_to_full_px, point_inputs  # noqa: PLC0415

    img = network_image(image, camera) if image is not None else None
    m_net = network_mask(mask) if mask is not None else None
    if img is None:
        # no frame: the mask alone (shading-free, liver-coloured) -- a weaker input
        img = np.repeat(((m_net if m_net is not None else 0) * 0.5)[None], 3, 0).astype(np.float32)
    pts, vid = point_inputs(mesh.vertices, mesh.faces, start=0)
    dev = device or torch.device("cpu")
    with torch.no_grad():
        out = net(torch.as_tensor(img)[None].to(dev),
                  torch.as_tensor(m_net if m_net is not None else np.zeros(img.shape[1:],
                                                                           np.float32))[None].to(dev),
                  torch.as_tensor(pts)[None].to(dev))
    dp = out["desc_pix"][0].cpu()
    dq = out["desc_pt"][0].cpu()
    p_ov = torch.sigmoid(out["overlap_logit"][0]).cpu()
    if m_net is not None:
        cell = cv2.resize(m_net, (GRID_W, GRID_H), interpolation=cv2.INTER_AREA).ravel() >= 0.5
        liver_src = "mask"
    else:
        cell = (torch.sigmoid(out["pix_liver"][0]).cpu().numpy() >= 0.5)
        liver_src = "network"
    info = {"liver_cells": int(cell.sum()), "liver_from": liver_src}
    if cell.sum() == 0:
        raise GeometryError("correspondences: no correspondences -- no liver is visible in the "
                            "frame (give or paint a liver mask)")
    P = np.nonzero(cell)[0]
    S = dp[P] @ dq.T                                              # (P, M) cosine
    j = S.argmax(1)
    back = S.argmax(0)
    mutual = back[j] == torch.arange(len(P))
    conf = S[torch.arange(len(P)), j] * p_ov[j]
    keep = mutual & (conf >= min_confidence)
    pcls = out["pt_class"][0].argmax(-1).cpu()
    xcls = out["pix_class"][0].argmax(-1).cpu()
    uv_full = net_to_full_px(grid_centres_net()[P], camera)
    corr = []
    for k in np.nonzero(keep.numpy())[0]:
        c = int(pcls[j[k]]) if int(pcls[j[k]]) != 0 else int(xcls[P[k]])
        corr.append({"pixel": [float(uv_full[k, 0]), float(uv_full[k, 1])],
                     "vertex": int(vid[int(j[k])]), "class": CLASS_NAMES[c],
                     "confidence": float(conf[k])})
    info.update(mutual=int(mutual.sum()), kept=len(corr), n_points=N_MATCH,
                mean_overlap=float(p_ov.mean()))
    # second set: the coordinate head's surface point (point-encoder frame: mesh axes,
    # centred at the vertex mean, dm) -> nearest mesh vertex
    from scipy.spatial import cKDTree  # noqa: PLC0415

    xyz = out["pix_xyz"][0].cpu().numpy()[P] * CANON_SCALE_MM + mesh.vertices.mean(0)
    dist, vtx = cKDTree(mesh.vertices).query(xyz)
    xcls = out["pix_class"][0].argmax(-1).cpu().numpy()
    coord = [{"pixel": [float(uv_full[k, 0]), float(uv_full[k, 1])], "vertex": int(vtx[k]),
              "class": CLASS_NAMES[int(xcls[P[k]])],
              "confidence": float(np.exp(-dist[k] / 10.0))} for k in range(len(P))]
    info["coordinate_matches"] = coord
    if not corr and not coord:
        raise GeometryError("correspondences: no correspondences -- the network found no "
                            "confident match between the frame and the mesh")
    return corr, info


def pose_from_correspondences(mesh, camera, corr: List[dict], threshold_px: Optional[float] = None):
    """EPnP + RANSAC (always) on the correspondences: ``(model_to_camera, PnPResult)``."""
    from SurgicalReg2D3DLib.optimize import epnp_ransac  # noqa: PLC0415

    from .data import GRID_W  # noqa: PLC0415

    if len(corr) < 4:
        raise GeometryError(f"correspondences: fewer than 4 inlier correspondences "
                            f"({len(corr)} matches); no pose can be computed")
    p3 = np.asarray([mesh.vertices[c["vertex"]] for c in corr], float)
    p2 = np.asarray([c["pixel"] for c in corr], float)
    if threshold_px is None:
        threshold_px = 1.5 * camera.width / GRID_W               # 1.5 grid cells
    dist = camera.dist_coeffs if camera.has_distortion else None
    try:
        r = epnp_ransac(p3, p2, camera.K, dist, reprojection_px=threshold_px, iterations=2000,
                        min_inliers=4)
    except InputError as exc:
        raise GeometryError(f"correspondences: fewer than 4 inlier correspondences after "
                            f"RANSAC ({exc})") from None
    T = r.model_to_camera
    zc = (mesh.vertices @ T[:3, :3].T + T[:3, 3])[:, 2]
    if not np.isfinite(T).all() or np.median(zc) <= 0:
        raise GeometryError("correspondences: the RANSAC pose puts the liver behind the camera "
                            "(the matches are not consistent)")
    if zc.min() <= 1.0:
        raise GeometryError("correspondences: the RANSAC pose puts part of the liver behind the "
                            "camera (the matches are not consistent)")
    return T, r


def _model_kind(model) -> str:
    """Kind of the model file ``model``; ``None``: the bundled landmarks model when it is
    registered (the default of ``--method learned``), else the bundled Stage I model."""
    from .modelfile import BUNDLED_LANDMARKS, bundled_model_path, model_kind  # noqa: PLC0415

    if model is not None:
        return model_kind(model)
    try:
        bundled_model_path(BUNDLED_LANDMARKS)
    except Exception:  # noqa: BLE001  (not bundled: the Stage I model)
        return "stage1"
    return "landmarks"


def register_learned(mesh, camera, image=None, mask=None, model=None, net=None,
                     refine: bool = True, nonrigid: bool = False, ground_truth=None,
                     structures=None, view_axis=VIEW_AXIS, cone_deg: float = VIEW_CONE_DEG,
                     progress=None, cancel=None) -> LearnedResult:
    """Learned registration (module docstring). ``model``: model file (None = bundled);
    ``net``: an already loaded network (tests, benchmarks). ``view_axis`` / ``cone_deg``:
    the landmark model's search prior on the laparoscope's viewing direction in the mesh
    frame (default :data:`.landmarks_search.VIEW_AXIS`, 80 deg; ``view_axis=None``: any
    direction)."""
    from SurgicalReg2D3DLib.progress import check_cancel, report, sub_progress  # noqa: PLC0415

    from ..result import check_pose  # noqa: PLC0415
    from ..silhouette import refine_from_mask  # noqa: PLC0415
    from ..mesh import validate_mesh  # noqa: PLC0415
    from .modelfile import load_model  # noqa: PLC0415

    t0 = time.perf_counter()
    mesh, camera, mask = check_frame_inputs(mesh, camera, image, mask)
    if image is None and mask is None:
        raise InputError("image: the learned method needs the frame (and preferably a liver mask)")
    if ground_truth is not None:
        ground_truth = check_pose(ground_truth, "ground truth pose")
    structures = [validate_mesh(s, f"structure {k} ({s.name})")
                  for k, s in enumerate(structures or ())]
    info = {}
    prior = {"view_axis": view_axis, "cone_deg": cone_deg}
    if net is None:
        kind = _model_kind(model)
        if kind == "landmarks":
            # the landmark segmentation model: 2D landmarks learned, 3D side geometric
            from .landmarks_infer import register_landmarks  # noqa: PLC0415

            return register_landmarks(mesh, camera, image=image, mask=mask, model=model,
                                      refine=refine, nonrigid=nonrigid,
                                      ground_truth=ground_truth, structures=structures,
                                      progress=progress, cancel=cancel, **prior)
        net, info = load_model(model)
    elif getattr(net, "config", {}).get("levels") is not None:       # a LandmarkNet
        from .landmarks_infer import register_landmarks  # noqa: PLC0415

        return register_landmarks(mesh, camera, image=image, mask=mask, net=net, refine=refine,
                                  nonrigid=nonrigid, ground_truth=ground_truth,
                                  structures=structures, progress=progress, cancel=cancel,
                                  **prior)
    report(progress, 0.0, "LiverLaparoReg: learned correspondences")
    t1 = time.perf_counter()
    corr, minfo = predict_correspondences(net, mesh, camera, image, mask)
    coord = minfo.pop("coordinate_matches", [])
    timings = {"network_s": time.perf_counter() - t1}
    check_cancel(cancel)
    t1 = time.perf_counter()
    # EPnP + RANSAC on each set (descriptor mutual-NN matches, coordinate-head matches);
    # the pose with more inliers wins
    best, errors = None, []
    for source, cs in (("descriptors", corr), ("coordinates", coord)):
        if not cs:
            continue
        try:
            T_s, r_s = pose_from_correspondences(mesh, camera, cs)
        except GeometryError as exc:
            errors.append(f"{source}: {str(exc).replace('correspondences: ', '', 1)}")
            continue
        minfo[f"inliers_{source}"] = len(r_s.inliers)
        if best is None or len(r_s.inliers) > len(best[2].inliers):
            best = (source, T_s, r_s, cs)
    if best is None:
        raise GeometryError("correspondences: " + ("; ".join(errors) if errors else
                                                   "no correspondences -- no match found"))
    source, T1, pnp, corr = best
    minfo["source"] = source
    timings["pnp_s"] = time.perf_counter() - t1
    inl = set(int(i) for i in pnp.inliers)
    for k, c in enumerate(corr):
        c["inlier"] = k in inl
    T, history = T1, []
    ref_mask = mask
    if ref_mask is None and minfo["liver_from"] == "network":
        ref_mask = None        # no refinement without a mask (the network's coarse mask is 24x32)
    if refine and ref_mask is not None:
        t1 = time.perf_counter()
        try:
            T, t2, history = refine_from_mask(mesh, camera, ref_mask, T1,
                                              progress=sub_progress(progress, 0.4, 0.8),
                                              cancel=cancel)
        except (RuntimeError, InputError):
            # the Stage I pose renders nothing near the mask (no gradient): keep it, the
            # quality says failed
            minfo["refinement"] = "skipped: the Stage I pose does not overlap the mask"
        timings["silhouette_s"] = time.perf_counter() - t1
    timings["rigid_s"] = time.perf_counter() - t0
    res = assemble_result(mesh, camera, T, T1, corr, inl, ref_mask, timings, history, minfo,
                          info, pnp.reprojection_error_px, 1.5 * camera.width / 32,
                          nonrigid=nonrigid, structures=structures,
                          ground_truth=ground_truth, progress=progress, cancel=cancel)
    if "refinement" in minfo:
        res.quality.verdict = "failed"
        res.quality.reasons.insert(0, minfo["refinement"])
    res.timings["total_s"] = time.perf_counter() - t0
    report(progress, 1.0, "LiverLaparoReg: done")
    return res
