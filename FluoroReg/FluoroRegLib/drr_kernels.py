"""Compiled CPU kernels (numba) of the trilinear DRR: forward, and backward w.r.t. the rays.

Why this exists: on a CPU, :func:`~.drr.render_drr`'s torch path spends most of its time
in ``grid_sample`` (about 30-40 ns per sample point, plus the memory traffic of a
(B, N, P, 3) grid and a (B, N, P) value tensor). Per-patient training renders thousands
of small (64-128 px) DRRs, and intensity registration renders batches of 7-13 poses per
Levenberg-Marquardt step, so that cost is what users wait for. These kernels compute the
same integral one ray at a time, samples in registers, no intermediate tensors.

The mathematics is exactly that of ``drr._trilinear_chunk`` (read it first):

- rays ``source + t * direction`` in IJK, entry/exit ``t_in, t_out`` by the slab method on
  the box ``[-0.5, n - 0.5]`` per axis, clamped to ``[0, 1]``; ``span = max(t_out - t_in, 0)``;
- ``n_samples`` mid-point samples ``t_in + (m + 0.5) / N * span``; each sample is the
  trilinear interpolation of ``mu`` at the point clamped to ``[0, n - 1]`` per axis
  (``grid_sample(padding_mode="border", align_corners=True)``);
- the pixel is ``span * length_mm / N * sum(samples)``.

Differences are of arithmetic only: positions and sums are float64 (the torch path is
float32 throughout), so the two agree to float32 rounding (checked by
``Testing/fluoro/test_fluoro_drr_kernels.py`` and ``benchmarks/drr_throughput.py``).

One exact shortcut (no change of the result): samples whose eight trilinear corners all
lie outside the box of non-zero attenuation (``nonzero_box``, one voxel of margin) add
exactly zero, value and gradient, so each ray only visits the sample indices inside that
box. The sample positions themselves are unchanged.

Backward: :func:`backward` returns, per ray, the gradient of ``sum(grad_out * pixel)``
w.r.t. the ray's source and direction, following the torch path's autograd rules: the
sample positions (trilinear gradient, zero on a clamped axis as ``grid_sample`` does),
``t_in``/``t_out`` through the slab planes that define them (split evenly on ties, as
``amax``/``amin`` do; zero when clamped to ``[0, 1]``), and ``span`` in the step length.
The chain rule from rays to the pose stays in torch (``drr.rays_in_ijk``).

Array conventions: ``mu`` (K, J, I) float32 C-contiguous; ``source`` (B, 3) and
``direction`` (B, P, 3) float32 or float64 in IJK (``i, j, k``); ``length_mm`` (P,);
``box`` (6,) float64 ``[lo_i, lo_j, lo_k, hi_i, hi_j, hi_k]`` from :func:`nonzero_box`.
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a dependency, but a missing or broken install falls back to torch
    import numba
    from numba import njit, prange
    AVAILABLE = True
except Exception:  # pragma: no cover - exercised only without numba  # noqa: BLE001
    numba = None
    AVAILABLE = False
    prange = range

    def njit(*args, **kwargs):  # noqa: D103 - the plain Python functions stay importable
        if args and callable(args[0]):
            return args[0]
        return lambda f: f

_EPS = 1e-9  # drr.ray_box_intersection's eps
_BIG = 1e30


def nonzero_box(mu: np.ndarray) -> np.ndarray:
    """``[lo_i, lo_j, lo_k, hi_i, hi_j, hi_k]`` (float64): voxel coordinates outside which
    a trilinear sample of ``mu`` is exactly zero (all eight corners zero), i.e. the
    index range of non-zero voxels widened by one voxel. An all-zero volume gives an
    empty box (lo > hi)."""
    nz = mu != 0
    out = np.empty(6)
    for axis_ijk, reduce_axes in ((0, (0, 1)), (1, (0, 2)), (2, (1, 2))):
        # mu is (K, J, I): axis i is array axis 2, j is 1, k is 0.
        any_ = nz.any(axis=reduce_axes)
        idx = np.flatnonzero(any_)
        if idx.size == 0:
            return np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
        out[axis_ijk] = idx[0] - 1.0
        out[3 + axis_ijk] = idx[-1] + 1.0
    return out


@njit(cache=True, nogil=True, inline="always")
def _slab(s, d, lo, hi):
    """t_near, t_far, d_safe of one axis, exactly as ``drr.ray_box_intersection``
    (returns a flag: 0 regular, 1 parallel inside, 2 parallel outside)."""
    if abs(d) < _EPS:
        if lo <= s <= hi:
            return -_BIG, _BIG, _EPS, 1
        return _BIG, -_BIG, _EPS, 2
    t1 = (lo - s) / d
    t2 = (hi - s) / d
    if t1 < t2:
        return t1, t2, d, 0
    return t2, t1, d, 0


@njit(cache=True, nogil=True, inline="always")
def _sample(mu, x, y, z, nI, nJ, nK):
    """Trilinear value at voxel coordinates clamped to the grid (border padding)."""
    x = min(max(x, 0.0), nI - 1.0)
    y = min(max(y, 0.0), nJ - 1.0)
    z = min(max(z, 0.0), nK - 1.0)
    x0 = int(math.floor(x))
    y0 = int(math.floor(y))
    z0 = int(math.floor(z))
    fx = x - x0
    fy = y - y0
    fz = z - z0
    x1 = min(x0 + 1, nI - 1)  # the weight of an out-of-grid corner is 0 here
    y1 = min(y0 + 1, nJ - 1)
    z1 = min(z0 + 1, nK - 1)
    c00 = mu[z0, y0, x0] * (1.0 - fx) + mu[z0, y0, x1] * fx
    c01 = mu[z0, y1, x0] * (1.0 - fx) + mu[z0, y1, x1] * fx
    c10 = mu[z1, y0, x0] * (1.0 - fx) + mu[z1, y0, x1] * fx
    c11 = mu[z1, y1, x0] * (1.0 - fx) + mu[z1, y1, x1] * fx
    c0 = c00 * (1.0 - fy) + c01 * fy
    c1 = c10 * (1.0 - fy) + c11 * fy
    return c0 * (1.0 - fz) + c1 * fz


@njit(cache=True, nogil=True, inline="always")
def _ray_range(s0, s1, s2, d0, d1, d2, nI, nJ, nK):
    """(t_in, t_out) of the volume box, clamped to [0, 1]."""
    a0, b0, _, _ = _slab(s0, d0, -0.5, nI - 0.5)
    a1, b1, _, _ = _slab(s1, d1, -0.5, nJ - 0.5)
    a2, b2, _, _ = _slab(s2, d2, -0.5, nK - 0.5)
    t_in = min(max(max(a0, max(a1, a2)), 0.0), 1.0)
    t_out = min(max(min(b0, min(b1, b2)), 0.0), 1.0)
    return t_in, t_out


@njit(cache=True, nogil=True, inline="always")
def _sample_range(s0, s1, s2, d0, d1, d2, t_in, span, n, box):
    """Sample indices [m0, m1) whose points can lie inside ``box`` (conservative by one)."""
    if span <= 0.0:
        return 0, 0
    lo_t = -_BIG
    hi_t = _BIG
    for ax in range(3):
        if ax == 0:
            s, d = s0, d0
        elif ax == 1:
            s, d = s1, d1
        else:
            s, d = s2, d2
        lo = box[ax]
        hi = box[3 + ax]
        if lo > hi:
            return 0, 0
        if abs(d) < 1e-30:
            if s < lo or s > hi:
                return 0, 0
            continue
        t1 = (lo - s) / d
        t2 = (hi - s) / d
        if t1 > t2:
            t1, t2 = t2, t1
        lo_t = max(lo_t, t1)
        hi_t = min(hi_t, t2)
    if hi_t < lo_t:
        return 0, 0
    # sample m sits at t_in + (m + 0.5) / n * span
    f_lo = (lo_t - t_in) / span * n - 0.5
    f_hi = (hi_t - t_in) / span * n - 0.5
    m0 = max(0, int(math.floor(max(f_lo, -1.0))) - 1)
    m1 = min(n, int(math.ceil(min(f_hi, n + 1.0))) + 2)
    return m0, max(m0, m1)


@njit(cache=True, nogil=True, inline="always")
def _inside(x, y, z, nI, nJ, nK):
    """Whether a sample point needs no clamping: ``0 <= x < nI - 1`` on every axis (then
    ``floor`` is ``int`` and the upper corner ``x0 + 1`` lies in the grid)."""
    return (x >= 0.0 and x < nI - 1.0 and y >= 0.0 and y < nJ - 1.0 and z >= 0.0
            and z < nK - 1.0)


@njit(cache=True, nogil=True, inline="always")
def _sample_inside(mu, x, y, z, sJ, sK):
    """:func:`_sample` for a point where :func:`_inside` holds, on the flattened volume
    (``sJ``, ``sK``: strides of j and k): the same arithmetic without the clamps."""
    x0 = int(x)
    y0 = int(y)
    z0 = int(z)
    fx = x - x0
    fy = y - y0
    fz = z - z0
    i = z0 * sK + y0 * sJ + x0
    c00 = mu[i] * (1.0 - fx) + mu[i + 1] * fx
    c01 = mu[i + sJ] * (1.0 - fx) + mu[i + sJ + 1] * fx
    i += sK
    c10 = mu[i] * (1.0 - fx) + mu[i + 1] * fx
    c11 = mu[i + sJ] * (1.0 - fx) + mu[i + sJ + 1] * fx
    c0 = c00 * (1.0 - fy) + c01 * fy
    c1 = c10 * (1.0 - fy) + c11 * fy
    return c0 * (1.0 - fz) + c1 * fz


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def forward(mu, source, direction, length_mm, n_samples, box, out):
    """Fill ``out`` (B, P) float32 with the line integrals (see the module docstring).

    Per ray, the samples before the first and after the last one inside the grid (no
    clamping needed, :func:`_inside`) take the clamped :func:`_sample`; the grid is a box
    and the samples lie on a line, so every sample between those two is inside and takes
    :func:`_sample_inside` (the same values, fewer instructions). ``fastmath``: the
    inputs are finite (checked by the callers). Together about 1.7x faster than the
    plain loop here, the same images to float32 rounding
    (``benchmarks/results/fluoro_speed_defaults.md``)."""
    nK, nJ, nI = mu.shape[0], mu.shape[1], mu.shape[2]
    flat = mu.reshape(nK * nJ * nI)
    sJ = nI
    sK = nI * nJ
    B = direction.shape[0]
    P = direction.shape[1]
    n = n_samples
    for r in prange(B * P):
        b = r // P
        p = r - b * P
        s0 = np.float64(source[b, 0])
        s1 = np.float64(source[b, 1])
        s2 = np.float64(source[b, 2])
        d0 = np.float64(direction[b, p, 0])
        d1 = np.float64(direction[b, p, 1])
        d2 = np.float64(direction[b, p, 2])
        t_in, t_out = _ray_range(s0, s1, s2, d0, d1, d2, nI, nJ, nK)
        span = max(t_out - t_in, 0.0)
        m0, m1 = _sample_range(s0, s1, s2, d0, d1, d2, t_in, span, n, box)
        acc = 0.0
        dt = span / n
        ma = m0  # leading samples that need clamping
        while ma < m1:
            t = t_in + (ma + 0.5) * dt
            x = s0 + t * d0
            y = s1 + t * d1
            z = s2 + t * d2
            if _inside(x, y, z, nI, nJ, nK):
                break
            acc += _sample(mu, x, y, z, nI, nJ, nK)
            ma += 1
        mb = m1  # trailing samples that need clamping
        while mb > ma:
            t = t_in + (mb - 0.5) * dt
            x = s0 + t * d0
            y = s1 + t * d1
            z = s2 + t * d2
            if _inside(x, y, z, nI, nJ, nK):
                break
            acc += _sample(mu, x, y, z, nI, nJ, nK)
            mb -= 1
        for m in range(ma, mb):  # both ends inside the grid, so all between are
            t = t_in + (m + 0.5) * dt
            acc += _sample_inside(flat, s0 + t * d0, s1 + t * d1, s2 + t * d2, sJ, sK)
        out[b, p] = acc * span * np.float64(length_mm[p]) / n


@njit(cache=True, nogil=True, inline="always")
def _sample_grad(mu, x, y, z, nI, nJ, nK, g):
    """Trilinear value and its gradient (into ``g``) at clamped voxel coordinates; the
    gradient of a clamped axis (point outside ``[0, n - 1]``) is zero, as in
    ``grid_sample``'s border padding."""
    gx = 1.0
    gy = 1.0
    gz = 1.0
    if x < 0.0 or x > nI - 1.0:
        gx = 0.0
    if y < 0.0 or y > nJ - 1.0:
        gy = 0.0
    if z < 0.0 or z > nK - 1.0:
        gz = 0.0
    x = min(max(x, 0.0), nI - 1.0)
    y = min(max(y, 0.0), nJ - 1.0)
    z = min(max(z, 0.0), nK - 1.0)
    x0 = int(math.floor(x))
    y0 = int(math.floor(y))
    z0 = int(math.floor(z))
    fx = x - x0
    fy = y - y0
    fz = z - z0
    # A corner beyond the grid (only at x == n - 1 exactly) contributes zero, value and
    # gradient, as in grid_sample.
    x1 = x0 + 1
    y1 = y0 + 1
    z1 = z0 + 1
    vx1 = x1 < nI
    vy1 = y1 < nJ
    vz1 = z1 < nK
    x1c = min(x1, nI - 1)
    y1c = min(y1, nJ - 1)
    z1c = min(z1, nK - 1)
    v000 = mu[z0, y0, x0]
    v001 = mu[z0, y0, x1c] if vx1 else 0.0
    v010 = mu[z0, y1c, x0] if vy1 else 0.0
    v011 = mu[z0, y1c, x1c] if (vx1 and vy1) else 0.0
    v100 = mu[z1c, y0, x0] if vz1 else 0.0
    v101 = mu[z1c, y0, x1c] if (vz1 and vx1) else 0.0
    v110 = mu[z1c, y1c, x0] if (vz1 and vy1) else 0.0
    v111 = mu[z1c, y1c, x1c] if (vz1 and vy1 and vx1) else 0.0
    c00 = v000 * (1.0 - fx) + v001 * fx
    c01 = v010 * (1.0 - fx) + v011 * fx
    c10 = v100 * (1.0 - fx) + v101 * fx
    c11 = v110 * (1.0 - fx) + v111 * fx
    c0 = c00 * (1.0 - fy) + c01 * fy
    c1 = c10 * (1.0 - fy) + c11 * fy
    e00 = v001 - v000
    e01 = v011 - v010
    e10 = v101 - v100
    e11 = v111 - v110
    dx = ((e00 * (1.0 - fy) + e01 * fy) * (1.0 - fz) + (e10 * (1.0 - fy) + e11 * fy) * fz)
    dy = (c01 - c00) * (1.0 - fz) + (c11 - c10) * fz
    dz = c1 - c0
    g[0] = dx * gx
    g[1] = dy * gy
    g[2] = dz * gz
    return c0 * (1.0 - fz) + c1 * fz


