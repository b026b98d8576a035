"""The ``cocyclereg`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cocyclereg import __version__
from cocyclereg.displacement import displacement_transform, read_displacement_field
from cocyclereg.errors import CoCycleRegError
from cocyclereg.grid import Grid
from cocyclereg.io import atomic_output, read_image, read_labels, write_image
from cocyclereg.jacobian import folding_stats, jacobian_determinant
from cocyclereg.resample import resample_to_grid

DESCRIPTION = """\
CoCycleReg: learned multi-modal deformable registration (CT<->MRI, T1<->T2 MRI).

Every transform file this tool reads or writes is an ITK displacement field (.h5 or .nii.gz,
LPS millimetres) that maps a point of the fixed image to the point of the moving image to
sample: SimpleITK, ITK, ANTs and 3D Slicer apply it unchanged.
"""


def _resample(args: argparse.Namespace) -> int:
    moving = read_labels(args.input) if args.labels else read_image(args.input)
    grid = Grid.from_image(read_image(args.reference))
    transform = (
        displacement_transform(read_displacement_field(args.transform)) if args.transform else None
    )
    result = resample_to_grid(moving, grid, "label" if args.labels else "linear", transform)
    write_image(result, args.output)
    print(f"wrote {args.output} ({'x'.join(map(str, grid.size))} voxels)")
    return 0


def _jacobian(args: argparse.Namespace) -> int:
    determinant = jacobian_determinant(read_displacement_field(args.transform))
    stats = folding_stats(determinant)
    if args.output:
        write_image(determinant, args.output)
    print(
        f"J <= 0 in {stats.folding_voxels} of {stats.total_voxels} voxels "
        f"({stats.folding_percent:.4f} %); J ranges {stats.min_jacobian:.3f} .. "
        f"{stats.max_jacobian:.3f}"
    )
    if args.summary:
        with atomic_output(args.summary) as temporary:
            temporary.write_text(json.dumps(stats.as_dict(), indent=2) + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from cocyclereg.config import load_config
    from cocyclereg.training import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    config = load_config(args.config, overrides, preset=args.preset)
    model = train(config, resume=args.resume)
    if model is not None:
        print(f"model written to {model}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cocyclereg.training import export_checkpoint

    path = export_checkpoint(args.run, args.output)
    print(f"model written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocyclereg",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cocyclereg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    resample = commands.add_parser(
        "resample",
        help="resample a volume onto another volume's grid, optionally through a transform",
        description="Resample INPUT onto the grid of REFERENCE. With --transform, each output "
        "voxel at fixed-space point p takes INPUT's value at T(p).",
    )
    resample.add_argument("--input", required=True, type=Path, help="volume to resample (moving)")
    resample.add_argument("--reference", required=True, type=Path, help="volume whose grid to use")
    resample.add_argument("--output", required=True, type=Path, help="output volume file")
    resample.add_argument(
        "--transform", type=Path, help="displacement-field transform (.h5/.nii.gz)"
    )
    resample.add_argument(
        "--labels",
        action="store_true",
        help="INPUT is a labelmap: nearest-neighbour, integer type kept, no new label values",
    )
    resample.set_defaults(run=_resample)

    jacobian = commands.add_parser(
        "jacobian",
        help="Jacobian determinant and folding count of a displacement-field transform",
        description="Compute J = det(I + grad u) in physical space on the transform's grid and "
        "report how many voxels fold (J <= 0).",
    )
    jacobian.add_argument("--transform", required=True, type=Path, help="displacement field file")
    jacobian.add_argument("--output", type=Path, help="write J as a float volume")
    jacobian.add_argument("--summary", type=Path, help="write the folding statistics as JSON")
    jacobian.set_defaults(run=_jacobian)

    training = commands.add_parser(
        "train",
        help="train a model with the collaborative cycle (or an ablation/baseline)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train R, the translation generators and discriminators on paired cases.\n\n"
        "Settings come from a preset (paper: the published setting; cpu-small: trains on a\n"
        "CPU in hours), then the YAML file given with --config, then SECTION.FIELD=VALUE\n"
        "overrides, e.g.\n\n"
        "  cocyclereg train --config brain.yaml train.steps=2000 data.size=[64,80,64]\n\n"
        "The run folder (train.output) gets config.yaml, losses.jsonl, validation.jsonl,\n"
        "tensorboard/, checkpoints/last.pt and best.pt, and at the end model.cocyclereg,\n"
        "the inference model file. Interrupted? Run the same command with --resume.\n"
        "Distributed: torchrun --nproc_per_node N -m cocyclereg train ...",
    )
    training.add_argument("--config", type=Path, help="YAML configuration file")
    training.add_argument(
        "--preset",
        choices=["paper", "cpu-small"],
        help="starting settings (default: the file's `preset:` or paper)",
    )
    training.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in train.output from its last checkpoint",
    )
    training.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="shortcut for train.device"
    )
    training.add_argument(
        "overrides",
        nargs="*",
        metavar="SECTION.FIELD=VALUE",
        help="settings that override the file and preset",
    )
    training.set_defaults(run=_train)

    export = commands.add_parser(
        "export",
        help="write the inference model file of a training run",
        description="Export the best validated (else the last) registration network of a run "
        "folder, with everything inference needs, as a safe model file.",
    )
    export.add_argument("--run", required=True, type=Path, help="the run folder (train.output)")
    export.add_argument("--output", required=True, type=Path, help="model file to write")
    export.set_defaults(run=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except CoCycleRegError as error:
        print(f"cocyclereg {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
