"""Rigid pose algebra in torch: 4x4 matrices, RAS/LPS, SE(3) exp/log, quaternions, checks.

Where it sits in the flow: the layer every pose computation of the project goes through
(via :mod:`.poses`, which re-exports it): inputs become tensors of one dtype and device
with checked shapes (:func:`as_tensor`, :func:`_prepare`), poses are built, inverted,
composed and applied, converted between LPS and RAS, moved along twists
(:func:`so3_exp`, :func:`se3_exp`) and back (:func:`so3_log`, :func:`se3_log`, through a
quaternion), and a public entry point rejects non-rigid input (:func:`check_rigid`).
:mod:`.poses_rotations` (Euler angles, 6D) and :mod:`.poses_distances` (SO(4), geodesic
and twist distances) build on it. Conventions and references: see :mod:`.poses`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import GeometryError, InputError

#: ``p_ras = RAS_FROM_LPS @ p_lps`` (and, as it is its own inverse, the other way round).
#: float64, CPU; do not modify it in place.
RAS_FROM_LPS = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


# ----------------------------------------------------------------------------------------
# Conversion and shape helpers
# ----------------------------------------------------------------------------------------

def as_tensor(x, dtype: Optional[torch.dtype] = None, device=None,
              name: str = "input") -> torch.Tensor:
    """Return ``x`` (tensor, numpy array, list, number) as a floating-point torch tensor.

    A floating-point tensor is returned as it is (no copy) unless ``dtype``/``device`` ask
    for a conversion. Other inputs are copied. Anything that is not floating point
    (integers, booleans) becomes float64 unless ``dtype`` says otherwise. Raises
    :class:`InputError` (message starting with ``name``) for data that is not numeric.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged nested lists and the like
            raise InputError(f"{name}: cannot be converted to a numeric array ({exc})") from None
        numeric = np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        if arr.dtype == object or not numeric:
            raise InputError(f"{name}: expected numbers, got an array of dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise InputError(f"{name}: expected real numbers, got complex values")
        t = torch.tensor(np.ascontiguousarray(arr))
    if t.is_complex():
        raise InputError(f"{name}: expected real numbers, got complex values")
    if dtype is None and not t.is_floating_point():
        dtype = torch.float64
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype if dtype is not None else t.dtype,
                 device=device if device is not None else t.device)
    return t


def _prepare(items: Sequence[Tuple[object, str, Tuple[int, ...], int]]):
    """Convert several inputs to tensors on one device and one floating dtype.

    ``items`` holds ``(value, name, trailing_shape, min_ndim)`` tuples; the last dimensions
    of each value must equal ``trailing_shape`` and it must have at least ``min_ndim``
    dimensions. The device is that of the first torch tensor among the inputs.
    """
    tensors = [as_tensor(v, name=n) for v, n, _, _ in items]
    device = next((v.device for (v, _, _, _) in items if isinstance(v, torch.Tensor)),
                  tensors[0].device)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    out = []
    for t, (_, name, trailing, min_ndim) in zip(tensors, items):
        k = len(trailing)
        if t.dim() < max(k, min_ndim) or tuple(t.shape[t.dim() - k:]) != tuple(trailing):
            dims = ["N"] * (min_ndim - k) + [str(s) for s in trailing]
            want = "(..., " + ", ".join(dims) + ")"
            raise InputError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
        out.append(t.to(dtype=dtype, device=device))
    return out


def _broadcast_batch(a: torch.Tensor, a_dims: int, b: torch.Tensor, b_dims: int,
                     a_name: str, b_name: str) -> None:
    """Raise InputError unless the leading dims of ``a`` and ``b`` broadcast."""
    sa, sb = tuple(a.shape[:a.dim() - a_dims]), tuple(b.shape[:b.dim() - b_dims])
    try:
        # numpy's rule is torch's; torch.broadcast_shapes imports sympy on first use (~1 s)
        np.broadcast_shapes(sa, sb)
    except ValueError:
        raise InputError(f"{b_name}: leading dimensions {sb} do not broadcast with "
                         f"{a_name}'s {sa}") from None


def _small_angle(dtype: torch.dtype) -> float:
    """Below this angle (rad) the coefficient functions use their Taylor series.

    Chosen so that the 4-term series are exact to the dtype's precision there, while the
    closed forms above it lose little to cancellation (also in their gradients).
    """
    return 0.05 if dtype == torch.float64 else 0.2


def _safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm along ``dim`` whose gradient is 0 (not NaN) at the zero vector."""
    sq = (x * x).sum(dim)
    nonzero = sq > torch.finfo(x.dtype).tiny
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def _normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / |x|`` with the norm clamped away from 0."""
    n = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    return x / n.clamp_min(torch.finfo(x.dtype).eps)


