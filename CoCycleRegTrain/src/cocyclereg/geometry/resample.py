"""Resampling volumes onto a grid in physical space (SimpleITK)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk

from cocyclereg.geometry.grid import Grid

Interpolation = Literal["linear", "nearest", "label"]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "label": sitk.sitkNearestNeighbor,
}


def resample_to_grid(
    image: sitk.Image,
    grid: Grid,
    interpolation: Interpolation = "linear",
    transform: sitk.Transform | None = None,
    default_value: float | None = None,
    output_pixel_type: int | None = None,
) -> sitk.Image:
    """Resample ``image`` onto ``grid``.

    Each output voxel at LPS point ``p`` takes the value of ``image`` at ``transform(p)``
    (identity when ``transform`` is ``None``): the transform maps grid (fixed) points to image
    (moving) points, ITK's resampling direction.

    Args:
        interpolation: ``"linear"`` for intensity images (output float32 unless
            ``output_pixel_type`` says otherwise); ``"label"`` or ``"nearest"`` for labelmaps,
            which keep their integer pixel type and never gain a label value.
        default_value: value outside the image; default the image minimum for ``"linear"``
            (the background of MRI, air of CT) and 0 for labels.
    """
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}")
    is_label = interpolation in ("label", "nearest")
    if output_pixel_type is None:
        output_pixel_type = image.GetPixelID() if is_label else sitk.sitkFloat32
    if default_value is None:
        array = sitk.GetArrayViewFromImage(image)
        default_value = 0.0 if is_label or array.size == 0 else float(np.min(array))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(list(grid.size))
    resampler.SetOutputSpacing(grid.spacing)
    resampler.SetOutputOrigin(grid.origin)
    resampler.SetOutputDirection(grid.direction)
    resampler.SetTransform(
        transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    )
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputPixelType(output_pixel_type)
    return resampler.Execute(image)
