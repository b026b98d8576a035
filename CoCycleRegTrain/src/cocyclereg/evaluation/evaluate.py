"""Evaluating a transform: label overlap, surface distance, folding and target error.

``evaluate`` warps the moving labelmap onto the fixed grid through the transform (nearest
neighbour: no new labels) and reports, per label and on average, Dice and HD95 (mm); the
count and percent of fixed-grid voxels where the transform's Jacobian determinant is <= 0; and,
given a ground-truth transform, the target registration error: the distance in mm between the
moving-space points both transforms assign to each fixed foreground voxel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cocyclereg.errors import InputError
from cocyclereg.evaluation.metrics import dice, hd95
from cocyclereg.geometry.displacement import (
    FIELD_IMAGE_SUFFIXES,
    displacement_array,
    displacement_transform,
    read_displacement_field,
    transform_to_displacement_field,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import FoldingStats, folding_stats, jacobian_determinant
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.io import full_suffix


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Any transform SimpleITK reads (.h5, .tfm, .txt, .mat), or a displacement-field image
    (.nii.gz, .nii, .nrrd, .mha) in the ITK/ANTs convention."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Transform file not found: {path}")
    if full_suffix(path) in FIELD_IMAGE_SUFFIXES:
        return displacement_transform(read_displacement_field(path))
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise InputError(f"Cannot read {path} as a transform.") from error


@dataclass
class Evaluation:
    """Per-label Dice and HD95 (mm), their means, folding, and TRE statistics (mm)."""

    dice: dict[int, float]
    hd95: dict[int, float]
    folding: FoldingStats
    tre: dict[str, float] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        return float(np.mean(list(self.dice.values()))) if self.dice else float("nan")

    @property
    def missed_labels(self) -> list[int]:
        """Labels without an HD95: absent from the fixed or the warped labelmap (Dice 0)."""
        return [label for label, value in self.hd95.items() if not np.isfinite(value)]

    @property
    def mean_hd95(self) -> float:
        """Mean HD95 over the labels that have one (:attr:`missed_labels` say which do not)."""
        values = [v for v in self.hd95.values() if np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    def as_dict(self) -> dict:
        """JSON-ready: an undefined HD95 (a missed label) is ``null``, never NaN."""
        return {
            "dice": {str(k): v for k, v in self.dice.items()},
            "hd95_mm": {str(k): _finite(v) for k, v in self.hd95.items()},
            "mean_dice": _finite(self.mean_dice),
            "mean_hd95_mm": _finite(self.mean_hd95),
            "labels_without_hd95": self.missed_labels,
            "folding": self.folding.as_dict(),
            "tre_mm": self.tre,
        }

    def table(self) -> str:
        lines = [f"{'label':>8s} {'Dice':>8s} {'HD95 mm':>9s}"]
        lines += [
            f"{label:>8d} {self.dice[label]:8.4f} "
            + (f"{self.hd95[label]:9.2f}" if np.isfinite(self.hd95[label]) else f"{'missed':>9s}")
            for label in self.dice
        ]
        lines.append(f"{'mean':>8s} {self.mean_dice:8.4f} {self.mean_hd95:9.2f}")
        if self.missed_labels:
            lines.append(
                f"HD95 undefined for label(s) {', '.join(map(str, self.missed_labels))} (absent "
                f"from one of the labelmaps): the mean HD95 is over the other "
                f"{len(self.hd95) - len(self.missed_labels)} of {len(self.hd95)} labels"
            )
        lines.append(
            f"J <= 0: {self.folding.folding_voxels} of {self.folding.total_voxels} voxels "
            f"({self.folding.folding_percent:.4f} %)"
        )
        if self.tre:
            lines.append("TRE mm: " + ", ".join(f"{k} {v:.2f}" for k, v in self.tre.items()))
        return "\n".join(lines)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def evaluate(
    fixed_labels: sitk.Image,
    moving_labels: sitk.Image,
    transform: sitk.Transform,
    ground_truth: sitk.Transform | None = None,
) -> Evaluation:
    """Evaluate ``transform`` (fixed points -> moving points) on the fixed labelmap's grid."""
    grid = Grid.from_image(fixed_labels)
    warped = sitk.GetArrayFromImage(resample_to_grid(moving_labels, grid, "label", transform))
    fixed = sitk.GetArrayFromImage(fixed_labels)
    spacing_dhw = tuple(reversed(grid.spacing))
    per_label = dice(fixed, warped)
    distances = {label: hd95(fixed, warped, spacing_dhw, label) for label in per_label}
    field_mm = transform_to_displacement_field(transform, grid)
    result = Evaluation(per_label, distances, folding_stats(jacobian_determinant(field_mm)))
    if ground_truth is not None:
        truth = displacement_array(transform_to_displacement_field(ground_truth, grid))
        error = np.linalg.norm(displacement_array(field_mm) - truth, axis=-1)[fixed > 0]
        if error.size:
            result.tre = {
                "mean": float(error.mean()),
                "median": float(np.median(error)),
                "p95": float(np.percentile(error, 95)),
                "max": float(error.max()),
            }
    return result
