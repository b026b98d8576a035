"""Writing a registration's results: every output file together or none, and its JSON summary.

Shared by ``cocyclereg register`` and ``cocyclereg demo`` (and any script that calls
:func:`cocyclereg.register.register`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cocyclereg.displacement import write_displacement_transform
from cocyclereg.io import atomic_outputs, write_image


def registration_summary(result, fixed, moving, model) -> dict:
    """The JSON summary of a registration: inputs, model, device, seconds, folding, grids."""
    return {
        "fixed": str(fixed),
        "moving": str(moving),
        "model": str(model),
        "modalities": {"x": result.model.x_modality, "y": result.model.y_modality},
        "model_provenance": {
            k: result.model.provenance.get(k) for k in ("cocyclereg_version", "exported", "steps")
        },
        "device": result.device,
        "network": result.used_network,
        "refinement": result.refinement.as_dict(),
        "seconds": result.seconds,
        "folding": result.folding.as_dict(),
        "model_grid": {
            "size": list(result.model_grid.size),
            "spacing": list(result.model_grid.spacing),
        },
        "field_grid": {
            "size": list(result.field_grid.size),
            "spacing": list(result.field_grid.spacing),
        },
        "affine": list(result.affine.GetParameters()) if result.affine is not None else None,
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
    """Write the outputs of a :class:`~cocyclereg.register.RegistrationResult`, all together or
    none: each goes to a temporary name beside its target, and all are renamed only when every
    one is complete. Returns the paths written, in the order given.

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
