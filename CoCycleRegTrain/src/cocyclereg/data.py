"""Paired multi-modal cases, their preprocessing onto the model grid, and the training dataset.

A case is one subject's co-registered pair of modalities ``x`` and ``y`` (for example T1 and
T2), optionally with labelmaps. Cases come from a CSV file or from a folder of case folders (see
:func:`load_cases`). Each case is resampled once onto the grid the networks run on, built from
its ``y`` image (:func:`preprocess_case`), and normalised to [0, 1]. The dataset
(:class:`PairedVolumes`) then deforms one modality with a seeded random field per sample, as the
CoCycleReg paper built its training pairs, so the field that misaligns the pair is known.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cocyclereg.augment import (
    compose_flows,
    intensity_jitter,
    random_affine_flow,
    random_elastic_flow,
)
from cocyclereg.config import ConfigError, DataConfig
from cocyclereg.errors import InputError
from cocyclereg.grid import Grid, model_grid
from cocyclereg.io import VOLUME_SUFFIXES, full_suffix, read_image, read_labels
from cocyclereg.normalize import normalize
from cocyclereg.resample import resample_to_grid
from cocyclereg.spatial_transformer import SpatialTransformer, warp_labels

# File names (without suffix) a case folder's shared labelmap may have, in order of preference.
LABEL_NAMES = ("labels", "tumor", "seg", "aseg")
CSV_COLUMNS = ("name", "x", "y", "labels", "x_labels", "y_labels")
_LPS_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_VALIDATION_STREAM = 1  # appended to validation seeds so they never repeat a training sample's


@dataclass(frozen=True)
class Case:
    """Files of one paired case. ``x_labels`` and ``y_labels`` are the labelmaps on ``x``'s and
    ``y``'s grids; for a co-registered pair with one labelmap both are that file."""

    name: str
    x: Path
    y: Path
    x_labels: Path | None = None
    y_labels: Path | None = None


# ---------------------------------------------------------------------------- finding cases


def _missing_files_error(missing: list[Path], source: Path) -> InputError:
    """An error naming every missing file of ``source`` (the first 20, then a count)."""
    shown = "\n  ".join(str(path) for path in missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    return InputError(f"{len(missing)} file(s) listed in {source} do not exist:\n  {shown}{more}")


def _check_cases(cases: list[Case], source: Path) -> list[Case]:
    """Raise :class:`InputError` for no cases, missing files or repeated names; else ``cases``."""
    if not cases:
        raise InputError(f"No cases found in {source}.")
    files = [
        path
        for case in cases
        for path in (case.x, case.y, case.x_labels, case.y_labels)
        if path is not None
    ]
    missing = list(dict.fromkeys(path for path in files if not path.is_file()))
    if missing:
        raise _missing_files_error(missing, source)
    names = [case.name for case in cases]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(
            f"Case names repeat in {source}: {', '.join(repeated)}; give each case a unique name."
        )
    return cases


def _csv_path(cell: str | None, folder: Path) -> Path | None:
    """A CSV cell as a path (relative to the CSV's ``folder``), or ``None`` for an empty cell."""
    if cell is None or not cell.strip():
        return None
    path = Path(cell.strip()).expanduser()
    return path if path.is_absolute() else folder / path


def _case_from_row(row: dict[str, str], number: int, folder: Path, source: Path) -> Case:
    """The case of CSV data row ``number`` (1-based)."""
    x, y = _csv_path(row.get("x"), folder), _csv_path(row.get("y"), folder)
    if x is None or y is None:
        raise InputError(f"Row {number} of {source} has an empty 'x' or 'y' cell.")
    shared = _csv_path(row.get("labels"), folder)
    x_labels, y_labels = (
        _csv_path(row.get("x_labels"), folder),
        _csv_path(row.get("y_labels"), folder),
    )
    if shared is not None and (x_labels is not None or y_labels is not None):
        raise InputError(
            f"Row {number} of {source} fills both 'labels' and 'x_labels'/'y_labels'; use one."
        )
    if shared is not None:
        x_labels = y_labels = shared
    name = (row.get("name") or "").strip() or x.parent.name
    return Case(name=name, x=x, y=y, x_labels=x_labels, y_labels=y_labels)


def _cases_from_csv(source: Path) -> list[Case]:
    """Cases of a CSV file with a header row (columns in :data:`CSV_COLUMNS`)."""
    with source.open(newline="") as stream:
        reader = csv.DictReader(stream)
        columns = [column.strip() for column in reader.fieldnames or []]
        unknown = [column for column in columns if column not in CSV_COLUMNS]
        if unknown:
            raise InputError(
                f"Unknown column(s) {', '.join(map(repr, unknown))} in {source}; "
                f"known: {', '.join(CSV_COLUMNS)}."
            )
        if "x" not in columns or "y" not in columns:
            raise InputError(f"{source} needs a header row with columns 'x' and 'y'.")
        reader.fieldnames = columns
        rows = list(reader)
    return [
        _case_from_row(row, number, source.parent, source)
        for number, row in enumerate(rows, start=1)
    ]


def _volume_file(folder: Path, stem: str) -> Path | None:
    """The volume file ``<stem>.<suffix>`` in ``folder`` (suffixes of :data:`VOLUME_SUFFIXES`),
    ``None`` if there is none; :class:`InputError` if there are several."""
    matches = sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and full_suffix(path) in VOLUME_SUFFIXES
        and path.name[: -len(full_suffix(path))] == stem
    )
    if len(matches) > 1:
        raise InputError(f"Several '{stem}' volumes in {folder}: {[p.name for p in matches]}")
    return matches[0] if matches else None


