"""Mirror averaging of the network's fields: the mirror is the patient's left-right axis
whatever the input grids, fields of a mirrored pair map back with the right sign, the setting
travels through the model file, ``register`` and the command line, and a model whose grid
follows the image is refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TEST_GRIDS, image_on, smooth_volume
from test_register import FORWARD_VOXELS, INVERSE_VOXELS, SPACING, _constant_model, _inside

from cocyclereg.cli import build_parser, register_keywords
from cocyclereg.config import Refinement
from cocyclereg.errors import InputError
from cocyclereg.geometry.displacement import displacement_array
from cocyclereg.inference.batch import RegistrationSettings, settings_record
from cocyclereg.inference.manifest import Pair
from cocyclereg.inference.network_fields import mirrored_flow, network_fields
from cocyclereg.inference.register import register
from cocyclereg.model_file import ModelInfo


class CentreOfMassShift(torch.nn.Module):
    """A registration "network" that is mirror-equivariant by construction: both heads are the
    constant shift between the images' intensity centres of mass (voxels, channels D, H, W):
    ``warp(x, flow_x2y)`` puts x's centre of mass on y's."""

    def forward(self, x, y):
        def centre(image):
            weights = image[:, 0].clamp(min=0)
            axes = [torch.arange(n, dtype=image.dtype) for n in image.shape[2:]]
            grids = torch.meshgrid(*axes, indexing="ij")
            total = weights.sum(dim=(1, 2, 3))
            return torch.stack([(weights * g).sum(dim=(1, 2, 3)) / total for g in grids], 1)

        shift = (centre(x) - centre(y))[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        return shift, -shift


def _blob(shape, centre):
    d, h, w = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    distance = (d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2
    return torch.tensor(np.exp(-distance / 2.0), dtype=torch.float32)[None, None]


def test_mirrored_flow_reverses_the_last_axis_and_negates_its_component():
    flow = torch.randn(2, 3, 4, 5, 6)
    mirrored = mirrored_flow(flow)
    np.testing.assert_array_equal(mirrored[:, :2].numpy(), flow[:, :2].flip(-1).numpy())
    np.testing.assert_array_equal(mirrored[:, 2].numpy(), -flow[:, 2].flip(-1).numpy())
    torch.testing.assert_close(mirrored_flow(mirrored), flow)


@pytest.mark.parametrize("moving_is_x", [True, False])
def test_mirror_average_keeps_the_fields_of_an_equivariant_network(moving_is_x):
    shape = (16, 16, 20)
    moving, fixed = _blob(shape, (7.0, 7.5, 6.0)), _blob(shape, (8.0, 6.0, 13.5))
    network = CentreOfMassShift()
    plain = network_fields(network, moving, fixed, moving_is_x)
    averaged = network_fields(network, moving, fixed, moving_is_x, mirror_average=True)
    # The shift that samples the moving blob's centre at the fixed blob's centre.
    expected = torch.tensor([-1.0, 1.5, -7.5]).view(1, 3, 1, 1, 1).expand(1, 3, *shape)
    # The left-right component survives the mirror: a missing negation would cancel it.
    for fields in (plain, averaged):
        torch.testing.assert_close(fields[0], expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(fields[1], -expected, atol=1e-4, rtol=0)


def test_mirror_average_cancels_the_left_right_part_of_a_constant_field_on_oblique_grids():
    # Constant heads predict the same shift for the pair and its mirror: mirrored back, the
    # left-right component changes sign, so the average keeps AP and SI and drops LR. On an
    # LPS model grid that is the patient's x whatever the orientation of the inputs.
    fixed_grid, moving_grid = TEST_GRIDS["oblique-flip-x"], TEST_GRIDS["oblique-flip-yz"]
    fixed = image_on(fixed_grid, smooth_volume(fixed_grid, seed=3))
    moving = image_on(moving_grid, smooth_volume(moving_grid, seed=4))
    result = register(
        fixed, moving, _constant_model(), affine=False, device="cpu", mirror_average=True
    )
    assert result.refinement.mirror_average
    for voxels, image, grid in (
        (FORWARD_VOXELS, result.transform, fixed_grid),
        (INVERSE_VOXELS, result.inverse_transform, moving_grid),
    ):
        inside = _inside(result.model_grid, grid)
        expected_mm = np.array([0.0, voxels[1] * SPACING[1], voxels[0] * SPACING[2]])
        field = displacement_array(image)[inside]
        np.testing.assert_allclose(field, np.broadcast_to(expected_mm, field.shape), atol=1e-6)


def test_the_model_files_recommendation_applies_unless_overridden(tmp_path):
    network, info = _constant_model()
    info = replace(info, refinement=Refinement(mirror_average=True))
    restored = ModelInfo.from_json(info.to_json(), "test")
    assert restored.refinement.mirror_average
    grid = TEST_GRIDS["oblique-flip-x"]
    fixed = image_on(grid, smooth_volume(grid, seed=1))
    moving = image_on(grid, smooth_volume(grid, seed=2))
    recommended = register(fixed, moving, (network, restored), affine=False, device="cpu")
    overridden = register(
        fixed, moving, (network, restored), affine=False, device="cpu", mirror_average=False
    )
    assert recommended.refinement.mirror_average and not overridden.refinement.mirror_average
    inside = _inside(recommended.model_grid, grid)
    assert np.abs(displacement_array(recommended.transform)[inside][:, 0]).max() < 1e-6
    np.testing.assert_allclose(
        displacement_array(overridden.transform)[inside][:, 0], FORWARD_VOXELS[2] * SPACING[0]
    )


def test_a_model_on_the_images_own_grid_is_refused_where_the_network_runs():
    network, info = _constant_model()
    image_grid = replace(info, orientation="image")
    grid = TEST_GRIDS["oblique-flip-x"]
    fixed = image_on(grid, smooth_volume(grid, seed=1))
    with pytest.raises(InputError, match="LPS model grid"):
        register(fixed, fixed, (network, image_grid), affine=False, mirror_average=True)
    # Without the network there is nothing to mirror: the option has no effect, no refusal.
    result = register(
        fixed,
        fixed,
        (network, image_grid),
        affine=False,
        mirror_average=True,
        use_network=False,
        refine_steps=0,
        fine_steps=0,
    )
    assert not result.refinement.use_network
    assert np.abs(displacement_array(result.transform)).max() == 0
    with pytest.raises(ValueError, match="LPS model grid"):
        replace(image_grid, refinement=Refinement(mirror_average=True))


@pytest.mark.parametrize(
    ("options", "expected"),
    [([], None), (["--mirror-average"], True), (["--no-mirror-average"], False)],
)
def test_register_command_passes_the_choice_on(options, expected):
    args = build_parser().parse_args(
        [
            "register",
            "--fixed",
            "f.nii.gz",
            "--moving",
            "m.nii.gz",
            "--transform",
            "t.nii.gz",
            *options,
        ]
    )
    assert register_keywords(args)["mirror_average"] is expected


def test_batch_records_hold_the_choice_only_when_made(tmp_path):
    # A record written before the option existed has no such key: with the default (the
    # model's recommendation) the record is unchanged, so an upgrade redoes no finished pair.
    pair = Pair("a", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz")
    model = tmp_path / "model.cocyclereg"
    assert "mirror_average" not in settings_record(pair, RegistrationSettings(), model)
    for choice in (True, False):
        record = settings_record(pair, RegistrationSettings(mirror_average=choice), model)
        assert record["mirror_average"] is choice
