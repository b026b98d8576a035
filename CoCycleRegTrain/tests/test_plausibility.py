"""Inputs that cannot be right are refused before registering (cocyclereg.inference.plausibility),
on the real scans: a CT given to the brain MRI model, an MRI given where the CT model expects its
CT; every real MRI is accepted as MRI, and a real CT as CT."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from cocyclereg.cli import main
from cocyclereg.errors import InputError
from cocyclereg.inference.plausibility import (
    Input,
    check_inputs,
    check_registration_inputs,
    intensity_features,
    kind_of_name,
)
from cocyclereg.model_file import read_model_info
from cocyclereg.resources import bundled_model

BRAIN, CT_MODEL = "brain-t1t2", "head-ct-mri"
MRI_FOLDERS = ("TCGA-FG-6692", "TCGA-FG-6692-unregistered", "stroke", "BraTS-GLI-00001-000")


def every_real_mri(data_dir) -> list:
    """Every MRI of ../shared/data (development subjects, raw and [0, 1] scaled, templates)
    and the bundled demo pair; never the test subject's own files."""
    brain = data_dir / "brain-t1t2"
    found = [p for folder in MRI_FOLDERS for p in sorted((brain / folder).glob("*.nii.gz"))]
    found = [p for p in found if p.name != "tumor.nii.gz"]
    found.append(data_dir / "brain-t1" / "vxm-subject" / "t1.nii.gz")
    spm = data_dir / "templates" / "spm12"
    found += [spm / f"{n}.nii" for n in ("T1", "T2", "PD", "avg152T1", "avg152T2", "avg152PD")]
    from cocyclereg.resources import demo_dir

    found += [demo_dir() / "fixed_t2.nii.gz", demo_dir() / "moving_t1.nii.gz"]
    return found


def _check(image, model: str, modality: str) -> None:
    """check_inputs for one image (a path or its features) given as ``modality`` of ``model``."""
    info = read_model_info(bundled_model(model))
    features = (
        image if not hasattr(image, "is_file") else intensity_features(sitk.ReadImage(str(image)))
    )
    check_inputs(
        [Input("moving", None, features, modality)], model, info.modalities, info.intensity
    )


def test_the_issues_command_is_refused_naming_ct_and_the_model_that_fits(
    data_dir, tmp_path, capsys
):
    """The issue's exact command: a CT of another person given to the brain T1/T2 model."""
    fixed = data_dir / "brain-t1t2" / "TCGA-FG-6692-unregistered" / "t2.nii.gz"
    moving = data_dir / "ct" / "cranium-ct.nii.gz"
    transform = tmp_path / "t.h5"
    code = main(
        ["register", "--fixed", str(fixed), "--moving", str(moving), "--transform", str(transform)]
    )
    error = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert f"moving image ({moving}) looks like CT, not MRI" in error
    assert "66 % of its voxels are at or below -500" in error
    assert "--model head-ct-mri" in error and "--force-modality" in error
    assert "same subject" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_force_modality_registers_what_the_check_refuses(data_dir, tmp_path):
    fixed = data_dir / "brain-t1t2" / "TCGA-FG-6692-unregistered" / "t2.nii.gz"
    moving = data_dir / "ct" / "cranium-ct.nii.gz"
    arguments = ["register", "--fixed", str(fixed), "--moving", str(moving), "--no-affine"]
    arguments += ["--refine-steps", "0", "--transform", str(tmp_path / "t.h5"), "--force-modality"]
    assert main(arguments) == 0
    assert (tmp_path / "t.h5").is_file()


def test_every_real_mri_is_accepted_as_mri_and_refused_as_ct(data_dir):
    """No MRI of any scanner range ([0, 1], 0..255, raw, skull-stripped or not) is taken for a
    CT where a model expects MRI; each one given where the CT model expects CT is refused."""
    images = every_real_mri(data_dir)
    assert len(images) == 24
    for path in images:
        features = intensity_features(sitk.ReadImage(str(path)))
        _check(features, BRAIN, "t1")
        _check(features, BRAIN, "t2")
        _check(features, CT_MODEL, "mri")
        with pytest.raises(InputError, match="looks like MRI, not CT"):
            _check(features, CT_MODEL, "ct")


@pytest.mark.parametrize(
    "ct", ["ct/cranium-ct.nii.gz", "templates/clinical-ct/scct.nii"], ids=["hounsfield", "template"]
)
def test_a_real_ct_is_accepted_as_ct_and_refused_as_mri(data_dir, ct):
    """The real head CT (Hounsfield units) and the CT template the CT model was trained on
    (Cormack units: accepted because it matches the statistics the model file records)."""
    _check(data_dir / ct, CT_MODEL, "ct")
    if ct.startswith("ct/"):
        for model, modality in ((BRAIN, "t1"), (BRAIN, "t2"), (CT_MODEL, "mri")):
            with pytest.raises(InputError, match="looks like CT, not MRI"):
                _check(data_dir / ct, model, modality)


