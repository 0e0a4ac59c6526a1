"""Compiled CPU kernels of the LNCC registration (numba), one frame at a time.

Why this exists: on a CPU, :class:`~.register.SliceRegistrar`'s torch path spends most of a
frame's time on the overhead of ~2900 small operations (a few microseconds each), not on
arithmetic, and ``grid_sample``'s 3D CPU kernel costs ~40 ns per point and channel. A live
frame cannot be batched, so the only way to a few milliseconds per frame on a CPU is to
run a whole pyramid level -- sampling, cost, Jacobian and the Levenberg-Marquardt loop -- as
one compiled call. The torch path stays the reference (and the GPU / batched path);
``Testing/us/test_us_kernels.py`` checks this module against it: the same sampling, cost,
``J^T J``, ``J^T r``, similarity and final poses.

The mathematics is exactly that of :mod:`~.register` (see its docstring; the functions
here name the torch function they mirror), with two differences of arithmetic only:
sums are accumulated in float64 (the torch path sums in float32), and the local
statistics are not computed on a centred copy of the image (float64 needs no centring).
Trilinear sampling follows ``grid_sample(align_corners=True, padding_mode="zeros")``: the
eight corners weighted, a corner outside the grid contributing zero, and a point counts
as inside when it lies within ``[0, size - 1]`` on every axis.

Only the default cost (``penalise_lost_overlap=True``: fan pixels outside the data keep
their residual) is compiled; the registrar uses torch for the other.

Array conventions: volumes are channels-last ``(K, J, I, C)`` float32 (``[k, j, i]`` as in
:mod:`~.slicing`), channels ``[intensity, support, d/dx, d/dy, d/dz]`` (gradient in
reference mm). ``A`` ``(3, 4)`` maps cropped-frame pixels ``(col, row, 0, 1)`` to voxel
indices ``(i, j, k)``: ``A = reference_to_ijk[:3] @ image_to_reference``. Level points are
``cols``, ``rows`` ``(N,)`` and ``feat`` ``(3, N)`` = ``(col - cc, row - rc, 1)``.
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a dependency, but a missing or broken install falls back to torch
    import numba
    from numba import njit
    AVAILABLE = True
except Exception:  # pragma: no cover - exercised only without numba  # noqa: BLE001
    numba = None
    AVAILABLE = False

    def njit(*args, **kwargs):  # noqa: D103 - the plain Python functions stay importable
        if args and callable(args[0]):
            return args[0]
        return lambda f: f

_EPS = 1e-3  # lncc._EPS


# ---------------------------------------------------------------------------- sampling
@njit(cache=True, nogil=True)
def _trilinear(vol, x, y, z, nch, out):
    """Fill ``out[:nch]`` with the channels of ``vol`` at voxel coordinates ``(x, y, z)``
    (``i, j, k``); returns whether the point lies inside the grid."""
    K, J, I = vol.shape[0], vol.shape[1], vol.shape[2]
    for c in range(nch):
        out[c] = 0.0
    inside = 0.0 <= x <= I - 1 and 0.0 <= y <= J - 1 and 0.0 <= z <= K - 1
    if not (-1.0 < x < I and -1.0 < y < J and -1.0 < z < K):
        return inside  # every corner outside: all zero
    x0, y0, z0 = math.floor(x), math.floor(y), math.floor(z)
    fx, fy, fz = x - x0, y - y0, z - z0
    i0, j0, k0 = int(x0), int(y0), int(z0)
    for dk in range(2):
        k = k0 + dk
        if k < 0 or k >= K:
            continue
        wk = fz if dk else 1.0 - fz
        for dj in range(2):
            j = j0 + dj
            if j < 0 or j >= J:
                continue
            wjk = wk * (fy if dj else 1.0 - fy)
            for di in range(2):
                i = i0 + di
                if i < 0 or i >= I:
                    continue
                wgt = wjk * (fx if di else 1.0 - fx)
                if wgt == 0.0:
                    continue
                for c in range(nch):
                    out[c] += wgt * vol[k, j, i, c]
    return inside


@njit(cache=True, nogil=True)
def sample_points(vol, A, cols, rows, nch):
    """Channels ``(N, nch)`` and inside flags ``(N,)`` of ``vol`` at the level points.
    Points whose eight corners all lie on the grid (nearly all) take a flat-index path;
    the others :func:`_trilinear`."""
    K, J, I, C = vol.shape
    flat = vol.reshape(-1)
    n = cols.shape[0]
    vals = np.zeros((n, nch))
    inside = np.zeros(n, dtype=np.bool_)
    buf = np.zeros(nch)
    si, sj, sk = C, I * C, J * I * C
    xm, ym, zm = I - 1.0, J - 1.0, K - 1.0
    for p in range(n):
        c, r = cols[p], rows[p]
        x = A[0, 0] * c + A[0, 1] * r + A[0, 3]
        y = A[1, 0] * c + A[1, 1] * r + A[1, 3]
        z = A[2, 0] * c + A[2, 1] * r + A[2, 3]
        if (x >= 0.0) & (x < xm) & (y >= 0.0) & (y < ym) & (z >= 0.0) & (z < zm):
            inside[p] = True
            i0, j0, k0 = int(x), int(y), int(z)
            fx, fy, fz = x - i0, y - j0, z - k0
            gx = 1.0 - fx
            w00, w01 = (1.0 - fz) * (1.0 - fy), (1.0 - fz) * fy
            w10, w11 = fz * (1.0 - fy), fz * fy
            b = k0 * sk + j0 * sj + i0 * si
            for ch in range(nch):
                o = b + ch
                vals[p, ch] = (w00 * (gx * flat[o] + fx * flat[o + si])
                               + w01 * (gx * flat[o + sj] + fx * flat[o + sj + si])
                               + w10 * (gx * flat[o + sk] + fx * flat[o + sk + si])
                               + w11 * (gx * flat[o + sk + sj] + fx * flat[o + sk + sj + si]))
        else:
            inside[p] = _trilinear(vol, x, y, z, nch, buf)
            for ch in range(nch):
                vals[p, ch] = buf[ch]
    return vals, inside


@njit(cache=True, nogil=True, fastmath=True)
def sample_xyz2(vol, A, pts):
    """The two channels ``(2, N)`` (float32) of ``vol`` ``(K, J, I, 2)`` at 3D points
    ``pts`` ``(N, 3)`` mapped to voxel indices ``(i, j, k)`` by ``A`` ``(3, 4)``; mirrors
    ``grid_sample(align_corners=True, padding_mode="zeros")``. The DeepRS2V network's
    volume cube at inference (:class:`~.learned.geometry.VolumeSampler`); written for two
    channels (3x faster than :func:`sample_points`' general loop here, 0.6 ms for 32^3
    points)."""
    K, J, I = vol.shape[0], vol.shape[1], vol.shape[2]
    flat = vol.reshape(-1)
    n = pts.shape[0]
    vals = np.zeros((2, n), dtype=np.float32)
    buf = np.zeros(2)
    si, sj, sk = 2, I * 2, J * I * 2
    xm, ym, zm = I - 1.0, J - 1.0, K - 1.0
    for p in range(n):
        a, b, c = pts[p, 0], pts[p, 1], pts[p, 2]
        x = A[0, 0] * a + A[0, 1] * b + A[0, 2] * c + A[0, 3]
        y = A[1, 0] * a + A[1, 1] * b + A[1, 2] * c + A[1, 3]
        z = A[2, 0] * a + A[2, 1] * b + A[2, 2] * c + A[2, 3]
        if (x >= 0.0) & (x < xm) & (y >= 0.0) & (y < ym) & (z >= 0.0) & (z < zm):
            i0, j0, k0 = int(x), int(y), int(z)
            fx, fy, fz = x - i0, y - j0, z - k0
            gx = 1.0 - fx
            w00, w01 = (1.0 - fz) * (1.0 - fy), (1.0 - fz) * fy
            w10, w11 = fz * (1.0 - fy), fz * fy
            o = k0 * sk + j0 * sj + i0 * si
            vals[0, p] = (w00 * (gx * flat[o] + fx * flat[o + si])
                          + w01 * (gx * flat[o + sj] + fx * flat[o + sj + si])
                          + w10 * (gx * flat[o + sk] + fx * flat[o + sk + si])
                          + w11 * (gx * flat[o + sk + sj] + fx * flat[o + sk + sj + si]))
            o += 1
            vals[1, p] = (w00 * (gx * flat[o] + fx * flat[o + si])
                          + w01 * (gx * flat[o + sj] + fx * flat[o + sj + si])
                          + w10 * (gx * flat[o + sk] + fx * flat[o + sk + si])
                          + w11 * (gx * flat[o + sk + sj] + fx * flat[o + sk + sj + si]))
        elif (-1.0 < x < I) & (-1.0 < y < J) & (-1.0 < z < K):  # on the border
            _trilinear(vol, x, y, z, 2, buf)
            vals[0, p] = buf[0]
            vals[1, p] = buf[1]
    return vals


@njit(cache=True, nogil=True)
def box_sums(src, h, w, window):
    """Sums over ``window x window`` neighbourhoods with zero padding (``lncc._box``):
    ``src`` ``(h * w, C)`` (row-major pixels, channels last) -> same shape, float64.
    Pixel ``x`` sums ``x - r .. x + window - r - 1`` with ``r = window // 2`` on each
    axis (running sums; the channels of a pixel are updated together)."""
    C = src.shape[1]
    r = window // 2
    lo, hi = r, window - r - 1  # the window is x - lo .. x + hi
    tmp = np.zeros((h * w, C))
    out = np.zeros((h * w, C))
    acc = np.zeros(C)
    for y in range(h):  # along rows
        base = y * w
        for c in range(C):
            acc[c] = 0.0
        for x in range(min(hi, w - 1) + 1):
            for c in range(C):
                acc[c] += src[base + x, c]
        for x in range(w):
            add, sub = x + hi + 1 < w, x - lo >= 0
            for c in range(C):
                tmp[base + x, c] = acc[c]
                if add:
                    acc[c] += src[base + x + hi + 1, c]
                if sub:
                    acc[c] -= src[base + x - lo, c]
    for x in range(w):  # along columns
        for c in range(C):
            acc[c] = 0.0
        for y in range(min(hi, h - 1) + 1):
            for c in range(C):
                acc[c] += tmp[y * w + x, c]
        for y in range(h):
            add, sub = y + hi + 1 < h, y - lo >= 0
            for c in range(C):
                out[y * w + x, c] = acc[c]
                if add:
                    acc[c] += tmp[(y + hi + 1) * w + x, c]
                if sub:
                    acc[c] -= tmp[(y - lo) * w + x, c]
    return out


@njit(cache=True, nogil=True)
def local_normalise(x, m, h, w, window):
    """``lncc.local_normalise`` of one image ``x`` ``(h * w,)`` on the mask ``m`` (0 / 1
    floats); ``window <= 0``: the global masked mean and variance."""
    n = x.shape[0]
    out = np.zeros(n)
    if window <= 0:
        cnt, s1, s2 = 0.0, 0.0, 0.0
        for p in range(n):
            cnt += m[p]
            s1 += m[p] * x[p]
        cnt = max(cnt, 1.0)
        mu = s1 / cnt
        for p in range(n):
            s2 += m[p] * (x[p] - mu) ** 2
        inv = 1.0 / math.sqrt(s2 / cnt + _EPS)
        for p in range(n):
            out[p] = (x[p] - mu) * inv * m[p]
        return out
    src = np.empty((n, 3))
    for p in range(n):
        src[p, 0] = m[p]
        src[p, 1] = m[p] * x[p]
        src[p, 2] = m[p] * x[p] * x[p]
    sums = box_sums(src, h, w, window)
    for p in range(n):
        cnt = max(sums[p, 0], 1.0)
        mu = sums[p, 1] / cnt
        var = max(sums[p, 2] / cnt - mu * mu, 0.0)
        out[p] = (x[p] - mu) / math.sqrt(var + _EPS) * m[p]
    return out


@njit(cache=True, nogil=True)
def masked_lncc(a, b, m, h, w, window):
    """``lncc.masked_lncc`` of two images ``(h * w,)`` on the mask ``m``."""
    na = local_normalise(a, m, h, w, window)
    nb = local_normalise(b, m, h, w, window)
    num, saa, sbb = 0.0, 0.0, 0.0
    for p in range(a.shape[0]):
        num += na[p] * nb[p]
        saa += na[p] * na[p]
        sbb += nb[p] * nb[p]
    return num / max(math.sqrt(saa * sbb), 1e-12)


@njit(cache=True, nogil=True)
def slice_similarity(vol, A, cols, rows, fan, frame, h, w, window):
    """Masked LNCC of a downsampled frame ``(h * w,)`` and the volume as given (channels
    ``[intensity, data mask]``) on the overlap, and the fraction of the fan in the data
    (``SliceRegistrar._slice_c`` + ``_similarity_c``)."""
    vals, inside = sample_points(vol, A, cols, rows, 2)
    n = cols.shape[0]
    s = np.empty(n)
    m = np.zeros(n)
    n_fan, n_in = 0.0, 0.0
    for p in range(n):
        s[p] = vals[p, 0]
        if inside[p] and vals[p, 1] > 0.5:
            m[p] = fan[p]
        n_fan += fan[p]
        n_in += m[p]
    return masked_lncc(frame, s, m, h, w, window), n_in / max(n_fan, 1.0)


# ------------------------------------------------------------------------ small geometry
@njit(cache=True, nogil=True)
def _hat_into(T, row0, col0, a):
    """Write the cross-product matrix of ``a`` into ``T[row0:row0+3, col0:col0+3]``."""
    T[row0 + 0, col0 + 1] = -a[2]
    T[row0 + 0, col0 + 2] = a[1]
    T[row0 + 1, col0 + 0] = a[2]
    T[row0 + 1, col0 + 2] = -a[0]
    T[row0 + 2, col0 + 0] = -a[1]
    T[row0 + 2, col0 + 1] = a[0]


@njit(cache=True, nogil=True)
def step_basis(pose_c, centre_c, centre):
    """``SliceRegistrar._step_basis`` for one pose: ``T`` ``(6, 9)``."""
    T = np.zeros((6, 9))
    e = np.empty(3)
    for r in range(3):
        e[r] = (pose_c[r, 0] * centre_c[0] + pose_c[r, 1] * centre_c[1]
                + pose_c[r, 2] * centre_c[2] + pose_c[r, 3] * centre_c[3] - centre[r])
    _hat_into(T, 0, 0, pose_c[:3, 0].copy())
    _hat_into(T, 0, 3, pose_c[:3, 1].copy())
    _hat_into(T, 0, 6, e)
    for r in range(3):
        T[3 + r, 6 + r] = 1.0
    return T


@njit(cache=True, nogil=True)
def step_matrix(x, centre):
    """``lm_torch._step_matrix_np`` for one step ``x`` ``(6,)``: ``(4, 4)``."""
    t = math.sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2])
    if t < 1e-12:
        a, b = 1.0, 0.5
    else:
        a = math.sin(t) / t
        h = math.sin(0.5 * t) / (0.5 * t)
        b = 0.5 * h * h
    Km = np.zeros((3, 3))
    _hat_into(Km, 0, 0, x[:3].copy())
    R = np.eye(3) + a * Km + b * (Km @ Km)
    S = np.eye(4)
    S[:3, :3] = R
    for r in range(3):
        S[r, 3] = centre[r] - (R[r, 0] * centre[0] + R[r, 1] * centre[1]
                               + R[r, 2] * centre[2]) + x[3 + r]
    return S


@njit(cache=True, nogil=True)
def _solve6(A, b):
    """Solve ``A x = b`` (Gaussian elimination, partial pivoting); ``ok`` False if
    singular or not finite."""
    n = b.shape[0]
    M = A.copy()
    v = b.copy()
    for c in range(n):
        piv = c
        best = abs(M[c, c])
        for r in range(c + 1, n):
            if abs(M[r, c]) > best:
                best, piv = abs(M[r, c]), r
        if not best > 1e-300:
            return v, False
        if piv != c:
            for k in range(n):
                M[c, k], M[piv, k] = M[piv, k], M[c, k]
            v[c], v[piv] = v[piv], v[c]
        for r in range(c + 1, n):
            f = M[r, c] / M[c, c]
            for k in range(c, n):
                M[r, k] -= f * M[c, k]
            v[r] -= f * v[c]
    x = np.zeros(n)
    for c in range(n - 1, -1, -1):
        acc = v[c]
        for k in range(c + 1, n):
            acc -= M[c, k] * x[k]
        x[c] = acc / M[c, c]
    for c in range(n):
        if not np.isfinite(x[c]):
            return x, False
    return x, True


# ---------------------------------------------------------------------- level evaluation
@njit(cache=True, nogil=True)
def _evaluate_global(vol, A, cols, rows, feat, f, nf_sq, w2):
    """Global-NCC level (``SliceRegistrar._evaluate``, sparse points, ``lm_torch.
    _global_ncc``): cost and the Gram matrix ``(12, 12)`` of ``z = [feat (x) g, s, 1, f]``
    on the overlap."""
    vals, inside = sample_points(vol, A, cols, rows, 5)
    G = np.zeros((12, 12))
    z = np.empty(12)
    for p in range(cols.shape[0]):
        if not (inside[p] and vals[p, 1] > 0.5):
            continue
        for k in range(3):
            for j in range(3):
                z[3 * k + j] = feat[k, p] * vals[p, 2 + j]
        z[9] = vals[p, 0]
        z[10] = 1.0
        z[11] = f[p]
        for a in range(12):
            za = z[a]
            for b in range(a, 12):
                G[a, b] += za * z[b]
    for a in range(12):
        for b in range(a):
            G[a, b] = G[b, a]
    c = max(G[10, 10], 1.0)
    mean_s = G[9, 10] / c
    var_s = max(G[9, 9] / c - mean_s * mean_s, 0.0)
    inv_sd = 1.0 / math.sqrt(var_s + _EPS)
    s_dnf = G[9, 11] - mean_s * G[11, 10]
    cost = 0.5 * w2 * (nf_sq - 2.0 * inv_sd * s_dnf + c * var_s * inv_sd * inv_sd)
    return cost, G


@njit(cache=True, nogil=True)
def _normal_equations_global(G, T, w2):
    """``lm_torch._global_ncc_normal_equations`` for one item (``nf`` normalised on the
    fan): ``J^T J`` ``(6, 6)``, ``J^T r`` ``(6,)``."""
    c = max(G[10, 10], 1.0)
    mean_s = G[9, 10] / c
    var_s = max(G[9, 9] / c - mean_s * mean_s, 0.0)
    inv_sd = 1.0 / math.sqrt(var_s + _EPS)
    s_nf = G[11, 10]
    s_dnf = G[9, 11] - mean_s * s_nf
    Ta = np.zeros((9, 12))
    Ta[:6, :9] = T
    for r in range(3):
        Ta[6 + r, 9 + r] = 1.0
    W = Ta @ G @ np.ascontiguousarray(Ta.T)
    a = 0.5 * inv_sd * inv_sd
    kk = (a * a * var_s - a) * c
    dmu = W[:6, 7] / c
    dvar = 2.0 * (W[:6, 6] - mean_s * W[:6, 7]) / c
    JtJ = np.empty((6, 6))
    for p in range(6):
        for q in range(6):
            JtJ[p, q] = w2 * inv_sd * inv_sd * (W[p, q] - c * dmu[p] * dmu[q]
                                                + kk * dvar[p] * dvar[q])
    Jtr = np.empty(6)
    for p in range(6):
        s_vnf = W[p, 8] - dmu[p] * s_nf - a * s_dnf * dvar[p]
        s_vd = dvar[p] * c * (0.5 - a * var_s)
        Jtr[p] = -(w2 * inv_sd) * (s_vnf - inv_sd * s_vd)
    return JtJ, Jtr


@njit(cache=True, nogil=True)
def _evaluate_lncc(vol, A, cols, rows, fan, nf, weight, h, w, window, lost_weight=1.0):
    """Masked-LNCC level (``SliceRegistrar._evaluate``, dense grid): cost and the local
    statistics the Jacobian needs. A fan pixel off the volume's data keeps the residual
    ``lost_weight * nf`` (see :attr:`config.RegistrationConfig.lost_overlap_weight`)."""
    n = cols.shape[0]
    vals, inside = sample_points(vol, A, cols, rows, 5)
    m = np.zeros(n)
    s = np.empty(n)
    src = np.empty((n, 3))
    for p in range(n):
        s[p] = vals[p, 0]
        if inside[p] and vals[p, 1] > 0.5:
            m[p] = fan[p]
        src[p, 0] = m[p]
        src[p, 1] = m[p] * s[p]
        src[p, 2] = m[p] * s[p] * s[p]
    sums = box_sums(src, h, w, window)
    count = np.empty(n)
    mu = np.empty(n)
    d = np.empty(n)
    inv_sd = np.empty(n)
    r = np.empty(n)
    cost = 0.0
    for p in range(n):
        count[p] = max(sums[p, 0], 1.0)
        mu[p] = sums[p, 1] / count[p]
        var = max(sums[p, 2] / count[p] - mu[p] * mu[p], 0.0)
        inv_sd[p] = 1.0 / math.sqrt(var + _EPS)
        d[p] = s[p] - mu[p]
        if m[p] > 0.0:
            r[p] = (nf[p] - d[p] * inv_sd[p] * m[p]) * weight
        else:
            r[p] = lost_weight * nf[p] * weight
        cost += 0.5 * r[p] * r[p]
    return cost, vals, s, m, r, count, mu, d, inv_sd


@njit(cache=True, nogil=True)
def _normal_equations_lncc(vals, s, m, r, count, mu, d, inv_sd, feat, T, weight, h, w,
                           window):
    """``SliceRegistrar._normal_equations`` of the LNCC level for one item:
    ``J = c1 js - c2 box(m js) - c3 box(m s js)``."""
    n = s.shape[0]
    js = np.zeros((n, 6))
    src = np.empty((n, 12))
    y = np.empty(9)
    for p in range(n):
        for k in range(3):
            for j in range(3):
                y[3 * k + j] = feat[k, p] * vals[p, 2 + j]
        for q in range(6):
            acc = 0.0
            for t in range(9):
                acc += T[q, t] * y[t]
            js[p, q] = acc
            src[p, q] = acc * m[p]
            src[p, 6 + q] = acc * m[p] * s[p]
    boxed = box_sums(src, h, w, window)
    JtJ = np.zeros((6, 6))
    Jtr = np.zeros(6)
    Jp = np.empty(6)
    for p in range(n):
        if m[p] == 0.0:
            continue  # c1 = c2 = c3 = 0 off the mask: J is zero there
        c1 = -weight * inv_sd[p] * m[p]
        k = inv_sd[p] * inv_sd[p] * d[p]
        c2 = c1 * (1.0 - k * mu[p]) / count[p]
        c3 = c1 * k / count[p]
        for q in range(6):
            Jp[q] = js[p, q] * c1 - boxed[p, q] * c2 - boxed[p, 6 + q] * c3
        for q in range(6):
            Jtr[q] += Jp[q] * r[p]
            for t in range(q, 6):
                JtJ[q, t] += Jp[q] * Jp[t]
    for q in range(6):
        for t in range(q):
            JtJ[q, t] = JtJ[t, q]
    return JtJ, Jtr


# ------------------------------------------------------------------------- one LM level
@njit(cache=True, nogil=True)
def refine_level(vol, ref_to_ijk, start, corr0, cols, rows, feat, fan, frame, dense, h, w,
                 window, rotations, max_iter, tol_cost, tol_step, lambda_init,
                 max_rejections, centre_c, lost_weight=1.0):
    """``SliceRegistrar._refine_level`` for one item: Levenberg-Marquardt on the rigid
    correction (composed on the left, rotations about the fan centre).

    ``start`` ``(4, 4)`` cropped-frame pose, ``corr0`` ``(4, 4)`` correction to start
    from, ``frame`` ``(N,)`` the downsampled frame at the level points, ``fan`` ``(N,)``.
    Returns ``(correction, cost, history (iterations + 1,), iterations)``.
    """
    n = cols.shape[0]
    n_fan = 0.0
    for p in range(n):
        n_fan += fan[p]
    n_fan = max(n_fan, 1.0)
    # The frame's side (SliceRegistrar._level_frame, penalise_lost_overlap=True).
    nf_sq, w2, weight = 0.0, 1.0 / n_fan, 1.0 / math.sqrt(n_fan)
    if dense:
        f = local_normalise(frame, fan, h, w, window)
    else:  # normalised once on the whole fan (the sparse points are the fan)
        mu = frame.mean()
        var = ((frame - mu) ** 2).mean()
        f = (frame - mu) / math.sqrt(var + _EPS)
        nf_sq = (f * f).sum()
    corr = corr0.copy()
    pose = corr @ start
    centre = np.empty(3)
    for r in range(3):
        centre[r] = (pose[r, 0] * centre_c[0] + pose[r, 1] * centre_c[1]
                     + pose[r, 2] * centre_c[2] + pose[r, 3] * centre_c[3])

    # Arrays of the last evaluation (both kinds typed here; one kind is used).
    G = np.zeros((12, 12))
    vals = np.zeros((1, 5))
    s = m = res = count = mu_l = d = inv_sd = np.zeros(1)
    cost = 0.0
    JtJ = np.zeros((6, 6))
    Jtr = np.zeros(6)
    history = np.empty(max_iter + 1)
    n_hist = 0
    lam = lambda_init
    rejected = 0
    dx = np.zeros(6)
    corr_try = corr
    pose_t = pose
    it = 0
    better = True
    for it in range(0, max_iter + 1):
        if it > 0:  # a Levenberg-Marquardt step from the normal equations
            if not rotations:  # translation only: the rotation steps solve to 0
                JtJ[:3, :] = 0.0
                JtJ[:, :3] = 0.0
                for q in range(3):
                    JtJ[q, q] = 1.0
                Jtr[:3] = 0.0
            dmax = 0.0
            for q in range(6):
                dmax = max(dmax, JtJ[q, q])
            Am = JtJ.copy()
            damp = np.empty(6)
            for q in range(6):
                damp[q] = lam * max(JtJ[q, q], 1e-12 * dmax + 1e-30)
                Am[q, q] += damp[q]
            sol, ok = _solve6(Am, Jtr)
            if not ok:
                break
            predicted = 0.0
            for q in range(6):
                dx[q] = -sol[q]
                predicted += 0.5 * dx[q] * (damp[q] * dx[q] - Jtr[q])
            if predicted <= 0.25 * tol_cost * cost:
                break  # the linear model promises nothing more
            corr_try = step_matrix(dx, centre) @ corr
            pose_t = corr_try @ start
        A = ref_to_ijk @ pose_t
        if dense:
            cost_t, vals, s, m, res, count, mu_l, d, inv_sd = _evaluate_lncc(
                vol, A, cols, rows, fan, f, weight, h, w, window, lost_weight)
        else:
            cost_t, G = _evaluate_global(vol, A, cols, rows, feat, f, nf_sq, w2)
        if it == 0:
            cost = cost_t
            history[0] = cost
            n_hist = 1
        else:
            better = cost_t < cost
            small_decrease = better and (cost - cost_t <= tol_cost * cost)
            step2 = 0.0
            for q in range(6):
                sc = 100.0 if q < 3 else 1.0
                step2 += (dx[q] * sc) ** 2
            small_step = step2 <= tol_step * tol_step
            if better:
                corr, cost = corr_try, cost_t
                lam *= 0.3
                rejected = 0
            else:
                lam *= 4.0
                rejected += 1
            history[n_hist] = cost
            n_hist += 1
            if small_decrease or small_step or lam >= 1e8 or rejected >= max_rejections \
                    or it == max_iter:
                break
        if better:  # normal equations at the (new) accepted pose
            T = step_basis(pose_t, centre_c, centre)
            if dense:
                JtJ, Jtr = _normal_equations_lncc(vals, s, m, res, count, mu_l, d, inv_sd,
                                                  feat, T, weight, h, w, window)
            else:
                JtJ, Jtr = _normal_equations_global(G, T, w2)
    return corr, cost, history[:n_hist].copy(), it
