"""Sequence nodes <-> tracked 2D frames (e.g. a tracked ultrasound sweep or a video).

Where it sits in the flow: tracked frames ``(T, H, W[, C])`` and their
``image_to_reference`` matrices become an image sequence, a transform sequence and a
browser whose proxy volume sits under the proxy transform (:func:`frames_to_sequence`),
and are read back from such sequences, or ones loaded in Slicer
(:func:`frames_from_sequence`). Built on :mod:`.nodes_volumes` (frames are one-slice
volumes) and :mod:`.nodes_base` (transforms); public names are re-exported by
:mod:`.nodes`.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .errors import GeometryError, InputError
from .nodes_base import (_check_node, _node_label, _to_numpy, as_matrix4,
                         matrix_from_transform_node, numpy_to_vtk_matrix)
from .nodes_volumes import (_ensure_volume_display, _prepare_volume_array,
                            _vtk_image_from_array, image2d_from_node)


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

