"""Label map and segmentation nodes <-> integer label volumes.

Where it sits in the flow: a label map (or whole-number scalar volume) is read as an
int32 :class:`~.nodes_volumes.VolumeData`, optionally keeping some labels only
(:func:`labelmap_from_node`); segments of a segmentation are rasterised on a reference
volume's grid (:func:`segmentation_to_labelmap`, the one adapter that applies a parent
transform) and label maps are imported as segmentations. Built on :mod:`.nodes_volumes`;
public names are re-exported by :mod:`.nodes`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .errors import InputError
from .nodes_base import _check_node, _node_label, _to_numpy
from .nodes_volumes import (VolumeData, _check_volume_geometry, _ensure_volume_display,
                            _image_array, volume_from_node)


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
