"""Tests of SurgicalReg2D3DLib.cameras against OpenCV, pydicom and analytic geometry.

Random 3D points are synthetic; the camera parameters come from the shipped real
calibration files (P2ILF, scikit-surgery) and from made-up distortion sets.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from dicom_helpers import write_xray_dicom
from SurgicalReg2D3DLib.cameras import PinholeCamera, XRayCamera
from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError

P2ILF_JSON = "p2ilf/cameraparams/acquisition-camera-metadata.json"
SKSURGERY_K = "liver_sksurgery/liver/calib.left.intrinsics.txt"

# Synthetic distortion sets (OpenCV order) of every supported length.
DIST_SETS = [
    (),
    (-0.12, 0.05, 0.001, -0.002),
    (-0.25, 0.12, -0.0015, 0.001, -0.03),
    (0.3, -0.1, 0.002, 0.001, 0.05, 0.4, -0.05, 0.02),  # rational model
    (-0.2, 0.08, 0.001, 0.0005, -0.01, 0.1, 0.0, 0.0, 0.001, -0.0005, 0.002, 0.0003),
]


def random_points(n=200, seed=0, spread=0.45):
    """Synthetic camera-frame points in front of the camera, |x/z|, |y/z| < spread."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(50.0, 300.0, n)
    xy = rng.uniform(-spread, spread, (n, 2)) * z[:, None]
    return np.column_stack([xy, z])


def cv2_project(camera, points):
    pixels, _ = cv2.projectPoints(points.astype(np.float64), np.zeros(3), np.zeros(3),
                                  camera.K, camera.dist_coeffs)
    return pixels[:, 0, :]


def cv2_undistort(camera, pixels):
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 500, 1e-15)
    out = cv2.undistortPoints(pixels.reshape(-1, 1, 2).astype(np.float64), camera.K,
                              camera.dist_coeffs, R=np.eye(3), P=np.eye(3),
                              criteria=criteria)
    return out[:, 0, :]


@pytest.fixture()
def p2ilf(sample_data):
    return PinholeCamera.from_p2ilf_json(sample_data / P2ILF_JSON)


# ----------------------------------------------------------------------------- pinhole
@pytest.mark.parametrize("dist", DIST_SETS, ids=lambda d: f"{len(d)}coef")
def test_pinhole_project_matches_cv2(dist):
    camera = PinholeCamera(fx=800.0, fy=780.0, cx=330.5, cy=241.25, width=640,
                           height=480, dist=dist)
    points = random_points()
    ours = camera.project(torch.from_numpy(points))
    assert ours.dtype == torch.float64 and ours.shape == (200, 2)
    np.testing.assert_allclose(ours.numpy(), cv2_project(camera, points), atol=1e-6, rtol=0)


def test_pinhole_project_p2ilf_and_sksurgery_match_cv2(p2ilf, sample_data):
    assert p2ilf.dist == pytest.approx((-0.23184898303739043, 0.34051349187505525, 0.0,
                                        0.0, -0.23860036358921605), abs=0)
    assert (p2ilf.width, p2ilf.height) == (1920, 1080)
    sks = PinholeCamera.from_opencv_text(sample_data / SKSURGERY_K, width=1920, height=540)
    np.testing.assert_allclose(sks.K, np.loadtxt(sample_data / SKSURGERY_K), rtol=0, atol=0)
    points = random_points(seed=1)
    for camera in (p2ilf, sks):
        np.testing.assert_allclose(camera.project(points).numpy(),  # numpy input accepted
                                   cv2_project(camera, points), atol=1e-6, rtol=0)


def test_pinhole_project_batched_and_differentiable():
    camera = PinholeCamera(500.0, 500.0, 64.0, 48.0, 128, 96, dist=DIST_SETS[2])
    points = torch.from_numpy(random_points(12, seed=2).reshape(3, 4, 3)).requires_grad_()
    before = points.detach().clone()
    pixels = camera.project(points)
    assert pixels.shape == (3, 4, 2)
    flat = camera.project(points.detach().reshape(12, 3))
    torch.testing.assert_close(pixels.detach().reshape(12, 2), flat)
    assert torch.autograd.gradcheck(camera.project, (points,))
    assert torch.equal(points.detach(), before)  # input untouched
    single = camera.project(points.detach().float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), pixels.detach(), atol=1e-3, rtol=0)


