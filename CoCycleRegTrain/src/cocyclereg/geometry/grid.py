"""Voxel grids in physical space, and the grid a model runs on.

A :class:`Grid` is what ITK calls an image's geometry: ``size`` and ``spacing`` in ITK index order
(i, j, k), ``origin`` as the LPS position in mm of the centre of voxel (0, 0, 0), and
``direction`` whose columns are the LPS directions of the i, j and k axes. A voxel with index
(i, j, k) lies at ``origin + direction @ diag(spacing) @ (i, j, k)``. Its numpy array has shape
(D, H, W) = (size[2], size[1], size[0]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from cocyclereg.errors import GeometryError


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3D voxel grid (ITK conventions, LPS millimetres)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.size) != 3 or any(int(n) < 1 for n in self.size):
            raise GeometryError(f"Grid size must be three positive integers, got {self.size}")
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise GeometryError(f"Grid spacing must be three positive numbers, got {self.spacing}")
        if len(self.direction) != 9:
            raise GeometryError("Grid direction must have 9 entries (row-major 3x3).")
        matrix = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
            raise GeometryError("Grid direction must be an orthonormal matrix.")
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in self.direction))

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        """The grid of a 3D SimpleITK image."""
        if image.GetDimension() != 3:
            raise GeometryError(f"Expected a 3D image, got {image.GetDimension()}D.")
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @property
    def shape(self) -> tuple[int, int, int]:
        """Numpy/torch array shape (D, H, W) of a volume on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 matrix whose columns are the LPS directions of the i, j, k axes."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """3x3 ``direction @ diag(spacing)``: an (i, j, k) step in voxels to an LPS step in mm."""
        return self.direction_matrix @ np.diag(self.spacing)

    def index_to_physical(self, index_ijk: np.ndarray) -> np.ndarray:
        """LPS mm of continuous indices: ``(..., 3)`` in (i, j, k) -> ``(..., 3)`` in (x, y, z)."""
        index_ijk = np.asarray(index_ijk, dtype=float)
        return index_ijk @ self.index_to_physical_matrix.T + np.asarray(self.origin)

    def physical_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices of LPS points in mm, ``(..., 3)`` -> ``(..., 3)``."""
        points_lps = np.asarray(points_lps, dtype=float)
        inverse = np.linalg.inv(self.index_to_physical_matrix)
        return (points_lps - np.asarray(self.origin)) @ inverse.T

    def physical_points(self) -> np.ndarray:
        """LPS mm of every voxel centre, shape (D, H, W, 3) with last axis (x, y, z)."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in self.shape), indexing="ij")
        return self.index_to_physical(np.stack([i, j, k], axis=-1))

    def reference_image(self, pixel_id: int = sitk.sitkFloat32, components: int = 1) -> sitk.Image:
        """A zero image on this grid (the reference of a resampling)."""
        if components == 1:
            image = sitk.Image(list(self.size), pixel_id)
        else:
            image = sitk.Image(list(self.size), pixel_id, components)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this grid's origin, spacing and direction on ``image`` (same size); returns it."""
        if tuple(image.GetSize()) != self.size:
            raise GeometryError(f"Image size {image.GetSize()} is not the grid size {self.size}.")
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def with_spacing(self, spacing: float | Sequence[float]) -> Grid:
        """A grid over the same box with voxels of ``spacing`` mm (i, j, k): same direction,
        the first voxel's outer corner where this grid's is, ``round(size * old / new)``
        voxels per axis (at least one), so the far corner moves by less than half a new
        voxel."""
        new_spacing = np.asarray(_as_triple(spacing, "spacing"))
        if np.any(new_spacing <= 0):
            raise GeometryError(f"spacing must be positive, got {spacing!r}")
        old_spacing = np.asarray(self.spacing)
        size = np.maximum(1, np.rint(np.asarray(self.size) * old_spacing / new_spacing))
        corner = self.index_to_physical(np.full(3, -0.5))
        origin = corner + self.direction_matrix @ (new_spacing / 2)
        return Grid(tuple(int(n) for n in size), tuple(new_spacing), tuple(origin), self.direction)

    @property
    def corner_indices(self) -> np.ndarray:
        """The (i, j, k) indices of the grid's 8 corner voxel centres, ``(8, 3)`` float: an
        affine map of the grid's voxel centres has its extremes there."""
        return np.array(
            [
                [i, j, k]
                for i in (0, self.size[0] - 1)
                for j in (0, self.size[1] - 1)
                for k in (0, self.size[2] - 1)
            ],
            dtype=float,
        )

    def is_close(self, other: Grid, tolerance_mm: float = 1e-4) -> bool:
        """Same size and, to ``tolerance_mm`` at the far corner, the same voxel positions."""
        if self.size != other.size:
            return False
        corners = self.corner_indices
        difference = self.index_to_physical(corners) - other.index_to_physical(corners)
        return bool(np.abs(difference).max() <= tolerance_mm)


