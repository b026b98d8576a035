"""The review page: a trame app on trame-slicer, Slicer's MRML scene and slice views.

Left, the pair list (id, status, folded voxels in %, mean Dice per labelmap; sortable; failed
pairs in red with their error) and the display controls; right, the chosen pair's axial,
coronal and sagittal slice views, rendered by Slicer's slice logic on the server and streamed
to the page. The fixed image is the background layer; the foreground layer is the moving image
under its grid transform (Slicer resamples it through the transform as it draws; its opacity
set by a slider, or flickering between fixed and moving) or the
Jacobian determinant in a diverging colour map with Slicer's colour legend; the label layer
shows a warped labelmap as outlines; the transform's own 2D display draws the deformed grid.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from trame.app import TrameApp
from trame.decorators import change
from trame_client.widgets import html
from trame_server.utils.asynchronous import create_task
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageLayout
from trame_vuetify.widgets import vuetify3 as v3
from vtkmodules.util.numpy_support import vtk_to_numpy

from cocyclereg.review.results import ReviewPair
from cocyclereg.review.scene import (
    JACOBIAN_COLORS,
    JACOBIAN_RANGE,
    PairNodes,
    load_pair,
    remove_pair,
)

LAYOUT_ID = "review"
FLICKER_SECONDS = 0.8  # how long the fixed and the moving image are each shown when flickering
OVERLAYS = {"moving": "warped moving image", "jacobian": "Jacobian determinant"}
HEADERS = [
    {"title": "pair", "key": "id", "sortable": True},
    {"title": "status", "key": "status", "sortable": True},
    {"title": "J ≤ 0 %", "key": "folding", "sortable": True},
    {"title": "Dice", "key": "dice", "sortable": True},
]


def _row(pair: ReviewPair) -> dict:
    """The pair list's row: numbers rounded for display; ``None`` where unknown (sorts last)."""
    return {
        "id": pair.id,
        "status": pair.status,
        "folding": None if pair.folding_percent is None else round(pair.folding_percent, 4),
        "dice": round(float(np.mean(pair.dice)), 3) if pair.dice else None,
        "dice_each": " / ".join(f"{d:.3f}" for d in pair.dice),
        "error": pair.error,
        "viewable": pair.viewable,
    }


def jacobian_gradient_css() -> str:
    """The colour bar beside the controls: the Jacobian map's control points as a CSS
    gradient from ``JACOBIAN_RANGE`` low (left) to high (right)."""
    low, high = JACOBIAN_RANGE
    stops = [
        f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)}) "
        f"{100 * (value - low) / (high - low):.0f}%"
        for value, r, g, b in JACOBIAN_COLORS
    ]
    return f"linear-gradient(to right, {', '.join(stops)})"


