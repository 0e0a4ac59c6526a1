"""Tests of SurgicalReg2D3DLib.device."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from SurgicalReg2D3DLib.device import ENV_VAR, choose_device, default_dtype, describe_device, seed_everything
from SurgicalReg2D3DLib.errors import InputError


def test_choose_device_cpu_auto_and_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(torch.device("cpu")) == torch.device("cpu")
    auto = choose_device()
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(ENV_VAR, "cpu")
    assert choose_device() == torch.device("cpu")
    monkeypatch.setenv(ENV_VAR, "quantum")
    with pytest.raises(InputError, match=r"^device \(SURGREG_DEVICE\): unknown device 'quantum'"):
        choose_device()
    with pytest.raises(InputError, match=r"^device: unknown device 'tpu'"):
        choose_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(InputError, match=r"^device: 'cuda' was requested but CUDA is not available"):
        choose_device("cuda")
    monkeypatch.setenv(ENV_VAR, "cuda:0")
    with pytest.raises(InputError, match=r"^device \(SURGREG_DEVICE\): 'cuda:0' was requested"):
        choose_device()


def test_seed_everything_reproducible():
    seed_everything(123)
    a = (random.random(), np.random.rand(3), torch.rand(3), torch.randn(2, 2))
    seed_everything(123)
    b = (random.random(), np.random.rand(3), torch.rand(3), torch.randn(2, 2))
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    seed_everything(124)
    assert not torch.equal(torch.rand(3), a[2])
    with pytest.raises(InputError, match=r"^seed: must be an integer in \[0, 2\*\*32 - 1\], got -1$"):
        seed_everything(-1)


def test_one_seed_makes_a_random_restart_run_repeatable():
    """A small run that draws from every generator (torch, numpy, random, OpenCV) and
    optimises from a random start: the same seed gives bit-identical results."""
    import cv2

    from SurgicalReg2D3DLib.optimize import adam_loop

    target = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)

    def run(seed):
        seed_everything(seed)
        start = torch.randn(4, 3, dtype=torch.float64) * 3.0  # random restarts
        jitter = torch.from_numpy(np.random.normal(size=3) * 1e-3)
        noise = cv2.randn(np.zeros((3, 1)), 0.0, 1e-3).ravel()
        shuffle = random.sample(range(4), 4)

        def loss(p):  # a noisy objective (fresh torch noise every iteration)
            scale = 1.0 + 0.05 * torch.rand(4, dtype=p.dtype)
            return scale * ((p - target - jitter) ** 2).sum(-1)

        result = adam_loop(loss, start[shuffle], lr=0.1, max_iter=60, patience=60)
        return result.best_params, noise

    first, second, other = run(7), run(7), run(8)
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not torch.equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_describe_device_and_dtype(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    info = describe_device("cpu")
    assert info["device"] == "cpu"
    assert info["torch"] == torch.__version__
    assert info["threads"] == torch.get_num_threads()
    assert info["cuda_available"] == torch.cuda.is_available()
    assert default_dtype() == torch.float32


# --- one device choice for every module and command (issue #21) ----------------------------

def test_preference_helpers_drive_choose_device(monkeypatch):
    import os

    from SurgicalReg2D3DLib.device import device_preference, set_device_preference

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert device_preference() == "auto"
    assert set_device_preference(" CPU ") == "cpu"
    assert os.environ[ENV_VAR] == "cpu" and device_preference() == "cpu"
    assert choose_device() == torch.device("cpu")
    assert set_device_preference("auto") == "auto"
    assert ENV_VAR not in os.environ
    assert choose_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match=r"^device preference: expected one of"):
        set_device_preference("gpu0")
    assert ENV_VAR not in os.environ  # a refused value changes nothing


def test_device_preferences_work_without_torch(tmp_path):
    """The hub stores the preference before torch is installed: no torch import."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from SurgicalReg2D3DLib import device\n"
            "print(device.set_device_preference('cuda'), device.device_preference())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cuda", "cuda"]


def test_cli_device_defaults_to_the_shared_choice(monkeypatch, tmp_path, sample_data, capsys):
    """`surgreg us register` without --device uses SURGREG_DEVICE (the hub's choice);
    --device overrides it (an unknown name is reported either way, before any work)."""
    from SurgicalReg2D3DLib.cli import main

    d = sample_data / "ultrasound"
    args = ["us", "register", "--volume", str(d / "SpinePhantomFreehandReconstructed.mha"),
            "--sequence", str(d / "SpinePhantomFreehand.igs.mha"), "--calibration",
            str(d / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"),
            "--frames", "8", "--out", str(tmp_path / "o.json"), "--quiet"]
    monkeypatch.setenv(ENV_VAR, "quantum")
    assert main(args) == 2
    assert "error: device (SURGREG_DEVICE): unknown device 'quantum'" in capsys.readouterr().err
    assert main(args + ["--device", "tpu"]) == 2
    assert "error: --device: unknown device 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
