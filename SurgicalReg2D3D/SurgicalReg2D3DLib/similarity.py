"""Image similarity measures for intensity-based 2D/3D registration.

All measures are written in torch, work on a batch of independent image pairs, run on the
device of their inputs and are differentiable with respect to both images (so a renderer
upstream, e.g. a DRR, can be optimised through them). Larger is better for every measure:
1 means identical up to an affine change of intensity, 0 means no linear relation.

Accepted image shapes (``a`` and ``b`` must have the same shape):

- ``(H, W)``        one 2D image (batch of 1, one channel);
- ``(B, H, W)``     a batch of 2D images;
- ``(B, C, H, W)``  a batch of multi-channel 2D images (the score pools all channels);
- ``(B, C, D, H, W)`` a batch of 3D volumes (:func:`ncc` and :func:`masked_lncc` only).

Numpy arrays are accepted and converted; integer images are converted to float32.

Masks select the pixels that take part (e.g. the overlap of a rendered DRR with the
X-ray field of view, or the valid sector of an ultrasound frame). A mask has the image
shape, or one channel ``(B, 1, H, W)`` that is applied to every channel; any non-zero value
counts as selected (values in (0, 1] act as weights in :func:`ncc`).

Constant images (zero variance) have no defined correlation; they score 0 instead of
NaN: the product of the two variances is clamped to at least ``eps`` before the square
root. ``eps`` is absolute, so intensities should be in a physical range (HU, [0, 1],
[0, 255]), not scaled down to ~1e-6.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = ["ncc", "gradient_ncc", "masked_lncc", "multiscale"]

DEFAULT_EPS = 1e-10


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


def _as_tensor(x, name: str, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convert ``x`` to a floating tensor (on ``like``'s device when ``x`` is numpy)."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        device = like.device if like is not None else None
        x = torch.as_tensor(np.asarray(x), device=device)
    elif not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if x.dtype == torch.bool or not (x.is_floating_point()):
        x = x.to(torch.get_default_dtype())
    if like is not None and x.device != like.device:
        raise InputError(f"{name}: is on device {x.device} but the images are on {like.device}")
    return x


def _to_batch(x: torch.Tensor) -> torch.Tensor:
    """Reshape ``(H, W)`` / ``(B, H, W)`` to ``(B, C, H, W)``; 4D/5D stay as they are."""
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x[:, None]
    return x


def _prepare(a, b, mask, fname: str, allow_3d: bool):
    """Validate and normalise ``a``, ``b`` (to ``(B, C, ...)``) and ``mask``."""
    ta = _as_tensor(a, "similarity: image a")
    tb = _as_tensor(b, "similarity: image b", like=ta)
    if tuple(ta.shape) != tuple(tb.shape):
        raise InputError(
            f"similarity: images must have the same shape, got {_shape_str(ta.shape)} "
            f"and {_shape_str(tb.shape)}"
        )
    max_dim = 5 if allow_3d else 4
    if not 2 <= ta.dim() <= max_dim:
        expected = "(H, W), (B, H, W), (B, C, H, W)" + (" or (B, C, D, H, W)" if allow_3d else "")
        raise InputError(
            f"similarity: {fname} expects images of shape {expected}, got {_shape_str(ta.shape)}"
        )
    if ta.numel() == 0:
        raise InputError(f"similarity: images are empty, shape {_shape_str(ta.shape)}")
    dtype = torch.promote_types(ta.dtype, tb.dtype)
    ta, tb = ta.to(dtype), tb.to(dtype)
    for name, t in (("image a", ta), ("image b", tb)):
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"similarity: {name} contains NaN or infinite values")
    ta4, tb4 = _to_batch(ta), _to_batch(tb)

    if mask is None:
        m = torch.ones((ta4.shape[0], 1) + tuple(ta4.shape[2:]), dtype=dtype, device=ta4.device)
        return ta4, tb4, m
    tm = _as_tensor(mask, "mask", like=ta).to(dtype)
    if tm.dim() == ta.dim():
        tm4 = _to_batch(tm)
    elif ta.dim() == 4 and tm.dim() == 3:
        tm4 = tm[:, None]
    else:
        tm4 = None
    ok = (
        tm4 is not None
        and tm4.shape[0] == ta4.shape[0]
        and tm4.shape[1] in (1, ta4.shape[1])
        and tm4.shape[2:] == ta4.shape[2:]
    )
    if not ok:
        raise InputError(
            f"mask: shape {_shape_str(tm.shape)} does not match the images "
            f"{_shape_str(ta.shape)} (use the image shape or (B, 1, H, W))"
        )
    if not bool(torch.isfinite(tm).all()):
        raise InputError("mask: contains NaN or infinite values")
    if bool((tm4 < 0).any()):
        raise InputError("mask: values must be >= 0")
    selected = (tm4 > 0).flatten(1).sum(dim=1)
    empty = torch.nonzero(selected == 0).flatten().tolist()
    if empty:
        raise InputError(f"mask: is empty (no pixel selected) for batch item(s) {empty}")
    return ta4, tb4, tm4


def _weighted_ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """NCC per batch item of ``(B, C, ...)`` images with weights ``w`` (broadcastable).

    Items whose weights sum to zero score 0.
    """
    w = w.expand_as(a)
    dims = tuple(range(1, a.dim()))
    wsum = w.sum(dim=dims)
    safe = wsum.clamp_min(torch.finfo(a.dtype).tiny)
    shape = (-1,) + (1,) * (a.dim() - 1)
    mean_a = ((w * a).sum(dim=dims) / safe).view(shape)
    mean_b = ((w * b).sum(dim=dims) / safe).view(shape)
    da, db = a - mean_a, b - mean_b
    cov = (w * da * db).sum(dim=dims) / safe
    var_a = (w * da * da).sum(dim=dims) / safe
    var_b = (w * db * db).sum(dim=dims) / safe
    score = cov / torch.sqrt((var_a * var_b).clamp_min(eps))
    return torch.where(wsum > 0, score, torch.zeros_like(score))


def ncc(a, b, mask=None, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Zero-normalised cross-correlation of each image pair, pooled over channels and pixels.

    ``ncc = sum w (a - mean_a)(b - mean_b) / sqrt(sum w (a - mean_a)^2 * sum w (b - mean_b)^2)``
    with the means weighted by the mask ``w`` (1 everywhere without a mask). This equals
    Pearson's correlation coefficient of the selected pixel values.

    Args:
        a, b: images ``(H, W)``, ``(B, H, W)``, ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        mask: optional weights/selection, image shape or ``(B, 1, ...)``.
        eps: lower bound of ``var_a * var_b``; constant images give 0.

    Returns:
        ``(B,)`` tensor in [-1, 1] (``B = 1`` for a single 2D image).
    """
    ta, tb, m = _prepare(a, b, mask, "ncc", allow_3d=True)
    return _weighted_ncc(ta, tb, m, eps)


