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

from cocyclereg.grid import Grid

_SLAB = 16  # slices along D processed at once, to bound memory on large grids


def jacobian_determinant_array(displacement_mm: np.ndarray, grid: Grid) -> np.ndarray:
    """``det(I + grad u)`` of an LPS mm field ``(D, H, W, 3)`` on ``grid``, float64 (D, H, W).

    With ``M`` the grid's index-to-physical matrix and ``G`` the index derivatives of ``u``,
    ``I + grad u = I + G M^-1 = (M + G) M^-1``, so ``J = det(M + G) / det(M)``: nine
    derivative arrays and one closed-form 3x3 determinant per slab, no per-voxel matrices.
    """
    displacement_mm = np.asarray(displacement_mm)
    matrix = grid.index_to_physical_matrix
    scale = 1.0 / np.linalg.det(matrix)
    depth = displacement_mm.shape[0]
    determinant = np.empty(displacement_mm.shape[:3], dtype=np.float64)
    for start in range(0, depth, _SLAB):
        stop = min(start + _SLAB, depth)
        low, high = max(start - 1, 0), min(stop + 1, depth)
        block = displacement_mm[low:high]
        m = [_row(block[..., a], matrix[a], start - low, stop - low) for a in range(3)]
        slab = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        slab -= m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        slab += m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        determinant[start:stop] = slab * scale
    return determinant


def _row(component: np.ndarray, constants: np.ndarray, first: int, last: int) -> list:
    """``M[a, b] + d u_a / d index_b`` for b = 0, 1, 2 on slices ``first:last`` of one
    component ``u_a`` of a ``(d, H, W)`` block (index i is numpy axis 2, j axis 1, k axis 0;
    central differences inside, one-sided on faces; an axis of length 1 has zero derivative)."""
    component = np.asarray(component, dtype=np.float64)
    row = []
    for b, constant in enumerate(constants):
        axis = 2 - b
        if component.shape[axis] == 1:
            entry = np.full(component.shape, constant)
        else:
            entry = np.gradient(component, axis=axis)
            entry += constant
        row.append(entry[first:last])
    return row


def jacobian_determinant(field: sitk.Image) -> sitk.Image:
    """``det(I + grad u)`` of a displacement field image, as a float32 image on its grid."""
    grid = Grid.from_image(field)
    return determinant_image(
        jacobian_determinant_array(sitk.GetArrayViewFromImage(field), grid), grid
    )


def determinant_image(determinant: np.ndarray, grid: Grid) -> sitk.Image:
    """A determinant array ``(D, H, W)`` as a float32 image on ``grid``."""
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