@njit(cache=True, nogil=True, parallel=True)
def backward(mu, source, direction, length_mm, n_samples, box, grad_out, grad_source,
             grad_direction):
    """Per-ray gradients: ``grad_source`` (B, P, 3) (sum over P in the caller) and
    ``grad_direction`` (B, P, 3), float64, of ``sum(grad_out * forward(...))``."""
    nK, nJ, nI = mu.shape[0], mu.shape[1], mu.shape[2]
    B = direction.shape[0]
    P = direction.shape[1]
    n = n_samples
    for r in prange(B * P):
        b = r // P
        p = r - b * P
        g = np.empty(3)
        sv = np.empty(3)
        dv = np.empty(3)
        nv = np.empty(3)
        fv = np.empty(3)
        dsafe = np.empty(3)
        fl_n = np.empty(3, np.int64)
        fl_f = np.empty(3, np.int64)
        for a in range(3):
            sv[a] = source[b, a]
            dv[a] = direction[b, p, a]
            grad_source[b, p, a] = 0.0
            grad_direction[b, p, a] = 0.0
        G = np.float64(grad_out[b, p])
        if G == 0.0:
            continue
        dims = (nI, nJ, nK)
        for a in range(3):
            tn, tf, ds, fl = _slab(sv[a], dv[a], -0.5, dims[a] - 0.5)
            nv[a] = tn
            fv[a] = tf
            dsafe[a] = ds
            fl_n[a] = fl
            fl_f[a] = fl
        m_near = max(nv[0], max(nv[1], nv[2]))
        m_far = min(fv[0], min(fv[1], fv[2]))
        t_in = min(max(m_near, 0.0), 1.0)
        t_out = min(max(m_far, 0.0), 1.0)
        span_raw = t_out - t_in
        span = max(span_raw, 0.0)
        L = np.float64(length_mm[p])
        m0, m1 = _sample_range(sv[0], sv[1], sv[2], dv[0], dv[1], dv[2], t_in, span, n, box)
        S10 = 0.0
        S11 = 0.0
        S12 = 0.0
        S20 = 0.0
        S21 = 0.0
        S22 = 0.0
        V = 0.0
        dt = span / n
        for m in range(m0, m1):
            f = (m + 0.5) / n
            t = t_in + f * span
            v = _sample_grad(mu, sv[0] + t * dv[0], sv[1] + t * dv[1], sv[2] + t * dv[2],
                             nI, nJ, nK, g)
            V += v
            S10 += g[0]
            S11 += g[1]
            S12 += g[2]
            S20 += f * g[0]
            S21 += f * g[1]
            S22 += f * g[2]
        step = span * L / n
        Gs = G * step
        # direct dependence of the sample points on source and direction
        grad_source[b, p, 0] = Gs * S10
        grad_source[b, p, 1] = Gs * S11
        grad_source[b, p, 2] = Gs * S12
        grad_direction[b, p, 0] = Gs * (t_in * S10 + span * S20)
        grad_direction[b, p, 1] = Gs * (t_in * S11 + span * S21)
        grad_direction[b, p, 2] = Gs * (t_in * S12 + span * S22)
        # through t_in (sample points) and span (sample points + step length)
        g_span = Gs * (S20 * dv[0] + S21 * dv[1] + S22 * dv[2]) + G * L / n * V
        g_tin = Gs * (S10 * dv[0] + S11 * dv[1] + S12 * dv[2])
        g_tout = 0.0
        if span_raw >= 0.0:
            g_tin -= g_span
            g_tout = g_span
        # t_in = clamp(max_a t_near_a, 0, 1); t_out = clamp(min_a t_far_a, 0, 1)
        if not (0.0 <= m_near <= 1.0):
            g_tin = 0.0
        if not (0.0 <= m_far <= 1.0):
            g_tout = 0.0
        n_near = 0
        n_far = 0
        for a in range(3):
            if nv[a] == m_near:
                n_near += 1
            if fv[a] == m_far:
                n_far += 1
        for a in range(3):
            if fl_n[a] != 0:
                continue  # parallel slab: constant +-big, no gradient
            gt = 0.0
            if nv[a] == m_near:
                gt += g_tin / n_near
            if fv[a] == m_far:
                gt += g_tout / n_far
            if gt != 0.0:
                # the plane's t = (plane - s) / d: dt/ds = -1/d, dt/dd = -t/d; the plane
                # is the near one for t_in and the far one for t_out.
                if nv[a] == m_near:
                    w = g_tin / n_near
                    grad_source[b, p, a] += -w / dsafe[a]
                    grad_direction[b, p, a] += -w * nv[a] / dsafe[a]
                if fv[a] == m_far:
                    w = g_tout / n_far
                    grad_source[b, p, a] += -w / dsafe[a]
                    grad_direction[b, p, a] += -w * fv[a] / dsafe[a]


