"""Overlap and surface-distance metrics between labelmaps on one grid.

Labelmaps are integer arrays of equal shape, numpy arrays or torch tensors (on any device);
label 0 is background and never scored. Distances are in mm: the voxel spacing is given in the
array axis order (D, H, W) = (k, j, i), or as the :class:`~cocyclereg.geometry.grid.Grid` the
labelmaps lie on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from cocyclereg.geometry.grid import Grid

HD_PERCENTILE = 95.0


def _as_array(labels) -> np.ndarray:
    """A numpy view or copy of a numpy array or a torch tensor (moved to the CPU)."""
    if hasattr(labels, "detach"):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def _pair(fixed_labels, warped_labels) -> tuple[np.ndarray, np.ndarray]:
    """Both labelmaps as numpy arrays; :class:`ValueError` if their shapes differ."""
    fixed, warped = _as_array(fixed_labels), _as_array(warped_labels)
    if fixed.shape != warped.shape:
        raise ValueError(f"labelmap shapes differ: {fixed.shape} and {warped.shape}")
    return fixed, warped


def dice(fixed_labels, warped_labels, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice overlap ``2 |F ∩ W| / (|F| + |W|)`` per label.

    Args:
        fixed_labels, warped_labels: labelmaps of equal shape.
        labels: the labels to score; default every non-zero label present in ``fixed_labels``.
            Label 0 is always skipped.

    Returns ``{label: dice}`` in ascending label order. A label absent from both maps is left
    out; a label present in only one of them scores 0.0.
    """
    fixed, warped = _pair(fixed_labels, warped_labels)
    wanted = np.unique(fixed) if labels is None else np.unique(np.asarray(list(labels)))
    scores: dict[int, float] = {}
    for label in wanted[wanted != 0]:
        in_fixed, in_warped = fixed == label, warped == label
        total = int(np.count_nonzero(in_fixed)) + int(np.count_nonzero(in_warped))
        if total:
            overlap = int(np.count_nonzero(in_fixed & in_warped))
            scores[int(label)] = 2.0 * overlap / total
    return scores


def mean_dice(fixed_labels, warped_labels, labels: Iterable[int] | None = None) -> float:
    """The mean of :func:`dice` over its labels; NaN when no label is scored."""
    scores = list(dice(fixed_labels, warped_labels, labels).values())
    return float(np.mean(scores)) if scores else float("nan")


def _spacing_dhw(spacing_dhw_or_grid: Sequence[float] | Grid) -> tuple[float, float, float]:
    """Voxel size in mm along (D, H, W) from a spacing in that order or from a grid."""
    if isinstance(spacing_dhw_or_grid, Grid):
        return tuple(reversed(spacing_dhw_or_grid.spacing))  # type: ignore[return-value]
    spacing = tuple(float(s) for s in spacing_dhw_or_grid)
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers in mm, got {spacing!r}")
    return spacing  # type: ignore[return-value]


def _volume(labels: np.ndarray) -> np.ndarray:
    """A labelmap without leading axes of length 1 (e.g. (1, 1, D, H, W) -> (D, H, W))."""
    while labels.ndim > 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D labelmap, got shape {labels.shape}")
    return labels


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (or on the array border)."""
    return mask & ~binary_erosion(mask, border_value=0)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box of array slices holding every true voxel of a non-empty ``mask``."""
    occupied = np.nonzero(mask)
    return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in occupied)


def hd95(
    fixed_labels, warped_labels, spacing_dhw_or_grid: Sequence[float] | Grid, label: int
) -> float:
    """95th percentile Hausdorff distance of ``label``, in mm.

    The surfaces of the two regions (voxels with a face neighbour outside the region) are
    compared both ways: every surface voxel of each region contributes its Euclidean distance
    to the nearest surface voxel of the other, with the voxel size ``spacing_dhw_or_grid`` (mm
    along the array axes (D, H, W), or the labelmaps' grid). The result is the 95th percentile
    of all these distances. NaN when either region is empty.
    """
    fixed, warped = (_volume(a) for a in _pair(fixed_labels, warped_labels))
    spacing = _spacing_dhw(spacing_dhw_or_grid)
    in_fixed, in_warped = fixed == label, warped == label
    if not in_fixed.any() or not in_warped.any():
        return float("nan")
    # Surfaces within the box around both regions (the surface test sees the same
    # neighbours there), as voxel centres in mm; nearest distances from a k-d tree of each.
    box = _bounding_box(in_fixed | in_warped)
    fixed_points, warped_points = (
        np.argwhere(_surface(region[box])) * np.asarray(spacing) for region in (in_fixed, in_warped)
    )
    to_warped = cKDTree(warped_points).query(fixed_points, workers=-1)[0]
    to_fixed = cKDTree(fixed_points).query(warped_points, workers=-1)[0]
    return float(np.percentile(np.concatenate([to_warped, to_fixed]), HD_PERCENTILE))
