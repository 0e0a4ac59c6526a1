"""Masked local normalised cross-correlation (LNCC) of a frame and a volume slice.

Private stand-in for ``SurgicalReg2D3DLib.similarity.masked_lncc`` until the core provides
it (to be merged there). Written as *residuals* so that a Gauss-Newton / Levenberg-Marquardt
optimiser can use it: every pixel is normalised by the mean and standard deviation of its
``window x window`` neighbourhood *restricted to the mask*,

    n_f = (f - mu_f) / sqrt(var_f + eps),   n_s likewise,

and ``lncc = sum(mask * n_f * n_s) / sum(mask * n_f^2)^(1/2) / sum(mask * n_s^2)^(1/2)``,
``residual = mask * (n_f - n_s) / sqrt(sum(mask))``. ``window = 0`` uses the global
(masked) mean and variance instead, i.e. plain masked NCC.

Shapes: images ``(B, h, w)`` float, masks ``(B, h, w)`` float/bool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-3


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a ``window x window`` neighbourhood (zero padding), ``(B, h, w)`` -> same.

    Two cumulative sums (an integral image), much faster on CPU than a stride-1 pooling.
    """
    r = window // 2
    p = F.pad(x, (r + 1, r, r + 1, r))
    c = p.cumsum(-1)
    c = c[..., window:] - c[..., :-window]
    c = c.cumsum(-2)
    return c[..., window:, :] - c[..., :-window, :]


def local_normalise(x: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    """Locally normalised image ``(B, h, w)``; 0 outside ``mask``."""
    m = mask.to(x.dtype)
    if window <= 0:
        count = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
        mu = (x * m).sum(dim=(1, 2), keepdim=True) / count
        var = (((x - mu) ** 2) * m).sum(dim=(1, 2), keepdim=True) / count
    else:
        x = _centre(x, m)
        m = m.expand_as(x)
        xm = x * m
        B, h, w = x.shape
        sums = _box(torch.stack([m, xm, xm * x], dim=1).view(B * 3, h, w), window)
        sums = sums.view(B, 3, h, w)
        mom = sums[:, 1:] / sums[:, :1].clamp_min(1.0)  # E[x], E[x^2] on the window
        mu = mom[:, 0]
        var = (mom[:, 1] - mu * mu).clamp_min(0.0)
    return (x - mu) / torch.sqrt(var + _EPS) * m


def _centre(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x`` minus its masked mean per image ``(B, h, w)``. The result of the local
    normalisation does not change, but the box sums of ``x^2`` (cumulative sums in
    float32) no longer cancel catastrophically in ``E[x^2] - mu^2`` for images with a
    large offset (e.g. 500 +- 2)."""
    count = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    return x - (x * m).sum(dim=(-2, -1), keepdim=True) / count


def local_normalise_jvp(x: torch.Tensor, tangents: torch.Tensor, mask: torch.Tensor,
                        window: int):
    """:func:`local_normalise` and its directional derivatives (analytic, no autograd).

    ``x`` ``(B, h, w)``, ``tangents`` ``(B, P, h, w)`` -> ``(n (B, h, w), dn (B, P, h, w))``
    where ``dn[:, p]`` is the derivative of ``n`` along ``tangents[:, p]``.
    """
    m = mask.to(x.dtype)
    B, P, h, w = tangents.shape
    mt = tangents * m[:, None]
    if window <= 0:
        count = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
        mu = (x * m).sum(dim=(1, 2), keepdim=True) / count
        var = (((x - mu) ** 2) * m).sum(dim=(1, 2), keepdim=True) / count
        dmu = mt.sum(dim=(2, 3), keepdim=True) / count[:, None]
        dvar = 2 * (mt * (x - mu)[:, None]).sum(dim=(2, 3), keepdim=True) / count[:, None]
    else:
        x = _centre(x, m)
        count = _box(m, window).clamp_min(1.0)
        mu = _box(x * m, window) / count
        var = (_box(x * x * m, window) / count - mu * mu).clamp_min(0.0)
        boxed = _box(torch.cat([mt, mt * x[:, None]], dim=1).reshape(-1, h, w), window)
        boxed = boxed.reshape(B, 2 * P, h, w) / count[:, None]
        dmu = boxed[:, :P]
        dvar = 2 * boxed[:, P:] - 2 * mu[:, None] * dmu
    inv_sd = 1.0 / torch.sqrt(var + _EPS)
    n = (x - mu) * inv_sd * m
    dn = ((tangents - dmu) - (x - mu)[:, None] * dvar * (0.5 * inv_sd * inv_sd)[:, None]) \
        * (inv_sd * m)[:, None]
    return n, dn


def masked_lncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                window: int = 9) -> torch.Tensor:
    """Masked LNCC ``(B,)`` in [-1, 1] of images ``a`` and ``b`` ``(B, h, w)``.

    Both images are normalised as by :func:`local_normalise` (the five box sums of the
    two images share one :func:`_box` call)."""
    if window <= 0:
        na = local_normalise(a, mask, window)
        nb = local_normalise(b, mask, window)
    else:
        m = mask.to(a.dtype).expand_as(a)
        a, b = _centre(a, m), _centre(b, m)
        am, bm = a * m, b * m
        B, h, w = a.shape
        sums = _box(torch.stack([m, am, am * a, bm, bm * b], dim=1).view(B * 5, h, w),
                    window).view(B, 5, h, w)
        mom = sums[:, 1:] / sums[:, :1].clamp_min(1.0)
        mu_a, mu_b = mom[:, 0], mom[:, 2]
        na = (a - mu_a) * torch.rsqrt((mom[:, 1] - mu_a * mu_a).clamp_min(0.0) + _EPS) * m
        nb = (b - mu_b) * torch.rsqrt((mom[:, 3] - mu_b * mu_b).clamp_min(0.0) + _EPS) * m
    num = (na * nb).sum(dim=(1, 2))
    den = torch.sqrt((na * na).sum(dim=(1, 2)) * (nb * nb).sum(dim=(1, 2))).clamp_min(1e-12)
    return num / den


def lncc_residuals(fixed_normalised: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor,
                   window: int) -> torch.Tensor:
    """Residuals ``(B, h, w)`` whose half squared sum is ~ ``1 - lncc``."""
    m = mask.to(moving.dtype)
    n = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return (fixed_normalised * m - local_normalise(moving, m, window)) / torch.sqrt(n)
