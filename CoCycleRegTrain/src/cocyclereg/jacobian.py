"""Jacobian determinant of a deformation and its folding statistics.

For a resampling field ``u`` (LPS mm) on a grid, the deformation is ``phi(p) = p + u(p)`` and its
Jacobian determinant is ``J = det(I + grad u)`` with the gradient taken in physical space:
``grad u = G @ inv(direction @ diag(spacing))`` where ``G`` holds the derivatives of ``u`` with
respect to the voxel indices (i, j, k), by central differences inside the grid and one-sided
differences on its faces. ``J <= 0`` marks folding: the warp turns space inside out there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from cocyclereg.displacement import displacement_array
from cocyclereg.grid import Grid

_SLAB = 16  # slices along D processed at once, to bound memory on large grids


def _index_derivatives(block: np.ndarray) -> np.ndarray:
    """Derivatives of a ``(d, H, W, 3)`` block along (i, j, k): ``(d, H, W, 3, 3)``,
    ``[..., a, b] = d u_a / d index_b``. Axes of length 1 have zero derivative."""
    derivatives = np.zeros((*block.shape, 3), dtype=np.float64)
    for b, axis in enumerate((2, 1, 0)):  # index i is numpy axis 2, j axis 1, k axis 0
        if block.shape[axis] > 1:
            derivatives[..., b] = np.gradient(block, axis=axis)
    return derivatives


def jacobian_determinant_array(displacement_mm: np.ndarray, grid: Grid) -> np.ndarray:
    """``det(I + grad u)`` of an LPS mm field ``(D, H, W, 3)`` on ``grid``, float64 (D, H, W)."""
    displacement_mm = np.asarray(displacement_mm, dtype=np.float64)
    inverse = np.linalg.inv(grid.index_to_physical_matrix)
    depth = displacement_mm.shape[0]
    determinant = np.empty(displacement_mm.shape[:3], dtype=np.float64)
    for start in range(0, depth, _SLAB):
        stop = min(start + _SLAB, depth)
        low, high = max(start - 1, 0), min(stop + 1, depth)
        derivatives = _index_derivatives(displacement_mm[low:high])[start - low : stop - low]
        jacobian = np.einsum("...ab,bc->...ac", derivatives, inverse)
        jacobian += np.eye(3)
        determinant[start:stop] = _determinant_3x3(jacobian)
    return determinant


def _determinant_3x3(m: np.ndarray) -> np.ndarray:
    """Determinants of a stack ``(..., 3, 3)`` by cofactor expansion (exact formula; far
    faster than a LAPACK factorisation per matrix)."""
    return (
        m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
        - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
        + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0])
    )


def jacobian_determinant(field: sitk.Image) -> sitk.Image:
    """``det(I + grad u)`` of a displacement field image, as a float32 image on its grid."""
    grid = Grid.from_image(field)
    determinant = jacobian_determinant_array(displacement_array(field), grid)
    return grid.apply_to(sitk.GetImageFromArray(determinant.astype(np.float32)))


@dataclass(frozen=True)
class FoldingStats:
    """How many voxels fold (``J <= 0``), of how many, and the share in percent."""

    folding_voxels: int
    total_voxels: int
    folding_percent: float
    min_jacobian: float
    max_jacobian: float

    def as_dict(self) -> dict:
        return asdict(self)


def folding_stats(
    determinant: np.ndarray | sitk.Image, mask: np.ndarray | None = None
) -> FoldingStats:
    """Folding statistics of a Jacobian determinant, optionally inside a boolean ``mask``."""
    values = (
        sitk.GetArrayViewFromImage(determinant)
        if isinstance(determinant, sitk.Image)
        else np.asarray(determinant)
    )
    if mask is not None:
        values = values[np.asarray(mask, dtype=bool)]
    total = int(values.size)
    folding = int(np.count_nonzero(values <= 0))
    return FoldingStats(
        folding_voxels=folding,
        total_voxels=total,
        folding_percent=100.0 * folding / total if total else 0.0,
        min_jacobian=float(values.min()) if total else float("nan"),
        max_jacobian=float(values.max()) if total else float("nan"),
    )
