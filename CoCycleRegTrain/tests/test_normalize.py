"""Intensity normalisation on real MRI and CT against numpy percentiles and HU arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cocyclereg.config import NormalizationConfig
from cocyclereg.inference.normalize import normalize, normalize_with


@pytest.fixture(scope="module")
def t2_array(data_dir) -> np.ndarray:
    image = sitk.ReadImage(str(data_dir / "brain-t1t2" / "TCGA-DU-7294" / "t2.nii.gz"))
    return sitk.GetArrayFromImage(image)


def test_percentiles_of_a_real_scan_map_to_zero_and_one_and_clip(t2_array):
    config = NormalizationConfig(method="percentile", lower=2.0, upper=98.0)
    scaled, (low, high) = normalize(t2_array, config)
    above_minimum = t2_array[t2_array > t2_array.min()]
    expected_low, expected_high = np.percentile(above_minimum, [2.0, 98.0])
    assert (low, high) == pytest.approx((expected_low, expected_high))
    assert scaled.dtype == np.float32 and scaled.shape == t2_array.shape
    assert np.all(scaled[t2_array <= low] == 0.0)
    assert np.all(scaled[t2_array >= high] == 1.0)
    between = (t2_array > low) & (t2_array < high)
    value = t2_array[between][0]
    assert scaled[between][0] == pytest.approx((value - low) / (high - low), rel=1e-5)
    order = np.argsort(t2_array[between][:20000])
    assert np.all(np.diff(scaled[between][:20000][order]) >= 0)  # monotonic


def test_percentiles_over_a_mask(t2_array):
    mask = np.zeros(t2_array.shape, dtype=bool)
    mask[60:90, 80:160, 80:160] = True
    _, (low, high) = normalize(t2_array, NormalizationConfig(lower=10, upper=90), mask)
    assert (low, high) == pytest.approx(tuple(np.percentile(t2_array[mask], [10, 90])))


def test_ct_window_maps_hounsfield_units(data_dir):
    image = sitk.ReadImage(str(data_dir / "ct" / "cranium-ct.nii.gz"))
    hu = sitk.GetArrayFromImage(image)
    scaled, window = normalize(hu, NormalizationConfig(method="window", window=(-1000, 1000)))
    assert window == (-1000.0, 1000.0)
    assert np.any(hu == -1000) and np.all(scaled[hu == -1000] == 0.0)
    assert np.all(scaled[hu < -1000] == 0.0) and np.all(scaled[hu >= 1000] == 1.0)
    assert np.any(hu == 0) and np.allclose(scaled[hu == 0], 0.5)  # water
    assert np.any(hu == 40) and np.allclose(scaled[hu == 40], 0.52)  # grey matter


def test_recorded_window_reproduces_the_normalisation(t2_array):
    scaled, (low, high) = normalize(t2_array, NormalizationConfig())
    np.testing.assert_array_equal(normalize_with(t2_array, low, high), scaled)


def test_constant_input_gives_zeros():
    constant = np.full((4, 5, 6), 7.0)
    scaled, (low, high) = normalize(constant, NormalizationConfig())
    assert low == high == 7.0  # no voxel above the minimum: all voxels are used
    assert scaled.dtype == np.float32 and not scaled.any()
    assert not normalize_with(constant, 3.0, 3.0).any()


def test_background_at_the_minimum_is_left_out_of_the_percentiles():
    rng = np.random.default_rng(0)
    array = np.zeros((20, 20, 20))
    array[5:15, 5:15, 5:15] = rng.uniform(10.0, 20.0, size=(10, 10, 10))
    _, (low, high) = normalize(array, NormalizationConfig(lower=0, upper=100))
    foreground = array[5:15, 5:15, 5:15]
    assert (low, high) == (foreground.min(), foreground.max())
