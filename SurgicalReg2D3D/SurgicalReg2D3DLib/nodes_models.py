"""Model (triangle mesh) and markups (control points) nodes <-> numpy.

Where it sits in the flow: the geometric inputs and outputs of the registrations. A mesh
is checked (:func:`check_mesh`) and converted between ``(N, 3)`` vertices / ``(F, 3)``
faces, ``vtkPolyData`` and a model node (RAS, or LPS as mesh files are read); markups
control points are read as ``(N, 3)`` RAS points with their labels and written as point
lists or curves. Built on :mod:`.nodes_base`; public names are re-exported by
:mod:`.nodes`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .nodes_base import _check_node, _node_label, _to_numpy

_MARKUPS_CLASSES = {
    "fiducial": "vtkMRMLMarkupsFiducialNode",
    "curve": "vtkMRMLMarkupsCurveNode",
    "closed_curve": "vtkMRMLMarkupsClosedCurveNode",
}


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------
def check_mesh(vertices, faces, name: str = "mesh") -> Tuple[np.ndarray, np.ndarray]:
    """Validate a triangle mesh and return float64 (N, 3) vertices, int64 (F, 3) faces.

    Rejects: wrong shapes, no vertices or no faces, NaN/inf vertices, face indices out of
    range, and a mesh whose vertices all coincide (zero extent).
    """
    v = _to_numpy(vertices, f"{name} vertices")
    f = _to_numpy(faces, f"{name} faces")
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"{name}: vertices must have shape (N, 3), got {tuple(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"{name}: faces must have shape (F, 3), got {tuple(f.shape)}")
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise InputError(f"{name}: mesh has no triangles ({v.shape[0]} vertices, "
                         f"{f.shape[0]} faces)")
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise InputError(f"{name}: vertices contain NaN or infinite values")
    if not np.issubdtype(f.dtype, np.integer):
        if not np.all(np.equal(np.mod(f, 1), 0)):
            raise InputError(f"{name}: face indices must be integers")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise InputError(f"{name}: face indices must be in [0, {v.shape[0] - 1}], got "
                         f"[{f.min()}, {f.max()}]")
    extent = v.max(axis=0) - v.min(axis=0)
    if not np.any(extent > 0.0):
        raise InputError(f"{name}: mesh has zero extent (all vertices coincide)")
    return v, f


def model_from_node(node, name: str = "model", frame: str = "RAS"
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Triangle mesh of a model node: vertices (N, 3) float64, faces (F, 3) int64.

    Polygons and triangle strips are triangulated; lines and vertices are dropped.
    ``frame="RAS"`` gives MRML's stored (local RAS) coordinates; ``frame="LPS"`` flips x
    and y. Parent transforms are not applied.
    """
    _check_node(node, "vtkMRMLModelNode", name, "model")
    if frame not in ("RAS", "LPS"):
        raise InputError(f"{name}: frame must be 'RAS' or 'LPS', got {frame!r}")
    label = _node_label(node)
    poly = node.GetPolyData()
    if poly is None or poly.GetNumberOfPoints() == 0 or \
            poly.GetNumberOfPolys() + poly.GetNumberOfStrips() == 0:
        raise InputError(f"{name}: model '{label}' has no triangles")
    vertices, faces = _polydata_triangles(poly)
    if faces is None or faces.shape[0] == 0:
        raise InputError(f"{name}: model '{label}' has no triangles")
    if frame == "LPS":
        vertices[:, :2] *= -1.0
    return vertices, faces


