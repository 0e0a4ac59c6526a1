"""The learned PPC update at registration time, and one classic PPC update for comparison.

:class:`LearnedPPCUpdater` holds a ``ppc`` model (:mod:`.ppc_train`) with the CT prepared
as in training (block-averaged by the model's ``ct_downsample``, the same classic 3D edge
points). One :meth:`~LearnedPPCUpdater.update` from ``ct_to_camera`` of view 0, for every
view ``k`` (pose ``camera0_to_view[k] @ T``): the X-ray is area-resampled to the model's
image size and standardised, the DRR at the current pose is rendered at that size, the
contour points are projected, the network gives flow and weights, and the planes of all
views (moved into camera 0) are solved together (:func:`.ppc_net.ppc_solve`, the damping
and Huber re-weighting of the model, no trust region). :func:`register_learned_ppc` runs ``n_updates`` of them
and then, optionally, a classic refinement (``logic.METHODS``, default ``ppc``).

:func:`classic_one_update`: exactly one iteration of the classic ``ppc.register_ppc``
(one pyramid level, one iteration), the reference of the one-update benchmark.
"""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

DEFAULT_PPC_UPDATES = 3


class LearnedPPCUpdater:
    """A loaded learned PPC update for one CT (see the module docstring)."""

    def __init__(self, data: dict, hu, ijk_to_ras, device=None):
        from ..drr import DRRVolume  # noqa: PLC0415
        from ..simulate import downsample_ct  # noqa: PLC0415
        from .ppc_net import build_ppc_from_model, edge_set  # noqa: PLC0415

        if data.get("kind") != "ppc":
            raise InputError(f"model: expected a learned PPC update (kind 'ppc'), got kind "
                             f"{data.get('kind')!r}")
        self.data = data
        self.net = build_ppc_from_model(data)
        inp = data["input"]
        f = int(inp["ct_downsample"])
        arr = np.asarray(hu, np.float32)
        m = np.asarray(ijk_to_ras, float)
        hu_t, m_t = downsample_ct(arr, m, f) if f > 1 else (arr, m)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.net.to(self.device)
        self.volume = DRRVolume.from_hu(hu_t, m_t, device=self.device)
        self.edges = edge_set(self.volume, max_points=int(inp["edge_max_points"]))
        self.center = np.asarray(self.volume.center_ras(), float)
        self.image_size = int(inp["image_size"])
        self.points = int(inp["points"])
        self.cos_tangent = float(inp["cos_tangent"])
        self.damping = float(inp["damping"])
        self.n_samples = int(inp["n_samples"])
        self.huber_iterations = int(inp.get("huber_iterations", 0))

    def prepare(self, images: Sequence, cameras: Sequence) -> list:
        """Per view: ``(small camera, camera tensor, standardised X-ray (h, w))``."""
        import torch.nn.functional as F  # noqa: PLC0415

        from ..geometry import camera_parameters  # noqa: PLC0415
        from .ppc_net import camera_tensor  # noqa: PLC0415
        from .sampling import standardise, training_factor  # noqa: PLC0415

        out = []
        for img, cam in zip(images, cameras):
            factor = training_factor(cam, self.image_size)
            small = cam if factor == 1.0 else cam.scaled(factor)
            p = camera_parameters(small)
            x = torch.as_tensor(np.asarray(img, np.float32))
            if tuple(x.shape) != (p.height, p.width):
                x = F.interpolate(x[None, None], size=(p.height, p.width), mode="area")[0, 0]
            out.append((small, camera_tensor(small), standardise(x)))
        return out

    def update(self, prepared: list, camera0_to_views: Sequence[np.ndarray], pose0: np.ndarray):
        """One learned update: ``(new pose0 (4, 4), info dict)``; ``None`` as the pose when
        no view has enough contour points (the caller keeps its pose)."""
        from ..drr import render_drr  # noqa: PLC0415
        from .ppc_net import apply_update, contour_points, ppc_rows, ppc_solve  # noqa: PLC0415
        from .sampling import standardise  # noqa: PLC0415

        T0 = torch.as_tensor(np.asarray(pose0, float))[None]
        c0 = (T0[0, :3, :3] @ torch.as_tensor(self.center) + T0[0, :3, 3])[None]
        Ps, ms, ds, ws, n_pts = [], [], [], [], 0
        with torch.no_grad():
            for (small, cam, fixed), rel in zip(prepared, camera0_to_views):
                rel_t = torch.as_tensor(np.asarray(rel, float))
                pose_k = rel_t[None] @ T0
                drr = render_drr(self.volume, small, pose_k.float(),
                                 n_samples=self.n_samples).float().cpu()
                gen = torch.Generator().manual_seed(0)
                P, uv, n2, valid, _ = contour_points(self.edges[0], self.edges[1], pose_k, cam,
                                                     self.points, self.cos_tangent, generator=gen)
                if int(valid.sum()) < 3:
                    continue
                flow, w = self.net(fixed[None].to(self.device), standardise(drr).to(self.device),
                                   uv.float().to(self.device), n2.float().to(self.device),
                                   valid.to(self.device))
                m0, P0, d = ppc_rows(P, uv + flow.double().cpu(), n2, cam, rel_t)
                Ps.append(P0), ms.append(m0), ds.append(d)
                ws.append(w.double().cpu() * valid)
                n_pts += int(valid.sum())
            if not Ps:
                return None, {"correspondences": 0}
            x = ppc_solve(torch.cat(Ps, 1), torch.cat(ms, 1), torch.cat(ds, 1), torch.cat(ws, 1),
                          c0, damping=self.damping, huber_iterations=self.huber_iterations)
            new = apply_update(T0, x, c0)[0].numpy()
        w_all = torch.cat(ws, 1)
        return new, {"correspondences": n_pts, "mean_weight": float(w_all.sum() / max(n_pts, 1)),
                     "step_rotation_deg": float(x[0, :3].norm()) * 180.0 / np.pi,
                     "step_translation_mm": float(x[0, 3:].norm())}

    def run(self, images: Sequence, cameras: Sequence, camera0_to_views: Sequence[np.ndarray],
            pose0: np.ndarray, n_updates: int = DEFAULT_PPC_UPDATES, progress=None,
            cancel=None):
        """``n_updates`` learned updates: ``(pose0 (4, 4), history list)``."""
        if int(n_updates) < 1:
            raise InputError(f"learned PPC updates: must be >= 1, got {n_updates}")
        prepared = self.prepare(images, cameras)
        pose = np.asarray(pose0, float).copy()
        history: List[dict] = []
        for it in range(int(n_updates)):
            check_cancel(cancel, "learned PPC update")
            new, info = self.update(prepared, camera0_to_views, pose)
            if new is None:
                break
            pose = new
            history.append(dict(info, iteration=it + 1, loss=float(info["step_translation_mm"]),
                                stage="learned-ppc"))
            report(progress, (it + 1) / int(n_updates),
                   f"learned PPC update {it + 1}: {info['correspondences']} points")
        return pose, history


