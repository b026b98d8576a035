"""Inputs stay untouched and failed or cancelled runs leave the scene as it was: segmentation
copies are hardened while the originals stay bit for bit; a cancelled process is killed and a
failing one (or a failing import) adds no node."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from CoCycleRegLib import nodes as mrml
from CoCycleRegLib.pipeline import (
    RegistrationRequest,
    export_inputs,
    import_results,
    register_command,
    scene_node_ids,
)
from CoCycleRegLib.process import RegistrationProcess

from cocyclereg.cli import main as cocyclereg_main
from cocyclereg.geometry.displacement import displacement_transform, read_displacement_field
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.resample import resample_to_grid


def segmentation_from(scene, labelmap):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "moving segmentation")
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    assert logic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    return segmentation


def segment_layers(segmentation) -> dict:
    """Per segment: name, colour, label value, extent, image-to-world matrix and voxels."""
    content = {}
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentation().GetSegmentIDs(ids)
    for index in range(ids.GetNumberOfValues()):
        segment = segmentation.GetSegmentation().GetSegment(ids.GetValue(index))
        image = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        content[ids.GetValue(index)] = (
            segment.GetName(),
            segment.GetColor(),
            segment.GetLabelValue(),
            image.GetExtent(),
            tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4)),
            vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).copy(),
        )
    return content


@pytest.fixture(scope="module")
def transform_file(case, model_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("transform")
    path = folder / "t.h5"
    code = cocyclereg_main(
        [
            "register",
            *("--fixed", str(case["fixed"]), "--moving", str(case["moving"])),
            *("--model", str(model_file), "--transform", str(path), "--no-affine"),
            *("--device", "cpu"),
        ]
    )
    assert code == 0
    return path


def test_segmentations_are_warped_on_a_copy_and_the_original_is_unchanged(
    scene, case, transform_file
):
    import vtk.util.numpy_support  # noqa: F401 (segment_layers uses it)

    labels = mrml.load_volume(scene, case["moving_labels"], "labels", labelmap=True)
    original = segmentation_from(scene, labels)
    before, mtime = segment_layers(original), original.GetMTime()
    transform = mrml.load_transform(scene, transform_file, "forward")

    warped = mrml.harden_on_copy(scene, original, transform)

    after = segment_layers(original)
    assert original.GetMTime() == mtime and original.GetParentTransformNode() is None
    assert before.keys() == after.keys()
    for key in before:
        assert before[key][:5] == after[key][:5]
        assert np.array_equal(before[key][5], after[key][5])  # bit for bit
    assert warped.GetParentTransformNode() is None
    assert warped.GetDisplayNode() is not original.GetDisplayNode()
    # The hardened segments are the package's warp of the labels on their own grid.
    copy = segment_layers(warped)
    assert [v[0] for v in copy.values()] == [v[0] for v in before.values()]
    moving_labels = sitk.ReadImage(str(case["moving_labels"]))
    field = displacement_transform(read_displacement_field(transform_file))
    for name, _colour, value, extent, matrix, voxels in copy.values():
        m = np.asarray(matrix).reshape(4, 4)
        lps = np.diag([-1.0, -1.0, 1.0]) @ m[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        origin = np.diag([-1.0, -1.0, 1.0]) @ (m[:3, :3] @ extent[::2] + m[:3, 3])
        size = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        grid = Grid(tuple(size), tuple(spacing), tuple(origin), tuple((lps / spacing).ravel()))
        expected = sitk.GetArrayFromImage(resample_to_grid(moving_labels, grid, "label", field))
        ours = voxels.reshape(size[::-1]) == value
        theirs = expected == int(name.split("_")[-1])  # segments are named Label_<value>
        score = 2 * np.logical_and(ours, theirs).sum() / (ours.sum() + theirs.sum())
        print(f"segment {name}: Dice {score:.4f} vs package warp")
        assert score >= 0.99


def _request(scene, case, model_file, **options):
    fixed = mrml.load_volume(scene, case["fixed"], "fixed")
    moving = mrml.load_volume(scene, case["moving"], "moving")
    return RegistrationRequest(fixed=fixed, moving=moving, model_path=str(model_file), **options)


def test_cancel_kills_the_process_and_adds_nothing(scene, case, model_file, tmp_path):
    request = _request(scene, case, model_file, affine=True, cpu_only=True)
    before = scene_node_ids(scene)
    files = export_inputs(request, tmp_path / "run")
    process = RegistrationProcess(register_command(request, files), workdir=files.folder).start()
    time.sleep(1.0)
    assert process.running
    started = time.perf_counter()
    process.cancel()
    assert time.perf_counter() - started < 5 and not process.running
    assert process.cancelled and not process.succeeded
    process.cleanup()
    assert not files.folder.exists()
    assert scene_node_ids(scene) == before
    assert not files.transform.exists()


def test_a_failing_process_reports_why_and_adds_nothing(scene, case, model_file, tmp_path):
    request = _request(scene, case, model_file, moving_modality="ct", affine=False)
    before = scene_node_ids(scene)
    files = export_inputs(request, tmp_path / "run")
    process = RegistrationProcess(register_command(request, files), workdir=files.folder).start()
    assert process.wait(timeout=120) != 0
    process.poll()
    assert not process.succeeded
    assert "modality" in process.error_text() and "'ct'" in process.error_text()
    process.cleanup()
    assert scene_node_ids(scene) == before


def test_a_failing_import_removes_every_node_it_added(scene, case, transform_file, tmp_path):
    request = _request(scene, case, transform_file, affine=False)
    labels = mrml.load_volume(scene, case["moving_labels"], "labels", labelmap=True)
    request.labelmaps = [labels]
    files = export_inputs(request, tmp_path / "run")
    files.transform.write_bytes(transform_file.read_bytes())
    files.inverse.write_bytes(transform_file.read_bytes())
    files.warped.write_bytes((tmp_path / "run" / "moving.nrrd").read_bytes())
    files.jacobian.write_text("not an image")  # fails after both transforms and warped
    before = scene_node_ids(scene)
    with pytest.raises(OSError):
        import_results(scene, request, files)
    assert scene_node_ids(scene) == before
    assert labels.GetDisplayNode() is not None  # helpers of inputs survive the rollback
