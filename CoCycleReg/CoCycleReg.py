"""CoCycleReg: learned multi-modal deformable registration in 3D Slicer.

This file stays thin: the widget binds the panel to a parameter node and runs the package in a
separate process; every MRML operation lives in ``CoCycleRegLib`` (plain functions that take a
scene and nodes, tested on Slicer's own libraries outside the application), and so do the
panel's rules (``CoCycleRegLib.panel``) and the install steps (``CoCycleRegLib.dependencies``).

It stays importable on Python 3.9 (Slicer 5.6 and 5.8), where it only says that CoCycleReg
needs Slicer 5.10 or later.
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
from CoCycleRegLib.panel import PanelState, chosen_path, other_modality, overlay
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
from slicer.i18n import tr as _
from slicer.i18n import translate
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
# The bundled models ship inside the cocyclereg package: beside the module (CMake copies the
# package there in the build tree and the installed extension), or in the source tree.
_BUNDLED = Path("CoCycleRegTrain") / "src" / "cocyclereg" / "resources" / "models"
MODELS_DIR = next(
    (d for d in (MODULE_DIR / _BUNDLED, MODULE_DIR.parent / _BUNDLED) if d.is_dir()),
    MODULE_DIR / _BUNDLED,
)


class CoCycleReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CoCycleReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["CoCycleReg developers"]
        self.parent.helpText = _(
            "Learned multi-modal deformable registration (CT↔MRI, T1↔T2 MRI) with the "
            "CoCycleReg dual-head network. Choose the fixed and moving volumes, a model and "
            "which input is which modality, then Apply. The forward transform (moving → fixed, "
            "resampling direction) and its inverse are added next to the moving volume, with "
            "the warped volume, warped copies of the chosen segmentations and labelmaps, and "
            "the Jacobian determinant with its folding count. Needs 3D Slicer 5.10 or later. "
            'See the <a href="{url}">README</a>. Research software, not a medical device.'
        ).format(url=README_URL)
        self.parent.acknowledgementText = _(
            "Method: Lian et al., CoCycleReg, Neurocomputing 500 (2022). Icon from TCGA-DU-7294 "
            "(TCIA TCGA-LGG, CC BY 3.0)."
        )


@parameterNodeWrapper
class CoCycleRegParameterNode:
    """The panel's state, saved with the scene.

    Bound to widgets (SlicerParameterName in the .ui), each with a type Slicer's GUI
    connectors accept for that widget: the volumes, ``modelPath`` (a ``Path``: the only type
    the ctkPathLineEdit connector takes; ``Path()`` means no model) and the check boxes.
    ``movingModality`` is synced by hand with its combo box, whose items come from the chosen
    model (the QComboBox connector needs a fixed list of choices).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    modelPath: Path
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
        self._state = PanelState()
        self._cards = []
        self._card = None
        self._shownModelPath = None
        self._unsupported = dependencies.slicer_support_problem()

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
        self.ui.modelComboBox.addItem(_("Model file from disk…"), "")
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChoice)
        self.ui.movingModalityComboBox.connect("currentIndexChanged(int)", self.onModalityChoice)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showJacobianButton.connect("toggled(bool)", self.onShowJacobian)
        self.ui.labelmapsSelector.connect("checkedNodesChanged()", self._checkCanApply)
        self.ui.segmentationsSelector.connect("checkedNodesChanged()", self._checkCanApply)

        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)
        self.ui.progressBar.hide()
        self.ui.modelPathLineEdit.visible = False
        self.ui.showJacobianButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelRun()
        self.setParameterNode(None)  # disconnects the GUI (a Reload builds a new one)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk_modified(), self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)
        self._state.reset()
        self._shownModelPath = None
        self.ui.foldingLabel.text = ""
        self.ui.showJacobianButton.checked = False
        self.ui.showJacobianButton.enabled = False

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.fixedVolume:
            first = mrml.first_registrable_volume(slicer.mrmlScene)  # not a labelmap
            if first:
                parameterNode.fixedVolume = first
        if not chosen_path(parameterNode.modelPath) and self._cards:
            parameterNode.modelPath = self._cards[0].path
            parameterNode.network = self._cards[0].use_network  # the model's recommendation
        self.setParameterNode(parameterNode)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk_modified(), self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk_modified(), self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode:
            self._showModel()
            self._showModality()
        self._checkCanApply()

    # Model and modalities (synced by hand: their choices come from the model) ---------------

    def onModelChoice(self, index: int) -> None:
        """A bundled model sets the path; "from disk" shows the path field to pick a file."""
        path = self.ui.modelComboBox.itemData(index) or ""
        self.ui.modelPathLineEdit.visible = not path
        if path and self._parameterNode:
            self._parameterNode.modelPath = Path(path)

    def _showModel(self) -> None:
        """Show the parameter node's model: the combo's item, the card, the modalities; a
        newly chosen model also sets "Start from the network's field" to its recommendation."""
        path = chosen_path(self._parameterNode.modelPath)
        if path == self._shownModelPath:
            return
        changedByUser = self._shownModelPath is not None
        self._shownModelPath = path
        index = self.ui.modelComboBox.findData(path) if path else -1
        if index < 0:
            index = self.ui.modelComboBox.count - 1  # a file from disk
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.currentIndex = index
        self.ui.modelComboBox.blockSignals(wasBlocked)
        self.ui.modelPathLineEdit.visible = not self.ui.modelComboBox.itemData(index)
        self._card = None
        text = _("No model chosen.")
        if path:
            try:
                self._card = models.read_model_card(path)
                text = self._card.description()
            except models.ModelCardError as error:
                text = str(error)
        self.ui.modelInfoLabel.text = text
        wasBlocked = self.ui.movingModalityComboBox.blockSignals(True)
        self.ui.movingModalityComboBox.clear()
        if self._card:
            self.ui.movingModalityComboBox.addItems(list(self._card.modalities))
        self.ui.movingModalityComboBox.blockSignals(wasBlocked)
        if self._card and changedByUser:
            self._parameterNode.network = self._card.use_network  # the model's recommendation

    def _showModality(self) -> None:
        """Select the parameter node's moving modality (or, if the model has no such
        modality, the model's first, written back)."""
        combo = self.ui.movingModalityComboBox
        wanted = self._parameterNode.movingModality
        index = combo.findText(wanted) if wanted else -1
        if index < 0 and combo.count:
            index = 0
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = index
        combo.blockSignals(wasBlocked)
        shown = combo.currentText if index >= 0 else ""
        modalities = self._card.modalities if self._card else ()
        self.ui.fixedModalityLabel.text = other_modality(modalities, shown) or "—"
        if shown != wanted:
            self._parameterNode.movingModality = shown

    def onModalityChoice(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.movingModality = self.ui.movingModalityComboBox.currentText

    # Apply / Cancel -----------------------------------------------------------------------

    def currentRequest(self) -> RegistrationRequest:
        p = self._parameterNode
        moving = p.movingModality or None
        return RegistrationRequest(
            fixed=p.fixedVolume,
            moving=p.movingVolume,
            model_path=chosen_path(p.modelPath),
            moving_modality=moving,
            fixed_modality=other_modality(self._card.modalities, moving) if self._card else None,
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
        if self._unsupported:
            reason = self._unsupported
        elif self._parameterNode is None:
            reason = _("Loading…")
        else:
            reason = check_request(self.currentRequest())
        state = self._state
        self.ui.applyButton.text = _("Cancel") if state.running else _("Apply")
        self.ui.applyButton.enabled = state.apply_enabled(reason)
        if state.running:
            self.ui.applyButton.toolTip = _("Stop the registration; the scene stays as it was.")
        else:
            self.ui.applyButton.toolTip = reason or _(
                "Register the moving volume to the fixed volume."
            )
        self.ui.statusLabel.text = state.status_text(reason)

    def setInstallStatus(self, text: str) -> None:
        """The status line of the install step under way (and the log)."""
        self._state.installing = text
        self.log(text)
        self._checkCanApply()
        slicer.app.processEvents()

    def onApplyButton(self) -> None:
        if self._state.running:
            self.cancelRun()
            self.log(self._state.outcome)
            self._checkCanApply()
            return
        if not self._state.install_started(_("Checking PyTorch and the cocyclereg package…")):
            return  # an install is under way (Slicer keeps processing clicks during it)
        self._checkCanApply()
        try:
            with slicer.util.tryWithErrorDisplay(_("CoCycleReg could not start."), waitCursor=True):
                self.logic.ensureDependencies(status=self.setInstallStatus)
                self._state.install_finished()
                # Read after the install: Slicer kept processing events during it, and the
                # user may have changed the choices or closed the scene meanwhile.
                if self._parameterNode is None:
                    raise RuntimeError(_("The scene was closed; choose the volumes again."))
                request = self.currentRequest()
                reason = check_request(request)
                if reason is not None:
                    raise RuntimeError(reason)
                self.ui.logTextEdit.clear()
                self._run = self.logic.start(request)
                self._state.run_started()
                self.log(" ".join(self._run.process.command))
                self.ui.progressBar.show()
                self.ui.progressBar.setRange(0, 0)  # busy: the package reports stages at the end
                self.timer.start()
        except Exception as error:  # shown by tryWithErrorDisplay; the status line keeps it
            self._state.run_failed(error)
            self.log(self._state.outcome)
        finally:
            self._state.install_finished()
            self._checkCanApply()

    def cancelRun(self) -> None:
        if self._run is not None:
            self.timer.stop()
            self.logic.cancel(self._run)
            self._run = None
            self._state.run_cancelled()
            self.ui.progressBar.hide()

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
            results = self.logic.finish(run)
        except Exception as error:  # shown to the user; the scene was restored
            self._state.run_failed(error)
            self.log(self._state.outcome)
            slicer.util.errorDisplay(_("CoCycleReg failed: {error}").format(error=error))
        else:
            self._state.run_finished(results, run.request)
            self.ui.foldingLabel.text = "\n".join(
                text for text in (results.folding_text(), results.motion_text()) if text
            )
            self.ui.showJacobianButton.enabled = results.jacobian is not None
            self.ui.showJacobianButton.checked = False
            self.logic.showResults(results, run.request)
            self.log(self._state.outcome)
        self._checkCanApply()

    def onShowJacobian(self, show: bool) -> None:
        """The finished run's Jacobian (or warped volume) over that run's fixed volume."""
        if self._state.results is not None:
            self.logic.showResults(self._state.results, self._state.request, jacobian=show)

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

    def ensureDependencies(self, status=logging.info, confirm=None) -> None:
        """Torch from the PyTorch extension, then the bundled ``cocyclereg`` package (listing
        what pip will install, after the user agrees), then its kernels compiled once.
        Slicer's numpy, SimpleITK and torch stay as they are; ``status`` gets one line per
        step."""
        problem = dependencies.slicer_support_problem()
        if problem:
            raise RuntimeError(problem)
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(
                _(
                    "CoCycleReg needs the PyTorch extension: install 'PyTorch' from the "
                    "Extensions Manager and restart Slicer."
                )
            ) from error
        torchVersion = dependencies.installed_version("torch")  # metadata: torch not imported
        problem = dependencies.torch_problem(torchVersion)
        if problem:
            raise RuntimeError(problem)
        if torchVersion is None:
            status(_("Installing PyTorch (PyTorch extension)…"))
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=True, torchVersionRequirement=dependencies.TORCH_REQUIREMENT
            )
            if torch is None:
                raise RuntimeError(_("CoCycleReg needs PyTorch; it was not installed."))
        package = dependencies.bundled_package(MODULE_DIR)
        if package is None:
            if dependencies.package_is_installed():
                return
            raise RuntimeError(_("The bundled cocyclereg package is missing from this extension."))
        if dependencies.package_is_installed(dependencies.bundled_version(package)):
            return
        folder = Path(tempfile.mkdtemp(prefix="CoCycleReg-install-"))
        try:
            status(_("Checking what the cocyclereg package needs…"))
            constraints = folder / "constraints.txt"
            constraints.write_text(dependencies.pip_constraints())
            source = dependencies.staged_source(package, folder)
            report = folder / "report.json"
            python = self.pythonSlicer()
            command = dependencies.dry_run_command(python, source, constraints, report)
            slicer.util.logProcessOutput(slicer.util.launchConsoleProcess(command))
            text, details = dependencies.install_question(dependencies.read_install_plan(report))
            confirmed = (
                confirm(text, details)
                if confirm
                else slicer.util.confirmOkCancelDisplay(text, detailedText=details)
            )
            if not confirmed:
                raise RuntimeError(
                    _("The cocyclereg package is required; installation was declined.")
                )
            status(_("Installing the cocyclereg package into Slicer's Python…"))
            slicer.util.pip_install(dependencies.pip_install_arguments(source, constraints))
            status(
                _("Compiling the package's kernels (once after installing, {seconds})…").format(
                    seconds=dependencies.WARM_UP_SECONDS
                )
            )
            warmUp = dependencies.warm_up_command(python)
            slicer.util.logProcessOutput(slicer.util.launchConsoleProcess(warmUp))
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
        """The request's fixed volume as background, the warped moving volume (or the
        Jacobian) as foreground at half opacity."""
        background, foreground = overlay(results, request, jacobian)
        slicer.util.setSliceViewerLayers(
            background=background, foreground=foreground, foregroundOpacity=0.5, fit=True
        )


class CoCycleRegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode → Reload and Test). Needs torch and cocyclereg."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_constant_model()

    def test_register_constant_model(self):
        import numpy as np

        # No silent skip: a build tree or a fresh Slicer without the package fails here, with
        # what to do (ctest must not pass a test that tested nothing).
        CoCycleRegLogic().ensureDependencies(confirm=lambda text, details: True)
        import torch

        from cocyclereg.model_file import ModelInfo, save_model
        from cocyclereg.networks import DualHeadUNet

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
