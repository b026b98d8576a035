"""Installing the bundled ``cocyclereg`` package into Slicer's Python without replacing what
Slicer (or the PyTorch extension) already provides.

Torch comes from the PyTorch extension (``PyTorchUtils``); the package is installed with pip
under constraints that pin the installed numpy, SimpleITK and torch, so pip can only add the
missing dependencies (numba, h5py, safetensors, PyYAML, tqdm, ...; pip picks the releases that
work with the pinned numpy) and never swaps Slicer's own. A bundled package newer than the
installed one (after an extension update) is installed over it.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

PINNED = ("numpy", "SimpleITK", "torch", "scipy")
TORCH_REQUIREMENT = ">=2.1"


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_constraints(versions: dict[str, str | None] | None = None) -> str:
    """A pip constraints file pinning every already installed package of ``PINNED``."""
    if versions is None:
        versions = {name: installed_version(name) for name in PINNED}
    return "".join(f"{name}=={version}\n" for name, version in versions.items() if version)


def bundled_package(module_dir) -> Path | None:
    """The ``cocyclereg`` source folder shipped with the module (CMake copies it there)."""
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


def pip_install_arguments(package: Path, constraints_file: Path) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` (a list is passed to pip unchanged)."""
    return ["--upgrade-strategy", "only-if-needed", "-c", str(constraints_file), str(package)]
