"""Compiled per-voxel loops (numba) for the full-resolution outputs of a registration.

Each kernel makes one pass over a target grid, parallel over its slices (k), reading a small
coarse field and writing its result once: no full-size temporaries. They are the engines of
:mod:`cocyclereg.geometry.dense` and :mod:`cocyclereg.geometry.jacobian`, which hold the geometry
(which maps, which grids) and the tests against ITK.

Conventions shared by the kernels:

* Target voxels are visited by ITK index ``(i, j, k)``; arrays are ``(D, H, W[, 3])`` =
  ``(k, j, i[, component])``.
* An *affine-plus-field* value at target index ``ijk`` is
  ``field(K @ ijk + k0) + L @ ijk + c``: ``field`` is ``(3, d, h, w)`` float64, sampled at a
  continuous index ``(i, j, k)`` of its grid with ITK's rule for displacement fields and
  images: inside when every index lies in ``[-0.5, n - 0.5)``, trilinear with the index
  clamped to ``[0, n - 1]`` there, and zero (for fields) outside.
* Arithmetic is float64 whatever the output dtype.
* The parallel kernels use as many threads as PyTorch does in the calling thread
  (``torch.get_num_threads()``) and leave PyTorch's count as it was: numba's OpenMP layer shares
  PyTorch's OpenMP runtime, and left alone it sets both to every core (measured: a training
  process limited to one thread beside another ran its steps 4x slower after one validation).

Compiled code is cached beside this file (``cache=True``): the first use after installation
compiles (about ten seconds); later processes load it (about half a second, mostly numba
loading its own implementations). :func:`load_in_background` starts that once per process in
a background thread, so a program can do it while it starts up and reads its inputs.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor

import numba
import numpy as np
import torch

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


def _with_torch_threads(kernel):
    """``kernel`` (a parallel dispatcher) run on ``torch.get_num_threads()`` threads, with
    PyTorch's thread count restored afterwards (see the module docstring)."""

    @functools.wraps(kernel.py_func)
    def run(*arguments):
        threads = torch.get_num_threads()
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            return kernel(*arguments)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    return run


@numba.njit(inline="always", **_JIT)
def _axis(index, size):
    """ITK's 1D rule at continuous ``index`` on ``size`` samples: (inside, low, high, fraction)
    with the value ``(1 - fraction) * f[low] + fraction * f[high]``."""
    inside = index >= -0.5 and index < size - 0.5
    if size == 1:
        return inside, 0, 0, 0.0
    clamped = min(max(index, 0.0), size - 1.0)
    low = min(int(np.floor(clamped)), size - 2)
    return inside, low, low + 1, clamped - low


@numba.njit(inline="always", **_JIT)
def _trilinear(a, k0, k1, fk, j0, j1, fj, i0, i1, fi):
    """Trilinear value of the ``(d, h, w)`` array ``a`` from per-axis corners and fractions."""
    near = (1.0 - fj) * ((1.0 - fi) * a[k0, j0, i0] + fi * a[k0, j0, i1]) + fj * (
        (1.0 - fi) * a[k0, j1, i0] + fi * a[k0, j1, i1]
    )
    far = (1.0 - fj) * ((1.0 - fi) * a[k1, j0, i0] + fi * a[k1, j0, i1]) + fj * (
        (1.0 - fi) * a[k1, j1, i0] + fi * a[k1, j1, i1]
    )
    return (1.0 - fk) * near + fk * far


