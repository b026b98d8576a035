"""The gate a pair of trained translators must pass before a collaborative-cycle run uses them.

R learns from the paper's objective only where the translators' errors are smaller than what a
misalignment changes in the images; otherwise R follows the translators' geometry. The gate
measures exactly that, without R: on each validation pair (misaligned by a known deformation
of the validation size), two free voxel fields stand in for R's heads and are fitted to the
paper's objective (:class:`cocyclereg.learning.pipeline.CoCycleObjective`, ``loss.mode=cocycle``: L1
similarity of the warped translations, the CoCycle term, smoothness) with the translators
frozen. A head passes when the fitted field's registration error (mean mm over the fixed
image's foreground, :func:`cocyclereg.learning.training.residual_error_mm`) is at most ``ratio``
times the identity's, averaged over the pairs. With ideal translators (identity on a T1 deformed
against itself) the fit recovers most of the deformation (``tests/test_pipeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from cocyclereg.config import Config
from cocyclereg.geometry.spatial_transformer import SpatialTransformer
from cocyclereg.learning.data import PairedVolumes, load_cases
from cocyclereg.learning.pipeline import CoCycleObjective, Translations
from cocyclereg.learning.training import residual_error_mm

HEADS = ("x2y", "y2x")


class FreeFields(nn.Module):
    """Stands in for R: two learnable ``(1, 3, D, H, W)`` voxel fields, whatever the input."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.x2y = nn.Parameter(torch.zeros(shape))
        self.y2x = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x2y, self.y2x


@dataclass
class GateResult:
    """Mean registration errors (mm) per head: ``identity`` (no registration) and ``fitted``
    (free fields fitted with the translators frozen), over ``pairs`` validation pairs."""

    identity: dict[str, float]
    fitted: dict[str, float]
    pairs: int
    ratio: float

    @property
    def passed(self) -> bool:
        return all(self.fitted[h] <= self.ratio * self.identity[h] for h in HEADS)

    def as_dict(self) -> dict:
        return {
            "identity_mm": self.identity,
            "fitted_mm": self.fitted,
            "pairs": self.pairs,
            "ratio": self.ratio,
            "passed": self.passed,
        }


def free_field_gate(
    config: Config,
    translate_x2y: nn.Module,
    translate_y2x: nn.Module,
    steps: int = 150,
    learning_rate: float = 0.05,
    ratio: float = 0.8,
    device: torch.device | str = "cpu",
) -> GateResult:
    """Fit free fields to the collaborative-cycle objective on ``config``'s validation pairs
    (``data.validation``, misaligned as validation misaligns: ``data.augmentation``'s
    ``elastic_control_spacing_mm`` and ``elastic_max_displacement_mm``) with the two
    translators frozen; see the module docstring. ``config.loss`` gives the weights
    (``similarity_sigma`` included); its mode is taken as ``cocycle``."""
    data = replace(
        config.data, augmentation=replace(config.data.augmentation, elastic=True, affine=False)
    )
    config = replace(config, data=data, loss=replace(config.loss, mode="cocycle", deformation=0.0))
    pairs = PairedVolumes(load_cases(data.validation, data), data, training=False)
    device = torch.device(device)
    frozen = []
    for module in (translate_x2y, translate_y2x):
        module.to(device).eval()
        frozen += [p for p in module.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    critic = {"discriminate_x": torch.mean, "discriminate_y": torch.mean}  # no field gradient
    warp = SpatialTransformer("bilinear")
    spacing = tuple(reversed(data.spacing))
    errors: dict[str, dict[str, list[float]]] = {"identity": {}, "fitted": {}}
    try:
        for index in range(len(pairs)):
            item = pairs[index]
            x, y = item["x"][None].to(device), item["y"][None].to(device)
            deformation, deformed = item["deformation"][None].to(device), item["deformed"]
            fields = FreeFields(deformation.shape).to(device)
            objective = CoCycleObjective(
                {
                    "registration": fields,
                    "translate_x2y": translate_x2y,
                    "translate_y2x": translate_y2x,
                    **critic,
                },
                config,
            )
            with torch.no_grad():
                translations = Translations(fake_y=translate_x2y(x), fake_x=translate_y2x(y))
            optimiser = torch.optim.Adam(fields.parameters(), lr=learning_rate)
            for _ in range(steps):
                loss, _ = objective.generator_loss(x, y, translations, critic)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            with torch.no_grad():
                for head, flow in (("x2y", fields.x2y), ("y2x", fields.y2x)):
                    fixed = y if head == "x2y" else x
                    foreground = fixed[0, 0] > 0
                    # The x->y head pulls x; from y->x's view the deformed side swaps.
                    side = deformed if head == "x2y" else ("y" if deformed == "x" else "x")
                    for name, candidate in (("identity", torch.zeros_like(flow)), ("fitted", flow)):
                        error = residual_error_mm(candidate, deformation, side, spacing, warp)
                        errors[name].setdefault(head, []).append(float(error[0][foreground].mean()))
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    return GateResult(
        identity={h: float(np.mean(errors["identity"][h])) for h in HEADS},
        fitted={h: float(np.mean(errors["fitted"][h])) for h in HEADS},
        pairs=len(pairs),
        ratio=ratio,
    )
