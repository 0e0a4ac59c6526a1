"""Small rigid-pose helpers private to LiverLaparoReg (to merge into core ``poses.py``).

Poses are 4x4 named ``<from>_to_<to>`` acting on column vectors (``p_to = A @ p_from``).
Twist ``xi = (omega[3], v[3])``, rotation first, as in the core contract.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import GeometryError


def hat(w: torch.Tensor) -> torch.Tensor:
    """Skew matrices ``(..., 3, 3)`` of vectors ``(..., 3)``."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([torch.stack([z, -w[..., 2], w[..., 1]], -1),
                        torch.stack([w[..., 2], z, -w[..., 0]], -1),
                        torch.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vectors ``(..., 3)`` -> ``(..., 3, 3)``, smooth at 0."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-24)
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-24))
    K = hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def pose_from_params(params: torch.Tensor, base: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
    """``model_to_camera`` = increment(params) @ base.

    ``params (6,)`` = (rotation vector rad, translation mm) of a small rigid motion in the
    camera frame that rotates about ``pivot (3,)`` (a camera-frame point, usually the
    posed model centroid) so rotation and translation are decoupled.
    """
    R = axis_angle_to_matrix(params[:3])
    t = params[3:] + pivot - R @ pivot
    inc = torch.eye(4, dtype=base.dtype, device=base.device)
    inc = torch.cat([torch.cat([R, t[:, None]], 1), inc[3:]], 0)
    return inc @ base


def apply_pose_np(a_to_b: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points ``(N, 3)`` by the 4x4 ``a_to_b``."""
    return points @ a_to_b[:3, :3].T + a_to_b[:3, 3]


def rotation_error_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    """Geodesic angle between two rotations (degrees)."""
    R = np.asarray(R1)[:3, :3].T @ np.asarray(R2)[:3, :3]
    c = (np.trace(R) - 1) / 2
    return float(math.degrees(math.acos(max(-1.0, min(1.0, c)))))


def translation_error_mm(T1: np.ndarray, T2: np.ndarray) -> float:
    """Distance between the translation parts of two 4x4 poses (mm)."""
    return float(np.linalg.norm(np.asarray(T1)[:3, 3] - np.asarray(T2)[:3, 3]))


def check_pose(T, name: str) -> np.ndarray:
    """A 4x4 rigid matrix as float64, else :class:`GeometryError` naming ``name``."""
    T = np.asarray(T, dtype=float)
    if T.shape != (4, 4):
        raise GeometryError(f"{name}: expected a 4x4 matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise GeometryError(f"{name}: matrix contains NaN or infinite values")
    R = T[:3, :3]
    if (np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(R) - 1) > 1e-3
            or np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-9):
        raise GeometryError(f"{name}: not a rigid transform (rotation part is not orthonormal)")
    return T


def random_rotation_perturbation(rng: np.random.Generator, angle_deg: float) -> np.ndarray:
    """A rotation of exactly ``angle_deg`` about a random axis (3x3)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    w = torch.tensor(axis * math.radians(angle_deg), dtype=torch.float64)
    return axis_angle_to_matrix(w).numpy()


def perturb_pose(model_to_camera: np.ndarray, pivot_camera: np.ndarray, angle_deg: float,
                 shift_mm: float, seed: int = 0) -> np.ndarray:
    """Rotate by ``angle_deg`` about ``pivot_camera`` and shift by ``shift_mm`` (random dirs)."""
    rng = np.random.default_rng(seed)
    R = random_rotation_perturbation(rng, angle_deg)
    d = rng.normal(size=3)
    d *= shift_mm / np.linalg.norm(d)
    inc = np.eye(4)
    inc[:3, :3] = R
    inc[:3, 3] = pivot_camera - R @ pivot_camera + d
    return inc @ model_to_camera
