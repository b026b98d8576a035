"""A model-grid field evaluated on a full-resolution grid, and images resampled through it.

The registration's fields live on the coarse model grid; users need them on the fixed (or
moving) image's own grid, composed with the pre-alignment, and the moving image and labelmaps
resampled through them. ITK does this point by point (``TransformToDisplacementFieldFilter``
on a ``CompositeTransform``, ``ResampleImageFilter``); this module gives the same numbers with
array operations:

* :func:`composed_displacement`: ``T(p) - p`` at every voxel centre ``p`` of a target grid, for
  ``T(p) = after(r + u(r))`` with ``r = before(p)``; ``u`` is a displacement field in LPS mm on
  its own grid, interpolated as ITK's ``DisplacementFieldTransform`` does (trilinear, clamped
  at the border within half a voxel outside the field's first and last centres, zero further
  out). When the positions ``r`` run along the field grid's axes (the fixed image and a model
  grid built in its space), trilinear interpolation is separable: three small interpolation
  matrices instead of one lookup per voxel.
* :func:`resample_through`: images (on their own grid) sampled at ``T(p)``, as ITK's
  ``ResampleImageFilter`` with a linear or nearest-neighbour interpolator does: points whose
  continuous index lies within half a voxel of the image's first and last centres are
  interpolated (clamped at the border), the others get the default value; nearest rounds halves
  up, like ITK, and never invents a label value.

Both agree with ITK to rounding (1e-12 mm), except where a position falls exactly on the
half-voxel boundary of the field or image: there inside/outside is decided by rounding, in ITK
as here.

Arrays: a physical field is ``(D, H, W, 3)`` in LPS mm (last axis x, y, z), the layout of
``SimpleITK.GetArrayFromImage`` on a vector image; a linear map is ``(matrix, offset)`` with
``p -> matrix @ p + offset`` in LPS mm. Sampling positions are float64; a displacement field
can be returned in float32 (what transform files hold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from cocyclereg.grid import Grid
from cocyclereg.resample import Interpolation

LinearMap = tuple[np.ndarray, np.ndarray]

SLAB_VOXELS = 1 << 20
"""Voxels handled at once by the per-voxel paths: bounds their temporary memory (~100 MB)."""

_AXIS_ALIGNED_TOLERANCE = 1e-6


def _interpolation_matrix(positions: np.ndarray, size: int) -> torch.Tensor:
    """``(len(positions), size)`` float64 weights of 1D linear interpolation at continuous
    indices ``positions`` with ITK's border rule (rows of zeros outside [-0.5, size - 0.5))."""
    weights = np.zeros((len(positions), size))
    inside = (positions >= -0.5) & (positions < size - 0.5)
    clamped = np.clip(positions, 0.0, size - 1.0)
    low = np.minimum(np.floor(clamped).astype(np.int64), max(size - 2, 0))
    fraction = clamped - low
    rows = np.nonzero(inside)[0]
    if size == 1:
        weights[rows, 0] = 1.0
    else:
        weights[rows, low[rows]] = 1.0 - fraction[rows]
        weights[rows, low[rows] + 1] += fraction[rows]
    return torch.from_numpy(weights)


def _grid_sample_coordinates(index_ijk: torch.Tensor, size_ijk) -> torch.Tensor:
    """Continuous indices (n, 3) -> grid_sample's normalised (x, y, z) for align_corners=True."""
    extent = torch.tensor([max(s - 1, 1) for s in size_ijk], dtype=index_ijk.dtype)
    return index_ijk * (2.0 / extent) - 1.0


def _inside(index_ijk: torch.Tensor, size_ijk) -> torch.Tensor:
    upper = torch.tensor(size_ijk, dtype=index_ijk.dtype) - 0.5
    return ((index_ijk >= -0.5) & (index_ijk < upper)).all(dim=-1)


