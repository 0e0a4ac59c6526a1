"""LiverLaparoReg: overlay a preoperative liver model on a laparoscopic frame.

Thin Slicer shell: the GUI is wired here; all the work is in ``LiverLaparoRegLib``
(Qt-free, also used by the ``surgreg laparo`` command line).
"""

import logging
import os
from typing import Annotated, Optional

import vtk

import slicer
from slicer.i18n import tr as _
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
    vtkMRMLVectorVolumeNode,
)

#: GUI method names: "auto" + ``LiverLaparoRegLib.logic.METHODS`` keys (the learned-methods
#: issue adds its names here and to the registry).
METHOD_CHOICES = ["auto", "pnp", "silhouette", "learned"]


class LiverLaparoReg(ScriptedLoadableModule):
    """Module description (Slicer 5.x scripted module)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LiverLaparoReg")
        self.parent.categories = ["Registration.SurgicalReg2D3D"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerSurgicalReg2D3D developers"]
        self.parent.helpText = _(
            "Register a preoperative liver model to a laparoscopic frame. Inputs: the liver "
            "model, the frame (2D RGB image), the camera (P2ILF camera JSON or a 3x3 "
            "intrinsics text file with optional distortion), and a liver mask and/or P2ILF "
            "2D + 3D landmark contours (ridge, ligament, silhouette), optionally an initial "
            "pose. Methods: pnp (contours: arc-length correspondences, EPnP + RANSAC, "
            "refinement) and silhouette (mask Dice refinement of an initial pose). Output: "
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
        self.initializeParameterNode()

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
                        p.modelNode, p.frameVolume, self.ui.cameraPathLineEdit.currentPath,
                        distortionPath=self.ui.distortionPathLineEdit.currentPath or None,
                        maskVolume=p.maskVolume,
                        contours2dPath=self.ui.contours2dPathLineEdit.currentPath or None,
                        contours3dPath=self.ui.contours3dPathLineEdit.currentPath or None,
                        initialTransform=p.initialTransform, method=p.method,
                        nonrigid=p.nonrigid, outputTransform=p.outputTransform,
                        structureNodes=list(self.ui.structuresSelector.checkedNodes()),
                        outputModel=p.outputModel, overlayVolume=p.overlayVolume,
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
        p.outputTransform = outputs["transform"]
        p.overlayVolume = outputs["overlay"]
        if outputs.get("model") is not None:
            p.outputModel = outputs["model"]
        rows = [("method", result.method)]
        rows += [(k, f"{v:.3f}") for k, v in result.metrics.items() if isinstance(v, float)]
        for label, e in result.metrics.get("reprojection", {}).items():
            rows.append((f"Hausdorff {label} (px)", f"{e['hausdorff_px']:.1f}"))
        rows.append(("time (s)", f"{result.timings.get('total_s', 0.0):.2f}"))
        self.ui.resultsTable.setRowCount(len(rows))
        for r, (key, value) in enumerate(rows):
            self.ui.resultsTable.setItem(r, 0, qt.QTableWidgetItem(key))
            self.ui.resultsTable.setItem(r, 1, qt.QTableWidgetItem(value))
        slicer.util.setSliceViewerLayers(background=p.overlayVolume, fit=True)
        self.ui.statusLabel.text = _("Done.")


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
                structureNodes=None, progress=None, cancel=None):
        """Run the registration; returns ``(LaparoResult, {"transform", "model", "overlay",
        "structures"})``.

        ``structureNodes``: optional vessel / tumour model nodes (liver model frame); with
        ``nonrigid`` a deformed copy of each is created (inputs unchanged); all are drawn
        on the overlay (deformed when available)."""
        from LiverLaparoRegLib import logic, p2ilf
        from LiverLaparoRegLib.camera import load_camera
        from LiverLaparoRegLib.overlay import overlay_image
        from SurgicalReg2D3DLib import nodes
        from SurgicalReg2D3DLib.errors import InputError

        if frameVolume is None:
            raise InputError("image: select a frame")
        ctx = self._context()
        image, _ijk = nodes.image2d_from_node(frameVolume, "image")
        camera = load_camera(cameraPath or None, width=image.shape[1], height=image.shape[0],
                             distortion_path=distortionPath)
        vertices, faces = logic.model_mesh_arrays(modelNode)
        c2 = p2ilf.read_contours_2d(contours2dPath) if contours2dPath else None
        c3 = p2ilf.read_contours_3d(contours3dPath, len(vertices)) if contours3dPath else None
        transform = outputTransform or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLLinearTransformNode", "LiverLaparoReg model_to_camera")
        result = logic.register_nodes(
            ctx, modelNode, camera, frame_node=frameVolume, mask_node=maskVolume,
            contours2d=c2, contours3d=c3, init_transform_node=initialTransform,
            method=None if method == "auto" else method, nonrigid=nonrigid,
            output_transform_node=transform, output_model_node=outputModel,
            structure_nodes=structureNodes or None, progress=progress, cancel=cancel)
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
                        "structures": list(result.structure_nodes)}


class LiverLaparoRegTest(ScriptedLoadableModuleTest):
    """Loads the shipped P2ILF case, registers from its contours, checks the px error."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LiverLaparoReg_p2ilf_contours()

    def test_LiverLaparoReg_p2ilf_contours(self):
        import numpy as np

        from SurgicalReg2D3DLib import nodes

        moduleDir = os.path.dirname(slicer.util.modulePath("LiverLaparoReg"))
        data = os.path.join(moduleDir, "..", "Resources", "SampleData", "p2ilf")
        if not os.path.isdir(data):
            logging.warning("LiverLaparoReg self-test: sample data not found; skipped")
            return
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
        # with the camera file's distortion the annotations reach beyond the lens model's
        # fold radius (see benchmarks/results/laparo_bench.md): ~245 px measured
        self.assertLess(result.metrics["reprojection"]["all"]["hausdorff_px"], 300.0)
        self.delayDisplay(f"Test passed: mean class Hausdorff "
                          f"{result.metrics['reprojection']['all']['hausdorff_px']:.1f} px")