class ReviewApp(TrameApp):
    """The page for the pairs of one result folder (see :mod:`cocyclereg.review.results`)."""

    def __init__(self, folder: Path, pairs: list[ReviewPair], server=None):
        super().__init__(server=server)
        self.folder, self.pairs = folder, {pair.id: pair for pair in pairs}
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout_manager = LayoutManager(
            self.slicer.scene, self.slicer.view_manager, self.server
        )
        views = [
            ViewLayoutDefinition.axial_view(),
            ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view(),
        ]
        self.layout_manager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, views))
        self.layout_manager.set_layout(LAYOUT_ID)
        self.nodes: PairNodes | None = None
        self._flickering = None  # the task swapping the images while "flicker" is on
        self.state.update(
            {
                "rows": [_row(pair) for pair in pairs],
                "picked": [],
                "overlay": "moving",
                "opacity": 0.5,
                "labelmap": None,
                "labelmaps": [],
                "grid": False,
                "flicker": False,
                "has_grid": False,
                "message": "",
                "folding": "",
            }
        )
        self._build_ui()
        first = next((pair.id for pair in pairs if pair.viewable), None)
        self.state.picked = [first] if first else []

    # -- showing a pair ------------------------------------------------------------------

    @change("picked")
    def _on_pick(self, picked, **_):
        pair = self.pairs.get(picked[0]) if picked else None
        if self.nodes is not None:
            remove_pair(self.slicer.scene, self.nodes)
            self.nodes = None
        self.state.update({"labelmaps": [], "labelmap": None, "has_grid": False, "folding": ""})
        if pair is None or not pair.viewable:
            self.state.message = self._why_not_shown(pair)
            self._show_layers()
            return
        try:
            self.nodes = load_pair(self.slicer.scene, pair.files, pair.id)
        except OSError as error:
            self.state.message = f"{pair.id}: {error}"
            self._show_layers()
            return
        notes = []
        if self.nodes.moving_is_warped:
            missing = "transform file" if self.nodes.transform is None else "moving image"
            notes.append(
                f"the {missing} recorded in the summary was not found: showing the package's "
                "warped image instead of the moving image under its transform"
            )
        elif self.nodes.transform is None:
            notes.append("no transform file")
        if self.nodes.jacobian is None:
            notes.append("no Jacobian file")
        self.state.message = f"{pair.id}: " + "; ".join(notes) if notes else ""
        labelmaps = list(self.nodes.labels)
        self.state.update(
            {
                "labelmaps": labelmaps,
                "labelmap": labelmaps[0] if labelmaps else None,
                "has_grid": self.nodes.transform is not None,
                "folding": self._folding_text(),
            }
        )
        self._show_layers()
        self.slicer.display_manager.reset_views()

    @staticmethod
    def _why_not_shown(pair: ReviewPair | None) -> str:
        if pair is None:
            return ""
        if pair.files is not None:  # complete, but its fixed image is gone
            return f"{pair.id}: the fixed image its summary names is not found; nothing to show."
        reason = f": {pair.error}" if pair.error else ""
        return f"{pair.id} is {pair.status}{reason}; nothing to show."

    def _folding_text(self) -> str:
        """The folded voxels of the Jacobian as Slicer read it from the file."""
        if self.nodes is None or self.nodes.jacobian is None:
            return ""
        values = vtk_to_numpy(self.nodes.jacobian.GetImageData().GetPointData().GetScalars())
        folded = int(np.count_nonzero(values <= 0))
        return (
            f"J ≤ 0 in {folded} of {values.size} voxels ({100 * folded / values.size:.4f} %); "
            f"J ranges {values.min():.3f} .. {values.max():.3f}"
        )

    @change("overlay")
    def _on_overlay(self, overlay, **_):
        """Flickering swaps the moving image's opacity: it stops when another overlay is
        shown (its switch is hidden there)."""
        if overlay != "moving" and self.state.flicker:
            self.state.flicker = False

    @change("overlay", "opacity", "labelmap", "grid")
    def _show_layers(self, **_):
        nodes = self.nodes
        overlay = None
        if nodes is not None:
            overlay = nodes.jacobian if self.state.overlay == "jacobian" else nodes.moving
        labels = nodes.labels.get(self.state.labelmap) if nodes is not None else None
        for view, composite in self._composite_nodes():
            composite.SetBackgroundVolumeID(nodes.fixed.GetID() if nodes else None)
            composite.SetForegroundVolumeID(overlay.GetID() if overlay is not None else None)
            composite.SetForegroundOpacity(float(self.state.opacity))
            composite.SetLabelVolumeID(labels.GetID() if labels is not None else None)
            view.get_view_node().SetUseLabelOutline(True)
            view.schedule_render()
        if nodes is not None and nodes.jacobian_legend is not None:
            nodes.jacobian_legend.SetVisibility(self.state.overlay == "jacobian")
        if nodes is not None and nodes.transform is not None:
            self._show_grid(nodes.transform, bool(self.state.grid))

    def _composite_nodes(self):
        """The slice composite node of each view (its layers and foreground opacity)."""
        for view in self.slicer.view_manager.get_slice_views():
            slice_node = view.get_view_node()
            yield view, self.slicer.app_logic.GetSliceLogic(slice_node).GetSliceCompositeNode()

    @change("flicker")
    def _on_flicker(self, flicker, **_):
        """Start swapping the images; when switched off, stop at once and show the slider's
        opacity again (the swaps set the views' opacity, never the slider's value)."""
        if flicker and self._flickering is None:
            self._flickering = create_task(self._flicker())
        elif not flicker and self._flickering is not None:
            self._flickering.cancel()
            self._flickering = None
            self._show_layers()

    async def _flicker(self) -> None:
        """Show the fixed image alone, then the moving image alone, each for
        ``FLICKER_SECONDS``, until cancelled."""
        opacity = 0.0
        while True:
            for view, composite in self._composite_nodes():
                composite.SetForegroundOpacity(opacity)
                view.schedule_render()
            opacity = 1.0 - opacity
            await asyncio.sleep(FLICKER_SECONDS)

    @staticmethod
    def _show_grid(transform, visible: bool) -> None:
        """The transform's deformed grid in the slice views (Slicer's transform display)."""
        if transform.GetDisplayNode() is None:
            transform.CreateDefaultDisplayNodes()
        display = transform.GetDisplayNode()
        display.SetVisualizationMode(display.VIS_MODE_GRID)
        display.SetVisibility2D(visible)
        display.SetVisibility(visible)

    # -- the page --------------------------------------------------------------------------

    def _build_ui(self) -> None:
        with SinglePageLayout(self.server, full_height=True) as self.ui:
            self.ui.title.set_text(f"CoCycleReg review: {self.folder}")
            self.ui.root.theme = "dark"
            with v3.VNavigationDrawer(permanent=True, width=420, classes="pa-2"):
                self._pair_table()
                self._controls()
            with self.ui.content:
                with html.Div(classes="fill-height", style="position: relative;"):
                    self.layout_manager.initialize_layout_grid(self.ui)

    def _pair_table(self) -> None:
        with (
            html.Div(style="max-height: 40vh; overflow-y: auto;"),
            v3.VDataTable(
                headers=("headers", HEADERS),
                items=("rows",),
                item_value="id",
                v_model=("picked",),
                show_select=True,
                select_strategy="single",
                density="compact",
                items_per_page=-1,
                hide_default_footer=True,
                # a click on a row picks it (click:row: an event trame does not wrap)
                raw_attrs=['@click:row="(event, row) => { picked = [row.item.id] }"'],
                classes="review-pairs",
            ),
        ):
            with v3.Template(raw_attrs=['v-slot:item.status="{ item }"']):
                html.Span(
                    "{{ item.status }}",
                    title=("item.error",),
                    classes=("item.status === 'failed' ? 'text-error font-weight-bold' : ''",),
                )
            with v3.Template(raw_attrs=['v-slot:item.dice="{ item }"']):
                html.Span("{{ item.dice === null ? '' : item.dice }}", title=("item.dice_each",))

    def _controls(self) -> None:
        html.Div("{{ message }}", v_if="message", classes="text-warning my-2 review-message")
        with v3.VRadioGroup(
            v_model=("overlay",),
            label="over the fixed image",
            density="compact",
            hide_details=True,
        ):
            for key, text in OVERLAYS.items():
                v3.VRadio(label=text, value=key, classes=f"review-overlay-{key}")
        v3.VSlider(
            v_model=("opacity",),
            min=0,
            max=1,
            step=0.05,
            label="opacity",
            density="compact",
            hide_details=True,
            thumb_label=True,
            classes="review-opacity mt-2",
        )
        v3.VCheckbox(
            v_model=("flicker",),
            label="flicker: fixed, moving, fixed...",
            density="compact",
            hide_details=True,
            v_show="overlay === 'moving'",
            classes="review-flicker",
        )
        with html.Div(v_show="overlay === 'jacobian'", classes="review-colorbar my-2"):
            html.Div(style=f"height: 14px; background: {jacobian_gradient_css()};")
            with html.Div(classes="d-flex justify-space-between text-caption"):
                low, high = JACOBIAN_RANGE
                html.Span(f"J ≤ {low:g} (folded)")
                html.Span(f"{(low + high) / 2:g}")
                html.Span(f"≥ {high:g}")
        html.Div("{{ folding }}", classes="text-caption review-folding")
        v3.VSelect(
            v_model=("labelmap",),
            items=("labelmaps",),
            label="warped labels (outlines)",
            clearable=True,
            density="compact",
            hide_details=True,
            v_show="labelmaps.length",
            classes="mt-3 review-labels",
        )
        v3.VCheckbox(
            v_model=("grid",),
            label="deformed grid (the forward transform)",
            density="compact",
            hide_details=True,
            v_show="has_grid",
            classes="review-grid",
        )
