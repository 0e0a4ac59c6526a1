"""Progress reporting and cancellation for long loops.

Every long-running function in this project takes two optional keyword arguments:

``progress``  a callable ``progress(fraction, message)`` with ``fraction`` in [0, 1];
``cancel``    a :class:`CancelToken`, or any callable returning ``True`` once the user
              asked to stop.

and calls :func:`report` and :func:`check_cancel` between iterations. A cancelled loop
raises :class:`~SurgicalReg2D3DLib.errors.CancelledError`; inputs are left untouched.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Union

from .errors import CancelledError

ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """A thread-safe flag a GUI sets (Cancel button) and a worker loop polls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self.cancelled


CancelLike = Optional[Union[CancelToken, Callable[[], bool]]]


def is_cancelled(cancel: CancelLike) -> bool:
    if cancel is None:
        return False
    return bool(cancel())


def check_cancel(cancel: CancelLike, where: str = "operation") -> None:
    """Raise :class:`CancelledError` if ``cancel`` says so."""
    if is_cancelled(cancel):
        raise CancelledError(f"{where} was cancelled")


def report(progress: Optional[ProgressCallback], fraction: float, message: str = "") -> None:
    """Call ``progress`` (if given) with ``fraction`` clipped to [0, 1]."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def sub_progress(progress: Optional[ProgressCallback], start: float, stop: float) -> Optional[ProgressCallback]:
    """A callback mapping [0, 1] of a sub-task onto [start, stop] of ``progress``."""
    if progress is None:
        return None

    def _sub(fraction: float, message: str = "") -> None:
        report(progress, start + (stop - start) * fraction, message)

    return _sub
