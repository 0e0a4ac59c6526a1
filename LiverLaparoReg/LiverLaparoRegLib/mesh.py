"""Triangle meshes as arrays: reading, writing, validation.

A :class:`MeshData` holds ``vertices (V, 3)`` in the *model* frame (millimetres, the
coordinates exactly as stored in the file, no LPS/RAS flip) and ``faces (F, 3)`` vertex
indices. Reading uses VTK readers (``.ply .obj .vtk .vtp .stl``); non-triangle polygons are
triangulated. This is a private fallback of the module until the core
``SurgicalReg2D3DLib.io.load_mesh_arrays`` exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

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


def polydata_to_mesh(polydata, name: str = "mesh") -> MeshData:
    """``vtkPolyData`` -> :class:`MeshData` (polygons triangulated, lines/verts dropped)."""
    import vtk  # noqa: PLC0415
    from vtk.util.numpy_support import vtk_to_numpy  # noqa: PLC0415

    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: mesh has no points")
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(polydata)
    tri.PassVertsOff()
    tri.PassLinesOff()
    tri.Update()
    out = tri.GetOutput()
    verts = vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    if out.GetNumberOfPolys() == 0:
        return MeshData(verts, np.zeros((0, 3), np.int64), name)
    conn = vtk_to_numpy(out.GetPolys().GetConnectivityArray()).astype(np.int64)
    if out.GetNumberOfPoints() != polydata.GetNumberOfPoints():
        verts = vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64)
    return MeshData(verts, conn.reshape(-1, 3), name)


def mesh_to_polydata(mesh: MeshData):
    """:class:`MeshData` -> ``vtkPolyData`` with triangle polys."""
    import vtk  # noqa: PLC0415
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray  # noqa: PLC0415

    pts = vtk.vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(mesh.vertices, dtype=np.float64), deep=True))
    f = np.asarray(mesh.faces, dtype=np.int64)
    offsets = np.arange(0, 3 * f.shape[0] + 1, 3, dtype=np.int64)
    cells = vtk.vtkCellArray()
    cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True),
                  numpy_to_vtkIdTypeArray(np.ascontiguousarray(f.ravel()), deep=True))
    pd = vtk.vtkPolyData()
    pd.SetPoints(pts)
    pd.SetPolys(cells)
    return pd


def load_mesh(path: PathLike, name: str = "mesh", validate: bool = True) -> MeshData:
    """Read a mesh file; vertex coordinates as in the file (model frame, mm)."""
    import vtk  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{name}: file not found: {path}")
    if path.suffix.lower() == ".obj":
        mesh = _read_obj(path, name)
        return validate_mesh(mesh, name) if validate else mesh
    reader_name = _READERS.get(path.suffix.lower())
    if reader_name is None:
        raise FileReadError(f"{name}: unsupported mesh format {path.suffix!r} "
                            f"(use one of {', '.join(sorted(_READERS))})")
    reader = getattr(vtk, reader_name)()
    reader.SetFileName(str(path))
    reader.Update()
    pd = reader.GetOutput()
    if pd is None or pd.GetNumberOfPoints() == 0:
        raise FileReadError(f"{name}: cannot read a mesh from {path}")
    mesh = polydata_to_mesh(pd, name)
    return validate_mesh(mesh, name) if validate else mesh


def _read_obj(path: Path, name: str) -> MeshData:
    """Wavefront OBJ keeping the file's ``v`` order (``vtkOBJReader`` splits vertices that
    carry several normals or texture coordinates, which breaks vertex-index contours)."""
    verts, faces = [], []
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("v "):
                    verts.append([float(t) for t in line.split()[1:4]])
                elif line.startswith("f "):
                    idx = [int(t.split("/")[0]) for t in line.split()[1:]]
                    idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                    faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
    except (OSError, ValueError, IndexError) as exc:
        raise FileReadError(f"{name}: cannot read OBJ file {path} ({exc})") from None
    if not verts:
        raise FileReadError(f"{name}: no vertices in {path}")
    return MeshData(np.asarray(verts, dtype=np.float64),
                    np.asarray(faces, dtype=np.int64).reshape(-1, 3), name)


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
