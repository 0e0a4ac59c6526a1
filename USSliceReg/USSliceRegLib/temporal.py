"""Temporal workflow: register a stream of frames, each starting from the last correction.

Breathing and patient motion change slowly, so the correction found for frame ``t - 1``
(``tracked_reference_to_reference``, see :mod:`register`) is the best guess for frame
``t``: with ``temporal=True`` frame ``t`` starts at ``correction[t-1] @ tracked[t]`` and,
from the second frame on, is registered with ``tracking=True`` (the LNCC method then skips
its coarse translation search and multi-start: lower latency per live frame).
Without it, frames are independent and registered in batches.

:class:`LiveRegistration` is the hook for live use (a sequence browser or an incoming image
node observer in the Slicer widget): ``update(frame, tracked_image_to_reference)`` returns
the updated correction for each new frame.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

from .config import FrameResult


def frame_failed(result: FrameResult) -> bool:
    """The plain rule: a frame whose similarity ended lower than at its start (or is not
    finite) was not registered (:func:`SurgicalReg2D3DLib.checks.ended_worse`)."""
    from SurgicalReg2D3DLib.checks import ended_worse  # noqa: PLC0415

    return ended_worse(result.lncc_start, result.lncc)


def frame_quality(result: FrameResult):
    """``failed`` :class:`~SurgicalReg2D3DLib.quality.Quality` of a frame that ended worse
    than it started, else the frame's own ``quality`` attribute when it has one (None
    otherwise)."""
    from SurgicalReg2D3DLib.checks import no_progress_quality  # noqa: PLC0415

    failed = no_progress_quality(result.lncc_start, result.lncc, "LNCC")
    if failed is not None:
        failed.reasons.append("not used to start the next frame")
        return failed
    return getattr(result, "quality", None)


def check_live_frame(frame, tracked_image_to_reference):
    """``(frame (H, W), pose (4, 4))`` of one live frame, checked (InputError naming it)."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[0] == 1:
        frame = frame[0]
    if frame.ndim != 2:
        raise InputError(f"US frame: expected a 2D image (H, W), got shape {frame.shape}")
    pose = np.asarray(tracked_image_to_reference, dtype=float)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise InputError("tracked image_to_reference: expected a finite 4x4 matrix")
    return frame, pose


def register_sequence(method, frames, starts, temporal: bool = True, batch_size: int = 8,
                      indices: Optional[Sequence[int]] = None, progress=None,
                      cancel=None) -> List[FrameResult]:
    """Register frames ``(N, H, W)`` from tracked poses ``starts`` ``(N, 4, 4)``.

    ``method`` is a callable from :mod:`methods`. ``temporal``: each frame starts from the
    previous frame's correction (sequential); else frames go in batches of ``batch_size``.
    ``indices`` (``N`` frame numbers) are used in messages. In temporal mode a frame that
    ended worse than it started (:func:`frame_failed`) does not seed the next frame: the
    last good correction is carried over.
    """
    frames = np.asarray(frames)
    starts = np.asarray(starts, dtype=float)
    if frames.ndim != 3 or starts.shape != (frames.shape[0], 4, 4):
        raise InputError(f"US frames: expected (N, H, W) frames and (N, 4, 4) poses, got "
                         f"{frames.shape} and {starts.shape}")
    n = frames.shape[0]
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    results: List[FrameResult] = []
    if temporal:
        correction = np.eye(4)
        for t in range(n):
            check_cancel(cancel, "US sequence registration")
            res = method(frames[t:t + 1], starts[t:t + 1], init_corrections=correction[None],
                         indices=indices[t:t + 1], cancel=cancel, tracking=t > 0)[0]
            if not frame_failed(res):  # a failed frame must not seed the next one
                correction = res.correction
            results.append(res)
            report(progress, (t + 1) / n, f"frame {indices[t]} ({t + 1}/{n})")
    else:
        for b in range(0, n, batch_size):
            check_cancel(cancel, "US sequence registration")
            sl = slice(b, min(n, b + batch_size))
            results.extend(method(frames[sl], starts[sl], indices=indices[sl], cancel=cancel))
            report(progress, sl.stop / n, f"frames {sl.start + 1}-{sl.stop} of {n}")
    return results


class LiveRegistration:
    """Follows a live stream: one :meth:`update` per incoming frame.

    ``method`` from :mod:`methods`. The correction carries over between frames
    (temporal initialisation); :meth:`reset` forgets it (e.g. after a probe lift-off).
    """

    def __init__(self, method):
        self.method = method
        self.correction = np.eye(4)
        self.count = 0
        self.last: Optional[FrameResult] = None

    def reset(self) -> None:
        self.correction = np.eye(4)
        self.count = 0
        self.last = None

    def update(self, frame, tracked_image_to_reference) -> FrameResult:
        """Register one frame ``(H, W)`` whose tracked pose is a 4x4; returns its result
        (``result.correction`` is the new ``tracked_reference_to_reference``)."""
        frame, pose = check_live_frame(frame, tracked_image_to_reference)
        res = self.method(frame[None], pose[None], init_corrections=self.correction[None],
                          indices=[self.count], tracking=self.count > 0)[0]
        if not frame_failed(res):  # keep the last good correction
            self.correction = res.correction
        self.count += 1
        self.last = res
        return res
