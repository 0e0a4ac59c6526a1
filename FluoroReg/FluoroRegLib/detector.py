"""The detector model of FluoroReg's polish (:func:`polish`, :func:`polished_result`) and
the DRRs it gives (:func:`modelled_problem`, used by :func:`.quality.measure_signals`).

Why a polish. On the synthetic benchmark the results that end at 1.0-1.7 mm mTRE are
shifted along the central ray (away from the source) and registering from the TRUE pose
ends at the same place. The shift comes from the detector: blur acts on the X-ray
*intensity* (scintillator light spread, focal spot), before the ``-log``; because
``-log(mean(exp(-L))) < mean(L)`` the edges of attenuating structures move inwards, the
anatomy looks smaller, and a plain DRR (line integrals ``L``, no blur) matches it best
when the CT is moved away from the source. Without that blur the same cases register to
< 0.1 mm from the truth (``benchmarks/results/fluoro_quality.md``).

:func:`polish` models the detector: the DRR becomes ``-log(G_sigma * exp(-k L))`` with
``k`` the slope of the X-ray on the DRR (the X-ray's units per DRR unit, least squares at
the current pose) and ``sigma`` (detector pixels) a free parameter solved jointly with the
pose (Levenberg-Marquardt over 7 unknowns at the finest level, forward differences; the
``sigma`` column needs no new render). ``sigma = 0`` is the plain DRR, so the polish can
only explain the image at least as well. It is skipped (``None``) when the X-ray does not
look like ``-log`` intensities (slope not positive).

Frames: ``ct_to_camera`` maps CT RAS mm to the camera of view 0 (source at the origin,
+z towards the detector). Imports neither :mod:`.quality` nor :mod:`.recovery`.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import numpy as np


def _blur(img, sigma: float):
    """Separable Gaussian blur (pixels) of (B, H, W), replicate padding; sigma <= 0.05:
    unchanged."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    if sigma <= 0.05:
        return img
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(img[:, None], (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1))[:, 0]


def detector_drr(line_integrals, k: float, sigma: float):
    """The DRR as the detector records it: ``-log(G_sigma * exp(-k L)) / k`` for (B, H, W)
    line integrals (intensity-domain blur of ``sigma`` pixels)."""
    import torch  # noqa: PLC0415

    if sigma <= 0.05:
        return line_integrals
    inten = torch.exp(-k * line_integrals.double())
    return (-torch.log(_blur(inten, sigma).clamp_min(1e-300)) / k).to(line_integrals.dtype)


def intensity_slope(drr, image) -> float:
    """Least-squares slope of the X-ray on the DRR (X-ray units per DRR unit)."""
    d = np.asarray(drr, float).ravel()
    x = np.asarray(image, float).ravel()
    d = d - d.mean()
    return float(np.dot(d, x - x.mean()) / max(np.dot(d, d), 1e-30))