def test_the_ct_model_accepts_ct_and_mri_and_suggests_swapping_them(data_dir):
    info = read_model_info(bundled_model(CT_MODEL))
    ct = sitk.ReadImage(str(data_dir / "ct" / "cranium-ct.nii.gz"))
    mri = sitk.ReadImage(str(data_dir / "brain-t1t2" / "TCGA-FG-6692" / "t1.nii.gz"))
    check_registration_inputs(mri, ct, info, True, CT_MODEL)  # moving CT, fixed MRI
    check_registration_inputs(ct, mri, info, False, CT_MODEL)  # moving MRI, fixed CT
    with pytest.raises(InputError, match="--moving-modality mri --fixed-modality ct"):
        check_registration_inputs(ct, mri, info, True, CT_MODEL)  # the other way round


def test_the_development_pairs_and_the_demo_pair_pass_the_brain_model(data_dir):
    info = read_model_info(bundled_model(BRAIN))
    for folder in MRI_FOLDERS:
        t1, t2 = (
            sitk.ReadImage(str(data_dir / "brain-t1t2" / folder / f"{m}.nii.gz"))
            for m in ("t1", "t2")
        )
        check_registration_inputs(t2, t1, info, True, BRAIN)
        check_registration_inputs(t1, t2, info, False, BRAIN)
    from cocyclereg.resources import demo_dir

    fixed, moving = (
        sitk.ReadImage(str(demo_dir() / n)) for n in ("fixed_t2.nii.gz", "moving_t1.nii.gz")
    )
    check_registration_inputs(fixed, moving, info, True, BRAIN)


def test_two_mris_given_to_the_ct_model_are_pointed_to_the_brain_model(data_dir):
    info = read_model_info(bundled_model(CT_MODEL))
    folder = data_dir / "brain-t1t2" / "stroke"
    t1, t2 = (sitk.ReadImage(str(folder / f"{m}.nii.gz")) for m in ("t1", "t2"))
    with pytest.raises(InputError, match="--model brain-t1t2"):
        check_registration_inputs(t2, t1, info, True, CT_MODEL, (str(folder / "t2.nii.gz"), None))


def test_a_model_without_recorded_statistics_is_judged_by_its_modality_names(data_dir):
    """Model files exported before the ``intensity`` section: a CT side asks for Hounsfield
    units, an MRI side refuses them."""
    assert [kind_of_name(n) for n in ("ct", "CT_head", "head-ct", "mri", "t1", "octave")] == [
        "ct",
        "ct",
        "ct",
        "mr",
        "mr",
        "mr",
    ]
    ct = intensity_features(sitk.ReadImage(str(data_dir / "ct" / "cranium-ct.nii.gz")))
    t1 = intensity_features(sitk.ReadImage(str(data_dir / "brain-t1t2" / "stroke" / "t1.nii.gz")))
    check_inputs(
        [Input("moving", None, ct, "ct"), Input("fixed", None, t1, "t1")], "old", ("ct", "t1"), {}
    )
    with pytest.raises(InputError, match="looks like MRI"):
        check_inputs([Input("moving", None, t1, "ct")], "old", ("ct", "t1"), {})
    with pytest.raises(InputError, match="looks like CT"):
        check_inputs([Input("moving", None, ct, "t1")], "old", ("ct", "t1"), {})


def test_intensity_features_of_a_known_array():
    """Air fraction, head percentiles and shape against a direct computation."""
    rng = np.random.default_rng(0)
    head = rng.uniform(0, 80, 6000)  # brain-like HU
    bone = rng.uniform(400, 1500, 1000)
    air = np.full(3000, -1000.0)
    features = intensity_features(np.concatenate([air, head, bone]).astype(np.float32))
    assert features.air_fraction == pytest.approx(0.3)
    assert features.hounsfield
    inside = np.concatenate([head, bone]).astype(np.float32).astype(np.float64)
    assert features.head_percentiles == pytest.approx(np.percentile(inside, [1, 50, 99]))
    p1, p99 = np.percentile(inside, [1, 99])
    assert features.shape[2] == pytest.approx((np.median(inside) - p1) / (p99 - p1))
    assert not intensity_features(np.abs(inside) / 1500).hounsfield


def test_the_bundled_models_record_what_they_expect():
    for model, kinds in ((BRAIN, ("mr", "mr")), (CT_MODEL, ("ct", "mr"))):
        intensity = read_model_info(bundled_model(model)).intensity
        assert (intensity["x"]["kind"], intensity["y"]["kind"]) == kinds
        assert all(len(intensity[side]["images"]) >= 2 for side in "xy")


def test_recording_statistics_keeps_the_weights_bit_identical(tmp_path):
    """tools/record_intensity_statistics.py rewrites a model file's description only."""
    import importlib.util

    from conftest import REPOSITORY
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location(
        "record", REPOSITORY / "tools" / "record_intensity_statistics.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    copy = tmp_path / "m.cocyclereg"
    shutil.copy(bundled_model(CT_MODEL), copy)
    before = read_model_info(copy)
    section = {"x": {"kind": "ct", "images": []}, "y": {"kind": "mr", "images": []}}
    tool.rewrite_with_intensity(copy, section)
    after = read_model_info(copy)
    assert after.intensity == section and after.refinement == before.refinement
    assert after.provenance == before.provenance and after.normalization == before.normalization
    old, new = load_file(str(bundled_model(CT_MODEL))), load_file(str(copy))
    assert old.keys() == new.keys()
    for name in old:
        assert old[name].dtype == new[name].dtype
        assert old[name].numpy().tobytes() == new[name].numpy().tobytes(), name
