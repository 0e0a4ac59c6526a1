"""Compare two images of the same grid: alpha blend and checkerboard (for every module's
"compare" control: X-ray vs DRR, frame vs model rendering, US frame vs resliced volume).

Both functions normalise each image to 0..1 (1st-99th percentile), so images of different
intensity ranges (an X-ray and a DRR) compare by structure. Qt-free, numpy only.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def _normalised(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3].mean(axis=2)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{name}: expected a 2D image, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN or infinite values")
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def _pair(a, b):
    x, y = _normalised(a, "first image"), _normalised(b, "second image")
    if x.shape != y.shape:
        raise InputError(f"second image: size {y.shape[1]}x{y.shape[0]} differs from the first "
                         f"image's {x.shape[1]}x{x.shape[0]}")
    return x, y


def blend(a, b, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * a + alpha * b`` of the normalised images, ``(H, W)`` in 0..1."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"blend: alpha must be in [0, 1], got {alpha}")
    x, y = _pair(a, b)
    return (1.0 - alpha) * x + alpha * y


def checkerboard(a, b, tiles: int = 8) -> np.ndarray:
    """Tiles of ``a`` and ``b`` alternating (``tiles`` per side, at least 2); ``(H, W)``
    in 0..1; tile ``(0, 0)`` (top left) shows ``a``."""
    if int(tiles) != tiles or tiles < 2:
        raise InputError(f"checkerboard: tiles must be an integer >= 2, got {tiles}")
    x, y = _pair(a, b)
    h, w = x.shape
    rows = (np.arange(h) * int(tiles)) // h
    cols = (np.arange(w) * int(tiles)) // w
    use_b = (rows[:, None] + cols[None, :]) % 2 == 1
    return np.where(use_b, y, x)
