"""Intensity-based CT-to-X-ray registration (single view or several views).

The unknown is the CT's pose in the first view's camera, ``ct_to_camera`` (4x4, CT RAS
mm -> camera mm). Each view ``k`` has its own camera and a fixed, known C-arm motion
``camera0_to_view`` (identity for view 0), so view ``k`` sees the CT at
``camera0_to_view[k] @ ct_to_camera``.

Pose parametrisation: a twist ``xi = (omega, v)`` (rotation first, radians and mm) that
moves the CT about its own centre ``c`` (expressed in camera 0 at the start pose):

    ct_to_camera(xi) = C @ se3_exp(xi) @ inv(C) @ ct_to_camera_init,   C = translate(c)

so rotations do not swing the CT around the far-away X-ray source.

Similarities (``"ncc"``, ``"gradncc"``) are written as residual vectors whose sum of
squares is ``2 * (1 - NCC)`` per image (each image normalised to zero mean and unit
norm), so Levenberg-Marquardt (the core's ``levenberg_marquardt``) minimises exactly
``1 - NCC``; views are weighted equally. The Jacobian is a batched forward difference:
all 7 poses (start + one per parameter) are rendered in one DRR call.
An Adam baseline optimises the same loss with autograd through the renderer.

Optimisation runs on a resolution pyramid (``levels``: detector downsampling factors,
coarse to fine, via ``XRayCamera.scaled``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from SurgicalReg2D3DLib.optimize import levenberg_marquardt
from SurgicalReg2D3DLib.poses import check_rigid, se3_exp
from SurgicalReg2D3DLib.progress import check_cancel, report, sub_progress
from SurgicalReg2D3DLib.similarity import gradient_ncc, ncc

from .drr import DRRVolume, render_drr
from .geometry import camera_parameters

SIMILARITIES = ("ncc", "gradncc")
OPTIMIZERS = ("lm", "adam")


@dataclass
class XRayView:
    """One X-ray image with its camera and its C-arm motion from view 0.

    ``image``: (H, W) negative-log X-ray (attenuation is bright), numpy or tensor;
    ``camera``: ``XRayCamera`` whose ``size_px`` is (W, H); ``camera0_to_view``: (4, 4).
    """

    image: object
    camera: object
    camera0_to_view: np.ndarray = field(default_factory=lambda: np.eye(4))


@dataclass
class RegistrationResult:
    """Result of a registration; poses are ``ct_to_camera`` of view 0 (4x4 float64).

    ``history``: one dict per iteration (``level``, ``iteration``, ``loss`` = 1 - sim).
    ``similarity``: final similarity (NCC or gradient NCC, mean over views, at the
    finest level). ``views_ct_to_camera``: the pose in every view's camera.
    """

    ct_to_camera: np.ndarray
    views_ct_to_camera: List[np.ndarray]
    similarity: float
    method: str
    history: List[Dict[str, float]]
    time_s: float
    metrics: Dict[str, float] = field(default_factory=dict)
    outputs: Dict[str, str] = field(default_factory=dict)
    #: similarity at the start pose, same measure as the result's (set by register_arrays)
    similarity_start: float = float("nan")
    #: SurgicalReg2D3DLib.quality.Quality of the result when known (``failed`` when it
    #: ended worse than it started)
    quality: Optional[object] = None

    def to_dict(self) -> dict:
        out = {"ct_to_camera": self.ct_to_camera.tolist(),
               "similarity": self.similarity, "method": self.method,
               "time_s": self.time_s, "iterations": len(self.history),
               "metrics": dict(self.metrics)}
        if np.isfinite(self.similarity_start):
            out["similarity_start"] = float(self.similarity_start)
        if self.quality is not None:
            out["quality"] = self.quality.to_dict()
        if len(self.views_ct_to_camera) > 1:
            out["views"] = [{"ct_to_camera": p.tolist()} for p in self.views_ct_to_camera]
        return out


# -- input checks ----------------------------------------------------------------------
def check_xray_image(image, name: str = "X-ray image") -> torch.Tensor:
    """A float32 (H, W) tensor copy of a 2D X-ray image; clear errors for bad images."""
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
    else:
        arr = np.asarray(image)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: expected a numeric image, got dtype {arr.dtype}")
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape([s for s in arr.shape if s != 1] if arr.size > 1 else (1, 1))
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2D image, got shape {tuple(arr.shape)}")
    if arr.size == 0 or min(arr.shape) < 8:
        raise InputError(f"{name}: image is too small ({arr.shape[1]} x {arr.shape[0]} px), "
                         "need at least 8 x 8")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN or infinite values")
    if not np.any(arr):
        raise InputError(f"{name}: all pixels are zero")
    if float(arr.max()) == float(arr.min()):
        raise InputError(f"{name}: all pixels have the same value ({float(arr.min()):g})")
    return torch.as_tensor(arr.astype(np.float32))


def check_pose(pose, name: str) -> np.ndarray:
    """A rigid (4, 4) float64 numpy copy; NaN, shear, scale or reflection is an error."""
    try:
        arr = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError(f"{name}: expected a 4x4 matrix of numbers") from None
    if arr.shape != (4, 4):
        raise GeometryError(f"{name}: expected a 4x4 matrix, got shape {arr.shape}")
    return check_rigid(arr, name).numpy().copy()



def check_poses(poses, n_images: int) -> list:
    """One checked ``ct_to_camera`` (:func:`check_pose`) per X-ray image."""
    if len(poses) != n_images:
        raise InputError(f"initial pose: {n_images} X-ray images but {len(poses)} "
                         "initial poses")
    return [check_pose(p, f"initial ct_to_camera of view {k + 1}") for k, p in enumerate(poses)]

def prepare_views(views: Sequence[XRayView]) -> List[XRayView]:
    """Checked copies of the views (images as tensors, geometry matching each image)."""
    if len(views) == 0:
        raise InputError("X-ray images: at least one view is needed")
    out = []
    for k, view in enumerate(views):
        name = "X-ray image" if len(views) == 1 else f"X-ray image {k + 1}"
        img = check_xray_image(view.image, name)
        p = camera_parameters(view.camera)
        if (p.height, p.width) != tuple(img.shape):
            raise GeometryError(f"X-ray geometry: size_px [W, H] = [{p.width}, {p.height}] does "
                                f"not match {name.lower()} (H, W) = {tuple(img.shape)}")
        rel = check_pose(view.camera0_to_view, f"camera0_to_view of view {k + 1}")
        out.append(XRayView(img, view.camera, rel))
    return out


# -- similarity residuals ----------------------------------------------------------------
def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit L2 norm over the last two dims (B, ..., H, W) -> same shape."""
    flat = x.flatten(-2)
    flat = flat - flat.mean(-1, keepdim=True)
    flat = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return flat.reshape(x.shape)


