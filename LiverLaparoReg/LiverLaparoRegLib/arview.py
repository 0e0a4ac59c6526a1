"""LiverLaparoReg's 3D views: the AR view through the laparoscope and the frustum beside it.

World frame = Slicer RAS of the model nodes. The liver mesh's "model" frame is its file's
coordinates, which Slicer reads as LPS, so ``ras_to_camera = model_to_camera @ RAS_TO_LPS``.

- AR view: a 3D view whose camera has the laparoscope's intrinsics and pose
  (:func:`ar_camera_parameters`, set on a ``vtkMRMLCameraNode`` by :func:`setup_ar_view`); the
  video frame is a textured plane that exactly fills the view at ``background_depth_mm``
  behind the liver, so it appears as the background, and the liver, vessels and tumours
  (deformed when non-rigid) are drawn over it with adjustable opacity. Lens distortion is
  not modelled by VTK: the frame is shown as recorded, so the overlay is exact where the
  distortion is small (use an undistorted frame for the full field).
- Beside it, a normal 3D view shows the camera frustum next to the model (:func:`frustum`).

Qt-free; tested on slicer-core (``Testing/test_scene3d.py``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from SurgicalReg2D3DLib import render3d, views3d
from SurgicalReg2D3DLib.errors import InputError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_to_camera(model_to_camera) -> np.ndarray:
    """``ras_to_camera`` of a model node loaded with Slicer's LPS convention."""
    T = np.asarray(model_to_camera, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise InputError("model_to_camera: expected a finite 4x4 matrix")
    return T @ RAS_TO_LPS


def ar_camera_parameters(camera, model_to_camera) -> dict:
    """VTK camera settings of the AR view (see ``views3d.vtk_camera_parameters``)."""
    return views3d.vtk_camera_parameters(camera.fx, camera.fy, camera.cx, camera.cy,
                                         camera.width, camera.height,
                                         ras_to_camera(model_to_camera))


def background_plane(camera, model_to_camera, depth_mm: float):
    """The frame as a textured quad filling the laparoscope's view at ``depth_mm``."""
    pix = views3d.pinhole_pixel_to_camera(camera.fx, camera.fy, camera.cx, camera.cy,
                                          depth_mm)
    cam_to_ras = np.linalg.inv(ras_to_camera(model_to_camera))
    return render3d.textured_plane(cam_to_ras @ pix, camera.width, camera.height)


def frustum(camera, model_to_camera, depth_mm: float = 100.0):
    """Lines from the optical centre to the image corners at ``depth_mm`` (RAS)."""
    pix = views3d.pinhole_pixel_to_camera(camera.fx, camera.fy, camera.cx, camera.cy,
                                          depth_mm)
    pts = views3d.frustum_points(camera.width, camera.height, pix)
    return views3d.frustum_polydata(pts, np.linalg.inv(ras_to_camera(model_to_camera)))


def _polydata_lps_to_ras(vertices, faces):
    from SurgicalReg2D3DLib.nodes import polydata_from_arrays  # noqa: PLC0415

    v = np.asarray(vertices, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
    return polydata_from_arrays(v, np.asarray(faces))


def ar_items(camera, model_to_camera, frame: Optional[np.ndarray],
             meshes: Sequence, opacity: float = 0.5, colors=None,
             background_depth_mm: Optional[float] = None) -> List[render3d.SceneItem]:
    """Objects of the AR view: the frame as background and ``meshes`` (``(vertices,
    faces)`` in the model frame) over it."""
    colors = colors or [(0.85, 0.45, 0.35), (0.3, 0.45, 0.95), (0.95, 0.85, 0.2)]
    items = []
    if background_depth_mm is None:
        depths = [(np.c_[np.asarray(v, float), np.ones(len(v))] @ np.asarray(
            model_to_camera, float).T)[:, 2].max() for v, _ in meshes] or [500.0]
        background_depth_mm = 1.5 * max(depths)
    if frame is not None:
        if np.shape(frame)[:2] != (camera.height, camera.width):
            raise InputError(f"frame: size {np.shape(frame)[1]}x{np.shape(frame)[0]} does not "
                             f"match the camera size {camera.width}x{camera.height}")
        items.append(render3d.SceneItem(background_plane(camera, model_to_camera,
                                                         background_depth_mm),
                                        texture=np.asarray(frame)))
    for k, (v, f) in enumerate(meshes):
        items.append(render3d.SceneItem(_polydata_lps_to_ras(v, f),
                                        color=colors[k % len(colors)], opacity=opacity))
    return items


def setup_ar_view(ctx, camera_node, camera, model_to_camera, frame: Optional[np.ndarray] = None,
                  model_nodes: Sequence = (), opacity: float = 0.5,
                  background_depth_mm: float = 600.0, frame_model_node=None) -> Dict[str, str]:
    """Make ``camera_node`` (a ``vtkMRMLCameraNode``, the AR 3D view's camera) look through
    the laparoscope, put ``frame`` behind the scene as a textured plane model, and set the
    models' opacity. Returns ``{"camera": id, "frame": id or None}``. The model nodes'
    geometry is not changed; only their display opacity is set."""
    params = ar_camera_parameters(camera, model_to_camera)
    views3d.apply_vtk_camera(camera_node.GetCamera(), params)
    camera_node.Modified()
    frame_id = None
    if frame is not None:
        plane = background_plane(camera, model_to_camera, background_depth_mm)
        node = render3d.add_model_node(ctx, plane, "LiverLaparoReg AR frame",
                                       texture=np.asarray(frame), node=frame_model_node)
        frame_id = node.GetID()
    for node in model_nodes:
        display = node.GetDisplayNode()
        if display is not None:
            display.SetOpacity(float(opacity))
    return {"camera": camera_node.GetID(), "frame": frame_id}


def synthetic_frame(camera, model_to_camera, vertices, faces) -> np.ndarray:
    """A SYNTHETIC laparoscopic frame: the liver rendered with shading at ``model_to_camera``
    through the camera (for demos and pictures where no posed real frame exists)."""
    item = render3d.SceneItem(_polydata_lps_to_ras(vertices, faces), color=(0.75, 0.35, 0.3))
    return render3d.render_offscreen([item], size=(camera.width, camera.height),
                                     camera=ar_camera_parameters(camera, model_to_camera),
                                     background=(0.15, 0.05, 0.05))


def demo_picture(path, camera, true_model_to_camera, model_to_camera, liver, structures=(),
                 opacity: float = 0.45) -> None:
    """AR view (synthetic frame + registered liver and structures) and a side view with the
    camera frustum, in one labelled PNG. ``liver``/``structures``: ``(vertices, faces)``."""
    frame = synthetic_frame(camera, true_model_to_camera, *liver)
    meshes = [liver, *structures]
    colors = [(0.2, 0.9, 0.9), (0.3, 0.45, 0.95), (0.95, 0.85, 0.2), (0.9, 0.3, 0.9)]
    ar = render3d.render_offscreen(ar_items(camera, model_to_camera, frame, meshes, opacity,
                                            colors),
                                   size=(camera.width, camera.height),
                                   camera=ar_camera_parameters(camera, model_to_camera))
    depth = float((np.c_[liver[0], np.ones(len(liver[0]))] @ np.asarray(
        model_to_camera, float).T)[:, 2].mean())
    side_items = [render3d.SceneItem(_polydata_lps_to_ras(v, f), color=c)
                  for (v, f), c in zip(meshes, [(0.85, 0.45, 0.35)] + colors[1:])]
    side_items.append(render3d.SceneItem(frustum(camera, model_to_camera, depth),
                                         color=(1.0, 1.0, 0.3), lighting=False))
    side = render3d.render_offscreen(side_items, size=(360, 300), azimuth=70, elevation=20)
    render3d.save_pictures(path, [frame, ar, side],
                           ["frame (SYNTHETIC rendering at the true pose)",
                            "AR view: registered liver + vessels/tumours over the frame",
                            "3D view: laparoscope frustum beside the model"],
                           "LiverLaparoReg 3D views (rendered off screen with VTK)")
