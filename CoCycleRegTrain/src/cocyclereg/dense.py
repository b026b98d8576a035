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
  out). When ``before`` is absent and the target's axes run along the field grid's (the fixed
  image and a model grid built in its space), trilinear interpolation is separable: three small
  interpolation matrices instead of one lookup per voxel.
* :func:`resample_through`: images (on their own grid) sampled at ``p + d(p)`` for a
  displacement ``d`` on the target grid, as ITK's ``ResampleImageFilter`` with a linear or
  nearest-neighbour interpolator does: points whose continuous index lies within half a voxel
  of the image's first and last centres are interpolated (clamped at the border), the others get
  the default value; nearest rounds halves up, like ITK, and never invents a label value.

Arrays: a physical field is ``(D, H, W, 3)`` in LPS mm (last axis x, y, z), the layout of
``SimpleITK.GetArrayFromImage`` on a vector image; a linear map is ``(matrix, offset)`` with
``p -> matrix @ p + offset`` in LPS mm. All arithmetic on positions is float64.
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


def _index_map(
    source: Grid, target: Grid, before: LinearMap | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(K, k0)`` with ``target``'s continuous index ``K @ ijk + k0`` for the point
    ``before(p)``, ``p`` the centre of ``source``'s voxel ``ijk`` (ITK order i, j, k)."""
    matrix, offset = source.index_to_physical_matrix, np.asarray(source.origin, dtype=np.float64)
    if before is not None:
        matrix, offset = before[0] @ matrix, before[0] @ offset + before[1]
    to_index = np.linalg.inv(target.index_to_physical_matrix)
    return to_index @ matrix, to_index @ (offset - np.asarray(target.origin, dtype=np.float64))


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


def _separable_sample(
    field: torch.Tensor, scale: np.ndarray, shift: np.ndarray, size, linear: np.ndarray, constant
) -> torch.Tensor:
    """``field`` (3, d, h, w) sampled at the continuous indices ``scale * ijk + shift`` (per axis,
    ITK order) of every voxel ``ijk`` of a grid of ``size`` (i, j, k), plus ``linear @ ijk +
    constant``: (D, H, W, 3). The last contraction (along k) also adds the affine part: two
    extra columns of the k-interpolation matrix (ones, and k) meet two extra planes (the (i, j)
    part with the constant, and the k coefficients), so it is one matrix product."""
    w_i, w_j, w_k = (
        _interpolation_matrix(scale[a] * np.arange(size[a]) + shift[a], field.shape[3 - a])
        for a in range(3)
    )
    along_i = torch.einsum("cdhw,Ww->dhWc", field, w_i)
    along_j = torch.einsum("dhWc,Hh->dHWc", along_i, w_j)
    linear, constant = torch.from_numpy(linear), torch.from_numpy(np.asarray(constant))
    i = torch.arange(size[0], dtype=torch.float64)[None, :, None]
    j = torch.arange(size[1], dtype=torch.float64)[:, None, None]
    in_plane = i * linear[:, 0] + j * linear[:, 1] + constant  # (H, W, 3)
    along_k = linear[:, 2].expand_as(in_plane)
    planes = torch.cat([along_j, in_plane[None], along_k[None]]).reshape(along_j.shape[0] + 2, -1)
    k = torch.arange(size[2], dtype=torch.float64)[:, None]
    columns = torch.cat([w_k, torch.ones_like(k), k], dim=1)
    return (columns @ planes).reshape(size[2], size[1], size[0], 3)


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


def _evaluate(
    target: Grid,
    field_mm: np.ndarray,
    field_grid: Grid,
    before: LinearMap | None,
    after: LinearMap | None,
    output: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> torch.Tensor:
    """``Q T(p) + q + S p`` (``output = (Q, q, S)``) at the voxel centres of ``target``, for
    ``T(p) = after(r + u(r))``, ``r = before(p)``: (D, H, W, 3) float64.

    Everything but ``u(r)`` is affine in the voxel index, so this is ``(Q after) u(r)`` plus
    ``L @ ijk + c``; ``u(r)`` is separable when ``r`` runs along the field grid's axes."""
    eye = (np.eye(3), np.zeros(3))
    before_matrix, before_offset = before if before is not None else eye
    after_matrix, after_offset = after if after is not None else eye
    to_output, output_offset, point_part = output
    r_matrix = before_matrix @ target.index_to_physical_matrix
    r_offset = before_matrix @ np.asarray(target.origin, float) + before_offset
    on_field = to_output @ after_matrix
    linear = on_field @ r_matrix + point_part @ target.index_to_physical_matrix
    constant = (
        on_field @ r_offset
        + to_output @ after_offset
        + output_offset
        + point_part @ np.asarray(target.origin, float)
    )
    field = np.moveaxis(np.asarray(field_mm, dtype=np.float64) @ on_field.T, -1, 0)
    field = torch.from_numpy(np.ascontiguousarray(field))
    to_field, field_offset = _index_map(target, field_grid, before)
    off_diagonal = to_field - np.diag(np.diag(to_field))
    size = target.size
    if np.abs(off_diagonal).max() * max(size) < _AXIS_ALIGNED_TOLERANCE:
        return _separable_sample(field, np.diag(to_field), field_offset, size, linear, constant)
    result = torch.empty((*target.shape, 3), dtype=torch.float64)
    flat = result.view(-1, 3)
    to_field, field_offset, linear, constant = map(
        torch.from_numpy, (to_field, field_offset, linear, constant)
    )
    for first, last in _slabs(target):
        ijk = _slab_indices(target, first, last)
        index = ijk @ to_field.T + field_offset
        values = F.grid_sample(
            field[None],
            _grid_sample_coordinates(index, field_grid.size).view(1, 1, 1, -1, 3),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )[0, :, 0, 0].T
        values[~_inside(index, field_grid.size)] = 0.0
        flat[first * size[0] * size[1] : last * size[0] * size[1]] = (
            values + ijk @ linear.T + constant
        )
    return result


def composed_displacement(
    target: Grid,
    field_mm: np.ndarray,
    field_grid: Grid,
    *,
    before: LinearMap | None = None,
    after: LinearMap | None = None,
) -> np.ndarray:
    """``T(p) - p`` in LPS mm, ``(D, H, W, 3)`` float64, at the voxel centres ``p`` of
    ``target``, for ``T(p) = after(r + u(r))``, ``r = before(p)`` (absent maps: identity).

    ``field_mm``: ``u``, ``(d, h, w, 3)`` LPS mm on ``field_grid``, interpolated as ITK's
    ``DisplacementFieldTransform`` (see the module docstring). Equals
    ``TransformToDisplacementFieldFilter`` on ``CompositeTransform([after, u, before])``.
    """
    output = (np.eye(3), np.zeros(3), -np.eye(3))
    return _evaluate(target, field_mm, field_grid, before, after, output).numpy()


def sampling_indices(
    target: Grid,
    field_mm: np.ndarray,
    field_grid: Grid,
    source: Grid,
    *,
    before: LinearMap | None = None,
    after: LinearMap | None = None,
) -> np.ndarray:
    """The continuous index (i, j, k) of ``source`` at ``T(p)`` for every voxel centre ``p`` of
    ``target`` (``T`` as in :func:`composed_displacement`): ``(D, H, W, 3)`` float64, what
    :func:`resample_at` needs to resample images on ``source``'s grid onto ``target``."""
    to_index = np.linalg.inv(source.index_to_physical_matrix)
    output = (to_index, -to_index @ np.asarray(source.origin, float), np.zeros((3, 3)))
    return _evaluate(target, field_mm, field_grid, before, after, output).numpy()


def resample_at(
    images: Sequence[tuple[sitk.Image, Interpolation]],
    indices: np.ndarray,
    target: Grid,
    default_values: Sequence[float | None] | None = None,
) -> list[sitk.Image]:
    """Images on one grid sampled at continuous ``indices`` ``(D, H, W, 3)`` (i, j, k of that
    grid, one per voxel of ``target``, from :func:`sampling_indices`), as ITK's
    ``ResampleImageFilter`` does (module docstring): ``(image, "linear")`` gives float32,
    ``(image, "label"/"nearest")`` keeps the pixel type. ``default_values``: value outside the
    image (``None``: its minimum for linear, 0 for labels, as
    :func:`cocyclereg.resample.resample_to_grid`)."""
    if not images:
        return []
    source = Grid.from_image(images[0][0])
    for image, _ in images:
        if not Grid.from_image(image).is_close(source, 1e-6):
            raise ValueError("resample_at needs images on one grid")
    defaults = list(default_values) if default_values is not None else [None] * len(images)
    flat_indices = torch.from_numpy(indices.reshape(-1, 3))
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
    voxels_per_slice = target.size[0] * target.size[1]
    limits = torch.tensor(source.size) - 1
    strides = torch.tensor([1, source.size[0], source.size[0] * source.size[1]])
    for first, last in _slabs(target):
        rows = slice(first * voxels_per_slice, last * voxels_per_slice)
        index = flat_indices[rows]
        inside = _inside(index, source.size).numpy()
        coordinates = nearest = None
        for position, (_, interpolation) in enumerate(images):
            if interpolation == "linear":
                if coordinates is None:
                    coordinates = _grid_sample_coordinates(index, source.size).float()
                parts = torch.get_num_threads() if len(index) % torch.get_num_threads() == 0 else 1
                sampled = (
                    F.grid_sample(  # grid_sample runs one thread per batch entry
                        inputs[position].expand(parts, -1, -1, -1, -1),
                        coordinates.view(parts, 1, 1, -1, 3),
                        mode="bilinear",
                        padding_mode="border",
                        align_corners=True,
                    )
                    .reshape(-1)
                    .numpy()
                )
            else:
                if nearest is None:
                    rounded = torch.minimum(torch.floor(index + 0.5).long().clamp_(min=0), limits)
                    nearest = (rounded @ strides).numpy()
                sampled = inputs[position][nearest]
            out = outputs[position].reshape(-1)[rows]
            out[:] = np.where(inside, sampled, np.asarray(defaults[position], out.dtype))
    return [target.apply_to(sitk.GetImageFromArray(array)) for array in outputs]
