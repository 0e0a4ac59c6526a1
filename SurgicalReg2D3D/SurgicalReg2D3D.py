"""SurgicalReg2D3D: the hub module of the SlicerSurgicalReg2D3D extension.

Thin Slicer shell around the shared Qt-free core ``SurgicalReg2D3DLib``. It shows

- the PyTorch status (version, CUDA, device name) and installs torch on request, after a
  confirmation (through the PyTorch extension's ``PyTorchUtils`` when it is installed,
  otherwise with ``pip``); torch is never imported or installed when Slicer starts;
- the compute device preference shared by all modules (it sets ``SURGREG_DEVICE``, read by
  ``SurgicalReg2D3DLib.device.choose_device``) and a folder for reports;
- the bundled sample data (also registered with Slicer's SampleData module at startup,
  category "SurgicalReg2D3D", from ``file://`` URIs: nothing is downloaded);
- the bundled trained models (``SurgicalReg2D3DLib.models``).

Heavy imports (torch) happen inside functions only, so Slicer starts fast.
"""

import logging
import os
import pathlib
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

#: Device preferences offered in the GUI ("auto": the first CUDA GPU, else the CPU).
DEVICE_CHOICES = ["auto", "cpu", "cuda"]

#: Names of the bundled sample data sets (``SurgicalReg2D3DLib.paths.SAMPLE_DATASETS``).
SAMPLE_CHOICES = ["SurgRegThoraxCT", "SurgRegLiverModel", "SurgRegSpineUSVolume"]


#
# SurgicalReg2D3D
#


class SurgicalReg2D3D(ScriptedLoadableModule):
    """Module description (Slicer 5.x scripted module)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SurgicalReg2D3D")
        self.parent.categories = ["Registration.SurgicalReg2D3D"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerSurgicalReg2D3D developers"]
        self.parent.helpText = _(
            "Hub of the SurgicalReg2D3D extension for intraoperative 2D/3D registration: "
            "FluoroReg (CT to X-ray), LiverLaparoReg (liver model to a laparoscopic frame) "
            "and USSliceReg (2D ultrasound frame to a 3D ultrasound volume). Here you can "
            "check and install PyTorch, choose the compute device used by all modules, load "
            "the bundled sample data and see the bundled trained models.")
        self.parent.acknowledgementText = _(
            "Bundled sample data (unchanged, each folder keeps its licence): thorax CT from "
            "TotalSegmentator (Apache-2.0; Wasserthal et al., Radiology: AI 2023); tracked "
            "ultrasound sweeps of the PLUS toolkit (BSD-3-Clause; Lasso et al., IEEE TBME "
            "2014); liver models and laparoscopic frame from SciKit-Surgery (BSD-3-Clause; "
            "Thompson et al. 2020); P2ILF challenge samples (MIT; Ali et al., Medical Image "
            "Analysis 2025).")
        # Register the sample data once the application has started (SampleData must exist).
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the bundled data sets to Slicer's SampleData module (category SurgicalReg2D3D).

    The URIs are ``file://`` URIs of the files shipped with the extension, so SampleData
    copies them into its cache instead of downloading anything.
    """
    try:
        import SampleData
        from SurgicalReg2D3DLib.paths import sample_data_sources
    except ImportError as exc:
        logging.warning(f"SurgicalReg2D3D: sample data not registered ({exc})")
        return
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    try:
        sources = sample_data_sources()
    except Exception as exc:  # missing data folder: the modules still work without it
        logging.warning(f"SurgicalReg2D3D: sample data not registered ({exc})")
        return
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=source["category"],
            sampleName=source["sampleName"],
            uris=source["uris"],
            fileNames=source["fileNames"],
            nodeNames=source["nodeNames"],
            thumbnailFileName=os.path.join(iconsPath, source["thumbnailFileName"]),
            loadFileTypes=source["loadFileTypes"],
        )


#
# SurgicalReg2D3DParameterNode
#


@parameterNodeWrapper
class SurgicalReg2D3DParameterNode:
    """Settings shown by the hub.

    devicePreference: compute device for all modules ("auto", "cpu" or "cuda").
    reportDirectory: folder where modules write reports (figures, JSON results).
    sampleName: the sample data set to load.
    """

    devicePreference: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    reportDirectory: pathlib.Path
    sampleName: Annotated[str, Choice(SAMPLE_CHOICES)] = "SurgRegThoraxCT"


#
# SurgicalReg2D3DWidget
#


