"""SurgicalReg2D3D: the hub module of the SlicerSurgicalReg2D3D extension.

Thin Slicer shell around the shared Qt-free core ``SurgicalReg2D3DLib``. It shows

- the PyTorch status (version, CUDA, device name);
- :func:`ensureDependencies`, the one function every module's Apply goes through: it makes
  sure of torch (through the PyTorch extension's ``PyTorchUtils`` with a version
  requirement, ``pip`` only when that extension is absent), OpenCV (pinned so that Slicer's
  numpy stays) and, optionally, numba, with a confirmation and progress
  (``SurgicalReg2D3DLib.dependencies`` makes the plan); torch is never imported or installed
  when Slicer starts;
- the "Compute on" device shared by all modules: stored in Slicer's settings and applied
  to ``SURGREG_DEVICE`` (read by ``SurgicalReg2D3DLib.device.choose_device``) when Slicer
  starts and when it changes;
- the bundled sample data (also registered with Slicer's SampleData module at startup,
  category "SurgicalReg2D3D", from ``file://`` URIs with SHA-256 checksums, so a changed
  file is copied again);
- the bundled trained models (``SurgicalReg2D3DLib.models``).

Heavy imports (torch) happen inside functions only, so Slicer starts fast.
"""

import logging
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

#: Device preferences offered in the GUI ("auto": the first CUDA GPU, else the CPU);
#: ``SurgicalReg2D3DLib.device.PREFERENCES``.
DEVICE_CHOICES = ["auto", "cpu", "cuda"]

#: Key of the "Compute on" setting in Slicer's settings (``device.SETTINGS_KEY``).
DEVICE_SETTINGS_KEY = "SurgicalReg2D3D/ComputeDevice"

#: The registration modules of the extension (their needs: ``dependencies.MODULE_REQUIREMENTS``).
REGISTRATION_MODULES = ["FluoroReg", "LiverLaparoReg", "USSliceReg"]

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
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration") + ".SurgicalReg2D3D"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerSurgicalReg2D3D contributors (SlicerSurgicalReg2D3D project)"]
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
        # The "Compute on" setting applies to every module from the start.
        applyStoredDevicePreference()


def applyStoredDevicePreference() -> None:
    """Apply the stored "Compute on" setting to ``SURGREG_DEVICE`` ("auto" leaves a
    ``SURGREG_DEVICE`` set before Slicer started untouched)."""
    import qt

    value = str(qt.QSettings().value(DEVICE_SETTINGS_KEY, "auto") or "auto")
    if value == "auto":
        return
    try:
        from SurgicalReg2D3DLib.device import set_device_preference

        set_device_preference(value)
    except Exception as exc:  # a bad stored value: keep the default, say why
        logging.warning(f"SurgicalReg2D3D: compute device setting ignored ({exc})")


def missingDependencies(modules, includeOptional: bool = False) -> list:
    """Import names of the packages ``modules`` need that are not installed (required
    ones; with ``includeOptional`` also numba). Reads package metadata only."""
    from SurgicalReg2D3DLib.dependencies import plan_for_current_environment

    plan = plan_for_current_environment(list(modules), include_optional=includeOptional)
    return [step.import_name for step in plan.steps]


#: Optional packages the user declined in this session (not offered again until restart).
_declinedOptional = set()


def ensureDependencies(modules, askConfirmation: bool = True) -> bool:
    """Make sure the packages ``modules`` (e.g. ``["LiverLaparoReg"]``) need are installed.

    Shows the plan (``SurgicalReg2D3DLib.dependencies``: torch through the PyTorch
    extension with a version requirement, OpenCV pinned so that Slicer's numpy stays,
    numba offered with its torch fallback announced), asks for confirmation, installs with
    progress and checks the result. Returns True when the modules can run (an optional
    package the user declined does not count). In testing mode nothing is installed.
    """
    from SurgicalReg2D3DLib.dependencies import TORCH_REQUIREMENT, plan_for_current_environment

    modules = [modules] if isinstance(modules, str) else list(modules)
    plan = plan_for_current_environment(modules)
    if not plan.steps:
        return True
    if slicer.app.commandOptions().testingEnabled:
        return plan.complete
    names = ", ".join(modules)
    steps = list(plan.required_steps)
    optional = [s for s in plan.optional_steps if s.import_name not in _declinedOptional]
    if not steps and not optional:
        return True  # only optional packages the user declined in this session
    if askConfirmation:
        if plan.required_steps and not slicer.util.confirmOkCancelDisplay(
                _("{modules} need Python packages that Slicer does not bundle. Install them "
                  "now? This downloads them and can take several minutes.").format(modules=names)
                + "\n\n" + plan.summary(), windowTitle=_("Install dependencies")):
            return False
        if optional:
            if slicer.util.confirmYesNoDisplay(
                    _("Also install the recommended packages?") + "\n\n"
                    + "\n".join(step.describe() for step in optional),
                    windowTitle=_("Install dependencies")):
                steps += optional
            else:  # not asked again in this session
                _declinedOptional.update(step.import_name for step in optional)
                logging.info("SurgicalReg2D3D: numba not installed; USSliceReg uses its torch "
                             "kernels (the same results, about 3x slower per frame on a CPU)")
    else:
        steps += optional
    if not steps:
        return True
    progress = slicer.util.createProgressDialog(
        labelText=_("Installing Python packages..."), maximum=max(1, len(steps)),
        windowTitle=_("Install dependencies"))
    try:
        for k, step in enumerate(steps):
            progress.labelText = _("Installing {what} ({k} of {n})...").format(
                what=step.requirements[0], k=k + 1, n=len(steps))
            progress.value = k
            slicer.app.processEvents()
            if step.method == "PyTorchUtils":
                import PyTorchUtils

                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("PyTorch was not installed")
            else:
                slicer.util.pip_install(list(step.requirements))
        progress.value = len(steps)
    finally:
        progress.close()
    after = plan_for_current_environment(modules, include_optional=False)
    if not after.complete:
        raise RuntimeError("still missing after the installation: "
                           + "; ".join(step.describe() for step in after.required_steps))
    return True


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
            checksums=source["checksums"],
        )


