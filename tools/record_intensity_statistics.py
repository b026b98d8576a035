"""Record the intensity statistics of their training images in the bundled model files.

Usage: python tools/record_intensity_statistics.py --data ../shared/data

Models exported before ``cocyclereg export`` recorded them (``intensity`` section, see
``cocyclereg.inference.plausibility``) get them here: the case lists are rebuilt with
``tools/make_training_set.py`` into a temporary folder, the training list each model's
provenance names (``config.data.train``) is read, and the model file is rewritten with the
same weights (bit-identical tensors) and the description plus ``intensity``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from cocyclereg.config import config_from_dict
from cocyclereg.inference.plausibility import intensity_section
from cocyclereg.learning.data import load_cases
from cocyclereg.model_file import load_model, save_model
from cocyclereg.resources import list_bundled_models

TOOLS = Path(__file__).resolve().parent


def rewrite_with_intensity(path: Path, intensity: dict) -> Path:
    """Rewrite model file ``path`` with ``intensity`` as its ``intensity`` section; weights
    and the rest of the description unchanged."""
    network, info = load_model(path)
    return save_model(path, network, replace(info, intensity=intensity))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TOOLS.parents[1] / "shared" / "data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as lists:
        make = [sys.executable, str(TOOLS / "make_training_set.py"), "--data", str(args.data)]
        subprocess.run([*make, "--output", lists], check=True)
        for name, (path, _) in list_bundled_models().items():
            _, info = load_model(path)
            config = config_from_dict(info.provenance["config"])
            cases = load_cases(Path(lists) / Path(config.data.train).name, config.data)
            images = {s: list(dict.fromkeys(str(getattr(c, s)) for c in cases)) for s in "xy"}
            section = intensity_section(dict(zip("xy", info.modalities, strict=True)), images)
            rewrite_with_intensity(path, section)
            kinds = {
                side: (record["kind"], len(record["images"])) for side, record in section.items()
            }
            print(f"{name}: {kinds} (kind, training images) recorded in {path}")


if __name__ == "__main__":
    main()
