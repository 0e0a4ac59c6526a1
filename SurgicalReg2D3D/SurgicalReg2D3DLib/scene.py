"""A real MRML scene with the module logics this project needs.

Inside the Slicer application the scene is ``slicer.mrmlScene`` and the module logics
belong to the application. Outside it (tests, the ``surgreg`` command line) the PyPI wheel
``slicer-core`` provides the same C++ classes: :class:`SceneContext` builds a
``vtkMRMLScene`` with a ``vtkSlicerApplicationLogic`` and registers the Volumes, Models,
Transforms, Markups, Sequences, Segmentations and SubjectHierarchy logics on
it, so the same logic code runs in both places::

    ctx = SceneContext()                 # outside Slicer: a new scene
    ctx = SceneContext.from_slicer()     # inside Slicer: the application's scene
    volumes_logic = ctx.logic("Volumes")
"""

from __future__ import annotations

from typing import Dict, Optional

# Module name (as Slicer names it) -> class name of its logic in slicer-core.
_LOGIC_CLASSES = {
    "Volumes": "vtkSlicerVolumesLogic",
    "Models": "vtkSlicerModelsLogic",
    "Transforms": "vtkSlicerTransformLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Sequences": "vtkSlicerSequencesLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}


def in_slicer_application() -> bool:
    """True when running inside the Slicer application (``slicer.app`` exists)."""
    try:
        import slicer  # noqa: PLC0415
    except ImportError:
        return False
    return hasattr(slicer, "app") and hasattr(slicer, "mrmlScene")


class SceneContext:
    """A ``vtkMRMLScene`` plus its application logic and module logics."""

    #: The context :meth:`current` returns outside the application while
    #: ``console.bind_console_names`` is active (None otherwise).
    _bound: "Optional[SceneContext]" = None

    def __init__(self, scene=None, app_logic=None, logics: Optional[Dict[str, object]] = None):
        import slicer  # noqa: PLC0415
        import vtk  # noqa: PLC0415

        self._owns_scene = scene is None
        if scene is None:
            scene = slicer.vtkMRMLScene()
        self.scene = scene
        self._logics: Dict[str, object] = dict(logics or {})
        if app_logic is None:
            app_logic = slicer.vtkSlicerApplicationLogic()
            app_logic.SetMRMLScene(scene)
            app_logic.GetColorLogic().SetMRMLScene(scene)
            app_logic.GetColorLogic().AddDefaultColorNodes()
            app_logic.SetSliceLogics(vtk.vtkCollection())
            app_logic.SetViewLogics(vtk.vtkCollection())
            # Volume display nodes look their colour table up through the "Colors" logic.
            app_logic.SetModuleLogic("Colors", app_logic.GetColorLogic())
            self._logics["Colors"] = app_logic.GetColorLogic()
            for module_name, class_name in _LOGIC_CLASSES.items():
                logic = getattr(slicer, class_name)()
                logic.SetMRMLApplicationLogic(app_logic)
                logic.SetMRMLScene(scene)
                app_logic.SetModuleLogic(module_name, logic)
                self._logics[module_name] = logic
        self.app_logic = app_logic

    @classmethod
    def from_slicer(cls) -> "SceneContext":
        """The running Slicer application's scene and logics."""
        import slicer  # noqa: PLC0415

        app_logic = slicer.app.applicationLogic()
        logics = {name: app_logic.GetModuleLogic(name) for name in _LOGIC_CLASSES}
        return cls(scene=slicer.mrmlScene, app_logic=app_logic,
                   logics={k: v for k, v in logics.items() if v is not None})

    @classmethod
    def current(cls) -> "SceneContext":
        """Slicer's scene inside the application, else the scene bound by
        ``console.bind_console_names``, else a new standalone scene."""
        if cls._bound is not None:
            return cls._bound
        return cls.from_slicer() if in_slicer_application() else cls()

    def logic(self, module_name: str):
        """The logic of a Slicer module, e.g. ``"Volumes"`` or ``"Markups"``."""
        try:
            return self._logics[module_name]
        except KeyError:
            raise KeyError(
                f"no logic for module {module_name!r}; available: {sorted(self._logics)}"
            ) from None

    def add_node(self, class_name: str, name: Optional[str] = None):
        """Add a new node of ``class_name`` (e.g. ``"vtkMRMLLinearTransformNode"``)."""
        node = self.scene.AddNewNodeByClass(class_name, name or "")
        if node is None:
            raise ValueError(f"cannot create MRML node of class {class_name!r}")
        return node

    def clear(self) -> None:
        """Remove all data nodes (keeps default color nodes)."""
        self.scene.Clear(0)

    def close(self) -> None:
        """Release the scene and logics made by this context (does nothing in Slicer)."""
        if not self._owns_scene:
            return
        for logic in self._logics.values():
            logic.SetMRMLScene(None)
        self.app_logic.SetMRMLScene(None)
        self.scene.Clear(1)

    def __enter__(self) -> "SceneContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
