"""The panel's rules (CoCycleRegLib.panel), on Slicer's own libraries, and the widget's use of
them: the last outcome stays on the status line, no second install or run starts while one
is under way, Show Jacobian shows the finished run over that run's fixed volume, and closing
the scene forgets the results."""

from __future__ import annotations

import ast
from pathlib import Path

from CoCycleRegLib.panel import READY, PanelState, chosen_path, other_modality
from CoCycleRegLib.pipeline import RegistrationRequest, RegistrationResults

MODULE_FILE = Path(__file__).resolve().parents[1] / "CoCycleReg" / "CoCycleReg.py"


def widget_method(name: str) -> str:
    """The source of one CoCycleRegWidget method."""
    tree = ast.parse(MODULE_FILE.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Widget"))
    method = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.unparse(method)


def volume(scene, name: str):
    return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)


def test_the_outcome_of_a_run_is_not_overwritten_by_ready(scene):
    state = PanelState()
    assert state.status_text(None) == READY
    fixed, moving = volume(scene, "fixed"), volume(scene, "moving")
    results = RegistrationResults(transform=volume(scene, "t"))
    state.run_started()
    assert state.status_text(None).startswith("Registering")
    assert state.apply_enabled("anything") is True  # Apply is Cancel
    state.run_finished(results, RegistrationRequest(fixed, moving, "m"))
    assert state.status_text(None).startswith("Done")  # the readiness check keeps it
    assert state.status_text("Select the fixed volume.") == "Select the fixed volume."
    state.run_failed(RuntimeError("out of memory"))
    assert state.status_text(None) == "Failed: out of memory"
    state.run_cancelled()
    assert state.status_text(None).startswith("Cancelled")


def test_no_second_install_or_run_starts_during_an_install():
    """slicer.util.pip_install processes events, so Apply can be clicked during it."""
    state = PanelState()
    assert state.install_started("Installing the cocyclereg package…")
    assert not state.install_started("Checking…")  # the second click does nothing
    assert not state.apply_enabled(None)
    assert state.status_text(None) == "Installing the cocyclereg package…"
    state.install_finished()
    assert state.apply_enabled(None) and state.install_started("again")
    state.install_finished()
    state.run_started()
    assert not state.install_started("while running")
    source = widget_method("onApplyButton")
    assert "if not self._state.install_started(" in source
    assert source.index("install_started") < source.index("ensureDependencies")


def test_show_jacobian_uses_the_finished_runs_fixed_volume(scene):
    fixed, other, moving = volume(scene, "fixed"), volume(scene, "other"), volume(scene, "moving")
    warped, jacobian = volume(scene, "warped"), volume(scene, "jacobian")
    results = RegistrationResults(transform=None, warped=warped, jacobian=jacobian)
    state = PanelState()
    state.run_finished(results, RegistrationRequest(fixed, moving, "m"))
    # The panel now shows another fixed volume; the overlay is still the run's own.
    assert RegistrationRequest(other, moving, "m").fixed is other
    assert state.overlay(jacobian=True) == (fixed, jacobian)
    assert state.overlay(jacobian=False) == (fixed, warped)
    source = widget_method("onShowJacobian")
    assert "self._state.results" in source and "self._state.request" in source
    assert "currentRequest" not in source


def test_closing_the_scene_forgets_the_results(scene):
    state = PanelState()
    fixed, moving = volume(scene, "fixed"), volume(scene, "moving")
    state.run_finished(RegistrationResults(transform=None), RegistrationRequest(fixed, moving, "m"))
    state.reset()
    assert state.results is None and state.overlay(jacobian=True) is None
    assert state.status_text(None) == READY
    source = widget_method("onSceneStartClose")
    assert "self._state.reset()" in source and "showJacobianButton.enabled = False" in source


def test_model_path_and_modalities():
    assert chosen_path(Path()) == "" and chosen_path(None) == "" and chosen_path(".") == ""
    assert chosen_path(Path("/models/brain.cocyclereg")) == "/models/brain.cocyclereg"
    assert other_modality(("t1", "t2"), "t2") == "t1"
    assert other_modality(("ct", "mri"), "ct") == "mri"
    assert other_modality(("t1", "t2"), "ct") is None and other_modality((), None) is None
