"""The translators' gate on a real scan: ideal translators pass it, translators that move the
anatomy fail it (cocyclereg.learning.translator_gate)."""

from __future__ import annotations

import torch
from torch import nn

from cocyclereg.config import load_config
from cocyclereg.learning.translator_gate import free_field_gate


class _Shifted(nn.Module):
    """A 'translator' that returns its input moved by two voxels along H: wrong geometry."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.roll(image, shifts=2, dims=3)


def _config(data_dir, tmp_path):
    t1 = data_dir / "brain-t1t2" / "stroke" / "t1.nii.gz"
    cases = tmp_path / "cases.csv"
    cases.write_text(f"name,x,y\nstroke,{t1},{t1}\n")
    return load_config(
        preset="cpu-small",
        overrides=[
            f"data.validation={cases}",
            f"data.train={cases}",
            "data.spacing=[5.0, 5.0, 5.0]",
            "data.size=[32, 48, 32]",
            "data.augmentation.elastic_control_spacing_mm=40",
            "data.augmentation.elastic_max_displacement_mm=15",
            "loss.similarity_sigma=1",
        ],
    )


def test_ideal_translators_pass_and_translators_that_move_the_anatomy_fail(data_dir, tmp_path):
    config = _config(data_dir, tmp_path)
    ideal = free_field_gate(config, nn.Identity(), nn.Identity(), steps=120)
    assert ideal.pairs == 1
    assert min(ideal.identity.values()) > 2.5  # the deformation is worth recovering
    assert ideal.passed, ideal.as_dict()

    shifted = free_field_gate(config, _Shifted(), _Shifted(), steps=120)
    assert shifted.identity == ideal.identity  # the same pair and deformation
    assert not shifted.passed, shifted.as_dict()
    assert all(shifted.fitted[h] > ideal.fitted[h] + 1.0 for h in ("x2y", "y2x"))
