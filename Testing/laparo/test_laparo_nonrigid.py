"""Non-rigid refinement on a SYNTHETIC case: the mask is rendered from an anisotropically
stretched copy of the real P2ILF mesh, the rigid pose is the true one."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.cameras import PinholeCamera
from SurgicalReg2D3DLib.errors import InputError
from LiverLaparoRegLib import metrics, nonrigid, raster
from LiverLaparoRegLib.mesh import load_mesh


def _posed_liver(sample_data, stretch=(1.12, 0.92, 1.0), small=True):
    """The real P2ILF liver at a fixed pose 450 mm in front of a pinhole camera (64 x 48
    px when ``small``, else 640 x 480), and a SYNTHETIC copy stretched about its centre."""
    m = load_mesh(sample_data / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj")
    if small:
        cam = PinholeCamera(fx=110.0, fy=110.0, cx=31.5, cy=23.5, width=64, height=48)
    else:
        cam = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", (20, -30, 10), degrees=True).as_matrix()
    T[:3, 3] = [0, 0, 450] - T[:3, :3] @ m.vertices.mean(0)
    c = m.vertices.mean(0)
    return m, cam, T, c, (m.vertices - c) * np.asarray(stretch) + c


def test_nonrigid_improves_dice_and_deforms_structures_alike(sample_data):
    m, cam, T, c, warped = _posed_liver(sample_data)
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

    m, cam, T, c, stretched = _posed_liver(sample_data, (1.1, 0.93, 1.0), small=False)
    warped = MeshData(stretched, m.faces)
    case = synthetic.make_case(warped, cam, T, render=False)      # 2D from the warped liver

    def err(vertices):
        e = metrics.reprojection_errors(case.contours2d, case.contours3d, vertices, T, cam)
        return e["all"]["mean_px"]

    d = nonrigid.deform(m, cam, T, contours2d=case.contours2d, contours3d=case.contours3d,
                        iterations=30, landmark_weight=20.0)
    assert err(d.vertices) < 0.6 * err(m.vertices)


def _rbf_reference(points, centres, weights, radius):
    """Independent numpy evaluation of the radial-basis displacement field."""
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return points + np.exp(-d2 / (2.0 * radius ** 2)) @ weights


def test_structures_move_with_the_liver_deformation_inputs_unchanged(sample_data, ctx):
    """SYNTHETIC: mask of a stretched copy of the real P2ILF liver at a known pose; a
    'tumour' (the liver shrunk to 30 % about its centre, i.e. inside it) and a 'vessel'
    (a subset of liver vertices) are deformed by the liver's field."""
    from SurgicalReg2D3DLib import nodes
    from LiverLaparoRegLib.logic import register, register_nodes
    from LiverLaparoRegLib.mesh import MeshData

    m, cam, T, c, warped = _posed_liver(sample_data)
    mask = raster.render_mask(warped, m.faces, T, cam)[0].numpy()
    tumour = MeshData(c + 0.3 * (m.vertices - c), m.faces.copy(), "tumour")
    vessel = MeshData(m.vertices[:300].copy(), m.faces[np.all(m.faces < 300, axis=1)], "vessel")
    before = [tumour.vertices.copy(), vessel.vertices.copy(), m.vertices.copy()]
    r = register(m, cam, mask=mask, init=T, method="silhouette", nonrigid=True,
                 structures=[tumour, vessel])
    d = r.deformation
    dt, dv = r.deformed_structures
    assert (dt.name, dv.name) == ("tumour", "vessel")
    np.testing.assert_array_equal(dt.faces, tumour.faces)
    # exactly the field's values at the structure's points (independent numpy formula)
    np.testing.assert_allclose(dt.vertices, _rbf_reference(tumour.vertices, d.centres, d.weights,
                                                           d.radius), atol=1e-9)
    assert np.linalg.norm(dt.vertices - tumour.vertices, axis=1).max() > 0.5   # it moved
    # vertices shared with the liver move exactly as the deformed liver's
    np.testing.assert_allclose(dv.vertices, r.deformed_vertices[:300], atol=1e-9)
    for a, b in zip(before, [tumour.vertices, vessel.vertices, m.vertices]):
        np.testing.assert_array_equal(a, b)
    # node level: a deformed copy per structure node, input nodes untouched
    liver_node = nodes.model_to_node(ctx, m.vertices, m.faces, "liver", frame="LPS")
    tumour_node = nodes.model_to_node(ctx, tumour.vertices, tumour.faces, "tumour", frame="LPS")
    ras_before = nodes.model_from_node(tumour_node, "tumour")[0].copy()
    mask_node = nodes.image2d_to_node(ctx, mask.astype(np.uint8) * 255, "mask")
    init_node = nodes.matrix_to_transform_node(ctx, T, "init")
    rn = register_nodes(ctx, liver_node, cam, mask_node=mask_node, init_transform_node=init_node,
                        method="silhouette", nonrigid=True, structure_nodes=[tumour_node])
    out = rn.structure_nodes[0]
    assert out.GetName() == "tumour deformed" and out is not tumour_node
    got = nodes.model_from_node(out, "out", frame="LPS")[0]
    dn = rn.deformation
    np.testing.assert_allclose(got, _rbf_reference(tumour.vertices, dn.centres, dn.weights,
                                                   dn.radius), atol=1e-4)
    np.testing.assert_array_equal(nodes.model_from_node(tumour_node, "tumour")[0], ras_before)


def test_structure_with_bad_mesh_is_rejected(sample_data):
    from LiverLaparoRegLib.logic import register
    from LiverLaparoRegLib.mesh import MeshData

    m = load_mesh(sample_data / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj")
    cam = PinholeCamera(fx=110.0, fy=110.0, cx=31.5, cy=23.5, width=64, height=48)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:40] = True
    bad = MeshData(m.vertices[:10], np.zeros((0, 3), int), "tumour")
    with pytest.raises(InputError, match=r"^structure 0 \(tumour\): mesh has no triangle faces"):
        register(m, cam, mask=mask, init=np.eye(4), nonrigid=True, structures=[bad])
