"""Static checks of the module that need no Qt: the widget names the code uses exist in the
.ui file, every parameter-node field is bound to a widget (SlicerParameterName), every Python
file is packaged by CMake, and the model card and install constraints are right."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from CoCycleRegLib import dependencies, models

MODULE_DIR = Path(__file__).resolve().parents[1] / "CoCycleReg"
MODULE_FILE = MODULE_DIR / "CoCycleReg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CoCycleReg.ui"


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def parameter_annotations() -> dict[str, ast.expr]:
    """Field name -> annotation of the @parameterNodeWrapper class, in declaration order."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        decorators = [getattr(d, "id", "") for d in getattr(node, "decorator_list", [])]
        if isinstance(node, ast.ClassDef) and "parameterNodeWrapper" in decorators:
            return {s.target.id: s.annotation for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in CoCycleReg.py")


def parameter_fields() -> list[str]:
    return list(parameter_annotations())


def bindings() -> dict[str, str]:
    """Field name -> class of the .ui widget bound to it (its SlicerParameterName)."""
    bound = {}
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    return bound


# The rules of Slicer's GUI connectors, read from Base/Python/slicer/parameterNodeWrapper/
# guiConnectors.py at each release (each connector's canRepresent and create). A connector is
# (widget classes, field types, annotations its create() requires, else it raises).
# canRepresent compares ``type(widget)`` exactly, so a subclass (qMRMLCheckableNodeComboBox,
# ctkComboBox before 5.8) is not accepted; field types are the unannotated type. A str field
# on a QComboBox needs a Choice annotation (QComboBoxToStringableConnector.create raises
# "ComboBoxToStringableConnector requires the Choice annotation to be used"); ctkPathLineEdit
# and ctkDirectoryButton take only pathlib types; createGuiConnector raises "Unable to create
# GUI connector" for a pair no connector accepts, and so does connectGui.
PATH_TYPES = {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}
BOUNDS = {"WithinRange"}  # (or both Minimum and Maximum; not used by this module)
GUI_CONNECTORS = {
    "5.6.2": [
        ({"QCheckBox"}, {"bool"}, set()),
        ({"QPushButton"}, {"bool"}, set()),
        ({"QSpinBox"}, {"int"}, set()),
        ({"QSlider"}, {"int"}, BOUNDS),
        ({"QDoubleSpinBox"}, {"float"}, set()),
        ({"ctkSliderWidget", "qMRMLSliderWidget"}, {"float"}, BOUNDS),
        ({"QComboBox"}, {"int", "float", "str", "bool"}, {"Choice"}),
        ({"QComboBox"}, {"enum"}, set()),
        ({"QLineEdit"}, {"str"}, set()),
        ({"QTextEdit"}, {"str"}, set()),
        ({"ctkRangeWidget"}, {"FloatRange"}, {"RangeBounds"}),
        ({"ctkPathLineEdit"}, PATH_TYPES, set()),
        ({"ctkDirectoryButton"}, PATH_TYPES, set()),
        ({"qMRMLNodeComboBox"}, {"node"}, set()),
    ],
}
GUI_CONNECTORS["5.8.1"] = GUI_CONNECTORS["5.6.2"] + [
    ({"ctkCheckBox"}, {"bool"}, set()),
    ({"ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"}, {"float"}, set()),
    ({"ctkComboBox"}, {"int", "float", "str", "bool"}, {"Choice"}),
    ({"ctkComboBox"}, {"enum"}, set()),
    ({"QLabel"}, {"str"}, set()),
    ({"ctkDoubleRangeSlider", "qMRMLRangeWidget"}, {"FloatRange"}, {"RangeBounds"}),
]
GUI_CONNECTORS["5.10.0"] = GUI_CONNECTORS["5.8.1"] + [
    ({"ctkCheckablePushButton"}, {"bool"}, set()),
    ({"QDoubleSpinBox", "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"}, {"int"}, set()),
    ({"ctkColorPickerButton"}, {"QColor"}, set()),
]


def field_type(annotation: ast.expr) -> tuple[str, set[str]]:
    """(type as the connectors see it, names of its Annotated extras): ``bool`` -> ("bool",
    set()), ``Annotated[str, Choice([...])]`` -> ("str", {"Choice"}), ``vtkMRML...Node`` (or a
    Union of them) -> ("node", set()), ``pathlib.Path`` -> ("Path", set())."""
    if isinstance(annotation, ast.Subscript):
        outer = ast.unparse(annotation.value).split(".")[-1]
        parts = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else []
        if outer == "Annotated" and parts:
            extras = {ast.unparse(getattr(p, "func", p)).split(".")[-1] for p in parts[1:]}
            return field_type(parts[0])[0], extras
        if outer in ("Union", "Optional"):
            members = parts or [annotation.slice]
            if all(field_type(m)[0] == "node" for m in members):
                return "node", set()
        return ast.unparse(annotation), set()
    name = ast.unparse(annotation).split(".")[-1]
    if name.startswith("vtkMRML") and name.endswith("Node"):
        return "node", set()
    return name, set()


def accepted(release: str, widget_class: str, annotation: ast.expr) -> bool:
    kind, extras = field_type(annotation)
    return any(
        widget_class in widgets and kind in kinds and required <= extras
        for widgets, kinds, required in GUI_CONNECTORS[release]
    )


def typed(text: str) -> ast.expr:
    return ast.parse(f"x: {text}").body[0].annotation


def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the module uses no widgets?"
    missing = used - set(ui_widgets())
    assert not missing, f"widgets used in CoCycleReg.py but absent from the .ui: {missing}"


@pytest.mark.parametrize("release", sorted(GUI_CONNECTORS))
def test_every_binding_is_one_slicers_gui_connectors_accept(release):
    """connectGui raises at the first binding no connector accepts, leaving the panel
    unconnected (and Apply disabled): every (widget class, field type) pair must be one
    Slicer's connectors accept, in every release the module loads in (5.6 and 5.8 included:
    there the panel must connect to say that CoCycleReg needs Slicer 5.10)."""
    annotations = parameter_annotations()
    bound = bindings()
    assert bound, "no widget is bound to the parameter node?"
    refused = {
        field: (widget_class, ast.unparse(annotations[field]) if field in annotations else None)
        for field, widget_class in bound.items()
        if field not in annotations or not accepted(release, widget_class, annotations[field])
    }
    assert not refused, f"Slicer {release} has no GUI connector for {refused}"


def test_the_rules_refuse_what_slicer_refuses():
    """The encoded rules refuse the bindings that broke the panel, and accept their fixes."""
    for release in GUI_CONNECTORS:
        assert not accepted(release, "QComboBox", typed("str"))
        assert accepted(release, "QComboBox", typed("Annotated[str, Choice(['t1', 't2'])]"))
        assert not accepted(release, "ctkPathLineEdit", typed("str"))
        assert accepted(release, "ctkPathLineEdit", typed("pathlib.Path"))
        node = typed("vtkMRMLScalarVolumeNode")
        assert not accepted(release, "qMRMLCheckableNodeComboBox", node)
        assert accepted(release, "qMRMLNodeComboBox", node)
        assert accepted(release, "QCheckBox", typed("bool"))
        assert accepted(release, "QDoubleSpinBox", typed("int")) == (release == "5.10.0")
    assert not accepted("5.6.2", "ctkCheckBox", typed("bool"))
    assert accepted("5.8.1", "ctkCheckBox", typed("bool"))


def test_fields_without_a_widget_are_synced_by_hand():
    """A field with no SlicerParameterName (its combo box's choices come from the model) is
    written from its widget and read back into it by the module's own code."""
    source = MODULE_FILE.read_text()
    unbound = set(parameter_fields()) - set(bindings())
    assert unbound == {"movingModality"}
    for field in unbound:
        assert f"self._parameterNode.{field} = " in source, f"{field} is never written"
        assert re.search(rf"= self\._parameterNode\.{field}\b", source), f"{field} is never read"


def test_cmake_packages_every_python_file_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "CoCycleReg")
    for path in MODULE_DIR.rglob("*.py"):
        relative = path.relative_to(MODULE_DIR).as_posix()
        if not relative.startswith("Testing/"):
            assert relative in cmake, f"{relative} is not in the module's SCRIPTS"
    assert "Resources/UI/CoCycleReg.ui" in cmake and "Resources/Icons/CoCycleReg.png" in cmake
    assert (MODULE_DIR / "Resources" / "Icons" / "CoCycleReg.png").is_file()
    top = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    assert "add_subdirectory(CoCycleReg)" in top and 'EXTENSION_DEPENDS "PyTorch"' in top


