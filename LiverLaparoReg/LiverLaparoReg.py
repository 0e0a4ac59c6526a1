"""LiverLaparoReg: overlay a preoperative liver model on a laparoscopic frame.

Thin Slicer shell: the GUI is wired here; all the work is in ``LiverLaparoRegLib``
(Qt-free, also used by the ``surgreg laparo`` command line).
"""

import os
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
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import (
    vtkMRMLLinearTransformNode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLVectorVolumeNode,
)

#: GUI method names: "auto" + ``LiverLaparoRegLib.logic.METHODS`` keys (the learned-methods
#: issue adds its names here and to the registry).
METHOD_CHOICES = ["auto", "pnp", "pnp+silhouette", "silhouette", "learned"]


class LiverLaparoReg(ScriptedLoadableModule):
    """Module description (Slicer 5.x scripted module)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LiverLaparoReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"]
        self.parent.dependencies = ["SurgicalReg2D3D"]
        self.parent.contributors = ["SlicerSurgicalReg2D3D contributors (SlicerSurgicalReg2D3D project)"]
        self.parent.helpText = _(
            "Register a preoperative liver model to a laparoscopic frame. Inputs: the liver "
            "model, the frame (2D RGB image), the camera (P2ILF camera JSON or a 3x3 "
            "intrinsics text file with optional distortion), and a liver mask and/or P2ILF "
            "2D + 3D landmark contours (ridge, ligament, silhouette), optionally an initial "
            "pose. Methods: pnp (contours: arc-length correspondences, EPnP + RANSAC, "
            "refinement), pnp+silhouette (then a joint refinement with the mask) and "
            "silhouette (mask Dice refinement of an initial pose). Output: "
            "the model_to_camera transform (OpenCV camera: x right, y down, z forward, mm), "
            "an overlay picture and the metrics.")
        self.parent.acknowledgementText = _(
            "Part of the SlicerSurgicalReg2D3D extension. Sample data: SciKit-Surgery liver "
            "models (BSD-3) and the P2ILF challenge data (MIT).")


@parameterNodeWrapper
class LiverLaparoRegParameterNode:
    """Inputs, options and outputs of the module."""

    modelNode: vtkMRMLModelNode
    frameVolume: vtkMRMLVectorVolumeNode
    maskVolume: vtkMRMLScalarVolumeNode
    maskSegmentation: vtkMRMLSegmentationNode
    initialTransform: vtkMRMLLinearTransformNode
    method: Annotated[str, Choice(METHOD_CHOICES)] = "auto"
    nonrigid: bool = False
    outputTransform: vtkMRMLLinearTransformNode
    outputModel: vtkMRMLModelNode
    overlayVolume: vtkMRMLVectorVolumeNode


class LiverLaparoRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: selects inputs, runs the logic with progress and Cancel, shows results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelToken = None
        self._liveVideo = None        # (browser, LiveVideoRegistration) while live
        self._lastResult = None       # (result, camera) of the last registration

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverLaparoReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.cameraPathLineEdit.nameFilters = ["Camera (*.json *.txt)"]
        self.ui.distortionPathLineEdit.nameFilters = ["Distortion (*.txt)"]
        self.ui.contours2dPathLineEdit.nameFilters = ["P2ILF 2D contours (*.json)"]
        self.ui.contours3dPathLineEdit.nameFilters = ["P2ILF 3D contours (*.json)"]
        self.ui.resultsTable.horizontalHeader().setStretchLastSection(True)

        self.logic = LiverLaparoRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.frameSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._showFrameCamera)
        self.ui.cameraIntrinsicsLineEdit.connect("editingFinished()", self.onEditIntrinsics)
        self.ui.loadVideoButton.connect("clicked(bool)", self.onLoadVideo)
        self.ui.registerVideoButton.connect("clicked(bool)", self.onRegisterVideo)
        self.ui.liveVideoCheckBox.connect("toggled(bool)", self.onLiveVideo)
        self.ui.arOpacitySlider.connect("valueChanged(double)", lambda v: self._updateViews())
        self.ui.compareComboBox.addItems([_("overlay"), _("blend"), _("checkerboard")])
        self.ui.compareComboBox.connect("currentIndexChanged(int)", lambda i: self._updateViews())
        self._setupCorrespondenceSection()
        self.initializeParameterNode()

    def _setupCorrespondenceSection(self) -> None:
        """"Learned correspondences": predict them on the frame (no contours, no start
        pose), edit the point list in the slice view (delete, drag), register from what is
        left. The liver mask is the module's (mask volume or Segment Editor segmentation)."""
        import ctk
        import qt

        box = ctk.ctkCollapsibleButton()
        box.text = _("Learned correspondences (check before the pose)")
        box.collapsed = True
        form = qt.QFormLayout(box)
        self.predictButton = qt.QPushButton(_("Predict correspondences"))
        self.predictButton.toolTip = _("The learned model matches mesh vertices to frame "
                                       "pixels; they appear as a point list on the frame, "
                                       "labelled v<vertex> <class> <confidence>")
        form.addRow(self.predictButton)
        self.anyViewCheckBox = qt.QCheckBox(_("Search every viewing direction"))
        self.anyViewCheckBox.toolTip = _(
            "The learned method searches laparoscope views that look at the model's anterior "
            "surface (a model in its CT's patient frame). Check this for a model in another "
            "frame: the whole sphere is searched (about 1.7 times slower). Applies "
            "to 'Predict correspondences' and to the 'learned' method.")
        form.addRow(self.anyViewCheckBox)
        self.fromMarkupsButton = qt.QPushButton(_("Register from the edited correspondences"))
        self.fromMarkupsButton.toolTip = _("Delete wrong points or drag them to the right pixel "
                                           "first; EPnP + RANSAC on what is left, then the "
                                           "silhouette refinement with the mask")
        self.fromMarkupsButton.enabled = False
        form.addRow(self.fromMarkupsButton)
        self.layout.addWidget(box)
        self._correspondenceNode = None
        self.predictButton.connect("clicked(bool)", self.onPredictCorrespondences)
        self.fromMarkupsButton.connect("clicked(bool)", self.onRegisterFromCorrespondences)

    def _inputs(self):
        p = self._parameterNode
        return dict(modelNode=p.modelNode, frameVolume=p.frameVolume,
                    cameraPath=self.ui.cameraPathLineEdit.currentPath or None,
                    distortionPath=self.ui.distortionPathLineEdit.currentPath or None,
                    maskVolume=p.maskVolume, maskSegmentation=p.maskSegmentation)

    def onPredictCorrespondences(self) -> None:
        import SurgicalReg2D3D

        with slicer.util.tryWithErrorDisplay(_("The dependencies could not be installed."),
                                             waitCursor=True):
            if not SurgicalReg2D3D.ensureDependencies(["LiverLaparoReg"]):
                self.ui.statusLabel.text = _("LiverLaparoReg needs PyTorch and OpenCV; not installed.")
                return
        with slicer.util.tryWithErrorDisplay(_("No correspondences."), waitCursor=True):
            node, result = self.logic.predictCorrespondences(
                markupsNode=self._correspondenceNode, progress=self._progress,
                anyViewDirection=self.anyViewCheckBox.checked, **self._inputs())
            self._correspondenceNode = node
            self.fromMarkupsButton.enabled = True
            q = getattr(result, "quality", None)
            self.ui.statusLabel.text = _("{n} correspondences shown ({name}); the learned pose "
                                         "was judged {verdict}. Edit them, then register.").format(
                n=node.GetNumberOfControlPoints(), name=node.GetName(),
                verdict=q.verdict if q is not None else "-")

    def onRegisterFromCorrespondences(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
            p = self._parameterNode
            transform, r = self.logic.processFromCorrespondences(
                self._correspondenceNode, outputTransform=p.outputTransform, **self._inputs())
            p.outputTransform = transform
            self.ui.statusLabel.text = _("Pose from {k} of {n} correspondences (RANSAC "
                                         "inliers).").format(
                k=len(r.inliers), n=self._correspondenceNode.GetNumberOfControlPoints())

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
        if not self._parameterNode.modelNode:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLModelNode")
            if first:
                self._parameterNode.modelNode = first

    def setParameterNode(self, inputParameterNode: Optional[LiverLaparoRegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.modelNode
                     and self._parameterNode.frameVolume)
        self.ui.applyButton.enabled = ready and self._cancelToken is None
        self.ui.applyButton.toolTip = (_("Register the liver model to the frame") if ready
                                       else _("Select a liver model and a frame"))

    def onCancelButton(self) -> None:
        if self._cancelToken is not None:
            self._cancelToken.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps the Cancel button responsive

    def onApplyButton(self) -> None:
        import SurgicalReg2D3D

        with slicer.util.tryWithErrorDisplay(_("The dependencies could not be installed."),
                                             waitCursor=True):
            if not SurgicalReg2D3D.ensureDependencies(["LiverLaparoReg"]):
                self.ui.statusLabel.text = _("LiverLaparoReg needs PyTorch and OpenCV; not installed.")
                return
        from SurgicalReg2D3DLib.errors import CancelledError
        from SurgicalReg2D3DLib.progress import CancelToken

        p = self._parameterNode
        self._cancelToken = CancelToken()
        self.ui.cancelButton.enabled = True
        self._checkCanApply()
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                try:
                    result, outputs = self.logic.process(
                        p.modelNode, p.frameVolume, self.ui.cameraPathLineEdit.currentPath or None,
                        distortionPath=self.ui.distortionPathLineEdit.currentPath or None,
                        maskVolume=p.maskVolume,
                        contours2dPath=self.ui.contours2dPathLineEdit.currentPath or None,
                        contours3dPath=self.ui.contours3dPathLineEdit.currentPath or None,
                        initialTransform=p.initialTransform, method=p.method,
                        nonrigid=p.nonrigid, outputTransform=p.outputTransform,
                        structureNodes=list(self.ui.structuresSelector.checkedNodes()),
                        applyFailed=False, anyViewDirection=self.anyViewCheckBox.checked,
                        outputModel=p.outputModel, overlayVolume=p.overlayVolume,
                        curves2d=list(self.ui.curves2dSelector.checkedNodes()),
                        curves3d=list(self.ui.curves3dSelector.checkedNodes()),
                        maskSegmentation=p.maskSegmentation,
                        progress=self._progress, cancel=self._cancelToken)
                except CancelledError:
                    self.ui.statusLabel.text = _("Registration cancelled; inputs unchanged.")
                    return
                self._showResult(result, outputs)
        finally:
            self._cancelToken = None
            self.ui.cancelButton.enabled = False
            self._checkCanApply()

    def _showResult(self, result, outputs) -> None:
        import qt

        p = self._parameterNode
        if result.metrics.get("not_applied") and slicer.util.confirmYesNoDisplay(
                _("The registration is judged FAILED:") + "\n" + result.quality.summary()
                + "\n\n" + _("Apply this transform anyway?")):
            from SurgicalReg2D3DLib import nodes
            from SurgicalReg2D3DLib.scene import SceneContext
            nodes.matrix_to_transform_node(SceneContext.from_slicer(), result.model_to_camera,
                                           "model_to_camera", node=outputs["transform"])
            result.metrics.pop("not_applied")
        p.outputTransform = outputs["transform"]
        p.overlayVolume = outputs["overlay"]
        if outputs.get("model") is not None:
            p.outputModel = outputs["model"]
        rows = [("method", result.method)]
        rows += [(k, f"{v:.3f}") for k, v in result.metrics.items() if isinstance(v, float)]
        for label, e in result.metrics.get("reprojection", {}).items():
            rows.append((f"Hausdorff {label} (px)", f"{e['hausdorff_px']:.1f}"))
        rows.append(("time (s)", f"{result.timings.get('total_s', 0.0):.2f}"))
        q = result.quality
        if q is not None:  # the trust value first, coloured by verdict
            rows.insert(0, ("quality", q.summary()))
        self.ui.resultsTable.setRowCount(len(rows))
        colours = {"ok": "#2e7d32", "doubtful": "#ef6c00", "failed": "#c62828", "skipped": "#757575"}
        for r, (key, value) in enumerate(rows):
            self.ui.resultsTable.setItem(r, 0, qt.QTableWidgetItem(key))
            item = qt.QTableWidgetItem(value)
            if key == "quality":
                item.setForeground(qt.QBrush(qt.QColor(colours.get(q.verdict, "#000000"))))
            self.ui.resultsTable.setItem(r, 1, item)
        slicer.util.setSliceViewerLayers(background=p.overlayVolume, fit=True)
        self._lastResult = (result, outputs["camera"])
        self._showFrameCamera()
        self._updateViews()
        self.ui.statusLabel.text = _("Done.") if q is None else _("Done: ") + q.verdict + (
            _(" (transform not applied)") if result.metrics.get("not_applied") else "")

    # -- camera stored with the frame -------------------------------------------------------
    def _showFrameCamera(self, node=None) -> None:
        from LiverLaparoRegLib.node_inputs import CAMERA_ATTRIBUTE, camera_for_frame_node

        frame = self._parameterNode.frameVolume if self._parameterNode else None
        if frame is None or not frame.GetAttribute(CAMERA_ATTRIBUTE):
            self.ui.cameraSummaryLabel.text = _("(none stored; choose a camera file)")
            self.ui.cameraIntrinsicsLineEdit.text = ""
            return
        cam = camera_for_frame_node(frame)
        self.ui.cameraSummaryLabel.text = (f"{cam.width} x {cam.height} px, "
                                           f"{len(cam.dist_coeffs)} distortion coefficients")
        self.ui.cameraIntrinsicsLineEdit.text = f"{cam.fx:g}, {cam.fy:g}, {cam.cx:g}, {cam.cy:g}"

    def onEditIntrinsics(self) -> None:
        import dataclasses

        from LiverLaparoRegLib.node_inputs import camera_for_frame_node, set_frame_camera

        frame = self._parameterNode.frameVolume
        with slicer.util.tryWithErrorDisplay(_("Invalid intrinsics."), waitCursor=False):
            values = [float(v) for v in self.ui.cameraIntrinsicsLineEdit.text.split(",")]
            if len(values) != 4:
                raise ValueError(_("give four numbers: fx, fy, cx, cy"))
            cam = camera_for_frame_node(frame)
            set_frame_camera(frame, dataclasses.replace(cam, fx=values[0], fy=values[1],
                                                        cx=values[2], cy=values[3]))
        self._showFrameCamera()

    # -- 3D views ---------------------------------------------------------------------------
    def _updateViews(self) -> None:
        if self._lastResult is None:
            return
        result, camera = self._lastResult
        p = self._parameterNode
        models = [m for m in [p.outputModel or p.modelNode]
                  + list(self.ui.structuresSelector.checkedNodes()) if m is not None]
        self.logic.showViews(result, camera, p.frameVolume, models,
                             arView=self.ui.arViewCheckBox.checked,
                             opacity=self.ui.arOpacitySlider.value,
                             frustum=self.ui.frustumCheckBox.checked,
                             compare=("overlay", "blend", "checkerboard")[
                                 self.ui.compareComboBox.currentIndex],
                             overlayVolume=p.overlayVolume)

    # -- video ------------------------------------------------------------------------------
    def onLoadVideo(self) -> None:
        import SurgicalReg2D3D

        path = self.ui.videoPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("The video could not be loaded."), waitCursor=True):
            if not SurgicalReg2D3D.ensureDependencies(["LiverLaparoReg"]):
                return
            from LiverLaparoRegLib.video import load_video_to_scene

            seq, browser = load_video_to_scene(LiverLaparoRegLogic._context(), path,
                                               name=os.path.basename(path.rstrip("/")) or "video")
            self.ui.videoSequenceSelector.setCurrentNode(seq)
            slicer.modules.sequences.setToolBarActiveBrowserNode(browser)
            self.ui.statusLabel.text = _("Loaded {n} frames.").format(n=seq.GetNumberOfDataNodes())

    def onRegisterVideo(self) -> None:
        p = self._parameterNode
        seq = self.ui.videoSequenceSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("Video registration failed."), waitCursor=True):
            reg, out = self.logic.processVideo(p.modelNode, seq,
                                               self.ui.maskSequenceSelector.currentNode(),
                                               p.initialTransform,
                                               cameraPath=self.ui.cameraPathLineEdit.currentPath or None,
                                               progress=self._progress)
            self.ui.statusLabel.text = _("{n} frames registered, {k} skipped.").format(
                n=len(reg.poses) - len(reg.skipped), k=len(reg.skipped))

    def onLiveVideo(self, on: bool) -> None:
        if self._liveVideo is not None:
            self.removeObserver(self._liveVideo[0], vtk.vtkCommand.ModifiedEvent,
                                self._onBrowserModified)
            self._liveVideo = None
        if not on:
            return
        p = self._parameterNode
        seq = self.ui.videoSequenceSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("Live mode could not start."), waitCursor=True):
            try:
                self._liveVideo = self.logic.startLiveVideo(
                    p.modelNode, seq, self.ui.maskSequenceSelector.currentNode(),
                    p.initialTransform, p.outputTransform)
            except Exception:
                self.ui.liveVideoCheckBox.checked = False
                raise
            self.addObserver(self._liveVideo[0], vtk.vtkCommand.ModifiedEvent,
                             self._onBrowserModified)

    def _onBrowserModified(self, caller=None, event=None) -> None:
        message = self.logic.updateLiveVideo(*self._liveVideo[1:])
        self.ui.statusLabel.text = message


