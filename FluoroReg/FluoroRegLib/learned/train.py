"""Training of the pose regressor for one CT and one detector (``surgreg fluoro train``).

:func:`train_model` renders DRRs on the fly (:mod:`.sampling`), randomises them, and
fits :class:`~.regressor.PoseRegressor` with Adam and the SE(3) geodesic loss. It stops
at ``max_minutes`` of training (or ``max_steps``), writes a checkpoint every
``checkpoint_every_s`` seconds (``<out>.ckpt.pt``), resumes from one (``resume``), and
on Cancel (or Ctrl-C) writes the checkpoint before it raises ``CancelledError``.
The learning rate follows a cosine from ``lr`` to ``lr / 100`` over the budget (the
fraction of ``max_minutes`` or of ``max_steps`` used, whichever is larger).

Several processes (``torchrun --nproc_per_node N``): when ``WORLD_SIZE > 1`` the network
is wrapped in ``DistributedDataParallel`` (gloo on the CPU, nccl on GPUs), each rank
draws its own poses (seed + rank), the stop decision is shared (all-reduce), and rank 0
writes checkpoints and the model. ``save_replicas`` makes every rank write its final
weights to ``<out>.rank<k>.pt`` (the test checks that they are equal). The helpers are
in :mod:`.distributed` and :mod:`.train_loop` (settings, budget, checkpoints; shared with
the ``ppc`` and ``similarity`` loops, to which :func:`train_model` hands over for those
kinds).

Held-out validation: ``n_val`` poses from a generator that training never uses
(``seed + 1_000_003``), rendered once; reported as the mean 3D error of the CT box
corners (mm), rotation error (deg) and CT-centre error (mm), before and after training.
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
from .regressor import PoseRegressor, geodesic_loss, outputs_to_delta, translation_half
from .sampling import (PoseRange, TrainingRenderer, check_range, ct_factor_for,
                       nominal_center_cam, randomise, training_factor)
from .train_loop import (TrainConfig, _cfg_dict, _check_ct, _corner_points, pick_device,
                         pose_errors_batch, restore_checkpoint, run_budget_loop)

KINDS = ("regressor", "similarity", "ppc", "all")
IMPLEMENTED = ("regressor", "similarity")


def _summ(errs: dict) -> dict:
    out = {}
    for k, v in errs.items():
        v = v.detach().cpu().numpy()
        out[f"{k}_mean"] = float(v.mean())
        out[f"{k}_median"] = float(np.median(v))
        out[f"{k}_p95"] = float(np.percentile(v, 95))
    return out


def evaluate(net, renderer, val, rot_len: float) -> dict:
    """Held-out errors of ``net`` on ``val = (images, R, t, poses)``."""
    from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415

    from .sampling import delta_to_pose  # noqa: PLC0415

    images, r, t, poses = val
    was = net.training
    net.eval()
    with torch.no_grad():
        d6, ts = net(images.unsqueeze(1).to(next(net.parameters()).device))
        R, tp = outputs_to_delta(d6.double().cpu(), ts.double().cpu(),
                                 translation_half(renderer.range).double())
        pred = delta_to_pose(R, tp, renderer.nominal, renderer.c)
        loss = float(geodesic_loss(R, tp, so3_exp(r), t, rot_len))
    net.train(was)
    out = _summ(pose_errors_batch(pred, poses, _corner_points(renderer.volume), renderer.center_ras))
    out["loss"] = loss
    return out


def _model_dict(net, cfg: TrainConfig, meta: dict, train_state: dict) -> dict:
    module = net.module if hasattr(net, "module") else net
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "regressor",
            "arch": module.arch(), "state_dict": state, **meta, "training": train_state}


def train_model(hu, ijk_to_ras, camera, nominal, config: TrainConfig, out_path,
                resume=None, progress: Optional[Callable] = None, cancel=None,
                log: Optional[Callable[[str], None]] = None) -> dict:
    """Train a model for the CT ``hu`` (K, J, I) HU with ``ijk_to_ras``, the X-ray
    ``camera`` and the ``nominal`` ``ct_to_camera``; write it to ``out_path``.

    Returns the model dict that was written (``training`` holds the history and the
    held-out errors). Inputs are not modified.
    """
    from SurgicalReg2D3DLib.poses import so3_exp  # noqa: PLC0415

    from ..drr import DRRVolume  # noqa: PLC0415
    from ..geometry import camera_parameters  # noqa: PLC0415
    from ..refine import check_pose  # noqa: PLC0415
    from ..simulate import downsample_ct  # noqa: PLC0415

    cfg = config
    say = log or (lambda msg: None)
    # ---- input checks, before any torch work ----
    arr = _check_ct(hu)
    m = np.asarray(ijk_to_ras, float)
    if cfg.kind not in KINDS:
        raise InputError(f"kind: expected one of {KINDS}, got {cfg.kind!r}")
    if cfg.kind == "ppc":  # the learned PPC update has its own data and loop
        from .ppc_train import train_ppc  # noqa: PLC0415

        return train_ppc(hu, ijk_to_ras, camera, nominal, cfg, out_path, resume=resume,
                         progress=progress, cancel=cancel, log=log)
    if cfg.kind not in IMPLEMENTED and cfg.kind != "all":
        raise InputError(f"kind: {cfg.kind!r} is not implemented yet (available: {IMPLEMENTED})")
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
    camera_parameters(camera)  # checks the camera type
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
        check_model_matches(ckpt, arr, m, camera, name=f"checkpoint {Path(resume).name}")
        if PoseRange.from_dict(ckpt["range"]) != pose_range:
            raise InputError(f"resume: checkpoint {Path(resume).name} was trained for the range "
                             f"{ckpt['range']}, not {pose_range.to_dict()}")

    from . import distributed  # noqa: PLC0415

    world, rank, device = distributed.setup(pick_device(cfg.device))
    torch.manual_seed(int(cfg.seed))

    # ---- data ----
    factor = training_factor(camera, cfg.image_size)
    train_cam = camera if factor == 1.0 else camera.scaled(factor)
    c = nominal_center_cam(nominal, center_ras)
    voxel = float(np.min(np.linalg.norm(m[:3, :3], axis=0)))
    ct_factor = int(cfg.ct_downsample or ct_factor_for(camera, c[2], voxel, factor))
    hu_t, m_t = downsample_ct(arr, m, ct_factor) if ct_factor > 1 else (arr.astype(np.float32), m)
    volume = DRRVolume.from_hu(hu_t, m_t, device=device)
    renderer = TrainingRenderer(volume, train_cam, nominal, pose_range, cfg.n_samples)
    rot_len = float(np.sqrt(((volume.corners_ras() - volume.center_ras()) ** 2).sum(1).mean()))
    meta = {"ct": ct_fingerprint(arr, m), "geometry": camera.to_dict(),
            "nominal_ct_to_camera": nominal.tolist(), "nominal_center_cam": c.tolist(),
            "range": pose_range.to_dict(),
            "input": {"image_size": int(cfg.image_size), "ct_downsample": ct_factor,
                      "n_samples": renderer.n_samples, "train_camera": train_cam.to_dict(),
                      "standardise": "zero mean, unit std per image", "rotation_length_mm": rot_len}}

    if cfg.kind == "similarity":  # same data and checks, its own loop
        from .similarity_train import train_similarity  # noqa: PLC0415

        return train_similarity({"renderer": renderer, "meta": meta, "device": device,
                                 "rot_len": rot_len, "checkpoint": ckpt}, cfg, out_path,
                                resume=resume, progress=progress, cancel=cancel, log=log)
    if ckpt is not None and ckpt.get("kind", "regressor") != "regressor":
        raise InputError(f"resume: checkpoint {Path(resume).name} is a {ckpt.get('kind')!r} "
                         "model, not a regressor")
    net = PoseRegressor(int(cfg.image_size), int(cfg.width), norm=cfg.norm,
                        coords=cfg.coords).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.lr))
    gen = torch.Generator().manual_seed(int(cfg.seed) * 1000 + rank)
    step, elapsed_prev, images_seen, history = restore_checkpoint(ckpt, net, opt, gen, rank,
                                                                   resume, say)
    model = distributed.wrap(net, device, world)

    val_gen = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003)
    vdrr, vr, vt, vposes = renderer.sample(val_gen, int(cfg.n_val))
    val = (randomise(vdrr, val_gen, 0.5).to(device), vr, vt, vposes)
    val_before = evaluate(net, renderer, val, rot_len) if ckpt is None else \
        ckpt["training"].get("val_before", {})
    say(f"[train] {world} process(es), device {device}, CT {tuple(arr.shape)} -> "
        f"{tuple(hu_t.shape)} (x{ct_factor}), images {train_cam.size_px}, range "
        f"{pose_range.to_dict()}, held-out corner error {val_before.get('corner_mm_mean', float('nan')):.1f} mm")

    train_state = {"command": cfg.command, "seed": int(cfg.seed), "config": _cfg_dict(cfg),
                   "world_size": world, "device": str(device)}

    def state_now(elapsed, val_after=None):
        st = dict(train_state, steps=step, images=images_seen, elapsed_s=elapsed,
                  history=history[-200:], val_before=val_before)
        if val_after is not None:
            st["val_after"] = val_after
        return st

    def write_checkpoint(elapsed):
        if rank != 0:
            return
        d = _model_dict(model, cfg, meta, state_now(elapsed))
        d.update(optimizer=opt.state_dict(), step=step, rng_state=gen.get_state())
        save_model(d, ckpt_path)

    batch = None
    running = []

    def one_step(frac, elapsed):
        nonlocal batch, step, images_seen, running
        if batch is None or step % max(1, int(cfg.reuse)) == 0:
            batch = renderer.sample(gen, int(cfg.batch_size))
        drr, r, t, _ = batch
        x = randomise(drr, gen, cfg.randomisation).unsqueeze(1).to(device)
        d6, ts = model(x)
        R, tp = outputs_to_delta(d6, ts, translation_half(pose_range).to(device))
        loss = geodesic_loss(R.double(), tp.double(), so3_exp(r).to(device), t.to(device), rot_len)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        images_seen += int(cfg.batch_size) * world
        last = float(loss.detach())
        running.append(last)
        if step % 25 == 0:
            history.append({"step": step, "elapsed_s": round(elapsed, 1),
                            "loss": float(np.mean(running))})
            say(f"[train] step {step} {elapsed / 60:.1f} min loss {np.mean(running):.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e}")
            running = []
        return last

    stop_reason, elapsed = run_budget_loop(cfg, device, world, opt, one_step, lambda: step,
                                           write_checkpoint, ckpt_path, elapsed_prev, cancel,
                                           progress, say, "[train]")
    # DDP keeps the parameters equal; the BatchNorm running statistics are per rank:
    # every rank takes rank 0's (the model that is written).
    distributed.broadcast_buffers(net, world)
    val_after = evaluate(net, renderer, val, rot_len)
    say(f"[train] done ({stop_reason}): {step} steps, {images_seen} images, {elapsed / 60:.1f} "
        f"min; held-out corner error {val_before.get('corner_mm_mean', float('nan')):.1f} -> "
        f"{val_after['corner_mm_mean']:.1f} mm (median {val_after['corner_mm_median']:.1f})")
    result = _model_dict(model, cfg, meta, state_now(elapsed, val_after))
    result["training"]["stop_reason"] = stop_reason
    return distributed.write_final(result, out_path, rank, world, write_checkpoint, elapsed,
                                   cfg.save_replicas)
