"""Registering a fixed and a moving image with a trained model: the engine behind
``cocyclereg register`` and the Slicer module.

Stages (each timed):

1. ``affine``: optional pre-alignment, mutual information (SimpleITK, Mattes), giving ``A``:
   fixed-space point -> moving-space point.
2. ``preprocess``: the model grid in the fixed image's physical space (the model's spacing,
   sides a multiple of 16, around the fixed foreground); the fixed image, and the moving image
   through ``A``, resampled onto it and normalised as the model file records.
3. ``network``: one pass of R gives both fields (voxels on the model grid; two passes, averaged
   with the left-right mirrored pair's, with ``mirror_average``:
   :mod:`cocyclereg.inference.network_fields`); skipped when the refinement starts from zero
   fields instead (``use_network``).
4. ``refine``: optional instance optimisation of the fields on this pair
   (:mod:`cocyclereg.inference.refine`; the model file recommends the number of steps and the
   start).
5. ``output``: the forward transform ``T(p) = A(p + u(p))`` sampled on the fixed image's own
   grid, the inverse ``T^-1(m) = q + v(q)`` with ``q = A^-1(m)`` sampled on the moving image's
   grid, the warped moving image and labelmaps, and ``det(I + grad(T - id))`` on the fixed grid.

Both fields are resampling (pull-back) fields in LPS mm: ``transform`` maps fixed-space points
to the moving-space points to sample, so ``SimpleITK.Resample(moving, fixed, transform)``,
ANTs and Slicer apply it unchanged; ``inverse_transform`` does the same from moving to fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from cocyclereg.config import NormalizationConfig, Refinement
from cocyclereg.descriptors import MIND_CHANNELS
from cocyclereg.device import resolve_device
from cocyclereg.errors import GeometryError, InputError
from cocyclereg.geometry import kernels
from cocyclereg.geometry.dense import composed_displacement, covering_field, resample_through
from cocyclereg.geometry.displacement import (
    affine_parameters,
    displacement_field_image,
    voxel_flow_to_displacement_mm,
)
from cocyclereg.geometry.grid import Grid, foreground_mask, model_grid
from cocyclereg.geometry.inverse import inverse_flow as inverse_flow_of
from cocyclereg.geometry.jacobian import (
    FoldingStats,
    determinant_image,
    folding_stats,
    jacobian_determinant_array,
)
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.inference.network_fields import mirroring_refusal, network_fields
from cocyclereg.inference.normalize import normalize
from cocyclereg.inference.plausibility import check_registration_inputs
from cocyclereg.inference.refine import flow_on_grid, refine_flow
from cocyclereg.inference.similarity import registration_similarity
from cocyclereg.io import read_image, read_labels
from cocyclereg.model_file import ModelInfo, load_model
from cocyclereg.networks import DualHeadUNet

LPS_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class RegistrationResult:
    """Everything one registration produces; images are SimpleITK images with full geometry.
    The transforms are float32 displacement fields (LPS mm), as written to their files.
    ``moving_modality``/``fixed_modality``: the model modality each image was taken as;
    ``similarity``: :func:`cocyclereg.inference.similarity.registration_similarity`'s NMI
    ``before``, ``prealigned`` and ``after`` (higher is better); ``deformable_displacement_mm``:
    :func:`deformable_displacement_stats` of the deformable part (pre-alignment excluded)."""

    transform: sitk.Image
    inverse_transform: sitk.Image | None
    jacobian: sitk.Image
    folding: FoldingStats
    warped: sitk.Image | None
    warped_labels: list[sitk.Image]
    affine: sitk.Transform | None
    model_grid: Grid
    field_grid: Grid  # where the final fields live: the model grid or the refinement's finer one
    model: ModelInfo
    device: str
    refinement: Refinement = field(default_factory=Refinement)
    seconds: dict[str, float] = field(default_factory=dict)
    moving_modality: str = ""
    fixed_modality: str = ""
    similarity: dict[str, float] = field(default_factory=dict)
    deformable_displacement_mm: dict[str, float] = field(default_factory=dict)

    @property
    def used_network(self) -> bool:
        """Whether the network gave the refinement's start (``refinement.use_network``)."""
        return self.refinement.use_network


