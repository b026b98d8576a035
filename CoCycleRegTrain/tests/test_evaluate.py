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
