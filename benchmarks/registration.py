"""CoCycleReg against Elastix and ANTs (library defaults and expert-tuned) and the identity, on
the same cases, in the same run.

What it does, in order:

1. Builds (or reuses) registration cases with a known deformation from ``../shared/data`` (see
   ``benchmarks/cases.py``): ``--cases t1t2`` deforms the T1 or the T2 of one co-registered
   subject (default the held-out TCGA-DU-7294, 240x240x155 at 1 mm; ``--subjects A,B,C`` for
   several, e.g. the development subjects TCGA-FG-6692, stroke (124x160x140) and
   BraTS-GLI-00001-000, the last two without tumour labels) with a seeded random elastic
   field (``cocyclereg.learning.augment``, 5-10 mm at most, no folding) and registers it back onto
   the other modality, both directions (``--directions "t2->t1"`` for one); ``--cases ct-mri`` does
   the same with the 2 mm MNI CT and SPM12 T1/T2 templates.
2. Registers every case with every method, each end to end in its own process (files in ->
   transform, warped image and warped labels written), on ``--threads`` threads
   (``OMP_NUM_THREADS``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` and ITK's global default):

   * ``cocyclereg``: the ``cocyclereg register`` command line (Python start-up, imports and
     loading the compiled kernels of ``cocyclereg.geometry.kernels``, model load, rigid
     pre-alignment, network, the model's recommended refinement, outputs), with
     ``--summary`` for its stage times; its peak memory is the process's maximum resident set
     size (``wait4``).
   * ``cocyclereg-coarse``: the same with ``--fine-steps 0``: the refinement on the model's
     3 mm grid alone, without the finer level (the default until 0.3.0).
   * ``cocyclereg-network``: the same with ``--network --refine-steps 0 --fine-steps 0``: the
     network's fields alone.
   * ``cocyclereg-network-refined``: the same with ``--network``: the model's refinement
     started from the network's fields.
   * ``cocyclereg-refine-only`` (not run by default): the same with ``--no-network``: the
     refinement alone, from the pre-aligned images.
   * ``elastix`` (library defaults): itk-elastix, elastix's default ``affine`` then ``bspline``
     parameter maps
     (3 resolutions each, AdvancedMattesMutualInformation, adaptive stochastic gradient
     descent; the B-spline map's final grid spacing ``--elastix-grid`` mm and its default
     bending-energy penalty), then transformix for the deformation field and the labels.
   * ``ants`` (library defaults): antspyx ``ants.registration(type_of_transform="SyN",
     aff_metric="mattes", syn_metric="mattes")`` (affine then SyN, default iterations: none at
     full resolution), the forward transforms composed into one displacement field on the
     fixed grid.
   * ``elastix-tuned`` and ``ants-tuned``: the peers as an experienced user sets them up for
     multi-modal brain MRI (Elastix: affine, then a 4-level B-spline with 1000 iterations per
     level and a bending-energy penalty; ANTs: SyN with Mattes MI down to full resolution, an
     affine stage first optional). Every setting, the reason for it and the
     development-subject measurements that chose it are in ``benchmarks/peers.py``;
     ``--peer-setting METHOD.FIELD=VALUE`` overrides one for a run (tabled as
     ``METHOD[FIELD=VALUE]``).
   * ``identity``: no registration (the starting misalignment).
   * ``truth`` (not run by default): the ground-truth field itself; its Dice is the ceiling set
     by nearest-neighbour resampling of the labels, a check of the case construction.

   Two times per method, both in the table and the results JSON: "load→written s", from
   reading the inputs to the last output written (the issue's "end to end"; CoCycleReg's is
   the sum of its summary's stages, the peers' excludes their Python library import, which
   the elastix and ANTs command-line programs do not pay), and "process s", the whole process
   (interpreter start-up, ``import torch``/``import itk``, everything).

   Speed under load: ``--background-load N`` starts N busy processes (a pure-Python spin loop
   each) before every timed method's process and stops them after it, the same fixed load for
   every method (evaluation runs unloaded). Those results are stored and tabled as
   ``METHOD +loadN``; with ``--reuse-results`` on the folder of an unloaded run, both stand in
   one table and "Speed under load" gives each method's loaded ÷ unloaded seconds on the same
   cases, for the whole pair and per stage (e.g. run the benchmark, then the same command with
   ``--background-load 2 --reuse-results``).
3. Evaluates every method through one code path: its transform (a displacement field on the
   fixed grid, fixed points -> moving points) warps the moving tissue and tumour labels
   (nearest neighbour) -> Dice per label and mean, HD95 (mm), percent of fixed-grid voxels with
   ``det(I + grad u) <= 0`` (``cocyclereg.geometry.jacobian``), and target registration error: the
   distance in mm between the method's and the ground truth's mapped point at every fixed brain
   voxel (tissue label > 0): mean, median, 95th percentile.
   With ``--repeats N`` every method registers each case N times (each a new process) and the
   run with the median load-to-written time stands for it (its seconds, stages and memory);
   accuracy comes from the last run (the same outputs up to ITK's threaded MI, see
   ``cocyclereg.inference.register.affine_prealignment``). A three-second process on this machine
   varies by about 10 % between runs; a minute-long one by about 3 %.
4. Prints Markdown tables (all cases, per direction, per subject) with each method's seconds
   per pair and the reference's time divided by it (``elastix-tuned`` when it ran, else
   ``elastix``; and ``ants-tuned``'s for whole processes); for CoCycleReg, "deformable mm": the
   mean length of the deformable part of its transform over the fixed foreground, without the
   pre-alignment (its summary's ``deformable_displacement_mm``; on pairs made with
   ``--max-displacement 0`` it is the motion the network or the refinement invented, and TRE
   adds the pre-alignment's error to it); every timed method's stage times
   (slowest first) and peak memory; the network pass against its ideal time: the forward
   pass's FLOP count on the model grid the cases used (``torch.utils.flop_counter``) divided
   by ``--peak-gflops`` (157 GFLOP/s: two AVX2 FMA cores at 2.45 GHz, 32 fp32 FLOP per cycle
   each).

Outputs in ``--output``: ``cases/`` (cached inputs and ground truths),
``<case set>/<case>/<method>/`` (transform.h5 or .nii.gz, warped image and labels, metrics.json,
process log, and record.json: the method's settings, threads, load, timing and metrics),
``results.json`` and ``results.md``.

Reusing results: cases are always reused from ``cases/``. With ``--reuse-results`` a method
whose record.json has the same settings (model and register options for CoCycleReg; the
parameters for the peers), threads, load and repeats is not run again, and every other method
stored for the same cases joins the tables: run the slow peers once, then
``--methods cocyclereg --reuse-results`` on the same ``--output`` runs CoCycleReg alone and tables
it against them (a changed model or ``--register-options`` reruns it).

Develop on a downsampled copy (``--spacing 2`` makes the T1/T2 pair 120x120x78) and run the full
240x240x155 benchmark once: Elastix and ANTs take minutes per pair on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = (
    REPOSITORY
    / "CoCycleRegTrain"
    / "src"
    / "cocyclereg"
    / "resources"
    / "models"
    / "brain-t1t2.cocyclereg"
)
DEFAULT_DATA = Path(os.environ.get("COCYCLEREG_DATA", REPOSITORY.parent / "shared" / "data"))
OURS = (
    "cocyclereg",
    "cocyclereg-coarse",
    "cocyclereg-network",
    "cocyclereg-network-refined",
    "cocyclereg-refine-only",
)
PEERS = ("elastix", "ants", "elastix-tuned", "ants-tuned")
METHODS = (*OURS, *PEERS, "identity", "truth")
TIMED = (*OURS, *PEERS)
DESCRIPTIONS = {
    "cocyclereg": "`cocyclereg register` with the model's recommended settings",
    "cocyclereg-network": "the network's fields alone "
    "(`--network --refine-steps 0 --fine-steps 0`)",
    "cocyclereg-coarse": "the refinement on the model's 3 mm grid alone, no finer level "
    "(`--fine-steps 0`; the default until 0.3.0)",
    "cocyclereg-network-refined": "the refinement started from the network (`--network`)",
    "cocyclereg-refine-only": "the refinement from the pre-aligned images (`--no-network`)",
    "elastix": "Elastix at its library defaults (default affine + B-spline maps, Mattes MI)",
    "ants": "ANTs at its library defaults (antspyx SyN, Mattes MI, default iterations)",
    "elastix-tuned": "Elastix as an expert sets it up (affine, then B-spline with bending "
    "penalty; benchmarks/peers.py)",
    "ants-tuned": "ANTs as an expert sets it up (SyN with Mattes MI down to full "
    "resolution; benchmarks/peers.py)",
    "identity": "no registration: the starting misalignment",
    "truth": "the ground-truth field (label resampling's ceiling)",
}
# The reference for the speed ratios: the first of these in the run.
SPEED_REFERENCES = ("elastix-tuned", "elastix")
SPEED_TARGET = 20.0  # load to written files, times faster than Elastix
PROCESS_SPEED_TARGET = 10.0  # whole process (start-up and imports included), times faster
NETWORK_TARGET = 2.0  # measured network seconds / ideal seconds
MEMORY_TARGET_GB = 4.0

EPILOG = """\
examples:
  # quick development run on a 2 mm copy of the held-out pair, one case per direction
  python benchmarks/registration.py --model /tmp/model.cocyclereg --spacing 2

  # the benchmark: full 240x240x155 TCGA-DU-7294, T1->T2 and T2->T1, all peers
  python benchmarks/registration.py --model MODEL --deformations 1 --output runs/bench-t1t2

  # CT<->MRI on the MNI templates with a CT/MRI model
  python benchmarks/registration.py --model ct.cocyclereg --cases ct-mri

  # the development subjects against the peers (defaults and tuned), one thread; then
  # CoCycleReg alone against the stored peer results, then the same beside two busy processes
  python benchmarks/registration.py --subjects TCGA-FG-6692,stroke,BraTS-GLI-00001-000 \\
      --methods identity,elastix,ants,elastix-tuned,ants-tuned,cocyclereg --threads 1 \\
      --output runs/dev-peers
  python benchmarks/registration.py --subjects TCGA-FG-6692,stroke,BraTS-GLI-00001-000 \\
      --methods cocyclereg --threads 1 --output runs/dev-peers --reuse-results
  python benchmarks/registration.py --subjects TCGA-FG-6692,stroke,BraTS-GLI-00001-000 \\
      --methods cocyclereg --threads 1 --output runs/dev-peers --reuse-results \\
      --background-load 2

  # choosing a tuned setting (development subjects only): one variant, one direction
  python benchmarks/registration.py --subject TCGA-FG-6692 --directions "t2->t1" \\
      --methods elastix-tuned --peer-setting elastix-tuned.bending_weight=10 --threads 1

