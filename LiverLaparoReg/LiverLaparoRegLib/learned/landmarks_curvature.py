"""A ridge map from a normal map: where the predicted surface turns fastest.

The landmark network predicts a ridge channel and a camera-frame normal map. On a rounded
liver its ridge channel misses many of the mesh's curvature ridges, while its normal map
still turns there (session 18, ``benchmarks/results/laparo_learned_notes.md``). This
module reads a ridge off a normal map with a fixed 2D operator, so that the ridge term of
the search (:mod:`.landmarks_infer`, option ``normal_ridge``) can use both.

:func:`normal_curvature`: per pixel, for each of 4 pixel directions (horizontal,
vertical, both diagonals), the angle between the normals of the two neighbours on either
side, divided by the surface length between them: the pixel step back-projected onto the
tangent plane of the pixel's normal, in units of the depth (``z = 1``). Divided by the
depth it is the surface's curvature (1/mm; a sphere of radius R gives ``z / R``, the
test). :func:`normal_ridge` keeps the pixels whose curvature, at a depth the caller
gives (the registration: the liver's centre at its best ridge-free pose), is at least
:data:`NORMAL_RIDGE_PER_MM`: where nothing turns, nothing is marked.
"""

from __future__ import annotations

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

#: the normal ridge's defaults: the curvature (1/mm; a radius of 25 mm after the blur)
#: and the Gaussian blur (network pixels) of the normals before the operator (session 18
#: probe, maps of three development shapes: 0.04 the best F1 of 0.03-0.1 on each)
NORMAL_RIDGE_PER_MM, NORMAL_RIDGE_BLUR_PX = 0.04, 1.0
#: the smallest |normal . ray| used for the tangent-plane step: a grazing normal would make
#: the step (and the division) unbounded
MIN_COS_VIEW = 0.15


def normal_curvature(normals: np.ndarray, mask: np.ndarray, K: np.ndarray,
                     blur_px: float = NORMAL_RIDGE_BLUR_PX) -> np.ndarray:
    """``(H, W)``: the largest turn of the normal (radians) per unit of surface length
    (depth 1) over the 4 pixel directions, central differences; 0 outside ``mask`` and
    where a neighbour lies outside it. ``normals``: ``(3, H, W)`` camera-frame normals
    (unit or not); ``K``: the 3 x 3 intrinsics of that pixel grid."""
    import cv2  # noqa: PLC0415

    n = np.asarray(normals, np.float64)
    m = np.asarray(mask) > 0
    if n.ndim != 3 or n.shape[0] != 3 or n.shape[1:] != m.shape:
        raise InputError(f"normal map: expected (3, H, W) matching the mask {m.shape}, got "
                         f"{n.shape}")
    if blur_px > 0:
        n = np.stack([cv2.GaussianBlur(c, (0, 0), float(blur_px)) for c in n])
    n = n / np.maximum(np.linalg.norm(n, axis=0, keepdims=True), 1e-9)
    H, W = m.shape
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    ray = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones((H, W))])
    n_ray = (n * ray).sum(0)
    n_ray = np.where(np.abs(n_ray) < MIN_COS_VIEW, np.copysign(MIN_COS_VIEW, n_ray), n_ray)
    padded_n, padded_m = np.pad(n, ((0, 0), (1, 1), (1, 1))), np.pad(m, 1)
    out = np.zeros((H, W))
    for du, dv in ((1, 0), (0, 1), (1, 1), (1, -1)):
        ahead = (slice(None), slice(1 + dv, 1 + dv + H), slice(1 + du, 1 + du + W))
        behind = (slice(None), slice(1 - dv, 1 - dv + H), slice(1 - du, 1 - du + W))
        both = m & padded_m[ahead[1:]] & padded_m[behind[1:]]
        turn = np.arccos(np.clip((padded_n[ahead] * padded_n[behind]).sum(0), -1.0, 1.0))
        # the ray step between the two neighbours, moved along the ray onto the tangent
        # plane of this pixel's normal: its length is the surface length (depth 1)
        step = np.stack([np.full((H, W), 2.0 * du / K[0, 0]),
                         np.full((H, W), 2.0 * dv / K[1, 1]), np.zeros((H, W))])
        length = np.linalg.norm(step - ((n * step).sum(0) / n_ray) * ray, axis=0)
        out = np.maximum(out, np.where(both, turn / np.maximum(length, 1e-12), 0.0))
    return out


def normal_ridge(normals: np.ndarray, mask: np.ndarray, K: np.ndarray, depth_mm: float,
                 per_mm: float = NORMAL_RIDGE_PER_MM,
                 blur_px: float = NORMAL_RIDGE_BLUR_PX) -> np.ndarray:
    """Boolean ``(H, W)``: the mask's pixels whose :func:`normal_curvature` divided by
    ``depth_mm`` (the surface's depth) is at least ``per_mm``."""
    if not float(per_mm) > 0.0:
        raise InputError(f"normal ridge: the curvature threshold must be > 0 per mm, got "
                         f"{per_mm}")
    if not float(depth_mm) > 0.0:
        raise InputError(f"normal ridge: the depth must be > 0 mm, got {depth_mm}")
    m = np.asarray(mask) > 0
    k = normal_curvature(normals, m, K, blur_px)
    return m & (k / float(depth_mm) >= float(per_mm))


def check_normal_ridge(per_mm, n_channels: int) -> float:
    """``per_mm`` as a float if it is a curvature > 0 and the maps (``n_channels``) have
    the normal channels; else a one-line error."""
    if not float(per_mm) > 0.0:
        raise InputError(f"normal ridge: needs a curvature threshold > 0 per mm, got {per_mm}")
    if n_channels < 6:
        raise InputError(f"normal ridge: needs maps with normal channels; these have no "
                         f"normal channels ({n_channels} channels: a model without a normal "
                         f"map)")
    return float(per_mm)


def with_normal_ridge(maps: np.ndarray, mask_net: np.ndarray, K: np.ndarray, depth_mm: float,
                      per_mm: float = NORMAL_RIDGE_PER_MM) -> np.ndarray:
    """A copy of the network's ``maps`` (ridge, ligament, silhouette, normals, ...) whose
    ridge channel is 1 also at the :func:`normal_ridge` of its normal map."""
    per_mm = check_normal_ridge(per_mm, len(maps))
    out = np.array(maps, np.float32)
    out[0] = np.maximum(out[0], normal_ridge(out[3:6], mask_net, K, depth_mm,
                                             per_mm).astype(np.float32))
    return out
