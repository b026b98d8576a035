"""Write the demo pair that ``cocyclereg demo`` registers, from TCGA-DU-7294 in ../shared/data.

Usage: python tools/make_demo_data.py [--data ../shared/data] [--output DIR] [--seed 7294]

The output (default: the package's ``src/cocyclereg/resources/demo``) holds one pair on one
2 mm grid, stored as ``.nii.gz`` (intensities int16, labels uint8):

* ``fixed_t2.nii.gz``: the T2 scan.
* ``moving_t1.nii.gz``: the T1 scan of the same head, deformed by a known random warp.
* ``fixed_tumor.nii.gz`` / ``moving_tumor.nii.gz``: the tumour labels (1 and 2, the automatic
  BraTS fusion of the source), undeformed and deformed.
* ``fixed_tissue.nii.gz`` / ``moving_tissue.nii.gz``: 1 CSF, 2 grey matter, 3 white matter,
  undeformed and deformed.
* ``labels.json``: the label names; ``README.md``: source, licence and this recipe.

How it is made (every random number comes from ``--seed``):

1. Read t1, t2 and tumor (240x240x155, 1 mm, co-registered, skull-stripped).
2. Tissue labels: :func:`cocyclereg.evaluation.tissue.tissue_from_t1` on the undeformed 1 mm T1, a
   three-class k-means of the T1 intensities inside the brain (voxels > 0), started from the
   10th, 50th and 90th percentiles and ordered by mean intensity (darkest CSF, then grey, then
   white). The tumour falls into whichever class its T1 intensity is nearest: these are
   reproducible anatomical regions for measuring alignment, not a segmentation.
3. The demo grid: 2 mm voxels, axis-aligned like the source, covering the bounding box of the
   head (T1 or T2 > 0) plus a ``--margin`` (mm) on every side so the moved head stays inside.
4. The known warp, on that grid: a random elastic field (:func:`cocyclereg.learning.augment.
   random_elastic_flow`, control points 40 mm apart, largest displacement at most
   ``--max-elastic`` mm, free of folding) composed with a random rigid motion about the grid
   centre (rotations up to ``--rotation`` degrees about each axis, shifts up to
   ``--translation`` mm). As an ITK displacement field it maps each demo-grid point to the
   1 mm source point whose T1 value it takes.
5. Images are Gaussian-smoothed (sigma 0.735 mm: a 1 mm to 2 mm anti-aliasing filter) and
   resampled linearly from the 1 mm source: T2 through the identity (fixed), T1 through the
   warp (moving); labels are resampled nearest-neighbour the same way. Intensities are rounded
   to int16.

The fixed side is therefore the undeformed anatomy; registering moving to fixed should bring
the moving labels back onto the fixed ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from cocyclereg.evaluation.tissue import tissue_from_t1
from cocyclereg.geometry.displacement import (
    displacement_field_image,
    displacement_transform,
    voxel_flow_to_displacement_mm,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import folding_stats, jacobian_determinant
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.learning.augment import affine_flow, compose_flows, random_elastic_flow

SUBJECT = "TCGA-DU-7294"
SPACING_MM = 2.0
CONTROL_SPACING_MM = 40.0
ANTI_ALIAS_SIGMA_MM = float(np.sqrt(SPACING_MM**2 - 1.0) / (2 * np.sqrt(2 * np.log(2))))
PACKAGE_DEMO = Path(__file__).resolve().parents[1] / "CoCycleRegTrain/src/cocyclereg/resources/demo"
LABEL_NAMES = {
    "tumor": {"1": "tumour core", "2": "oedema"},
    "tissue": {"1": "CSF", "2": "grey matter", "3": "white matter"},
}

README = """\
# Demo pair of `cocyclereg demo`

One registration case made from a real scan, small enough to ship with the package (2 mm
voxels, {size} voxels, {total_kb:.0f} KB in all).

| file | what |
|---|---|
| `fixed_t2.nii.gz` | T2 MRI (int16) |
| `moving_t1.nii.gz` | T1 MRI of the same head (int16), deformed by a known random warp |
| `fixed_tumor.nii.gz`, `moving_tumor.nii.gz` | tumour labels (uint8): 1 tumour core, 2 oedema |
| `fixed_tissue.nii.gz`, `moving_tissue.nii.gz` | tissue labels (uint8): 1 CSF, 2 grey, 3 white |
| `labels.json` | the label names |

## Source and licence

Subject TCGA-DU-7294 of The Cancer Imaging Archive collection TCGA-LGG, licensed under
[CC BY 3.0](https://creativecommons.org/licenses/by/3.0/), as preprocessed (co-registered to
SRI24 space, 1 mm, skull-stripped) by the BraTS-Toolkit tutorial (BrainLesion/tutorials,
Apache-2.0). The tumour labels are that tutorial's fusion of automatic BraTS segmentation
algorithms, not a manual segmentation. Changes made here: resampled to 2 mm, cropped, T1
deformed, tissue labels derived.

Please credit: Pedano N. et al., Radiology Data from The Cancer Genome Atlas Low Grade Glioma
[TCGA-LGG] collection, The Cancer Imaging Archive, doi:10.7937/K9/TCIA.2016.L4LTD3TK; and
Clark K. et al., The Cancer Imaging Archive (TCIA), J Digit Imaging 26(6), 2013.

TCGA-DU-7294 is the held-out test subject of the bundled models: none of them was trained on it.

## How it was made

