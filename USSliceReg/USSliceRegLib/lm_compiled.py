"""The compiled-kernel path of the US slice registration (CPU, numba).

Where it sits in the flow: :class:`~.register.SliceRegistrar` chooses its backend once
(:meth:`_CompiledLevels._use_compiled`, :attr:`~.config.RegistrationConfig.backend`); on
the compiled one, :meth:`_CompiledLevels._register_compiled` runs every level of the
pyramid as one :func:`kernels.refine_level` call per frame and start (the same
Levenberg-Marquardt as :mod:`.lm_torch`, see :mod:`.kernels`), on the level's points as
float64 numpy arrays (:class:`_KernelGeometry`, from :mod:`.levels`' geometry), and
measures the start / final similarity with :func:`kernels.slice_similarity`.

:class:`_CompiledLevels` is a mixin of :class:`~.register.SliceRegistrar`; it uses the
registrar's ``config``, ``device``, ``_kernel_volumes``, ``_kernel_volume_given``,
``_ref_to_ijk``, ``_centre_c``, ``_kernel_geometries`` and the shared
``_check_overlap`` / ``_normal_start_corrections`` / ``_level_geometry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from . import kernels
from .levels import _pyramid


@dataclass
class _KernelGeometry:
    """A level's points for :mod:`kernels` (float64 numpy): pixel ``cols``, ``rows``
    ``(N,)``, ``feat`` ``(3, N)``, ``fan`` ``(N,)``; ``index`` picks sparse points out of
    the flattened downsampled frame (``None``: dense, the whole ``grid_shape``)."""

    cols: np.ndarray
    rows: np.ndarray
    feat: np.ndarray
    fan: np.ndarray
    index: Optional[np.ndarray]
    grid_shape: Tuple[int, int]


class _CompiledLevels:
    """Backend choice and the levels on the compiled kernels (mixin of
    :class:`~.register.SliceRegistrar`)."""

    def _use_compiled(self) -> bool:
        """Whether the levels run on the compiled kernels (:attr:`RegistrationConfig.
        backend`)."""
        backend = self.config.backend
        if backend == "torch":
            return False
        why = None
        if not kernels.AVAILABLE:
            why = "numba is not installed"
        elif self.device.type != "cpu":
            why = f"the registrar runs on {self.device}, the kernels on the CPU only"
        elif not self.config.penalise_lost_overlap:
            why = "penalise_lost_overlap=False is not compiled"
        if why and backend == "numba":
            raise InputError(f"US registration backend 'numba' unavailable: {why}")
        return why is None

    def _kernel_geometry(self, step: int, dense: bool) -> "_KernelGeometry":
        """:meth:`_level_geometry` as float64 numpy arrays for the kernels (cached)."""
        key = (step, dense)
        if key not in self._kernel_geometries:
            geo = self._level_geometry(step, dense)
            pix = geo.pix.double().cpu().numpy()
            self._kernel_geometries[key] = _KernelGeometry(
                cols=np.ascontiguousarray(pix[:, 0]), rows=np.ascontiguousarray(pix[:, 1]),
                feat=np.ascontiguousarray(geo.feat.view(3, -1).double().cpu().numpy()),
                fan=geo.fan.double().cpu().numpy(),
                index=None if geo.index is None else geo.index.cpu().numpy(),
                grid_shape=geo.grid_shape)
        return self._kernel_geometries[key]


    def _register_compiled(self, f, starts_np, corr0, levels, tracking, indices, progress,
                           cancel):
        """:meth:`register` with the compiled CPU kernels (:mod:`kernels`), one frame and
        one start at a time (each is a single call per level); same returns as
        :meth:`_register_torch`."""
        cfg = self.config
        B = f.shape[0]
        last = levels[-1]
        pyramid = {k: v.reshape(v.shape[0], -1).double().cpu().numpy()
                   for k, v in _pyramid(f, [lv.step for lv in levels]).items()}
        g_last = self._kernel_geometry(last.step, True)

        def similarity(c):
            out = [kernels.slice_similarity(
                self._kernel_volume_given, self._ref_to_ijk @ (c[b] @ starts_np[b]),
                g_last.cols, g_last.rows, g_last.fan, pyramid[last.step][b],
                *g_last.grid_shape, max(0, last.window)) for b in range(B)]
            return np.array([o[0] for o in out]), np.array([o[1] for o in out])

        lncc_start, overlap0 = similarity(corr0)
        self._check_overlap(overlap0, indices)
        corr = corr0.copy()
        history: List[List[float]] = [[] for _ in range(B)]
        total_iter = 0
        for li, level in enumerate(levels):
            check_cancel(cancel, "US registration")
            finest = li == len(levels) - 1
            tol_cost = cfg.tol_cost if finest else max(cfg.tol_cost, cfg.tol_cost_coarse)
            geo = self._kernel_geometry(level.step, level.window > 0)
            vol = self._kernel_volumes[(level.sigma_vox, level.data_mask)]
            multi = li == 0 and bool(cfg.normal_starts) and not tracking
            starts_b = self._normal_start_corrections(corr, starts_np) if multi else corr[None]
            level_iter = 0
            for b in range(B):
                check_cancel(cancel, "US registration")
                frame = pyramid[level.step][b]
                if geo.index is not None:
                    frame = frame[geo.index]
                best = None
                for c0 in starts_b[:, b]:  # the first of equal costs wins, as on torch
                    out = kernels.refine_level(
                        vol, self._ref_to_ijk, starts_np[b], c0, geo.cols,
                        geo.rows, geo.feat, geo.fan, np.ascontiguousarray(frame),
                        geo.index is None, *geo.grid_shape, level.window, level.rotations,
                        level.max_iter, tol_cost, cfg.tol_step, cfg.lambda_init,
                        cfg.max_rejections, self._centre_c, cfg.lost_overlap_weight)
                    level_iter = max(level_iter, out[3])
                    if best is None or out[1] < best[1]:
                        best = out
                corr[b] = best[0]
                history[b].extend(float(c) for c in best[2])
            total_iter += level_iter
            report(progress, (li + 1) / len(levels),
                   f"US registration level {li + 1}/{len(levels)}")
        lncc_final, _ = similarity(corr)
        return corr, history, total_iter, overlap0, lncc_start, lncc_final
