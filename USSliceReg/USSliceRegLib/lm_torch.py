"""The per-level Levenberg-Marquardt of the US slice registration, in torch.

Where it sits in the flow: :meth:`~.register.SliceRegistrar.register` runs the levels of
the pyramid one after the other; on the torch backend (batched, any device)
:meth:`_TorchLevels._register_torch` gives each level to :meth:`_TorchLevels.
_refine_level` (the first one, outside tracking, from several starts along the plane
normal: :meth:`_TorchLevels._multi_start_level`). Per level the frame's side of the cost
is fixed once (:class:`_Frame`, :meth:`_TorchLevels._level_frame`); each evaluation
samples the volume at the level's points (:mod:`.levels`) and returns the cost and what
the normal equations need: global-NCC levels reduce both to one Gram matrix
(:func:`_global_ncc`, :func:`_global_ncc_normal_equations`), the LNCC level keeps its
local statistics. Steps ``(omega, v)`` are composed on the left of the correction
(:func:`_step_matrix_np`); the derivative of a sample along a step is
``T @ (feat (x) g)`` (:meth:`_TorchLevels._step_basis`). The same algorithm, compiled for
the CPU one frame at a time, is :mod:`.kernels` (driven by :mod:`.lm_compiled`).

:class:`_TorchLevels` is a mixin of :class:`~.register.SliceRegistrar`; besides
:mod:`.levels` it uses the registrar's ``config``, ``_volumes`` (per smoothing / data
mask), ``_centre_c``, ``_check_overlap`` and ``_normal_start_corrections``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from SurgicalReg2D3DLib.progress import check_cancel, report

from .config import Level
from .levels import _LevelGeometry, _pyramid
from .lncc import _EPS, _box, local_normalise

# Rows of the Gram matrix of the global-NCC levels (see SliceRegistrar._evaluate_global):
# z = [pixel factor (x) volume gradient (9), slice s, 1, frame f].
_Y, _S, _ONE, _F = slice(0, 9), 9, 10, 11


class _TorchLevels:
    """The levels on torch: evaluation, normal equations, LM loop (mixin of
    :class:`~.register.SliceRegistrar`)."""

    def _register_torch(self, f, starts_np, corr0, levels, tracking, indices, progress,
                        cancel):
        """:meth:`register` on the torch path (any device, batched). Returns
        ``(correction (B, 4, 4), histories, iterations, start overlap (B,), start LNCC (B,),
        final LNCC (B,))``."""
        B = f.shape[0]
        last = levels[-1]
        slice0, overlap0 = self._slice_c(corr0 @ starts_np, last.step)
        self._check_overlap(overlap0, indices)
        pyramid = _pyramid(f, [lv.step for lv in levels])
        corr = corr0
        history: List[List[float]] = [[] for _ in range(B)]
        total_iter = 0
        for li, level in enumerate(levels):
            check_cancel(cancel, "US registration")
            fd = pyramid[level.step]
            if li == 0 and self.config.normal_starts and not tracking:
                corr, hist, it = self._multi_start_level(fd, starts_np, corr, level, cancel,
                                                         li == len(levels) - 1)
            else:
                corr, _, hist, it = self._refine_level(fd, starts_np, corr, level, cancel,
                                                       li == len(levels) - 1)
            total_iter += it
            for b in range(B):
                history[b].extend(float(c) for c in hist[:, b])
            report(progress, (li + 1) / len(levels),
                   f"US registration level {li + 1}/{len(levels)}")
        # Start and final similarity in one batch (masked LNCC on the overlap).
        slice1, _ = self._slice_c(corr @ starts_np, last.step)
        both = self._similarity_c(pyramid[last.step].repeat(2, 1, 1),
                                  torch.cat([slice0, slice1], dim=1), last.step, last.window)
        return corr, history, total_iter, overlap0, both[:B], both[B:]


    def _multi_start_level(self, fd, starts, corr0, level: Level, cancel, finest: bool):
        """First level from several starts shifted along the plane normal (the direction
        the frame content constrains least); each frame keeps its lowest-cost result."""
        shifted = self._normal_start_corrections(corr0, starts)  # (S, B, 4, 4)
        S, B = shifted.shape[:2]
        corr, cost, hist, it = self._refine_level(fd.repeat(S, 1, 1), np.tile(starts, (S, 1, 1)),
                                                  shifted.reshape(-1, 4, 4), level, cancel,
                                                  finest)
        pick = cost.reshape(S, B).argmin(axis=0) * B + np.arange(B)  # start-major
        return corr[pick], hist[:, pick], it

    def _step_basis(self, poses_c: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """``T`` ``(B, 6, 9)``: the derivative of a sampled intensity along the LM step
        ``(omega, v)`` is ``T @ (feat (x) g)``, with ``g`` the volume gradient (reference
        mm) and ``feat = (col - cc, row - rc, 1)`` the pixel relative to the fan centre
        ``(cc, rc)`` (``(x)``: ``y[3 k + j] = feat[k] * g[j]``).

        About the rotation ``centre`` ``(B, 3)`` a pixel lies at
        ``q = (col - cc) a + (row - rc) b + e`` (``a``, ``b``: the pose's column and row
        axes, ``e``: the fan centre about ``centre``), and ``d s / d omega = q x g``,
        ``d s / d v = g``; ``q x g = sum_k feat[k] [axis_k]_x g``.
        """
        e = poses_c[:, :3, :] @ self._centre_c - centre
        axes = np.stack([poses_c[:, :3, 0], poses_c[:, :3, 1], e], axis=1)  # (B, k, 3)
        T = np.zeros((poses_c.shape[0], 6, 9))
        T[:, :3] = _hat(axes).transpose(0, 2, 1, 3).reshape(-1, 3, 9)  # [axis_k]_x blocks
        T[:, 3:, 6:] = np.eye(3)
        return T

    def _level_frame(self, fd: torch.Tensor, level: Level, geo: _LevelGeometry) -> "_Frame":
        """The frame's side of the cost on a level (fixed while the pose changes)."""
        B = fd.shape[0]
        flat = fd.reshape(B, -1)
        penalise = self.config.penalise_lost_overlap
        n_fan = max(1.0, float(geo.fan.sum()))
        if geo.dense:
            fan_img = geo.fan.view(1, *geo.grid_shape).expand(B, -1, -1)
            nf = local_normalise(fd, fan_img, level.window).reshape(B, -1)
            return _Frame(nf=nf, raw=None if penalise else flat,
                          weight=torch.full((B, 1), n_fan ** -0.5, device=fd.device))
        vals = flat[:, geo.index]
        if penalise:  # normalised once on the whole fan
            mu = vals.mean(dim=1, keepdim=True)
            f = (vals - mu) * torch.rsqrt(((vals - mu) ** 2).mean(dim=1, keepdim=True) + _EPS)
            nf_sq = (f.double() ** 2).sum(dim=1).cpu().numpy()
        else:  # normalised on the overlap at every evaluation (from the Gram matrix)
            f = vals - vals.mean(dim=1, keepdim=True)
            nf_sq = None
        return _Frame(nf=f, raw=None, weight=None, nf_sq=nf_sq, w2=1.0 / n_fan,
                      consts=torch.stack([torch.ones_like(f), f]))

    def _evaluate(self, level: Level, geo: _LevelGeometry, poses_c: np.ndarray,
                  centre: np.ndarray, frame: "_Frame"):
        """Cost ``(B,)`` (float64 numpy) at cropped-frame poses ``poses_c`` ``(B, 4, 4)``
        (float64 numpy), and what :meth:`_normal_equations` needs.

        One ``grid_sample`` reads intensity, support and gradient at the level's points.
        Global-NCC levels reduce everything (cost, ``J^T J``, ``J^T r``) to one Gram
        matrix ``sum_n m z z^T`` of ``z = [feat (x) g, s, 1, f]`` (``(B, 12, 12)``, one
        batched matmul; :func:`_global_ncc`); the LNCC level keeps its local statistics
        for the Jacobian (only built for accepted steps). ``centre`` ``(B, 3)``: rotation
        centre of the LM steps (reference mm).
        """
        vol = self._volumes[(level.sigma_vox, level.data_mask)]
        vals, m = self._sample(vol, poses_c, geo)  # (5, B, N), (B, N)
        _, B, N = vals.shape
        if not geo.dense:
            y = (geo.feat.view(3, 1, 1, N) * vals[2:5].view(1, 3, B, N)).view(9, B, N)
            z = torch.cat([y, vals[:1], frame.consts], dim=0)  # (12, B, N)
            gram = torch.bmm((z * m).transpose(0, 1), z.permute(1, 2, 0))
            gram = gram.double().cpu().numpy()
            cost, terms = _global_ncc(gram, frame.nf_sq, frame.w2)
            return cost, (gram, terms, poses_c, centre)
        m = m * geo.fan
        s = vals[0]
        h, w = geo.grid_shape
        # Local (window x window) statistics of the slice on the mask, three box sums in
        # one call (same formulas as lncc.local_normalise; the volume is centred).
        sm = s * m
        sums = _box(torch.stack([m, sm, sm * s], dim=1).view(B * 3, h, w), level.window)
        sums = sums.view(B, 3, N)
        count = sums[:, 0].clamp_min(1.0)
        mom = sums[:, 1:] / count[:, None]
        mu = mom[:, 0]
        d = s - mu
        inv_sd = torch.rsqrt((mom[:, 1] - mu * mu).clamp_min(0.0) + _EPS)
        ns = d * inv_sd * m
        nf, weight = frame.nf, frame.weight
        if frame.raw is not None:
            nf = local_normalise(frame.raw.view(B, h, w), m.view(B, h, w),
                                 level.window).view(B, N)
            weight = torch.rsqrt(m.sum(dim=1, keepdim=True).clamp_min(1.0))
        if frame.raw is None and self.config.lost_overlap_weight != 1.0:
            # fan pixels off the data (nf is 0 off the fan) keep lost_overlap_weight * nf
            nf = nf * (1.0 + (self.config.lost_overlap_weight - 1.0) * (1.0 - m))
        r = (nf - ns) * weight  # (B, N)
        cost = 0.5 * (r * r).sum(dim=1)
        return cost.double().cpu().numpy(), (vals, s, m, r, weight, count, mu, d, inv_sd,
                                              poses_c, centre)

    def _normal_equations(self, level: Level, geo: _LevelGeometry, saved):
        """``J^T J`` ``(B, 6, 6)`` and ``J^T r`` ``(B, 6)`` (float64 numpy) of an
        evaluation, ``J`` = d r / d(omega, v) (analytic)."""
        if not geo.dense:
            gram, terms, poses_c, centre = saved
            T = self._step_basis(poses_c, centre)
            JtJ, Jtr = _global_ncc_normal_equations(gram, terms, T)
        else:
            vals, s, m, r, weight, count, mu, d, inv_sd, poses_c, centre = saved
            B, N = r.shape
            h, w = geo.grid_shape
            T = torch.as_tensor(self._step_basis(poses_c, centre), dtype=torch.float32,
                                device=r.device)
            y = (geo.feat.view(3, 1, 1, N) * vals[2:5].view(1, 3, B, N)).view(9, B, N)
            js = torch.matmul(T, y.transpose(0, 1))  # (B, 6, N): d s / d(omega, v)
            mjs = js * m[:, None]
            boxed = _box(torch.cat([mjs, mjs * s[:, None]], dim=1).view(-1, h, w),
                         level.window).view(B, 12, N)
            # Derivative of lncc.local_normalise (see local_normalise_jvp): with
            # dmu = box(m js) / count, dvar = 2 box(m s js) / count - 2 mu dmu,
            # dn = (js - dmu - d dvar / (2 (var + eps))) inv_sd m and J = -weight dn, i.e.
            # J = c1 js - c2 box(m js) - c3 box(m s js) with per-pixel c1, c2, c3.
            c1 = -weight * inv_sd * m
            k = inv_sd * inv_sd * d
            c2 = c1 * (1.0 - k * mu) / count
            c3 = c1 * k / count
            J = js * c1[:, None] - boxed[:, :6] * c2[:, None] - boxed[:, 6:] * c3[:, None]
            # [J^T J | J^T r] (B, 6, 7) in one bmm on [J | r] zero-padded to N_pad points,
            # a multiple of 16: every item then starts 64-byte aligned, as a frame
            # registered alone does (float32 BLAS rounds differently at other
            # alignments, and a 1-column bmm takes a matrix-vector path whose rounding
            # depends on B): a batched item gets the same result as alone.
            Jr = J.new_zeros(B, 7, -(-N // 16) * 16)
            Jr[:, :6, :N] = J
            Jr[:, 6, :N] = r
            JJr = torch.bmm(Jr[:, :6], Jr.transpose(1, 2)).double().cpu().numpy()
            JtJ, Jtr = JJr[:, :, :6], JJr[:, :, 6]
        if not level.rotations:  # translation only: the rotation steps solve to 0
            JtJ[:, :3, :] = 0.0
            JtJ[:, :, :3] = 0.0
            JtJ[:, :3, :3] = np.eye(3)
            Jtr[:, :3] = 0.0
        return JtJ, Jtr

    def _refine_level(self, fd: torch.Tensor, starts: np.ndarray, corr0: np.ndarray,
                      level: Level, cancel, finest: bool = True):
        """Batched Levenberg-Marquardt on one level.

        ``fd`` ``(B, h, w)`` cropped frames at the level's step (torch), ``starts``
        ``(B, 4, 4)`` cropped tracked poses, ``corr0`` ``(B, 4, 4)`` corrections to start
        from (float64 numpy); ``finest``: use ``tol_cost`` (else ``tol_cost_coarse``).
        The 6 x 6 bookkeeping is float64 numpy (tiny; the sampling and normalisation stay
        in torch on the volume's device). Returns
        ``(correction (B, 4, 4), cost (B,), history (iterations + 1, B), iterations)``.
        """
        cfg = self.config
        tol_cost = cfg.tol_cost if finest else max(cfg.tol_cost, cfg.tol_cost_coarse)
        geo = self._level_geometry(level.step, level.window > 0)
        B = fd.shape[0]
        frame = self._level_frame(fd, level, geo)
        corr = corr0.copy()
        centre = (corr @ starts @ self._centre_c)[:, :3]  # (B, 3), fixed for the level

        def evaluate(c):
            return self._evaluate(level, geo, c @ starts, centre, frame)

        cost, saved = evaluate(corr)
        JtJ, Jtr = self._normal_equations(level, geo, saved)
        lam = np.full(B, cfg.lambda_init)
        rejected = np.zeros(B, dtype=int)  # consecutive rejected steps
        active = np.ones(B, dtype=bool)
        history = [cost.copy()]
        eye = np.eye(6)
        scale_x = np.array([100.0] * 3 + [1.0] * 3)  # tol_step: rotations at 100 mm
        it = 0
        for it in range(1, level.max_iter + 1):
            check_cancel(cancel, "US registration")
            diag = np.diagonal(JtJ, axis1=1, axis2=2)
            damp = lam[:, None] * np.maximum(diag, 1e-12 * diag.max(axis=1, keepdims=True)
                                             + 1e-30)
            A = JtJ + damp[:, :, None] * eye
            try:
                dx = -np.linalg.solve(A, Jtr[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                dx = -np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(A, Jtr)])
            ok = active & np.isfinite(dx).all(axis=1)
            dx[~ok] = 0.0
            # Decrease predicted by the linear model, -Jtr.dx - dx.JtJ.dx / 2, which is
            # (-Jtr.dx + dx.damp.dx) / 2 since (JtJ + damp) dx = -Jtr; a converged item
            # (e.g. a tracking start that is already right) stops without trying the step.
            predicted = 0.5 * (dx * (damp * dx - Jtr)).sum(axis=1)
            flat_model = ok & (predicted <= 0.25 * tol_cost * cost)
            active &= ~flat_model
            ok &= ~flat_model
            dx[~ok] = 0.0
            if not active.any():
                break
            corr_try = _step_matrix_np(dx, centre) @ corr
            # Only the items that try a step are evaluated (in a batch, items that have
            # stopped would otherwise be sampled for nothing until the last one stops).
            sub = None if ok.all() else np.flatnonzero(ok)
            if sub is None:
                cost_t, saved_t = evaluate(corr_try)
            else:
                cost_t = np.full(B, np.inf)
                if sub.size:
                    cost_t[sub], saved_t = self._evaluate(
                        level, geo, corr_try[sub] @ starts[sub], centre[sub],
                        frame.subset(sub))
            better = ok & (cost_t < cost)  # NaN compares False
            small_decrease = better & (cost - cost_t <= tol_cost * cost)
            small_step = ok & (((dx * scale_x) ** 2).sum(axis=1) <= cfg.tol_step ** 2)
            if better.all():
                corr, cost = corr_try, cost_t
            elif better.any():
                corr[better], cost[better] = corr_try[better], cost_t[better]
            lam = np.where(better, lam * 0.3, lam * 4.0)
            rejected = np.where(better, 0, rejected + ok)
            history.append(cost.copy())
            active &= ~small_decrease & ~small_step & (lam < 1e8) \
                & (rejected < cfg.max_rejections)
            if not active.any() or it == level.max_iter:
                break
            # Normal equations at the accepted poses, only for items that go on.
            refresh = better & active
            if refresh.all():
                JtJ, Jtr = self._normal_equations(level, geo, saved_t)
            elif refresh.any():  # saved_t holds the evaluated items (sub) only
                JtJ_t, Jtr_t = self._normal_equations(level, geo, saved_t)
                pick = refresh if sub is None else refresh[sub]
                JtJ[refresh], Jtr[refresh] = JtJ_t[pick], Jtr_t[pick]
        return corr, cost, np.stack(history), it


@dataclass
class _Frame:
    """The frame's side of a level's cost. Dense (LNCC) levels: ``nf`` ``(B, N)`` the
    locally normalised frame, ``weight`` ``(B, 1)``, ``raw`` the frame when it is
    normalised on the overlap at every evaluation. Global levels: ``consts``
    ``(2, B, N)`` = ``[1, f]`` rows of the Gram matrix, ``nf_sq`` ``(B,)`` the sum of the
    normalised frame's squares on the fan (``None``: normalise on the overlap instead),
    ``w2`` the residual weight squared."""

    nf: torch.Tensor
    raw: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    consts: Optional[torch.Tensor] = None
    nf_sq: Optional[np.ndarray] = None
    w2: float = 1.0

    def subset(self, items: np.ndarray) -> "_Frame":
        """The same frame side for the batch items ``items`` (indices) only."""
        idx = torch.as_tensor(items, device=self.nf.device)
        return _Frame(nf=self.nf[idx], raw=None if self.raw is None else self.raw[idx],
                      weight=None if self.weight is None else self.weight[idx],
                      consts=None if self.consts is None else self.consts[:, idx],
                      nf_sq=None if self.nf_sq is None else self.nf_sq[items], w2=self.w2)


def _global_ncc(G: np.ndarray, nf_sq: Optional[np.ndarray], w2: float):
    """Cost ``(B,)`` of the global-NCC levels from the Gram matrix ``G`` ``(B, 12, 12)``
    (rows ``_Y``, ``_S``, ``_ONE``, ``_F``; sums over the overlap ``m``), and the terms
    :func:`_global_ncc_normal_equations` reuses.

    ``r = sqrt(w2) * (nf - ns)`` on the fan with ``ns = m (s - mean) / sd`` (moments of
    ``s`` on the overlap), ``nf`` the frame normalised on the fan (``nf_sq`` = its sum of
    squares), or with ``nf_sq = None`` on the overlap (``w2 = 1 / count`` then).
    """
    c = np.maximum(G[:, _ONE, _ONE], 1.0)
    mean_s = G[:, _S, _ONE] / c
    var_s = np.maximum(G[:, _S, _S] / c - mean_s ** 2, 0.0)
    inv_sd = 1.0 / np.sqrt(var_s + _EPS)
    if nf_sq is None:  # nf = (f - mean_f) * inv_sdf on the overlap
        mean_f = G[:, _F, _ONE] / c
        var_f = np.maximum(G[:, _F, _F] / c - mean_f ** 2, 0.0)
        inv_sdf = 1.0 / np.sqrt(var_f + _EPS)
        s_nf = np.zeros_like(c)
        s_snf = inv_sdf * (G[:, _S, _F] - mean_f * G[:, _S, _ONE])
        nf_sq = c * var_f * inv_sdf ** 2
        w2 = 1.0 / c
    else:
        mean_f, inv_sdf = None, None
        s_nf, s_snf = G[:, _F, _ONE], G[:, _S, _F]
    s_dnf = s_snf - mean_s * s_nf  # sum m d nf, d = s - mean_s
    cost = 0.5 * w2 * (nf_sq - 2.0 * inv_sd * s_dnf + c * var_s * inv_sd ** 2)
    return cost, (c, mean_s, var_s, inv_sd, s_nf, s_dnf, mean_f, inv_sdf, w2)


def _global_ncc_normal_equations(G: np.ndarray, terms, T: np.ndarray):
    """``J^T J`` ``(B, 6, 6)``, ``J^T r`` ``(B, 6)`` of :func:`_global_ncc` (exact) from
    the same Gram matrix; ``T`` ``(B, 6, 9)`` maps its ``_Y`` rows to ``u = d s / dx``
    (:meth:`SliceRegistrar._step_basis`).

    With ``v = u - dmu - a d dvar`` (``dmu = sum m u / c``, ``dvar = 2 sum m u d / c``,
    ``a = 1 / (2 (var + eps))``) the derivative of ``ns`` is ``inv_sd m v``, and since
    ``sum m d = 0``, ``sum m d^2 = c var``:
    ``sum m v v^T = U - c dmu dmu^T + (a^2 var - a) c dvar dvar^T`` (``U = sum m u u^T``).
    """
    c, mean_s, var_s, inv_sd, s_nf, s_dnf, mean_f, inv_sdf, w2 = terms
    # One congruence maps the _Y rows to u: W = [T 0; 0 I] G [T 0; 0 I]^T holds
    # U = sum m u u^T and the sums of m u, m u s, m u f in its first six rows.
    Ta = np.zeros((T.shape[0], 9, 12))
    Ta[:, :6, :9] = T
    Ta[:, 6:, 9:] = np.eye(3)
    Wm = Ta @ G @ Ta.transpose(0, 2, 1)
    U, sus, su, suf = Wm[:, :6, :6], Wm[:, :6, 6], Wm[:, :6, 7], Wm[:, :6, 8]
    cc = c[:, None]
    dmu = su / cc
    dvar = 2.0 * (sus - mean_s[:, None] * su) / cc
    a = 0.5 * inv_sd ** 2
    k = ((a * a * var_s - a) * c)[:, None, None]
    vv = U - cc[:, :, None] * dmu[:, :, None] * dmu[:, None, :] \
        + k * dvar[:, :, None] * dvar[:, None, :]
    JtJ = (w2 * inv_sd ** 2)[:, None, None] * vv
    s_unf = suf if mean_f is None else inv_sdf[:, None] * (suf - mean_f[:, None] * su)
    s_vnf = s_unf - dmu * s_nf[:, None] - (a * s_dnf)[:, None] * dvar
    s_vd = dvar * (c * (0.5 - a * var_s))[:, None]
    Jtr = -(w2 * inv_sd)[:, None] * (s_vnf - inv_sd[:, None] * s_vd)
    return JtJ, Jtr


# [w]_x (the cross-product matrix) of w = (w0, w1, w2), flattened row-major:
# [[0, -w2, w1], [w2, 0, -w0], [-w1, w0, 0]] = w[_HAT_IDX] * _HAT_SIGN.
_HAT_IDX = np.array([0, 2, 1, 2, 0, 0, 1, 0, 0])
_HAT_SIGN = np.array([0.0, -1.0, 1.0, 1.0, 0.0, -1.0, -1.0, 1.0, 0.0])


def _hat(w: np.ndarray) -> np.ndarray:
    """Cross-product matrices ``(..., 3, 3)`` of vectors ``w`` ``(..., 3)``."""
    return (w[..., _HAT_IDX] * _HAT_SIGN).reshape(w.shape[:-1] + (3, 3))


def _step_matrix_np(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``S(x)`` ``(B, 4, 4)``: rotate by ``x[:, :3]`` (Rodrigues) about ``centre``
    ``(B, 3)``, then translate by ``x[:, 3:]`` (reference mm). float64 numpy."""
    t = np.sqrt((x[:, :3] ** 2).sum(axis=1))[:, None, None]
    K = _hat(x[:, :3])
    # sin(t) / t and (1 - cos t) / t^2 = sinc(t / 2)^2 / 2, exact at t = 0.
    R = np.eye(3) + np.sinc(t / np.pi) * K + 0.5 * np.sinc(t / (2 * np.pi)) ** 2 * (K @ K)
    S = np.zeros((x.shape[0], 4, 4))
    S[:, :3, :3] = R
    S[:, :3, 3] = centre - (R @ centre[:, :, None])[:, :, 0] + x[:, 3:]
    S[:, 3, 3] = 1.0
    return S

