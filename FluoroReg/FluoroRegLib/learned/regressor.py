"""The pose regressor: a small CNN from one X-ray to the pose that produced it.

Network (:class:`PoseRegressor`, plain torch): five stride-2 stages of 3x3 convolutions
with GroupNorm and SiLU (``width`` channels doubling up to ``8 * width``), a flatten of
the last feature map (keeps *where* things are, which a global pooling would lose), two
linear layers, and 9 outputs: a 6D rotation (first two columns of ``R``, Gram-Schmidt,
``poses.rotation_6d_to_matrix``; the head is initialised so it starts at the identity)
and a translation divided by the training range's half-widths.

The outputs are the ``Delta`` of :mod:`.sampling`: ``R`` a camera-frame rotation about
where the CT centre lands in the nominal view and ``t`` the displacement of that centre
(mm), so ``pose = Delta @ nominal``.

Loss (:func:`geodesic_loss`): the SE(3) geodesic distance between predicted and true
``Delta`` written about the CT centre, ``|se3_log(D_pred^-1 D_true)|`` with the rotation
counted at ``rotation_length_mm`` (the CT's RMS radius), divided by ``scale_mm``.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn as nn

from SurgicalReg2D3DLib.poses import make_pose, rotation_6d_to_matrix, se3_log_distance


class PoseRegressor(nn.Module):
    """CNN: (B, 1, S, S) standardised image -> (6D rotation (B, 6), scaled translation (B, 3))."""

    def __init__(self, image_size: int = 64, width: int = 16, hidden: int = 256,
                 norm: str = "batch", coords: bool = True):
        super().__init__()
        self.image_size = int(image_size)
        self.width = int(width)
        self.hidden = int(hidden)
        self.norm = str(norm)
        self.coords = bool(coords)

        def nrm(b):
            return nn.BatchNorm2d(b) if self.norm == "batch" else nn.GroupNorm(min(8, b), b)

        chans = [3 if self.coords else 1, width, 2 * width, 4 * width, 8 * width, 8 * width]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nrm(b), nn.SiLU(),
                       nn.Conv2d(b, b, 3, padding=1), nrm(b), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        s = int(image_size)
        for _ in range(len(chans) - 1):
            s = (s - 1) // 2 + 1  # 3x3 convolution, stride 2, padding 1
        n_flat = chans[-1] * s * s
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n_flat, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 9))
        last = self.head[-1]
        nn.init.normal_(last.weight, std=1e-3)
        with torch.no_grad():
            last.bias.zero_()
            last.bias[0] = 1.0  # first column e_x
            last.bias[4] = 1.0  # second column e_y -> identity

    def arch(self) -> dict:
        return {"image_size": self.image_size, "width": self.width, "hidden": self.hidden,
                "norm": self.norm, "coords": self.coords}

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Append two coordinate channels (CoordConv: x and y in [-1, 1])."""
        if not self.coords:
            return x
        b, _, h, w = x.shape
        yy = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
        xx = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
        return torch.cat([x, torch.stack([xx, yy])[None].expand(b, 2, h, w)], dim=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.features(self._inputs(x)))
        return out[:, :6], out[:, 6:]


def outputs_to_delta(d6: torch.Tensor, t_scaled: torch.Tensor,
                     translation_half_mm: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Network outputs -> (R (B, 3, 3), t (B, 3) mm)."""
    return rotation_6d_to_matrix(d6), t_scaled * translation_half_mm.to(t_scaled)


def geodesic_loss(R_pred, t_pred, R_true, t_true, rotation_length_mm: float,
                  scale_mm: float = 10.0) -> torch.Tensor:
    """Mean SE(3) geodesic distance (mm at radius ``rotation_length_mm``) / ``scale_mm``."""
    d = se3_log_distance(make_pose(R_pred, t_pred), make_pose(R_true.to(R_pred), t_true.to(t_pred)),
                         rotation_length_mm=rotation_length_mm)
    return d.mean() / scale_mm


def translation_half(pose_range) -> torch.Tensor:
    """Translation scales (3,) for the network output (>= 1 mm so a zero range works)."""
    return torch.tensor([max(1.0, float(v)) for v in pose_range.translation_mm])


def build_from_model(data: dict) -> PoseRegressor:
    """The network of a loaded model file, weights in."""
    from .model_file import ModelFileError  # noqa: PLC0415

    try:
        net = PoseRegressor(**data["arch"])
        net.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"model file: weights do not fit the network ({str(exc)[:160]})") from None
    net.eval()
    return net


def predict_pose(data: dict, net: PoseRegressor, image, camera) -> np.ndarray:
    """The regressor's ``ct_to_camera`` (4x4) for one X-ray image (H, W) with ``camera``."""
    from SurgicalReg2D3DLib.cameras import XRayCamera  # noqa: PLC0415

    from .sampling import PoseRange, delta_to_pose, prepare_xray  # noqa: PLC0415

    inp = data["input"]
    train_cam = XRayCamera.from_json(inp["train_camera"])
    x = prepare_xray(image, camera, train_cam)
    with torch.no_grad():
        d6, ts = net(x)
    rng = PoseRange.from_dict(data["range"])
    R, t = outputs_to_delta(d6.double(), ts.double(), translation_half(rng).double())
    nominal = torch.as_tensor(np.asarray(data["nominal_ct_to_camera"], float))
    c = torch.as_tensor(np.asarray(data["nominal_center_cam"], float))
    return delta_to_pose(R, t, nominal, c)[0].numpy()
