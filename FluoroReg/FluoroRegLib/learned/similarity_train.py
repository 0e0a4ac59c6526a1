"""The spherical deep similarity for one CT: training (``surgreg fluoro train --kind
similarity``), the model file, and refinement with the differentiable LM.

Training (:func:`train_similarity`), per step, on DRRs of this CT rendered on the fly:

1. true poses drawn in the training range about the nominal view (as the regressor's,
   :class:`~.sampling.TrainingRenderer`); the fixed images are their DRRs with the domain
   randomisation of :func:`~.sampling.randomise`;
2. moving poses: the true poses moved by a draw from the *refinement range*
   (``refine_rotation_deg`` / ``refine_translation_mm``, about the CT centre, camera
   axes): the errors the similarity must correct (the regressor's starts are well inside);
3. loss: ``1 - cos(g_eps, g_dist)``, the gradient of ``eps`` with respect to a left se(3)
   increment at the moving pose against the gradient of the geodesic distance to the true
   pose (``se3`` or ``so4``, :func:`.spherical.geodesic`). ``g_eps`` is taken by forward
   differences of ``eps`` over the 6 increments: the 7 DRRs per sample are constants
   (rendered without gradients by the compiled kernels) and only the feature network is
   differentiated, which is ~20x cheaper than the second-order gradient through the
   renderer (:func:`.spherical.gradient_matching_loss`, kept for tests);
4. every ``lm_every`` steps, plus ``lm_weight`` x the geodesic distance (/ 10 mm) after
   ``lm_train_steps`` steps of :func:`.spherical.differentiable_lm` from one moving pose:
   gradients flow through the LM steps (normal equations, increments, and the DRRs'
   first-order pose gradients) into the network.

Held-out check (before and after training): ``min(n_val, VAL_CASES)`` true poses and starts from a
generator training never uses; the mean/median CT-corner error (mm) at the start and
after :func:`refine_pose` (``lm_steps`` LM steps, no gradients).

Refinement (:func:`refine_pose`): the X-ray is resampled to the training camera
(:func:`~.sampling.prepare_xray`), DRRs of the block-averaged CT, ``lm_steps`` LM steps on
``eps``. ``spherical=False`` and ``distance="so4"`` give the ablations of the paper.

Several processes (``torchrun``): DistributedDataParallel as the regressor's training
(:mod:`.distributed`): each rank draws its own samples (generator seed ``seed * 1000 + 7 +
rank``), the stop decision is shared, rank 0 writes checkpoints and the model; the
held-out check runs on every rank (the same cases).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError

from . import spherical as sph

#: Held-out cases of the check before and after training (each is an LM refinement).
VAL_CASES = 16


#: The similarity's own settings (``TrainConfig.extra`` keys, recorded in the model).
@dataclass
class SimilaritySettings:
    spherical: bool = True
    distance: str = "se3"
    channels: int = 8
    width: int = 16
    refine_rotation_deg: float = 6.0
    refine_translation_mm: float = 15.0
    fd_rotation_rad: float = 2e-3
    fd_translation_mm: float = 0.5
    lm_steps: int = 6
    lm_train_steps: int = 2
    lm_every: int = 4
    lm_weight: float = 0.1
    lambda0: float = 1e-2
    decay: float = 0.5

    @classmethod
    def from_extra(cls, extra: Optional[dict]) -> "SimilaritySettings":
        s = cls()
        for k, v in (extra or {}).items():
            if hasattr(s, k):
                setattr(s, k, type(getattr(s, k))(v))
        if s.distance not in ("se3", "so4"):
            raise InputError(f"distance: expected 'se3' or 'so4', got {s.distance!r}")
        if not (0 < s.refine_rotation_deg < 90 and 0 < s.refine_translation_mm < 500):
            raise InputError("refinement range: need 0 < rotation < 90 deg and 0 < "
                             f"translation < 500 mm, got {s.refine_rotation_deg}, "
                             f"{s.refine_translation_mm}")
        return s

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _fd_increments(s: SimilaritySettings) -> torch.Tensor:
    h = torch.tensor([s.fd_rotation_rad] * 3 + [s.fd_translation_mm] * 3, dtype=torch.float64)
    return torch.cat([torch.zeros(1, 6, dtype=torch.float64), torch.diag(h)]), h


def fd_gradient_matching_loss(net, volume, camera, poses, true_poses, fixed, center_cam,
                              length_mm: float, s: SimilaritySettings, n_samples: int):
    """Mean ``1 - cos(g_eps, g_dist)`` with ``g_eps`` by forward differences over DRRs
    rendered without gradients (see the module docstring). ``poses``/``true_poses``
    (B, 4, 4) float64, ``fixed`` (B, H, W) randomised X-rays of ``true_poses``."""
    from ..drr import render_drr  # noqa: PLC0415

    b = poses.shape[0]
    xis, h = _fd_increments(s)
    moved = torch.stack([sph.left_compose(xis, poses[i], center_cam) for i in range(b)])
    with torch.no_grad():
        drr = render_drr(volume, camera, moved.reshape(-1, 4, 4).to(torch.float32),
                         n_samples=n_samples)
    dtype = next(net.parameters()).dtype
    phi_m = net(sph._standardise(drr).unsqueeze(1).to(dtype))
    phi_f = net(sph._standardise(fixed).unsqueeze(1).to(dtype))
    phi_f = phi_f.repeat_interleave(7, dim=0)
    eps = sph.similarity_eps(phi_m, phi_f, s.spherical).view(b, 7).double()
    g_eps = (eps[:, 1:] - eps[:, :1]) / h
    xi2 = torch.zeros(b, 6, dtype=torch.float64, requires_grad=True)
    d = sph.geodesic(sph.left_compose(xi2, poses, center_cam), true_poses, s.distance, length_mm)
    g_geo = torch.autograd.grad(d.sum(), xi2)[0]
    scale = torch.tensor([1 / length_mm] * 3 + [1.0] * 3, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(g_eps * scale, g_geo * scale, dim=1, eps=1e-12)
    return (1.0 - cos).mean()


def _residual_fn(net, volume, camera, fixed_image, n_samples):
    """:func:`.spherical.lm_residual_fn` with the compiled DRR kernels (first-order pose
    gradients are all the LM needs)."""
    from ..drr import render_drr  # noqa: PLC0415

    dtype = next(net.parameters()).dtype
    phi_f = net(sph._standardise(fixed_image)[None, None].to(dtype))

    def fn(poses):
        drr = render_drr(volume, camera, poses.to(torch.float32), n_samples=n_samples)
        phi_m = net(sph._standardise(drr).unsqueeze(1).to(dtype))
        return sph.residuals(phi_m, phi_f.expand_as(phi_m))

    return fn


def refine_pose(net, volume, camera, image, start, center_cam, s: SimilaritySettings,
                n_samples: int) -> np.ndarray:
    """``lm_steps`` LM steps on ``eps`` from ``start`` (4, 4) for a standardised training-
    camera image ``image`` (h, w); returns the pose (4, 4) float64 (no gradients)."""
    was = net.training
    net.eval()
    with torch.no_grad():
        fn = _residual_fn(net, volume, camera, torch.as_tensor(image, dtype=torch.float32),
                          n_samples)
        T, _ = sph.differentiable_lm(fn, torch.as_tensor(np.asarray(start, float)),
                                     torch.as_tensor(center_cam, dtype=torch.float64),
                                     steps=s.lm_steps, lambda0=s.lambda0, decay=s.decay,
                                     fd_step=(s.fd_rotation_rad, s.fd_translation_mm))
    net.train(was)
    return T.detach().cpu().numpy()


def _refine_range(s: SimilaritySettings):
    from .sampling import PoseRange  # noqa: PLC0415

    return PoseRange((s.refine_rotation_deg,) * 3, (s.refine_translation_mm,) * 3)


def _perturb(gen, true_poses, center_ras, s):
    """True poses moved by a draw from the refinement range about the CT centre."""
    from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415

    from .sampling import delta_to_pose, sample_deltas  # noqa: PLC0415

    b = true_poses.shape[0]
    r, t = sample_deltas(gen, b, _refine_range(s))
    c = true_poses[:, :3, :3] @ center_ras + true_poses[:, :3, 3]
    return torch.stack([delta_to_pose(so3_exp(r[i:i + 1]), t[i:i + 1], true_poses[i], c[i])[0]
                        for i in range(b)])


def evaluate_refinement(net, renderer, val, s: SimilaritySettings) -> dict:
    """Corner error (mm) of the held-out starts and of their LM refinements."""
    from .train_loop import _corner_points, pose_errors_batch  # noqa: PLC0415

    fixed, starts, truths = val
    corners = _corner_points(renderer.volume)
    out_poses = []
    for i in range(starts.shape[0]):
        c = (starts[i, :3, :3] @ renderer.center_ras + starts[i, :3, 3]).numpy()
        out_poses.append(refine_pose(net, renderer.volume, renderer.camera, fixed[i],
                                     starts[i].numpy(), c, s, renderer.n_samples))
    after = pose_errors_batch(torch.as_tensor(np.stack(out_poses)), truths, corners,
                              renderer.center_ras)["corner_mm"].numpy()
    before = pose_errors_batch(starts, truths, corners, renderer.center_ras)["corner_mm"].numpy()
    return {"start_corner_mm_mean": float(before.mean()),
            "start_corner_mm_median": float(np.median(before)),
            "corner_mm_mean": float(after.mean()), "corner_mm_median": float(np.median(after)),
            "corner_mm_p90": float(np.percentile(after, 90)),
            "improved_fraction": float(np.mean(after < before))}


def train_similarity(ctx: dict, cfg, out_path: Path, resume=None,
                     progress: Optional[Callable] = None, cancel=None,
                     log: Optional[Callable[[str], None]] = None) -> dict:
    """Train the similarity network; ``ctx`` is what :func:`.train.train_model` prepared
    after its input checks (``renderer``, ``meta``, ``device``, ``rot_len``,
    ``checkpoint``: the loaded ``resume`` file or None). Writes
    ``out_path`` (and ``<out>.ckpt.pt`` as it goes); returns the model dict."""
    from . import distributed  # noqa: PLC0415
    from .model_file import FORMAT, FORMAT_VERSION, save_model  # noqa: PLC0415
    from .sampling import randomise  # noqa: PLC0415
    from .train_loop import _cfg_dict, restore_checkpoint, run_budget_loop  # noqa: PLC0415

    say = log or (lambda msg: None)
    s = SimilaritySettings.from_extra(cfg.extra)
    renderer, meta, device, rot_len = ctx["renderer"], ctx["meta"], ctx["device"], ctx["rot_len"]
    world, rank, device = distributed.setup(device)
    ckpt = ctx.get("checkpoint")
    if ckpt is not None and ckpt.get("kind") != "similarity":
        raise InputError(f"resume: checkpoint {resume} is a {ckpt.get('kind')!r} model, not "
                         "'similarity'")
    torch.manual_seed(int(cfg.seed))
    net = sph.SphericalFeatureNet(s.channels, s.width, s.spherical).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.lr))
    gen = torch.Generator().manual_seed(int(cfg.seed) * 1000 + 7 + rank)
    step, elapsed_prev, _, history = restore_checkpoint(ckpt, net, opt, gen, rank, resume, say)
    model = distributed.wrap(net, device, world)
    val_gen = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003)
    vdrr, _, _, vposes = renderer.sample(val_gen, min(int(cfg.n_val), VAL_CASES))
    vfixed = sph._standardise(randomise(vdrr, val_gen, 0.5))
    val = (vfixed, _perturb(val_gen, vposes, renderer.center_ras, s), vposes)
    val_before = evaluate_refinement(net, renderer, val, s) if ckpt is None else \
        ckpt["training"].get("val_before", {})
    say(f"[train] similarity ({'spherical' if s.spherical else 'Euclidean'}, {s.distance}); "
        f"held-out corner error {val_before.get('start_corner_mm_mean', float('nan')):.1f} mm "
        f"at the starts, {val_before.get('corner_mm_mean', float('nan')):.1f} mm after "
        f"{s.lm_steps} LM steps (untrained)")
    arch = net.arch()
    train_state = {"command": cfg.command, "seed": int(cfg.seed), "config": _cfg_dict(cfg),
                   "similarity": s.to_dict(), "world_size": world, "device": str(device)}

    def model_dict(elapsed, val_after=None):
        st = dict(train_state, steps=step, elapsed_s=elapsed, history=history[-200:],
                  val_before=val_before)
        if val_after is not None:
            st["val_after"] = val_after
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "similarity",
                "arch": arch, "state_dict": state, **meta, "similarity": s.to_dict(),
                "training": st}

    ckpt_path = out_path.with_name(out_path.name + ".ckpt.pt")

    def write_checkpoint(elapsed):
        if rank != 0:
            return
        d = model_dict(elapsed)
        d.update(optimizer=opt.state_dict(), step=step, rng_state=gen.get_state())
        save_model(d, ckpt_path)

    running = []

    def one_step(frac, elapsed):
        nonlocal step, running
        drr, _, _, truths = renderer.sample(gen, int(cfg.batch_size))
        fixed = randomise(drr, gen, cfg.randomisation)
        moving = _perturb(gen, truths, renderer.center_ras, s)
        c_true = truths[:, :3, :3] @ renderer.center_ras + truths[:, :3, 3]
        loss = fd_gradient_matching_loss(model, renderer.volume, renderer.camera, moving,
                                         truths, fixed.to(device), renderer.c, rot_len,
                                         s, renderer.n_samples)
        if s.lm_train_steps and s.lm_every and step % s.lm_every == 0:
            fn = _residual_fn(model, renderer.volume, renderer.camera, fixed[0].to(device),
                              renderer.n_samples)
            T, _ = sph.differentiable_lm(fn, moving[0], c_true[0], steps=s.lm_train_steps,
                                         lambda0=s.lambda0, decay=s.decay,
                                         fd_step=(s.fd_rotation_rad, s.fd_translation_mm))
            loss = loss + s.lm_weight * sph.geodesic(T[None], truths[:1], "se3",
                                                     rot_len).mean() / 10.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(float(loss.detach()))
        if step % 10 == 0:
            history.append({"step": step, "elapsed_s": round(elapsed, 1),
                            "loss": float(np.mean(running))})
            say(f"[train] step {step} {elapsed / 60:.1f} min loss {np.mean(running):.4f}")
            running = []
        return float(loss.detach())

    stop_reason, elapsed = run_budget_loop(cfg, device, world, opt, one_step, lambda: step,
                                           write_checkpoint, ckpt_path, elapsed_prev, cancel,
                                           progress, say, "[train]")
    val_after = evaluate_refinement(net, renderer, val, s)
    say(f"[train] done ({stop_reason}): {step} steps, {elapsed / 60:.1f} min; held-out corner "
        f"error after {s.lm_steps} LM steps {val_before.get('corner_mm_mean', float('nan')):.1f}"
        f" -> {val_after['corner_mm_mean']:.1f} mm (starts "
        f"{val_after['start_corner_mm_mean']:.1f} mm)")
    result = model_dict(elapsed, val_after)
    result["training"]["stop_reason"] = stop_reason
    return distributed.write_final(result, out_path, rank, world, write_checkpoint, elapsed,
                                   getattr(cfg, "save_replicas", False))


def load_similarity(model, hu=None, ijk_to_ras=None, camera=None, force: bool = False):
    """``(data, net, settings)`` of a similarity model (path or dict), checked against the
    CT and the camera like the regressor."""
    from .model_file import check_model_matches, load_model_file  # noqa: PLC0415

    data = model if isinstance(model, dict) else load_model_file(model)
    if data["kind"] != "similarity":
        raise InputError(f"model: expected a similarity model, got kind {data['kind']!r}")
    if camera is not None and ijk_to_ras is not None:
        check_model_matches(data, hu, ijk_to_ras, camera, force=force)
    a = data["arch"]
    net = sph.SphericalFeatureNet(int(a["channels"]), int(a["width"]), bool(a["spherical"]))
    net.load_state_dict(data["state_dict"])
    net.eval()
    return data, net, SimilaritySettings.from_extra(data["similarity"])


def refine_with_model(data, net, s: SimilaritySettings, hu, ijk_to_ras, image, camera,
                      start) -> np.ndarray:
    """Refine ``start`` (``ct_to_camera`` 4x4) for an X-ray ``image`` of ``camera`` with a
    loaded similarity model (:func:`load_similarity`): the CT block-averaged as in
    training, the image resampled to the training camera, ``lm_steps`` LM steps."""
    from ..drr import DRRVolume  # noqa: PLC0415
    from ..geometry import XRayCamera  # noqa: PLC0415
    from ..simulate import downsample_ct  # noqa: PLC0415
    from .sampling import prepare_xray  # noqa: PLC0415

    inp = data["input"]
    f = int(inp["ct_downsample"])
    hu_t, m_t = downsample_ct(np.asarray(hu, np.float32), np.asarray(ijk_to_ras, float), f) \
        if f > 1 else (np.asarray(hu, np.float32), np.asarray(ijk_to_ras, float))
    volume = DRRVolume.from_hu(hu_t, m_t)
    cam = XRayCamera.from_json(inp["train_camera"])
    img = prepare_xray(image, camera, cam)[0, 0]
    start = np.asarray(start, float)
    c = (start @ np.r_[volume.center_ras(), 1.0])[:3]
    return refine_pose(net, volume, cam, img, start, c, s, int(inp["n_samples"]))
