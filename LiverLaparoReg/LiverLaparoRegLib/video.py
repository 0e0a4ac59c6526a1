"""Laparoscopic video as a Sequence: load, register every frame temporally, follow live.

- :func:`read_video`: a video file (anything OpenCV reads: .mp4, .avi, ...) or a folder of
  frame images (sorted by name) -> ``(T, H, W, 3)`` uint8 RGB frames.
- :func:`load_video_to_scene`: the frames as a browsable sequence (a sequence browser with
  the proxy frame shown as Slicer shows a loaded 2D image), the camera stored on the
  sequence node (``node_inputs.set_frame_camera``).
- :func:`register_frames`: each frame registered like the US frames: frame ``t`` starts from
  frame ``t - 1``'s result (frame 0 from ``init``); a frame without a usable mask is skipped
  (listed with its reason) and the previous pose is carried over, never reported as a result.
- :func:`register_video_nodes`: the same on nodes; the results are a transform sequence
  (``model_to_camera`` per frame) synchronised with the browser.
- :class:`LiveVideoRegistration`: live mode, one frame at a time as the browser plays; keeps
  the last good pose when a frame fails.

Frames: ``model`` = the mesh file's coordinates; ``camera`` = OpenCV laparoscope frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from SurgicalReg2D3DLib.errors import FileReadError, InputError
from SurgicalReg2D3DLib.progress import check_cancel, report

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Geometry of a frame as Slicer shows a loaded 2D image: pixel (col, row) -> RAS.
PIXEL_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_video(path, max_frames: Optional[int] = None, step: int = 1) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 RGB of a video file or a folder of images."""
    import cv2  # noqa: PLC0415

    if step < 1 or (max_frames is not None and max_frames < 1):
        raise InputError(f"video: step and max_frames must be >= 1, got {step}, {max_frames}")
    p = Path(path)
    frames = []
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileReadError(f"video: no image files ({', '.join(IMAGE_SUFFIXES)}) in {p}")
        for f in files[::step]:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise FileReadError(f"video: cannot read frame image {f}")
            frames.append(img[..., ::-1])
            if max_frames is not None and len(frames) >= max_frames:
                break
    elif p.is_file():
        cap = cv2.VideoCapture(str(p))
        try:
            k = 0
            while True:
                ok, img = cap.read()
                if not ok:
                    break
                if k % step == 0:
                    frames.append(img[..., ::-1])
                    if max_frames is not None and len(frames) >= max_frames:
                        break
                k += 1
        finally:
            cap.release()
        if not frames:
            raise FileReadError(f"video: no frame could be read from {p} (not a video file, "
                                "or a codec OpenCV lacks)")
    else:
        raise FileReadError(f"video: not found: {p}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"video: frames have different sizes {sorted(shapes)}")
    return np.ascontiguousarray(np.stack(frames))


def load_video_to_scene(ctx, path_or_frames, camera=None, name: str = "LaparoVideo",
                        max_frames: Optional[int] = None, step: int = 1):
    """Load a video (path) or frames ``(T, H, W[, 3])`` as a sequence with a browser.

    Returns ``(image_sequence, browser)``. With ``camera``, it is stored on the sequence node.
    """
    from SurgicalReg2D3DLib.nodes import frames_to_sequence  # noqa: PLC0415

    frames = (read_video(path_or_frames, max_frames, step)
              if isinstance(path_or_frames, (str, Path)) else np.asarray(path_or_frames))
    if camera is not None:
        from .camera import check_image_size  # noqa: PLC0415

        check_image_size(frames.shape[1:3], camera, "video frame")
    mats = np.repeat(PIXEL_TO_RAS[None], len(frames), axis=0)
    image_seq, _geometry, browser = frames_to_sequence(ctx, frames, mats, name)
    if camera is not None:
        from .node_inputs import set_frame_camera  # noqa: PLC0415

        set_frame_camera(image_seq, camera)
    return image_seq, browser


@dataclass
class VideoRegistration:
    """Per-frame results of a video: ``poses[t]`` is frame ``t``'s ``model_to_camera`` (the
    carried-over pose for skipped frames), ``results[t]`` its ``LaparoResult`` or None,
    ``skipped`` the ``(frame, reason)`` pairs."""

    poses: List[np.ndarray] = field(default_factory=list)
    results: List[object] = field(default_factory=list)
    skipped: List[Tuple[int, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        frames = []
        for t, (T, r) in enumerate(zip(self.poses, self.results)):
            item = {"index": t, "model_to_camera": np.asarray(T).tolist(),
                    "registered": r is not None}
            if r is not None:
                item["metrics"] = {k: v for k, v in r.metrics.items() if k != "reprojection"}
                q = getattr(r, "quality", None)
                if q is not None:
                    item["quality"] = q.to_dict() if hasattr(q, "to_dict") else q
            frames.append(item)
        return {"frames": frames, "skipped": [{"index": t, "reason": why}
                                              for t, why in self.skipped]}


class LiveVideoRegistration:
    """Temporal registration, one frame at a time (:meth:`update`).

    Each frame starts from the last good pose. A frame that cannot be registered (no mask,
    empty mask, an error in the method) keeps the last good pose and says why
    (``last_reason``)."""

    def __init__(self, mesh, camera, init, method: str = "silhouette"):
        from .result import check_pose  # noqa: PLC0415

        self.mesh = mesh
        self.camera = camera
        self.method = method
        self.pose = check_pose(init, "initial pose")
        self.last_reason: Optional[str] = None

    def update(self, mask: Optional[np.ndarray], cancel=None):
        """Register one frame's liver ``mask``; returns its ``LaparoResult`` or None."""
        from .logic import register  # noqa: PLC0415

        self.last_reason = None
        if mask is None or not np.asarray(mask).any():
            self.last_reason = "no liver mask for this frame"
            return None
        try:
            result = register(self.mesh, self.camera, mask=mask, init=self.pose,
                              method=self.method, cancel=cancel)
        except InputError as exc:
            self.last_reason = str(exc)
            return None
        q = getattr(result, "quality", None)
        if q is not None and getattr(q, "verdict", "ok") == "failed":
            self.last_reason = "registration failed its quality check; last good pose kept"
            return result
        self.pose = np.asarray(result.model_to_camera, dtype=np.float64)
        return result


def register_frames(mesh, camera, masks: Sequence[Optional[np.ndarray]], init,
                    method: str = "silhouette", progress=None, cancel=None
                    ) -> VideoRegistration:
    """Temporal registration of a video's frames from their liver masks (see module doc)."""
    live = LiveVideoRegistration(mesh, camera, init, method)
    out = VideoRegistration()
    n = len(masks)
    for t, mask in enumerate(masks):
        check_cancel(cancel, "video registration")
        result = live.update(mask, cancel=cancel)
        if live.last_reason is not None:
            out.skipped.append((t, live.last_reason))
        out.results.append(result if live.last_reason is None else None)
        out.poses.append(live.pose.copy())
        report(progress, (t + 1) / n, f"video frame {t + 1}/{n}")
    return out


def register_video_nodes(ctx, model_node, camera, image_sequence, mask_sequence,
                         init_transform_node, method: str = "silhouette", browser=None,
                         output_name: str = "LiverLaparoReg model_to_camera",
                         progress=None, cancel=None):
    """Register every frame of a video sequence; returns ``(VideoRegistration,
    transform_sequence)`` (``model_to_camera`` per frame, synchronised with ``browser``).

    ``mask_sequence``: a sequence of mask volumes (non-zero = liver), one per frame, with the
    frames' index values. Input nodes are not modified.
    """
    import slicer  # noqa: PLC0415

    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    from .logic import model_mesh_arrays  # noqa: PLC0415
    from .mesh import MeshData  # noqa: PLC0415

    v, f = model_mesh_arrays(model_node)
    mesh = MeshData(v, f, "mesh")
    init = nodes.matrix_from_transform_node(init_transform_node, "initial pose",
                                            require_rigid=True)
    n = image_sequence.GetNumberOfDataNodes()
    if n == 0:
        raise InputError("video: the frame sequence has no frames")
    masks = []
    for t in range(n):
        value = image_sequence.GetNthIndexValue(t)
        item = mask_sequence.GetDataNodeAtValue(value) if mask_sequence is not None else None
        if item is None:
            masks.append(None)
            continue
        m, _ = nodes.image2d_from_node(item, f"mask of frame {t}")
        masks.append((m.max(axis=2) if m.ndim == 3 else m) != 0)
    reg = register_frames(mesh, camera, masks, init, method, progress, cancel)
    out = ctx.add_node("vtkMRMLSequenceNode", output_name)
    out.SetIndexName(image_sequence.GetIndexName())
    out.SetIndexUnit(image_sequence.GetIndexUnit())
    for t, T in enumerate(reg.poses):
        node = slicer.vtkMRMLLinearTransformNode()
        node.SetName(f"{output_name} {t}")
        node.SetMatrixTransformToParent(nodes.numpy_to_vtk_matrix(T))
        out.SetDataNodeAtValue(node, image_sequence.GetNthIndexValue(t))
    if browser is not None:
        browser.AddSynchronizedSequenceNodeID(out.GetID())
    return reg, out