class _DetectorProblem:
    """Residuals of all views for a batch of 7-vectors (twist about the CT centre, sigma
    in pixels) at full detector resolution."""

    def __init__(self, volume, views, init, similarity, drr_method, n_samples, slopes):
        import torch  # noqa: PLC0415

        from .refine import _features  # noqa: PLC0415

        dev = volume.device
        self.volume, self.views = volume, views
        self.similarity, self.drr_method, self.n_samples = similarity, drr_method, n_samples
        center = (init @ np.r_[volume.center_ras(), 1.0])[:3]
        c = torch.eye(4, dtype=torch.float64)
        c[:3, 3] = torch.as_tensor(center)
        self.c, self.c_inv = c.to(dev), torch.linalg.inv(c).to(dev)
        self.init = torch.as_tensor(init, dtype=torch.float64, device=dev)
        self.rel = [torch.as_tensor(v.camera0_to_view, dtype=torch.float64, device=dev)
                    for v in views]
        self.targets = [_features(v.image.to(dev)[None], similarity) for v in views]
        self.slopes = slopes
        self.center_cam = center

    def pose(self, twist):
        from SurgicalReg2D3DLib.poses import se3_exp  # noqa: PLC0415

        return self.c @ se3_exp(twist.double()) @ self.c_inv @ self.init

    def line_integrals(self, twist) -> List:
        """Per view: (B, H, W) plain DRRs of the twists (B, 6)."""
        import torch  # noqa: PLC0415

        from .drr import render_drr  # noqa: PLC0415

        pose = self.pose(twist)
        with torch.no_grad():
            return [render_drr(self.volume, v.camera, (rel @ pose).float(),
                               method=self.drr_method, n_samples=self.n_samples)
                    for v, rel in zip(self.views, self.rel)]

    def residuals_from(self, drrs, sigmas):
        import torch  # noqa: PLC0415

        from .refine import similarity_residuals  # noqa: PLC0415

        out = []
        for drr, target, k in zip(drrs, self.targets, self.slopes):
            model = torch.stack([detector_drr(drr[i:i + 1], k, float(s))[0]
                                 for i, s in enumerate(sigmas)])
            out.append(similarity_residuals(model, target, self.similarity)
                       / math.sqrt(len(self.views)))
        return torch.cat(out, dim=1).double()

    def residuals(self, x):
        x = x.double()
        sig = x[:, 6].clamp(0.0, 4.0).tolist()
        return self.residuals_from(self.line_integrals(x[:, :6]), sig)

    def jacobian(self, x, steps):
        import torch  # noqa: PLC0415

        x = x.double()
        b = x.shape[0]
        pert = x[:, None, :6] + torch.diag(steps[:6])[None]
        allx = torch.cat([x[:, None, :6], pert], dim=1).reshape(-1, 6)
        drrs = self.line_integrals(allx)
        sig = x[:, 6].clamp(0.0, 4.0)
        sig_rep = sig.repeat_interleave(7).tolist()
        r = self.residuals_from(drrs, sig_rep).reshape(b, 7, -1)
        base = [d.reshape(b, 7, *d.shape[1:])[:, 0] for d in drrs]
        hs = float(steps[6])
        r_s = self.residuals_from(base, (sig + hs).clamp(0.0, 4.0).tolist())
        cols = (r[:, 1:] - r[:, :1]) / steps[None, :6, None]
        col_s = (r_s - r[:, 0]) / hs
        return torch.cat([cols, col_s[:, None]], dim=1).transpose(1, 2)


def polish(volume, views, ct_to_camera, similarity: str = "ncc", iterations: int = 15,
           sigma0: float = 0.5, drr_method: str = "trilinear", n_samples=None,
           cancel=None) -> Optional[Dict[str, object]]:
    """Refine ``ct_to_camera`` (view 0) with the detector model of the module doc.

    Returns ``{"ct_to_camera", "sigma_px", "slope", "similarity" (detector-model
    similarity at the result, mean over views), "similarity_plain_start",
    "similarity_model_start", "shift_mm" (RMS motion of the CT box corners),
    "iterations", "time_s"}``, or ``None`` when the X-rays do not behave like ``-log``
    intensities of the DRR (slope <= 0 or not finite) or the polish made the similarity
    worse.
    """
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.optimize import levenberg_marquardt  # noqa: PLC0415
    from SurgicalReg2D3DLib.progress import check_cancel  # noqa: PLC0415

    from .refine import check_pose, fd_steps, prepare_views  # noqa: PLC0415

    t0 = time.perf_counter()
    views = prepare_views(views)
    pose = check_pose(ct_to_camera, "ct_to_camera")
    if n_samples is None:  # as the registration's finest level (sample_density 1)
        n_samples = max(16, int(max(volume.shape)))
    slopes = []
    rels = [np.asarray(v.camera0_to_view, float) for v in views]
    from .drr import render_drr  # noqa: PLC0415

    with torch.no_grad():
        for v, rel in zip(views, rels):
            drr = render_drr(volume, v.camera, rel @ pose, method=drr_method,
                             n_samples=n_samples)[0]
            slopes.append(intensity_slope(drr.cpu().numpy(), v.image.cpu().numpy()))
    if not all(np.isfinite(s) and s > 1e-3 for s in slopes):
        return None
    prob = _DetectorProblem(volume, views, pose, similarity, drr_method, n_samples, slopes)
    steps6 = fd_steps(views[0].camera, prob.center_cam, volume.device)
    steps = torch.cat([steps6, torch.tensor([0.05], dtype=torch.float64,
                                            device=volume.device)])
    x0 = torch.zeros(1, 7, dtype=torch.float64, device=volume.device)
    x0[0, 6] = float(sigma0)

    def callback(it, x, cost):
        check_cancel(cancel, "FluoroReg polish")
        return False

    with torch.no_grad():
        r_plain = prob.residuals_from(prob.line_integrals(x0[:, :6]), [0.0])
        r_start = prob.residuals(x0)
        res = levenberg_marquardt(prob.residuals, x0, max_iter=int(iterations),
                                  jacobian=lambda x: prob.jacobian(x, steps),
                                  tol_step=1e-6, tol_cost=1e-5, callback=callback)
        x = res.x
        r_end = prob.residuals(x)
        new_pose = prob.pose(x[:, :6])[0].cpu().numpy()
    sim_plain0 = 1.0 - 0.5 * float((r_plain ** 2).sum())
    sim_start = 1.0 - 0.5 * float((r_start ** 2).sum())
    sim_end = 1.0 - 0.5 * float((r_end ** 2).sum())
    if not np.isfinite(sim_end) or sim_end < sim_plain0 - 1e-9:
        return None
    corners = volume.corners_ras()
    p = np.c_[corners, np.ones(len(corners))]
    shift = float(np.sqrt((np.linalg.norm((p @ new_pose.T - p @ pose.T)[:, :3], axis=1) ** 2)
                          .mean()))
    return {"ct_to_camera": new_pose, "sigma_px": float(x[0, 6].clamp(0.0, 4.0)),
            "slope": [float(s) for s in slopes], "similarity": sim_end,
            "similarity_plain_start": sim_plain0, "similarity_model_start": sim_start,
            "shift_mm": shift, "iterations": int(getattr(res, "iterations", 0) or 0),
            "time_s": time.perf_counter() - t0}


