"""Installing the bundled ``cocyclereg`` package into Slicer's Python without replacing what
Slicer (or the PyTorch extension) already provides, and without a package index when nothing
is missing.

- Which Slicer: the package needs Python 3.10 or later, that is Slicer 5.10 or later (5.6 and
  5.8 ship Python 3.9). :func:`slicer_support_problem` says so in plain words; this module and
  the panel stay importable on Python 3.9 so that the sentence can be shown.
- Torch comes from the PyTorch extension (``PyTorchUtils``). Its version is read from the
  installed distribution's metadata (``importlib.metadata``), so Slicer's own process never
  imports torch just to check it; one older than the package's floor is reported with what to
  do (:func:`torch_problem`) instead of failing later inside pip.
- The package is installed by pip from a copy of the bundled source in a temporary folder
  (:func:`staged_source`), without build isolation (Slicer ships setuptools), under
  constraints that pin the installed numpy, SimpleITK, torch and scipy: pip only adds what is
  missing and never swaps Slicer's own. No extras are installed (training and plotting
  packages are the ``train`` extra). pip honours a local index or wheel folder configured for
  it (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX`` or pip.conf), so an offline
  site installs from there. The extension's folder is never written to.
- What pip would install is listed before asking (:func:`install_plan`, from
  ``pip install --dry-run --report``); afterwards the package's kernels are compiled once
  (:func:`warm_up_command`), so the first registration does not spend 15-20 s doing it.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import sys
from pathlib import Path

PINNED = ("numpy", "SimpleITK", "torch", "scipy")
MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = "5.10"
TORCH_FLOOR = (2, 1)
TORCH_REQUIREMENT = ">=" + ".".join(str(part) for part in TORCH_FLOOR)
WARM_UP_SECONDS = "about 20 s"


def slicer_support_problem(version_info=None) -> str | None:
    """Why this Slicer cannot run CoCycleReg (a sentence for the panel), or None."""
    version = tuple(version_info or sys.version_info)[:3]
    if version[:2] >= MINIMUM_PYTHON:
        return None
    running = ".".join(str(part) for part in version)
    return (
        f"CoCycleReg needs 3D Slicer {MINIMUM_SLICER} or later: its Python package requires "
        f"Python {'.'.join(map(str, MINIMUM_PYTHON))}+, and this Slicer runs Python {running} "
        "(Slicer 5.6 and 5.8 ship Python 3.9). Install the current Slicer release."
    )


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"2.1.0+cu121"`` -> ``(2, 1, 0)``."""
    match = re.match(r"\d+(\.\d+)*", text.strip())
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def torch_problem(installed: str | None) -> str | None:
    """What to do when the installed torch is older than the package needs (None: fine, or
    not installed, which the PyTorch extension then installs)."""
    if installed is None or version_tuple(installed) >= TORCH_FLOOR:
        return None
    return (
        f"PyTorch {installed} is installed, but CoCycleReg needs PyTorch {TORCH_REQUIREMENT}. "
        "Open the 'PyTorch Utils' module, uninstall PyTorch there, restart Slicer, and install "
        f"it again with the version requirement '{TORCH_REQUIREMENT}' (or press Apply here "
        "after uninstalling: CoCycleReg then installs a suitable version)."
    )


def pip_constraints(versions: dict[str, str | None] | None = None) -> str:
    """A pip constraints file pinning every already installed package of ``PINNED``."""
    if versions is None:
        versions = {name: installed_version(name) for name in PINNED}
    return "".join(f"{name}=={version}\n" for name, version in versions.items() if version)


def bundled_package(module_dir) -> Path | None:
    """The ``cocyclereg`` source folder shipped with the module (CMake copies it there, in
    the build tree and in the installed extension)."""
    for candidate in (
        Path(module_dir) / "CoCycleRegTrain",
        Path(module_dir).parent / "CoCycleRegTrain",  # running from the source tree
    ):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return None


def bundled_version(package: Path) -> str | None:
    """The ``version`` of the bundled package's ``pyproject.toml`` (None if it has none)."""
    text = (Path(package) / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return found.group(1) if found else None


def package_is_installed(expected_version: str | None = None) -> bool:
    version = installed_version("cocyclereg")
    return version is not None and (expected_version is None or version == expected_version)


def staged_source(package: Path, folder: Path) -> Path:
    """A copy of the bundled source in ``folder`` for pip to build from: pip's in-tree build
    writes ``build/`` and ``*.egg-info`` beside the sources, never in the extension's folder."""
    target = Path(folder) / "CoCycleRegTrain"
    shutil.copytree(
        package,
        target,
        ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info", "build"),
    )
    return target


def pip_install_arguments(source: Path, constraints_file: Path) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` (a list is passed to pip unchanged)."""
    return [
        *("--upgrade-strategy", "only-if-needed", "--no-build-isolation"),
        *("-c", str(constraints_file), str(source)),
    ]


def dry_run_command(python: str, source: Path, constraints_file: Path, report: Path) -> list:
    """The ``pip install --dry-run --report`` command that tells what the install would add."""
    return [
        *(python, "-m", "pip", "install", "--dry-run", "--quiet"),
        *("--report", str(report)),
        *pip_install_arguments(source, constraints_file),
    ]


def install_plan(report: dict) -> list[tuple[str, str]]:
    """(name, version) of every distribution a pip installation report would install."""
    return sorted(
        (str(item["metadata"]["name"]), str(item["metadata"]["version"]))
        for item in report.get("install", [])
    )


def read_install_plan(report_file: Path) -> list[tuple[str, str]]:
    return install_plan(json.loads(Path(report_file).read_text(encoding="utf-8")))


def install_question(plan: list[tuple[str, str]]) -> tuple[str, str]:
    """The confirmation text and its details (one dialog) for an install plan."""
    others = [name for name, _ in plan if name.lower() != "cocyclereg"]
    text = (
        "CoCycleReg will install its Python package into Slicer's Python"
        + (f", with {len(others)} packages it needs that are missing" if others else "")
        + ". Slicer's numpy, SimpleITK and PyTorch are kept. Continue?"
    )
    details = "pip will install:\n" + "\n".join(f"  {name} {version}" for name, version in plan)
    return text, details


def warm_up_command(python: str) -> list[str]:
    """Compiles (once after installing) the package's kernels in a separate process."""
    code = "from cocyclereg.geometry import kernels; kernels.load_in_background().result()"
    return [python, "-c", code]
