"""``cocyclereg demo``: register the bundled real pair with the bundled model and show the result.

The pair (``cocyclereg/resources/demo``, see its README) is the T2 scan of TCGA-DU-7294 as the
fixed image and the T1 scan of the same head, deformed by a known random warp, as the moving
image, on a 2 mm grid, with tumour and tissue labels on both sides. The demo runs the same
:func:`cocyclereg.inference.register.register` as ``cocyclereg register`` (affine pre-alignment,
then one network pass), writes the same outputs the same way (all together or none), scores the
labels with :func:`cocyclereg.evaluation.evaluate.evaluate` before (identity) and after
registration, and draws :func:`cocyclereg.evaluation.figure.registration_figure`. It never trains.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from cocyclereg.errors import InputError
from cocyclereg.evaluation.evaluate import Evaluation, evaluate
from cocyclereg.geometry.displacement import displacement_transform
from cocyclereg.inference.outputs import registration_summary, write_registration_outputs
from cocyclereg.inference.register import RegistrationResult, register
from cocyclereg.io import read_image, read_labels
from cocyclereg.model_file import read_model_info
from cocyclereg.resources import demo_dir, list_bundled_models, resolve_model

FIXED, MOVING = "fixed_t2.nii.gz", "moving_t1.nii.gz"
LABELMAPS = ("tumor", "tissue")
FIXED_MODALITY, MOVING_MODALITY = "t2", "t1"

# name in the output folder -> what it is
OUTPUTS = {
    "transform.h5": "forward transform: fixed-space points -> moving-space points (ITK, LPS mm)",
    "inverse-transform.h5": "inverse transform: moving-space points -> fixed-space points",
    "warped_t1.nii.gz": "moving T1 resampled onto the fixed T2 grid",
    "warped_tumor.nii.gz": "moving tumour labels on the fixed grid",
    "warped_tissue.nii.gz": "moving tissue labels on the fixed grid",
    "jacobian.nii.gz": "Jacobian determinant det(I + grad u) on the fixed grid",
    "summary.json": "inputs, model, seconds, folding, Dice and HD95 before and after",
    "demo.png": "the figure: slices, checkerboards, label contours, Jacobian map",
}


@dataclass
class DemoResult:
    """What the demo did: the registration, the scores per labelmap, and the files written."""

    output: Path
    model: Path
    registration: RegistrationResult
    before: dict[str, Evaluation]
    after: dict[str, Evaluation]
    label_names: dict[str, dict[str, str]]
    written: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        folder = demo_dir()
        document = registration_summary(
            self.registration, folder / FIXED, folder / MOVING, self.model
        )
        document["seconds"] = self.seconds
        document["labels"] = {
            name: {
                "fixed": str(folder / f"fixed_{name}.nii.gz"),
                "moving": str(folder / f"moving_{name}.nii.gz"),
                "names": self.label_names.get(name, {}),
                "before": self.before[name].as_dict(),
                "after": self.after[name].as_dict(),
            }
            for name in self.before
        }
        return document


def _check_model(model: Path) -> None:
    info = read_model_info(model)
    if not {FIXED_MODALITY, MOVING_MODALITY} <= set(info.modalities):
        raise InputError(
            f"The demo registers a T1 MRI to a T2 MRI, but {model} registers "
            f"{info.x_modality} and {info.y_modality}; give a T1/T2 model with --model."
        )


def _figure_writer(result: DemoResult, fixed, moving, fixed_labels):
    from cocyclereg.evaluation.figure import registration_figure

    names = result.label_names
    contours = {
        f"{names['tumor'].get(str(v), f'tumour {v}')}": (fixed_labels["tumor"], v) for v in (1, 2)
    }
    contours[names["tissue"].get("3", "white matter")] = (fixed_labels["tissue"], 3)
    tumour = result.after["tumor"]
    title = (
        "CoCycleReg demo: T1 (moving) registered to T2 (fixed), TCGA-DU-7294 (TCGA-LGG, CC BY "
        f"3.0). Tumour Dice {result.before['tumor'].mean_dice:.3f} before, "
        f"{tumour.mean_dice:.3f} after; J ≤ 0 in {tumour.folding.folding_voxels} voxels"
    )

    def write(path: Path) -> None:
        started = time.perf_counter()
        registration_figure(
            path,
            fixed,
            moving,
            result.registration.warped,
            result.registration.jacobian,
            contours=contours,
            centre_labels=fixed_labels["tumor"],
            title=title,
            names=("T2", "T1"),
        )
        result.seconds["figure"] = time.perf_counter() - started

    return write


def run_demo(
    output: str | Path = "cocyclereg-demo",
    model: str | Path | None = None,
    device: str = "auto",
    figure: bool = True,
) -> DemoResult:
    """Register the demo pair and write every output to ``output`` (created if missing).

    ``model`` defaults to the bundled ``brain-t1t2`` model. Existing files of the same names in
    ``output`` are replaced, all together, only once every new one is complete. The figure
    needs matplotlib (the ``plot`` extra); without it the demo stops before any work unless
    ``figure`` is False.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output must be a folder, but {output} is a file.")
    if figure and importlib.util.find_spec("matplotlib") is None:
        raise InputError(
            "the demo's figure (demo.png) is drawn with matplotlib, which is not installed: "
            "pip install 'cocyclereg[plot]', or run the demo with --no-figure."
        )
    model = resolve_model(model)
    _check_model(model)
    folder = demo_dir()
    fixed, moving = read_image(folder / FIXED), read_image(folder / MOVING)
    fixed_labels = {n: read_labels(folder / f"fixed_{n}.nii.gz") for n in LABELMAPS}
    moving_labels = [read_labels(folder / f"moving_{n}.nii.gz") for n in LABELMAPS]
    label_names = json.loads((folder / "labels.json").read_text(encoding="utf-8"))

    registration = register(
        fixed,
        moving,
        model,
        fixed_modality=FIXED_MODALITY,
        moving_modality=MOVING_MODALITY,
        device=device,
        labels=moving_labels,
    )
    started = time.perf_counter()
    transform = displacement_transform(registration.transform)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    before, after = {}, {}
    for name, moving_map in zip(LABELMAPS, moving_labels, strict=True):
        before[name] = evaluate(fixed_labels[name], moving_map, identity)
        after[name] = evaluate(fixed_labels[name], moving_map, transform)
    result = DemoResult(output, model, registration, before, after, label_names)
    result.seconds = registration.seconds  # one dict: "write" and "figure" land here too
    result.seconds["evaluate"] = time.perf_counter() - started

    output.mkdir(parents=True, exist_ok=True)
    extra = [
        (
            output / "summary.json",
            lambda path: path.write_text(json.dumps(result.summary(), indent=2) + "\n"),
        )
    ]
    if figure:
        # The figure goes first among the extras so the summary records its seconds.
        extra.insert(0, (output / "demo.png", _figure_writer(result, fixed, moving, fixed_labels)))
    result.written = write_registration_outputs(
        registration,
        output / "transform.h5",
        inverse_transform=output / "inverse-transform.h5",
        warped=output / "warped_t1.nii.gz",
        jacobian=output / "jacobian.nii.gz",
        warped_labels=[output / f"warped_{n}.nii.gz" for n in LABELMAPS],
        extra=extra,
    )
    return result


