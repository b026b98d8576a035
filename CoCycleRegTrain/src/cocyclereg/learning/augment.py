"""Seeded random deformations and intensity changes for training pairs.

Every function draws from the ``numpy.random.Generator`` it is given (never the global RNG), so
a sample is reproducible from its seed.

Fields follow the package conventions: a voxel *resampling* field ``(3, D, H, W)`` float32 with
channel order (D, H, W), in voxels of the volume's grid; output voxel ``p`` samples the input at
``p + flow[:, p]``. Spacings are given in ITK order (i, j, k) = (W, H, D), as in the
configuration, and reversed here to the array axis order (D, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d, zoom
from scipy.spatial.transform import Rotation

from cocyclereg.geometry.spatial_transformer import SpatialTransformer

MIN_JACOBIAN = 0.1  # smallest Jacobian determinant an elastic field may have anywhere
SMOOTHING_PER_CONTROL_SPACING = 0.25  # Gaussian sigma of the elastic field, in control spacings
_SHRINK = 0.9  # amplitude factor per step while the elastic field folds


def _spacing_dhw(spacing_ijk_mm: Sequence[float]) -> np.ndarray:
    """Voxel size in mm along the array axes (D, H, W), from a spacing in ITK order (i, j, k)."""
    spacing = np.asarray(spacing_ijk_mm, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive numbers in mm, got {spacing_ijk_mm!r}")
    return spacing[::-1].copy()


def _control_grid_shape(
    shape_dhw: Sequence[int], spacing_dhw: np.ndarray, control_spacing_mm: float
) -> tuple[int, int, int]:
    """Control points per array axis (D, H, W): at most ``control_spacing_mm`` apart, at least
    two, the first and last on the first and last voxel centres."""
    extent_mm = (np.asarray(shape_dhw) - 1) * spacing_dhw
    return tuple(int(max(2, np.ceil(e / control_spacing_mm - 1e-9) + 1)) for e in extent_mm)


def _axis_operator(
    size: int, control_points: int, spacing_mm: float, sigma_mm: float
) -> np.ndarray:
    """The ``(size, control_points)`` matrix that upsamples control values along one axis to
    ``size`` voxels (cubic-spline interpolation, end control points on end voxel centres) and
    then Gaussian-smooths them (sigma ``sigma_mm`` mm, border mode ``nearest``).

    Upsampling and smoothing are separable, so the 3D operation is the tensor product of the
    three axis operators: the same values as ``scipy.ndimage.zoom(order=3)`` followed by
    ``gaussian_filter`` on the full grid, at a fraction of the cost.
    """
    upsample = zoom(
        np.eye(control_points),
        (size / control_points, 1.0),
        order=3,
        mode="nearest",
        grid_mode=False,
    )
    return gaussian_filter1d(upsample, sigma_mm / spacing_mm, axis=0, mode="nearest")


def _jacobian_polynomial(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients of ``det(I + a G) = 1 + a c1 + a² c2 + a³ c3`` per voxel, ``G`` the voxel
    gradient of ``flow`` (3, D, H, W) by central differences (one-sided on the faces).

    ``c1`` is the trace of ``G``, ``c2`` the sum of its principal 2x2 minors, ``c3`` its
    determinant; each (D, H, W). In voxel units this determinant equals the physical one.
    """
    g = [np.gradient(flow[c]) for c in range(3)]  # g[c][a] = d flow_c / d axis_a
    trace = g[0][0] + g[1][1] + g[2][2]
    minors = (
        g[0][0] * g[1][1]
        - g[0][1] * g[1][0]
        + g[0][0] * g[2][2]
        - g[0][2] * g[2][0]
        + g[1][1] * g[2][2]
        - g[1][2] * g[2][1]
    )
    determinant = (
        g[0][0] * (g[1][1] * g[2][2] - g[1][2] * g[2][1])
        - g[0][1] * (g[1][0] * g[2][2] - g[1][2] * g[2][0])
        + g[0][2] * (g[1][0] * g[2][1] - g[1][1] * g[2][0])
    )
    return trace, minors, determinant


def _unfolded_amplitude(flow: np.ndarray, amplitude: float) -> float:
    """The largest ``amplitude * 0.9^n`` (n = 0, 1, ...) at which ``amplitude * flow`` has a
    Jacobian determinant above :data:`MIN_JACOBIAN` at every voxel."""
    c1, c2, c3 = _jacobian_polynomial(flow)
    while amplitude > 0:
        a = amplitude
        if float((1 + a * (c1 + a * (c2 + a * c3))).min()) > MIN_JACOBIAN:
            return amplitude
        amplitude *= _SHRINK
    return amplitude


