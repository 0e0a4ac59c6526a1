"""LiverLaparoReg registration methods by name (the GUI, the console and the command line
choose from :data:`METHODS`); nothing here imports :mod:`.logic`, which validates the
inputs, runs a method and judges its result.

A method is ``function(ctx, progress=None, cancel=None) -> (model_to_camera, timings,
history)`` with ``ctx`` the checked inputs (``mesh``, ``camera``, ``mask``,
``contours2d``, ``contours3d``, ``init``, ``image``, ``learned_options``; a method may add
``pairs`` (matched curves, for the non-rigid step) and ``notes``):

- ``pnp``: landmark curves -> EPnP + RANSAC + image ICP (:mod:`.pnp`); 2D ``Silhouette``
  contours take part through the mesh's occluding contour (the mesh faces are passed);
- ``pnp+silhouette``: ``pnp``, then the joint refinement of the curve reprojection and
  the silhouette soft Dice against the liver mask (needs a mask);
- ``silhouette``: mask-only refinement from an initial pose (:mod:`.silhouette`);
- ``learned``: no contours, no initial pose (:mod:`.learned.infer`).

Without a method the best the inputs allow is chosen (:func:`choose_method`): contours
+ mask -> ``pnp+silhouette``; contours -> ``pnp``; mask + initial pose -> ``silhouette``.
"""

from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import sub_progress


def choose_method(has_contours: bool, has_mask: bool, has_init: bool) -> str:
    """The best method the inputs allow (see the module docstring)."""
    if has_contours:
        return "pnp+silhouette" if has_mask else "pnp"
    if has_mask and has_init:
        return "silhouette"
    raise InputError("inputs: registration needs 2D + 3D contours, or a liver mask and an "
                     "initial pose")


def _run_pnp(ctx: dict, progress=None, cancel=None, with_mask: bool = False):
    from .pnp import register_pnp  # noqa: PLC0415

    name = "pnp+silhouette" if with_mask else "pnp"
    if not ctx["contours2d"] or not ctx["contours3d"]:
        raise InputError(f"contours: method '{name}' needs 2D and 3D contours")
    if with_mask and ctx["mask"] is None:
        raise InputError("mask: method 'pnp+silhouette' needs a liver mask")
    from .metrics import densify_polyline  # noqa: PLC0415

    t0 = time.perf_counter()
    r = register_pnp(ctx["mesh"].vertices, ctx["camera"], ctx["contours2d"], ctx["contours3d"],
                     faces=ctx["mesh"].faces,
                     progress=sub_progress(progress, 0.0, 0.5 if with_mask else 1.0),
                     cancel=cancel)
    T, timings, history = r.model_to_camera, dict(r.timings), []
    timings["pnp_s"] = time.perf_counter() - t0
    ctx["pairs"] = r.pairs              # the curve pairs, for the non-rigid landmark term
    if any(c.label == "Silhouette" for c in ctx["contours2d"]):
        ctx.setdefault("notes", []).append(
            "2D Silhouette contours are not used by the contour PnP (they have no 3D "
            "counterpart; pairing them with the mesh's occluding contour made the P2ILF "
            "fit worse); give a liver mask for silhouette information (pnp+silhouette)")
    if with_mask:
        # joint refinement: silhouette Dice + reprojection of the matched curves
        v = ctx["mesh"].vertices
        step = max(0.25, float(np.ptp(v, axis=0).max()) / 400.0)
        curves = [(densify_polyline(v[ctx["contours3d"][b].vertices], step),
                   ctx["contours2d"][a].points) for a, b, _ in r.pairs]
        ctx = dict(ctx, init=T)
        T, t2, history = _run_silhouette(ctx, sub_progress(progress, 0.5, 1.0), cancel,
                                         contours=curves)
        timings.update(t2)
    return T, timings, history


def _run_silhouette(ctx: dict, progress=None, cancel=None, contours=None):
    """Mask-only refinement from the initial pose (:func:`.silhouette.refine_from_mask`);
    with ``contours`` the joint refinement after PnP."""
    from .silhouette import refine_from_mask  # noqa: PLC0415

    if ctx["mask"] is None or ctx["init"] is None:
        raise InputError("mask: method 'silhouette' needs a liver mask and an initial pose")
    return refine_from_mask(ctx["mesh"], ctx["camera"], ctx["mask"], ctx["init"],
                            contours=contours, progress=progress, cancel=cancel)


def _run_learned(ctx: dict, progress=None, cancel=None):
    """The learned method (bundled model unless ``learned_options`` name one): no contours,
    no initial pose; see :func:`.learned.infer.register_learned` (its result also carries
    the correspondences and the quality)."""
    from .learned.infer import register_learned  # noqa: PLC0415

    r = register_learned(ctx["mesh"], ctx["camera"], image=ctx.get("image"), mask=ctx["mask"],
                         progress=progress, cancel=cancel, **ctx.get("learned_options", {}))
    return r.model_to_camera, dict(r.timings), r.history


#: method name -> function(ctx dict, progress, cancel) -> (model_to_camera, timings, history)
METHODS: Dict[str, Callable] = {
    "pnp": _run_pnp,
    "pnp+silhouette": lambda ctx, progress=None, cancel=None: _run_pnp(ctx, progress, cancel,
                                                                       with_mask=True),
    "silhouette": _run_silhouette,
    "learned": _run_learned}