class LiverLaparoRegLogic(ScriptedLoadableModuleLogic):
    """Delegates to ``LiverLaparoRegLib``; no computation here."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LiverLaparoRegParameterNode(super().getParameterNode())

    @staticmethod
    def _context():
        from SurgicalReg2D3DLib.scene import SceneContext

        return SceneContext.from_slicer()

    def process(self, modelNode, frameVolume, cameraPath, distortionPath=None, maskVolume=None,
                contours2dPath=None, contours3dPath=None, initialTransform=None, method="auto",
                nonrigid=False, outputTransform=None, outputModel=None, overlayVolume=None,
                structureNodes=None, curves2d=None, curves3d=None, maskSegmentation=None,
                progress=None, cancel=None, applyFailed=True, anyViewDirection=False):
        """Run the registration; returns ``(LaparoResult, {"transform", "model", "overlay",
        "structures", "camera"})``. ``applyFailed=False``: a pose judged failed is not
        written (the widget asks first).

        Inputs come from nodes where no file is given (``node_inputs.resolve_inputs``): the
        camera stored with the frame, Markups curves ``curves2d`` / ``curves3d``, and the
        liver painted in ``maskSegmentation`` (used instead of ``maskVolume``).
        ``structureNodes``: optional vessel / tumour model nodes (liver model frame); with
        ``nonrigid`` a deformed copy of each is created (inputs unchanged); all are drawn
        on the overlay (deformed when available). ``anyViewDirection``: the learned method
        searches every viewing direction, not only views of the anterior surface (a model
        that is not in its CT's patient frame)."""
        from LiverLaparoRegLib import logic
        from LiverLaparoRegLib.node_inputs import resolve_inputs
        from LiverLaparoRegLib.overlay import overlay_image
        from SurgicalReg2D3DLib import nodes
        from SurgicalReg2D3DLib.errors import InputError

        if frameVolume is None:
            raise InputError("image: select a frame")
        ctx = self._context()
        image, _ijk = nodes.image2d_from_node(frameVolume, "image")
        vertices, faces = logic.model_mesh_arrays(modelNode)
        camera, c2, c3, mask = resolve_inputs(
            ctx, frameVolume, vertices, camera_path=cameraPath, distortion_path=distortionPath,
            curves2d=curves2d or (), curves3d=curves3d or (), contours2d_path=contours2dPath,
            contours3d_path=contours3dPath, mask_node=maskSegmentation)
        maskNode = maskVolume
        if mask is not None:   # the segmentation, as a mask volume on the frame's grid
            maskNode = nodes.image2d_to_node(ctx, mask.astype("uint8"), "LiverLaparoReg mask",
                                             ijk_to_ras=_ijk)
        transform = outputTransform or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLLinearTransformNode", "LiverLaparoReg model_to_camera")
        result = logic.register_nodes(
            ctx, modelNode, camera, frame_node=frameVolume, mask_node=maskNode,
            contours2d=c2, contours3d=c3, init_transform_node=initialTransform,
            method=None if method == "auto" else method, nonrigid=nonrigid,
            output_transform_node=transform, output_model_node=outputModel,
            structure_nodes=structureNodes or None, progress=progress, cancel=cancel,
            apply_failed=applyFailed,
            learned_options={"view_axis": None} if anyViewDirection else None)
        verts = vertices if result.deformed_vertices is None else result.deformed_vertices
        shown = {}
        if result.deformed_structures:
            shown = {s.name: s.vertices for s in result.deformed_structures}
        else:
            for node in structureNodes or ():
                shown[node.GetName()] = logic.model_mesh_arrays(node)[0]
        picture = overlay_image(image, verts, faces, result.model_to_camera, camera,
                                structures=shown, contours2d=c2 or ())
        overlay = nodes.image2d_to_node(ctx, picture, "LiverLaparoReg overlay", node=overlayVolume)
        model = None
        if result.deformed_vertices is not None:
            model = outputModel or slicer.mrmlScene.GetFirstNodeByName("deformed liver")
        return result, {"transform": transform, "model": model, "overlay": overlay,
                        "structures": list(result.structure_nodes), "camera": camera}

    def _cameraAndMask(self, modelNode, frameVolume, cameraPath, distortionPath, maskVolume,
                       maskSegmentation):
        from LiverLaparoRegLib import logic
        from LiverLaparoRegLib.node_inputs import resolve_inputs
        from SurgicalReg2D3DLib import nodes
        from SurgicalReg2D3DLib.errors import InputError

        if frameVolume is None:
            raise InputError("image: select a frame")
        if modelNode is None:
            raise InputError("mesh: select the liver model")
        vertices, _faces = logic.model_mesh_arrays(modelNode)
        camera, _c2, _c3, mask = resolve_inputs(
            self._context(), frameVolume, vertices, camera_path=cameraPath,
            distortion_path=distortionPath, mask_node=maskSegmentation)
        if mask is None and maskVolume is not None:
            mask, _m = nodes.image2d_from_node(maskVolume, "mask")
            if mask.ndim == 3:
                mask = mask.max(axis=2)
        return camera, mask

    def predictCorrespondences(self, modelNode, frameVolume, cameraPath, distortionPath=None,
                               maskVolume=None, maskSegmentation=None, markupsNode=None,
                               progress=None, cancel=None, anyViewDirection=False):
        """The learned correspondences as a point list on the frame
        (``LiverLaparoRegLib.learned.nodes.predict_correspondence_nodes``); returns
        ``(markups node, result)``. ``anyViewDirection``: see :meth:`process`."""
        from LiverLaparoRegLib.learned.nodes import predict_correspondence_nodes

        camera, mask = self._cameraAndMask(modelNode, frameVolume, cameraPath, distortionPath,
                                           maskVolume, maskSegmentation)
        return predict_correspondence_nodes(self._context(), modelNode, frameVolume, camera,
                                            mask=mask, markups_node=markupsNode,
                                            progress=progress, cancel=cancel,
                                            learned_options={"view_axis": None}
                                            if anyViewDirection else None)

    def processFromCorrespondences(self, markupsNode, modelNode, frameVolume, cameraPath,
                                   distortionPath=None, maskVolume=None, maskSegmentation=None,
                                   outputTransform=None):
        """The pose from the (edited) point list (``learned.nodes.register_nodes_from_markups``);
        returns ``(transform node, PnPResult)``."""
        from LiverLaparoRegLib.learned.nodes import register_nodes_from_markups

        camera, mask = self._cameraAndMask(modelNode, frameVolume, cameraPath, distortionPath,
                                           maskVolume, maskSegmentation)
        _T, r, node = register_nodes_from_markups(self._context(), modelNode, frameVolume, camera,
                                                  markupsNode, mask=mask,
                                                  output_transform_node=outputTransform)
        return node, r

    def showViews(self, result, camera, frameVolume, modelNodes, arView=True, opacity=0.5,
                  frustum=True, compare="overlay", overlayVolume=None):
        """AR view in 3D view 1 (camera = the laparoscope, frame as background), the camera
        frustum beside the model, and the compare image in the slice views."""
        import numpy as np

        from LiverLaparoRegLib import arview
        from SurgicalReg2D3DLib import compare as cmp
        from SurgicalReg2D3DLib import nodes, render3d

        ctx = self._context()
        image, ijk = nodes.image2d_from_node(frameVolume, "image")
        if arView:
            viewNode = slicer.app.layoutManager().threeDWidget(0).mrmlViewNode()
            cameraNode = slicer.modules.cameras.logic().GetViewActiveCameraNode(viewNode)
            frameModel = slicer.mrmlScene.GetFirstNodeByName("LiverLaparoReg AR frame")
            arview.setup_ar_view(ctx, cameraNode, camera, result.model_to_camera, frame=image,
                                 model_nodes=modelNodes, opacity=opacity,
                                 frame_model_node=frameModel)
        if frustum:
            node = slicer.mrmlScene.GetFirstNodeByName("LiverLaparoReg camera frustum")
            render3d.add_model_node(ctx, arview.frustum(camera, result.model_to_camera),
                                    "LiverLaparoReg camera frustum", color=(1.0, 1.0, 0.3),
                                    node=node)
        if compare != "overlay":
            from LiverLaparoRegLib.raster import render_mask

            from LiverLaparoRegLib.logic import model_mesh_arrays

            verts, faces = model_mesh_arrays(modelNodes[0])
            if result.deformed_vertices is not None:
                verts = result.deformed_vertices
            rendered = render_mask(verts, faces, result.model_to_camera, camera)[0].numpy()
            picture = (cmp.blend(image, rendered) if compare == "blend"
                       else cmp.checkerboard(image, rendered))
            node = slicer.mrmlScene.GetFirstNodeByName("LiverLaparoReg compare")
            node = nodes.image2d_to_node(ctx, (picture * 255).astype(np.uint8),
                                         "LiverLaparoReg compare", ijk_to_ras=ijk, node=node)
            slicer.util.setSliceViewerLayers(background=node, fit=True)
        elif overlayVolume is not None:
            slicer.util.setSliceViewerLayers(background=overlayVolume, fit=True)

    def _videoInputs(self, modelNode, sequenceNode, cameraPath=None):
        from LiverLaparoRegLib.camera import load_camera
        from LiverLaparoRegLib.node_inputs import camera_for_frame_node, set_frame_camera
        from SurgicalReg2D3DLib.errors import InputError

        if modelNode is None or sequenceNode is None:
            raise InputError("video: select the liver model and a frame sequence")
        if cameraPath:
            first = sequenceNode.GetNthDataNode(0)
            dims = first.GetImageData().GetDimensions()
            camera = load_camera(cameraPath, width=dims[0], height=dims[1])
            set_frame_camera(sequenceNode, camera)
        return camera_for_frame_node(sequenceNode)

    def processVideo(self, modelNode, sequenceNode, maskSequence, initialTransform,
                     cameraPath=None, progress=None, cancel=None):
        """Register every frame (temporal); returns ``(VideoRegistration, transform
        sequence)`` synchronised with the sequence's browser."""
        from LiverLaparoRegLib.video import register_video_nodes

        camera = self._videoInputs(modelNode, sequenceNode, cameraPath)
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForSequenceNode(
            sequenceNode)
        return register_video_nodes(self._context(), modelNode, camera, sequenceNode,
                                    maskSequence, initialTransform, browser=browser,
                                    progress=progress, cancel=cancel)

    def startLiveVideo(self, modelNode, sequenceNode, maskSequence, initialTransform,
                       outputTransform=None):
        """Live mode following the browser: returns ``(browser, live, maskSequence,
        outputTransform)``; :meth:`updateLiveVideo` registers the shown frame."""
        from LiverLaparoRegLib.logic import model_mesh_arrays
        from LiverLaparoRegLib.mesh import MeshData
        from LiverLaparoRegLib.video import LiveVideoRegistration
        from SurgicalReg2D3DLib import nodes
        from SurgicalReg2D3DLib.errors import InputError

        camera = self._videoInputs(modelNode, sequenceNode)
        if initialTransform is None:
            raise InputError("initial pose: live mode starts from an initial pose")
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForSequenceNode(
            sequenceNode)
        if browser is None:
            raise InputError("video: the frame sequence has no browser")
        v, f = model_mesh_arrays(modelNode)
        live = LiveVideoRegistration(MeshData(v, f, "mesh"), camera,
                                     nodes.matrix_from_transform_node(initialTransform))
        out = outputTransform or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLLinearTransformNode", "LiverLaparoReg live model_to_camera")
        return browser, live, maskSequence, out

    def updateLiveVideo(self, browser, live, maskSequence, outputTransform) -> str:
        """Register the frame the browser shows; writes the pose (the last good one when the
        frame fails) and returns a status line."""
        from SurgicalReg2D3DLib import nodes

        index = browser.GetSelectedItemNumber()
        mask = None
        if maskSequence is not None:
            item = maskSequence.GetNthDataNode(index)
            if item is not None:
                mask, _ = nodes.image2d_from_node(item, "mask")
                mask = (mask.max(axis=2) if mask.ndim == 3 else mask) != 0
        live.update(mask)
        nodes.matrix_to_transform_node(self._context(), live.pose, outputTransform.GetName(),
                                       node=outputTransform)
        if live.last_reason:
            return _("Frame {i}: {why}; last good pose kept.").format(i=index, why=live.last_reason)
        return _("Frame {i} registered.").format(i=index)



class LiverLaparoRegTest(ScriptedLoadableModuleTest):
    """Loads the shipped P2ILF case, registers from its contours, checks the px error."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LiverLaparoReg_p2ilf_contours()

    def test_LiverLaparoReg_p2ilf_contours(self):
        import SurgicalReg2D3D

        missing = SurgicalReg2D3D.missingDependencies(["LiverLaparoReg"])
        if missing:
            self.skipTest(f"LiverLaparoReg self-test needs {', '.join(missing)} (not "
                          "installed; install them from the SurgicalReg2D3D module)")
        import numpy as np

        from SurgicalReg2D3DLib import nodes
        from SurgicalReg2D3DLib.paths import sample_data_path

        # Source, build and install trees alike (raises when the data is missing).
        data = str(sample_data_path("p2ilf"))
        self.delayDisplay("Loading the P2ILF liver model")
        modelNode = slicer.util.loadModel(os.path.join(data, "evaluation_GT", "3d-liver-model.obj"))
        ctx = LiverLaparoRegLogic._context()
        # the case's own frame is not shipped: a blank frame of the camera's size
        frame = nodes.image2d_to_node(ctx, np.zeros((1080, 1920, 3), np.uint8), "blank frame")
        self.delayDisplay("Registering from the 2D/3D contours")
        result, outputs = LiverLaparoRegLogic().process(
            modelNode, frame, os.path.join(data, "cameraparams", "acquisition-camera-metadata.json"),
            contours2dPath=os.path.join(data, "evaluation_GT", "patient2_1_2D-contours.json"),
            contours3dPath=os.path.join(data, "evaluation_GT", "patient2_1_3D-contours.json"))
        self.assertEqual(result.method, "pnp")
        self.assertIsNotNone(outputs["overlay"])
        T = nodes.matrix_from_transform_node(outputs["transform"], "result")
        self.assertTrue(np.allclose(T, result.model_to_camera))
        # the camera file's distortion folds inside the frame, so K only is used; the
        # challenge's Task 2 RPE is ~62 px (benchmarks/results/laparo_bench.md)
        self.assertLess(result.metrics["p2ilf_task2_rpe_px"], 80.0)
        self.delayDisplay("Building the AR view and the frustum")
        LiverLaparoRegLogic().showViews(result, outputs["camera"], frame, [modelNode])
        from LiverLaparoRegLib.arview import ras_to_camera

        viewNode = slicer.app.layoutManager().threeDWidget(0).mrmlViewNode()
        cameraNode = slicer.modules.cameras.logic().GetViewActiveCameraNode(viewNode)
        expected = np.linalg.inv(ras_to_camera(result.model_to_camera))[:3, 3]
        self.assertTrue(np.allclose(cameraNode.GetPosition(), expected, atol=1e-3))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("LiverLaparoReg AR frame"))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("LiverLaparoReg camera frustum"))
        self.delayDisplay(f"Test passed: mean class Hausdorff "
                          f"{result.metrics['reprojection']['all']['hausdorff_px']:.1f} px")
