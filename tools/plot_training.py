"""Plot a training run's loss and validation curves to a PNG (for model cards).

Usage: python tools/plot_training.py RUN_FOLDER OUTPUT.png [--title TEXT]

Reads ``losses.jsonl`` (one record every ``train.log_every`` steps) and ``validation.jsonl``
(one record per validation) that ``cocyclereg train`` writes, and draws: the loss terms
(moving average over a twentieth of the run), validation Dice against the identity Dice, the
registration error against the known deformations (mm; HD95 for runs without one), and the
percent of voxels with J <= 0.
For a translators' run (``loss.mode=translation``) the validation panel is instead each
translator's L1 error against the image change a validation-sized misalignment makes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(values: np.ndarray, width: int = 25) -> np.ndarray:
    if len(values) < width:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def _plot_translation(axis, validation: list[dict]) -> None:
    """Validation L1 of each translator against the misalignment signal (the gate's bar)."""
    at = [v["step"] for v in validation]
    axis.plot(at, [v["x2y_l1"] for v in validation], "o-", label="x -> y translator")
    axis.plot(at, [v["y2x_l1"] for v in validation], "o-", label="y -> x translator")
    axis.plot(at, [v["misalignment_l1"] for v in validation], "--", label="misalignment signal")
    axis.set(xlabel="step", ylabel="mean L1 over the head", title="validation L1 (translators)")
    axis.legend(fontsize=8)


def plot(run: Path, output: Path, title: str) -> None:
    losses, validation = _records(run / "losses.jsonl"), _records(run / "validation.jsonl")
    if not losses:
        raise SystemExit(f"{run} has no losses.jsonl")
    translation = bool(validation) and "misalignment_l1" in validation[0]
    panels = 2 if translation else 3
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    steps = np.array([r["step"] for r in losses])
    # A moving average over a twentieth of the run, at most 25 records (one record every
    # train.log_every steps); the axis label states its length in steps.
    interval = int(steps[1] - steps[0]) if len(steps) > 1 else 1
    width = max(1, min(25, len(steps) // 20))
    terms = [k for k in losses[0] if k not in ("step", "seconds", "total")]
    for term in terms:
        values = np.array([r.get(term, np.nan) for r in losses], dtype=float)
        smoothed = _smooth(values, width)
        axes[0].plot(steps[len(steps) - len(smoothed) :], smoothed, label=term)
    axes[0].set(
        xlabel="step",
        ylabel=f"loss ({width * interval}-step mean)",
        yscale="log",
        title="training losses",
    )
    axes[0].legend(fontsize=8)
    if translation:
        _plot_translation(axes[1], validation)
    elif validation:
        at = [v["step"] for v in validation]
        axes[1].plot(at, [v["dice"] for v in validation], "o-", label="registered")
        axes[1].plot(at, [v["identity_dice"] for v in validation], "--", label="identity")
        axes[1].set(xlabel="step", ylabel="mean Dice", title="validation Dice (tissue labels)")
        axes[1].legend(fontsize=8)
        error = "tre" if "tre" in validation[0] else "hd95"
        name = "registration error" if error == "tre" else "HD95"
        axes[2].plot(at, [v[error] for v in validation], "o-", label=f"{name} registered")
        axes[2].plot(at, [v[f"identity_{error}"] for v in validation], "--", label="identity")
        folding = axes[2].twinx()
        folding.plot(at, [v["folding_percent"] for v in validation], "r:", label="% J <= 0")
        folding.set_ylabel("% voxels with J <= 0", color="r")
        axes[2].set(xlabel="step", ylabel=f"{name} (mm)", title=f"validation {name} and folding")
        axes[2].legend(fontsize=8, loc="upper left")
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="training output folder (train.output)")
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args()
    plot(args.run, args.output, args.title or args.run.name)


if __name__ == "__main__":
    main()
