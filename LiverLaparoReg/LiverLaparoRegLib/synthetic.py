"""SYNTHETIC test cases: a real mesh, a chosen camera and pose, rendered mask and contours.

Nothing here is real data: the mask is our own hard rendering of the mesh, the "landmark"
contours are shortest edge paths between far-apart mesh vertices (labelled Ridge /
Ligament only so that the P2ILF code paths are exercised), and the 2D contours are their
projections, resampled at another density (so 2D and 3D samples do not correspond one to
one) with optional pixel noise. Used by the tests, the demo and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from SurgicalReg2D3DLib.cameras import PinholeCamera

from .mesh import MeshData
from .metrics import resample_curve
from .p2ilf import Contour2D, Contour3D


@dataclass
class SyntheticCase:
    """A synthetic registration case (``model_to_camera`` is the ground truth)."""

    mesh: MeshData
    camera: PinholeCamera
    model_to_camera: np.ndarray
    mask: np.ndarray                 # (H, W) bool, rendered
    contours2d: List[Contour2D]
    contours3d: List[Contour3D]


def farthest_point_indices(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Greedy farthest-point sampling: ``k`` indices into ``points (N, D)``."""
    p = np.asarray(points, dtype=np.float64)
    k = min(k, p.shape[0])
    idx = [start]
    d = np.linalg.norm(p - p[start], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(d))
        idx.append(nxt)
        d = np.minimum(d, np.linalg.norm(p - p[nxt], axis=1))
    return np.asarray(idx, dtype=np.int64)


def mesh_edge_path(vertices: np.ndarray, faces: np.ndarray, a: int, b: int) -> np.ndarray:
    """Vertex indices of the shortest path (Dijkstra on edge lengths) from ``a`` to ``b``."""
    from scipy.sparse.csgraph import dijkstra  # noqa: PLC0415

    from .mesh import edge_graph  # noqa: PLC0415

    _, pred = dijkstra(edge_graph(vertices, faces), indices=a, return_predecessors=True)
    path = [b]
    while path[-1] != a:
        prev = pred[path[-1]]
        if prev < 0:
            raise ValueError("mesh_edge_path: vertices are not connected")
        path.append(int(prev))
    return np.asarray(path[::-1], dtype=np.int64)


def synthetic_contours(mesh: MeshData, n_curves: int = 3, seed: int = 0) -> List[Contour3D]:
    """``n_curves`` landmark-like curves: shortest paths between farthest-point pairs."""
    fps = farthest_point_indices(mesh.vertices, 2 * n_curves, start=seed % len(mesh.vertices))
    labels = ["Ridge", "Ridge", "Ligament", "Ligament", "Ridge", "Ligament"]
    return [Contour3D(labels[i % len(labels)],
                      mesh_edge_path(mesh.vertices, mesh.faces, int(fps[2 * i]),
                                     int(fps[2 * i + 1])))
            for i in range(n_curves)]


def make_case(mesh: MeshData, camera: PinholeCamera, model_to_camera: np.ndarray,
              n_curves: int = 3, noise_px: float = 0.0, samples_2d: int = 60,
              seed: int = 0, contours3d: Optional[List[Contour3D]] = None,
              render: bool = True) -> SyntheticCase:
    """Render the mask and make 2D/3D contours of ``mesh`` seen at ``model_to_camera``
    (``render=False``: no mask, ``mask`` is then an empty ``(0, 0)`` array)."""
    from .raster import render_mask  # noqa: PLC0415

    T = np.asarray(model_to_camera, dtype=np.float64)
    rng = np.random.default_rng(seed)
    c3 = contours3d if contours3d is not None else synthetic_contours(mesh, n_curves, seed)
    c2 = []
    for c in c3:
        pc = mesh.vertices[c.vertices] @ T[:3, :3].T + T[:3, 3]
        dense = camera.project(resample_curve(pc, 400)).numpy()
        uv = resample_curve(dense, samples_2d) + rng.normal(0, noise_px, (samples_2d, 2))
        c2.append(Contour2D(c.label, uv))
    mask = (render_mask(mesh.vertices, mesh.faces, T, camera)[0].numpy() if render
            else np.zeros((0, 0), bool))
    return SyntheticCase(mesh, camera, T, mask, c2, c3)