def _sobel_kernels(dtype, device) -> torch.Tensor:
    """Sobel kernels ``(2, 1, 3, 3)``: d/dx (along columns, W) then d/dy (along rows, H)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=dtype, device=device)
    return torch.stack([kx, kx.t()])[:, None] / 8.0


def sobel_gradients(x: torch.Tensor) -> torch.Tensor:
    """Sobel x- and y-gradients of ``(B, C, H, W)`` images, ``(B, C, 2, H-2, W-2)``.

    Only pixels whose whole 3x3 neighbourhood is inside the image are returned ("valid"
    convolution), so there are no padding artefacts at the border.
    """
    B, C, H, W = x.shape
    k = _sobel_kernels(x.dtype, x.device)
    g = F.conv2d(x.reshape(B * C, 1, H, W), k)
    return g.reshape(B, C, 2, H - 2, W - 2)


def gradient_ncc(a, b, mask=None, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Gradient correlation: mean of the NCC of the Sobel x-gradients and of the y-gradients.

    ``gradient_ncc = (ncc(Gx a, Gx b) + ncc(Gy a, Gy b)) / 2`` where ``Gx`` / ``Gy`` are the
    3x3 Sobel derivatives along columns / rows (Penney et al. 1998 "gradient correlation").
    It ignores smooth intensity differences (e.g. soft-tissue background of an X-ray) and
    stresses edges. Gradients are taken with a valid convolution, so the result uses
    pixels 1..H-2 x 1..W-2; with a mask, a gradient pixel is used only if its whole 3x3
    neighbourhood is selected (mask eroded by one pixel). An item whose eroded mask is
    empty scores 0.

    Args:
        a, b: 2D images ``(H, W)``, ``(B, H, W)`` or ``(B, C, H, W)`` with H, W >= 3.
        mask: optional selection, image shape or ``(B, 1, H, W)``.

    Returns:
        ``(B,)`` tensor in [-1, 1].
    """
    ta, tb, m = _prepare(a, b, mask, "gradient_ncc", allow_3d=False)
    if ta.shape[-1] < 3 or ta.shape[-2] < 3:
        raise InputError(
            f"similarity: gradient_ncc needs images of at least 3x3 pixels, got {_shape_str(ta.shape)}"
        )
    ga, gb = sobel_gradients(ta), sobel_gradients(tb)
    # Erode the (binary) mask: a 3x3 window is fully selected iff its minimum is > 0.
    sel = (m > 0).to(ta.dtype)
    eroded = -F.max_pool2d(-sel, kernel_size=3, stride=1)  # (B, Cm, H-2, W-2)
    score_x = _weighted_ncc(ga[:, :, 0], gb[:, :, 0], eroded, eps)
    score_y = _weighted_ncc(ga[:, :, 1], gb[:, :, 1], eroded, eps)
    return 0.5 * (score_x + score_y)


