"""Partial-curve matching of LiverLaparoReg's PnP on SYNTHETIC contours of a real mesh.

The 2D curves are synthetic projections of synthetic mesh paths at a pose chosen here,
then cut to a part of their length (as in real annotations, where a 2D curve shows only
part of its 3D curve). Pose errors are measured against that known pose.
"""

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.transform import Rotation

from SurgicalReg2D3DLib.cameras import PinholeCamera
from LiverLaparoRegLib import metrics, pnp, synthetic
from LiverLaparoRegLib.mesh import decimate, load_mesh
from LiverLaparoRegLib.p2ilf import Contour2D


@pytest.fixture(scope="module")
def p2ilf_mesh(sample_data):
    return load_mesh(sample_data / "p2ilf" / "evaluation_GT" / "3d-liver-model.obj")


def test_geodesic_vertex_path_follows_mesh_edges_with_shortest_length(p2ilf_mesh):
    mesh = decimate(p2ilf_mesh, 300)
    v, f = mesh.vertices, mesh.faces
    listed = [0, len(v) // 3, len(v) // 2, len(v) - 1]
    path = pnp.geodesic_vertex_path(v, f, listed)
    edges = {tuple(sorted(e)) for e in np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])}
    assert all(tuple(sorted((int(a), int(b)))) in edges for a, b in zip(path[:-1], path[1:]))
    pos = [int(np.nonzero(path == k)[0][0]) for k in listed]
    assert pos == sorted(pos) and path[0] == listed[0] and path[-1] == listed[-1]
    # independent reference: Floyd-Warshall all-pairs distances on the edge graph
    e = np.array(sorted(edges))
    w = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    g = coo_matrix((np.r_[w, w], (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
                   shape=(len(v), len(v))).tocsr()
    dist = shortest_path(g, method="FW")
    expected = sum(dist[a, b] for a, b in zip(listed[:-1], listed[1:]))
    length = np.linalg.norm(np.diff(v[path], axis=0), axis=1).sum()
    assert length == pytest.approx(expected, rel=1e-9)


def test_edge_graph_holds_each_edge_once_with_its_length():
    """Two triangles sharing an edge (an open mesh): 5 undirected edges, symmetric, each
    valued by its own length; the shared edge is not counted twice."""
    from LiverLaparoRegLib.mesh import edge_graph  # noqa: PLC0415

    v = np.array([[0.0, 0, 0], [3, 0, 0], [0, 4, 0], [3, 4, 0]])
    g = edge_graph(v, np.array([[0, 1, 2], [1, 3, 2]])).toarray()
    assert np.count_nonzero(g) == 10 and np.array_equal(g, g.T)
    assert g[1, 2] == pytest.approx(5.0) and g[0, 1] == pytest.approx(3.0)
    assert g[0, 3] == 0.0


def test_subcurve_search_recovers_pose_from_partial_2d_curves(p2ilf_mesh):
    cam = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", (20, -30, 10), degrees=True).as_matrix()
    T[:3, 3] = [0.0, 0.0, 450.0] - T[:3, :3] @ p2ilf_mesh.vertices.mean(0)
    case = synthetic.make_case(p2ilf_mesh, cam, T, n_curves=3, noise_px=1.0, render=False)
    c2 = []
    for c, (a, b) in zip(case.contours2d, [(0.0, 0.55), (0.45, 1.0), (0.2, 0.75)]):
        n = len(c.points)
        c2.append(Contour2D(c.label, c.points[int(a * n):int(b * n)]))
    plain = pnp.register_pnp(p2ilf_mesh.vertices, cam, c2, case.contours3d, subcurves=False)
    part = pnp.register_pnp(p2ilf_mesh.vertices, cam, c2, case.contours3d, subcurves=True)
    e_plain = metrics.pose_errors(plain.model_to_camera, T)
    e_part = metrics.pose_errors(part.model_to_camera, T)
    # end-to-end arc-length pairing is wrong here (about 12 deg, 50 mm off)
    assert e_plain["rotation_deg"] > 10.0
    # sub-curve hypotheses fix the rotation (about 5 deg); depth stays poorly determined
    # by partial curves (about 20 mm at 450 mm), but is much better than without
    assert e_part["rotation_deg"] < 8.0
    assert e_part["translation_mm"] < 0.6 * e_plain["translation_mm"]
