"""Finding cases (CSV and folders), preprocessing real scans onto the model grid, and the seeded
dataset, checked against SimpleITK point evaluation and scipy interpolation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import map_coordinates
from torch.utils.data import default_collate

from cocyclereg.config import AugmentationConfig, DataConfig
from cocyclereg.errors import InputError
from cocyclereg.inference.normalize import normalize_with
from cocyclereg.learning.data import Case, PairedVolumes, load_cases, preprocess_case

SIZE_IJK = (64, 64, 48)
SHAPE_DHW = SIZE_IJK[::-1]


def _config(**augmentation) -> DataConfig:
    return DataConfig(
        spacing=(3.0, 3.0, 3.0),
        size=SIZE_IJK,
        augmentation=AugmentationConfig(**augmentation),
        validation_deformations=2,
    )


@pytest.fixture(scope="module")
def tcga(data_dir):
    return data_dir / "brain-t1t2" / "TCGA-DU-7294"


@pytest.fixture(scope="module")
def tcga_case(tcga) -> Case:
    labels = tcga / "tumor.nii.gz"
    return Case("TCGA-DU-7294", tcga / "t1.nii.gz", tcga / "t2.nii.gz", labels, labels)


@pytest.fixture(scope="module")
def training_set(tcga_case) -> PairedVolumes:
    return PairedVolumes([tcga_case], _config(), training=True, seed=11)


@pytest.fixture(scope="module")
def raw_tumor_labels(tcga) -> set[int]:
    return set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(tcga / "tumor.nii.gz")))))


# ---------------------------------------------------------------------------- load_cases


def test_csv_paths_are_relative_to_the_csv_and_labels_are_shared(tmp_path, tcga):
    (tmp_path / "subject").symlink_to(tcga)
    other = tmp_path / "lists"
    other.mkdir()
    (other / "pairs.csv").write_text(
        "name,x,y,labels\n"
        "first,../subject/t1.nii.gz,../subject/t2.nii.gz,../subject/tumor.nii.gz\n"
        f",{tcga / 'flair.nii.gz'},{tcga / 't2.nii.gz'},\n"
    )
    first, second = load_cases(other / "pairs.csv", DataConfig())
    assert first == Case(
        "first",
        other / "../subject/t1.nii.gz",
        other / "../subject/t2.nii.gz",
        other / "../subject/tumor.nii.gz",
        other / "../subject/tumor.nii.gz",
    )
    assert second == Case("TCGA-DU-7294", tcga / "flair.nii.gz", tcga / "t2.nii.gz")


def test_csv_with_one_labelmap_per_modality(tmp_path, tcga):
    (tmp_path / "pairs.csv").write_text(
        f"x,y,x_labels,y_labels\n{tcga}/t1.nii.gz,{tcga}/t2.nii.gz,{tcga}/tumor.nii.gz,\n"
    )
    (case,) = load_cases(str(tmp_path / "pairs.csv"), DataConfig())
    assert case.x_labels == tcga / "tumor.nii.gz" and case.y_labels is None


def test_folder_of_case_folders(tmp_path, data_dir, tcga):
    stroke = data_dir / "brain-t1t2" / "stroke"
    for case, source, names in (
        ("b-tcga", tcga, ("t1.nii.gz", "t2.nii.gz", "tumor.nii.gz", "t1c.nii.gz")),
        ("a-stroke", stroke, ("t1.nii.gz", "t2.nii.gz")),
    ):
        (tmp_path / case).mkdir()
        for name in names:
            (tmp_path / case / name).symlink_to(source / name)
    (tmp_path / ".cache").mkdir()
    (tmp_path / "notes.txt").write_text("not a case")
    stroke_case, tcga_case = load_cases(tmp_path, DataConfig(x_modality="t1", y_modality="t2"))
    assert stroke_case == Case(
        "a-stroke", tmp_path / "a-stroke/t1.nii.gz", tmp_path / "a-stroke/t2.nii.gz"
    )
    labels = tmp_path / "b-tcga" / "tumor.nii.gz"
    assert tcga_case == Case(
        "b-tcga", tmp_path / "b-tcga/t1.nii.gz", tmp_path / "b-tcga/t2.nii.gz", labels, labels
    )
    # A case folder given directly is one case; t1c is not mistaken for t1.
    (single,) = load_cases(tmp_path / "b-tcga", DataConfig(x_modality="t1c", y_modality="t2"))
    assert single.x.name == "t1c.nii.gz" and single.x_labels == labels


def test_unclear_sources_raise_input_errors(tmp_path, tcga):
    data = DataConfig()
    with pytest.raises(InputError, match="No data source"):
        load_cases("", data)
    with pytest.raises(InputError, match="not found"):
        load_cases(tmp_path / "absent.csv", data)
    (tmp_path / "empty.csv").write_text("x,y\n")
    with pytest.raises(InputError, match="No cases"):
        load_cases(tmp_path / "empty.csv", data)
    (tmp_path / "columns.csv").write_text(f"x,y,mask\n{tcga}/t1.nii.gz,{tcga}/t2.nii.gz,a\n")
    with pytest.raises(InputError, match="'mask'"):
        load_cases(tmp_path / "columns.csv", data)
    (tmp_path / "missing.csv").write_text(
        f"x,y\n{tcga}/t1.nii.gz,{tcga}/t9.nii.gz\nt0.nii,t2.nii\n"
    )
    with pytest.raises(InputError, match="3 file") as error:
        load_cases(tmp_path / "missing.csv", data)
    assert all(name in str(error.value) for name in ("t9.nii.gz", "t0.nii", "t2.nii"))
    folders = tmp_path / "folders"
    (folders / "case").mkdir(parents=True)
    (folders / "case" / "t1.nii.gz").symlink_to(tcga / "t1.nii.gz")
    with pytest.raises(InputError, match="no t2 volume"):
        load_cases(folders, data)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="No cases"):
        load_cases(tmp_path / "nothing", data)


# ---------------------------------------------------------------------------- preprocessing


def _check_against_the_source(volume, grid, image, intensity_range, indices_ijk):
    """Prepared voxels equal the normalised source image evaluated at their LPS points."""
    for index in indices_ijk:
        point = grid.index_to_physical(index)
        raw = image.EvaluateAtPhysicalPoint(point.tolist(), sitk.sitkLinear)
        i, j, k = index
        expected = normalize_with(np.array(raw), *intensity_range)
        assert volume[k, j, i] == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("orientation", ["LPS", "image"])
def test_mni_templates_of_another_orientation(data_dir, orientation):
    t1, ct = data_dir / "templates/spm12/T1.nii", data_dir / "templates/clinical-ct/scct.nii"
    data = dataclasses.replace(_config(), orientation=orientation)
    prepared = preprocess_case(Case("mni", t1, ct), data)
    ct_image = sitk.ReadImage(str(ct))
    expected_direction = (
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        if orientation == "LPS"
        else ct_image.GetDirection()
    )
    assert prepared.grid.direction == pytest.approx(expected_direction)
    assert prepared.grid.size == SIZE_IJK and prepared.grid.spacing == (3.0, 3.0, 3.0)
    inside = [(20, 30, 20), (40, 25, 30), (32, 32, 24), (25, 45, 15)]
    _check_against_the_source(
        prepared.y, prepared.grid, ct_image, prepared.y_intensity_range, inside
    )
    _check_against_the_source(
        prepared.x, prepared.grid, sitk.ReadImage(str(t1)), prepared.x_intensity_range, inside
    )
    item = PairedVolumes([Case("mni", t1, ct)], data, training=True, seed=0)[0]
    assert set(item) == {"x", "y", "deformation", "deformed", "foreground", "name"}  # no labels
    for side in ("x", "y"):
        assert item[side].shape == (1, *SHAPE_DHW)
        assert 0.0 <= item[side].min() and item[side].max() <= 1.0 and item[side].max() > 0.5


def test_prepared_labels_are_the_source_labels_at_the_voxel_points(training_set, tcga):
    prepared = training_set.prepared[0]
    assert prepared.x_labels is prepared.y_labels  # one shared file, read once
    source = sitk.ReadImage(str(tcga / "tumor.nii.gz"))
    tumour = np.argwhere(prepared.y_labels > 0)[:: max(1, int((prepared.y_labels > 0).sum()) // 40)]
    for k, j, i in tumour:
        point = prepared.grid.index_to_physical((i, j, k))
        index = source.TransformPhysicalPointToIndex(point.tolist())
        assert prepared.y_labels[k, j, i] == source[index]


# ---------------------------------------------------------------------------- the dataset


def _trilinear(volume: np.ndarray, deformation: np.ndarray) -> np.ndarray:
    """``volume`` sampled at ``p + deformation(p)``, clamped to the border (scipy)."""
    positions = np.indices(volume.shape, dtype=np.float64) + deformation
    clamped = [np.clip(positions[a], 0, n - 1) for a, n in enumerate(volume.shape)]
    return map_coordinates(volume.astype(np.float64), clamped, order=1)


def _nearest(labels: np.ndarray, deformation: np.ndarray) -> np.ndarray:
    positions = np.rint(np.indices(labels.shape) + deformation.astype(np.float64))
    clamped = [np.clip(positions[a], 0, n - 1).astype(int) for a, n in enumerate(labels.shape)]
    return labels[tuple(clamped)]


def test_training_item_keys_shapes_ranges_and_labels(training_set, raw_tumor_labels):
    item = training_set[0]
    assert set(item) == {
        "x",
        "y",
        "x_labels",
        "y_labels",
        "deformation",
        "deformed",
        "foreground",
        "name",
    }
    assert item["name"] == "TCGA-DU-7294" and len(training_set) == 1
    for side in ("x", "y"):
        assert item[side].shape == (1, *SHAPE_DHW) and item[side].dtype == torch.float32
        assert item[side].min() >= 0.0 and item[side].max() <= 1.0
        assert item[f"{side}_labels"].shape == (1, *SHAPE_DHW)
        assert item[f"{side}_labels"].dtype == torch.int64
        assert set(item[f"{side}_labels"].unique().tolist()) <= raw_tumor_labels
    assert (item["x_labels"] > 0).any()
    assert item["deformation"].shape == (3, *SHAPE_DHW)
    assert item["deformation"].dtype == torch.float32


@pytest.mark.parametrize(
    "augmentation",
    [{}, {"affine": True}, {"elastic": False, "affine": True}],
    ids=["elastic", "elastic+affine", "affine"],
)
def test_the_deformation_is_the_one_applied_to_x(tcga_case, augmentation):
    dataset = PairedVolumes([tcga_case], _config(**augmentation), training=True, seed=3)
    prepared, item = dataset.prepared[0], dataset.sample(0, epoch=5)
    deformation = item["deformation"].numpy()
    assert np.abs(deformation).max() > 0.5  # voxels: a real deformation
    np.testing.assert_allclose(item["x"][0].numpy(), _trilinear(prepared.x, deformation), atol=1e-4)
    agreement = (item["x_labels"][0].numpy() == _nearest(prepared.x_labels, deformation)).mean()
    assert agreement > 0.999
    np.testing.assert_array_equal(item["y"][0].numpy(), prepared.y)  # y is left alone
    np.testing.assert_array_equal(item["y_labels"][0].numpy(), prepared.y_labels)


def test_elastic_deformation_stays_within_its_bound_in_mm(training_set):
    deformation = training_set.sample(0, epoch=2)["deformation"].numpy()
    lengths_mm = np.linalg.norm(deformation * 3.0, axis=0)  # 3 mm voxels on every axis
    bound = training_set.data.augmentation.elastic_max_displacement_mm
    assert lengths_mm.max() <= bound + 1e-4


def test_samples_are_reproducible_per_epoch_and_change_between_epochs(training_set, tcga_case):
    first, again = training_set.sample(0, epoch=3), training_set.sample(0, epoch=3)
    for key in ("x", "x_labels", "deformation"):
        assert torch.equal(first[key], again[key])
    rebuilt = PairedVolumes([tcga_case], _config(), training=True, seed=11)
    rebuilt.set_epoch(3)
    assert torch.equal(rebuilt[0]["x"], first["x"])
    later = training_set.sample(0, epoch=4)
    assert (later["deformation"] - first["deformation"]).abs().max() > 0.1
    assert not torch.equal(later["x"], first["x"])
    other_seed = PairedVolumes([tcga_case], _config(), training=True, seed=12).sample(0, 3)
    assert not torch.equal(other_seed["deformation"], first["deformation"])


def test_deforming_y_leaves_x_alone(tcga_case):
    data = dataclasses.replace(_config(), deform="y")
    dataset = PairedVolumes([tcga_case], data, training=True, seed=0)
    prepared, item = dataset.prepared[0], dataset[0]
    np.testing.assert_array_equal(item["x"][0].numpy(), prepared.x)
    deformation = item["deformation"].numpy()
    np.testing.assert_allclose(item["y"][0].numpy(), _trilinear(prepared.y, deformation), atol=1e-4)


def test_intensity_jitter_changes_both_modalities_within_range(tcga_case):
    dataset = PairedVolumes([tcga_case], _config(intensity=True), training=True, seed=0)
    prepared, item = dataset.prepared[0], dataset.sample(0, 1)
    assert not np.allclose(item["y"][0].numpy(), prepared.y, atol=1e-3)
    for side in ("x", "y"):
        assert 0.0 <= item[side].min() and item[side].max() <= 1.0
    assert torch.equal(dataset.sample(0, 1)["y"], item["y"])


def test_validation_items_are_fixed_per_case_and_deformation(tcga_case):
    dataset = PairedVolumes([tcga_case], _config(intensity=True), training=False, seed=11)
    assert len(dataset) == 2  # one case, two deformations
    first = dataset[0]
    dataset.set_epoch(9)
    again, other_epoch = dataset[0], dataset.sample(0, epoch=4)
    for key in ("x", "y", "x_labels", "deformation"):
        assert torch.equal(again[key], first[key]) and torch.equal(other_epoch[key], first[key])
    assert (dataset[1]["deformation"] - first["deformation"]).abs().max() > 0.1
    np.testing.assert_array_equal(first["y"][0].numpy(), dataset.prepared[0].y)  # no jitter


def test_items_with_labels_collate_into_batches(training_set):
    batch = default_collate([training_set.sample(0, 0), training_set.sample(0, 1)])
    assert batch["x"].shape == (2, 1, *SHAPE_DHW) and batch["y_labels"].shape == (2, 1, *SHAPE_DHW)
    assert batch["deformation"].shape == (2, 3, *SHAPE_DHW)
    assert batch["name"] == ["TCGA-DU-7294", "TCGA-DU-7294"]


def test_dataset_from_a_csv_file(tmp_path, tcga, raw_tumor_labels):
    (tmp_path / "train.csv").write_text(
        f"x,y,labels\n{tcga}/t1.nii.gz,{tcga}/t2.nii.gz,{tcga}/tumor.nii.gz\n"
    )
    data = _config()
    dataset = PairedVolumes(load_cases(tmp_path / "train.csv", data), data, seed=1)
    item = dataset[0]
    assert item["x"].shape == (1, *SHAPE_DHW) and item["name"] == "TCGA-DU-7294"
    assert set(item["x_labels"].unique().tolist()) <= raw_tumor_labels


# ---------------------------------------------------------------------------- training recipe


def _recipe(**augmentation) -> DataConfig:
    return dataclasses.replace(_config(**augmentation), deform="random")


def test_a_random_side_is_deformed_and_the_other_left_alone(tcga_case):
    dataset = PairedVolumes([tcga_case], _recipe(), training=True, seed=0)
    prepared = dataset.prepared[0]
    sides = set()
    for epoch in range(12):
        item = dataset.sample(0, epoch)
        side, other = item["deformed"], "y" if item["deformed"] == "x" else "x"
        sides.add(side)
        deformation = item["deformation"].numpy()
        aligned = getattr(prepared, side)
        np.testing.assert_allclose(
            item[side][0].numpy(), _trilinear(aligned, deformation), atol=1e-4
        )
        np.testing.assert_array_equal(item[other][0].numpy(), getattr(prepared, other))
    assert sides == {"x", "y"}
    validation = PairedVolumes([tcga_case], _recipe(), training=False, seed=0)
    assert [validation[k]["deformed"] for k in range(2)] == ["x", "y"]


def test_misalignment_ranges_undeformed_pairs_and_rigid_residual(tcga_case):
    still = PairedVolumes([tcga_case], _config(undeformed_probability=1.0), training=True)
    assert float(still.sample(0, 0)["deformation"].abs().max()) == 0.0
    ranged = PairedVolumes(
        [tcga_case],
        _config(
            elastic_control_spacing_range_mm=(16.0, 48.0),
            elastic_max_displacement_range_mm=(0.0, 6.0),
        ),
        training=True,
    )
    largest = [
        float(np.linalg.norm(ranged.sample(0, e)["deformation"].numpy() * 3.0, axis=0).max())
        for e in range(6)
    ]
    assert max(largest) <= 6.0 + 1e-4 and len(set(np.round(largest, 3))) == 6
    # A rigid residual alone: a rotation of at most 2 degrees and a shift of at most 2 mm.
    rigid = PairedVolumes(
        [tcga_case],
        _config(elastic=False, rigid_residual_deg=2.0, rigid_residual_mm=2.0),
        training=True,
    )
    lengths_mm = np.linalg.norm(rigid.sample(0, 1)["deformation"].numpy() * 3.0, axis=0)
    # Largest distance from the centre of a 64x64x48 grid of 3 mm voxels: about 128 mm.
    assert 0.0 < lengths_mm.max() <= 2.0 * np.sqrt(3) + 128 * np.deg2rad(2.0) * np.sqrt(3)
    # Undeformed pairs keep the rigid residual; aligned pairs have no motion at all, and come
    # in about the fraction asked for.
    residual = {"rigid_residual_deg": 1.0, "rigid_residual_mm": 1.5, "affine": True}
    undeformed = PairedVolumes(
        [tcga_case], _config(undeformed_probability=1.0, **residual), training=True
    )
    assert float(undeformed.sample(0, 0)["deformation"].abs().max()) > 0.1
    aligned = PairedVolumes(
        [tcga_case], _config(aligned_probability=1.0, **residual), training=True
    )
    assert float(aligned.sample(0, 0)["deformation"].abs().max()) == 0.0
    some = PairedVolumes([tcga_case], _config(aligned_probability=0.5, **residual), training=True)
    still = [float(some.sample(0, e)["deformation"].abs().max()) == 0.0 for e in range(20)]
    assert 4 <= sum(still) <= 16
    validation = PairedVolumes([tcga_case], _config(aligned_probability=1.0), training=False)
    assert float(validation[0]["deformation"].abs().max()) > 0.1


def test_the_anatomy_change_moves_both_images_and_labels_alike(tcga_case):
    mirror_only = _config(
        elastic=False,
        anatomy=True,
        anatomy_rotation_deg=0.0,
        anatomy_scale=0.0,
        anatomy_translation_mm=0.0,
        flip_probability=1.0,
    )
    dataset = PairedVolumes([tcga_case], mirror_only, training=True)
    prepared, item = dataset.prepared[0], dataset.sample(0, 0)
    for side in ("x", "y"):  # left-right is the last array axis on the LPS model grid
        np.testing.assert_allclose(
            item[side][0].numpy(), getattr(prepared, side)[..., ::-1], atol=1e-5
        )
        np.testing.assert_array_equal(
            item[f"{side}_labels"][0].numpy(), getattr(prepared, f"{side}_labels")[..., ::-1]
        )
    moved = PairedVolumes(
        [tcga_case], _config(elastic=False, anatomy=True, anatomy_elastic_mm=4.0), training=True
    ).sample(0, 3)
    assert float(moved["deformation"].abs().max()) == 0.0  # still aligned
    assert not np.allclose(moved["x"][0].numpy(), prepared.x, atol=0.05)
    # Co-registered inputs stay co-registered: the shared labelmap moved identically.
    np.testing.assert_array_equal(moved["x_labels"].numpy(), moved["y_labels"].numpy())
    # The foreground followed the head.
    head = moved["foreground"][0].numpy()
    assert head[moved["y"][0].numpy() > 0.1].all() and not head.all()


def test_foreground_is_the_dilated_head(tcga_case):
    item = PairedVolumes([tcga_case], _config(), training=True).sample(0, 0)
    prepared = PairedVolumes([tcga_case], _config(), training=True).prepared[0]
    head = (prepared.x > 0.02) | (prepared.y > 0.02)
    mask = item["foreground"][0].numpy()
    assert mask.dtype == bool and mask[head].all()
    assert mask.sum() > head.sum()  # grown by a few voxels
    assert mask.mean() < 0.8 and not mask[0, 0, 0]


def test_synthetic_pairs_from_label_maps(tmp_path, data_dir, tcga_case):
    aseg = data_dir / "brain-t1" / "vxm-subject" / "aseg.nii.gz"
    (tmp_path / "maps.csv").write_text(f"name,labels\nvxm,{aseg}\n")
    from cocyclereg.learning.data import load_label_maps

    maps = load_label_maps(tmp_path / "maps.csv")
    data = dataclasses.replace(_recipe(), synthetic_repeats=3)
    dataset = PairedVolumes([tcga_case], data, training=True, seed=2, label_maps=maps)
    assert len(dataset) == 1 + 3
    item = dataset.sample(2, 0)
    assert item["name"] == "aseg"
    side, other = item["deformed"], "y" if item["deformed"] == "x" else "x"
    np.testing.assert_array_equal(item["x_labels"].shape, (1, *SHAPE_DHW))
    unmoved = item[f"{other}_labels"][0].numpy()
    assert len(np.unique(unmoved)) > 20 and (item["foreground"][0].numpy()[unmoved > 0]).all()
    moved = _nearest(unmoved, item["deformation"].numpy())
    assert (item[f"{side}_labels"][0].numpy() == moved).mean() > 0.99
    # Two independent contrasts of one anatomy.
    x, y = item["x"][0].numpy(), item["y"][0].numpy()
    assert 0.0 <= min(x.min(), y.min()) and max(x.max(), y.max()) <= 1.0
    assert not np.allclose(x, y, atol=0.1)
    with pytest.raises(InputError, match="labels"):
        (tmp_path / "bad.csv").write_text("name,x\nvxm,a.nii.gz\n")
        load_label_maps(tmp_path / "bad.csv")


def test_random_shape_pairs_are_fresh_anatomies_misaligned_by_the_known_field():
    data = dataclasses.replace(_recipe(), synthetic_shapes=2)
    dataset = PairedVolumes([], data, training=True, seed=1)
    assert len(dataset) == 2
    first, again, later = dataset.sample(0, 0), dataset.sample(0, 0), dataset.sample(0, 1)
    assert first["name"] == "shapes"
    torch.testing.assert_close(first["x"], again["x"])  # reproducible per (seed, epoch, index)
    side, other = first["deformed"], "y" if first["deformed"] == "x" else "x"
    unmoved = first[f"{other}_labels"][0].numpy()
    assert unmoved.shape == SHAPE_DHW and len(np.unique(unmoved)) >= 9  # background + 8 or more
    moved = _nearest(unmoved, first["deformation"].numpy())
    assert (first[f"{side}_labels"][0].numpy() == moved).mean() > 0.99
    assert (first["foreground"][0].numpy()[unmoved > 0]).all()
    assert 0.1 < (unmoved > 0).mean() < 0.6  # a head with background around it
    # Another epoch draws another anatomy, not just another contrast.
    assert (later["x_labels"] > 0).float().mean() != (first["x_labels"] > 0).float().mean()
