"""Reading and writing volumes with their full geometry, and atomic output files.

Volumes are read and written through SimpleITK, so NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr)
and MetaImage (.mha, .mhd) keep origin, spacing, direction and pixel type exactly. Every write
goes to a temporary file beside the target and is renamed into place only when complete, so a
failure never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cocyclereg.errors import InputError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Single-file formats only: a detached header (.nhdr, .mhd) would name the temporary data file.
WRITABLE_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")

_INTEGER_PIXEL_IDS = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
}


def full_suffix(path: str | os.PathLike) -> str:
    """The file-type suffix ITK looks at: ``.nii.gz`` for ``a.nii.gz``, ``.h5`` for ``b.h5``."""
    name = Path(path).name.lower()
    for compound in (".nii.gz", ".nrrd.gz"):
        if name.endswith(compound):
            return compound
    return Path(path).suffix.lower()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix (ITK chooses the file format by it). If the block
    raises, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    if not target.parent.exists():
        raise InputError(f"Output folder does not exist: {target.parent}")
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    temporary = target.with_name(f".{stem}.partial-{secrets.token_hex(4)}{suffix}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_outputs() -> Iterator[Callable[[str | os.PathLike], Path]]:
    """A group of outputs that appear together or not at all.

    Yields ``temporary(path)``, which returns a temporary path beside ``path`` (as
    :func:`atomic_output`). When the block succeeds every temporary file is renamed to its
    target; if it raises, every temporary file is removed and no target is touched.
    """
    with contextlib.ExitStack() as stack:

        def temporary(path: str | os.PathLike) -> Path:
            return stack.enter_context(atomic_output(path))

        yield temporary


def _read(path: str | os.PathLike) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise InputError(f"File not found: {path}")
    if path.is_dir():
        raise InputError(f"Expected a volume file but got a folder: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise InputError(f"Cannot read {path} as a volume: {first_line}") from error


def _require_scalar_3d(image: sitk.Image, path: str | os.PathLike) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a scalar volume is required (not an RGB, vector or tensor image)."
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(
            f"{path} is a {image.GetDimension()}D image of size {image.GetSize()}; "
            "a 3D volume is required."
        )
    return image


def nifti_non_finite_count(path: str | os.PathLike) -> int | None:
    """How many NaN or infinite values the data block of a NIfTI file (.nii, .nii.gz) holds.

    ITK's NIfTI reader replaces non-finite voxels by 0, so they cannot be seen in the image it
    returns; this reads the stored values themselves (nibabel, before any intensity scaling).
    Integer data cannot hold them (0). ``None`` when ``path`` is not a NIfTI file or nibabel
    cannot read it (ITK then is the judge).
    """
    if full_suffix(path) not in (".nii", ".nii.gz"):
        return None
    import nibabel

    try:
        nifti = nibabel.load(str(path))
        if nifti.header.get_data_dtype().kind not in "fc":
            return 0
        stored = np.asarray(nifti.dataobj.get_unscaled())
    except Exception:  # nibabel may refuse files ITK reads; ITK already read this one
        return None
    return int(stored.size - np.count_nonzero(np.isfinite(stored)))


def _refuse_non_finite(image: sitk.Image, path: str | os.PathLike) -> None:
    """:class:`InputError` naming ``path`` and the count if it holds NaN or infinite voxels."""
    bad = nifti_non_finite_count(path)  # None: not NIfTI, so ITK kept any NaN in the image
    if bad is None and image.GetPixelID() not in _INTEGER_PIXEL_IDS:
        array = sitk.GetArrayViewFromImage(image)
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(
            f"{path} has {bad} NaN or infinite voxels; replace them (e.g. by 0 or the "
            "background value) before registering."
        )


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a scalar 3D intensity volume, keeping its geometry and pixel type.

    Raises :class:`InputError` for a missing or unreadable file, a 2D, 4D or multi-component
    image, or an image with NaN or infinite voxels (in a NIfTI file these are found in the
    file's own data, since ITK's NIfTI reader turns them into 0).
    """
    image = _require_scalar_3d(_read(path), path)
    _refuse_non_finite(image, path)
    return image


def read_labels(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D labelmap as an integer image.

    Labelmaps stored with a floating-point pixel type are accepted when every value is a whole
    number, and converted to the smallest integer type that holds them; otherwise, or if it
    holds NaN or infinite voxels, :class:`InputError` is raised.
    """
    image = _require_scalar_3d(_read(path), path)
    _refuse_non_finite(image, path)
    if image.GetPixelID() in _INTEGER_PIXEL_IDS:
        return image
    array = sitk.GetArrayFromImage(image)
    if not np.array_equal(array, np.round(array)):  # finite: _refuse_non_finite checked
        raise InputError(f"{path} is not a labelmap: it holds non-integer values.")
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            break
    else:
        dtype = np.int64
    labels = sitk.GetImageFromArray(array.astype(dtype))
    labels.CopyInformation(image)
    return labels


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file, then rename). Returns the path."""
    if full_suffix(path) not in WRITABLE_VOLUME_SUFFIXES:
        raise InputError(
            f"Unsupported output file type for {path}; "
            f"use one of {', '.join(WRITABLE_VOLUME_SUFFIXES)}."
        )
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), compress)
    return Path(path)
