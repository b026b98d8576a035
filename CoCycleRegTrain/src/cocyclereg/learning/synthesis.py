"""Images synthesised from label maps, with random contrasts (SynthMorph-style).

A registration network trained only on the contrasts of a few real scans learns those
contrasts. Drawing each label's intensity at random, independently for the two images of a pair,
gives pairs whose only common content is the anatomy (Hoffmann et al., SynthMorph, IEEE TMI
2022): the network has to align shapes, whatever the scanner makes of them.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from cocyclereg.config import SynthesisConfig

FOREGROUND_PERCENTILES = (0.5, 99.5)  # of the foreground, mapped to 0 and 1


def synthesize_image(
    labels: np.ndarray, rng: np.random.Generator, settings: SynthesisConfig
) -> np.ndarray:
    """One random-contrast image of the label map ``labels`` (integer (D, H, W)).

    Each label value present gets a mean uniform in [0, 1] and Gaussian texture of standard
    deviation ``settings.texture_std`` times a uniform fraction; label 0 (background) is 0 with
    probability ``settings.dark_background_probability``, else drawn like any label. The image
    is blurred with sigma uniform in ``[0, settings.blur_voxels]`` voxels and scaled so that the
    0.5th and 99.5th percentiles of the foreground (``labels > 0``) become 0 and 1, then clipped.

    Returns float32 (D, H, W) in [0, 1]. Every number is drawn from ``rng``.
    """
    labels = np.asarray(labels)
    values = np.unique(labels)
    means = rng.uniform(0.0, 1.0, size=values.size)
    spreads = settings.texture_std * rng.uniform(0.0, 1.0, size=values.size)
    if values[0] == 0 and rng.random() < settings.dark_background_probability:
        means[0], spreads[0] = 0.0, 0.0
    index = np.searchsorted(values, labels)
    image = means[index] + spreads[index] * rng.standard_normal(labels.shape)
    if settings.blur_voxels > 0:
        image = gaussian_filter(image, rng.uniform(0.0, settings.blur_voxels), mode="nearest")
    foreground = image[labels > 0] if np.any(labels > 0) else image.ravel()
    low, high = np.percentile(foreground, FOREGROUND_PERCENTILES)
    if high <= low:
        return np.zeros(labels.shape, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)
