"""Geometry of the 3D views: where an image plane, a camera and its frustum lie in RAS.

Qt-free and MRML-free (numpy and VTK only), so the same functions place nodes in Slicer and
build the off-screen pictures of the demo (:mod:`.render3d`). Every matrix says which frames
it maps (``<from>_to_<to>``, column vectors).

- X-ray (FluoroReg): :func:`xray_pixel_to_camera` maps X-ray pixel ``(i = column, j = row,
  k)`` to the X-ray camera frame, the image lying on the detector plane ``z = f`` and ``k``
  stepping 1 mm along +z (towards the detector). With the registration result
  ``ct_to_camera`` the image's ``ijk_to_ras`` in CT RAS is
  ``inv(ct_to_camera) @ xray_pixel_to_camera(camera)`` (:func:`xray_ijk_to_ras`).
- Frustum: :func:`frustum_points` gives the source and the image corners in the camera
  frame; :func:`frustum_polydata` draws it as lines in any frame.
- Laparoscope (LiverLaparoReg): :func:`vtk_camera_parameters` turns pinhole intrinsics
  ``(fx, fy, cx, cy, W, H)`` and the pose ``world_to_camera`` (OpenCV camera: x right,
  y down, z forward) into a VTK camera (position, focal point, view up, vertical view angle,
  window centre for an off-centre principal point, aspect correction when
  ``fx != fy``); :func:`apply_vtk_camera` sets them on a ``vtkCamera`` (e.g.
  ``vtkMRMLCameraNode.GetCamera()``), so a 3D view of ``W x H`` pixels shows the world as the
  laparoscope does (lens distortion aside). :func:`vtk_project` projects world points with a
  ``vtkCamera``'s own matrices (for tests and overlays).
- Ultrasound (USSliceReg): :func:`slice_to_ras_from_image` gives the ``SliceToRAS`` matrix of a
  slice view that shows the plane of a frame whose pixel ``(col, row, 0, 1)`` lies at
  ``image_to_ras @ (col, row, 0, 1)``: slice x along the image columns, slice y against the
  rows (row 0 at the top of the view, as the frame is shown), the origin at the frame
  centre.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import GeometryError, InputError


def _matrix4(m, name: str) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError(f"{name}: expected a finite 4x4 matrix, got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------- X-ray
def xray_pixel_to_camera(camera) -> np.ndarray:
    """``pixel_to_camera`` (4x4) of an ``XRayCamera``: ``(i, j, k, 1)`` -> camera mm.

    Pixel centre ``(i, j)`` lands on the detector point ``((i - cx) sx, (j - cy) sy, f)``;
    ``k`` moves 1 mm along +z.
    """
    cx, cy = camera.principal_point
    sx, sy = camera.pixel_spacing_mm
    f = camera.source_to_detector_mm
    return np.array([[sx, 0.0, 0.0, -cx * sx],
                     [0.0, sy, 0.0, -cy * sy],
                     [0.0, 0.0, 1.0, f],
                     [0.0, 0.0, 0.0, 1.0]])


def xray_ijk_to_ras(camera, ct_to_camera) -> np.ndarray:
    """``ijk_to_ras`` that puts the X-ray image on its detector plane in CT RAS."""
    T = _matrix4(ct_to_camera, "ct_to_camera")
    return np.linalg.inv(T) @ xray_pixel_to_camera(camera)


def frustum_points(width: int, height: int, pixel_to_camera: np.ndarray,
                   depth_scale: float = 1.0) -> np.ndarray:
    """``(5, 3)`` camera-frame points: the centre of projection (origin) and the four
    outer image corners (pixel edges ``-0.5`` and ``W - 0.5``) of the image plane given by
    ``pixel_to_camera``, scaled by ``depth_scale`` along their rays (1 = on the plane)."""
    P = _matrix4(pixel_to_camera, "pixel_to_camera")
    corners = np.array([[-0.5, -0.5, 0, 1], [width - 0.5, -0.5, 0, 1],
                        [width - 0.5, height - 0.5, 0, 1], [-0.5, height - 0.5, 0, 1]])
    pts = (corners @ P.T)[:, :3] * float(depth_scale)
    return np.vstack([np.zeros(3), pts])


def pinhole_pixel_to_camera(fx: float, fy: float, cx: float, cy: float,
                            depth_mm: float) -> np.ndarray:
    """``pixel_to_camera`` of a pinhole camera's image placed at depth ``depth_mm``."""
    d = float(depth_mm)
    return np.array([[d / fx, 0.0, 0.0, -cx * d / fx],
                     [0.0, d / fy, 0.0, -cy * d / fy],
                     [0.0, 0.0, 1.0, d],
                     [0.0, 0.0, 0.0, 1.0]])