@numba.njit(inline="always", **_JIT)
def _affine_plus_field(field, to_field, field_offset, linear, constant, i, j, k, out):
    """Writes the three components of the affine-plus-field value at target ``(i, j, k)``
    into ``out`` (length 3)."""
    _, depth, height, width = field.shape
    ci = to_field[0, 0] * i + to_field[0, 1] * j + to_field[0, 2] * k + field_offset[0]
    cj = to_field[1, 0] * i + to_field[1, 1] * j + to_field[1, 2] * k + field_offset[1]
    ck = to_field[2, 0] * i + to_field[2, 1] * j + to_field[2, 2] * k + field_offset[2]
    inside_i, i0, i1, fi = _axis(ci, width)
    inside_j, j0, j1, fj = _axis(cj, height)
    inside_k, k0, k1, fk = _axis(ck, depth)
    inside = inside_i and inside_j and inside_k
    for a in range(3):
        value = linear[a, 0] * i + linear[a, 1] * j + linear[a, 2] * k + constant[a]
        if inside:
            value += _trilinear(field[a], k0, k1, fk, j0, j1, fj, i0, i1, fi)
        out[a] = value


@numba.njit(inline="always", **_JIT)
def _along_rows(to_field):
    """True when the field index's j and k do not change along a target row (i): the target's
    rows run along the field grid's i axis, so each row needs the field interpolated in j and
    k only once (:func:`_field_row`)."""
    return to_field[1, 0] == 0.0 and to_field[2, 0] == 0.0


@numba.njit(inline="always", **_JIT)
def _field_row(field, to_field, field_offset, j, k, row):
    """The field interpolated in k and j for the target row ``(j, k)``, at every field column:
    ``row`` ``(3, w)``, written. Returns whether the row lies inside the field in j and k."""
    _, depth, height, width = field.shape
    cj = to_field[1, 1] * j + to_field[1, 2] * k + field_offset[1]
    ck = to_field[2, 1] * j + to_field[2, 2] * k + field_offset[2]
    inside_j, j0, j1, fj = _axis(cj, height)
    inside_k, k0, k1, fk = _axis(ck, depth)
    if inside_j and inside_k:
        for a in range(3):
            for x in range(width):
                near = (1.0 - fj) * field[a, k0, j0, x] + fj * field[a, k0, j1, x]
                far = (1.0 - fj) * field[a, k1, j0, x] + fj * field[a, k1, j1, x]
                row[a, x] = (1.0 - fk) * near + fk * far
    return inside_j and inside_k


@numba.njit(inline="always", **_JIT)
def _row_value(row, inside_row, to_field, field_offset, linear, constant, i, j, k, out):
    """As :func:`_affine_plus_field`, from the row's interpolated field (:func:`_field_row`)."""
    ci = to_field[0, 0] * i + to_field[0, 1] * j + to_field[0, 2] * k + field_offset[0]
    inside_i, i0, i1, fi = _axis(ci, row.shape[1])
    for a in range(3):
        value = linear[a, 0] * i + linear[a, 1] * j + linear[a, 2] * k + constant[a]
        if inside_row and inside_i:
            value += (1.0 - fi) * row[a, i0] + fi * row[a, i1]
        out[a] = value


@numba.njit(inline="always", **_JIT)
def _value(field, rows, row, inside_row, to_field, field_offset, linear, constant, i, j, k, out):
    """The affine-plus-field value at ``(i, j, k)`` into ``out``: from the row's interpolated
    field when ``rows`` (:func:`_along_rows`), else from the field itself."""
    if rows:
        _row_value(row, inside_row, to_field, field_offset, linear, constant, i, j, k, out)
    else:
        _affine_plus_field(field, to_field, field_offset, linear, constant, i, j, k, out)


@_with_torch_threads
@numba.njit(parallel=True, **_JIT)
def affine_plus_field(field, to_field, field_offset, linear, constant, out):
    """``out[k, j, i, :]`` = the affine-plus-field value at every target voxel.

    Args:
        field: ``(3, d, h, w)`` float64, already in the output's coordinates.
        to_field, field_offset: ``(3, 3)``, ``(3,)``: target index -> field index.
        linear, constant: ``(3, 3)``, ``(3,)``: the affine part, per target index.
        out: ``(D, H, W, 3)`` float32 or float64, written.
    """
    depth, height, width, _ = out.shape
    rows = _along_rows(to_field)
    for k in numba.prange(depth):
        value, row = np.empty(3), np.empty((3, field.shape[3]))
        for j in range(height):
            inside_row = _field_row(field, to_field, field_offset, j, k, row) if rows else False
            for i in range(width):
                _value(
                    field, rows, row, inside_row, to_field, field_offset, linear, constant,
                    i, j, k, value,
                )  # fmt: skip
                out[k, j, i, 0] = value[0]
                out[k, j, i, 1] = value[1]
                out[k, j, i, 2] = value[2]


