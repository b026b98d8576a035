"""Resampling onto a grid in physical space, checked on real scans and analytic volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_GRIDS, image_on
from scipy.ndimage import map_coordinates

from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.io import read_image, read_labels, write_image

SLOPE = np.array([0.7, -1.3, 2.1])


def _linear_volume(grid: Grid) -> np.ndarray:
    """f(p) = SLOPE . p + 5 at every voxel centre: linear interpolation reproduces it exactly."""
    return (grid.physical_points() @ SLOPE + 5.0).astype(np.float64)


def _strictly_inside(source: Grid, points: np.ndarray) -> np.ndarray:
    """Points whose continuous index lies in [0, n-1] on every axis: ITK interpolates there
    (between n-1 and n-0.5 it repeats the edge voxel instead)."""
    index = source.physical_to_index(points)
    return np.all((index >= -1e-9) & (index <= np.asarray(source.size) - 1 + 1e-9), axis=-1)


def _centred_like(grid: Grid, source: Grid) -> Grid:
    """``grid``'s size, spacing and direction, moved so its centre is ``source``'s centre."""
    centre = source.index_to_physical((np.asarray(source.size) - 1) / 2)
    offset = grid.index_to_physical((np.asarray(grid.size) - 1) / 2) - np.asarray(grid.origin)
    return Grid(grid.size, grid.spacing, tuple(centre - offset), grid.direction)


@pytest.mark.parametrize("source_name", ["oblique-flip-x", "permuted-flipped"])
@pytest.mark.parametrize("target_name", ["oblique-flip-yz", "identity"])
def test_linear_resampling_between_oblique_grids_is_exact_on_a_linear_field(
    source_name, target_name
):
    source = TEST_GRIDS[source_name]
    target = _centred_like(TEST_GRIDS[target_name], source)
    image = image_on(source, _linear_volume(source))
    result = resample_to_grid(
        image, target, "linear", default_value=np.nan, output_pixel_type=sitk.sitkFloat64
    )
    values = sitk.GetArrayFromImage(result)
    inside = _strictly_inside(source, target.physical_points())
    assert inside.mean() > 0.2 and np.all(np.isfinite(values[inside]))
    np.testing.assert_allclose(values[inside], _linear_volume(target)[inside], atol=1e-9)


def test_resampling_through_a_transform_pulls_from_the_transformed_point():
    grid = TEST_GRIDS["oblique-flip-x"]
    shift = np.array([1.7, -2.2, 3.1])
    result = resample_to_grid(
        image_on(grid, _linear_volume(grid)),
        grid,
        "linear",
        transform=sitk.TranslationTransform(3, tuple(shift)),
        default_value=np.nan,
        output_pixel_type=sitk.sitkFloat64,
    )
    values = sitk.GetArrayFromImage(result)
    inside = _strictly_inside(grid, grid.physical_points() + shift)
    assert inside.mean() > 0.3
    expected = (grid.physical_points() + shift) @ SLOPE + 5.0
    np.testing.assert_allclose(values[inside], expected[inside], atol=1e-9)


def test_label_resampling_keeps_type_and_values():
    source = TEST_GRIDS["oblique-flip-x"]
    target = _centred_like(TEST_GRIDS["oblique-flip-yz"], source)
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 7, 250], dtype=np.uint8), size=source.shape)
    result = resample_to_grid(image_on(source, labels), target, "label")
    assert result.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(result))) <= {0, 3, 7, 250}
    assert Grid.from_image(result) == target


def test_real_t2_into_t1_grid(data_dir, tmp_path):
    folder = data_dir / "brain-t1t2/TCGA-FG-6692-unregistered"
    t1, t2 = read_image(folder / "t1.nii.gz"), read_image(folder / "t2.nii.gz")
    result = resample_to_grid(t2, Grid.from_image(t1), "linear")
    saved = read_image(write_image(result, tmp_path / "t2_in_t1.nii.gz"))
    for image in (result, saved):
        assert image.GetSize() == t1.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), t1.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), t1.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), t1.GetDirection(), atol=1e-6)

    # Independent check of the values: trilinear interpolation with scipy at the continuous T2
    # index of each T1 voxel centre.
    t1_grid, t2_grid = Grid.from_image(t1), Grid.from_image(t2)
    rng = np.random.default_rng(0)
    kji = np.stack([rng.integers(0, n, 4000) for n in t1_grid.shape], axis=-1)
    points = t1_grid.index_to_physical(kji[:, ::-1].astype(float))
    ijk = t2_grid.physical_to_index(points)
    inside = np.all((ijk >= 0) & (ijk <= np.asarray(t2_grid.size) - 1), axis=1)
    assert inside.sum() > 500
    expected = map_coordinates(
        sitk.GetArrayFromImage(t2).astype(np.float64), ijk[inside][:, ::-1].T, order=1
    )
    ours = sitk.GetArrayFromImage(result)[tuple(kji[inside].T)]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-3)


def test_real_labels_resample_to_a_coarser_grid_without_new_values(data_dir):
    tumour = read_labels(data_dir / "brain-t1t2/TCGA-FG-6692/tumor.nii.gz")
    grid = Grid((80, 80, 52), (3.0, 3.0, 3.0), tumour.GetOrigin(), tumour.GetDirection())
    result = resample_to_grid(tumour, grid, "label")
    before = set(np.unique(sitk.GetArrayViewFromImage(tumour)))
    after = set(np.unique(sitk.GetArrayViewFromImage(result)))
    assert after <= before and len(after) >= 3
    assert result.GetPixelID() == tumour.GetPixelID()