def set_threads(n: int) -> None:
    """Use ``n`` numba threads (at most what numba was started with)."""
    if AVAILABLE:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


# ---------------------------------------------------------------------------- torch glue
_BOXES: dict = {}  # id(mu tensor) -> (weakref to it, tensor version, box)


def volume_box(mu_tensor) -> np.ndarray:
    """:func:`nonzero_box` of a (K, J, I) CPU tensor, cached per tensor object (and its
    version, so an in-place change of the volume is seen). Keyed by ``id`` with a weak
    reference to check the object (a ``WeakKeyDictionary`` would compare two tensors
    with ``==`` on a hit, which raises for tensors of more than one element)."""
    import weakref  # noqa: PLC0415

    version = mu_tensor._version
    hit = _BOXES.get(id(mu_tensor))
    if hit is not None and hit[0]() is mu_tensor and hit[1] == version:
        return hit[2]
    box = nonzero_box(mu_tensor.detach().numpy())
    for key in [k for k, v in _BOXES.items() if v[0]() is None]:
        del _BOXES[key]  # tensors that are gone
    _BOXES[id(mu_tensor)] = (weakref.ref(mu_tensor), version, box)
    return box


def usable(mu, source, direction, method: str) -> bool:
    """Whether these kernels compute exactly what ``drr._trilinear_chunk`` would: numba
    present, trilinear, CPU float32 volume, float32/float64 rays on the CPU, and not
    switched off with ``FLUOROREG_DRR_KERNELS=torch``."""
    import os  # noqa: PLC0415

    import torch  # noqa: PLC0415

    if not AVAILABLE or method != "trilinear":
        return False
    if os.environ.get("FLUOROREG_DRR_KERNELS", "").lower() in ("torch", "0", "off"):
        return False
    return (mu.device.type == "cpu" and mu.dtype == torch.float32 and mu.ndim == 3
            and source.device.type == "cpu" and direction.dtype in (torch.float32, torch.float64))


