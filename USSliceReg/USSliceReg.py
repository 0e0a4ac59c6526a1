"""USSliceReg: keep a 3D ultrasound volume aligned with live 2D ultrasound frames.

Thin Slicer shell: the GUI is wired here; all the work is in ``USSliceRegLib`` (Qt-free,
also used by the ``surgreg us`` command line).
"""

import logging
from pathlib import Path
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
    vtkMRMLScalarVolumeNode,
    vtkMRMLSequenceBrowserNode,
)

#: Methods offered in the GUI (keys of ``USSliceRegLib.methods.METHODS``; ``deep`` and
#: ``deep+lncc`` are the learned method, DeepRS2V, with the model of the "Learned method"
#: section).
METHOD_CHOICES = ["lncc", "sitk", "deep", "deep+lncc"]


class USSliceReg(ScriptedLoadableModule):
    """Module description (Slicer 5.x scripted module)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("USSliceReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"]
        self.parent.dependencies = ["Sequences", "SurgicalReg2D3D"]
        self.parent.contributors = ["SlicerSurgicalReg2D3D contributors (SlicerSurgicalReg2D3D project)"]
        self.parent.helpText = _(
            "Register tracked 2D ultrasound frames to a 3D ultrasound volume (slice-to-volume)."
            " Load a PLUS tracked sequence (.igs.mha/.igs.nrrd/.seq.nrrd) with its device-set"
            " XML (ImageToProbe calibration): frames with INVALID tracking status are skipped"
            " and reported. Choose the volume and the sequence browser, a method (masked LNCC"
            " with Levenberg-Marquardt, or a SimpleITK baseline) and run: every frame gets a"
            " correction transform (tracked RAS to volume RAS), stored as a sequence"
            " synchronised with the browser, with a table and plot of per-frame similarity,"
            " correction and latency. 'Live' follows the browser (or incoming frames) and"
            " updates one correction transform per frame.")
        self.parent.acknowledgementText = _(
            "Part of the SlicerSurgicalReg2D3D extension. Sample ultrasound data: PLUS toolkit"
            " (BSD 3-Clause), www.plustoolkit.org.")


@parameterNodeWrapper
class USSliceRegParameterNode:
    """Inputs, options and outputs of the module. (Live mode is widget state, not a
    parameter: a saved scene must not start live registration when it is opened.)"""

    usVolume: vtkMRMLScalarVolumeNode
    frameBrowser: vtkMRMLSequenceBrowserNode
    sequenceFile: Path
    calibrationFile: Path
    method: Annotated[str, Choice(METHOD_CHOICES)] = "lncc"
    temporal: bool = True
    correctionTransform: vtkMRMLLinearTransformNode


class USSliceRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: selects inputs, runs the logic with progress and Cancel, live mode, results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelToken = None
        self._live = None
        self._liveBrowser = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/USSliceReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = USSliceRegLogic()

        self.ui.methodComboBox.clear()
        for name in METHOD_CHOICES:
            self.ui.methodComboBox.addItem(name)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadPlusButton.connect("clicked(bool)", self.onLoadPlus)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.liveCheckBox.connect("toggled(bool)", self.onLiveToggled)
        self.ui.compareComboBox.addItems([_("blend"), _("checkerboard")])
        self.ui.compareComboBox.connect("currentIndexChanged(int)", lambda i: self._updateViews())
        self.ui.show3dCheckBox.connect("toggled(bool)", lambda on: self._updateViews())
        self.ui.cancelButton.enabled = False
        self._setupLearnedSection()
        self.initializeParameterNode()

    def _setupLearnedSection(self) -> None:
        """"Learned method (DeepRS2V)": model picker, "Train for this volume" (time budget,
        resume; progress and Cancel are the module's)."""
        import ctk
        import qt

        box = ctk.ctkCollapsibleButton()
        box.text = _("Learned method (DeepRS2V)")
        box.collapsed = True
        form = qt.QFormLayout(box)
        self.modelPathEdit = ctk.ctkPathLineEdit()
        self.modelPathEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable  # novermin (Qt flags, not a type union)
        self.modelPathEdit.nameFilters = ["DeepRS2V model (*.pt)"]
        self.modelPathEdit.toolTip = _("Model file for the deep / deep+lncc methods (empty: "
                                       "the bundled model of this volume, if any); also "
                                       "where training writes")
        form.addRow(_("Model file:"), self.modelPathEdit)
        self.trainMinutesSpinBox = qt.QDoubleSpinBox()
        self.trainMinutesSpinBox.setRange(0.5, 600.0)
        self.trainMinutesSpinBox.value = 10.0
        self.trainMinutesSpinBox.suffix = " min"
        form.addRow(_("Time budget:"), self.trainMinutesSpinBox)
        self.trainResumeCheckBox = qt.QCheckBox(_("resume from the model's checkpoint"))
        form.addRow("", self.trainResumeCheckBox)
        self.trainButton = qt.QPushButton(_("Train for this volume"))
        self.trainButton.toolTip = _("Train a DeepRS2V model for the selected volume with "
                                     "the frames and tracked poses of the browser")
        form.addRow(self.trainButton)
        self.layout.addWidget(box)
        self.trainButton.connect("clicked(bool)", self.onTrain)

    def _modelPath(self) -> Optional[str]:
        path = self.modelPathEdit.currentPath if hasattr(self, "modelPathEdit") else ""
        return path or None

    def onTrain(self) -> None:
        import os

        from SurgicalReg2D3DLib.progress import CancelToken

        p = self._parameterNode
        out = self._modelPath() or os.path.join(slicer.app.temporaryPath,
                                                "USSliceReg_DeepRS2V.pt")
        resume = out + ".ckpt" if self.trainResumeCheckBox.checked else None
        self._cancelToken = CancelToken()
        self.ui.cancelButton.enabled = True
        self.ui.applyButton.enabled = False
        self.trainButton.enabled = False
        try:
            with slicer.util.tryWithErrorDisplay(_("Training failed."), waitCursor=True):
                payload = self.logic.trainForVolume(
                    p.usVolume, p.frameBrowser, out, self.trainMinutesSpinBox.value,
                    resume=resume, progress=self._progress, cancel=self._cancelToken)
                self.modelPathEdit.currentPath = out
                tr = payload["training"]
                val = tr["validation"][-1] if tr["validation"] else {}
                self.ui.resultLabel.text = _(
                    "Trained {n} steps ({why}); validation {t:.2f} mm / {r:.2f} deg; "
                    "saved {path}").format(n=tr["steps"], why=tr["stopped"],
                                           t=val.get("translation_mm", float("nan")),
                                           r=val.get("rotation_deg", float("nan")), path=out)
        finally:
            self._cancelToken = None
            self.ui.cancelButton.enabled = False
            self.trainButton.enabled = True
            self._checkCanApply()

    def cleanup(self) -> None:
        self._stopLive()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self._setLiveChecked(False)
        self._stopLive()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.usVolume:
            node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if node:
                self._parameterNode.usVolume = node

    def setParameterNode(self, inputParameterNode: Optional[USSliceRegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ok = bool(p and p.usVolume and p.frameBrowser)
        self.ui.applyButton.enabled = ok and self._cancelToken is None
        self.ui.applyButton.toolTip = _("Register all frames") if ok else _(
            "Select the 3D US volume and the frame sequence browser")
        self.ui.liveCheckBox.enabled = ok

    # ----------------------------------------------------------------- actions
    def _ensureDependencies(self) -> bool:
        """Torch (and optionally numba) through the hub; False when not installed."""
        import SurgicalReg2D3D

        with slicer.util.tryWithErrorDisplay(_("The dependencies could not be installed."),
                                             waitCursor=True):
            if SurgicalReg2D3D.ensureDependencies(["USSliceReg"]):
                return True
        self.ui.resultLabel.text = _("USSliceReg needs PyTorch; not installed.")
        return False

    def onLoadPlus(self) -> None:
        # Loading goes through USSliceRegLib.logic, which imports torch.
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to load the PLUS sequence."), waitCursor=True):
            calibration = str(p.calibrationFile) if p.calibrationFile else ""
            browser, skipped = self.logic.loadPlusSequence(
                str(p.sequenceFile), calibration if calibration not in ("", ".") else None)
            p.frameBrowser = browser
            msg = _("Loaded {n} frames.").format(n=browser.GetNumberOfItems())
            if skipped:
                msg += " " + _("Skipped {n} frame(s) with INVALID status: {f}").format(
                    n=len(skipped), f=", ".join(str(i) for i, _why in skipped))
            self.ui.resultLabel.text = msg

    def _progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.progressBar.format = f"%p% {message}"
        slicer.app.processEvents()

    def onApply(self) -> None:
        if not self._ensureDependencies():
            return
        from SurgicalReg2D3DLib.errors import CancelledError
        from SurgicalReg2D3DLib.progress import CancelToken

        p = self._parameterNode
        self._cancelToken = CancelToken()
        self.ui.cancelButton.enabled = True
        self.ui.applyButton.enabled = False
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                try:
                    reg, correctionSequence, chart = self.logic.registerBrowser(
                        p.usVolume, p.frameBrowser, method=p.method, temporal=p.temporal,
                        progress=self._progress, cancel=self._cancelToken, apply_failed=False,
                        model=self._modelPath())
                except CancelledError:  # not a failure: no error dialog
                    self.ui.resultLabel.text = _("Registration cancelled; inputs unchanged.")
                    return
                from USSliceRegLib.logic import summary_line
                from USSliceRegLib.quality import VERDICT_COLOURS

                failed = [i for i, q in zip(reg.indices, reg.qualities) if q.verdict == "failed"]
                if failed and slicer.util.confirmYesNoDisplay(
                        _("{n} frame(s) failed the quality check ({f}); their tracked poses "
                          "are kept. Apply their corrections anyway?").format(
                            n=len(failed), f=", ".join(str(i) for i in failed))):
                    self.logic.applyCorrections(reg, correctionSequence, p.frameBrowser)
                worst = max((q.verdict for q in reg.qualities), default="ok",
                            key=["ok", "doubtful", "failed", "skipped"].index)
                self.ui.resultLabel.text = summary_line(reg) + "\n" + "\n".join(reg.warnings())
                self.ui.resultLabel.styleSheet = f"color: {VERDICT_COLOURS[worst]}"
                if self.logic.lastWarmup and self.logic.lastWarmup.get("first_use"):
                    self.ui.resultLabel.text += "\n" + _(
                        "(first use: LNCC kernels compiled in {s:.1f} s, not counted above)").format(
                        s=self.logic.lastWarmup["seconds"])
                slicer.modules.plots.logic().ShowChartInLayout(chart)
                self._lastRegistration = reg
                self._updateViews()
        finally:
            self._cancelToken = None
            self.ui.cancelButton.enabled = False
            self._checkCanApply()

    def _updateViews(self) -> None:
        reg = getattr(self, "_lastRegistration", None)
        if reg is None:
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The views could not be updated."), waitCursor=True):
            self.logic.showOverlay(p.usVolume, p.frameBrowser, reg,
                                   show3d=self.ui.show3dCheckBox.checked,
                                   compare=("blend", "checkerboard")[
                                       max(0, self.ui.compareComboBox.currentIndex)])

    def onCancel(self) -> None:
        if self._cancelToken is not None:
            self._cancelToken.cancel()

    # ----------------------------------------------------------------- live mode
    def _setLiveChecked(self, checked: bool) -> None:
        """Set the live check box without triggering onLiveToggled."""
        wasBlocked = self.ui.liveCheckBox.blockSignals(True)
        self.ui.liveCheckBox.checked = checked
        self.ui.liveCheckBox.blockSignals(wasBlocked)

    def onLiveToggled(self, on: bool) -> None:
        if not on:
            self._stopLive()
            return
        if not self._ensureDependencies():
            self._setLiveChecked(False)
            return
        p = self._parameterNode
        # tryWithErrorDisplay shows the error and re-raises it: catch it here so the check
        # box is cleared when the start fails.
        try:
            with slicer.util.tryWithErrorDisplay(_("Cannot start live mode."), waitCursor=True):
                if not p.correctionTransform:
                    p.correctionTransform = slicer.mrmlScene.AddNewNodeByClass(
                        "vtkMRMLLinearTransformNode", "USLiveCorrection")
                self._live = self.logic.startLive(p.usVolume, p.frameBrowser, p.method,
                                                  p.correctionTransform, progress=self._progress)
                self._liveBrowser = p.frameBrowser
                self.addObserver(self._liveBrowser, vtk.vtkCommand.ModifiedEvent, self.onLiveFrame)
                self.onLiveFrame()
        except Exception:  # already shown to the user
            self._stopLive()
            self._setLiveChecked(False)

    def onLiveFrame(self, caller=None, event=None) -> None:
        if self._live is None:
            return
        try:
            res = self.logic.updateLive(self._live, self._liveBrowser)
        except Exception as error:  # keep the GUI alive; show why and stop
            logging.error(f"USSliceReg live update failed: {error}")
            self._stopLive()
            self._setLiveChecked(False)
            self.ui.resultLabel.text = _("Live mode stopped: {e}").format(e=error)
            return
        from USSliceRegLib.quality import VERDICT_COLOURS, status_text

        q = self._live.last_quality
        if res is not None:
            self.ui.resultLabel.text = _("Live: frame {n}, LNCC {a:.3f} -> {b:.3f}, {ms:.0f} ms").format(
                n=self._live.live.count, a=res.lncc_start, b=res.lncc, ms=1000 * res.seconds)
        if q is not None:  # coloured status and estimate; a failed frame keeps the last good one
            self.ui.resultLabel.text = (self.ui.resultLabel.text if res is not None else "") \
                + "\n" + status_text(q)
            self.ui.resultLabel.styleSheet = f"color: {VERDICT_COLOURS[q.verdict]}"

    def _stopLive(self) -> None:
        if self._liveBrowser is not None:
            self.removeObserver(self._liveBrowser, vtk.vtkCommand.ModifiedEvent, self.onLiveFrame)
        self._live = None
        self._liveBrowser = None


class USSliceRegLogic(ScriptedLoadableModuleLogic):
    """Delegates to ``USSliceRegLib``; usable from the Python console."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._lastItem = None
        #: The last kernel warm-up (``USSliceRegLib.warmup.warm_up_kernels``): its time is
        #: first-use compilation, reported apart from the registration times.
        self.lastWarmup = None

    def prepareKernels(self, progress=None):
        """Compile (or load from numba's cache) the LNCC kernels before the first frame,
        with progress; returns the warm-up report (``seconds``, ``first_use``)."""
        from SurgicalReg2D3DLib.device import choose_device
        from USSliceRegLib.warmup import warm_up_kernels

        if choose_device().type != "cpu":  # the kernels are for the CPU; torch runs on the GPU
            self.lastWarmup = None
            return None
        self.lastWarmup = warm_up_kernels(progress=progress)
        if self.lastWarmup.get("first_use"):
            logging.info(f"USSliceReg: LNCC kernels compiled/loaded in "
                         f"{self.lastWarmup['seconds']:.1f} s (first use in this session)")
        return self.lastWarmup

    def getParameterNode(self):
        return USSliceRegParameterNode(super().getParameterNode())

    @staticmethod
    def _ctx():
        from SurgicalReg2D3DLib.scene import SceneContext

        return SceneContext.from_slicer()

    def loadPlusSequence(self, sequencePath, calibrationPath=None, name=None):
        """Load a PLUS tracked sequence; returns ``(browser, skipped_frames)``."""
        from USSliceRegLib.logic import load_sweep_to_scene

        return load_sweep_to_scene(self._ctx(), sequencePath, calibrationPath, name=name)

    @staticmethod
    def _sequences(browser):
        from USSliceRegLib.logic import browser_sequences

        return browser_sequences(browser)

    def registerBrowser(self, volumeNode, browser, method="lncc", temporal=True, progress=None,
                        cancel=None, apply_failed=True, model=None):
        """Register all frames of ``browser`` on the hub's device; returns
        ``(registration, corrections, chart)``. The compiled kernels are prepared first
        (:meth:`prepareKernels`), so the frames' times exclude their first use.
        ``apply_failed=False``: frames judged ``failed`` keep their tracked pose (identity
        correction) until :meth:`applyCorrections`. ``model``: DeepRS2V model file for
        ``deep`` / ``deep+lncc`` (None: bundled)."""
        from SurgicalReg2D3DLib.device import choose_device
        from SurgicalReg2D3DLib.progress import sub_progress
        from USSliceRegLib.logic import register_nodes, results_to_table

        ctx = self._ctx()
        images, transforms = self._sequences(browser)
        if method in ("lncc", "deep+lncc"):
            self.prepareKernels(progress=sub_progress(progress, 0.0, 0.1))
        options = {"model": model} if method.startswith("deep") else None
        reg, corrections = register_nodes(ctx, volumeNode, images, transforms, method=method,
                                          temporal=temporal, browser=browser,
                                          progress=sub_progress(progress, 0.1, 1.0),
                                          cancel=cancel, device=choose_device(),
                                          apply_failed=apply_failed, method_options=options)
        _table, chart = results_to_table(ctx, reg)
        return reg, corrections, chart

    def applyCorrections(self, registration, corrections, browser):
        """Write every registered frame's correction, failed ones included."""
        from USSliceRegLib.logic import apply_corrections

        images, _transforms = self._sequences(browser)
        return apply_corrections(registration, corrections, images)

    def trainForVolume(self, volumeNode, browser, out, maxMinutes, resume=None, progress=None,
                       cancel=None):
        """Train a DeepRS2V model for ``volumeNode`` with the browser's frames and poses
        (``USSliceRegLib.learned.scene.train_for_nodes``); returns the model payload."""
        from USSliceRegLib.learned.scene import train_for_nodes

        images, transforms = self._sequences(browser)
        return train_for_nodes(volumeNode, images, transforms, out, maxMinutes, resume=resume,
                               progress=progress, cancel=cancel, log=logging.info)

    def showOverlay(self, volumeNode, browser, registration, item=None, show3d=True,
                    compare="blend"):
        """Reslice the volume on the (corrected) plane of the browser's current frame and
        show it with the frame in the Red slice view: blended, or as a checkerboard image
        on the same plane. With ``show3d`` the frame also sits at its registered pose in the
        3D view and the Red slice is driven along its plane (``USSliceRegLib.scene3d``)."""
        from SurgicalReg2D3DLib.nodes import image2d_from_node
        from USSliceRegLib.logic import reslice_to_frame_node

        item = browser.GetSelectedItemNumber() if item is None else item
        images, _transforms = self._sequences(browser)
        frameNode = browser.GetProxyNode(images)
        frame, _m = image2d_from_node(frameNode, "US frame")
        if item not in registration.indices:  # a skipped frame: nothing to show
            return None
        result = registration.results[registration.indices.index(item)]
        node = slicer.mrmlScene.GetFirstNodeByName("USResliced")
        node = reslice_to_frame_node(self._ctx(), volumeNode, result.image_to_reference,
                                     frame.shape[:2], "USResliced", node=node)
        shown = node
        if compare == "checkerboard":
            import numpy as np

            from SurgicalReg2D3DLib import compare as cmp
            from SurgicalReg2D3DLib.nodes import volume_to_node

            resliced, _m2 = image2d_from_node(node, "resliced volume")
            gray = frame if frame.ndim == 2 else frame[..., :3].mean(axis=2)
            board = cmp.checkerboard(gray, resliced).astype(np.float32)
            shown = slicer.mrmlScene.GetFirstNodeByName("US checkerboard")
            shown = volume_to_node(self._ctx(), board[None], np.eye(4), "US checkerboard",
                                   node=shown)
            shown.SetAndObserveTransformNodeID(node.GetParentTransformNode().GetID())
            slicer.util.setSliceViewerLayers(background=shown, foreground=None, fit=True)
        else:
            slicer.util.setSliceViewerLayers(background=frameNode, foreground=node,
                                             foregroundOpacity=0.5, fit=True)
        sliceLogic = slicer.app.layoutManager().sliceWidget("Red").sliceLogic()
        if show3d:
            from USSliceRegLib.scene3d import drive_slice_views, frame_plane_model

            model = slicer.mrmlScene.GetFirstNodeByName("US frame in 3D")
            frame_plane_model(self._ctx(), frame if frame.ndim == 2 else frame[..., :3].mean(axis=2),
                              result.image_to_reference, "US frame in 3D", node=model)
            drive_slice_views([sliceLogic.GetSliceNode()], result.image_to_reference,
                              frame.shape[:2])
        else:
            sliceLogic.GetSliceNode().RotateToVolumePlane(frameNode)
            sliceLogic.FitSliceToAll()
        return shown

    def startLive(self, volumeNode, browser, method, correctionNode, progress=None):
        from SurgicalReg2D3DLib.device import choose_device
        from USSliceRegLib.logic import LiveNodeRegistration
        from SurgicalReg2D3DLib.nodes import image2d_from_node
        from USSliceRegLib.slicing import fan_mask

        if method == "lncc":  # compile before the first live frame, not during it
            self.prepareKernels(progress=progress)
        images, _transforms = self._sequences(browser)
        frame, _m = image2d_from_node(images.GetNthDataNode(0), "US frame")
        frames = [image2d_from_node(images.GetNthDataNode(i), "US frame")[0]
                  for i in range(0, images.GetNumberOfDataNodes(),
                                 max(1, images.GetNumberOfDataNodes() // 10))]
        self._lastItem = None
        return LiveNodeRegistration(self._ctx(), volumeNode, frame.shape[:2],
                                    fan=fan_mask(frames), method=method,
                                    correction_node=correctionNode, device=choose_device())

    def updateLive(self, live, browser):
        """Register the browser's current frame (once per item)."""
        from SurgicalReg2D3DLib.nodes import image2d_from_node, matrix_from_transform_node

        item = browser.GetSelectedItemNumber()
        if item == self._lastItem:
            return None
        self._lastItem = item
        images, transforms = self._sequences(browser)
        frameNode = browser.GetProxyNode(images)
        tfmNode = browser.GetProxyNode(transforms)
        _arr, ijk_to_ras = image2d_from_node(frameNode, "US live frame")
        tracked = matrix_from_transform_node(tfmNode, "US frame transform") @ ijk_to_ras
        return live.update(frameNode, tracked)


class USSliceRegTest(ScriptedLoadableModuleTest):
    """Self-test on the bundled PLUS spine phantom sweep."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RegisterShippedSweep()

    def test_RegisterShippedSweep(self):
        import SurgicalReg2D3D

        missing = SurgicalReg2D3D.missingDependencies(["USSliceReg"])
        if missing:
            self.skipTest(f"USSliceReg self-test needs {', '.join(missing)} (not installed; "
                          "install it from the SurgicalReg2D3D module)")
        import numpy as np

        from SurgicalReg2D3DLib.paths import sample_data_path
        from SurgicalReg2D3DLib.io import load_volume

        self.delayDisplay("Loading the PLUS spine phantom sweep")
        logic = USSliceRegLogic()
        ctx = logic._ctx()
        volume = load_volume(ctx, sample_data_path("ultrasound/SpinePhantomFreehandReconstructed.mha"))
        browser, skipped = logic.loadPlusSequence(
            sample_data_path("ultrasound/SpinePhantomFreehand.igs.mha"),
            sample_data_path("ultrasound/PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"))
        self.assertEqual(browser.GetNumberOfItems(), 21)
        self.assertEqual(skipped, [])
        self.delayDisplay("Registering (frames start at the tracked pose)")
        reg, corrections, _chart = logic.registerBrowser(volume, browser, method="lncc")
        self.assertEqual(corrections.GetNumberOfDataNodes(), 21)
        # The tracked poses are the ones PLUS reconstructed the volume with: the correction
        # must stay small and the similarity must not drop.
        from USSliceRegLib.pose_utils import pose_errors

        moved = [pose_errors(r.image_to_reference, r.start_image_to_reference,
                             reg.fan_centre_px) for r in reg.results]
        self.assertLess(float(np.median([m[1] for m in moved])), 3.0)
        self.assertLess(float(np.median([m[0] for m in moved])), 3.0)
        self.assertGreaterEqual(np.mean([r.lncc for r in reg.results]),
                                np.mean([r.lncc_start for r in reg.results]) - 1e-3)

        self.delayDisplay("Frame in 3D, Red slice along the registered frame, checkerboard")
        item = reg.indices[0]
        browser.SetSelectedItemNumber(item)
        logic.showOverlay(volume, browser, reg, item=item, show3d=True, compare="checkerboard")
        from SurgicalReg2D3DLib.nodes import vtk_matrix_to_numpy
        from SurgicalReg2D3DLib.views3d import slice_to_ras_from_image

        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        images, _t = logic._sequences(browser)
        shape = images.GetNthDataNode(0).GetImageData().GetDimensions()
        expected = slice_to_ras_from_image(reg.results[0].image_to_reference, (shape[1], shape[0]))
        # (reg.results[0] is the result of frame reg.indices[0])
        self.assertTrue(np.allclose(vtk_matrix_to_numpy(red.GetSliceToRAS()), expected, atol=1e-6))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("US frame in 3D"))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("US checkerboard"))
        self.delayDisplay("Test passed")