def test_pinhole_skew_analytic():
    camera = PinholeCamera(400.0, 410.0, 60.0, 50.0, 128, 128, skew=3.0)
    pixel = camera.project(np.array([[2.0, -1.0, 10.0]])).numpy()[0]
    assert pixel == pytest.approx([400 * 0.2 + 3.0 * -0.1 + 60.0, 410 * -0.1 + 50.0])
    back = camera.back_project(pixel[None], 10.0).numpy()[0]
    assert back == pytest.approx([2.0, -1.0, 10.0], abs=1e-12)


@pytest.mark.parametrize("dist", DIST_SETS[1:], ids=lambda d: f"{len(d)}coef")
def test_pinhole_undistort_matches_cv2(dist):
    camera = PinholeCamera(800.0, 780.0, 330.5, 241.25, 640, 480, dist=dist)
    pixels = cv2_project(camera, random_points(seed=3))
    reference = cv2_undistort(camera, pixels)
    normalized = camera.undistort_points(pixels, normalized=True).numpy()
    np.testing.assert_allclose(normalized, reference, atol=1e-9, rtol=0)
    ideal = camera.undistort_points(torch.from_numpy(pixels)).numpy()
    reference_px = reference * [camera.fx, camera.fy] + [camera.cx, camera.cy]
    np.testing.assert_allclose(ideal, reference_px, atol=1e-6, rtol=0)


def test_pinhole_undistort_p2ilf_whole_image(p2ilf):
    """Over the whole 1920x1080 frame. The P2ILF model's distorted radius peaks at ~0.881
    (normalised) for r ~ 1.07, so the frame corners have no inverse: NaN there."""
    u, v = np.meshgrid(np.linspace(0, 1919, 25), np.linspace(0, 1079, 15))
    pixels = np.column_stack([u.ravel(), v.ravel()])
    normalized = p2ilf.undistort_points(pixels, normalized=True).numpy()
    radius = np.linalg.norm((pixels - [p2ilf.cx, p2ilf.cy]) / [p2ilf.fx, p2ilf.fy], axis=1)
    # independent check of the peak: the distorted radius r * (1 + k1 r^2 + k2 r^4 + k3 r^6)
    k1, k2, _, _, k3 = p2ilf.dist
    r = np.linspace(0.0, 2.0, 20001)
    peak = np.max(r * (1 + k1 * r**2 + k2 * r**4 + k3 * r**6))
    assert 0.875 < peak < 0.885
    inside, outside = radius < peak - 0.02, radius > peak
    assert inside.sum() > 250 and outside.sum() > 20
    np.testing.assert_allclose(normalized[inside], cv2_undistort(p2ilf, pixels[inside]),
                               atol=1e-9, rtol=0)
    assert np.isnan(normalized[outside]).all()
    # and independently: OpenCV re-projects the undistorted rays onto the pixels.
    rays = np.column_stack([normalized[inside], np.ones(inside.sum())])
    np.testing.assert_allclose(cv2_project(p2ilf, rays), pixels[inside], atol=1e-6, rtol=0)


def test_pinhole_back_project_inverts_cv2_projection(p2ilf):
    points = random_points(seed=4)
    pixels = cv2_project(p2ilf, points)
    back = p2ilf.back_project(pixels, points[:, 2]).numpy()
    np.testing.assert_allclose(back, points, atol=1e-6, rtol=0)
    # gradients flow through the iterative undistortion (unrolled Newton steps)
    some = torch.tensor(pixels[:4], requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: p2ilf.back_project(p, 80.0), (some,))


def test_pinhole_pixel_rays():
    camera = PinholeCamera(90.0, 95.0, 15.5, 11.0, 32, 24, dist=DIST_SETS[2])
    rays = camera.pixel_rays(dtype=torch.float64).numpy()
    assert rays.shape == (24, 32, 3)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0, atol=1e-12)
    v, u = np.mgrid[0:24, 0:32]
    projected = cv2_project(camera, rays.reshape(-1, 3))
    np.testing.assert_allclose(projected, np.column_stack([u.ravel(), v.ravel()]),
                               atol=1e-6, rtol=0)