AFFINE_SPACING_MM = 3.0
# The thinnest input (voxels along any axis) a registration accepts.
MINIMUM_VOXELS_PER_AXIS = 8


def _affine_working_image(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` as float32 with voxels of about ``spacing_mm``: block averages of an integer
    number of voxels per axis (``spacing_mm / spacing`` rounded, at least 1, at most what
    leaves ``MINIMUM_VOXELS_PER_AXIS``; the average is the anti-aliasing; same direction,
    origin moved to the first block's centre), intensities clipped to the 0.5-99.5th
    percentiles of its non-zero voxels so a long bright tail (T2, CT bone) does not starve the
    MI histogram."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    # At most a factor that leaves MINIMUM_VOXELS_PER_AXIS voxels: the pyramid halves them
    # again and ITK's Gaussian smoothing needs at least four along each axis.
    factors = [
        max(1, min(int(spacing_mm / s + 0.5), n // MINIMUM_VOXELS_PER_AXIS))
        for s, n in zip(image.GetSpacing(), image.GetSize(), strict=True)
    ]
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(image, factors)
    values = sitk.GetArrayViewFromImage(image)
    inside = values[values != 0]
    if inside.size:
        low, high = np.percentile(inside, [0.5, 99.5])
        image = sitk.Clamp(image, sitk.sitkFloat32, float(low), float(high))
    return image


def deformable_displacement_stats(
    displacement_mm: np.ndarray, foreground: np.ndarray
) -> dict[str, float]:
    """How far the deformable part of a registration moves the anatomy: the length in mm of
    ``displacement_mm`` (``(D, H, W, 3)``, any axis order of the vectors) over ``foreground``
    (``(D, H, W)`` bool, the fixed image's non-zero voxels): ``mean``, ``p95`` and ``max``
    (all 0 for an empty foreground). The pre-alignment is not part of it: on two images that
    need no deformation, this is what the network or the refinement invented."""
    lengths = np.linalg.norm(displacement_mm, axis=-1)[foreground]
    if lengths.size == 0:
        return {"mean": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "mean": float(lengths.mean()),
        "p95": float(np.percentile(lengths, 95)),
        "max": float(lengths.max()),
    }


def affine_prealignment(
    fixed: sitk.Image, moving: sitk.Image, seed: int = 1, kind: str = "rigid"
) -> sitk.AffineTransform:
    """Linear transform (fixed -> moving points) maximising Mattes mutual information, as an
    affine transform. ``kind``: ``"rigid"`` (rotation and translation: the same subject's scans
    in different head positions) or ``"affine"`` (12 parameters; on skull-stripped brains MI
    tends to shrink the moving brain by a few percent, measured 4 % on TCGA-DU-7294 T1/T2).

    Works on block-averaged copies of both images with voxels of about ``AFFINE_SPACING_MM``
    (3 mm) and clipped intensities (:func:`_affine_working_image`): moments initialisation,
    then a two-level pyramid (shrink 2, 1; smoothing 2, 0 mm) of regular-step gradient descent
    (steps down to 1e-3) with physical-shift scaling on a seeded 25 % sample of the voxels.
    ``seed`` must not be 0: SimpleITK reads 0 as ``sitkWallClock``, a new sample every run
    (measured: rigid translations differing by 0.3 mm and fields by 1.6 mm between two runs on
    the demo pair); with a fixed seed, repeated runs on the same number of threads agree.
    If the result's MI is no better than the identity's (images already aligned), returns the
    identity as an affine transform.
    """
    fixed_f = _affine_working_image(fixed, AFFINE_SPACING_MM)
    moving_f = _affine_working_image(moving, AFFINE_SPACING_MM)

    # MI over the head only: with a large empty background, MI rewards shrinking the brain.
    head = sitk.GetImageFromArray(foreground_mask(fixed_f).astype(np.uint8))
    head.CopyInformation(fixed_f)
    head = sitk.BinaryDilate(head, [2, 2, 2])

    def method_for(transform: sitk.Transform) -> sitk.ImageRegistrationMethod:
        method = sitk.ImageRegistrationMethod()
        method.SetMetricFixedMask(head)
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.25, seed)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetInitialTransform(transform, inPlace=False)
        return method

    if kind not in ("rigid", "affine"):
        raise ValueError(f"kind must be 'rigid' or 'affine', got {kind!r}")
    initial = sitk.CenteredTransformInitializer(
        fixed_f,
        moving_f,
        sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    method = method_for(initial)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=100, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    result = method.Execute(fixed_f, moving_f)
    composite = sitk.CompositeTransform(result)
    found = composite.GetNthTransform(composite.GetNumberOfTransforms() - 1).Downcast()
    if composite.GetNumberOfTransforms() > 1 or not isinstance(
        found, sitk.AffineTransform | sitk.Euler3DTransform
    ):
        raise RuntimeError("linear registration returned an unexpected transform")
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(found.GetMatrix())
    affine.SetTranslation(found.GetTranslation())
    affine.SetCenter(found.GetCenter())
    identity = sitk.AffineTransform(3)
    # Mattes MI in ITK is negated: lower is better.
    if method_for(identity).MetricEvaluate(fixed_f, moving_f) <= method_for(affine).MetricEvaluate(
        fixed_f, moving_f
    ):
        return identity
    return affine


def _choose_direction(
    info: ModelInfo, fixed_modality: str | None, moving_modality: str | None
) -> bool:
    """True when the moving image is the model's x (use head x2y), False when it is y."""
    known = info.modalities
    for name in (fixed_modality, moving_modality):
        if name is not None and name not in known:
            raise InputError(
                f"The model registers {known[0]} and {known[1]}; it does not know the modality "
                f"{name!r}. Choose --moving-modality/--fixed-modality among {', '.join(known)}."
            )
    if moving_modality is None and fixed_modality is None:
        return True
    if (
        moving_modality is not None
        and fixed_modality is not None
        and moving_modality == fixed_modality
    ):
        raise InputError(
            f"fixed and moving are both {moving_modality!r}; the model registers "
            f"{known[0]} to {known[1]}."
        )
    if moving_modality is not None:
        return moving_modality == info.x_modality
    return fixed_modality == info.y_modality


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free memory, or Linux's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimated_network_bytes(grid: Grid, info: ModelInfo) -> int:
    """Peak memory of one inference pass of R on ``grid`` (float32), with a 2x margin: every
    encoder and decoder feature map at its resolution, the inputs and both fields."""
    voxels = int(np.prod(grid.size))
    encoder = info.architecture["encoder_features"]
    decoder = info.architecture["decoder_features"]
    per_voxel = 2 + 6  # the two inputs, both fields
    if info.input_features == "mind":
        per_voxel += 2 * (MIND_CHANNELS + 1) + MIND_CHANNELS  # descriptors and their working copies
    per_voxel += sum(c / 8**level for level, c in enumerate(encoder))
    per_voxel += sum(c / 8 ** (len(decoder[:4]) - 1 - level) for level, c in enumerate(decoder[:4]))
    per_voxel += sum(decoder[4:]) + decoder[3] + encoder[0]  # full-resolution refinement
    return int(2 * 4 * per_voxel * voxels)


def _fine_level_for(refinement: Refinement, fixed: sitk.Image, grid: Grid) -> Refinement:
    """``refinement`` with its finer level no finer than the fixed image's finest voxels (finer
    would only interpolate), and none at all when that is no finer than the model grid."""
    if not refinement.has_fine_level:
        return refinement
    spacing = max(refinement.fine_spacing_mm, min(fixed.GetSpacing()))
    if spacing >= min(grid.spacing):
        return replace(refinement, fine_steps=0)
    return replace(refinement, fine_spacing_mm=spacing)


def _check_volume(image: sitk.Image, role: str) -> None:
    if min(image.GetSize()) < MINIMUM_VOXELS_PER_AXIS:
        raise InputError(
            f"The {role} image is {'x'.join(map(str, image.GetSize()))} voxels: a 3D "
            f"registration needs at least {MINIMUM_VOXELS_PER_AXIS} voxels along each axis "
            "(a single slice or a thin slab has too little extent to register)."
        )
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0 or float(array.max()) == float(array.min()):
        raise InputError(
            f"The {role} image is constant (every voxel {float(array.min())}): "
            "there is nothing to register."
        )


def _normalised(
    image: sitk.Image, grid: Grid, settings: dict, device: torch.device, transform=None
) -> torch.Tensor:
    """``image`` (through ``transform``) resampled onto ``grid`` and normalised as a model file's
    ``settings`` say: ``(1, 1, D, H, W)`` float32 on ``device``."""
    resampled = resample_to_grid(image, grid, "linear", transform=transform)
    array = sitk.GetArrayFromImage(resampled)
    normalised = normalize(array, NormalizationConfig(**_normalization_fields(settings)))[0]
    return torch.from_numpy(normalised)[None, None].to(device)


def _normalization_fields(settings: dict) -> dict:
    known = NormalizationConfig.__dataclass_fields__
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in known}


def register(
    fixed: sitk.Image | str | Path,
    moving: sitk.Image | str | Path,
    model: str | Path | tuple[DualHeadUNet, ModelInfo],
    *,
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    affine: bool = True,
    prealignment: str = "rigid",
    device: str = "auto",
    labels: list[sitk.Image | str | Path] | tuple = (),
    warp_moving: bool = True,
    inverse: bool = True,
    progress: Callable[[str], None] | None = None,
    refine_steps: int | None = None,
    use_network: bool | None = None,
    mirror_average: bool | None = None,
    fine_steps: int | None = None,
    fine_spacing_mm: float | None = None,
    check_modality: bool = True,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a model; see the module docstring.

    Args:
        fixed, moving: images or paths; any orientation, spacing and size.
        model: a model file path, or ``(network, info)`` from :func:`load_model`.
        fixed_modality, moving_modality: the model's modality names (default: moving is the
            model's x, fixed its y); the head and input order follow from them.
        affine: run the mutual-information linear pre-alignment first.
        prealignment: its degrees of freedom, ``rigid`` or ``affine`` (see
            :func:`affine_prealignment`).
        device: ``auto``, ``cpu`` or ``cuda``.
        labels: labelmaps on the moving image's grid, warped to the fixed grid (nearest).
        warp_moving: also return the moving image resampled onto the fixed grid.
        inverse: also return the inverse transform (the second head) on the moving grid.
        progress: called with each stage's name (``load``, ``affine``, ``preprocess``,
            ``network``, ``refine``, ``output``) as it starts.
        refine_steps: Adam steps of instance optimisation after the network
            (:mod:`cocyclereg.inference.refine`); ``None``: the model file's recommendation; 0: the
            network's fields as they are. The inverse field is refined only if ``inverse``.
        use_network: start the refinement from the network's fields; ``False``: from zero
            fields (the pre-aligned images as they are), so only the model's grid,
            normalisation and refinement settings are used: instance optimisation alone;
            ``None``: the model file's recommendation (``Refinement.use_network``).
        mirror_average: average the network's fields with those of the left-right mirrored
            pair (:mod:`cocyclereg.inference.network_fields`; the network runs twice; models on
            an LPS grid only); ``None``: the model file's recommendation
            (``Refinement.mirror_average``).
        fine_steps, fine_spacing_mm: the finer refinement level's Adam steps (0: none, the
            field stays on the model grid) and voxel size in mm, never finer than the fixed
            image's finest voxels (none if those are no finer than the model grid); ``None``:
            the model file's recommendation (:class:`cocyclereg.config.Refinement`). With a
            finer level the inverse is the forward field's inverse
            (:mod:`cocyclereg.geometry.inverse`), consistent with it by construction, instead of a
            second refined field.
        check_modality: refuse (:class:`InputError`) an input that does not look like the
            modality the model expects there (:mod:`cocyclereg.inference.plausibility`: a CT given
            as MRI, an MRI given as CT); ``False`` for the user who knows better.
    """
    report = progress or (lambda stage: None)
    seconds: dict[str, float] = {}
    report("load")
    started = time.perf_counter()
    # The compiled loops of the refinement and output stages load (or compile) beside the
    # reading, pre-alignment and network, unless the caller loaded them already (the command
    # line does, at its start).
    compiled = kernels.load_in_background()
    sources = tuple(None if isinstance(x, sitk.Image) else str(x) for x in (fixed, moving))
    fixed = read_image(fixed) if not isinstance(fixed, sitk.Image) else fixed
    moving = read_image(moving) if not isinstance(moving, sitk.Image) else moving
    labelmaps = [read_labels(x) if not isinstance(x, sitk.Image) else x for x in labels]
    torch_device = resolve_device(device)
    network, info = load_model(model, torch_device) if not isinstance(model, tuple) else model
    network = network.to(torch_device).eval()
    _check_volume(fixed, "fixed")
    _check_volume(moving, "moving")
    moving_grid = Grid.from_image(moving)
    for index, labelmap in enumerate(labelmaps):
        if not Grid.from_image(labelmap).is_close(moving_grid, 1e-3):
            raise GeometryError(
                f"labelmap {index + 1} is not on the moving image's grid "
                f"(size {labelmap.GetSize()} vs {moving.GetSize()}, or origin, "
                "spacing or direction differ)."
            )
    moving_is_x = _choose_direction(info, fixed_modality, moving_modality)
    runs_network = info.refinement.use_network if use_network is None else use_network
    mirrors = info.refinement.mirror_average if mirror_average is None else mirror_average
    refusal = mirroring_refusal(info.orientation)
    if runs_network and mirrors and refusal:
        raise InputError(refusal[0].upper() + refusal[1:] + ".")
    if check_modality:
        name = (
            info.provenance.get("name", "given") if isinstance(model, tuple) else Path(model).stem
        )
        check_registration_inputs(fixed, moving, info, moving_is_x, name, sources)
    seconds["load"] = time.perf_counter() - started

    if affine:
        report("affine")
    started = time.perf_counter()
    pre_alignment = affine_prealignment(fixed, moving, kind=prealignment) if affine else None
    seconds["affine"] = time.perf_counter() - started

    report("preprocess")
    started = time.perf_counter()
    direction = LPS_DIRECTION if info.orientation == "LPS" else None
    grid = model_grid(fixed, spacing=info.spacing, multiple=info.size_multiple, direction=direction)
    fixed_side, moving_side = ("y", "x") if moving_is_x else ("x", "y")
    needed, available = estimated_network_bytes(grid, info), available_memory_bytes(torch_device)
    if available is not None and needed > available:
        raise InputError(
            f"The model grid of {'x'.join(map(str, grid.size))} voxels needs about "
            f"{needed / 1e9:.1f} GB on {torch_device} but only {available / 1e9:.1f} GB are free; "
            "crop the fixed image to the region of interest or free memory."
        )
    fixed_tensor = _normalised(fixed, grid, info.normalization[fixed_side], torch_device)
    moving_tensor = _normalised(
        moving, grid, info.normalization[moving_side], torch_device, pre_alignment
    )
    seconds["preprocess"] = time.perf_counter() - started

    refinement = (
        info.refinement if refine_steps is None else replace(info.refinement, steps=refine_steps)
    )
    if use_network is not None:
        refinement = replace(refinement, use_network=use_network)
    if mirror_average is not None:
        refinement = replace(refinement, mirror_average=mirror_average)
    if fine_steps is not None:
        refinement = replace(refinement, fine_steps=fine_steps)
    if fine_spacing_mm is not None:
        refinement = replace(refinement, fine_spacing_mm=fine_spacing_mm)
    refinement = _fine_level_for(refinement, fixed, grid)
    started = time.perf_counter()
    if refinement.use_network:
        report("network")
        forward_flow, inverse_flow = network_fields(
            network, moving_tensor, fixed_tensor, moving_is_x, refinement.mirror_average
        )
        seconds["network"] = time.perf_counter() - started
    else:
        forward_flow = torch.zeros((1, 3, *fixed_tensor.shape[2:]), device=torch_device)
        inverse_flow = torch.zeros_like(forward_flow)

    if refinement.steps:
        report("refine")
    started = time.perf_counter()
    # The kernels have usually loaded by now; waiting here keeps the loading thread from
    # launching a kernel while this stage does (numba's workqueue layer cannot run two at once).
    compiled.result()
    forward_flow = refine_flow(forward_flow, moving_tensor, fixed_tensor, refinement)
    if inverse and not refinement.has_fine_level:
        inverse_flow = refine_flow(inverse_flow, fixed_tensor, moving_tensor, refinement)
    seconds["refine"] = time.perf_counter() - started

    field_grid = grid
    if refinement.has_fine_level:
        report("fine")
        started = time.perf_counter()
        field_grid = grid.with_spacing(refinement.fine_spacing_mm)
        # From here on the images are those of the field's grid.
        fixed_tensor = _normalised(fixed, field_grid, info.normalization[fixed_side], torch_device)
        moving_tensor = _normalised(
            moving, field_grid, info.normalization[moving_side], torch_device, pre_alignment
        )
        forward_flow = refine_flow(
            flow_on_grid(forward_flow, grid, field_grid),
            moving_tensor,
            fixed_tensor,
            refinement.fine_level(),
        )
        seconds["fine"] = time.perf_counter() - started
        if inverse:
            started = time.perf_counter()
            inverse_flow, _ = inverse_flow_of(forward_flow)
            seconds["inverse"] = time.perf_counter() - started

    report("output")
    started = time.perf_counter()
    as_given = moving_tensor
    if pre_alignment is not None:
        as_given = _normalised(moving, field_grid, info.normalization[moving_side], torch_device)
    similarity = registration_similarity(fixed_tensor, as_given, moving_tensor, forward_flow)
    forward_mm = voxel_flow_to_displacement_mm(forward_flow[0].double().cpu().numpy(), field_grid)
    deformable = deformable_displacement_stats(forward_mm, fixed_tensor[0, 0].cpu().numpy() > 0)
    fixed_grid = Grid.from_image(fixed)
    after = affine_parameters(pre_alignment) if pre_alignment is not None else None
    # Beyond the model grid (the fixed image's foreground box) the field holds its edge values,
    # so the written transform has no step there (covering_field).
    covering_mm, covering_grid = covering_field(forward_mm, field_grid, fixed_grid)
    transform_mm = composed_displacement(
        fixed_grid, covering_mm, covering_grid, after=after, dtype=np.float32
    )
    jacobian = determinant_image(
        jacobian_determinant_array(transform_mm, fixed_grid, np.float32), fixed_grid
    )
    transform = displacement_field_image(transform_mm, fixed_grid, np.float32)
    del transform_mm
    inverse_transform = None
    if inverse:
        before = (
            affine_parameters(pre_alignment.GetInverse()) if pre_alignment is not None else None
        )
        inverse_mm, inverse_grid = covering_field(
            voxel_flow_to_displacement_mm(inverse_flow[0].double().cpu().numpy(), field_grid),
            field_grid,
            moving_grid,
            before=before,
        )
        inverse_transform = displacement_field_image(
            composed_displacement(
                moving_grid, inverse_mm, inverse_grid, before=before, dtype=np.float32
            ),
            moving_grid,
            np.float32,
        )
    images = [(moving, "linear")] if warp_moving else []
    images += [(labelmap, "label") for labelmap in labelmaps]
    resampled = resample_through(images, fixed_grid, covering_mm, covering_grid, after=after)
    warped = resampled.pop(0) if warp_moving else None
    warped_labels = resampled
    seconds["output"] = time.perf_counter() - started
    return RegistrationResult(
        transform=transform,
        inverse_transform=inverse_transform,
        jacobian=jacobian,
        folding=folding_stats(jacobian),
        warped=warped,
        warped_labels=warped_labels,
        affine=pre_alignment,
        model_grid=grid,
        field_grid=field_grid,
        model=info,
        device=str(torch_device),
        refinement=refinement,
        seconds=seconds,
        moving_modality=info.modalities[0 if moving_is_x else 1],
        fixed_modality=info.modalities[1 if moving_is_x else 0],
        similarity=similarity,
        deformable_displacement_mm=deformable,
    )
