"""The module's whole logic path on Slicer's own libraries: volumes loaded into a real MRML
scene (one of them oblique and anisotropic), exported by Slicer, registered by
``cocyclereg register`` in a separate process, and the files read back by Slicer's storage
nodes. The result must warp exactly as the package's own outputs do."""

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
    check_request,
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

LABELS = (1, 2, 3)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def node_image(node, folder, name: str) -> sitk.Image:
    """A volume node as SimpleITK reads it after Slicer writes it (geometry in LPS)."""
    return sitk.ReadImage(mrml.write_volume(node, folder / f"{name}.nrrd"))


def volume_state(node) -> tuple:
    """Voxels, IJK-to-RAS matrix and modification time of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    elements = tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4))
    return slicer.util.arrayFromVolume(node).copy(), elements, node.GetMTime()


@pytest.fixture(scope="module")
def run(case, model_file, tmp_path_factory):
    """The module's path once: load, export, subprocess, import; with the package's own
    outputs for the same inputs as reference."""
    folder = tmp_path_factory.mktemp("module_run")
    scene = slicer.vtkMRMLScene()
    fixed = mrml.load_volume(scene, case["fixed"], "fixed T2")
    moving = mrml.load_volume(scene, case["moving"], "moving T1 oblique")
    labels = mrml.load_volume(scene, case["moving_labels"], "moving labels", labelmap=True)
    before = {
        "ids": scene_node_ids(scene),
        "fixed": volume_state(fixed),
        "moving": volume_state(moving),
        "labels": volume_state(labels),
    }
    request = RegistrationRequest(
        fixed=fixed,
        moving=moving,
        model_path=str(model_file),
        moving_modality="t1",
        fixed_modality="t2",
        affine=False,
        cpu_only=True,
        labelmaps=[labels],
    )
    started = time.perf_counter()
    files = export_inputs(request, folder / "work")
    process = RegistrationProcess(register_command(request, files), workdir=files.folder).start()
    assert process.wait(timeout=120) == 0, "\n".join(process.poll())
    lines = process.poll()
    results = import_results(scene, request, files)
    seconds = time.perf_counter() - started
    print(f"\nmodule path (export + subprocess + import): {seconds:.1f} s")

    reference = folder / "reference"
    reference.mkdir()
    code = cocyclereg_main(
        [
            "register",
            *("--fixed", str(case["fixed"]), "--moving", str(case["moving"])),
            *("--model", str(model_file), "--transform", str(reference / "t.h5")),
            *("--labels", str(case["moving_labels"])),
            *("--warped-labels", str(reference / "labels.nii.gz")),
            *("--warped", str(reference / "warped.nii.gz"), "--no-affine", "--device", "cpu"),
        ]
    )
    assert code == 0
    yield {
        "scene": scene,
        "fixed": fixed,
        "moving": moving,
        "labels": labels,
        "request": request,
        "files": files,
        "process": process,
        "lines": lines,
        "results": results,
        "before": before,
        "reference": reference,
        "folder": folder,
        "case": case,
    }
    process.cleanup()
    scene.Clear(1)


def test_process_output_streams_and_reports_folding(run):
    assert any("registered" in line for line in run["lines"])
    results = run["results"]
    assert results.folding_voxels == 0 and results.total_voxels > 0
    assert "Folding (J ≤ 0): 0 of" in results.folding_text()
    moved = results.summary["deformable_displacement_mm"]
    assert results.motion_text().startswith(
        f"Deformable motion: mean {moved['mean']:.2f} mm, max {moved['max']:.2f} mm"
    )
    assert 0 < moved["mean"] <= moved["max"] + 1e-9 and moved["p95"] <= moved["max"] + 1e-9


def test_warped_labelmap_matches_the_packages_warped_labels(run):
    """Slicer's transform node, applied to a copy of the labelmap, gives the package's own
    --warped-labels (Dice per label; both nearest neighbour on the fixed grid)."""
    warped = run["results"].labelmaps[0]
    assert mrml.same_geometry(warped, run["fixed"])
    assert warped.GetParentTransformNode() is None
    ours = slicer.util.arrayFromVolume(warped)
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(run["reference"] / "labels.nii.gz")))
    scores = {label: dice(ours == label, theirs == label) for label in LABELS}
    print(f"\nDice per label, warped labelmap vs package: {scores}")
    assert min(scores.values()) >= 0.99, scores


def test_hardening_on_a_labelmap_copy_is_the_packages_warp(run):
    """Slicer's own hardenTransform on a labelmap copy keeps the copy's grid; on that grid it
    equals the package's resampling of the moving labels through the same file."""
    scene, labels = run["scene"], run["labels"]
    before = scene_node_ids(scene)
    hardened = mrml.harden_on_copy(scene, labels, run["results"].transform)
    try:
        assert hardened.GetParentTransformNode() is None
        image = node_image(hardened, run["folder"], "hardened")
        expected = resample_to_grid(
            sitk.ReadImage(str(run["case"]["moving_labels"])),
            Grid.from_image(image),
            "label",
            displacement_transform(read_displacement_field(run["files"].transform)),
        )
        ours, theirs = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected)
        scores = {label: dice(ours == label, theirs == label) for label in LABELS}
        print(f"\nDice per label, hardened labelmap copy vs package warp: {scores}")
        assert min(scores.values()) >= 0.99, scores
    finally:
        mrml.remove_nodes(scene, [hardened])
    assert scene_node_ids(scene) == before


