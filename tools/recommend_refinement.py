"""Write the refinement a model recommends at inference into its model file.

Usage (the brain model's recommendation, chosen on the development subjects TCGA-FG-6692,
BraTS-GLI-00001-000 and stroke; see its card):

    python tools/recommend_refinement.py \\
        CoCycleRegTrain/src/cocyclereg/resources/models/brain-t1t2.cocyclereg \\
        --steps 20 --no-network --fine-spacing 1.5 --fine-steps 20

Rewrites the file with the same weights (bit-identical tensors) and description, only its
``refinement`` entry replaced (:class:`cocyclereg.config.Refinement`; fields not given keep
their value). ``cocyclereg export`` writes the same entry for a new model.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from cocyclereg.model_file import load_model, save_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="the model file to rewrite")
    parser.add_argument("--steps", type=int, help="refinement steps on the model grid")
    parser.add_argument("--smoothness", type=float, help="their diffusion weight")
    parser.add_argument("--learning-rate", type=float, help="Adam's step, voxels")
    parser.add_argument(
        "--network", action=argparse.BooleanOptionalAction, help="start from the network's field"
    )
    parser.add_argument("--fine-spacing", type=float, help="the finer level's voxels, mm")
    parser.add_argument("--fine-steps", type=int, help="the finer level's steps (0: none)")
    parser.add_argument("--fine-smoothness", type=float, help="its diffusion weight")
    args = parser.parse_args()
    network, info = load_model(args.model)
    given = {
        "steps": args.steps,
        "smoothness": args.smoothness,
        "learning_rate": args.learning_rate,
        "use_network": args.network,
        "fine_spacing_mm": args.fine_spacing,
        "fine_steps": args.fine_steps,
        "fine_smoothness": args.fine_smoothness,
    }
    refinement = replace(info.refinement, **{k: v for k, v in given.items() if v is not None})
    save_model(args.model, network, replace(info, refinement=refinement))
    print(f"{args.model}: refinement {refinement.as_dict()}")


if __name__ == "__main__":
    main()