def _box_mean(x: torch.Tensor, k) -> torch.Tensor:
    """Mean over a ``k``-wide box (zero padding), same spatial size as ``x``.

    ``k`` is an int or one width per spatial dimension. An odd width ``k`` is centred
    (offsets ``-k//2 .. k//2``); an even one covers offsets ``-k//2 .. k//2 - 1``.
    """
    nd = x.dim() - 2
    ks = (int(k),) * nd if isinstance(k, (int, np.integer)) else tuple(int(v) for v in k)
    pad = []
    for width in reversed(ks):  # F.pad wants the last dimension first
        pad += [width // 2, width - 1 - width // 2]
    xp = F.pad(x, pad)
    if nd == 2:
        return F.avg_pool2d(xp, ks, stride=1)
    return F.avg_pool3d(xp, ks, stride=1)


def _kernel_sizes(kernel_size, ndim: int):
    """Validate ``kernel_size`` (int or one int per spatial dim); tuple of ``ndim`` ints."""
    def _is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if _is_int(kernel_size):
        sizes = (int(kernel_size),) * ndim
    elif isinstance(kernel_size, (tuple, list)) and len(kernel_size) == ndim \
            and all(_is_int(v) for v in kernel_size):
        sizes = tuple(int(v) for v in kernel_size)
    else:
        raise InputError(f"kernel_size: must be an integer >= 2 or {ndim} integers >= 1 "
                         f"(one per spatial dimension), got {kernel_size!r}")
    if min(sizes) < 1 or int(np.prod(sizes)) < 2:
        raise InputError(f"kernel_size: the window must hold at least 2 pixels, got "
                         f"{kernel_size!r}")
    return sizes


def masked_lncc(
    a,
    b,
    mask=None,
    kernel_size=9,
    eps: float = DEFAULT_EPS,
    min_support: float = 0.5,
) -> torch.Tensor:
    """Local normalised cross-correlation with a box window, restricted to a mask.

    For every selected pixel ``p`` (``mask[p] > 0``) the correlation coefficient of ``a``
    and ``b`` is computed over the pixels of the ``kernel_size`` box around ``p`` that
    are selected and inside the image (only those enter the window means and variances).
    The result of an item is the mean of these local coefficients over the selected
    pixels whose window holds at least ``min_support * window size`` selected pixels
    (and at least 2). Channels are treated separately and averaged. An item with no such
    pixel scores 0. Windows whose variance product is below ``eps`` (flat regions)
    contribute 0.

    Window sums use one average pooling per statistic, so the cost does not grow with
    the number of pixels in the mask; variances use the one-pass formula
    ``E[x^2] - E[x]^2`` (use float64 for intensities far from zero, e.g. raw HU + 1000).

    Args:
        a, b: ``(H, W)``, ``(B, H, W)``, ``(B, C, H, W)`` or 3D ``(B, C, D, H, W)``.
        mask: optional overlap/validity mask of any shape of selected pixels, image shape
            or ``(B, 1, ...)``; treated as binary (non-zero = selected).
        kernel_size: window width in pixels, the same along every axis (an int >= 2), or
            one width per spatial axis, e.g. ``(5, 9)`` for ``(H, W)``. An odd width is
            centred on ``p``; an even width ``k`` covers offsets ``-k//2 .. k//2 - 1``.
        eps: lower bound of the local variance product.
        min_support: fraction in (0, 1] of the window that must be selected.

    Returns:
        ``(B,)`` tensor in [-1, 1].
    """
    if not (0.0 < float(min_support) <= 1.0):
        raise InputError(f"min_support: must be in (0, 1], got {min_support!r}")
    ta, tb, m = _prepare(a, b, mask, "masked_lncc", allow_3d=True)
    ndim = ta.dim() - 2
    sizes = _kernel_sizes(kernel_size, ndim)
    sel = (m > 0).to(ta.dtype).expand_as(ta)
    window = int(np.prod(sizes))
    B, C = ta.shape[:2]
    spatial = tuple(ta.shape[2:])

    # LNCC is invariant to an intensity offset: remove each item's (masked) mean first, which
    # keeps the one-pass variances below accurate when intensities sit far from zero.
    dims = tuple(range(2, ta.dim()))
    cnt = sel.sum(dim=dims, keepdim=True).clamp_min(1.0)
    ta = ta - ((sel * ta).sum(dim=dims, keepdim=True) / cnt).detach()
    tb = tb - ((sel * tb).sum(dim=dims, keepdim=True) / cnt).detach()
    # One pooling call for all statistics: stack them along the channel axis.
    stats = torch.cat([sel, sel * ta, sel * tb, sel * ta * ta, sel * tb * tb, sel * ta * tb], dim=1)
    means = _box_mean(stats, sizes) * window  # window sums
    n, sa, sb, saa, sbb, sab = means.view((B, 6, C) + spatial).unbind(dim=1)
    n_safe = n.clamp_min(1.0)
    mu_a, mu_b = sa / n_safe, sb / n_safe
    var_a = (saa / n_safe - mu_a * mu_a).clamp_min(0.0)
    var_b = (sbb / n_safe - mu_b * mu_b).clamp_min(0.0)
    cov = sab / n_safe - mu_a * mu_b
    local = cov / torch.sqrt((var_a * var_b).clamp_min(eps))

    needed = max(2.0, float(min_support) * window)
    valid = (sel > 0) & (n >= needed - 1e-6)
    vf = valid.to(ta.dtype)
    dims = tuple(range(1, ta.dim()))
    count = vf.sum(dim=dims)
    total = torch.where(valid, local, torch.zeros_like(local)).sum(dim=dims)
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.zeros_like(total))