def test_module_imports_nothing_heavy_at_import_time():
    """torch and cocyclereg are imported only inside the in-Slicer test, never at import."""
    tree = ast.parse(MODULE_FILE.read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {alias.name for n in top_level for alias in n.names}
    names |= {n.module for n in top_level if isinstance(n, ast.ImportFrom)}
    assert not {"torch", "cocyclereg", "PyTorchUtils"} & names


def test_model_card_agrees_with_the_package(model_file):
    from cocyclereg.model_file import read_model_info

    card, info = models.read_model_card(model_file), read_model_info(model_file)
    assert card.modalities == info.modalities
    assert card.spacing == info.spacing
    assert card.name == "Constant test model (T1 to T2)"
    assert "t1 ↔ t2" in card.description()
    assert [c.name for c in models.bundled_models(model_file.parent)] == [card.name]
    assert models.modalities_for(card, moving_is_x=False) == ("t2", "t1")
    assert card.refine_steps == info.refinement.steps


def test_model_card_shows_the_recommended_refinement(model_file, tmp_path):
    import dataclasses

    from cocyclereg.config import Refinement
    from cocyclereg.model_file import load_model, save_model

    network, info = load_model(model_file)
    refined = tmp_path / "refined.cocyclereg"
    save_model(refined, network, dataclasses.replace(info, refinement=Refinement(steps=12)))
    card = models.read_model_card(refined)
    assert card.refine_steps == 12 and "Refines each pair in 12 steps" in card.description()
    assert card.use_network and "refinement alone" not in card.description()
    assert "Refines" not in models.read_model_card(model_file).description()

    alone = tmp_path / "alone.cocyclereg"
    recommendation = Refinement(steps=12, use_network=False)
    save_model(alone, network, dataclasses.replace(info, refinement=recommendation))
    card = models.read_model_card(alone)
    assert not card.use_network and "refinement alone" in card.description()
    assert "more on" not in card.description()

    finer = tmp_path / "finer.cocyclereg"
    recommendation = Refinement(steps=12, fine_spacing_mm=1.5, fine_steps=20)
    save_model(finer, network, dataclasses.replace(info, refinement=recommendation))
    card = models.read_model_card(finer)
    assert (card.fine_steps, card.fine_spacing_mm) == (20, 1.5)
    assert "Then 20 more on 1.5 mm voxels" in card.description()


def test_model_card_refuses_other_files(tmp_path):
    import pytest

    bad = tmp_path / "pickle.cocyclereg"
    bad.write_bytes(b"\x80\x04\x95" + bytes(100))
    with pytest.raises(models.ModelCardError):
        models.read_model_card(bad)
    assert models.bundled_models(tmp_path) == []


def test_install_constraints_pin_slicers_own_packages():
    text = dependencies.pip_constraints({"numpy": "1.26.4", "SimpleITK": "2.4.0", "torch": None})
    assert text == "numpy==1.26.4\nSimpleITK==2.4.0\n"
    current = dependencies.pip_constraints()
    assert f"numpy=={dependencies.installed_version('numpy')}" in current
    assert dependencies.bundled_package(MODULE_DIR) == MODULE_DIR.parent / "CoCycleRegTrain"


def test_an_older_installed_package_is_updated_from_the_bundled_one():
    import cocyclereg

    package = dependencies.bundled_package(MODULE_DIR)
    assert dependencies.bundled_version(package) == cocyclereg.__version__
    assert dependencies.package_is_installed(dependencies.bundled_version(package))
    assert not dependencies.package_is_installed("0.0.1")  # an older install: reinstall


def test_apply_reads_the_request_after_the_install_and_checks_it_again():
    """The install step keeps Slicer's event loop running (the user may change the choices or
    close the scene meanwhile): Apply must read the request after it, and check it again."""
    tree = ast.parse(MODULE_FILE.read_text())
    apply = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "onApplyButton"
    )
    calls = [ast.unparse(node.func) for node in ast.walk(apply) if isinstance(node, ast.Call)]
    lines = {
        ast.unparse(node.func): node.lineno
        for node in ast.walk(apply)
        if isinstance(node, ast.Call)
    }
    assert "self.currentRequest" in calls and "check_request" in calls
    install = lines["self.logic.ensureDependencies"]
    assert lines["self.currentRequest"] > install and lines["check_request"] > install


def test_cleanup_disconnects_the_parameter_node_from_the_gui():
    """Slicer's Reload calls only ``cleanup()``: without this the old widgets' connectors stay
    attached to the parameter node (Slicer 5.10 Base/Python/slicer/util.py,
    reloadScriptedModule; parameterNodeWrapper's connectGui)."""
    tree = ast.parse(MODULE_FILE.read_text())
    cleanup = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "cleanup"
    )
    calls = [ast.unparse(node) for node in ast.walk(cleanup) if isinstance(node, ast.Call)]
    assert "self.setParameterNode(None)" in calls