class SurgicalReg2D3DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: torch status and installation, device choice, sample data, bundled models."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SurgicalReg2D3D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SurgicalReg2D3DLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.refreshTorchButton.connect("clicked(bool)", self.updateTorchStatus)
        self.ui.installTorchButton.connect("clicked(bool)", self.onInstallTorchButton)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSampleButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.updateModelsTable)

        self.initializeParameterNode()
        self.updateTorchStatus()
        self.updateModelsTable()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[SurgicalReg2D3DParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged)
            self._onParameterChanged()

    def _onParameterChanged(self, caller=None, event=None) -> None:
        if self._parameterNode:
            self.logic.applyDevicePreference(self._parameterNode.devicePreference)

    # -- torch ---------------------------------------------------------------------------
    def updateTorchStatus(self) -> None:
        status = self.logic.torchStatus()
        if not status["installed"]:
            self.ui.torchVersionLabel.text = status["error"] or _("not installed")
            self.ui.cudaLabel.text = "-"
            self.ui.deviceNameLabel.text = "-"
            self.ui.installTorchButton.enabled = True
            return
        self.ui.torchVersionLabel.text = status["version"]
        self.ui.cudaLabel.text = (_("available (CUDA {v}, {n} device(s))").format(
            v=status["cuda_version"], n=status["cuda_device_count"])
            if status["cuda_available"] else _("not available"))
        self.ui.deviceNameLabel.text = status["device_name"]
        self.ui.installTorchButton.enabled = False

    def onInstallTorchButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("PyTorch could not be installed."), waitCursor=True):
            self.logic.installTorch(confirm=True)
        self.updateTorchStatus()

    # -- sample data ---------------------------------------------------------------------
    def onLoadSampleButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot load the sample data."), waitCursor=True):
            loaded = self.logic.loadSampleData(self._parameterNode.sampleName)
            self.ui.sampleStatusLabel.text = _("Loaded: {names}").format(
                names=", ".join(node.GetName() for node in loaded))
            volumes = [n for n in loaded if n.IsA("vtkMRMLScalarVolumeNode")]
            if volumes:
                slicer.util.setSliceViewerLayers(background=volumes[0], fit=True)

    # -- models --------------------------------------------------------------------------
    def updateModelsTable(self) -> None:
        import qt

        try:
            rows = self.logic.bundledModels()
        except Exception as exc:  # a broken manifest: show it instead of failing setup
            logging.error(f"SurgicalReg2D3D: bundled models: {exc}")
            self.ui.modelsStatusLabel.text = str(exc)
            rows = []
        else:
            self.ui.modelsStatusLabel.text = (_("{n} bundled model(s)").format(n=len(rows))
                                              if rows else _("No bundled models yet."))
        table = self.ui.modelsTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(value))
        table.resizeColumnsToContents()


#
# SurgicalReg2D3DLogic
#


