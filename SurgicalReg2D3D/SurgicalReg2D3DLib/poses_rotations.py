"""Rotation parametrisations in torch: Euler angles (Tait-Bryan) and the 6D representation.

Where they sit in the flow: conversions at the edges of the pose algebra
(:mod:`.poses_algebra`): Euler angles for people and files (``convention="ZYX"``
intrinsic, lower case extrinsic), the continuous 6D representation (first two columns of
``R``, Gram-Schmidt) for networks that regress rotations. Axis-angle and quaternions live
with the exponential and logarithm in :mod:`.poses_algebra`. Re-exported by
:mod:`.poses`.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .errors import InputError
from .poses_algebra import _normalize, _prepare, _safe_norm

# ----------------------------------------------------------------------------------------
# Euler angles
# ----------------------------------------------------------------------------------------

_AXES = {"X": 0, "Y": 1, "Z": 2}


def _elementary(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Rotation ``(..., 3, 3)`` by ``angle (...)`` about coordinate axis 0, 1 or 2."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, one = torch.zeros_like(angle), torch.ones_like(angle)
    if axis == 0:
        m = [one, o, o, o, c, -s, o, s, c]
    elif axis == 1:
        m = [c, o, s, o, one, o, -s, o, c]
    else:
        m = [c, -s, o, s, c, o, o, o, one]
    return torch.stack(m, dim=-1).reshape(*angle.shape, 3, 3)


def _parse_convention(convention: str) -> Tuple[Tuple[int, int, int], bool]:
    """Axes (intrinsic order) of a Tait-Bryan convention and whether it was extrinsic."""
    if not isinstance(convention, str) or len(convention) != 3 or not (
            convention.isupper() or convention.islower()):
        raise InputError(f"convention: expected three axis letters such as 'ZYX' (intrinsic) "
                         f"or 'xyz' (extrinsic), got {convention!r}")
    extrinsic = convention.islower()
    letters = convention.upper()
    if set(letters) != {"X", "Y", "Z"}:
        raise InputError(f"convention: only Tait-Bryan conventions with three different "
                         f"axes are supported (e.g. 'ZYX', 'XYZ'), got {convention!r}")
    axes = tuple(_AXES[c] for c in letters)
    if extrinsic:  # extrinsic a-b-c == intrinsic c-b-a with the angles reversed
        axes = axes[::-1]
    return axes, extrinsic


def euler_to_matrix(angles, convention: str = "ZYX") -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from Euler angles ``(..., 3)`` in radians.

    ``convention`` in upper case is INTRINSIC (rotations about the moving axes, as in
    ``scipy.spatial.transform.Rotation.from_euler("ZYX", ...)``): for ``"ZYX"`` and angles
    ``(a, b, c)``, ``R = Rz(a) @ Ry(b) @ Rx(c)`` (yaw, pitch, roll); for ``"XYZ"``,
    ``R = Rx(a) @ Ry(b) @ Rz(c)``. Lower case (``"xyz"``) is extrinsic (fixed axes):
    ``R = Rz(c) @ Ry(b) @ Rx(a)``. All six Tait-Bryan orders are accepted; proper Euler
    orders (``"ZXZ"`` ...) are not.
    """
    axes, extrinsic = _parse_convention(convention)
    (angles,) = _prepare([(angles, "angles", (3,), 1)])
    if extrinsic:
        angles = angles.flip(-1)
    return (_elementary(axes[0], angles[..., 0]) @ _elementary(axes[1], angles[..., 1])
            @ _elementary(axes[2], angles[..., 2]))


def matrix_to_euler(R, convention: str = "ZYX") -> torch.Tensor:
    """Euler angles ``(..., 3)`` (rad) of rotations ``(..., 3, 3)``.

    The inverse of :func:`euler_to_matrix`, same ``convention`` argument.

    The first and last angles are in (-pi, pi], the middle one in [-pi/2, pi/2]. At gimbal
    lock (middle angle +-pi/2) the last intrinsic angle is set to 0 (scipy does the same).
    Gradients are not defined at gimbal lock itself (the angles are not unique there).
    """
    axes, extrinsic = _parse_convention(convention)
    (R,) = _prepare([(R, "R", (3, 3), 2)])
    i, j, k = axes
    # +1 for cyclic orders (XYZ, YZX, ZXY), -1 for the others.
    e = 1.0 if (j - i) % 3 == 1 else -1.0
    cos_b = _safe_norm(torch.stack([R[..., i, i], R[..., i, j]], dim=-1), dim=-1)
    b = torch.atan2(e * R[..., i, k], cos_b)
    a = torch.atan2(-e * R[..., j, k], R[..., k, k])
    c = torch.atan2(-e * R[..., i, j], R[..., i, i])
    # Gimbal lock: c := 0, so R = R_i(a) R_j(b) and R_i(a) = R @ R_j(b)^T.
    gimbal = cos_b < 1e-6 if R.dtype == torch.float64 else cos_b < 1e-3
    M = R @ _elementary(j, b).transpose(-1, -2)
    i1, i2 = (i + 1) % 3, (i + 2) % 3
    a_lock = torch.atan2(M[..., i2, i1], M[..., i1, i1])
    a = torch.where(gimbal, a_lock, a)
    c = torch.where(gimbal, torch.zeros_like(c), c)
    angles = torch.stack([a, b, c], dim=-1)
    return angles.flip(-1) if extrinsic else angles


# ----------------------------------------------------------------------------------------
# 6D rotation representation
# ----------------------------------------------------------------------------------------

def rotation_6d_to_matrix(d6) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from 6D vectors ``(..., 6)`` (Zhou et al. 2019).

    Convention of this project: ``d6 = (a1, a2)`` are the first two COLUMNS of ``R``
    before orthonormalisation. Gram-Schmidt: ``b1 = a1 / |a1|``,
    ``b2 = normalise(a2 - (b1 . a2) b1)``, ``b3 = b1 x b2``; ``R = [b1 | b2 | b3]``
    (columns). Any ``d6`` with non-parallel halves gives a proper rotation.
    """
    (d6,) = _prepare([(d6, "d6", (6,), 1)])
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(R) -> torch.Tensor:
    """6D vectors ``(R[:, 0], R[:, 1]) (..., 6)`` of rotations ``(..., 3, 3)``.

    The first two COLUMNS of ``R``, the convention of :func:`rotation_6d_to_matrix`.
    """
    (R,) = _prepare([(R, "R", (3, 3), 2)])
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


