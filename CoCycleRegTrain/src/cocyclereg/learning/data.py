"""Paired multi-modal cases, their preprocessing onto the model grid, and the training dataset.

A case is one subject's co-registered pair of modalities ``x`` and ``y`` (for example T1 and
T2), optionally with labelmaps. Cases come from a CSV file or from a folder of case folders (see
:func:`load_cases`). Each case is resampled once onto the grid the networks run on, built from
its ``y`` image (:func:`preprocess_case`), and normalised to [0, 1]. The dataset
(:class:`PairedVolumes`) then deforms one modality with a seeded random field per sample, as the
CoCycleReg paper built its training pairs, so the field that misaligns the pair is known.
Label maps (:func:`load_label_maps`) add synthetic pairs with random contrasts
(:mod:`cocyclereg.learning.synthesis`).
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
from scipy.ndimage import binary_dilation
from torch.utils.data import Dataset
from tqdm import tqdm

from cocyclereg.config import ConfigError, DataConfig
from cocyclereg.errors import InputError
from cocyclereg.geometry.grid import Grid, model_grid
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.geometry.spatial_transformer import SpatialTransformer, warp_labels
from cocyclereg.inference.normalize import normalize
from cocyclereg.io import VOLUME_SUFFIXES, full_suffix, read_image, read_labels
from cocyclereg.learning.augment import (
    appearance_jitter,
    compose_flows,
    random_affine_flow,
    random_elastic_flow,
)
from cocyclereg.learning.synthesis import random_shapes, synthesize_image

# File names (without suffix) a case folder's shared labelmap may have, in order of preference.
LABEL_NAMES = ("labels", "tumor", "seg", "aseg")
CSV_COLUMNS = ("name", "x", "y", "labels", "x_labels", "y_labels")
_LPS_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_VALIDATION_STREAM = 1  # appended to validation seeds so they never repeat a training sample's
FOREGROUND_THRESHOLD = 0.02  # normalised intensity above which a voxel is part of the head
FOREGROUND_DILATION = 3  # voxels the head mask grows by, so motion at its edge still counts
ANATOMY_CONTROL_SPACING_MM = 48.0  # control grid of the anatomy augmentation's smooth warp


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

    The grid is :func:`cocyclereg.geometry.grid.model_grid` of the ``y`` image with ``data.spacing``
    and ``data.size`` (ITK order (i, j, k)), LPS-aligned when ``data.orientation == "LPS"``, in the
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


# ---------------------------------------------------------------------------- label maps


@dataclass(frozen=True, eq=False)
class PreparedLabels:
    """A label map on its model grid, the source of synthetic pairs: int64 (D, H, W); ``grid``
    is ``None`` for a map of random shapes, which lies on no scanner's grid."""

    name: str
    grid: Grid | None
    labels: np.ndarray


def load_label_maps(source: str | os.PathLike) -> list[Path]:
    """The label map files listed in the CSV ``source`` (column ``labels``; relative paths are
    relative to the CSV's folder). Raises :class:`InputError` for a missing column or file."""
    source = Path(source).expanduser()
    if not source.is_file():
        raise InputError(f"Label map list not found: {source}")
    with source.open(newline="") as stream:
        reader = csv.DictReader(stream)
        if "labels" not in [column.strip() for column in reader.fieldnames or []]:
            raise InputError(f"{source} needs a header row with a 'labels' column.")
        paths = [_csv_path(row.get("labels"), source.parent) for row in reader]
    paths = [path for path in paths if path is not None]
    if not paths:
        raise InputError(f"No label maps listed in {source}.")
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise _missing_files_error(missing, source)
    return paths