Targets checked on the full T1/T2 pair: cocyclereg end to end (load to written files) >= 20x
faster than the reference (elastix-tuned, else elastix), its whole process >= 10x faster than
the reference's and ants-tuned's, the network pass within 2x
of FLOPs / peak FLOP rate, peak memory < 4 GB.
"""


# ---------------------------------------------------------------------------------------------
# Workers: one method on one case, in a fresh process (``registration.py _worker ...``).
# ---------------------------------------------------------------------------------------------


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="registration.py _worker")
    parser.add_argument("method", choices=PEERS)
    parser.add_argument("case", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default="{}", help="the method's settings, JSON")
    args = parser.parse_args(argv)
    case = json.loads(args.case.read_text())
    settings = json.loads(args.settings)
    started = time.perf_counter()
    if args.method.startswith("elastix"):
        seconds = _run_elastix(case, args.output, args.threads, args.method, settings)
    else:
        seconds = _run_ants(case, args.output, args.method, settings)
    seconds["total"] = time.perf_counter() - started
    (args.output / "timing.json").write_text(json.dumps(seconds, indent=2) + "\n")
    return 0


def _label_inputs(case: dict, output: Path) -> list[tuple[str, Path]]:
    """(moving labelmap, warped output) for the tissue and, if any, tumour labels."""
    pairs = [(case["moving_tissue"], output / "warped_tissue.nii.gz")]
    if case.get("moving_tumour"):
        pairs.append((case["moving_tumour"], output / "warped_tumour.nii.gz"))
    return pairs


def _elastix_parameters(itk, method: str, settings: dict):
    """elastix's parameter object: its library defaults (``elastix``: default ``affine`` and
    ``bspline`` maps, 3 resolutions, final grid ``settings["grid_mm"]``) or the tuned maps."""
    parameters = itk.ParameterObject.New()
    if method == "elastix-tuned":
        from peers import ElastixTuned, elastix_tuned_maps

        for parameter_map in elastix_tuned_maps(ElastixTuned(**settings)):
            parameters.AddParameterMap(parameter_map)
        return parameters
    affine = parameters.GetDefaultParameterMap("affine", 3)
    bspline = parameters.GetDefaultParameterMap("bspline", 3, settings["grid_mm"])
    for parameter_map in (affine, bspline):
        parameter_map["NumberOfResolutions"] = ["3"]
        parameter_map["RandomSeed"] = ["121212"]
        parameter_map["WriteResultImage"] = ["false"]
        parameters.AddParameterMap(parameter_map)
    parameters.SetParameter(1, "WriteResultImage", "true")
    return parameters


def _run_elastix(case: dict, output: Path, threads: int, method: str, settings: dict) -> dict:
    seconds = {}
    started = time.perf_counter()
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    itk.MultiThreaderBase.SetGlobalMaximumNumberOfThreads(threads)
    seconds["import"] = time.perf_counter() - started

    os.chdir(output.resolve())  # transformix writes deformationField.nii into the working folder
    started = time.perf_counter()
    fixed = itk.imread(case["fixed"], itk.F)
    moving = itk.imread(case["moving"], itk.F)
    seconds["read"] = time.perf_counter() - started

    started = time.perf_counter()
    parameters = _elastix_parameters(itk, method, settings)
    warped, transform_parameters = itk.elastix_registration_method(
        fixed, moving, parameter_object=parameters, log_to_console=False
    )
    seconds["register"] = time.perf_counter() - started

    started = time.perf_counter()
    field = itk.transformix_deformation_field(moving, transform_parameters)
    seconds["field"] = time.perf_counter() - started

    started = time.perf_counter()
    itk.imwrite(field, str(output / "transform.nii.gz"), compression=True)
    itk.imwrite(warped, str(output / "warped.nii.gz"), compression=True)
    transform_parameters.SetParameter("FinalBSplineInterpolationOrder", "0")
    transform_parameters.SetParameter("ResultImagePixelType", "unsigned char")
    for source, target in _label_inputs(case, output):
        labels = itk.imread(source, itk.F)
        warped_labels = itk.transformix_filter(labels, transform_parameters)
        rounded = itk.image_from_array(
            np.rint(itk.array_view_from_image(warped_labels)).astype(np.uint8)
        )
        rounded.CopyInformation(warped_labels)
        itk.imwrite(rounded, str(target), compression=True)
    seconds["write"] = time.perf_counter() - started
    return seconds


def _run_ants(case: dict, output: Path, method: str, settings: dict) -> dict:
    seconds = {}
    started = time.perf_counter()
    import ants

    seconds["import"] = time.perf_counter() - started

    started = time.perf_counter()
    fixed = ants.image_read(case["fixed"])
    moving = ants.image_read(case["moving"])
    seconds["read"] = time.perf_counter() - started

    started = time.perf_counter()
    scratch = output / "ants"
    shutil.rmtree(scratch, ignore_errors=True)  # antspyx collects its transforms by file name
    scratch.mkdir()
    if method == "ants-tuned":
        from peers import AntsTuned, ants_tuned_arguments

        tuned = AntsTuned(**settings)
        initial = None
        if tuned.initial_stage == "affine":
            initial = ants.registration(
                fixed,
                moving,
                type_of_transform="Affine",
                aff_metric="mattes",
                outprefix=str(scratch / "affine_"),
            )["fwdtransforms"]
        elif tuned.initial_stage != "identity":
            raise SystemExit(f"ants-tuned: unknown initial_stage {tuned.initial_stage!r}")
        registration = ants.registration(
            fixed,
            moving,
            initial_transform=initial,
            outprefix=str(scratch / "syn_"),
            **ants_tuned_arguments(tuned),
        )
    else:
        registration = ants.registration(
            fixed,
            moving,
            type_of_transform="SyN",
            aff_metric="mattes",
            syn_metric="mattes",
            outprefix=str(scratch / "syn_"),
        )
    seconds["register"] = time.perf_counter() - started

    started = time.perf_counter()
    composed = ants.apply_transforms(
        fixed, moving, registration["fwdtransforms"], compose=str(scratch / "composed_")
    )
    seconds["field"] = time.perf_counter() - started

    started = time.perf_counter()
    shutil.move(composed, output / "transform.nii.gz")
    ants.image_write(registration["warpedmovout"], str(output / "warped.nii.gz"))
    for source, target in _label_inputs(case, output):
        labels = ants.apply_transforms(
            fixed,
            ants.image_read(source),
            registration["fwdtransforms"],
            interpolator="genericLabel",
        )
        ants.image_write(labels.astype("uint8"), str(target))
    seconds["write"] = time.perf_counter() - started
    return seconds


# ---------------------------------------------------------------------------------------------
# Running methods.
# ---------------------------------------------------------------------------------------------


def _environment(threads: int) -> dict:
    environment = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        environment[name] = str(threads)
    environment["ANTS_RANDOM_SEED"] = "1"
    return environment


# A tiny launcher forks the method's process. ``wait4`` in this (large) process would report a
# peak resident set size that includes this process's own memory: Linux carries the pre-exec
# high-water mark of a forked child into its ``ru_maxrss``.
_LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as stream:
    json.dump({"seconds": seconds, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
               "returncode": os.waitstatus_to_exitcode(status)}, stream)
"""


