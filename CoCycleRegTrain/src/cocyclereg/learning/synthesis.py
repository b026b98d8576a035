"""Images synthesised from label maps, with random contrasts (SynthMorph-style).

A registration network trained only on the contrasts of a few real scans learns those
contrasts. Drawing each label's intensity at random, independently for the two images of a pair,
gives pairs whose only common content is the anatomy (Hoffmann et al., SynthMorph, IEEE TMI
2022): the network has to align shapes, whatever the scanner makes of them. Label maps of random
shapes (:func:`random_shapes`, SynthMorph's "shapes" training) add anatomies that no template
has, so that the network cannot learn the few real anatomies it is given by heart.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from cocyclereg.config import SynthesisConfig

FOREGROUND_PERCENTILES = (0.5, 99.5)  # of the foreground, mapped to 0 and 1
SHAPE_LABELS = (8, 24)  # how many labels a random-shape map has (inclusive range)
SHAPE_SCALE_VOXELS = (3, 8)  # voxels between the random values the shapes grow from
HEAD_RADIUS = (0.6, 0.9)  # ellipsoid radii, as fractions of the half-size of each axis


def random_shapes(shape_dhw: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A label map of random smooth shapes inside a random ellipsoid "head": int64 (D, H, W).

    Labels 1..J (J uniform in :data:`SHAPE_LABELS`) are the argmax of J random fields, each
    drawn on a coarse grid (one value every s voxels, s uniform in :data:`SHAPE_SCALE_VOXELS`)
    and interpolated trilinearly onto ``shape_dhw``; voxels outside an ellipsoid with radii a
    uniform fraction :data:`HEAD_RADIUS` of each half-size, centred within 10 % of the middle,
    are background (0). Every number is drawn from ``rng``.
    """
    count = int(rng.integers(SHAPE_LABELS[0], SHAPE_LABELS[1] + 1))
    scale = rng.uniform(*SHAPE_SCALE_VOXELS)
    coarse = [max(2, int(np.ceil(n / scale)) + 1) for n in shape_dhw]
    noise = torch.from_numpy(rng.standard_normal((1, count, *coarse)).astype(np.float32))
    fields = F.interpolate(noise, size=tuple(shape_dhw), mode="trilinear", align_corners=True)
    labels = fields[0].argmax(dim=0).numpy().astype(np.int64) + 1
    axes = np.ogrid[tuple(slice(0, n) for n in shape_dhw)]  # broadcast, not three full grids
    radius = rng.uniform(*HEAD_RADIUS, size=3) * np.asarray(shape_dhw) / 2
    centre = (np.asarray(shape_dhw) - 1) / 2 * (1 + rng.uniform(-0.1, 0.1, size=3))
    inside = sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radius, strict=True)) <= 1
    labels[~inside] = 0
    return labels


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
