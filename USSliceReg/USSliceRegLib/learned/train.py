"""Training loop of DeepRS2V (``surgreg us train``): one model per volume.

:func:`train_model` runs Adam on batches from :class:`~.data.SampleMaker` until
``max_minutes`` (wall time of this run) or ``max_steps``, whichever comes first, with a
cosine learning-rate decay over that budget. Every ``checkpoint_minutes`` (and at the end,
and on cancel) it writes ``<out>.ckpt`` (model + optimiser + step) and the model file
``<out>``; ``resume`` continues from such a checkpoint (same volume, same settings; the
budget and the decay start again for the new run). ``progress(fraction, message)`` and
``cancel`` (a ``CancelToken``) as everywhere; a cancelled run keeps what it learned
(files written, ``training["stopped"] == "cancelled"``).

Scale-out: under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) or inside an
already initialised process group, the network is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA); every rank draws its own samples
(seed + rank), gradients are averaged, the stop decision is all-reduced so every rank stops
at the same step, and rank 0 alone writes files.

Validation: a fixed set of ``val_samples`` samples drawn with another seed (the same
volume and pose distribution, perturbations never used in training); the mean pose error
(translation at the fan centre, mm; rotation, deg) is logged before training, at every
checkpoint and at the end, and recorded in the model.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import report

from .data import (SampleMaker, base_fans_from_poses, principal_planes,
                   real_frames_on_grid)
from .geometry import (GridSpec, VolumeSampler, frames_on_grid,
                       invert_rigid, volume_fingerprint, volume_fingerprints)
from .losses import LossWeights, geodesic_rad, pose_loss
from .model_io import FORMAT_VERSION, check_volume, load_model, save_model
from .network import DeepRS2VNet

#: The smallest volume the network's input makes sense for (voxels per axis).
MIN_VOLUME_VOXELS = 16


@dataclass
class TrainConfig:
    max_minutes: float = 30.0
    max_steps: Optional[int] = None
    seed: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    max_mm: float = 20.0
    max_deg: float = 20.0
    side_mm: float = 64.0
    n2: int = 64
    n3: int = 32
    width: int = 32
    loss: LossWeights = field(default_factory=LossWeights)
    real_fraction: float = 0.3
    jitter_mm: float = 2.0
    jitter_deg: float = 3.0
    checkpoint_minutes: float = 3.0
    val_samples: int = 64
    log_every: int = 25

    def grid(self) -> GridSpec:
        return GridSpec(self.side_mm, self.n2, self.n3)


def check_train_inputs(volume_array, config: TrainConfig) -> None:
    """Bad training input, before any torch work (messages start with the input's name)."""
    if not (config.max_minutes > 0) or not math.isfinite(config.max_minutes):
        raise InputError(f"--max-minutes: must be > 0, got {config.max_minutes}")
    if config.max_steps is not None and int(config.max_steps) < 1:
        raise InputError(f"--max-steps: must be >= 1, got {config.max_steps}")
    if config.batch_size < 1:
        raise InputError(f"--batch-size: must be >= 1, got {config.batch_size}")
    if config.max_mm < 0 or not 0 <= config.max_deg <= 90:
        raise InputError(f"training range: need 0 <= max_mm and 0 <= max_deg <= 90, got "
                         f"{config.max_mm}, {config.max_deg}")
    shape = np.shape(volume_array)
    if len(shape) != 3:
        raise InputError(f"US volume: expected a 3D volume (K, J, I), got shape {shape}")
    check_volume_size(shape)


def check_volume_size(shape) -> None:
    if min(shape) < MIN_VOLUME_VOXELS:
        raise InputError(f"US volume: too small for the network's input (shape "
                         f"{tuple(int(s) for s in shape)}; need at least "
                         f"{MIN_VOLUME_VOXELS} voxels along every axis)")


def _dist():
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d, d.get_rank(), d.get_world_size()
    return None, 0, 1


def init_distributed_from_env(device) -> bool:
    """Initialise the process group under ``torchrun`` (``WORLD_SIZE > 1``); True if so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return torch.distributed.is_initialized()
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return True


def _validation(maker: SampleMaker, n: int, seed: int, batch: int):
    rng = np.random.default_rng([int(seed), 10007])
    return [maker.batch(min(batch, n - a), rng) for a in range(0, n, batch)]


@torch.no_grad()
def pose_errors_of(net, batches):
    """Mean translation (mm at the fan centre) and rotation (deg) error over batches, and
    the same of the starts (identity prediction)."""
    t, r, t0, r0 = [], [], [], []
    was = net.training
    net.eval()
    for b in batches:
        D = net(b["frame"], b["cube"])
        t.append((D[:, :3, 3] - b["D"][:, :3, 3]).norm(dim=-1))
        r.append(torch.rad2deg(geodesic_rad(D[:, :3, :3], b["D"][:, :3, :3])))
        t0.append(b["D"][:, :3, 3].norm(dim=-1))
        eye = torch.eye(3).expand_as(b["D"][:, :3, :3])
        r0.append(torch.rad2deg(geodesic_rad(eye, b["D"][:, :3, :3])))
    net.train(was)
    cat = lambda x: float(torch.cat(x).mean())  # noqa: E731
    return {"translation_mm": cat(t), "rotation_deg": cat(r),
            "start_translation_mm": cat(t0), "start_rotation_deg": cat(r0)}


def make_maker(volume_array, ijk_to_reference, volume_mask, fan, poses, frames, centre_px,
               config: TrainConfig, device) -> SampleMaker:
    """The sample maker of a volume (with a tracked sweep's poses/frames when given)."""
    grid = config.grid()
    sampler = VolumeSampler(volume_array, ijk_to_reference, volume_mask, device=device)
    principal = None
    if poses is not None and len(poses):
        base = base_fans_from_poses(poses, centre_px)
        M = invert_rigid(base[:1]) @ np.asarray(poses, dtype=np.float64)[:1]
        ones = np.ones((1,) + np.shape(fan), dtype=np.float32)
        _, fan_grid = frames_on_grid(ones, fan, M, grid, device)
        fan_grid = fan_grid[0]
        real = real_frames_on_grid(frames, poses, fan, centre_px, grid, device) \
            if frames is not None else None
    else:
        base, real = None, None
        principal = principal_planes(sampler.data[0, 1].cpu().numpy() > 0.5, ijk_to_reference)
        a = grid.axis(grid.n2)
        inside = (a.abs() < 0.35 * grid.side_mm)
        fan_grid = (inside[:, None] & inside[None, :]).float()
    return SampleMaker(sampler, grid, fan_grid, base, real, config.max_mm, config.max_deg,
                       config.jitter_mm, config.jitter_deg, config.real_fraction,
                       principal=principal)


def train_model(volume_array, ijk_to_reference, out, volume_mask=None, fan=None,
                poses=None, frames=None, frame_shape=None, config: Optional[TrainConfig] = None,
                command: str = "", data_note: str = "", resume=None, device=None,
                progress=None, cancel=None, log: Optional[Callable[[str], None]] = print) -> dict:
    """Train a model for one volume; returns the model payload (also written to ``out``).

    ``poses`` ``(N, 4, 4)`` / ``frames`` ``(N, H, W)``: the tracked sweep frames allowed for
    training (their poses seed the plausible probe poses; the frames are real training
    samples), with their ``fan`` ``(H, W)``; all ``None``: planes across the volume's
    principal direction and a square fan.
    """
    config = config or TrainConfig()
    check_train_inputs(volume_array, config)
    log = log or (lambda s: None)
    device = torch.device(device or "cpu")
    dist, rank, world = _dist()
    fingerprint = volume_fingerprint(volume_array, ijk_to_reference)
    if fan is not None:
        rows, cols = np.nonzero(np.asarray(fan, dtype=bool))
        centre_px = np.array([cols.mean(), rows.mean(), 0.0, 1.0])
    else:
        centre_px = np.array([0.0, 0.0, 0.0, 1.0])
    ckpt = None
    if resume is not None:
        ckpt = load_model(resume)
        check_volume(ckpt, volume_fingerprints(volume_array, ijk_to_reference),
                     name=f"--resume {Path(resume).name}")
        if "optimizer" not in ckpt:
            raise InputError(f"--resume {resume}: a model file, not a checkpoint (no "
                             "optimiser state); pass the .ckpt file")
    torch.manual_seed(config.seed)  # same initial weights on every rank
    maker = make_maker(volume_array, ijk_to_reference, volume_mask, fan, poses, frames,
                       centre_px, config, device)
    net = DeepRS2VNet(config.n2, config.n3, config.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    step0, minutes0 = 0, 0.0
    history = []
    if ckpt is not None:
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        step0, minutes0 = int(ckpt["step"]), float(ckpt["minutes"])
        history = list(ckpt.get("training", {}).get("validation", []))
    model = net
    if dist is not None and world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    rng = np.random.default_rng([int(config.seed), rank, step0])
    val = _validation(maker, config.val_samples, config.seed, config.batch_size) \
        if rank == 0 and config.val_samples > 0 else []
    if val:
        e = pose_errors_of(net, val)
        history.append(dict(step=step0, **e))
        log(f"validation at step {step0}: {e['translation_mm']:.2f} mm / "
            f"{e['rotation_deg']:.2f} deg (starts {e['start_translation_mm']:.2f} mm / "
            f"{e['start_rotation_deg']:.2f} deg)")
    plane = maker.plane
    t_start = time.perf_counter()
    last_ckpt = t_start
    step = step0
    stopped = "budget"
    budget_s = 60.0 * config.max_minutes
    max_steps = config.max_steps
    parts = {}

    def payload(with_optimizer: bool) -> dict:
        p = {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
             "network": net.config(), "grid": config.grid().to_dict(),
             "volume_fingerprint": fingerprint,
             "volume_shape": [int(s) for s in np.shape(volume_array)],
             "frame_shape": None if frame_shape is None else [int(s) for s in frame_shape],
             "fan_centre_px": [float(x) for x in centre_px],
             "command": command, "seed": int(config.seed),
             "range": {"max_mm": float(config.max_mm), "max_deg": float(config.max_deg)},
             "loss": config.loss.to_dict(),
             "training": {"steps": step, "minutes": minutes0 + (time.perf_counter() - t_start) / 60,
                          "samples": step * config.batch_size * world,
                          "batch_size": config.batch_size, "processes": world,
                          "validation": history, "stopped": stopped, "data": data_note,
                          "config": {k: v for k, v in asdict(config).items() if k != "loss"},
                          "torch": str(torch.__version__), "format_version": FORMAT_VERSION}}
        if with_optimizer:
            p["optimizer"] = opt.state_dict()
            p["step"] = step
            p["minutes"] = p["training"]["minutes"]
        return p

    def write(final: bool) -> None:
        if rank != 0 or out is None:
            return
        if val:
            e = pose_errors_of(net, val)
            if not history or history[-1]["step"] != step:
                history.append(dict(step=step, **e))
            log(f"validation at step {step}: {e['translation_mm']:.2f} mm / "
                f"{e['rotation_deg']:.2f} deg")
        save_model(str(out) + ".ckpt", payload(True))
        save_model(out, payload(False))

    net.train()
    while True:
        elapsed = time.perf_counter() - t_start
        frac = elapsed / budget_s
        if max_steps is not None:
            frac = max(frac, (step - step0) / max_steps)
        want_stop = frac >= 1.0
        if cancel is not None and getattr(cancel, "cancelled", False):
            want_stop, stopped = True, "cancelled"
        if dist is not None and world > 1:
            flag = torch.tensor([1.0 if want_stop else 0.0], device=device)
            dist.all_reduce(flag)
            want_stop = bool(flag.item() > 0)
        if want_stop:
            break
        warm = min(1.0, (step - step0 + 1) / 50.0)
        for g in opt.param_groups:
            g["lr"] = config.lr * warm * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        b = maker.batch(config.batch_size, rng)
        D = model(b["frame"], b["cube"])
        loss, parts = pose_loss(D, b["D"], b["F_start"], b["frame_norm"], b["frame_mask"],
                                maker.sampler, plane, config.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        step += 1
        if rank == 0 and step % config.log_every == 0:
            msg = (f"step {step} loss {parts['loss']:.3f} translation rms "
                   f"{math.sqrt(parts['translation_mse_mm2']):.2f} mm rotation "
                   f"{parts['rotation_deg']:.2f} deg lncc {parts.get('lncc', float('nan')):.3f} "
                   f"({1000 * elapsed / max(1, step - step0):.0f} ms/step)")
            log(msg)
        report(progress, min(frac, 1.0), f"training step {step}")
        if rank == 0 and time.perf_counter() - last_ckpt > 60 * config.checkpoint_minutes:
            write(False)
            last_ckpt = time.perf_counter()
    write(True)
    report(progress, 1.0, f"training done ({step} steps, {stopped})")
    return payload(False)

