"""Results survive File > Save: the module reads its outputs from a run's temporary folder, which
it deletes afterwards, so every result node must be one that Slicer's Save dialog writes out.

The dialog (Base/QTGUI/qSlicerSaveDataDialog.cxx) ticks a storable node when
``GetModifiedSinceRead()`` is true and leaves the others pointing at the file they were read
from. ``save_as_the_save_dialog_does`` follows that rule on Slicer's own libraries; the saved
scene is then loaded into a fresh scene and compared node by node.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import slicer
import vtk
from CoCycleRegLib import nodes as mrml
from CoCycleRegLib.pipeline import RegistrationRequest, RunFiles, import_results
from vtk.util import numpy_support

from cocyclereg.cli import main as cocyclereg_main


def storable_nodes(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def save_as_the_save_dialog_does(scene, folder) -> None:
    """Write every node modified since read into ``folder``, then the .mrml (the dialog's
    default ticks); nodes not modified keep their file names."""
    folder.mkdir(parents=True)
    for index, node in enumerate(storable_nodes(scene)):
        if not node.GetModifiedSinceRead():
            continue
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        extension = storage.GetDefaultWriteFileExtension()
        storage.SetFileName(str(folder / f"node{index}.{extension}"))
        assert storage.WriteData(node), node.GetName()
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()


def segment_points(node) -> np.ndarray:
    """World (RAS) centres of every voxel inside each segment, label value in column 3, sorted:
    the same for a segmentation whatever extent its labelmaps are stored on (Save crops them)."""
    segmentation = node.GetSegmentation()
    points = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        image = segment.GetRepresentation("Binary labelmap")
        extent = image.GetExtent()
        shape = [extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1]
        voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
        k, j, i = np.nonzero(voxels == segment.GetLabelValue())
        ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)])
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        ras = (slicer.util.arrayFromVTKMatrix(matrix) @ ijk)[:3].T
        points.append(np.column_stack([ras, np.full(len(ras), index)]))
    stacked = np.round(np.concatenate(points), 4)
    return stacked[np.lexsort(stacked.T[::-1])]


def node_data(node) -> np.ndarray:
    """The voxels of a volume, the displacement grid of a grid transform, or the segments'
    voxels of a segmentation."""
    if node.IsA("vtkMRMLVolumeNode"):
        return slicer.util.arrayFromVolume(node).copy()
    if node.IsA("vtkMRMLGridTransformNode"):
        return slicer.util.arrayFromGridTransform(node).copy()
    return segment_points(node)


@pytest.fixture(scope="module")
def outputs(case, model_file, tmp_path_factory) -> dict:
    """One ``cocyclereg register`` run's files (the files the module's process writes)."""
    folder = tmp_path_factory.mktemp("outputs")
    names = {
        "transform": "transform.h5",
        "inverse": "inverse.h5",
        "warped": "warped.nrrd",
        "jacobian": "jacobian.nrrd",
        "summary": "summary.json",
    }
    code = cocyclereg_main(
        [
            "register",
            *("--fixed", str(case["fixed"]), "--moving", str(case["moving"])),
            *("--model", str(model_file), "--no-affine", "--device", "cpu"),
            *("--transform", str(folder / names["transform"])),
            *("--inverse-transform", str(folder / names["inverse"])),
            *("--warped", str(folder / names["warped"])),
            *("--jacobian", str(folder / names["jacobian"])),
            *("--summary", str(folder / names["summary"])),
        ]
    )
    assert code == 0
    return {key: folder / name for key, name in names.items()}


def test_every_result_survives_save_and_reload(case, outputs, tmp_path):
    scene = slicer.vtkMRMLScene()
    fresh = slicer.vtkMRMLScene()
    try:
        fixed = mrml.load_volume(scene, case["fixed"], "fixed")
        moving = mrml.load_volume(scene, case["moving"], "moving")
        labels = mrml.load_volume(scene, case["moving_labels"], "labels", labelmap=True)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segments")
        segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentations.SetMRMLScene(scene)
        assert segmentations.ImportLabelmapToSegmentationNode(labels, segmentation)

        run = tmp_path / "run"  # the module's temporary folder, deleted after the import
        shutil.copytree(outputs["transform"].parent, run)
        files = RunFiles(
            *(run, run / "fixed.nrrd", run / "moving.nrrd", run / "transform.h5"),
            *(run / "inverse.h5", run / "warped.nrrd", run / "jacobian.nrrd"),
            run / "summary.json",
        )
        request = RegistrationRequest(
            fixed, moving, "model", labelmaps=[labels], segmentations=[segmentation]
        )
        results = import_results(scene, request, files)
        shutil.rmtree(run)

        for node in results.nodes():
            assert node.GetModifiedSinceRead(), f"Save would leave {node.GetName()} unticked"
        expected = {
            node.GetName(): (node.GetClassName(), node_data(node)) for node in results.nodes()
        }
        assert len(expected) == 6  # transform, inverse, warped, Jacobian, labelmap, segmentation

        save_as_the_save_dialog_does(scene, tmp_path / "saved")
        fresh.SetURL(str(tmp_path / "saved" / "scene.mrml"))
        assert fresh.Connect()
        for name, (class_name, data) in expected.items():
            node = fresh.GetFirstNodeByName(name)
            assert node is not None, f"{name} is missing from the reloaded scene"
            assert node.GetClassName() == class_name
            np.testing.assert_array_equal(node_data(node), data, err_msg=name)
        transform = fresh.GetFirstNodeByName(results.transform.GetName())
        assert transform.GetNodeReference(mrml.ROLE_MOVING).GetName() == "moving"
        assert transform.GetNodeReference(mrml.ROLE_FIXED).GetName() == "fixed"
    finally:
        fresh.Clear(1)
        scene.Clear(1)


def test_transforms_are_grid_transform_nodes_as_slicers_loader_makes(scene, outputs):
    """vtkSlicerTransformLogic::AddTransform makes a vtkMRMLGridTransformNode for a
    displacement field; the module's nodes are of the same class, so the Transforms module
    and node selectors filtering on it list them."""
    node = mrml.load_transform(scene, outputs["transform"], "forward")
    assert node.GetClassName() == "vtkMRMLGridTransformNode"
    assert slicer.util.arrayFromGridTransform(node).shape[-1] == 3
