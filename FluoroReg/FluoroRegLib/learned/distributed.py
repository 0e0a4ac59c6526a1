"""Several training processes (``torchrun --nproc_per_node N``) for the ``ppc`` and
``similarity`` training loops, the pattern of the regressor's (:func:`.train.train_model`):

- :func:`setup`: with ``WORLD_SIZE > 1`` the process group is started once (nccl on GPUs,
  each rank on its ``LOCAL_RANK`` GPU; gloo on the CPU);
- :func:`wrap`: the network in ``DistributedDataParallel`` (the gradients are averaged over
  the ranks at every ``backward``, so the replicas stay equal);
- each rank draws its own samples (the caller adds ``rank`` to its generator's seed; rank 0
  draws what one process draws);
- :func:`shared_stop`: the stop decision (time budget, steps) is the maximum over the ranks,
  so every rank runs the same number of steps;
- rank 0 writes the checkpoints and the model; ``save_replicas`` makes every rank write its
  final weights to ``<out>.rank<k>.pt`` (the tests compare them); :func:`finish` waits for
  all ranks.

With one process (no ``torchrun``) every function is a no-op.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch


def info() -> Tuple[int, int, int]:
    """``(world size, rank, local rank)`` from the environment torchrun sets."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> Tuple[int, int, torch.device]:
    """Start the process group when there are several processes; ``(world, rank, device)``
    (on GPUs the device of this rank)."""
    world, rank, local = info()
    if world > 1:
        import torch.distributed as dist  # noqa: PLC0415

        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def wrap(net: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """``DistributedDataParallel(net)`` with several processes, else ``net``."""
    if world <= 1:
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

    return DDP(net, device_ids=[device.index] if device.type == "cuda" else None)


def shared_stop(stop: bool, device: torch.device, world: int) -> bool:
    """True when any rank wants to stop."""
    if world <= 1:
        return stop
    import torch.distributed as dist  # noqa: PLC0415

    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def broadcast_buffers(net: torch.nn.Module, world: int) -> None:
    """Every rank takes rank 0's buffers (e.g. normalisation statistics)."""
    if world <= 1:
        return
    import torch.distributed as dist  # noqa: PLC0415

    for buf in net.buffers():
        dist.broadcast(buf.data, 0)


def write_final(result: dict, out_path, rank: int, world: int, write_checkpoint, elapsed: float,
                save_replicas: bool = False) -> dict:
    """The end of every training kind: rank 0 writes the last checkpoint
    (``write_checkpoint(elapsed)``) and the model file; with ``save_replicas`` every rank
    also writes its own copy (``<out>.rank<r>.pt``, for the tests that compare replicas);
    then all ranks wait for each other. Returns ``result``."""
    from .model_file import save_model  # noqa: PLC0415

    if rank == 0:
        write_checkpoint(elapsed)
        save_model(result, out_path)
    if save_replicas:
        save_model(result, out_path.with_name(f"{out_path.name}.rank{rank}.pt"))
    finish(world)
    return result


def finish(world: int) -> None:
    """Wait for every rank (after rank 0 has written the files)."""
    if world > 1:
        import torch.distributed as dist  # noqa: PLC0415

        dist.barrier()
