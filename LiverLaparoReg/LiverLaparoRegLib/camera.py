"""Laparoscope camera helpers on top of the core ``PinholeCamera``.

The camera model itself (OpenCV pinhole + distortion ``(k1, k2, p1, p2[, k3])``, camera
frame x right, y down, z forward, mm) is :class:`SurgicalReg2D3DLib.cameras.PinholeCamera`.
This module only adds what the LiverLaparoReg inputs need:

- :func:`load_camera`: one entry point for a P2ILF camera JSON or an OpenCV-style 3x3
  intrinsics text file (+ optional distortion file, + the image size it lacks);
- :func:`as_camera`: accept a ``PinholeCamera`` or its ``to_dict()`` dictionary;
- :func:`check_image_size`: the frame and the camera must have the same size;
- :func:`without_distortion`: the same intrinsics with no distortion (how the P2ILF
  challenge's evaluation code projects: ``K`` only);
- :func:`frame_valid_camera`: a distortion model that folds over inside the frame
  (``SurgicalReg2D3DLib.cameras.distortion_fold_check``: the distorted radius stops
  growing before the frame corners, so parts of the frame have no ray and points far
  outside the view project back into it) is replaced by ``K`` only, with a note saying
  so. :func:`load_camera` applies it by default (``distortion="auto"``).

Why ``K`` only rather than a refit: the radial polynomial is only known to be right
inside its valid radius, the frame corners beyond the fold have no trustworthy model at
all, and the P2ILF challenge's own evaluation projects with ``K`` only; on the shipped
P2ILF case ``K`` only fits the annotations far better (``benchmarks/results/laparo_bench.md``).

About the shipped SciKit-Surgery intrinsics (``liver_sksurgery/liver/calib.left.intrinsics.txt``):
``fx = 1892``, ``fy = 945`` (about ``fx / 2``) and ``cy = 327``: the calibration was made
on 1920 x 540 half-height (one field of an interlaced) frames, while the shipped
``images/image0232.jpg`` is 1920 x 1080. :data:`SKSURGERY_SIZE` is therefore
``(1920, 540)``; to use the 1080-row frame, scale ``fy`` and ``cy`` by 2 (the demo uses a
640 x 480 camera for its synthetic case and never overlays a pose on image0232.jpg, which has
no pose).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from SurgicalReg2D3DLib.cameras import PinholeCamera, distortion_fold_check
from SurgicalReg2D3DLib.errors import FileReadError, GeometryError, InputError

PathLike = Union[str, Path]

#: (width, height) of the frames the SciKit-Surgery left-camera intrinsics belong to.
SKSURGERY_SIZE = (1920, 540)


#: ``distortion`` choices of :func:`load_camera` / :func:`frame_valid_camera`
DISTORTION_CHOICES = ("auto", "keep", "none")


def frame_valid_camera(camera: PinholeCamera, distortion: str = "auto"
                       ) -> Tuple[PinholeCamera, Optional[str]]:
    """``(camera to use, note or None)``.

    ``distortion``: ``"auto"`` keeps the distortion when it is valid over the whole
    frame and otherwise drops it (``K`` only) with a note; ``"keep"`` keeps it (with a
    note when it folds inside the frame); ``"none"`` drops it."""
    if distortion not in DISTORTION_CHOICES:
        raise InputError(f"camera distortion: expected one of {', '.join(DISTORTION_CHOICES)}, "
                         f"got {distortion!r}")
    if distortion == "none":
        return without_distortion(camera), None
    if not camera.has_distortion:
        return camera, None
    chk = distortion_fold_check(camera)
    if chk["valid"]:
        return camera, None
    what = (f"camera: the lens distortion folds over inside the {camera.width}x{camera.height} "
            f"frame (the distorted radius stops growing at normalised radius "
            f"{chk['fold_radius']:.3f}, so nothing projects farther than "
            f"{chk['max_reach_px']:.0f} px from the principal point, while the frame corners "
            f"lie at normalised radius up to {chk['corner_radius']:.3f})")
    if distortion == "keep":
        return camera, what + "; kept as asked: poses needing points beyond the fold are unreliable"
    return without_distortion(camera), what + "; using K only (no distortion) over the whole frame"


def load_camera(path: PathLike, width: Optional[int] = None, height: Optional[int] = None,
                distortion_path: Optional[PathLike] = None, distortion: str = "auto",
                notes: Optional[List[str]] = None) -> PinholeCamera:
    """A camera from a P2ILF camera JSON (``.json``) or a 3x3 intrinsics text file.

    Text files carry no image size: ``width`` and ``height`` are then required (the CLI
    takes them from the frame or ``--image-size``). ``distortion``: see
    :func:`frame_valid_camera` (default ``"auto"``: a model that folds over inside the
    frame is replaced by ``K`` only); its note, if any, is appended to ``notes``.
    Raises ``FileReadError`` / ``GeometryError`` whose message starts with ``camera``.
    """
    camera = _load_camera(path, width, height, distortion_path)
    camera, note = frame_valid_camera(camera, distortion)
    if note and notes is not None:
        notes.append(note)
    return camera


def _load_camera(path, width, height, distortion_path) -> PinholeCamera:
    if path is None:
        raise GeometryError("camera: intrinsics are missing (no camera file given)")
    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"camera: file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            return PinholeCamera.from_p2ilf_json(path)
        except InputError as exc:
            raise GeometryError(f"camera: invalid intrinsics in {path}: {exc}") from None
    if width is None or height is None:
        raise GeometryError(f"camera: the intrinsics text file {path} has no image size; "
                            f"give width and height (--image-size W H, or an image)")
    try:
        return PinholeCamera.from_opencv_text(path, distortion_path, width=int(width),
                                              height=int(height))
    except FileReadError:
        raise
    except InputError as exc:
        raise GeometryError(f"camera: invalid intrinsics in {path}: {exc}") from None


def as_camera(camera, name: str = "camera") -> PinholeCamera:
    """A :class:`PinholeCamera` from itself or from its ``to_dict()`` dictionary."""
    if camera is None:
        raise GeometryError(f"{name}: intrinsics are missing")
    if isinstance(camera, PinholeCamera):
        return camera
    if isinstance(camera, dict):
        try:
            return PinholeCamera.from_dict(camera)
        except (InputError, TypeError) as exc:
            raise GeometryError(f"{name}: invalid intrinsics ({exc})") from None
    raise GeometryError(f"{name}: expected a PinholeCamera, got {type(camera).__name__}")


def check_image_size(shape: Sequence[int], camera: PinholeCamera, name: str) -> None:
    """Raise ``InputError`` when an image ``(H, W[, C])`` does not match the camera size."""
    h, w = int(shape[0]), int(shape[1])
    if (h, w) != (camera.height, camera.width):
        raise InputError(f"{name}: image size {w}x{h} does not match the camera size "
                         f"{camera.width}x{camera.height}")


def check_mask(mask, camera: PinholeCamera, name: str = "mask") -> np.ndarray:
    """The liver mask ``(H, W)`` as bool (non-zero = liver), checked against the camera:
    2D, the camera's size, not empty (``InputError`` naming ``name``). A colour image
    ``(H, W, 3 or 4)`` (a mask painted and saved as RGB) counts where any channel is
    non-zero."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        mask = mask.max(axis=2)
    if mask.ndim != 2:
        raise InputError(f"{name}: expected a 2D (H, W) mask, got shape {mask.shape}")
    if mask.shape != (camera.height, camera.width):
        raise InputError(f"{name}: size {mask.shape[1]}x{mask.shape[0]} does not match the "
                         f"camera size {camera.width}x{camera.height}")
    if not mask.any():
        raise InputError(f"{name}: the liver mask is empty")
    return mask != 0


def without_distortion(camera: PinholeCamera) -> PinholeCamera:
    """The same pinhole intrinsics and size with no distortion coefficients."""
    return PinholeCamera(fx=camera.fx, fy=camera.fy, cx=camera.cx, cy=camera.cy,
                         width=camera.width, height=camera.height, skew=camera.skew)
