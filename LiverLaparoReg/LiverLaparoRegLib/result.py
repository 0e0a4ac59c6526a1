"""The result of a LiverLaparoReg registration and the metrics of a pose.

:class:`LaparoResult` is what every method returns through :func:`.logic.register`
(``model_to_camera`` maps model mm to camera mm, OpenCV frame); :func:`evaluate`
computes the metrics of a pose (P2ILF reprojection, mask Dice, pose errors against a
ground truth); :func:`check_pose` validates a 4x4. Shared by the method registry
(:mod:`.methods`), the entry points (:mod:`.logic`) and the learned methods
(:mod:`.learned`), none of which this module imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from . import metrics as lmetrics
from .mesh import MeshData


@dataclass
class LaparoResult:
    """Registration result; ``model_to_camera`` maps model mm to camera mm (OpenCV)."""

    model_to_camera: np.ndarray
    method: str
    metrics: Dict[str, object] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    history: List[float] = field(default_factory=list)
    deformed_vertices: Optional[np.ndarray] = None     # (V, 3) model frame, when non-rigid
    #: the non-rigid ``nonrigid.Deformation``; ``deformation.apply(points)`` moves vessels
    #: and tumours (model frame) with the liver
    deformation: Optional[object] = None
    #: deformed copies (model frame) of the extra structures (vessels, tumours) given to
    #: :func:`.logic.register`, in the same order, when non-rigid; inputs are not modified
    deformed_structures: List[MeshData] = field(default_factory=list)
    #: node level only (:func:`.logic.register_nodes`): the model nodes holding them
    structure_nodes: list = field(default_factory=list)
    #: trust value (``SurgicalReg2D3DLib.quality.Quality``, :mod:`.quality`) when asked for
    quality: Optional[object] = None
    #: the restarts :func:`.quality.assess_and_retry` ran (attempts, chosen), or None
    retry: Optional[dict] = None

    def to_dict(self) -> dict:
        out = {"model_to_camera": np.asarray(self.model_to_camera).tolist(),
               "method": self.method, "metrics": self.metrics, "timing": self.timings}
        if self.quality is not None:
            out["quality"] = self.quality.to_dict()
        if self.retry:
            out["retry"] = self.retry
        return out


def check_pose(T, name: str) -> np.ndarray:
    """``T`` as a float64 4x4 rigid matrix; a matrix that is not one is a GeometryError
    (an InputError from the check passes through)."""
    from SurgicalReg2D3DLib.poses import check_rigid  # noqa: PLC0415

    try:
        return check_rigid(np.asarray(T, dtype=np.float64), name).cpu().numpy()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise GeometryError(f"{name}: not a 4x4 rigid matrix ({exc})") from None


def evaluate(mesh: MeshData, camera, model_to_camera, mask=None, contours2d=None,
             contours3d=None, ground_truth=None, deformed_vertices=None) -> dict:
    """Metrics of a pose (see :func:`.logic.register`)."""
    from .raster import render_mask  # noqa: PLC0415

    verts = mesh.vertices if deformed_vertices is None else deformed_vertices
    out: Dict[str, object] = {}
    if contours2d and contours3d:
        out["reprojection"] = lmetrics.reprojection_errors(contours2d, contours3d, verts,
                                                           model_to_camera, camera)
        # the challenge's own number (K-only projection, per pair, see metrics.challenge_rpe)
        rpe = lmetrics.challenge_rpe(contours2d, contours3d, verts, model_to_camera, camera)
        out["p2ilf_task2_rpe_px"] = rpe["rpe_px"]
        out["p2ilf_task2_rpe"] = rpe
    if mask is not None:
        scale = max(1.0, camera.width / 480.0)      # evaluate at <= 480 px wide
        cam = camera.scaled(scale) if scale > 1 else camera
        rendered = render_mask(verts, mesh.faces, model_to_camera, cam)[0].numpy()
        import torch  # noqa: PLC0415
        from .silhouette import downsample_mask  # noqa: PLC0415

        m = downsample_mask(torch.as_tensor(mask), cam.height, cam.width).numpy() >= 0.5
        out["mask_dice"] = lmetrics.mask_dice(rendered, m)
        out["mask_dice_size"] = [cam.width, cam.height]
    if ground_truth is not None:
        out.update(lmetrics.pose_errors(model_to_camera, ground_truth, mesh.vertices.mean(0)))
    return out
