"""The ``cocyclereg`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cocyclereg import __version__
from cocyclereg.batch_cli import add_batch_command
from cocyclereg.config import Refinement
from cocyclereg.errors import CoCycleRegError, InputError
from cocyclereg.geometry.displacement import displacement_transform, read_displacement_field
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import folding_stats, jacobian_determinant
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.inference.outputs import registration_summary, write_registration_outputs
from cocyclereg.io import atomic_output, read_image, read_labels, write_image
from cocyclereg.review.command import add_review_command

DESCRIPTION = """\
CoCycleReg: multi-modal deformable registration of two images of the same subject (T1<->T2
brain MRI, head CT<->MRI). By default (bundled model brain-t1t2) a rigid pre-alignment and
instance optimisation on the pair, 20 steps on 3 mm then 20 on 1.5 mm voxels; the learned
network is not run (--network).
`cocyclereg models` lists the bundled models and their modality names.

Every transform file this tool reads or writes is an ITK displacement field (.h5 or .nii.gz,
LPS millimetres) that maps a point of the fixed image to the point of the moving image to
sample: SimpleITK, ITK, ANTs and 3D Slicer apply it unchanged.
"""


def _check_outputs(outputs, inputs) -> None:
    """Refuse outputs that would overwrite an input or could not be written, before any work."""
    from cocyclereg.inference.outputs import check_output_paths

    check_output_paths(outputs, [path for path in inputs if path is not None])


def _resample(args: argparse.Namespace) -> int:
    _check_outputs(
        [("--output", "image", args.output)], [args.input, args.reference, args.transform]
    )
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
    _check_outputs(
        [("--output", "image", args.output), ("--summary", "json", args.summary)],
        [args.transform],
    )
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


def _write_json(document: dict) -> Callable[[Path], object]:
    return lambda path: path.write_text(json.dumps(document, indent=2) + "\n")


def _print_stage(stage: str) -> None:
    """One flushed line per registration stage on stderr, for progress displays (Slicer)."""
    print(f"stage: {stage}", file=sys.stderr, flush=True)


def _load_kernels() -> None:
    """Loads the compiled kernels (:mod:`cocyclereg.geometry.kernels`) with the imports, before any
    input is read (a loading thread beside torch's import would slow both: they share the
    interpreter); says so when they had to be compiled, the first time after installation."""
    from cocyclereg.geometry import kernels

    started = time.perf_counter()
    kernels.load_in_background().result()
    seconds = time.perf_counter() - started
    if seconds > 5:
        print(
            f"compiled cocyclereg's kernels in {seconds:.0f} s (once after installation)",
            file=sys.stderr,
        )


def register_output_paths(args: argparse.Namespace) -> list[tuple[str, str, Path | None]]:
    """``(option, kind, path)`` of every output of ``register`` (for
    :func:`cocyclereg.inference.outputs.check_output_paths`)."""
    return [
        ("--transform", "transform", args.transform),
        ("--inverse-transform", "transform", args.inverse_transform),
        ("--warped", "image", args.warped),
        ("--jacobian", "image", args.jacobian),
        ("--summary", "json", args.summary),
        *(("--warped-labels", "image", path) for path in args.warped_labels or []),
    ]


def register_keywords(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`cocyclereg.inference.register.register` that the options of
    :func:`add_register_options` give (the model excepted: ``resolve_model(args.model)``)."""
    return {
        "fixed_modality": args.fixed_modality,
        "moving_modality": args.moving_modality,
        "affine": args.affine,
        "prealignment": args.prealignment,
        "device": args.device,
        "refine_steps": args.refine_steps,
        "use_network": args.network,
        "mirror_average": args.mirror_average,
        "fine_steps": args.fine_steps,
        "fine_spacing_mm": args.fine_spacing,
        "check_modality": not args.force_modality,
    }


