"""The ``cocyclereg`` command line: help, resample and jacobian, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_GRIDS, image_on, smooth_flow, smooth_volume

from cocyclereg.cli import main
from cocyclereg.geometry.displacement import (
    displacement_field_image,
    displacement_transform,
    voxel_flow_to_displacement_mm,
    write_displacement_transform,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import folding_stats, jacobian_determinant


def test_help_runs_as_an_installed_command():
    result = subprocess.run(
        [sys.executable, "-m", "cocyclereg", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "resample" in result.stdout and "jacobian" in result.stdout
    assert "fixed image to the point of the moving image" in result.stdout


def test_the_program_exits_with_each_commands_code_and_its_output_complete(tmp_path):
    """``python -m cocyclereg`` (the console script's ``run``): the fast exit after a command
    keeps its exit code, its printed lines and its written files."""
    grid = TEST_GRIDS["oblique-flip-x"]
    field = displacement_field_image(voxel_flow_to_displacement_mm(smooth_flow(grid), grid), grid)
    write_displacement_transform(field, tmp_path / "warp.h5")
    program = [sys.executable, "-m", "cocyclereg", "jacobian", "--transform"]
    done = subprocess.run(
        [*program, str(tmp_path / "warp.h5"), "--summary", str(tmp_path / "j.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "J <= 0" in done.stdout
    assert json.loads((tmp_path / "j.json").read_text())["total_voxels"] == np.prod(grid.size)
    failed = subprocess.run(
        [*program, str(tmp_path / "absent.h5")], capture_output=True, text=True, check=False
    )
    assert failed.returncode == 2 and "not found" in failed.stderr


def test_resample_through_a_transform_and_jacobian(tmp_path, capsys):
    grid = TEST_GRIDS["oblique-flip-x"]
    moving = image_on(grid, smooth_volume(grid))
    sitk.WriteImage(moving, str(tmp_path / "moving.nrrd"))
    field = displacement_field_image(voxel_flow_to_displacement_mm(smooth_flow(grid), grid), grid)
    write_displacement_transform(field, tmp_path / "warp.h5")

    assert (
        main(
            [
                "resample",
                "--input",
                str(tmp_path / "moving.nrrd"),
                "--reference",
                str(tmp_path / "moving.nrrd"),
                "--transform",
                str(tmp_path / "warp.h5"),
                "--output",
                str(tmp_path / "warped.nii.gz"),
            ]
        )
        == 0
    )
    warped = sitk.ReadImage(str(tmp_path / "warped.nii.gz"))
    expected = sitk.Resample(
        moving,
        moving,
        displacement_transform(field),
        sitk.sitkLinear,
        float(smooth_volume(grid).min()),
        sitk.sitkFloat32,
    )
    assert Grid.from_image(warped).is_close(grid)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(expected), atol=1e-6
    )

    assert (
        main(
            [
                "jacobian",
                "--transform",
                str(tmp_path / "warp.h5"),
                "--output",
                str(tmp_path / "jacobian.nii.gz"),
                "--summary",
                str(tmp_path / "j.json"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "j.json").read_text())
    expected_stats = folding_stats(jacobian_determinant(field))
    assert summary["folding_voxels"] == expected_stats.folding_voxels
    assert summary["total_voxels"] == int(np.prod(grid.size))
    assert "J <= 0 in" in capsys.readouterr().out


def test_bad_input_gives_a_message_and_exit_code_without_output(tmp_path, capsys):
    code = main(
        [
            "resample",
            "--input",
            str(tmp_path / "absent.nii.gz"),
            "--reference",
            str(tmp_path / "absent.nii.gz"),
            "--output",
            str(tmp_path / "out.nii.gz"),
        ]
    )
    assert code == 2
    assert "File not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_register_and_demo_without_a_bundled_model_say_so_and_write_nothing(
    tmp_path, monkeypatch, capsys
):
    import cocyclereg.resources as resources

    monkeypatch.setattr(resources, "MODELS", tmp_path / "models")
    grid = TEST_GRIDS["identity"]
    image = tmp_path / "f.nii.gz"
    sitk.WriteImage(image_on(grid, smooth_volume(grid)), str(image))
    code = main(
        [
            "register",
            "--fixed",
            str(image),
            "--moving",
            str(image),
            "--transform",
            str(tmp_path / "t.h5"),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "bundled model 'brain-t1t2' is not installed" in error and "--model" in error
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 2
    assert "bundled model 'brain-t1t2' is not installed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz"]


def test_register_help_names_the_default_model_and_demo_is_a_command(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["register", "--help"])
    assert "default: the bundled brain T1/T2" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = capsys.readouterr().out
    assert "--no-figure" in help_text and "./cocyclereg-demo" in help_text


def test_register_checks_every_output_path_before_the_first_stage(tmp_path, capsys):
    """Unsupported type, missing folder, output given twice or onto an input, a folder: each
    refused before any stage runs (no 'stage:' line), naming the option and the user's path,
    never a temporary name; nothing written."""
    grid = TEST_GRIDS["identity"]
    image = tmp_path / "f.nii.gz"
    sitk.WriteImage(image_on(grid, smooth_volume(grid)), str(image))
    (tmp_path / "folder.h5").mkdir()
    base = ["register", "--fixed", str(image), "--moving", str(image)]
    transform, tfm, png = tmp_path / "t.h5", tmp_path / "x.tfm", tmp_path / "w.png"
    cases = [
        (["--transform", tfm], f"--transform {tfm}: .tfm is not a file type transform outputs"),
        (["--transform", transform, "--warped", png], f"--warped {png}: .png is not a file type"),
        (["--transform", tmp_path / "no" / "t.h5"], f"the folder {tmp_path / 'no'} does not"),
        (
            ["--transform", transform, "--inverse-transform", transform],
            f"--inverse-transform {transform} is also given to --transform",
        ),
        (["--transform", transform, "--warped", image], f"--warped {image} is one of the inputs"),
        (["--transform", tmp_path / "folder.h5"], f"--transform {tmp_path / 'folder.h5'} is a"),
    ]
    for options, expected in cases:
        assert main([*base, *map(str, options)]) == 2, options
        error = capsys.readouterr().err
        assert expected in " ".join(error.split()), error
        assert "stage:" not in error and ".partial" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz", "folder.h5"]


def test_resample_jacobian_and_evaluate_never_overwrite_their_inputs(tmp_path, capsys):
    grid = TEST_GRIDS["oblique-flip-x"]
    moving, warp = tmp_path / "moving.nrrd", tmp_path / "warp.h5"
    labels = tmp_path / "labels.nii.gz"
    sitk.WriteImage(image_on(grid, smooth_volume(grid)), str(moving))
    sitk.WriteImage(image_on(grid, (smooth_volume(grid) > 0).astype(np.uint8)), str(labels))
    field = displacement_field_image(voxel_flow_to_displacement_mm(smooth_flow(grid), grid), grid)
    write_displacement_transform(field, warp)
    field_image = tmp_path / "warp.nii.gz"
    sitk.WriteImage(field, str(field_image))
    (tmp_path / "afile").write_text("not a folder")
    resample = ["resample", "--input", str(moving), "--reference", str(moving)]
    evaluate = ["evaluate", "--fixed-labels", str(labels), "--moving-labels", str(labels)]
    cases = [
        ([*resample, "--output", str(moving)], f"--output {moving} is one of the inputs"),
        (
            [*resample, "--transform", str(warp), "--output", str(tmp_path / "afile" / "w.nrrd")],
            f"{tmp_path / 'afile'} is a file, not a folder",
        ),
        (
            ["jacobian", "--transform", str(field_image), "--output", str(field_image)],
            f"--output {field_image} is one of the inputs",
        ),
        (
            ["jacobian", "--transform", str(warp), "--summary", str(warp)],
            f"--summary {warp} is one of the inputs",
        ),
        ([*evaluate, "--transform", str(warp), "--json", str(warp)], "is one of the inputs"),
    ]
    contents = {path: path.read_bytes() for path in (moving, warp, field_image, labels)}
    for arguments, expected in cases:
        assert main(arguments) == 2, arguments
        assert expected in " ".join(capsys.readouterr().err.split())
    assert {path: path.read_bytes() for path in contents} == contents
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["afile", "labels.nii.gz", "moving.nrrd", "warp.h5", "warp.nii.gz"]
    )


def test_a_summary_names_relative_inputs_by_absolute_paths_so_review_finds_them(
    tmp_path, monkeypatch
):
    from cocyclereg.resources import demo_dir
    from cocyclereg.review.results import pair_files

    for name in ("fixed_t2.nii.gz", "moving_t1.nii.gz"):
        (tmp_path / name).write_bytes((demo_dir() / name).read_bytes())
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)
    arguments = ["register", "--fixed", "fixed_t2.nii.gz", "--moving", "moving_t1.nii.gz"]
    arguments += ["--transform", "results/t.h5", "--summary", "results/s.json", "--no-affine"]
    assert main([*arguments, "--refine-steps", "1", "--fine-steps", "0"]) == 0
    summary = json.loads((tmp_path / "results" / "s.json").read_text())
    assert summary["fixed"] == str(tmp_path / "fixed_t2.nii.gz")
    files = pair_files(tmp_path / "results", summary)
    assert files.fixed == tmp_path / "fixed_t2.nii.gz"
    assert files.moving == tmp_path / "moving_t1.nii.gz"
    assert files.transform == tmp_path / "results" / "t.h5"


def test_export_refuses_numbers_its_refinement_cannot_use(tmp_path, capsys):
    base = ["export", "--run", str(tmp_path), "--output", str(tmp_path / "m.cocyclereg")]
    for option, value in (
        ("--refine-learning-rate", "0"),
        ("--refine-learning-rate", "nan"),
        ("--refine-smoothness", "nan"),
        ("--refine-smoothness", "-1"),
        ("--fine-smoothness", "inf"),
    ):
        with pytest.raises(SystemExit) as exit_code:
            main([*base, option, value])
        assert exit_code.value.code == 2, (option, value)
        error = capsys.readouterr().err
        assert f"argument {option}: expected a number" in error and "Traceback" not in error
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_ends_a_command_with_a_line_and_code_130(tmp_path, monkeypatch, capsys):
    import cocyclereg.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_jacobian", interrupted)
    assert main(["jacobian", "--transform", str(tmp_path / "t.h5")]) == 130
    error = capsys.readouterr().err
    assert "cocyclereg jacobian: interrupted" in error and "Traceback" not in error


def test_models_says_what_each_bundled_default_runs(capsys):
    assert main(["models", "head-ct-mri", "brain-t1t2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "default:" in line]
    assert "the network (mirror-averaged), its fields as they are (no refinement)" in lines[0]
    assert "20 refinement steps from the pre-aligned images (network not run)" in lines[1]
    assert "then 0 refinement steps" not in "".join(lines)


def test_two_labelmaps_of_one_file_name_are_both_recorded_for_review(tmp_path):
    from cocyclereg.cli import _output_names, build_parser

    arguments = ["register", "--fixed", "f.nii.gz", "--moving", "m.nii.gz"]
    arguments += ["--transform", str(tmp_path / "t.h5")]
    warped = [tmp_path / name for name in ("w1.nii.gz", "w2.nii.gz", "w3.nii.gz")]
    for label, output in zip(("a/tumor", "b/tumor", "c/tissue"), warped, strict=True):
        arguments += ["--labels", f"{label}.nii.gz", "--warped-labels", str(output)]
    record = _output_names(build_parser().parse_args(arguments))
    assert record["warped_labels"] == {
        "tumor": str(warped[0]),
        "tumor-2": str(warped[1]),
        "tissue": str(warped[2]),
    }