@contextlib.contextmanager
def background_load(processes: int):
    """``processes`` busy processes for the duration: each a pure-Python spin loop, the same
    fixed load beside every method (like a batch job or Slicer rendering beside it)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def _run_process(command: list[str], log: Path, threads: int, load: int = 0) -> dict:
    """Run ``command`` to completion beside ``load`` busy processes: its wall time, peak
    resident memory (GB) and exit code."""
    record = log.with_suffix(".json")
    record.unlink(missing_ok=True)
    with log.open("w") as stream, background_load(load):
        subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(record), *command],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=_environment(threads),
            check=False,
        )
    if not record.is_file():
        return {"seconds": float("nan"), "peak_rss_gb": float("nan"), "returncode": -1}
    return json.loads(record.read_text())


def _modality_name(role: str, modalities: tuple[str, str], kind: str) -> str:
    """The model's name for a case image's modality (``t1``, ``t2`` or ``ct``)."""
    lowered = {m.lower(): m for m in modalities}
    if role in lowered:
        return lowered[role]
    if kind == "ct-mri" and role != "ct":
        others = [m for m in modalities if m.lower() != "ct"]
        if len(others) == 1 and "ct" in lowered:
            return others[0]
    raise SystemExit(
        f"the model registers {modalities[0]} and {modalities[1]}; it cannot take the "
        f"{role} images of the {kind} cases"
    )


def method_settings(method: str, args, tuned: dict) -> dict:
    """What a method's result depends on besides the case (stored with it; ``--reuse-results``
    reuses a stored result only when these, the threads and the load are the same)."""
    if method in OURS:
        return {"model": str(args.model), "register_options": args.register_options}
    if method == "elastix":
        return {"grid_mm": args.elastix_grid}
    if method in tuned:
        return asdict(tuned[method])
    return {}


def run_method(method: str, case, folder: Path, args, modalities, settings: dict) -> dict:
    """Register ``case`` with ``method`` into ``folder`` beside ``args.background_load`` busy
    processes; returns timing (and the transform)."""
    folder.mkdir(parents=True, exist_ok=True)
    # Each tool writes its field in its own usual format: CoCycleReg's default .h5 (ITK HDF5,
    # uncompressed), Elastix's and ANTs' .nii.gz.
    transform = folder / ("transform.h5" if method in OURS else "transform.nii.gz")
    if method in ("identity", "truth"):
        return {"transform": case.ground_truth if method == "truth" else None}
    case_json = folder.parent / "case.json"
    case_json.write_text(json.dumps(asdict(case), indent=2) + "\n")
    if method in OURS:
        summary = folder / "summary.json"
        command = [
            sys.executable, "-m", "cocyclereg", "register",
            "--fixed", case.fixed, "--moving", case.moving, "--model", str(args.model),
            "--moving-modality", _modality_name(case.moving_role, modalities, case.kind),
            "--fixed-modality", _modality_name(case.fixed_role, modalities, case.kind),
            "--transform", str(transform), "--warped", str(folder / "warped.nii.gz"),
            "--summary", str(summary), "--device", "cpu", *args.register_options.split(),
        ]  # fmt: skip
        command += {
            "cocyclereg-coarse": ["--fine-steps", "0"],
            "cocyclereg-network": ["--network", "--refine-steps", "0", "--fine-steps", "0"],
            "cocyclereg-network-refined": ["--network"],
            "cocyclereg-refine-only": ["--no-network"],
        }.get(method, [])
        for source, target in _label_inputs(asdict(case), folder):
            command += ["--labels", source, "--warped-labels", str(target)]
    else:
        command = [
            sys.executable, str(Path(__file__).resolve()), "_worker", method, str(case_json),
            str(folder), "--threads", str(args.threads), "--settings", json.dumps(settings),
        ]  # fmt: skip
    for stale in (transform, folder / "summary.json", folder / "timing.json"):
        stale.unlink(missing_ok=True)
    run = _run_process(command, folder / "process.log", args.threads, args.background_load)
    if run["returncode"] != 0 or not transform.is_file():
        tail = (folder / "process.log").read_text()[-2000:]
        raise SystemExit(f"{method} failed on {case.name} (exit {run['returncode']}):\n{tail}")
    if method in OURS:
        summary = json.loads((folder / "summary.json").read_text())
        run["stages"] = dict(summary["seconds"])
        run["stages"]["start-up + imports"] = run["seconds"] - sum(summary["seconds"].values())
        run["model_grid"] = summary["model_grid"]
        run["deformable_mean_mm"] = summary["deformable_displacement_mm"]["mean"]
        run["pair_seconds"] = sum(summary["seconds"].values())  # load -> written
    else:
        stages = json.loads((folder / "timing.json").read_text())
        run["stages"] = stages
        run["pair_seconds"] = stages["total"] - stages["import"]
    run["transform"] = str(transform)
    return run


# ---------------------------------------------------------------------------------------------
# Evaluation: one code path for every method.
# ---------------------------------------------------------------------------------------------


def evaluate_case(case, transform_path: str | None) -> dict:
    """Dice/HD95 of tissue and tumour labels, folding and TRE of one transform on one case."""
    import SimpleITK as sitk

    from cocyclereg.evaluation.metrics import dice, hd95
    from cocyclereg.geometry.displacement import (
        displacement_array,
        displacement_field_image,
        displacement_transform,
        read_displacement_field,
        transform_to_displacement_field,
    )
    from cocyclereg.geometry.grid import Grid
    from cocyclereg.geometry.jacobian import folding_stats, jacobian_determinant_array
    from cocyclereg.geometry.resample import resample_to_grid
    from cocyclereg.io import read_labels

    fixed_tissue = read_labels(case.fixed_tissue)
    grid = Grid.from_image(fixed_tissue)
    if transform_path is None:
        field = np.zeros((*grid.shape, 3))
    else:
        image = read_displacement_field(transform_path)
        if not Grid.from_image(image).is_close(grid, 1e-3):
            image = transform_to_displacement_field(displacement_transform(image), grid)
        field = displacement_array(image)
    transform = displacement_transform(displacement_field_image(field, grid))
    spacing_dhw = tuple(reversed(grid.spacing))
    result: dict = {}
    pairs = [("tissue", fixed_tissue, case.moving_tissue)]
    if case.fixed_tumour:
        pairs.append(("tumour", read_labels(case.fixed_tumour), case.moving_tumour))
    fixed_brain = None
    for name, fixed_image, moving_path in pairs:
        fixed = sitk.GetArrayFromImage(fixed_image)
        warped = sitk.GetArrayFromImage(
            resample_to_grid(read_labels(moving_path), grid, "label", transform)
        )
        scores = dice(fixed, warped)
        distances = {k: hd95(fixed, warped, spacing_dhw, k) for k in scores}
        result[name] = {
            "dice": {str(k): v for k, v in scores.items()},
            "hd95_mm": {str(k): v for k, v in distances.items()},
            "mean_dice": float(np.mean(list(scores.values()))) if scores else float("nan"),
            "mean_hd95_mm": float(np.nanmean(list(distances.values()))) if scores else np.nan,
        }
        if name == "tissue":
            fixed_brain = fixed > 0
    result["folding"] = folding_stats(jacobian_determinant_array(field, grid)).as_dict()
    truth = displacement_array(read_displacement_field(case.ground_truth))
    error = np.linalg.norm(field - truth, axis=-1)[fixed_brain]
    result["tre_mm"] = {
        "mean": float(error.mean()),
        "median": float(np.median(error)),
        "p95": float(np.percentile(error, 95)),
        "max": float(error.max()),
    }
    return result


# ---------------------------------------------------------------------------------------------
# Network FLOPs against the CPU's peak.
# ---------------------------------------------------------------------------------------------


def network_flops(model: Path, grid_size_ijk: list[int], threads: int) -> dict:
    """FLOPs of one forward pass of R on a grid of ``grid_size_ijk`` voxels (counted on the meta
    device, no arithmetic done), and the warm in-process time of one real pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cocyclereg.model_file import load_model

    torch.set_num_threads(threads)
    network, _ = load_model(model, "cpu")
    shape = (1, 1, *reversed(grid_size_ijk))
    meta = network.to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.zeros(shape, device="meta"), torch.zeros(shape, device="meta"))
    flops = int(counter.get_total_flops())
    network, _ = load_model(model, "cpu")
    inputs = torch.rand(shape), torch.rand(shape)
    with torch.no_grad():
        network(*inputs)  # warm-up: allocator, oneDNN kernels
        started = time.perf_counter()
        network(*inputs)
        warm = time.perf_counter() - started
    return {"flops": flops, "warm_forward_seconds": warm, "grid_ijk": list(grid_size_ijk)}


