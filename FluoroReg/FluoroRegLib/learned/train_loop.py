"""The training-loop pieces every FluoroReg learned kind uses (the pose regressor of
:mod:`.train`, the learned PPC update of :mod:`.ppc_train`, the spherical similarity of
:mod:`.similarity_train`): the settings (:class:`TrainConfig`), the time / step budget
with its cosine learning rate, the checkpoint restore, the budget loop with
cancellation, the CT check, the device choice and the pose errors of a batch. Imports
none of the trainers.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import CancelledError, InputError
from SurgicalReg2D3DLib.progress import is_cancelled, report

_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings (the CLI flags; see ``surgreg fluoro train --help``)."""

    rotation_deg: Sequence[float] = (25.0, 25.0, 25.0)
    translation_mm: Sequence[float] = (50.0, 50.0, 50.0)
    kind: str = "regressor"
    max_minutes: float = 30.0
    max_steps: Optional[int] = None
    seed: int = 0
    device: Optional[str] = None
    batch_size: int = 32
    image_size: int = 64
    width: int = 16
    norm: str = "batch"
    coords: bool = True
    lr: float = 1e-3
    reuse: int = 2  # optimiser steps per rendered batch (each with a fresh randomisation)
    randomisation: float = 1.0
    ct_downsample: Optional[int] = None
    n_samples: Optional[int] = None
    n_val: int = 64
    checkpoint_every_s: float = 60.0
    command: str = ""
    save_replicas: bool = False
    extra: dict = field(default_factory=dict)


def budget_fraction(elapsed_s: float, cfg, step: int) -> float:
    """The fraction of the training budget used: the larger of the time fraction
    (``cfg.max_minutes``) and the step fraction (``cfg.max_steps``, when set). Shared by the
    regressor, ppc and similarity training loops."""
    frac = elapsed_s / (float(cfg.max_minutes) * 60.0)
    if cfg.max_steps:
        frac = max(frac, step / int(cfg.max_steps))
    return frac


def budget_stop_reason(cfg, step: int) -> str:
    """Why a loop that used its whole budget stopped: ``"steps"`` or ``"time"``."""
    return "steps" if cfg.max_steps and step >= int(cfg.max_steps) else "time"


def set_cosine_lr(opt, base_lr: float, frac: float) -> None:
    """Cosine learning rate from ``base_lr`` to ``base_lr / 100`` over the budget."""
    lr = float(base_lr) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
    for g in opt.param_groups:
        g["lr"] = lr


def restore_checkpoint(ckpt, net, opt, gen, rank: int, resume, say=print,
                       tag: str = "[train]"):
    """``(step, elapsed_s, images, history)`` to continue from: zeros for a new run; from a
    checkpoint (``ckpt``, or None) the network and optimiser states are loaded, and rank 0
    takes back its random stream. Shared by every FluoroReg training kind."""
    if ckpt is None:
        return 0, 0.0, 0, []
    net.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ckpt["optimizer"])
    tr = ckpt["training"]
    step, elapsed = int(ckpt["step"]), float(tr.get("elapsed_s", 0.0))
    if "rng_state" in ckpt and rank == 0:
        gen.set_state(ckpt["rng_state"])
    say(f"{tag} resumed from {resume} at step {step} ({elapsed / 60:.1f} min)")
    return step, elapsed, int(tr.get("images", 0)), list(tr.get("history", []))


def run_budget_loop(cfg, device, world: int, opt, one_step: Callable[[float, float], float],
                    step_count: Callable[[], int], write_checkpoint: Callable[[float], None],
                    ckpt_path, elapsed_prev: float = 0.0, cancel=None, progress=None,
                    say=print, tag: str = "[train]"):
    """The loop every FluoroReg training kind runs around its own step.

    Until the budget is used (:func:`budget_fraction`; under DDP rank 0 decides for all,
    :func:`.distributed.shared_stop`): check ``cancel``, set the cosine learning rate
    (:func:`set_cosine_lr`), call ``one_step(frac, elapsed_s)`` (one optimiser step; it
    counts the step and returns the loss), report progress with the time left and write a
    checkpoint every ``cfg.checkpoint_every_s``. Cancel or Ctrl-C writes a checkpoint and
    raises :class:`CancelledError` naming it. ``step_count()`` gives the caller's step.
    Returns ``(stop_reason, elapsed_s)``."""
    from . import distributed  # noqa: PLC0415

    max_s = float(cfg.max_minutes) * 60.0
    t0 = last_ckpt = time.perf_counter()
    try:
        while True:
            elapsed = elapsed_prev + time.perf_counter() - t0
            frac = budget_fraction(elapsed, cfg, step_count())
            if distributed.shared_stop(frac >= 1.0, device, world):
                return budget_stop_reason(cfg, step_count()), elapsed
            if is_cancelled(cancel):
                raise CancelledError("training: cancelled")
            set_cosine_lr(opt, cfg.lr, frac)
            loss = one_step(frac, elapsed)
            report(progress, min(frac, 1.0), f"step {step_count()}, loss {loss:.3f}, "
                   f"{max(0.0, max_s - elapsed) / 60:.1f} min left")
            if time.perf_counter() - last_ckpt > float(cfg.checkpoint_every_s):
                write_checkpoint(elapsed_prev + time.perf_counter() - t0)
                last_ckpt = time.perf_counter()
    except (CancelledError, KeyboardInterrupt):
        write_checkpoint(elapsed_prev + time.perf_counter() - t0)
        say(f"{tag} cancelled at step {step_count()}; checkpoint kept: {ckpt_path}")
        raise CancelledError(f"training: cancelled at step {step_count()}; checkpoint kept in "
                             f"{ckpt_path}") from None


def _check_ct(hu) -> np.ndarray:
    arr = np.asarray(hu)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"CT volume: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise InputError(f"CT volume: expected a 3D volume, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError("CT volume: contains NaN or infinite values")
    if float(arr.max()) == float(arr.min()):
        raise InputError(f"CT volume: all voxels have the same value ({float(arr.min()):g}); "
                         "nothing to learn")
    return arr


def pick_device(name: Optional[str]) -> torch.device:
    """The requested device, or the CPU with a warning when it does not exist."""
    from SurgicalReg2D3DLib.device import choose_device  # noqa: PLC0415

    try:
        return choose_device(name or "cpu")
    except InputError as exc:
        warnings.warn(f"{exc}; training on the CPU instead", RuntimeWarning, stacklevel=2)
        _log.warning("%s; training on the CPU instead", exc)
        return torch.device("cpu")


def _corner_points(volume) -> torch.Tensor:
    return torch.as_tensor(volume.corners_ras(), dtype=torch.float64)


def pose_errors_batch(pred: torch.Tensor, true: torch.Tensor, corners: torch.Tensor,
                      center: torch.Tensor) -> dict:
    """Mean corner error (mm), rotation error (deg) and centre error (mm) of pose batches."""
    from SurgicalReg2D3DLib.poses import rotation_angle_deg  # noqa: PLC0415

    def apply(T, p):
        return p @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]

    corner = (apply(pred, corners) - apply(true, corners)).norm(dim=-1).mean(-1)
    cen = (apply(pred, center[None]) - apply(true, center[None])).norm(dim=-1)[:, 0]
    rot = rotation_angle_deg(pred[:, :3, :3], true[:, :3, :3])
    return {"corner_mm": corner, "center_mm": cen, "rotation_deg": rot}


def _cfg_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["rotation_deg"] = [float(v) for v in cfg.rotation_deg]
    d["translation_mm"] = [float(v) for v in cfg.translation_mm]
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, list, type(None)))}
