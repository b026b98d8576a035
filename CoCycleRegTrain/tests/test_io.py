"""Reading and writing volumes keeps geometry and pixel type; bad input is refused clearly."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_GRIDS, image_on

from cocyclereg.errors import InputError
from cocyclereg.geometry.grid import Grid
from cocyclereg.io import (
    atomic_output,
    atomic_outputs,
    nifti_non_finite_count,
    read_image,
    read_labels,
    write_image,
)

GRID = TEST_GRIDS["oblique-flip-x"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_keeps_geometry_and_pixel_type(tmp_path, suffix, dtype):
    array = (np.arange(np.prod(GRID.shape)).reshape(GRID.shape) % 200).astype(dtype)
    image = image_on(GRID, array)
    path = write_image(image, tmp_path / f"volume{suffix}")
    loaded = read_image(path)
    assert loaded.GetPixelID() == image.GetPixelID()
    assert Grid.from_image(loaded).is_close(GRID, tolerance_mm=1e-4)
    np.testing.assert_allclose(loaded.GetDirection(), GRID.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), array)


def test_labels_stay_integer_and_float_labels_are_converted(tmp_path):
    labels = np.zeros(GRID.shape, dtype=np.float32)
    labels[2:5, 3:9, 4:10] = 4
    labels[6:9, 1:3, 2:4] = 300
    path = write_image(image_on(GRID, labels), tmp_path / "labels.nii.gz")
    loaded = read_labels(path)
    assert loaded.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), labels.astype(np.int16))
    assert Grid.from_image(loaded).is_close(GRID)

    native = write_image(image_on(GRID, labels.astype(np.uint16)), tmp_path / "native.nrrd")
    assert read_labels(native).GetPixelID() == sitk.sitkUInt16


def test_non_integer_labels_are_refused(tmp_path):
    path = write_image(image_on(GRID, np.full(GRID.shape, 0.5, np.float32)), tmp_path / "p.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        read_labels(path)


def test_missing_unreadable_and_wrong_kind_of_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "absent.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a volume")
    with pytest.raises(InputError, match="Cannot read"):
        read_image(garbage)
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_2d_4d_and_vector_images_are_refused(tmp_path):
    two_d = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkFloat32), str(two_d))
    with pytest.raises(InputError, match="2D"):
        read_image(two_d)
    four_d = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([4, 5, 6, 3], sitk.sitkFloat32), str(four_d))
    with pytest.raises(InputError, match="4D"):
        read_image(four_d)
    vector = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(vector))
    with pytest.raises(InputError, match="3 components"):
        read_image(vector)


def test_single_volume_4d_file_is_read_as_3d(tmp_path):
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.Image([4, 5, 6, 1], sitk.sitkInt16), str(path))
    assert read_image(path).GetSize() == (4, 5, 6)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])  # ITK's NIfTI reader turns them into 0
def test_nan_and_inf_voxels_are_refused(tmp_path, suffix):
    array = np.zeros(GRID.shape, np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 3] = np.inf
    path = write_image(image_on(GRID, array), tmp_path / f"nan{suffix}")
    with pytest.raises(InputError, match="2 NaN or infinite"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_and_inf_voxels_in_nifti_are_refused_by_reading_the_stored_data(
    tmp_path, suffix, capsys
):
    """ITK's NIfTI reader turns NaN and infinite voxels into 0; the file's own data shows them."""
    array = np.ones(GRID.shape, np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 3] = np.inf
    array[3, 0, 0] = -np.inf
    path = write_image(image_on(GRID, array), tmp_path / f"nan{suffix}")
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # the gap
    for read in (read_image, read_labels):
        with pytest.raises(InputError, match=rf"nan{re.escape(suffix)} has 3 NaN or infinite"):
            read(path)

    # Through the command line: exit code 2, the file and the count named, nothing written.
    from cocyclereg.cli import main

    out = tmp_path / "out.nii.gz"
    code = main(["resample", "--input", str(path), "--reference", str(path), "--output", str(out)])
    assert code == 2 and not out.exists()
    assert f"{path} has 3 NaN or infinite voxels" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_finite_and_integer_nifti_files_are_read(tmp_path, suffix):
    finite = write_image(
        image_on(GRID, np.full(GRID.shape, 2.5, np.float32)), tmp_path / f"f{suffix}"
    )
    assert nifti_non_finite_count(finite) == 0 and read_image(finite).GetSize() == GRID.size
    integer = write_image(image_on(GRID, np.ones(GRID.shape, np.int16)), tmp_path / f"i{suffix}")
    assert nifti_non_finite_count(integer) == 0 and read_labels(integer).GetSize() == GRID.size
    assert nifti_non_finite_count(tmp_path / "other.nrrd") is None  # not NIfTI: ITK's check


def test_failed_write_leaves_existing_file_and_no_partial_file(tmp_path):
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"previous result")
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_bytes(b"half written")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nii.gz"]


def test_a_group_of_outputs_appears_together_or_not_at_all(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    second.write_text("previous")
    with pytest.raises(RuntimeError), atomic_outputs() as temporary:
        temporary(first).write_text("new a")
        temporary(second).write_text("new b")
        raise RuntimeError("interrupted after both were written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
    assert second.read_text() == "previous"
    with atomic_outputs() as temporary:
        temporary(first).write_text("new a")
        temporary(second).write_text("new b")
        assert not first.exists() and second.read_text() == "previous"  # not before the end
    assert first.read_text() == "new a" and second.read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_write_refuses_detached_header_and_missing_folder(tmp_path):
    image = image_on(GRID, np.zeros(GRID.shape, np.float32))
    with pytest.raises(InputError, match="Unsupported"):
        write_image(image, tmp_path / "volume.mhd")
    with pytest.raises(InputError, match="does not exist"):
        write_image(image, tmp_path / "absent" / "volume.nii.gz")
