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
