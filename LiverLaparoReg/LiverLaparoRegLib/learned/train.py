"""Training of the Stage I network (``surgreg laparo train --stage 1``).

Data: SYNTHETIC frames of :mod:`.data`, rendered by this command into a cache folder
(``--data-cache``, default ``<out>.data/``) in chunks of :data:`CHUNK` samples; sample
``i`` of seed ``S`` is drawn from ``numpy.random.default_rng([S, i])`` so a cache is
reproducible and can be extended or shared between runs. Training meshes: the shipped
P2ILF mesh (default; the SciKit-Surgery liver is HELD OUT for the benchmark) or
``--meshes``. No real frame is used for training.

Loop: Adam, batch ``--batch``, the mask channel dropped (zeroed) for 20 % of the samples
so the network also works without a mask; stops after ``--steps`` or ``--max-minutes``
(rendering included); a checkpoint (the model file itself plus the optimiser state in
``<out>.ckpt``) is written every ``--checkpoint-minutes`` and at the end; ``--resume
CKPT`` continues from one. ``--device``: ``cpu``, ``cuda`` or ``auto`` (a requested but
missing GPU falls back to the CPU with a warning).

Scale out: under ``torchrun`` (``WORLD_SIZE > 1``) each process trains a
``DistributedDataParallel`` replica on its own share of the samples (backend ``nccl``
on GPUs, ``gloo`` on CPUs); rank 0 renders the cache and writes the files.

The command's arguments and its dispatch by ``--kind`` are in :mod:`.train_cli`;
:mod:`.landmarks_train` uses this module's device, DDP and file helpers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

CHUNK = 32


# ----------------------------------------------------------------------------- data cache
def training_meshes(paths: Optional[Sequence[str]] = None, view_axis=None):
    """:class:`.data.TrainMesh` list: the P2ILF mesh by default (with its annotated view
    axis), else the given files, whose frames are drawn around ``view_axis`` (a direction
    in the mesh frame: 75 % of the frames within 50 deg of it, :func:`.data.sample_pose`)
    or from any direction (None)."""
    from ..mesh import load_mesh  # noqa: PLC0415
    from . import data  # noqa: PLC0415
    from .landmarks_search import check_view_axis  # noqa: PLC0415

    if not paths:
        return [data.p2ilf_train_mesh()]
    view_axis = check_view_axis(view_axis, "training view axis")
    out = []
    for p in paths:
        m = load_mesh(p, f"mesh {Path(p).name}")
        tm = data.train_mesh(m, view_axis=view_axis)
        tm.name = Path(p).stem
        out.append(tm)
    return out


def _pack(s) -> Dict[str, np.ndarray]:
    return {"image": np.round(s.image * 255).astype(np.uint8),
            "mask": s.mask.astype(np.uint8), "points": s.points.astype(np.float32),
            "overlap": s.overlap.astype(np.uint8), "point_class": s.point_class.astype(np.uint8),
            "pix_match": s.pix_match.astype(np.int16), "pix_class": s.pix_class.astype(np.uint8),
            "pix_liver": s.pix_liver.astype(np.float16)}


def _chunk_name(seed: int, chunk: int, k: int) -> str:
    return f"s{seed}_c{k:05d}.npz" if chunk == CHUNK else f"s{seed}_n{chunk}_c{k:05d}.npz"


def render_cache(cache_dir, n_samples: int, seed: int, meshes, deadline: float = float("inf"),
                 log=print, chunk: int = CHUNK) -> List[Path]:
    """Render the missing chunks of ``n_samples`` samples into ``cache_dir``; stops at
    ``deadline`` (``time.time()``). Returns the chunk files present."""
    from . import data  # noqa: PLC0415

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = []
    n_chunks = (n_samples + chunk - 1) // chunk
    t0 = time.time()
    for k in range(n_chunks):
        f = cache_dir / _chunk_name(seed, chunk, k)
        if not f.is_file():
            if time.time() > deadline:
                break
            batch = []
            for j in range(chunk):
                i = k * chunk + j
                rng = np.random.default_rng([seed, i])
                batch.append(_pack(data.make_sample(meshes[i % len(meshes)], rng)))
            arrs = {key: np.stack([b[key] for b in batch]) for key in batch[0]}
            tmp = f.with_name(f.stem + ".tmp.npz")
            np.savez_compressed(tmp, **arrs)
            tmp.replace(f)
            if k % 10 == 0:
                log(f"render: chunk {k + 1}/{n_chunks} ({time.time() - t0:.0f} s)")
        files.append(f)
    return files


def load_cache(files: Sequence[Path]) -> Dict[str, np.ndarray]:
    parts = [dict(np.load(f)) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _batch(arrs: Dict[str, np.ndarray], idx: np.ndarray, rng, drop_mask: float = 0.2):
    import torch  # noqa: PLC0415

    b = {"image": torch.as_tensor(arrs["image"][idx].astype(np.float32) / 255.0),
         "mask": torch.as_tensor(arrs["mask"][idx].astype(np.float32)),
         "points": torch.as_tensor(arrs["points"][idx]),
         "overlap": torch.as_tensor(arrs["overlap"][idx].astype(np.float32)),
         "point_class": torch.as_tensor(arrs["point_class"][idx].astype(np.int64)),
         "pix_match": torch.as_tensor(arrs["pix_match"][idx].astype(np.int64)),
         "pix_class": torch.as_tensor(arrs["pix_class"][idx].astype(np.int64)),
         "pix_liver": torch.as_tensor(arrs["pix_liver"][idx].astype(np.float32))}
    drop = torch.as_tensor(rng.uniform(size=len(idx)) < drop_mask)
    b["mask"][drop] = 0.0
    return b


# ----------------------------------------------------------------------------- training
def resolve_device(name: str = "auto", log=print):
    import torch  # noqa: PLC0415

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log("warning: device: CUDA is not available; training on the CPU")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"device: unknown device {name!r} (cpu, cuda, cuda:N, auto)") from None


def ddp_setup(device: str, log=print):
    """``(world, rank, device)``: under ``torchrun`` (``WORLD_SIZE > 1``) the process group
    is started (``nccl`` on GPUs, ``gloo`` on the CPU) and a GPU is this rank's own."""
    import torch  # noqa: PLC0415

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device, log)
    if world > 1:
        import torch.distributed as dist  # noqa: PLC0415

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return world, rank, dev


