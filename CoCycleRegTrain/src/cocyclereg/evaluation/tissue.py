"""Brain tissue labelmaps (1 CSF, 2 grey matter, 3 white matter) for validation and benchmarks.

Two independent sources, both giving ``uint8`` images on the input's grid:

* :func:`tissue_from_probabilities`: the argmax of grey/white/CSF probability maps where their
  sum exceeds 0.5 (the SPM12 and Clinical-toolbox templates).
* :func:`tissue_from_t1`: a three-class k-means of T1 intensities inside a skull-stripped brain
  (voxels > 0). Tumours and lesions fall into whichever class their T1 intensity is nearest:
  the labels are a reproducible anatomical partition for measuring alignment, not a diagnosis.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

CSF, GREY, WHITE = 1, 2, 3


def _labels_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def tissue_from_probabilities(grey: sitk.Image, white: sitk.Image, csf: sitk.Image) -> sitk.Image:
    """Argmax of the three probability maps (same grid) where their sum is above 0.5."""
    maps = np.stack([sitk.GetArrayFromImage(x).astype(np.float32) for x in (csf, grey, white)])
    labels = np.argmax(maps, axis=0) + 1
    labels[maps.sum(axis=0) <= 0.5] = 0
    return _labels_like(labels, grey)


def tissue_from_t1(t1: sitk.Image, iterations: int = 50) -> sitk.Image:
    """Three-class k-means of the T1 intensities of a skull-stripped brain (voxels > 0).

    Classes are ordered by mean intensity: CSF (darkest), grey, white (brightest on T1).
    Starts from the 10th, 50th and 90th percentiles, so the result is deterministic.
    """
    values = sitk.GetArrayFromImage(t1).astype(np.float64)
    brain = values > 0
    if brain.sum() < 100:
        raise ValueError("tissue_from_t1 needs a skull-stripped T1 with a non-empty brain (> 0)")
    inside = values[brain]
    centres = np.percentile(inside, [10.0, 50.0, 90.0])
    for _ in range(iterations):
        nearest = np.argmin(np.abs(inside[:, None] - centres[None]), axis=1)
        updated = np.array(
            [inside[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(3)]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    order = np.argsort(centres)
    rank = np.empty(3, dtype=np.uint8)
    rank[order] = np.arange(1, 4, dtype=np.uint8)
    labels = np.zeros(values.shape, dtype=np.uint8)
    labels[brain] = rank[np.argmin(np.abs(inside[:, None] - centres[None]), axis=1)]
    return _labels_like(labels, t1)
