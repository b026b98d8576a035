"""CoCycleReg: learned multi-modal deformable registration in 3D Slicer.

This file stays thin: the widget binds the panel to a parameter node and runs the package in a
separate process; every MRML operation lives in ``CoCycleRegLib`` (plain functions that take a
scene and nodes, tested on Slicer's own libraries outside the application).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import qt
import slicer
from CoCycleRegLib import dependencies, models
from CoCycleRegLib import nodes as mrml
from CoCycleRegLib.pipeline import (
    RegistrationRequest,
    check_request,
    export_inputs,
    import_results,
    process_environment,
    register_command,
)
from CoCycleRegLib.process import RegistrationProcess
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

README_URL = "https://github.com/CoCycleReg/SlicerCoCycleReg#readme"
MODULE_DIR = Path(__file__).resolve().parent
# The bundled models ship inside the cocyclereg package: beside the installed module, or in the
# source tree when the module runs from a checkout.
_BUNDLED = Path("CoCycleRegTrain") / "src" / "cocyclereg" / "resources" / "models"
MODELS_DIR = next(
    (d for d in (MODULE_DIR / _BUNDLED, MODULE_DIR.parent / _BUNDLED) if d.is_dir()),
    MODULE_DIR / _BUNDLED,
)
FROM_DISK = "Model file from disk…"


class CoCycleReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CoCycleReg"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["CoCycleReg developers"]
        self.parent.helpText = (
            "Learned multi-modal deformable registration (CT↔MRI, T1↔T2 MRI) with the "
            "CoCycleReg dual-head network. Choose the fixed and moving volumes, a model and "
            "which input is which modality, then Apply. The forward transform (moving → fixed, "
            "resampling direction) and its inverse are added next to the moving volume, with "
            "the warped volume, warped copies of the chosen segmentations and labelmaps, and "
            "the Jacobian determinant with its folding count. "
            f'See the <a href="{README_URL}">README</a>. Research software, not a medical device.'
        )
        self.parent.acknowledgementText = (
            "Method: Lian et al., CoCycleReg, Neurocomputing 500 (2022). Icon from TCGA-DU-7294 "
            "(TCIA TCGA-LGG, CC BY 3.0)."
        )


@parameterNodeWrapper
class CoCycleRegParameterNode:
    """The panel's state, saved with the scene."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    movingModality: str = ""
    affine: bool = True
    refine: bool = True
    network: bool = True
    cpuOnly: bool = False
    makeInverse: bool = True
    makeWarped: bool = True
    makeJacobian: bool = True


class CoCycleRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._results = None
        self._cards = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CoCycleReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CoCycleRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self._cards = models.bundled_models(MODELS_DIR)
        self.ui.modelComboBox.clear()
        for card in self._cards:
            self.ui.modelComboBox.addItem(card.name, str(card.path))
        self.ui.modelComboBox.addItem(FROM_DISK, "")
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChoice)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPath)
        self.ui.movingModalityComboBox.connect("currentIndexChanged(int)", self.updateModalities)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showJacobianButton.connect("toggled(bool)", self.onShowJacobian)
        self.ui.labelmapsSelector.connect("checkedNodesChanged()", self._checkCanApply)
        self.ui.segmentationsSelector.connect("checkedNodesChanged()", self._checkCanApply)

        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)
        self.ui.progressBar.hide()
        self.ui.showJacobianButton.enabled = False
        self.initializeParameterNode()
        self.onModelChoice(self.ui.modelComboBox.currentIndex)

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk_modified(), self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.fixedVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk_modified(), self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk_modified(), self._checkCanApply)
            self._checkCanApply()

    # Model and modalities -------------------------------------------------------------------

    def onModelChoice(self, index: int) -> None:
        path = self.ui.modelComboBox.itemData(index) or ""
        fromDisk = self.ui.modelComboBox.itemText(index) == FROM_DISK
        self.ui.modelPathLineEdit.visible = fromDisk
        if not fromDisk and self._parameterNode:
            self._parameterNode.modelPath = path
        self.onModelPath()

    def currentCard(self):
        path = self._parameterNode.modelPath if self._parameterNode else ""
        if not path:
            return None
        try:
            return models.read_model_card(path)
        except models.ModelCardError as error:
            self.ui.modelInfoLabel.text = str(error)
            return None

    def onModelPath(self, *args) -> None:
        card = self.currentCard()
        self.ui.modelInfoLabel.text = card.description() if card else "No model chosen."
        previous = self.ui.movingModalityComboBox.currentText
        self.ui.movingModalityComboBox.clear()
        if card:
            self.ui.movingModalityComboBox.addItems(list(card.modalities))
            if previous in card.modalities:
                self.ui.movingModalityComboBox.currentText = previous
            if self._parameterNode is not None:
                self._parameterNode.network = card.use_network  # the model's recommendation
        self.updateModalities()

    def updateModalities(self, *args) -> None:
        card = self.currentCard()
        moving = self.ui.movingModalityComboBox.currentText
        fixed = ""
        if card and moving in card.modalities:
            fixed = card.modalities[1] if moving == card.modalities[0] else card.modalities[0]
        self.ui.fixedModalityLabel.text = fixed or "—"
        self._checkCanApply()

    # Apply / Cancel -----------------------------------------------------------------------

    def currentRequest(self) -> RegistrationRequest:
        p = self._parameterNode
        card = self.currentCard()
        moving = p.movingModality or None
        fixed = None
        if card and moving in card.modalities:
            fixed = card.modalities[1] if moving == card.modalities[0] else card.modalities[0]
        return RegistrationRequest(
            fixed=p.fixedVolume,
            moving=p.movingVolume,
            model_path=p.modelPath,
            moving_modality=moving,
            fixed_modality=fixed,
            affine=p.affine,
            refine=p.refine,
            network=p.network,
            cpu_only=p.cpuOnly,
            inverse=p.makeInverse,
            warped=p.makeWarped,
            jacobian=p.makeJacobian,
            labelmaps=list(self.ui.labelmapsSelector.checkedNodes()),
            segmentations=list(self.ui.segmentationsSelector.checkedNodes()),
        )

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._run is not None:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the registration; the scene stays as it was."
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        reason = check_request(self.currentRequest()) if self._parameterNode else "Loading…"
        self.ui.applyButton.enabled = reason is None
        self.ui.applyButton.toolTip = reason or "Register the moving volume to the fixed volume."
        self.ui.statusLabel.text = reason or "Ready."

    def onApplyButton(self) -> None:
        if self._run is not None:
            self.cancelRun()
            self.log("Cancelled: nothing was added to the scene.")
            return
        request = self.currentRequest()
        with slicer.util.tryWithErrorDisplay("CoCycleReg could not start.", waitCursor=True):
            self.log("Checking PyTorch and the cocyclereg package…")
            self.logic.ensureDependencies(slicer.util.confirmOkCancelDisplay)
            self.ui.logTextEdit.clear()
            self._run = self.logic.start(request)
            self.log(" ".join(self._run.process.command))
            self.ui.progressBar.show()
            self.ui.progressBar.setRange(0, 0)  # busy: the package reports stages at the end
            self.ui.statusLabel.text = "Registering (the network runs in a separate process)…"
            self.timer.start()
        self._checkCanApply()

    def cancelRun(self) -> None:
        if self._run is not None:
            self.timer.stop()
            self.logic.cancel(self._run)
            self._run = None
            self.ui.progressBar.hide()
            self._checkCanApply()

    def onTimer(self) -> None:
        run = self._run
        for line in run.process.poll():
            self.log(line)
        if not run.process.finished:
            return
        self.timer.stop()
        self._run = None
        self.ui.progressBar.hide()
        try:
            self._results = self.logic.finish(run)
        except Exception as error:  # shown to the user; the scene was restored
            self.ui.statusLabel.text = f"Failed: {error}"
            self.log(f"Failed: {error}")
            slicer.util.errorDisplay(f"CoCycleReg failed: {error}")
        else:
            self.ui.foldingLabel.text = self._results.folding_text()
            self.ui.showJacobianButton.enabled = self._results.jacobian is not None
            self.ui.showJacobianButton.checked = False
            self.logic.showResults(self._results, run.request)
            self.ui.statusLabel.text = "Done: results are next to the moving volume."
        self._checkCanApply()

    def onShowJacobian(self, show: bool) -> None:
        if self._results is not None:
            self.logic.showResults(self._results, self.currentRequest(), jacobian=show)

    def log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)


def vtk_modified():
    import vtk

    return vtk.vtkCommand.ModifiedEvent


class RegistrationRun:
    """A started registration: its request, files and process."""

    def __init__(self, request, files, process) -> None:
        self.request, self.files, self.process = request, files, process


class CoCycleRegLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, usable from the Python console without it:

    >>> logic = CoCycleRegLogic()
    >>> results = logic.runBlocking(RegistrationRequest(fixed, moving, "model.cocyclereg"))
    """

    def getParameterNode(self):
        return CoCycleRegParameterNode(super().getParameterNode())

    @staticmethod
    def pythonSlicer() -> str:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = Path(sys.executable).with_name(
            "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        )
        return str(candidate) if candidate.exists() else sys.executable

    def ensureDependencies(self, confirm=slicer.util.confirmOkCancelDisplay) -> None:
        """Torch from the PyTorch extension, then the bundled ``cocyclereg`` package, each
        installed only after the user agrees; Slicer's numpy and SimpleITK stay as they are."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(
                "CoCycleReg needs the PyTorch extension: install 'PyTorch' from the Extensions "
                "Manager and restart Slicer."
            ) from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(
                askConfirmation=True, torchVersionRequirement=dependencies.TORCH_REQUIREMENT
            )
            if torch is None:
                raise RuntimeError("CoCycleReg needs PyTorch; it was not installed.")
        package = dependencies.bundled_package(MODULE_DIR)
        if package is None:
            if dependencies.package_is_installed():
                return
            raise RuntimeError("The bundled cocyclereg package is missing from this extension.")
        if dependencies.package_is_installed(dependencies.bundled_version(package)):
            return
        if not confirm(
            "CoCycleReg will install (or update) its Python package and its dependencies "
            "(numba, h5py, safetensors and a few small ones) into Slicer's Python. Slicer's "
            "numpy, SimpleITK and torch are kept. Continue?"
        ):
            raise RuntimeError("The cocyclereg package is required; installation was declined.")
        folder = Path(tempfile.mkdtemp(prefix="CoCycleReg-install-"))
        try:
            constraints = folder / "constraints.txt"
            constraints.write_text(dependencies.pip_constraints())
            slicer.util.pip_install(dependencies.pip_install_arguments(package, constraints))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def start(self, request: RegistrationRequest) -> RegistrationRun:
        reason = check_request(request)
        if reason:
            raise ValueError(reason)
        folder = Path(tempfile.mkdtemp(prefix="CoCycleReg-"))
        try:
            files = export_inputs(request, folder)
            command = register_command(request, files, python=self.pythonSlicer())
            environment = process_environment(request, slicer.util.startupEnvironment())
            process = RegistrationProcess(command, env=environment, workdir=folder).start()
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return RegistrationRun(request, files, process)

    def cancel(self, run: RegistrationRun) -> None:
        run.process.cancel()
        run.process.cleanup()

    def finish(self, run: RegistrationRun):
        """Import a finished run's files (or raise its error); the temporary folder goes."""
        try:
            run.process.poll()
            if not run.process.succeeded:
                raise RuntimeError(run.process.error_text())
            return import_results(slicer.mrmlScene, run.request, run.files)
        finally:
            run.process.cleanup()

    def runBlocking(self, request: RegistrationRequest, timeout: float | None = None):
        """Run one registration and wait (scripting, batch processing, tests)."""
        run = self.start(request)
        try:
            run.process.wait(timeout)
        except Exception:
            self.cancel(run)
            raise
        return self.finish(run)

    def showResults(self, results, request, jacobian: bool = False) -> None:
        """Fixed as background, warped moving (or the Jacobian) as foreground."""
        foreground = results.jacobian if jacobian else (results.warped or results.jacobian)
        mrml.show_in_slice_views(slicer.mrmlScene, request.fixed, foreground, opacity=0.5)
        slicer.util.resetSliceViews()


class CoCycleRegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode → Reload and Test). Needs torch and cocyclereg."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_constant_model()

    def test_register_constant_model(self):
        import numpy as np

        try:
            import torch

            from cocyclereg.model_file import ModelInfo, save_model
            from cocyclereg.networks import DualHeadUNet
        except ImportError:
            self.delayDisplay("Skipped: install PyTorch and cocyclereg first (press Apply once).")
            return
        self.delayDisplay("Registering two synthetic volumes with a constant-shift model")
        rng = np.random.default_rng(0)
        array = rng.normal(size=(24, 32, 32)).cumsum(0).cumsum(1).cumsum(2).astype(np.float32)
        fixed = slicer.util.addVolumeFromArray(array, name="fixed")
        moving = slicer.util.addVolumeFromArray(np.roll(array, 2, axis=2), name="moving")
        for volume in (fixed, moving):
            volume.SetSpacing(3.0, 3.0, 3.0)
        network = DualHeadUNet((4, 8, 8, 8, 8), (8, 8, 8, 8, 4, 4))
        with torch.no_grad():
            for head, value in ((network.head_x2y, 1.0), (network.head_y2x, -1.0)):
                head.weight.zero_()
                head.bias.fill_(value)
        percentile = {"method": "percentile", "lower": 0.5, "upper": 99.5}
        info = ModelInfo(
            "t1",
            "t2",
            (3.0, 3.0, 3.0),
            (16, 16, 16),
            "LPS",
            {"x": percentile, "y": percentile},
            {"encoder_features": [4, 8, 8, 8, 8], "decoder_features": [8, 8, 8, 8, 4, 4]},
        )
        folder = Path(tempfile.mkdtemp(prefix="CoCycleRegTest-"))
        model = save_model(folder / "constant.cocyclereg", network, info)
        request = RegistrationRequest(fixed, moving, str(model), affine=False, cpu_only=True)
        results = CoCycleRegLogic().runBlocking(request, timeout=600)
        self.assertIs(results.transform.GetNodeReference(mrml.ROLE_MOVING), moving)
        self.assertIs(results.transform.GetNodeReference(mrml.ROLE_FIXED), fixed)
        self.assertTrue(mrml.same_geometry(results.jacobian, fixed))
        self.assertEqual(results.folding_voxels, 0)
        shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")
