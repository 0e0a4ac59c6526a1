"""Inference of DeepRS2V and the ``deep`` / ``deep+lncc`` registration methods.

:class:`DeepRegistrar` predicts, in one network pass per batch, the correction of start
poses: ``image_to_reference = correction @ start`` with the left correction
``tracked_reference_to_reference = F_start @ D @ inv(F_start)`` (``D`` the network's
``start_fan_to_true_fan``, see :mod:`.geometry`).

Methods (the factory signature of :mod:`..methods`, plus ``model=`` and ``force=``):

``deep``       the network alone; the registrar's LNCC (finest level, as ``lncc``
               reports it) and fan overlap are measured at the start and at the result
               (:meth:`..register.SliceRegistrar.score`) only to report similarity and
               quality.
``deep+lncc``  the network's pose (unless its fan leaves the volume's data) starts the
               LNCC + Levenberg-Marquardt refinement (:class:`..register.SliceRegistrar`,
               full pyramid); where the start's LNCC is higher than the network pose's,
               the start is refined too and the higher final LNCC wins. With ``tracking=True`` (temporal / live: the start already
               carries the previous frame's correction) the LNCC tracking levels run
               first; the network (then the full refinement) is used only when the LNCC
               at that result drops below :data:`TRACKING_LNCC_FLOOR`.

``model``: a model file path, or ``None`` for the bundled model whose manifest carries
this volume's fingerprint. A model trained for another volume is refused
(:class:`InputError`) unless ``force``. A frame size other than the model's training
frames is accepted with a warning: the network reads frames on its millimetre grid, so
they are resampled.

Each :class:`..register.FrameResult` returned gets a ``quality`` attribute
(:class:`SurgicalReg2D3DLib.quality.Quality`) from :func:`lncc_quality`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.quality import Quality

from ..register import FrameResult, RegistrationConfig, SliceRegistrar
from .geometry import (FrameResampler, GridSpec, VolumeSampler, cube_points, fan_to_reference,
                       frames_on_grid, invert_rigid, normalise_masked, volume_fingerprints)
from .model_io import build_network, check_volume, find_bundled_model, load_model
from .train import check_volume_size

#: deep+lncc in tracking mode: below this final LNCC the network is called.
TRACKING_LNCC_FLOOR = 0.3
#: :func:`lncc_quality` thresholds on the final masked LNCC (7 px window, 1/8 resolution).
LNCC_OK, LNCC_DOUBTFUL = 0.3, 0.2


def lncc_quality(lncc: float, lncc_start: float, overlap: float, method: str,
                 overlap_final: float = 1.0) -> Quality:
    """A simple, uncalibrated quality from the LNCC at the result: ``ok`` at or above
    :data:`LNCC_OK`, ``doubtful`` down to :data:`LNCC_DOUBTFUL`, ``failed`` below; an ``ok``
    becomes ``doubtful`` when less than a quarter of the fan lies in the volume's data at
    the result (an LNCC on a few pixels proves little). No error estimate (the calibrated
    estimate of the reliability work replaces this). The thresholds were read off the
    LNCC values of the spine benchmark (registered frames ~0.3-0.47, failures < 0.23),
    so they are not an independent validation."""
    reasons = []
    if lncc >= LNCC_OK:
        verdict = "ok"
    elif lncc >= LNCC_DOUBTFUL:
        verdict = "doubtful"
        reasons.append(f"LNCC at the result {lncc:.2f} is below {LNCC_OK}")
    else:
        verdict = "failed"
        reasons.append(f"LNCC at the result {lncc:.2f} is below {LNCC_DOUBTFUL}")
    if overlap_final < 0.25:
        reasons.append(f"only {100 * overlap_final:.0f}% of the fan lies in the volume's "
                       "data at the result (little to check the pose against)")
        if verdict == "ok":
            verdict = "doubtful"
    return Quality(verdict=verdict, reasons=reasons,
                   signals={"lncc": float(lncc), "lncc_start": float(lncc_start),
                            "overlap_start": float(overlap),
                            "overlap_result": float(overlap_final), "method": method,
                            "calibrated": False})


class DeepRegistrar:
    """The network of a model file bound to one volume and one sweep geometry."""

    def __init__(self, model, volume, ijk_to_reference, frame_shape, fan=None,
                 volume_mask=None, device=None, force: bool = False):
        vol = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume)
        if vol.ndim != 3:
            raise InputError(f"US volume: expected a 3D volume (K, J, I), got shape {vol.shape}")
        check_volume_size(vol.shape)
        if len(frame_shape) != 2 or min(frame_shape) < 8:
            raise InputError(f"US frame: expected frame_shape (H, W) >= 8 px, got {frame_shape}")
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        fan = np.ones(self.frame_shape, bool) if fan is None else np.asarray(fan, dtype=bool)
        if fan.shape != self.frame_shape or not fan.any():
            raise InputError(f"US fan mask: shape {fan.shape} differs from the frame's "
                             f"{self.frame_shape}, or is empty")
        self.fan = fan
        fingerprint = volume_fingerprints(vol, ijk_to_reference)
        if model is None:
            model = find_bundled_model(fingerprint)
            if model is None:
                raise InputError("model: none given and no bundled model was trained for "
                                 "this volume; train one (surgreg us train) and pass --model")
        self.model_path = Path(model) if isinstance(model, (str, Path)) else None
        data = load_model(model) if not isinstance(model, dict) else model
        self.warning = check_volume(data, fingerprint, force=force)
        if self.warning:
            warnings.warn(self.warning, stacklevel=2)
        trained = data.get("frame_shape")
        if trained is not None and tuple(trained) != self.frame_shape:
            warnings.warn(f"US frame: size {self.frame_shape} differs from the model's "
                          f"training frames {tuple(trained)}; frames are resampled on the "
                          "model's millimetre grid", stacklevel=2)
        self.device = torch.device(device or "cpu")
        self.grid = GridSpec.from_dict(data["grid"])
        self.range = dict(data["range"])
        self.net = build_network(data, self.device)
        # Traced + frozen copy of the network's layers for inference (first-use cost at
        # preparation, reported with it); the eager network where tracing fails.
        from .network import frozen_raw  # noqa: PLC0415

        self._raw = frozen_raw(self.net, self.device)
        self.sampler = VolumeSampler(vol, ijk_to_reference, volume_mask, device=self.device)
        self.cube = cube_points(self.grid, self.device)
        rows, cols = np.nonzero(fan)
        self.centre_px = np.array([cols.mean(), rows.mean(), 0.0, 1.0])
        self._resampler = None

    @torch.inference_mode()
    def predict(self, frames, starts) -> np.ndarray:
        """Left corrections ``(B, 4, 4)`` float64 for frames ``(B, H, W)`` at start poses
        ``image_to_reference`` ``(B, 4, 4)``."""
        f = np.asarray(frames)
        if f.ndim == 2:
            f = f[None]
        S = np.asarray(starts, dtype=np.float64).reshape(-1, 4, 4)
        if f.ndim != 3 or f.shape[0] != S.shape[0]:
            raise InputError(f"US frame: expected (B, H, W) frames for {S.shape[0]} poses, got "
                             f"shape {f.shape}")
        if tuple(f.shape[1:]) != self.frame_shape:
            raise InputError(f"US frame: shape {tuple(f.shape[1:])} differs from the "
                             f"registrar's {self.frame_shape}")
        Fs = fan_to_reference(S, self.centre_px)
        M = invert_rigid(Fs) @ S
        rs = self._resampler
        if rs is None or not all(rs.matches(m) for m in M):
            rs = FrameResampler(self.fan, M[0], self.grid, self.device)
            if all(rs.matches(m) for m in M):  # one calibration: keep its grid
                self._resampler = rs
                vals, mask = rs(f)
            else:
                vals, mask = frames_on_grid(f, self.fan, M, self.grid, self.device)
        else:
            vals, mask = rs(f)
        fn = normalise_masked(vals, mask, (1, 2))
        Fs_t = torch.as_tensor(Fs, dtype=torch.float32, device=self.device)
        cv, cd = self.sampler.sample(Fs_t, self.cube)
        dm = (cd > 0.5).float()
        cn = normalise_masked(cv * dm, dm, (1, 2, 3))
        x2, x3 = torch.stack([fn, mask], 1), torch.stack([cn, dm], 1)
        D = self.net.to_pose(self._raw(x2, x3)) if self._raw is not None else self.net(x2, x3)
        D = D.double().cpu().numpy()
        return Fs @ D @ invert_rigid(Fs)


def _resolve(model, force, volume, ijk, frame_shape, fan, volume_mask, device):
    return DeepRegistrar(model, volume, ijk, frame_shape, fan, volume_mask=volume_mask,
                         device=device, force=force)


def _call_inputs(starts, init_corrections, indices):
    """``(S, corr0, start0 = corr0 @ S, indices)`` of a method call."""
    S = np.asarray(starts, dtype=np.float64).reshape(-1, 4, 4)
    B = S.shape[0]
    corr0 = np.tile(np.eye(4), (B, 1, 1)) if init_corrections is None else \
        np.asarray(init_corrections, dtype=np.float64).reshape(B, 4, 4)
    indices = list(range(B)) if indices is None else list(indices)
    return S, corr0, corr0 @ S, indices


def _prepare_call(registrar: SliceRegistrar, frames, starts, init_corrections, indices):
    S, corr0, start0, indices = _call_inputs(starts, init_corrections, indices)
    overlap = registrar.validate_starts(torch.as_tensor(start0), indices)
    return S, corr0, start0, indices, overlap


def make_deep(volume, ijk_to_reference, frame_shape, fan, volume_mask=None,
              config: Optional[RegistrationConfig] = None, device=None, model=None,
              force: bool = False):
    """The network alone (see the module docstring)."""
    registrar = SliceRegistrar(volume, ijk_to_reference, frame_shape, fan, config=config,
                               device=device, volume_mask=volume_mask)
    deep = _resolve(model, force, volume, ijk_to_reference, frame_shape, fan, volume_mask,
                    device)

    def method(frames, starts, init_corrections=None, indices=None, cancel=None,
               tracking=False) -> List[FrameResult]:
        t0 = time.perf_counter()
        f = np.asarray(frames)
        f = f[None] if f.ndim == 2 else f
        S, corr0, start0, indices = _call_inputs(starts, init_corrections, indices)
        B = S.shape[0]
        # The registrar's own LNCC and overlap (as lncc reports them), at the start and at
        # the result: one compiled pass each.
        l0, ov0 = registrar.score(f, start0)
        overlap = registrar.validate_starts(torch.as_tensor(start0), indices, overlaps=ov0)
        corr = deep.predict(f, start0) @ corr0
        final = corr @ S
        l1, ov1 = registrar.score(f, final)
        sec = (time.perf_counter() - t0) / B
        out = []
        for b in range(B):
            r = FrameResult(start_image_to_reference=S[b], image_to_reference=final[b],
                            correction=corr[b], lncc_start=float(l0[b]), lncc=float(l1[b]),
                            overlap=float(overlap[b]), iterations=1, seconds=sec)
            r.quality = lncc_quality(r.lncc, r.lncc_start, r.overlap, "deep", float(ov1[b]))
            out.append(r)
        return out

    method.registrar = registrar
    method.deep = deep
    return method


def make_deep_lncc(volume, ijk_to_reference, frame_shape, fan, volume_mask=None,
                   config: Optional[RegistrationConfig] = None, device=None, model=None,
                   force: bool = False):
    """The network's pose refined by masked LNCC + LM (see the module docstring)."""
    registrar = SliceRegistrar(volume, ijk_to_reference, frame_shape, fan, config=config,
                               device=device, volume_mask=volume_mask)
    deep = _resolve(model, force, volume, ijk_to_reference, frame_shape, fan, volume_mask,
                    device)

    def full(frames, S, corr0, start0, indices, cancel):
        corr_net = deep.predict(frames, start0) @ corr0
        both = registrar.similarity(np.concatenate([frames, frames]),
                                    np.concatenate([corr_net @ S, start0]))
        l_net, l_start = both[:len(S)], both[len(S):]
        # The refinement starts from the network's pose unless its fan leaves the volume's
        # data (below the registrar's minimum overlap). Where the start matches better than
        # the network's pose (LNCC; near a thin part of the volume the LNCC of a pose a few
        # mm off can drop to nothing), the start is refined too and the higher final LNCC
        # wins.
        ov_net = registrar.overlap(corr_net @ S)
        use_net = ov_net >= registrar.config.min_overlap
        init = np.where(use_net[:, None, None], corr_net, corr0)
        res = registrar.register(frames, S, init_corrections=init, indices=indices,
                                 cancel=cancel)
        both = np.nonzero(use_net & (l_net < l_start))[0]
        if len(both):
            alt = registrar.register(frames[both], S[both], init_corrections=corr0[both],
                                     indices=[indices[b] for b in both], cancel=cancel)
            for b, r in zip(both, alt):
                if r.lncc > res[b].lncc:
                    res[b] = r
                    use_net[b] = False
        return res, use_net

    def method(frames, starts, init_corrections=None, indices=None, cancel=None,
               tracking=False) -> List[FrameResult]:
        t0 = time.perf_counter()
        S, corr0, start0, indices, overlap = _prepare_call(registrar, frames, starts,
                                                           init_corrections, indices)
        frames = np.asarray(frames)
        if tracking:
            res = registrar.register(frames, S, init_corrections=corr0, indices=indices,
                                     cancel=cancel, tracking=True)
            low = [b for b, r in enumerate(res) if r.lncc < TRACKING_LNCC_FLOOR]
            if low:
                redo, _ = full(frames[low], S[low], corr0[low], start0[low],
                               [indices[b] for b in low], cancel)
                for b, r in zip(low, redo):
                    if r.lncc > res[b].lncc:
                        res[b] = r
            used = [b in low for b in range(len(S))]
        else:
            res, used = full(frames, S, corr0, start0, indices, cancel)
        ov1 = registrar.overlap(np.stack([r.image_to_reference for r in res]))
        sec = (time.perf_counter() - t0) / len(S)
        for b, r in enumerate(res):
            r.start_image_to_reference = S[b]
            r.seconds = sec
            r.overlap = float(overlap[b])
            r.quality = lncc_quality(r.lncc, r.lncc_start, r.overlap, "deep+lncc",
                                     float(ov1[b]))
            r.quality.signals["network_used"] = bool(used[b])
        return res

    method.registrar = registrar
    method.deep = deep
    return method
