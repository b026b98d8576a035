"""Instance optimisation (cocyclereg.inference.refine): it recovers a known deformation between a
real T1 and T2 from a zero start, leaves the input alone, and is chosen by the model file unless the
caller says otherwise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_register import _constant_model

from cocyclereg.config import NormalizationConfig, Refinement
from cocyclereg.geometry.grid import Grid, foreground_mask, model_grid
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.geometry.spatial_transformer import SpatialTransformer
from cocyclereg.inference.normalize import normalize
from cocyclereg.inference.refine import refine_flow
from cocyclereg.inference.register import LPS_DIRECTION, register
from cocyclereg.learning.augment import random_elastic_flow


@pytest.fixture(scope="module")
def known_pair(data_dir):
    """T1 and T2 of one subject on a 3 mm grid; the T2 deformed by a known smooth field, so the
    flow pulling T1 onto the deformed T2 is that field itself."""
    folder = data_dir / "brain-t1t2" / "TCGA-DU-7294"
    t1, t2 = (sitk.ReadImage(str(folder / f"{name}.nii.gz")) for name in ("t1", "t2"))
    grid = model_grid(t2, spacing=3.0, direction=LPS_DIRECTION)
    resampled = [resample_to_grid(image, grid) for image in (t1, t2)]
    arrays = [
        normalize(sitk.GetArrayFromImage(image), NormalizationConfig())[0] for image in resampled
    ]
    brain = foreground_mask(resampled[1])
    truth = random_elastic_flow(
        arrays[1].shape, grid.spacing, np.random.default_rng(7), 24.0, 9.0
    )  # voxels (D, H, W)
    source, target = (torch.from_numpy(a)[None, None] for a in arrays)
    truth = torch.from_numpy(truth)[None]
    deformed_target = SpatialTransformer()(target, truth)
    return source, deformed_target, truth, torch.from_numpy(brain)


def _end_point_error(flow, truth, mask) -> float:
    return float((flow - truth).norm(dim=1)[0][mask].mean())


def test_refinement_recovers_a_known_deformation_of_a_real_pair(known_pair):
    source, target, truth, brain = known_pair
    start = torch.zeros_like(truth)
    refined = refine_flow(start, source, target, Refinement(steps=15))
    before, after = _end_point_error(start, truth, brain), _end_point_error(refined, truth, brain)
    assert before > 0.7  # voxels (2.1 mm): the deformation is there to find
    assert after < 0.8 * before, (before, after)  # measured 0.79 -> 0.58 voxels
    assert torch.count_nonzero(start) == 0  # the input is untouched
    assert not refined.requires_grad


def test_zero_steps_returns_an_equal_copy(known_pair):
    source, target, truth, _ = known_pair
    same = refine_flow(truth, source, target, Refinement(steps=0))
    assert torch.equal(same, truth) and same is not truth


@pytest.mark.parametrize(
    "settings",
    [{"steps": -1}, {"steps": True}, {"smoothness": -0.5}, {"learning_rate": 0.0}],
)
def test_bad_refinement_settings_are_refused(settings):
    with pytest.raises(ValueError):
        Refinement(**settings)


def test_a_model_files_refinement_entry_is_checked():
    assert Refinement.from_dict({}) == Refinement()  # absent: no refinement
    assert Refinement.from_dict({"steps": 15}).steps == 15
    for damaged in ({"steps": -3}, {"step": 3}, {"learning_rate": -1}):
        with pytest.raises(ValueError):
            Refinement.from_dict(damaged)


def _smooth_pair():
    """Two different textured volumes (Gaussian-smoothed noise, sigma 1.5 voxels) on oblique,
    anisotropic, overlapping grids: where they overlap MIND sees structure to align."""
    from conftest import TEST_GRIDS, image_on
    from scipy.ndimage import gaussian_filter

    def textured(grid, seed):
        noise = np.random.default_rng(seed).normal(size=grid.shape)
        return (100 + 40 * gaussian_filter(noise, 1.5)).astype(np.float32)

    fixed_grid, oblique = TEST_GRIDS["oblique-flip-x"], TEST_GRIDS["oblique-flip-yz"]
    # the oblique grid moved to share the fixed grid's centre: the two images overlap
    centre = fixed_grid.index_to_physical(np.array([(s - 1) / 2 for s in fixed_grid.size]))
    matrix = oblique.index_to_physical_matrix
    origin = centre - matrix @ ((np.array(oblique.size) - 1) / 2)
    moving_grid = Grid(oblique.size, oblique.spacing, tuple(origin), oblique.direction)
    fixed = image_on(fixed_grid, textured(fixed_grid, seed=3))
    moving = image_on(moving_grid, textured(moving_grid, seed=4))
    return fixed, moving


def test_register_follows_the_model_recommendation_unless_told(monkeypatch):
    fixed, moving = _smooth_pair()
    network, info = _constant_model()
    calls = []

    def recording(flow, source, target, refinement, *args):
        calls.append(refinement.steps)
        return flow.detach().clone()

    monkeypatch.setattr("cocyclereg.inference.register.refine_flow", recording)
    recommended = (network, dataclasses.replace(info, refinement=Refinement(steps=7)))
    result = register(fixed, moving, recommended, affine=False, device="cpu", inverse=False)
    assert calls == [7] and result.refinement.steps == 7  # forward field only
    calls.clear()
    result = register(fixed, moving, recommended, affine=False, device="cpu", refine_steps=0)
    assert calls == [0, 0] and result.refinement.steps == 0
    assert "refine" in result.seconds


def test_refined_fields_differ_from_the_network_and_stay_on_their_grids():
    fixed, moving = _smooth_pair()
    plain = register(fixed, moving, _constant_model(), affine=False, device="cpu")
    refined = register(fixed, moving, _constant_model(), affine=False, device="cpu", refine_steps=5)
    for a, b in (
        (plain.transform, refined.transform),
        (plain.inverse_transform, refined.inverse_transform),
    ):
        assert a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin()
        difference = np.abs(sitk.GetArrayViewFromImage(a) - sitk.GetArrayViewFromImage(b))
        assert difference.max() > 0.1  # mm: five steps of up to 0.2 voxel moved the field


def test_the_in_place_adam_matches_torch_optim_adam():
    from cocyclereg.inference.refine import _Adam

    torch.manual_seed(0)
    ours = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    reference = ours.detach().clone().requires_grad_(True)
    adam, torch_adam = _Adam(ours, 0.2), torch.optim.Adam([reference], lr=0.2)
    weights = torch.rand(2, 3, 4, 5, 6)
    for _ in range(25):
        for tensor in (ours, reference):
            tensor.grad = None
            (weights * (tensor - 1).square()).sum().backward()
        adam.step()
        torch_adam.step()
    torch.testing.assert_close(ours, reference)


def test_the_similarity_region_is_the_smoothed_foreground_grown_by_a_cube():
    from scipy.ndimage import binary_dilation, gaussian_filter

    from cocyclereg.inference.refine import REGION_BLUR, REGION_MARGIN, REGION_THRESHOLD, _region

    rng = np.random.default_rng(2)
    target = torch.zeros(1, 1, 20, 17, 23)
    target[0, 0, 5:9, 3:6, 10:12] = 0.5  # a block, and isolated voxels near the faces
    for k, j, i in rng.integers(0, [20, 17, 23], size=(6, 3)):
        target[0, 0, k, j, i] = rng.choice([0.1, 1.0])  # faint ones vanish, bright ones stay
    smoothed = gaussian_filter(target[0, 0].double().numpy(), REGION_BLUR, mode="nearest")
    cube = np.ones((2 * REGION_MARGIN + 1,) * 3, bool)
    expected = binary_dilation(smoothed > REGION_THRESHOLD, cube)
    np.testing.assert_array_equal(_region(target).numpy(), expected)
    assert 0.1 < expected.mean() < 0.9


def test_background_noise_does_not_spread_the_similarity_region(data_dir):
    """A skull-stripped T1 with scanner noise everywhere (as if never masked): the region stays
    the brain's, not the whole grid."""
    from cocyclereg.inference.refine import _region

    image = sitk.ReadImage(str(data_dir / "brain-t1t2" / "stroke" / "t1.nii.gz"))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    clean = torch.from_numpy(normalize(array, NormalizationConfig())[0])[None, None]
    noise = np.random.default_rng(0).normal(0.0, 0.015 * array.max(), array.shape)
    noisy_array = np.clip(array + noise.astype(np.float32), 0.0, None)
    noisy = torch.from_numpy(normalize(noisy_array, NormalizationConfig())[0])[None, None]
    clean_region, noisy_region = _region(clean).numpy(), _region(noisy).numpy()
    assert noisy_region.mean() < 1.1 * clean_region.mean() < 0.6
    overlap = (clean_region & noisy_region).sum() / clean_region.sum()
    assert overlap > 0.98


