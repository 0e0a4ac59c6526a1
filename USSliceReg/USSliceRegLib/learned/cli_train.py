"""``surgreg us train``: train a DeepRS2V model for one volume (see :mod:`.train`).

::

    surgreg us train --volume VOL [--sequence SEQ --calibration XML] [--frames 0,2,...]
        [--max-minutes M] [--seed S] [--device D] [--resume CKPT] --out MODEL.pt

Without ``--volume`` the volume is reconstructed from the ``--frames`` of ``--sequence``
(the same reconstruction as ``surgreg us bench``: pixel nearest neighbour, every 3rd
pixel, hole filling 4 voxels), so a model can be trained for a volume built without
held-out frames. With ``--sequence`` the tracked poses of ``--frames`` (default: all
usable frames) seed the plausible probe poses and those frames are real training
samples; frames not listed are never used. ``--manifest NAME`` also writes the hub
registry's manifest next to the model (bundled models). Runs under ``torchrun`` too.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a DeepRS2V model for one volume")
    p.add_argument("--volume", help="3D US volume (.mha/.nrrd); default: reconstructed from "
                   "--frames of --sequence")
    p.add_argument("--sequence", help="PLUS tracked sequence (poses and real frames)")
    p.add_argument("--calibration", help="PLUS device-set XML with the Image->Probe transform")
    p.add_argument("--frames", help="comma-separated sequence frames allowed for training "
                   "(default: all usable)")
    p.add_argument("--max-minutes", type=float, default=30.0,
                   help="wall-time budget of this run (default 30)")
    p.add_argument("--max-steps", type=int, help="also stop after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--resume", help="checkpoint (<model>.ckpt) to continue from")
    p.add_argument("--max-mm", type=float, default=20.0, help="start translation range (mm)")
    p.add_argument("--max-deg", type=float, default=20.0, help="start rotation range (deg)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lncc-kernel", type=int, default=9, help="LNCC window (grid cells)")
    p.add_argument("--w-lncc", type=float, default=0.5)
    p.add_argument("--w-trans", type=float, default=1.0)
    p.add_argument("--w-rot", type=float, default=1.0)
    p.add_argument("--real-fraction", type=float, default=0.3,
                   help="share of real tracked frames in a batch (with --sequence)")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--manifest", metavar="NAME", help="also write the model registry "
                   "manifest (<out stem>.json) with this model name")
    p.add_argument("--out", required=True, help="MODEL.pt")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)


def _command_line(argv=None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "surgreg " + " ".join(shlex.quote(a) for a in args)


def cmd_train(args: argparse.Namespace) -> int:

    from SurgicalReg2D3DLib.errors import InputError  # noqa: PLC0415

    from .losses import LossWeights  # noqa: PLC0415
    from .train import TrainConfig  # noqa: PLC0415

    if not (args.max_minutes > 0):
        raise InputError(f"--max-minutes: must be > 0, got {args.max_minutes}")
    if args.volume is None and args.sequence is None:
        raise InputError("--volume: missing (or give --sequence to reconstruct one)")
    config = TrainConfig(max_minutes=args.max_minutes, max_steps=args.max_steps,
                         seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                         max_mm=args.max_mm, max_deg=args.max_deg,
                         loss=LossWeights(args.w_lncc, args.w_trans, args.w_rot,
                                          args.lncc_kernel),
                         real_fraction=args.real_fraction,
                         checkpoint_minutes=args.checkpoint_minutes)
    import torch  # noqa: PLC0415

    from SurgicalReg2D3DLib.device import choose_device  # noqa: PLC0415

    from SurgicalReg2D3DLib.checks import int_list as _int_list  # noqa: PLC0415
    from .train import init_distributed_from_env, train_model  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = choose_device(args.device)
    frames_sel = _int_list(args.frames, "--frames")
    fan = poses = frames = frame_shape = None
    note = []
    if args.sequence:
        from ..logic import load_inputs  # noqa: PLC0415
        from ..plus_io import (image_to_reference_chain, read_calibration,  # noqa: PLC0415
                               read_sequence)
        from ..slicing import fan_mask  # noqa: PLC0415

        seq = read_sequence(args.sequence)
        if args.calibration:
            chain = image_to_reference_chain(seq, read_calibration(args.calibration))
        elif args.volume:
            _, seq, chain = load_inputs(args.volume, args.sequence, None)
        else:
            raise InputError("--calibration: needed with --sequence (or a sequence with "
                             "ImageToReference)")
        usable = [int(i) for i in chain.indices]
        chosen = usable if frames_sel is None else [i for i in frames_sel if i in usable]
        if not chosen:
            raise InputError(f"--frames: none of {frames_sel} is a usable frame")
        k_of = {i: k for k, i in enumerate(usable)}
        fan = fan_mask(seq.images[chain.indices])
        poses = chain.image_to_reference[[k_of[i] for i in chosen]]
        frames = seq.images[chosen]
        frame_shape = seq.frame_shape
        note.append(f"tracked sweep {Path(args.sequence).name}: poses and real frames of "
                    f"frames {chosen} only")
    if args.volume:
        from ..plus_io import read_reference_volume  # noqa: PLC0415

        vol = read_reference_volume(args.volume)
        array, ijk, mask = vol.array, vol.ijk_to_reference, None
        note.insert(0, f"volume {Path(args.volume).name}")
    else:
        from ..reconstruct import reconstruct_volume  # noqa: PLC0415

        rec = reconstruct_volume(frames, poses, fan, pixel_step=3, fill_radius=4)
        array, ijk, mask = rec.array, rec.ijk_to_reference, rec.filled
        note.insert(0, f"volume reconstructed from frames {chosen} of "
                       f"{Path(args.sequence).name} (pixel step 3, fill 4)")
    init_distributed_from_env(device)
    log = None if args.quiet else (lambda s: print(s, flush=True))
    payload = train_model(array, ijk, args.out, volume_mask=mask, fan=fan, poses=poses,
                          frames=frames, frame_shape=frame_shape, config=config,
                          command=_command_line(), data_note="; ".join(note),
                          resume=args.resume, device=device, log=log)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0
    if args.manifest:
        from .model_io import write_bundle_manifest  # noqa: PLC0415

        print(f"written {write_bundle_manifest(args.out, args.manifest, payload)}")
    tr = payload["training"]
    val = tr["validation"][-1] if tr["validation"] else {}
    print(f"trained {tr['steps']} steps in {tr['minutes']:.1f} min ({tr['stopped']}); "
          f"validation {val.get('translation_mm', float('nan')):.2f} mm / "
          f"{val.get('rotation_deg', float('nan')):.2f} deg from "
          f"{val.get('start_translation_mm', float('nan')):.2f} mm / "
          f"{val.get('start_rotation_deg', float('nan')):.2f} deg")
    print(f"written {args.out}")
    return 0
