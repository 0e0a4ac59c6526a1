"""The DeepRS2V network: frame and volume in, rigid correction out (small enough for a CPU).

Inputs (see :mod:`.geometry`):

* ``frame`` ``(B, 2, n2, n2)``: the frame on the start pose's plane grid (normalised
  intensity, fan mask);
* ``cube``  ``(B, 2, n3, n3, n3)``: the volume on the start pose's cube (normalised
  intensity, data mask), order ``(z, y, x)``.

Layers:

1. 2D frame encoder: strided 3x3 convolutions down to ``C x s x s`` (``s = n3 / 4``);
2. 3D volume encoder: strided 3x3x3 convolutions down to ``C x s x s x s``;
3. fusion: the frame features are lifted into the cube (broadcast along z, the start's
   plane normal) and multiplied channel by channel with the volume features (the outer
   product of the frame's in-plane features with the volume's features along z; a
   per-channel dot product once summed by the next layer); the fused volume is the
   concatenation ``[f3 * f2, f3, f2]``;
4. 3D decoder: a 1x1x1 mixing layer, a strided 3x3x3 convolution and one more 3x3x3
   convolution, then global pooling of ``(s/2)^3`` cells (their average plus the
   flattened cells, which keep where the match lies);
5. head: MLP -> 9 numbers, a 6D rotation (Gram-Schmidt, added to the identity's 6D) and
   a translation (mm = output * ``translation_scale_mm``).

The output is ``D = start_fan_to_true_fan`` (see :mod:`.geometry`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .geometry import rigid_from_6d


def _block2d(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout),
                         nn.LeakyReLU(0.1))


def _block3d(cin, cout, stride, k=3):
    return nn.Sequential(nn.Conv3d(cin, cout, k, stride, k // 2), nn.GroupNorm(4, cout),
                         nn.LeakyReLU(0.1))


class DeepRS2VNet(nn.Module):
    """See the module docstring. ``n2`` must be ``2 * n3`` or ``n3`` (frame grid)."""

    def __init__(self, n2: int = 64, n3: int = 32, width: int = 32,
                 translation_scale_mm: float = 10.0):
        super().__init__()
        if n3 % 8 or n2 % n3:
            raise ValueError(f"network: n3 must be a multiple of 8 and divide n2, got "
                             f"n2={n2}, n3={n3}")
        self.n2, self.n3, self.width = int(n2), int(n3), int(width)
        self.translation_scale_mm = float(translation_scale_mm)
        c = self.width
        down2 = [_block2d(2, c // 2, 2)]
        size = n2 // 2
        while size > n3 // 4:
            down2.append(_block2d(c // 2 if len(down2) == 1 else c, c, 2))
            size //= 2
        down2.append(_block2d(c, c, 1))
        self.frame_encoder = nn.Sequential(*down2)
        self.volume_encoder = nn.Sequential(_block3d(2, c // 2, 2), _block3d(c // 2, c, 2),
                                            _block3d(c, c, 1))
        self.decoder = nn.Sequential(_block3d(3 * c, c, 1, k=1), _block3d(c, 2 * c, 2),
                                     _block3d(2 * c, c, 1))
        cells = (n3 // 8) ** 3
        self.head = nn.Sequential(nn.Linear(c + c * cells, 256), nn.LeakyReLU(0.1),
                                  nn.Linear(256, 9))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("identity6d", torch.tensor([1.0, 0, 0, 0, 1.0, 0]))

    def config(self) -> dict:
        return {"n2": self.n2, "n3": self.n3, "width": self.width,
                "translation_scale_mm": self.translation_scale_mm}

    def raw(self, frame: torch.Tensor, cube: torch.Tensor) -> torch.Tensor:
        """The head's 9 numbers ``(B, 9)`` (layers 1-5; no Python-level shape logic, so it
        can be traced once for any batch size)."""
        f2 = self.frame_encoder(frame)  # (B, C, s, s)  rows y, columns x
        f3 = self.volume_encoder(cube)  # (B, C, s, s, s)  (z, y, x)
        f2b = f2[:, :, None].expand_as(f3)
        fused = torch.cat([f3 * f2b, f3, f2b], dim=1)
        d = self.decoder(fused)
        pooled = torch.cat([d.mean(dim=(2, 3, 4)), d.flatten(1)], dim=1)
        return self.head(pooled)

    def to_pose(self, out: torch.Tensor) -> torch.Tensor:
        """``D`` ``(B, 4, 4)`` from :meth:`raw`'s output."""
        rot6 = out[:, :6] + self.identity6d
        t = out[:, 6:] * self.translation_scale_mm
        return rigid_from_6d(rot6, t)

    def forward(self, frame: torch.Tensor, cube: torch.Tensor) -> torch.Tensor:
        """``D`` ``(B, 4, 4)`` (see the module docstring)."""
        return self.to_pose(self.raw(frame, cube))


class _Raw(nn.Module):
    def __init__(self, net: DeepRS2VNet):
        super().__init__()
        self.net = net

    def forward(self, frame, cube):
        return self.net.raw(frame, cube)


def frozen_raw(net: DeepRS2VNet, device=None):
    """:meth:`DeepRS2VNet.raw` traced and frozen for inference (TorchScript: no Python per
    layer; ~20 % faster on the CPU), and on the CPU also passed through
    ``torch.jit.optimize_for_inference`` (oneDNN convolutions: a further ~30 %; the same
    numbers to ~1e-6). Returns ``None`` where tracing fails (the caller keeps the eager
    network)."""
    import warnings  # noqa: PLC0415

    net = net.eval()
    dev = torch.device(device or "cpu")
    frame = torch.zeros(2, 2, net.n2, net.n2, device=dev)
    cube = torch.zeros(2, 2, net.n3, net.n3, net.n3, device=dev)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.trace(_Raw(net).eval(), (frame, cube)))
    except Exception:  # noqa: BLE001  (an optimisation only)
        return None
    if dev.type != "cpu":
        return frozen
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.optimize_for_inference(frozen)
    except Exception:  # noqa: BLE001  (oneDNN missing: the frozen graph is still faster)
        return frozen