def _rotation_part(M: torch.Tensor, name: str) -> torch.Tensor:
    """``(..., 3, 3)`` rotation of a ``(..., 3, 3)`` rotation or ``(..., 4, 4)`` pose."""
    if M.dim() >= 2 and tuple(M.shape[-2:]) == (4, 4):
        return M[..., :3, :3]
    if M.dim() >= 2 and tuple(M.shape[-2:]) == (3, 3):
        return M
    raise InputError(f"{name}: expected shape (..., 3, 3) or (..., 4, 4), got {tuple(M.shape)}")


# ----------------------------------------------------------------------------------------
# Basic pose algebra
# ----------------------------------------------------------------------------------------

def make_pose(R, t) -> torch.Tensor:
    """Pose ``(..., 4, 4)`` from rotation ``R (..., 3, 3)`` and translation ``t (..., 3)``.

    Leading dimensions of ``R`` and ``t`` broadcast. ``R`` is used as it is (no check).
    """
    R, t = _prepare([(R, "R", (3, 3), 2), (t, "t", (3,), 1)])
    _broadcast_batch(R, 2, t, 1, "R", "t")
    batch = tuple(np.broadcast_shapes(tuple(R.shape[:-2]), tuple(t.shape[:-1])))
    top = torch.cat([R.expand(*batch, 3, 3), t.expand(*batch, 3).unsqueeze(-1)], dim=-1)
    bottom = torch.zeros(*batch, 1, 4, dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def invert_pose(T) -> torch.Tensor:
    """Inverse of rigid poses ``(..., 4, 4)`` in closed form: ``[[R^T, -R^T t], [0, 1]]``.

    Only valid for rigid transforms (use ``torch.linalg.inv`` for general affines):
    ``invert_pose(a_to_b)`` is ``b_to_a``.
    """
    (T,) = _prepare([(T, "T", (4, 4), 2)])
    Rt = T[..., :3, :3].transpose(-1, -2)
    t = -(Rt @ T[..., :3, 3:4]).squeeze(-1)
    return make_pose(Rt, t)


def compose(*Ts) -> torch.Tensor:
    """Matrix product ``Ts[0] @ Ts[1] @ ... @ Ts[-1]`` of poses ``(..., 4, 4)``.

    As transforms map column vectors, the LAST one is applied first:
    ``compose(b_to_c, a_to_b) == a_to_c``. Leading dimensions broadcast.
    """
    if len(Ts) == 0:
        raise InputError("compose: expected at least one pose, got none")
    mats = _prepare([(T, f"Ts[{i}]", (4, 4), 2) for i, T in enumerate(Ts)])
    out = mats[0]
    for i, M in enumerate(mats[1:], start=1):
        _broadcast_batch(out, 2, M, 2, "Ts[0..%d]" % (i - 1), f"Ts[{i}]")
        out = out @ M
    return out


def apply_pose(T, points) -> torch.Tensor:
    """Apply poses ``T (..., 4, 4)`` to points ``(..., N, 3)``; returns ``(..., N, 3)``.

    ``T``'s leading dimensions broadcast against ``points``' (without ``N``). Works for any
    affine matrix whose last row is (0, 0, 0, 1).
    """
    T, points = _prepare([(T, "T", (4, 4), 2), (points, "points", (3,), 2)])
    _broadcast_batch(T, 2, points, 2, "T", "points")
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


# ----------------------------------------------------------------------------------------
# RAS <-> LPS
# ----------------------------------------------------------------------------------------

def _flip_xy_conjugate(T) -> torch.Tensor:
    (T,) = _prepare([(T, "T", (4, 4), 2)])
    s = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=T.dtype, device=T.device)
    # F @ T @ F with F = diag(s) is T[i, j] * s[i] * s[j].
    return T * (s[:, None] * s[None, :])


def lps_to_ras_matrix(T_lps) -> torch.Tensor:
    """Express a transform of the LPS frame in the RAS frame: ``F @ T_lps @ F``.

    ``T_lps (..., 4, 4)`` maps LPS points to LPS points (e.g. the matrix of an ITK/
    SimpleITK transform, which lives in LPS); the result maps the same physical points
    given in RAS (Slicer). ``F = RAS_FROM_LPS`` is its own inverse. This is a change of
    frame on BOTH sides; for a matrix leaving a non-patient frame (``ijk_to_lps``) use
    ``RAS_FROM_LPS @ ijk_to_lps`` instead. ITK's "fixed to moving" resampling direction
    is a separate matter, handled where transform files are read.
    """
    return _flip_xy_conjugate(T_lps)


