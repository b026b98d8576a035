"""Physical displacement fields and ITK displacement-field transform files.

A displacement field here is always a *resampling* field on a grid: at the fixed-space LPS
point ``p`` (a voxel centre of the grid) it holds ``u(p)`` in mm so that ``p + u(p)`` is the
moving-space point to sample. That is the meaning ITK gives a ``DisplacementFieldTransform``
used in ``Resample``, the meaning ANTs gives its warp files, and the meaning 3D Slicer gives a
transform node's TransformFromParent; so the files written here apply unchanged in SimpleITK,
ITK, ANTs and Slicer.

Array conventions: a voxel field is ``(3, D, H, W)`` in voxels with channel order (D, H, W);
a physical field is ``(D, H, W, 3)`` in LPS mm with last axis (x, y, z), the layout of
``SimpleITK.GetArrayFromImage`` on a vector image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cocyclereg.errors import GeometryError, InputError
from cocyclereg.geometry.grid import Grid
from cocyclereg.io import atomic_output, full_suffix

TRANSFORM_FILE_SUFFIXES = (".h5", ".hdf5")
FIELD_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def voxel_flow_to_displacement_mm(flow_voxels: np.ndarray, grid: Grid) -> np.ndarray:
    """Voxel resampling field ``(3, D, H, W)`` (channels D, H, W) -> LPS mm ``(D, H, W, 3)``.

    A step ``(dk, dj, di)`` voxels on ``grid`` is the LPS step ``direction @ diag(spacing) @
    (di, dj, dk)`` mm.
    """
    flow_voxels = np.asarray(flow_voxels, dtype=np.float64)
    if flow_voxels.shape != (3, *grid.shape):
        raise GeometryError(
            f"flow shape {flow_voxels.shape} is not (3, {', '.join(map(str, grid.shape))})"
        )
    flow_ijk = np.moveaxis(flow_voxels[::-1], 0, -1)  # (D, H, W, [i, j, k])
    return flow_ijk @ grid.index_to_physical_matrix.T


def displacement_mm_to_voxel_flow(displacement_mm: np.ndarray, grid: Grid) -> np.ndarray:
    """LPS mm ``(D, H, W, 3)`` -> voxel resampling field ``(3, D, H, W)`` (channels D, H, W)."""
    displacement_mm = np.asarray(displacement_mm, dtype=np.float64)
    if displacement_mm.shape != (*grid.shape, 3):
        raise GeometryError(f"displacement shape {displacement_mm.shape} is not {(*grid.shape, 3)}")
    flow_ijk = displacement_mm @ np.linalg.inv(grid.index_to_physical_matrix).T
    return np.moveaxis(flow_ijk, -1, 0)[::-1].copy()


def displacement_field_image(
    displacement_mm: np.ndarray, grid: Grid, dtype: type = np.float64
) -> sitk.Image:
    """A SimpleITK vector image (3 components of ``dtype``: float64 or float32) holding
    ``displacement_mm`` on ``grid``."""
    displacement_mm = np.asarray(displacement_mm, dtype=dtype)
    if displacement_mm.shape != (*grid.shape, 3):
        raise GeometryError(f"displacement shape {displacement_mm.shape} is not {(*grid.shape, 3)}")
    image = sitk.GetImageFromArray(displacement_mm, isVector=True)
    return grid.apply_to(image)


def displacement_array(field: sitk.Image) -> np.ndarray:
    """The ``(D, H, W, 3)`` LPS mm array of a displacement field image (float64 copy)."""
    return sitk.GetArrayFromImage(field).astype(np.float64, copy=False)


def displacement_transform(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    """An ITK displacement-field transform (linear interpolation) of ``field``.

    ``field`` is copied: SimpleITK's constructor empties the image it is given.
    """
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def _check_field(
    field: sitk.Image, source: str, pixel_type: int = sitk.sitkVectorFloat64
) -> sitk.Image:
    """``field`` as a finite 3D displacement field of ``pixel_type`` (cast only if needed)."""
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise InputError(
            f"{source} is not a 3D displacement field (got a {field.GetDimension()}D image with "
            f"{field.GetNumberOfComponentsPerPixel()} components per voxel)."
        )
    if field.GetPixelID() != pixel_type:
        field = sitk.Cast(field, pixel_type)
    if not np.all(np.isfinite(sitk.GetArrayViewFromImage(field))):
        raise InputError(f"{source} holds NaN or infinite displacements.")
    return field


def _write_itk_hdf5(field: sitk.Image, path: Path) -> None:
    """One ``DisplacementFieldTransform_float_3_3`` in ITK's HDF5 transform-file layout (what
    ITK's ``HDF5TransformIO`` writes for a float transform): fixed parameters size, origin,
    spacing and row-major direction (float64); parameters the LPS mm vectors voxel after voxel,
    i fastest (float32). ITK readers (SimpleITK, ANTs, Slicer) convert float transforms to
    double on reading. Written directly because SimpleITK only writes double transforms: twice
    the bytes, and twice the time, for precision (1e-7 of a displacement) no user needs."""
    import h5py

    text = h5py.string_dtype("ascii")
    with h5py.File(path, "w") as file:
        group = file.create_group("TransformGroup/0")
        group.create_dataset(
            "TransformType", data=[b"DisplacementFieldTransform_float_3_3"], dtype=text
        )
        fixed = [*field.GetSize(), *field.GetOrigin(), *field.GetSpacing(), *field.GetDirection()]
        group.create_dataset("TransformFixedParameters", data=np.asarray(fixed, np.float64))
        vectors = sitk.GetArrayViewFromImage(field).reshape(-1)
        group.create_dataset("TransformParameters", data=vectors, dtype=np.float32)


def write_displacement_transform(field: sitk.Image, path: str | os.PathLike) -> Path:
    """Write a displacement field as an ITK transform file, atomically, in float32.

    ``.h5``/``.hdf5``: an ITK HDF5 transform file holding one ``DisplacementFieldTransform``
    (read by SimpleITK/ITK ``ReadTransform``, ANTs and Slicer). ``.nii.gz``/``.nii``/``.nrrd``/
    ``.mha``: a 3-component vector image of LPS displacements in mm (ANTs warp-file convention;
    Slicer and ITK load it as a displacement-field transform).
    """
    field = _check_field(field, "field", sitk.sitkVectorFloat32)
    suffix = full_suffix(path)
    with atomic_output(path) as temporary:
        if suffix in TRANSFORM_FILE_SUFFIXES:
            _write_itk_hdf5(field, temporary)
        elif suffix in FIELD_IMAGE_SUFFIXES:
            sitk.WriteImage(field, str(temporary), True)
        else:
            raise InputError(
                f"Unsupported transform file type for {path}; use one of "
                f"{', '.join(TRANSFORM_FILE_SUFFIXES + FIELD_IMAGE_SUFFIXES)}."
            )
    return Path(path)


def read_displacement_field(path: str | os.PathLike) -> sitk.Image:
    """Read a displacement field written by this package, ANTs, ITK or Slicer.

    Returns a float64 vector image of LPS mm resampling displacements on the field's grid.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Transform file not found: {path}")
    if full_suffix(path) in TRANSFORM_FILE_SUFFIXES:
        try:
            transform = sitk.ReadTransform(str(path)).Downcast()
        except RuntimeError as error:
            raise InputError(f"Cannot read {path} as an ITK transform file.") from error
        if (
            isinstance(transform, sitk.CompositeTransform)
            and transform.GetNumberOfTransforms() == 1
        ):
            transform = transform.GetNthTransform(0).Downcast()
        if not isinstance(transform, sitk.DisplacementFieldTransform):
            raise InputError(
                f"{path} holds a {transform.GetName()}, not a single displacement-field "
                "transform; in Python, cocyclereg.geometry.displacement."
                "transform_to_displacement_field(transform, grid) converts one onto a grid."
            )
        return _check_field(transform.GetDisplacementField(), str(path))
    try:
        field = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"Cannot read {path} as a displacement field image.") from error
    return _check_field(field, str(path))


