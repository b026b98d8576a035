"""Seconds per training step and peak memory of the full collaborative cycle on this machine.

Runs the published (``paper`` preset) networks on a real T1/T2 pair resampled to the paper's
80x144x112 grid, once per memory setting, each in a fresh process so peak memory (maximum
resident set size on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) is that setting's own:

* plain float32;
* activation checkpointing;
* activation checkpointing + mixed precision (bfloat16 on CPU, float16 on CUDA).

The paper reports 20 GB of GPU memory for this size; the table prints each setting's peak
against that figure. Usage::

    python benchmarks/train_step.py [--steps 3] [--device auto] [--data ../shared/data]
        [--settings float32,checkpointing]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PAPER_GB = 20.0
SETTINGS = {
    "float32": [],
    "checkpointing": ["train.activation_checkpointing=true"],
    "checkpointing + mixed precision": [
        "train.activation_checkpointing=true",
        "train.mixed_precision=true",
    ],
}


def measure(arguments: argparse.Namespace, overrides: list[str]) -> dict:
    """One setting, in this process: build a paper-preset trainer, time ``steps`` steps."""
    import tempfile

    import torch

    from cocyclereg.config import load_config
    from cocyclereg.learning.training import Trainer

    folder = Path(arguments.data) / "brain-t1t2" / "TCGA-FG-6692"
    with tempfile.TemporaryDirectory() as scratch:
        cases = Path(scratch) / "cases.csv"
        cases.write_text(f"x,y\n{folder / 't1.nii.gz'},{folder / 't2.nii.gz'}\n")
        config = load_config(
            preset="paper",
            overrides=[
                f"data.train={cases}",
                f"train.output={Path(scratch) / 'run'}",
                f"train.device={arguments.device}",
                *overrides,
            ],
        )
        trainer = Trainer(config)
        batch = trainer.batch_for_step(0)
        trainer.train_step(batch)  # warm-up: allocator, kernels
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for step in range(arguments.steps):
            trainer.step = step + 1
            trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
            peak_gb = torch.cuda.max_memory_allocated() / 1e9
        else:
            peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        seconds = (time.perf_counter() - started) / arguments.steps
    return {
        "seconds_per_step": seconds,
        "peak_gb": peak_gb,
        "device": str(trainer.device),
        "grid_dhw": list(reversed(config.data.size)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per setting (after one warm-up)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="comma-separated subset of: " + ", ".join(SETTINGS) + " (default: all)",
    )
    parser.add_argument("--setting", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.setting is not None:
        print(json.dumps(measure(arguments, SETTINGS[arguments.setting])))
        return

    print("CoCycleReg training step, paper networks and grid (80 x 144 x 112 voxels, D x H x W)")
    print(f"{'setting':34s} {'device':>7s} {'s/step':>8s} {'peak GB':>8s} {'of paper 20 GB':>15s}")
    chosen = [name.strip() for name in arguments.settings.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    for name in chosen:  # each row as soon as it is measured: a full run takes a while on CPU
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--setting",
                name,
                "--steps",
                str(arguments.steps),
                "--device",
                arguments.device,
                "--data",
                arguments.data,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            print(f"{name:34s} failed: {result.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        share = row["peak_gb"] / PAPER_GB
        print(
            f"{name:34s} {row['device']:>7s} {row['seconds_per_step']:8.1f} "
            f"{row['peak_gb']:8.2f} {share:14.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
