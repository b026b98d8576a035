"""The picture of one registration: what a person looks at to judge it.

:func:`registration_figure` draws one PNG with two rows, an axial and a coronal slice through a
region of interest (where a labelmap such as the tumour is largest, else the image centre), each
with seven panels on the fixed image's grid:

fixed | moving (before) | warped moving | checkerboard before (fixed vs moving) | checkerboard
after (fixed vs warped) | fixed labels' contours over the warped moving | Jacobian determinant.

Slices are shown in mm (the voxel spacing sets the aspect ratio) in radiological convention:
the patient's right on the left of the panel, anterior (axial) and superior (coronal) at the
top. The Jacobian determinant uses a diverging colour map centred at 1 (no volume change),
with voxels where it is <= 0 (folding) in black. Drawn with matplotlib's Agg renderer, so no
display is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.resample import resample_to_grid

CHECKER_MM = 16.0
HEAD_THRESHOLD = 0.05  # of the fixed image's intensity window: the head outline
CONTOUR_COLOURS = ("#ff3b30", "#ffd60a", "#30d5ff", "#34c759", "#bf5af2", "#ff9f0a")
PANEL_INCHES = 2.45
DPI = 100
MIN_JACOBIAN_SPREAD = 0.25  # the colour bar spans at least 0.75 .. 1.25


def _oriented(image: sitk.Image) -> sitk.Image:
    """``image`` with its axes permuted and flipped to point left, posterior, superior."""
    return sitk.DICOMOrient(image, "LPS")


def _window(array: np.ndarray) -> tuple[float, float]:
    """The 1st and 99.5th percentile of the non-zero voxels (of all voxels if none is)."""
    values = array[array != 0]
    if values.size == 0:
        values = array.ravel()
    low, high = np.percentile(values, [1.0, 99.5])
    return float(low), float(high) if high > low else float(low) + 1.0


def _scaled(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Intensities mapped linearly from ``window`` to [0, 1], clipped."""
    low, high = window
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _checkerboard(first: np.ndarray, second: np.ndarray, pixel_mm: tuple[float, float]):
    """Alternating squares of ``CHECKER_MM`` mm from two 2D slices of one shape."""
    rows = (np.arange(first.shape[0]) * pixel_mm[0] // CHECKER_MM).astype(int)
    columns = (np.arange(first.shape[1]) * pixel_mm[1] // CHECKER_MM).astype(int)
    choose = (rows[:, None] + columns[None, :]) % 2 == 0
    return np.where(choose, first, second)


class _View:
    """One slice direction through the oriented volumes: the 2D cut and how to draw it."""

    def __init__(self, name: str, grid: Grid, centre_kji: Sequence[int]):
        sx, sy, sz = grid.spacing
        depth, height, width = grid.shape
        self.name = name
        if name == "axial":
            self.index = int(centre_kji[0])
            self.cut = (self.index, slice(None), slice(None))
            self.pixel_mm = (sy, sx)
            # origin upper: row 0 (anterior) at the top.
            self.extent = (-0.5 * sx, (width - 0.5) * sx, (height - 0.5) * sy, -0.5 * sy)
            self.origin = "upper"
            self.edges = ("R", "L", "A", "P")
        else:
            self.index = int(centre_kji[1])
            self.cut = (slice(None), self.index, slice(None))
            self.pixel_mm = (sz, sx)
            self.extent = (-0.5 * sx, (width - 0.5) * sx, -0.5 * sz, (depth - 0.5) * sz)
            self.origin = "lower"  # superior (larger k) at the top
            self.edges = ("R", "L", "S", "I")

    def take(self, volume: np.ndarray) -> np.ndarray:
        return volume[self.cut]

    def show(self, axes, image: np.ndarray, **style):
        return axes.imshow(
            image,
            extent=self.extent,
            origin=self.origin,
            interpolation="nearest",
            aspect="equal",
            **style,
        )

    def contour(self, axes, mask: np.ndarray, colour: str) -> None:
        if mask.any():
            axes.contour(
                mask.astype(np.float32),
                levels=[0.5],
                colors=[colour],
                linewidths=1.2,
                extent=self.extent,
                origin=self.origin,
            )


def _centre(labels: sitk.Image | None, grid: Grid) -> np.ndarray:
    """(k, j, i) indices of the slices holding the most non-zero voxels of the labelmap along
    each axis, else the centre of the grid."""
    centre = np.asarray(grid.shape) // 2
    if labels is not None:
        inside = sitk.GetArrayViewFromImage(labels) > 0
        if inside.any():
            for axis in range(3):
                others = tuple(a for a in range(3) if a != axis)
                centre[axis] = int(np.argmax(inside.sum(axis=others)))
    return centre


def registration_figure(path: str | os.PathLike, *images: sitk.Image, **options) -> Path:
    """Draw :func:`draw_registration_figure` (same arguments after ``path``) and save it as a
    PNG at ``path`` (written directly: wrap it in an atomic output if needed)."""
    figure = draw_registration_figure(*images, **options)
    figure.savefig(path, format="png", dpi=DPI)
    return Path(path)


def draw_registration_figure(
    fixed: sitk.Image,
    moving: sitk.Image,
    warped: sitk.Image,
    jacobian: sitk.Image,
    contours: Mapping[str, tuple[sitk.Image, int]] = (),
    centre_labels: sitk.Image | None = None,
    title: str = "",
    names: tuple[str, str] = ("fixed", "moving"),
) -> Figure:
    """The registration figure (see the module docstring), drawn with the Agg renderer.

    The 14 image panels are ``figure.axes[:7]`` (axial) and ``figure.axes[8:15]`` (coronal);
    ``figure.axes[7]`` and ``figure.axes[15]`` are the Jacobian colour bars.

    Args:
        fixed, warped, jacobian: volumes on the fixed image's grid.
        moving: the moving image on its own grid; shown resampled onto the fixed grid without
            any transform, i.e. as it lies before registration.
        contours: ``{legend name: (labelmap on the fixed grid, label value)}``: regions whose
            outlines are drawn over the warped moving image.
        centre_labels: labelmap on the fixed grid: each slice is the one holding the most of
            its non-zero voxels.
        title: the figure's title; ``names``: what to call the fixed and moving images.
    """
    grid_in = Grid.from_image(fixed)
    before = resample_to_grid(moving, grid_in, "linear", default_value=0.0)
    volumes = {
        "fixed": fixed,
        "before": before,
        "warped": warped,
        "jacobian": jacobian,
    }
    oriented = {k: _oriented(sitk.Cast(v, sitk.sitkFloat32)) for k, v in volumes.items()}
    grid = Grid.from_image(oriented["fixed"])
    arrays = {k: sitk.GetArrayFromImage(v) for k, v in oriented.items()}
    # The moving image before and after share one intensity window: that of the moving image.
    moving_window = _window(sitk.GetArrayViewFromImage(moving))
    arrays["fixed"] = _scaled(arrays["fixed"], _window(arrays["fixed"]))
    arrays["before"] = _scaled(arrays["before"], moving_window)
    arrays["warped"] = _scaled(arrays["warped"], moving_window)
    masks = {
        name: sitk.GetArrayFromImage(_oriented(labels)) == value
        for name, (labels, value) in dict(contours).items()
    }
    centre = _centre(_oriented(centre_labels) if centre_labels is not None else None, grid)

    jacobian_values = arrays["jacobian"]
    spread = float(np.percentile(np.abs(jacobian_values - 1.0), 99.5))
    spread = min(max(spread, MIN_JACOBIAN_SPREAD), 1.0)
    norm = TwoSlopeNorm(vmin=1.0 - spread, vcenter=1.0, vmax=1.0 + spread)
    colours = ListedColormap(["black"])

    fixed_name, moving_name = names
    titles = [
        f"fixed ({fixed_name})",
        f"moving ({moving_name}), before",
        f"warped {moving_name}",
        "checkerboard before",
        "checkerboard after",
        "fixed labels on warped",
        "Jacobian determinant",
    ]
    views = [_View("axial", grid, centre), _View("coronal", grid, centre)]
    heights = [
        (v.extent[2] - v.extent[3] if v.origin == "upper" else v.extent[3] - v.extent[2])
        / (v.extent[1] - v.extent[0])
        for v in views
    ]
    figure = Figure(figsize=(PANEL_INCHES * 7 + 0.9, PANEL_INCHES * sum(heights) + 1.6), dpi=DPI)
    FigureCanvasAgg(figure)
    grid_spec = figure.add_gridspec(
        2,
        8,
        width_ratios=[1] * 7 + [0.07],
        height_ratios=heights,
        left=0.03,
        right=0.945,
        top=1 - 0.75 / figure.get_figheight(),
        bottom=0.75 / figure.get_figheight(),
        wspace=0.06,
        hspace=0.14,
    )
    grey = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    for row, view in enumerate(views):
        cut = {k: view.take(a) for k, a in arrays.items()}
        panels = [figure.add_subplot(grid_spec[row, column]) for column in range(7)]
        view.show(panels[0], cut["fixed"], **grey)
        view.show(panels[1], cut["before"], **grey)
        view.show(panels[2], cut["warped"], **grey)
        view.show(panels[3], _checkerboard(cut["fixed"], cut["before"], view.pixel_mm), **grey)
        view.show(panels[4], _checkerboard(cut["fixed"], cut["warped"], view.pixel_mm), **grey)
        view.show(panels[5], cut["warped"], **grey)
        for mask, colour in zip(masks.values(), CONTOUR_COLOURS, strict=False):
            view.contour(panels[5], view.take(mask), colour)
        shown = view.show(panels[6], cut["jacobian"], cmap="RdBu_r", norm=norm)
        folded = np.ma.masked_where(cut["jacobian"] > 0, np.ones_like(cut["jacobian"]))
        view.show(panels[6], folded, cmap=colours, vmin=0, vmax=1)
        view.contour(panels[6], cut["fixed"] > HEAD_THRESHOLD, "0.35")  # the head's outline
        colour_bar = figure.colorbar(shown, cax=figure.add_subplot(grid_spec[row, 7]))
        colour_bar.ax.tick_params(labelsize=9)
        colour_bar.set_label("det(I + ∇u); black: ≤ 0 (folding)", fontsize=9)
        for column, axes in enumerate(panels):
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(titles[column], fontsize=11)
        point = grid.index_to_physical(np.asarray(centre[::-1], dtype=float))
        where = f"z = {point[2]:.0f}" if view.name == "axial" else f"y = {point[1]:.0f}"
        panels[0].set_ylabel(f"{view.name} (LPS {where} mm)", fontsize=11)
        left, right, top, bottom = view.edges
        for text, x, y, align in (
            (left, 0.02, 0.5, "left"),
            (right, 0.98, 0.5, "right"),
            (top, 0.5, 0.98, "center"),
            (bottom, 0.5, 0.02, "center"),
        ):
            panels[0].text(
                x,
                y,
                text,
                color="yellow",
                fontsize=9,
                ha=align,
                va="top" if y > 0.9 else "bottom" if y < 0.1 else "center",
                transform=panels[0].transAxes,
            )
    if masks:
        handles = [
            Line2D([0], [0], color=colour, linewidth=2)
            for _, colour in zip(masks, CONTOUR_COLOURS, strict=False)
        ]
        figure.legend(
            handles,
            list(masks),
            loc="lower center",
            ncol=len(handles),
            fontsize=10,
            frameon=False,
            title="contours: fixed labels",
            title_fontsize=10,
            bbox_to_anchor=(0.5, 0.0),
        )
    if title:
        figure.suptitle(title, fontsize=13)
    return figure
