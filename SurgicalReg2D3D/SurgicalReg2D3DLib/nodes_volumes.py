"""Volume and 2D image nodes <-> numpy/torch (:class:`VolumeData`).

Where it sits in the flow: reading, a scalar or vector volume node becomes a
:class:`VolumeData` (voxels ``[k, j, i]`` and ``ijk_to_ras``, a copy) after its geometry
and voxels are checked; a 2D image is a one-slice volume (:func:`image2d_from_node`).
Writing, an array or tensor and its ``ijk_to_ras`` become a new (or the caller's) volume
node with a display node. Built on :mod:`.nodes_base`; :mod:`.nodes_sequences` (frames)
and :mod:`.nodes_segmentations` (label maps) build on it. Public names are re-exported by
:mod:`.nodes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .errors import GeometryError, InputError
from .nodes_base import (LPS_TO_RAS, _check_node, _decompose_ijk_to_ras, _is_orthonormal,
                         _node_label, _to_numpy, as_matrix4, numpy_to_vtk_matrix,
                         vtk_matrix_to_numpy)


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

