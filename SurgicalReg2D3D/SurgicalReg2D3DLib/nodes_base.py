"""Shared checks and 4x4 matrices of the MRML node adapters, and transform nodes.

Where it sits in the flow: the first layer of :mod:`.nodes` (the public module that
re-exports every adapter). Every adapter validates its node (:func:`_check_node`) and its
arrays (:func:`_to_numpy`, :func:`as_matrix4`) here and converts 4x4 matrices to and from
``vtkMatrix4x4``; transform nodes are read and written here too (``child_to_parent``
matrices, :func:`world_matrix` for ``local_to_world``). :mod:`.nodes_volumes`,
:mod:`.nodes_models`, :mod:`.nodes_sequences` and :mod:`.nodes_segmentations` build on it.
Conventions (frames, copies, output nodes): see :mod:`.nodes`.
"""

from __future__ import annotations

import numpy as np

from .errors import GeometryError, InputError

#: ``RAS = LPS_TO_RAS @ LPS`` (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def _to_numpy(x, name: str) -> np.ndarray:
    """A numpy copy of a numpy array, torch tensor or nested sequence."""
    if x is None:
        raise InputError(f"{name}: no data given (None)")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, any device
        x = x.detach().cpu().numpy()
    try:
        arr = np.array(x, copy=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: cannot convert to an array ({exc})") from None
    if arr.dtype == object:
        raise InputError(f"{name}: cannot convert to a numeric array (ragged or non-numeric)")
    return arr


def _node_label(node) -> str:
    return node.GetName() if node.GetName() else node.GetID() or node.GetClassName()


def _check_node(node, class_name: str, name: str, what: str):
    """Raise InputError unless ``node`` is an MRML node of ``class_name`` (or a subclass)."""
    if node is None:
        raise InputError(f"{name}: no {what} node given (None)")
    if not hasattr(node, "IsA") or not node.IsA(class_name):
        cls = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise InputError(f"{name}: expected a {what} node ({class_name}), got {cls}")
    return node


def as_matrix4(matrix, name: str) -> np.ndarray:
    """Validate and copy a 4x4 affine matrix (numpy, torch, nested lists) to float64.

    Raises :class:`GeometryError` for a wrong shape, NaN/inf, or a last row that is not
    ``(0, 0, 0, 1)``.
    """
    m = _to_numpy(matrix, name)
    if m.shape != (4, 4):
        raise GeometryError(f"{name}: expected a 4x4 matrix, got shape {tuple(m.shape)}")
    if not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
        raise GeometryError(f"{name}: expected a real-valued 4x4 matrix, got dtype {m.dtype}")
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)):
        raise GeometryError(f"{name}: matrix contains NaN or infinite values")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise GeometryError(f"{name}: last row of the 4x4 matrix must be (0, 0, 0, 1), "
                            f"got {tuple(float(v) for v in m[3])}")
    return m


def vtk_matrix_to_numpy(vmatrix) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a float64 (4, 4) numpy array."""
    return np.array([[vmatrix.GetElement(r, c) for c in range(4)] for r in range(4)],
                    dtype=np.float64)


def numpy_to_vtk_matrix(matrix):
    """A float64 (4, 4) numpy array as a new ``vtkMatrix4x4``."""
    import vtk  # noqa: PLC0415

    vmatrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vmatrix.SetElement(r, c, float(matrix[r, c]))
    return vmatrix


def _is_orthonormal(direction: np.ndarray, tol: float = 1e-4) -> bool:
    return bool(np.allclose(direction.T @ direction, np.eye(3), atol=tol))


def _decompose_ijk_to_ras(m: np.ndarray, name: str):
    """(spacing (3,), direction (3, 3) with unit columns, origin (3,)) of an ijk_to_ras."""
    linear = m[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0.0):
        raise GeometryError(f"{name}: spacing must be positive, got "
                            f"({', '.join(f'{s:g}' for s in spacing)})")
    direction = linear / spacing
    if not _is_orthonormal(direction):
        raise GeometryError(f"{name}: direction matrix is not orthonormal")
    return spacing, direction, m[:3, 3].copy()


# --------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------
def matrix_from_transform_node(node, name: str = "transform",
                               require_rigid: bool = False) -> np.ndarray:
    """The float64 (4, 4) ``child_to_parent`` ("to parent") matrix of a linear transform.

    Non-linear transforms (grid, B-spline, thin plate) are an error. With
    ``require_rigid`` the matrix must also be a rotation + translation
    (``poses.check_rigid``).
    """
    import vtk  # noqa: PLC0415

    _check_node(node, "vtkMRMLTransformNode", name, "transform")
    if not node.IsLinear():
        raise InputError(f"{name}: transform '{_node_label(node)}' is not linear; "
                         "a 4x4 matrix cannot represent it")
    vmatrix = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(vmatrix)
    m = as_matrix4(vtk_matrix_to_numpy(vmatrix), name)
    if require_rigid:
        from .poses import check_rigid  # noqa: PLC0415

        check_rigid(m, name)
    return m


def matrix_to_transform_node(ctx, matrix, name: str, node=None):
    """Create (or update ``node``) a linear transform node whose "to parent" is ``matrix``."""
    m = as_matrix4(matrix, name)
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise GeometryError(f"{name}: matrix is singular (determinant 0)")
    if node is None:
        node = ctx.add_node("vtkMRMLLinearTransformNode", name)
    else:
        _check_node(node, "vtkMRMLLinearTransformNode", name, "linear transform")
    node.SetMatrixTransformToParent(numpy_to_vtk_matrix(m))
    return node


def world_matrix(node, name: str = "node") -> np.ndarray:
    """float64 (4, 4) ``local_to_world`` of a node, through all its parent transforms.

    For a transform node this is its own transform composed with its parents
    (``GetMatrixTransformToWorld``); for a volume/model/markups node it is the transform
    of its parent chain (identity if it has none).
    """
    import vtk  # noqa: PLC0415

    if node is None:
        raise InputError(f"{name}: no node given (None)")
    if node.IsA("vtkMRMLTransformNode"):
        transform = node
    else:
        _check_node(node, "vtkMRMLTransformableNode", name, "transformable")
        transform = node.GetParentTransformNode()
        if transform is None:
            return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(f"{name}: the transform to world of '{_node_label(node)}' is not "
                         "linear; a 4x4 matrix cannot represent it")
    vmatrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(vmatrix)
    return vtk_matrix_to_numpy(vmatrix)

