"""Training losses of DeepRS2V.

``loss = w_lncc * (1 - LNCC) + w_trans * mean(|t_pred - t_true|^2) / (10 mm)^2
       + w_rot * mean(angle(R_pred^T R_true)) / (10 deg)``

* LNCC: the volume is sampled on the frame's plane grid at the *predicted* pose only
  (``F_start @ D_pred``; the plane's points, never a whole volume; differentiable through
  the trilinear sampling), then the masked LNCC of the frame and this slice on their
  overlap (fan mask x data mask), box window ``lncc_kernel`` grid cells; a window that
  leaves the overlap is ignored (``min_support = 1``,
  :func:`SurgicalReg2D3DLib.similarity.masked_lncc`).
* translation MSE in the start's fan frame (mm, at the fan centre);
* geodesic rotation error (rad).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from SurgicalReg2D3DLib.similarity import masked_lncc

from .geometry import VolumeSampler


@dataclass
class LossWeights:
    lncc: float = 0.5
    translation: float = 1.0
    rotation: float = 1.0
    lncc_kernel: int = 9

    def to_dict(self) -> dict:
        return {"lncc": self.lncc, "translation": self.translation,
                "rotation": self.rotation, "lncc_kernel": self.lncc_kernel}


def geodesic_rad(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Rotation angle ``(B,)`` of ``R1^T R2`` (rad), gradient-safe near 0 and pi."""
    tr = (R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.acos(((tr - 1) / 2).clamp(-1 + 1e-6, 1 - 1e-6))


def pose_loss(D_pred: torch.Tensor, D_true: torch.Tensor, fan_start: torch.Tensor,
              frame_norm: torch.Tensor, frame_mask: torch.Tensor, sampler: VolumeSampler,
              plane: torch.Tensor, w: LossWeights):
    """Total loss and its parts (dict of floats).

    ``fan_start`` ``(B, 4, 4)`` ``F_start``; ``frame_norm``/``frame_mask`` ``(B, n2, n2)``;
    ``plane`` ``(n2, n2, 4)`` fan-frame points of the plane grid."""
    t_err = ((D_pred[:, :3, 3] - D_true[:, :3, 3]) ** 2).sum(-1)
    ang = geodesic_rad(D_pred[:, :3, :3], D_true[:, :3, :3])
    loss = w.translation * t_err.mean() / 100.0 + w.rotation * ang.mean() / 0.1745
    parts = {"translation_mse_mm2": float(t_err.detach().mean()),
             "rotation_deg": float(torch.rad2deg(ang.detach()).mean())}
    if w.lncc > 0:
        vals, data = sampler.sample(fan_start @ D_pred, plane)
        overlap = frame_mask * (data > 0.5).to(frame_mask.dtype)
        # Items whose predicted plane has (almost) no overlap with the volume's data get
        # no LNCC term (nothing to compare); the pose terms still pull them back.
        ok = overlap.sum(dim=(1, 2)) >= 4 * int(w.lncc_kernel) ** 2
        if bool(ok.any()):
            lncc = masked_lncc(frame_norm[ok][:, None], vals[ok][:, None],
                               overlap[ok][:, None], kernel_size=int(w.lncc_kernel),
                               min_support=1.0)
            loss = loss + w.lncc * (1 - lncc).sum() / D_pred.shape[0]
            parts["lncc"] = float(lncc.detach().mean())
    parts["loss"] = float(loss.detach())
    return loss, parts
