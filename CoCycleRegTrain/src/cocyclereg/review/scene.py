"""Loading one registration into a Slicer MRML scene, with Slicer's own readers.

As the Slicer module does it (``CoCycleReg/CoCycleRegLib/nodes.py``): volumes are read by
volume storage nodes and the transform file by a transform storage node into a
``vtkMRMLGridTransformNode``. The transform maps fixed-space points to the moving-space points
to sample, so it becomes the node's TransformFromParent and the moving volume placed under it
is shown on the fixed image the way Slicer shows it: Slicer resamples it through the grid
transform in the slice views. Where the moving input is gone (a folder from another machine),
the package's warped image stands in for it, under no transform.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import slicer
import vtk

from cocyclereg.review.results import PairFiles

JACOBIAN_COLOR_NAME = "CoCycleReg Jacobian (diverging, centre 1)"
JACOBIAN_RANGE = (0.0, 2.0)  # white at J = 1; J <= 0 (folding) in the darkest blue
# Control points of the Jacobian colour map: (J, red, green, blue), colours in [0, 1].
JACOBIAN_COLORS = ((0.0, 0.23, 0.30, 0.75), (1.0, 0.87, 0.87, 0.87), (2.0, 0.71, 0.02, 0.15))


@dataclass
class PairNodes:
    """The nodes of one pair in the scene. ``moving`` is the moving input under
    ``transform``, or the package's warped image (``moving_is_warped``) when the input is not
    found; ``labels`` maps each labelmap's name to its warped labelmap node."""

    fixed: object
    moving: object | None
    transform: object | None
    jacobian: object | None
    labels: dict[str, object] = field(default_factory=dict)
    moving_is_warped: bool = False
    jacobian_legend: object | None = None  # Slicer's colour legend of the Jacobian

    def nodes(self) -> list:
        listed = [self.fixed, self.moving, self.transform, self.jacobian, *self.labels.values()]
        return [node for node in listed if node is not None]


def _read(scene, node_class: str, storage_class: str, path, name: str):
    """A new node of ``node_class`` read from ``path`` by a ``storage_class`` storage node;
    raises ``OSError`` naming the file when Slicer cannot read it."""
    node = scene.AddNewNodeByClass(node_class, name)
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(os.fspath(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise OSError(f"Slicer could not read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def read_volume(scene, path, name: str, labelmap: bool = False):
    """A scalar (or labelmap) volume node with its display node, read from ``path``."""
    node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = _read(scene, node_class, "vtkMRMLVolumeArchetypeStorageNode", path, name)
    node.CreateDefaultDisplayNodes()
    return node


def read_transform(scene, path, name: str):
    """The grid transform node Slicer makes of an ITK displacement-field file."""
    return _read(scene, "vtkMRMLGridTransformNode", "vtkMRMLTransformStorageNode", path, name)


def jacobian_color_node(scene):
    """The diverging colour map of the Jacobian over ``JACOBIAN_RANGE`` (one per scene)."""
    existing = scene.GetFirstNodeByName(JACOBIAN_COLOR_NAME)
    if existing is not None:
        return existing
    color = scene.AddNewNodeByClass("vtkMRMLProceduralColorNode", JACOBIAN_COLOR_NAME)
    function = vtk.vtkColorTransferFunction()
    function.SetColorSpaceToDiverging()
    for value, red, green, blue in JACOBIAN_COLORS:
        function.AddRGBPoint(value, red, green, blue)
    function.ClampingOn()
    color.SetAndObserveColorTransferFunction(function)
    return color


def _show_jacobian(scene, node):
    """Colour the Jacobian with the diverging map; returns its Slicer colour legend."""
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(jacobian_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*JACOBIAN_RANGE)
    display.SetInterpolate(False)  # one colour per voxel: a folded voxel stays visible
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
    legend.SetTitleText("J")
    legend.SetVisibility(True)
    return legend


def load_pair(scene, files: PairFiles, name: str) -> PairNodes:
    """Read one registration's files into ``scene``; node names start with ``name``. The
    fixed image is required; any other file may be missing (its node is then ``None``)."""
    fixed = read_volume(scene, files.fixed, f"{name} fixed")
    nodes = PairNodes(fixed, None, None, None)
    try:
        if files.transform is not None:
            nodes.transform = read_transform(scene, files.transform, f"{name} transform")
        if files.moving is not None and nodes.transform is not None:
            nodes.moving = read_volume(scene, files.moving, f"{name} moving")
            nodes.moving.SetAndObserveTransformNodeID(nodes.transform.GetID())
        elif files.warped is not None:
            nodes.moving = read_volume(scene, files.warped, f"{name} warped")
            nodes.moving_is_warped = True
        if files.jacobian is not None:
            nodes.jacobian = read_volume(scene, files.jacobian, f"{name} Jacobian")
            nodes.jacobian_legend = _show_jacobian(scene, nodes.jacobian)
        for label, path in files.warped_labels.items():
            nodes.labels[label] = read_volume(scene, path, f"{name} {label}", labelmap=True)
    except Exception:
        remove_pair(scene, nodes)
        raise
    return nodes


def remove_pair(scene, nodes: PairNodes) -> None:
    """Remove a pair's nodes with their display and storage nodes."""
    for node in nodes.nodes():
        helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and helper.GetScene() is not None:
                scene.RemoveNode(helper)
