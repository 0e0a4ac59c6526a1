"""Triangle meshes as arrays: reading, writing, validation, the edge graph.

A :class:`MeshData` holds ``vertices (V, 3)`` in the *model* frame (millimetres, the
coordinates exactly as stored in the file, no LPS/RAS flip) and ``faces (F, 3)`` vertex
indices. Reading goes through the core ``SurgicalReg2D3DLib.io.load_mesh_arrays``; this module
adds the scale check (degenerate meshes), one outward face order (:func:`outward_faces`)
and writing in the model frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError

PathLike = Union[str, Path]

_READERS = {".ply": "vtkPLYReader", ".obj": "vtkOBJReader", ".vtk": "vtkPolyDataReader",
            ".vtp": "vtkXMLPolyDataReader", ".stl": "vtkSTLReader"}
_WRITERS = {".ply": "vtkPLYWriter", ".vtk": "vtkPolyDataWriter", ".vtp": "vtkXMLPolyDataWriter",
            ".stl": "vtkSTLWriter", ".obj": "vtkOBJWriter"}


@dataclass
class MeshData:
    """Triangle mesh: ``vertices (V, 3)`` float64 mm (model frame), ``faces (F, 3)`` int64."""

    vertices: np.ndarray
    faces: np.ndarray
    name: str = "mesh"

    def transformed(self, a_to_b: np.ndarray) -> "MeshData":
        """A copy with vertices mapped by the 4x4 ``a_to_b`` (same vertex order)."""
        v = self.vertices @ a_to_b[:3, :3].T + a_to_b[:3, 3]
        return MeshData(v, self.faces.copy(), self.name)


def validate_mesh(mesh: MeshData, name: str = "mesh", min_extent_mm: float = 1.0,
                  max_extent_mm: float = 5000.0) -> MeshData:
    """Check shapes, indices, finiteness and scale; raise :class:`InputError` if bad."""
    v = np.asarray(mesh.vertices)
    f = np.asarray(mesh.faces)
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
        raise InputError(f"{name}: vertices must have shape (V, 3) with V > 0, got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
        raise InputError(f"{name}: mesh has no triangle faces (faces shape {f.shape})")
    if not np.all(np.isfinite(v)):
        raise InputError(f"{name}: vertices contain NaN or infinite values")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise InputError(f"{name}: face indices out of range [0, {v.shape[0] - 1}]")
    extent = float(np.max(v.max(0) - v.min(0)))
    if not (min_extent_mm <= extent <= max_extent_mm):
        raise GeometryError(f"{name}: degenerate scale, bounding box extent {extent:.4g} mm is "
                            f"outside [{min_extent_mm}, {max_extent_mm}] mm")
    return mesh


def outward_faces(vertices, faces) -> np.ndarray:
    """``faces (F, 3)`` with every triangle ordered as its neighbours, outward on a closed
    surface: the surface normals that the learned method compares with the network's
    normal map follow this order, and mesh files do not always keep it (the P2ILF
    repository's ``originalMesh/meshGT.obj`` mixes the two orders). A breadth-first walk
    over shared edges turns each neighbour to its predecessor's order; then, if the
    surface is closed and encloses a negative volume, every face is turned; an open
    surface keeps the order most of the file's faces had. Faces already in order are
    returned as they are (a copy); vertices are never touched."""
    from collections import deque  # noqa: PLC0415

    v = np.asarray(vertices, float)
    f = np.array(faces, np.int64)
    if f.ndim != 2 or f.shape[1:] != (3,) or not len(f) or f.min() < 0 or f.max() >= len(v):
        return f                          # not a triangle mesh: validate_mesh says why
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    undirected, counts = np.unique(np.sort(directed, 1), axis=0, return_counts=True)
    closed = bool((counts == 2).all())

    def volume(g):
        return np.einsum("ij,ij->i", v[g[:, 0]], np.cross(v[g[:, 1]], v[g[:, 2]])).sum() / 6

    if len(np.unique(directed, axis=0)) == len(directed) and (not closed or volume(f) > 0):
        return f                          # each edge walked once each way: already in order
    original = f.copy()
    faces_of = {}
    for i, t in enumerate(f):
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            faces_of.setdefault((min(a, b), max(a, b)), []).append(i)
    seen = np.zeros(len(f), bool)
    for start in range(len(f)):
        if seen[start]:
            continue
        seen[start] = True
        todo = deque([start])
        while todo:
            t = f[todo.popleft()]
            for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
                for j in faces_of[(min(a, b), max(a, b))]:
                    if not seen[j]:
                        u = f[j]      # a neighbour in the same order walks a -> b as well
                        if (a, b) in ((u[0], u[1]), (u[1], u[2]), (u[2], u[0])):
                            f[j] = u[::-1]
                        seen[j] = True
                        todo.append(j)
    if closed:
        return f if volume(f) > 0 else f[:, ::-1].copy()
    kept = (f == original).all(1).mean()      # an open surface: the file's majority order
    return f if kept >= 0.5 else f[:, ::-1].copy()


def edge_graph(vertices, faces):
    """The mesh's edges as a symmetric sparse ``(V, V)`` matrix of edge lengths (each
    undirected edge once, whichever number of faces share it): for shortest paths along
    the surface and for neighbour averages (its non-zero pattern)."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415

    v = np.asarray(vertices, float)
    f = np.asarray(faces, np.int64)
    e = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1),
                  axis=0)
    w = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    n = len(v)
    return coo_matrix((np.r_[w, w], (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
                      shape=(n, n)).tocsr()


def mesh_to_polydata(mesh: MeshData):
    """:class:`MeshData` -> ``vtkPolyData`` (triangles, model-frame coordinates)."""
    from SurgicalReg2D3DLib.nodes import polydata_from_arrays  # noqa: PLC0415

    return polydata_from_arrays(mesh.vertices, mesh.faces)


def decimate(mesh: MeshData, target_faces: int = 1000) -> MeshData:
    """A coarser copy (VTK quadric decimation) with about ``target_faces`` faces, for fast
    silhouette optimisation; the input is returned unchanged when already small enough.
    Vertex order is NOT kept (use it only for rendering)."""
    import vtk  # noqa: PLC0415
    from vtk.util.numpy_support import vtk_to_numpy  # noqa: PLC0415

    n = mesh.faces.shape[0]
    if n <= target_faces:
        return mesh
    dec = vtk.vtkQuadricDecimation()
    dec.SetInputData(mesh_to_polydata(mesh))
    dec.SetTargetReduction(1.0 - target_faces / n)
    dec.Update()
    out = dec.GetOutput()
    v = vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64)
    f = vtk_to_numpy(out.GetPolys().GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    return MeshData(v, f, mesh.name)


_DECIMATED: Dict[tuple, MeshData] = {}


def decimated(mesh: MeshData, target_faces: int) -> MeshData:
    """:func:`decimate` with a small cache keyed by the mesh content, so that a video
    (same mesh, frame after frame) pays the decimation once."""
    import hashlib  # noqa: PLC0415

    key = (hashlib.sha1(np.ascontiguousarray(mesh.vertices).tobytes()
                        + np.ascontiguousarray(mesh.faces).tobytes()).hexdigest(), target_faces)
    if key not in _DECIMATED:
        if len(_DECIMATED) > 8:
            _DECIMATED.clear()
        _DECIMATED[key] = decimate(mesh, target_faces)
    return _DECIMATED[key]


def load_mesh(path: PathLike, name: str = "mesh", validate: bool = True) -> MeshData:
    """Read a mesh file (core ``io.load_mesh_arrays``): vertex coordinates exactly as in
    the file (model frame, mm, no LPS/RAS flip), OBJ vertex order kept; with ``validate``
    checked and its faces in one (outward) order (:func:`outward_faces`)."""
    from SurgicalReg2D3DLib.io import load_mesh_arrays  # noqa: PLC0415

    v, f = load_mesh_arrays(path, name=name)
    mesh = MeshData(v, f, name)
    if not validate:
        return mesh
    validate_mesh(mesh, name)
    return MeshData(v, outward_faces(v, f), name)


def save_mesh(mesh: MeshData, path: PathLike) -> Path:
    """Write a mesh (``.vtk .vtp .ply .stl .obj``), vertex order kept."""
    import vtk  # noqa: PLC0415

    path = Path(path)
    writer_name = _WRITERS.get(path.suffix.lower())
    if writer_name is None:
        raise InputError(f"output mesh: unsupported format {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".obj":
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces]
        path.write_text("\n".join(lines) + "\n")
        return path
    writer = getattr(vtk, writer_name)()
    writer.SetFileName(str(path))
    writer.SetInputData(mesh_to_polydata(mesh))
    if not writer.Write():
        raise FileReadError(f"output mesh: cannot write {path}")
    return path
