"""MRML work of the CoCycleReg module: plain functions that take a scene and nodes.

Nothing here imports Qt or needs the Slicer application, so it runs on Slicer's own libraries
(``slicer-core``) in tests. Files are read and written through Slicer's storage nodes, so the
RAS (MRML) <-> LPS (files) conversion is Slicer's own.

Transform direction: the ``cocyclereg`` transform file maps fixed-space points to the
moving-space points to sample (resampling direction). Read by a transform storage node it
becomes the node's TransformFromParent, so the node placed as the parent of the moving volume
shows the moving image in fixed space, and hardening it resamples the moving data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import slicer
import vtk

ROLE_MOVING = "spatialRegistrationMoving"
ROLE_FIXED = "spatialRegistrationFixed"
JACOBIAN_COLOR_NAME = "CoCycleReg Jacobian (diverging, centre 1)"
JACOBIAN_RANGE = (0.0, 2.0)


class SceneError(ValueError):
    """An input node cannot be used as it is (no image data, under a transform...)."""


def _storage_node_for(node, path: str):
    if node.IsA("vtkMRMLTransformNode"):
        storage = slicer.vtkMRMLTransformStorageNode()
    elif node.IsA("vtkMRMLVolumeNode"):
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    else:
        raise SceneError(f"{node.GetName()}: no storage for {node.GetClassName()}")
    storage.SetFileName(os.fspath(path))
    return storage


def is_registrable_volume(node) -> bool:
    """A plain scalar volume: not one of its subclasses (labelmap, vector/RGB, diffusion),
    which the volume selectors do not list and the registration cannot take."""
    return node is not None and node.GetClassName() == "vtkMRMLScalarVolumeNode"


def first_registrable_volume(scene):
    """The scene's first plain scalar volume (the default fixed volume), or None."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if is_registrable_volume(node):
            return node
    return None


def check_volume_input(node, role: str) -> None:
    """Refuse volumes that would be exported wrongly: empty, not a plain scalar volume
    (labelmap, vector, diffusion), multi-component, or placed under a transform."""
    if node is None:
        raise SceneError(f"Select the {role} volume.")
    if not is_registrable_volume(node):
        raise SceneError(
            f"The {role} volume '{node.GetName()}' is a {node.GetClassName()}, not a scalar "
            "image volume: choose an MRI or CT volume."
        )
    if node.GetImageData() is None or node.GetImageData().GetNumberOfPoints() == 0:
        raise SceneError(f"The {role} volume '{node.GetName()}' has no image data.")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise SceneError(
            f"The {role} volume '{node.GetName()}' has "
            f"{node.GetImageData().GetNumberOfScalarComponents()} components per voxel: "
            "registration needs a single-component (grey-scale) volume."
        )
    if node.GetParentTransformNode() is not None:
        raise SceneError(
            f"The {role} volume '{node.GetName()}' is under the transform "
            f"'{node.GetParentTransformNode().GetName()}': harden or remove it first, "
            "so the registration sees the volume where it is displayed."
        )


def write_volume(node, path: str | os.PathLike) -> str:
    """Write a scalar or labelmap volume node to ``path`` (NRRD/NIfTI) without changing the
    node or the scene: the storage node is not added to the scene."""
    path = os.fspath(path)
    storage = _storage_node_for(node, path)
    storage.SetUseCompression(0)
    if not storage.WriteData(node):
        raise OSError(f"Slicer could not write '{node.GetName()}' to {path}")
    return path


def _add_storable(scene, node_class: str, name: str, path: str, temporary: bool = False):
    """Read ``path`` into a new node of ``node_class``; the node is added to the scene only
    when the read succeeds.

    ``temporary``: the file is about to be deleted (a run's temporary folder). Slicer then keeps
    the node marked modified since read (``ReadData(node, temporaryFile=True)``), so Save
    writes its data next to the scene instead of pointing the .mrml at the deleted file.
    """
    node = scene.CreateNodeByClass(node_class)
    node.UnRegister(None)  # CreateNodeByClass hands back a reference we own
    node.SetName(name)
    storage = _storage_node_for(node, path)
    scene.AddNode(node)
    scene.AddNode(storage)
    if not storage.ReadData(node, temporary):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise OSError(f"Slicer could not read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def load_volume(
    scene, path, name: str | None = None, labelmap: bool = False, temporary: bool = False
):
    """A scalar (or labelmap) volume node read from a file, with display node (``temporary``:
    see :func:`_add_storable`)."""
    path = os.fspath(path)
    name = name or os.path.basename(path).split(".")[0]
    node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = _add_storable(scene, node_class, name, path, temporary)
    node.CreateDefaultDisplayNodes()
    return node


def load_transform(scene, path, name: str, temporary: bool = False):
    """A grid transform node (``vtkMRMLGridTransformNode``, the class Slicer's own loader makes
    for a displacement field) read from an ITK transform file (``.h5``) by Slicer's storage
    node (``temporary``: see :func:`_add_storable`)."""
    return _add_storable(scene, "vtkMRMLGridTransformNode", name, os.fspath(path), temporary)


def tag_registration_roles(transform, moving, fixed) -> None:
    """Record which volume the transform moves and which it aligns to."""
    transform.SetNodeReferenceID(ROLE_MOVING, moving.GetID())
    transform.SetNodeReferenceID(ROLE_FIXED, fixed.GetID())


