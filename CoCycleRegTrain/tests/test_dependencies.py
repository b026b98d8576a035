"""The dependency split: what the Slicer module installs (the core requirements) is enough
for ``cocyclereg register``; training, plotting and review packages are extras, imported only
by the commands that use them.

The proof runs the real command on the bundled pair in a fresh interpreter in which the
extras' packages are absent (``sys.modules[name] = None``: any import of them fails).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

import cocyclereg
from cocyclereg.resources import demo_dir

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS_ONLY = ("tensorboard", "matplotlib", "trame", "trame_slicer", "playwright")

BLOCKER = """
import json, os, sys
# Absent, as for an interpreter without them: import raises ModuleNotFoundError and
# importlib.util.find_spec returns None.
for name in {blocked!r} + ("torch.utils.tensorboard",):
    sys.modules[name] = None
from cocyclereg.cli import main
try:
    code = main(sys.argv[1:])
finally:
    loaded = [n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in {blocked!r}]
    with open(os.environ["LOADED_FILE"], "w") as stream:
        json.dump(loaded, stream)
sys.exit(code)
"""


def requirement_names(requirements) -> set[str]:
    names = set()
    for requirement in requirements:
        for separator in "<>=[ ;":
            requirement = requirement.split(separator)[0]
        names.add(requirement.lower())
    return names


def run_without_extras(arguments, tmp_path) -> tuple[subprocess.CompletedProcess, list]:
    loaded_file = tmp_path / "loaded.json"
    environment = dict(os.environ, LOADED_FILE=str(loaded_file))
    environment["PYTHONPATH"] = str(Path(cocyclereg.__file__).parents[1])
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER.format(blocked=EXTRAS_ONLY), *map(str, arguments)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    return result, json.loads(loaded_file.read_text())


def test_training_and_plotting_packages_are_extras():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    core = requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert not core & set(EXTRAS_ONLY), core
    assert {"tensorboard", "matplotlib"} <= requirement_names(extras["train"])
    assert requirement_names(extras["plot"]) == {"matplotlib"}
    assert "cocyclereg[train]" in extras["test"]  # the tests need everything
    assert {"trame-slicer", "playwright"} <= requirement_names(extras["review"])


def test_register_runs_without_the_extras(tmp_path):
    demo = demo_dir()
    transform = tmp_path / "transform.h5"
    result, loaded = run_without_extras(
        [
            "register",
            *("--fixed", demo / "fixed_t2.nii.gz", "--moving", demo / "moving_t1.nii.gz"),
            *("--transform", transform, "--jacobian", tmp_path / "jacobian.nii.gz"),
            "--device",
            "cpu",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert transform.is_file() and (tmp_path / "jacobian.nii.gz").is_file()
    assert loaded == [], loaded


def test_the_demo_says_what_to_install_for_its_figure(tmp_path):
    result, _ = run_without_extras(["demo", "--output", tmp_path / "demo"], tmp_path)
    assert result.returncode != 0
    assert "pip install 'cocyclereg[plot]'" in result.stderr and "--no-figure" in result.stderr
    assert not (tmp_path / "demo").exists()  # stopped before any work


def test_review_says_what_to_install_for_the_page(tmp_path):
    folder = tmp_path / "result"
    folder.mkdir()
    summary = {"fixed": str(demo_dir() / "fixed_t2.nii.gz")}  # enough to be a result folder
    (folder / "summary.json").write_text(json.dumps(summary))
    with socket.socket() as probe:  # a free port: the command checks it before the import
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result, loaded = run_without_extras(["review", folder, "--port", port], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'pip install "cocyclereg[review]"' in result.stderr
    assert loaded == [], loaded