def _features(img: torch.Tensor, similarity: str) -> torch.Tensor:
    """(B, H, W) -> (B, C, h, w) normalised features whose dot products are NCCs."""
    if similarity == "ncc":
        return _normalise(img.unsqueeze(1))
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                      dtype=img.dtype, device=img.device) / 8.0
    k = torch.stack([kx, kx.t()])[:, None]
    g = F.conv2d(img.unsqueeze(1), k)  # (B, 2, H-2, W-2): d/dx, d/dy
    return _normalise(g)


def similarity_residuals(drr: torch.Tensor, target_features: torch.Tensor,
                         similarity: str) -> torch.Tensor:
    """(B, R) residuals with ``sum r^2 = 2 * (C - sum_c NCC_c)`` / C for C channels."""
    f = _features(drr, similarity)
    c = f.shape[1]
    return ((f - target_features) / np.sqrt(c)).flatten(1)


def image_similarity(drr, image, similarity: str = "ncc") -> torch.Tensor:
    """Core similarity of a DRR batch (B, H, W) and an image (H, W): (B,)."""
    fn = ncc if similarity == "ncc" else gradient_ncc
    b = drr.shape[0]
    return fn(drr, image.expand(b, *image.shape).to(drr.dtype))


def _downsample_image(img: torch.Tensor, camera) -> torch.Tensor:
    p = camera_parameters(camera)
    if (p.height, p.width) == tuple(img.shape):
        return img
    return F.interpolate(img[None, None], size=(p.height, p.width), mode="area")[0, 0]