def modelled_problem(prob, detector: dict):
    """A copy of a :class:`FluoroRegLib.refine._Problem` whose DRRs go through the
    detector model (``detector``: ``{"slope": [k per view], "sigma_px": s}``)."""
    from .refine import _Problem  # noqa: PLC0415

    class _Modelled(_Problem):
        def residuals(self, xi):
            import torch  # noqa: PLC0415

            from .drr import render_drr  # noqa: PLC0415
            from .refine import similarity_residuals  # noqa: PLC0415

            pose = self.pose(xi)
            out = []
            for rel, cam, target, k in zip(self.rel, self.cameras, self.targets,
                                           self.det_slopes):
                drr = render_drr(self.volume, cam, (rel @ pose).to(torch.float32),
                                 method=self.drr_method, n_samples=self.n_samples)
                drr = detector_drr(drr, k, self.det_sigma)
                out.append(similarity_residuals(drr, target, self.similarity)
                           / np.sqrt(self.n_views))
            return torch.cat(out, dim=1).to(xi.dtype)

    obj = _Modelled.__new__(_Modelled)
    obj.__dict__.update(prob.__dict__)
    obj.det_slopes = [float(k) for k in detector["slope"]]
    obj.det_sigma = float(detector["sigma_px"])
    return obj


def polished_result(volume, views, result, cancel=None, **kw):
    """``(result', detector)``: a copy of a :class:`~FluoroRegLib.refine.RegistrationResult`
    moved by :func:`polish` (``metrics`` gain ``polish_shift_mm``,
    ``detector_sigma_px``; ``similarity`` is the detector-model NCC), and the detector
    dict for :func:`FluoroRegLib.quality.assess`; ``(result, None)`` when the polish did
    not apply."""
    import copy  # noqa: PLC0415

    p = polish(volume, views, result.ct_to_camera, cancel=cancel, **kw)
    if p is None:
        return result, None
    out = copy.copy(result)
    out.metrics = dict(result.metrics)
    out.history = list(result.history)
    pose = np.asarray(p["ct_to_camera"], float)
    out.ct_to_camera = pose
    out.views_ct_to_camera = [np.asarray(v.camera0_to_view, float) @ pose for v in views]
    out.similarity = float(p["similarity"])
    out.metrics["polish_shift_mm"] = float(p["shift_mm"])
    out.metrics["detector_sigma_px"] = float(p["sigma_px"])
    out.time_s = float(result.time_s) + float(p["time_s"])
    return out, {"slope": p["slope"], "sigma_px": p["sigma_px"]}
