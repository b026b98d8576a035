"""Write the training and validation case lists of the bundled models from ../shared/data.

Usage: python tools/make_training_set.py --data ../shared/data --output runs/data

Writes tissue labelmaps (1 CSF, 2 grey, 3 white; see cocyclereg.tissue) and four CSV files:

* ``t1t2-train.csv``: TCGA-FG-6692, stroke, the SPM12 T1/T2 and avg152 T1/T2 templates.
* ``t1t2-validation.csv``: TCGA-FG-6692 and the SPM12 T1/T2 template (validation draws its own
  random deformations, never a training sample's; there are too few subjects to hold one out
  for validation as well as for testing).
* ``ctmri-train.csv`` / ``ctmri-validation.csv``: the Clinical-toolbox CT template with the
  SPM12 T1 and T2 templates (same 2 mm MNI grid), tissue labels from the probability maps.

TCGA-DU-7294 is the held-out test subject and is never listed. BraTS-GLI-00001-000 has unsettled
data terms and is not used for the shipped models.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import SimpleITK as sitk

from cocyclereg.tissue import tissue_from_probabilities, tissue_from_t1

HELD_OUT = "TCGA-DU-7294"


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["name", "x", "y", "labels"])
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, default=Path("runs/data"))
    args = parser.parse_args()
    data, out = args.data.resolve(), args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)

    spm, ct = data / "templates" / "spm12", data / "templates" / "clinical-ct"
    spm_tissue = out / "spm12-tissue.nii.gz"
    sitk.WriteImage(
        tissue_from_probabilities(
            *(sitk.ReadImage(spm / f"{n}.nii") for n in ("grey", "white", "csf"))
        ),
        spm_tissue,
    )
    subjects = {}
    for name in ("TCGA-FG-6692", "stroke"):
        folder = data / "brain-t1t2" / name
        tissue = out / f"{name}-tissue.nii.gz"
        sitk.WriteImage(tissue_from_t1(sitk.ReadImage(folder / "t1.nii.gz")), tissue)
        subjects[name] = {
            "name": name,
            "x": str(folder / "t1.nii.gz"),
            "y": str(folder / "t2.nii.gz"),
            "labels": str(tissue),
        }
    templates = {
        "spm12": {"name": "spm12", "x": str(spm / "T1.nii"), "y": str(spm / "T2.nii")},
        "avg152": {
            "name": "avg152",
            "x": str(spm / "avg152T1.nii"),
            "y": str(spm / "avg152T2.nii"),
        },
    }
    for row in templates.values():
        row["labels"] = str(spm_tissue)
    _write_csv(out / "t1t2-train.csv", [*subjects.values(), *templates.values()])
    _write_csv(out / "t1t2-validation.csv", [subjects["TCGA-FG-6692"], templates["spm12"]])

    ct_rows = [
        {
            "name": f"ct-{m.lower()}",
            "x": str(ct / "scct.nii"),
            "y": str(spm / f"{m}.nii"),
            "labels": str(spm_tissue),
        }
        for m in ("T1", "T2")
    ]
    _write_csv(out / "ctmri-train.csv", ct_rows)
    _write_csv(out / "ctmri-validation.csv", ct_rows[:1])
    assert all(HELD_OUT not in p.read_text() for p in out.glob("*.csv"))
    print(f"wrote {sorted(p.name for p in out.glob('*.csv'))} to {out}")


if __name__ == "__main__":
    main()