# ---------------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------------


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: list[dict], methods: list[str]) -> dict:
    """Per method (a row's ``method`` label), the means over ``rows`` (one row per case and
    method); speed ratios against the first of ``SPEED_REFERENCES`` and ``ants-tuned`` present."""
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        metrics = [r["metrics"] for r in mine]
        entry = {
            "cases": len(mine),
            "tissue_dice": _mean(m["tissue"]["mean_dice"] for m in metrics),
            "tissue_hd95_mm": _mean(m["tissue"]["mean_hd95_mm"] for m in metrics),
            "tumour_dice": _mean(m.get("tumour", {}).get("mean_dice") for m in metrics),
            "tumour_hd95_mm": _mean(m.get("tumour", {}).get("mean_hd95_mm") for m in metrics),
            "folding_percent": _mean(m["folding"]["folding_percent"] for m in metrics),
            "tre_mean_mm": _mean(m["tre_mm"]["mean"] for m in metrics),
            "tre_p95_mm": _mean(m["tre_mm"]["p95"] for m in metrics),
        }
        if mine[0]["base_method"] in TIMED:
            entry["seconds"] = _mean(r["run"]["pair_seconds"] for r in mine)
            entry["process_seconds"] = _mean(r["run"]["seconds"] for r in mine)
            entry["peak_rss_gb"] = max(r["run"]["peak_rss_gb"] for r in mine)
            entry["deformable_mean_mm"] = _mean(r["run"].get("deformable_mean_mm") for r in mine)
        summary[method] = entry
    reference = next((m for m in SPEED_REFERENCES if summary.get(m, {}).get("seconds")), None)
    ants = summary.get("ants-tuned", {}).get("process_seconds")
    for entry in summary.values():
        if not entry.get("seconds"):
            continue
        if reference:
            entry["reference"] = reference
            entry["reference_ratio"] = summary[reference]["seconds"] / entry["seconds"]
            entry["reference_process_ratio"] = (
                summary[reference]["process_seconds"] / entry["process_seconds"]
            )
        if ants:
            entry["ants_tuned_process_ratio"] = ants / entry["process_seconds"]
    return summary


