"""FluoroReg registration methods by name: the registry :data:`METHODS` (name -> function)
that the GUI, the command line, the quality calibration and the restarts choose from,
:func:`register_method` for other packages (the learned methods) and
:func:`available_methods`. A method function has the signature ``fn(volume, views,
init_ct_to_camera, progress=None, cancel=None, **options) -> RegistrationResult`` (see
:mod:`.refine`). The method modules are imported when a method runs; nothing here
imports :mod:`.logic`, :mod:`.quality` or :mod:`.recovery`, which use this registry.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from SurgicalReg2D3DLib.errors import InputError

from .refine import RegistrationResult, register_intensity

MethodFn = Callable[..., RegistrationResult]


def _intensity(similarity: str, optimizer: str) -> MethodFn:
    def run(volume, views, init, progress=None, cancel=None, **options):
        return register_intensity(volume, views, init, similarity=similarity,
                                  optimizer=optimizer, progress=progress, cancel=cancel,
                                  **options)

    run.__doc__ = f"Intensity-based registration: {similarity} with {optimizer}."
    return run


def _ppc(volume, views, init, progress=None, cancel=None, **options):
    from .ppc import register_ppc  # noqa: PLC0415

    return register_ppc(volume, views, init, progress=progress, cancel=cancel, **options)


def _ppc_then(similarity: str) -> MethodFn:
    def run(volume, views, init, progress=None, cancel=None, **options):
        from .ppc import register_ppc_intensity  # noqa: PLC0415

        options.pop("similarity", None)
        return register_ppc_intensity(volume, views, init, similarity=similarity,
                                      progress=progress, cancel=cancel, **options)

    run.__doc__ = f"PPC followed by {similarity} Levenberg-Marquardt refinement."
    return run


def _multiview(similarity: str) -> MethodFn:
    def run(volume, views, init, progress=None, cancel=None, **options):
        from .multiview import register_multiview  # noqa: PLC0415

        return register_multiview(volume, views, init, method=similarity, progress=progress,
                                  cancel=cancel, **options)

    run.__doc__ = (f"Multi-view {similarity}: per-view estimates coupled by cross-view "
                   "pose consistency, then the joint one-pose refinement.")
    return run


#: method name -> function. "ncc"/"gradncc" use Levenberg-Marquardt; "*-adam" are the
#: first-order baselines; "ppc" is point-to-plane correspondence; "*-multiview" solve
#: per-view estimates with a cross-view pose-consistency term, then the joint one-pose
#: refinement (:mod:`.multiview`); "ppc+*" run PPC, then the intensity refinement
#: (:func:`.ppc.register_ppc_intensity`). The method modules are imported when a method
#: runs, so none of them imports this module back.
METHODS: Dict[str, MethodFn] = {
    "ncc": _intensity("ncc", "lm"),
    "gradncc": _intensity("gradncc", "lm"),
    "ncc-adam": _intensity("ncc", "adam"),
    "gradncc-adam": _intensity("gradncc", "adam"),
    "ppc": _ppc,
    "ncc-multiview": _multiview("ncc"),
    "gradncc-multiview": _multiview("gradncc"),
    "ppc+gradncc": _ppc_then("gradncc"),
    "ppc+ncc": _ppc_then("ncc"),
}


def register_method(name: str, fn: MethodFn) -> None:
    """Add (or replace) a registration method, e.g. from the learned-methods package."""
    if not name or not callable(fn):
        raise InputError(f"method: need a name and a callable, got {name!r}, {fn!r}")
    METHODS[name] = fn


def available_methods() -> List[str]:
    """Method names in registry order (what the GUI and the CLI offer)."""
    try:  # the learned package registers its methods on import, when present
        from . import learned  # noqa: F401, PLC0415
    except ImportError:
        pass
    return list(METHODS)
