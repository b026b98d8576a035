"""Intensity normalisation of one modality to [0, 1].

Two methods (:class:`cocyclereg.config.NormalizationConfig`):

* ``percentile``: clip to the ``lower`` and ``upper`` intensity percentiles, then scale. The
  percentiles are taken over a foreground mask when one is given, otherwise over the voxels
  strictly brighter than the volume's minimum (which drops zero background and the padding a
  resampling adds), and over all voxels if none is brighter.
* ``window``: clip to a fixed intensity window, e.g. CT in Hounsfield units, then scale.

The ``(low, high)`` intensities used are returned so that inference can apply the very same
scaling with :func:`normalize_with`.
"""

from __future__ import annotations

import numpy as np

from cocyclereg.config import NormalizationConfig


def normalize_with(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(array - low) / (high - low)`` clipped to [0, 1], float32, same shape as ``array``.

    A constant window (``high <= low``) cannot be scaled: the result is then all zeros.
    """
    array = np.asarray(array, dtype=np.float32)
    if not high > low:
        return np.zeros(array.shape, dtype=np.float32)
    scaled = (array - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32, copy=False)


def _percentile_sample(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The voxel values the percentiles are taken over (see the module docstring)."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != array.shape:
            raise ValueError(f"mask shape {mask.shape} is not the array shape {array.shape}")
        return array[mask]
    above_minimum = array[array > array.min()] if array.size else array
    return above_minimum if above_minimum.size else array.ravel()


def intensity_window(
    array: np.ndarray, config: NormalizationConfig, mask: np.ndarray | None = None
) -> tuple[float, float]:
    """The ``(low, high)`` intensities that :func:`normalize` maps to 0 and 1.

    ``percentile``: the ``config.lower`` and ``config.upper`` percentiles (linear
    interpolation) of the voxels selected as described in the module docstring; ``window``:
    ``config.window``. An empty selection (empty mask or array) gives ``(0.0, 0.0)``.
    """
    if config.method == "window":
        return float(config.window[0]), float(config.window[1])
    if config.method != "percentile":
        raise ValueError(f"unknown normalisation method {config.method!r}")
    sample = _percentile_sample(np.asarray(array), mask)
    if sample.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(sample, [config.lower, config.upper])
    return float(low), float(high)


def normalize(
    array: np.ndarray, config: NormalizationConfig, mask: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Scale ``array`` to [0, 1] float32 as ``config`` says; returns it and ``(low, high)``.

    ``mask`` is a boolean array of ``array``'s shape restricting the voxels the percentiles are
    computed over (ignored by ``window``). Voxels at or below ``low`` become 0, at or above
    ``high`` 1, linearly in between. A constant input (``high <= low``) is not divided by
    zero: the result is all zeros.
    """
    low, high = intensity_window(array, config, mask)
    return normalize_with(array, low, high), (low, high)