def ras_to_lps_matrix(T_ras) -> torch.Tensor:
    """Express a transform of the RAS frame in the LPS frame: ``F @ T_ras @ F``.

    The inverse of :func:`lps_to_ras_matrix` (the same formula, since ``F @ F = I``).
    """
    return _flip_xy_conjugate(T_ras)


def _flip_xy_points(points, name: str) -> torch.Tensor:
    (p,) = _prepare([(points, name, (3,), 1)])
    s = torch.tensor([-1.0, -1.0, 1.0], dtype=p.dtype, device=p.device)
    return p * s


def lps_to_ras_points(points_lps) -> torch.Tensor:
    """LPS points ``(..., 3)`` to RAS: negate x and y."""
    return _flip_xy_points(points_lps, "points_lps")


def ras_to_lps_points(points_ras) -> torch.Tensor:
    """RAS points ``(..., 3)`` to LPS: negate x and y."""
    return _flip_xy_points(points_ras, "points_ras")


# ----------------------------------------------------------------------------------------
# hat / vee and the exponential maps
# ----------------------------------------------------------------------------------------

def _hat3(w: torch.Tensor) -> torch.Tensor:
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*w.shape[:-1], 3, 3)


def hat(x) -> torch.Tensor:
    """Skew matrix of a vector.

    ``(..., 3) -> (..., 3, 3)``: ``hat(w) @ p == cross(w, p)``.
    ``(..., 6) -> (..., 4, 4)``: the twist matrix ``[[hat(omega), v], [0, 0]]`` of
    ``xi = (omega, v)``, whose matrix exponential is :func:`se3_exp`.
    """
    x = as_tensor(x, name="x")
    if x.dim() >= 1 and x.shape[-1] == 3:
        return _hat3(x)
    if x.dim() >= 1 and x.shape[-1] == 6:
        top = torch.cat([_hat3(x[..., :3]), x[..., 3:, None]], dim=-1)
        return torch.cat([top, torch.zeros_like(top[..., :1, :])], dim=-2)
    raise InputError(f"x: expected shape (..., 3) or (..., 6), got {tuple(x.shape)}")


def vee(M) -> torch.Tensor:
    """Inverse of :func:`hat`: ``(..., 3, 3) -> (..., 3)``, ``(..., 4, 4) -> (..., 6)``.

    Uses the antisymmetric part of the 3x3 block, ``(M - M^T) / 2``, so that it is also
    the projection of a nearly skew matrix.
    """
    M = as_tensor(M, name="M")
    if M.dim() >= 2 and tuple(M.shape[-2:]) in ((3, 3), (4, 4)):
        w = 0.5 * torch.stack([M[..., 2, 1] - M[..., 1, 2],
                               M[..., 0, 2] - M[..., 2, 0],
                               M[..., 1, 0] - M[..., 0, 1]], dim=-1)
        if M.shape[-1] == 3:
            return w
        return torch.cat([w, M[..., :3, 3]], dim=-1)
    raise InputError(f"M: expected shape (..., 3, 3) or (..., 4, 4), got {tuple(M.shape)}")


def _coefficients(theta2: torch.Tensor, dtype: torch.dtype):
    """``A = sin t / t``, ``B = (1 - cos t) / t^2``, ``C = (t - sin t) / t^3`` of ``t^2``.

    Taylor series below :func:`_small_angle`, closed forms above; the closed-form branch
    sees a dummy angle where the series is used, so no NaN/inf reaches the gradients.
    """
    small = theta2 < _small_angle(dtype) ** 2
    t2 = theta2
    A_s = 1 - t2 / 6 * (1 - t2 / 20 * (1 - t2 / 42))
    B_s = 0.5 * (1 - t2 / 12 * (1 - t2 / 30 * (1 - t2 / 56)))
    C_s = (1 - t2 / 20 * (1 - t2 / 42 * (1 - t2 / 72))) / 6
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    s_half = torch.sin(0.5 * t)
    A_l = torch.sin(t) / t
    B_l = 2 * s_half * s_half / (t * t)  # (1 - cos t) / t^2 without cancellation
    C_l = (t - torch.sin(t)) / (t * t * t)
    return (torch.where(small, A_s, A_l), torch.where(small, B_s, B_l),
            torch.where(small, C_s, C_l))


