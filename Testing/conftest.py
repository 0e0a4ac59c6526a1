"""Shared pytest fixtures: a real MRML scene (slicer-core) and the shipped sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "Resources" / "SampleData"

# Keep torch from fighting over the CI machine's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE_DATA


@pytest.fixture()
def ctx():
    """A fresh standalone MRML scene with the module logics registered."""
    from SurgicalReg2D3DLib.scene import SceneContext

    context = SceneContext()
    yield context
    context.close()
