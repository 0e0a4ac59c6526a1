"""MRML node <-> numpy/torch adapters (volumes, 2D images, models, transforms, markups,
sequences, label maps and segmentations).

The adapters live in :mod:`.nodes_base` (shared checks, 4x4 matrices, transforms),
:mod:`.nodes_volumes` (volumes, 2D images), :mod:`.nodes_models` (models, markups),
:mod:`.nodes_sequences` (tracked frames) and :mod:`.nodes_segmentations` (label maps,
segmentations); this module re-exports them all: ``from SurgicalReg2D3DLib.nodes import
...`` is the public path (``docs/architecture.md``, *Core API*).

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

from .nodes_base import (LPS_TO_RAS, as_matrix4, matrix_from_transform_node,
                         matrix_to_transform_node, numpy_to_vtk_matrix, vtk_matrix_to_numpy,
                         world_matrix)
from .nodes_models import (check_mesh, markups_labels, model_from_node, model_to_node,
                           points_from_markups, points_to_markups, polydata_from_arrays)
from .nodes_segmentations import (labelmap_from_node, labelmap_to_segmentation,
                                  segment_ids, segmentation_to_labelmap)
from .nodes_sequences import frames_from_sequence, frames_to_sequence, sequence_items
from .nodes_volumes import (VolumeData, image2d_from_node, image2d_to_node, volume_from_node,
                            volume_to_node)

__all__ = [
    "LPS_TO_RAS", "VolumeData", "as_matrix4", "check_mesh", "frames_from_sequence",
    "frames_to_sequence", "image2d_from_node", "image2d_to_node", "labelmap_from_node",
    "labelmap_to_segmentation", "markups_labels", "matrix_from_transform_node",
    "matrix_to_transform_node", "model_from_node", "model_to_node", "numpy_to_vtk_matrix",
    "points_from_markups", "points_to_markups", "polydata_from_arrays", "segment_ids",
    "segmentation_to_labelmap", "sequence_items", "volume_from_node", "volume_to_node",
    "vtk_matrix_to_numpy", "world_matrix",
]