def so3_exp(omega) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from rotation vectors ``omega (..., 3)`` (rad).

    Rodrigues' formula ``R = I + A W + B W^2`` with ``W = hat(omega)``.
    """
    (omega,) = _prepare([(omega, "omega", (3,), 1)])
    A, B, _ = _coefficients((omega * omega).sum(-1), omega.dtype)
    W = _hat3(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + A[..., None, None] * W + B[..., None, None] * (W @ W)


def axis_angle_to_matrix(axis_angle) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from rotation vectors ``axis * angle (..., 3)``.

    The same as :func:`so3_exp`.
    """
    (axis_angle,) = _prepare([(axis_angle, "axis_angle", (3,), 1)])
    return so3_exp(axis_angle)


def se3_exp(xi) -> torch.Tensor:
    """Poses ``(..., 4, 4)`` from twists ``xi = (omega, v) (..., 6)``, rotation first.

    The exponential of the twist matrix ``hat(xi)``: ``R = so3_exp(omega)``,
    ``t = V v`` with ``V = I + B W + C W^2`` (``W = hat(omega)``), so that
    ``se3_exp(xi) == expm(hat(xi))``.
    """
    (xi,) = _prepare([(xi, "xi", (6,), 1)])
    omega, v = xi[..., :3], xi[..., 3:]
    A, B, C = _coefficients((omega * omega).sum(-1), xi.dtype)
    W = _hat3(omega)
    W2 = W @ W
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + A[..., None, None] * W + B[..., None, None] * W2
    V = eye + B[..., None, None] * W + C[..., None, None] * W2
    t = (V @ v.unsqueeze(-1)).squeeze(-1)
    return make_pose(R, t)


# ----------------------------------------------------------------------------------------
# Quaternions and logarithms
# ----------------------------------------------------------------------------------------

def quaternion_to_matrix(q) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(w, x, y, z) (..., 4)``.

    ``q`` need not be unit: it is normalised (a zero quaternion gives NaN).
    ``q`` and ``-q`` give the same rotation.
    """
    (q,) = _prepare([(q, "q", (4,), 1)])
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    R = torch.stack([
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ], dim=-1)
    return R.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(R) -> torch.Tensor:
    """Unit quaternions ``(w, x, y, z) (..., 4)`` with ``w >= 0`` from rotations ``(..., 3, 3)``.

    Shepperd's method: of the four algebraically equivalent formulas, the one dividing by
    the largest of ``|w|, |x|, |y|, |z|`` (always >= 1/2) is used, which keeps it accurate
    for every rotation including angles near pi. At exactly pi (``w = 0``) the sign of the
    vector part is arbitrary, as ``q`` and ``-q`` are then both canonical.
    """
    (R,) = _prepare([(R, "R", (3, 3), 2)])
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 w^2, 4 x^2, 4 y^2, 4 z^2 (for an exact rotation); they sum to 4, so max >= 1.
    sq4 = torch.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22,
                       1 - r00 + r11 - r22, 1 - r00 - r11 + r22], dim=-1)
    # Clamping at 0.25 never touches the chosen candidate (>= 1) and keeps the others'
    # sqrt and divisions finite, so their (discarded) gradients are not NaN.
    two_abs = torch.sqrt(sq4.clamp_min(0.25))  # 2 |q_i|
    cands = torch.stack([
        torch.stack([sq4[..., 0], r21 - r12, r02 - r20, r10 - r01], dim=-1),
        torch.stack([r21 - r12, sq4[..., 1], r10 + r01, r02 + r20], dim=-1),
        torch.stack([r02 - r20, r10 + r01, sq4[..., 2], r12 + r21], dim=-1),
        torch.stack([r10 - r01, r20 + r02, r21 + r12, sq4[..., 3]], dim=-1),
    ], dim=-2) / (2 * two_abs[..., :, None])  # candidate i divided by 4 |q_i|
    best = sq4.argmax(dim=-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)
    return _normalize(q)


def _quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``(..., 3)`` of unit quaternions with ``w >= 0``, angle in [0, pi]."""
    w = q[..., 0]
    qv = q[..., 1:]
    n2 = (qv * qv).sum(-1)
    # angle = 2 atan2(n, w); omega = qv * angle / n.
    thr = _small_angle(q.dtype)
    small = n2 < (thr * w) ** 2  # r = n / w < thr (w > 0 there)
    w_s = torch.where(small, w, torch.ones_like(w))
    r2 = n2 / (w_s * w_s)
    # atan(r) / r = 1 - r^2/3 + r^4/5 - ...
    series = 1 - r2 * (1 / 3 - r2 * (1 / 5 - r2 * (1 / 7 - r2 * (1 / 9 - r2 / 11))))
    factor_s = 2 * series / w_s
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    factor_l = 2 * torch.atan2(n, w) / n
    factor = torch.where(small, factor_s, factor_l)
    return qv * factor[..., None]