def test_pinhole_scaled_matches_cv2_resize():
    """Scaled camera = camera of the cv2.resize'd image: a blob keeps its centroid."""
    camera = PinholeCamera(300.0, 300.0, 61.3, 47.8, 128, 96)
    point = np.array([[4.0, -3.0, 100.0]])
    u, v = camera.project(point).numpy()[0]
    yy, xx = np.mgrid[0:96, 0:128]
    image = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 4.0 ** 2))
    half = camera.scaled(2)
    assert (half.width, half.height) == (64, 48)
    small = cv2.resize(image, (half.width, half.height), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[0:48, 0:64]
    centroid = [(small * xs).sum() / small.sum(), (small * ys).sum() / small.sum()]
    np.testing.assert_allclose(half.project(point).numpy()[0], centroid, atol=0.02)
    assert half.cx == pytest.approx((61.3 + 0.5) / 2 - 0.5)


def test_pinhole_dict_round_trip_and_validation(p2ilf):
    assert PinholeCamera.from_dict(json.loads(json.dumps(p2ilf.to_dict()))) == p2ilf
    with pytest.raises(GeometryError, match=r"^camera: unknown keys \['k1'\]"):
        PinholeCamera.from_dict({**p2ilf.to_dict(), "k1": 0.1})
    with pytest.raises(GeometryError, match=r"^camera: fx must be positive, got -1\.0$"):
        PinholeCamera(-1.0, 500.0, 320.0, 240.0, 640, 480)
    with pytest.raises(GeometryError, match=r"^camera: fy must be finite, got nan$"):
        PinholeCamera(500.0, float("nan"), 320.0, 240.0, 640, 480)
    with pytest.raises(GeometryError, match=r"^camera: image size must be positive, got "
                                            r"0 x 480$"):
        PinholeCamera(500.0, 500.0, 320.0, 240.0, 0, 480)
    with pytest.raises(GeometryError, match=r"^camera: principal point must be finite, "
                                            r"got \(inf, 240\.0\)$"):
        PinholeCamera(500.0, 500.0, math.inf, 240.0, 640, 480)
    with pytest.raises(GeometryError, match=r"^camera: dist must have 0, 4, 5, 8 or 12 "
                                            r"coefficients .* got 3$"):
        PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480, dist=(0.1, 0.0, 0.0))
    camera = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480)
    with pytest.raises(InputError, match=r"^points_camera: expected shape \(\.\.\., N, 3\), "
                                         r"got \(5, 2\)$"):
        camera.project(np.ones((5, 2)))
    with pytest.raises(InputError, match=r"^points_camera: contains NaN"):
        camera.project(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(InputError, match=r"^depth: must be positive"):
        camera.back_project(np.zeros((1, 2)), 0.0)


def test_pinhole_files(tmp_path, sample_data):
    with pytest.raises(GeometryError, match=r"^camera intrinsics file: .* holds no image "
                                            r"size; pass width= and height=$"):
        PinholeCamera.from_opencv_text(sample_data / SKSURGERY_K)
    dist_file = tmp_path / "dist.txt"
    dist_file.write_text("-0.1 0.02 0.001 0.0005 0.003\n")
    camera = PinholeCamera.from_opencv_text(sample_data / SKSURGERY_K, dist_file, 1920, 540)
    assert camera.dist == (-0.1, 0.02, 0.001, 0.0005, 0.003)
    with pytest.raises(FileReadError, match=r"^camera intrinsics file: cannot read"):
        PinholeCamera.from_opencv_text(tmp_path / "missing.txt", width=10, height=10)
    bad = tmp_path / "bad.txt"
    bad.write_text("1 0 2\n0 1 3\n")
    with pytest.raises(FileReadError, match=r"must hold a 3x3 matrix \(9 numbers\), got 6"):
        PinholeCamera.from_opencv_text(bad, width=10, height=10)
    meta = json.loads((sample_data / P2ILF_JSON).read_text())
    with pytest.raises(GeometryError, match=r"^P2ILF camera metadata: k4 = 0\.01 is not "
                                            r"supported"):
        PinholeCamera.from_p2ilf_json({**meta, "k4": "0.01"})
    with pytest.raises(GeometryError, match=r"^P2ILF camera metadata: missing keys \['fx'\]"):
        PinholeCamera.from_p2ilf_json({k: v for k, v in meta.items() if k != "fx"})
    assert PinholeCamera.from_p2ilf_json(meta, use_distortion=False).dist == ()


# ----------------------------------------------------------------------------- X-ray
@pytest.fixture()
def xray():
    return XRayCamera(1020.0, (0.6, 0.55), (64, 48), (30.2, 25.7))


def test_xray_project_matches_cv2_and_formula(xray):
    K = xray.intrinsics
    np.testing.assert_array_equal(K, [[1020 / 0.6, 0, 30.2], [0, 1020 / 0.55, 25.7],
                                      [0, 0, 1]])
    points = random_points(seed=5, spread=0.02) + [0.0, 0.0, 400.0]
    ours = xray.project(points).numpy()
    reference, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K, None)
    np.testing.assert_allclose(ours, reference[:, 0], atol=1e-6, rtol=0)
    u = points[:, 0] / points[:, 2] * 1020 / 0.6 + 30.2
    np.testing.assert_allclose(ours[:, 0], u, rtol=1e-12)
    np.testing.assert_allclose(xray.to_pinhole().project(points).numpy(), ours, atol=1e-9)


