"""FluoroReg: register a preoperative CT to intraoperative X-ray / fluoroscopy images.

Thin Slicer shell: the GUI is wired here; all the work is in ``FluoroRegLib`` (Qt-free,
also used by the ``surgreg fluoro`` command line).
"""

from typing import Annotated, Optional

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import (
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
)

#: Registration methods offered in the GUI (``FluoroRegLib.logic.METHODS`` keys; the
#: learned-methods issue adds its names here and to the registry).
METHOD_CHOICES = ["ncc", "gradncc", "ncc-adam", "gradncc-adam", "ppc", "ppc+gradncc", "ppc+ncc", "ncc-multiview", "gradncc-multiview"]


class FluoroReg(ScriptedLoadableModule):
    """Module description (Slicer 5.x scripted module)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("FluoroReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"]
        self.parent.dependencies = ["SurgicalReg2D3D"]
        self.parent.contributors = ["SlicerSurgicalReg2D3D contributors (SlicerSurgicalReg2D3D project)"]
        self.parent.helpText = _(
            "Register a CT to one or more X-ray images (CT-to-X-ray 2D/3D registration). "
            "Choose the CT, the X-ray image(s) with their cone-beam geometry (JSON), an "
            "initial pose (a linear transform holding ct_to_camera: CT RAS mm to the C-arm "
            "camera, origin at the source, +z towards the detector) and a method: NCC or "
            "gradient NCC optimised with Levenberg-Marquardt on a resolution pyramid (or "
            "an Adam baseline), or point-to-plane correspondence (ppc). The result is a "
            "transform node and a DRR at the final pose shown over the X-ray.")
        self.parent.acknowledgementText = _(
            "Part of the SlicerSurgicalReg2D3D extension. The sample CT is from the "
            "TotalSegmentator repository (Apache-2.0; Wasserthal et al., Radiology: AI 2023); X-rays in the self-test are simulated.")


@parameterNodeWrapper
class FluoroRegParameterNode:
    """Inputs, options and outputs of the module."""

    ctVolume: vtkMRMLScalarVolumeNode
    xrayVolume: vtkMRMLScalarVolumeNode
    xrayVolume2: vtkMRMLScalarVolumeNode
    initialTransform: vtkMRMLLinearTransformNode
    initialTransform2: vtkMRMLLinearTransformNode
    method: Annotated[str, Choice(METHOD_CHOICES)] = "ncc"
    negativeLog: bool = False
    # WithinRange keeps the spin box's 1..500 range (without it the wrapper widens it).
    iterations: Annotated[int, WithinRange(1, 500)] = 20
    fiducials: vtkMRMLMarkupsFiducialNode
    trueTransform: vtkMRMLLinearTransformNode
    outputTransform: vtkMRMLLinearTransformNode
    drrVolume: vtkMRMLScalarVolumeNode


class FluoroRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: selects inputs, runs the logic with progress and Cancel, shows results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelToken = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FluoroReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.geometryPathLineEdit.nameFilters = ["Geometry JSON (*.json)"]
        self.ui.geometry2PathLineEdit.nameFilters = ["Geometry JSON (*.json)"]
        self.ui.resultsTable.horizontalHeader().setStretchLastSection(True)

        self.logic = FluoroRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compareComboBox.addItems([_("blend"), _("checkerboard")])
        self.ui.compareComboBox.connect("currentIndexChanged(int)", lambda i: self._updateViews())
        self.ui.show3dCheckBox.connect("toggled(bool)", lambda on: self._updateViews())
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.defaultPoseButton.connect("clicked(bool)", self.onDefaultPoseButton)
        self._setupLearnedSection()

        self.initializeParameterNode()

    def _setupLearnedSection(self) -> None:
        """"Learned: train for this patient": the training range about the nominal view
        (the initial transform), time budget, seed, resume; a model picker; "Register
        from nominal view". Progress (with the time left) and Cancel are the module's."""
        import ctk
        import qt

        box = ctk.ctkCollapsibleButton()
        box.text = _("Learned: train for this patient")
        box.collapsed = True
        form = qt.QFormLayout(box)
        self.modelPathEdit = ctk.ctkPathLineEdit()
        self.modelPathEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable  # novermin (Qt flags, not a type union)
        self.modelPathEdit.nameFilters = ["FluoroReg model (*.pt)"]
        self.modelPathEdit.toolTip = _("Pose regressor model file: read by \"Register from "
                                       "nominal view\", written by training")
        form.addRow(_("Model file:"), self.modelPathEdit)

        def triple(default, maximum, suffix, tip):
            row = qt.QHBoxLayout()
            boxes = []
            for axis in ("x", "y", "z"):
                sb = qt.QDoubleSpinBox()
                sb.setRange(0.0, maximum)
                sb.value = default
                sb.suffix = suffix
                sb.toolTip = tip.format(axis=axis)
                row.addWidget(sb)
                boxes.append(sb)
            return row, boxes

        row, self.rotationRangeBoxes = triple(
            25.0, 179.0, " deg", _("Training rotations: +- this many degrees about the "
                                   "camera's {axis} axis, about the CT centre"))
        form.addRow(_("Rotation range:"), row)
        row, self.translationRangeBoxes = triple(
            50.0, 500.0, " mm", _("Training translations: +- this many mm along the "
                                  "camera's {axis} axis"))
        form.addRow(_("Translation range:"), row)
        self.trainMinutesSpinBox = qt.QDoubleSpinBox()
        self.trainMinutesSpinBox.setRange(0.5, 600.0)
        self.trainMinutesSpinBox.value = 30.0
        self.trainMinutesSpinBox.suffix = " min"
        form.addRow(_("Time budget:"), self.trainMinutesSpinBox)
        self.trainSeedSpinBox = qt.QSpinBox()
        self.trainSeedSpinBox.setRange(0, 1000000)
        form.addRow(_("Seed:"), self.trainSeedSpinBox)
        self.trainResumeCheckBox = qt.QCheckBox(_("resume from the model's checkpoint"))
        form.addRow("", self.trainResumeCheckBox)
        self.trainButton = qt.QPushButton(_("Train for this patient"))
        self.trainButton.toolTip = _("Train a pose regressor on DRRs of the selected CT, for "
                                     "the X-ray geometry and poses about the nominal view "
                                     "(the initial transform)")
        form.addRow(self.trainButton)
        self.nominalRegisterButton = qt.QPushButton(_("Register from nominal view"))
        self.nominalRegisterButton.toolTip = _("The model gives the start pose (no initial "
                                               "pose needed); the selected method refines it")
        form.addRow(self.nominalRegisterButton)
        self.layout.addWidget(box)
        self.trainButton.connect("clicked(bool)", self.onTrain)
        self.nominalRegisterButton.connect("clicked(bool)", self.onRegisterFromNominal)

    def _ensureTorch(self) -> bool:
        """Offer to install the module's dependencies (PyTorch); False when missing."""
        import SurgicalReg2D3D

        with slicer.util.tryWithErrorDisplay(_("The dependencies could not be installed."),
                                             waitCursor=True):
            if SurgicalReg2D3D.ensureDependencies(["FluoroReg"]):
                return True
        self.ui.statusLabel.text = _("FluoroReg needs PyTorch; not installed.")
        return False

    def _modelPath(self) -> str:
        return self.modelPathEdit.currentPath if hasattr(self, "modelPathEdit") else ""

    def _busy(self, busy: bool) -> None:
        from SurgicalReg2D3DLib.progress import CancelToken

        self._cancelToken = CancelToken() if busy else None
        self.ui.cancelButton.enabled = busy
        if hasattr(self, "trainButton"):
            self.trainButton.enabled = not busy
            self.nominalRegisterButton.enabled = not busy
        self._checkCanApply()

    def onTrain(self) -> None:
        import os

        if not self._ensureTorch():
            return
        from SurgicalReg2D3DLib.errors import CancelledError

        p = self._parameterNode
        out = self._modelPath() or os.path.join(slicer.app.temporaryPath, "FluoroReg_regressor.pt")
        resume = out + ".ckpt.pt" if self.trainResumeCheckBox.checked else None
        self._busy(True)
        try:
            with slicer.util.tryWithErrorDisplay(_("Training failed."), waitCursor=True):
                try:
                    payload = self.logic.trainForPatient(
                        p.ctVolume, p.xrayVolume, self.ui.geometryPathLineEdit.currentPath,
                        p.initialTransform, out,
                        [b.value for b in self.rotationRangeBoxes],
                        [b.value for b in self.translationRangeBoxes],
                        self.trainMinutesSpinBox.value, seed=self.trainSeedSpinBox.value,
                        resume=resume, progress=self._progress, cancel=self._cancelToken)
                except CancelledError:
                    self.ui.statusLabel.text = _("Training cancelled; the last checkpoint is "
                                                 "kept ({path}); tick resume to continue.").format(
                        path=out + ".ckpt.pt")
                    return
                self.modelPathEdit.currentPath = out
                tr = payload.get("training", {})
                self.ui.statusLabel.text = _("Trained {n} steps ({why}); saved {path}").format(
                    n=tr.get("steps", "?"), why=tr.get("stopped", ""), path=out)
        finally:
            self._busy(False)

    def onRegisterFromNominal(self) -> None:
        if not self._ensureTorch():
            return
        p = self._parameterNode
        xrays, paths = self._xraysAndGeometries()
        self._register(lambda **common: self.logic.processFromModel(
            p.ctVolume, xrays, paths, self._modelPath(),
            nominalTransforms=[p.initialTransform, p.initialTransform2] if p.xrayVolume2
            else None, **common))

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.ctVolume = first

    def setParameterNode(self, inputParameterNode: Optional[FluoroRegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.ctVolume
                     and self._parameterNode.xrayVolume)
        self.ui.applyButton.enabled = ready and self._cancelToken is None
        self.ui.applyButton.toolTip = (_("Register the CT to the X-ray image(s)") if ready
                                       else _("Select a CT volume and an X-ray image"))

    # -- actions -----------------------------------------------------------------------
    def onDefaultPoseButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot set the initial pose."), waitCursor=True):
            p = self._parameterNode
            node = p.initialTransform or slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLLinearTransformNode", "FluoroReg initial ct_to_camera")
            p.initialTransform = node
            self.logic.setDefaultInitialPose(p.ctVolume, p.xrayVolume,
                                             self.ui.geometryPathLineEdit.currentPath, node)

    def onCancelButton(self) -> None:
        if self._cancelToken is not None:
            self._cancelToken.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps the Cancel button responsive

    def _updateViews(self) -> None:
        """The 3D scene (when checked) and the X-ray/DRR comparison in the slice views."""
        result = getattr(self, "_lastResult", None)
        if result is None:
            return
        p = self._parameterNode
        xrays = [p.xrayVolume] + ([p.xrayVolume2] if p.xrayVolume2 else [])
        paths = [self.ui.geometryPathLineEdit.currentPath] + (
            [self.ui.geometry2PathLineEdit.currentPath] if p.xrayVolume2 else [])
        with slicer.util.tryWithErrorDisplay(_("The 3D view could not be built."), waitCursor=True):
            if self.ui.show3dCheckBox.checked:
                self.logic.showScene(p.ctVolume, xrays, paths, result)
            mode = ("blend", "checkerboard")[max(0, self.ui.compareComboBox.currentIndex)]
            self.logic.showComparison(p.xrayVolume, p.drrVolume, mode)

    def onApplyButton(self) -> None:
        if not self._ensureTorch():
            return
        p = self._parameterNode
        xrays, paths = self._xraysAndGeometries()
        inits = ([p.initialTransform, p.initialTransform2] if p.xrayVolume2 else
                 ([p.initialTransform] if p.initialTransform else None))
        self._register(lambda **common: self.logic.process(p.ctVolume, xrays, paths, inits,
                                                           **common))

    def _xraysAndGeometries(self):
        """The selected X-ray volumes and their geometry file paths (one or two views)."""
        p = self._parameterNode
        xrays = [p.xrayVolume] + ([p.xrayVolume2] if p.xrayVolume2 else [])
        paths = [self.ui.geometryPathLineEdit.currentPath] + (
            [self.ui.geometry2PathLineEdit.currentPath] if p.xrayVolume2 else [])
        return xrays, paths

    def _register(self, run) -> None:
        """Run one registration ``run(**common)`` (the panel's method, options and outputs,
        progress and Cancel), then show its result; Cancel leaves the inputs unchanged."""
        from SurgicalReg2D3DLib.errors import CancelledError

        p = self._parameterNode
        self._busy(True)
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                try:
                    result = run(method=p.method, negativeLog=p.negativeLog,
                                 iterations=p.iterations, outputTransform=p.outputTransform,
                                 drrVolume=p.drrVolume, fiducials=p.fiducials,
                                 trueTransform=p.trueTransform, progress=self._progress,
                                 cancel=self._cancelToken, applyFailed=False)
                except CancelledError:
                    self.ui.statusLabel.text = _("Registration cancelled; inputs unchanged.")
                    return
                self._showResult(result)
        finally:
            self._busy(False)

    def _showResult(self, result) -> None:
        p = self._parameterNode
        q = getattr(result, "quality", None)
        if result.outputs.get("not_applied") and slicer.util.confirmYesNoDisplay(
                _("The registration is judged FAILED:") + "\n" + q.summary() + "\n\n"
                + _("Apply this transform anyway?")):
            from FluoroRegLib import logic
            logic.apply_result(self.logic._context(), result, p.outputTransform)
        if result.outputs.get("output_transform_node"):
            p.outputTransform = slicer.mrmlScene.GetNodeByID(result.outputs["output_transform_node"])
        p.drrVolume = slicer.mrmlScene.GetNodeByID(result.outputs["drr_node"])
        rows = [("method", result.method), ("similarity", f"{result.similarity:.4f}"),
                ("iterations", str(len(result.history))), ("time (s)", f"{result.time_s:.1f}")]
        rows += [(k, f"{v:.3f}") for k, v in result.metrics.items()]
        views = getattr(result, "view_qualities", []) if q is not None else []
        if q is not None:  # the trust value first, coloured by verdict
            rows.insert(0, ("quality", q.summary()))
            if len(views) > 1:
                rows[1:1] = [(f"quality view {k + 1}", v.summary()) for k, v in enumerate(views)]
        self.ui.resultsTable.setRowCount(len(rows))
        import qt
        colours = {"ok": "#2e7d32", "doubtful": "#ef6c00", "failed": "#c62828", "skipped": "#757575"}
        for r, (key, value) in enumerate(rows):
            self.ui.resultsTable.setItem(r, 0, qt.QTableWidgetItem(key))
            item = qt.QTableWidgetItem(value)
            if key.startswith("quality"):
                item.setForeground(qt.QBrush(qt.QColor(colours.get(value.split(":")[0].split(",")[0], "#000000"))))
            self.ui.resultsTable.setItem(r, 1, item)
        self._lastResult = result
        self._updateViews()
        self.logic.showConvergence(result)
        self.ui.statusLabel.text = _("Done.") if q is None else _("Done: ") + q.verdict + (
            "" if "output_transform_node" in result.outputs else _(" (transform not applied)"))


class FluoroRegLogic(ScriptedLoadableModuleLogic):
    """Delegates to ``FluoroRegLib.logic``; no computation here."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return FluoroRegParameterNode(super().getParameterNode())

    @staticmethod
    def _context():
        from SurgicalReg2D3DLib.scene import SceneContext

        return SceneContext.from_slicer()

    def setDefaultInitialPose(self, ctVolume, xrayVolume, geometryPath, transformNode):
        from FluoroRegLib import logic
        from FluoroRegLib.drr import DRRVolume
        from SurgicalReg2D3DLib import nodes
        from SurgicalReg2D3DLib.errors import InputError

        if ctVolume is None or xrayVolume is None:
            raise InputError("CT volume: select a CT and an X-ray image first")
        ct = nodes.volume_from_node(ctVolume, name="CT volume")
        camera = logic.camera_for_xray_node(xrayVolume, geometryPath)
        pose = logic.default_initial_pose(DRRVolume.from_hu(ct.array, ct.ijk_to_ras), camera)
        nodes.matrix_to_transform_node(self._context(), pose, "initial transform", node=transformNode)

    def process(self, ctVolume, xrayVolumes, geometryPaths, initialTransforms=None,
                method="ncc", negativeLog=False, iterations=20, outputTransform=None,
                drrVolume=None, fiducials=None, trueTransform=None, progress=None, cancel=None,
                applyFailed=True):
        """Run the registration (see ``FluoroRegLib.logic.register_nodes``) on the device
        chosen in the hub ("Compute on"; ``SurgicalReg2D3DLib.device.choose_device``);
        ``applyFailed=False``: a result judged failed is not written (the widget asks)."""
        from FluoroRegLib import logic
        from SurgicalReg2D3DLib.device import choose_device

        names = (["X-ray image"] if len(xrayVolumes) == 1 else
                 [f"X-ray image {k + 1}" for k in range(len(xrayVolumes))])
        cameras = [logic.camera_for_xray_node(node, path, name)
                   for node, path, name in zip(xrayVolumes, geometryPaths, names)]
        return logic.register_nodes(
            self._context(), ctVolume, xrayVolumes, cameras, initialTransforms, method=method,
            output_transform_node=outputTransform, drr_node=drrVolume, fiducials_node=fiducials,
            true_transform_node=trueTransform, negative_log=negativeLog,
            iterations=iterations, device=choose_device(), progress=progress, cancel=cancel,
            apply_failed=applyFailed)

    def trainForPatient(self, ctVolume, xrayVolume, geometryPath, nominalTransform, out,
                        rotationDeg, translationMm, maxMinutes, seed=0, resume=None,
                        progress=None, cancel=None):
        """Train a pose regressor for this CT and X-ray geometry about the nominal view
        (``FluoroRegLib.learned.nodes_logic.train_for_nodes``, what ``surgreg fluoro
        train`` runs); returns the model payload."""
        from FluoroRegLib import logic
        from FluoroRegLib.learned.nodes_logic import train_for_nodes
        from FluoroRegLib.learned.train import TrainConfig
        from SurgicalReg2D3DLib.device import choose_device
        from SurgicalReg2D3DLib.errors import InputError

        if xrayVolume is None:
            raise InputError("X-ray image: select one (its geometry is the detector to train for)")
        if nominalTransform is None:
            raise InputError("nominal transform: set the initial transform to the C-arm's "
                             "nominal view (e.g. \"Default pose\")")
        camera = logic.camera_for_xray_node(xrayVolume, geometryPath)
        config = TrainConfig(rotation_deg=tuple(rotationDeg), translation_mm=tuple(translationMm),
                             max_minutes=float(maxMinutes), seed=int(seed), device=choose_device(),
                             command="FluoroReg module: Train for this patient")
        return train_for_nodes(ctVolume, camera, nominalTransform, out, config=config,
                               resume=resume, progress=progress, cancel=cancel)

    def processFromModel(self, ctVolume, xrayVolumes, geometryPaths, model,
                         nominalTransforms=None, method="ncc", **kwargs):
        """"Register from nominal view": the model's start poses
        (``nodes_logic.starts_for_nodes``, as ``surgreg fluoro register --model``), then
        :meth:`process` from them."""
        from FluoroRegLib import logic
        from FluoroRegLib.learned.nodes_logic import starts_for_nodes
        from SurgicalReg2D3DLib.errors import InputError

        if not model:
            raise InputError("model file: choose a trained model (or train one first)")
        names = (["X-ray image"] if len(xrayVolumes) == 1 else
                 [f"X-ray image {k + 1}" for k in range(len(xrayVolumes))])
        cameras = [logic.camera_for_xray_node(node, path, name)
                   for node, path, name in zip(xrayVolumes, geometryPaths, names)]
        starts = starts_for_nodes(ctVolume, xrayVolumes, cameras, model,
                                  nominal_views=nominalTransforms)
        return self.process(ctVolume, xrayVolumes, geometryPaths, starts, method=method,
                            **kwargs)

    def showScene(self, ctVolume, xrayVolumes, geometryPaths, result):
        """The 3D scene of the result (``FluoroRegLib.scene3d.build_scene``): bone surface,
        each X-ray on its detector plane, the source frustum; replaces the previous one."""
        from FluoroRegLib import logic, scene3d
        from SurgicalReg2D3DLib import nodes

        for node in list(slicer.util.getNodes("FluoroReg *").values()):
            if node.IsA("vtkMRMLModelNode"):
                slicer.mrmlScene.RemoveNode(node)
        cameras, images = [], []
        for k, (node, path) in enumerate(zip(xrayVolumes, geometryPaths)):
            cameras.append(logic.camera_for_xray_node(node, path or None))
            image, _m = nodes.image2d_from_node(node, f"X-ray image {k + 1}")
            images.append(image if image.ndim == 2 else image[..., :3].mean(axis=2))
        return scene3d.build_scene(self._context(), ctVolume, images, cameras,
                                   result.views_ct_to_camera[:len(images)])

    def showComparison(self, xrayVolume, drrVolume, mode="blend"):
        """X-ray and DRR in the slice views: blended (DRR over the X-ray at 50 %) or as a
        checkerboard image (``SurgicalReg2D3DLib.compare``)."""
        if mode == "blend":
            slicer.util.setSliceViewerLayers(background=xrayVolume, foreground=drrVolume,
                                             foregroundOpacity=0.5, fit=True)
            return None
        import numpy as np

        from SurgicalReg2D3DLib import compare, nodes

        xray, ijk = nodes.image2d_from_node(xrayVolume, "X-ray image")
        drr, _m = nodes.image2d_from_node(drrVolume, "DRR")
        board = compare.checkerboard(xray if xray.ndim == 2 else xray[..., :3].mean(axis=2), drr)
        node = slicer.mrmlScene.GetFirstNodeByName("FluoroReg checkerboard")
        node = nodes.image2d_to_node(self._context(), board.astype(np.float32),
                                     "FluoroReg checkerboard", ijk_to_ras=ijk, node=node)
        slicer.util.setSliceViewerLayers(background=node, foreground=None, fit=True)
        return node

    def showConvergence(self, result):
        """Convergence (1 - similarity per iteration) as a table + plot in the layout."""
        tableNode = slicer.mrmlScene.GetFirstNodeByName("FluoroReg convergence") or \
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "FluoroReg convergence")
        import numpy as np

        losses = np.array([h["loss"] for h in result.history], dtype=float)
        slicer.util.updateTableFromArray(tableNode, np.c_[np.arange(1, len(losses) + 1), losses],
                                         ["iteration", "1 - similarity"])
        series = slicer.mrmlScene.GetFirstNodeByName("FluoroReg loss") or \
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "FluoroReg loss")
        series.SetAndObserveTableNodeID(tableNode.GetID())
        series.SetXColumnName("iteration")
        series.SetYColumnName("1 - similarity")
        series.SetPlotType(series.PlotTypeScatter)
        chart = slicer.mrmlScene.GetFirstNodeByName("FluoroReg convergence chart") or \
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "FluoroReg convergence chart")
        chart.SetAndObservePlotSeriesNodeID(series.GetID())
        chart.SetXAxisTitle("iteration")
        chart.SetYAxisTitle("1 - similarity")
        slicer.modules.plots.logic().ShowChartInLayout(chart)


class FluoroRegTest(ScriptedLoadableModuleTest):
    """Loads the shipped CT, simulates an X-ray at a known pose, registers, checks mTRE."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FluoroReg_simulated_xray()

    def test_FluoroReg_simulated_xray(self):
        import SurgicalReg2D3D

        missing = SurgicalReg2D3D.missingDependencies(["FluoroReg"])
        if missing:
            self.skipTest(f"FluoroReg self-test needs {', '.join(missing)} (not installed; "
                          "install it from the SurgicalReg2D3D module)")
        import numpy as np

        from FluoroRegLib import logic as fluoro_logic
        from FluoroRegLib.drr import DRRVolume
        from FluoroRegLib.geometry import make_camera
        from FluoroRegLib.simulate import downsample_ct, mtre_np, sample_landmarks, simulate_case
        from SurgicalReg2D3DLib import nodes
        from SurgicalReg2D3DLib.paths import sample_data_path

        self.delayDisplay("Loading the sample CT")
        # Source, build and install trees alike (raises when the data is missing).
        path = str(sample_data_path("ct/thorax_aorta_ct_cropped.nii.gz"))
        ctNode = slicer.util.loadVolume(path)
        ct = nodes.volume_from_node(ctNode, name="CT volume")
        hu, m = downsample_ct(ct.array.astype(np.float32), ct.ijk_to_ras, 2)
        ctx = FluoroRegLogic._context()
        smallCt = nodes.volume_to_node(ctx, hu, m, "CT 3 mm")

        self.delayDisplay("Simulating an X-ray (synthetic) at a known pose")
        volume = DRRVolume.from_hu(hu, m)
        camera = make_camera(1000.0, (5.0, 5.0), (48, 48))
        landmarks = sample_landmarks(hu, m, 20, seed=0)
        case = simulate_case(volume, camera, np.random.default_rng(1), landmarks,
                             mtre_range_mm=(10, 20), rotation_range_deg=(5, 10))
        xrayNode = nodes.image2d_to_node(ctx, case.images[0], "simulated X-ray")
        fluoro_logic.set_node_geometry(xrayNode, camera)
        initNode = nodes.matrix_to_transform_node(ctx, case.init_ct_to_camera[0], "initial")
        trueNode = nodes.matrix_to_transform_node(ctx, case.true_ct_to_camera[0], "truth")
        fiducials = nodes.points_to_markups(ctx, landmarks, "landmarks")

        self.delayDisplay("Registering")
        result = FluoroRegLogic().process(smallCt, [xrayNode], [""], [initNode], method="ncc",
                                          iterations=10, fiducials=fiducials,
                                          trueTransform=trueNode)
        error = mtre_np(result.ct_to_camera, case.true_ct_to_camera[0], landmarks)
        self.assertLess(error, 3.0)
        self.assertAlmostEqual(result.metrics["mtre_mm"], error, places=6)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(result.outputs["drr_node"]))

        self.delayDisplay("Building the 3D scene and the checkerboard")
        ids = FluoroRegLogic().showScene(smallCt, [xrayNode], [""], result)
        from SurgicalReg2D3DLib import views3d

        plane = slicer.mrmlScene.GetNodeByID(ids["xray_planes"][0])
        corner = np.array(plane.GetPolyData().GetPoint(0))
        expected = views3d.xray_ijk_to_ras(camera, result.ct_to_camera) @ [-0.5, -0.5, 0, 1]
        self.assertTrue(np.allclose(corner, expected[:3], atol=1e-3))
        frustum = slicer.mrmlScene.GetNodeByID(ids["frusta"][0]).GetPolyData()
        source = np.linalg.inv(result.ct_to_camera)[:3, 3]
        self.assertTrue(np.allclose(frustum.GetPoint(0), source, atol=1e-3))
        board = FluoroRegLogic().showComparison(xrayNode, slicer.mrmlScene.GetNodeByID(
            result.outputs["drr_node"]), "checkerboard")
        self.assertEqual(board.GetImageData().GetDimensions()[:2], (48, 48))
        self.delayDisplay(f"Test passed: mTRE {case.initial_mtre_mm:.1f} -> {error:.2f} mm")