def _cell(value, digits: int = 3, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}{suffix}"


def markdown_table(summary: dict) -> str:
    reference = next((e["reference"] for e in summary.values() if "reference" in e), "Elastix")
    lines = [
        "| method | cases | tissue Dice | tumour Dice | tissue HD95 mm | tumour HD95 mm | % J≤0 "
        f"| TRE mean mm | TRE p95 mm | deformable mm | load→written s | {reference} ÷ "
        f"| process s | {reference} ÷ | ants-tuned ÷ | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, e in summary.items():
        lines.append(
            f"| {method} | {e['cases']} | {_cell(e['tissue_dice'])} | {_cell(e['tumour_dice'])} "
            f"| {_cell(e['tissue_hd95_mm'], 2)} | {_cell(e['tumour_hd95_mm'], 2)} "
            f"| {_cell(e['folding_percent'], 4)} | {_cell(e['tre_mean_mm'], 2)} "
            f"| {_cell(e['tre_p95_mm'], 2)} | {_cell(e.get('deformable_mean_mm'), 2)} "
            f"| {_cell(e.get('seconds'), 1)} "
            f"| {_cell(e.get('reference_ratio'), 1, '×')} "
            f"| {_cell(e.get('process_seconds'), 1)} "
            f"| {_cell(e.get('reference_process_ratio'), 1, '×')} "
            f"| {_cell(e.get('ants_tuned_process_ratio'), 1, '×')} "
            f"| {_cell(e.get('peak_rss_gb'), 2)} |"
        )
    return "\n".join(lines)


def _stage_means(runs: list[dict]) -> dict:
    """Mean seconds per stage over ``runs`` (without the worker's own total)."""
    names = dict.fromkeys(name for run in runs for name in run["stages"])
    names.pop("total", None)
    return {name: _mean(run["stages"].get(name) for run in runs) for name in names}


def stage_table(rows: list[dict], methods: list[str]) -> str:
    """Mean seconds per stage of every timed method, slowest first."""
    lines = []
    for method in methods:
        runs = [r["run"] for r in rows if r["method"] == method and r["base_method"] in TIMED]
        if not runs:
            continue
        ordered = sorted(_stage_means(runs).items(), key=lambda item: -item[1])
        total = _mean(run["seconds"] for run in runs)
        cells = [
            f"**{k} {v:.2f}**" if i == 0 else f"{k} {v:.2f}" for i, (k, v) in enumerate(ordered)
        ]
        lines.append(f"- {method} (process {total:.1f} s): " + ", ".join(cells))
    return "\n".join(lines)


def slowdown_table(rows: list[dict]) -> str:
    """Each method run beside a background load against the same method unloaded, on the cases
    both ran: seconds under load ÷ seconds without, for the whole pair and every stage."""
    lines = []
    for label in dict.fromkeys(r["method"] for r in rows if r["background_load"]):
        loaded = {r["case_key"]: r for r in rows if r["method"] == label}
        base = next(iter(loaded.values()))["base_method"]
        unloaded = {
            r["case_key"]: r
            for r in rows
            if r["method"] == base and r["case_key"] in loaded and not r["background_load"]
        }
        if not unloaded:
            continue
        pairs = [(loaded[key]["run"], unloaded[key]["run"]) for key in unloaded]
        ratio = _mean(a["pair_seconds"] / b["pair_seconds"] for a, b in pairs)
        process = _mean(a["seconds"] / b["seconds"] for a, b in pairs)
        stages_loaded = _stage_means([a for a, _ in pairs])
        stages_unloaded = _stage_means([b for _, b in pairs])
        stages = ", ".join(
            f"{name} {stages_unloaded[name]:.2f} → {value:.2f} s "
            f"({value / stages_unloaded[name]:.1f}×)"
            for name, value in sorted(stages_loaded.items(), key=lambda item: -item[1])
            if stages_unloaded.get(name)
        )
        lines.append(
            f"- {label} against {base} ({len(pairs)} cases): load→written "
            f"{_mean(b['pair_seconds'] for _, b in pairs):.1f} → "
            f"{_mean(a['pair_seconds'] for a, _ in pairs):.1f} s (**{ratio:.1f}×**), process "
            f"{process:.1f}×; stages: {stages}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/registration.py",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None,
        help="CoCycleReg model file (default: the bundled brain-t1t2 model, if installed)",
    )
    parser.add_argument(
        "--cases",
        choices=["t1t2", "ct-mri"],
        default="t1t2",
        help="t1t2: one brain-t1t2 subject, T1->T2 and T2->T1; ct-mri: MNI CT vs SPM12 T1/T2",
    )
    parser.add_argument(
        "--subject", default="TCGA-DU-7294", help="brain-t1t2 subject for --cases t1t2"
    )
    parser.add_argument(
        "--subjects",
        default=None,
        help="comma-separated brain-t1t2 subjects for --cases t1t2, tables per subject and "
        "over all (replaces --subject), e.g. TCGA-FG-6692,stroke,BraTS-GLI-00001-000",
    )
    parser.add_argument(
        "--deformations", type=int, default=1, help="random deformations per direction (seeded)"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the deformations")
    parser.add_argument(
        "--appearance",
        choices=("as-is", "new-scanner"),
        default="as-is",
        help="as-is: the images as acquired; new-scanner: each image of every case gets an "
        "independent coil bias (up to +-35%%), gamma 0.7-1.4, noise (background too) and a new "
        "intensity range, as another scanner would show it (benchmarks/cases.py)",
    )
    parser.add_argument(
        "--directions",
        default="",
        help='register only these directions, comma-separated, e.g. "t2->t1" (default: all)',
    )
    parser.add_argument(
        "--methods",
        default="cocyclereg,cocyclereg-network,cocyclereg-network-refined,elastix,ants,"
        "elastix-tuned,ants-tuned,identity",
        help=f"comma-separated, among {', '.join(METHODS)}",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("runs/benchmark-registration"), help="output folder"
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for every method")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per method and case; the median run's times are reported (default 1)",
    )
    parser.add_argument(
        "--register-options",
        default="",
        help='extra options for `cocyclereg register`, e.g. "--no-affine" or '
        '"--prealignment affine"',
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument(
        "--spacing",
        type=float,
        default=None,
        help="resample the source scans to this isotropic spacing in mm first (development "
        "runs; default: native grid, 240x240x155 for the T1/T2 subjects)",
    )
    parser.add_argument(
        "--max-displacement", type=float, default=10.0, help="elastic field bound, mm"
    )
    parser.add_argument(
        "--control-spacing", type=float, default=24.0, help="elastic control grid spacing, mm"
    )
    parser.add_argument(
        "--elastix-grid",
        type=float,
        default=10.0,
        help="final B-spline grid spacing of the library-default elastix, mm",
    )
    parser.add_argument(
        "--peer-setting",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="override one tuned peer setting of benchmarks/peers.py for this run, e.g. "
        "elastix-tuned.bending_weight=10 or ants-tuned.reg_iterations=100,70,50,0 (repeatable)",
    )
    parser.add_argument(
        "--background-load",
        type=int,
        default=0,
        metavar="N",
        help="run N busy processes beside every timed method's run (speed under load); its "
        "results are stored and tabled as 'METHOD +loadN', beside the unloaded ones when "
        "--reuse-results finds them, with the slowdown of each",
    )
    parser.add_argument(
        "--reuse-results",
        action="store_true",
        help="keep the results stored in --output: a method whose stored result has the same "
        "settings, threads and load is not run again, and every other stored method joins "
        "the tables (e.g. add --methods cocyclereg to a run of the peers)",
    )
    parser.add_argument(
        "--peak-gflops",
        type=float,
        default=157.0,
        help="the CPU's fp32 peak over --threads cores, GFLOP/s (2 AVX2 cores at 2.45 GHz)",
    )
    return parser


def _median_run(runs: list[dict]) -> dict:
    """The run with the median load-to-written seconds (the lower middle for an even count),
    without its transform path; with several runs, every run's seconds under
    ``repeat_seconds``."""
    ordered = sorted(runs, key=lambda run: run["pair_seconds"]) if len(runs) > 1 else runs
    median = {k: v for k, v in ordered[(len(runs) - 1) // 2].items() if k != "transform"}
    if len(runs) > 1:
        median["repeat_seconds"] = [run["pair_seconds"] for run in runs]
    return median


def _stored_rows(folder: Path, row: dict) -> list[dict]:
    """The results stored in ``folder`` (one case) by earlier runs, as table rows."""
    rows = []
    for record_path in sorted(folder.glob("*/record.json")):
        record = json.loads(record_path.read_text())
        rows.append({**row, **record})
    return rows


def _label(method: str, load: int, overrides: list[str]) -> str:
    """A method's name in tables and folders: ``elastix-tuned``, ``elastix-tuned
    [bending_weight=10]`` (with --peer-setting), ``cocyclereg +load2`` (beside a load)."""
    changed = [o.split(".", 1)[1] for o in overrides if o.startswith(f"{method}.")]
    label = f"{method}[{','.join(changed)}]" if changed else method
    return f"{label} +load{load}" if load else label


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return _worker(argv[1:])
    args = build_parser().parse_args(argv)
    args.output = args.output.resolve()  # workers run in their case folders
    args.data = args.data.resolve()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose among {', '.join(METHODS)}")
    if args.background_load < 0:
        raise SystemExit("--background-load takes a number of processes, 0 or more")
    subjects = [s.strip() for s in (args.subjects or args.subject).split(",") if s.strip()]
    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    from peers import with_overrides

    tuned = with_overrides(args.peer_setting)
    modalities = None
    if set(OURS) & set(methods):
        if args.model is None:
            raise SystemExit(f"no --model given and no bundled model at {DEFAULT_MODEL}")
        from cocyclereg.model_file import read_model_info

        modalities = read_model_info(args.model).modalities
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import SimpleITK as sitk
    import torch

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    torch.set_num_threads(args.threads)
    from cases import build_cases

    args.output.mkdir(parents=True, exist_ok=True)
    cases = []
    for subject in subjects if args.cases == "t1t2" else subjects[:1]:
        cases += build_cases(
            args.cases,
            args.data,
            args.output / "cases",
            subject=subject,
            deformations=args.deformations,
            seed=args.seed,
            spacing_mm=args.spacing,
            control_spacing_mm=args.control_spacing,
            max_displacement_mm=args.max_displacement,
            appearance=args.appearance,
        )
    if directions:
        cases = [case for case in cases if case.direction in directions]
        if not cases:
            raise SystemExit(f"no case has a direction among {directions}")
    rows = []
    for case in cases:
        case_folder = args.output / case.case_set / case.name
        case_row = {
            "case": case.name,
            "subject": case.subject,
            "case_key": f"{case.case_set}/{case.name}",
            "direction": case.direction,
        }
        stored = _stored_rows(case_folder, case_row) if args.reuse_results else []
        for row in stored:
            if row["key"]["threads"] != args.threads:
                print(f"note: the stored {row['method']} ran on {row['key']['threads']} threads")
        for method in methods:
            load = args.background_load if method in TIMED else 0
            label = _label(method, load, args.peer_setting)
            # Only characters that no tool's command line reads (ANTs splits on "," and "[").
            folder = case_folder / re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_")
            key = {
                "settings": method_settings(method, args, tuned),
                "threads": args.threads,
                "background_load": load,
                "repeats": max(1, args.repeats) if method in TIMED else 1,
            }
            key = json.loads(json.dumps(key))  # as stored: tuples become lists
            reusable = [r for r in stored if r["method"] == label and r["key"] == key]
            if reusable:
                print(f"{case_row['case_key']:>40s} {label:>20s}: stored result reused")
                continue
            stored = [r for r in stored if r["method"] != label]
            runs = [
                run_method(method, case, folder, args, modalities, key["settings"])
                for _ in range(key["repeats"])
            ]
            run = _median_run(runs)
            transform = runs[-1]["transform"]  # the files on disk are the last run's
            metrics = evaluate_case(case, transform)
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            record = {
                "method": label,
                "base_method": method,
                "background_load": load,
                "key": key,
                "run": run,
                "metrics": metrics,
            }
            (folder / "record.json").write_text(json.dumps(record, indent=2, default=float))
            rows.append({**case_row, **record})
            seconds = f", {run['pair_seconds']:.1f} s" if "pair_seconds" in run else ""
            if "repeat_seconds" in run:
                seconds += f" (median of {', '.join(f'{t:.1f}' for t in run['repeat_seconds'])})"
            print(
                f"{case_row['case_key']:>40s} {label:>20s}: tissue Dice "
                f"{metrics['tissue']['mean_dice']:.3f}, TRE {metrics['tre_mm']['mean']:.2f} mm, "
                f"J<=0 {metrics['folding']['folding_percent']:.4f} %{seconds}",
                flush=True,
            )
        rows += stored
    # Table order: the requested methods as asked, then the stored ones in the METHODS order.
    order = {m: i for i, m in enumerate((*methods, *METHODS))}
    bases = {r["method"]: r["base_method"] for r in rows}
    labels = sorted(bases, key=lambda label: (order[bases[label]], label))
    shapes = ", ".join(
        dict.fromkeys(
            f"{c.subject} {'x'.join(map(str, c.size))} at {c.spacing[0]:g} mm" for c in cases
        )
    )
    report = [
        f"## Registration benchmark: {args.cases}, {len(cases)} cases ({shapes}), "
        f"{args.threads} threads"
        + (f", beside {args.background_load} busy processes" if args.background_load else "")
        + (
            ", images as a new scanner shows them (bias, gamma, noise, range; cases.py)"
            if args.appearance != "as-is"
            else ""
        ),
        "",
        f"Model: {args.model}" if set(OURS) & set(methods) else "",
        "",
        "Methods: "
        + "; ".join(
            f"{m}: {DESCRIPTIONS[m]}" for m in dict.fromkeys(bases[label] for label in labels)
        )
        + ". Tuned peer settings: "
        + "; ".join(
            f"{m} {json.dumps(asdict(v))}"
            for m, v in tuned.items()
            if m in dict.fromkeys(r["base_method"] for r in rows)
        ),
        "",
        "### All cases" + (f" ({len(subjects)} subjects)" if len(subjects) > 1 else ""),
        "",
    ]
    summary = summarise(rows, labels)
    report += [markdown_table(summary), ""]
    per_direction = {}
    for direction in sorted({case.direction for case in cases}):
        per_direction[direction] = summarise(
            [r for r in rows if r["direction"] == direction], labels
        )
        report += [f"### {direction}", "", markdown_table(per_direction[direction]), ""]
    per_subject = {}
    if len({case.subject for case in cases}) > 1:
        for subject in dict.fromkeys(case.subject for case in cases):
            per_subject[subject] = summarise([r for r in rows if r["subject"] == subject], labels)
            report += [f"### {subject}", "", markdown_table(per_subject[subject]), ""]
    report += [
        "cases: the cases each method's means are over (a method stored for fewer cases than "
        "another is not compared on the same ones). "
        "Tumour Dice: mean over the cases with tumour labels (– where none has them). "
        "load→written s: from reading the inputs to the last written output (CoCycleReg: the sum "
        "of its stages; Elastix and ANTs: their Python library import excluded). process s: the "
        "whole process, interpreter start-up and imports included. REFERENCE ÷: the reference "
        "method's time divided by the method's, for each of the two; ants-tuned ÷: the same for "
        "whole processes against ants-tuned.",
        "",
        "### Stage seconds (mean per pair, slowest first)",
        "",
        stage_table(rows, labels),
        "",
    ]
    slowdowns = slowdown_table(rows)
    if slowdowns:
        report += ["### Speed under load (same method, same cases)", "", slowdowns, ""]
    network = None
    ours = [m for m in OURS if m in methods]
    # Runs that ran the network (the summary times the network stage only then), unloaded.
    runs = [
        r["run"]
        for r in rows
        if r["base_method"] in ours and "network" in r["run"]["stages"] and not r["background_load"]
    ]
    runs = runs or [
        r["run"] for r in rows if r["base_method"] in ours and "network" in r["run"]["stages"]
    ]
    if runs:
        grid = runs[0]["model_grid"]["size"]
        network = network_flops(args.model, grid, args.threads)
        measured = _mean(run["stages"]["network"] for run in runs)
        ideal = network["flops"] / (args.peak_gflops * 1e9)
        network.update(
            measured_seconds=measured,
            ideal_seconds=ideal,
            ratio=measured / ideal,
            warm_ratio=network["warm_forward_seconds"] / ideal,
            peak_gflops=args.peak_gflops,
        )
        peak = max(run["peak_rss_gb"] for run in runs)
        report += [
            "### Network pass against the CPU's peak",
            "",
            f"Model grid {'x'.join(map(str, grid))} voxels: {network['flops'] / 1e9:.1f} GFLOP "
            f"per forward pass; ideal {ideal:.3f} s at {args.peak_gflops:g} GFLOP/s. Measured "
            f"network stage {measured:.3f} s = **{network['ratio']:.1f}× ideal** (target ≤ "
            f"{NETWORK_TARGET:g}×); warm in-process forward "
            f"{network['warm_forward_seconds']:.3f} s = {network['warm_ratio']:.1f}× ideal.",
            "",
            "### Targets",
            "",
        ]
        full = any(tuple(case.size) == (240, 240, 155) for case in cases)
        checks = []
        for method in (m for m in OURS if m in summary):
            entry = summary[method]
            reference = entry.get("reference", "Elastix")
            speed = entry.get("reference_ratio")
            process_speed = entry.get("reference_process_ratio")
            ants_speed = entry.get("ants_tuned_process_ratio")
            checks += [
                (
                    f"{method}: end to end (load to written files) ≥ {SPEED_TARGET:g}× faster "
                    f"than {reference}",
                    speed,
                    speed is not None and speed >= SPEED_TARGET,
                    f"{_cell(speed, 1, '×')}",
                ),
                (
                    f"{method}: whole process ≥ {PROCESS_SPEED_TARGET:g}× faster than "
                    f"{reference}'s",
                    process_speed,
                    process_speed is not None and process_speed >= PROCESS_SPEED_TARGET,
                    f"{_cell(process_speed, 1, '×')}",
                ),
            ]
            if ants_speed is not None:
                checks.append(
                    (
                        f"{method}: whole process ≥ {PROCESS_SPEED_TARGET:g}× faster than "
                        "ants-tuned's",
                        ants_speed,
                        ants_speed >= PROCESS_SPEED_TARGET,
                        f"{_cell(ants_speed, 1, '×')}",
                    )
                )
        checks += [
            (
                f"network ≤ {NETWORK_TARGET:g}× FLOPs / peak",
                network["ratio"],
                network["ratio"] <= NETWORK_TARGET,
                f"{network['ratio']:.1f}×",
            ),
            (
                f"peak memory < {MEMORY_TARGET_GB:g} GB",
                peak,
                peak < MEMORY_TARGET_GB,
                f"{peak:.2f} GB",
            ),
        ]
        for name, value, passed, text in checks:
            verdict = "n/a" if value is None else ("PASS" if passed else "FAIL")
            report.append(f"- {name}: {text} → {verdict}")
        if not full:
            report.append(
                f"- (these cases are {shapes}, not the 240x240x155 pairs the targets name)"
            )
        report.append("")
    text = "\n".join(report)
    print()
    print(text)
    (args.output / "results.md").write_text(text + "\n")
    results = {
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cases": [asdict(case) for case in cases],
        "rows": rows,
        "summary": summary,
        "per_direction": per_direction,
        "per_subject": per_subject,
        "tuned_peer_settings": {m: asdict(v) for m, v in tuned.items()},
        "network": network,
    }
    (args.output / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {args.output / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