def check_ppc_model(data: dict, hu, ijk_to_ras, camera, force: bool = False):
    """A ``ppc`` model checked against the CT and the camera of view 0."""
    from .model_file import check_model_matches  # noqa: PLC0415

    if data.get("kind") != "ppc":
        raise InputError(f"model: expected a learned PPC update (kind 'ppc'), got kind "
                         f"{data.get('kind')!r}")
    check_model_matches(data, hu, ijk_to_ras, camera, force=force, name="learned PPC model")
    return data


def register_learned_ppc(hu, ijk_to_ras, images: Sequence, cameras: Sequence,
                         starts: Sequence[np.ndarray], data: dict,
                         n_updates: int = DEFAULT_PPC_UPDATES, refine: Optional[str] = "ppc",
                         refine_hu=None, refine_ijk_to_ras=None, device=None, updater=None,
                         progress=None, cancel=None, **options):
    """Learned PPC updates from ``starts`` (one ``ct_to_camera`` per view; their relative
    motion is the C-arm motion), then the classic ``refine`` method (``None``: none).
    Returns a ``RegistrationResult`` (``method`` ``learned-ppc`` or
    ``learned-ppc+<refine>``; ``metrics["learned_ppc_time_s"]``; ``learned_ct_to_camera``
    attribute: the pose after the learned updates)."""
    from SurgicalReg2D3DLib.progress import sub_progress  # noqa: PLC0415

    from ..drr import DRRVolume, render_drr  # noqa: PLC0415
    from ..logic import register_arrays  # noqa: PLC0415
    from ..refine import RegistrationResult, check_pose, image_similarity  # noqa: PLC0415

    starts = [check_pose(s, f"start ct_to_camera of view {k + 1}") for k, s in enumerate(starts)]
    if len(starts) != len(images):
        raise InputError(f"start poses: {len(images)} X-ray images but {len(starts)} poses")
    t0 = time.perf_counter()
    upd = updater or LearnedPPCUpdater(data, hu, ijk_to_ras, device=device)
    inv0 = np.linalg.inv(starts[0])
    rels = [s @ inv0 for s in starts]
    pose, history = upd.run(images, cameras, rels, starts[0], n_updates,
                            progress=sub_progress(progress, 0.0, 0.3), cancel=cancel)
    t_learned = time.perf_counter() - t0
    views = [r @ pose for r in rels]
    rh = hu if refine_hu is None else refine_hu
    rm = ijk_to_ras if refine_ijk_to_ras is None else refine_ijk_to_ras
    if refine:
        result = register_arrays(rh, rm, images, cameras, views, method=refine, device=device,
                                 progress=sub_progress(progress, 0.3, 1.0), cancel=cancel,
                                 **options)
        result.method = f"learned-ppc+{refine}"
        result.history = history + [dict(h, stage=refine) for h in result.history]
        result.time_s += t_learned
    else:
        volume = DRRVolume.from_hu(rh, rm)
        with torch.no_grad():
            sims = [float(image_similarity(render_drr(volume, cam, p),
                                           torch.as_tensor(np.asarray(img, np.float32)), "ncc")[0])
                    for cam, p, img in zip(cameras, views, images)]
        result = RegistrationResult(pose, views, float(np.mean(sims)), "learned-ppc", history,
                                    t_learned)
    result.metrics["learned_ppc_time_s"] = t_learned
    result.learned_ct_to_camera = pose
    return result


