"""Registration with the landmark segmentation model (kind ``"landmarks"``): the 2D side
is learned, the 3D side is geometric.

:func:`register_landmarks` (frame + liver mask + mesh -> pose, no initial pose, no
contours):

1. inputs checked first (liver-sized mesh, mask size / emptiness, image size);
2. **2D landmarks** (:func:`predict_maps`): the U-Net of :mod:`.landmarks_net` gives per
   network pixel the ridge / ligament / silhouette probabilities and (a model with normal
   channels) the camera-frame surface normal; the 2D observations (:func:`observations`)
   are the ridge pixels (p >= 0.5) and the outline of the given mask (frame border
   removed) where the network sees an occluding contour (an instrument's edge is not
   one);
3. **3D landmarks**: the mesh's curvature ridges (:func:`.data.ridge_vertices`, the same
   definition as the training labels) and, per pose, its occluding contour
   (:func:`..pnp.occluding_contour_points`). The ligament is predicted and reported but
   not used for the pose (a mesh carries no ligament annotation here);
4. **global search** (:func:`.landmarks_align.align_search`, no initial pose): rotations
   on a grid of viewing directions x camera rolls; per rotation the translation is
   optimised (from the mask's moments) on a 2D-3D chamfer cost on the network grid
   (projected surface points inside the mask where the mask's edge is the liver's own
   outline, the outline covered by projected points, weighted, the visible ridge points
   against the ridge pixels both ways and, with a normal map, the visible surface
   points' turned normals against the predicted normals); the best distinct rotations
   are optimised in 6 DOF on denser point sets. Option ``ridge_tiebreak``: the search
   runs without the ridge and the ridge only re-ranks its near-equal poses
   (:func:`tiebreak_by_ridge`, within ``TIE_PX``);
5. **correspondences** (:func:`icp`): from the best candidates (at most
   ``ICP_CANDIDATES``, within ``ICP_WITHIN_PX`` of the best cost), iterated closest points
   in the full frame: visible 3D ridge vertices <-> 2D ridge pixels and the rendered
   occluding contour <-> silhouette pixels (both directions, outliers beyond 3x the
   median dropped), ``cv2.solvePnPRefineLM``, kept only when it does not raise the search
   cost; the lowest cost wins; its pairs are the correspondences (2D px, 3D vertex id,
   class, confidence), checked by EPnP + RANSAC (always run; < 4 inliers ->
   ``GeometryError``);
6. **refinement**: the silhouette soft Dice jointly with the ridge curve term
   (:func:`..silhouette.refine_silhouette` with ``contours``) from the Stage I pose;
7. quality: :func:`.shared.quality_of` (uncalibrated) plus the search margin (cost of the
   best candidate far from the winner minus the winner's: a small margin means another
   pose fits almost as well, ``AMBIGUOUS_MARGIN``).

Files, along that flow: this module (steps 1, 2, 6, 7: checks, network maps,
observations, refinement, quality), :mod:`.landmarks_search` (step 3: the mesh's
landmarks, the rotation grid), :mod:`.landmarks_align` (step 4: the chamfer cost and the
global search) and :mod:`.landmarks_icp` (step 5: image ICP and the correspondences).
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from .landmarks_curvature import check_normal_ridge, with_normal_ridge
from .landmarks_icp import correspondences_of, icp, pairs_at, visible_landmarks
from .landmarks_align import W_NORMAL, W_RIDGE, Observed2D, align_search, \
    check_translation_start, pose_cost
from .landmarks_search import VIEW_AXIS, VIEW_CONE_DEG, MeshLandmarks, check_view_axis


# ----------------------------------------------------------------------------- 2D side
#: test-time views of :func:`predict_maps`: 1, 2 (with the 180 deg turn), 4 (and mirrors)
FLIPS = (1, 2, 4)


def check_flips(flips) -> int:
    """``flips`` if it is one of :data:`FLIPS`, else a one-line error."""
    if flips not in FLIPS:
        raise InputError(f"flips: expected 1, 2 or 4, got {flips}")
    return int(flips)


def predict_maps(net, image, mask, camera, device=None, flips: int = 1) -> np.ndarray:
    """``(3, NET_H, NET_W)`` float32 probabilities (ridge, ligament, silhouette); a network
    with normal channels adds three: the unit camera-frame normal per pixel (``(6, NET_H,
    NET_W)``), and one with the normals' uncertainty channel a seventh, the Laplace scale
    ``b`` (radians) of the normal's angle error (:func:`.landmarks_net.normal_scale`).
    ``flips``: 1 = the frame as it is; 2 = averaged with the frame turned by
    180 deg (a camera roll); 4 = also both mirror images (the training flips frames
    left-right, so a mirrored liver is in its data); each view's maps are turned back
    (normals: x and / or y negated) before the mean."""
    import torch  # noqa: PLC0415

    from .landmarks_net import normal_scale  # noqa: PLC0415
    from .shared import network_image, network_mask  # noqa: PLC0415

    check_flips(flips)
    img = torch.as_tensor(network_image(image, camera))
    m = torch.as_tensor(network_mask(mask))
    # (image axes flipped, normal components negated): identity, 180 deg, mirrors
    views = [((), ()), ((1, 2), (0, 1)), ((2,), (0,)), ((1,), (1,))][:flips]
    dev = device or torch.device("cpu")
    x = torch.stack([img.flip(a) if a else img for a, _ in views]).to(dev)
    mx = torch.stack([m.flip([d - 1 for d in a]) if a else m for a, _ in views]).to(dev)

    def sign(neg, n):     # a flipped image axis negates that component of a ray or normal
        sg = torch.ones(n, 1, 1)
        sg[list(neg)] = -1.0
        return sg

    rx = None
    if getattr(net, "config", {}).get("ray_normals"):   # the viewing rays, flipped alike
        from .landmarks_net import network_ray_map  # noqa: PLC0415

        r = torch.as_tensor(network_ray_map(camera))
        rx = torch.stack([(r.flip(a) if a else r) * sign(neg, 2) for a, neg in views]).to(dev)
    with torch.no_grad():
        lg = net(x, mx, rx).cpu() if rx is not None else net(x, mx).cpu()
    probs, normals, scales = [], [], []
    for k, (a, neg) in enumerate(views):
        o = lg[k].flip(a) if a else lg[k]
        probs.append(torch.sigmoid(o[:3]))
        if o.shape[0] > 3:
            normals.append(torch.nn.functional.normalize(o[3:6], dim=0, eps=1e-6)
                           * sign(neg, 3))
        if o.shape[0] > 6:
            scales.append(normal_scale(o[6:7]))
    out = torch.stack(probs).mean(0)
    if len(normals) == 1:             # one view: its unit normals as they are
        out = torch.cat([out, normals[0]])
    elif normals:
        out = torch.cat([out, torch.nn.functional.normalize(torch.stack(normals).mean(0),
                                                             dim=0, eps=1e-6)])
    if scales:
        out = torch.cat([out, torch.stack(scales).mean(0)])
    return out.numpy().astype(np.float32)


def true_maps(vertices, faces, model_to_camera, camera, ridge=None, ligament=None,
              normals: bool = False) -> np.ndarray:
    """The ground-truth maps of a mesh at a pose (the labels the network is trained on,
    no instruments): for tests of the geometric steps with the true 2D curves. ``(3,
    NET_H, NET_W)`` (ridge, ligament, silhouette); with ``normals`` ``(6, NET_H, NET_W)``,
    the camera-frame normal map (:func:`.render.normal_map`) appended, as the network
    with normal channels gives them."""
    from . import data  # noqa: PLC0415
    from .landmarks_data import silhouette_map  # noqa: PLC0415
    from .render import normal_map  # noqa: PLC0415

    v, f = np.asarray(vertices, float), np.asarray(faces, np.int64)
    T = np.asarray(model_to_camera, float)
    ridge = data.ridge_vertices(v, f) if ridge is None else ridge
    ligament = np.zeros(len(v), bool) if ligament is None else ligament
    depth, face, bary, _, _ = data.render_ids(v, f, T, data.net_camera(camera))
    liver = face >= 0
    near = np.full(face.shape, -1, np.int64)
    near[liver] = f[face[liver], bary[liver].argmax(1)]
    out = np.zeros((3,) + face.shape, np.float32)
    out[0] = liver & ridge[np.maximum(near, 0)]
    out[1] = liver & ligament[np.maximum(near, 0)]
    out[2] = silhouette_map(face, depth, liver)
    if normals:
        out = np.concatenate([out, normal_map(face, bary, v @ T[:3, :3].T + T[:3, 3],
                                              data.vertex_normals(v, f) @ T[:3, :3].T, f)])
    return out


def observations(maps: np.ndarray, mask: np.ndarray, camera, threshold: float = 0.5) -> Dict:
    """2D observations in full-frame pixels: ``ridge``/``ligament`` ``(N, 2)`` points with
    ``*_conf``; ``silhouette`` = the mask outline (at most ~320 px wide sampling), frame
    border removed, kept where the network's silhouette probability (3 x 3 max) is >=
    0.3 (all of it if the network sees less than a third of it); ``mask_net`` the mask at
    the network grid."""
    import cv2  # noqa: PLC0415

    from . import data  # noqa: PLC0415
    from .shared import network_mask  # noqa: PLC0415

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
    uvn = np.round(data.full_to_net_px(uv, camera)).astype(int)
    p = sil[np.clip(uvn[:, 1], 0, data.NET_H - 1), np.clip(uvn[:, 0], 0, data.NET_W - 1)]
    keep = p >= 0.3
    if keep.sum() < max(8, len(p) / 3):
        keep = np.ones(len(p), bool)
    out["silhouette"], out["silhouette_conf"] = uv[keep], p[keep]
    out["silhouette_net_agreement"] = float(np.mean(p >= 0.3)) if len(p) else 0.0
    return out


def _in_front(T, lm: MeshLandmarks) -> bool:
    """Every vertex at least 1 mm in front of the camera at ``model_to_camera`` ``T``."""
    return bool(np.isfinite(T).all() and (lm.v @ T[2, :3] + T[2, 3]).min() > 1.0)


def _pushed_in_front(T, lm: MeshLandmarks, min_z: float = 5.0):
    """``T`` with the liver moved away from the camera along its centre's viewing ray
    until every vertex is at least ``min_z`` mm in front (the search works on a point
    subset, so its pose can put a few vertices behind the camera of a close-up)."""
    T = np.array(T, float)
    cc = T[:3, :3] @ lm.c + T[:3, 3]
    dz = (lm.v - lm.c) @ T[2, :3]
    if cc[2] <= 0:
        return T
    k = max(1.0, (min_z - dz.min()) / cc[2])
    T[:3, 3] += (k - 1.0) * cc
    return T


def _rot_deg(A, B) -> float:
    R = np.asarray(A)[:3, :3] @ np.asarray(B)[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


#: search-cost margin (network px) of the best candidate > AMBIGUOUS_DEG away over the
#: winner: below the first value the pose is "failed" (ambiguous), below the second
#: "doubtful". Chosen on SYNTHETIC frames of the training (P2ILF) mesh, with the bundled
#: network and with the true maps (development runs, 24 frames): no pose > 10 deg off
#: had a margin >= 0.5, 8 of 11 wrong ones had < 0.15
AMBIGUOUS_MARGIN, AMBIGUOUS_DEG = (0.15, 0.5), 30.0
#: candidates of the search that get the image ICP: at most this many, within this cost
#: (network px) of the best
ICP_CANDIDATES, ICP_WITHIN_PX = 4, 0.6
#: ridge weight of the search with the network's maps (see ``register_landmarks``): 0,
#: the silhouette alone. On development runs (12 SYNTHETIC frames of the training P2ILF
#: mesh) the bundled networks' ridge maps made the search worse, not better: within 10
#: deg 5 of 12 without them, 1 (v1) and 3 (v2) of 12 with weight 0.5; with the TRUE ridge
#: maps the weight 0.5 helps (8 of 12 against 5). With v3 and its normal map: 7 of 12
#: without the ridge, 6 with. Given maps (``maps=``) use W_RIDGE.
W_RIDGE_LEARNED = 0.0


def _far_margin(cands, costs, T, cost_T: float) -> float:
    """The lowest of ``costs`` (one per search candidate) among the candidates more than
    ``AMBIGUOUS_DEG`` from ``T``, minus ``cost_T`` (10 px when there is none): how much
    worse the best far pose fits."""
    far = [c for (Tc, _), c in zip(cands, costs) if _rot_deg(Tc, T) > AMBIGUOUS_DEG]
    return min(far) - cost_T if far else 10.0


#: ridge tie-break (``register_landmarks(ridge_tiebreak=True)``): the search's poses whose
#: ridge-free cost is within this (network px) of the best are re-ranked with the ridge:
#: the verdict's own "another pose fits nearly as well" margin, not a tuned value
TIE_PX = AMBIGUOUS_MARGIN[1]


def tiebreak_by_ridge(cands, lm, obs2: Observed2D, w_ridge: float, w_normal: float):
    """The search's ``[(model_to_camera, cost)]`` (found without the ridge) re-ranked:
    those within :data:`TIE_PX` of the best ridge-free cost first, by their cost with the
    ridge term (weight ``w_ridge``), then the rest in their order; every cost returned
    includes the ridge. Returns ``(candidates, number tied, their ridge-free costs)``."""
    free = [pose_cost(T, lm, obs2, 0.0, w_normal) for T, _ in cands]
    total = [pose_cost(T, lm, obs2, w_ridge, w_normal) for T, _ in cands]
    k0 = int(np.argmin(free))
    tied = [k for k in range(len(cands)) if free[k] <= free[k0] + TIE_PX]
    order = sorted(tied, key=lambda k: total[k]) + [k for k in range(len(cands))
                                                   if k not in tied]
    return ([(cands[k][0], total[k]) for k in order], len(tied), [free[k] for k in order])


def hidden_region(obs2: Observed2D, camera) -> np.ndarray:
    """``(H, W)`` bool, full frame: the pixels outside the mask whose nearest mask pixel is
    not on the liver's own outline (an instrument's edge, the frame border), where the
    liver may go on unseen; the search's containment frees them (:func:`.landmarks_align.
    _outside_distance`), and so does the refinement (``ignore``)."""
    import cv2  # noqa: PLC0415

    free = (~obs2.mask) & (obs2.dt_out.numpy() <= 0.0)
    return cv2.resize(free.astype(np.uint8), (camera.width, camera.height),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def observed_2d(obs: Dict, ridge_map, camera, normal_map=None, normal_scale=None) -> Observed2D:
    """The search's 2D side from :func:`observations`: mask, outline (network px), ridge
    map and (optional) normal map with (optional) its uncertainty on the network grid."""
    from . import data  # noqa: PLC0415

    return Observed2D(obs["mask_net"], data.full_to_net_px(obs["silhouette"], camera),
                      ridge_map, data.net_camera(camera).K, normal_map=normal_map,
                      normal_scale=normal_scale)


def search_observations(maps: np.ndarray, obs: Dict, camera, w_normal: float = W_NORMAL,
                        normal_uncertainty: bool = True) -> Observed2D:
    """The search's 2D side from the maps (:func:`predict_maps` or :func:`true_maps`) and
    :func:`observations`: the ridge map (probability >= 0.5 inside the mask) and, with
    normal channels and ``w_normal > 0``, the normal map, with its uncertainty channel
    (if the maps have one and ``normal_uncertainty``)."""
    ridge_map = ((maps[0] >= 0.5) & (obs["mask_net"] > 0)).astype(np.uint8)
    normal_map = maps[3:6] if len(maps) >= 6 and w_normal > 0 else None
    scale = maps[6] if len(maps) == 7 and normal_uncertainty else None  # used with normals
    return observed_2d(obs, ridge_map, camera, normal_map, scale)


# ----------------------------------------------------------------------------- register
def register_landmarks(mesh, camera, image=None, mask=None, model=None, net=None,
                       maps: Optional[np.ndarray] = None, refine: bool = True,
                       nonrigid: bool = False, ground_truth=None, structures=None,
                       view_axis=VIEW_AXIS, cone_deg: float = VIEW_CONE_DEG,
                       w_ridge: Optional[float] = None, w_normal: Optional[float] = None,
                       flips: int = 1, translation_start: str = "moment",
                       normal_uncertainty: bool = True, ridge_definition: Optional[str] = None,
                       ridge_in_refinement: bool = True, ridge_tiebreak: bool = False,
                       normal_ridge: Optional[float] = None, progress=None, cancel=None):
    """Learned registration with the landmark model (module docstring). ``model``: model
    file (None = bundled landmarks model); ``net``: a loaded network; ``maps``: given
    ``(3, NET_H, NET_W)`` landmark probabilities instead of the network (tests);
    ``w_ridge``: weight of the ridge in the search (None: ``W_RIDGE_LEARNED`` with the
    network's maps, :data:`.landmarks_align.W_RIDGE` with given maps); 0 uses the
    silhouette alone (search, ICP and refinement); ``w_normal``: weight of the normal map
    in the search (None: :data:`.landmarks_align.W_NORMAL`; used only when the network or
    the given ``maps`` have the normal channels; 0 leaves it out); ``view_axis`` /
    ``cone_deg``: the searched viewing directions (the laparoscope's, in the mesh frame)
    lie within ``cone_deg`` of ``view_axis`` (None: the whole sphere), recorded in the
    result's ``metrics["learned"]``; ``flips``: the network's maps averaged over the frame
    and its turned / mirrored copies (:func:`predict_maps`); ``translation_start``: how the
    search starts each rotation's translation (:func:`.landmarks_align.align_search`);
    ``normal_uncertainty``: a network (or given maps) with the normals' uncertainty channel
    weights the normal term by it (False: the plain mean, an ablation);
    ``ridge_definition``: how the mesh's 3D ridges are found (:func:`.data.ridge_vertices`;
    None: the one the network's ridge labels had, ``ring`` for given maps);
    ``ridge_in_refinement=False``: the ridge (when its weight is > 0) only chooses among
    the search's poses; the image ICP and the refinement use the silhouette alone;
    ``ridge_tiebreak=True``: the ridge (weight ``w_ridge``, > 0) only re-ranks the search's
    poses whose ridge-free cost is within ``TIE_PX`` of the best (:func:`tiebreak_by_ridge`)
    and the ICP goes to those alone; the verdict's margin is the ridge-free one, and a
    pose the ridge chose over a far one that fits the ridge-free cost better is at best
    "doubtful"; ``normal_ridge``: a curvature (1/mm, e.g. ``NORMAL_RIDGE_PER_MM``; only
    with ``ridge_tiebreak`` and maps with normal channels): the tie-break's ridge map is
    the ridge channel or'ed with the pixels whose normal-map curvature is at least that,
    at the depth of the liver's centre at the best ridge-free pose
    (:func:`.landmarks_curvature.normal_ridge`)."""
    from SurgicalReg2D3DLib.optimize import epnp_ransac  # noqa: PLC0415
    from SurgicalReg2D3DLib.progress import check_cancel, report, sub_progress  # noqa: PLC0415

    from ..mesh import decimated, validate_mesh  # noqa: PLC0415
    from ..result import check_pose  # noqa: PLC0415
    from ..silhouette import SILHOUETTE_FACES, SILHOUETTE_FINE_WIDTH, \
        refine_silhouette  # noqa: PLC0415
    from .shared import assemble_result, check_frame_inputs  # noqa: PLC0415
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
        if maps.shape not in tuple((c, data.NET_H, data.NET_W) for c in (3, 6, 7)):
            raise InputError(f"maps: expected shape (3, {data.NET_H}, {data.NET_W}), (6, "
                             f"{data.NET_H}, {data.NET_W}) (with normals) or (7, ...) (and "
                             f"their uncertainty), got {maps.shape}")
    given_maps = maps
    view_axis = check_view_axis(view_axis)
    check_translation_start(translation_start)
    check_flips(flips)
    if not 0.0 < float(cone_deg) <= 180.0:
        raise InputError(f"view cone: expected an angle in (0, 180] deg, got {cone_deg}")
    if ground_truth is not None:
        ground_truth = check_pose(ground_truth, "ground truth pose")
    structures = [validate_mesh(s, f"structure {k} ({s.name})")
                  for k, s in enumerate(structures or ())]
    info = {}
    if maps is None and net is None:
        net, info = load_model(model, kind="landmarks")
    report(progress, 0.0, "LiverLaparoReg: learned landmarks")
    t1 = time.perf_counter()
    if maps is None:
        maps = predict_maps(net, image, mask, camera, flips=flips)
    obs = observations(maps, mask, camera)
    if obs["mask_net"].sum() < 4:
        raise GeometryError("correspondences: no correspondences -- the liver mask covers "
                            "almost nothing of the frame (no liver visible)")
    timings = {"network_s": time.perf_counter() - t1}
    check_cancel(cancel)
    t1 = time.perf_counter()
    if ridge_definition is None:
        ridge_definition = (net.config.get("ridge_definition", "ring") if net is not None
                            else "ring")
    lm = MeshLandmarks(mesh, ridge_definition=ridge_definition)
    w_normal = W_NORMAL if w_normal is None else float(w_normal)
    obs2 = search_observations(maps, obs, camera, w_normal, normal_uncertainty)
    if w_ridge is None:
        w_ridge = W_RIDGE_LEARNED if given_maps is None else W_RIDGE
    tiebreak = bool(ridge_tiebreak) and w_ridge > 0
    if normal_ridge is not None:      # checked before the search, not after it
        if not tiebreak:
            raise InputError("normal ridge: only with the ridge as a tie-breaker "
                             "(ridge_tiebreak and a ridge weight > 0): its depth comes from "
                             "the best ridge-free pose")
        check_normal_ridge(normal_ridge, len(maps))
    n_ridge = len(obs["ridge"])       # found (used by the search only when weighted)
    if w_ridge <= 0 or not ridge_in_refinement or tiebreak:  # no ridge in ICP, refinement
        obs = dict(obs, ridge=np.zeros((0, 2)), ridge_conf=np.zeros(0))
    cands = align_search(lm, camera, obs2, view_axis=view_axis, cone_deg=cone_deg,
                         w_ridge=0.0 if tiebreak else w_ridge, w_normal=w_normal,
                         translation_start=translation_start, cancel=cancel)
    n_tied, free, nr = len(cands), None, None
    if normal_ridge is not None:      # the scale: the liver's depth at the best ridge-free pose
        from .data import net_camera  # noqa: PLC0415
        T_best = min(cands, key=lambda tc: tc[1])[0]
        depth = float(T_best[2, :3] @ lm.c + T_best[2, 3])
        before = maps[0] >= 0.5
        maps = with_normal_ridge(maps, obs["mask_net"], net_camera(camera).K, depth,
                                 normal_ridge)
        obs2 = search_observations(maps, obs, camera, w_normal, normal_uncertainty)
        nr = {"per_mm": float(normal_ridge), "depth_mm": round(depth, 1),
              "added_pixels": int(((maps[0] >= 0.5) & ~before & (obs["mask_net"] > 0)).sum())}
    if tiebreak:
        cands, n_tied, free = tiebreak_by_ridge(cands, lm, obs2, w_ridge, w_normal)
    timings["search_s"] = time.perf_counter() - t1
    report(progress, 0.3, "LiverLaparoReg: correspondences (image ICP)")
    t1 = time.perf_counter()
    best = None
    tried = []
    for i, (T0, c0) in enumerate(cands):
        check_cancel(cancel)
        entry = {"search_cost_px": round(c0, 4)}
        tried.append(entry)
        if ground_truth is not None:      # diagnostics only (benchmarks): not used
            from .. import metrics as _m  # noqa: PLC0415
            entry["search_rot_err_deg"] = round(_m.pose_errors(T0, ground_truth)["rotation_deg"], 1)
        if best is not None and (c0 > cands[0][1] + ICP_WITHIN_PX or i >= ICP_CANDIDATES
                                 or i >= n_tied):
            continue
        if not _in_front(T0, lm):        # a close-up: move it back along its centre's ray
            T0 = _pushed_in_front(T0, lm)
            c0 = pose_cost(T0, lm, obs2, w_ridge, w_normal)
            entry["pushed_back_cost_px"] = round(c0, 4)
            if not _in_front(T0, lm):    # the liver's centre is behind the camera
                entry["skipped"] = "the liver is behind the camera"
                continue
        # the image ICP in the full frame (distortion, full resolution); kept only when
        # it does not raise the search cost (ridge over-detection can pull it away)
        T_i, pairs = icp(T0, lm, camera, obs)
        c_i = pose_cost(T_i, lm, obs2, w_ridge, w_normal) if _in_front(T_i, lm) else np.inf
        if not c_i <= c0 + 0.05:
            T_i, c_i = T0, c0
            pairs = pairs_at(T0, lm, camera, obs)
        if len(np.unique(np.concatenate([p[2] for p in pairs] or [[]]))) < 4:
            # counted by mesh vertex: many pixels paired with the same few vertices (a
            # pose far from the outline) give no pose
            entry["skipped"] = "fewer than 4 correspondences (distinct mesh vertices)"
            continue
        entry["cost_px"] = round(float(c_i), 4)
        if ground_truth is not None:
            entry["icp_rot_err_deg"] = round(_m.pose_errors(T_i, ground_truth)["rotation_deg"], 1)
        if best is None or c_i < best[0]:
            best = (float(c_i), T_i, pairs)
    timings["icp_s"] = time.perf_counter() - t1
    if best is None:
        raise GeometryError("correspondences: fewer than 4 correspondences at every pose "
                            "hypothesis (or none keeps the liver in front of the camera); no "
                            "pose can be computed")
    s1, T1, pairs = best              # its pairs hold >= 4 distinct vertices (above)
    corr = correspondences_of(pairs, camera)
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
    minfo = {"kind": "landmarks", "candidates": tried, "stage1_cost_px": round(s1, 4),
             "ridge_pixels": int(n_ridge), "silhouette_pixels": int(len(obs["silhouette"])),
             "ligament_pixels": int(len(obs["ligament"])),
             "silhouette_net_agreement": round(obs["silhouette_net_agreement"], 3),
             "ransac_vs_icp_deg": round(float(ransac_vs_icp["rotation_deg"]), 3),
             "ligament": "predicted, not used for the pose (no 3D ligament on the mesh)",
             "ridge_weight": float(w_ridge), "ridge_definition": ridge_definition,
             "ridge_in_refinement": bool(ridge_in_refinement and w_ridge > 0
                                         and not tiebreak),
             "ridge_tiebreak": ({"tied_candidates": n_tied} if tiebreak else False),
             "normal_ridge": nr or False,
             "network_flips": int(flips) if given_maps is None else 0,
             "translation_start": translation_start,
             "normal_weight": w_normal if obs2.normals is not None else 0.0,
             "normal_uncertainty": obs2.normal_w is not None,
             "view_axis": ("any" if view_axis is None
                           else [round(float(x), 4) for x in view_axis]),
             "view_cone_deg": None if view_axis is None else float(cone_deg)}
    if refine:
        t1 = time.perf_counter()
        (rid, rp), _ = visible_landmarks(lm, T1, camera)     # ridge visible at T1
        contours = ([(rp, obs["ridge"])] if len(rid) >= 3 and len(obs["ridge"]) >= 3
                    else None)
        coarse = decimated(mesh, SILHOUETTE_FACES)
        try:
            r = refine_silhouette(coarse.vertices, coarse.faces, camera, mask, T1,
                                  factors=(max(1.0, camera.width / SILHOUETTE_FINE_WIDTH),),
                                  iterations=(30,), sigma_px=0.7, patience=5, lr_rad=0.005,
                                  lr_mm=0.5, contours=contours,
                                  # the liver behind an instrument is not counted
                                  # against the pose (24 development frames, v3: 16
                                  # within 10 deg against 15)
                                  ignore=hidden_region(obs2, camera),
                                  progress=sub_progress(progress, 0.5, 0.8), cancel=cancel)
            T, history = r.model_to_camera, r.history
        except (RuntimeError, InputError):
            minfo["refinement"] = "skipped: the Stage I pose does not overlap the mask"
        timings["refine_s"] = time.perf_counter() - t1
    timings["rigid_s"] = time.perf_counter() - t0
    res = assemble_result(mesh, camera, T, T1, corr, inl, mask, timings, history, minfo, info,
                          rr.reprojection_error_px, thr, nonrigid=nonrigid,
                          structures=structures, ground_truth=ground_truth,
                          progress=progress, cancel=cancel)
    # ambiguity: the best other candidate (rotation > AMBIGUOUS_DEG away), by its cost
    # (after its ICP where it had one)
    margin = _far_margin(cands, [e.get("cost_px", c) for (_, c), e in zip(cands, tried)],
                         T1, s1)
    if free is not None:
        # the ridge broke ties: the margin is the ridge-free one (the cost the thresholds
        # were set on), unless a far pose fits that cost better, i.e. the ridge alone
        # chose: then the margin with the ridge, and at best "doubtful" (below)
        margin_free = _far_margin(cands, free, T1, pose_cost(T1, lm, obs2, 0.0, w_normal))
        minfo["ridge_tiebreak"]["ridge_free_margin_px"] = round(float(margin_free), 4)
        if margin_free >= 0:
            margin = margin_free
    res.quality.signals["search_margin_px"] = round(float(margin), 4)
    minfo["search_margin_px"] = round(float(margin), 4)
    res.metrics["learned"]["search_margin_px"] = minfo["search_margin_px"]
    if margin < AMBIGUOUS_MARGIN[0]:
        res.quality.verdict = "failed"
        res.quality.reasons.insert(0, f"ambiguous: another pose far away fits almost as well "
                                      f"(cost margin {margin:.3f} px < {AMBIGUOUS_MARGIN[0]})")
    elif margin < AMBIGUOUS_MARGIN[1] and res.quality.verdict == "ok":
        res.quality.verdict = "doubtful"
        res.quality.reasons.insert(0, f"another pose far away fits nearly as well (cost "
                                      f"margin {margin:.3f} px < {AMBIGUOUS_MARGIN[1]})")
    if free is not None and minfo["ridge_tiebreak"]["ridge_free_margin_px"] < 0:
        if res.quality.verdict == "ok":
            res.quality.verdict = "doubtful"
        res.quality.reasons.insert(0, "chosen by the ridge map among poses whose outlines "
                                      "fit alike (a far pose fits the outline better)")
    if "refinement" in minfo:
        res.quality.verdict = "failed"
        res.quality.reasons.insert(0, minfo["refinement"])
    res.timings["total_s"] = time.perf_counter() - t0
    report(progress, 1.0, "LiverLaparoReg: done")
    return res
