"""Register the real misaligned acquisition TCGA-FG-6692-unregistered (T1 onto T2) and draw it.

The two series were acquired in one session but are not aligned with each other (original
scanner grids, 0.9 x 0.9 x 5.5 mm): a real pair needing the rigid pre-alignment and the
deformable network, with no ground truth. Registers with the bundled brain model exactly as
``cocyclereg register`` does (default settings), prints the rigid motion found, the stage
seconds and the folding count, and saves the registration figure (fixed T2, T1 before and
after, checkerboards, Jacobian). The model card shows the figure.

    python tools/register_unregistered_pair.py \\
        --output CoCycleRegTrain/src/cocyclereg/resources/models/brain-t1t2-unregistered.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from cocyclereg.evaluation.figure import registration_figure
from cocyclereg.inference.register import register
from cocyclereg.io import read_image
from cocyclereg.resources import bundled_model

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COCYCLEREG_DATA", REPOSITORY.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="PNG figure to write")
    parser.add_argument("--model", default="brain-t1t2", help="bundled model name or file")
    args = parser.parse_args()
    folder = DATA / "brain-t1t2" / "TCGA-FG-6692-unregistered"
    model = bundled_model(args.model) if not Path(args.model).is_file() else Path(args.model)
    fixed, moving = read_image(folder / "t2.nii.gz"), read_image(folder / "t1.nii.gz")
    result = register(fixed, moving, model, device="cpu")
    matrix = np.reshape(result.affine.GetMatrix(), (3, 3))
    angle = np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1, 1)))
    print(
        f"rigid pre-alignment: rotation {angle:.2f} deg, translation (LPS mm) "
        f"{np.round(result.affine.GetTranslation(), 2).tolist()}, centre "
        f"{np.round(result.affine.GetCenter(), 1).tolist()}"
    )
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()))
    print(
        f"refinement steps {result.refinement.steps}; J <= 0: {result.folding.folding_voxels} "
        f"voxels ({result.folding.folding_percent:.4f} %)"
    )
    registration_figure(
        args.output,
        fixed,
        moving,
        result.warped,
        result.jacobian,
        title="TCGA-FG-6692 as acquired: T1 (moving) onto T2 (fixed), brain-t1t2 model",
        names=("T2", "T1"),
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
