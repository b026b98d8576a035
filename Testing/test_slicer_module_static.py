"""Static checks of the module that need no Qt: the widget names the code uses exist in the
.ui file, every parameter-node field is bound to a widget (SlicerParameterName), every Python
file is packaged by CMake, and the model card and install constraints are right."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from CoCycleRegLib import dependencies, models

MODULE_DIR = Path(__file__).resolve().parents[1] / "CoCycleReg"
MODULE_FILE = MODULE_DIR / "CoCycleReg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CoCycleReg.ui"


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def parameter_fields() -> list[str]:
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        decorators = [getattr(d, "id", "") for d in getattr(node, "decorator_list", [])]
        if isinstance(node, ast.ClassDef) and "parameterNodeWrapper" in decorators:
            return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]
    raise AssertionError("no @parameterNodeWrapper class in CoCycleReg.py")


def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the module uses no widgets?"
    missing = used - set(ui_widgets())
    assert not missing, f"widgets used in CoCycleReg.py but absent from the .ui: {missing}"


def test_every_parameter_node_field_is_bound_to_a_widget():
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = name
    fields = parameter_fields()
    assert set(fields) == set(bound), (fields, bound)


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
