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

from cocyclereg.geometry import kernels
from cocyclereg.geometry.grid import Grid


def jacobian_determinant_array(
    displacement_mm: np.ndarray, grid: Grid, dtype: type = np.float64
) -> np.ndarray:
    """``det(I + grad u)`` of an LPS mm field ``(D, H, W, 3)`` on ``grid``, as ``dtype``
    ``(D, H, W)`` (computed in float64 whatever the field's and the result's dtype).

    With ``M`` the grid's index-to-physical matrix and ``G`` the index derivatives of ``u``,
    ``I + grad u = I + G M^-1 = (M + G) M^-1``, so ``J = det(M + G) / det(M)``: one
    closed-form 3x3 determinant per voxel, in one compiled pass
    (:func:`cocyclereg.geometry.kernels.jacobian_determinant`).
    """
    displacement_mm = np.asarray(displacement_mm)
    if displacement_mm.dtype not in (np.float32, np.float64):
        displacement_mm = displacement_mm.astype(np.float64)
    # contiguous and writeable (a read-only view, e.g. of a SimpleITK image, is copied): the
    # one array type the kernel is compiled for
    displacement_mm = np.require(displacement_mm, requirements=["C", "W"])
    matrix = grid.index_to_physical_matrix
    determinant = np.empty(displacement_mm.shape[:3], dtype=dtype)
    kernels.jacobian_determinant(displacement_mm, matrix, 1.0 / np.linalg.det(matrix), determinant)
    return determinant


def jacobian_determinant(field: sitk.Image) -> sitk.Image:
    """``det(I + grad u)`` of a displacement field image, as a float32 image on its grid."""
    grid = Grid.from_image(field)
    return determinant_image(
        jacobian_determinant_array(sitk.GetArrayViewFromImage(field), grid), grid
    )


def determinant_image(determinant: np.ndarray, grid: Grid) -> sitk.Image:
    """A determinant array ``(D, H, W)`` as a float32 image on ``grid``."""
    return grid.apply_to(sitk.GetImageFromArray(determinant.astype(np.float32, copy=False)))


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
