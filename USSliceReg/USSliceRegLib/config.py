"""Settings, checked inputs and per-frame result of the US slice registration.

Where it sits in the flow: :class:`RegistrationConfig` (the pyramid of :class:`Level` s,
stopping rules, backend) configures :class:`~.register.SliceRegistrar`; the frames and
poses a caller passes enter through :func:`_frames_tensor` / :func:`_poses_tensor`
(checked, :class:`~SurgicalReg2D3DLib.errors.InputError` before any torch work); every
registered frame leaves as a :class:`FrameResult` (also returned by the other methods of
:mod:`.methods`, e.g. the SimpleITK baseline and the learned ``deep`` method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import GeometryError, InputError


@dataclass
class Level:
    """One pyramid level: frame downsampling ``step``, LNCC ``window`` (downsampled px,
    0 = global NCC), LM ``max_iter``, Gaussian smoothing of the volume (voxels) and whether
    rotations are refined (a translation-only stage first widens the capture range)."""

    step: int
    window: int
    max_iter: int
    sigma_vox: float = 0.0
    rotations: bool = True  # False: translation only (a first, robust stage)
    data_mask: bool = True  # False: empty voxels count as black (edges of the sweep help)


@dataclass
class RegistrationConfig:
    """Settings of :class:`SliceRegistrar` (defaults tuned on the spine phantom sweep)."""

    # Translation first, then 6 DoF, with global NCC on the smoothed volume where empty
    # voxels count as black (widest capture range), then masked LNCC at 1/8 resolution.
    levels: Tuple[Level, ...] = (Level(32, 0, 6, 3.0, rotations=False, data_mask=False),
                                 Level(16, 0, 15, 2.0, data_mask=False),
                                 Level(8, 7, 12, 1.0))
    #: Levels used with ``tracking=True`` (temporal mode: the start already holds the
    #: previous frame's correction, so it is close); no multi-start either. ``None``: the
    #: finest level only, at most 5 iterations (the live latency budget).
    tracking_levels: Optional[Tuple[Level, ...]] = None
    #: True: fan pixels outside the volume keep a residual (no gain from leaving the
    #: volume); False: the residual covers the overlap only.
    penalise_lost_overlap: bool = True
    #: With ``penalise_lost_overlap``, the windowed-LNCC level's residual of a fan pixel
    #: off the volume's data is this times the normalised frame pixel. ``sqrt(2)`` makes
    #: a lost pixel cost what a matched pixel of zero local correlation costs
    #: (``0.5 |n_f - n_s|^2 ~ 1 - rho``); with 1 it cost as much as a pixel of
    #: correlation 0.5, so where the volume matches the frame at rho < 0.5 (a volume from
    #: a sparse sweep, the frame in a gap between acquired planes) tilting the plane out
    #: of the data lowered the cost (benchmarks/results/us_quality.md).
    lost_overlap_weight: float = math.sqrt(2.0)
    #: LM stops a level when an accepted step lowers the cost by less than this fraction.
    tol_cost: float = 1e-3
    #: ... the same for the coarser levels (looser values save iterations but cost
    #: accuracy on the spine sweep: 3e-3 lost one held-out frame of fifteen).
    tol_cost_coarse: float = 1e-3
    #: ... or when the step moves the fan by less than this (mm and rad * 100 mm).
    tol_step: float = 1e-4
    #: First-level extra starts shifted by +-these mm along the plane normal (the
    #: elevational direction, least constrained by one frame); the best cost wins.
    normal_starts: Tuple[float, ...] = (4.0,)
    slab_mm: float = 0.0
    slab_samples: int = 1
    min_overlap: float = 0.1
    lambda_init: float = 1e-2
    #: An item stops after this many consecutive rejected LM steps (at a minimum the
    #: steps keep failing on interpolation noise while the damping grows).
    max_rejections: int = 2
    #: Where the levels run: ``"auto"`` (the compiled CPU kernels of :mod:`kernels` on a
    #: CPU when numba is installed and ``penalise_lost_overlap`` holds, else torch),
    #: ``"torch"`` (batched, any device) or ``"numba"`` (the kernels, or an error).
    backend: str = "auto"


@dataclass
class FrameResult:
    """Registration of one frame. 4x4s are float64 numpy arrays."""

    start_image_to_reference: np.ndarray
    image_to_reference: np.ndarray
    correction: np.ndarray  # tracked_reference_to_reference
    lncc_start: float
    lncc: float
    overlap: float
    iterations: int
    seconds: float
    history: List[float] = field(default_factory=list)


def _frames_tensor(frames, frame_shape=None, crop=None) -> torch.Tensor:
    """Frames as a float32 tensor ``(B, H, W)`` (or only their ``crop`` window), checked."""
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"US frame: expected (H, W) or (B, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] < 8 or t.shape[2] < 8:
        raise InputError(f"US frame: empty or too small, shape {tuple(t.shape)}")
    if frame_shape is not None and tuple(t.shape[1:]) != tuple(frame_shape):
        raise InputError(f"US frame: shape {tuple(t.shape[1:])} differs from the registrar's "
                         f"{tuple(frame_shape)}")
    if t.is_floating_point() and not torch.isfinite(t).all():  # integers are always finite
        raise InputError("US frame: contains NaN or inf")
    if crop is not None:
        t = t[(slice(None),) + tuple(crop)]
    return t.float()


def _poses_tensor(poses, name: str, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(poses, dtype=np.float64)) if not isinstance(poses, torch.Tensor) \
        else poses.double()
    if t.ndim == 2:
        t = t[None]
    if t.shape != (n, 4, 4):
        raise InputError(f"{name}: expected ({n}, 4, 4), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or inf")
    if float(np.abs(np.linalg.det(t[:, :3, :3].cpu().numpy())).min()) < 1e-12:
        raise GeometryError(f"{name}: singular matrix")
    return t

