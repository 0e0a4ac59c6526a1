"""FluoroReg checks before and after a registration: refuse what cannot be registered, and
never report a result that ended worse than it started as a success.

Before (:func:`check_start`), on plain numbers, no rendering:

- the CT geometry follows the core rule (:func:`SurgicalReg2D3DLib.checks.check_index_matrix`:
  spacing in ``(0, 1000]`` mm, orthonormal direction, finite origin);
- each camera's principal point lies within one image size of the image;
- each start pose has a translation below :data:`MAX_TRANSLATION_MM`;
- the X-ray source is outside the CT box and the CT is in front of it;
- the CT box covers at least :data:`MIN_COVERAGE` of each X-ray image: a grid of
  32 x 32 detector rays is intersected with the CT's bounding box (in voxel index space,
  so any CT orientation works).

After (:func:`start_and_end_similarity`): the similarity of the start pose and of the
result pose, measured in the same way (full resolution, mean over views); a result whose
similarity is lower than the start's is a ``failed`` quality
(:func:`SurgicalReg2D3DLib.checks.no_progress_quality`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import GeometryError, InputError

from .geometry import camera_parameters

#: start poses further than this from the source are not a C-arm set-up (mm)
MAX_TRANSLATION_MM = 1.0e4
#: share of the X-ray image that the CT's projection must cover at the start pose
MIN_COVERAGE = 0.01
#: largest number of DRR samples per ray accepted (the default is 1.5 x the CT size)
MAX_N_SAMPLES = 10000
#: largest number of iterations per pyramid level accepted
MAX_ITERATIONS = 10000


def check_options(options: dict) -> None:
    """InputError for out-of-range ``n_samples`` / ``iterations`` (0 is not "default")."""
    for key, top in (("n_samples", MAX_N_SAMPLES), ("iterations", MAX_ITERATIONS)):
        if key in options and options[key] is not None:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or not 1 <= int(value) <= top:
                raise InputError(f"{key}: must be an integer from 1 to {top}, got {value!r}")


def _box_hits(ijk_to_camera: np.ndarray, shape_kji: Sequence[int], camera,
              grid: int = 32) -> Tuple[float, bool]:
    """(share of a grid of detector rays that cross the CT box in front of the source,
    whether the source is inside the box)."""
    p = camera_parameters(camera)
    us = (np.arange(grid) + 0.5) / grid * p.width - 0.5
    vs = (np.arange(grid) + 0.5) / grid * p.height - 0.5
    uu, vv = np.meshgrid(us, vs)
    dirs_cam = np.stack([(uu.ravel() - p.cx) * p.sx, (vv.ravel() - p.cy) * p.sy,
                         np.full(uu.size, p.f)], axis=1)
    camera_to_ijk = np.linalg.inv(ijk_to_camera)
    src = camera_to_ijk[:3, 3]
    dirs = dirs_cam @ camera_to_ijk[:3, :3].T
    k, j, i = shape_kji
    low = np.array([-0.5, -0.5, -0.5])
    high = np.array([i - 0.5, j - 0.5, k - 0.5])
    inside_src = bool(np.all(src > low) and np.all(src < high))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t1 = (low - src) * inv
        t2 = (high - src) * inv
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (tmax > np.maximum(tmin, 0.0))
    return float(hit.mean()), inside_src


def check_start(shape_kji: Sequence[int], ijk_to_ras: np.ndarray, cameras: Sequence,
                poses: Sequence[np.ndarray], names: Optional[List[str]] = None) -> None:
    """Refuse a start that cannot be registered (see the module docstring).

    ``poses[k]``: ``ct_to_camera`` of view ``k`` (already checked rigid); ``names[k]``:
    the view's name in messages.
    """
    from SurgicalReg2D3DLib.checks import check_index_matrix, check_principal_point  # noqa

    check_index_matrix(ijk_to_ras, "CT volume")
    n = len(cameras)
    names = names or (["X-ray image"] if n == 1 else [f"X-ray image {k + 1}" for k in range(n)])
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    k, j, i = (int(s) for s in shape_kji)
    corners = np.array([[a, b, c, 1.0] for a in (0, i - 1) for b in (0, j - 1)
                        for c in (0, k - 1)]) @ m.T
    for cam, pose, name in zip(cameras, poses, names):
        p = camera_parameters(cam)
        check_principal_point(p.cx, p.cy, p.width, p.height, f"X-ray geometry of {name.lower()}")
        pose = np.asarray(pose, dtype=np.float64)
        dist = float(np.linalg.norm(pose[:3, 3]))
        if not np.isfinite(dist) or dist > MAX_TRANSLATION_MM:
            raise GeometryError(f"initial ct_to_camera: translation of {dist:g} mm is "
                                f"implausible for a C-arm (more than {MAX_TRANSLATION_MM:g} "
                                "mm from the X-ray source)")
        z = (corners @ pose.T)[:, 2]
        if np.all(z <= 0):
            raise InputError(f"CT volume: lies behind the X-ray source of {name.lower()} at "
                             "the start pose (check the initial ct_to_camera: +z of the "
                             "camera points from the source to the detector)")
        coverage, inside = _box_hits(pose @ m, (k, j, i), cam)
        if inside:
            raise InputError(f"CT volume: the X-ray source of {name.lower()} lies inside the "
                             "CT volume at the start pose (check the initial ct_to_camera)")
        if coverage < MIN_COVERAGE:
            raise InputError(f"CT volume: does not project onto {name.lower()} at the start "
                             f"pose (covers {100 * coverage:.1f} % of the image, need at "
                             f"least {100 * MIN_COVERAGE:g} %); check the initial pose, the "
                             "X-ray geometry (principal point, pixel spacing) and the CT "
                             "spacing; nothing was registered")


def similarity_measure(method: str) -> str:
    """The similarity a method is judged by: ``"ncc"`` for the NCC methods, else
    ``"gradncc"``."""
    name = str(method).lower()
    return "ncc" if name.startswith("ncc") or name.endswith("+ncc") else "gradncc"


def start_and_end_similarity(volume, views, init: np.ndarray, final: np.ndarray,
                             measure: str, drr_method: str = "trilinear",
                             n_samples: Optional[int] = None) -> Tuple[float, float]:
    """Mean similarity over views at the start and at the result pose (full resolution)."""
    import torch  # noqa: PLC0415

    from .drr import render_drr  # noqa: PLC0415
    from .refine import check_xray_image, image_similarity  # noqa: PLC0415

    out = []
    with torch.no_grad():
        for pose in (init, final):
            sims = []
            for v in views:
                pose_k = np.asarray(v.camera0_to_view, dtype=np.float64) @ pose
                drr = render_drr(volume, v.camera, pose_k, method=drr_method,
                                 n_samples=n_samples)
                img = v.image if isinstance(v.image, torch.Tensor) else check_xray_image(v.image)
                sims.append(float(image_similarity(drr, img.to(drr.device), measure)[0]))
            out.append(float(np.mean(sims)))
    return out[0], out[1]


def method_options(args) -> dict:
    """The method options of a parsed command line (``--levels``, ``--iterations``,
    ``--n-samples``, ``--drr-method``), checked: an empty level list or a count outside
    ``1..MAX`` is a named error."""
    opts = {}
    if getattr(args, "levels", None) is not None:
        if not args.levels:
            raise InputError("--levels: expected downsampling factors such as 4,2,1, got "
                             "an empty list")
        opts["levels"] = args.levels
    for key, option, top in (("iterations", "--iterations", MAX_ITERATIONS),
                             ("n_samples", "--n-samples", MAX_N_SAMPLES)):
        value = getattr(args, key, None)
        if value is None:
            continue
        if not 1 <= value <= top:  # 0 is not "default": leave the option out for that
            raise InputError(f"{option}: must be from 1 to {top}, got {value}")
        opts[key] = value
    if getattr(args, "drr_method", None):
        opts["drr_method"] = args.drr_method
    return opts