def test_xray_central_ray_hits_principal_point():
    camera = XRayCamera(1000.0, (0.5, 0.5), (64, 32))
    assert camera.principal_point == (31.5, 15.5)
    on_axis = np.array([[0.0, 0.0, 10.0], [0.0, 0.0, 700.0]])
    np.testing.assert_allclose(camera.project(on_axis).numpy(), [[31.5, 15.5]] * 2,
                               atol=1e-12)


def test_xray_detector_points(xray):
    det = xray.detector_points(dtype=torch.float64)
    assert det.shape == (48, 64, 3)
    np.testing.assert_allclose(det[..., 2].numpy(), 1020.0)
    assert det[0, 1, 0] - det[0, 0, 0] == pytest.approx(0.6)  # column step = sx
    assert det[1, 0, 1] - det[0, 0, 1] == pytest.approx(0.55)  # row step = sy
    v, u = np.mgrid[0:48, 0:64]
    projected, _ = cv2.projectPoints(det.reshape(-1, 3).numpy(), np.zeros(3), np.zeros(3),
                                     xray.intrinsics, None)
    np.testing.assert_allclose(projected[:, 0], np.column_stack([u.ravel(), v.ravel()]),
                               atol=1e-9, rtol=0)
    # halfway to the source, the same rays keep their pixels
    np.testing.assert_allclose(xray.project(det.reshape(-1, 3) * 0.5).numpy(),
                               np.column_stack([u.ravel(), v.ravel()]), atol=1e-9)
    rays = xray.pixel_rays(dtype=torch.float64)
    np.testing.assert_allclose(torch.linalg.vector_norm(rays, dim=-1).numpy(), 1.0)
    back = xray.back_project(np.array([[3.0, 7.0]]), 1020.0)
    np.testing.assert_allclose(back.numpy()[0], det[7, 3].numpy(), atol=1e-9)


@pytest.mark.parametrize("principal", [None, (30.2, 25.7)])
def test_xray_scaled_consistent(principal):
    camera = XRayCamera(1020.0, (0.6, 0.55), (64, 48), principal)
    half = camera.scaled(2)
    assert half.size_px == (32, 24) and half.pixel_spacing_mm == (1.2, 1.1)
    points = random_points(30, seed=6, spread=0.02) + [0.0, 0.0, 400.0]
    full_px = camera.project(points).numpy()
    half_px = half.project(points).numpy()
    # pixel centres at integers: full-resolution pixels 2i, 2i+1 make pixel i
    np.testing.assert_allclose(half_px, (full_px + 0.5) / 2 - 0.5, atol=1e-9)
    # both land on the same physical detector position
    detector = lambda cam, px: (px - cam.principal_point) * cam.pixel_spacing_mm
    np.testing.assert_allclose(detector(half, half_px), detector(camera, full_px), atol=1e-9)
    odd = XRayCamera(1000.0, (1.0, 1.0), (65, 48)).scaled(2)  # floor, exact ratio
    assert odd.size_px == (32, 24) and odd.pixel_spacing_mm[0] == pytest.approx(65 / 32)


def test_xray_json_round_trip(tmp_path, xray):
    path = tmp_path / "geometry.json"
    text = xray.to_json(path)
    assert json.loads(path.read_text()) == {"source_to_detector_mm": 1020.0,
                                            "pixel_spacing_mm": [0.6, 0.55],
                                            "size_px": [64, 48],
                                            "principal_point_px": [30.2, 25.7]}
    assert XRayCamera.from_json(path) == xray
    assert XRayCamera.from_json(text) == xray
    centred = XRayCamera.from_json({"source_to_detector_mm": 1000, "pixel_spacing_mm":
                                    [0.5, 0.5], "size_px": [64, 64]})
    assert "principal_point_px" not in json.loads(centred.to_json())
    assert centred.principal_point == (31.5, 31.5)
    with pytest.raises(GeometryError, match=r"^X-ray geometry: unknown keys \['sdd'\]"):
        XRayCamera.from_json({**xray.to_dict(), "sdd": 1000})
    with pytest.raises(GeometryError, match=r"^X-ray geometry: missing keys \['size_px'\]$"):
        XRayCamera.from_json({"source_to_detector_mm": 1000, "pixel_spacing_mm": [1, 1]})
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(FileReadError, match=r"^X-ray geometry: .* is not valid JSON"):
        XRayCamera.from_json(tmp_path / "broken.json")