class SurgicalReg2D3DLogic(ScriptedLoadableModuleLogic):
    """Qt-free services of the hub (no widgets; usable from the Python console)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SurgicalReg2D3DParameterNode(super().getParameterNode())

    @staticmethod
    def torchStatus() -> dict:
        """PyTorch status: ``installed``, ``version``, ``cuda_available``, ``cuda_version``,
        ``cuda_device_count``, ``device_name`` (of the device "auto" would choose) and
        ``error`` (why an installed torch cannot be imported, else empty)."""
        import importlib.util

        status = {"installed": False, "version": "", "cuda_available": False,
                  "cuda_version": "", "cuda_device_count": 0, "device_name": "", "error": ""}
        if importlib.util.find_spec("torch") is None:
            return status
        try:
            import torch
        except Exception as exc:  # a broken installation (missing DLL, ABI mismatch...)
            status["error"] = f"torch cannot be imported: {exc}"
            return status

        status["installed"] = True
        status["version"] = torch.__version__
        status["cuda_version"] = torch.version.cuda or ""
        status["cuda_available"] = bool(torch.cuda.is_available())
        if status["cuda_available"]:
            status["cuda_device_count"] = torch.cuda.device_count()
            status["device_name"] = f"cuda:0 ({torch.cuda.get_device_name(0)})"
        else:
            status["device_name"] = "cpu"
        return status

    @staticmethod
    def installTorch(confirm: bool = True):
        """Install PyTorch if it is missing and return the ``torch`` module (or None when
        the user declined).

        Uses the PyTorch extension (``PyTorchUtils``, which picks a build matching the
        GPU driver) when it is installed; otherwise asks for confirmation and runs
        ``pip install torch``.
        """
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            import torch

            return torch
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            return torchLogic.installTorch(askConfirmation=confirm)
        if confirm and not slicer.util.confirmOkCancelDisplay(
                _("SurgicalReg2D3D needs PyTorch, which is not installed. Install it now with "
                  "pip (a large download, it can take several minutes)? Installing the "
                  "PyTorch extension first lets it choose a GPU build for your driver.")):
            return None
        slicer.util.pip_install("torch")
        import torch

        return torch

    _deviceEnvSetByHub = False

    @classmethod
    def applyDevicePreference(cls, preference: str) -> None:
        """Make ``preference`` ("auto", "cpu", "cuda") the device of all modules, through
        the ``SURGREG_DEVICE`` environment variable read by ``choose_device``.

        "auto" leaves a ``SURGREG_DEVICE`` set before Slicer started untouched (and removes
        one this method set earlier).
        """
        if preference not in DEVICE_CHOICES:
            from SurgicalReg2D3DLib.errors import InputError

            raise InputError(f"device preference: expected one of {DEVICE_CHOICES}, got {preference!r}")
        if preference == "auto":
            if cls._deviceEnvSetByHub:
                os.environ.pop("SURGREG_DEVICE", None)
                SurgicalReg2D3DLogic._deviceEnvSetByHub = False
            return
        os.environ["SURGREG_DEVICE"] = preference
        SurgicalReg2D3DLogic._deviceEnvSetByHub = True

    @staticmethod
    def sampleDataSources() -> list:
        """The bundled data sets (``SurgicalReg2D3DLib.paths.sample_data_sources``)."""
        from SurgicalReg2D3DLib.paths import sample_data_sources

        return sample_data_sources()

    @staticmethod
    def bundledModels(module: Optional[str] = None) -> list:
        """Rows ``[name, module, task, size, sha256 prefix, training data]`` of the bundled
        models (``SurgicalReg2D3DLib.models``)."""
        from SurgicalReg2D3DLib import models

        return models.models_table(models.list_models(module))

    @staticmethod
    def loadSampleData(sampleName: str) -> list:
        """Load one bundled data set into the scene through the core I/O; returns the nodes.

        Volumes and 2D images become volume nodes, meshes model nodes (file coordinates
        are LPS, stored RAS as Slicer does).
        """
        from SurgicalReg2D3DLib import io
        from SurgicalReg2D3DLib.paths import find_sample_dataset, sample_data_path
        from SurgicalReg2D3DLib.scene import SceneContext

        dataset = find_sample_dataset(sampleName)
        ctx = SceneContext.from_slicer()
        loaded = []
        for relative, nodeName, fileType in zip(dataset.files, dataset.node_names,
                                                 dataset.file_types):
            path = sample_data_path(relative)
            if fileType == "ModelFile":
                node = io.load_model(ctx, path, coordinate_system="LPS", name=nodeName)
            elif path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                node = io.load_image2d(ctx, path, name=nodeName)
            else:
                node = io.load_volume(ctx, path, name=nodeName)
            loaded.append(node)
        return loaded


#
# SurgicalReg2D3DTest
#


class SurgicalReg2D3DTest(ScriptedLoadableModuleTest):
    """Loads the bundled CT through the logic and checks its geometry against SimpleITK."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SurgicalReg2D3D_sample_ct_geometry()
        self.setUp()
        self.test_SurgicalReg2D3D_status_and_sources()

    def test_SurgicalReg2D3D_sample_ct_geometry(self):
        import numpy as np
        import SimpleITK as sitk

        self.delayDisplay("Loading the bundled CT through the logic")
        logic = SurgicalReg2D3DLogic()
        (node,) = logic.loadSampleData("SurgRegThoraxCT")
        self.assertEqual(node.GetName(), "SurgRegThoraxCT")

        source = [s for s in logic.sampleDataSources() if s["sampleName"] == "SurgRegThoraxCT"][0]
        image = sitk.ReadImage(source["paths"][0])
        # Independent reference: SimpleITK's header (LPS) converted to RAS.
        self.assertEqual(tuple(node.GetImageData().GetDimensions()), image.GetSize())
        self.assertEqual(image.GetSize(), (120, 126, 164))
        np.testing.assert_allclose(node.GetSpacing(), image.GetSpacing(), atol=1e-6)
        originRas = np.array(image.GetOrigin()) * np.array([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(node.GetOrigin(), originRas, atol=1e-4)
        array = slicer.util.arrayFromVolume(node)
        np.testing.assert_array_equal(array, sitk.GetArrayFromImage(image))
        self.delayDisplay("Test passed: CT geometry matches SimpleITK")

    def test_SurgicalReg2D3D_status_and_sources(self):
        logic = SurgicalReg2D3DLogic()
        status = logic.torchStatus()
        self.assertIn("installed", status)
        sources = logic.sampleDataSources()
        self.assertEqual([s["sampleName"] for s in sources], SAMPLE_CHOICES)
        for source in sources:
            for path in source["paths"]:
                self.assertTrue(os.path.isfile(path), path)
        self.assertIsInstance(logic.bundledModels(), list)
        self.delayDisplay("Test passed: status, sample data sources and models")