def folder_item_of(scene, node) -> int:
    """The subject-hierarchy item that holds ``node`` (a folder, study, or the scene)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node)
    return hierarchy.GetItemParent(item) if item else hierarchy.GetSceneItemID()


def place_in_folder(scene, nodes: Iterable, folder_item: int) -> None:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if not item:
            item = hierarchy.CreateItem(folder_item, node)
        hierarchy.SetItemParent(item, folder_item)


def _volumes_logic(scene):
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    return logic


def warp_labelmap(scene, labelmap, transform, fixed, name: str | None = None):
    """A copy of ``labelmap`` warped through ``transform`` onto the fixed volume's grid.

    The copy is placed under the transform and its transform hardened by resampling onto the
    fixed grid (nearest neighbour, as Slicer resamples labelmaps): voxel for voxel the warp the
    package applies. ``labelmap`` itself is not touched.
    """
    logic = _volumes_logic(scene)
    copy = logic.CloneVolume(scene, labelmap, f"{labelmap.GetName()} (copy)")
    try:
        copy.SetAndObserveTransformNodeID(transform.GetID())
        warped = logic.ResampleVolumeToReferenceVolume(copy, fixed)
    finally:
        _remove_with_helpers(scene, copy)
    if warped is None:
        raise RuntimeError(f"Slicer could not resample '{labelmap.GetName()}'")
    warped.SetAndObserveTransformNodeID(None)  # the data is already warped
    warped.SetName(name or f"{labelmap.GetName()} warped")
    if labelmap.GetDisplayNode() is not None and labelmap.GetDisplayNode().GetColorNodeID():
        warped.CreateDefaultDisplayNodes()
        warped.GetDisplayNode().SetAndObserveColorNodeID(labelmap.GetDisplayNode().GetColorNodeID())
    return warped


def harden_on_copy(scene, node, transform, name: str | None = None):
    """A copy of ``node`` (segmentation or volume) with ``transform`` hardened on it.

    Segmentations keep their segments, names and colours; hardening a non-linear transform
    resamples their binary labelmaps on a grid that covers the warped segments.
    """
    name = name or f"{node.GetName()} warped"
    if node.IsA("vtkMRMLVolumeNode"):
        copy = _volumes_logic(scene).CloneVolume(scene, node, name)
    else:
        copy = scene.AddNewNodeByClass(node.GetClassName(), name)
    try:
        if not node.IsA("vtkMRMLVolumeNode"):
            copy.CopyContent(node, True)  # the data, deep; no references to node's helpers
            copy.CreateDefaultDisplayNodes()
            source_display, display = node.GetDisplayNode(), copy.GetDisplayNode()
            if source_display is not None and display is not None:
                display.CopyContent(source_display, True)
        copy.SetAndObserveTransformNodeID(transform.GetID())
        if not slicer.vtkSlicerTransformLogic.hardenTransform(copy):
            raise RuntimeError(f"Slicer could not harden the transform on '{node.GetName()}'")
    except Exception:
        _remove_with_helpers(scene, copy)
        raise
    return copy


def jacobian_color_node(scene):
    """A diverging colour map for J on [0, 2]: blue (shrink) - white at J = 1 - red (grow)."""
    existing = scene.GetFirstNodeByName(JACOBIAN_COLOR_NAME)
    if existing is not None and existing.IsA("vtkMRMLProceduralColorNode"):
        return existing
    color = scene.AddNewNodeByClass("vtkMRMLProceduralColorNode", JACOBIAN_COLOR_NAME)
    color.SetAttribute("Category", "CoCycleReg")
    function = vtk.vtkColorTransferFunction()
    function.SetColorSpaceToDiverging()
    low, high = JACOBIAN_RANGE
    function.AddRGBPoint(low, 0.23, 0.30, 0.75)
    function.AddRGBPoint((low + high) / 2, 0.87, 0.87, 0.87)
    function.AddRGBPoint(high, 0.71, 0.02, 0.15)
    function.ClampingOn()
    color.SetAndObserveColorTransferFunction(function)
    return color


def load_jacobian(scene, path, fixed, name: str | None = None, temporary: bool = False):
    """The Jacobian determinant volume on the fixed grid, displayed with the diverging map
    centred at 1 over [0, 2] (J <= 0, folding, shows in the darkest blue)."""
    node = load_volume(scene, path, name or f"{fixed.GetName()} Jacobian", temporary=temporary)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(jacobian_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*JACOBIAN_RANGE)
    return node


def same_geometry(a, b, tolerance: float = 1e-4) -> bool:
    """True when two volume nodes have the same dimensions and IJK-to-RAS matrix."""
    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetIJKToRASMatrix(ma)
    b.GetIJKToRASMatrix(mb)
    close = all(
        abs(ma.GetElement(r, c) - mb.GetElement(r, c)) <= tolerance
        for r in range(4)
        for c in range(4)
    )
    return close and a.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()


def _remove_with_helpers(scene, node) -> None:
    """Remove a node with its display and storage nodes."""
    if node is None or node.GetScene() is None:
        return
    helpers = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetNumberOfStorageNodes"):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is None or helper.GetScene() is None:
            continue
        if not _is_referenced(scene, helper.GetID()):  # never a helper another node uses
            scene.RemoveNode(helper)


def _is_referenced(scene, node_id: str) -> bool:
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        for r in range(node.GetNumberOfNodeReferenceRoles()):
            role = node.GetNthNodeReferenceRole(r)
            for k in range(node.GetNumberOfNodeReferences(role)):
                if node.GetNthNodeReferenceID(role, k) == node_id:
                    return True
    return False


def remove_nodes(scene, nodes: Iterable) -> None:
    """Remove nodes (and their display and storage nodes), newest first."""
    for node in reversed(list(nodes)):
        _remove_with_helpers(scene, node)