def _polydata_triangles(poly) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(vertices (N, 3) float64, faces (F, 3) int64) of a vtkPolyData's polygons and strips.

    Points are kept in their order (unused points too); faces is None if triangulation
    failed.
    """
    import vtk  # noqa: PLC0415
    from vtk.util import numpy_support  # noqa: PLC0415

    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(poly)
    tri.PassLinesOff()
    tri.PassVertsOff()
    tri.Update()
    out = tri.GetOutput()
    vertices = np.array(numpy_support.vtk_to_numpy(poly.GetPoints().GetData()),
                        dtype=np.float64, copy=True).reshape(-1, 3)
    polys = out.GetPolys()
    if out.GetNumberOfPolys() == 0:
        return vertices, np.zeros((0, 3), dtype=np.int64)
    offsets = numpy_support.vtk_to_numpy(polys.GetOffsetsArray())
    if not np.all(np.diff(offsets) == 3):
        return vertices, None
    faces = np.array(numpy_support.vtk_to_numpy(polys.GetConnectivityArray()),
                     dtype=np.int64).reshape(-1, 3)
    return vertices, faces


def polydata_from_arrays(vertices: np.ndarray, faces: np.ndarray):
    """A vtkPolyData of triangles from validated (N, 3) float and (F, 3) int arrays."""
    import vtk  # noqa: PLC0415
    from vtk.util import numpy_support  # noqa: PLC0415

    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(vertices), deep=True))
    cells = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * faces.shape[0] + 1, 3, dtype=np.int64)
    cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=True),
                  numpy_support.numpy_to_vtkIdTypeArray(
                      np.ascontiguousarray(faces.reshape(-1)), deep=True))
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(cells)
    return poly


def model_to_node(ctx, vertices, faces, name: str, node=None, frame: str = "RAS"):
    """Create (or update ``node``) a model node from a triangle mesh.

    Args:
        vertices: (N, 3) in ``frame`` ("RAS" stored as is; "LPS" flipped to RAS).
        faces: (F, 3) vertex indices.
    """
    v, f = check_mesh(vertices, faces, name)
    if frame not in ("RAS", "LPS"):
        raise InputError(f"{name}: frame must be 'RAS' or 'LPS', got {frame!r}")
    if frame == "LPS":
        v = v.copy()
        v[:, :2] *= -1.0
    poly = polydata_from_arrays(v, f)
    if node is None:
        node = ctx.add_node("vtkMRMLModelNode", name)
    else:
        _check_node(node, "vtkMRMLModelNode", name, "model")
    node.SetAndObservePolyData(poly)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# --------------------------------------------------------------------------------------
# markups
# --------------------------------------------------------------------------------------
def points_from_markups(node, name: str = "points") -> np.ndarray:
    """Control points (N, 3) float64 of a markups node, local RAS (no parent transform).

    Works for point lists ("fiducials"), open and closed curves (their control points,
    not the interpolated curve). A node without control points, or with a control point
    that has not been placed yet, is an error.
    """
    _check_node(node, "vtkMRMLMarkupsNode", name, "markups")
    n = node.GetNumberOfControlPoints()
    label = _node_label(node)
    if n == 0:
        raise InputError(f"{name}: markups '{label}' has no control points")
    points = np.zeros((n, 3), dtype=np.float64)
    for i in range(n):
        if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
            raise InputError(f"{name}: control point {i} ('{node.GetNthControlPointLabel(i)}')"
                             f" of markups '{label}' has no position")
        node.GetNthControlPointPosition(i, points[i])
    if not np.all(np.isfinite(points)):
        raise InputError(f"{name}: markups '{label}' has NaN or infinite coordinates")
    return points


def markups_labels(node, name: str = "points") -> List[str]:
    """Labels of a markups node's control points, in order."""
    _check_node(node, "vtkMRMLMarkupsNode", name, "markups")
    return [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]


def points_to_markups(ctx, points, name: str, kind: str = "fiducial",
                      labels: Optional[Sequence[str]] = None, node=None):
    """Create (or overwrite ``node``) a markups node with these RAS control points.

    Args:
        points: (N, 3) RAS mm.
        kind: "fiducial" (point list), "curve" or "closed_curve".
        labels: N labels (default: MRML's automatic labels).
    """
    if kind not in _MARKUPS_CLASSES:
        raise InputError(f"{name}: kind must be one of {sorted(_MARKUPS_CLASSES)}, "
                         f"got {kind!r}")
    p = _to_numpy(points, name)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(f"{name}: expected points of shape (N, 3), got {tuple(p.shape)}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise InputError(f"{name}: points contain NaN or infinite values")
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != p.shape[0]:
            raise InputError(f"{name}: got {len(labels)} labels for {p.shape[0]} points")
    class_name = _MARKUPS_CLASSES[kind]
    if node is None:
        node = ctx.add_node(class_name, name)
    else:
        _check_node(node, class_name, name, kind)
    was_modifying = node.StartModify()
    node.RemoveAllControlPoints()
    for i, point in enumerate(p):
        if labels is None:
            node.AddControlPoint(float(point[0]), float(point[1]), float(point[2]))
        else:
            node.AddControlPoint(float(point[0]), float(point[1]), float(point[2]), labels[i])
    node.EndModify(was_modifying)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node

