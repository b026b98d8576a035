"""Fixtures of the Slicer-module tests: real scans on a plain and an oblique, anisotropic grid,
a deterministic model file, and MRML scenes of Slicer's own libraries (``slicer-core``).

The model has both heads' weights at zero and constant biases, so the network output is a
known constant shift; everything else (export, the ``cocyclereg`` subprocess, import into
Slicer) is the real code path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_DIR = REPOSITORY / "CoCycleReg"
DATA = Path(os.environ.get("COCYCLEREG_DATA", REPOSITORY.parent / "shared" / "data"))
CASE = "brain-t1t2/TCGA-DU-7294"

# Network output of the constant model, voxels of the model grid, channels (D, H, W).
FORWARD_VOXELS = (0.8, -0.5, 0.3)
INVERSE_VOXELS = tuple(-v for v in FORWARD_VOXELS)
MODEL_SPACING = (3.0, 3.0, 3.0)

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # CoCycleRegLib, as Slicer puts the module folder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real scans (``../shared/data`` beside the repository, or ``COCYCLEREG_DATA``). Where
    they are missing the test is skipped, saying why, so the tests that need no scans run
    anywhere; ``COCYCLEREG_REQUIRE_DATA=1`` (CI) makes it a failure instead."""
    if not DATA.is_dir():
        reason = f"needs the real scans, not found at {DATA} (set COCYCLEREG_DATA)"
        if os.environ.get("COCYCLEREG_REQUIRE_DATA"):
            pytest.fail(reason)
        pytest.skip(reason)
    return DATA


def _resample(image: sitk.Image, size, spacing, origin, direction, labels=False) -> sitk.Image:
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
        [float(o) for o in origin],
        [float(s) for s in spacing],
        [float(d) for d in direction],
        0,
        image.GetPixelID(),
    )


def _rotation(angles_deg) -> np.ndarray:
    matrix = np.eye(3)
    for axis, angle in enumerate(np.radians(angles_deg)):
        c, s = np.cos(angle), np.sin(angle)
        plane = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[plane[0], plane[0]], step[plane[0], plane[1]] = c, -s
        step[plane[1], plane[0]], step[plane[1], plane[1]] = s, c
        matrix = step @ matrix
    return matrix


@pytest.fixture(scope="session")
def case(data_dir, tmp_path_factory) -> dict[str, Path]:
    """Fixed T2 on a 3 mm axis-aligned grid; moving T1 and its labels on an oblique
    (rotated 12/-8/20 degrees, x flipped), anisotropic 2 x 2.5 x 3.5 mm grid.

    Labels: the two tumour sub-regions of the real scan (1, 2) and the rest of the brain (3).
    """
    folder = tmp_path_factory.mktemp("case")
    source = data_dir / CASE
    t1 = sitk.ReadImage(str(source / "t1.nii.gz"), sitk.sitkFloat32)
    t2 = sitk.ReadImage(str(source / "t2.nii.gz"), sitk.sitkFloat32)
    tumor = sitk.ReadImage(str(source / "tumor.nii.gz"), sitk.sitkUInt8)
    brain = sitk.Cast(t1 > 0, sitk.sitkUInt8) * 3
    labels = sitk.Cast(sitk.Mask(brain, tumor == 0) + tumor, sitk.sitkUInt8)

    extent = np.asarray(t1.GetSize()) * np.asarray(t1.GetSpacing())
    centre = np.asarray(t1.TransformContinuousIndexToPhysicalPoint([s / 2 for s in t1.GetSize()]))
    fixed_spacing = np.array([3.0, 3.0, 3.0])
    fixed_size = np.ceil(extent / fixed_spacing).astype(int)
    fixed = _resample(t2, fixed_size, fixed_spacing, t2.GetOrigin(), t2.GetDirection())

    direction = _rotation([12, -8, 20]) @ np.diag([-1.0, 1.0, 1.0])
    spacing = np.array([2.0, 2.5, 3.5])
    size = np.ceil(extent * 1.1 / spacing).astype(int)
    origin = centre - direction @ (spacing * (size - 1) / 2)
    geometry = (size, spacing, origin, direction.ravel())
    moving = _resample(t1, *geometry)
    moving_labels = _resample(labels, *geometry, labels=True)

    paths = {
        "fixed": folder / "fixed_t2.nii.gz",
        "moving": folder / "moving_t1_oblique.nii.gz",
        "moving_labels": folder / "moving_labels.nii.gz",
    }
    sitk.WriteImage(sitk.Cast(fixed, sitk.sitkInt16), str(paths["fixed"]))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkInt16), str(paths["moving"]))
    sitk.WriteImage(moving_labels, str(paths["moving_labels"]))
    return paths


def constant_model():
    """A DualHeadUNet whose heads output the constant FORWARD/INVERSE_VOXELS, with its info."""
    import torch

    from cocyclereg.model_file import ModelInfo
    from cocyclereg.networks import DualHeadUNet

    network = DualHeadUNet((4, 8, 8, 8, 8), (8, 8, 8, 8, 4, 4))
    with torch.no_grad():
        for head, values in (
            (network.head_x2y, FORWARD_VOXELS),
            (network.head_y2x, INVERSE_VOXELS),
        ):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(values))
    percentile = {"method": "percentile", "lower": 0.5, "upper": 99.5, "window": [-1000, 1000]}
    info = ModelInfo(
        "t1",
        "t2",
        MODEL_SPACING,
        (16, 16, 16),
        "LPS",
        {"x": percentile, "y": percentile},
        {"encoder_features": [4, 8, 8, 8, 8], "decoder_features": [8, 8, 8, 8, 4, 4]},
        provenance={"name": "Constant test model (T1 to T2)", "steps": 0},
    )
    return network, info


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    from cocyclereg.model_file import save_model

    network, info = constant_model()
    return save_model(tmp_path_factory.mktemp("model") / "constant.cocyclereg", network, info)


@pytest.fixture
def scene():
    """An empty MRML scene of Slicer's own libraries."""
    import slicer

    mrml_scene = slicer.vtkMRMLScene()
    yield mrml_scene
    mrml_scene.Clear(1)