def multiscale(
    fn: Callable[..., torch.Tensor],
    a,
    b,
    levels: int = 3,
    mask=None,
    weights: Optional[Sequence[float]] = None,
    **kwargs,
) -> torch.Tensor:
    """Weighted mean of ``fn(a_l, b_l, mask=mask_l, **kwargs)`` over an image pyramid.

    Level 0 is the input; level ``l + 1`` is level ``l`` average-pooled by 2 (a pixel of
    the mask stays selected if more than half of its 2x2 block was). Levels stop early
    when an image side would drop below 8 pixels.

    Args:
        fn: a similarity of this module (or any ``fn(a, b, mask=..., **kwargs) -> (B,)``).
        a, b: 2D images as accepted by ``fn`` (``(B, C, H, W)`` after normalisation).
        levels: number of pyramid levels (>= 1).
        weights: one weight per level (default: equal weights).

    Returns:
        ``(B,)`` tensor.
    """
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise InputError(f"levels: must be an integer >= 1, got {levels!r}")
    ta, tb, m = _prepare(a, b, mask, "multiscale", allow_3d=False)
    if weights is not None and len(weights) != levels:
        raise InputError(f"weights: expected {levels} values (one per level), got {len(weights)}")
    w = list(weights) if weights is not None else [1.0] * levels
    scores, used = [], []
    for level in range(levels):
        if level > 0:
            if min(ta.shape[-2:]) < 16:
                break
            ta, tb = F.avg_pool2d(ta, 2), F.avg_pool2d(tb, 2)
            m = (F.avg_pool2d((m > 0).to(ta.dtype), 2) > 0.5).to(ta.dtype)
            if bool(((m > 0).flatten(1).sum(dim=1) == 0).any()):
                break
        scores.append(fn(ta, tb, mask=None if mask is None else m, **kwargs))
        used.append(float(w[level]))
    total_w = sum(used)
    if total_w <= 0:
        raise InputError(f"weights: must sum to a positive value, got {w}")
    return sum(s * wi for s, wi in zip(scores, used)) / total_w
