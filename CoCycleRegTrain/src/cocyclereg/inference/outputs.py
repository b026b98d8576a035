"""Writing a registration's results: every output file together or none, and its JSON summary.

Shared by ``cocyclereg register`` and ``cocyclereg demo`` (and any script that calls
:func:`cocyclereg.inference.register.register`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cocyclereg.errors import InputError
from cocyclereg.geometry.displacement import (
    FIELD_IMAGE_SUFFIXES,
    TRANSFORM_FILE_SUFFIXES,
    write_displacement_transform,
)
from cocyclereg.io import WRITABLE_VOLUME_SUFFIXES, atomic_outputs, full_suffix, write_image

# The file types each kind of output can be written as.
OUTPUT_SUFFIXES = {
    "transform": TRANSFORM_FILE_SUFFIXES + FIELD_IMAGE_SUFFIXES,
    "image": WRITABLE_VOLUME_SUFFIXES,
    "json": None,  # any name
    "model": None,  # any name (.cocyclereg by convention)
}


def check_output_paths(
    outputs: Iterable[tuple[str, str, Path | None]], inputs: Iterable[Path] = ()
) -> None:
    """Refuse, before any work, outputs that could not be written: ``outputs`` holds
    ``(option, kind, path)`` with ``kind`` a key of ``OUTPUT_SUFFIXES`` (``path`` None: not
    asked for). Each path must have a suffix its kind supports, its own name (no output
    twice, none an input), an existing writable folder, and not be a folder itself. The
    message names the option and the path as the user gave it."""
    inputs = {Path(p).resolve() for p in inputs}
    seen: dict[Path, str] = {}
    for option, kind, path in outputs:
        if path is None:
            continue
        suffixes = OUTPUT_SUFFIXES[kind]
        if suffixes is not None and full_suffix(path) not in suffixes:
            given = full_suffix(path) or "no extension"
            raise InputError(
                f"{option} {path}: {given} is not a file type {kind} outputs can be written as; "
                f"use one of {', '.join(suffixes)}."
            )
        resolved = Path(path).resolve()
        if resolved in inputs:
            raise InputError(f"{option} {path} is one of the inputs; give the output its own path.")
        if resolved in seen:
            raise InputError(
                f"{option} {path} is also given to {seen[resolved]}; every output "
                "needs its own path."
            )
        seen[resolved] = option
        folder = resolved.parent
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{option} {path}: {folder} is a file, not a folder.")
        if not folder.is_dir():
            raise InputError(f"{option} {path}: the folder {folder} does not exist.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path}: the folder {folder} is not writable.")
        if resolved.is_dir():
            raise InputError(f"{option} {path} is a folder; give a file name.")


def _affine_summary(affine) -> dict | None:
    """The pre-alignment as matrix, centre and translation, with what it maps."""
    if affine is None:
        return None
    matrix = [list(affine.GetMatrix()[row * 3 : row * 3 + 3]) for row in range(3)]
    return {
        "maps": "a fixed-image point p (LPS mm) to the moving-image point to sample, "
        "A(p) = matrix (p - center) + center + translation; the deformable part of "
        "--transform is applied before it: T(p) = A(p + u(p))",
        "matrix": matrix,
        "center": list(affine.GetCenter()),
        "translation": list(affine.GetTranslation()),
    }


def _similarity_summary(similarity: dict[str, float]) -> dict | None:
    if not similarity:
        return None
    improved = similarity["after"] > similarity["before"]
    return {
        "measure": "normalised mutual information (H(F) + H(M)) / H(F, M) of the fixed image "
        "and the moving image on the fixed image's foreground, on the model grid: 1 unrelated, "
        "2 identical up to an intensity mapping",
        "better": "higher",
        "before": similarity["before"],
        "prealigned": similarity["prealigned"],
        "after": similarity["after"],
        "improved": improved,
        "verdict": "the images are more similar after registration"
        if improved
        else "the images are NOT more similar after registration than before: either they "
        "were aligned already, or it failed (same subject? the modalities the model expects?)",
    }


def _input_name(image) -> str:
    """An input as the summary names it: a file as its absolute path (so the summary, wherever
    it is read from, finds it: ``cocyclereg review``), an image in memory as itself."""
    if isinstance(image, str | os.PathLike):
        return str(Path(image).resolve())
    return str(image)


def registration_summary(result, fixed, moving, model) -> dict:
    """The JSON summary of a registration: inputs and the modality each was taken as, model,
    whether it worked (similarity before and after), folding, device, seconds, grids and
    the pre-alignment."""
    x, y = result.model.x_modality, result.model.y_modality
    return {
        "fixed": _input_name(fixed),
        "moving": _input_name(moving),
        "model": str(model),
        "modalities": {
            "moving": result.moving_modality,
            "fixed": result.fixed_modality,
            "model": {"x": x, "y": y},
            "explanation": f"the model registers its modality x ({x}) and y ({y}) in either "
            "direction; moving and fixed say which one each input was taken as "
            "(--moving-modality/--fixed-modality)",
        },
        "similarity": _similarity_summary(result.similarity),
        "folding": result.folding.as_dict(),
        "deformable_displacement_mm": {
            **result.deformable_displacement_mm,
            "explanation": "length of the deformable part of the transform (pre-alignment "
            "excluded) over the fixed image's foreground on the field grid: how far the network "
            "and the refinement moved the anatomy",
        },
        "model_provenance": {
            k: result.model.provenance.get(k) for k in ("cocyclereg_version", "exported", "steps")
        },
        "device": result.device,
        "network": result.used_network,  # seconds.network only when it ran
        "refinement": result.refinement.as_dict(),
        "seconds": result.seconds,
        "model_grid": {
            "size": list(result.model_grid.size),
            "spacing": list(result.model_grid.spacing),
        },
        "field_grid": {
            "size": list(result.field_grid.size),
            "spacing": list(result.field_grid.spacing),
        },
        "affine": _affine_summary(result.affine),
    }


def write_registration_outputs(
    result,
    transform: Path,
    *,
    inverse_transform: Path | None = None,
    warped: Path | None = None,
    jacobian: Path | None = None,
    warped_labels: Sequence[Path] = (),
    extra: Sequence[tuple[Path, Callable[[Path], object]]] = (),
) -> list[Path]:
    """Write the outputs of a :class:`~cocyclereg.inference.register.RegistrationResult`, all
    together or none: each goes to a temporary name beside its target, and all are renamed only when
    every one is complete. Returns the paths written, in the order given.

    ``warped_labels`` matches ``result.warped_labels``. ``extra`` holds ``(path, write)`` pairs
    for further files (summary, figure): ``write(temporary_path)`` writes one; they run after
    the images, when ``result.seconds["write"]`` holds the seconds the images took.
    """
    started = time.perf_counter()
    images = [
        (result.warped, warped),
        (result.jacobian, jacobian),
        *zip(result.warped_labels, warped_labels, strict=True),
    ]
    written = [transform]
    fields = [(result.transform, transform)]
    if inverse_transform is not None:
        fields.append((result.inverse_transform, inverse_transform))
        written.append(inverse_transform)
    images = [(image, path) for image, path in images if path is not None]
    written += [path for _, path in images]
    with atomic_outputs() as temporary, ThreadPoolExecutor(max_workers=2) as writer:
        # Disk-bound fields and compression-bound images (SimpleITK and h5py release the GIL):
        # two at a time, the warped image (the slowest to compress) first.
        jobs = [writer.submit(write_image, image, temporary(path)) for image, path in images]
        jobs += [
            writer.submit(write_displacement_transform, field, temporary(path))
            for field, path in fields
        ]
        for job in jobs:
            job.result()
        result.seconds["write"] = time.perf_counter() - started
        for path, write in extra:
            write(temporary(path))
            written.append(path)
    return written