def random_elastic_flow(
    shape_dhw: Sequence[int],
    spacing_ijk_mm: Sequence[float],
    rng: np.random.Generator,
    control_spacing_mm: float,
    max_displacement_mm: float,
) -> np.ndarray:
    """A random smooth elastic resampling field without folding, ``(3, D, H, W)`` float32 voxels.

    The CoCycleReg paper's deformation: independent normal displacements (isotropic, in mm) on a
    coarse control grid at most ``control_spacing_mm`` apart, cubic-spline upsampled to every
    voxel, Gaussian-smoothed with sigma ``control_spacing_mm / 4`` mm, and scaled so that the
    largest displacement length is a uniform random fraction in [0.5, 1] of
    ``max_displacement_mm``. If the Jacobian determinant ``det(I + grad u)`` (central
    differences, as :mod:`cocyclereg.geometry.jacobian` computes it) falls to 0.1 or below anywhere,
    the amplitude shrinks by steps of 10 % until it is above 0.1 everywhere, so the largest length
    may then be below half of ``max_displacement_mm``; it never exceeds it.

    Args:
        shape_dhw: array shape (D, H, W) of the volume.
        spacing_ijk_mm: voxel size in mm in ITK order (i, j, k) = (W, H, D).
        rng: the generator every random number is drawn from.
        control_spacing_mm: largest distance between control points, in mm.
        max_displacement_mm: upper bound of the displacement length, in mm.
    """
    shape_dhw = tuple(int(n) for n in shape_dhw)
    spacing_dhw = _spacing_dhw(spacing_ijk_mm)
    control_shape = _control_grid_shape(shape_dhw, spacing_dhw, control_spacing_mm)
    coarse_mm = rng.standard_normal((3, *control_shape))
    sigma_mm = SMOOTHING_PER_CONTROL_SPACING * control_spacing_mm
    operators = [
        _axis_operator(n, c, s, sigma_mm)
        for n, c, s in zip(shape_dhw, control_shape, spacing_dhw, strict=True)
    ]
    field_mm = np.einsum("dk,hl,wm,cklm->cdhw", *operators, coarse_mm, optimize=True)
    largest_mm = float(np.sqrt((field_mm**2).sum(axis=0)).max())
    if largest_mm == 0:
        return np.zeros((3, *shape_dhw), dtype=np.float32)
    unit_flow = field_mm / spacing_dhw[:, None, None, None] / largest_mm  # largest length 1 mm
    target_mm = rng.uniform(0.5, 1.0) * max_displacement_mm
    return (_unfolded_amplitude(unit_flow, target_mm) * unit_flow).astype(np.float32)


def affine_flow(
    shape_dhw: Sequence[int],
    spacing_ijk_mm: Sequence[float],
    matrix_dhw: np.ndarray,
    translation_mm_dhw: Sequence[float],
) -> np.ndarray:
    """The voxel resampling field ``(3, D, H, W)`` float32 of an affine map about the centre.

    In mm along the array axes (D, H, W), with ``c`` the centre of the volume, output point
    ``p`` samples the input at ``c + matrix_dhw @ (p - c) + translation_mm_dhw``. Converting
    through the spacing keeps this physically correct on anisotropic grids (a rotation stays a
    rotation in mm, not in voxels).
    """
    shape_dhw = tuple(int(n) for n in shape_dhw)
    spacing_dhw = _spacing_dhw(spacing_ijk_mm)
    matrix_dhw = np.asarray(matrix_dhw, dtype=np.float64)
    translation = np.asarray(translation_mm_dhw, dtype=np.float64)
    centre_voxels = (np.asarray(shape_dhw) - 1) / 2
    # In voxels: q = c + S^-1 M S (p - c) + S^-1 t, with S = diag(spacing_dhw).
    linear = matrix_dhw * spacing_dhw[None, :] / spacing_dhw[:, None] - np.eye(3)
    offset = translation / spacing_dhw
    axes = [
        np.arange(n, dtype=np.float64) - c for n, c in zip(shape_dhw, centre_voxels, strict=True)
    ]
    flow = np.empty((3, *shape_dhw), dtype=np.float32)
    for row in range(3):
        flow[row] = (
            linear[row, 0] * axes[0][:, None, None]
            + linear[row, 1] * axes[1][None, :, None]
            + linear[row, 2] * axes[2][None, None, :]
            + offset[row]
        )
    return flow


