"""Blend and checkerboard comparison images."""

import numpy as np
import pytest

from SurgicalReg2D3DLib.compare import blend, checkerboard
from SurgicalReg2D3DLib.errors import InputError


def test_checkerboard_alternates_tiles_of_each_image():
    a = np.zeros((40, 60))
    a[20:] = 1.0                        # top half 0, bottom half 1
    b = 5.0 + 2.0 * (1.0 - a)           # the opposite, in another intensity range
    c = checkerboard(a, b, tiles=4)     # tiles of 10 rows x 15 columns
    assert c.shape == (40, 60)
    assert c[5, 5] == 0.0 and c[5, 20] == 1.0       # row of tiles 0: a, b
    assert c[25, 5] == 1.0 and c[25, 20] == 0.0     # row of tiles 2: a, b
    assert c[15, 5] == 1.0                          # tile (1, 0) -> b (top half: 1)
    assert c[39, 59] == 1.0                         # tile (3, 3) -> a


def test_blend_weights_and_errors():
    a = np.tile(np.linspace(0, 1, 50), (10, 1))
    b = a[:, ::-1]
    np.testing.assert_allclose(blend(a, b, 0.0), blend(a, a, 0.3), atol=1e-12)
    mid = blend(a, b, 0.5)
    assert np.allclose(mid[:, 10:40], 0.5, atol=0.02)
    with pytest.raises(InputError, match="second image: size"):
        blend(a, b[:, :10])
    with pytest.raises(InputError, match="alpha"):
        blend(a, b, 1.5)
    with pytest.raises(InputError, match="tiles"):
        checkerboard(a, b, 1)
    with pytest.raises(InputError, match="first image: contains NaN"):
        blend(np.full((4, 4), np.nan), b[:4, :4])
