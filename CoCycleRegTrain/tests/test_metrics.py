"""Dice and HD95 against analytic overlaps and distances, and a brute-force surface distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, gaussian_filter
from scipy.spatial import cKDTree

from cocyclereg.evaluation.metrics import dice, hd95, mean_dice
from cocyclereg.geometry.grid import Grid

SPACING_DHW = (3.0, 1.3, 0.9)  # mm along D, H, W: a clinical anisotropic acquisition


def _box(shape, low, high, label=1) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int64)
    labels[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] = label
    return labels


def test_dice_of_two_boxes_equals_the_analytic_overlap():
    shape = (30, 30, 30)
    fixed = _box(shape, (2, 2, 2), (12, 12, 12)) + _box(shape, (15, 15, 15), (25, 25, 20), 2)
    warped = _box(shape, (5, 2, 2), (15, 12, 12)) + _box(shape, (15, 16, 15), (25, 25, 20), 2)
    scores = dice(fixed, warped)
    assert list(scores) == [1, 2]
    # Label 1: 10^3 voxels each, overlapping on 7 x 10 x 10; label 2: 10 x 10 x 5 vs 10 x 9 x 5.
    assert scores[1] == pytest.approx(2 * 700 / 2000)
    assert scores[2] == pytest.approx(2 * 450 / (500 + 450))
    assert mean_dice(fixed, warped) == pytest.approx((scores[1] + scores[2]) / 2)


def test_dice_accepts_torch_tensors():
    fixed = _box((10, 10, 10), (0, 0, 0), (5, 5, 5))
    warped = _box((10, 10, 10), (0, 0, 1), (5, 5, 6))
    expected = dice(fixed, warped)
    assert dice(torch.from_numpy(fixed)[None, None], torch.from_numpy(warped)[None, None]) == (
        expected
    )


def test_dice_of_empty_and_one_sided_labels():
    fixed = _box((10, 10, 10), (0, 0, 0), (4, 4, 4), 3)
    warped = _box((10, 10, 10), (5, 5, 5), (9, 9, 9), 7)
    assert dice(fixed, warped) == {3: 0.0}  # default: the labels of the fixed map
    assert dice(fixed, warped, labels=[0, 3, 5, 7]) == {3: 0.0, 7: 0.0}  # 5 absent from both
    assert dice(np.zeros((4, 4, 4), int), np.zeros((4, 4, 4), int)) == {}
    assert np.isnan(mean_dice(np.zeros((4, 4, 4), int), np.zeros((4, 4, 4), int)))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 3])
def test_hd95_of_a_shifted_box_is_the_shift_in_mm(axis, shift):
    shape, low, high = (40, 40, 40), np.array([5, 5, 5]), np.array([30, 30, 30])
    low[axis], high[axis] = 10, 14  # a slab across the shift: faces across it dominate
    moved_low, moved_high = low.copy(), high.copy()
    moved_low[axis] += shift
    moved_high[axis] += shift
    fixed, warped = _box(shape, low, high), _box(shape, moved_low, moved_high)
    expected = shift * SPACING_DHW[axis]
    assert hd95(fixed, warped, SPACING_DHW, 1) == pytest.approx(expected, abs=SPACING_DHW[axis])
    assert hd95(warped, fixed, SPACING_DHW, 1) == pytest.approx(expected, abs=SPACING_DHW[axis])


def test_hd95_takes_the_spacing_from_a_grid_in_itk_order():
    fixed = _box((20, 20, 20), (5, 5, 8), (15, 15, 10))
    warped = _box((20, 20, 20), (5, 5, 10), (15, 15, 12))  # two voxels along W
    grid = Grid((20, 20, 20), SPACING_DHW[::-1], (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert hd95(fixed, warped, grid, 1) == pytest.approx(2 * SPACING_DHW[2])
    assert hd95(fixed, warped, grid, 1) == hd95(fixed, warped, SPACING_DHW, 1)


def _surface_points_mm(mask: np.ndarray) -> np.ndarray:
    surface = mask & ~binary_erosion(mask, border_value=0)
    return np.argwhere(surface) * np.asarray(SPACING_DHW)


def test_hd95_equals_a_brute_force_surface_distance_percentile():
    rng = np.random.default_rng(0)
    fixed = np.zeros((24, 30, 36), dtype=np.int64)
    warped = np.zeros_like(fixed)
    fixed[gaussian_filter(rng.normal(size=fixed.shape), 3) > 0.02] = 4
    warped[gaussian_filter(rng.normal(size=fixed.shape), 3) > 0.02] = 4
    a, b = _surface_points_mm(fixed == 4), _surface_points_mm(warped == 4)
    distances = np.concatenate([cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]])
    assert hd95(fixed, warped, SPACING_DHW, 4) == pytest.approx(np.percentile(distances, 95))


def test_hd95_is_nan_when_a_label_is_missing():
    present = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    empty = np.zeros_like(present)
    assert np.isnan(hd95(present, empty, SPACING_DHW, 1))
    assert np.isnan(hd95(empty, present, SPACING_DHW, 1))
    assert hd95(present, present, SPACING_DHW, 1) == 0.0
