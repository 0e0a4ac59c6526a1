"""Slicer's application-only console names, implemented on a real standalone MRML scene.

Inside the Slicer application, ``slicer.mrmlScene`` is the application's scene and
``slicer.util.loadVolume`` / ``loadModel`` / ``setSliceViewerLayers`` work through
``slicer.app``. Outside the application (the ``slicer-core`` wheel: tests, the command line)
those few names have nothing to work on. :func:`bind_console_names` binds them to a
:class:`~SurgicalReg2D3DLib.scene.SceneContext` so that code written for the Slicer Python
console (``docs/scripting.md``) runs unchanged on a real scene::

    with SceneContext() as ctx, bind_console_names(ctx):
        ct = slicer.util.loadVolume(path)        # -> io.load_volume(ctx, path)
        ...

What is bound (everything else in ``slicer`` / ``slicer.util`` is slicer-core's own code):

- ``slicer.mrmlScene``: ``ctx.scene``;
- ``slicer.util.loadVolume(path, properties=None)``, ``loadModel(path)``,
  ``loadTransform(path)``, ``loadMarkups(path)``: the project's readers in :mod:`.io` (the
  same geometry as Slicer's readers, checked in ``Testing/test_io.py``); ``properties`` may
  hold ``name``;
- ``slicer.util.setSliceViewerLayers(background=None, foreground=None, label=None,
  foregroundOpacity=None, fit=False)``: sets the layers of every slice composite node of the
  scene (a standalone scene has no view, so one composite node, "Red", is made if none
  exists);
- :meth:`SceneContext.current` returns ``ctx`` while bound.

Nothing here is a stand-in for a Slicer class: the nodes, logics and scene are slicer-core's.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from .scene import SceneContext


def _layer_id(node) -> Optional[str]:
    return None if node is None else node.GetID()


def set_slice_viewer_layers(ctx: SceneContext, background="keep-current",
                            foreground="keep-current", label="keep-current",
                            foregroundOpacity=None, labelOpacity=None, fit=False,
                            rotateToVolumePlane=False):
    """``slicer.util.setSliceViewerLayers`` on ``ctx``'s slice composite nodes.

    Returns the composite nodes it changed (``fit`` and ``rotateToVolumePlane`` need views
    and are ignored outside the application).
    """
    composites = [ctx.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(ctx.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    if not composites:
        node = ctx.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        node.SetLayoutName("Red")
        composites = [node]
    for comp in composites:
        if background != "keep-current":
            comp.SetBackgroundVolumeID(_layer_id(background))
        if foreground != "keep-current":
            comp.SetForegroundVolumeID(_layer_id(foreground))
        if label != "keep-current":
            comp.SetLabelVolumeID(_layer_id(label))
        if foregroundOpacity is not None:
            comp.SetForegroundOpacity(float(foregroundOpacity))
        if labelOpacity is not None:
            comp.SetLabelOpacity(float(labelOpacity))
    return composites


@contextlib.contextmanager
def bind_console_names(ctx: SceneContext) -> Iterator[SceneContext]:
    """Bind ``slicer.mrmlScene`` and the application-only ``slicer.util`` loaders to
    ``ctx`` for the duration of the ``with`` block; everything is restored afterwards."""
    import slicer  # noqa: PLC0415
    import slicer.util as su  # noqa: PLC0415

    from . import io  # noqa: PLC0415

    def _name(properties):
        return (properties or {}).get("name")

    bound = {
        "loadVolume": lambda path, properties=None, returnNode=False:
            io.load_volume(ctx, path, name=_name(properties)),
        "loadModel": lambda path, coordinateSystem="LPS", returnNode=False:
            io.load_model(ctx, path, coordinate_system=coordinateSystem),
        "loadTransform": lambda path, returnNode=False: io.load_transform(ctx, path),
        "loadMarkups": lambda path: io.load_markups(ctx, path),
        "setSliceViewerLayers": lambda *a, **k: set_slice_viewer_layers(ctx, *a, **k),
    }
    missing = object()
    saved_util = {name: getattr(su, name, missing) for name in bound}
    saved_scene = getattr(slicer, "mrmlScene", missing)
    saved_current = SceneContext._bound
    try:
        slicer.mrmlScene = ctx.scene
        for name, fn in bound.items():
            setattr(su, name, fn)
        SceneContext._bound = ctx
        yield ctx
    finally:
        SceneContext._bound = saved_current
        for name, old in saved_util.items():
            if old is missing:
                delattr(su, name)
            else:
                setattr(su, name, old)
        if saved_scene is missing:
            del slicer.mrmlScene
        else:
            slicer.mrmlScene = saved_scene