@_with_torch_threads
@numba.njit(parallel=True, **_JIT)
def sample_through(
    field, to_field, field_offset, linear, constant, source_size, image, default, warped, nearest
):
    """Samples a source grid at positions given by an affine-plus-field (the source's
    continuous index ``(i, j, k)`` at every target voxel), with ITK's inside rule.

    Args:
        field, to_field, field_offset, linear, constant: the positions, as in
            :func:`affine_plus_field` (output coordinates: the source's continuous index).
        source_size: ``(3,)`` int64, the source grid's size ``(i, j, k)``.
        image: ``(sd, sh, sw)`` float32 source intensities (any shape if ``warped`` is empty).
        default: the value of ``warped`` where the position is outside the source.
        warped: ``(D, H, W)`` float32, written with the trilinear value of ``image`` (index
            clamped within half a voxel outside), unless it is empty.
        nearest: ``(D, H, W)`` int32 (or int64), written with the flat index
            ``i + sw * (j + sh * k)`` of the nearest source voxel (halves rounded up, as ITK),
            or ``-1`` outside, unless it is empty.
    """
    depth, height, width = warped.shape if warped.size else nearest.shape
    size_i, size_j, size_k = source_size[0], source_size[1], source_size[2]
    rows = _along_rows(to_field)
    for k in numba.prange(depth):
        position, row = np.empty(3), np.empty((3, field.shape[3]))
        for j in range(height):
            inside_row = _field_row(field, to_field, field_offset, j, k, row) if rows else False
            for i in range(width):
                _value(
                    field, rows, row, inside_row, to_field, field_offset, linear, constant,
                    i, j, k, position,
                )  # fmt: skip
                inside_i, i0, i1, fi = _axis(position[0], size_i)
                inside_j, j0, j1, fj = _axis(position[1], size_j)
                inside_k, k0, k1, fk = _axis(position[2], size_k)
                inside = inside_i and inside_j and inside_k
                if warped.size:
                    if inside:
                        warped[k, j, i] = _trilinear(image, k0, k1, fk, j0, j1, fj, i0, i1, fi)
                    else:
                        warped[k, j, i] = default
                if nearest.size:
                    if inside:
                        ni = min(max(int(np.floor(position[0] + 0.5)), 0), size_i - 1)
                        nj = min(max(int(np.floor(position[1] + 0.5)), 0), size_j - 1)
                        nk = min(max(int(np.floor(position[2] + 0.5)), 0), size_k - 1)
                        nearest[k, j, i] = ni + size_i * (nj + size_j * nk)
                    else:
                        nearest[k, j, i] = -1