def test_transform_node_is_the_resampling_transform_of_the_file(run):
    """FromParent of the node maps fixed RAS points to the moving RAS points SimpleITK's
    transform gives for the same LPS points (so Slicer applies the file unchanged)."""
    transform = sitk.ReadTransform(str(run["files"].transform))
    from_parent = run["results"].transform.GetTransformFromParent()
    fixed = sitk.ReadImage(str(run["files"].fixed))
    rng = np.random.default_rng(0)
    size = np.asarray(fixed.GetSize())
    for index in rng.integers(0, size, size=(50, 3)):
        lps = np.asarray(fixed.TransformIndexToPhysicalPoint([int(i) for i in index]))
        expected = np.asarray(transform.TransformPoint(tuple(lps))) * [-1, -1, 1]
        got = np.asarray(from_parent.TransformPoint(tuple(lps * [-1, -1, 1])))
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_jacobian_volume_is_on_the_fixed_grid_with_a_diverging_map(run):
    jacobian = run["results"].jacobian
    assert mrml.same_geometry(jacobian, run["fixed"])
    display = jacobian.GetDisplayNode()
    assert display.GetColorNode().GetName() == mrml.JACOBIAN_COLOR_NAME
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == mrml.JACOBIAN_RANGE
    function = display.GetColorNode().GetColorTransferFunction()
    centre = function.GetColor(1.0)
    assert max(centre) - min(centre) < 0.05  # neutral grey-white at J = 1
    assert function.GetColor(0.0)[2] > function.GetColor(0.0)[0]  # blue below 1
    assert function.GetColor(2.0)[0] > function.GetColor(2.0)[2]  # red above 1


def test_outputs_are_tagged_and_in_the_moving_volumes_folder(run):
    results, fixed, moving = run["results"], run["fixed"], run["moving"]
    forward, inverse = results.transform, results.inverse
    assert forward.GetNodeReference(mrml.ROLE_MOVING) is moving
    assert forward.GetNodeReference(mrml.ROLE_FIXED) is fixed
    assert inverse.GetNodeReference(mrml.ROLE_MOVING) is fixed
    assert inverse.GetNodeReference(mrml.ROLE_FIXED) is moving
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(run["scene"])
    folder = mrml.folder_item_of(run["scene"], moving)
    for node in results.nodes():
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == folder
    assert mrml.same_geometry(results.warped, fixed)
    warped = slicer.util.arrayFromVolume(results.warped).astype(np.float64)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(run["reference"] / "warped.nii.gz")))
    assert np.corrcoef(warped.ravel(), reference.ravel().astype(np.float64))[0, 1] > 0.999


def test_inputs_are_untouched(run):
    for name in ("fixed", "moving", "labels"):
        array, matrix, mtime = run["before"][name]
        node = run[name]
        assert np.array_equal(slicer.util.arrayFromVolume(node), array)
        after = volume_state(node)
        assert after[1] == matrix and after[2] == mtime, name
        assert node.GetParentTransformNode() is None


def test_result_renders_to_a_png(run, tmp_path):
    """Fixed | fixed + warped | fixed + Jacobian overlay, from the MRML nodes (see
    CoCycleRegLib/snapshot.py for why numpy composes the slice, not vtkMRMLSliceLogic).
    Set COCYCLEREG_SCREENSHOT to a path to keep the picture (README)."""
    import os

    from CoCycleRegLib.snapshot import render_result_png

    results = run["results"]
    target = os.environ.get("COCYCLEREG_SCREENSHOT") or tmp_path / "result.png"
    render_result_png(run["fixed"], results.warped, results.jacobian, target, zoom=3)
    png = sitk.ReadImage(str(target))
    size = slicer.util.arrayFromVolume(run["fixed"]).shape
    assert png.GetSize() == (3 * (3 * size[2] + 8), 3 * size[1])
    pixels = sitk.GetArrayFromImage(png).astype(float)
    assert pixels.std() > 10  # an image, not a blank