def _threads() -> None:
    import torch  # noqa: PLC0415

    set_threads(torch.get_num_threads())


def _make_function():
    import torch  # noqa: PLC0415
    from torch.autograd.function import once_differentiable  # noqa: PLC0415

    class _TrilinearDRR(torch.autograd.Function):
        @staticmethod
        def forward(ctx, mu, source, direction, length_mm, n_samples, box):
            src = source.detach().contiguous().numpy()
            dirs = direction.detach().contiguous().numpy()
            length = length_mm.detach().to(torch.float64).contiguous().numpy()
            out = np.empty(dirs.shape[:2], np.float32)
            _threads()
            forward(mu.numpy(), src, dirs, length, int(n_samples), box, out)
            ctx.save_for_backward(mu, source, direction, length_mm)
            ctx.n_samples = int(n_samples)
            ctx.box = box
            return torch.from_numpy(out).to(source.dtype)

        @staticmethod
        @once_differentiable  # a second derivative raises instead of silently being zero
        def backward(ctx, grad_out):
            mu, source, direction, length_mm = ctx.saved_tensors
            dirs = direction.detach().contiguous().numpy()
            b, p = dirs.shape[:2]
            gs = np.empty((b, p, 3))
            gd = np.empty((b, p, 3))
            _threads()
            backward(mu.numpy(), source.detach().contiguous().numpy(), dirs,
                     length_mm.detach().to(torch.float64).contiguous().numpy(), ctx.n_samples,
                     ctx.box, grad_out.detach().to(torch.float64).contiguous().numpy(), gs, gd)
            g_src = torch.from_numpy(gs.sum(1)).to(source.dtype) if ctx.needs_input_grad[1] else None
            g_dir = torch.from_numpy(gd).to(direction.dtype) if ctx.needs_input_grad[2] else None
            return None, g_src, g_dir, None, None, None

    return _TrilinearDRR