def prepare_label_map(path: Path, data: DataConfig) -> PreparedLabels:
    """The label map at ``path`` resampled (nearest) onto its model grid (as
    :func:`preprocess_case` builds it, from the label map's own geometry)."""
    labels = read_labels(path)
    direction = _LPS_DIRECTION if data.orientation == "LPS" else None
    grid = model_grid(labels, spacing=data.spacing, size=data.size, direction=direction)
    array = sitk.GetArrayFromImage(resample_to_grid(labels, grid, "label")).astype(np.int64)
    name = path.name[: -len(full_suffix(path))] if full_suffix(path) else path.stem
    return PreparedLabels(name=name, grid=grid, labels=array)


def foreground(mask: np.ndarray) -> np.ndarray:
    """``mask`` (bool (D, H, W)) grown by :data:`FOREGROUND_DILATION` voxels."""
    return binary_dilation(mask, iterations=FOREGROUND_DILATION)


# ---------------------------------------------------------------------------- dataset


class PairedVolumes(Dataset):
    """Paired volumes on the model grid, one side misaligned by a seeded random field.

    Every case (and label map) is prepared once at construction (:func:`preprocess_case`,
    :func:`prepare_label_map`) and kept in memory. An item is a dict:

    * ``"x"``, ``"y"``: float32 tensors (1, D, H, W) in [0, 1];
    * ``"x_labels"``, ``"y_labels"``: int64 tensors (1, D, H, W), present only when the case
      has that labelmap (so batches of more than one item need all sources with labels, or
      none; synthetic pairs always have them);
    * ``"deformation"``: float32 (3, D, H, W), the voxel resampling field (channels D, H, W)
      that misaligned side ``"deformed"``: its image and labels at voxel ``p`` are the aligned
      ones at ``p + deformation[:, p]``; zeros when nothing was deformed;
    * ``"deformed"``: ``"x"`` or ``"y"``, the side the deformation was applied to;
    * ``"foreground"``: bool (1, D, H, W), the head of the aligned pair (either image above
      :data:`FOREGROUND_THRESHOLD`, or a synthetic pair's labels), grown by
      :data:`FOREGROUND_DILATION` voxels;
    * ``"name"``: the case or label map name.

    Training (``training=True``): one item per case, then ``data.synthetic_repeats`` per label
    map (synthetic pairs: two independent random-contrast images of the map,
    :func:`cocyclereg.learning.synthesis.synthesize_image`), then ``data.synthetic_shapes``
    synthetic pairs of fresh random-shape maps (:func:`cocyclereg.learning.synthesis.random_shapes`,
    named ``shapes``); the sample of ``index`` in ``epoch``
    draws from ``numpy.random.default_rng([seed, epoch, index])``. In order: the misalignment (an
    elastic field, ``data.augmentation.elastic``, unless the pair is drawn undeformed; then an
    affine ``.affine`` and a rigid residual composed after it), the side (``data.deform``), the
    anatomy change applied to both images (``.anatomy``), and the appearance of each image
    (``.intensity``). See :class:`cocyclereg.config.AugmentationConfig`.

    Validation (``training=False``): ``data.validation_deformations`` items per case (label maps
    are not used), item ``case_index * validation_deformations + k`` deformed by a fixed field
    drawn from ``default_rng([seed, case_index, k, 1])``, the same in every epoch, on side
    ``x`` for even ``k`` and ``y`` for odd ``k`` when ``data.deform`` is ``random``; no anatomy or
    intensity changes.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        data: DataConfig,
        training: bool = True,
        seed: int = 0,
        label_maps: Sequence[Path] = (),
    ) -> None:
        if not cases and not (training and (label_maps or data.synthetic_shapes)):
            raise InputError(
                "A dataset needs at least one case (or, for training, a label map or "
                "data.synthetic_shapes)."
            )
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
        self.label_maps = (
            [prepare_label_map(Path(path), data) for path in label_maps] if training else []
        )
        self._image_warp = SpatialTransformer("bilinear")
        self._label_warp = SpatialTransformer("nearest")

    def __len__(self) -> int:
        if not self.training:
            return len(self.prepared) * self.data.validation_deformations
        return (
            len(self.prepared)
            + len(self.label_maps) * self.data.synthetic_repeats
            + self.data.synthetic_shapes
        )

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the random draws of ``dataset[index]`` (training only)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, self.epoch)

    def _source_and_rng(
        self, index: int, epoch: int
    ) -> tuple[PreparedCase | PreparedLabels, np.random.Generator, int]:
        """The prepared case or label map of item ``index``, the generator of its random draws,
        and its validation deformation number ``k`` (0 in training)."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        if self.training:
            rng = np.random.default_rng([self.seed, epoch, index])
            if index < len(self.prepared):
                return self.prepared[index], rng, 0
            label_index = (index - len(self.prepared)) // self.data.synthetic_repeats
            if label_index < len(self.label_maps):
                return self.label_maps[label_index], rng, 0
            shape_dhw = tuple(int(n) for n in reversed(self.data.size))
            return PreparedLabels("shapes", None, random_shapes(shape_dhw, rng)), rng, 0
        case_index, k = divmod(index, self.data.validation_deformations)
        rng = np.random.default_rng([self.seed, case_index, k, _VALIDATION_STREAM])
        return self.prepared[case_index], rng, k

    def _misalignment(self, shape_dhw: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """The (3, D, H, W) float32 voxel field that misaligns the pair (zeros if none).
        Validation pairs use the fixed control spacing and maximum, never the training-only
        ranges, undeformed pairs or rigid residual: they measure what the benchmark measures."""
        augmentation = self.data.augmentation
        spacing = self.data.spacing
        training = self.training
        flow = np.zeros((3, *shape_dhw), dtype=np.float32)
        control_mm = augmentation.elastic_control_spacing_mm
        if training and augmentation.elastic_control_spacing_range_mm is not None:
            control_mm = rng.uniform(*augmentation.elastic_control_spacing_range_mm)
        maximum_mm = augmentation.elastic_max_displacement_mm
        if training and augmentation.elastic_max_displacement_range_mm is not None:
            maximum_mm = rng.uniform(*augmentation.elastic_max_displacement_range_mm)
        undeformed = (
            training
            and augmentation.undeformed_probability > 0
            and rng.random() < augmentation.undeformed_probability
        )
        if (
            training
            and augmentation.aligned_probability > 0
            and rng.random() < augmentation.aligned_probability
        ):
            return flow  # no misalignment at all: R must return zero fields
        if augmentation.elastic and not undeformed and maximum_mm > 0:
            flow = random_elastic_flow(shape_dhw, spacing, rng, control_mm, maximum_mm)
        if augmentation.affine:
            affine = random_affine_flow(
                shape_dhw,
                spacing,
                rng,
                augmentation.affine_rotation_deg,
                augmentation.affine_scale,
                augmentation.affine_translation_mm,
            )
            flow = compose_flows(flow, affine)
        if training and (augmentation.rigid_residual_deg > 0 or augmentation.rigid_residual_mm > 0):
            rigid = random_affine_flow(
                shape_dhw,
                spacing,
                rng,
                augmentation.rigid_residual_deg,
                0.0,
                augmentation.rigid_residual_mm,
            )
            flow = compose_flows(flow, rigid)
        return flow

    def _anatomy(
        self, shape_dhw: tuple[int, ...], rng: np.random.Generator
    ) -> tuple[bool, np.ndarray]:
        """Whether to mirror left-right, and the (3, D, H, W) voxel field of the anatomy change
        (applied to both sides, after the mirror)."""
        augmentation = self.data.augmentation
        mirror = bool(rng.random() < augmentation.flip_probability)
        flow = random_affine_flow(
            shape_dhw,
            self.data.spacing,
            rng,
            augmentation.anatomy_rotation_deg,
            augmentation.anatomy_scale,
            augmentation.anatomy_translation_mm,
        )
        if augmentation.anatomy_elastic_mm > 0:
            warp = random_elastic_flow(
                shape_dhw,
                self.data.spacing,
                rng,
                ANATOMY_CONTROL_SPACING_MM,
                augmentation.anatomy_elastic_mm,
            )
            flow = compose_flows(warp, flow)
        return mirror, flow

    def _deformed_side(self, k: int, rng: np.random.Generator) -> str:
        if self.data.deform != "random":
            return self.data.deform
        if not self.training:
            return "x" if k % 2 == 0 else "y"
        return "x" if rng.random() < 0.5 else "y"

    def _warp(
        self, image: np.ndarray, labels: np.ndarray | None, flow: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` (trilinear, clipped to its [0, 1] range against rounding) and ``labels``
        (nearest) warped by the voxel field ``flow`` (3, D, H, W); unchanged for ``None``."""
        if flow is None:
            return image, labels
        field = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))[None]
        warped = self._image_warp(torch.from_numpy(image)[None, None], field)[0, 0].numpy()
        warped_image = np.clip(warped, 0.0, 1.0)
        if labels is None:
            return warped_image, None
        warped_labels = warp_labels(torch.from_numpy(labels)[None, None], field, self._label_warp)
        return warped_image, warped_labels[0, 0].numpy()

    def sample(self, index: int, epoch: int) -> dict:
        """Item ``index`` as drawn in ``epoch``: the same for the same (seed, epoch, index).
        Validation items do not depend on ``epoch``. Keys and shapes: see the class docstring."""
        source, rng, k = self._source_and_rng(index, epoch)
        if isinstance(source, PreparedLabels):
            synthesis = self.data.synthesis
            volumes = {
                "x": synthesize_image(source.labels, rng, synthesis),
                "y": synthesize_image(source.labels, rng, synthesis),
            }
            labels = {"x": source.labels, "y": source.labels}
            head = source.labels > 0
        else:
            volumes = {"x": source.x, "y": source.y}
            labels = {"x": source.x_labels, "y": source.y_labels}
            head = (source.x > FOREGROUND_THRESHOLD) | (source.y > FOREGROUND_THRESHOLD)
        shape = tuple(source.labels.shape if isinstance(source, PreparedLabels) else source.x.shape)
        deformation = self._misalignment(shape, rng)
        side = self._deformed_side(k, rng)
        anatomy = None
        if self.training and self.data.augmentation.anatomy:
            mirror, anatomy = self._anatomy(shape, rng)
            if mirror:  # the last array axis is left-right on the LPS-aligned model grid
                volumes = {s: np.ascontiguousarray(v[..., ::-1]) for s, v in volumes.items()}
                labels = {
                    s: None if m is None else np.ascontiguousarray(m[..., ::-1])
                    for s, m in labels.items()
                }
                head = np.ascontiguousarray(head[..., ::-1])
            head = self._warp(head.astype(np.float32), None, anatomy)[0] > 0.5
        deformed = bool(np.any(deformation))
        for s in ("x", "y"):
            flow = anatomy
            if s == side and deformed:
                flow = deformation if anatomy is None else compose_flows(deformation, anatomy)
            volumes[s], labels[s] = self._warp(volumes[s], labels[s], flow)
        if self.training and self.data.augmentation.intensity:
            jitter = self.data.augmentation
            volumes = {
                s: appearance_jitter(
                    volume,
                    rng,
                    jitter.gamma,
                    jitter.noise_std,
                    jitter.bias_strength,
                    jitter.blur_voxels,
                )
                for s, volume in volumes.items()
            }
        item: dict = {
            s: torch.from_numpy(np.array(volume, dtype=np.float32))[None]
            for s, volume in volumes.items()
        }
        for s, labelmap in labels.items():
            if labelmap is not None:
                item[f"{s}_labels"] = torch.from_numpy(np.array(labelmap, dtype=np.int64))[None]
        item["deformation"] = torch.from_numpy(deformation)
        item["deformed"] = side
        item["foreground"] = torch.from_numpy(foreground(head))[None]
        item["name"] = source.name
        return item