# -- the registration ------------------------------------------------------------------
class _Problem:
    """Residuals of all views at one pyramid level for a batch of twists (B, 6)."""

    def __init__(self, volume: DRRVolume, views, level_cameras, init: np.ndarray,
                 center_cam: np.ndarray, similarity: str, drr_method: str,
                 n_samples: Optional[int]):
        dev = volume.device
        self.volume = volume
        self.cameras = level_cameras
        self.similarity = similarity
        self.drr_method = drr_method
        self.n_samples = n_samples
        c = torch.eye(4, dtype=torch.float64)
        c[:3, 3] = torch.as_tensor(center_cam)
        self.c = c.to(dev)
        self.c_inv = torch.linalg.inv(c).to(dev)
        self.init = torch.as_tensor(init, dtype=torch.float64, device=dev)
        self.rel = [torch.as_tensor(v.camera0_to_view, dtype=torch.float64, device=dev)
                    for v in views]
        self.targets = []
        for v, cam in zip(views, level_cameras):
            img = _downsample_image(v.image.to(dev), cam)
            self.targets.append(_features(img[None], similarity))
        self.n_views = len(views)

    def pose(self, xi: torch.Tensor) -> torch.Tensor:
        """(B, 6) twists -> (B, 4, 4) float64 ct_to_camera (view 0)."""
        return self.c @ se3_exp(xi.to(torch.float64)) @ self.c_inv @ self.init

    def residuals(self, xi: torch.Tensor) -> torch.Tensor:
        pose = self.pose(xi)
        out = []
        for rel, cam, target in zip(self.rel, self.cameras, self.targets):
            drr = render_drr(self.volume, cam, (rel @ pose).to(torch.float32),
                             method=self.drr_method, n_samples=self.n_samples)
            out.append(similarity_residuals(drr, target, self.similarity) / np.sqrt(self.n_views))
        r = torch.cat(out, dim=1).to(xi.dtype)
        if not r.requires_grad:  # remember the last two evaluations for the Jacobian
            self._recent = (getattr(self, "_recent", ()) + ((xi.detach().clone(), r),))[-2:]
        return r

    def jacobian(self, xi: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Forward-difference Jacobian (B, R, 6); all perturbed poses in one batch. The
        residuals at ``xi`` itself are reused when they were just evaluated (the
        optimiser always has them), which saves one render in seven. A second call at
        the same ``xi`` and ``steps`` (Levenberg-Marquardt after a rejected step: the
        point did not move) returns the same Jacobian without rendering: the renders
        are deterministic, so the result is identical."""
        key = getattr(self, "_last_jac", None)
        if key is not None and key[0].shape == xi.shape and torch.equal(key[0], xi.detach()) \
                and torch.equal(key[1], steps):
            return key[2].clone()
        jac = self._jacobian(xi, steps)
        self._last_jac = (xi.detach().clone(), steps.detach().clone(), jac.detach().clone())
        return jac

    def _jacobian(self, xi: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        b = xi.shape[0]
        pert = xi[:, None, :] + torch.diag(steps)[None]  # (B, 6, 6)
        recent = getattr(self, "_recent", ())
        base = next((r for x, r in recent
                     if x.shape == xi.shape and torch.equal(x, xi.detach())), None)
        with torch.no_grad():
            if base is not None:
                r_pert = self.residuals(pert.reshape(-1, 6)).reshape(b, 6, -1)
                r = torch.cat([base.reshape(b, 1, -1), r_pert], dim=1)
            else:
                allx = torch.cat([xi[:, None, :], pert], dim=1).reshape(-1, 6)
                r = self.residuals(allx).reshape(b, 7, -1)
        self._recent = recent  # the perturbed evaluations are not worth remembering
        return ((r[:, 1:] - r[:, :1]) / steps[None, :, None]).transpose(1, 2)


def level_volume(volume: DRRVolume, camera, center_cam, cache: Dict[int, DRRVolume],
                 ct_resolution: Optional[float] = 1.0) -> DRRVolume:
    """The CT for one pyramid level: ``volume`` block-averaged (attenuation) by the integer
    factor ``round(pixel size at the CT / (ct_resolution x voxel size))``, so that a voxel
    is about what one detector pixel of this level resolves; the DRR sample count (a
    multiple of the largest dimension) shrinks with it. ``ct_resolution
    None``: always the full volume. Factor 1 returns ``volume`` itself. Voxel ``i'`` is
    the mean of voxels ``f i' .. f i' + f - 1`` (a partial block at the far edge is
    dropped), centred at ``f i' + (f - 1) / 2``."""
    if ct_resolution is None:
        return volume
    voxel = float(np.linalg.norm(volume.ijk_to_ras[:3, :3], axis=0).max())
    f = int(np.floor(pixel_mm_at(camera, center_cam) / (float(ct_resolution) * voxel) + 0.5))
    f = max(1, min(f, min(volume.shape) // 2))
    if f == 1:
        return volume
    if f not in cache:
        k, j, i = (s // f for s in volume.shape)
        mu = volume.mu[: k * f, : j * f, : i * f].float()
        mu = F.avg_pool3d(mu[None, None], f)[0, 0].to(volume.mu.dtype)
        scale = np.diag([f, f, f, 1.0])
        scale[:3, 3] = (f - 1) / 2.0
        cache[f] = DRRVolume(mu.contiguous(), volume.ijk_to_ras @ scale)
    return cache[f]


def _check_levels(levels) -> List[float]:
    levels = [float(v) for v in levels]
    if not levels or any(not np.isfinite(v) or v < 1 for v in levels):
        raise InputError(f"levels: expected downsampling factors >= 1, got {levels}")
    return levels


def pixel_mm_at(camera, center_cam) -> float:
    """Size (mm) of one detector pixel back-projected to the depth of ``center_cam`` (mm in
    the camera frame)."""
    p = camera_parameters(camera)
    return p.sx * float(np.linalg.norm(center_cam)) / p.f


def fd_steps(camera, center_cam, device) -> torch.Tensor:
    """Finite-difference steps (6,) of the pose twist: 0.2 pixel of motion at the CT centre
    (``center_cam``, mm in the camera frame) for rotation (rad, over a 100 mm lever) and
    translation (mm)."""
    px_mm = pixel_mm_at(camera, center_cam)
    return torch.tensor([0.2 * px_mm / 100.0] * 3 + [0.2 * px_mm] * 3, dtype=torch.float64,
                        device=device)


def register_intensity(volume: DRRVolume, views: Sequence[XRayView], init_ct_to_camera,
                       similarity: str = "ncc", optimizer: str = "lm",
                       levels: Sequence[float] = (4, 2, 1), iterations: Optional[int] = None,
                       drr_method: str = "trilinear", n_samples: Optional[int] = None,
                       adam_lr: float = 0.02, landmarks_ras: Optional[np.ndarray] = None,
                       true_ct_to_camera=None, progress=None, cancel=None,
                       ct_resolution: Optional[float] = 1.0,
                       sample_density: float = 1.0,
                       stop_px: Optional[float] = 0.01) -> RegistrationResult:
    """Register the CT to one or more X-ray views by maximising NCC or gradient NCC.

    ``volume``: :class:`DRRVolume`; ``views``: :class:`XRayView` list; ``init_ct_to_camera``:
    (4, 4) start pose of view 0. ``optimizer``: ``"lm"`` (Levenberg-Marquardt) or
    ``"adam"``; ``iterations`` per pyramid level (default 10 for LM, which mostly stops on
    its tolerances before; 30 for Adam). With ``landmarks_ras`` and
    ``true_ct_to_camera`` the result's metrics include the mTRE (mm). Inputs are not
    modified. ``ct_resolution``: per level, the CT is block-averaged to about this many
    voxels per detector pixel at the CT (:func:`level_volume`; ``None``: full CT at every
    level); the final similarity uses the full CT. ``sample_density``: DRR samples per
    ray per voxel of the level CT's largest dimension when ``n_samples`` is not given (the
    renderer's own default is 1.5). ``stop_px`` (LM): end a pyramid level once the step
    LM proposes (accepted or not) would move the CT by less than this many pixels of
    the level at the CT (rotation over a 100 mm lever plus translation); after a rejected
    step LM only retries shorter steps, so nothing that moves the pose more can follow.
    ``None``: LM's own tolerances and ``iterations`` only. The default 0.01 px was chosen
    on the cases of ``benchmarks/fluoro_accuracy.py`` and the command's simulated cases
    (``benchmarks/fluoro_defaults_sweep.py``, results in
    ``benchmarks/results/fluoro_speed_defaults.md``): the same mTRE per case to < 0.01
    mm, about half the CPU time.
    """
    if similarity not in SIMILARITIES:
        raise InputError(f"similarity: expected one of {SIMILARITIES}, got {similarity!r}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")
    if iterations is None:
        iterations = 10 if optimizer == "lm" else 30
    if int(iterations) < 1:
        raise InputError(f"iterations: must be >= 1, got {iterations}")
    levels = _check_levels(levels)
    views = prepare_views(views)
    init = check_pose(init_ct_to_camera, "initial ct_to_camera")
    start = time.perf_counter()
    center_cam = (init @ np.r_[volume.center_ras(), 1.0])[:3]
    current = init.copy()
    history: List[Dict[str, float]] = []
    method = f"{similarity}-{optimizer}"
    level_cache: Dict[int, DRRVolume] = {}
    for li, factor in enumerate(levels):
        check_cancel(cancel, "FluoroReg registration")
        cams = [v.camera if factor == 1 else v.camera.scaled(factor) for v in views]
        lvol = level_volume(volume, cams[0], center_cam, level_cache, ct_resolution)
        lvl_samples = n_samples or max(16, int(float(sample_density) * max(lvol.shape)))
        prob = _Problem(lvol, views, cams, current, center_cam, similarity, drr_method,
                        lvl_samples)
        sub = sub_progress(progress, li / len(levels), (li + 1) / len(levels))
        steps = fd_steps(cams[0], center_cam, volume.device)
        px_mm = pixel_mm_at(cams[0], center_cam)
        x0 = torch.zeros(1, 6, dtype=torch.float64, device=volume.device)
        if optimizer == "lm":
            last_x = [x0.clone()]

            def callback(it, x, cost, _li=li, _prob=prob, _px=px_mm):
                history.append({"level": _li, "factor": factor, "iteration": it,
                                "loss": float(cost[0])})
                report(sub, it / iterations, f"level {_li + 1}/{len(levels)} iteration {it}: "
                       f"1 - similarity = {float(cost[0]):.4f}")
                check_cancel(cancel, "FluoroReg registration")
                if stop_px is None:
                    return False
                tried = getattr(_prob, "_recent", ())
                proposed = tried[-1][0] if tried else x  # LM's last trial point
                step = (proposed - last_x[0])[0]
                last_x[0] = x.clone()
                moved_mm = float(step[:3].norm()) * 100.0 + float(step[3:].norm())
                return moved_mm < float(stop_px) * _px

            res = levenberg_marquardt(prob.residuals, x0, max_iter=int(iterations),
                                      jacobian=lambda x: prob.jacobian(x, steps),
                                      tol_step=1e-6, tol_cost=1e-5, callback=callback,
                                      cancel=cancel)
            x = res.x
        else:
            scale = torch.tensor([1 / 100.0] * 3 + [1.0] * 3, dtype=torch.float64,
                                 device=volume.device)
            y = torch.zeros(1, 6, dtype=torch.float64, device=volume.device, requires_grad=True)
            opt = torch.optim.Adam([y], lr=adam_lr * 50 * px_mm / 2.0 / (li + 1))
            best = (np.inf, y.detach().clone())
            for it in range(int(iterations)):
                check_cancel(cancel, "FluoroReg registration")
                opt.zero_grad()
                r = prob.residuals(y * scale)
                loss = 0.5 * (r ** 2).sum()
                loss.backward()
                if float(loss.detach()) < best[0]:
                    best = (float(loss.detach()), y.detach().clone())
                opt.step()
                history.append({"level": li, "factor": factor, "iteration": it + 1,
                                "loss": float(loss.detach())})
                report(sub, (it + 1) / iterations, f"level {li + 1}/{len(levels)} iteration "
                       f"{it + 1}: 1 - similarity = {float(loss.detach()):.4f}")
            x = best[1] * scale
        with torch.no_grad():
            current = prob.pose(x)[0].cpu().numpy()
    # Final similarity at full resolution with the core's measure.
    with torch.no_grad():
        sims = []
        views_pose = []
        for v in views:
            pose_k = v.camera0_to_view @ current
            views_pose.append(pose_k)
            drr = render_drr(volume, v.camera, pose_k, method=drr_method, n_samples=n_samples)
            sims.append(float(image_similarity(drr, v.image.to(drr.device), similarity)[0]))
    report(progress, 1.0, "registration done")
    result = RegistrationResult(current, views_pose, float(np.mean(sims)), method, history,
                                time.perf_counter() - start)
    if landmarks_ras is not None and true_ct_to_camera is not None:
        result.metrics.update(pose_errors(current, check_pose(true_ct_to_camera, "true ct_to_camera"),
                                          np.asarray(landmarks_ras, float), views[0].camera))
    return result


def pose_errors(est: np.ndarray, true: np.ndarray, landmarks_ras: np.ndarray, camera) -> Dict[str, float]:
    """Error measures of an estimated ``ct_to_camera`` against the truth, named clearly:

    - ``mtre_mm``: mean 3D target registration error of the landmarks (primary);
    - ``mpe_px`` / ``mpe_mm``: mean projection error on the detector (pixels / mm);
    - ``mrpd_mm``: mean re-projection distance (true landmark to the back-projected ray
      of its estimated projection);
    - ``dgeo_rot_mm`` / ``dgeo_trans_mm`` / ``dgeo_mm``: double geodesic distance with
      radius SDD / 2 on the inverse poses (camera in CT frame), as DiffPose reports it;
    - ``rot_deg`` and ``trans_mm``: rotation angle and translation about the CT centre.
    """
    from SurgicalReg2D3DLib import metrics  # noqa: PLC0415
    from SurgicalReg2D3DLib.poses import double_geodesic, invert_pose  # noqa: PLC0415

    e = torch.as_tensor(est, dtype=torch.float64)
    t = torch.as_tensor(true, dtype=torch.float64)
    pts = torch.as_tensor(landmarks_ras, dtype=torch.float64)
    mpe_px, mpe_mm = metrics.mean_projection_error(camera, e, t, pts)
    rot, trans, comb = double_geodesic(invert_pose(e), invert_pose(t),
                                       float(camera.source_to_detector_mm) / 2.0)
    rel = e @ torch.linalg.inv(t)
    angle = float(metrics.rotation_error_deg(e[:3, :3], t[:3, :3]))
    centroid = pts.mean(0)
    c_true = t[:3, :3] @ centroid + t[:3, 3]
    c_est = rel[:3, :3] @ c_true + rel[:3, 3]
    return {"mtre_mm": float(metrics.mtre(e, t, pts)), "mpe_px": float(mpe_px),
            "mpe_mm": float(mpe_mm), "mrpd_mm": float(metrics.reprojection_distance_mm(e, t, pts)),
            "dgeo_rot_mm": float(rot), "dgeo_trans_mm": float(trans), "dgeo_mm": float(comb),
            "rot_deg": angle, "trans_mm": float((c_est - c_true).norm())}
