"""Training of the learned PPC update for one CT and one detector
(``surgreg fluoro train --kind ppc``).

Samples (:class:`PPCSampler`, SYNTHETIC, rendered on the fly in batches):

- the true pose is a training pose of :mod:`.sampling` (``Delta @ nominal`` in the
  model's range); the fixed image is its DRR with the domain randomisation of
  :func:`.sampling.randomise` (a fresh draw at every step);
- the start pose is the true pose moved by a second ``Delta`` about where the CT centre
  lands in the true camera frame: rotation-vector and translation components uniform in
  ``s * [-range, range]`` with ``s ~ U(0, 1)`` per sample, shrunk so that the start's
  mTRE (on 200 of the CT's edge points) is at most ``max_start_mtre_mm`` (45 mm): starts
  from 0 to 45 mm;
- the moving image is the clean DRR at the start pose; the contour points are those of
  the start pose (:func:`.ppc_net.contour_points`, ``points`` per sample, random);
- the true flow of a contour point is the projection of the same 3D point at the true
  pose minus its projection at the start (training-camera pixels).

Loss per batch: ``mean(min(mTRE after one update, 100 mm)) / 10 mm + epe_weight *
mean end-point error (px)`` over the valid points (the error along the contour normal:
the tangential part of the true flow is not observable on a contour and PPC does not use
it); the update is the differentiable
weighted PPC solve (:func:`.ppc_net.ppc_solve`, no trust region, Huber re-weighting
as the classic), so the
mTRE term trains the flow and the attention weights through the solve.

The loop (time budget ``max_minutes`` or ``max_steps``, cosine learning rate, checkpoints
``<out>.ckpt.pt`` every ``checkpoint_every_s``, ``resume``, Cancel keeps the checkpoint)
follows :func:`.train.train_model`. Held-out: ``n_val`` samples from a generator that
training never uses, rendered once; reported as the one-update mTRE before / after and its
ratio (the reduction factor), before and after training.

Several processes (``torchrun``): DistributedDataParallel as the regressor's training
(:mod:`.distributed`): each rank draws its own samples (generator seed ``seed * 1000 +
rank``), the stop decision is shared, rank 0 writes checkpoints and the model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError

from .model_file import (FORMAT, FORMAT_VERSION, ModelFileError, check_model_matches,
                         ct_fingerprint, load_model_file, save_model)
from .ppc_net import (LearnedPPC, apply_update, camera_tensor, contour_points, edge_set,
                      ppc_rows, ppc_solve)
from .sampling import (PoseRange, check_range, ct_factor_for, delta_to_pose, nominal_center_cam,
                       randomise, sample_deltas, standardise, training_factor)

DEFAULTS = {"points": 128, "cos_tangent": 0.25, "damping": 0.05, "edge_max_points": 2000,
            "max_start_mtre_mm": 45.0, "epe_weight": 0.1, "attention": True, "features": 16,
            "flow_scale_px": 4.0, "min_points": 8, "flow": "profile", "search_px": 16,
            "huber_iterations": 3}


def _opt(cfg, key):
    return (cfg.extra or {}).get(key, DEFAULTS[key])


def _apply(T: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]


def mtre_batch(A: torch.Tensor, B: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Mean distance (B,) of ``points`` (N, 3) RAS mapped by poses ``A`` and ``B``."""
    return (_apply(A, points.to(A)) - _apply(B.to(A), points.to(A))).norm(dim=-1).mean(-1)


