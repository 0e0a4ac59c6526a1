"""Registration methods by name (GUI, console and command line choose from ``METHODS``).

A *method factory* takes the volume and the sweep geometry once and returns a callable

    method(frames (B, H, W), starts (B, 4, 4), init_corrections=None (B, 4, 4),
           indices=None, cancel=None, tracking=False) -> List[FrameResult]

that registers frames whose tracked ``image_to_reference`` is ``starts``, optionally after
applying ``init_corrections`` on the left (temporal initialisation). ``tracking=True``
says the start is already close (the previous frame's correction in a stream): a method
may then use a shorter search (the LNCC method runs its ``tracking_levels``). Both 4x4s and the
volume's ``ijk_to_reference`` must be in the same millimetre frame (the PLUS reference
frame, or Slicer RAS: the methods do not care which).

The learned method (DeepRS2V, :mod:`.learned`) is ``deep`` (the network alone) and
``deep+lncc`` (its pose refined by the LNCC method); their factories also take
``model=`` (a model file, default: the bundled model of this volume) and ``force=``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

from .register import RegistrationConfig, SliceRegistrar


def make_lncc(volume, ijk_to_reference, frame_shape, fan, volume_mask=None,
              config: Optional[RegistrationConfig] = None, device=None):
    """Masked LNCC + Levenberg-Marquardt (:class:`~.register.SliceRegistrar`)."""
    registrar = SliceRegistrar(volume, ijk_to_reference, frame_shape, fan, config=config,
                               device=device, volume_mask=volume_mask)

    def method(frames, starts, init_corrections=None, indices=None, cancel=None,
               tracking=False):
        return registrar.register(frames, starts, init_corrections=init_corrections,
                                  indices=indices, cancel=cancel, tracking=tracking)

    method.registrar = registrar
    return method


def make_sitk(volume, ijk_to_reference, frame_shape, fan, volume_mask=None, config=None,
              device=None):
    """SimpleITK GNCC + regular-step gradient descent baseline."""
    from .sitk_baseline import moving_image, register_sitk  # noqa: PLC0415

    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise InputError(f"US volume: expected a 3D volume (K, J, I), got shape {vol.shape}")
    moving = moving_image(vol, ijk_to_reference)
    steps = tuple(level.step for level in (config or RegistrationConfig()).levels)
    # A registrar only for the shared checks (overlap, field of view) and similarity.
    checker = SliceRegistrar(vol, ijk_to_reference, frame_shape, fan,
                             config=config, volume_mask=volume_mask)

    def method(frames, starts, init_corrections=None, indices=None, cancel=None,
               tracking=False):  # tracking: same search either way
        frames = np.asarray(frames)
        starts = np.asarray(starts, dtype=float).reshape(-1, 4, 4)
        if init_corrections is not None:
            starts = np.asarray(init_corrections, dtype=float).reshape(-1, 4, 4) @ starts
        import torch  # noqa: PLC0415

        checker.validate_starts(torch.as_tensor(starts), indices or range(len(starts)))
        out = register_sitk(vol, ijk_to_reference, frames, starts, fan, steps=steps,
                            indices=indices, cancel=cancel, moving=moving)
        if init_corrections is not None:  # report the correction w.r.t. the tracked pose
            for r, c in zip(out, np.asarray(init_corrections).reshape(-1, 4, 4)):
                r.start_image_to_reference = np.linalg.inv(c) @ r.start_image_to_reference
                r.correction = r.correction @ c
        lncc = checker.similarity(frames, np.stack([r.image_to_reference for r in out]))
        lncc0 = checker.similarity(frames, starts)
        for r, v, v0 in zip(out, lncc, lncc0):
            r.lncc, r.lncc_start = float(v), float(v0)
        return out

    method.registrar = checker
    return method


def make_deep(*args, **kwargs):
    """DeepRS2V network alone (:func:`.learned.infer.make_deep`)."""
    from .learned.infer import make_deep as factory  # noqa: PLC0415

    return factory(*args, **kwargs)


def make_deep_lncc(*args, **kwargs):
    """DeepRS2V network, then LNCC refinement (:func:`.learned.infer.make_deep_lncc`)."""
    from .learned.infer import make_deep_lncc as factory  # noqa: PLC0415

    return factory(*args, **kwargs)


METHODS: Dict[str, Callable] = {
    "lncc": make_lncc,
    "sitk": make_sitk,
    "deep": make_deep,
    "deep+lncc": make_deep_lncc,
}


def make_method(name: str, *args, **kwargs):
    """The method ``name`` of :data:`METHODS` built on the given volume and geometry."""
    if name not in METHODS:
        raise InputError(f"method: unknown {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](*args, **kwargs)
