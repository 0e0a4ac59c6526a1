"""Scene-level (MRML) entry of DeepRS2V training: "Train for this volume" in the GUI.

Everything is in RAS here (as the node-level registration of :mod:`..logic`); a model
trained on a volume node is accepted for the same volume read from its file (LPS) and
vice versa (:func:`.geometry.volume_fingerprints`).
"""

from __future__ import annotations

from typing import Optional

from .train import TrainConfig, train_model


def train_for_nodes(volume_node, image_sequence, transform_sequence, out,
                    max_minutes: float = 10.0, resume: Optional[str] = None, seed: int = 0,
                    device=None, progress=None, cancel=None, log=None) -> dict:
    """Train a model for ``volume_node`` with the frames and tracked poses of a browsable
    sweep (as made by ``logic.load_sweep_to_scene``); writes ``out`` (+ ``.ckpt``) and
    returns the model payload. Nodes are not modified."""
    from ..logic import _frames_from_sequences, _volume_arrays  # noqa: PLC0415
    from ..slicing import fan_mask  # noqa: PLC0415

    array, ijk_to_ras = _volume_arrays(volume_node)
    frames, poses = _frames_from_sequences(image_sequence, transform_sequence)
    fan = fan_mask(frames)
    config = TrainConfig(max_minutes=float(max_minutes), seed=int(seed))
    name = volume_node.GetName() if hasattr(volume_node, "GetName") else "volume"
    return train_model(array, ijk_to_ras, out, fan=fan, poses=poses, frames=frames,
                       frame_shape=frames.shape[1:], config=config,
                       command=f"USSliceReg GUI: Train for this volume ({name}, "
                               f"{max_minutes} min, seed {seed})",
                       data_note=f"volume node {name!r} and its browsable sweep "
                                 f"({len(frames)} frames), RAS",
                       resume=resume, device=device, progress=progress, cancel=cancel,
                       log=log)