def _slab_indices(grid: Grid, first: int, last: int) -> torch.Tensor:
    """ITK indices (n, 3) float64 of the voxels of ``grid`` in slices ``first:last`` (k)."""
    size_i, size_j, _ = grid.size
    k, j, i = torch.meshgrid(
        torch.arange(first, last, dtype=torch.float64),
        torch.arange(size_j, dtype=torch.float64),
        torch.arange(size_i, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([i, j, k], dim=-1).reshape(-1, 3)


def _slabs(grid: Grid):
    size_i, size_j, size_k = grid.size
    step = max(1, SLAB_VOXELS // (size_i * size_j))
    for first in range(0, size_k, step):
        yield first, min(first + step, size_k)


class _AffinePlusField:
    """``Q T(p) + q + S p`` (``output = (Q, q, S)``) at the voxel centres ``p`` of ``target``,
    for ``T(p) = after(r + u(r))``, ``r = before(p)``, slab by slab (slices along k).

    Everything but ``u(r)`` is affine in the voxel index ``ijk``: the value is ``(Q after) u(r)
    + L @ ijk + c``. When ``r`` runs along the field grid's axes (the target's axes parallel to
    the field grid's, ``before`` absent or axis-aligned), trilinear interpolation is
    separable: the field is
    interpolated along i and j, then one matrix product with the k-interpolation rows gives
    every value, two extra columns (ones, and k) adding the affine part. Otherwise each slab
    samples the field with ``grid_sample`` and adds the affine part.
    """

    def __init__(
        self, target, field_mm, field_grid, before, after, output, dtype=torch.float64
    ) -> None:
        self.dtype = dtype
        eye = (np.eye(3), np.zeros(3))
        before_matrix, before_offset = before if before is not None else eye
        after_matrix, after_offset = after if after is not None else eye
        to_output, output_offset, point_part = output
        origin = np.asarray(target.origin, float)
        r_matrix = before_matrix @ target.index_to_physical_matrix
        r_offset = before_matrix @ origin + before_offset
        on_field = to_output @ after_matrix
        linear = on_field @ r_matrix + point_part @ target.index_to_physical_matrix
        constant = on_field @ r_offset + to_output @ after_offset + output_offset
        constant = constant + point_part @ origin
        field = np.moveaxis(np.asarray(field_mm, dtype=np.float64) @ on_field.T, -1, 0)
        self.field = torch.from_numpy(np.ascontiguousarray(field))  # (3, d, h, w)
        self.target, self.field_size = target, field_grid.size
        # r's continuous index on the field grid, K @ ijk + k0:
        to_field_index = np.linalg.inv(field_grid.index_to_physical_matrix)
        self.to_field = to_field_index @ r_matrix
        self.field_offset = to_field_index @ (r_offset - np.asarray(field_grid.origin, float))
        self.linear, self.constant = torch.from_numpy(linear), torch.from_numpy(constant)
        off_diagonal = self.to_field - np.diag(np.diag(self.to_field))
        self.separable = np.abs(off_diagonal).max() * max(target.size) < _AXIS_ALIGNED_TOLERANCE
        if self.separable:
            self._prepare_planes()

    def _prepare_planes(self) -> None:
        """All values at once (one matrix product: reading the planes once per slab would cost
        more than the full result's memory)."""
        size, scale, shift = self.target.size, np.diag(self.to_field), self.field_offset
        w_i, w_j, w_k = (
            _interpolation_matrix(scale[a] * np.arange(size[a]) + shift[a], self.field_size[a])
            for a in range(3)
        )
        along_i = torch.einsum("cdhw,Ww->dhWc", self.field, w_i)
        along_j = torch.einsum("dhWc,Hh->dHWc", along_i, w_j)
        i = torch.arange(size[0], dtype=torch.float64)[None, :, None]
        j = torch.arange(size[1], dtype=torch.float64)[:, None, None]
        in_plane = i * self.linear[:, 0] + j * self.linear[:, 1] + self.constant  # (H, W, 3)
        along_k = self.linear[:, 2].expand_as(in_plane)
        planes = torch.cat([along_j, in_plane[None], along_k[None]]).reshape(
            along_j.shape[0] + 2, -1
        )
        k = torch.arange(size[2], dtype=torch.float64)[:, None]
        columns = torch.cat([w_k, torch.ones_like(k), k], dim=1)
        self.values = (columns.to(self.dtype) @ planes.to(self.dtype)).view(-1, 3)

    def slab(self, first: int, last: int) -> torch.Tensor:
        """Values for slices ``first:last`` (k) of the target: (voxels, 3), i fastest; float64,
        or ``dtype`` on the separable path."""
        if self.separable:
            per_slice = self.target.size[0] * self.target.size[1]
            return self.values[first * per_slice : last * per_slice]
        ijk = _slab_indices(self.target, first, last)
        index = ijk @ torch.from_numpy(self.to_field).T + torch.from_numpy(self.field_offset)
        values = F.grid_sample(
            self.field[None],
            _grid_sample_coordinates(index, self.field_size).view(1, 1, 1, -1, 3),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )[0, :, 0, 0].T
        values[~_inside(index, self.field_size)] = 0.0
        return values + ijk @ self.linear.T + self.constant


def composed_displacement(
    target: Grid,
    field_mm: np.ndarray,
    field_grid: Grid,
    *,
    before: LinearMap | None = None,
    after: LinearMap | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """``T(p) - p`` in LPS mm, ``(D, H, W, 3)`` of ``dtype``, at the voxel centres ``p`` of
    ``target``, for ``T(p) = after(r + u(r))``, ``r = before(p)`` (absent maps: identity).
    ``np.float32`` halves the memory and time of the full-resolution result (the separable
    case's last product runs in float32; rounding ~1e-5 mm).

    ``field_mm``: ``u``, ``(d, h, w, 3)`` LPS mm on ``field_grid``, interpolated as ITK's
    ``DisplacementFieldTransform`` (see the module docstring). Equals
    ``TransformToDisplacementFieldFilter`` on ``CompositeTransform([after, u, before])``.
    """
    output = (np.eye(3), np.zeros(3), -np.eye(3))
    torch_dtype = torch.from_numpy(np.zeros(0, dtype)).dtype
    values = _AffinePlusField(target, field_mm, field_grid, before, after, output, torch_dtype)
    if values.separable:
        return values.values.numpy().reshape(*target.shape, 3)
    result = np.empty((*target.shape, 3), dtype)
    flat = result.reshape(-1, 3)
    per_slice = target.size[0] * target.size[1]
    for first, last in _slabs(target):
        flat[first * per_slice : last * per_slice] = values.slab(first, last).numpy()
    return result


def resample_through(
    images: Sequence[tuple[sitk.Image, Interpolation]],
    target: Grid,
    field_mm: np.ndarray,
    field_grid: Grid,
    *,
    before: LinearMap | None = None,
    after: LinearMap | None = None,
    default_values: Sequence[float | None] | None = None,
) -> list[sitk.Image]:
    """Images on one grid resampled onto ``target`` through ``T`` (as in
    :func:`composed_displacement`): each voxel centre ``p`` takes the image's value at ``T(p)``,
    as ITK's ``ResampleImageFilter`` does (module docstring). ``(image, "linear")`` gives
    float32, ``(image, "label"/"nearest")`` keeps the pixel type. ``default_values``: value
    outside the image (``None``: its minimum for linear, 0 for labels, as
    :func:`cocyclereg.resample.resample_to_grid`). The sampling positions are computed once,
    slab by slab, for all the images."""
    if not images:
        return []
    source = Grid.from_image(images[0][0])
    for image, _ in images:
        if not Grid.from_image(image).is_close(source, 1e-6):
            raise ValueError("resample_through needs images on one grid")
    to_index = np.linalg.inv(source.index_to_physical_matrix)
    output = (to_index, -to_index @ np.asarray(source.origin, float), np.zeros((3, 3)))
    positions = _AffinePlusField(target, field_mm, field_grid, before, after, output)
    defaults = list(default_values) if default_values is not None else [None] * len(images)
    inputs, outputs = [], []
    for position, (image, interpolation) in enumerate(images):
        array = sitk.GetArrayViewFromImage(image)
        if interpolation == "linear":
            inputs.append(torch.from_numpy(np.array(array, dtype=np.float32))[None, None])
            outputs.append(np.empty(target.shape, np.float32))
        else:
            inputs.append(array.reshape(-1))
            outputs.append(np.empty(target.shape, array.dtype))
        if defaults[position] is None:
            defaults[position] = float(array.min()) if interpolation == "linear" else 0.0
    per_slice = target.size[0] * target.size[1]
    limits = torch.tensor(source.size) - 1
    strides = torch.tensor([1, source.size[0], source.size[0] * source.size[1]])
    for first, last in _slabs(target):
        rows = slice(first * per_slice, last * per_slice)
        index = positions.slab(first, last)
        inside = _inside(index, source.size).numpy()
        coordinates = nearest = None
        for position, (_, interpolation) in enumerate(images):
            if interpolation == "linear":
                if coordinates is None:
                    coordinates = _grid_sample_coordinates(index, source.size).float()
                threads = torch.get_num_threads()
                parts = threads if len(index) % threads == 0 else 1
                sampled = F.grid_sample(  # grid_sample runs one thread per batch entry
                    inputs[position].expand(parts, -1, -1, -1, -1),
                    coordinates.view(parts, 1, 1, -1, 3),
                    mode="bilinear",
                    padding_mode="border",
                    align_corners=True,
                ).reshape(-1)
                sampled = sampled.numpy()
            else:
                if nearest is None:
                    rounded = torch.minimum(torch.floor(index + 0.5).long().clamp_(min=0), limits)
                    nearest = (rounded @ strides).numpy()
                sampled = inputs[position][nearest]
            out = outputs[position].reshape(-1)[rows]
            out[:] = np.where(inside, sampled, np.asarray(defaults[position], out.dtype))
    return [target.apply_to(sitk.GetImageFromArray(array)) for array in outputs]
