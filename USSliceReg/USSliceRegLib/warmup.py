"""First use of the compiled LNCC kernels: compile them (or load numba's cache) up front.

numba compiles :mod:`.kernels` the first time they run in a process (tens of seconds on a
fresh clone; about a second when numba's on-disk cache is already filled). Left to the
first frame, that time lands in the first registration's latency -- ``surgreg demo`` once
reported 3452 ms per frame and a "speedup" of 0.34 over SimpleITK, which was the compile,
not the method. :func:`warm_up_kernels` runs one registration of a tiny synthetic slice
through the real :class:`~.register.SliceRegistrar` (so the kernels are compiled for
exactly the argument types production calls use) and reports the time separately. It is
called when the module prepares a volume, by the demo and by the benchmarks, whose
per-frame timings therefore exclude first-use compilation.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from SurgicalReg2D3DLib.progress import report

from . import kernels

_DONE = {"warm": False, "seconds": None}


def warm_up_kernels(config=None, progress=None) -> dict:
    """Compile / load the numba kernels once per process.

    Args:
        config: the :class:`~.config.RegistrationConfig` the caller will use (default:
            the default config).
        progress: ``progress(fraction, message)`` callback (``progress.py``).

    Returns:
        ``{"available": bool, "seconds": float, "first_use": bool, "note": str}``:
        ``seconds`` is this call's time (compile or cache load; 0 when already warm).
    """
    if not kernels.AVAILABLE:
        return {"available": False, "seconds": 0.0, "first_use": False,
                "note": "numba is not installed: the torch kernels are used (no compile)"}
    if _DONE["warm"]:
        return {"available": True, "seconds": 0.0, "first_use": False,
                "note": f"kernels already compiled in this process ({_DONE['seconds']:.1f} s)"}
    from .config import RegistrationConfig  # noqa: PLC0415
    from .register import SliceRegistrar  # noqa: PLC0415

    report(progress, 0.0, "Compiling the LNCC kernels (first use only)...")
    start = time.perf_counter()
    # Synthetic: a smooth random texture, 48^3 voxels of 1 mm, and a 32 x 40 px slice
    # (0.5 mm pixels) through its middle, registered from a 1 mm shifted start.
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter, map_coordinates  # noqa: PLC0415

    vol = gaussian_filter(rng.random((48, 48, 48)), 1.5)
    vol = ((vol - vol.min()) / (vol.max() - vol.min()) * 200 + 20).astype(np.float32)
    h, w = 32, 40
    pose = np.eye(4)
    pose[:3, :3] *= 0.5
    pose[:3, 3] = [24.0 - 0.5 * w / 2, 24.0 - 0.5 * h / 2, 24.0]
    rr, cc = np.mgrid[0:h, 0:w]
    pix = np.stack([cc.ravel(), rr.ravel(), 0 * cc.ravel(), 1 + 0 * cc.ravel()]).astype(float)
    ijk = pose @ pix
    frame = map_coordinates(vol.astype(float), ijk[[2, 1, 0]], order=1).reshape(h, w)
    registrar = SliceRegistrar(vol, np.eye(4), (h, w), None,
                               config=config or RegistrationConfig(), device="cpu")
    moved = pose.copy()
    moved[2, 3] += 1.0
    registrar.register(frame[None].astype(np.float32), moved[None])
    registrar.register(frame[None].astype(np.float32), moved[None], tracking=True)
    # the DeepRS2V network's volume sampling (learned/geometry.py VolumeSampler)
    kernels.sample_xyz2(np.zeros((4, 4, 4, 2), np.float32), np.eye(3, 4),
                        np.ones((8, 3)))
    seconds = time.perf_counter() - start
    _DONE.update(warm=True, seconds=seconds)
    report(progress, 1.0, f"LNCC kernels ready ({seconds:.1f} s, first use only)")
    return {"available": True, "seconds": seconds, "first_use": True,
            "note": "first use in this process: numba compiled the kernels or loaded its cache"}


def is_warm() -> bool:
    """Whether :func:`warm_up_kernels` ran in this process."""
    return bool(_DONE["warm"])


def warmup_seconds() -> Optional[float]:
    """Time of this process's warm-up (None before it)."""
    return _DONE["seconds"]
