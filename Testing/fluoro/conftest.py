"""Shared FluoroReg fixture: the shipped real CT block-averaged x2 (about 3 mm voxels)."""

import pytest

from FluoroRegLib.drr import DRRVolume
from FluoroRegLib.simulate import downsample_ct, read_ct, sample_landmarks


@pytest.fixture(scope="session")
def ct3mm(sample_data):
    """``(hu, ijk_to_ras, DRRVolume, 20 landmarks RAS)`` of the shipped CT at half
    resolution; read-only for the tests that share it."""
    hu, m = read_ct(sample_data / "ct" / "thorax_aorta_ct_cropped.nii.gz")
    hu, m = downsample_ct(hu, m, 2)
    return hu, m, DRRVolume.from_hu(hu, m), sample_landmarks(hu, m, 20, seed=0)
