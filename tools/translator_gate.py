"""The translators' gate (issue 17): may a collaborative-cycle run use these translators?

Usage (from the repository root, after `python tools/make_training_set.py --output runs/data`):

    python tools/translator_gate.py runs/brain-t1t2-translators [--checkpoint best.pt]
        [--steps 150] [--learning-rate 0.05] [--ratio 0.8] [SECTION.FIELD=VALUE ...]

Reads the run's ``config.yaml`` (the overrides apply on top, e.g. ``loss.similarity_sigma=1``
for the weights of the cocycle run to come) and its checkpoint's translators, then fits free
fields to the paper's objective on the run's validation pairs with the translators frozen
(:func:`cocyclereg.learning.translator_gate.free_field_gate`) and prints, per head, the identity's
and the fitted fields' mean registration error (mm) and whether both heads reach ``ratio`` times
the identity's error, with the run's last validation L1 against the misalignment signal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cocyclereg.config import load_config
from cocyclereg.learning.pipeline import CoCycleNetworks
from cocyclereg.learning.translator_gate import free_field_gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a loss.mode=translation run folder")
    parser.add_argument("--checkpoint", default="best.pt", help="in RUN/checkpoints/")
    parser.add_argument("--steps", type=int, default=150, help="Adam steps of the free fields")
    parser.add_argument("--learning-rate", type=float, default=0.05, help="voxels per step")
    parser.add_argument("--ratio", type=float, default=0.8, help="pass: fitted <= ratio x identity")
    parser.add_argument("overrides", nargs="*", help="SECTION.FIELD=VALUE settings")
    args = parser.parse_args()

    config = load_config(args.run / "config.yaml", args.overrides)
    networks = CoCycleNetworks(config)
    state = torch.load(args.run / "checkpoints" / args.checkpoint, weights_only=True)
    if "translators" in state:
        for name, weights in state["translators"].items():
            getattr(networks, name).load_state_dict(weights)
    else:
        networks.load_state_dict(state["networks"])
    result = free_field_gate(
        config,
        networks.translate_x2y,
        networks.translate_y2x,
        steps=args.steps,
        learning_rate=args.learning_rate,
        ratio=args.ratio,
    )
    validation = args.run / "validation.jsonl"
    last = json.loads(validation.read_text().splitlines()[-1]) if validation.is_file() else {}
    report = {
        "checkpoint": str(args.run / "checkpoints" / args.checkpoint),
        "step": int(state.get("step", -1)),
        **result.as_dict(),
        "translation_l1": {k: last.get(k) for k in ("x2y_l1", "y2x_l1", "misalignment_l1")},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
