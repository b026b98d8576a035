"""`cocyclereg evaluate` on cases with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_GRIDS, image_on

from cocyclereg.cli import main
from cocyclereg.evaluation.evaluate import evaluate, read_transform

GRID = TEST_GRIDS["identity"]  # 1 mm isotropic: shifts in voxels are shifts in mm


def _box_labels() -> sitk.Image:
    labels = np.zeros(GRID.shape, np.uint8)
    labels[2:9, 4:14, 3:13] = 1
    labels[4:7, 15:18, 5:9] = 2  # disjoint from label 1
    return image_on(GRID, labels)


def test_known_translation(tmp_path):
    fixed = _box_labels()
    shift = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))  # samples the moving image 2 mm along x
    truth = evaluate(fixed, fixed, sitk.Transform(3, sitk.sitkIdentity))
    assert truth.dice == {1: 1.0, 2: 1.0} and truth.folding.folding_voxels == 0
    moved = evaluate(fixed, fixed, shift, ground_truth=sitk.Transform(3, sitk.sitkIdentity))
    # Label 1: 10 voxels along x, shifted by 2: overlap 8/10 of each box.
    assert moved.dice[1] == pytest.approx(0.8)
    assert moved.dice[2] == pytest.approx(0.5)
    assert moved.hd95[1] == pytest.approx(2.0, abs=0.01)
    assert moved.tre["mean"] == pytest.approx(2.0) and moved.tre["max"] == pytest.approx(2.0)


def test_command_reads_field_images_and_writes_json(tmp_path, capsys):
    from cocyclereg.geometry.displacement import (
        transform_to_displacement_field,
        write_displacement_transform,
    )

    sitk.WriteImage(_box_labels(), str(tmp_path / "fixed.nii.gz"))
    field = transform_to_displacement_field(sitk.TranslationTransform(3, (0.0, 1.0, 0.0)), GRID)
    write_displacement_transform(field, tmp_path / "warp.nii.gz")
    assert isinstance(read_transform(tmp_path / "warp.nii.gz"), sitk.DisplacementFieldTransform)
    code = main(
        [
            "evaluate",
            "--fixed-labels",
            str(tmp_path / "fixed.nii.gz"),
            "--moving-labels",
            str(tmp_path / "fixed.nii.gz"),
            "--transform",
            str(tmp_path / "warp.nii.gz"),
            "--json",
            str(tmp_path / "e.json"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["dice"]["1"] == pytest.approx(0.9)  # 10 voxels along y, shifted by 1
    assert result["folding"]["folding_voxels"] == 0
    assert "mean" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                "--fixed-labels",
                str(tmp_path / "fixed.nii.gz"),
                "--moving-labels",
                str(tmp_path / "fixed.nii.gz"),
                "--transform",
                str(tmp_path / "absent.h5"),
            ]
        )
        == 2
    )


def test_a_label_missing_from_one_side_is_named_and_the_json_stays_strict(tmp_path, capsys):
    fixed = _box_labels()
    moving_array = sitk.GetArrayFromImage(fixed)
    moving_array[moving_array == 2] = 0  # label 2 lost on the moving side
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(image_on(GRID, moving_array), str(tmp_path / "moving.nii.gz"))
    result = evaluate(fixed, image_on(GRID, moving_array), sitk.Transform(3, sitk.sitkIdentity))
    assert result.dice[2] == 0 and result.missed_labels == [2]
    assert result.mean_hd95 == pytest.approx(result.hd95[1])  # over the label that has one
    assert result.as_dict()["hd95_mm"]["2"] is None
    sitk.WriteTransform(sitk.Transform(3, sitk.sitkIdentity), str(tmp_path / "identity.tfm"))
    arguments = ["evaluate", "--fixed-labels", str(tmp_path / "fixed.nii.gz")]
    arguments += ["--moving-labels", str(tmp_path / "moving.nii.gz")]
    arguments += ["--transform", str(tmp_path / "identity.tfm"), "--json", str(tmp_path / "e.json")]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "missed" in out and "HD95 undefined for label(s) 2" in out and "1 of 2 labels" in out

    def strict(token):
        raise ValueError(f"not JSON: {token}")

    document = json.loads((tmp_path / "e.json").read_text(), parse_constant=strict)
    assert document["hd95_mm"]["2"] is None and document["labels_without_hd95"] == [2]
