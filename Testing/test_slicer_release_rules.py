"""Rules only the real application would show, checked on the sources: which Slicer releases
the extension declares and what the module says on an older one, the torch version check,
Windows' hidden console, build-tree tests that cannot silently pass, the extension's metadata,
translatable strings and Slicer's own view helper."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from CoCycleRegLib import dependencies, process

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_DIR = REPOSITORY / "CoCycleReg"
MODULE_FILE = MODULE_DIR / "CoCycleReg.py"
TOP_CMAKE = REPOSITORY / "CMakeLists.txt"
PYPROJECT = REPOSITORY / "CoCycleRegTrain" / "pyproject.toml"


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text())


def class_source(name: str) -> str:
    return ast.unparse(next(n for n in module_tree().body if getattr(n, "name", "") == name))


def method_source(class_name: str, method: str) -> str:
    cls = next(n for n in module_tree().body if getattr(n, "name", "") == class_name)
    return ast.unparse(next(n for n in cls.body if getattr(n, "name", "") == method))


def cmake_variable(name: str) -> str:
    found = re.search(rf'set\({name} "?([^")]*)"?\)', TOP_CMAKE.read_text())
    assert found, f"{name} is not set in CMakeLists.txt"
    return found.group(1)


# Item 2: Slicer 5.6 and 5.8 ship Python 3.9 -------------------------------------------------


def test_the_minimum_slicer_is_declared_and_agrees_with_the_package():
    assert cmake_variable("COCYCLEREG_MINIMUM_SLICER_VERSION") == dependencies.MINIMUM_SLICER
    assert "VERSION_LESS COCYCLEREG_MINIMUM_SLICER_VERSION" in TOP_CMAKE.read_text()
    required = re.search(r'requires-python = ">=(\d+)\.(\d+)"', PYPROJECT.read_text())
    assert tuple(int(v) for v in required.groups()) == dependencies.MINIMUM_PYTHON


def test_an_older_slicer_is_told_plainly():
    message = dependencies.slicer_support_problem((3, 9, 10))
    assert "Slicer 5.10 or later" in message and "3.9.10" in message
    assert dependencies.slicer_support_problem((3, 12, 10)) is None
    assert dependencies.slicer_support_problem() is None  # this interpreter
    # The panel shows it instead of the readiness check, and Apply refuses before pip.
    assert "slicer_support_problem()" in class_source("CoCycleRegWidget")
    assert "slicer_support_problem()" in method_source("CoCycleRegLogic", "ensureDependencies")


def test_the_module_itself_runs_on_python_3_9():
    """The module must load on Slicer 5.6/5.8 to say that it needs 5.10: its own files use
    nothing newer than Python 3.9 (vermin finds the minimum version of the code)."""
    vermin = "import sys; from vermin import main; sys.argv[0] = 'vermin'; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", vermin, "--no-tips", "--violations", "-t=3.9-", str(MODULE_DIR)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Item 4: torch older than the package's floor -----------------------------------------------


def test_an_old_torch_is_reported_with_what_to_do():
    message = dependencies.torch_problem("2.0.1+cu118")
    assert "2.0.1+cu118" in message and ">=2.1" in message and "PyTorch Utils" in message
    for fine in ("2.1.0", "2.5.1+cpu", "2.13.0", None):
        assert dependencies.torch_problem(fine) is None, fine
    assert dependencies.version_tuple("2.10.0a0+git123") == (2, 10, 0)
    floor = re.search(r'"torch>=([\d.]+)"', PYPROJECT.read_text()).group(1)
    assert dependencies.TORCH_REQUIREMENT == f">={floor}"
    source = method_source("CoCycleRegLogic", "ensureDependencies")
    assert source.index("torch_problem(") < source.index("installTorch(")


# Item 8: no console window on Windows ----------------------------------------------------


def test_the_process_hides_its_console_on_windows(monkeypatch):
    """The flags slicer.util.launchConsoleProcess sets: STARTF_USESHOWWINDOW with SW_HIDE."""

    class StartupInfo:  # subprocess.STARTUPINFO exists only on Windows
        def __init__(self):
            self.dwFlags, self.wShowWindow = 0, 1

    monkeypatch.setattr(subprocess, "STARTUPINFO", StartupInfo, raising=False)
    options = process.popen_options("win32")
    assert options["startupinfo"].dwFlags & 0x1 and options["startupinfo"].wShowWindow == 0
    assert options["creationflags"] & 0x200  # its own group, for taskkill /T on Cancel
    assert process.popen_options("linux") == {"start_new_session": True}
    assert "popen_options()" in ast.unparse(ast.parse(Path(process.__file__).read_text()))


# Item 9: the build tree --------------------------------------------------------------------


def test_the_build_tree_has_the_package_and_the_in_slicer_test_cannot_skip(tmp_path):
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/CoCycleRegTrain" in cmake
    assert "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/CoCycleRegTrain" in cmake
    # Build tree layout: the module's scripts and the package copy side by side.
    scripts = tmp_path / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    (scripts / "CoCycleRegTrain").mkdir(parents=True)
    (scripts / "CoCycleRegTrain" / "pyproject.toml").write_text('version = "1"\n')
    assert dependencies.bundled_package(scripts) == scripts / "CoCycleRegTrain"
    test = class_source("CoCycleRegTest")
    assert "except ImportError" not in test and "Skipped" not in test
    assert "ensureDependencies(" in test


# Item 10: metadata -------------------------------------------------------------------------


def test_the_extension_metadata_is_complete():
    licence = (REPOSITORY / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    assert "${CMAKE_CURRENT_SOURCE_DIR}/LICENSE" in cmake_variable("EXTENSION_LICENSE_FILE")
    assert 'license = "Apache-2.0"' in PYPROJECT.read_text()
    screenshots = cmake_variable("EXTENSION_SCREENSHOTURLS").split()
    assert screenshots
    base = "https://raw.githubusercontent.com/CoCycleReg/SlicerCoCycleReg/main/"
    for url in [*screenshots, cmake_variable("EXTENSION_ICONURL")]:
        assert url.startswith(base) and (REPOSITORY / url[len(base) :]).is_file(), url
    homepage = cmake_variable("EXTENSION_HOMEPAGE")
    assert homepage.startswith("https://github.com/CoCycleReg/SlicerCoCycleReg")
    assert f'README_URL = "{homepage}"' in MODULE_FILE.read_text()


# Item 11: Slicer conventions ----------------------------------------------------------------


def test_user_facing_strings_are_translatable():
    """Module title, category (translated in Slicer's own context) and help go through the
    translation functions; no literal text is put on a widget from Python."""
    module = class_source("CoCycleReg")
    assert "self.parent.title = _(" in module
    assert "translate('qSlicerAbstractCoreModule', 'Registration')" in module
    assert "self.parent.helpText = _(" in module
    untranslated = [
        ast.unparse(node)
        for node in ast.walk(module_tree())
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant | ast.JoinedStr)
        and any(getattr(t, "attr", "") in ("text", "toolTip") for t in node.targets)
        and not (isinstance(node.value, ast.Constant) and node.value.value == "")
    ]
    assert not untranslated, untranslated


def test_slice_views_are_set_with_slicers_helper():
    source = MODULE_FILE.read_text() + (MODULE_DIR / "CoCycleRegLib" / "nodes.py").read_text()
    assert "slicer.util.setSliceViewerLayers(" in source
    assert "SetBackgroundVolumeID" not in source and "SetForegroundVolumeID" not in source


def test_slicers_process_never_imports_torch_to_check_it():
    """Only the in-Slicer test imports torch; the dependency check reads metadata."""
    tree = module_tree()
    test_class = next(n for n in tree.body if getattr(n, "name", "") == "CoCycleRegTest")
    inside_test = {id(n) for n in ast.walk(test_class)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and id(node) not in inside_test:
            assert "torch" not in {alias.name.split(".")[0] for alias in node.names}
        if isinstance(node, ast.ImportFrom) and id(node) not in inside_test:
            assert (node.module or "").split(".")[0] not in ("torch", "cocyclereg")
    source = method_source("CoCycleRegLogic", "ensureDependencies")
    assert "torchInstalled" not in source and "installed_version('torch')" in source


# Item 12: the kernels compile during the install -------------------------------------------


def test_the_install_compiles_the_kernels_with_a_status_line():
    source = method_source("CoCycleRegLogic", "ensureDependencies")
    compiling = source.index("Compiling the package's kernels")
    assert source.index("pip_install(") < compiling < source.index("warm_up_command(")
    command = dependencies.warm_up_command(sys.executable)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kernels" in command[-1]