def _case_from_folder(folder: Path, data: DataConfig) -> Case:
    """The case in ``folder``: ``<x_modality>.*``, ``<y_modality>.*`` and the first labelmap
    named in :data:`LABEL_NAMES`, used for both modalities."""
    x, y = _volume_file(folder, data.x_modality), _volume_file(folder, data.y_modality)
    absent = [m for m, path in ((data.x_modality, x), (data.y_modality, y)) if path is None]
    if absent:
        raise InputError(
            f"Case folder {folder} has no {' or '.join(absent)} volume "
            f"(looked for {', '.join(absent)} with suffix {', '.join(VOLUME_SUFFIXES)})."
        )
    labels = next(
        (path for name in LABEL_NAMES if (path := _volume_file(folder, name)) is not None), None
    )
    return Case(name=folder.name, x=x, y=y, x_labels=labels, y_labels=labels)


def _cases_from_folder(source: Path, data: DataConfig) -> list[Case]:
    """Cases of a folder of case folders, or of a single case folder holding the volumes."""
    if _volume_file(source, data.x_modality) is not None:
        return [_case_from_folder(source, data)]
    folders = sorted(
        path for path in source.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    return [_case_from_folder(folder, data) for folder in folders]


def load_cases(source: str | os.PathLike, data: DataConfig) -> list[Case]:
    """The paired cases listed by ``source``: a CSV file or a folder.

    CSV file: a header row with columns ``x`` and ``y`` (volume paths), optionally ``labels``
    (one labelmap shared by both, for co-registered pairs) or ``x_labels``/``y_labels``, and
    ``name``; relative paths are relative to the CSV's folder; an empty labels cell means no
    labels for that case; the default name is the folder of the ``x`` file.

    Folder: each subfolder (hidden ones skipped) is a case named after it, holding
    ``<data.x_modality>`` and ``<data.y_modality>`` volumes (``.nii.gz``, ``.nii``, ``.nrrd``,
    ``.nhdr``, ``.mha`` or ``.mhd``) and optionally one labelmap shared by both, named after the
    first of :data:`LABEL_NAMES` present (``labels``, ``tumor``, ``seg``, ``aseg``). A folder
    that itself holds the ``x`` volume is one case.

    Raises :class:`InputError` for an empty ``source`` or one with no cases, missing files
    (all listed), unknown CSV columns, and repeated case names.
    """
    if not str(source).strip():
        raise InputError("No data source given: name a CSV file or a folder of cases.")
    source = Path(source).expanduser()
    if source.is_dir():
        cases = _cases_from_folder(source, data)
    elif source.is_file():
        cases = _cases_from_csv(source)
    else:
        raise InputError(f"Data source not found: {source}")
    return _check_cases(cases, source)


# ---------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """A case on its model grid: ``x`` and ``y`` float32 (D, H, W) in [0, 1], labelmaps int64
    (D, H, W) or ``None``, and the ``(low, high)`` source intensities mapped to 0 and 1."""

    name: str
    grid: Grid
    x: np.ndarray
    y: np.ndarray
    x_labels: np.ndarray | None
    y_labels: np.ndarray | None
    x_intensity_range: tuple[float, float]
    y_intensity_range: tuple[float, float]


def _labels_on_grid(
    path: Path | None, grid: Grid, read: dict[Path, np.ndarray]
) -> np.ndarray | None:
    """The labelmap at ``path`` resampled (nearest) onto ``grid`` as int64 (D, H, W), or
    ``None``; ``read`` caches maps already resampled, so a shared labelmap is read once."""
    if path is None:
        return None
    if path not in read:
        labels = resample_to_grid(read_labels(path), grid, "label")
        read[path] = sitk.GetArrayFromImage(labels).astype(np.int64)
    return read[path]


def preprocess_case(case: Case, data: DataConfig) -> PreparedCase:
    """Read ``case``, resample it onto its model grid and normalise its intensities.

    The grid is :func:`cocyclereg.grid.model_grid` of the ``y`` image with ``data.spacing`` and
    ``data.size`` (ITK order (i, j, k)), LPS-aligned when ``data.orientation == "LPS"``, in the
    ``y`` image's own orientation otherwise. Images are resampled linearly, labelmaps by
    nearest neighbour; ``x`` and ``y`` are normalised with ``data.x_normalization`` and
    ``data.y_normalization`` (percentiles over all voxels above the resampled volume's minimum).
    """
    y_image = read_image(case.y)
    direction = _LPS_DIRECTION if data.orientation == "LPS" else None
    grid = model_grid(y_image, spacing=data.spacing, size=data.size, direction=direction)
    x_array = sitk.GetArrayFromImage(resample_to_grid(read_image(case.x), grid, "linear"))
    y_array = sitk.GetArrayFromImage(resample_to_grid(y_image, grid, "linear"))
    x, x_range = normalize(x_array, data.x_normalization)
    y, y_range = normalize(y_array, data.y_normalization)
    resampled_labels: dict[Path, np.ndarray] = {}
    return PreparedCase(
        name=case.name,
        grid=grid,
        x=x,
        y=y,
        x_labels=_labels_on_grid(case.x_labels, grid, resampled_labels),
        y_labels=_labels_on_grid(case.y_labels, grid, resampled_labels),
        x_intensity_range=x_range,
        y_intensity_range=y_range,
    )


# ---------------------------------------------------------------------------- dataset


class PairedVolumes(Dataset):
    """Paired volumes on the model grid, one modality deformed by a seeded random field.

    Every case is preprocessed once at construction (:func:`preprocess_case`) and kept in
    memory. An item is a dict:

    * ``"x"``, ``"y"``: float32 tensors (1, D, H, W) in [0, 1];
    * ``"x_labels"``, ``"y_labels"``: int64 tensors (1, D, H, W), present only when the case
      has that labelmap (so batches of more than one item need all cases with labels, or none);
    * ``"deformation"``: float32 (3, D, H, W), the voxel resampling field (channels D, H, W)
      that deformed the ``data.deform`` modality: its image and labels at voxel ``p`` are the
      undeformed ones at ``p + deformation[:, p]``; zeros when nothing was deformed;
    * ``"name"``: the case name.

    Training (``training=True``): one item per case; the sample of ``index`` in ``epoch`` draws
    from ``numpy.random.default_rng([seed, epoch, index])``: an elastic field
    (``data.augmentation.elastic``), then an affine one (``.affine``) composed after it, and
    gamma and noise on both modalities (``.intensity``).

    Validation (``training=False``): ``data.validation_deformations`` items per case, item
    ``case_index * validation_deformations + k`` deformed by a fixed field drawn from
    ``default_rng([seed, case_index, k, 1])``, the same in every epoch; no intensity changes.
    """

    def __init__(
        self, cases: Sequence[Case], data: DataConfig, training: bool = True, seed: int = 0
    ) -> None:
        if not cases:
            raise InputError("A dataset needs at least one case.")
        if data.validation_deformations < 1:
            raise ConfigError("data.validation_deformations must be at least 1")
        self.cases = list(cases)
        self.data = data
        self.training = training
        self.seed = int(seed)
        self.epoch = 0
        progress = tqdm(
            self.cases, desc="Preparing cases", unit="case", disable=not sys.stderr.isatty()
        )
        self.prepared = [preprocess_case(case, data) for case in progress]
        self._image_warp = SpatialTransformer("bilinear")
        self._label_warp = SpatialTransformer("nearest")

    def __len__(self) -> int:
        per_case = 1 if self.training else self.data.validation_deformations
        return len(self.prepared) * per_case

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the random draws of ``dataset[index]`` (training only)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, self.epoch)

    def _case_and_rng(self, index: int, epoch: int) -> tuple[PreparedCase, np.random.Generator]:
        """The prepared case of item ``index`` and the generator of its random draws."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        if self.training:
            return self.prepared[index], np.random.default_rng([self.seed, epoch, index])
        case_index, k = divmod(index, self.data.validation_deformations)
        rng = np.random.default_rng([self.seed, case_index, k, _VALIDATION_STREAM])
        return self.prepared[case_index], rng

    def _random_deformation(
        self, shape_dhw: tuple[int, ...], rng: np.random.Generator
    ) -> np.ndarray:
        """The (3, D, H, W) float32 voxel field of the configured augmentation (zeros if none)."""
        augmentation = self.data.augmentation
        spacing = self.data.spacing
        flow = np.zeros((3, *shape_dhw), dtype=np.float32)
        if augmentation.elastic:
            flow = random_elastic_flow(
                shape_dhw,
                spacing,
                rng,
                augmentation.elastic_control_spacing_mm,
                augmentation.elastic_max_displacement_mm,
            )
        if augmentation.affine:
            affine = random_affine_flow(
                shape_dhw,
                spacing,
                rng,
                augmentation.affine_rotation_deg,
                augmentation.affine_scale,
                augmentation.affine_translation_mm,
            )
            flow = compose_flows(flow, affine) if augmentation.elastic else affine
        return flow

    def _warp(
        self, image: np.ndarray, labels: np.ndarray | None, flow: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` (trilinear, clipped to its [0, 1] range against rounding) and ``labels``
        (nearest) warped by ``flow`` (1, 3, D, H, W)."""
        warped = self._image_warp(torch.from_numpy(image)[None, None], flow)[0, 0].numpy()
        warped_image = np.clip(warped, 0.0, 1.0)
        if labels is None:
            return warped_image, None
        warped_labels = warp_labels(torch.from_numpy(labels)[None, None], flow, self._label_warp)
        return warped_image, warped_labels[0, 0].numpy()

    def sample(self, index: int, epoch: int) -> dict:
        """Item ``index`` as drawn in ``epoch``: the same for the same (seed, epoch, index).
        Validation items do not depend on ``epoch``. Keys and shapes: see the class docstring."""
        case, rng = self._case_and_rng(index, epoch)
        volumes = {"x": case.x, "y": case.y}
        labels = {"x": case.x_labels, "y": case.y_labels}
        deformation = self._random_deformation(case.x.shape, rng)
        if np.any(deformation):
            flow = torch.from_numpy(deformation)[None]
            side = self.data.deform
            volumes[side], labels[side] = self._warp(volumes[side], labels[side], flow)
        if self.training and self.data.augmentation.intensity:
            jitter = self.data.augmentation
            volumes = {
                side: intensity_jitter(volume, rng, jitter.gamma, jitter.noise_std)
                for side, volume in volumes.items()
            }
        item: dict = {
            side: torch.from_numpy(np.array(volume, dtype=np.float32))[None]
            for side, volume in volumes.items()
        }
        for side, labelmap in labels.items():
            if labelmap is not None:
                item[f"{side}_labels"] = torch.from_numpy(np.array(labelmap, dtype=np.int64))[None]
        item["deformation"] = torch.from_numpy(deformation)
        item["name"] = case.name
        return item