_FN = None


def trilinear_drr(mu, source, direction, length_mm, n_samples: int):
    """Line integrals (B, P) (dtype of ``source``) of the rays; differentiable w.r.t.
    ``source`` (B, 3) and ``direction`` (B, P, 3). ``mu``: (K, J, I) float32 CPU tensor."""
    global _FN
    if _FN is None:
        _FN = _make_function()
    box = volume_box(mu)  # the caller's tensor object: the cache hits on the next render
    mu = mu.detach()
    if not mu.is_contiguous():
        mu = mu.contiguous()
    return _FN.apply(mu, source, direction, length_mm, int(n_samples), box)


_WARM = {"seconds": None}


def warm_up() -> dict:
    """Compile the kernels (or load numba's on-disk cache) once per process, on a tiny
    synthetic volume, forward and backward, with the argument types ``render_drr`` uses.

    Returns ``{"available", "seconds", "first_use"}``: ``seconds`` is this call's time
    (0 when the process is already warm). Benchmarks call it before timing so that
    first-use compilation is reported apart from the steady state."""
    import time  # noqa: PLC0415

    if not AVAILABLE:
        return {"available": False, "seconds": 0.0, "first_use": False}
    if _WARM["seconds"] is not None:
        return {"available": True, "seconds": 0.0, "first_use": False}
    import torch  # noqa: PLC0415

    start = time.perf_counter()
    mu = torch.zeros((4, 4, 4), dtype=torch.float32)
    mu[1:3, 1:3, 1:3] = 0.02
    source = torch.tensor([[1.5, 1.5, -20.0]], dtype=torch.float32, requires_grad=True)
    direction = torch.tensor([[[0.0, 0.0, 40.0], [0.05, 0.0, 40.0]]], dtype=torch.float32)
    length = torch.tensor([400.0, 400.0], dtype=torch.float32)
    trilinear_drr(mu, source, direction, length, 8).sum().backward()
    _WARM["seconds"] = time.perf_counter() - start
    return {"available": True, "seconds": _WARM["seconds"], "first_use": True}
