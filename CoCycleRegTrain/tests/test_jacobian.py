"""Jacobian determinant in physical space against analytic fields and independent ITK code."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_GRIDS, smooth_flow

from cocyclereg.geometry.displacement import displacement_field_image, voxel_flow_to_displacement_mm
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import (
    folding_stats,
    jacobian_determinant,
    jacobian_determinant_array,
)


def _field_from_function(grid: Grid, function) -> np.ndarray:
    points = grid.physical_points()
    return function(points) - points


def test_rotation_about_an_oblique_axis_preserves_volume(test_grid):
    angle = np.deg2rad(25)
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    displacement = _field_from_function(test_grid, lambda p: p @ rotation.T + 3.0)
    np.testing.assert_allclose(jacobian_determinant_array(displacement, test_grid), 1.0, atol=1e-9)


def test_quadratic_field_matches_the_analytic_determinant():
    # phi(p) = p + 0.01 * (x^2, y*z, 0) has Jacobian [[1 + .02x, 0, 0], [0, 1 + .01z, .01y],
    # [0, 0, 1]], determinant (1 + .02x)(1 + .01z). Central differences are exact for
    # quadratics inside the grid.
    grid = TEST_GRIDS["oblique-flip-yz"]

    def phi(p):
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        return p + 0.01 * np.stack([x * x, y * z, np.zeros_like(x)], axis=-1)

    displacement = _field_from_function(grid, phi)
    determinant = jacobian_determinant_array(displacement, grid)
    points = grid.physical_points()
    expected = (1 + 0.02 * points[..., 0]) * (1 + 0.01 * points[..., 2])
    interior = (slice(1, -1),) * 3
    np.testing.assert_allclose(determinant[interior], expected[interior], rtol=1e-9)


def test_physical_determinant_equals_the_voxel_space_determinant(test_grid):
    # det(I + M G M^-1) = det(I + G): computed from the voxel flow directly with numpy.
    flow = smooth_flow(test_grid, max_voxels=2.5)
    derivatives = np.stack(
        [np.stack(np.gradient(flow[c]), axis=-1) for c in range(3)], axis=-2
    )  # (D, H, W, 3 components (k, j, i), 3 axes (k, j, i))
    voxel_determinant = np.linalg.det(np.eye(3) + derivatives)
    ours = jacobian_determinant_array(voxel_flow_to_displacement_mm(flow, test_grid), test_grid)
    np.testing.assert_allclose(ours, voxel_determinant, atol=1e-10)


def test_agrees_with_itk_on_an_axis_aligned_anisotropic_grid():
    # ITK's filter uses spacing but not direction, so compare on a grid with identity direction.
    grid = Grid((20, 18, 14), (0.9, 1.3, 3.0), (4.0, -2.0, 7.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    field = displacement_field_image(
        voxel_flow_to_displacement_mm(smooth_flow(grid, 2.0), grid), grid
    )
    itk = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field, True))
    ours = sitk.GetArrayFromImage(jacobian_determinant(field))
    interior = (slice(1, -1),) * 3
    np.testing.assert_allclose(ours[interior], itk[interior], atol=1e-5)


def test_folding_is_counted():
    grid = TEST_GRIDS["oblique-flip-x"]
    flow = np.zeros((3, *grid.shape))
    # A reflection along W in the middle slab folds those voxels: phi_w = w - 2 (w - c).
    centre = grid.shape[2] // 2
    w = np.arange(grid.shape[2], dtype=float)
    flow[2, 4:8, :, :] = -2 * (w - centre)
    determinant = jacobian_determinant(
        displacement_field_image(voxel_flow_to_displacement_mm(flow, grid), grid)
    )
    stats = folding_stats(determinant)
    values = sitk.GetArrayFromImage(determinant)
    assert stats.folding_voxels == int((values <= 0).sum()) > 0
    assert stats.total_voxels == values.size
    assert stats.folding_percent == pytest.approx(100 * stats.folding_voxels / values.size)
    assert stats.min_jacobian == pytest.approx(-1.0, abs=1e-9)
    np.testing.assert_allclose(values[:, 1:-1, 1:-1][0:3], 1.0, atol=1e-6)
    inside = folding_stats(values, mask=np.zeros(values.shape, bool))
    assert inside.total_voxels == 0 and inside.folding_percent == 0.0


def test_slab_processing_matches_whole_volume():
    grid = Grid((9, 8, 40), (1.0, 1.2, 0.8), (0, 0, 0), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    displacement = voxel_flow_to_displacement_mm(smooth_flow(grid, 3.0), grid)
    derivatives = np.stack(
        [np.stack(np.gradient(displacement[..., a], axis=(2, 1, 0)), -1) for a in range(3)], axis=-2
    )
    whole = np.linalg.det(np.eye(3) + derivatives @ np.linalg.inv(grid.index_to_physical_matrix))
    np.testing.assert_allclose(jacobian_determinant_array(displacement, grid), whole, atol=1e-12)
