"""The normal ridge (``learned.landmarks_curvature``): a ridge map read off a normal map,
checked against analytic surfaces (a sphere's curvature, a roof's crease) and used by
the learned registration. SYNTHETIC data only."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from SurgicalReg2D3DLib.errors import InputError  # noqa: E402

from LiverLaparoRegLib.learned import landmarks_curvature as lc  # noqa: E402
from LiverLaparoRegLib.learned import landmarks_infer as li  # noqa: E402

H, W = 96, 128
K = np.array([[120.0, 0.0, 63.5], [0.0, 110.0, 47.5], [0.0, 0.0, 1.0]])


def _rays():
    rows, cols = np.mgrid[0:H, 0:W].astype(float)
    r = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones((H, W))])
    return r / np.linalg.norm(r, axis=0)


def _sphere_normals(centre, radius):
    """Analytic normal map and depth (z) of a sphere: each pixel's ray cut with it."""
    ray = _rays()
    c = np.asarray(centre, float)[:, None, None]
    b = (ray * c).sum(0)
    disc = b ** 2 - (c ** 2).sum() + radius ** 2
    hit = disc > 0
    s = b - np.sqrt(np.maximum(disc, 0.0))
    p = s * ray
    n = np.where(hit, (p - c) / radius, 0.0)
    return n, p[2], hit


def test_curvature_of_a_sphere_is_depth_over_radius():
    """On a sphere every normal turns by 1 / R per mm of surface, so the operator (depth
    1) must give z / R at each pixel, z the surface point's depth. Analytic normal map;
    pixels away from the grazing rim (where the step is clamped) within 3 %."""
    R = 40.0
    n, z, hit = _sphere_normals([8.0, -4.0, 150.0], R)
    k = lc.normal_curvature(n, hit, K, blur_px=0.0)
    cos_view = -(n * _rays()).sum(0)
    inner = hit & (cos_view > 0.5)
    inner &= np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
    assert inner.sum() > 500
    rel = k[inner] / (z[inner] / R)
    assert np.all(np.abs(rel - 1.0) < 0.03), (rel.min(), rel.max())
    assert np.all(k[~hit] == 0.0)