@_with_torch_threads
@numba.njit(parallel=True, **_JIT)
def jacobian_determinant(displacement, matrix, scale, out):
    """``out[k, j, i] = scale * det(matrix + G)``, ``G[a, b]`` the derivative of component
    ``a`` of ``displacement`` along index ``b`` (i, j, k): central differences inside, one-sided
    on the faces, zero along an axis of length 1 (``numpy.gradient``'s rule).

    Args:
        displacement: ``(D, H, W, 3)`` float32 or float64.
        matrix: ``(3, 3)`` float64 (the grid's index-to-physical matrix).
        scale: float (``1 / det(matrix)``).
        out: ``(D, H, W)`` float32 or float64, written.
    """
    depth, height, width, _ = displacement.shape
    for k in numba.prange(depth):
        m = np.empty((3, 3))
        k0, k1 = max(k - 1, 0), min(k + 1, depth - 1)
        for j in range(height):
            j0, j1 = max(j - 1, 0), min(j + 1, height - 1)
            for i in range(width):
                i0, i1 = max(i - 1, 0), min(i + 1, width - 1)
                for a in range(3):
                    m[a, 0] = matrix[a, 0]
                    m[a, 1] = matrix[a, 1]
                    m[a, 2] = matrix[a, 2]
                    if i1 > i0:
                        m[a, 0] += (
                            np.float64(displacement[k, j, i1, a]) - displacement[k, j, i0, a]
                        ) / (i1 - i0)
                    if j1 > j0:
                        m[a, 1] += (
                            np.float64(displacement[k, j1, i, a]) - displacement[k, j0, i, a]
                        ) / (j1 - j0)
                    if k1 > k0:
                        m[a, 2] += (
                            np.float64(displacement[k1, j, i, a]) - displacement[k0, j, i, a]
                        ) / (k1 - k0)
                out[k, j, i] = scale * (
                    m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
                    - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
                    + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0])
                )


@numba.njit(inline="always", **_JIT)
def _clamped_axis(position, size):
    """``grid_sample``'s border rule on one axis at ``position`` (voxels), for a value and its
    derivative: ``(low, high, fraction, below, above, slope)``. The value is ``(1 - fraction)
    * f[low] + fraction * f[high]``; the derivative ``slope * (f[above] - f[below])``: the
    difference across the cell, or at a voxel centre (where the interpolant has a kink) the
    central difference, the mean of the two one-sided ones; zero where the position is
    clamped to the border, as in torch's gradient."""
    if size == 1:
        return 0, 0, 0.0, 0, 0, 0.0
    slope = 1.0
    if position <= 0.0:
        position, slope = 0.0, 0.0
    elif position >= size - 1.0:
        position, slope = size - 1.0, 0.0
    low = min(int(np.floor(position)), size - 2)
    fraction = position - low
    if fraction == 0.0 and slope != 0.0:  # a centre inside: low >= 1
        return low, low + 1, 0.0, low - 1, low + 1, 0.5 * slope
    return low, low + 1, fraction, low, low + 1, slope


@numba.njit(inline="always", **_JIT)
def _weighted(a, c, k0, k1, wk0, wk1, j0, j1, wj0, wj1, i0, i1, wi0, wi1):
    """``sum w_k w_j w_i a[k, j, i, c]`` over two indices per axis with their weights."""
    return wk0 * (
        wj0 * (wi0 * a[k0, j0, i0, c] + wi1 * a[k0, j0, i1, c])
        + wj1 * (wi0 * a[k0, j1, i0, c] + wi1 * a[k0, j1, i1, c])
    ) + wk1 * (
        wj0 * (wi0 * a[k1, j0, i0, c] + wi1 * a[k1, j0, i1, c])
        + wj1 * (wi0 * a[k1, j1, i0, c] + wi1 * a[k1, j1, i1, c])
    )


