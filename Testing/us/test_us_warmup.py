"""First use of the compiled LNCC kernels (issue #21): the warm-up compiles them for the
argument types production uses, so a later registration compiles nothing more."""

from __future__ import annotations

import numpy as np
import pytest

from USSliceRegLib import kernels, warmup

from test_us_register import SYN_CONFIG, H, W, _frame, _pose, _synthetic_volume

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")


def _signature_counts():
    return {name: len(getattr(kernels, name).signatures)
            for name in ("refine_level", "slice_similarity")}


def test_warm_up_compiles_what_registration_uses(monkeypatch):
    from USSliceRegLib.register import SliceRegistrar

    monkeypatch.setitem(warmup._DONE, "warm", False)
    messages = []
    info = warmup.warm_up_kernels(SYN_CONFIG, progress=lambda f, m: messages.append((f, m)))
    assert info["available"] and info["first_use"] and info["seconds"] >= 0.0
    assert messages[0][0] == 0.0 and messages[-1][0] == 1.0 and "first use" in messages[-1][1]
    compiled = _signature_counts()
    assert all(n >= 1 for n in compiled.values()), compiled
    # A real registration (synthetic volume, shifted start) needs no further compilation.
    vol, ijk = _synthetic_volume()
    truth = _pose([90, 0, 0], [0, -3, 1.0])
    start = truth.copy()
    start[:3, 3] += [1.0, 0.5, 0.0]
    registrar = SliceRegistrar(vol, ijk, (H, W), None, config=SYN_CONFIG)
    assert registrar._compiled
    registrar.register(_frame(vol, ijk, truth)[None].astype(np.float32), start[None])
    registrar.register(_frame(vol, ijk, truth)[None].astype(np.float32), start[None], tracking=True)
    assert _signature_counts() == compiled
    again = warmup.warm_up_kernels(SYN_CONFIG)
    assert again["seconds"] == 0.0 and not again["first_use"] and warmup.is_warm()


def test_warm_up_without_numba_says_so(monkeypatch):
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    info = warmup.warm_up_kernels()
    assert info == {"available": False, "seconds": 0.0, "first_use": False,
                    "note": "numba is not installed: the torch kernels are used (no compile)"}
