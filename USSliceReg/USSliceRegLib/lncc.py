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
    """Sum over a ``window x window`` neighbourhood, ``(B, h, w)`` -> ``(B, h, w)``."""
    return F.avg_pool2d(x[:, None], window, stride=1, padding=window // 2,
                        count_include_pad=True)[:, 0] * (window * window)


def local_normalise(x: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    """Locally normalised image ``(B, h, w)``; 0 outside ``mask``."""
    m = mask.to(x.dtype)
    if window <= 0:
        count = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
        mu = (x * m).sum(dim=(1, 2), keepdim=True) / count
        var = (((x - mu) ** 2) * m).sum(dim=(1, 2), keepdim=True) / count
    else:
        count = _box(m, window).clamp_min(1.0)
        mu = _box(x * m, window) / count
        var = (_box(x * x * m, window) / count - mu * mu).clamp_min(0.0)
    return (x - mu) / torch.sqrt(var + _EPS) * m


def masked_lncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                window: int = 9) -> torch.Tensor:
    """Masked LNCC ``(B,)`` in [-1, 1] of images ``a`` and ``b`` ``(B, h, w)``."""
    na = local_normalise(a, mask, window)
    nb = local_normalise(b, mask, window)
    num = (na * nb).sum(dim=(1, 2))
    den = torch.sqrt((na * na).sum(dim=(1, 2)) * (nb * nb).sum(dim=(1, 2))).clamp_min(1e-12)
    return num / den


def lncc_residuals(fixed_normalised: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor,
                   window: int) -> torch.Tensor:
    """Residuals ``(B, h, w)`` whose half squared sum is ~ ``1 - lncc``."""
    m = mask.to(moving.dtype)
    n = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return (fixed_normalised * m - local_normalise(moving, m, window)) / torch.sqrt(n)
