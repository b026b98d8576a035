"""Random-contrast images drawn from a real label map (the vxm-subject's FreeSurfer aseg)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cocyclereg.config import SynthesisConfig
from cocyclereg.learning.synthesis import SHAPE_LABELS, random_shapes, synthesize_image


@pytest.fixture(scope="module")
def aseg(data_dir) -> np.ndarray:
    image = sitk.ReadImage(str(data_dir / "brain-t1" / "vxm-subject" / "aseg.nii.gz"))
    return sitk.GetArrayFromImage(image)[::3, ::3, ::3].astype(np.int64)  # 3 mm, quick


def _label_means(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([image[labels == value].mean() for value in np.unique(labels) if value > 0])


def test_each_label_is_one_contrast_and_two_draws_are_independent(aseg):
    settings = SynthesisConfig(texture_std=0.0, blur_voxels=0.0, dark_background_probability=1.0)
    rng = np.random.default_rng(0)
    first, second = (synthesize_image(aseg, rng, settings) for _ in range(2))
    for image in (first, second):
        assert image.dtype == np.float32 and image.shape == aseg.shape
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() == 1.0
        assert np.all(image[aseg == 0] == 0.0)  # dark background
        for value in np.unique(aseg):  # without texture or blur: one intensity per label
            assert np.ptp(image[aseg == value]) == 0.0
    # 40+ labels with independent uniform means: their orders are unrelated between draws.
    correlation = np.corrcoef(_label_means(first, aseg), _label_means(second, aseg))[0, 1]
    assert abs(correlation) < 0.6
    assert len(np.unique(_label_means(first, aseg))) > 0.9 * (len(np.unique(aseg)) - 1)


def test_texture_blur_and_bright_background_are_drawn_from_the_generator(aseg):
    settings = SynthesisConfig(texture_std=0.2, blur_voxels=1.0, dark_background_probability=0.0)
    image = synthesize_image(aseg, np.random.default_rng(5), settings)
    again = synthesize_image(aseg, np.random.default_rng(5), settings)
    np.testing.assert_array_equal(image, again)
    assert not np.array_equal(image, synthesize_image(aseg, np.random.default_rng(6), settings))
    inside = aseg == np.bincount(aseg[aseg > 0].ravel()).argmax()  # the largest label
    assert image[inside].std() > 0.0  # texture
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_random_shapes_fill_an_ellipsoid_with_smooth_labels():
    counts = []
    for seed in range(6):
        labels = random_shapes((32, 48, 40), np.random.default_rng(seed))
        assert labels.dtype == np.int64 and labels.shape == (32, 48, 40)
        assert labels[0, 0, 0] == labels[-1, -1, -1] == 0  # corners lie outside the head
        assert labels[16, 24, 20] > 0  # the middle inside it
        present = np.unique(labels[labels > 0])
        counts.append(present.size)
        assert present.max() <= SHAPE_LABELS[1]
        # Smooth shapes, not salt and pepper: most voxels share their neighbour's label.
        assert (labels[:, :, 1:] == labels[:, :, :-1]).mean() > 0.7
    assert len(set(counts)) > 1  # the number of labels is drawn too
    first, second = (random_shapes((32, 48, 40), np.random.default_rng(s)) for s in (0, 0))
    np.testing.assert_array_equal(first, second)