def lines_polydata(points, pairs):
    """A ``vtkPolyData`` of line segments between ``points`` (N, 3) given as index pairs."""
    import vtk  # noqa: PLC0415

    vpoints = vtk.vtkPoints()
    for p in np.asarray(points, dtype=np.float64):
        vpoints.InsertNextPoint(*map(float, p))
    lines = vtk.vtkCellArray()
    for a, b in pairs:
        line = vtk.vtkLine()
        line.GetPointIds().SetId(0, int(a))
        line.GetPointIds().SetId(1, int(b))
        lines.InsertNextCell(line)
    poly = vtk.vtkPolyData()
    poly.SetPoints(vpoints)
    poly.SetLines(lines)
    return poly


def frustum_polydata(points_camera: np.ndarray, camera_to_world):
    """A ``vtkPolyData`` of lines: source to each corner, and the image rectangle, in the
    world frame (``camera_to_world @ p``)."""
    M = _matrix4(camera_to_world, "camera_to_world")
    pts_w = np.c_[points_camera, np.ones(len(points_camera))] @ M.T
    return lines_polydata(pts_w[:, :3], ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3),
                                         (3, 4), (4, 1)))


# ------------------------------------------------------------------------ laparoscope
def vtk_camera_parameters(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                          world_to_camera) -> Dict[str, object]:
    """VTK camera settings that reproduce a pinhole camera (OpenCV frame) in a view of
    ``width x height`` pixels.

    Returns ``position``, ``focal_point`` (1 unit ahead), ``view_up`` (-y of the camera),
    ``view_angle`` (vertical, degrees, from ``fy``), ``window_center`` (the principal point
    in normalised view coordinates, pixel centres at integers), and ``aspect_correction``
    (the ``fx``/``fy`` ratio VTK must apply horizontally; 1 for square pixels).
    """
    if not (fx > 0 and fy > 0 and width > 0 and height > 0):
        raise GeometryError(f"camera intrinsics: need fx, fy, width, height > 0, got "
                            f"fx={fx}, fy={fy}, {width}x{height}")
    T = _matrix4(world_to_camera, "world_to_camera")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-6):
        raise GeometryError("world_to_camera: the rotation part is not orthonormal")
    cam_to_world = np.linalg.inv(T)
    position = cam_to_world[:3, 3]
    z_axis = cam_to_world[:3, 2]
    y_axis = cam_to_world[:3, 1]
    # normalised device coordinates of the principal point: pixel edge -0.5 -> -1,
    # W - 0.5 -> +1; rows grow downwards, NDC y upwards
    wx = 2.0 * (cx + 0.5) / width - 1.0
    wy = 1.0 - 2.0 * (cy + 0.5) / height
    view_angle = math.degrees(2.0 * math.atan(height / (2.0 * fy)))
    return {"position": position, "focal_point": position + z_axis, "view_up": -y_axis,
            "view_angle": view_angle, "window_center": (-wx, -wy),
            "aspect_correction": fy / fx, "size": (int(width), int(height))}


