"""Non-rigid refinement on a SYNTHETIC case: the mask is rendered from an anisotropically
stretched copy of the real P2ILF mesh, the rigid pose is the true one."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.cameras import PinholeCamera
from SurgicalReg2D3DLib.errors import InputError
from LiverLaparoRegLib import metrics, nonrigid, raster
from LiverLaparoRegLib.mesh import load_mesh


def test_nonrigid_improves_dice_and_deforms_structures_alike(sample_data):
    m = load_mesh(sample_data / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj")
    cam = PinholeCamera(fx=110.0, fy=110.0, cx=31.5, cy=23.5, width=64, height=48)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", (20, -30, 10), degrees=True).as_matrix()
    T[:3, 3] = [0, 0, 450] - T[:3, :3] @ m.vertices.mean(0)
    c = m.vertices.mean(0)
    warped = (m.vertices - c) * [1.12, 0.92, 1.0] + c
    mask = raster.render_mask(warped, m.faces, T, cam)[0].numpy()
    d0 = metrics.mask_dice(raster.render_mask(m.vertices, m.faces, T, cam)[0], mask)
    d = nonrigid.deform(m, cam, T, mask=mask, iterations=20)
    d1 = metrics.mask_dice(raster.render_mask(d.vertices, m.faces, T, cam)[0], mask)
    assert d1 > d0 + 0.015
    # the same smooth field applies to any structure: points of the mesh map identically
    np.testing.assert_allclose(d.apply(m.vertices[:50]), d.vertices[:50], atol=1e-9)
    # smooth and bounded: no vertex moves more than a fifth of the liver size
    assert np.linalg.norm(d.vertices - m.vertices, axis=1).max() < 0.2 * np.ptp(m.vertices, 0).max()
    with pytest.raises(InputError, match=r"^nonrigid: a non-rigid registration needs a rigid pose"):
        nonrigid.deform(m, cam, None, mask=mask)


def test_nonrigid_landmark_term_reduces_contour_error(sample_data):
    from LiverLaparoRegLib import synthetic
    from LiverLaparoRegLib.mesh import MeshData

    m = load_mesh(sample_data / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj")
    cam = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", (20, -30, 10), degrees=True).as_matrix()
    T[:3, 3] = [0, 0, 450] - T[:3, :3] @ m.vertices.mean(0)
    c = m.vertices.mean(0)
    warped = MeshData((m.vertices - c) * [1.1, 0.93, 1.0] + c, m.faces)
    case = synthetic.make_case(warped, cam, T, render=False)      # 2D from the warped liver

    def err(vertices):
        e = metrics.reprojection_errors(case.contours2d, case.contours3d, vertices, T, cam)
        return e["all"]["mean_px"]

    d = nonrigid.deform(m, cam, T, contours2d=case.contours2d, contours3d=case.contours3d,
                        iterations=30, landmark_weight=20.0)
    assert err(d.vertices) < 0.6 * err(m.vertices)
