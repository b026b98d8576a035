"""The rules of the module's panel between and during runs, free of Qt so they are tested on
Slicer's own libraries: one install or one registration at a time, the status line, the
finished run's results together with the request that made them, and the reset when the
scene closes.
"""

from __future__ import annotations

from pathlib import Path

READY = "Ready."


def chosen_path(value) -> str:
    """The model path held by the parameter node as text, ``""`` when none is chosen.

    The field is a ``pathlib.Path`` (the type Slicer's ctkPathLineEdit connector accepts),
    whose empty default is ``Path()``, that is ``"."``: that means "no model", never the
    current folder.
    """
    if value is None:
        return ""
    text = str(value)
    return "" if text in ("", ".") or Path(text) == Path() else text


def other_modality(modalities, moving: str | None) -> str | None:
    """The fixed volume's modality: the one of the model's two that the moving one is not."""
    if not moving or moving not in modalities:
        return None
    return modalities[1] if moving == modalities[0] else modalities[0]


class PanelState:
    """What the panel is doing and what it last did.

    - ``installing``: the status line of a dependency install under way, else None; Apply is
      disabled meanwhile (a second click would start a nested install).
    - ``running``: a registration process runs; Apply is Cancel.
    - ``outcome``: the last run's "Done"/"Failed"/"Cancelled" line, shown until the next run
      starts or the scene closes (the readiness check does not overwrite it).
    - ``results`` and ``request``: the finished run's nodes and the request that made them
      (Show Jacobian shows them over that run's fixed volume, whatever the panel shows now).
    """

    def __init__(self) -> None:
        self.installing: str | None = None
        self.running = False
        self.outcome: str | None = None
        self.results = None
        self.request = None

    def apply_enabled(self, reason: str | None) -> bool:
        if self.installing:
            return False
        return self.running or reason is None

    def status_text(self, reason: str | None) -> str:
        if self.installing:
            return self.installing
        if self.running:
            return "Registering (in a separate process; Cancel stops it)…"
        return reason or self.outcome or READY

    def install_started(self, status: str) -> bool:
        """Mark an install as under way; False when one already is (do not start another)."""
        if self.installing or self.running:
            return False
        self.installing = status
        return True

    def install_finished(self) -> None:
        self.installing = None

    def run_started(self) -> None:
        self.running = True
        self.outcome = None

    def run_finished(self, results, request) -> None:
        self.running = False
        self.results, self.request = results, request
        self.outcome = "Done: results are next to the moving volume."

    def run_failed(self, error) -> None:
        self.running = False
        self.outcome = f"Failed: {error}"

    def run_cancelled(self) -> None:
        self.running = False
        self.outcome = "Cancelled: nothing was added to the scene."

    def reset(self) -> None:
        """The scene closed: its nodes, and so these results, are gone."""
        self.__init__()

    def overlay(self, jacobian: bool):
        """:func:`overlay` of the finished run; None when there is none."""
        if self.results is None or self.request is None:
            return None
        return overlay(self.results, self.request, jacobian)


def overlay(results, request, jacobian: bool):
    """(background, foreground) nodes that show a run: its fixed volume under its warped
    volume or (``jacobian``) its Jacobian (whichever of the two it made, if only one)."""
    foreground = results.jacobian if jacobian else (results.warped or results.jacobian)
    return request.fixed, (foreground or results.warped)