def test_the_compiled_similarity_gradient_equals_autograd_through_the_warp():
    from cocyclereg.inference.refine import (
        _autograd_mismatch_gradient,
        _channels_last,
        _compiled_mismatch_gradient,
    )

    generator = torch.Generator().manual_seed(4)
    source = torch.rand(1, 12, 9, 11, 10, generator=generator)
    mask = torch.rand(9, 11, 10, generator=generator) > 0.4
    target = torch.rand(1, 12, int(mask.sum()), generator=generator)
    # displacements of up to 4 voxels: many points land beyond the faces (clamped, no gradient)
    flow = (torch.rand(1, 3, 9, 11, 10, generator=generator) - 0.5) * 8
    voxels, displacement = torch.nonzero(mask), flow[:, :, mask]
    channels_last = (_channels_last(source), target.transpose(1, 2).contiguous())
    compiled = _compiled_mismatch_gradient(*channels_last, displacement, voxels)
    reference = _autograd_mismatch_gradient(source, target, displacement, voxels)
    assert compiled.shape == reference.shape == (1, 3, int(mask.sum()))
    assert (reference == 0).any() and (reference != 0).mean(dtype=torch.float) > 0.5
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-7)
    # both are the gradient through the registration's own warp
    whole = flow.clone().requires_grad_(True)
    warped = SpatialTransformer().at(source, whole, mask)
    (warped - target).square().mean().backward()
    torch.testing.assert_close(reference, whole.grad[:, :, mask], rtol=1e-4, atol=1e-7)


