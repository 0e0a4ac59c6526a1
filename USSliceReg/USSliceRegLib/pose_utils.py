"""Pose utilities for evaluating the US slice registration (not used by the search).

Where they sit in the flow: outside the registration, around it. Benchmarks, tests, the
demo and the trust value's calibration make start poses by perturbing a known
``image_to_reference`` (:func:`random_perturbations`, :func:`perturb_about_point`) and
score a result against the truth (:func:`pose_errors`: rotation angle and the
displacement of a frame point, e.g. the fan centre).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def pose_errors(estimate, truth, point_image) -> Tuple[float, float]:
    """Rotation (deg) and translation (mm) error of an ``image_to_reference`` estimate.

    ``E = estimate @ inv(truth)`` (reference -> reference, rigid when both share the
    calibration); rotation = angle of ``E``'s rotation, translation = displacement of
    ``point_image`` (pixel ``(col, row, 0, 1)``, e.g. the fan centre) by the error.
    """
    estimate = np.asarray(estimate, dtype=float)
    truth = np.asarray(truth, dtype=float)
    E = estimate @ np.linalg.inv(truth)
    R = E[:3, :3]
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(R) - 1) / 2))))
    p = truth @ np.asarray(point_image, dtype=float)
    return angle, float(np.linalg.norm((E @ p - p)[:3]))


def random_perturbations(n: int, max_mm: float, max_deg: float, seed: int = 0) -> np.ndarray:
    """``(n, 6)`` twists: random axes/directions, magnitudes uniform in [0, max].

    Rotation angle uniform in ``[0, max_deg]`` about a uniformly random axis, translation
    length uniform in ``[0, max_mm]`` along a uniformly random direction.
    """
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    ang = np.radians(rng.uniform(0, max_deg, size=(n, 1)))
    dist = rng.uniform(0, max_mm, size=(n, 1))
    return np.concatenate([axes * ang, dirs * dist], axis=1)


def perturb_about_point(image_to_reference, twist, point_image) -> np.ndarray:
    """Apply a rigid perturbation (rotation about the frame point ``point_image``, then a
    translation, both in reference axes) on the left of ``image_to_reference``."""
    T = np.asarray(image_to_reference, dtype=float)
    c = (T @ np.asarray(point_image, dtype=float))[:3]
    omega = np.asarray(twist[:3], dtype=float)
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    R = Rotation.from_rotvec(omega).as_matrix()
    P = np.eye(4)
    P[:3, :3] = R
    P[:3, 3] = c - R @ c + np.asarray(twist[3:], dtype=float)
    return P @ T
