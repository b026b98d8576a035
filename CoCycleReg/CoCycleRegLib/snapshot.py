"""A PNG of a result for reports and the README: fixed | fixed + warped moving | fixed +
Jacobian, one slice of the fixed grid.

Slicer's slice-view pipeline (vtkMRMLSliceLogic) runs without the application but its layer
blending gives garbled output there, so this composes the volume nodes' voxel arrays with
numpy (all three volumes share the fixed grid) and the Jacobian node's own colour transfer
function, and writes the PNG with VTK. Inside Slicer, use the slice views themselves.
"""

from __future__ import annotations

import os

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support


def _grey(array: np.ndarray) -> np.ndarray:
    low, high = np.percentile(array, [1, 99.5])
    scaled = np.clip((array - low) / max(high - low, 1e-6), 0, 1)
    return np.repeat(scaled[..., None], 3, axis=-1)


def _colours(node, array: np.ndarray) -> np.ndarray:
    display = node.GetDisplayNode()
    function = display.GetColorNode().GetColorTransferFunction()
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    samples = np.linspace(low, high, 256)
    table = np.array([function.GetColor(float(v)) for v in samples])
    index = np.clip(((array - low) / (high - low) * 255).round().astype(int), 0, 255)
    return table[index]


def render_result_png(
    fixed, warped, jacobian, path, k: int | None = None, opacity: float = 0.5, zoom: int = 1
) -> str:
    """Write the three-panel PNG of slice ``k`` (default: the middle one), each voxel drawn
    as ``zoom`` x ``zoom`` pixels."""
    volumes = [slicer.util.arrayFromVolume(n).astype(np.float64) for n in (fixed, warped)]
    k = volumes[0].shape[0] // 2 if k is None else k
    background = _grey(volumes[0][k])
    moving = _grey(volumes[1][k])
    overlay = _colours(jacobian, slicer.util.arrayFromVolume(jacobian)[k].astype(np.float64))
    blend_warped = (1 - opacity) * background + opacity * moving * np.array([1.0, 0.55, 0.1])
    blend_jacobian = (1 - opacity) * background + opacity * overlay
    gap = np.ones((background.shape[0], 4, 3))
    panels = np.concatenate([background, gap, blend_warped, gap, blend_jacobian], axis=1)
    panels = panels.repeat(zoom, axis=0).repeat(zoom, axis=1)
    rgb = (np.clip(panels, 0, 1) * 255).astype(np.uint8)[::-1]  # VTK rows run bottom-up
    image = vtk.vtkImageData()
    image.SetDimensions(rgb.shape[1], rgb.shape[0], 1)
    scalars = numpy_support.numpy_to_vtk(rgb.reshape(-1, 3), deep=True)
    scalars.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(scalars)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(os.fspath(path))
    writer.SetInputData(image)
    writer.Write()
    return os.fspath(path)