def classic_one_update(volume, views, start: np.ndarray, level: float = 2.0,
                       max_step_mm: float = 5.0, **options) -> np.ndarray:
    """One iteration of the classic ``ppc.register_ppc`` at one pyramid ``level`` (its
    matching, Huber IRLS, damping and trust region ``max_step_mm``): the pose after it."""
    from ..ppc import register_ppc  # noqa: PLC0415

    res = register_ppc(volume, views, start, levels=(level,), iterations=1,
                       max_step_mm=max_step_mm, **options)
    return res.ct_to_camera


def register_with_ppc_model(hu, ijk_to_ras, images: Sequence, cameras: Sequence, model,
                            ppc_model, method: Optional[str] = None,
                            nominal_views: Optional[Sequence[np.ndarray]] = None,
                            init_poses: Optional[Sequence[np.ndarray]] = None,
                            force: bool = False, refine_hu=None, refine_ijk_to_ras=None,
                            landmarks_ras=None, true_ct_to_camera=None, device=None,
                            ppc_updates: Optional[int] = None, progress=None, cancel=None,
                            **options):
    """``register_with_model`` with a learned PPC update (see :mod:`.register`): start
    (``init_poses`` > the regressor ``model`` > the PPC model's nominal view) ->
    ``ppc_updates`` learned updates -> ``method`` (``"learned-ppc"``: none)."""
    from ..logic import available_methods  # noqa: PLC0415
    from ..refine import check_pose, check_poses, pose_errors  # noqa: PLC0415
    from .model_file import load_model_file  # noqa: PLC0415
    from .starts import (DEFAULT_REFINEMENT, LEARNED_PPC, carry_to_views,  # noqa: PLC0415
                         load_regressor, quality_of)
    from .regressor import predict_pose  # noqa: PLC0415

    method = method or DEFAULT_REFINEMENT
    n_updates = DEFAULT_PPC_UPDATES if ppc_updates is None else ppc_updates
    try:
        n_updates = int(n_updates)
    except (TypeError, ValueError):
        raise InputError(f"learned PPC updates: expected an integer, got {ppc_updates!r}") from None
    if n_updates < 1:
        raise InputError(f"learned PPC updates: must be >= 1, got {n_updates}")
    if len(images) == 0:
        raise InputError("X-ray images: at least one image is needed")
    if len(cameras) != len(images):
        raise InputError(f"X-ray geometry: {len(images)} X-ray images but {len(cameras)} "
                         "geometries; give one geometry per image")
    if ppc_model is None:
        raise InputError(f"method: {LEARNED_PPC!r} needs a learned PPC model (surgreg fluoro "
                         "train --kind ppc; register --model PPC.pt)")
    if method not in (LEARNED_PPC, "regressor") and method not in available_methods():
        raise InputError(f"method: expected {LEARNED_PPC!r} or one of {available_methods()}, "
                         f"got {method!r}")
    if method == "regressor":
        raise InputError("method: 'regressor' (the regressor's pose alone) cannot be combined "
                         "with a learned PPC model; use learned-ppc or a refinement method")
    pdata = ppc_model if isinstance(ppc_model, dict) else load_model_file(ppc_model)
    check_ppc_model(pdata, hu, ijk_to_ras, cameras[0], force=force)
    if init_poses is None and len(images) > 1:
        if nominal_views is None or len(nominal_views) != len(images):
            raise InputError(f"nominal poses: {len(images)} X-ray images need one nominal "
                             "ct_to_camera per view (they give the C-arm motion between views)")
    t0 = time.perf_counter()
    start_kind = "init"
    if init_poses is not None:
        starts = check_poses(init_poses, len(images))
    else:
        if model is not None:
            data, net = load_regressor(model, hu, ijk_to_ras, cameras[0], force=force)
            start0 = predict_pose(data, net, images[0], cameras[0])
            start_kind = "regressor"
        else:
            start0 = np.asarray(pdata["nominal_ct_to_camera"], float)
            start_kind = "nominal"
        starts = carry_to_views(start0, nominal_views, len(images))
    t_start = time.perf_counter() - t0
    result = register_learned_ppc(hu, ijk_to_ras, images, cameras, starts, pdata,
                                  n_updates=n_updates,
                                  refine=None if method == LEARNED_PPC else method,
                                  refine_hu=refine_hu, refine_ijk_to_ras=refine_ijk_to_ras,
                                  device=device, progress=progress, cancel=cancel, **options)
    prefix = {"regressor": "regressor+", "nominal": "nominal+", "init": ""}[start_kind]
    result.method = prefix + result.method
    result.time_s += t_start
    if start_kind == "regressor":
        result.metrics["regressor_time_s"] = t_start
    result.metrics["learned_ppc_updates"] = float(n_updates)
    if landmarks_ras is not None and true_ct_to_camera is not None:
        truth = check_pose(true_ct_to_camera, "true ct_to_camera")
        lm = np.asarray(landmarks_ras, float)
        result.metrics.update(pose_errors(result.ct_to_camera, truth, lm, cameras[0]))
        result.metrics["start_mtre_mm"] = pose_errors(starts[0], truth, lm, cameras[0])["mtre_mm"]
        result.metrics["learned_ppc_mtre_mm"] = pose_errors(result.learned_ct_to_camera, truth,
                                                            lm, cameras[0])["mtre_mm"]
    k, j, i = np.asarray(hu).shape
    center = (np.asarray(ijk_to_ras, float) @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]
    # the regressor's pose in the output JSON only when it gave the start
    result.start_ct_to_camera = starts[0] if start_kind == "regressor" else None
    if getattr(result, "quality", None) is None:  # learned-ppc only: the uncalibrated value
        result.quality = quality_of(result, starts[0], center)
    # else: the classic refinement's own trust value (FluoroRegLib.quality) is kept
    return result
