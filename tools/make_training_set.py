"""Write the training and validation case lists of the bundled models from ../shared/data.

Usage: python tools/make_training_set.py --data ../shared/data --output runs/data

Only data the project may train on is trained on: the SPM12 and Clinical-toolbox templates and
the vxm-subject's labels. The development subjects (TCGA-FG-6692, stroke, BraTS-GLI-00001-000)
are listed for validation only, and the test subject TCGA-DU-7294 is never listed.

Writes, beside the CSV files, the labelmaps and skull-stripped template copies they name:

* ``t1t2-train.csv``: the SPM12 T1/T2 and avg152 T1/T2 template pairs, whole-head and
  skull-stripped (brain = grey + white + CSF probability > 0.5), with their tissue labels
  (1 CSF, 2 grey, 3 white; see cocyclereg.evaluation.tissue).
* ``t1t2-validation.csv``: the development subjects, T1/T2 with k-means tissue labels of the T1.
* ``synthetic.csv``: label maps to synthesise random-contrast pairs from (SynthMorph-style):
  the vxm-subject's FreeSurfer aseg, the MNI brain tissue map, and an MNI whole-head map (brain
  tissue plus the rest of the head split into three classes by the CT template's intensity).
* ``ctmri-train.csv`` / ``ctmri-validation.csv``: the Clinical-toolbox CT template with the
  SPM12 T1 and T2 templates (same 2 mm MNI grid), whole-head and stripped (validation: the
  whole-head CT/T1 pair; no real CT/MRI pair exists here to validate on).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cocyclereg.evaluation.tissue import tissue_from_probabilities, tissue_from_t1

HELD_OUT = "TCGA-DU-7294"
DEVELOPMENT = ("BraTS-GLI-00001-000", "TCGA-FG-6692", "stroke")
HEAD_CT_THRESHOLD = 190.0  # Clinical-toolbox CT units: above this, part of the head (not air)


def _write_csv(path: Path, rows: list[dict[str, str]], columns=("name", "x", "y", "labels")):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _masked(image: sitk.Image, mask: np.ndarray, path: Path) -> Path:
    """``image`` with zeros outside ``mask`` (same grid), written to ``path``."""
    array = sitk.GetArrayFromImage(image) * mask
    stripped = sitk.GetImageFromArray(array.astype(np.float32))
    stripped.CopyInformation(image)
    sitk.WriteImage(stripped, str(path))
    return path


def _whole_head_labels(tissue: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """Brain tissue (1-3) plus the rest of the head split by CT intensity terciles (4-6)."""
    labels = sitk.GetArrayFromImage(tissue).astype(np.uint8)
    values = sitk.GetArrayFromImage(ct).astype(np.float64)
    rest = (labels == 0) & (values > HEAD_CT_THRESHOLD)
    edges = np.percentile(values[rest], [100 / 3, 200 / 3])
    labels[rest] = 4 + np.searchsorted(edges, values[rest]).astype(np.uint8)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(tissue)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, default=Path("runs/data"))
    args = parser.parse_args()
    data, out = args.data.resolve(), args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)

    spm, ct = data / "templates" / "spm12", data / "templates" / "clinical-ct"
    probabilities = [sitk.ReadImage(str(spm / f"{n}.nii")) for n in ("grey", "white", "csf")]
    brain = sum(sitk.GetArrayFromImage(p).astype(np.float64) for p in probabilities) > 0.5
    spm_tissue = out / "spm12-tissue.nii.gz"
    tissue = tissue_from_probabilities(*probabilities)
    sitk.WriteImage(tissue, str(spm_tissue))
    whole_head = out / "mni-whole-head-labels.nii.gz"
    sitk.WriteImage(_whole_head_labels(tissue, sitk.ReadImage(str(ct / "scct.nii"))), whole_head)

    def template_pair(name: str, x: Path, y: Path, strip: bool) -> dict[str, str]:
        if strip:
            x = _masked(sitk.ReadImage(str(x)), brain, out / f"{name}-x.nii.gz")
            y = _masked(sitk.ReadImage(str(y)), brain, out / f"{name}-y.nii.gz")
        return {"name": name, "x": str(x), "y": str(y), "labels": str(spm_tissue)}

    t1t2 = [
        template_pair(f"{name}{suffix}", spm / f"{stem}T1.nii", spm / f"{stem}T2.nii", strip)
        for name, stem in (("spm12", ""), ("avg152", "avg152"))
        for suffix, strip in (("", False), ("-stripped", True))
    ]
    _write_csv(out / "t1t2-train.csv", t1t2)

    validation = []
    for name in DEVELOPMENT:
        folder = data / "brain-t1t2" / name
        labels = out / f"{name}-tissue.nii.gz"
        sitk.WriteImage(tissue_from_t1(sitk.ReadImage(str(folder / "t1.nii.gz"))), str(labels))
        validation.append(
            {
                "name": name,
                "x": str(folder / "t1.nii.gz"),
                "y": str(folder / "t2.nii.gz"),
                "labels": str(labels),
            }
        )
    _write_csv(out / "t1t2-validation.csv", validation)

    maps = [
        {"name": "vxm-aseg", "labels": str(data / "brain-t1" / "vxm-subject" / "aseg.nii.gz")},
        {"name": "mni-tissue", "labels": str(spm_tissue)},
        {"name": "mni-whole-head", "labels": str(whole_head)},
    ]
    _write_csv(out / "synthetic.csv", maps, columns=("name", "labels"))

    ct_rows = [
        template_pair(
            f"ct-{m.lower()}{suffix}", ct / f"scct{ct_suffix}.nii", spm / f"{m}.nii", strip
        )
        for m in ("T1", "T2")
        for suffix, ct_suffix, strip in (("", "", False), ("-stripped", "_stripped", True))
    ]
    _write_csv(out / "ctmri-train.csv", ct_rows)
    _write_csv(out / "ctmri-validation.csv", ct_rows[:1])
    listed = "".join(p.read_text() for p in out.glob("*.csv"))
    assert HELD_OUT not in listed
    assert not any(name in (out / "t1t2-train.csv").read_text() for name in DEVELOPMENT)
    print(f"wrote {sorted(p.name for p in out.glob('*.csv'))} to {out}")


if __name__ == "__main__":
    main()