def test_normal_ridge_of_a_roof_is_its_crease():
    """Two planes meeting at a vertical crease (normals turned +-30 deg about the image's
    vertical axis), seen frontally at 100 mm: the normal ridge (no blur) is the two
    columns beside the crease, whole, and nothing else; the crease's value is the analytic
    turn over the surface length; the threshold is a curvature, so the same map seen from
    10 % farther than that value allows (each pixel spans more surface) is not marked,
    from 10 % nearer it is; a flat plane has a zero curvature map; a blur widens the
    crease, never moves it."""
    a = np.radians(30.0)
    n = np.zeros((3, H, W))
    left = np.arange(W) < W // 2
    n[0] = np.where(left, -np.sin(a), np.sin(a))[None, :]
    n[2] = -np.cos(a)
    mask = np.ones((H, W), bool)
    mask[:, :3] = mask[:, -3:] = False
    ridge = lc.normal_ridge(n, mask, K, 100.0, blur_px=0.0)
    cols = np.unique(np.nonzero(ridge)[1])
    assert set(cols) == {W // 2 - 1, W // 2} and ridge.sum() == 2 * H
    # at the crease: 60 deg over two pixel steps of surface (depth 1)
    k = lc.normal_curvature(n, mask, K, blur_px=0.0)[H // 2, W // 2]
    step = 2.0 / K[0, 0] / np.cos(a)
    assert k == pytest.approx(np.radians(60.0) / step, rel=0.05)
    assert not lc.normal_ridge(n, mask, K, 1.1 * k / lc.NORMAL_RIDGE_PER_MM, blur_px=0.0).any()
    assert lc.normal_ridge(n, mask, K, 0.9 * k / lc.NORMAL_RIDGE_PER_MM, blur_px=0.0).any()
    flat = np.zeros((3, H, W))
    flat[2] = -1.0
    assert np.all(lc.normal_curvature(flat, mask, K, blur_px=0.0) == 0.0)
    assert not lc.normal_ridge(flat, mask, K, 100.0).any()
    blurred = np.nonzero(lc.normal_ridge(n, mask, K, 100.0, blur_px=1.0))[1]
    assert abs(np.median(blurred) - (W // 2 - 0.5)) <= 1.0


def test_normal_ridge_bad_input():
    n = np.zeros((3, H, W))
    with pytest.raises(InputError, match="curvature threshold"):
        lc.normal_ridge(n, np.ones((H, W), bool), K, 100.0, per_mm=0.0)
    with pytest.raises(InputError, match="depth"):
        lc.normal_ridge(n, np.ones((H, W), bool), K, -5.0)
    with pytest.raises(InputError, match="normal map"):
        lc.normal_curvature(n[:, :10], np.ones((H, W), bool), K)
    with pytest.raises(InputError, match="no normal channels"):
        lc.with_normal_ridge(np.zeros((3, H, W), np.float32), np.ones((H, W)), K, 100.0)
    assert not lc.normal_ridge(n, np.zeros((H, W), bool), K, 100.0).any()


def test_registration_with_the_normal_ridge_records_it():
    """``register_landmarks(normal_ridge=0.04)`` with the TRUE maps of a SYNTHETIC frame of
    the P2ILF mesh (ridge as tie-breaker, no start pose): within 5 deg; the depth that set
    the curvature scale (the best ridge-free pose's) within 5 % of the TRUE depth of the
    liver's centre; recorded. Without the tie-breaker, with a curvature <= 0 or with maps
    without normals the option is refused."""
    from LiverLaparoRegLib import metrics as lmetrics  # noqa: PLC0415
    from LiverLaparoRegLib.camera import load_camera  # noqa: PLC0415
    from LiverLaparoRegLib.learned import data  # noqa: PLC0415
    from LiverLaparoRegLib.learned.evaluation import full_frame  # noqa: PLC0415
    from LiverLaparoRegLib.mesh import MeshData  # noqa: PLC0415
    from LiverLaparoRegLib.sample_data import sample_data_dir  # noqa: PLC0415

    tm = data.p2ilf_train_mesh()
    cam = load_camera(sample_data_dir() / "p2ilf" / "cameraparams"
                      / "acquisition-camera-metadata.json")
    s, _, mask = full_frame(tm, cam, np.random.default_rng([6, 1002]))
    T = s.model_to_camera
    maps = li.true_maps(tm.vertices, tm.faces, T, cam, ridge=tm.ridge, normals=True)
    mesh = MeshData(tm.vertices, tm.faces)
    r = li.register_landmarks(mesh, cam, None, mask, maps=maps, ridge_tiebreak=True,
                              w_ridge=0.5, refine=False, normal_ridge=0.04)
    c = np.mean(tm.vertices, 0)
    nr = r.metrics["learned"]["normal_ridge"]
    assert lmetrics.pose_errors(r.model_to_camera, T, c)["rotation_deg"] < 5.0
    assert nr["per_mm"] == 0.04 and nr["added_pixels"] >= 0
    assert nr["depth_mm"] == pytest.approx(T[2, :3] @ c + T[2, 3], rel=0.05)
    with pytest.raises(InputError, match="tie-breaker"):
        li.register_landmarks(mesh, cam, None, mask, maps=maps, w_ridge=0.5, refine=False,
                              normal_ridge=0.04)
    for bad, m in ((-0.04, maps), (0.04, maps[:3])):       # refused before the search
        with pytest.raises(InputError, match="normal ridge: needs"):
            li.register_landmarks(mesh, cam, None, mask, maps=m, ridge_tiebreak=True,
                                  w_ridge=0.5, refine=False, normal_ridge=bad)
