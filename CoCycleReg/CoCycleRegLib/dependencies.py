"""Installing the bundled ``cocyclereg`` package into Slicer's Python without replacing what
Slicer (or the PyTorch extension) already provides.

Torch comes from the PyTorch extension (``PyTorchUtils``); the package is installed with pip
under constraints that pin the installed numpy, SimpleITK and torch, so pip can only add the
missing pure dependencies (safetensors, PyYAML, tqdm, ...) and never swaps Slicer's own.
"""

from __future__ import annotations

import importlib.metadata
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


def package_is_installed(expected_version: str | None = None) -> bool:
    version = installed_version("cocyclereg")
    return version is not None and (expected_version is None or version == expected_version)


def pip_install_arguments(package: Path, constraints_file: Path) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` (a list is passed to pip unchanged)."""
    return ["--upgrade-strategy", "only-if-needed", "-c", str(constraints_file), str(package)]
