"""Installing the bundled package the way the module does, in this Python: from a staged copy
(the extension's folder is never written to), without build isolation and without a package
index when nothing is missing, after listing what pip would install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from CoCycleRegLib import dependencies

MODULE_DIR = Path(__file__).resolve().parents[1] / "CoCycleReg"


def tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def test_the_install_needs_no_index_and_never_writes_into_the_extension(tmp_path):
    package = dependencies.bundled_package(MODULE_DIR)
    before = tree(package)
    source = dependencies.staged_source(package, tmp_path)
    assert not (source / "tests").exists()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(dependencies.pip_constraints())
    report = tmp_path / "report.json"
    command = dependencies.dry_run_command(sys.executable, source, constraints, report)
    assert "--no-build-isolation" in command
    # --no-index: what an offline site without a local index or wheel folder has.
    result = subprocess.run([*command, "--no-index"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    plan = dependencies.read_install_plan(report)
    assert plan == [("cocyclereg", dependencies.bundled_version(package))]
    assert tree(package) == before, "pip wrote into the bundled package's folder"
    text, details = dependencies.install_question(plan)
    assert "numpy, SimpleITK and PyTorch are kept" in text and "missing" not in text
    assert f"cocyclereg {plan[0][1]}" in details


def test_the_confirmation_lists_every_package_pip_would_add():
    report = {
        "install": [
            {"metadata": {"name": "numba", "version": "0.61.2"}},
            {"metadata": {"name": "cocyclereg", "version": "0.3.0"}},
            {"metadata": {"name": "llvmlite", "version": "0.44.0"}},
        ]
    }
    plan = dependencies.install_plan(report)
    text, details = dependencies.install_question(plan)
    assert "with 2 packages it needs that are missing" in text
    assert details.splitlines()[1:] == ["  cocyclereg 0.3.0", "  llvmlite 0.44.0", "  numba 0.61.2"]
    arguments = dependencies.pip_install_arguments(Path("src"), Path("c.txt"))
    assert "--no-build-isolation" in arguments and "--upgrade-strategy" in arguments
    assert not any(a.startswith(("--index-url", "-i", "--extra-index")) for a in arguments)
