"""What the two kinds of learned model share (:mod:`.infer` for the Stage I point
matcher, :mod:`.landmarks_infer` for the landmark model): the input checks (a liver-sized
mesh, the mask against the frame), the frame and mask at the network's grid, the result
class (:class:`LearnedResult`: a :class:`..result.LaparoResult` with the predicted
correspondences, the Stage I pose and the quality), its assembly (Stage II, metrics) and
the uncalibrated quality. Imports neither inference module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from ..result import LaparoResult, evaluate

#: a liver's bounding-box extent (mm); outside it the mesh units are probably wrong
LIVER_EXTENT_MM = (60.0, 500.0)


@dataclass
class LearnedResult(LaparoResult):
    """A :class:`..result.LaparoResult` plus the predicted correspondences and quality."""

    correspondences: List[dict] = field(default_factory=list)
    quality: Optional[object] = None
    stage1_model_to_camera: Optional[np.ndarray] = None

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["correspondences"] = self.correspondences
        if self.stage1_model_to_camera is not None:
            d["stage1_model_to_camera"] = np.asarray(self.stage1_model_to_camera).tolist()
        if self.quality is not None:
            d["quality"] = self.quality.to_dict()
        return d


def check_liver_scale(vertices, name: str = "mesh") -> None:
    """``GeometryError`` when the mesh is far larger or smaller than a liver in mm."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or not np.isfinite(v).all():
        raise InputError(f"{name}: vertices must be a finite (V, 3) array")
    ext = float(np.max(v.max(0) - v.min(0)))
    lo, hi = LIVER_EXTENT_MM
    if not lo <= ext <= hi:
        hint = (" (coordinates in metres? multiply by 1000)" if ext < lo / 100 else
                " (coordinates in micrometres or a scene much larger than a liver?)"
                if ext > hi else "")
        raise GeometryError(f"{name}: bounding-box extent {ext:.4g} mm is not a liver's "
                            f"({lo:g}-{hi:g} mm){hint}")


def network_image(image, camera) -> np.ndarray:
    """``(3, NET_H, NET_W)`` float32 RGB in [0, 1] from an ``(H, W[, 3])`` frame."""
    import cv2  # noqa: PLC0415

    from .data import NET_H, NET_W  # noqa: PLC0415

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    if img.ndim != 3 or img.shape[2] < 3:
        raise InputError(f"image: expected (H, W) or (H, W, 3), got shape {img.shape}")
    img = img[..., :3].astype(np.float32)
    if img.max() > 1.5:
        img = img / 255.0
    small = cv2.resize(img, (NET_W, NET_H), interpolation=cv2.INTER_AREA)
    return np.transpose(np.clip(small, 0, 1), (2, 0, 1)).copy()


def network_mask(mask: np.ndarray) -> np.ndarray:
    import cv2  # noqa: PLC0415

    from .data import NET_H, NET_W  # noqa: PLC0415

    return (cv2.resize(mask.astype(np.float32), (NET_W, NET_H),
                       interpolation=cv2.INTER_AREA) >= 0.5).astype(np.float32)


def quality_of(n_matches: int, n_inliers: int, dice: Optional[float], reproj_px: float,
               threshold_px: float):
    """A simple, honest, UNCALIBRATED quality: verdict from inliers and mask Dice."""
    from SurgicalReg2D3DLib.quality import Quality  # noqa: PLC0415

    ratio = n_inliers / max(1, n_matches)
    reasons = []
    verdict = "ok"
    if n_inliers < 8:
        reasons.append(f"only {n_inliers} inlier correspondences")
        verdict = "failed"
    if dice is not None and dice < 0.5:
        reasons.append(f"rendered mask Dice {dice:.2f} < 0.5")
        verdict = "failed"
    elif dice is not None and dice < 0.85 and verdict == "ok":
        reasons.append(f"rendered mask Dice {dice:.2f} < 0.85")
        verdict = "doubtful"
    if ratio < 0.3 and verdict == "ok":
        reasons.append(f"inlier ratio {ratio:.2f} < 0.3")
        verdict = "doubtful"
    reasons.append("uncalibrated (learned method's own heuristic)")
    return Quality(verdict=verdict, estimate={}, interval={}, reasons=reasons,
                   signals={"matches": n_matches, "inliers": n_inliers, "inlier_ratio": ratio,
                            "mask_dice": dice, "inlier_reprojection_px": reproj_px,
                            "ransac_threshold_px": threshold_px})


def assemble_result(mesh, camera, T, T1, corr, inl, mask, timings, history, minfo, info,
                    reproj_px: float, threshold_px: float, nonrigid: bool = False,
                    structures=(), ground_truth=None, progress=None,
                    cancel=None) -> LearnedResult:
    """The :class:`LearnedResult` of a learned registration (both model kinds): pose ``T``
    (Stage I pose ``T1``), correspondences ``corr`` (``inl`` the inliers), the Stage II
    deformation with ``nonrigid``, the metrics (``evaluate``; Stage I errors with
    ``ground_truth``; ``minfo`` / the model ``info`` under ``"learned"``) and the
    uncalibrated :func:`quality_of`. The caller adds what is specific to its kind."""
    from SurgicalReg2D3DLib.progress import sub_progress  # noqa: PLC0415

    from ..mesh import MeshData  # noqa: PLC0415

    res = LearnedResult(np.asarray(T, float), "learned", timings=timings, history=list(history))
    res.stage1_model_to_camera = T1
    res.correspondences = corr
    if nonrigid:
        from .stage2 import deform_stage2  # noqa: PLC0415

        t1 = time.perf_counter()
        d = deform_stage2(mesh, camera, res.model_to_camera, mask=mask,
                          pairs=[c for c in corr if c.get("inlier")],
                          progress=sub_progress(progress, 0.8, 1.0), cancel=cancel)
        res.deformed_vertices = d.vertices
        res.deformation = d
        res.deformed_structures = [MeshData(d.apply(s.vertices), np.array(s.faces, copy=True),
                                            s.name) for s in structures or ()]
        res.timings["nonrigid_s"] = time.perf_counter() - t1
    res.metrics = evaluate(mesh, camera, res.model_to_camera, mask, None, None, ground_truth,
                           res.deformed_vertices)
    if ground_truth is not None:
        from .. import metrics as lmetrics  # noqa: PLC0415

        res.metrics["stage1"] = lmetrics.pose_errors(T1, ground_truth, mesh.vertices.mean(0))
    res.metrics["learned"] = dict(minfo, inliers=len(inl), model=info.get("path"))
    res.quality = quality_of(len(corr), len(inl), res.metrics.get("mask_dice"), reproj_px,
                             threshold_px)
    return res


def check_frame_inputs(mesh, camera, image=None, mask=None):
    """``(mesh, camera, mask)`` of a learned registration, checked before any work: the
    mesh's scale (a liver in mm) and validity, the camera, the image's size against the
    camera, the mask (when given) against the frame."""
    from ..camera import as_camera, check_image_size, check_mask  # noqa: PLC0415
    from ..mesh import validate_mesh  # noqa: PLC0415

    check_liver_scale(getattr(mesh, "vertices", None), "mesh")
    mesh = validate_mesh(mesh, "mesh")
    camera = as_camera(camera)
    if image is not None:
        check_image_size(np.shape(image), camera, "image")
    if mask is not None:
        mask = check_mask(mask, camera)
    return mesh, camera, mask