@_with_torch_threads
@numba.njit(parallel=True, **_JIT)
def warped_mismatch_gradient(source, target, voxels, displacement, gradient):
    """The gradient, with respect to the displacements, of the sum of squared differences
    between ``source`` warped by them and ``target`` at the voxels ``voxels``: the warp of
    :class:`cocyclereg.geometry.spatial_transformer.SpatialTransformer` (trilinear, border clamped),
    differentiated as torch does, except at voxel centres (see :func:`_clamped_axis`).

    Args:
        source: ``(D, H, W, C)`` float32, the image to warp, channels last (a descriptor).
        target: ``(M, C)`` float32, the target's values at ``voxels``.
        voxels: ``(M, 3)`` int64 ``(d, h, w)`` indices where the mismatch is measured.
        displacement: ``(3, M)`` float32 voxel displacements at those voxels, channels
            (D, H, W): voxel ``v`` samples ``source`` at ``v + displacement[:, m]``.
        gradient: ``(3, M)`` float32, written with ``d sum / d displacement[:, m]``.
    """
    depth, height, width, channels = source.shape
    count = voxels.shape[0]
    for m in numba.prange(count):
        d, h, w = voxels[m, 0], voxels[m, 1], voxels[m, 2]
        k0, k1, fk, kb, ka, sk = _clamped_axis(d + np.float64(displacement[0, m]), depth)
        j0, j1, fj, jb, ja, sj = _clamped_axis(h + np.float64(displacement[1, m]), height)
        i0, i1, fi, ib, ia, si = _clamped_axis(w + np.float64(displacement[2, m]), width)
        across_k, across_j, across_i = kb == k0, jb == j0, ib == i0  # not at a centre
        along_k = along_j = along_i = 0.0
        for c in range(channels):
            c000, c001 = np.float64(source[k0, j0, i0, c]), np.float64(source[k0, j0, i1, c])
            c010, c011 = np.float64(source[k0, j1, i0, c]), np.float64(source[k0, j1, i1, c])
            c100, c101 = np.float64(source[k1, j0, i0, c]), np.float64(source[k1, j0, i1, c])
            c110, c111 = np.float64(source[k1, j1, i0, c]), np.float64(source[k1, j1, i1, c])
            near_low = (1.0 - fi) * c000 + fi * c001
            near_high = (1.0 - fi) * c010 + fi * c011
            far_low = (1.0 - fi) * c100 + fi * c101
            far_high = (1.0 - fi) * c110 + fi * c111
            near = (1.0 - fj) * near_low + fj * near_high
            far = (1.0 - fj) * far_low + fj * far_high
            residual = (1.0 - fk) * near + fk * far - target[m, c]
            if sk != 0.0:
                if across_k:
                    slope_k = far - near
                else:
                    slope_k = _weighted(
                        source, c, kb, ka, -1.0, 1.0, j0, j1, 1.0 - fj, fj, i0, i1, 1.0 - fi, fi
                    )
                along_k += residual * slope_k
            if sj != 0.0:
                if across_j:
                    slope_j = (1.0 - fk) * (near_high - near_low) + fk * (far_high - far_low)
                else:
                    slope_j = _weighted(
                        source, c, k0, k1, 1.0 - fk, fk, jb, ja, -1.0, 1.0, i0, i1, 1.0 - fi, fi
                    )
                along_j += residual * slope_j
            if si != 0.0:
                if across_i:
                    slope_i = (1.0 - fk) * (
                        (1.0 - fj) * (c001 - c000) + fj * (c011 - c010)
                    ) + fk * ((1.0 - fj) * (c101 - c100) + fj * (c111 - c110))
                else:
                    slope_i = _weighted(
                        source, c, k0, k1, 1.0 - fk, fk, j0, j1, 1.0 - fj, fj, ib, ia, -1.0, 1.0
                    )
                along_i += residual * slope_i
        gradient[0, m] = 2.0 * along_k * sk
        gradient[1, m] = 2.0 * along_j * sj
        gradient[2, m] = 2.0 * along_i * si


