"""Grid geometry against SimpleITK's own index/physical conversions; the model grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_GRIDS

from cocyclereg.errors import GeometryError
from cocyclereg.geometry.grid import Grid, foreground_mask, model_grid


def test_index_physical_conversions_match_simpleitk(test_grid):
    reference = test_grid.reference_image()
    rng = np.random.default_rng(3)
    indices = rng.uniform(-2, np.asarray(test_grid.size) + 2, size=(50, 3))
    ours = test_grid.index_to_physical(indices)
    theirs = np.array(
        [reference.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in indices]
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    back = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in ours])
    np.testing.assert_allclose(test_grid.physical_to_index(ours), back, atol=1e-9)


def test_physical_points_layout_is_d_h_w(test_grid):
    points = test_grid.physical_points()
    assert points.shape == (*test_grid.shape, 3)
    reference = test_grid.reference_image()
    for k, j, i in [(0, 0, 0), (test_grid.shape[0] - 1, 1, 2), (1, test_grid.shape[1] - 1, 3)]:
        np.testing.assert_allclose(
            points[k, j, i], reference.TransformIndexToPhysicalPoint((i, j, k))
        )


def test_from_image_and_apply_to_round_trip(test_grid):
    image = test_grid.reference_image(sitk.sitkInt16)
    assert Grid.from_image(image) == test_grid
    assert image.GetPixelID() == sitk.sitkInt16


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": (0, 4, 4)},
        {"spacing": (1.0, 0.0, 1.0)},
        {"direction": (1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0)},
        {"direction": (1.0, 0.0, 0.0)},
    ],
)
def test_invalid_grids_are_refused(kwargs):
    base = {
        "size": (4, 4, 4),
        "spacing": (1.0, 1.0, 1.0),
        "origin": (0.0, 0.0, 0.0),
        "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    }
    with pytest.raises(GeometryError):
        Grid(**{**base, **kwargs})


def _foreground_indices_in(grid: Grid, image: sitk.Image) -> np.ndarray:
    """Continuous indices in ``grid`` of every foreground voxel centre of ``image``."""
    k, j, i = np.nonzero(foreground_mask(image))
    points = Grid.from_image(image).index_to_physical(np.stack([i, j, k], axis=-1))
    return grid.physical_to_index(points)


@pytest.mark.parametrize("aligned", [False, True])
def test_model_grid_holds_the_foreground_of_a_real_oblique_scan(data_dir, aligned):
    image = sitk.ReadImage(str(data_dir / "brain-t1t2/TCGA-FG-6692-unregistered/t2.nii.gz"))
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) if aligned else None
    grid = model_grid(image, spacing=(2.0, 2.0, 2.5), multiple=16, direction=direction)
    assert all(n % 16 == 0 for n in grid.size)
    assert grid.spacing == (2.0, 2.0, 2.5)
    np.testing.assert_allclose(grid.direction, direction or image.GetDirection())
    indices = _foreground_indices_in(grid, image)
    assert indices.min() >= -0.5 and np.all(indices.max(axis=0) <= np.asarray(grid.size) - 0.5)
    # Tight: 16 voxels fewer on any side could not hold the foreground's voxels (boxes of
    # spacing-sized extent around the centres, whose corners reach further on a rotated grid).
    k, j, i = np.nonzero(foreground_mask(image))
    low, high = (
        np.array([i.min(), j.min(), k.min()]) - 0.5,
        np.array([i.max(), j.max(), k.max()]) + 0.5,
    )
    corners = np.array(
        [[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])]
    )
    in_grid = grid.physical_to_index(Grid.from_image(image).index_to_physical(corners))
    extent = in_grid.max(axis=0) - in_grid.min(axis=0)
    assert np.all(extent <= np.asarray(grid.size) + 1e-6)
    assert np.all(extent > np.asarray(grid.size) - 16)


def test_model_grid_with_fixed_size_is_centred_on_the_foreground(data_dir):
    image = sitk.ReadImage(str(data_dir / "brain-t1t2/TCGA-DU-7294/t1.nii.gz"))
    grid = model_grid(image, spacing=2.0, size=(48, 64, 32))
    assert grid.size == (48, 64, 32)
    indices = _foreground_indices_in(grid, image)
    low, high = indices.min(axis=0) - 0.5, indices.max(axis=0) + 0.5
    centre = (low + high) / 2
    np.testing.assert_allclose(centre, (np.asarray(grid.size) - 1) / 2, atol=1.0)


def test_model_grid_refuses_sizes_that_are_not_multiples():
    image = TEST_GRIDS["identity"].reference_image()
    with pytest.raises(GeometryError, match="multiples of 16"):
        model_grid(image, spacing=1.0, size=(16, 20, 16))


def test_model_grid_of_an_empty_image_covers_the_whole_image():
    grid_in = TEST_GRIDS["oblique-flip-x"]
    image = grid_in.reference_image()
    grid = model_grid(image, spacing=1.0, multiple=8)
    corners = np.array(
        [
            [a, b, c]
            for a in (-0.5, grid_in.size[0] - 0.5)
            for b in (-0.5, grid_in.size[1] - 0.5)
            for c in (-0.5, grid_in.size[2] - 0.5)
        ]
    )
    inside = grid.physical_to_index(grid_in.index_to_physical(corners))
    assert inside.min() >= -0.5 - 1e-9 and np.all(
        inside.max(0) <= np.asarray(grid.size) - 0.5 + 1e-9
    )


@pytest.mark.parametrize("spacing", [0.5, (2.0, 0.7, 1.1)])
def test_with_spacing_covers_the_same_box(test_grid, spacing):
    finer = test_grid.with_spacing(spacing)
    assert finer.direction == test_grid.direction
    np.testing.assert_allclose(finer.spacing, np.broadcast_to(spacing, 3))
    # The first voxel's outer corner stays; the far corner moves by less than half a voxel.
    np.testing.assert_allclose(
        finer.index_to_physical(np.full(3, -0.5)),
        test_grid.index_to_physical(np.full(3, -0.5)),
        atol=1e-9,
    )
    far_old = np.asarray(test_grid.size) * np.asarray(test_grid.spacing)
    far_new = np.asarray(finer.size) * np.asarray(finer.spacing)
    assert np.all(np.abs(far_new - far_old) <= np.asarray(finer.spacing) / 2 + 1e-9)
    # Its first and last voxel centres, placed independently by SimpleITK, lie half a new
    # voxel inside the old box's corners.
    reference = finer.reference_image()
    for index, corner in (([0.0] * 3, -0.5), ([n - 1.0 for n in finer.size], None)):
        point = reference.TransformContinuousIndexToPhysicalPoint(index)
        in_old = test_grid.physical_to_index(np.asarray(point))
        half_new = np.asarray(finer.spacing) / np.asarray(test_grid.spacing) / 2
        expected = (
            np.full(3, -0.5) + half_new
            if corner is not None
            else np.asarray(finer.size) * 2 * half_new - 0.5 - half_new
        )
        np.testing.assert_allclose(in_old, expected, atol=1e-9)


def test_with_spacing_refuses_non_positive_spacing():
    grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(GeometryError):
        grid.with_spacing(0.0)
