"""MRML node <-> numpy/torch adapters (volumes, 2D images, models, transforms, markups,
sequences, label maps and segmentations).

Every ``*_from_node`` function returns *copies* (numpy arrays, float64 4x4 matrices); the
node is never modified. Every ``*_to_node`` function creates a new node in the
:class:`~SurgicalReg2D3DLib.scene.SceneContext` scene, or updates the output ``node`` the
caller passed. Arrays may be given as numpy arrays or torch tensors (any device).

Frames (see ``docs/architecture.md``):

- Volumes: arrays are indexed ``[k, j, i]`` (slowest first, as
  ``slicer.util.arrayFromVolume``); ``ijk_to_ras`` maps the homogeneous voxel index
  ``(i, j, k, 1)`` (voxel centres at integer indices) to the node's RAS frame in mm.
- Everything is in the node's *local* frame: parent transforms are not applied. Use
  :func:`world_matrix` to get ``local_to_world`` (the RAS "world" of the scene).
- Models: vertices are RAS by default (as MRML stores them); ``frame="LPS"`` flips
  x and y, which gives the coordinates of a mesh file read as LPS (Slicer's default).
- Transforms: MRML stores ``child_to_parent`` ("to parent") matrices;
  :func:`matrix_from_transform_node` returns that.
- Torch: :meth:`VolumeData.to_tensor` gives the voxels as a tensor on any device and
  ``volume_to_node`` takes tensors back, so file -> node -> tensor -> node -> file keeps
  the geometry exactly.
- Segmentations: :func:`segmentation_to_labelmap` rasterises segments on a reference
  volume's grid (the one exception to "local frame": Slicer applies the segmentation's
  parent transform); :func:`labelmap_from_node` reads integer labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import GeometryError, InputError

#: ``RAS = LPS_TO_RAS @ LPS`` (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_MARKUPS_CLASSES = {
    "fiducial": "vtkMRMLMarkupsFiducialNode",
    "curve": "vtkMRMLMarkupsCurveNode",
    "closed_curve": "vtkMRMLMarkupsClosedCurveNode",
}


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
# volumes
# --------------------------------------------------------------------------------------
@dataclass
class VolumeData:
    """A volume's voxels and geometry, detached from MRML.

    Attributes:
        array: voxel values, shape ``(K, J, I)`` or ``(K, J, I, C)`` for vector volumes
            (``C`` components per voxel, e.g. RGB), indexed ``[k, j, i]``.
        ijk_to_ras: float64 (4, 4), maps ``(i, j, k, 1)`` to RAS mm (node's local frame).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (3,) in mm along i, j, k."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (3,) of the centre of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) RAS unit directions of the i, j, k axes (as columns)."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def shape_ijk(self) -> Tuple[int, int, int]:
        """Size ``(I, J, K)`` (fastest first, as VTK/ITK report it)."""
        k, j, i = self.array.shape[:3]
        return (i, j, k)

    @property
    def num_components(self) -> int:
        """Components per voxel (1 for scalar volumes)."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """float64 (4, 4) mapping ``(i, j, k, 1)`` to LPS mm (ITK/DICOM convention)."""
        return LPS_TO_RAS @ self.ijk_to_ras

    def to_tensor(self, device=None, dtype=None):
        """The voxels as a new torch tensor ``(K, J, I)`` or ``(K, J, I, C)`` (a copy).

        Args:
            device: torch device (default CPU), e.g. ``device.choose_device()``.
            dtype: torch dtype; ``None`` keeps the voxel type where torch has it
                (uint16 -> int32 and uint32 -> int64, both exact).

        The geometry stays in :attr:`ijk_to_ras` (see :meth:`ijk_to_ras_tensor`);
        ``volume_to_node(ctx, tensor, data.ijk_to_ras, ...)`` puts the tensor back.
        """
        import torch  # noqa: PLC0415

        arr = self.array
        widen = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64,
                 np.dtype(np.uint64): np.int64}
        if dtype is None and arr.dtype in widen:
            if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
                raise InputError("volume: uint64 voxel values too large for a torch tensor")
            arr = arr.astype(widen[arr.dtype])
        tensor = torch.tensor(np.ascontiguousarray(arr))  # always a copy
        return tensor.to(device=device, dtype=dtype) if (device is not None or
                                                          dtype is not None) else tensor

    def ijk_to_ras_tensor(self, device=None, dtype=None):
        """:attr:`ijk_to_ras` as a torch tensor (4, 4), float64 unless ``dtype`` says."""
        import torch  # noqa: PLC0415

        return torch.tensor(self.ijk_to_ras, dtype=dtype or torch.float64, device=device)


def _image_array(node, name: str) -> np.ndarray:
    """Copy of a volume node's voxels, shape (K, J, I) or (K, J, I, C)."""
    from vtk.util import numpy_support  # noqa: PLC0415

    image = node.GetImageData()
    label = _node_label(node)
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{name}: volume node '{label}' has no image data")
    dims = image.GetDimensions()
    if min(dims) < 1 or image.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: volume node '{label}' has no image data")
    scalars = image.GetPointData().GetScalars()
    comps = scalars.GetNumberOfComponents()
    flat = numpy_support.vtk_to_numpy(scalars)
    shape = (dims[2], dims[1], dims[0]) + ((comps,) if comps > 1 else ())
    return np.array(flat, copy=True).reshape(shape)


def _node_ijk_to_ras(node) -> np.ndarray:
    import vtk  # noqa: PLC0415

    vmatrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vmatrix)
    return vtk_matrix_to_numpy(vmatrix)


