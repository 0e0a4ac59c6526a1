"""What the learned FluoroReg register paths share: the regressor (loading, start poses),
carrying view 0's start to the other views by the nominal C-arm motion, the method names
and the uncalibrated quality of a learned result.

Used by :mod:`.register` (regressor + classic refinement, learned similarity) and
:mod:`.ppc_register` (learned PPC updates); it imports neither, so the two register paths
do not import each other.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib.errors import InputError

DEFAULT_REFINEMENT = "ppc"
LEARNED_PPC = "learned-ppc"  # method name: learned PPC updates only (needs a ppc model)


def load_regressor(model, hu=None, ijk_to_ras=None, camera=None, force: bool = False):
    """``(data, net)`` of a model (path or loaded dict), checked against CT and camera."""
    from .model_file import check_model_matches, load_model_file  # noqa: PLC0415
    from .regressor import build_from_model  # noqa: PLC0415

    data = model if isinstance(model, dict) else load_model_file(model)
    if data["kind"] != "regressor":
        raise InputError(f"model: expected a pose regressor, got kind {data['kind']!r}")
    if camera is not None and ijk_to_ras is not None:
        check_model_matches(data, hu, ijk_to_ras, camera, force=force)
    return data, build_from_model(data)


def quality_of(result, start_pose: np.ndarray, volume_center_ras: np.ndarray):
    """An uncalibrated quality value (``SurgicalReg2D3DLib.quality``) of a result:
    signals = final similarity and how far the refinement moved the regressor's start."""
    from SurgicalReg2D3DLib.quality import Quality  # noqa: PLC0415

    c = np.r_[volume_center_ras, 1.0]
    moved = float(np.linalg.norm((result.ct_to_camera @ c - start_pose @ c)[:3]))
    sim = float(result.similarity) if result.similarity is not None else float("nan")
    reasons = ["uncalibrated: verdict from the final similarity only"]
    verdict = "ok" if np.isfinite(sim) and sim >= 0.8 else "doubtful"
    if verdict != "ok":
        reasons.append(f"final similarity {sim:.3f} below 0.8")
    return Quality(verdict=verdict, reasons=reasons if verdict != "ok" else [],
                   signals={"similarity": sim, "refinement_moved_mm": moved,
                            "calibrated": False})


def carry_to_views(start0, nominal_views: Optional[Sequence[np.ndarray]],
                   n_views: int) -> List[np.ndarray]:
    """View 0's ``ct_to_camera`` ``start0`` carried to every view by the nominal C-arm
    motion (``nominal_k @ inv(nominal_0)``); one view: ``[start0]``."""
    from ..refine import check_pose  # noqa: PLC0415

    start0 = np.asarray(start0, float)
    if n_views == 1:
        return [start0]
    if nominal_views is None or len(nominal_views) != n_views:
        raise InputError(f"nominal poses: {n_views} X-ray images need one nominal "
                         "ct_to_camera per view (they give the C-arm motion between views)")
    noms = [check_pose(p, f"nominal ct_to_camera of view {k + 1}")
            for k, p in enumerate(nominal_views)]
    inv0 = np.linalg.inv(noms[0])
    return [n @ inv0 @ start0 for n in noms]


def regressor_starts(hu, ijk_to_ras, images: Sequence, cameras: Sequence, model,
                     nominal_views: Optional[Sequence[np.ndarray]] = None,
                     force: bool = False) -> List[np.ndarray]:
    """The regressor's start ``ct_to_camera`` of every view: predicted from view 0, carried
    to the other views by the nominal C-arm motion (:func:`carry_to_views`). The model is
    checked against ``hu`` / ``ijk_to_ras`` and camera 0 (``force``: accept another CT or
    detector)."""
    from .regressor import predict_pose  # noqa: PLC0415

    if len(images) > 1 and (nominal_views is None or len(nominal_views) != len(images)):
        raise InputError(f"nominal poses: {len(images)} X-ray images need one nominal "
                         "ct_to_camera per view (they give the C-arm motion between views)")
    data, net = load_regressor(model, hu, ijk_to_ras, cameras[0], force=force)
    start = predict_pose(data, net, images[0], cameras[0])
    return carry_to_views(start, nominal_views, len(images))