def test_xray_validation_messages():
    with pytest.raises(GeometryError, match=r"^X-ray geometry: source_to_detector_mm must "
                                            r"be positive, got 0$"):
        XRayCamera(0, (1.0, 1.0), (64, 64))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: source_to_detector_mm must "
                                            r"be finite, got inf$"):
        XRayCamera(math.inf, (1.0, 1.0), (64, 64))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: pixel_spacing_mm must be two "
                                            r"positive numbers \[sx, sy\], got \[0\.5, 0\]$"):
        XRayCamera(1000.0, (0.5, 0), (64, 64))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: pixel_spacing_mm must be two "
                                            r"positive numbers \[sx, sy\], got \[nan, 1\.0\]$"):
        XRayCamera(1000.0, (float("nan"), 1.0), (64, 64))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: size_px must be two positive "
                                            r"integers \[W, H\], got \[0, 64\]$"):
        XRayCamera(1000.0, (1.0, 1.0), (0, 64))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: pixel_spacing_mm must be a "
                                            r"pair of numbers, got \[1\.0, 1\.0, 1\.0\]$"):
        XRayCamera(1000.0, (1.0, 1.0, 1.0), (64, 64))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: principal_point_px must be "
                                            r"finite, got \[nan, 3\.0\]$"):
        XRayCamera(1000.0, (1.0, 1.0), (64, 64), (float("nan"), 3.0))
    camera = XRayCamera(1000.0, (1.0, 1.0), (64, 64))
    with pytest.raises(GeometryError, match=r"^X-ray geometry: size_px \[W, H\] = \[64, 64\] "
                                            r"does not match the image \(H, W\) = "
                                            r"\(32, 64\)$"):
        camera.check_image_shape((32, 64))
    camera.check_image_shape((1, 64, 64))  # leading dims allowed
    with pytest.raises(GeometryError, match=r"^X-ray geometry: scale factor must be "
                                            r"positive, got -2$"):
        camera.scaled(-2)


def test_xray_from_dicom(tmp_path):
    """Synthetic DICOM X-ray header written with pydicom and read back."""
    import pydicom

    path = write_xray_dicom(tmp_path / "xa.dcm", DistanceSourceToDetector=1100.5,
                            ImagerPixelSpacing=[0.3, 0.2], DetectorActiveOrigin=[5.0, 7.0])
    camera = XRayCamera.from_dicom(path)
    # DICOM ImagerPixelSpacing = [row spacing (y), column spacing (x)]
    assert camera == XRayCamera(1100.5, (0.2, 0.3), (32, 24))
    assert XRayCamera.from_dicom(pydicom.dcmread(path)) == camera

    fallback = write_xray_dicom(tmp_path / "ps.dcm", DistanceSourceToDetector=1000,
                                PixelSpacing=[0.4, 0.5])
    with pytest.warns(UserWarning, match=r"no ImagerPixelSpacing \(0018,1164\); using "
                                         r"PixelSpacing"):
        assert XRayCamera.from_dicom(fallback).pixel_spacing_mm == (0.5, 0.4)

    no_sdd = write_xray_dicom(tmp_path / "nosdd.dcm", ImagerPixelSpacing=[0.3, 0.3])
    with pytest.raises(GeometryError, match=r"^X-ray geometry: DICOM .* has no "
                                            r"DistanceSourceToDetector \(0018,1110\)$"):
        XRayCamera.from_dicom(no_sdd)
    no_spacing = write_xray_dicom(tmp_path / "nosp.dcm", DistanceSourceToDetector=1000)
    with pytest.raises(GeometryError, match=r"has no ImagerPixelSpacing \(0018,1164\) "
                                            r"\(nor PixelSpacing \(0028,0030\)\)$"):
        XRayCamera.from_dicom(no_spacing)
    ds = pydicom.dcmread(path)
    del ds.Rows
    with pytest.raises(GeometryError, match=r"^X-ray geometry: DICOM dataset has no Rows "
                                            r"\(0028,0010\)$"):
        XRayCamera.from_dicom(ds)
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file")
    with pytest.raises(FileReadError, match=r"^X-ray geometry DICOM file: cannot read"):
        XRayCamera.from_dicom(tmp_path / "junk.dcm")
