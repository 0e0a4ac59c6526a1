"""USSliceReg plane slicing, masks and LNCC on small synthetic volumes (labelled synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.errors import GeometryError, InputError
from USSliceRegLib.lncc import local_normalise, local_normalise_jvp, masked_lncc
from USSliceRegLib.slicing import fan_mask, plane_pixels, prepare_volume, slice_volume


def _geometry():
    """Synthetic: a rotated, anisotropic voxel grid and a frame plane through it."""
    rng = np.random.default_rng(0)
    vol = rng.random((20, 24, 28)).astype(np.float32) + 0.5
    ijk_to_ref = np.eye(4)
    ijk_to_ref[:3, :3] = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix() \
        @ np.diag([1.2, 0.9, 1.5])
    ijk_to_ref[:3, 3] = [5.0, -3.0, 2.0]
    centre = ijk_to_ref @ np.array([13.5, 11.5, 9.5, 1.0])
    image_to_ref = np.eye(4)
    image_to_ref[:3, :3] = Rotation.from_euler("zyx", [25, 15, -10], degrees=True).as_matrix() \
        @ np.diag([0.4, 0.35, 0.4])
    image_to_ref[:3, 3] = centre[:3] - image_to_ref[:3, :3] @ np.array([16.0, 12.0, 0.0])
    return vol, ijk_to_ref, image_to_ref


def _scipy_slice(vol, ijk_to_ref, image_to_ref, shape, step):
    pix = plane_pixels(shape, step, dtype=torch.float64).reshape(-1, 4).numpy().T
    ijk = np.linalg.inv(ijk_to_ref) @ image_to_ref @ pix
    return map_coordinates(vol.astype(float), ijk[[2, 1, 0]], order=1, mode="constant",
                           cval=0.0).reshape(shape[0] // step, shape[1] // step)


@pytest.mark.parametrize("step", [1, 2])
def test_slice_matches_scipy(step):
    vol, ijk_to_ref, image_to_ref = _geometry()
    prepared = prepare_volume(vol, ijk_to_ref, dtype=torch.float64)
    vals, inside = slice_volume(prepared, image_to_ref, (24, 32), step=step)
    ref = _scipy_slice(vol, ijk_to_ref, image_to_ref, (24, 32), step)
    assert inside.shape == (1, 24 // step, 32 // step)
    assert inside[0].float().mean() > 0.5  # the plane crosses the grid
    np.testing.assert_allclose(vals[0, 0][inside[0]].numpy(), ref[inside[0].numpy()], atol=1e-6)


def test_in_volume_mask_and_batch():
    vol, ijk_to_ref, image_to_ref = _geometry()
    prepared = prepare_volume(vol, ijk_to_ref, dtype=torch.float64)
    far = image_to_ref.copy()
    far[:3, 3] += 500.0
    vals, inside = slice_volume(prepared, np.stack([image_to_ref, far]), (24, 32))
    assert vals.shape == (2, 2, 24, 32)
    assert not inside[1].any() and float(vals[1].abs().max()) == 0.0
    # inside <=> all voxel coordinates within [0, n-1] (volume is > 0 everywhere here)
    pix = plane_pixels((24, 32), 1, dtype=torch.float64).reshape(-1, 4).numpy().T
    ijk = (np.linalg.inv(ijk_to_ref) @ image_to_ref @ pix)[:3]
    expect = np.all((ijk >= 0) & (ijk <= np.array([[27], [23], [19]])), axis=0)
    np.testing.assert_array_equal(inside[0].numpy().ravel(), expect)


def test_slab_is_mean_of_offset_planes():
    vol, ijk_to_ref, image_to_ref = _geometry()
    prepared = prepare_volume(vol, ijk_to_ref, dtype=torch.float64)
    slab, _ = slice_volume(prepared, image_to_ref, (24, 32), slab_mm=2.0, slab_samples=3)
    n = np.cross(image_to_ref[:3, 0], image_to_ref[:3, 1])
    n /= np.linalg.norm(n)
    planes = []
    for o in (-1.0, 0.0, 1.0):
        t = image_to_ref.copy()
        t[:3, 3] += o * n
        planes.append(_scipy_slice(vol, ijk_to_ref, t, (24, 32), 1))
    inner = slice_volume(prepared, image_to_ref, (24, 32), slab_mm=2.0, slab_samples=3)[1][0]
    np.testing.assert_allclose(slab[0, 0][inner].numpy(), np.mean(planes, 0)[inner.numpy()],
                               atol=1e-6)


def test_slice_is_differentiable_wrt_pose():
    vol, ijk_to_ref, image_to_ref = _geometry()
    prepared = prepare_volume(vol, ijk_to_ref, dtype=torch.float64)
    pose = torch.tensor(image_to_ref, requires_grad=True)
    vals, _ = slice_volume(prepared, pose, (24, 32), channels=1)
    vals.sum().backward()
    eps = 1e-6  # trilinear is piecewise linear: keep the step below the kinks
    for r in range(3):
        p, m = image_to_ref.copy(), image_to_ref.copy()
        p[r, 3] += eps
        m[r, 3] -= eps
        # Finite differences of the sampled values (checked against scipy above).
        fd = (float(slice_volume(prepared, p, (24, 32), channels=1)[0].sum())
              - float(slice_volume(prepared, m, (24, 32), channels=1)[0].sum())) / (2 * eps)
        assert float(pose.grad[r, 3]) == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_gradient_channels_are_reference_mm_derivatives():
    """A linear intensity ramp in reference mm has a constant, known gradient."""
    _, ijk_to_ref, image_to_ref = _geometry()
    k, j, i = np.meshgrid(np.arange(20), np.arange(24), np.arange(28), indexing="ij")
    ref = np.einsum("ab,bkji->akji", ijk_to_ref, np.stack([i, j, k, np.ones_like(i)]))
    g = np.array([0.3, -0.7, 1.1])
    vol = 50 + np.tensordot(g, ref[:3], axes=1)
    prepared = prepare_volume(vol, ijk_to_ref, with_gradient=True, dtype=torch.float64)
    vals, inside = slice_volume(prepared, image_to_ref, (24, 32))
    grads = vals[0, 2:5].permute(1, 2, 0)[inside[0]].numpy()
    np.testing.assert_allclose(grads, np.broadcast_to(g, grads.shape), atol=1e-6)


def test_bad_volumes():
    with pytest.raises(InputError, match=r"^US volume: expected a 3D volume \(K, J, I\) with "
                                         r"at least 2 voxels per axis, got shape \(16, 16\)"):
        prepare_volume(np.ones((16, 16)), np.eye(4))
    with pytest.raises(InputError, match=r"^US volume: expected a 3D volume .*got shape \(1, 8, 8\)"):
        prepare_volume(np.ones((1, 8, 8)), np.eye(4))
    with pytest.raises(InputError, match=r"^US volume: contains NaN or inf values"):
        prepare_volume(np.full((4, 4, 4), np.nan), np.eye(4))
    with pytest.raises(GeometryError, match=r"^US volume: ijk_to_reference is singular"):
        prepare_volume(np.ones((4, 4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(InputError, match=r"^image_to_reference: contains NaN or inf"):
        slice_volume(prepare_volume(np.ones((4, 4, 4)), np.eye(4)), np.full((4, 4), np.nan),
                     (8, 8))


def test_fan_mask_union_and_erosion():
    frames = np.zeros((2, 20, 20))
    frames[0, 2:10, 4:16] = 5
    frames[1, 8:18, 4:16] = 5
    frames[1, 12, 8] = 0  # a dark speckle inside the fan is not a hole in the mask
    m = fan_mask(frames, erode_px=1)
    assert m[12, 8] and m[5, 10]
    assert not m[2, 4] and not m[19, 10]
    assert m.sum() == (16 - 2) * (12 - 2)


def test_lncc_properties_and_jvp():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.random((2, 24, 30)))
    mask = torch.tensor(rng.random((2, 24, 30)) > 0.2)
    for w in (0, 7):
        assert torch.allclose(masked_lncc(a, 3 * a + 2, mask, w), torch.ones(2, dtype=a.dtype))
        assert torch.allclose(masked_lncc(a, -a, mask, w), -torch.ones(2, dtype=a.dtype))
        t = torch.tensor(rng.normal(size=(2, 3, 24, 30)))
        _, dn = local_normalise_jvp(a, t, mask, w)
        eps = 1e-6
        for p in range(3):
            fd = (local_normalise(a + eps * t[:, p], mask, w)
                  - local_normalise(a - eps * t[:, p], mask, w)) / (2 * eps)
            assert torch.allclose(dn[:, p], fd, atol=1e-5)
    b = torch.tensor(rng.random((2, 24, 30)))
    assert float(masked_lncc(a, b, mask, 7).abs().max()) < 0.2  # independent noise
    # Same value as the definition through local_normalise (one shared box call inside).
    c = a + 0.3 * b + 40.0
    for w in (0, 5):
        na, nc = local_normalise(a, mask, w), local_normalise(c, mask, w)
        ref = (na * nc).sum(dim=(1, 2)) / torch.sqrt((na * na).sum(dim=(1, 2))
                                                     * (nc * nc).sum(dim=(1, 2)))
        torch.testing.assert_close(masked_lncc(a, c, mask, w), ref)
        assert float(ref.min()) > 0.5


def test_local_normalise_with_large_offset_matches_float64_reference():
    """A frame like 500 +- 2 (float32): the box sums must not cancel. Reference: scipy
    uniform_filter in float64 (zero padding, window counts from the mask)."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(7)
    x = 500.0 + 2.0 * rng.standard_normal((2, 40, 50))
    mask = np.ones_like(x, dtype=bool)
    mask[:, :, :6] = False
    w = 7
    m = mask.astype(float)

    def box(a):
        return uniform_filter(a, size=(1, w, w), mode="constant") * w * w

    count = np.maximum(box(m), 1.0)
    mu = box(x * m) / count
    var = box(x * x * m) / count - mu * mu  # float64: no cancellation at this magnitude
    ref = (x - mu) / np.sqrt(var + 1e-3) * m
    out = local_normalise(torch.as_tensor(x, dtype=torch.float32),
                          torch.as_tensor(mask), w).double().numpy()
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_pyramid_is_block_means():
    """Chained pooling (16 from 8, 32 from 16) equals direct block means (numpy)."""
    from USSliceRegLib.levels import _pyramid

    rng = np.random.default_rng(2)
    f = rng.random((2, 131, 97)).astype(np.float32) * 255
    pyr = _pyramid(torch.as_tensor(f), [32, 8, 16, 3])
    for step in (3, 8, 16, 32):
        h, w = 131 // step, 97 // step
        ref = f[:, :h * step, :w * step].reshape(2, h, step, w, step).mean(axis=(2, 4))
        np.testing.assert_allclose(pyr[step].numpy(), ref, rtol=1e-5, atol=1e-3)
