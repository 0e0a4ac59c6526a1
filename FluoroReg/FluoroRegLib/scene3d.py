"""FluoroReg's 3D scene: the CT, each X-ray on its detector plane, the source and frustum.

For every view ``k`` with result pose ``ct_to_camera[k]`` (CT RAS -> that view's X-ray
camera), the X-ray image is placed on its detector plane in CT RAS
(``views3d.xray_ijk_to_ras``) and the source with the lines to the image corners is drawn,
so the 3D view shows the C-arm where the registration put it. The CT is shown as a bone
surface (iso-surface at ``bone_hu``). :func:`build_scene` makes the MRML nodes (the Slicer
module and the console call it); :func:`scene_items` gives the same objects for
:func:`SurgicalReg2D3DLib.render3d.render_offscreen` (the demo's picture). Inputs are not
modified: the X-ray image is copied into a textured plane model.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from SurgicalReg2D3DLib import render3d, views3d
from SurgicalReg2D3DLib.errors import InputError

VIEW_COLORS = ((1.0, 0.85, 0.2), (0.3, 0.8, 1.0), (0.6, 1.0, 0.4), (1.0, 0.5, 0.8))


def _check(images: Sequence, cameras: Sequence, poses: Sequence) -> None:
    if not (len(images) == len(cameras) == len(poses)) or len(images) == 0:
        raise InputError(f"3D scene: need one X-ray image, camera and ct_to_camera per view, "
                         f"got {len(images)}, {len(cameras)}, {len(poses)}")


def _downsampled(hu: np.ndarray, ijk_to_ras: np.ndarray, factor: int):
    if factor <= 1:
        return hu, ijk_to_ras
    from .simulate import downsample_ct  # noqa: PLC0415

    return downsample_ct(hu, ijk_to_ras, factor)


def scene_items(hu: np.ndarray, ijk_to_ras: np.ndarray, images: Sequence[np.ndarray],
                cameras: Sequence, ct_to_camera: Sequence, bone_hu: float = 250.0,
                downsample: int = 2) -> List[render3d.SceneItem]:
    """The bone surface, and per view the textured X-ray plane and the frustum (CT RAS)."""
    _check(images, cameras, ct_to_camera)
    h, m = _downsampled(np.asarray(hu, np.float32), np.asarray(ijk_to_ras, float), downsample)
    items = [render3d.SceneItem(render3d.iso_surface(h, m, bone_hu, decimate=0.5),
                                color=(0.95, 0.92, 0.85))]
    for k, (img, cam, T) in enumerate(zip(images, cameras, ct_to_camera)):
        ijk = views3d.xray_ijk_to_ras(cam, T)
        items.append(render3d.SceneItem(render3d.textured_plane(ijk, cam.width, cam.height),
                                        texture=np.asarray(img)))
        pts = views3d.frustum_points(cam.width, cam.height, views3d.xray_pixel_to_camera(cam))
        items.append(render3d.SceneItem(views3d.frustum_polydata(pts, np.linalg.inv(T)),
                                        color=VIEW_COLORS[k % len(VIEW_COLORS)], lighting=False))
    return items


def build_scene(ctx, ct_node, images: Sequence[np.ndarray], cameras: Sequence,
                ct_to_camera: Sequence, bone_hu: float = 250.0, downsample: int = 2,
                prefix: str = "FluoroReg") -> Dict[str, List[str]]:
    """Model nodes of the 3D scene in ``ctx`` (RAS = the CT node's RAS; the CT node's
    parent transforms are not applied). Returns the node IDs:
    ``{"bone": [id], "xray_planes": [id per view], "frusta": [id per view]}``."""
    from SurgicalReg2D3DLib import nodes  # noqa: PLC0415

    ct = nodes.volume_from_node(ct_node, name="CT volume")
    items = scene_items(ct.array, ct.ijk_to_ras, images, cameras, ct_to_camera, bone_hu,
                        downsample)
    out: Dict[str, List[str]] = {"bone": [], "xray_planes": [], "frusta": []}
    bone = render3d.add_model_node(ctx, items[0].polydata, f"{prefix} bone surface",
                                   color=items[0].color)
    out["bone"].append(bone.GetID())
    for k in range(len(images)):
        plane, frustum = items[1 + 2 * k], items[2 + 2 * k]
        n1 = render3d.add_model_node(ctx, plane.polydata, f"{prefix} X-ray {k + 1} on detector",
                                     texture=plane.texture)
        n2 = render3d.add_model_node(ctx, frustum.polydata, f"{prefix} view {k + 1} frustum",
                                     color=frustum.color)
        out["xray_planes"].append(n1.GetID())
        out["frusta"].append(n2.GetID())
    return out


def demo_picture(path, hu, ijk_to_ras, images, cameras, ct_to_camera, size=(480, 400)) -> None:
    """Two off-screen renderings of the scene (front and oblique) in one labelled PNG."""
    items = scene_items(hu, ijk_to_ras, images, cameras, ct_to_camera)
    pics = [render3d.render_offscreen(items, size=size, azimuth=a, elevation=e)
            for a, e in ((0.0, 0.0), (60.0, 25.0))]
    render3d.save_pictures(path, pics, ["3D scene", "3D scene, turned"],
                           "FluoroReg: CT bone surface, each X-ray (SYNTHETIC) on its detector "
                           "plane and the source frustum at the registered pose")
