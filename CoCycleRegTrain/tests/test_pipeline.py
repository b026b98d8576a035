"""The collaborative-cycle objective on a real pair: with ideal translators it registers.

Short CPU training runs of the paper's objective do not beat the identity (R follows the
geometric errors of translators that are still learning; see the training notes), so a
network run cannot show that the objective points the right way. With ideal translators (the
identity, on a T1 deformed against itself) and R replaced by two free displacement fields,
minimising the objective must bring both fields to the known inverse of the deformation: this
fails for any error in the warping directions, the pairing of fields with images or the terms.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cocyclereg.config import load_config
from cocyclereg.geometry.spatial_transformer import SpatialTransformer
from cocyclereg.learning.data import PairedVolumes, load_cases
from cocyclereg.learning.pipeline import CoCycleObjective, Translations
from cocyclereg.learning.training import residual_error_mm
from cocyclereg.learning.translator_gate import FreeFields


@pytest.mark.parametrize("mode", ["cocycle", "sepcycle"])
def test_the_objective_with_ideal_translators_recovers_a_real_deformation(data_dir, tmp_path, mode):
    t1 = data_dir / "brain-t1t2" / "TCGA-DU-7294" / "t1.nii.gz"
    cases = tmp_path / "cases.csv"
    cases.write_text(f"name,x,y\nDU-7294,{t1},{t1}\n")
    config = load_config(
        preset="cpu-small",
        overrides=[
            f"data.train={cases}",
            "data.spacing=[5.0, 5.0, 5.0]",
            "data.size=[32, 48, 32]",
            "data.augmentation.elastic_control_spacing_mm=40",
            "data.augmentation.elastic_max_displacement_mm=15",
            f"loss.mode={mode}",
            "loss.similarity_sigma=1",
        ],
    )
    item = PairedVolumes(load_cases(cases, config.data), config.data, training=False)[0]
    x, y, deformation = item["x"][None], item["y"][None], item["deformation"][None]
    assert config.data.deform == "x"

    fields = FreeFields(deformation.shape)
    same = nn.Identity()
    critic = {"discriminate_x": torch.mean, "discriminate_y": torch.mean}  # GAN terms: no R
    objective = CoCycleObjective(
        {"registration": fields, "translate_x2y": same, "translate_y2x": same, **critic}, config
    )
    optimiser = torch.optim.Adam(fields.parameters(), lr=0.05)
    for _ in range(150):
        loss, _ = objective.generator_loss(x, y, Translations(fake_y=x, fake_x=y), critic)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    warp, brain = SpatialTransformer("bilinear"), y[0, 0] > 0
    spacing = (5.0, 5.0, 5.0)
    with torch.no_grad():
        for flow, side in ((fields.x2y, "x"), (fields.y2x, "y")):
            before = residual_error_mm(torch.zeros_like(flow), deformation, side, spacing, warp)
            after = residual_error_mm(flow, deformation, side, spacing, warp)
            before, after = float(before[0][brain].mean()), float(after[0][brain].mean())
            assert before > 2.5, before  # the deformation is worth recovering
            assert after < 0.65 * before, (side, before, after)
