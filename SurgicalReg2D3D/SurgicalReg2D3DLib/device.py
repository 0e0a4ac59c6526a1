"""Compute device choice, seeding and a device summary for ``surgreg info``.

One device choice is used by every module (Slicer) and every ``surgreg`` command.
Device choice order (:func:`choose_device`):

1. the ``prefer`` argument when given (e.g. ``surgreg fluoro register --device cpu``);
2. else the environment variable ``SURGREG_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``
   or ``auto``), so a user can force the CPU without touching code. Inside Slicer the hub's
   "Compute on" setting is stored in Slicer's settings (:data:`SETTINGS_KEY`) and applied
   to ``SURGREG_DEVICE`` when Slicer starts and when the setting changes
   (:func:`set_device_preference`);
3. else ``auto``: the first CUDA GPU when torch sees one, otherwise the CPU.

Asking explicitly for a device that is not available raises
:class:`~SurgicalReg2D3DLib.errors.InputError` instead of silently falling back.
torch is imported inside the functions, so the preference helpers work without torch.
"""

from __future__ import annotations

import os
import platform
import random
import re
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:  # annotations only: torch is imported inside the functions
    import torch

from .errors import InputError

__all__ = ["ENV_VAR", "SETTINGS_KEY", "PREFERENCES", "choose_device", "parse_device",
           "device_preference", "set_device_preference", "seed_everything", "describe_device",
           "default_dtype"]

ENV_VAR = "SURGREG_DEVICE"
#: Key of the hub's "Compute on" setting in Slicer's settings (QSettings).
SETTINGS_KEY = "SurgicalReg2D3D/ComputeDevice"
#: The choices the hub offers ("auto": the first CUDA GPU when available, else the CPU).
PREFERENCES = ("auto", "cpu", "cuda")


def device_preference() -> str:
    """The device preference in effect: ``SURGREG_DEVICE`` (lower case) or ``"auto"``."""
    return os.environ.get(ENV_VAR, "").strip().lower() or "auto"


def set_device_preference(preference: str) -> str:
    """Make ``preference`` (one of :data:`PREFERENCES`, or ``cuda:N`` / ``mps``) the device
    of every module and command in this process, through ``SURGREG_DEVICE``; ``"auto"``
    removes the variable. Availability is checked later, by :func:`choose_device`.
    Returns the normalised preference."""
    name = str(preference).strip().lower() if preference is not None else ""
    if not (name in PREFERENCES or name == "mps" or re.fullmatch(r"cuda:\d+", name)):
        raise InputError(f"device preference: expected one of {list(PREFERENCES)}, 'cuda:N' "
                         f"or 'mps', got {preference!r}")
    if name == "auto":
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = name
    return name


def _mps_available() -> bool:
    import torch  # noqa: PLC0415

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def choose_device(prefer: Optional[Union[str, torch.device]] = None) -> torch.device:
    """The torch device to compute on (see the module docstring for the order).

    Args:
        prefer: ``None``, ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
            ``torch.device``.

    Returns:
        ``torch.device``.

    Raises:
        InputError: unknown name, or a GPU that this torch build / machine does not have.
    """
    import torch  # noqa: PLC0415

    source = "device"
    if prefer is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            prefer, source = env, f"device ({ENV_VAR})"
        else:
            prefer = "auto"
    if isinstance(prefer, torch.device):
        name = str(prefer)
    elif isinstance(prefer, str):
        name = prefer.strip().lower()
    else:
        raise InputError(f"{source}: expected a device name such as 'cpu' or 'cuda', got {prefer!r}")

    if name in ("", "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise InputError(f"{source}: 'mps' was requested but the Apple MPS backend is not available")
        return torch.device("mps")
    if name == "gpu":
        name = "cuda"
    if name.startswith("cuda"):
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise InputError(
                f"{source}: unknown device {prefer!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"
            ) from None
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise InputError(
                f"{source}: '{name}' was requested but CUDA is not available (torch {torch.__version__}, "
                f"{build}); use 'cpu' or install a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"{source}: '{name}' was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    raise InputError(f"{source}: unknown device {prefer!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")


def parse_device(text: Optional[str], option: str = "--device", warn=None) -> torch.device:
    """The device of a command-line option (the one parser every CLI uses).

    ``None`` / ``""`` / ``"auto"``: as :func:`choose_device`. An unknown name (e.g.
    ``gpu0``) is an :class:`InputError` naming ``option``. A GPU that is not available
    (``cuda`` on a machine without CUDA, ``cuda:3`` with one GPU, ``mps`` off a Mac) is
    not an error: ``warn`` (default: print to stderr) gets one line and the CPU is used.
    """
    import sys  # noqa: PLC0415

    import torch  # noqa: PLC0415

    if text is None or (isinstance(text, str) and text.strip() == ""):
        return choose_device(None)
    name = str(text).strip().lower()
    if name in ("auto", "cpu"):
        return choose_device(name)
    if not re.fullmatch(r"(cuda|gpu)(:\d+)?|mps", name):
        raise InputError(f"{option}: unknown device {text!r}; use 'cpu', 'cuda', 'cuda:N', "
                         "'mps' or 'auto'")
    if name.startswith("gpu"):
        name = "cuda" + name[3:]
    try:
        return choose_device(name)
    except InputError as exc:
        detail = str(exc).split(": ", 1)[-1]
        line = f"warning: {option} {text}: {detail}; running on the CPU instead"
        if warn is None:
            print(line, file=sys.stderr)
        else:
            warn(line)
        return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed Python's ``random``, numpy's global generator, torch (CPU and all GPUs) and
    OpenCV's global generator (``cv2.setRNGSeed``, when OpenCV is installed).

    Args:
        seed: integer in [0, 2**32 - 1].
        deterministic: also ask cuDNN for deterministic kernels (slower; no autotuning).

    Returns:
        The seed.
    """
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise InputError(f"seed: must be an integer in [0, 2**32 - 1], got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    try:
        import cv2  # noqa: PLC0415
    except ImportError:  # OpenCV is optional here
        cv2 = None
    if cv2 is not None:
        cv2.setRNGSeed(seed % 2**31)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


def default_dtype(device: Optional[Union[str, torch.device]] = None) -> torch.dtype:
    """Floating type for image/volume work: float32 (fast on GPUs; MPS has no float64).

    Geometry that needs precision (poses, LM on few parameters) should use float64 on
    CPU/CUDA explicitly.
    """
    import torch  # noqa: PLC0415

    return torch.float32


def describe_device(device: Optional[Union[str, torch.device]] = None) -> dict:
    """A JSON-friendly summary of the compute set-up (for ``surgreg info`` and bug reports)."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    dev = choose_device(device)
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "device": str(dev),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda_name": None,
        "cuda_memory_gb": None,
        "mps_available": _mps_available(),
        "threads": torch.get_num_threads(),
        "default_dtype": str(default_dtype(dev)).replace("torch.", ""),
        "env_" + ENV_VAR: os.environ.get(ENV_VAR),
    }
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info["cuda_name"] = props.name
        info["cuda_memory_gb"] = round(props.total_memory / 1024**3, 2)
    return info