def random_affine_flow(
    shape_dhw: Sequence[int],
    spacing_ijk_mm: Sequence[float],
    rng: np.random.Generator,
    rotation_deg: float,
    scale: float,
    translation_mm: float,
) -> np.ndarray:
    """A small random affine about the volume centre as a voxel field ``(3, D, H, W)`` float32.

    Rotation angles about the three array axes are uniform in ``±rotation_deg`` degrees, scale
    factors along them uniform in ``1 ± scale``, the translation uniform in ``±translation_mm``
    mm per axis; the map is ``rotation @ diag(scales)`` in mm (see :func:`affine_flow`).
    """
    angles = rng.uniform(-rotation_deg, rotation_deg, size=3)
    scales = rng.uniform(1 - scale, 1 + scale, size=3)
    translation = rng.uniform(-translation_mm, translation_mm, size=3)
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    return affine_flow(shape_dhw, spacing_ijk_mm, rotation @ np.diag(scales), translation)


def compose_flows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One voxel field ``(3, D, H, W)`` for sampling through ``first`` and then ``second``.

    The result is ``c(p) = first(p) + second(p + first(p))``: output point ``p`` moves by
    ``first``, then by ``second`` at the point it reached (``second`` is interpolated
    trilinearly there, clamped to the border). Warping an image by ``c`` equals warping it by
    ``second`` and then warping that result by ``first``.
    """
    first_tensor = torch.from_numpy(np.ascontiguousarray(first, dtype=np.float32))[None]
    second_tensor = torch.from_numpy(np.ascontiguousarray(second, dtype=np.float32))[None]
    moved = SpatialTransformer("bilinear")(second_tensor, first_tensor)
    return (first_tensor + moved)[0].numpy()


def intensity_jitter(
    array: np.ndarray,
    rng: np.random.Generator,
    gamma: tuple[float, float] = (0.8, 1.25),
    noise_std: float = 0.01,
) -> np.ndarray:
    """Random gamma and additive Gaussian noise on an intensity volume scaled to [0, 1].

    The exponent is log-uniform in ``gamma`` (so (0.8, 1.25) is symmetric about 1); the noise
    has standard deviation ``noise_std`` in the same [0, 1] units. Returns float32, clipped to
    [0, 1], with the shape of ``array``.
    """
    exponent = float(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]))))
    jittered = np.clip(np.asarray(array, dtype=np.float32), 0.0, 1.0) ** exponent
    if noise_std > 0:
        jittered = jittered + rng.normal(0.0, noise_std, size=jittered.shape)
    return np.clip(jittered, 0.0, 1.0).astype(np.float32)


def random_bias_field(
    shape_dhw: Sequence[int], rng: np.random.Generator, strength: float
) -> np.ndarray:
    """A smooth multiplicative intensity bias ``(D, H, W)`` float32, as MR coils cause.

    ``exp(b)`` with ``b`` drawn normal on a 4x4x4 control grid, cubic-spline upsampled to every
    voxel and scaled so that ``|b| <= s``, ``s`` uniform in ``[0, strength]``: the bias then
    stays within ``[exp(-strength), exp(strength)]``. ``strength`` 0 gives ones.
    """
    shape_dhw = tuple(int(n) for n in shape_dhw)
    if strength <= 0:
        return np.ones(shape_dhw, dtype=np.float32)
    coarse = rng.standard_normal((4, 4, 4))
    log_bias = zoom(coarse, [n / 4 for n in shape_dhw], order=3, mode="nearest", grid_mode=False)
    largest = float(np.abs(log_bias).max())
    scale = rng.uniform(0.0, strength) / largest if largest > 0 else 0.0
    return np.exp(scale * log_bias).astype(np.float32)


def appearance_jitter(
    array: np.ndarray,
    rng: np.random.Generator,
    gamma: tuple[float, float] = (0.8, 1.25),
    noise_std: float = 0.01,
    bias_strength: float = 0.0,
    blur_voxels: float = 0.0,
) -> np.ndarray:
    """A new appearance of an intensity volume in [0, 1]: a smooth bias field
    (:func:`random_bias_field`, ``bias_strength``), a Gaussian blur of sigma uniform in
    ``[0, blur_voxels]`` voxels (a lower resolution), then gamma and noise
    (:func:`intensity_jitter`). Returns float32 in [0, 1] with the shape of ``array``; the
    geometry (where each structure is) never changes."""
    changed = np.asarray(array, dtype=np.float32)
    if bias_strength > 0:
        changed = changed * random_bias_field(changed.shape, rng, bias_strength)
    if blur_voxels > 0:
        changed = gaussian_filter(changed, rng.uniform(0.0, blur_voxels), mode="nearest")
    return intensity_jitter(changed, rng, gamma, noise_std)
