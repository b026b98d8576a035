"""Random elastic and affine fields, their composition, and intensity jitter, checked in mm
against the package's independent geometry code (displacement, jacobian) and SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction

from cocyclereg.geometry.displacement import voxel_flow_to_displacement_mm
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import jacobian_determinant_array
from cocyclereg.learning.augment import (
    affine_flow,
    compose_flows,
    intensity_jitter,
    random_affine_flow,
    random_elastic_flow,
)

# An oblique grid with clinical anisotropic voxels 0.9 x 1.3 x 3 mm (i, j, k).
GRID = Grid(
    (48, 40, 20), (0.9, 1.3, 3.0), (10.0, -20.0, 5.0), oblique_direction([20, -15, 30], [-1, 1, 1])
)


def _elastic(seed: int, control_spacing_mm: float, max_displacement_mm: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return random_elastic_flow(
        GRID.shape, GRID.spacing, rng, control_spacing_mm, max_displacement_mm
    )


def _lengths_mm(flow: np.ndarray, grid: Grid = GRID) -> np.ndarray:
    return np.linalg.norm(voxel_flow_to_displacement_mm(flow, grid), axis=-1)


def test_elastic_flow_is_reproducible_and_depends_on_the_seed():
    first = _elastic(7, 20.0, 6.0)
    assert first.shape == (3, *GRID.shape) and first.dtype == np.float32
    np.testing.assert_array_equal(first, _elastic(7, 20.0, 6.0))
    assert np.abs(first - _elastic(8, 20.0, 6.0)).max() > 0.1


@pytest.mark.parametrize("seed", range(4))
def test_elastic_displacement_length_in_mm_is_within_bounds(seed):
    # Gentle settings: no shrinking for folding, so the length is 0.5 to 1 times the maximum.
    largest = _lengths_mm(_elastic(seed, 30.0, 4.0)).max()
    assert 0.5 * 4.0 - 1e-4 <= largest <= 4.0 + 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_elastic_flow_never_folds(seed):
    flow = _elastic(seed, 8.0, 15.0)
    lengths = _lengths_mm(flow)
    assert lengths.max() <= 15.0 + 1e-4
    determinant = jacobian_determinant_array(voxel_flow_to_displacement_mm(flow, GRID), GRID)
    assert determinant.min() > 0.1 - 1e-5
    # The same field at even the smallest unshrunk amplitude (7.5 mm) would fold: the guard
    # did its work here.
    stretched = flow * (7.5 / lengths.max())
    unguarded = jacobian_determinant_array(voxel_flow_to_displacement_mm(stretched, GRID), GRID)
    assert unguarded.min() < 0.1


def test_elastic_field_is_one_physical_field_whatever_the_voxel_size():
    # The same seed on grids covering the same 30 x 40 x 60 mm at different (and anisotropic)
    # voxel sizes gives the same displacement in mm at the shared points.
    def field_mm(shape_dhw, spacing_dhw):
        flow = random_elastic_flow(shape_dhw, spacing_dhw[::-1], np.random.default_rng(3), 12, 5)
        return flow * np.asarray(spacing_dhw, dtype=np.float32)[:, None, None, None]

    coarse = field_mm((16, 21, 31), (2.0, 2.0, 2.0))
    fine = field_mm((31, 41, 61), (1.0, 1.0, 1.0))[:, ::2, ::2, ::2]
    anisotropic = field_mm((16, 41, 121), (2.0, 1.0, 0.5))[:, :, ::2, ::4]
    tolerance = 0.05 * np.abs(coarse).max()
    np.testing.assert_allclose(fine, coarse, atol=tolerance)
    np.testing.assert_allclose(anisotropic, coarse, atol=tolerance)


def test_affine_flow_matches_an_itk_affine_transform():
    grid = Grid((10, 12, 8), (0.9, 1.3, 3.0), (4.0, -2.0, 7.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    rng = np.random.default_rng(0)
    matrix_dhw = np.eye(3) + 0.1 * rng.normal(size=(3, 3))
    translation_dhw = np.array([2.0, -1.5, 0.7])
    flow = affine_flow(grid.shape, grid.spacing, matrix_dhw, translation_dhw)

    # With an identity direction the LPS axes (x, y, z) are (i, j, k) = (W, H, D).
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix_dhw[::-1, ::-1].ravel().tolist())
    transform.SetTranslation(translation_dhw[::-1].tolist())
    transform.SetCenter(grid.index_to_physical((np.asarray(grid.size) - 1) / 2).tolist())
    for index_ijk in [(0, 0, 0), (9, 11, 7), (3, 8, 2), (6, 1, 5)]:
        point = grid.index_to_physical(index_ijk)
        moved = grid.physical_to_index(transform.TransformPoint(point.tolist()))
        expected_dhw = (moved - np.asarray(index_ijk))[::-1]
        i, j, k = index_ijk
        np.testing.assert_allclose(flow[:, k, j, i], expected_dhw, atol=1e-5)


def test_random_affine_is_a_rotation_times_bounded_scales_in_mm():
    shape, spacing_ijk = (9, 15, 21), (0.9, 1.3, 3.0)
    flow = random_affine_flow(shape, spacing_ijk, np.random.default_rng(4), 10.0, 0.1, 5.0)
    again = random_affine_flow(shape, spacing_ijk, np.random.default_rng(4), 10.0, 0.1, 5.0)
    np.testing.assert_array_equal(flow, again)
    # The voxel map p -> p + flow(p) is affine: its linear part from one-voxel steps at the
    # centre, then in mm along (D, H, W): A = S (I + G) S^-1 with S = diag(spacing).
    centre = np.array([n // 2 for n in shape])
    at_centre = flow[:, centre[0], centre[1], centre[2]]
    gradient = np.stack(
        [flow[(slice(None), *(centre + step))] - at_centre for step in np.eye(3, dtype=int)],
        axis=1,
    )
    spacing = np.diag(spacing_ijk[::-1])
    linear_mm = spacing @ (np.eye(3) + gradient) @ np.linalg.inv(spacing)
    # rotation @ diag(scales) in mm: orthogonal columns with lengths in 1 +- 0.1, det > 0.
    gram = linear_mm.T @ linear_mm
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-5)
    assert np.all(np.abs(np.sqrt(np.diag(gram)) - 1.0) <= 0.1 + 1e-6)
    assert np.linalg.det(linear_mm) > 0
    assert np.all(np.abs(spacing @ at_centre) <= 5.0 + 1e-5)  # the centre moves by t only


def test_composition_samples_through_the_first_field_then_the_second():
    shape = (12, 14, 16)
    first = np.zeros((3, *shape), dtype=np.float32)
    first[:] = np.array([2.0, -1.0, 0.5], dtype=np.float32)[:, None, None, None]
    second = random_elastic_flow(shape, (1.0, 1.5, 2.0), np.random.default_rng(0), 8.0, 4.0)
    composed = compose_flows(first, second)
    # p + first(p) = (d + 2, h - 1, w + 0.5): halfway between two voxels along W.
    reached = 0.5 * (second[:, 2:, :-1, :-1] + second[:, 2:, :-1, 1:])
    expected = first[:, :-2, 1:, :-1] + reached
    np.testing.assert_allclose(composed[:, :-2, 1:, :-1], expected, atol=1e-5)


def test_intensity_jitter_is_a_bounded_gamma_without_noise():
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.05, 0.95, size=(8, 9, 10)).astype(np.float32)
    jittered = intensity_jitter(volume, np.random.default_rng(1), gamma=(0.8, 1.25), noise_std=0.0)
    np.testing.assert_array_equal(
        jittered, intensity_jitter(volume, np.random.default_rng(1), (0.8, 1.25), 0.0)
    )
    exponents = np.log(jittered) / np.log(volume)
    np.testing.assert_allclose(exponents, exponents.flat[0], rtol=1e-4)
    assert 0.8 <= exponents.flat[0] <= 1.25 and not np.isclose(exponents.flat[0], 1.0)


def test_intensity_noise_has_the_requested_spread_and_stays_in_range():
    volume = np.full((40, 40, 40), 0.5, dtype=np.float32)
    volume[:5] = 0.0
    jittered = intensity_jitter(volume, np.random.default_rng(2), gamma=(1.0, 1.0), noise_std=0.05)
    assert jittered.dtype == np.float32 and jittered.min() >= 0.0 and jittered.max() <= 1.0
    assert np.std(jittered[5:] - 0.5) == pytest.approx(0.05, rel=0.05)
    assert np.all(jittered[:5] >= 0.0) and np.any(jittered[:5] == 0.0)  # clipped, not negative


def test_bias_field_is_smooth_bounded_and_seeded():
    from cocyclereg.learning.augment import random_bias_field

    shape = (24, 32, 28)
    bias = random_bias_field(shape, np.random.default_rng(3), strength=0.3)
    assert bias.shape == shape and bias.dtype == np.float32
    assert np.exp(-0.3) - 1e-6 <= bias.min() and bias.max() <= np.exp(0.3) + 1e-6
    assert bias.max() / bias.min() > 1.01  # it does change the image
    assert np.abs(np.diff(np.log(bias), axis=0)).max() < 0.05  # smooth: a few % per voxel
    np.testing.assert_array_equal(bias, random_bias_field(shape, np.random.default_rng(3), 0.3))
    assert np.all(random_bias_field(shape, np.random.default_rng(3), 0.0) == 1.0)


def test_appearance_jitter_keeps_the_range_and_blurs():
    from cocyclereg.learning.augment import appearance_jitter

    volume = np.zeros((20, 20, 20), dtype=np.float32)
    volume[5:15, 5:15, 5:15] = 0.8
    spread = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        changed = appearance_jitter(volume, rng, (1.0, 1.0), 0.0, 0.2, blur_voxels=2.0)
        assert changed.dtype == np.float32 and 0.0 <= changed.min() and changed.max() <= 1.0
        assert changed[0, 0, 0] < 1e-3 and changed[10, 10, 10] > 0.5
        spread.append(changed[10, 10, 4] > 1e-3)  # the blur spread the edge
    assert sum(spread) >= 3
    sharp = appearance_jitter(volume, np.random.default_rng(0), (1.0, 1.0), 0.0, 0.2, 0.0)
    assert sharp[10, 10, 4] == 0.0