def so3_log(R) -> torch.Tensor:
    """Rotation vectors ``(..., 3)`` (axis * angle, angle in [0, pi]) of rotations ``(..., 3, 3)``.

    Computed through :func:`matrix_to_quaternion`, hence accurate near 0 and near pi.
    """
    (R,) = _prepare([(R, "R", (3, 3), 2)])
    return _quaternion_to_axis_angle(matrix_to_quaternion(R))


def matrix_to_axis_angle(R) -> torch.Tensor:
    """Rotation vectors ``axis * angle (..., 3)`` of rotations ``(..., 3, 3)``.

    The same as :func:`so3_log`.
    """
    (R,) = _prepare([(R, "R", (3, 3), 2)])
    return so3_log(R)


def se3_log(T) -> torch.Tensor:
    """Twists ``xi = (omega, v) (..., 6)`` of rigid poses ``(..., 4, 4)``.

    The inverse of :func:`se3_exp`.

    ``omega = so3_log(R)`` and ``v = V^-1 t`` with
    ``V^-1 = I - W / 2 + D W^2``, ``D = (1 - (theta/2) cot(theta/2)) / theta^2``.
    """
    (T,) = _prepare([(T, "T", (4, 4), 2)])
    omega = so3_log(T[..., :3, :3])
    theta2 = (omega * omega).sum(-1)
    small = theta2 < _small_angle(T.dtype) ** 2
    t2 = theta2
    D_s = (1 + t2 / 60 * (1 + t2 / 42 * (1 + t2 / 40))) / 12
    th = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    half = 0.5 * th
    D_l = (1 - half * torch.cos(half) / torch.sin(half)) / (th * th)
    D = torch.where(small, D_s, D_l)
    W = _hat3(omega)
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    V_inv = eye - 0.5 * W + D[..., None, None] * (W @ W)
    v = (V_inv @ T[..., :3, 3:4]).squeeze(-1)
    return torch.cat([omega, v], dim=-1)


# ----------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------

def check_rigid(T, name: str, atol: float = 1e-4) -> torch.Tensor:
    """Check that ``T`` is a rigid 4x4 transform (or a batch ``(..., 4, 4)`` of them).

    Raises :class:`GeometryError` with a message starting with ``name`` when ``T`` is not
    4x4, contains NaN/inf, has a last row other than (0, 0, 0, 1), a reflection
    (``det(R) < 0``) or scale/shear (``|R^T R - I| > atol``). Returns ``T`` as a float64
    tensor (same device; a numpy or list input is copied, ``T`` itself is never modified).
    """
    try:
        t = as_tensor(T, name=name)
    except InputError as exc:
        raise GeometryError(str(exc)) from None
    if t.dim() < 2 or tuple(t.shape[-2:]) != (4, 4):
        raise GeometryError(f"{name}: expected a 4x4 matrix, got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    m = t.detach().reshape(-1, 4, 4)
    batched = t.dim() > 2

    def _loc(idx: int) -> str:
        if not batched:
            return ""
        index = np.unravel_index(idx, tuple(t.shape[:-2]))
        return f" (at index {tuple(int(i) for i in index)})"

    finite = torch.isfinite(m).flatten(1).all(-1)
    if not bool(finite.all()):
        raise GeometryError(f"{name}: contains NaN or infinite values"
                            f"{_loc(int((~finite).nonzero()[0]))}")
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype, device=m.device)
    row_err = (m[:, 3, :] - expected).abs().amax(-1)
    if bool((row_err > atol).any()):
        bad = int((row_err > atol).nonzero()[0])
        row = ", ".join(f"{float(v):.6g}" for v in m[bad, 3, :])
        raise GeometryError(f"{name}: last row must be (0, 0, 0, 1), got ({row}){_loc(bad)}")
    R = m[:, :3, :3]
    det = torch.linalg.det(R)
    if bool((det < 0).any()):
        bad = int((det < 0).nonzero()[0])
        raise GeometryError(f"{name}: rotation part has determinant {float(det[bad]):.4g} < 0, "
                            f"a reflection, not a rigid transform{_loc(bad)}")
    eye = torch.eye(3, dtype=m.dtype, device=m.device)
    orth_err = (R.transpose(-1, -2) @ R - eye).abs().flatten(1).amax(-1)
    if bool((orth_err > atol).any()):
        bad = int((orth_err > atol).nonzero()[0])
        raise GeometryError(f"{name}: rotation part is not orthonormal (max |R^T R - I| = "
                            f"{float(orth_err[bad]):.3g} > {atol:g}), the transform contains "
                            f"scale or shear{_loc(bad)}")
    return t