#
# SurgicalReg2D3DParameterNode
#


@parameterNodeWrapper
class SurgicalReg2D3DParameterNode:
    """Settings of the hub stored in the scene.

    sampleName: the sample data set to load. (The compute device is a per-computer setting:
    it lives in Slicer's settings, not in the scene.)
    """

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
        self.ui.deviceComboBox.clear()
        for choice in DEVICE_CHOICES:
            self.ui.deviceComboBox.addItem(choice)
        self.ui.deviceComboBox.currentText = self.logic.devicePreference()
        self.ui.deviceComboBox.connect("currentTextChanged(QString)", self.onDeviceChanged)
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
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onDeviceChanged(self, text) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot use this compute device."), waitCursor=False):
            self.logic.setDevicePreference(str(text))
        self.updateTorchStatus()

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
        with slicer.util.tryWithErrorDisplay(_("The dependencies could not be installed."),
                                             waitCursor=True):
            ensureDependencies(REGISTRATION_MODULES)
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
        """Install what the modules need (torch, OpenCV, optionally numba) through
        :func:`ensureDependencies`; returns the ``torch`` module, or None when the user
        declined."""
        if not ensureDependencies(REGISTRATION_MODULES, askConfirmation=confirm):
            return None
        import torch

        return torch

    @staticmethod
    def devicePreference() -> str:
        """The stored "Compute on" setting ("auto", "cpu" or "cuda")."""
        import qt

        value = str(qt.QSettings().value(DEVICE_SETTINGS_KEY, "auto") or "auto")
        return value if value in DEVICE_CHOICES else "auto"

    @staticmethod
    def setDevicePreference(preference: str) -> None:
        """Store ``preference`` ("auto", "cpu", "cuda") in Slicer's settings and make it
        the device of all modules now (``SURGREG_DEVICE``, read by ``choose_device``)."""
        import qt

        from SurgicalReg2D3DLib.device import set_device_preference

        if preference not in DEVICE_CHOICES:
            from SurgicalReg2D3DLib.errors import InputError

            raise InputError(f"device preference: expected one of {DEVICE_CHOICES}, got {preference!r}")
        set_device_preference(preference)
        qt.QSettings().setValue(DEVICE_SETTINGS_KEY, preference)

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
        self.setUp()
        self.test_SurgicalReg2D3D_device_setting_and_dependency_plan()

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

    def test_SurgicalReg2D3D_device_setting_and_dependency_plan(self):
        import hashlib

        from SurgicalReg2D3DLib.dependencies import plan_for_current_environment
        from SurgicalReg2D3DLib.device import ENV_VAR

        logic = SurgicalReg2D3DLogic()
        stored, environment = logic.devicePreference(), os.environ.get(ENV_VAR)
        try:
            logic.setDevicePreference("cpu")
            self.assertEqual(os.environ.get(ENV_VAR), "cpu")
            self.assertEqual(logic.devicePreference(), "cpu")
        finally:  # leave the user's setting as it was
            logic.setDevicePreference(stored)
            if environment is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = environment
        # Every pip step of this Slicer's plan pins its numpy.
        plan = plan_for_current_environment(REGISTRATION_MODULES)
        for step in plan.steps:
            if step.method == "pip":
                self.assertIn(f"numpy=={plan.numpy}", step.requirements)
        # The SampleData checksums are those of the shipped files.
        for source in logic.sampleDataSources():
            for path, checksum in zip(source["paths"], source["checksums"]):
                with open(path, "rb") as f:
                    self.assertEqual("SHA256:" + hashlib.sha256(f.read()).hexdigest(), checksum)
        self.delayDisplay("Test passed: device setting, dependency plan, sample checksums")
