"""Training of the landmark segmentation network
(``surgreg laparo train --stage 1 --kind landmarks``).

Data: SYNTHETIC frames of :mod:`.landmarks_data` (P2ILF mesh by default, deformed, cut,
bent; the SciKit-Surgery liver is HELD OUT), sample ``i`` of seed ``S`` drawn from
``numpy.random.default_rng([S, 50000 + i])``, stored in a cache folder in chunks of
:data:`CHUNK` (reused by later runs and by ``--resume``). Rendering is interleaved with
training: the pool of frames grows while the network trains on it (rendering takes at
most :data:`RENDER_SHARE` of the wall time until ``--samples`` frames exist), so a short
run still trains most of the time.

Loss: :func:`.landmarks_net.landmark_losses`, the normal term measured by
``--normal-loss`` (``cos``: ``1 - cos``; ``angle``: the angle in radians) times
``--normal-weight``; ``--normal-scale`` adds the normal map's uncertainty channel and its
Laplace NLL (:mod:`.landmarks_net`; measured in session 15 and not bundled: the search
was not better with it, ``benchmarks/results/laparo_learned_notes.md``).

``--ray-normals``: the network is given each pixel's viewing ray and predicts the normal
in the ray frame (:mod:`.landmarks_net`); the rays come from the network camera stored
with each cached frame.

Network: :func:`.landmarks_net.LandmarkNet` with ``--base`` channels at the first of
``--levels`` resolutions (4 by default, as the bundled v5). A fifth level (6 x 8 cells)
costs almost no time per step; in the same 55 min it lowered the normal error on frames
of the training mesh, not on the held-out mesh, and registered one held-out frame fewer,
so it was not adopted (``benchmarks/results/laparo_learned_notes.md``, "Session 12").

Loop: Adam, batch ``--batch``, cosine learning-rate decay over ``--max-minutes`` /
``--steps``; augmentation: horizontal flips, gain / gamma / colour jitter, the mask
channel dropped for 10 % of the samples; a checkpoint (the model file + ``<out>.ckpt``
optimiser state) every ``--checkpoint-minutes`` and at the end; ``--resume`` continues.

Scale out: under ``torchrun`` (``WORLD_SIZE > 1``) each process trains a
``DistributedDataParallel`` replica (backend ``nccl`` on GPUs, ``gloo`` on the CPU) on
frames of its own: process ``r`` renders ``ceil(samples / world)`` frames from the random
stream ``[seed, 50000 + i, r]`` into ``<cache>/rank<r>``; rank 0 decides the learning rate
and the stop for all (broadcast each step) and writes the model and checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

CHUNK = 32
RENDER_SHARE = 0.4
SEED_OFFSET = 50000


def _chunk_file(cache: Path, seed: int, k: int, warp_mm: float,
                ridge_definition: str = "ring", relief_prob: float = 0.0) -> Path:
    # "lmk": chunks with the normal maps and the network camera (the older "lm" chunks
    # have neither, "lmn" no camera); frames with a non-default shape warp or ridge label
    # are named by it, so a cache never mixes two
    from .shapes import PREOP_WARP_MM  # noqa: PLC0415

    w = "" if warp_mm == PREOP_WARP_MM else f"_w{warp_mm:g}"
    r = "" if ridge_definition == "ring" else f"_r{ridge_definition}"
    r += "" if relief_prob == 0 else f"_relief{relief_prob:g}"
    return cache / f"lmk_s{seed}{w}{r}_c{k:05d}.npz"


class _Pool:
    """The growing set of rendered frames (cache chunks on disk + the current chunk)."""

    def __init__(self, cache: Path, seed: int, meshes, target: int, stream=None,
                 warp_mm: float = None, ridge_definition: str = "ring",
                 relief_prob: float = 0.0):
        from .shapes import PREOP_WARP_MM  # noqa: PLC0415

        self.cache, self.seed, self.meshes, self.target = cache, seed, meshes, target
        self.warp_mm = PREOP_WARP_MM if warp_mm is None else float(warp_mm)
        self.ridge_definition, self.relief_prob = ridge_definition, float(relief_prob)
        self.stream = [] if stream is None else [int(stream)]  # torchrun: the rank
        cache.mkdir(parents=True, exist_ok=True)
        self.arrs: Dict[str, List[np.ndarray]] = {}
        self.pending: List[dict] = []
        self.n = 0
        self._cat = None
        k = 0
        while self.n < target and self._file(k).is_file():
            try:
                z = dict(np.load(self._file(k)))
            except Exception:  # noqa: BLE001  (a broken chunk is rendered again)
                break
            self._add(z)
            k += 1
        self.next_chunk = k

    def _file(self, k: int) -> Path:
        return _chunk_file(self.cache, self.seed, k, self.warp_mm, self.ridge_definition,
                           self.relief_prob)

    def _add(self, z):
        for key, val in z.items():
            self.arrs.setdefault(key, []).append(val)
        self.n += len(z["image"])
        self._cat = None

    def full(self) -> bool:
        return self.n + len(self.pending) >= self.target

    def render_one(self) -> None:
        from . import landmarks_data  # noqa: PLC0415

        i = self.next_chunk * CHUNK + len(self.pending)
        rng = np.random.default_rng([self.seed, SEED_OFFSET + i] + self.stream)
        s = landmarks_data.landmark_sample(self.meshes[i % len(self.meshes)], rng,
                                          warp_mm=self.warp_mm,
                                          ridge_definition=self.ridge_definition,
                                          relief_prob=self.relief_prob)
        self.pending.append(landmarks_data.pack(s))
        if len(self.pending) == CHUNK:
            z = {key: np.stack([p[key] for p in self.pending]) for key in self.pending[0]}
            f = self._file(self.next_chunk)
            tmp = f.with_name(f.stem + ".tmp.npz")
            np.savez_compressed(tmp, **z)
            tmp.replace(f)
            self.pending = []
            self.next_chunk += 1
            self._add(z)

    def arrays(self) -> Dict[str, np.ndarray]:
        if self._cat is None:
            self._cat = {k: np.concatenate(v) for k, v in self.arrs.items()}
        out = dict(self._cat)
        if self.pending:
            for key in self.pending[0]:
                new = np.stack([p[key] for p in self.pending])
                out[key] = np.concatenate([out[key], new]) if key in out else new
        return out

    def size(self) -> int:
        return self.n + len(self.pending)


def _batch(arrs, idx, rng, drop_mask: float = 0.1):
    """Augmented batch: image, mask channel (dropped for ``drop_mask`` of the samples),
    targets, valid flags, normals, the mask where the normals count, the viewing rays
    (:func:`.landmarks_net.ray_map` of each sample's network camera, mirrored with it)."""
    import torch  # noqa: PLC0415

    from .landmarks_data import unpack_normals  # noqa: PLC0415
    from .landmarks_net import ray_map  # noqa: PLC0415

    img = arrs["image"][idx].astype(np.float32) / 255.0
    mask = arrs["mask"][idx].astype(np.float32)
    tgt = arrs["target"][idx].astype(np.float32)
    flip = rng.uniform(size=len(idx)) < 0.5
    img[flip] = img[flip][..., ::-1]
    mask[flip] = mask[flip][..., ::-1]
    tgt[flip] = tgt[flip][..., ::-1]
    nrm = unpack_normals(arrs["normals"][idx])
    nrm[flip] = nrm[flip][..., ::-1]
    nrm[flip, 0] *= -1.0                       # a mirrored image: camera x is mirrored
    H, W = mask.shape[1:]
    K = arrs["K"][idx].astype(np.float64)
    K[flip, 2] = (W - 1) - K[flip, 2]          # ... and so is its principal point
    rays = np.stack([ray_map(fx, fy, cx, cy, H, W) for fx, fy, cx, cy in K])
    true_mask = mask.copy()
    gain = rng.uniform(0.7, 1.3, (len(idx), 1, 1, 1)) * rng.uniform(0.9, 1.1, (len(idx), 3, 1, 1))
    gamma = rng.uniform(0.7, 1.4, (len(idx), 1, 1, 1))
    img = np.clip(np.clip(img, 0, 1) ** gamma * gain, 0, 1).astype(np.float32)
    mask[rng.uniform(size=len(idx)) < drop_mask] = 0.0
    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a))

    return (t(img), t(mask), t(tgt), torch.as_tensor(arrs["valid"][idx].astype(np.float32)),
            t(nrm), t(true_mask), t(rays))