def test_affine_run_through_the_module_path(case, model_file, tmp_path):
    """With the affine pre-alignment on (folded into the field by the package), the node still
    warps a labelmap copy exactly as the package's resampling through the same file."""
    scene = slicer.vtkMRMLScene()
    try:
        fixed = mrml.load_volume(scene, case["fixed"], "fixed")
        moving = mrml.load_volume(scene, case["moving"], "moving")
        labels = mrml.load_volume(scene, case["moving_labels"], "labels", labelmap=True)
        request = RegistrationRequest(
            fixed, moving, str(model_file), affine=True, cpu_only=True, labelmaps=[labels]
        )
        request.inverse = request.warped = False
        files = export_inputs(request, tmp_path / "work")
        process = RegistrationProcess(register_command(request, files)).start()
        assert process.wait(timeout=300) == 0, "\n".join(process.poll())
        results = import_results(scene, request, files)
        assert results.inverse is None and results.warped is None
        assert json_affine(files) is not None
        expected = resample_to_grid(
            sitk.ReadImage(str(case["moving_labels"])),
            Grid.from_image(sitk.ReadImage(str(case["fixed"]))),
            "label",
            displacement_transform(read_displacement_field(files.transform)),
        )
        ours = slicer.util.arrayFromVolume(results.labelmaps[0])
        theirs = sitk.GetArrayFromImage(expected)
        scores = {label: dice(ours == label, theirs == label) for label in LABELS}
        print(f"\nDice per label with affine, warped labelmap vs package warp: {scores}")
        assert min(scores.values()) >= 0.99, scores
    finally:
        scene.Clear(1)


def json_affine(files):
    import json

    return json.loads(files.summary.read_text())["affine"]


@pytest.mark.parametrize("refine", [True, False])
@pytest.mark.parametrize("network", [True, False, None])
def test_the_refine_and_network_switches_reach_the_package_command_line(tmp_path, refine, network):
    """Refine off: ``--refine-steps 0 --fine-steps 0`` (network only); on: the model's
    recommendation (no option). Network on/off: ``--network``/``--no-network``; unset: the model's
    recommendation (no option). The module's command must parse with the package's own
    parser."""
    from CoCycleRegLib.pipeline import RunFiles

    from cocyclereg.cli import build_parser

    files = RunFiles(
        *(tmp_path, tmp_path / "f.nrrd", tmp_path / "m.nrrd", tmp_path / "t.h5"),
        *(None, None, None, tmp_path / "s.json"),
    )
    request = RegistrationRequest(None, None, "model.cocyclereg", refine=refine, network=network)
    command = register_command(request, files)
    assert command[1:4] == ["-m", "cocyclereg", "register"]
    arguments = build_parser().parse_args(command[3:])
    assert arguments.refine_steps == (None if refine else 0)
    assert arguments.fine_steps == (None if refine else 0)
    assert arguments.network is network


def test_refine_off_with_the_network_off_is_refused_before_it_runs(case, model_file):
    """Without the refinement and without the network nothing deformable would run: the
    result would be the pre-alignment alone, reported as done. Apply says why instead."""
    scene = slicer.vtkMRMLScene()
    fixed = mrml.load_volume(scene, case["fixed"], "fixed T2")
    moving = mrml.load_volume(scene, case["moving"], "moving T1 oblique")
    reasons = {
        (refine, network): check_request(
            RegistrationRequest(fixed, moving, str(model_file), refine=refine, network=network)
        )
        for refine in (True, False)
        for network in (True, False, None)
    }
    assert "Neither the network nor the refinement" in reasons[(False, False)]
    assert all(reason is None for key, reason in reasons.items() if key != (False, False))
    scene.Clear(1)


def test_only_a_plain_scalar_volume_is_taken_as_an_input(case):
    """A labelmap or a vector volume is a scalar-volume subclass that the selectors do not
    list: it is never the default fixed volume, and Apply says why it cannot be an input."""
    scene = slicer.vtkMRMLScene()
    labels = mrml.load_volume(scene, case["moving_labels"], "labels", labelmap=True)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    vector.SetAndObserveImageData(image)
    assert mrml.first_registrable_volume(scene) is None
    fixed = mrml.load_volume(scene, case["fixed"], "fixed T2")
    assert mrml.first_registrable_volume(scene) is fixed
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is labels  # what it used
    for node, expected in ((labels, "vtkMRMLLabelMapVolumeNode"), (vector, "vtkMRMLVector")):
        with pytest.raises(mrml.SceneError, match=expected):
            mrml.check_volume_input(node, "moving")
    mrml.check_volume_input(fixed, "fixed")
    scene.Clear(1)


def test_the_process_output_reaches_the_log_as_written_whatever_the_system_encoding(tmp_path):
    """The module decodes the process's output as UTF-8; the process must write UTF-8 even
    where the system's encoding is another (a Windows code page, here forced to Latin-1)."""
    import os
    import sys

    from CoCycleRegLib.pipeline import process_environment

    name = "Ségolène_脑"
    request = RegistrationRequest(None, None, "model.cocyclereg", cpu_only=True)
    environment = process_environment(request, {**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert environment["CUDA_VISIBLE_DEVICES"] == "-1"
    command = [sys.executable, "-c", f"print({name!r})"]
    process = RegistrationProcess(command, env=environment, workdir=tmp_path / "w").start()
    assert process.wait(60) == 0
    assert name in process.poll()
