"""The training lists of the bundled models: only data the project may train on is trained on."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cocyclereg.config import DataConfig
from cocyclereg.learning.data import load_cases, load_label_maps

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_training_set.py"
NEVER_TRAINED_ON = ("TCGA-DU-7294", "TCGA-FG-6692", "stroke", "BraTS-GLI-00001-000")


@pytest.mark.slow
def test_training_lists_hold_no_development_or_test_subject(data_dir, tmp_path):
    subprocess.run(
        [sys.executable, str(TOOL), "--data", str(data_dir), "--output", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("t1t2-train.csv", "ctmri-train.csv", "synthetic.csv"):
        text = (tmp_path / name).read_text()
        assert not any(subject in text for subject in NEVER_TRAINED_ON), name
    validation = (tmp_path / "t1t2-validation.csv").read_text()
    assert "BraTS-GLI-00001-000" in validation and "TCGA-DU-7294" not in validation
    cases = load_cases(tmp_path / "t1t2-train.csv", DataConfig())
    assert {case.name for case in cases} == {
        "spm12",
        "spm12-stripped",
        "avg152",
        "avg152-stripped",
    }
    stripped = next(case for case in cases if case.name == "spm12-stripped")
    tissue = sitk.GetArrayFromImage(sitk.ReadImage(str(stripped.x_labels)))
    for path in (stripped.x, stripped.y):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert np.all(image[tissue == 0] == 0)
        assert (image[tissue > 0] > 0).mean() > 0.95
    maps = load_label_maps(tmp_path / "synthetic.csv")
    whole_head = sitk.GetArrayFromImage(sitk.ReadImage(str(maps[2])))
    assert set(np.unique(whole_head)) == {0, 1, 2, 3, 4, 5, 6}
    with (tmp_path / "ctmri-train.csv").open() as stream:
        assert [row["name"] for row in csv.DictReader(stream)] == [
            "ct-t1",
            "ct-t1-stripped",
            "ct-t2",
            "ct-t2-stripped",
        ]
