"""Node-level entry points of the learned methods, for the Slicer module (GUI): the same
functions the command line uses (:func:`~.train.train_model`,
:func:`~.register.register_with_model`), with MRML nodes in and out.

- :func:`train_for_nodes`: CT volume node + camera + nominal transform node -> model file
  (``progress``/``cancel`` for the GUI's progress bar, time estimate and Cancel button;
  ``resume`` for the Resume button);
- :func:`register_nodes_from_model`: CT node + X-ray node(s) + model file -> output
  transform node (``ct_to_camera`` of view 0);
- :func:`starts_for_nodes`: the regressor's start ``ct_to_camera`` per view, which the
  module's "Register from nominal view" hands to the classic node registration
  (``logic.register_nodes``: DRR node, quality, "apply a failed result?" question), as
  ``surgreg fluoro register --model`` does with ``register_arrays``.

Input nodes are never modified.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError


def _ct(ct_node):
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    if ct_node is None:
        raise InputError("CT volume: no volume selected")
    ct = nodes.volume_from_node(ct_node, name="CT volume")
    return ct.array.astype(np.float32), ct.ijk_to_ras


def _pose(node_or_matrix, name: str) -> np.ndarray:
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    if node_or_matrix is None:
        raise InputError(f"{name}: no transform selected")
    if isinstance(node_or_matrix, (np.ndarray, list)):
        return np.asarray(node_or_matrix, float)
    return nodes.matrix_from_transform_node(node_or_matrix, name=name)


def train_for_nodes(ct_node, camera, nominal, out_path, config=None, resume=None,
                    progress=None, cancel=None, log=None) -> dict:
    """Train a model for this patient (``config``: a :class:`~.train.TrainConfig`;
    ``nominal``: a linear transform node or 4x4 holding the nominal ``ct_to_camera``)."""
    from .train import TrainConfig, train_model  # noqa: PLC0415

    hu, m = _ct(ct_node)
    cfg = config or TrainConfig()
    if not cfg.command:
        cfg.command = "FluoroReg module: Train for this patient (train_for_nodes)"
    return train_model(hu, m, camera, _pose(nominal, "nominal transform"), cfg, out_path,
                       resume=resume, progress=progress, cancel=cancel, log=log)


def _images(xray_nodes):
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    if not xray_nodes:
        raise InputError("X-ray images: no X-ray image selected")
    images = []
    for k, node in enumerate(xray_nodes):
        name = "X-ray image" if len(xray_nodes) == 1 else f"X-ray image {k + 1}"
        if node is None:
            raise InputError(f"{name}: no image selected")
        img, _ = nodes.image2d_from_node(node, name=name)
        images.append(np.asarray(img, np.float32))
    return images


def starts_for_nodes(ct_node, xray_nodes: Sequence, cameras: Sequence, model,
                     nominal_views=None, force: bool = False) -> list:
    """The regressor's start ``ct_to_camera`` (4x4 arrays) of every X-ray node
    (:func:`~.register.regressor_starts`; ``nominal_views``: transform nodes or 4x4s, one
    per view, needed with two views)."""
    from .register import regressor_starts  # noqa: PLC0415

    hu, m = _ct(ct_node)
    images = _images(xray_nodes)
    if len(cameras) != len(images):
        raise InputError(f"X-ray geometry: {len(images)} X-ray images but {len(cameras)} "
                         "geometries")
    noms = None if nominal_views is None else [_pose(n, "nominal transform") for n in nominal_views]
    return regressor_starts(hu, m, images, list(cameras), model, noms, force=force)


def register_nodes_from_model(ctx, ct_node, xray_nodes: Sequence, cameras: Sequence, model,
                              method: Optional[str] = None, nominal_views=None,
                              output_transform_node=None, force: bool = False,
                              progress=None, cancel=None, **options):
    """Register from the nominal view; writes ``output_transform_node`` (created when
    None) and returns the result (``result.outputs["output_transform_node"]``)."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    from .register import DEFAULT_REFINEMENT, register_with_model  # noqa: PLC0415

    hu, m = _ct(ct_node)
    images = _images(xray_nodes)
    noms = None if nominal_views is None else [_pose(n, "nominal transform") for n in nominal_views]
    result = register_with_model(hu, m, images, list(cameras), model,
                                 method=method or DEFAULT_REFINEMENT, nominal_views=noms,
                                 force=force, progress=progress, cancel=cancel, **options)
    out = nodes.matrix_to_transform_node(ctx, result.ct_to_camera, "FluoroReg ct_to_camera",
                                         node=output_transform_node)
    result.outputs["output_transform_node"] = out.GetID()
    return result
