"""Reading a result folder for review: the pairs it holds and each pair's files.

A result folder is either one registration's output (``cocyclereg demo``, ``cocyclereg
register --summary``: a ``summary.json`` beside the outputs) or a batch's output
(``cocyclereg batch``: ``results.csv`` and one sub-folder per registered pair, each with its
``summary.json``). Nothing here needs Slicer or trame.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from cocyclereg.errors import InputError
from cocyclereg.inference.batch import SUMMARY_NAME
from cocyclereg.inference.manifest import RESULTS_NAME


@dataclass(frozen=True)
class PairFiles:
    """The files that show one registration: the inputs as its summary records them, and the
    outputs in its folder. A path is ``None`` where the file was not written or is gone.

    ``transform`` maps fixed-image points to moving-image points (resampling direction, ITK,
    LPS mm); ``warped`` is the moving image resampled onto the fixed grid by the package;
    ``jacobian`` is det(I + grad u) on the fixed grid; ``warped_labels`` maps each labelmap's
    name to its warped copy on the fixed grid.
    """

    fixed: Path | None
    moving: Path | None
    transform: Path | None
    warped: Path | None
    jacobian: Path | None
    warped_labels: dict[str, Path]


@dataclass(frozen=True)
class ReviewPair:
    """One row of the page's pair list.

    ``status`` is ``registered``, ``skipped`` (complete from an earlier batch run), ``failed``
    (``error`` says why) or ``pending``; ``folding_percent`` is the percentage of fixed-grid
    voxels with J <= 0; ``dice`` the mean Dice after registration of each labelmap scored
    (empty where no fixed labels were given); ``files`` is ``None`` when the pair has no
    complete folder.
    """

    id: str
    status: str
    folding_voxels: int | None = None
    folding_percent: float | None = None
    dice: tuple[float, ...] = ()
    error: str = ""
    files: PairFiles | None = None

    @property
    def viewable(self) -> bool:
        return self.files is not None and self.files.fixed is not None


def _existing(path: str | Path | None, folder: Path, written_in: Path | None = None) -> Path | None:
    """The file ``path`` recorded by a summary now in ``folder``: where the summary was written
    (``written_in``) is not ``folder``, the folder was copied or moved, and a recorded path
    inside ``written_in`` is looked for at the same place under ``folder`` first (the copy's
    own file, not the original's, which may have been overwritten since). Then ``path``
    itself, then the file of the same name in ``folder``; ``None`` if none exists."""
    if not path:
        return None
    path = Path(path)
    if not path.is_absolute():
        path = folder / path
    candidates = [path, folder / path.name]
    if written_in is not None and written_in != folder and path.is_relative_to(written_in):
        candidates.insert(0, folder / path.relative_to(written_in))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _read_summary(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable cocyclereg summary: {error}") from None
    if not isinstance(document, dict) or "fixed" not in document:
        raise InputError(f"{path} is not a cocyclereg summary (it names no fixed image)")
    return document


def pair_files(folder: Path, summary: dict) -> PairFiles:
    """The files of the registration whose ``summary`` lies in ``folder``. The outputs are the
    ones the summary lists under ``outputs`` (``cocyclereg register``), else the names
    ``cocyclereg demo`` and ``batch`` write (``transform.h5``, ``warped_<moving
    modality>.nii.gz``, ``jacobian.nii.gz``, ``warped_<labels name>.nii.gz``)."""
    modality = (summary.get("modalities") or {}).get("moving", "")
    if "outputs" in summary:  # register: exactly the files it wrote; none other is its own
        outputs = summary["outputs"] or {}
        labels = outputs.get("warped_labels") or {}
    else:  # demo and batch: their fixed names
        outputs = {
            "transform": "transform.h5",
            "warped": f"warped_{modality}.nii.gz",
            "jacobian": "jacobian.nii.gz",
        }
        labels = {name: f"warped_{name}.nii.gz" for name in summary.get("labels") or {}}
    written_in = Path(outputs["folder"]) if outputs.get("folder") else None
    folder = folder.resolve()

    def find(path):
        return _existing(path, folder, written_in)

    return PairFiles(
        fixed=find(summary.get("fixed")) if summary.get("fixed") else None,
        moving=Path(summary["moving"]) if Path(summary.get("moving", "")).is_file() else None,
        transform=find(outputs.get("transform")),
        warped=find(outputs.get("warped")),
        jacobian=find(outputs.get("jacobian")),
        warped_labels={
            name: found for name, path in labels.items() if (found := find(path)) is not None
        },
    )


def _mean_dice(summary: dict) -> tuple[float, ...]:
    scores = []
    for entry in (summary.get("labels") or {}).values():
        after = (entry or {}).get("after") or {}
        if after.get("mean_dice") is not None:
            scores.append(float(after["mean_dice"]))
    return tuple(scores)


def _number(text: str, kind=float):
    return kind(text) if text.strip() else None


def _single(folder: Path) -> list[ReviewPair]:
    summary = _read_summary(folder / SUMMARY_NAME)
    folding = summary.get("folding") or {}
    return [
        ReviewPair(
            id=str(summary.get("id") or folder.resolve().name),
            status="registered",
            folding_voxels=folding.get("folding_voxels"),
            folding_percent=folding.get("folding_percent"),
            dice=_mean_dice(summary),
            files=pair_files(folder, summary),
        )
    ]


def _batch(folder: Path) -> list[ReviewPair]:
    path = folder / RESULTS_NAME
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not a readable batch results table: {error}") from None
    if rows and not {"id", "status"} <= set(rows[0]):
        raise InputError(f"{path} is not a cocyclereg batch results table (no id/status columns)")
    pairs = []
    for line, row in enumerate(rows, start=2):
        pair_id, status = row.get("id") or "", row.get("status") or "pending"
        if not pair_id or Path(pair_id).name != pair_id or pair_id in (".", ".."):
            raise InputError(f"{path}, line {line}: {pair_id!r} is not a pair id (a folder name)")
        pair_folder, files, error = folder / pair_id, None, row.get("error") or ""
        try:
            folding_voxels = _number(row.get("folding_voxels") or "", int)
            folding_percent = _number(row.get("folding_percent") or "")
            dice = tuple(float(v) for v in (row.get("dice") or "").split(";") if v.strip())
        except ValueError as bad:
            raise InputError(f"{path}, line {line}: not a number ({bad})") from None
        if status in ("registered", "skipped") and (pair_folder / SUMMARY_NAME).is_file():
            try:
                files = pair_files(pair_folder, _read_summary(pair_folder / SUMMARY_NAME))
            except InputError as unreadable:  # that pair only; the others are still shown
                status, error = "failed", str(unreadable)
        pairs.append(
            ReviewPair(
                id=pair_id,
                status=status,
                folding_voxels=folding_voxels,
                folding_percent=folding_percent,
                dice=dice,
                error=error,
                files=files,
            )
        )
    return pairs


def read_result_folder(path: str | Path) -> list[ReviewPair]:
    """The pairs of a result folder, in the order the batch lists them (one for a single
    registration). Raises :class:`InputError` when ``path`` is not a result folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{path} is not a folder: give a cocyclereg result folder.")
    if (folder / RESULTS_NAME).is_file():
        return _batch(folder)
    if (folder / SUMMARY_NAME).is_file():
        return _single(folder)
    raise InputError(
        f"{path} is not a cocyclereg result folder: it holds neither {SUMMARY_NAME} (the output "
        f"of cocyclereg demo, or of cocyclereg register with --summary) nor {RESULTS_NAME} (the "
        "output of cocyclereg batch)."
    )