def apply_vtk_camera(vtk_camera, params: Dict[str, object]) -> None:
    """Set :func:`vtk_camera_parameters` on a ``vtkCamera``.

    VTK's window centre shifts the image so that the view direction lands at the principal
    point. Non-square pixels (``fx != fy``) use ``SetExplicitAspectRatio`` where VTK has it
    (9.3 and later); older VTK raises :class:`GeometryError` rather than drawing a wrong
    overlay.
    """
    vtk_camera.SetPosition(*map(float, params["position"]))
    vtk_camera.SetFocalPoint(*map(float, params["focal_point"]))
    vtk_camera.SetViewUp(*map(float, params["view_up"]))
    vtk_camera.SetViewAngle(float(params["view_angle"]))
    vtk_camera.SetWindowCenter(*map(float, params["window_center"]))
    vtk_camera.SetClippingRange(1.0, 5000.0)
    w, h = params["size"]
    corr = float(params["aspect_correction"])
    if abs(corr - 1.0) > 1e-9:
        if not hasattr(vtk_camera, "SetExplicitAspectRatio"):
            raise GeometryError("camera intrinsics: fx != fy needs VTK >= 9.3 "
                                "(vtkCamera.SetExplicitAspectRatio)")
        vtk_camera.SetExplicitAspectRatio(w / h * corr)
        vtk_camera.SetUseExplicitAspectRatio(True)
    elif hasattr(vtk_camera, "SetUseExplicitAspectRatio"):
        vtk_camera.SetUseExplicitAspectRatio(False)


def vtk_project(vtk_camera, points_world, width: int, height: int) -> np.ndarray:
    """Pixels ``(N, 2)`` (column, row; pixel centres at integers) of world points seen by
    ``vtk_camera`` in a ``width x height`` view, computed from the camera's own
    composite projection matrix."""
    m = vtk_camera.GetCompositeProjectionTransformMatrix(width / height, -1.0, 1.0)
    M = np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])
    p = np.c_[np.asarray(points_world, float), np.ones(len(points_world))] @ M.T
    ndc = p[:, :3] / p[:, 3:4]
    u = (ndc[:, 0] + 1.0) / 2.0 * width - 0.5
    v = (1.0 - ndc[:, 1]) / 2.0 * height - 0.5
    return np.c_[u, v]


# ------------------------------------------------------------------------- ultrasound
def slice_to_ras_from_image(image_to_ras, frame_shape: Sequence[int]) -> np.ndarray:
    """``SliceToRAS`` of a slice view showing a frame's plane (see the module docstring).

    ``image_to_ras`` may carry scale and skew (US calibrations do); the slice axes are the
    orthonormalised column and (negated) row directions, the normal their cross product.
    ``frame_shape`` is ``(rows, cols)``.
    """
    M = _matrix4(image_to_ras, "image_to_ras")
    rows, cols = int(frame_shape[0]), int(frame_shape[1])
    x = M[:3, 0]
    r = M[:3, 1]
    if np.linalg.norm(x) < 1e-12 or np.linalg.norm(np.cross(x, r)) < 1e-12:
        raise GeometryError("image_to_ras: the frame's columns and rows are not independent")
    x = x / np.linalg.norm(x)
    y = -(r - (r @ x) * x)
    y = y / np.linalg.norm(y)
    z = np.cross(x, y)
    centre = M @ np.array([(cols - 1) / 2.0, (rows - 1) / 2.0, 0.0, 1.0])
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = x, y, z, centre[:3]
    return out


def set_slice_node_to_image(slice_node, image_to_ras, frame_shape: Sequence[int],
                            field_of_view_mm: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Drive a ``vtkMRMLSliceNode`` to a frame's plane (as SlicerIGT's Volume Reslice
    Driver does) and, when given, set its field of view. Returns the ``SliceToRAS`` used."""
    from .nodes import numpy_to_vtk_matrix  # noqa: PLC0415

    S = slice_to_ras_from_image(image_to_ras, frame_shape)
    slice_node.GetSliceToRAS().DeepCopy(numpy_to_vtk_matrix(S))
    if field_of_view_mm is not None:
        slice_node.SetFieldOfView(float(field_of_view_mm[0]), float(field_of_view_mm[1]), 1.0)
    slice_node.UpdateMatrices()
    return S