`python tools/make_demo_data.py --seed {seed}` (in the repository) made these files from
`../shared/data/brain-t1t2/{subject}`. In short: tissue labels by a three-class k-means of the
undeformed 1 mm T1 inside the brain (`cocyclereg.evaluation.tissue.tissue_from_t1`); a 2 mm grid
over the head plus {margin:g} mm; the moving T1 and its labels resampled through a random elastic
field (largest displacement {elastic:.1f} mm, smallest Jacobian determinant {min_jacobian:.2f})
composed with a rigid motion (rotation {rotation} degrees, shift {translation} mm); the fixed T2 and
its labels resampled without deformation. The script's docstring gives every step.
"""


def _head_grid(images: list[sitk.Image], margin_mm: float) -> Grid:
    """An axis-aligned grid of 2 mm voxels over the voxels > 0 of any image, plus a margin."""
    reference = images[0]
    mask = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=bool)
    for image in images:
        mask |= sitk.GetArrayViewFromImage(image) > 0
    occupied = np.nonzero(mask)
    low_kji = np.array([axis.min() for axis in occupied], dtype=float)
    high_kji = np.array([axis.max() for axis in occupied], dtype=float)
    source = Grid.from_image(reference)
    corners = np.array(
        [
            [i, j, k]
            for i in (low_kji[2], high_kji[2])
            for j in (low_kji[1], high_kji[1])
            for k in (low_kji[0], high_kji[0])
        ]
    )
    points = source.index_to_physical(corners)
    low, high = points.min(axis=0) - margin_mm, points.max(axis=0) + margin_mm
    size = tuple(int(np.ceil((h - lo) / SPACING_MM)) + 1 for lo, h in zip(low, high, strict=True))
    centre = (low + high) / 2
    origin = centre - (np.asarray(size) - 1) * SPACING_MM / 2
    return Grid(size, (SPACING_MM,) * 3, tuple(float(x) for x in origin), source.direction)


def _known_warp(grid: Grid, args: argparse.Namespace) -> tuple[sitk.Transform, dict]:
    """The random elastic field composed with a rigid motion, as an ITK transform on ``grid``."""
    rng = np.random.default_rng(args.seed)
    elastic = random_elastic_flow(
        grid.shape, grid.spacing, rng, CONTROL_SPACING_MM, args.max_elastic
    )
    angles = rng.uniform(-args.rotation, args.rotation, size=3)
    shift = rng.uniform(-args.translation, args.translation, size=3)
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    rigid = affine_flow(grid.shape, grid.spacing, rotation, shift)
    flow = compose_flows(rigid, elastic)
    field = displacement_field_image(voxel_flow_to_displacement_mm(flow, grid), grid)
    elastic_mm = voxel_flow_to_displacement_mm(elastic, grid)
    facts = {
        "elastic_max_mm": float(np.linalg.norm(elastic_mm, axis=-1).max()),
        "rotation_deg": [round(float(a), 2) for a in angles],
        "translation_mm": [round(float(t), 2) for t in shift],
        "min_jacobian": folding_stats(jacobian_determinant(field)).min_jacobian,
    }
    return displacement_transform(field), facts


def _intensities(image: sitk.Image, grid: Grid, transform: sitk.Transform | None) -> sitk.Image:
    smooth = sitk.SmoothingRecursiveGaussian(
        sitk.Cast(image, sitk.sitkFloat32), ANTI_ALIAS_SIGMA_MM
    )
    resampled = resample_to_grid(smooth, grid, "linear", transform, default_value=0.0)
    array = np.clip(np.rint(sitk.GetArrayFromImage(resampled)), -32768, 32767).astype(np.int16)
    return grid.apply_to(sitk.GetImageFromArray(array))


def _labels(image: sitk.Image, grid: Grid, transform: sitk.Transform | None) -> sitk.Image:
    return sitk.Cast(resample_to_grid(image, grid, "label", transform), sitk.sitkUInt8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, default=PACKAGE_DEMO)
    parser.add_argument("--seed", type=int, default=7294)
    parser.add_argument("--margin", type=float, default=10.0, help="mm around the head")
    parser.add_argument("--max-elastic", type=float, default=8.0, help="mm, elastic warp bound")
    parser.add_argument("--rotation", type=float, default=5.0, help="degrees about each axis")
    parser.add_argument("--translation", type=float, default=4.0, help="mm along each axis")
    args = parser.parse_args()
    folder = args.data / "brain-t1t2" / SUBJECT
    out = args.output
    out.mkdir(parents=True, exist_ok=True)

    t1, t2 = (sitk.ReadImage(str(folder / f"{n}.nii.gz")) for n in ("t1", "t2"))
    tumor = sitk.ReadImage(str(folder / "tumor.nii.gz"))
    tissue = tissue_from_t1(t1)
    grid = _head_grid([t1, t2], args.margin)
    warp, facts = _known_warp(grid, args)

    outputs = {
        "fixed_t2": _intensities(t2, grid, None),
        "moving_t1": _intensities(t1, grid, warp),
        "fixed_tumor": _labels(tumor, grid, None),
        "moving_tumor": _labels(tumor, grid, warp),
        "fixed_tissue": _labels(tissue, grid, None),
        "moving_tissue": _labels(tissue, grid, warp),
    }
    for name, image in outputs.items():
        sitk.WriteImage(image, str(out / f"{name}.nii.gz"), True)
    (out / "labels.json").write_text(json.dumps(LABEL_NAMES, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".gz", ".json"))
    (out / "README.md").write_text(
        README.format(
            size="x".join(map(str, grid.size)),
            total_kb=total / 1024,
            seed=args.seed,
            subject=SUBJECT,
            margin=args.margin,
            elastic=facts["elastic_max_mm"],
            min_jacobian=facts["min_jacobian"],
            rotation=facts["rotation_deg"],
            translation=facts["translation_mm"],
        )
    )
    print(f"wrote {out} ({'x'.join(map(str, grid.size))} voxels, {total / 1024:.0f} KB): {facts}")


if __name__ == "__main__":
    main()