def test_refinement_on_the_cpu_equals_the_autograd_refinement(known_pair):
    # float32 takes the compiled gradient; float64 the autograd path used on other devices.
    # Off voxel centres (there the compiled one takes the central difference, torch a
    # one-sided one chosen by rounding).
    moving, fixed, _, _ = known_pair
    generator = torch.Generator().manual_seed(5)
    flow = 0.3 + 0.4 * torch.rand(1, 3, *fixed.shape[2:], generator=generator)
    settings = Refinement(steps=5, smoothness=1.0, learning_rate=0.2)
    compiled = refine_flow(flow, moving, fixed, settings)
    reference = refine_flow(flow.double(), moving.double(), fixed.double(), settings)
    assert (compiled - flow).abs().max() > 0.3  # the steps moved the field
    torch.testing.assert_close(compiled, reference.float(), rtol=0, atol=1e-3)


def test_at_voxel_centres_the_gradient_is_the_mean_of_the_one_sided_ones():
    from cocyclereg.inference.refine import _channels_last, _compiled_mismatch_gradient

    generator = torch.Generator().manual_seed(6)
    source = torch.rand(1, 12, 8, 9, 10, generator=generator)
    mask = torch.zeros(8, 9, 10, dtype=torch.bool)
    mask[2:6, 2:7, 3:7] = True  # centres one voxel or more inside: no clamping
    target = torch.rand(1, 12, int(mask.sum()), generator=generator)
    voxels = torch.nonzero(mask)
    descriptors = (_channels_last(source), target.transpose(1, 2).contiguous())
    shifts = torch.randint(-1, 2, (1, 3, int(mask.sum())), generator=generator).float()
    at_centres = _compiled_mismatch_gradient(*descriptors, shifts, voxels)
    step = 1e-5  # voxel: a little into each neighbouring cell
    sides = [_compiled_mismatch_gradient(*descriptors, shifts + s, voxels) for s in (-step, step)]
    mean = (sides[0] + sides[1]) / 2
    torch.testing.assert_close(at_centres, mean, rtol=0, atol=1e-3 * float(mean.abs().max()))
    assert not torch.allclose(sides[0], sides[1], rtol=1e-2)  # the kink is there


def test_a_field_carried_to_a_finer_grid_is_the_map_itk_evaluates(test_grid):
    """flow_on_grid against SimpleITK's DisplacementFieldTransform of the coarse field, at the
    finer grid's voxel centres, on oblique, flipped and anisotropic grids."""
    from conftest import smooth_flow

    from cocyclereg.geometry.displacement import (
        displacement_field_image,
        displacement_transform,
        voxel_flow_to_displacement_mm,
    )
    from cocyclereg.inference.refine import flow_on_grid

    coarse = smooth_flow(test_grid, max_voxels=2.0)
    finer = test_grid.with_spacing(np.asarray(test_grid.spacing) / 2)
    carried = flow_on_grid(torch.from_numpy(coarse).float()[None], test_grid, finer)
    assert carried.shape == (1, 3, *finer.shape)
    carried_mm = voxel_flow_to_displacement_mm(carried[0].double().numpy(), finer)
    itk = displacement_transform(
        displacement_field_image(voxel_flow_to_displacement_mm(coarse, test_grid), test_grid)
    )
    points = finer.physical_points()
    rng = np.random.default_rng(0)
    for k, j, i in rng.integers(0, finer.shape, size=(200, 3)):
        point = points[k, j, i]
        expected = np.asarray(itk.TransformPoint(point.tolist())) - point
        np.testing.assert_allclose(carried_mm[k, j, i], expected, atol=1e-4)
    assert np.abs(carried_mm).max() > 0.5  # mm: a field, not zeros


