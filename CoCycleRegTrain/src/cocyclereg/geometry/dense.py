"""A model-grid field evaluated on a full-resolution grid, and images resampled through it.

The registration's fields live on the coarse model grid; users need them on the fixed (or
moving) image's own grid, composed with the pre-alignment, and the moving image and labelmaps
resampled through them. ITK does this point by point (``TransformToDisplacementFieldFilter``
on a ``CompositeTransform``, ``ResampleImageFilter``); this module gives the same numbers with
compiled loops (:mod:`cocyclereg.geometry.kernels`) that visit each target voxel once:

* :func:`composed_displacement`: ``T(p) - p`` at every voxel centre ``p`` of a target grid, for
  ``T(p) = after(r + u(r))`` with ``r = before(p)``; ``u`` is a displacement field in LPS mm on
  its own grid, interpolated as ITK's ``DisplacementFieldTransform`` does (trilinear, clamped
  at the border within half a voxel outside the field's first and last centres, zero further
  out).
* :func:`covering_field`: such a field extended by its edge values to cover a target grid,
  so that it does not drop to zero at its grid's edge inside the target.
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
``p -> matrix @ p + offset`` in LPS mm. Positions are computed in float64; a displacement field
can be returned in float32 (what transform files hold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from cocyclereg.geometry import kernels
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.resample import Interpolation

LinearMap = tuple[np.ndarray, np.ndarray]


def _affine_plus_field(target, field_mm, field_grid, before, after, output) -> tuple:
    """The arguments of :func:`cocyclereg.geometry.kernels.affine_plus_field` for the value
    ``Q T(p) + q + S p`` (``output = (Q, q, S)``) at the voxel centres ``p`` of ``target``, with
    ``T(p) = after(r + u(r))``, ``r = before(p)``.

    Everything but ``u(r)`` is affine in the voxel index ``ijk``: the value is
    ``(Q after) u(r) + L @ ijk + c``, and ``r``'s continuous index on the field grid is
    ``K @ ijk + k0``. Returns ``(field, K, k0, L, c)``, ``field`` being ``Q after u`` as
    ``(3, d, h, w)`` float64."""
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
    to_field_index = np.linalg.inv(field_grid.index_to_physical_matrix)
    to_field = to_field_index @ r_matrix
    field_offset = to_field_index @ (r_offset - np.asarray(field_grid.origin, float))
    return np.ascontiguousarray(field), to_field, field_offset, linear, constant


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
    ``np.float32`` halves the memory of the full-resolution result (rounding ~1e-5 mm).

    ``field_mm``: ``u``, ``(d, h, w, 3)`` LPS mm on ``field_grid``, interpolated as ITK's
    ``DisplacementFieldTransform`` (see the module docstring). Equals
    ``TransformToDisplacementFieldFilter`` on ``CompositeTransform([after, u, before])``.
    """
    output = (np.eye(3), np.zeros(3), -np.eye(3))
    result = np.empty((*target.shape, 3), dtype)
    kernels.affine_plus_field(
        *_affine_plus_field(target, field_mm, field_grid, before, after, output), result
    )
    return result


def covering_field(
    field_mm: np.ndarray,
    field_grid: Grid,
    target: Grid,
    *,
    before: LinearMap | None = None,
) -> tuple[np.ndarray, Grid]:
    """``field_mm`` (``(d, h, w, 3)`` LPS mm on ``field_grid``) extended by its edge values
    until its grid covers every voxel centre ``p`` of ``target`` (at ``r = before(p)``):
    ``(field, grid)``, the input itself where it already covers them.

    A registration's field lives on a model grid around the fixed image's foreground. Taken as
    it is, ITK's interpolation (:func:`composed_displacement`) drops it to zero half a voxel
    beyond that grid, a step in the written transform that its Jacobian counts as folding.
    Held constant outward along each grid axis instead (as 3D Slicer evaluates a grid
    transform beyond its grid), the field is continuous; inside the original grid nothing
    changes (the original voxels keep their positions and values).
    """
    eye = (np.eye(3), np.zeros(3))
    before_matrix, before_offset = before if before is not None else eye
    points = target.index_to_physical(target.corner_indices) @ before_matrix.T + before_offset
    index = field_grid.physical_to_index(points)
    size = np.asarray(field_grid.size)
    below = np.maximum(0, np.ceil(-index.min(axis=0))).astype(int)
    above = np.maximum(0, np.ceil(index.max(axis=0) - (size - 1))).astype(int)
    if not below.any() and not above.any():
        return field_mm, field_grid
    below, above = below + 1, above + 1  # one voxel more: never on the half-voxel boundary
    padding = [(int(below[a]), int(above[a])) for a in (2, 1, 0)] + [(0, 0)]
    extended = np.pad(np.asarray(field_mm), padding, mode="edge")
    grid = Grid(
        tuple(int(n) for n in size + below + above),
        field_grid.spacing,
        tuple(field_grid.index_to_physical(-below.astype(float))),
        field_grid.direction,
    )
    return extended, grid


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
    :func:`cocyclereg.geometry.resample.resample_to_grid`). The nearest source voxels are found once
    for all the labelmaps."""
    if not images:
        return []
    source = Grid.from_image(images[0][0])
    for image, _ in images:
        if not Grid.from_image(image).is_close(source, 1e-6):
            raise ValueError("resample_through needs images on one grid")
    to_index = np.linalg.inv(source.index_to_physical_matrix)
    output = (to_index, -to_index @ np.asarray(source.origin, float), np.zeros((3, 3)))
    positions = _affine_plus_field(target, field_mm, field_grid, before, after, output)
    source_size = np.asarray(source.size, np.int64)
    defaults = list(default_values) if default_values is not None else [None] * len(images)
    labelled = any(interpolation != "linear" for _, interpolation in images)
    # flat index of each target voxel's nearest source voxel, -1 outside
    index_type = np.int32 if np.prod(source.size) < 2**31 else np.int64
    no_values, no_index = np.empty((0, 0, 0), np.float32), np.empty((0, 0, 0), index_type)
    nearest = None
    results = []
    for position, (image, interpolation) in enumerate(images):
        array = sitk.GetArrayViewFromImage(image)
        if interpolation == "linear":
            default = float(array.min()) if defaults[position] is None else defaults[position]
            warped = np.empty(target.shape, np.float32)
            find_nearest = labelled and nearest is None  # in the same pass
            if find_nearest:
                nearest = np.empty(target.shape, index_type)
            intensities = np.array(array, np.float32)  # a writeable copy: one compiled variant
            kernels.sample_through(
                *positions, source_size, intensities, default, warped,
                nearest if find_nearest else no_index,
            )  # fmt: skip
            results.append(warped)
        else:
            if nearest is None:
                nearest = np.empty(target.shape, index_type)
                kernels.sample_through(
                    *positions, source_size, no_values, 0.0, no_values, nearest
                )  # fmt: skip
            default = 0 if defaults[position] is None else defaults[position]
            values = np.append(array.reshape(-1), np.asarray(default, array.dtype))
            results.append(values[nearest])  # -1 (outside) takes the default, the last value
    return [target.apply_to(sitk.GetImageFromArray(array)) for array in results]
