"""Shared fixtures: the real data folder and oblique, anisotropic, axis-flipped test grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from cocyclereg.geometry.grid import Grid

REPOSITORY = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("COCYCLEREG_DATA", REPOSITORY.parent / "shared" / "data"))


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


def oblique_direction(angles_deg, flip) -> tuple[float, ...]:
    """A rotation times an axis flip: a direction matrix with no zero entries, det ±1."""
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    return tuple((rotation @ np.diag(flip)).ravel())


# Grids with non-identity, oblique directions, flipped axes and anisotropic spacing like a
# clinical 2D-acquired MRI (0.9 x 1.3 x 3 mm), plus a plain LPS grid as a control.
TEST_GRIDS = {
    "oblique-flip-x": Grid(
        (21, 26, 13),
        (0.9, 1.3, 3.0),
        (12.5, -30.0, 4.0),
        oblique_direction([20, -15, 30], [-1, 1, 1]),
    ),
    "oblique-flip-yz": Grid(
        (18, 15, 22),
        (3.0, 0.9, 1.3),
        (-40.0, 7.0, 66.0),
        oblique_direction([-35, 10, 75], [1, -1, -1]),
    ),
    "permuted-flipped": Grid(
        (16, 20, 12),
        (1.3, 3.0, 0.9),
        (0.0, 0.0, 0.0),
        (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    ),
    "identity": Grid(
        (17, 19, 11),
        (1.0, 1.0, 1.0),
        (5.0, 5.0, 5.0),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    ),
}


@pytest.fixture(params=sorted(TEST_GRIDS))
def test_grid(request) -> Grid:
    return TEST_GRIDS[request.param]


def smooth_volume(grid: Grid, seed: int = 0) -> np.ndarray:
    """A smooth random float32 volume (D, H, W) on ``grid``."""
    rng = np.random.default_rng(seed)
    volume = gaussian_filter(rng.normal(size=grid.shape), 1.5)
    return (volume / np.abs(volume).max()).astype(np.float32)


def smooth_flow(grid: Grid, max_voxels: float = 3.0, seed: int = 1) -> np.ndarray:
    """A smooth random voxel field (3, D, H, W), channels (D, H, W), up to ``max_voxels``."""
    rng = np.random.default_rng(seed)
    flow = gaussian_filter(rng.normal(size=(3, *grid.shape)), (0, 2, 2, 2))
    return flow * (max_voxels / np.abs(flow).max())


def image_on(grid: Grid, array: np.ndarray) -> sitk.Image:
    return grid.apply_to(sitk.GetImageFromArray(array))