def _output_names(args: argparse.Namespace) -> dict:
    """The summary's record of the outputs written (absolute paths), for ``cocyclereg
    review``; warped labelmaps by their input's name
    (:func:`cocyclereg.inference.manifest.label_name`)."""
    from cocyclereg.inference.manifest import label_name

    names = {"transform": args.transform, "inverse_transform": args.inverse_transform}
    names |= {"warped": args.warped, "jacobian": args.jacobian}
    record = {key: str(Path(path).resolve()) for key, path in names.items() if path}
    if args.summary:  # where the summary was written: a copied result folder is recognised
        record["folder"] = str(Path(args.summary).resolve().parent)
    labels = zip(args.labels or [], args.warped_labels or [], strict=True)
    warped_labels: dict[str, str] = {}
    for label, warped in labels:
        name, number = label_name(Path(label)), 1
        while (key := name if number == 1 else f"{name}-{number}") in warped_labels:
            number += 1  # two labelmaps of one file name in different folders: both kept
        warped_labels[key] = str(Path(warped).resolve())
    record["warped_labels"] = warped_labels
    return record


def _register(args: argparse.Namespace) -> int:
    from cocyclereg.inference.outputs import check_output_paths
    from cocyclereg.resources import resolve_model

    labels, warped_labels = list(args.labels or []), list(args.warped_labels or [])
    if len(labels) != len(warped_labels):
        raise InputError("give one --warped-labels output for every --labels input")
    for option, path in (("--fixed", args.fixed), ("--moving", args.moving)):
        if not Path(path).is_file():
            raise InputError(f"{option} {path}: file not found.")
    check_output_paths(register_output_paths(args), [args.fixed, args.moving, *labels])
    model = resolve_model(args.model)
    _load_kernels()
    from cocyclereg.inference.register import register

    result = register(
        args.fixed,
        args.moving,
        model,
        labels=labels,
        warp_moving=args.warped is not None,
        inverse=args.inverse_transform is not None,
        progress=_print_stage,
        **register_keywords(args),
    )
    summary = registration_summary(result, args.fixed, args.moving, model)
    summary["outputs"] = _output_names(args)
    write_registration_outputs(
        result,
        args.transform,
        inverse_transform=args.inverse_transform,
        warped=args.warped,
        jacobian=args.jacobian,
        warped_labels=warped_labels,
        extra=[(args.summary, _write_json(summary))] if args.summary else [],
    )
    folding = result.folding
    print(
        f"registered {args.moving} ({result.moving_modality}) to {args.fixed} "
        f"({result.fixed_modality}) with {model} on {result.device}; J <= 0 in "
        f"{folding.folding_voxels} voxels ({folding.folding_percent:.4f} %)"
    )
    if result.similarity:
        similarity = result.similarity
        print(
            f"similarity (normalised mutual information on the fixed foreground, higher is "
            f"better): {similarity['before']:.3f} before, {similarity['after']:.3f} after"
        )
    if result.deformable_displacement_mm:
        moved = result.deformable_displacement_mm
        print(
            f"deformable motion (pre-alignment excluded, fixed foreground): mean "
            f"{moved['mean']:.2f} mm, 95th percentile {moved['p95']:.2f} mm, "
            f"max {moved['max']:.2f} mm"
        )
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    _load_kernels()
    from cocyclereg.demo import report, run_demo

    result = run_demo(args.output, args.model, args.device, figure=args.figure)
    print(report(result))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cocyclereg.evaluation.evaluate import evaluate, read_transform

    _check_outputs(
        [("--json", "json", args.json)],
        [args.fixed_labels, args.moving_labels, args.transform, args.ground_truth],
    )
    result = evaluate(
        read_labels(args.fixed_labels),
        read_labels(args.moving_labels),
        read_transform(args.transform),
        read_transform(args.ground_truth) if args.ground_truth else None,
    )
    print(result.table())
    if args.json:
        with atomic_output(args.json) as temporary:
            temporary.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from cocyclereg.config import load_config
    from cocyclereg.learning.training import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    config = load_config(args.config, overrides, preset=args.preset)
    written = train(config, resume=args.resume)
    if written is not None and config.loss.mode == "translation":
        print(
            f"translators written to {written}; a cocycle run starts from them with "
            f"train.init_translation={written}"
        )
    elif written is not None:
        print(f"model written to {written}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cocyclereg.learning.training import export_checkpoint

    _check_outputs([("--output", "model", args.output)], [])
    if args.output.resolve().is_relative_to((args.run / "checkpoints").resolve()):
        raise InputError(f"--output {args.output} is inside the run's checkpoints folder")

    refinement = Refinement(
        args.refine_steps,
        args.refine_smoothness,
        args.refine_learning_rate,
        use_network=args.refine_from == "network",
        mirror_average=args.mirror_average,
        fine_spacing_mm=args.fine_spacing,
        fine_steps=args.fine_steps,
        fine_smoothness=args.fine_smoothness,
    )
    try:
        path = export_checkpoint(args.run, args.output, args.name, args.intended_use, refinement)
    except ValueError as error:  # the model description refuses the settings (mirror on an
        raise InputError(str(error)) from None  # image-grid model)
    print(f"model written to {path}")
    return 0


def _positive_number(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative_number(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _whole_number(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _add_model_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--model",
        type=Path,
        help="model file (.cocyclereg) or bundled model name (brain-t1t2, head-ct-mri); "
        "default: the bundled brain T1/T2 MRI model (brain-t1t2)",
    )


def _bundled_modalities() -> str:
    """``brain-t1t2: t1, t2; head-ct-mri: ct, mri`` from the installed bundled models."""
    from cocyclereg.model_file import ModelFileError, read_model_info
    from cocyclereg.resources import list_bundled_models

    described = []
    for name, (path, _) in list_bundled_models().items():
        try:
            described.append(f"{name}: {', '.join(read_model_info(path).modalities)}")
        except ModelFileError:
            continue
    return "; ".join(described) or "none installed"


REGISTER_DESCRIPTION = """\
Register MOVING to FIXED: two images of the same subject (any orientation, spacing and size),
of the two modalities the model registers (`cocyclereg models` lists them). Each input is
checked first: a CT where the model expects MRI, or an MRI where it expects CT, is refused
(--force-modality overrides).

What runs, with the default model (brain-t1t2, T1 <-> T2 brain MRI): a rigid mutual-
information pre-alignment, then instance optimisation of a deformable field on this pair
(MIND-SSC similarity, diffusion regulariser): 20 steps on the model's 3 mm grid, then 20 on
1.5 mm voxels from the images at full resolution; the network is not run (--network runs
it). Other models recommend their own settings (`cocyclereg models`).

--transform is an ITK displacement field on the fixed grid mapping fixed-space points to the
moving-space points to sample (pre-alignment included): SimpleITK, ANTs and Slicer apply it
unchanged to resample MOVING onto FIXED. --inverse-transform does the same from moving to
fixed, on the moving grid. Outputs are checked before any work, written to temporary names
and renamed when all are complete. --summary says whether it worked: the similarity of the
two images before and after (normalised mutual information, higher is better).

  cocyclereg register --fixed t2.nii.gz --moving t1.nii.gz --model brain-t1t2 \\
      --transform t1_to_t2.h5 --warped t1_in_t2.nii.gz --jacobian j.nii.gz --summary s.json
  cocyclereg register --fixed mri.nii.gz --moving ct.nii.gz --model head-ct-mri \\
      --moving-modality ct --fixed-modality mri --transform ct_to_mri.h5
"""


def add_register_options(command: argparse.ArgumentParser) -> None:
    """The options that say how to register (model, modalities, pre-alignment, refinement,
    device): shared by every command that registers; :func:`register_keywords` turns them
    into :func:`cocyclereg.inference.register.register`'s keywords."""
    _add_model_argument(command)
    modalities = f"(bundled models: {_bundled_modalities()})"
    command.add_argument(
        "--moving-modality",
        metavar="NAME",
        help=f"the moving image's modality, one of the model's two names {modalities}; "
        "default: the model's first (x), or the one --fixed-modality leaves",
    )
    command.add_argument(
        "--fixed-modality",
        metavar="NAME",
        help="the fixed image's modality, one of the model's two names; default: the model's "
        "second (y), or the one --moving-modality leaves",
    )
    command.add_argument(
        "--force-modality",
        action="store_true",
        help="register even if an image does not look like the modality it is given as (a "
        "CT in Hounsfield units given as MRI, an MRI given as CT); for images you know better",
    )
    command.add_argument(
        "--affine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mutual-information linear pre-alignment before the deformable stage (default: on)",
    )
    command.add_argument(
        "--prealignment",
        choices=["rigid", "affine"],
        default="rigid",
        help="degrees of freedom of that pre-alignment (default: rigid; a 12-parameter affine "
        "lets MI shrink skull-stripped brains by a few percent)",
    )
    command.add_argument(
        "--refine-steps",
        type=_whole_number,
        metavar="N",
        help="Adam steps of instance optimisation on this pair (MIND-SSC similarity and "
        "diffusion regulariser on the model grid, about 0.02 s each on two CPU cores); 0: none "
        "there (the finer level still runs unless --fine-steps 0; both 0: the network's fields "
        "as they are); default: the model's recommendation (brain-t1t2: 20, head-ct-mri: 0)",
    )
    command.add_argument(
        "--network",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--network starts the refinement from the network's fields, --no-network from "
        "the pre-aligned images as they are (instance optimisation alone; the network is not "
        "run); default: the model's recommendation (brain-t1t2: --no-network, measured more "
        "accurate on unseen subjects, see its card; head-ct-mri: --network)",
    )
    command.add_argument(
        "--mirror-average",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the network's fields with those of the left-right mirrored pair (the "
        "network runs twice; steadier fields, see the models' cards); default: the model's "
        "recommendation",
    )
    command.add_argument(
        "--fine-steps",
        type=_whole_number,
        metavar="N",
        help="Adam steps of a second refinement level on a finer grid (the images resampled "
        "from full resolution onto --fine-spacing voxels; the inverse is then the forward "
        "field's exact inverse); 0: none, the field stays on the model grid; default: the "
        "model's recommendation (brain-t1t2: 20 at 1.5 mm)",
    )
    command.add_argument(
        "--fine-spacing",
        type=_positive_number,
        metavar="MM",
        help="voxel size of that finer level in mm (default: the model's recommendation)",
    )
    command.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _models(args: argparse.Namespace) -> int:
    from cocyclereg.inference.plausibility import KINDS, expected_kind
    from cocyclereg.model_file import read_model_info
    from cocyclereg.resources import list_bundled_models, resolve_model

    bundled = list_bundled_models()
    names = args.models or list(bundled)
    if not names:
        print("no bundled models installed; give a model file")
    for index, value in enumerate(names):
        path = resolve_model(value)
        info = read_model_info(path)
        name = next((n for n, (p, _) in bundled.items() if p.resolve() == path.resolve()), None)
        card = path.with_suffix(".md")
        x, y = info.modalities
        kinds = [KINDS[expected_kind(m, info.intensity.get(s))] for m, s in ((x, "x"), (y, "y"))]
        refinement = info.refinement
        if not refinement.use_network:
            default = (
                f"{refinement.steps} refinement steps from the pre-aligned images (network not run)"
            )
        else:
            default = f"the network{' (mirror-averaged)' if refinement.mirror_average else ''}"
            if refinement.steps:
                default += f", then {refinement.steps} refinement steps"
            elif not refinement.has_fine_level:
                default += ", its fields as they are (no refinement)"
        if refinement.has_fine_level:
            default += f", then {refinement.fine_steps} on {refinement.fine_spacing_mm:g} mm voxels"
        if refinement.mirror_average and not refinement.use_network:
            default += "; --network runs it mirror-averaged"
        lines = [
            f"{name or path}{' (default)' if name == 'brain-t1t2' else ''}"
            + (f"  [bundled: --model {name}]" if name else f"  [--model {path}]"),
            f"  title:        {info.provenance.get('name', '')}",
            f"  modalities:   {x} ({kinds[0]}) and {y} ({kinds[1]}): --moving-modality/"
            f"--fixed-modality {x} or {y}; default moving {x}, fixed {y}",
            f"  grid:         {' x '.join(f'{s:g}' for s in info.spacing)} mm, trained on "
            f"{' x '.join(str(n) for n in info.size)} voxels",
            f"  default:      {default}",
            f"  intended use: {info.provenance.get('intended_use', '') or 'not stated'}",
            f"  card:         {card if card.is_file() else 'none'}",
            f"  file:         {path}",
        ]
        print(("\n" if index else "") + "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocyclereg",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cocyclereg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demonstration = commands.add_parser(
        "demo",
        help="register the bundled real T1/T2 pair with the bundled model and draw the result",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Register the bundled demo pair (the T1 MRI of a real patient, TCGA-DU-7294,\n"
        "deformed by a known warp, to the T2 MRI of the same head; 2 mm) with the bundled\n"
        "brain-t1t2 model, exactly as `cocyclereg register` does (rigid pre-alignment, then\n"
        "instance optimisation on the pair: 20 steps on the model's 3 mm grid and 20 on 1.5 mm\n"
        "voxels; the network is not run), then print Dice and HD95 of the tumour and tissue\n"
        "labels before and after, the folding count and the seconds per stage. Writes the\n"
        "transforms, warped image and labels, Jacobian, summary.json and demo.png (all\n"
        "together or none) to --output. Nothing is trained.\n\n"
        "  cocyclereg demo --output cocyclereg-demo",
    )
    demonstration.add_argument(
        "--output",
        type=Path,
        default=Path("cocyclereg-demo"),
        help="folder for the outputs, created if missing (default: ./cocyclereg-demo)",
    )
    _add_model_argument(demonstration)
    demonstration.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    demonstration.add_argument(
        "--no-figure",
        dest="figure",
        action="store_false",
        help="skip demo.png (matplotlib)",
    )
    demonstration.set_defaults(handler=_demo)

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
    resample.set_defaults(handler=_resample)

    jacobian = commands.add_parser(
        "jacobian",
        help="Jacobian determinant and folding count of a displacement-field transform",
        description="Compute J = det(I + grad u) in physical space on the transform's grid and "
        "report how many voxels fold (J <= 0).",
    )
    jacobian.add_argument("--transform", required=True, type=Path, help="displacement field file")
    jacobian.add_argument("--output", type=Path, help="write J as a float volume")
    jacobian.add_argument("--summary", type=Path, help="write the folding statistics as JSON")
    jacobian.set_defaults(handler=_jacobian)

    registration = commands.add_parser(
        "register",
        help="register a moving image to a fixed image of the same subject with a trained model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=REGISTER_DESCRIPTION,
    )
    registration.add_argument("--fixed", required=True, type=Path, help="fixed (reference) image")
    registration.add_argument(
        "--moving", required=True, type=Path, help="moving image, of the same subject"
    )
    registration.add_argument(
        "--transform", required=True, type=Path, help="forward transform output (.h5 or .nii.gz)"
    )
    registration.add_argument("--inverse-transform", type=Path, help="inverse transform output")
    registration.add_argument(
        "--warped", type=Path, help="moving image resampled onto the fixed grid"
    )
    registration.add_argument(
        "--labels",
        type=Path,
        action="append",
        help="labelmap on the moving grid to warp (repeatable)",
    )
    registration.add_argument(
        "--warped-labels",
        type=Path,
        action="append",
        help="output of the matching --labels (repeatable, same order)",
    )
    registration.add_argument("--jacobian", type=Path, help="det(I + grad u) on the fixed grid")
    registration.add_argument(
        "--summary",
        type=Path,
        help="JSON: modalities, similarity before/after, folding, stage seconds, pre-alignment",
    )
    add_register_options(registration)
    registration.set_defaults(handler=_register)

    models = commands.add_parser(
        "models",
        help="list the bundled models (name, modalities, grid, intended use, card)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Describe models: every bundled one, or those named (a bundled model's name "
        "or a .cocyclereg file). The modality names are what --moving-modality and "
        "--fixed-modality take.\n\n  cocyclereg models\n  cocyclereg models head-ct-mri",
    )
    models.add_argument(
        "models", nargs="*", metavar="MODEL", help="bundled model name or model file"
    )
    models.set_defaults(handler=_models)

    evaluation = commands.add_parser(
        "evaluate",
        help="Dice, HD95, folding and TRE of a transform",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Warp MOVING_LABELS onto the grid of FIXED_LABELS through TRANSFORM (any\n"
        "transform SimpleITK reads, or a displacement-field image; fixed -> moving points, as\n"
        "`cocyclereg register --transform` writes) and report per-label and mean Dice, HD95 in\n"
        "mm, the voxels with J <= 0, and with --ground-truth the target registration error in mm\n"
        "over the fixed foreground.\n\n"
        "  cocyclereg evaluate --fixed-labels t2_labels.nii.gz \\\n"
        "      --moving-labels t1_labels.nii.gz --transform t1_to_t2.h5 --json scores.json",
    )
    evaluation.add_argument("--fixed-labels", required=True, type=Path)
    evaluation.add_argument("--moving-labels", required=True, type=Path)
    evaluation.add_argument("--transform", required=True, type=Path, help="fixed -> moving points")
    evaluation.add_argument("--ground-truth", type=Path, help="the true transform, for TRE")
    evaluation.add_argument("--json", type=Path, help="write the results as JSON")
    evaluation.set_defaults(handler=_evaluate)

    training = commands.add_parser(
        "train",
        help="train a model with the collaborative cycle (or an ablation/baseline)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train R, the translation generators and discriminators on paired cases.\n\n"
        "Settings come from a preset (paper: the published setting; cpu-small: trains on a\n"
        "CPU in hours), then the YAML file given with --config, then SECTION.FIELD=VALUE\n"
        "overrides, e.g.\n\n"
        "  cocyclereg train --config CoCycleRegTrain/configs/brain-t1t2-cpu.yaml \\\n"
        "      train.steps=2000 data.size=[64,80,64]\n\n"
        "(from the repository root, after\n"
        "`python tools/make_training_set.py --output runs/data`)\n\n"
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
    training.set_defaults(handler=_train)

    export = commands.add_parser(
        "export",
        help="write the inference model file of a training run",
        description="Export the best validated (else the last) registration network of a run "
        "folder, with everything inference needs, as a safe model file.",
    )
    export.add_argument("--run", required=True, type=Path, help="the run folder (train.output)")
    export.add_argument("--output", required=True, type=Path, help="model file to write")
    export.add_argument("--name", default="", help="model name shown in model pickers")
    export.add_argument(
        "--intended-use", default="", help="one sentence: what the model is for (shown to users)"
    )
    export.add_argument(
        "--refine-steps",
        type=_whole_number,
        default=0,
        metavar="N",
        help="instance-optimisation steps recommended at inference (`register` uses them unless "
        "told otherwise; default 0: none)",
    )
    export.add_argument(
        "--refine-smoothness",
        type=_non_negative_number,
        default=Refinement.smoothness,
        help=f"weight of their diffusion regulariser (default {Refinement.smoothness:g})",
    )
    export.add_argument(
        "--refine-learning-rate",
        type=_positive_number,
        default=Refinement.learning_rate,
        help=f"their Adam learning rate, voxels per step (default {Refinement.learning_rate:g})",
    )
    export.add_argument(
        "--refine-from",
        choices=["network", "pre-alignment"],
        default="network",
        help="where they start by default: the network's fields, or the pre-aligned images "
        "(the refinement alone; `register --network` overrides it); default: network",
    )
    export.add_argument(
        "--mirror-average",
        action="store_true",
        help="recommend averaging the network's fields with those of the left-right mirrored "
        "pair (LPS model grids only; `register --no-mirror-average` overrides it)",
    )
    export.add_argument(
        "--fine-steps",
        type=_whole_number,
        default=0,
        metavar="N",
        help="steps of the finer refinement level recommended at inference (default 0: none)",
    )
    export.add_argument(
        "--fine-spacing",
        type=_positive_number,
        default=1.5,
        metavar="MM",
        help="voxel size of that finer level in mm (default 1.5)",
    )
    export.add_argument(
        "--fine-smoothness",
        type=_non_negative_number,
        default=Refinement.fine_smoothness,
        help=f"weight of its diffusion regulariser (default {Refinement.fine_smoothness:g})",
    )
    export.set_defaults(handler=_export)
    add_batch_command(commands)
    add_review_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except CoCycleRegError as error:
        print(f"cocyclereg {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback (outputs are written atomically)
        print(f"cocyclereg {args.command}: interrupted", file=sys.stderr)
        return 130


# Commands that leave no background writer behind (training's TensorBoard writer has threads):
# for these the process may end without Python's teardown.
_FAST_EXIT_COMMANDS = {
    "register",
    "demo",
    "evaluate",
    "resample",
    "jacobian",
    "export",
    "models",
    "batch",
}


def run() -> None:
    """The ``cocyclereg`` program: :func:`main`, then the exit.

    After a command of ``_FAST_EXIT_COMMANDS`` has written and closed all its outputs, the
    process ends with ``os._exit``: unloading torch and its thread pools at interpreter
    shutdown takes 0.5-1.4 s here, longer than a registration's network pass.
    """
    code = main()
    if sys.argv[1:2] and sys.argv[1] in _FAST_EXIT_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
