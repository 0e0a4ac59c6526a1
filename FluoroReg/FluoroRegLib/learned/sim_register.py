"""Registration with a learned spherical similarity (a ``similarity`` model of
``surgreg fluoro train --kind similarity``): Levenberg-Marquardt on the learned features
from a start pose, all views together, then (in :func:`.register.register_with_model`)
the classic refinement and its quality step.

``surgreg fluoro register --model REGRESSOR.pt --model SIMILARITY.pt``: the regressor's
start -> :func:`refine_starts` -> ``--method`` (default ``ppc``) with the quality step.
Without a regressor the start is ``--init`` or the similarity model's nominal view.

:class:`SimilarityRefiner` prepares the CT as in training (block-averaged by the model's
``ct_downsample``) and each view's X-ray at the training image size (the detector scaled by
:func:`~.sampling.training_factor`, area-averaged and standardised, as the regressor's
input). :meth:`SimilarityRefiner.refine`: the poses of the views move together as
``camera0_to_view[k] @ T`` (the relative motion of the given starts), the residuals of all
views are stacked, and :func:`.spherical.differentiable_lm` runs ``lm_steps`` (the model's
setting unless given) LM steps on ``eps`` with the model's damping schedule and forward
-difference steps, increments composed on the left about the CT centre in camera 0.
"""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel


class SimilarityRefiner:
    """A loaded similarity model for one CT (see the module docstring)."""

    def __init__(self, data: dict, hu, ijk_to_ras, device=None):
        from ..drr import DRRVolume  # noqa: PLC0415
        from ..simulate import downsample_ct  # noqa: PLC0415
        from .similarity_train import load_similarity  # noqa: PLC0415

        self.data, self.net, self.settings = load_similarity(data)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.net.to(self.device)
        inp = data["input"]
        f = int(inp["ct_downsample"])
        arr = np.asarray(hu, np.float32)
        m = np.asarray(ijk_to_ras, float)
        hu_t, m_t = downsample_ct(arr, m, f) if f > 1 else (arr, m)
        self.volume = DRRVolume.from_hu(hu_t, m_t, device=self.device)
        self.center = np.asarray(self.volume.center_ras(), float)
        self.image_size = int(inp["image_size"])
        self.n_samples = int(inp["n_samples"])

    def _views(self, images: Sequence, cameras: Sequence) -> list:
        """Per view: ``(small camera, standardised X-ray (h, w))``."""
        from .sampling import prepare_xray, training_factor  # noqa: PLC0415

        out = []
        for img, cam in zip(images, cameras):
            factor = training_factor(cam, self.image_size)
            small = cam if factor == 1.0 else cam.scaled(factor)
            out.append((small, prepare_xray(img, cam, small)[0, 0].to(self.device)))
        return out

    def residual_fn(self, views: list, camera0_to_views: Sequence[np.ndarray]):
        """poses of view 0 (P, 4, 4) -> stacked feature residuals of all views (P, N)."""
        from ..drr import render_drr  # noqa: PLC0415
        from .spherical import _standardise, residuals  # noqa: PLC0415

        dtype = next(self.net.parameters()).dtype
        phi_f = [self.net(fixed[None, None].to(dtype)) for _, fixed in views]
        rels = [torch.as_tensor(np.asarray(r, float)) for r in camera0_to_views]

        def fn(poses: torch.Tensor) -> torch.Tensor:
            out = []
            for (small, _), rel, pf in zip(views, rels, phi_f):
                pk = rel.to(poses) @ poses
                drr = render_drr(self.volume, small, pk.to(torch.float32),
                                 n_samples=self.n_samples)
                phi_m = self.net(_standardise(drr).unsqueeze(1).to(dtype))
                out.append(residuals(phi_m, pf.expand_as(phi_m)))
            return torch.cat(out, dim=1)

        return fn

    def refine(self, images: Sequence, cameras: Sequence, starts: Sequence[np.ndarray],
               steps: Optional[int] = None, cancel=None) -> Tuple[List[np.ndarray], List[float]]:
        """LM on ``eps`` from ``starts`` (one ``ct_to_camera`` per view): the refined poses
        of every view and the cost before each step."""
        from .spherical import differentiable_lm  # noqa: PLC0415

        s = self.settings
        n = int(s.lm_steps if steps is None else steps)
        if n < 1:
            raise InputError(f"similarity LM steps: must be >= 1, got {steps}")
        check_cancel(cancel, "learned similarity")
        inv0 = np.linalg.inv(starts[0])
        rels = [np.asarray(p, float) @ inv0 for p in starts]
        start0 = np.asarray(starts[0], float)
        c = (start0 @ np.r_[self.center, 1.0])[:3]
        was = self.net.training
        self.net.eval()
        with torch.no_grad():
            fn = self.residual_fn(self._views(images, cameras), rels)
            T, costs = differentiable_lm(fn, torch.as_tensor(start0),
                                         torch.as_tensor(c, dtype=torch.float64), steps=n,
                                         lambda0=s.lambda0, decay=s.decay,
                                         fd_step=(s.fd_rotation_rad, s.fd_translation_mm))
        self.net.train(was)
        pose = T.detach().cpu().numpy()
        if not np.all(np.isfinite(pose)):  # a degenerate solve: keep the start
            return [np.asarray(p, float) for p in starts], costs
        return [r @ pose for r in rels], costs


def check_similarity_model(data: dict, hu, ijk_to_ras, camera, force: bool = False) -> dict:
    """A ``similarity`` model checked against the CT and the camera of view 0."""
    from .model_file import check_model_matches  # noqa: PLC0415

    if data.get("kind") != "similarity":
        raise InputError(f"model: expected a similarity model (kind 'similarity'), got kind "
                         f"{data.get('kind')!r}")
    check_model_matches(data, hu, ijk_to_ras, camera, force=force, name="similarity model")
    return data


def refine_starts(similarity_model, hu, ijk_to_ras, images: Sequence, cameras: Sequence,
                  starts: Sequence[np.ndarray], force: bool = False, device=None,
                  steps: Optional[int] = None, refiner: Optional[SimilarityRefiner] = None,
                  cancel=None) -> Tuple[List[np.ndarray], dict]:
    """The similarity stage of :func:`.register.register_with_model`: the model (path or
    dict) is checked against the CT and camera 0 (``force``: accept another), then
    :meth:`SimilarityRefiner.refine`. Returns the refined starts and
    ``{"similarity_time_s", "similarity_lm_steps", "similarity_cost_start",
    "similarity_cost_last"}``."""
    from .model_file import load_model_file  # noqa: PLC0415

    t0 = time.perf_counter()
    if refiner is None:
        data = similarity_model if isinstance(similarity_model, dict) else \
            load_model_file(similarity_model)
        check_similarity_model(data, hu, ijk_to_ras, cameras[0], force=force)
        refiner = SimilarityRefiner(data, hu, ijk_to_ras, device=device)
    poses, costs = refiner.refine(images, cameras, starts, steps=steps, cancel=cancel)
    info = {"similarity_time_s": time.perf_counter() - t0,
            "similarity_lm_steps": float(len(costs)),
            "similarity_cost_start": float(costs[0]) if costs else float("nan"),
            "similarity_cost_last": float(costs[-1]) if costs else float("nan")}
    return poses, info