def train_landmarks(out, steps: int = 100000, max_minutes: float = 60.0, seed: int = 0,
                    batch: int = 8, lr: float = 2e-3, samples: int = 1500,
                    meshes: Optional[Sequence[str]] = None, data_cache=None, resume=None,
                    device: str = "auto", base: int = 12, levels: int = 4,
                    checkpoint_minutes: float = 5.0,
                    normal_loss: str = "angle", normal_weight: Optional[float] = None,
                    warp_mm: Optional[float] = None, normal_scale: bool = False,
                    ridge_definition: str = "ring", relief_prob: float = 0.0,
                    ray_normals: bool = False, view_axis=None, command: str = "",
                    log=print) -> dict:
    """Train a landmark model and write it to ``out`` (see the module docstring).
    ``view_axis``: the direction the frames of the given ``meshes`` are drawn around
    (:func:`.train.training_meshes`). Returns the training record (loss history
    included)."""
    import torch  # noqa: PLC0415

    from .landmarks_net import NORMAL_LOSSES, W_NORMAL, LandmarkNet, \
        landmark_losses  # noqa: PLC0415
    from .modelfile import read_model_file  # noqa: PLC0415
    from .train import ddp_setup, rank0_decides, training_meshes, \
        write_training_files  # noqa: PLC0415

    if steps < 1 or batch < 1 or samples < 1:
        raise InputError("steps: --steps, --batch and --samples must be positive")
    if not 2 <= levels <= 5:
        # 96 x 128 halves cleanly 5 times (to 6 x 8); fewer than 2 is no U-Net
        raise InputError(f"levels: --levels must be 2-5, got {levels}")
    if not max_minutes > 0:
        raise InputError(f"max minutes: must be positive, got {max_minutes}")
    if normal_loss not in NORMAL_LOSSES:
        raise InputError(f"normal loss: one of {', '.join(NORMAL_LOSSES)}, got {normal_loss!r}")
    normal_weight = W_NORMAL if normal_weight is None else float(normal_weight)
    if not normal_weight >= 0:
        raise InputError(f"normal weight: must be >= 0, got {normal_weight}")
    from .shapes import PREOP_WARP_MM  # noqa: PLC0415

    warp_mm = PREOP_WARP_MM if warp_mm is None else float(warp_mm)
    if not 0.0 <= warp_mm <= 60.0:
        raise InputError(f"warp: --warp-mm must be 0-60 mm, got {warp_mm:g}")
    from .data import check_ridge_definition  # noqa: PLC0415

    check_ridge_definition(ridge_definition)
    relief_prob = float(relief_prob)
    if not 0.0 <= relief_prob <= 1.0:
        raise InputError(f"relief: --relief must be a probability in [0, 1], got {relief_prob:g}")
    t_start = time.time()
    deadline = t_start + 60.0 * max_minutes
    world, rank, dev = ddp_setup(device, log)
    torch.manual_seed(seed)
    out = Path(out)
    cache = Path(data_cache) if data_cache else out.with_name(out.name + ".data")
    tms = training_meshes(meshes, view_axis)
    mesh_desc = ", ".join(t.name for t in tms)
    model = LandmarkNet(base=base, levels=levels, normals=True, normal_scale=normal_scale,
                        ridge_definition=ridge_definition, ray_normals=ray_normals).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, history, wall_before = 0, [], 0.0
    if resume:
        data = read_model_file(resume, "landmarks")
        model = LandmarkNet(**data["config"]).to(dev)
        ridge_definition = model.config.get("ridge_definition", "ring")
        model.load_state_dict(data["state_dict"])
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        ck = Path(str(resume) + ".ckpt")
        if ck.is_file():
            st = torch.load(ck, map_location="cpu", weights_only=True)
            opt.load_state_dict(st["optimizer"])
        tr = data["training"]
        step, history = int(tr.get("steps", 0)), list(tr.get("loss_history", []))
        wall_before = float(tr.get("wall_s", 0.0))
        log(f"resume: from {resume} at step {step}")
    if relief_prob > 0 and ridge_definition == "ring":   # the effective (a resumed model's)
        raise InputError("relief: --relief changes the shape, and the ring ridge labels are "
                         "the base mesh's; use it with --ridge-definition scale")
    if world > 1:  # each replica renders and trains on frames of its own
        pool = _Pool(cache / f"rank{rank}", seed, tms, -(-samples // world), stream=rank,
                     warp_mm=warp_mm, ridge_definition=ridge_definition,
                     relief_prob=relief_prob)
    else:
        pool = _Pool(cache, seed, tms, samples, warp_mm=warp_mm,
                     ridge_definition=ridge_definition, relief_prob=relief_prob)
    render_s = 0.0
    while pool.size() < min(batch * 4, samples) and time.time() < deadline:
        t0 = time.time()
        pool.render_one()
        render_s += time.time() - t0
    if pool.size() == 0:
        raise InputError("data cache: no training frame was rendered before the deadline")
    log(f"pool: {pool.size()} frames ready ({render_s:.0f} s rendering)")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    rng = np.random.default_rng([seed, 7919, step] + ([rank] if world > 1 else []))
    last_ck = time.time()
    record = {}
    start_step = step

    def write(final: bool):
        nonlocal record
        record = {"data": f"SYNTHETIC: {pool.size()} frames rendered by LiverLaparoRegLib."
                          f"learned.landmarks_data from the mesh(es) [{mesh_desc}] (deformed: "
                          f"warp <= {warp_mm:g} mm, "
                          + (f"rounder or sharper with probability {relief_prob:g}, "
                             if relief_prob else "")
                          + f"cut, bent, random laparoscope poses "
                          f"and appearance, instruments); "
                          f"per-pixel ridge ({ridge_definition} definition) / ligament / "
                          f"silhouette maps and camera-frame "
                          f"normals; no real frame used; "
                          f"SciKit-Surgery liver held out unless given",
                  "command": command, "seed": seed, "steps": step, "batch": batch * world,
                  "lr": lr, "samples": pool.size() * world, "meshes": mesh_desc,
                  "normal_loss": normal_loss, "normal_weight": normal_weight,
                  "warp_mm": warp_mm, "normal_scale": bool(model.config.get("normal_scale")),
                  "ridge_definition": ridge_definition, "relief_prob": relief_prob,
                  "ray_normals": bool(model.config.get("ray_normals")),
                  "resumed_from": Path(resume).name if resume else None,
                  "view_axis": (None if meshes is None or tms[0].view_axis is None
                                else [round(float(x), 4) for x in tms[0].view_axis]),
                  "device": str(dev), "world_size": world,
                  "loss_history": history, "wall_s": wall_before + time.time() - t_start,
                  "render_s": render_s, "finished": final}
        record = write_training_files(out, model, opt, "landmarks", record, rank)

    model.train()
    run = []
    arrs = pool.arrays()
    while step < steps:
        now = time.time()
        frac = min(1.0, max((step - start_step) / max(1, steps - start_step),
                            (now - t_start) / max(1.0, deadline - t_start)))
        frac, stop = rank0_decides(frac, now >= deadline, dev, world)
        if stop:
            break
        if not pool.full() and render_s < RENDER_SHARE * (now - t_start):
            t0 = time.time()
            pool.render_one()
            render_s += time.time() - t0
            if pool.size() % 8 == 0:
                arrs = pool.arrays()
        for g in opt.param_groups:
            g["lr"] = float(lr * (0.05 + 0.475 * (1 + np.cos(np.pi * frac))))
        n = len(arrs["image"])
        idx = rng.choice(n, size=batch, replace=n < batch)
        img, mask, tgt, valid, nrm, m_true, rays = (x.to(dev) for x in _batch(arrs, idx, rng))
        L = landmark_losses(net(img, mask, rays), tgt, valid, nrm, m_true,
                            normal_loss=normal_loss, normal_weight=normal_weight)
        opt.zero_grad()
        L["total"].backward()
        opt.step()
        step += 1
        run.append([L["total"].item()] + L["f1"].tolist()
                   + [float(L.get("normal_deg", float("nan"))),
                      float(L.get("scale_nll", float("nan")))])
        if step % 20 == 0:
            m = np.mean(run, 0).tolist()
            history.append([step] + [round(x, 5) for x in m])
            run = []
            log(f"step {step}: loss {m[0]:.4f} F1 ridge {m[1]:.3f} ligament {m[2]:.3f} "
                f"silhouette {m[3]:.3f} normal {m[4]:.1f} deg"
                + ("" if np.isnan(m[5]) else f" scale NLL {m[5]:.3f}")
                + f" (frames {pool.size()}, "
                f"{time.time() - t_start:.0f} s)")
        if time.time() - last_ck > 60.0 * checkpoint_minutes:
            write(False)
            last_ck = time.time()
    write(True)
    return record