@pytest.fixture(scope="module")
def deformed_real_pair(data_dir):
    """A real T1 (moving) and its subject's T2 deformed by a known smooth field (fixed), at
    the scans' own 1 mm: the true fixed -> moving map is ``p + u(p)``, ``u`` that field."""
    from cocyclereg.geometry.displacement import (
        displacement_field_image,
        displacement_transform,
        voxel_flow_to_displacement_mm,
    )

    folder = data_dir / "brain-t1t2" / "TCGA-DU-7294"
    t1, t2 = (sitk.ReadImage(str(folder / f"{name}.nii.gz")) for name in ("t1", "t2"))
    grid = Grid.from_image(t2)
    flow = random_elastic_flow(grid.shape, grid.spacing, np.random.default_rng(11), 24.0, 8.0)
    truth_mm = voxel_flow_to_displacement_mm(flow, grid)
    truth = displacement_transform(displacement_field_image(truth_mm, grid))
    fixed = resample_to_grid(t2, grid, "linear", truth)
    brain = sitk.GetArrayFromImage(fixed) > 0
    return fixed, t1, truth_mm, brain


@pytest.mark.slow
def test_the_finer_level_registers_closer_and_its_inverse_is_consistent(deformed_real_pair):
    from cocyclereg.geometry.displacement import displacement_array, displacement_transform
    from cocyclereg.model_file import load_model
    from cocyclereg.resources import bundled_model

    fixed, moving, truth_mm, brain = deformed_real_pair
    network, info = load_model(bundled_model("brain-t1t2"))
    model = (network, dataclasses.replace(info, refinement=Refinement(steps=20, use_network=False)))
    options = dict(fixed_modality="t2", moving_modality="t1", affine=False, device="cpu")
    coarse = register(fixed, moving, model, inverse=False, **options)
    fine = register(
        fixed, moving, model, inverse=True, fine_steps=20, fine_spacing_mm=1.5, **options
    )
    assert coarse.field_grid == coarse.model_grid
    assert fine.field_grid.spacing == (1.5, 1.5, 1.5)
    errors = {
        name: np.linalg.norm(displacement_array(result.transform) - truth_mm, axis=-1)[brain]
        for name, result in (("coarse", coarse), ("fine", fine))
    }
    identity = np.linalg.norm(truth_mm, axis=-1)[brain].mean()
    # measured 2.10 (identity) -> 1.50 (coarse) -> 0.93 mm (fine)
    assert errors["fine"].mean() < 0.85 * errors["coarse"].mean() < 0.85 * identity
    assert fine.folding.folding_percent < 0.1
    # The inverse undoes the forward map: T^-1(T(p)) = p, measured with ITK's transforms.
    forward = displacement_transform(fine.transform)
    backward = displacement_transform(fine.inverse_transform)
    points = Grid.from_image(fixed).physical_points()[brain]
    rng = np.random.default_rng(0)
    gaps = [
        np.linalg.norm(np.subtract(backward.TransformPoint(forward.TransformPoint(p)), p))
        for p in points[rng.choice(len(points), 2000, replace=False)].tolist()
    ]
    assert np.mean(gaps) < 0.1 and np.percentile(gaps, 99) < 0.5, (
        np.mean(gaps),
        np.percentile(gaps, 99),
    )


@pytest.mark.parametrize(
    ("asked", "expected"),
    [(0.5, 0.9), (1.2, 1.2), (2.0, None)],  # fixed voxels 0.9 x 1.3 x 3 mm; model grid 2 mm+
)
def test_the_finer_level_is_never_finer_than_the_fixed_image(asked, expected):
    fixed, moving = _smooth_pair()
    network, info = _constant_model()
    model = (network, dataclasses.replace(info, refinement=Refinement(steps=1, use_network=False)))
    result = register(
        fixed, moving, model, affine=False, device="cpu", fine_steps=1, fine_spacing_mm=asked
    )
    if expected is None:  # no finer than the model grid: no finer level
        assert result.field_grid == result.model_grid and result.refinement.fine_steps == 0
    else:
        assert result.field_grid.spacing == (expected,) * 3
        assert result.refinement.fine_spacing_mm == expected
