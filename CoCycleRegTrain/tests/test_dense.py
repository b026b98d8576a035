"""Full-resolution fields and resampling (cocyclereg.geometry.dense) against ITK's own
point-by-point filters (TransformToDisplacementFieldFilter on a CompositeTransform,
ResampleImageFilter), on oblique, flipped, permuted and anisotropic grids, with fields that cover
only part of the target so that ITK's border rule (clamped within half a voxel, zero or default
beyond) is exercised."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_GRIDS, image_on, oblique_direction

from cocyclereg.geometry.dense import composed_displacement, covering_field, resample_through
from cocyclereg.geometry.displacement import (
    affine_parameters,
    displacement_field_image,
    displacement_transform,
    transform_to_displacement_field,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.resample import resample_to_grid


def _centred_grid(target: Grid, size, spacing, direction) -> Grid:
    """A grid of ``size`` centred near the middle of ``target``, off by a fraction of a voxel
    (no target voxel exactly half a voxel outside it: there ITK's inside test is a coin toss of
    rounding)."""
    centre = target.index_to_physical(np.array([(s - 1) / 2 + 0.137 for s in target.size]))
    matrix = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing)
    origin = centre - matrix @ ((np.array(size) - 1) / 2)
    return Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction))


def _field_grid(target: Grid, direction) -> Grid:
    """A coarse 3 mm grid over the middle of ``target`` (part of the target lies outside)."""
    return _centred_grid(target, (7, 6, 5), (3.0, 3.0, 3.0), direction)


def _rigid(seed: int) -> sitk.AffineTransform:
    rng = np.random.default_rng(seed)
    euler = sitk.Euler3DTransform((1.0, -2.0, 3.0), *rng.uniform(-0.2, 0.2, 3))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(np.asarray(euler.GetMatrix()) * 1.05)  # a little scaling too
    affine.SetTranslation(tuple(rng.uniform(-4, 4, 3)))
    affine.SetCenter(euler.GetCenter())
    return affine


@pytest.mark.parametrize("aligned", [True, False], ids=["field-along-target", "field-in-lps"])
@pytest.mark.parametrize("composition", ["none", "after", "before"])
def test_composed_displacement_equals_itk_composite(test_grid, aligned, composition):
    direction = test_grid.direction if aligned else (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    field_grid = _field_grid(test_grid, direction)
    u = np.random.default_rng(3).normal(size=(*field_grid.shape, 3)) * 2.0
    displacement = displacement_transform(displacement_field_image(u, field_grid))
    affine = _rigid(4)
    if composition == "after":  # T(p) = A(p + u(p))
        itk = sitk.CompositeTransform([affine, displacement])
        ours = composed_displacement(test_grid, u, field_grid, after=affine_parameters(affine))
    elif composition == "before":  # T(p) = q + u(q), q = A^-1 p
        inverse = affine.GetInverse()
        itk = sitk.CompositeTransform([displacement, inverse])
        ours = composed_displacement(test_grid, u, field_grid, before=affine_parameters(inverse))
    else:
        itk = displacement
        ours = composed_displacement(test_grid, u, field_grid)
    expected = sitk.GetArrayFromImage(transform_to_displacement_field(itk, test_grid))
    assert ours.shape == (*test_grid.shape, 3)
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    if composition == "none":  # the field reaches only part of the target: zero elsewhere
        outside = np.all(expected == 0, axis=-1)
        assert 0.05 < outside.mean() < 0.95


@pytest.mark.parametrize("composition", ["none", "before"])
def test_a_covering_field_holds_its_edge_values_beyond_its_grid(test_grid, composition):
    """Independent: at each target voxel, the field's continuous index clamped into its grid,
    then trilinear interpolation of the original field (scipy)."""
    from scipy.ndimage import map_coordinates

    field_grid = _field_grid(test_grid, oblique_direction([10, 25, -5], [1, 1, -1]))
    u = np.random.default_rng(5).normal(size=(*field_grid.shape, 3)) * 2.0
    before = affine_parameters(_rigid(6).GetInverse()) if composition == "before" else None
    extended, grid = covering_field(u, field_grid, test_grid, before=before)
    ours = composed_displacement(test_grid, extended, grid, before=before)

    centres = test_grid.physical_points()
    points = centres if before is None else centres @ before[0].T + before[1]  # r = before(p)
    index = field_grid.physical_to_index(points)  # (D, H, W, 3) in (i, j, k)
    clamped = np.clip(index, 0, np.asarray(field_grid.size) - 1)
    coordinates = [clamped[..., axis] for axis in (2, 1, 0)]  # array order (k, j, i)
    held = np.stack([map_coordinates(u[..., c], coordinates, order=1) for c in range(3)], -1)
    expected = points + held - centres  # T(p) - p with T(p) = r + u(r)
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    # The original field reaches only part of the target; the covering one all of it, and
    # equals the original wherever the original reaches.
    original = composed_displacement(test_grid, u, field_grid, before=before)
    reached = np.all(np.abs(index - clamped) < 0.5, axis=-1)
    assert 0.05 < reached.mean() < 0.95
    np.testing.assert_allclose(original[~reached], (points - centres)[~reached], atol=1e-9)
    np.testing.assert_allclose(ours[reached], original[reached], atol=1e-9)
    # Already covering: returned as it is.
    again, same_grid = covering_field(extended, grid, test_grid, before=before)
    assert again is extended and same_grid is grid


@pytest.mark.parametrize("aligned", [True, False], ids=["separable", "grid-sample"])
def test_float32_displacement_is_the_float64_one_rounded(aligned):
    target = TEST_GRIDS["oblique-flip-yz"]
    direction = target.direction if aligned else (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    field_grid = _field_grid(target, direction)
    u = np.random.default_rng(9).normal(size=(*field_grid.shape, 3)) * 2.0
    after = affine_parameters(_rigid(10))
    exact = composed_displacement(target, u, field_grid, after=after)
    rounded = composed_displacement(target, u, field_grid, after=after, dtype=np.float32)
    assert rounded.dtype == np.float32
    np.testing.assert_allclose(rounded, exact, atol=1e-4)


def _moving_images(grid: Grid):
    rng = np.random.default_rng(5)
    intensity = image_on(grid, rng.normal(100, 20, grid.shape).astype(np.float32))
    labels = image_on(grid, rng.integers(0, 6, grid.shape).astype(np.uint8))
    large_labels = image_on(grid, rng.integers(0, 70000, grid.shape).astype(np.int32))
    return intensity, labels, large_labels


@pytest.mark.parametrize("target_name", ["oblique-flip-x", "permuted-flipped", "identity"])
def test_resample_through_equals_itk_resampling_through_the_written_field(target_name):
    target = TEST_GRIDS[target_name]
    moving = _centred_grid(
        target, (15, 17, 9), (1.2, 0.8, 2.5), oblique_direction([10, 20, -25], [1, -1, 1])
    )
    field_grid = _field_grid(target, target.direction)
    u = np.random.default_rng(6).normal(size=(*field_grid.shape, 3)) * 2.0
    after = affine_parameters(_rigid(7))
    field = displacement_field_image(
        composed_displacement(target, u, field_grid, after=after), target
    )
    images = _moving_images(moving)
    kinds = ["linear", "label", "label"]
    ours = resample_through(
        list(zip(images, kinds, strict=True)), target, u, field_grid, after=after
    )
    for image, kind, result in zip(images, kinds, ours, strict=True):
        expected = resample_to_grid(image, target, kind, displacement_transform(field))
        assert result.GetPixelID() == expected.GetPixelID()
        assert Grid.from_image(result).is_close(target, 1e-9)
        got, want = sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(expected)
        if kind == "linear":
            np.testing.assert_allclose(got, want, atol=1e-3)  # float32 positions and values
        else:
            np.testing.assert_array_equal(got, want)
            assert set(np.unique(got)) <= set(np.unique(sitk.GetArrayViewFromImage(image))) | {0}
        outside = want == (0 if kind == "label" else want.min())
        assert 0.0 < outside.mean() < 1.0  # some positions fall outside the moving image


@pytest.mark.parametrize("shift_mm", [0.5, -0.5, 0.25])
def test_nearest_rounds_halves_up_like_itk(shift_mm):
    grid = TEST_GRIDS["identity"]
    labels = image_on(grid, np.random.default_rng(8).integers(0, 9, grid.shape).astype(np.int16))
    field_grid = _field_grid(grid, grid.direction)
    u = np.zeros((*field_grid.shape, 3))
    u[..., 0] = shift_mm
    field = displacement_field_image(composed_displacement(grid, u, field_grid), grid)
    (ours,) = resample_through([(labels, "label")], grid, u, field_grid)
    expected = resample_to_grid(labels, grid, "label", displacement_transform(field))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(expected))


def test_resample_through_refuses_images_on_different_grids():
    first, second = TEST_GRIDS["identity"], TEST_GRIDS["oblique-flip-x"]
    images = [
        (image_on(first, np.zeros(first.shape, np.float32)), "linear"),
        (image_on(second, np.zeros(second.shape, np.float32)), "linear"),
    ]
    with pytest.raises(ValueError, match="one grid"):
        resample_through(images, first, np.zeros((2, 2, 2, 3)), first)
