"""Choose a model's recommended refinement on its validation pairs (never on a test subject).

For every validation item of a training configuration (each pair deformed by its fixed, seeded
validation field, exactly as ``cocyclereg train`` validates), runs the model's network, then
refines its x->y field with each candidate setting
(:func:`cocyclereg.inference.refine.refine_flow`), and prints the mean registration error against
the known deformation (mm, over the fixed image's foreground,
:func:`cocyclereg.learning.training.residual_error_mm`), the percent of folded voxels and the
seconds per pair (folding counted on the field upsampled to 3x finer voxels, as a 1 mm fixed grid
sees a 3 mm model's field), for the identity, the network alone and every candidate. The chosen
setting goes into the model file with ``cocyclereg export --refine-steps N [--refine-smoothness
S]``.

    python tools/tune_refinement.py --config CoCycleRegTrain/configs/brain-t1t2-cpu.yaml \\
        --model runs/brain-t1t2/model.cocyclereg --steps 10,20,30 --smoothness 1,2,4
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F

from cocyclereg.config import Refinement, load_config
from cocyclereg.geometry.displacement import voxel_flow_to_displacement_mm
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import folding_stats, jacobian_determinant_array
from cocyclereg.geometry.spatial_transformer import SpatialTransformer
from cocyclereg.inference.refine import refine_flow
from cocyclereg.learning.data import PairedVolumes, load_cases
from cocyclereg.learning.training import residual_error_mm
from cocyclereg.model_file import load_model


def _numbers(text: str, kind):
    return [kind(value) for value in text.split(",") if value.strip()]


FINE = 3  # model-grid voxels are cut in FINE**3 for the folding count


def _fine_folding_percent(flow: torch.Tensor, grid: Grid) -> float:
    """Percent of J <= 0 of ``flow`` trilinearly upsampled to voxels FINE times smaller, as
    registration outputs it on a finer fixed grid: on the model grid's own voxels, central
    differences miss the folds that trilinear interpolation makes inside a cell."""
    fine_shape = tuple(n * FINE - FINE + 1 for n in flow.shape[2:])  # nodes kept, cut in FINE
    fine_flow = F.interpolate(flow.double(), size=fine_shape, mode="trilinear", align_corners=True)
    fine_grid = Grid(
        tuple(n * FINE - FINE + 1 for n in grid.size),
        tuple(s / FINE for s in grid.spacing),
        grid.origin,
        grid.direction,
    )
    field = voxel_flow_to_displacement_mm(fine_flow[0].numpy() * FINE, fine_grid)
    return folding_stats(jacobian_determinant_array(field, fine_grid)).folding_percent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the model's training configuration")
    parser.add_argument("--model", required=True, help="the model file to tune")
    parser.add_argument("--steps", default="10,20,30", help="candidate step counts")
    parser.add_argument("--smoothness", default="1,2,4", help="candidate regulariser weights")
    parser.add_argument("--learning-rate", type=float, default=Refinement.learning_rate)
    args = parser.parse_args()

    config = load_config(args.config)
    network, _ = load_model(args.model)
    cases = load_cases(config.data.validation, config.data)
    validation = PairedVolumes(cases, config.data, training=False)
    spacing_dhw = tuple(reversed(config.data.spacing))
    grid = Grid(
        tuple(config.data.size), tuple(config.data.spacing), (0, 0, 0), tuple(np.eye(3).ravel())
    )
    warp = SpatialTransformer()
    candidates = {"identity": None, "network": Refinement(steps=0)}
    for steps, weight in itertools.product(
        _numbers(args.steps, int), _numbers(args.smoothness, float)
    ):
        candidates[f"steps {steps}, smoothness {weight:g}"] = Refinement(
            steps, weight, args.learning_rate
        )
    results = {name: {"tre": [], "folding": [], "seconds": []} for name in candidates}
    for index in range(len(validation)):
        item = validation[index]
        x, y, deformation = item["x"][None], item["y"][None], item["deformation"][None]
        foreground = y[0, 0] > 0
        with torch.no_grad():
            flow, _ = network(x, y)
        for name, refinement in candidates.items():
            started = time.perf_counter()
            refined = (
                torch.zeros_like(flow)
                if refinement is None
                else refine_flow(flow, x, y, refinement)
            )
            results[name]["seconds"].append(time.perf_counter() - started)
            error = residual_error_mm(refined, deformation, item["deformed"], spacing_dhw, warp)
            results[name]["tre"].append(float(error[0][foreground].mean()))
            results[name]["folding"].append(_fine_folding_percent(refined, grid))
        print(f"item {index + 1}/{len(validation)} ({item['name']}) done", flush=True)
    print(f"\n{len(validation)} validation pairs of {config.data.validation}, model {args.model}\n")
    print(
        "| setting | error mean mm | error max over pairs mm | % J<=0 mean | % J<=0 max | s/pair |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in results.items():
        print(
            f"| {name} | {np.mean(values['tre']):.3f} | {np.max(values['tre']):.3f} "
            f"| {np.mean(values['folding']):.4f} | {np.max(values['folding']):.4f} "
            f"| {np.mean(values['seconds']):.2f} |"
        )


if __name__ == "__main__":
    main()
