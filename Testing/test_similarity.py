"""Tests of SurgicalReg2D3DLib.similarity against numpy / OpenCV references (synthetic images)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from SurgicalReg2D3DLib.errors import InputError
from SurgicalReg2D3DLib.similarity import gradient_ncc, masked_lncc, multiscale, ncc


def _smooth_image(rng, h=32, w=40):
    """Synthetic smooth-ish image: random noise blurred with OpenCV (float64)."""
    noise = rng.normal(size=(h, w))
    return cv2.GaussianBlur(noise, (0, 0), 2.0) + 0.1 * noise


def _brute_lncc(a, b, mask, k, min_support=0.5, eps=1e-10):
    """Reference masked LNCC by explicit loops over pixels and windows (numpy).

    ``k`` is a width or ``(kh, kw)``; a window of width ``w`` covers offsets
    ``-(w // 2) .. w - 1 - w // 2`` (centred when ``w`` is odd).
    """
    kh, kw = (k, k) if np.isscalar(k) else k
    h, w = a.shape
    values = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            ys = slice(max(0, y - kh // 2), y + kh - kh // 2)
            xs = slice(max(0, x - kw // 2), x + kw - kw // 2)
            sel = mask[ys, xs] > 0
            n = sel.sum()
            if n < max(2.0, min_support * kh * kw):
                continue
            wa, wb = a[ys, xs][sel], b[ys, xs][sel]
            da, db = wa - wa.mean(), wb - wb.mean()
            va, vb = (da * da).mean(), (db * db).mean()
            values.append((da * db).mean() / np.sqrt(max(va * vb, eps)))
    return float(np.mean(values)) if values else 0.0


def test_ncc_self_negative_and_affine_invariance():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(_smooth_image(rng))
    assert ncc(a, a).item() == pytest.approx(1.0, abs=1e-12)
    assert ncc(a, -a).item() == pytest.approx(-1.0, abs=1e-12)
    assert ncc(a, 3.5 * a + 20.0).item() == pytest.approx(1.0, abs=1e-12)
    assert ncc(a, -0.2 * a + 7.0).item() == pytest.approx(-1.0, abs=1e-12)
    assert ncc(a, a).shape == (1,)


def test_ncc_matches_numpy_corrcoef_batched_and_masked():
    rng = np.random.default_rng(1)
    a = np.stack([_smooth_image(rng) for _ in range(3)])  # (3, 32, 40)
    b = a + rng.normal(scale=[[[0.05]], [[0.5]], [[2.0]]], size=a.shape)
    got = ncc(a, b).numpy()
    want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # Binary mask == corrcoef over the selected pixels only.
    mask = rng.random(a.shape) > 0.4
    got_m = ncc(a, b, mask=mask).numpy()
    want_m = [np.corrcoef(a[i][mask[i]], b[i][mask[i]])[0, 1] for i in range(3)]
    np.testing.assert_allclose(got_m, want_m, atol=1e-12)
    # (B, C, H, W) pools the channels: equals corrcoef of all values of the item.
    a4, b4 = a.reshape(1, 3, 32, 40), b.reshape(1, 3, 32, 40)
    assert ncc(a4, b4).item() == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)


def test_ncc_float32_input_keeps_dtype_and_batch_independence():
    rng = np.random.default_rng(2)
    a = torch.from_numpy(np.stack([_smooth_image(rng) for _ in range(4)])).float()
    b = torch.from_numpy(np.stack([_smooth_image(rng) for _ in range(4)])).float()
    full = ncc(a, b)
    assert full.dtype == torch.float32
    for i in range(4):
        assert full[i].item() == pytest.approx(ncc(a[i], b[i]).item(), abs=1e-6)
    # Changing item 0 must not change the others.
    b2 = b.clone()
    b2[0] = torch.flip(b2[0], dims=[0])
    changed = ncc(a, b2)
    torch.testing.assert_close(changed[1:], full[1:])
    assert abs(changed[0].item() - full[0].item()) > 1e-3


def test_constant_images_give_zero_not_nan():
    a = torch.full((1, 1, 16, 16), 3.0, requires_grad=True)
    b = torch.rand(1, 1, 16, 16)
    for fn in (ncc, gradient_ncc, masked_lncc):
        val = fn(a, b)
        assert torch.isfinite(val).all()
        assert val.item() == pytest.approx(0.0, abs=1e-6)
        val.sum().backward()
        assert torch.isfinite(a.grad).all()
        a.grad = None


def test_gradient_ncc_matches_cv2_sobel_reference():
    rng = np.random.default_rng(3)
    a = _smooth_image(rng, 24, 30)
    b = 0.7 * a + 0.3 * _smooth_image(rng, 24, 30) + 5.0 * np.linspace(0, 1, 30)[None]
    want = []
    for dx, dy in ((1, 0), (0, 1)):
        ga = cv2.Sobel(a, cv2.CV_64F, dx, dy, ksize=3)[1:-1, 1:-1]
        gb = cv2.Sobel(b, cv2.CV_64F, dx, dy, ksize=3)[1:-1, 1:-1]
        want.append(np.corrcoef(ga.ravel(), gb.ravel())[0, 1])
    assert gradient_ncc(a, b).item() == pytest.approx(np.mean(want), abs=1e-12)
    # A linear ramp has a constant gradient along x: gradient NCC ignores it (=1 with itself
    # plus ramp) while plain NCC does not.
    ramp = 50.0 * np.linspace(0, 1, 30)[None].repeat(24, 0)
    assert gradient_ncc(a, a + ramp).item() == pytest.approx(1.0, abs=1e-9)
    assert ncc(a, a + ramp).item() < 0.5


def test_gradient_ncc_mask_is_eroded():
    rng = np.random.default_rng(4)
    a, b = _smooth_image(rng, 20, 20), _smooth_image(rng, 20, 20)
    mask = np.zeros((20, 20), bool)
    mask[3:15, 4:17] = True
    want = []
    for dx, dy in ((1, 0), (0, 1)):
        ga = cv2.Sobel(a, cv2.CV_64F, dx, dy, ksize=3)[4:14, 5:16]
        gb = cv2.Sobel(b, cv2.CV_64F, dx, dy, ksize=3)[4:14, 5:16]
        want.append(np.corrcoef(ga.ravel(), gb.ravel())[0, 1])
    assert gradient_ncc(a, b, mask=mask).item() == pytest.approx(np.mean(want), abs=1e-12)


@pytest.mark.parametrize("k", [3, 4, 7, (3, 6), (1, 5)], ids=str)
def test_masked_lncc_matches_brute_force(k):
    rng = np.random.default_rng(10 + int(np.sum(k)))
    a = _smooth_image(rng, 14, 17)
    b = np.tanh(a) + 0.3 * rng.normal(size=a.shape)
    mask = np.ones_like(a, dtype=bool)
    mask[:, :5] = False  # a non-trivial mask: a missing strip, a hole and random drop-outs
    mask[6:9, 9:12] = False
    mask &= rng.random(a.shape) > 0.15
    got = masked_lncc(a, b, mask=mask, kernel_size=k).item()
    assert got == pytest.approx(_brute_lncc(a, b, mask, k), abs=1e-10)
    # Without a mask: the whole image (windows clipped at the border).
    got_full = masked_lncc(a, b, kernel_size=k).item()
    assert got_full == pytest.approx(_brute_lncc(a, b, np.ones_like(mask), k), abs=1e-10)


def test_masked_lncc_batched_with_different_overlap_masks():
    """Each batch item has its own mask: a fan-shaped US sector, a DRR-like overlap
    rectangle and a sparse random set; every item equals its own brute-force value."""
    rng = np.random.default_rng(21)
    h, w = 18, 20
    a = np.stack([_smooth_image(rng, h, w) for _ in range(3)])
    b = a + 0.5 * rng.normal(size=a.shape)
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.degrees(np.arctan2(xx - w / 2, yy + 4.0))
    fan = (np.hypot(yy + 4.0, xx - w / 2) < 20) & (np.abs(angle) < 35)
    overlap = np.zeros((h, w), bool)
    overlap[3:15, 6:19] = True
    sparse = rng.random((h, w)) > 0.4
    masks = np.stack([fan, overlap, sparse])
    got = masked_lncc(torch.from_numpy(a), torch.from_numpy(b), mask=torch.from_numpy(masks),
                      kernel_size=5)
    want = [_brute_lncc(a[i], b[i], masks[i], 5) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    # the same items one at a time (batch items are independent)
    for i in range(3):
        one = masked_lncc(a[i], b[i], mask=masks[i], kernel_size=5).item()
        assert one == pytest.approx(want[i], abs=1e-10)


def test_masked_lncc_properties_and_3d():
    rng = np.random.default_rng(5)
    a = torch.from_numpy(np.stack([_smooth_image(rng) for _ in range(2)]))
    # Self = 1, local affine intensity change = 1, negative = -1.
    torch.testing.assert_close(masked_lncc(a, a, kernel_size=5), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(masked_lncc(a, 2 * a + 1, kernel_size=5), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(masked_lncc(a, -a, kernel_size=5), -torch.ones(2, dtype=torch.float64))
    # 3D volume (B, C, D, H, W): a volume with itself is 1, and with noise less.
    v = torch.from_numpy(rng.normal(size=(1, 1, 8, 9, 10)))
    assert masked_lncc(v, v, kernel_size=3).item() == pytest.approx(1.0, abs=1e-9)
    assert masked_lncc(v, v + torch.from_numpy(rng.normal(size=v.shape)), kernel_size=3).item() < 0.9


def test_gradients_gradcheck_float64():
    rng = np.random.default_rng(6)
    a = torch.from_numpy(rng.normal(size=(2, 1, 5, 6))).requires_grad_(True)
    b = torch.from_numpy(rng.normal(size=(2, 1, 5, 6))).requires_grad_(True)
    mask = torch.from_numpy(rng.random((2, 1, 5, 6)) > 0.2)
    assert torch.autograd.gradcheck(lambda x, y: ncc(x, y, mask=mask), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: gradient_ncc(x, y), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: masked_lncc(x, y, mask=mask, kernel_size=3), (a, b))
    assert torch.autograd.gradcheck(
        lambda x, y: masked_lncc(x, y, mask=mask, kernel_size=(2, 3), min_support=0.3), (a, b))


def test_multiscale_equal_weights():
    rng = np.random.default_rng(7)
    a = torch.from_numpy(_smooth_image(rng, 32, 32))[None, None]
    b = torch.from_numpy(_smooth_image(rng, 32, 32))[None, None]
    a1, b1 = torch.nn.functional.avg_pool2d(a, 2), torch.nn.functional.avg_pool2d(b, 2)
    want = 0.5 * (ncc(a, b) + ncc(a1, b1))
    torch.testing.assert_close(multiscale(ncc, a, b, levels=2), want)


def test_validation_messages():
    a = torch.zeros(1, 1, 64, 64)
    b = torch.zeros(1, 1, 32, 64)
    with pytest.raises(InputError, match=r"^similarity: images must have the same shape, got \(1,1,64,64\) and \(1,1,32,64\)$"):
        ncc(a, b)
    with pytest.raises(InputError, match=r"^mask: is empty \(no pixel selected\) for batch item\(s\) \[1\]"):
        img = torch.rand(2, 8, 8)
        m = torch.ones(2, 8, 8)
        m[1] = 0
        ncc(img, img, mask=m)
    bad = torch.rand(8, 8)
    bad[2, 3] = float("nan")
    with pytest.raises(InputError, match=r"^similarity: image b contains NaN or infinite values$"):
        masked_lncc(torch.rand(8, 8), bad)
    with pytest.raises(InputError, match=r"^kernel_size: the window must hold at least 2 "
                                         r"pixels, got 1$"):
        masked_lncc(torch.rand(8, 8), torch.rand(8, 8), kernel_size=1)
    with pytest.raises(InputError, match=r"^kernel_size: must be an integer >= 2 or 2 "
                                         r"integers >= 1 \(one per spatial dimension\), "
                                         r"got \(3, 3, 3\)$"):
        masked_lncc(torch.rand(8, 8), torch.rand(8, 8), kernel_size=(3, 3, 3))
    with pytest.raises(InputError, match=r"^kernel_size: must be an integer >= 2 .* got 2\.5$"):
        masked_lncc(torch.rand(8, 8), torch.rand(8, 8), kernel_size=2.5)
    with pytest.raises(InputError, match=r"^mask: shape \(8,9\) does not match the images \(8,8\)"):
        ncc(torch.rand(8, 8), torch.rand(8, 8), mask=torch.ones(8, 9))
    with pytest.raises(InputError, match=r"^similarity: images are empty"):
        ncc(torch.rand(0, 8), torch.rand(0, 8))
    with pytest.raises(InputError, match=r"^similarity: gradient_ncc needs images of at least 3x3 pixels"):
        gradient_ncc(torch.rand(2, 8), torch.rand(2, 8))
    with pytest.raises(InputError, match=r"^similarity: gradient_ncc expects images of shape"):
        gradient_ncc(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4))


def test_inputs_not_modified():
    a = torch.rand(2, 1, 12, 12)
    b = torch.rand(2, 1, 12, 12)
    m = torch.ones(2, 1, 12, 12)
    copies = [t.clone() for t in (a, b, m)]
    ncc(a, b, m), gradient_ncc(a, b, m), masked_lncc(a, b, m, kernel_size=3)
    for t, c in zip((a, b, m), copies):
        assert torch.equal(t, c)