def transform_to_displacement_field(transform: sitk.Transform, grid: Grid) -> sitk.Image:
    """Sample any SimpleITK transform at the voxel centres of ``grid``: ``T(p) - p`` in LPS mm."""
    converter = sitk.TransformToDisplacementFieldFilter()
    converter.SetOutputPixelType(sitk.sitkVectorFloat64)
    converter.SetSize(list(grid.size))
    converter.SetOutputSpacing(grid.spacing)
    converter.SetOutputOrigin(grid.origin)
    converter.SetOutputDirection(grid.direction)
    return converter.Execute(transform)


def affine_parameters(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``transform(p) = A @ p + b`` (LPS mm) for any linear SimpleITK transform:
    affine, Euler, similarity, versor, scale, translation, or a composite of them."""
    if not transform.IsLinear():
        raise InputError(f"{transform.GetName()} is not an affine transform.")
    offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.asarray(transform.TransformPoint(tuple(axis))) - offset for axis in np.eye(3)]
    return np.stack(columns, axis=1), offset


def compose_affine_after_displacement(affine: sitk.Transform, field: sitk.Image) -> sitk.Image:
    """One displacement field for "first the deformable field, then the affine".

    With ``field`` holding ``u`` on the fixed grid and ``affine`` mapping fixed-space points to
    moving-space points ``A p + b`` (the resampling affine of a pre-alignment), the result holds
    ``c(p) = A (p + u(p)) + b - p`` on the same grid: sampling the moving image at ``p + c(p)``
    equals sampling the affinely resampled moving image at ``p + u(p)``. It equals ITK's
    ``CompositeTransform([affine, displacement])``, which applies the displacement first.
    """
    matrix, offset = affine_parameters(affine)
    grid = Grid.from_image(field)
    points = grid.physical_points()
    displacement = displacement_array(field)
    composed = (points + displacement) @ matrix.T + offset - points
    return displacement_field_image(composed, grid)
