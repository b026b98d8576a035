"""Displacement fields in mm and transform files: the torch warp, SimpleITK, ANTs and Slicer
must all apply the same field to the same voxels. The central geometry test of the product."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TEST_GRIDS, image_on, smooth_flow, smooth_volume
from scipy.ndimage import binary_erosion

from cocyclereg.errors import GeometryError, InputError
from cocyclereg.geometry.displacement import (
    affine_parameters,
    compose_affine_after_displacement,
    displacement_array,
    displacement_field_image,
    displacement_mm_to_voxel_flow,
    displacement_transform,
    read_displacement_field,
    transform_to_displacement_field,
    voxel_flow_to_displacement_mm,
    write_displacement_transform,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.spatial_transformer import SpatialTransformer, warp_labels

OUTSIDE = -1000.0


def _torch_warp(volume: np.ndarray, flow: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    image = torch.from_numpy(volume.astype(np.float64))[None, None]
    field = torch.from_numpy(flow)[None]
    if mode == "nearest":
        return warp_labels(image.long(), field.double())[0, 0].numpy()
    return SpatialTransformer(mode)(image, field)[0, 0].numpy()


def _strictly_inside(grid: Grid, flow: np.ndarray) -> np.ndarray:
    """Voxels whose sampling position stays within [0, n-1] on every axis (no border rule)."""
    positions = np.indices(grid.shape, dtype=float) + flow
    return np.all(
        [(positions[a] >= 0) & (positions[a] <= n - 1) for a, n in enumerate(grid.shape)], axis=0
    )


@pytest.mark.parametrize("suffix", [".h5", ".nii.gz"])
def test_written_field_applied_by_simpleitk_equals_torch_warp(test_grid, tmp_path, suffix):
    volume, flow = smooth_volume(test_grid), smooth_flow(test_grid, max_voxels=4.0)
    field = displacement_field_image(voxel_flow_to_displacement_mm(flow, test_grid), test_grid)
    path = write_displacement_transform(field, tmp_path / f"warp{suffix}")

    # Independent reader: plain SimpleITK, no code of ours.
    if suffix == ".h5":
        transform = sitk.ReadTransform(str(path))
    else:
        transform = sitk.DisplacementFieldTransform(
            sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
        )
    moving = image_on(test_grid, volume.astype(np.float64))
    by_itk = sitk.GetArrayFromImage(
        sitk.Resample(moving, moving, transform, sitk.sitkLinear, OUTSIDE, sitk.sitkFloat64)
    )
    by_torch = _torch_warp(volume, flow)
    inside = _strictly_inside(test_grid, flow)
    assert inside.mean() > 0.5
    # Files hold float32 displacements (and NIfTI a float32 sform): positions agree to ~1e-6 mm.
    np.testing.assert_allclose(by_itk[inside], by_torch[inside], atol=1e-5)


def test_label_warp_by_simpleitk_file_equals_torch_nearest(tmp_path):
    grid = TEST_GRIDS["oblique-flip-yz"]
    rng = np.random.default_rng(2)
    labels = rng.choice(np.array([0, 1, 4, 9], np.int16), size=grid.shape)
    flow = smooth_flow(grid, max_voxels=4.0)
    field = displacement_field_image(voxel_flow_to_displacement_mm(flow, grid), grid)
    transform = sitk.ReadTransform(str(write_displacement_transform(field, tmp_path / "w.h5")))
    moving = image_on(grid, labels)
    by_itk = sitk.GetArrayFromImage(
        sitk.Resample(moving, moving, transform, sitk.sitkNearestNeighbor)
    )
    by_torch = _torch_warp(labels, flow, mode="nearest")
    inside = _strictly_inside(grid, flow)
    assert (by_itk[inside] == by_torch[inside]).mean() > 0.999  # ties at .5 may round apart
    assert set(np.unique(by_itk)) <= {0, 1, 4, 9}


@pytest.mark.parametrize("suffix", [".h5", ".nii.gz"])
def test_ants_applies_the_written_field_like_simpleitk(tmp_path, suffix):
    ants = pytest.importorskip("ants")
    grid = TEST_GRIDS["oblique-flip-x"]
    volume, flow = smooth_volume(grid), smooth_flow(grid, max_voxels=4.0)
    field = displacement_field_image(voxel_flow_to_displacement_mm(flow, grid), grid)
    warp = write_displacement_transform(field, tmp_path / f"warp{suffix}")
    sitk.WriteImage(image_on(grid, volume), str(tmp_path / "moving.nii.gz"))
    moving = ants.image_read(str(tmp_path / "moving.nii.gz"))
    by_ants = ants.apply_transforms(moving, moving, [str(warp)], interpolator="linear").numpy()
    by_torch = _torch_warp(volume, flow)
    inside = _strictly_inside(grid, flow)
    np.testing.assert_allclose(by_ants.transpose(2, 1, 0)[inside], by_torch[inside], atol=1e-5)


@pytest.mark.parametrize("suffix", [".h5", ".nii.gz"])
def test_slicer_reads_the_file_as_the_same_resampling_transform(tmp_path, suffix):
    slicer = pytest.importorskip("slicer")
    grid = TEST_GRIDS["oblique-flip-yz"]
    displacement = voxel_flow_to_displacement_mm(smooth_flow(grid, max_voxels=4.0), grid)
    path = write_displacement_transform(
        displacement_field_image(displacement, grid), tmp_path / f"warp{suffix}"
    )
    scene = slicer.vtkMRMLScene()
    storage = slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    node = slicer.vtkMRMLTransformNode()
    scene.AddNode(node)
    assert storage.ReadData(node)
    from_parent = node.GetTransformFromParent()  # fixed RAS point -> moving RAS point
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    points = grid.physical_points().reshape(-1, 3)
    moved = points + displacement.reshape(-1, 3)
    rng = np.random.default_rng(0)
    for index in rng.choice(len(points), 300, replace=False):
        mapped = np.asarray(from_parent.TransformPoint(points[index] * lps_to_ras)) * lps_to_ras
        np.testing.assert_allclose(mapped, moved[index], atol=1e-6)


def test_voxel_and_mm_fields_round_trip(test_grid):
    flow = smooth_flow(test_grid, max_voxels=3.0)
    displacement = voxel_flow_to_displacement_mm(flow, test_grid)
    np.testing.assert_allclose(
        displacement_mm_to_voxel_flow(displacement, test_grid), flow, atol=1e-12
    )
    # Lengths: a flow of 1 voxel along axis k moves by spacing[2] mm.
    unit_k = np.zeros((3, *test_grid.shape))
    unit_k[0] = 1.0
    lengths = np.linalg.norm(voxel_flow_to_displacement_mm(unit_k, test_grid), axis=-1)
    np.testing.assert_allclose(lengths, test_grid.spacing[2])


def test_known_translation_is_recovered_exactly_in_mm(test_grid):
    translation = np.array([4.5, -2.25, 7.0])  # LPS mm
    # The voxel flow of a translation: M^-1 t in (i, j, k), stored as channels (k, j, i).
    per_voxel = np.linalg.solve(test_grid.index_to_physical_matrix, translation)[::-1]
    flow = np.broadcast_to(per_voxel[:, None, None, None], (3, *test_grid.shape))
    displacement = voxel_flow_to_displacement_mm(flow, test_grid)
    np.testing.assert_allclose(
        displacement, np.broadcast_to(translation, displacement.shape), atol=1e-12
    )
    by_itk = displacement_array(
        transform_to_displacement_field(sitk.TranslationTransform(3, tuple(translation)), test_grid)
    )
    np.testing.assert_allclose(displacement, by_itk, atol=1e-12)


def _test_affine(grid: Grid) -> sitk.AffineTransform:
    matrix = np.array([[1.08, 0.07, -0.05], [-0.04, 0.93, 0.11], [0.06, -0.09, 1.15]])
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetTranslation((3.0, -5.0, 2.5))
    affine.SetCenter(tuple(grid.index_to_physical((np.asarray(grid.size) - 1) / 2)))
    return affine


def test_known_affine_field_is_recovered_exactly_with_its_determinant(test_grid):
    from cocyclereg.geometry.jacobian import folding_stats, jacobian_determinant

    affine = _test_affine(test_grid)
    # Voxel flow by plain index arithmetic through SimpleITK's own point mapping.
    reference = test_grid.reference_image()
    flow = np.zeros((3, *test_grid.shape))
    for k, j, i in np.ndindex(*test_grid.shape):
        moved = affine.TransformPoint(reference.TransformIndexToPhysicalPoint((i, j, k)))
        flow[:, k, j, i] = np.asarray(reference.TransformPhysicalPointToContinuousIndex(moved))[
            ::-1
        ] - (k, j, i)
    displacement = voxel_flow_to_displacement_mm(flow, test_grid)
    by_itk = displacement_array(transform_to_displacement_field(affine, test_grid))
    np.testing.assert_allclose(displacement, by_itk, atol=1e-9)

    determinant = sitk.GetArrayFromImage(
        jacobian_determinant(displacement_field_image(displacement, test_grid))
    )
    np.testing.assert_allclose(
        determinant, np.linalg.det(np.reshape(affine.GetMatrix(), (3, 3))), rtol=1e-6
    )
    assert folding_stats(determinant).folding_voxels == 0


def test_composition_with_affine_equals_itk_composite_transform(test_grid):
    affine = _test_affine(test_grid)
    flow = smooth_flow(test_grid, max_voxels=3.0)
    field = displacement_field_image(voxel_flow_to_displacement_mm(flow, test_grid), test_grid)
    composed = compose_affine_after_displacement(affine, field)
    composite = sitk.CompositeTransform([affine, displacement_transform(field)])
    points = test_grid.physical_points().reshape(-1, 3)
    expected = np.array([composite.TransformPoint(tuple(p)) for p in points[::7]]) - points[::7]
    np.testing.assert_allclose(
        displacement_array(composed).reshape(-1, 3)[::7], expected, atol=1e-9
    )


def test_composed_field_resamples_like_affine_then_deformable():
    grid = TEST_GRIDS["oblique-flip-x"]
    affine = _test_affine(grid)
    moving = image_on(grid, smooth_volume(grid).astype(np.float64))
    flow = smooth_flow(grid, max_voxels=2.0)
    field = displacement_field_image(voxel_flow_to_displacement_mm(flow, grid), grid)
    pre_aligned = sitk.Resample(moving, moving, affine, sitk.sitkLinear, OUTSIDE, sitk.sitkFloat64)
    two_steps = sitk.GetArrayFromImage(
        sitk.Resample(
            pre_aligned,
            pre_aligned,
            displacement_transform(field),
            sitk.sitkLinear,
            OUTSIDE,
            sitk.sitkFloat64,
        )
    )
    composed = compose_affine_after_displacement(affine, field)
    one_step = sitk.GetArrayFromImage(
        sitk.Resample(
            moving,
            moving,
            displacement_transform(composed),
            sitk.sitkLinear,
            OUTSIDE,
            sitk.sitkFloat64,
        )
    )
    # Compare where the second step interpolates only pre-aligned voxels that came from inside
    # the moving image; one resampling instead of two differs by interpolation only.
    came_from_inside = binary_erosion(
        sitk.GetArrayFromImage(pre_aligned) > OUTSIDE + 1, iterations=2
    )
    mask = image_on(grid, came_from_inside.astype(np.float64))
    clean = (
        sitk.GetArrayFromImage(
            sitk.Resample(
                mask, mask, displacement_transform(field), sitk.sitkLinear, 0.0, sitk.sitkFloat64
            )
        )
        == 1.0
    )
    valid = clean & (one_step > OUTSIDE + 1)
    assert valid.sum() > 1000
    difference = np.abs(two_steps - one_step)[valid]
    assert np.median(difference) < 0.02 and difference.max() < 0.1  # volume spans [-1, 1]


def test_affine_parameters_of_linear_transforms_and_refusal_of_others():
    grid = TEST_GRIDS["identity"]
    affine = _test_affine(grid)
    rigid = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, -5.0, 6.0))
    composite = sitk.CompositeTransform(
        [affine, rigid, sitk.TranslationTransform(3, (1.0, 0.0, -2.0))]
    )
    matrix, offset = affine_parameters(composite)
    points = np.random.default_rng(0).uniform(-100, 100, (20, 3))
    expected = np.array([composite.TransformPoint(tuple(p)) for p in points])
    np.testing.assert_allclose(points @ matrix.T + offset, expected, atol=1e-9)
    field = displacement_field_image(voxel_flow_to_displacement_mm(smooth_flow(grid), grid), grid)
    with pytest.raises(InputError, match="not an affine"):
        affine_parameters(displacement_transform(field))


def test_reading_refuses_non_fields_and_reads_composites(tmp_path):
    scalar = tmp_path / "scalar.nii.gz"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkFloat32), str(scalar))
    with pytest.raises(InputError, match="not a 3D displacement field"):
        read_displacement_field(scalar)
    affine = tmp_path / "affine.h5"
    sitk.WriteTransform(sitk.AffineTransform(3), str(affine))
    with pytest.raises(InputError, match="not a single displacement-field"):
        read_displacement_field(affine)
    with pytest.raises(InputError, match="not found"):
        read_displacement_field(tmp_path / "absent.h5")
    with pytest.raises(InputError, match="Unsupported"):
        write_displacement_transform(
            sitk.Image([4, 4, 4], sitk.sitkVectorFloat64, 3), tmp_path / "w.txt"
        )
    assert not list(tmp_path.glob(".*partial*"))

    grid = TEST_GRIDS["permuted-flipped"]
    field = displacement_field_image(voxel_flow_to_displacement_mm(smooth_flow(grid), grid), grid)
    composite = tmp_path / "composite.h5"
    sitk.WriteTransform(sitk.CompositeTransform([displacement_transform(field)]), str(composite))
    loaded = read_displacement_field(composite)
    assert Grid.from_image(loaded).is_close(grid, 1e-6)
    np.testing.assert_allclose(displacement_array(loaded), displacement_array(field))


def test_shape_mismatches_are_geometry_errors():
    grid = TEST_GRIDS["identity"]
    with pytest.raises(GeometryError):
        voxel_flow_to_displacement_mm(np.zeros((3, 2, 2, 2)), grid)
    with pytest.raises(GeometryError):
        displacement_field_image(np.zeros((2, 2, 2, 3)), grid)
