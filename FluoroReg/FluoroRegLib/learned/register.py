"""Registration from the C-arm's nominal view: the pose regressor gives the start, a
refinement method polishes it (``surgreg fluoro register --model M`` without ``--init``).

:func:`register_with_model`:

1. the model file is read and checked against the CT and the detector of view 0
   (:func:`~.model_file.check_model_matches`; ``force`` to use it anyway);
2. the regressor predicts ``ct_to_camera`` of view 0 from the first X-ray;
3. multi-view: the other views' starts are ``camera0_to_view[k] @ start``, with the
   C-arm motion ``camera0_to_view[k] = nominal[k] @ inv(nominal[0])`` from the nominal
   poses of the views (``nominal_views``; required for more than one view);
4. ``method`` refines from there (any name of ``FluoroRegLib.logic.METHODS``; default
   :data:`DEFAULT_REFINEMENT`, the best measured in ``benchmarks/results/fluoro_learned.md``),
   or ``method="regressor"`` returns the regressor's pose as it is.

With ``init_poses`` the regressor is skipped (the classic registration from that start).

With a learned PPC update (``ppc_model``, a ``ppc`` model file, :mod:`.ppc_register`) the
chain is: start (``init_poses``, else the regressor's pose when ``model`` is given, else
the nominal view recorded in the PPC model) -> ``ppc_updates`` learned PPC updates ->
``method`` (default ``ppc``; ``method="learned-ppc"``: no classic refinement after the
learned updates). ``metrics["learned_ppc_time_s"]`` gives the time of the learned part.

With a learned similarity (``similarity_model``, a ``similarity`` model file,
:mod:`.sim_register`) the chain is: start (``init_poses``, else the regressor's pose when
``model`` is given, else the similarity model's nominal view) -> LM on the learned features
(all views together) -> ``method`` (``"regressor"``: none); ``metrics["similarity_time_s"]``
and the ``similarity_ct_to_camera`` attribute (the pose after the LM).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

# shared with .ppc_register (:mod:`.starts`); re-exported here for the callers
from .starts import (DEFAULT_REFINEMENT, LEARNED_PPC, carry_to_views,  # noqa: F401
                     load_regressor, quality_of, regressor_starts)


def register_with_model(hu, ijk_to_ras, images: Sequence, cameras: Sequence, model,
                        method: str = DEFAULT_REFINEMENT,
                        nominal_views: Optional[Sequence[np.ndarray]] = None,
                        init_poses: Optional[Sequence[np.ndarray]] = None,
                        force: bool = False, refine_hu=None, refine_ijk_to_ras=None,
                        landmarks_ras=None, true_ct_to_camera=None, device=None,
                        ppc_model=None, ppc_updates: Optional[int] = None,
                        similarity_model=None, similarity_steps: Optional[int] = None,
                        progress=None, cancel=None, **options):
    """Register from the nominal view (see the module docstring); returns the
    ``RegistrationResult`` with ``metrics["regressor_time_s"]`` and, with landmarks and
    the truth, ``start_mtre_mm`` (the regressor's start) besides the usual errors.

    ``refine_hu``/``refine_ijk_to_ras``: a (e.g. block-averaged) copy of the CT for the
    refinement; the model is always checked against ``hu``.

    ``quality=True`` (in ``options``; what ``surgreg fluoro register --model`` passes) runs
    the classic quality step on the refinement (:func:`..recovery.assess_result`, with
    ``quality_polish``: ``"all"`` there, the detector-model polish of every result, which
    lifted single-view SMSR from the nominal view from 82 % to 98 %, see
    ``benchmarks/results/fluoro_learned.md``) and keeps its calibrated verdict.
    """
    from ..logic import available_methods, register_arrays  # noqa: PLC0415
    from ..refine import RegistrationResult, check_pose, pose_errors  # noqa: PLC0415

    if similarity_model is not None and (ppc_model is not None or method == LEARNED_PPC):
        raise InputError("model: a similarity model and a learned PPC update cannot be "
                         "combined; give one of them")
    if ppc_model is not None or method == LEARNED_PPC:
        from .ppc_register import register_with_ppc_model  # noqa: PLC0415

        return register_with_ppc_model(
            hu, ijk_to_ras, images, cameras, model, ppc_model, method=method,
            nominal_views=nominal_views, init_poses=init_poses, force=force,
            refine_hu=refine_hu, refine_ijk_to_ras=refine_ijk_to_ras,
            landmarks_ras=landmarks_ras, true_ct_to_camera=true_ct_to_camera, device=device,
            ppc_updates=ppc_updates, progress=progress, cancel=cancel, **options)
    if len(images) == 0:
        raise InputError("X-ray images: at least one image is needed")
    if len(cameras) != len(images):
        raise InputError(f"X-ray geometry: {len(images)} X-ray images but {len(cameras)} "
                         "geometries; give one geometry per image")
    if method != "regressor" and method not in available_methods():
        raise InputError(f"method: expected 'regressor' or one of {available_methods()}, "
                         f"got {method!r}")
    rh = hu if refine_hu is None else refine_hu
    rm = ijk_to_ras if refine_ijk_to_ras is None else refine_ijk_to_ras
    if similarity_model is not None:
        return _register_with_similarity(
            hu, ijk_to_ras, images, cameras, model, similarity_model, method, nominal_views,
            init_poses, force, rh, rm, landmarks_ras, true_ct_to_camera, device,
            similarity_steps, progress, cancel, **options)
    if init_poses is not None:  # --init: the classic registration, no regressor
        return register_arrays(rh, rm, images, cameras, init_poses, method=method,
                               landmarks_ras=landmarks_ras, true_ct_to_camera=true_ct_to_camera,
                               device=device, progress=progress, cancel=cancel, **options)
    t0 = time.perf_counter()
    starts = regressor_starts(hu, ijk_to_ras, images, cameras, model, nominal_views, force)
    start = starts[0]
    t_reg = time.perf_counter() - t0
    k, j, i = np.asarray(hu).shape
    center = (np.asarray(ijk_to_ras, float) @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]
    if method == "regressor":
        result = RegistrationResult(start, starts, float("nan"), "regressor", [], t_reg)
    else:
        result = register_arrays(rh, rm, images, cameras, starts, method=method,
                                 device=device, progress=progress, cancel=cancel, **options)
        result.method = f"regressor+{method}"
        result.time_s += t_reg
    result.metrics["regressor_time_s"] = t_reg
    if landmarks_ras is not None and true_ct_to_camera is not None:
        truth = check_pose(true_ct_to_camera, "true ct_to_camera")
        lm = np.asarray(landmarks_ras, float)
        result.metrics.update(pose_errors(result.ct_to_camera, truth, lm, cameras[0]))
        result.metrics["start_mtre_mm"] = pose_errors(start, truth, lm, cameras[0])["mtre_mm"]
    result.start_ct_to_camera = start
    if getattr(result, "quality", None) is None:  # no classic quality step (regressor alone,
        result.quality = quality_of(result, start, center)  # or quality=False)
    # else: the refinement's own calibrated trust value (FluoroRegLib.quality) is kept
    return result


def _register_with_similarity(hu, ijk_to_ras, images, cameras, model, similarity_model, method,
                              nominal_views, init_poses, force, rh, rm, landmarks_ras,
                              true_ct_to_camera, device, similarity_steps, progress, cancel,
                              **options):
    """:func:`register_with_model` with a learned similarity (see the module docstring)."""
    from SurgicalReg2D3DLib.progress import sub_progress  # noqa: PLC0415

    from ..logic import register_arrays  # noqa: PLC0415
    from ..refine import RegistrationResult, check_pose, check_poses, pose_errors  # noqa: PLC0415
    from .model_file import load_model_file  # noqa: PLC0415
    from .sim_register import check_similarity_model, refine_starts  # noqa: PLC0415

    sdata = similarity_model if isinstance(similarity_model, dict) else \
        load_model_file(similarity_model)
    check_similarity_model(sdata, hu, ijk_to_ras, cameras[0], force=force)
    t0 = time.perf_counter()
    if init_poses is not None:
        starts = check_poses(init_poses, len(images))
        start_kind = "init"
    elif model is not None:
        starts = regressor_starts(hu, ijk_to_ras, images, cameras, model, nominal_views, force)
        start_kind = "regressor"
    else:
        starts = carry_to_views(sdata["nominal_ct_to_camera"], nominal_views, len(images))
        start_kind = "nominal"
    t_start = time.perf_counter() - t0
    views, info = refine_starts(sdata, hu, ijk_to_ras, images, cameras, starts, force=True,
                                device=device, steps=similarity_steps, cancel=cancel)
    prefix = {"regressor": "regressor+", "nominal": "nominal+", "init": ""}[start_kind]
    if method == "regressor":
        result = RegistrationResult(views[0], views, float("nan"), prefix + "similarity", [],
                                    t_start + info["similarity_time_s"])
    else:
        # the "ended worse than it started" rule compares with the chain's start
        result = register_arrays(rh, rm, images, cameras, views, method=method, device=device,
                                 progress=sub_progress(progress, 0.1, 1.0), cancel=cancel,
                                 progress_start=starts[0], **options)
        result.method = f"{prefix}similarity+{method}"
        result.time_s += t_start + info["similarity_time_s"]
    result.metrics.update(info)
    if start_kind == "regressor":
        result.metrics["regressor_time_s"] = t_start
    if landmarks_ras is not None and true_ct_to_camera is not None:
        truth = check_pose(true_ct_to_camera, "true ct_to_camera")
        lm = np.asarray(landmarks_ras, float)
        result.metrics.update(pose_errors(result.ct_to_camera, truth, lm, cameras[0]))
        result.metrics["start_mtre_mm"] = pose_errors(starts[0], truth, lm, cameras[0])["mtre_mm"]
        result.metrics["similarity_mtre_mm"] = pose_errors(views[0], truth, lm,
                                                           cameras[0])["mtre_mm"]
    result.start_ct_to_camera = starts[0] if start_kind == "regressor" else None
    result.similarity_ct_to_camera = views[0]
    if getattr(result, "quality", None) is None:  # no classic quality step
        k, j, i = np.asarray(hu).shape
        center = (np.asarray(ijk_to_ras, float)
                  @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]
        result.quality = quality_of(result, starts[0], center)
    return result
