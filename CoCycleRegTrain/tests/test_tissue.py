"""Tissue labelmaps: the template argmax rule and the T1 k-means partition."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cocyclereg.evaluation.tissue import CSF, GREY, WHITE, tissue_from_probabilities, tissue_from_t1


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.0, 2.0))
    image.SetOrigin((3.0, -2.0, 1.0))
    return image


def test_probabilities_give_the_argmax_where_tissue_is_likely():
    rng = np.random.default_rng(0)
    maps = rng.dirichlet((1.0, 1.0, 1.0, 1.0), size=(6, 7, 8)).astype(np.float32)
    csf, grey, white = (np.ascontiguousarray(maps[..., k]) for k in range(3))
    labels = tissue_from_probabilities(_image(grey), _image(white), _image(csf))
    result = sitk.GetArrayFromImage(labels)
    for index in np.ndindex(result.shape):
        values = {CSF: csf[index], GREY: grey[index], WHITE: white[index]}
        expected = max(values, key=values.get) if sum(values.values()) > 0.5 else 0
        assert result[index] == expected
    assert labels.GetSpacing() == (1.5, 1.0, 2.0) and labels.GetOrigin() == (3.0, -2.0, 1.0)
    assert result.dtype == np.uint8


def test_t1_kmeans_recovers_three_noisy_intensity_classes():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, size=(20, 20, 20))
    means = np.array([0.0, 30.0, 70.0, 110.0])
    t1 = means[truth] + rng.normal(0, 5, truth.shape)
    t1[truth == 0] = 0
    labels = sitk.GetArrayFromImage(tissue_from_t1(_image(t1.astype(np.float32))))
    assert np.mean(labels == truth) > 0.99


def test_t1_kmeans_on_a_real_brain_orders_classes_by_intensity(data_dir):
    t1 = sitk.ReadImage(str(data_dir / "brain-t1t2" / "TCGA-DU-7294" / "t1.nii.gz"))
    labels = sitk.GetArrayFromImage(tissue_from_t1(t1))
    values = sitk.GetArrayFromImage(t1)
    assert np.array_equal(labels > 0, values > 0)
    class_means = [values[labels == k].mean() for k in (CSF, GREY, WHITE)]
    assert class_means == sorted(class_means)
    assert all(np.sum(labels == k) > 0.1 * np.sum(labels > 0) for k in (CSF, GREY, WHITE))


def test_t1_kmeans_needs_a_brain():
    with pytest.raises(ValueError, match="skull-stripped"):
        tissue_from_t1(_image(np.zeros((5, 5, 5), np.float32)))
