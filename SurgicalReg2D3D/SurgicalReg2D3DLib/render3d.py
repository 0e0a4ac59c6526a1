"""3D scene pieces as VTK data, as MRML model nodes, and rendered off screen to a picture.

The modules' 3D views (the X-ray on its detector plane, the laparoscope's AR view, the US
frame inside its volume) are made of three kinds of objects:

- surfaces (a bone surface from a CT, a liver mesh): :func:`iso_surface` extracts one from a
  volume array in RAS;
- image planes: :func:`textured_plane` is a rectangle whose corners are an image's outer
  pixel edges placed by ``pixel_to_world`` (``(col, row, 0, 1)`` -> world mm), with texture
  coordinates so the image is drawn on it (row 0 at the corner of pixel ``(0, 0)``);
  :func:`image_data_from_array` gives the texture;
- lines (camera frusta, :func:`views3d.frustum_polydata`).

:func:`add_model_node` puts one of them in an MRML scene (a model node with a display
node, optionally textured), which is how the modules show them in Slicer's 3D view.
:func:`render_offscreen` draws the same objects with plain VTK, without a display (VTK picks
an off-screen EGL/OSMesa window where there is no X server), for the demo's pictures and the
docs; it returns an ``(H, W, 3)`` uint8 array. Qt-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import InputError


def image_data_from_array(image: np.ndarray):
    """A ``vtkImageData`` of a 2D image ``(H, W)`` or ``(H, W, 3|4)``, pixel ``(i, j)`` =
    ``image[j, i]``; grey images are windowed to 0..255 (1st-99th percentile)."""
    import vtk  # noqa: PLC0415
    from vtk.util import numpy_support  # noqa: PLC0415

    a = np.asarray(image)
    if a.ndim == 2:
        lo, hi = np.percentile(a, [1, 99]) if a.size else (0, 1)
        a = np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-12), 0, 1) * 255
        a = a.astype(np.uint8)[..., None]
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        a = a.astype(np.uint8) if a.dtype == np.uint8 else np.clip(a, 0, 255).astype(np.uint8)
    else:
        raise InputError(f"image: expected (H, W) or (H, W, 3|4), got shape {a.shape}")
    h, w, c = a.shape
    img = vtk.vtkImageData()
    img.SetDimensions(w, h, 1)
    arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(a).reshape(-1, c), deep=True,
                                     array_type=vtk.VTK_UNSIGNED_CHAR)
    arr.SetNumberOfComponents(c)
    img.GetPointData().SetScalars(arr)
    return img


def textured_plane(pixel_to_world, width: int, height: int):
    """A quad covering a ``width x height`` image placed by ``pixel_to_world`` (4x4)."""
    import vtk  # noqa: PLC0415

    M = np.asarray(pixel_to_world, dtype=np.float64)
    corners = np.array([[-0.5, -0.5, 0, 1], [width - 0.5, -0.5, 0, 1],
                        [width - 0.5, height - 0.5, 0, 1], [-0.5, height - 0.5, 0, 1]])
    world = corners @ M.T
    points = vtk.vtkPoints()
    tcoords = vtk.vtkFloatArray()
    tcoords.SetNumberOfComponents(2)
    tcoords.SetName("TextureCoordinates")
    for p, t in zip(world[:, :3], ((0, 0), (1, 0), (1, 1), (0, 1))):
        points.InsertNextPoint(*map(float, p))
        tcoords.InsertNextTuple2(*t)
    quad = vtk.vtkCellArray()
    quad.InsertNextCell(4)
    for k in range(4):
        quad.InsertCellPoint(k)
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(quad)
    poly.GetPointData().SetTCoords(tcoords)
    return poly


def iso_surface(array: np.ndarray, ijk_to_ras, level: float, decimate: float = 0.0):
    """Surface ``array == level`` of a volume ``(K, J, I)`` in RAS (``ijk_to_ras`` applied)."""
    import vtk  # noqa: PLC0415
    from vtk.util import numpy_support  # noqa: PLC0415

    a = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if a.ndim != 3:
        raise InputError(f"volume: expected a 3D array, got shape {a.shape}")
    img = vtk.vtkImageData()
    img.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(a.ravel(), deep=True))
    mc = vtk.vtkFlyingEdges3D()
    mc.SetInputData(img)
    mc.SetValue(0, float(level))
    mc.ComputeNormalsOn()
    out = mc.GetOutputPort()
    if decimate > 0:
        dec = vtk.vtkQuadricDecimation()
        dec.SetInputConnection(out)
        dec.SetTargetReduction(float(decimate))
        out = dec.GetOutputPort()
    tf = vtk.vtkTransform()
    from .nodes import numpy_to_vtk_matrix  # noqa: PLC0415

    tf.SetMatrix(numpy_to_vtk_matrix(np.asarray(ijk_to_ras, float)))
    apply = vtk.vtkTransformPolyDataFilter()
    apply.SetInputConnection(out)
    apply.SetTransform(tf)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(apply.GetOutputPort())
    normals.Update()
    return normals.GetOutput()


@dataclass
class SceneItem:
    """One object of a picture: a polydata, its colour and opacity, an optional texture."""

    polydata: object
    color: Tuple[float, float, float] = (0.9, 0.9, 0.9)
    opacity: float = 1.0
    texture: Optional[np.ndarray] = None
    line_width: float = 2.0
    lighting: bool = True


def add_model_node(ctx, polydata, name: str, color=(0.9, 0.9, 0.9), opacity: float = 1.0,
                   texture: Optional[np.ndarray] = None, node=None):
    """A model node showing ``polydata`` (world = RAS) in the 3D view, textured with
    ``texture`` (an image array) when given. Returns the model node."""
    import vtk  # noqa: PLC0415

    if node is None:
        node = ctx.add_node("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(polydata)
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    display.SetColor(*color)
    display.SetOpacity(float(opacity))
    display.SetVisibility(True)
    if texture is not None:
        producer = vtk.vtkTrivialProducer()
        producer.SetOutput(image_data_from_array(texture))
        node._surgreg_texture_producer = producer  # keep the producer alive with the node
        display.SetTextureImageDataConnection(producer.GetOutputPort())
        display.SetColor(1.0, 1.0, 1.0)
        display.SetAmbient(1.0)
        display.SetDiffuse(0.0)
    return node


def render_offscreen(items: Sequence[SceneItem], size: Tuple[int, int] = (640, 480),
                     camera: Optional[dict] = None, background=(0.1, 0.1, 0.12),
                     azimuth: float = 0.0, elevation: float = 0.0) -> np.ndarray:
    """Draw ``items`` without a display; returns an ``(H, W, 3)`` uint8 picture.

    ``camera``: :func:`views3d.vtk_camera_parameters` output (e.g. the laparoscope's AR
    view; ``size`` should then be its image size), else the view is fitted to the items and
    turned by ``azimuth`` / ``elevation`` degrees.
    """
    import vtk  # noqa: PLC0415
    from vtk.util import numpy_support  # noqa: PLC0415

    from .views3d import apply_vtk_camera  # noqa: PLC0415

    w, h = int(size[0]), int(size[1])
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(w, h)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*background)
    window.AddRenderer(renderer)
    for item in items:
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(item.polydata)
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*item.color)
        prop.SetOpacity(float(item.opacity))
        prop.SetLineWidth(float(item.line_width))
        if not item.lighting:
            prop.LightingOff()
        if item.texture is not None:
            tex = vtk.vtkTexture()
            tex.SetInputData(image_data_from_array(item.texture))
            tex.InterpolateOn()
            actor.SetTexture(tex)
            prop.SetColor(1, 1, 1)
            prop.LightingOff()
        renderer.AddActor(actor)
    if camera is not None:
        apply_vtk_camera(renderer.GetActiveCamera(), camera)
    else:
        renderer.ResetCamera()
        renderer.GetActiveCamera().Azimuth(azimuth)
        renderer.GetActiveCamera().Elevation(elevation)
        renderer.GetActiveCamera().OrthogonalizeViewUp()
        renderer.ResetCamera()
        renderer.ResetCameraClippingRange()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    out = grab.GetOutput()
    arr = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
    window.Finalize()
    return np.ascontiguousarray(arr[::-1])  # VTK's first row is the bottom one


def save_pictures(path, pictures: Sequence[np.ndarray], titles: Sequence[str],
                  suptitle: str = "") -> None:
    """Save rendered pictures side by side in one PNG (matplotlib, no display needed)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(pictures)
    widths = [p.shape[1] / p.shape[0] for p in pictures]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * sum(widths) + 0.2, 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, pic, title in zip(axes[0], pictures, titles):
        ax.imshow(pic)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
