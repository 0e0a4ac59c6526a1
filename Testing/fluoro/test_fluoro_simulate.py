"""Reproducibility of the simulated (SYNTHETIC) evaluation cases.

Each case draws its poses and its image noise from its own generators derived from
``(seed, case index)`` (``simulate.case_generators``). These tests check the property
the accuracy benchmark relies on: a case's true and initial poses do not depend on the
noise settings (numpy's Poisson sampler consumes a data-dependent number of random
numbers) nor on how many cases are generated. The CT is the shipped real CT at 3 mm;
the images are tiny (24 px) so the tests stay fast.
"""

import numpy as np
import pytest
import torch

from FluoroRegLib.geometry import make_camera
from FluoroRegLib.simulate import case_generators, sample_landmarks, simulate_cases
from SurgicalReg2D3DLib.errors import InputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(ct3mm):
    hu, m, vol, _ = ct3mm
    camera = make_camera(1000.0, (12.0, 12.0), (24, 24))
    return vol, camera, sample_landmarks(hu, m, 10, seed=0)


def _cases(setup, n, seed=7, first=0, photons=2e4, sigma=2.0):
    vol, cam, lm = setup
    return simulate_cases(vol, cam, lm, n, seed=seed, first_case=first, views=("AP", "LAT"),
                          effects={"photons": photons, "electronic_sigma": sigma},
                          drr_method="trilinear", n_samples=64)


def _poses(case):
    return np.array(case.true_ct_to_camera + case.init_ct_to_camera)


def test_case_generators_are_the_seed_sequence_children():
    # Independent reference: numpy's documented spawn tree SeedSequence(seed).spawn(n)[i].spawn(2).
    for seed, n, i in [(0, 5, 0), (0, 5, 3), (11, 40, 39)]:
        ref_pose, ref_noise = np.random.SeedSequence(seed).spawn(n)[i].spawn(2)
        pose_rng, noise_rng = case_generators(seed, i)
        assert np.array_equal(pose_rng.random(4), np.random.default_rng(ref_pose).random(4))
        assert np.array_equal(noise_rng.random(4), np.random.default_rng(ref_noise).random(4))
    a, b = case_generators(0, 1)
    assert not np.array_equal(a.random(4), b.random(4))
    with pytest.raises(InputError, match=r"^case index: must be >= 0, got -1$"):
        case_generators(0, -1)


def test_noise_settings_do_not_change_the_poses(setup):
    base = _cases(setup, 2)
    other = _cases(setup, 2, photons=3e3, sigma=5.0)
    for a, b in zip(base, other):
        np.testing.assert_array_equal(_poses(a), _poses(b))
        assert a.initial_mtre_mm == b.initial_mtre_mm
        # ... while the images do change (the noise settings were really applied).
        assert np.abs(a.images[0] - b.images[0]).max() > 1e-3
    # Different cases really are different poses.
    assert not np.allclose(_poses(base[0]), _poses(base[1]))


def test_case_is_the_same_alone_or_in_a_set(setup):
    many = _cases(setup, 3)
    alone = _cases(setup, 1, first=2)[0]
    np.testing.assert_array_equal(_poses(alone), _poses(many[2]))
    for img_a, img_b in zip(alone.images, many[2].images):
        np.testing.assert_array_equal(img_a, img_b)
    assert alone.info["case_index"] == 2 and alone.info["seed"] == 7
    assert alone.info["synthetic"] is True
    # A different seed gives a different case 2.
    assert not np.allclose(_poses(_cases(setup, 1, seed=8, first=2)[0]), _poses(alone))


def test_simulate_cases_rejects_no_cases(setup):
    vol, cam, lm = setup
    with pytest.raises(InputError, match=r"^cases: must be >= 1, got 0$"):
        simulate_cases(vol, cam, lm, 0)
