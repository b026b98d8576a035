"""The manifest of a batch: a CSV file listing the pairs to register.

It has a header line. Columns ``id``, ``fixed`` and ``moving`` are required; ``labels``
(labelmaps on the moving grid, ``;``-separated), ``fixed_labels`` (their counterparts on the
fixed grid, same order), ``model``, ``fixed_modality`` and ``moving_modality`` (each overriding
the batch's setting for its row) are optional. Relative paths are read from the manifest's
folder. ``id`` names the pair's output folder.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cocyclereg.errors import InputError

REQUIRED_COLUMNS = ("id", "fixed", "moving")
OPTIONAL_COLUMNS = ("labels", "fixed_labels", "model", "fixed_modality", "moving_modality")
# The batch's table of results, beside the pair folders: no pair may be called so.
RESULTS_NAME = "results.csv"
# A pair's id names its output folder: a plain file name, never hidden.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


@dataclass(frozen=True)
class Pair:
    """One manifest row: absolute paths, and the row's overrides (``None``: the batch's)."""

    id: str
    fixed: Path
    moving: Path
    labels: tuple[Path, ...] = ()
    fixed_labels: tuple[Path, ...] = ()
    model: str | Path | None = None
    fixed_modality: str | None = None
    moving_modality: str | None = None


def _paths(value: str, folder: Path) -> tuple[Path, ...]:
    return tuple((folder / part.strip()).resolve() for part in value.split(";") if part.strip())


def read_manifest(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a manifest CSV (see the module docstring), in file order.

    Raises :class:`InputError` naming the line of every problem found: a missing file or
    header, a missing required or an unknown column, an empty required field, an id that is
    not a plain folder name or appears twice, labelmap lists of different lengths. Missing
    input files are not checked here: such a pair fails on its own and the batch goes on.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Manifest not found: {path}")
    folder = path.resolve().parent
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line} is not UTF-8 text (byte {data[error.start]:#04x}); save the "
            'manifest as UTF-8 ("CSV UTF-8" in a spreadsheet program).'
        ) from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [name.strip() for name in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise InputError(f"{path} is not a readable CSV file: {error}") from None
    if not header:
        raise InputError(f"{path} is empty; it needs a header line: id,fixed,moving")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise InputError(
            f"{path}: "
            + "; ".join(
                ([f"missing column(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown column(s) {', '.join(unknown)}"] if unknown else [])
            )
            + f". Columns: {', '.join(REQUIRED_COLUMNS)} (required), "
            f"{', '.join(OPTIONAL_COLUMNS)} (optional)."
        )
    pairs, problems, seen = [], [], {}
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} fields, the header has {len(header)}")
            continue
        values = {name: cell.strip() for name, cell in zip(header, row, strict=True)}
        empty = [name for name in REQUIRED_COLUMNS if not values[name]]
        if empty:
            problems.append(f"line {line}: empty {', '.join(empty)}")
            continue
        pair_id = values["id"]
        if not _ID_PATTERN.fullmatch(pair_id) or pair_id == RESULTS_NAME:
            problems.append(
                f"line {line}: id {pair_id!r} names the pair's output folder: use letters, "
                "digits, '_', '-' and '.', not first, at most 200 characters"
            )
            continue
        if pair_id in seen:
            problems.append(f"line {line}: id {pair_id!r} is already used on line {seen[pair_id]}")
            continue
        seen[pair_id] = line
        labels = _paths(values.get("labels", ""), folder)
        fixed_labels = _paths(values.get("fixed_labels", ""), folder)
        if fixed_labels and len(fixed_labels) != len(labels):
            problems.append(
                f"line {line}: {len(fixed_labels)} fixed_labels for {len(labels)} labels; give "
                "one fixed labelmap for each moving one, in the same order"
            )
            continue
        names = [label_name(p) for p in labels]
        if len(set(names)) != len(names):
            problems.append(
                f"line {line}: two labelmaps would both be written as warped_<name>: "
                f"{', '.join(names)}; rename one"
            )
            continue
        model = values.get("model") or None
        if model is not None and (folder / model).exists():
            model = (folder / model).resolve()
        pairs.append(
            Pair(
                pair_id,
                (folder / values["fixed"]).resolve(),
                (folder / values["moving"]).resolve(),
                labels,
                fixed_labels,
                model,
                values.get("fixed_modality") or None,
                values.get("moving_modality") or None,
            )
        )
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise InputError(f"{path} has {len(problems)} bad row(s):\n  " + "\n  ".join(shown))
    if not pairs:
        raise InputError(f"{path} lists no pairs.")
    return pairs


def label_name(path: Path) -> str:
    """The ``<name>`` of ``warped_<name>.nii.gz`` for a moving labelmap: its file name without
    the volume suffix and without a leading ``moving_`` (the demo's ``moving_tumor.nii.gz``
    gives ``tumor``)."""
    from cocyclereg.io import full_suffix

    name = path.name[: len(path.name) - len(full_suffix(path))] or path.name
    return name.removeprefix("moving_") or name