@_with_torch_threads
@numba.njit(parallel=True, **_JIT)
def inverse_flow(flow, iterations, tolerance, inverse, residual):
    """The inverse of a voxel resampling field by fixed-point iteration, voxel by voxel:
    ``v <- -u(q + v)`` from ``v = -u(q)``, with ``u`` sampled as
    :class:`cocyclereg.geometry.spatial_transformer.SpatialTransformer` samples it (trilinear,
    position clamped to the grid: ``grid_sample``'s border rule). The iteration at one voxel reads
    only ``u``, so each voxel converges on its own and stops once a step moves it by less than
    ``tolerance`` voxels (or after ``iterations`` steps): the same result as iterating the
    whole field, without the whole-field passes.

    Args:
        flow: ``(3, D, H, W)`` float32 voxel displacements ``u``, channels (D, H, W).
        iterations: the most steps per voxel.
        tolerance: voxels; a voxel stops when its last step changed ``v`` by less.
        inverse: ``(3, D, H, W)`` float32, written with ``v``.
        residual: ``(D, H, W)`` float32, written with ``|v + u(q + v)|`` in voxels.
    """
    _, depth, height, width = flow.shape
    for k in numba.prange(depth):
        value = np.empty(3)
        for j in range(height):
            for i in range(width):
                v0 = -np.float64(flow[0, k, j, i])
                v1 = -np.float64(flow[1, k, j, i])
                v2 = -np.float64(flow[2, k, j, i])
                step = 0
                while True:
                    _border_sample(flow, k + v0, j + v1, i + v2, value)
                    change = max(abs(value[0] + v0), abs(value[1] + v1), abs(value[2] + v2))
                    if change < tolerance or step == iterations:
                        break
                    v0, v1, v2 = -value[0], -value[1], -value[2]
                    step += 1
                inverse[0, k, j, i], inverse[1, k, j, i], inverse[2, k, j, i] = v0, v1, v2
                residual[k, j, i] = np.sqrt(
                    (v0 + value[0]) ** 2 + (v1 + value[1]) ** 2 + (v2 + value[2]) ** 2
                )


@numba.njit(inline="always", **_JIT)
def _border_sample(flow, d, h, w, out):
    """``out[c] = flow[c]`` at the continuous position ``(d, h, w)``, trilinear with the
    position clamped to the grid (``grid_sample``'s border rule)."""
    k0, k1, fk, _, _, _ = _clamped_axis(d, flow.shape[1])
    j0, j1, fj, _, _, _ = _clamped_axis(h, flow.shape[2])
    i0, i1, fi, _, _, _ = _clamped_axis(w, flow.shape[3])
    for c in range(3):
        out[c] = _trilinear(flow[c], k0, k1, fk, j0, j1, fj, i0, i1, fi)


_LOADER: Future | None = None


def load_in_background() -> Future:
    """Starts :func:`warm_up` in a background thread, once per process; returns its future
    (``result()`` waits for it and raises what it raised)."""
    global _LOADER
    if _LOADER is None:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocyclereg-kernels")
        _LOADER = pool.submit(warm_up)
        pool.shutdown(wait=False)  # the thread ends when warm_up returns
    return _LOADER


def warm_up() -> None:
    """Loads (or, the first time, compiles) every kernel for the array types
    :func:`cocyclereg.inference.register.register` passes (float32 fields, Jacobian and images), on
    tiny arrays; other types (float64 fields in training and tests) compile on first use."""
    field = np.zeros((3, 2, 2, 2))
    eye, zero = np.eye(3), np.zeros(3)
    affine_plus_field(field, eye, zero, eye, zero, np.empty((2, 2, 2, 3), np.float32))
    jacobian_determinant(
        np.zeros((2, 2, 2, 3), np.float32), eye, 1.0, np.empty((2, 2, 2), np.float32)
    )
    source, voxels = np.zeros((2, 2, 2, 1), np.float32), np.zeros((1, 3), np.int64)
    warped_mismatch_gradient(
        source, np.zeros((1, 1), np.float32), voxels, np.zeros((3, 1), np.float32),
        np.empty((3, 1), np.float32),
    )  # fmt: skip
    flow = np.zeros((3, 2, 2, 2), np.float32)
    inverse_flow(flow, 1, 1e-3, np.empty_like(flow), np.empty((2, 2, 2), np.float32))
    image, size = np.zeros((2, 2, 2), np.float32), np.array([2, 2, 2], np.int64)
    sample_through(
        field, eye, zero, eye, zero, size, image, 0.0,
        np.empty((2, 2, 2), np.float32), np.empty((2, 2, 2), np.int32),
    )  # fmt: skip
