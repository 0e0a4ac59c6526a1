"""Mesh face order (``LiverLaparoRegLib.mesh.outward_faces``, applied by ``load_mesh``)
and the development shapes' alignment (``benchmarks/laparo_dev_shapes.py``)
against analytic references: the ``other`` liver's file mixes face orders and is not in a
patient frame."""

import importlib.util
from pathlib import Path

import numpy as np

from LiverLaparoRegLib.mesh import MeshData, load_mesh, outward_faces, save_mesh

ROOT = Path(__file__).resolve().parents[2]


def _dev():
    spec = importlib.util.spec_from_file_location(
        "laparo_dev_shapes", ROOT / "benchmarks" / "laparo_dev_shapes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _box(a=40.0, b=20.0, c=10.0):
    v = np.array([[x, y, z] for x in (0, a) for y in (0, b) for z in (0, c)], float)
    # outward (counter-clockwise seen from outside) faces of the box, two per side
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = np.array([t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))])
    return v, f


def _signed_volume(v, f):
    return np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6


def test_outward_faces_makes_a_mixed_box_consistent_and_outward():
    v, f = _box()
    assert np.isclose(_signed_volume(v, f), 40 * 20 * 10)        # the reference is outward
    mixed = f.copy()
    mixed[[1, 4, 5, 9]] = mixed[[1, 4, 5, 9], ::-1]               # some faces turned
    for start in (mixed, mixed[:, ::-1]):                         # mostly right, mostly wrong
        g = outward_faces(v, start)
        directed = np.concatenate([g[:, [0, 1]], g[:, [1, 2]], g[:, [2, 0]]])
        assert len(np.unique(directed, axis=0)) == len(directed)  # each edge walked once
        assert np.isclose(_signed_volume(v, g), 40 * 20 * 10)
        assert {tuple(np.roll(t, -np.argmin(t))) for t in g} == \
            {tuple(np.roll(t, -np.argmin(t))) for t in f}         # the reference's order


def test_rigid_shape_alignment_recovers_a_rotation_whatever_the_scale():
    dev = _dev()
    rng = np.random.default_rng(3)
    b = rng.normal(size=(400, 3)) * [30.0, 15.0, 6.0]            # distinct principal axes
    b[:, 0] += 0.02 * b[:, 1] ** 2                                 # and no mirror symmetry
    b[:, 1] += 0.03 * b[:, 2] ** 2
    ang = np.radians(130.0)
    k = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R_true = np.eye(3) + np.sin(ang) * K + (1 - np.cos(ang)) * K @ K
    a = 0.4 * (b @ R_true) + [100.0, -20.0, 5.0]                  # b turned back, scaled, moved
    R, scores = dev.rigid_shape_alignment(a, b)
    err = np.degrees(np.arccos(np.clip((np.trace(R @ R_true.T) - 1) / 2, -1, 1)))
    assert err < 0.5, err
    assert scores[0] < 1e-6                                       # an exact fit


def test_load_mesh_puts_a_mixed_file_in_outward_order(tmp_path):
    """A box written with some faces turned and all of them inside-out reads back
    outward (the analytic volume), its vertices exactly as written."""
    v, f = _box()
    bad = f[:, ::-1].copy()
    bad[[0, 7]] = f[[0, 7]]
    path = save_mesh(MeshData(v, bad), tmp_path / "mixed_box.ply")
    m = load_mesh(path)
    assert np.array_equal(m.vertices, v)
    assert np.isclose(_signed_volume(m.vertices, m.faces), 40 * 20 * 10)
    assert np.array_equal(load_mesh(path, validate=False).faces, bad)   # raw file order