class PPCSampler:
    """Training samples of the learned PPC update (see the module docstring)."""

    def __init__(self, volume, camera, nominal: np.ndarray, pose_range: PoseRange,
                 n_samples: int, edges, points: int, cos_tangent: float,
                 max_start_mtre_mm: float, target_seed: int = 0):
        self.volume, self.camera, self.range = volume, camera, pose_range
        self.cam = camera_tensor(camera)
        self.nominal = torch.as_tensor(np.asarray(nominal, float))
        self.center = torch.as_tensor(volume.center_ras(), dtype=torch.float64)
        self.c = torch.as_tensor(nominal_center_cam(nominal, volume.center_ras()))
        self.n_samples = int(n_samples)
        self.edges = edges
        self.points, self.cos_tangent = int(points), float(cos_tangent)
        self.max_start = float(max_start_mtre_mm)
        g = torch.Generator().manual_seed(int(target_seed))
        n = edges[0].shape[0]
        self.targets = edges[0][torch.randperm(n, generator=g)[:200]]

    def starts_from(self, truth: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Start poses around ``truth`` (B, 4, 4): 0 .. ``max_start_mtre_mm`` mTRE."""
        from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415

        b = truth.shape[0]
        r, t = sample_deltas(gen, b, self.range)
        s = torch.rand(b, 1, generator=gen, dtype=torch.float64)
        r, t = r * s, t * s
        c_true = _apply(truth, self.center[None])[:, 0]
        for _ in range(3):  # shrink to at most max_start (rotation is not linear)
            start = _delta_about(so3_exp(r), t, c_true) @ truth
            e = mtre_batch(start, truth, self.targets)
            f = torch.clamp(self.max_start / e.clamp_min(1e-9), max=1.0)[:, None]
            if bool((f >= 1.0).all()):
                break
            r, t = r * f, t * f
        return _delta_about(so3_exp(r), t, c_true) @ truth

    def sample(self, gen: torch.Generator, n: int) -> dict:
        """One batch: raw DRRs of the truth (``fixed_raw``, randomised per step), the
        standardised DRR at the start (``moving``), poses, contour points, true flow."""
        from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415

        from ..drr import render_drr  # noqa: PLC0415

        r, t = sample_deltas(gen, n, self.range)
        truth = delta_to_pose(so3_exp(r), t, self.nominal, self.c)
        start = self.starts_from(truth, gen)
        with torch.no_grad():
            drr = render_drr(self.volume, self.camera, torch.cat([truth, start]).float(),
                             n_samples=self.n_samples).float().cpu()
        P, uv, n2, valid, idx = contour_points(self.edges[0], self.edges[1], start, self.cam,
                                               self.points, self.cos_tangent, generator=gen)
        P_true = _apply(truth, self.edges[0])  # (B, N, 3)
        from .ppc_net import project  # noqa: PLC0415

        uv_true = project(P_true.gather(1, idx[..., None].expand(-1, -1, 3)), self.cam)
        c0 = _apply(start, self.center[None])[:, 0]
        return {"fixed_raw": drr[:n], "moving": standardise(drr[n:]), "truth": truth,
                "start": start, "P": P, "uv": uv, "n2": n2, "valid": valid,
                "flow_true": uv_true - uv, "c0": c0,
                "mtre_before": mtre_batch(start, truth, self.targets)}


def _delta_about(R: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``[[R, c - R c + t], [0, 1]]`` with per-sample centres ``c`` (B, 3)."""
    b = R.shape[0]
    d = torch.zeros(b, 4, 4, dtype=R.dtype)
    d[:, :3, :3] = R
    d[:, :3, 3] = c - (R @ c[..., None])[..., 0] + t
    d[:, 3, 3] = 1.0
    return d


def one_update(net, fixed, batch: dict, cam, damping: float, huber_iterations: int = 3):
    """The learned update of a batch: ``(poses after (B, 4, 4), flow (B, K, 2), weights)``;
    the solve re-weights with Huber (2 mm) like the classic (``huber_iterations`` solves;
    the re-weighting itself is not differentiated, the last solve is)."""
    dev = next(net.parameters()).device
    flow, w = net(fixed.to(dev), batch["moving"].to(dev), batch["uv"].float().to(dev),
                  batch["n2"].float().to(dev), batch["valid"].to(dev))
    flow, w = flow.double().cpu(), w.double().cpu()
    m0, P0, d = ppc_rows(batch["P"], batch["uv"] + flow, batch["n2"], cam)
    x = ppc_solve(P0, m0, d, w * batch["valid"], batch["c0"], damping=damping,
                  huber_iterations=huber_iterations)
    return apply_update(batch["start"], x, batch["c0"]), flow, w


def batch_loss(net, fixed, batch: dict, cam, targets, damping: float, epe_weight: float,
               min_points: int):
    """``(loss, mtre_after (B,), epe)`` of one batch (see the module docstring)."""
    after, flow, _ = one_update(net, fixed, batch, cam, damping)
    valid = batch["valid"]
    mtre = mtre_batch(after, batch["truth"], targets)
    enough = (valid.sum(1) >= min_points).double()
    l_mtre = (mtre.clamp(max=100.0) * enough).sum() / enough.sum().clamp_min(1.0) / 10.0
    epe = (flow_error(flow, batch) * valid).sum() / valid.sum().clamp_min(1)
    return l_mtre + epe_weight * epe, mtre.detach(), epe.detach()


def flow_error(flow: torch.Tensor, batch: dict) -> torch.Tensor:
    """End-point error (px) per point, along the contour normal: the tangential part of
    the true flow is not observable on a contour and not used by the PPC solve."""
    return ((flow - batch["flow_true"]) * batch["n2"]).sum(-1).abs()


def evaluate_ppc(net, val: dict, cam, targets, damping: float, epe_weight: float = 0.1,
                 min_points: int = 8) -> dict:
    """Held-out one-update errors (mm), the reduction factor (after / before) and the
    training loss on the held-out samples."""
    was = net.training
    net.eval()
    with torch.no_grad():
        after, flow, _ = one_update(net, val["fixed"], val, cam, damping)
        loss = float(batch_loss(net, val["fixed"], val, cam, targets, damping, epe_weight,
                                min_points)[0])
    net.train(was)
    before = val["mtre_before"]
    mt = mtre_batch(after, val["truth"], targets)
    ratio = mt / before.clamp_min(1e-6)
    err = flow_error(flow, val)
    v = val["valid"]
    return {"loss": loss, "mtre_before_median": float(before.median()), "mtre_after_median": float(mt.median()),
            "mtre_after_mean": float(mt.mean()), "ratio_median": float(ratio.median()),
            "ratio_mean": float(ratio.mean()),
            "epe_px_mean": float((err * v).sum() / v.sum().clamp_min(1))}


def train_ppc(hu, ijk_to_ras, camera, nominal, config, out_path, resume=None,
              progress: Optional[Callable] = None, cancel=None,
              log: Optional[Callable[[str], None]] = None) -> dict:
    """Train the learned PPC update for the CT ``hu`` (K, J, I) HU, ``camera`` and the
    ``nominal`` ``ct_to_camera``; write the model (kind ``ppc``) to ``out_path``.

    ``config``: a :class:`.train.TrainConfig` (``kind="ppc"``); the PPC options
    (:data:`DEFAULTS`) may be overridden in ``config.extra``. Returns the written dict.
    """
    from ..drr import DRRVolume  # noqa: PLC0415
    from ..geometry import camera_parameters  # noqa: PLC0415
    from ..refine import check_pose  # noqa: PLC0415
    from ..simulate import downsample_ct  # noqa: PLC0415
    from . import distributed  # noqa: PLC0415
    from .train_loop import (_cfg_dict, _check_ct, pick_device,  # noqa: PLC0415
                             restore_checkpoint, run_budget_loop)

    cfg = config
    say = log or (lambda msg: None)
    arr = _check_ct(hu)
    m = np.asarray(ijk_to_ras, float)
    try:
        max_minutes = float(cfg.max_minutes)
    except (TypeError, ValueError):
        raise InputError(f"max-minutes: expected a number, got {cfg.max_minutes!r}") from None
    if not math.isfinite(max_minutes) or max_minutes <= 0:
        raise InputError(f"max-minutes: must be > 0, got {cfg.max_minutes}")
    if cfg.max_steps is not None and int(cfg.max_steps) < 1:
        raise InputError(f"max-steps: must be >= 1, got {cfg.max_steps}")
    if int(cfg.batch_size) < 1:
        raise InputError(f"batch size: must be >= 1, got {cfg.batch_size}")
    camera_parameters(camera)
    nominal = check_pose(nominal, "nominal ct_to_camera")
    k, j, i = arr.shape
    center_ras = (m @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]
    pose_range = check_range(cfg.rotation_deg, cfg.translation_mm, camera, nominal, center_ras)
    out_path = Path(out_path)
    ckpt_path = out_path.with_name(out_path.name + ".ckpt.pt")
    ckpt = None
    if resume:
        ckpt = load_model_file(resume)
        if "optimizer" not in ckpt:
            raise ModelFileError(f"model file {resume}: not a checkpoint (no optimizer state)")
        if ckpt["kind"] != "ppc":
            raise InputError(f"resume: checkpoint {Path(resume).name} is of kind "
                             f"{ckpt['kind']!r}, not 'ppc'")
        check_model_matches(ckpt, arr, m, camera, name=f"checkpoint {Path(resume).name}")
        if PoseRange.from_dict(ckpt["range"]) != pose_range:
            raise InputError(f"resume: checkpoint {Path(resume).name} was trained for the range "
                             f"{ckpt['range']}, not {pose_range.to_dict()}")
    device = pick_device(cfg.device)
    world, rank, device = distributed.setup(device)
    torch.manual_seed(int(cfg.seed))

    factor = training_factor(camera, cfg.image_size)
    train_cam = camera if factor == 1.0 else camera.scaled(factor)
    c = nominal_center_cam(nominal, center_ras)
    voxel = float(np.min(np.linalg.norm(m[:3, :3], axis=0)))
    ct_factor = int(cfg.ct_downsample or ct_factor_for(camera, c[2], voxel, factor))
    hu_t, m_t = downsample_ct(arr, m, ct_factor) if ct_factor > 1 else (arr.astype(np.float32), m)
    volume = DRRVolume.from_hu(hu_t, m_t, device=device)
    n_samples = int(cfg.n_samples or max(32, int(1.2 * max(volume.shape))))
    opts = {key: _opt(cfg, key) for key in DEFAULTS}
    edges = edge_set(volume, max_points=int(opts["edge_max_points"]))
    sampler = PPCSampler(volume, train_cam, nominal, pose_range, n_samples, edges,
                         int(opts["points"]), float(opts["cos_tangent"]),
                         float(opts["max_start_mtre_mm"]))
    cam = sampler.cam
    meta = {"ct": ct_fingerprint(arr, m), "geometry": camera.to_dict(),
            "nominal_ct_to_camera": nominal.tolist(), "nominal_center_cam": c.tolist(),
            "range": pose_range.to_dict(),
            "input": {"image_size": int(cfg.image_size), "ct_downsample": ct_factor,
                      "n_samples": n_samples, "train_camera": train_cam.to_dict(),
                      "standardise": "zero mean, unit std per image",
                      **{key: opts[key] for key in ("points", "cos_tangent", "damping",
                                                    "edge_max_points", "max_start_mtre_mm",
                                                    "huber_iterations")}}}
    net = LearnedPPC(int(cfg.width), int(opts["features"]), float(opts["flow_scale_px"]),
                     bool(opts["attention"]), flow=str(opts["flow"]),
                     search_px=int(opts["search_px"])).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.lr))
    gen = torch.Generator().manual_seed(int(cfg.seed) * 1000 + rank)
    step, elapsed_prev, samples_seen, history = restore_checkpoint(
        ckpt, net, opt, gen, rank, resume, say, "[train ppc]")
    model = distributed.wrap(net, device, world)

    val_gen = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003)
    val = sampler.sample(val_gen, int(cfg.n_val))
    val["fixed"] = randomise(val["fixed_raw"], val_gen, 0.5)
    damping = float(opts["damping"])
    val_before = evaluate_ppc(net, val, cam, sampler.targets, damping,
                           float(opts["epe_weight"]), int(opts["min_points"])) if ckpt is None else \
        ckpt["training"].get("val_before", {})
    say(f"[train ppc] device {device}, CT {tuple(arr.shape)} -> {tuple(hu_t.shape)} "
        f"(x{ct_factor}), images {train_cam.size_px}, {edges[0].shape[0]} edge points, range "
        f"{pose_range.to_dict()}; held-out one-update mTRE median "
        f"{val_before.get('mtre_before_median', float('nan')):.1f} -> "
        f"{val_before.get('mtre_after_median', float('nan')):.1f} mm (untrained)")
    train_state = {"command": cfg.command, "seed": int(cfg.seed), "config": _cfg_dict(cfg),
                   "options": opts, "device": str(device), "world_size": world}

    def state_now(elapsed, val_after=None):
        st = dict(train_state, steps=step, images=samples_seen, elapsed_s=elapsed,
                  history=history[-200:], val_before=val_before)
        if val_after is not None:
            st["val_after"] = val_after
        return st

    def model_dict(elapsed, val_after=None):
        state = {kk: v.detach().cpu().clone() for kk, v in net.state_dict().items()}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "ppc",
                "arch": net.arch(), "state_dict": state, **meta,
                "training": state_now(elapsed, val_after)}

    def write_checkpoint(elapsed):
        if rank != 0:
            return
        d = model_dict(elapsed)
        d.update(optimizer=opt.state_dict(), step=step, rng_state=gen.get_state())
        save_model(d, ckpt_path)

    batch = None
    running = []

    def one_step(frac, elapsed):
        nonlocal batch, step, samples_seen, running
        if batch is None or step % max(1, int(cfg.reuse)) == 0:
            batch = sampler.sample(gen, int(cfg.batch_size))
        fixed = randomise(batch["fixed_raw"], gen, cfg.randomisation)
        loss, mt, epe = batch_loss(model, fixed, batch, cam, sampler.targets, damping,
                                   float(opts["epe_weight"]), int(opts["min_points"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        samples_seen += int(cfg.batch_size) * world
        running.append((float(loss.detach()), float(mt.median()), float(epe)))
        if step % 25 == 0:
            r = np.mean(running, axis=0)
            history.append({"step": step, "elapsed_s": round(elapsed, 1), "loss": float(r[0]),
                            "mtre_after_median": float(r[1]), "epe_px": float(r[2])})
            say(f"[train ppc] step {step} {elapsed / 60:.1f} min loss {r[0]:.4f} "
                f"(one-update mTRE median {r[1]:.2f} mm, EPE {r[2]:.2f} px) "
                f"lr {opt.param_groups[0]['lr']:.2e}")
            running = []
        return float(loss.detach())

    stop_reason, elapsed = run_budget_loop(cfg, device, world, opt, one_step, lambda: step,
                                           write_checkpoint, ckpt_path, elapsed_prev, cancel,
                                           progress, say, "[train ppc]")
    val_after = evaluate_ppc(net, val, cam, sampler.targets, damping,
                           float(opts["epe_weight"]), int(opts["min_points"]))
    say(f"[train ppc] done ({stop_reason}): {step} steps, {samples_seen} samples, "
        f"{elapsed / 60:.1f} min; held-out one-update mTRE median "
        f"{val_after['mtre_before_median']:.1f} -> {val_after['mtre_after_median']:.2f} mm "
        f"(reduction factor median {val_after['ratio_median']:.3f}; untrained "
        f"{val_before.get('ratio_median', float('nan')):.3f})")
    result = model_dict(elapsed, val_after)
    result["training"]["stop_reason"] = stop_reason
    return distributed.write_final(result, out_path, rank, world, write_checkpoint, elapsed,
                                   getattr(cfg, "save_replicas", False))