def rank0_decides(frac: float, stop: bool, dev, world: int):
    """``(frac, stop)`` of rank 0 for every replica (same learning rate, same last step)."""
    if world <= 1:
        return frac, stop
    import torch  # noqa: PLC0415

    sync = torch.tensor([frac, float(stop)], dtype=torch.float64,
                        device=dev if dev.type == "cuda" else "cpu")
    torch.distributed.broadcast(sync, 0)
    return float(sync[0]), bool(sync[1])


def write_training_files(out, model, opt, kind: str, record: dict, rank: int) -> dict:
    """Complete ``record`` with the fields every training kind records (load average,
    parameter checksum) and, on rank 0, write the model file and the optimiser state
    (``<out>.ckpt``). Returns the completed record."""
    import torch  # noqa: PLC0415

    from .modelfile import save_model  # noqa: PLC0415

    record = dict(record,
                  load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                  param_checksum=float(sum(p.detach().double().abs().sum()
                                           for p in model.parameters())))
    if rank == 0:
        save_model(out, model, kind, record)
        torch.save({"optimizer": opt.state_dict()}, str(out) + ".ckpt")
    return record


def train_stage1(out, steps: int = 2000, max_minutes: float = 60.0, seed: int = 0,
                 batch: int = 8, lr: float = 1e-3, samples: int = 2048,
                 meshes: Optional[Sequence[str]] = None, data_cache=None, resume=None,
                 device: str = "auto", align: bool = True, uncertainty: bool = True,
                 dim: int = 64, checkpoint_minutes: float = 5.0, command: str = "",
                 log=print, chunk: int = CHUNK) -> dict:
    """Train a Stage I model and write it to ``out`` (see the module docstring).
    Returns the training record (loss history included)."""
    import torch  # noqa: PLC0415

    from .modelfile import read_model_file  # noqa: PLC0415
    from .net import StageOne, losses  # noqa: PLC0415

    if steps < 1 or batch < 1 or samples < 1:
        raise InputError("steps: --steps, --batch and --samples must be positive")
    if not max_minutes > 0:
        raise InputError(f"max minutes: must be positive, got {max_minutes}")
    t_start = time.time()
    deadline = t_start + 60.0 * max_minutes
    world, rank, dev = ddp_setup(device, log)
    torch.manual_seed(seed)
    out = Path(out)
    cache = Path(data_cache) if data_cache else out.with_name(out.name + ".data")
    tms = training_meshes(meshes)
    mesh_desc = ", ".join(t.name for t in tms)
    if rank == 0:
        render_cache(cache, samples, seed, tms, deadline, log, chunk)
    if world > 1:
        torch.distributed.barrier()
    files = [cache / _chunk_name(seed, chunk, k) for k in range((samples + chunk - 1) // chunk)]
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputError("data cache: no training samples were rendered before the deadline")
    arrs = load_cache(files)
    n = len(arrs["image"])
    model = StageOne(dim=dim, align=align, uncertainty=uncertainty).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, history, wall_before = 0, [], 0.0
    if resume:
        data = read_model_file(resume)
        model.load_state_dict(data["state_dict"])
        ck = Path(str(resume) + ".ckpt") if not str(resume).endswith(".ckpt") else Path(resume)
        if ck.is_file():
            st = torch.load(ck, map_location="cpu", weights_only=True)
            opt.load_state_dict(st["optimizer"])
        tr = data["training"]
        step, history = int(tr.get("steps", 0)), list(tr.get("loss_history", []))
        wall_before = float(tr.get("wall_s", 0.0))
        log(f"resume: from {resume} at step {step}")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    rng = np.random.default_rng([seed, 7919, step, rank])
    # each replica draws from its own share of the samples
    share = np.arange(rank, n, world)
    last_ck = time.time()
    record = {}

    def write(final: bool):
        nonlocal record
        record = {"data": f"SYNTHETIC: {n} frames rendered by LiverLaparoRegLib.learned.data "
                          f"from the mesh(es) [{mesh_desc}] (deformed, cut, random laparoscope "
                          f"poses and appearance); no real frame used; SciKit-Surgery liver "
                          f"held out unless given",
                  "command": command, "seed": seed, "steps": step, "batch": batch * world,
                  "lr": lr, "samples": n, "meshes": mesh_desc, "world_size": world,
                  "device": str(dev), "loss_history": history,
                  "wall_s": wall_before + time.time() - t_start, "finished": final}
        record = write_training_files(out, model, opt, "stage1", record, rank)

    model.train()
    run = []
    while step < steps:
        # cosine decay over the run (steps or time, whichever ends first), floor 0.1 lr;
        # under DDP rank 0's clock decides for all replicas (same lr, same last step)
        frac = min(1.0, max(step / steps, (time.time() - t_start) / max(1.0, deadline - t_start)))
        frac, stop = rank0_decides(frac, time.time() >= deadline, dev, world)
        if stop:
            break
        idx = rng.choice(share, size=batch, replace=len(share) < batch)
        b = {k: v.to(dev) for k, v in _batch(arrs, idx, rng).items()}
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.45 * (1 + np.cos(np.pi * frac)))
        o = net(b["image"], b["mask"], b["points"])
        L = losses(o, b, uncertainty=uncertainty)
        opt.zero_grad()
        L["total"].backward()
        opt.step()
        step += 1
        run.append([L["total"].item(), L["match"].item(), L["detector"].item(),
                    L["match_acc"].item(), L["xyz"].item()])
        if step % 10 == 0 or step == steps:
            m = np.mean(run, 0).tolist()
            history.append([step] + [round(x, 5) for x in m])
            run = []
            if rank == 0:
                log(f"step {step}: loss {m[0]:.4f} match {m[1]:.4f} detector {m[2]:.4f} "
                    f"match-acc {m[3]:.3f} xyz {m[4]:.4f} ({time.time() - t_start:.0f} s)")
        if time.time() - last_ck > 60.0 * checkpoint_minutes:
            write(False)
            last_ck = time.time()
    write(True)
    if world > 1:
        torch.distributed.barrier()
    return record