def foreground_mask(image: sitk.Image, fraction: float = 0.1) -> np.ndarray:
    """Boolean (D, H, W) mask of voxels brighter than background.

    The threshold is ``low + fraction * (high - low)`` with ``low`` and ``high`` the 0.5th and
    99.5th intensity percentiles: zero background of skull-stripped MRI, scanner noise, and air
    in CT (-1000 HU) all fall below it.
    """
    array = sitk.GetArrayViewFromImage(image)
    low, high = np.percentile(array, [0.5, 99.5])
    if high <= low:
        return np.zeros(array.shape, dtype=bool)
    return np.asarray(array > low + fraction * (high - low))


def _as_triple(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    values = (value,) * 3 if np.isscalar(value) else tuple(value)
    if len(values) != 3:
        raise GeometryError(f"{name} needs one or three values, got {value!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def model_grid(
    image: sitk.Image,
    spacing: float | Sequence[float],
    multiple: int = 16,
    size: Sequence[int] | None = None,
    margin_mm: float = 0.0,
    direction: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
) -> Grid:
    """The grid a network runs on: in ``image``'s physical space, centred on its foreground.

    Args:
        image: the fixed image; the grid covers its foreground.
        spacing: voxel size in mm along the new grid's i, j, k axes (one value or three).
        multiple: every side of the grid is a multiple of this many voxels (16 for a UNet with
            four poolings).
        size: the grid size in (i, j, k) voxels, each a multiple of ``multiple``; the foreground
            is centred and cropped or padded to it. ``None``: the smallest such size that
            holds the foreground plus ``margin_mm`` on each side.
        margin_mm: extra room around the foreground, in mm, when ``size`` is ``None``.
        direction: row-major 3x3 direction of the new grid; default: the image's own, so an
            oblique acquisition stays oblique. Give the identity for an LPS-aligned grid.
        mask: boolean (D, H, W) foreground on the image's grid; default
            :func:`foreground_mask`. An empty foreground means the whole image.
    """
    image_grid = Grid.from_image(image)
    new_spacing = np.asarray(_as_triple(spacing, "spacing"))
    if np.any(new_spacing <= 0):
        raise GeometryError(f"spacing must be positive, got {spacing!r}")
    rotation = np.asarray(direction if direction is not None else image_grid.direction, float)
    rotation = rotation.reshape(3, 3)

    mask = foreground_mask(image) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != image_grid.shape:
        raise GeometryError(f"mask shape {mask.shape} is not the image shape {image_grid.shape}")
    if mask.any():
        occupied = np.nonzero(mask)  # (k, j, i) index arrays
        low_kji = np.array([a.min() for a in occupied], dtype=float)
        high_kji = np.array([a.max() for a in occupied], dtype=float)
        low_ijk, high_ijk = low_kji[::-1] - 0.5, high_kji[::-1] + 0.5
    else:
        low_ijk = np.full(3, -0.5)
        high_ijk = np.asarray(image_grid.size, dtype=float) - 0.5
    corners_ijk = np.array(
        [
            [a, b, c]
            for a in (low_ijk[0], high_ijk[0])
            for b in (low_ijk[1], high_ijk[1])
            for c in (low_ijk[2], high_ijk[2])
        ]
    )
    corners_frame = (
        image_grid.index_to_physical(corners_ijk) @ rotation
    )  # coordinates along new axes
    frame_low, frame_high = corners_frame.min(axis=0), corners_frame.max(axis=0)
    centre_frame = (frame_low + frame_high) / 2

    if size is None:
        extent = frame_high - frame_low + 2 * margin_mm
        new_size = [
            multiple * max(1, math.ceil(e / s / multiple - 1e-9))
            for e, s in zip(extent, new_spacing, strict=True)
        ]
    else:
        new_size = [int(n) for n in size]
        if len(new_size) != 3 or any(n < 1 or n % multiple for n in new_size):
            raise GeometryError(f"size must be three positive multiples of {multiple}, got {size}")

    origin_frame = centre_frame - (np.asarray(new_size) - 1) / 2 * new_spacing
    return Grid(
        size=tuple(new_size),
        spacing=tuple(new_spacing),
        origin=tuple(rotation @ origin_frame),
        direction=tuple(rotation.ravel()),
    )
