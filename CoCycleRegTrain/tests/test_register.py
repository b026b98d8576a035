"""The registration engine: head choice, field geometry on oblique grids, affine folding,
labels, and refusals. A network with constant heads makes the expected fields exact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TEST_GRIDS, image_on, smooth_volume

from cocyclereg.config import Refinement
from cocyclereg.errors import GeometryError, InputError
from cocyclereg.geometry.displacement import displacement_array, transform_to_displacement_field
from cocyclereg.geometry.grid import Grid
from cocyclereg.inference.register import register
from cocyclereg.model_file import ModelInfo
from cocyclereg.networks import DualHeadUNet

FORWARD_VOXELS = (0.5, -1.0, 1.5)  # head x2y output, channels (D, H, W)
INVERSE_VOXELS = (-0.25, 0.75, -2.0)  # head y2x output
SPACING = (2.0, 2.5, 3.0)


def _constant_model() -> tuple[DualHeadUNet, ModelInfo]:
    network = DualHeadUNet((4, 8, 8, 8, 8), (8, 8, 8, 8, 4, 4))
    with torch.no_grad():
        for head, values in (
            (network.head_x2y, FORWARD_VOXELS),
            (network.head_y2x, INVERSE_VOXELS),
        ):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(values))
    percentile = {"method": "percentile", "lower": 0.5, "upper": 99.5, "window": [-1000, 1000]}
    info = ModelInfo(
        "t1",
        "t2",
        SPACING,
        (16, 16, 16),
        "LPS",
        {"x": percentile, "y": percentile},
        {"encoder_features": [4, 8, 8, 8, 8], "decoder_features": [8, 8, 8, 8, 4, 4]},
    )
    return network, info


def _expected_mm(voxels) -> np.ndarray:
    # LPS-aligned model grid: a (d, h, w) voxel step is (w * sx, h * sy, d * sz) mm.
    return np.asarray(voxels[::-1]) * np.asarray(SPACING)


def _inside(model: Grid, grid: Grid) -> np.ndarray:
    index = model.physical_to_index(grid.physical_points())
    return np.all((index >= 0) & (index <= np.asarray(model.size) - 1), axis=-1)


@pytest.mark.parametrize("swap", [False, True])
def test_fields_follow_the_chosen_head_on_oblique_grids(swap):
    fixed_grid, moving_grid = TEST_GRIDS["oblique-flip-x"], TEST_GRIDS["oblique-flip-yz"]
    fixed = image_on(fixed_grid, smooth_volume(fixed_grid, seed=3))
    moving = image_on(moving_grid, smooth_volume(moving_grid, seed=4))
    modalities = {"moving_modality": "t2", "fixed_modality": "t1"} if swap else {}
    result = register(fixed, moving, _constant_model(), affine=False, device="cpu", **modalities)
    assert (result.moving_modality, result.fixed_modality) == (
        ("t2", "t1") if swap else ("t1", "t2")
    )

    forward, inverse = (
        (INVERSE_VOXELS, FORWARD_VOXELS) if swap else (FORWARD_VOXELS, INVERSE_VOXELS)
    )
    assert Grid.from_image(result.transform).is_close(fixed_grid)
    assert Grid.from_image(result.inverse_transform).is_close(moving_grid)
    inside = _inside(result.model_grid, fixed_grid)
    assert inside.mean() > 0.9  # the model grid holds the fixed image's foreground
    field = displacement_array(result.transform)
    np.testing.assert_allclose(
        field[inside], np.broadcast_to(_expected_mm(forward), field[inside].shape), atol=1e-9
    )
    inverse_inside = _inside(result.model_grid, moving_grid)
    inverse_field = displacement_array(result.inverse_transform)
    np.testing.assert_allclose(
        inverse_field[inverse_inside],
        np.broadcast_to(_expected_mm(inverse), inverse_field[inverse_inside].shape),
        atol=1e-9,
    )
    # A constant shift has J = 1 wherever it is constant.
    jacobian = sitk.GetArrayFromImage(result.jacobian)
    interior = inside & np.pad(np.ones(np.asarray(inside.shape) - 2, bool), 1)
    np.testing.assert_allclose(jacobian[interior], 1.0, atol=1e-6)
    assert Grid.from_image(result.jacobian).is_close(fixed_grid)
    assert Grid.from_image(result.warped).is_close(fixed_grid)


def test_beyond_the_model_grid_the_field_holds_its_edge_value_and_nothing_folds():
    # The model grid covers the fixed image's foreground; give the fixed image a foreground
    # in its middle only (a head in a larger field of view), so most of it lies beyond.
    fixed_grid = Grid(
        (120, 110, 40), (0.9, 1.3, 3.0), (12.5, -30.0, 4.0), TEST_GRIDS["oblique-flip-x"].direction
    )
    moving_grid = TEST_GRIDS["oblique-flip-yz"]
    volume = np.zeros(fixed_grid.shape, np.float32)  # (D, H, W): background but the middle
    volume[12:28, 33:77, 36:84] = (
        1.0 + np.abs(smooth_volume(fixed_grid, seed=3))[12:28, 33:77, 36:84]
    )
    fixed = image_on(fixed_grid, volume)
    moving = image_on(moving_grid, smooth_volume(moving_grid, seed=4))
    result = register(fixed, moving, _constant_model(), affine=False, device="cpu")
    assert _inside(result.model_grid, fixed_grid).mean() < 0.9
    assert _inside(result.model_grid, moving_grid).mean() < 1
    # A constant shift, everywhere: not zero beyond the model grid (ITK's convention for a
    # displacement field, which would put a step in the transform at the grid's edge).
    field = displacement_array(result.transform)
    np.testing.assert_allclose(
        field, np.broadcast_to(_expected_mm(FORWARD_VOXELS), field.shape), atol=1e-9
    )
    inverse = displacement_array(result.inverse_transform)
    np.testing.assert_allclose(
        inverse, np.broadcast_to(_expected_mm(INVERSE_VOXELS), inverse.shape), atol=1e-9
    )
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.jacobian), 1.0, atol=1e-6)
    assert result.folding.folding_voxels == 0


def test_affine_is_folded_into_both_fields(data_dir):
    folder = data_dir / "brain-t1t2" / "TCGA-FG-6692-unregistered"
    network, info = _constant_model()
    with torch.no_grad():
        network.head_x2y.bias.zero_()
        network.head_y2x.bias.zero_()
    result = register(folder / "t1.nii.gz", folder / "t2.nii.gz", (network, info), device="cpu")
    fixed = sitk.ReadImage(str(folder / "t1.nii.gz"))
    moving = sitk.ReadImage(str(folder / "t2.nii.gz"))
    expected = displacement_array(
        transform_to_displacement_field(result.affine, Grid.from_image(fixed))
    )
    np.testing.assert_allclose(displacement_array(result.transform), expected, atol=1e-6)
    inverse = displacement_array(
        transform_to_displacement_field(result.affine.GetInverse(), Grid.from_image(moving))
    )
    np.testing.assert_allclose(displacement_array(result.inverse_transform), inverse, atol=1e-6)

    # The affine really aligns: mutual information with the fixed image rises.
    def mutual_information(image):
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(32)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetInitialTransform(sitk.Transform(3, sitk.sitkIdentity))
        return -method.MetricEvaluate(
            sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(image, sitk.sitkFloat32)
        )

    unregistered = sitk.Resample(
        moving, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0
    )
    assert mutual_information(result.warped) > 1.2 * mutual_information(unregistered)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(result.jacobian),
        np.linalg.det(np.reshape(result.affine.GetMatrix(), (3, 3))),
        rtol=1e-4,
    )


def test_labels_are_warped_without_new_values_and_must_share_the_moving_grid():
    fixed_grid, moving_grid = TEST_GRIDS["oblique-flip-x"], TEST_GRIDS["permuted-flipped"]
    fixed = image_on(fixed_grid, smooth_volume(fixed_grid, seed=1))
    moving = image_on(moving_grid, smooth_volume(moving_grid, seed=2))
    rng = np.random.default_rng(0)
    labels = image_on(
        moving_grid, rng.choice(np.array([0, 3, 8], np.uint8), size=moving_grid.shape)
    )
    result = register(fixed, moving, _constant_model(), affine=False, device="cpu", labels=[labels])
    (warped,) = result.warped_labels
    assert warped.GetPixelID() == sitk.sitkUInt8 and Grid.from_image(warped).is_close(fixed_grid)
    assert set(np.unique(sitk.GetArrayFromImage(warped))) <= {0, 3, 8}
    elsewhere = image_on(fixed_grid, np.zeros(fixed_grid.shape, np.uint8))
    with pytest.raises(GeometryError, match="not on the moving image's grid"):
        register(fixed, moving, _constant_model(), affine=False, device="cpu", labels=[elsewhere])


def test_unknown_modality_and_constant_images_are_refused():
    grid = TEST_GRIDS["identity"]
    image = image_on(grid, smooth_volume(grid))
    with pytest.raises(InputError, match=r"t1 and t2.*'ct'"):
        register(image, image, _constant_model(), moving_modality="ct", device="cpu")
    with pytest.raises(InputError, match="both 't2'"):
        register(
            image, image, _constant_model(), moving_modality="t2", fixed_modality="t2", device="cpu"
        )
    constant = image_on(grid, np.full(grid.shape, 7.0, np.float32))
    with pytest.raises(InputError, match="moving image is constant"):
        register(image, constant, _constant_model(), device="cpu")


def test_register_command_writes_every_output_or_none(tmp_path, capsys):
    from cocyclereg.cli import main
    from cocyclereg.model_file import save_model

    fixed_grid, moving_grid = TEST_GRIDS["oblique-flip-x"], TEST_GRIDS["oblique-flip-yz"]
    sitk.WriteImage(
        image_on(fixed_grid, smooth_volume(fixed_grid, seed=3)), str(tmp_path / "f.nrrd")
    )
    moving = image_on(moving_grid, smooth_volume(moving_grid, seed=4))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    labels = image_on(moving_grid, (smooth_volume(moving_grid, seed=5) > 0).astype(np.uint8))
    sitk.WriteImage(labels, str(tmp_path / "l.nii.gz"))
    model = save_model(tmp_path / "model.cocyclereg", *_constant_model())
    out = tmp_path / "out"
    out.mkdir()
    arguments = [
        "register",
        "--fixed",
        str(tmp_path / "f.nrrd"),
        "--moving",
        str(tmp_path / "m.nii.gz"),
        "--model",
        str(model),
        "--no-affine",
        "--device",
        "cpu",
        "--transform",
        str(out / "t.h5"),
        "--inverse-transform",
        str(out / "i.nii.gz"),
        "--warped",
        str(out / "w.nii.gz"),
        "--jacobian",
        str(out / "j.nii.gz"),
        "--labels",
        str(tmp_path / "l.nii.gz"),
        "--warped-labels",
        str(out / "wl.nii.gz"),
        "--summary",
        str(out / "s.json"),
    ]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    stages = [line for line in captured.err.splitlines() if line.startswith("stage: ")]
    assert stages == [f"stage: {s}" for s in ("load", "preprocess", "network", "output")]
    assert sorted(p.name for p in out.iterdir()) == [
        "i.nii.gz",
        "j.nii.gz",
        "s.json",
        "t.h5",
        "w.nii.gz",
        "wl.nii.gz",
    ]
    # The written transform, applied by SimpleITK alone, reproduces the written warped image.
    fixed = sitk.ReadImage(str(tmp_path / "f.nrrd"))
    again = sitk.Resample(
        moving,
        fixed,
        sitk.ReadTransform(str(out / "t.h5")),
        sitk.sitkLinear,
        float(sitk.GetArrayViewFromImage(moving).min()),
        sitk.sitkFloat32,
    )
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(again),
        sitk.GetArrayFromImage(sitk.ReadImage(str(out / "w.nii.gz"))),
        atol=1e-5,
    )
    import json

    summary = json.loads((out / "s.json").read_text())
    assert set(summary["seconds"]) == {
        *("load", "affine", "preprocess", "network", "refine", "output", "write")
    }
    assert summary["refinement"]["steps"] == 0  # the model recommends none
    assert summary["device"] == "cpu" and summary["folding"]["total_voxels"] == int(
        np.prod(fixed_grid.size)
    )
    assert "J <= 0 in" in captured.out
    moved = summary["deformable_displacement_mm"]
    assert (
        f"deformable motion (pre-alignment excluded, fixed foreground): mean {moved['mean']:.2f} mm"
        in captured.out
    )

    failed = tmp_path / "failed"
    failed.mkdir()
    elsewhere = image_on(fixed_grid, np.ones(fixed_grid.shape, np.uint8))
    sitk.WriteImage(elsewhere, str(tmp_path / "elsewhere.nii.gz"))
    bad = [
        a if a != str(tmp_path / "l.nii.gz") else str(tmp_path / "elsewhere.nii.gz")
        for a in arguments
    ]
    bad = [a.replace(str(out), str(failed)) for a in bad]
    assert main(bad) == 3  # labels not on the moving grid: a geometry error
    assert list(failed.iterdir()) == []
    assert "not on the moving image's grid" in capsys.readouterr().err


def test_too_large_for_memory_is_refused_before_the_network_runs(monkeypatch):
    import cocyclereg.inference.register as engine

    grid = TEST_GRIDS["identity"]
    image = image_on(grid, smooth_volume(grid))
    monkeypatch.setattr(engine, "available_memory_bytes", lambda device: 1000)
    monkeypatch.setattr(DualHeadUNet, "forward", lambda *a: pytest.fail("network ran"))
    with pytest.raises(InputError, match=r"needs about .* GB on cpu but only 0.0 GB"):
        register(image, image, _constant_model(), affine=False, device="cpu")


def test_memory_estimate_scales_with_the_grid():
    from cocyclereg.inference.register import estimated_network_bytes

    _, info = _constant_model()
    small = Grid((16, 16, 16), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    large = Grid((32, 32, 32), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert estimated_network_bytes(large, info) == 8 * estimated_network_bytes(small, info)
    # At least the float32 inputs, fields and full-resolution features, at most a few times more.
    assert 4 * (2 + 6 + 4) * 16**3 < estimated_network_bytes(small, info) < 4 * 200 * 16**3


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the absence of CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path, capsys):
    from cocyclereg.cli import main

    grid = TEST_GRIDS["identity"]
    sitk.WriteImage(image_on(grid, smooth_volume(grid)), str(tmp_path / "f.nii.gz"))
    code = main(
        [
            "register",
            "--fixed",
            str(tmp_path / "f.nii.gz"),
            "--moving",
            str(tmp_path / "f.nii.gz"),
            "--model",
            str(tmp_path / "absent.cocyclereg"),
            "--device",
            "cuda",
            "--transform",
            str(tmp_path / "t.h5"),
        ]
    )
    assert code == 2 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "t.h5").exists()


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_prealignment_recovers_a_known_head_motion(data_dir, kind):
    """T1 moved by a known rotation and translation is found again from T2 (MI, two modalities);
    on the co-registered pair the rigid result stays a rigid transform."""
    from cocyclereg.inference.register import affine_prealignment

    folder = data_dir / "brain-t1t2" / "TCGA-DU-7294"
    fixed = sitk.ReadImage(str(folder / "t2.nii.gz"))
    t1 = sitk.ReadImage(str(folder / "t1.nii.gz"))
    motion = sitk.Euler3DTransform(
        (-0.5, -110.0, 80.0), np.radians(6.0), np.radians(-4.0), np.radians(8.0), (4.0, -6.0, 3.0)
    )
    # moving(m) = t1(motion^-1 (m)): fixed point p sits at motion(p) in the moving image.
    moving = sitk.Resample(t1, t1, motion.GetInverse(), sitk.sitkLinear, 0.0)
    found = affine_prealignment(fixed, moving, kind=kind)
    brain = np.argwhere(sitk.GetArrayFromImage(fixed) > 0)[::997][:, ::-1]
    points = [fixed.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in brain]
    errors = [
        np.linalg.norm(np.subtract(found.TransformPoint(p), motion.TransformPoint(p)))
        for p in points
    ]
    limit = 1.5 if kind == "rigid" else 4.0
    assert np.mean(errors) < limit, np.mean(errors)
    if kind == "rigid":
        np.testing.assert_allclose(
            np.linalg.det(np.reshape(found.GetMatrix(), (3, 3))), 1.0, atol=1e-9
        )


def test_the_inverse_is_computed_only_when_asked():
    fixed_grid, moving_grid = TEST_GRIDS["oblique-flip-x"], TEST_GRIDS["oblique-flip-yz"]
    fixed = image_on(fixed_grid, smooth_volume(fixed_grid, seed=3))
    moving = image_on(moving_grid, smooth_volume(moving_grid, seed=4))
    result = register(fixed, moving, _constant_model(), affine=False, device="cpu", inverse=False)
    assert result.inverse_transform is None and result.transform.GetSize() == fixed.GetSize()


class _MustNotRun(torch.nn.Module):
    def forward(self, *images):
        raise AssertionError("the network ran")


def test_without_the_network_the_refinement_starts_from_the_prealignment(tmp_path):
    from cocyclereg.cli import main

    grid = TEST_GRIDS["oblique-flip-x"]  # one grid, so the images overlap everywhere
    fixed = image_on(grid, smooth_volume(grid, seed=3))
    moving = image_on(grid, smooth_volume(grid, seed=4))
    _, info = _constant_model()
    model = (_MustNotRun(), info)

    unrefined = register(
        fixed, moving, model, affine=False, device="cpu", refine_steps=0, use_network=False
    )
    assert not unrefined.used_network
    np.testing.assert_array_equal(displacement_array(unrefined.transform), 0.0)
    np.testing.assert_array_equal(displacement_array(unrefined.inverse_transform), 0.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(unrefined.jacobian), 1.0, atol=1e-6)

    refined = register(
        fixed, moving, model, affine=False, device="cpu", refine_steps=3, use_network=False
    )
    assert np.abs(displacement_array(refined.transform)).max() > 0.01  # mm

    # A model file can recommend starting without its network; register follows it.
    skipping = (_MustNotRun(), replace(info, refinement=Refinement(steps=0, use_network=False)))
    assert not register(fixed, moving, skipping, affine=False, device="cpu").used_network

    # On the command line, --network and --no-network override the model's recommendation.
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    from cocyclereg.model_file import save_model

    network, _ = _constant_model()
    path = save_model(tmp_path / "model.cocyclereg", network, skipping[1])
    arguments = ["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving"]
    arguments += [str(tmp_path / "m.nii.gz"), "--model", str(path), "--no-affine"]
    arguments += ["--transform", str(tmp_path / "t.h5"), "--summary", str(tmp_path / "s.json")]
    point = fixed.TransformContinuousIndexToPhysicalPoint([n / 2 for n in fixed.GetSize()])
    for extra, expected in (
        ([], point),
        (["--network"], np.add(point, _expected_mm(FORWARD_VOXELS))),
    ):
        assert main([*arguments, *extra]) == 0
        summary = __import__("json").loads((tmp_path / "s.json").read_text())
        assert summary["network"] is bool(extra)
        transform = sitk.ReadTransform(str(tmp_path / "t.h5"))
        assert transform.TransformPoint(point) == pytest.approx(tuple(expected))


def test_the_summary_explains_modalities_network_and_the_affine_it_reports():
    """The summary's modalities say which model modality each input was taken as; "network"
    agrees with the stage seconds; "affine" is matrix, center and translation, and
    ``matrix (p - center) + center + translation`` (computed here) is the transform's own
    point mapping."""
    from cocyclereg.inference.outputs import registration_summary

    fixed_grid, moving_grid = TEST_GRIDS["oblique-flip-x"], TEST_GRIDS["oblique-flip-yz"]
    fixed = image_on(fixed_grid, smooth_volume(fixed_grid, seed=3))
    moving = image_on(moving_grid, smooth_volume(moving_grid, seed=4))
    network, info = _constant_model()
    for use_network in (True, False):
        result = register(
            fixed,
            moving,
            (network, info),
            affine=False,
            device="cpu",
            fixed_modality="t1",
            use_network=use_network,
        )
        summary = registration_summary(result, "f.nii.gz", "m.nii.gz", "model")
        assert summary["modalities"]["moving"] == "t2" and summary["modalities"]["fixed"] == "t1"
        assert summary["modalities"]["model"] == {"x": "t1", "y": "t2"}
        assert summary["network"] is use_network
        assert ("network" in summary["seconds"]) is use_network
        assert set(summary["similarity"]) >= {"before", "prealigned", "after", "better"}
        assert summary["affine"] is None
        # The moving image is the model's y: the y->x head's constant field, or nothing.
        moved = np.linalg.norm(_expected_mm(INVERSE_VOXELS)) if use_network else 0.0
        for statistic in ("mean", "p95", "max"):
            assert summary["deformable_displacement_mm"][statistic] == pytest.approx(
                moved, rel=1e-5, abs=1e-9
            )

    affine = sitk.AffineTransform(3)
    affine.SetMatrix((0.9, 0.1, 0.0, -0.2, 1.1, 0.05, 0.0, 0.3, 0.95))
    affine.SetCenter((10.0, -20.0, 30.0))
    affine.SetTranslation((1.5, -2.0, 4.0))
    result.affine = affine
    written = registration_summary(result, "f", "m", "model")["affine"]
    matrix, center = np.array(written["matrix"]), np.array(written["center"])
    for point in ((0.0, 0.0, 0.0), (12.0, -7.0, 55.0)):
        mine = matrix @ (np.array(point) - center) + center + np.array(written["translation"])
        np.testing.assert_allclose(mine, affine.TransformPoint(point), atol=1e-12)


def test_a_slice_or_thin_slab_is_refused_and_an_eight_slice_slab_registers():
    from cocyclereg.resources import bundled_model, demo_dir

    fixed = sitk.ReadImage(str(demo_dir() / "fixed_t2.nii.gz"))
    moving = sitk.ReadImage(str(demo_dir() / "moving_t1.nii.gz"))
    middle = fixed.GetSize()[2] // 2
    for slices in (1, 7):
        thin = fixed[:, :, middle : middle + slices]
        with pytest.raises(InputError, match="at least 8 voxels along each axis"):
            register(thin, moving, bundled_model(), device="cpu")
        with pytest.raises(InputError, match="The moving image is"):
            register(fixed, thin, bundled_model(), device="cpu")
    # Eight slices pass the check and the rigid pre-alignment's pyramid (it smooths each axis).
    slab = fixed[:, :, middle - 4 : middle + 4]
    moving_slab = moving[:, :, middle - 6 : middle + 6]
    result = register(slab, moving_slab, bundled_model(), device="cpu", refine_steps=2)
    assert result.affine is not None and result.transform.GetSize() == slab.GetSize()