def _check_volume_geometry(node, name: str) -> None:
    spacing = node.GetSpacing()
    if not all(np.isfinite(spacing)) or min(spacing) <= 0.0:
        raise GeometryError(f"{name}: spacing must be positive, got "
                            f"({', '.join(f'{s:g}' for s in spacing)})")
    import vtk  # noqa: PLC0415

    vdir = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(vdir)
    directions = vtk_matrix_to_numpy(vdir)[:3, :3]
    if not np.all(np.isfinite(directions)) or not _is_orthonormal(directions):
        raise GeometryError(f"{name}: direction matrix is not orthonormal")
    if not all(np.isfinite(node.GetOrigin())):
        raise GeometryError(f"{name}: origin contains NaN or infinite values")


def _check_finite_voxels(array: np.ndarray, node, name: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(f"{name}: volume node '{_node_label(node)}' contains NaN or "
                         "infinite voxel values")


def volume_from_node(node, name: str = "volume", require_3d: bool = True) -> VolumeData:
    """Voxels and geometry of a volume node (a copy; the node is not modified).

    Args:
        node: a ``vtkMRMLVolumeNode`` (scalar, label map or vector volume).
        name: the input's name, used in error messages.
        require_3d: if True, a single-slice volume (a 2D image) is an error.

    Returns:
        :class:`VolumeData` with ``array`` (K, J, I) or (K, J, I, C) and ``ijk_to_ras``
        (4, 4) in the node's local RAS frame (parent transforms are not applied).
    """
    _check_node(node, "vtkMRMLVolumeNode", name, "volume")
    array = _image_array(node, name)
    k, j, i = array.shape[:3]
    if require_3d and k == 1:
        raise InputError(f"{name}: expected a 3D volume, got a 2D image of size {i} x {j}")
    _check_volume_geometry(node, name)
    _check_finite_voxels(array, node, name)
    return VolumeData(array=array, ijk_to_ras=_node_ijk_to_ras(node))


def image2d_from_node(node, name: str = "image") -> Tuple[np.ndarray, np.ndarray]:
    """A 2D image stored as a single-slice volume node (grayscale or RGB/RGBA).

    Returns:
        ``(image, ijk_to_ras)``: ``image`` is (H, W) or (H, W, C) with ``image[row, col]``
        = voxel ``(i=col, j=row, k=0)`` (row 0 = the first row of the file the node was
        read from); ``ijk_to_ras`` is float64 (4, 4).
    """
    _check_node(node, "vtkMRMLVolumeNode", name, "volume")
    array = _image_array(node, name)
    k, j, i = array.shape[:3]
    if k != 1:
        raise InputError(f"{name}: expected a 2D image, got a volume of {i} x {j} x {k}")
    _check_volume_geometry(node, name)
    _check_finite_voxels(array, node, name)
    return array[0].copy(), _node_ijk_to_ras(node)


def _vtk_image_from_array(array: np.ndarray, components: int):
    """A vtkImageData (origin 0, spacing 1, as MRML expects) holding a deep copy."""
    import vtk  # noqa: PLC0415
    from vtk.util import numpy_support  # noqa: PLC0415

    k, j, i = array.shape[:3]
    flat = np.ascontiguousarray(array).reshape(-1, components) if components > 1 \
        else np.ascontiguousarray(array).reshape(-1)
    varr = numpy_support.numpy_to_vtk(flat, deep=True)
    varr.SetName("ImageScalars")
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(varr)
    return image


def _prepare_volume_array(array, name: str, allow_vector: bool = True) -> np.ndarray:
    arr = _to_numpy(array, name)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and not allow_vector):
        raise InputError(f"{name}: expected an array of shape (K, J, I) or (K, J, I, C), "
                         f"got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise InputError(f"{name}: array is empty, shape {tuple(arr.shape)}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: unsupported voxel type {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: array contains NaN or infinite values")
    return arr


def _ensure_volume_display(ctx, node) -> None:
    """Give a volume node a display node with a color table (works without the app)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return
    if display.IsA("vtkMRMLScalarVolumeDisplayNode") and display.GetColorNode() is None:
        color_id = ("vtkMRMLColorTableNodeLabels" if node.IsA("vtkMRMLLabelMapVolumeNode")
                    else "vtkMRMLColorTableNodeGrey")
        if ctx.scene.GetNodeByID(color_id) is not None:
            display.SetAndObserveColorNodeID(color_id)
    if display.IsA("vtkMRMLScalarVolumeDisplayNode") and not node.IsA(
            "vtkMRMLLabelMapVolumeNode"):
        display.AutoWindowLevelOn()


def volume_to_node(ctx, array, ijk_to_ras, name: str, node=None,
                   node_class: str = "vtkMRMLScalarVolumeNode"):
    """Create (or update ``node``) a volume node with exactly this voxel array and geometry.

    Args:
        ctx: the :class:`SceneContext`.
        array: (K, J, I) scalar voxels, or (K, J, I, C) for a vector volume (then a
            ``vtkMRMLVectorVolumeNode`` is made unless ``node_class`` says otherwise).
            numpy or torch; copied, dtype kept (bool -> uint8, float16 -> float32).
        ijk_to_ras: (4, 4) voxel index -> RAS mm; its 3x3 part must be an orthonormal
            direction times positive spacings (MRML cannot store shear).
        name: node name (also the input name in error messages).
        node: an existing volume node to overwrite (its display node is kept).
        node_class: e.g. ``"vtkMRMLScalarVolumeNode"`` or ``"vtkMRMLLabelMapVolumeNode"``.

    Returns:
        the volume node.
    """
    arr = _prepare_volume_array(array, name)
    m = as_matrix4(ijk_to_ras, f"{name} ijk_to_ras")
    _decompose_ijk_to_ras(m, f"{name} ijk_to_ras")
    components = 1 if arr.ndim == 3 else int(arr.shape[3])
    if components > 1 and node_class == "vtkMRMLScalarVolumeNode":
        node_class = "vtkMRMLVectorVolumeNode"
    if node is None:
        node = ctx.add_node(node_class, name)
    else:
        _check_node(node, "vtkMRMLVolumeNode", name, "volume")
        if components > 1 and not node.IsA("vtkMRMLVectorVolumeNode"):
            raise InputError(f"{name}: a {components}-component array needs a vector volume "
                             f"node, got {node.GetClassName()}")
    image = _vtk_image_from_array(arr, components)
    was_modifying = node.StartModify()
    node.SetIJKToRASMatrix(numpy_to_vtk_matrix(m))
    node.SetAndObserveImageData(image)
    node.EndModify(was_modifying)
    _ensure_volume_display(ctx, node)
    return node


def image2d_to_node(ctx, image, name: str, ijk_to_ras=None, node=None):
    """A 2D image (H, W) or (H, W, C) as a single-slice volume node.

    ``image[row, col]`` becomes voxel ``(i=col, j=row, k=0)``. ``ijk_to_ras`` defaults to
    the identity (1 mm pixels, column along R, row along A).
    """
    img = _to_numpy(image, name)
    if img.ndim not in (2, 3):
        raise InputError(f"{name}: expected a 2D image (H, W) or (H, W, C), "
                         f"got shape {tuple(img.shape)}")
    m = np.eye(4) if ijk_to_ras is None else ijk_to_ras
    return volume_to_node(ctx, img[None], m, name, node=node)


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


# --------------------------------------------------------------------------------------
# sequences
# --------------------------------------------------------------------------------------
def frames_to_sequence(ctx, frames, image_to_reference, name: str):
    """Put tracked 2D frames into a browsable sequence (e.g. a tracked US sweep).

    Geometry: frame ``t`` is stored as a single-slice volume whose ``ijk_to_ras`` is the
    identity, i.e. voxel ``(i=col, j=row, k=0)`` sits at ``(col, row, 0)`` of the image
    frame (pixel units). ``image_to_reference[t]`` (4x4, may be a general affine with
    mm/pixel scaling) is stored as the "to parent" matrix of transform item ``t``. The
    browser's proxy volume is placed under the proxy transform, so while browsing pixel
    ``(col, row)`` of the shown frame lies at ``image_to_reference[t] @ (col, row, 0, 1)``
    in the scene's RAS (= the reference frame).

    Args:
        frames: (T, H, W) or (T, H, W, C) array/tensor.
        image_to_reference: T matrices (4, 4) (a list or a (T, 4, 4) array).
        name: base name of the nodes.

    Returns:
        ``(image_sequence, transform_sequence, browser)``: two ``vtkMRMLSequenceNode`` (index
        = frame number) and the ``vtkMRMLSequenceBrowserNode`` (at item 0).
    """
    import slicer  # noqa: PLC0415

    arr = _to_numpy(frames, name)
    if arr.ndim not in (3, 4) or arr.shape[0] == 0:
        raise InputError(f"{name}: expected frames of shape (T, H, W) or (T, H, W, C), "
                         f"got {tuple(arr.shape)}")
    arr = _prepare_volume_array(arr, name)  # dtype checks; shape already valid
    mats = _to_numpy(image_to_reference, f"{name} image_to_reference")
    if mats.ndim != 3 or mats.shape[1:] != (4, 4) or mats.shape[0] != arr.shape[0]:
        raise InputError(f"{name}: expected {arr.shape[0]} image_to_reference matrices "
                         f"(T, 4, 4), got shape {tuple(mats.shape)}")
    mats = [as_matrix4(m, f"{name} image_to_reference[{t}]") for t, m in enumerate(mats)]
    for t, m in enumerate(mats):
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise GeometryError(f"{name} image_to_reference[{t}]: matrix is singular")

    components = 1 if arr.ndim == 3 else int(arr.shape[3])
    volume_class = "vtkMRMLVectorVolumeNode" if components > 1 else "vtkMRMLScalarVolumeNode"
    image_seq = ctx.add_node("vtkMRMLSequenceNode", f"{name} frames")
    transform_seq = ctx.add_node("vtkMRMLSequenceNode", f"{name} image_to_reference")
    for seq in (image_seq, transform_seq):
        seq.SetIndexName("frame")
        seq.SetIndexUnit("")
        seq.SetIndexType(seq.NumericIndex)
    for t in range(arr.shape[0]):
        volume = getattr(slicer, volume_class)()
        volume.SetName(f"{name} frame {t}")
        volume.SetIJKToRASMatrix(numpy_to_vtk_matrix(np.eye(4)))
        volume.SetAndObserveImageData(_vtk_image_from_array(arr[t][None], components))
        image_seq.SetDataNodeAtValue(volume, str(t))
        transform = slicer.vtkMRMLLinearTransformNode()
        transform.SetName(f"{name} image_to_reference {t}")
        transform.SetMatrixTransformToParent(numpy_to_vtk_matrix(mats[t]))
        transform_seq.SetDataNodeAtValue(transform, str(t))

    browser = ctx.add_node("vtkMRMLSequenceBrowserNode", name)
    browser.SetAndObserveMasterSequenceNodeID(image_seq.GetID())
    browser.AddSynchronizedSequenceNodeID(transform_seq.GetID())
    browser.SetSelectedItemNumber(0)
    ctx.logic("Sequences").UpdateProxyNodesFromSequences(browser)
    proxy_volume = browser.GetProxyNode(image_seq)
    proxy_transform = browser.GetProxyNode(transform_seq)
    if proxy_volume is not None and proxy_transform is not None:
        proxy_volume.SetAndObserveTransformNodeID(proxy_transform.GetID())
        _ensure_volume_display(ctx, proxy_volume)
    return image_seq, transform_seq, browser


def frames_from_sequence(image_sequence, transform_sequence=None, name: str = "sequence"
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """Frames and per-frame geometry of a sequence of 2D images (the reverse of
    :func:`frames_to_sequence`; also reads sequences loaded in Slicer).

    Args:
        image_sequence: ``vtkMRMLSequenceNode`` of single-slice volume nodes.
        transform_sequence: optional ``vtkMRMLSequenceNode`` of linear transforms,
            matched to the frames by index value (e.g. a tracker's ``image_to_reference``).
        name: the input's name, used in error messages.

    Returns:
        ``(frames, image_to_reference)``: ``frames`` (T, H, W) or (T, H, W, C) (a copy),
        ``image_to_reference`` float64 (T, 4, 4) mapping pixel ``(col, row, 0, 1)`` of
        frame ``t`` to the reference frame: ``to_parent[t] @ ijk_to_ras[t]`` (just
        ``ijk_to_ras[t]`` without a transform sequence).
    """
    _check_node(image_sequence, "vtkMRMLSequenceNode", name, "sequence")
    n = image_sequence.GetNumberOfDataNodes()
    if n == 0:
        raise InputError(f"{name}: sequence '{_node_label(image_sequence)}' has no frames")
    if transform_sequence is not None:
        _check_node(transform_sequence, "vtkMRMLSequenceNode", f"{name} transforms",
                    "sequence")
    frames, matrices = [], []
    for t in range(n):
        item = image_sequence.GetNthDataNode(t)
        if item is None or not item.IsA("vtkMRMLVolumeNode"):
            raise InputError(f"{name}: item {t} of sequence '{_node_label(image_sequence)}' "
                             "is not a volume node")
        image, ijk_to_ras = image2d_from_node(item, f"{name} frame {t}")
        m = ijk_to_ras
        if transform_sequence is not None:
            value = image_sequence.GetNthIndexValue(t)
            transform = transform_sequence.GetDataNodeAtValue(value)
            if transform is None:
                raise InputError(f"{name}: no transform for frame {t} (index value "
                                 f"{value!r}) in '{_node_label(transform_sequence)}'")
            m = matrix_from_transform_node(transform, f"{name} transform {t}") @ ijk_to_ras
        frames.append(image)
        matrices.append(m)
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"{name}: frames have different sizes {sorted(shapes)}")
    return np.stack(frames), np.stack(matrices)


def sequence_items(sequence_node, name: str = "sequence") -> list:
    """The data nodes of a sequence, in item order (they live in the sequence's own
    internal scene: read them, do not modify them)."""
    _check_node(sequence_node, "vtkMRMLSequenceNode", name, "sequence")
    return [sequence_node.GetNthDataNode(i)
            for i in range(sequence_node.GetNumberOfDataNodes())]


# --------------------------------------------------------------------------------------
# label maps and segmentations
# --------------------------------------------------------------------------------------
def labelmap_from_node(node, name: str = "label map", labels: Optional[Sequence[int]] = None
                       ) -> VolumeData:
    """Integer labels and geometry of a label map (or integer scalar) volume node (a copy).

    Args:
        node: a ``vtkMRMLLabelMapVolumeNode``, or a scalar volume whose voxels are whole
            numbers (float voxels with a fractional part are an error).
        name: the input's name, used in error messages.
        labels: if given, only these label values are kept (others become 0), e.g. the
            label of one vertebra for a DRR of that vertebra alone.

    Returns:
        :class:`VolumeData` with an int32 ``array`` (K, J, I) and ``ijk_to_ras`` (4, 4),
        in the node's local RAS frame.
    """
    _check_node(node, "vtkMRMLScalarVolumeNode", name, "label map")
    data = volume_from_node(node, name, require_3d=False)
    if data.array.ndim != 3:
        raise InputError(f"{name}: expected a single-component label map, got "
                         f"{data.num_components} components per voxel")
    arr = data.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError(f"{name}: label values must be whole numbers "
                             f"(volume node '{_node_label(node)}' has fractional voxels)")
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise InputError(f"{name}: label values do not fit in int32")
    arr = arr.astype(np.int32)
    if labels is not None:
        wanted = _to_numpy(labels, f"{name} labels").reshape(-1)
        if wanted.size == 0:
            raise InputError(f"{name}: empty list of labels to keep")
        if not np.issubdtype(wanted.dtype, np.integer):
            raise InputError(f"{name}: labels must be integers, got {wanted.tolist()}")
        arr = np.where(np.isin(arr, wanted), arr, 0).astype(np.int32)
    return VolumeData(array=arr, ijk_to_ras=data.ijk_to_ras)


def segment_ids(segmentation_node, names: Optional[Sequence[str]] = None,
                name: str = "segmentation") -> List[str]:
    """IDs of a segmentation's segments, in order; or of the segments called ``names``."""
    _check_node(segmentation_node, "vtkMRMLSegmentationNode", name, "segmentation")
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if names is None:
        return ids
    if isinstance(names, str):
        names = [names]
    by_name = {segmentation.GetSegment(sid).GetName(): sid for sid in ids}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"{name}: no segment named {missing[0]!r} in "
                         f"'{_node_label(segmentation_node)}' (segments: {sorted(by_name)})")
    return [by_name[n] for n in names]


def segmentation_to_labelmap(ctx, segmentation_node, reference_volume_node,
                             segment_ids: Optional[Sequence[str]] = None,
                             name: Optional[str] = None, node=None):
    """Rasterise segments into a label map on the voxel grid of a reference volume.

    Uses the Segmentations logic (``ExportSegmentsToLabelmapNode``) on a copy of the
    segmentation, so segments stored as closed surfaces are converted (directly on the
    reference grid) without adding a representation to ``segmentation_node`` (input
    nodes are never modified). Segments stored as binary label maps are resampled onto the
    reference grid (nearest neighbour). A parent transform of the segmentation is applied.

    Args:
        ctx: the :class:`SceneContext`.
        segmentation_node: a ``vtkMRMLSegmentationNode``.
        reference_volume_node: the volume (e.g. the CT) whose geometry the label map gets:
            same (K, J, I) size and ``ijk_to_ras``.
        segment_ids: the segments to export (default: all, in order); segment
            ``segment_ids[n]`` gets label ``n + 1``, background is 0. Use
            :func:`segment_ids` to find IDs by segment name.
        name: name of the new label map node (default: the segmentation's name + " labels").
        node: an existing ``vtkMRMLLabelMapVolumeNode`` to overwrite.

    Returns:
        the ``vtkMRMLLabelMapVolumeNode``; read it with :func:`labelmap_from_node`.
    """
    import slicer  # noqa: PLC0415
    import vtk  # noqa: PLC0415

    what = "segmentation"
    _check_node(segmentation_node, "vtkMRMLSegmentationNode", what, "segmentation")
    label = _node_label(segmentation_node)
    all_ids = [segmentation_node.GetSegmentation().GetNthSegmentID(i) for i in
               range(segmentation_node.GetSegmentation().GetNumberOfSegments())]
    if not all_ids:
        raise InputError(f"{what}: segmentation '{label}' has no segments")
    ids = all_ids if segment_ids is None else (
        [segment_ids] if isinstance(segment_ids, str) else [str(s) for s in segment_ids])
    if not ids:
        raise InputError(f"{what}: empty list of segment IDs")
    unknown = [s for s in ids if s not in all_ids]
    if unknown:
        raise InputError(f"{what}: no segment with ID {unknown[0]!r} in '{label}'")
    reference_name = "reference volume"
    _check_node(reference_volume_node, "vtkMRMLVolumeNode", reference_name, "volume")
    _image_array(reference_volume_node, reference_name)  # raises if it has no image data
    _check_volume_geometry(reference_volume_node, reference_name)
    if node is None:
        node = ctx.add_node("vtkMRMLLabelMapVolumeNode", name or f"{label} labels")
    else:
        _check_node(node, "vtkMRMLLabelMapVolumeNode", name or "label map", "label map")

    copy = slicer.vtkMRMLSegmentationNode()
    copy.SetName(f"{label} (copy)")
    ctx.scene.AddNode(copy)
    try:
        copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
        copy.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
        if not copy.GetSegmentation().ContainsRepresentation("Binary labelmap"):
            # closed surfaces are rasterised straight onto the reference grid
            copy.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
        id_array = vtk.vtkStringArray()
        for sid in ids:
            id_array.InsertNextValue(sid)
        ok = ctx.logic("Segmentations").ExportSegmentsToLabelmapNode(
            copy, id_array, node, reference_volume_node)
    finally:
        ctx.scene.RemoveNode(copy)
    if not ok or node.GetImageData() is None:
        raise InputError(f"{what}: cannot export segmentation '{label}' to a label map")
    _ensure_volume_display(ctx, node)
    return node


def labelmap_to_segmentation(ctx, labelmap_node, name: Optional[str] = None, node=None):
    """Import a label map as a segmentation (one segment per non-zero label value).

    The label map node is not modified. Returns the ``vtkMRMLSegmentationNode`` (new, or
    ``node`` with the segments added).
    """
    what = "label map"
    _check_node(labelmap_node, "vtkMRMLLabelMapVolumeNode", what, "label map")
    labelmap_from_node(labelmap_node, what)  # validates image data and geometry
    if node is None:
        node = ctx.add_node("vtkMRMLSegmentationNode",
                            name or f"{_node_label(labelmap_node)} segmentation")
    else:
        _check_node(node, "vtkMRMLSegmentationNode", name or "segmentation", "segmentation")
    if not ctx.logic("Segmentations").ImportLabelmapToSegmentationNode(labelmap_node, node):
        raise InputError(f"{what}: cannot import '{_node_label(labelmap_node)}' into a "
                         "segmentation")
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node