def _model_name(model: Path) -> str:
    """``name (card title)`` for a bundled model, else the path."""
    for name, (path, title) in list_bundled_models().items():
        if path.resolve() == model.resolve():
            return f"{name} ({title}), bundled" if title else f"{name}, bundled"
    return str(model)


def _number(value: float, digits: int) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN: a label is missing


def report(result: DemoResult) -> str:
    """The text the command prints: the scores table, folding, seconds and the files."""
    registration = result.registration
    grid = "x".join(str(n) for n in registration.warped.GetSize())
    lines = [
        f"CoCycleReg demo: moving T1 -> fixed T2 of TCGA-DU-7294 (2 mm, {grid} voxels)",
        f"model {_model_name(result.model)} on {registration.device}",
        "",
        f"{'labels':<28s} {'Dice before':>11s} {'Dice after':>10s} "
        f"{'HD95 before':>11s} {'HD95 after':>10s}",
    ]
    for name in result.before:
        before, after = result.before[name], result.after[name]
        names = result.label_names.get(name, {})
        for label in after.dice:
            title = f"{name} {label} {names.get(str(label), '')}".strip()
            lines.append(
                f"{title:<28s} {_number(before.dice.get(label, float('nan')), 3):>11s} "
                f"{_number(after.dice[label], 3):>10s} "
                f"{_number(before.hd95.get(label, float('nan')), 2):>8s} mm "
                f"{_number(after.hd95[label], 2):>7s} mm"
            )
        lines.append(
            f"{name + ' mean':<28s} {_number(before.mean_dice, 3):>11s} "
            f"{_number(after.mean_dice, 3):>10s} {_number(before.mean_hd95, 2):>8s} mm "
            f"{_number(after.mean_hd95, 2):>7s} mm"
        )
    folding = registration.folding
    lines += [
        "",
        f"folding: J <= 0 in {folding.folding_voxels} of {folding.total_voxels} voxels "
        f"({folding.folding_percent:.4f} %); J ranges {folding.min_jacobian:.3f} .. "
        f"{folding.max_jacobian:.3f}",
        "similarity of the images (normalised mutual information on the fixed foreground, "
        f"higher is better): {registration.similarity['before']:.3f} before, "
        f"{registration.similarity['after']:.3f} after",
        "seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()),
        "",
        f"written to {result.output}:",
    ]
    width = max(len(p.name) for p in result.written)
    lines += [f"  {p.name:<{width}s}  {OUTPUTS.get(p.name, '')}" for p in result.written]
    lines.append(f"inputs: {demo_dir()} (fixed_t2, moving_t1, fixed_/moving_ tumor and tissue)")
    return "\n".join(lines)
