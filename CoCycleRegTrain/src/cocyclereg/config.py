"""The training configuration: one typed place for every setting, presets, and YAML files.

A configuration is a tree of dataclasses. ``load_config`` starts from a preset (``paper``, the
published settings, or ``cpu-small``, a model that trains on two CPU cores), applies a YAML file
and then ``section.field=value`` overrides from the command line, and checks the result.

Sizes are in ITK index order (i, j, k) = (W, H, D) voxels; spacings in mm along the same axes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cocyclereg.errors import CoCycleRegError


class ConfigError(CoCycleRegError):
    """A configuration file or override is invalid."""

    exit_code = 2


@dataclass
class RegistrationNetConfig:
    """R: the dual-head UNet (VoxelMorph-style backbone, two 3x3x3 flow heads).

    ``backbone_init`` (``pytorch`` in the paper): ``kaiming`` gives the backbone He
    initialisation, features of order one at the heads instead of about 0.02, so R leaves the
    identity in tens of steps instead of hundreds (see
    :class:`cocyclereg.networks.DualHeadUNet`).

    ``input_features`` (``images`` in the paper): ``mind`` feeds the backbone the MIND-SSC
    descriptors of the two images instead of their intensities.
    """

    encoder_features: tuple[int, ...] = (16, 32, 32, 32, 32)
    decoder_features: tuple[int, ...] = (32, 32, 32, 32, 16, 16)
    head_init_std: float = 1e-5
    backbone_init: Literal["pytorch", "kaiming"] = "pytorch"
    input_features: Literal["images", "mind"] = "images"


@dataclass
class GeneratorConfig:
    """T_x2y and T_y2x: 3D ResNet (CycleGAN) generators ending in tanh."""

    ngf: int = 64
    blocks: int = 9
    norm: Literal["instance", "batch", "none"] = "instance"
    padding: Literal["replicate", "reflect", "zeros"] = "replicate"
    dropout: float = 0.5


@dataclass
class DiscriminatorConfig:
    """D_x and D_y: unconditional 3D PatchGAN discriminators."""

    ndf: int = 64
    layers: int = 3
    norm: Literal["instance", "batch", "none"] = "instance"


@dataclass
class ModelConfig:
    registration: RegistrationNetConfig = field(default_factory=RegistrationNetConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class LossConfig:
    """Which objective, and the weight of each term (all 1.0 in the paper).

    ``structure`` (0 in the paper) weighs a MIND-SSC term between each translation and its
    input, ``MIND(T_x2y(x), x) + MIND(T_y2x(y), y)``: it pins the translations' geometry, so R
    cannot absorb a shift that a generator introduced (the paper's objective leaves that
    freedom open).

    ``registration_mind`` (0 in the paper) weighs the VMIND similarity
    ``MIND(W(x, phi_x2y), y) + MIND(W(y, phi_y2x), x)`` in the translation modes: a direct,
    modality-independent pull of R towards the images' own alignment, so that R learns from the
    first steps instead of following the geometric errors of untrained translations.

    ``deformation`` (0 in the paper) weighs a supervised term for synthetic training pairs: the
    mean end-point error (voxels) of both of R's fields against the known random deformation
    that misaligned the pair (:func:`cocyclereg.learning.losses.deformation_residual`). The paper's
    objective is unsupervised; this term makes R learn in hundreds of steps instead of tens of
    thousands, at the price of learning the kind of deformation the augmentation draws.
    ``deformation_foreground`` averages that error over the pair's (dilated) head only, not over
    the background, where the images say nothing about the motion. ``deformation_squared``
    averages the squared end-point error instead (voxels squared): the plain error pulls a
    still-blind R towards zero fields as hard from a small motion as from a large one (its
    best constant is the median motion), the squared one lets the large motions lead.
    ``deformation_final_fraction`` (1: a constant weight) lets that weight decay along half a
    cosine from ``deformation`` at step 0 to this fraction of it at ``train.steps``: a
    collaborative-cycle fine-tune that starts from a supervised R hands over to the
    unsupervised terms gradually, keeping some supervision to the end.

    ``similarity_sigma`` (0 in the paper): Gaussian smoothing, in voxels, of both images of every
    image similarity term (L1 and the registration MIND terms). Every non-integer warp blurs an
    image (trilinear interpolation averages 8 neighbours), and on a coarse grid that blur costs
    a similarity more than a misalignment of a voxel or two: unsmoothed, R learns to stay at
    whole-voxel shifts (MIND) or to shift noisy early translations by half a voxel (L1).
    Measured on 4.5 mm validation pairs: MIND of identity vs the true inverse deformation
    0.0427 vs 0.0425 unsmoothed, 0.0317 vs 0.0233 at sigma 1.

    ``mode="translation"`` trains the translators alone, pix2pix-style, on aligned pairs only
    (``similarity`` weighs ``L1(T_x2y(x), y) + L1(T_y2x(y), x)``, ``gan`` the LSGAN terms; R
    is not trained): translators that learn from misaligned pairs take on the misalignment,
    and a later ``cocycle`` run would then follow their geometric errors. The data settings
    must then misalign nothing (:func:`validate`); ``train.init_translation`` starts a
    ``cocycle`` run from such translators.
    """

    mode: Literal["cocycle", "sepcycle", "vmind", "translation"] = "cocycle"
    similarity: float = 1.0
    gan: float = 1.0
    cycle: float = 1.0
    smooth: float = 1.0
    structure: float = 0.0
    registration_mind: float = 0.0
    deformation: float = 0.0
    deformation_foreground: bool = False
    deformation_squared: bool = False
    deformation_final_fraction: float = 1.0
    similarity_sigma: float = 0.0
    mind_radius: int = 1
    mind_dilation: int = 2


@dataclass
class OptimConfig:
    """Three Adam optimisers (D, G, R) as published; gradient-norm clipping of each generator and
    each discriminator on its own (as published), of R only with ``clip_registration``.

    ``registration_warmup_steps`` (0 in the paper) keeps R fixed at its near-identity start for
    that many steps while the translations learn, so R never learns to undo the geometric
    errors of untrained generators.

    ``registration_lr`` (unset in the paper: R uses ``lr``) gives R its own learning rate. R's
    heads start at N(0, 1e-5), so at 1e-4 R needs tens of thousands of steps to move; a short
    CPU training budget needs a larger rate for R than for the generators.

    ``schedule``: ``cosine`` decays every learning rate from its value at step 0 to
    ``final_lr_fraction`` of it at ``train.steps`` (half a cosine); ``constant`` as published.

    ``registration_average`` (0: off, as published): R's weights are also kept as an exponential
    moving average, ``average <- d * average + (1 - d) * weights`` after each of R's steps with
    ``d`` this value (0.99 averages over about the last 100 steps); validation, ``best.pt`` and
    the exported model then use the average, which smooths the step-to-step noise of a small
    batch (measured on the brain model's validation: changes of 0.00-0.02 mm per 250 steps
    instead of 0.02-0.06). It starts from R's weights at step 0 (those of
    ``train.init_registration``).
    """

    lr: float = 1e-4
    registration_lr: float | None = None
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    clip_discriminator: float | None = 20.0
    clip_generator: float | None = 20.0
    clip_registration: float | None = None
    registration_warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    final_lr_fraction: float = 0.05
    registration_average: float = 0.0


@dataclass
class NormalizationConfig:
    """Intensity scaling of one modality to [0, 1].

    ``percentile``: clip to the ``lower``/``upper`` percentiles of the foreground, then scale.
    ``window``: clip to a fixed window (CT in HU), then scale.
    """

    method: Literal["percentile", "window"] = "percentile"
    lower: float = 0.5
    upper: float = 99.5
    window: tuple[float, float] = (-1000.0, 1000.0)


@dataclass
class AugmentationConfig:
    """Random deformations and intensity changes applied to training pairs (seeded).

    Three independent kinds (all off or as published by default):

    * The **misalignment** of the pair, applied to one side (``data.deform``) and known, so the
      supervised term and validation can measure against it. The elastic field is the paper's:
      random displacements on a coarse control grid, Gaussian smoothed, scaled so no voxel
      folds. ``elastic_control_spacing_range_mm`` / ``elastic_max_displacement_range_mm``, when
      set, draw the control spacing and the maximum uniformly from that range per sample
      instead of the fixed values; ``undeformed_probability`` leaves that fraction of pairs
      without elastic motion (they still get the rigid residual and the affine);
      ``rigid_residual_deg`` / ``rigid_residual_mm`` add a small random rigid motion (uniform in
      ± the bound per axis), like the residual a rigid pre-alignment leaves;
      ``aligned_probability`` leaves that fraction of pairs exactly aligned, with no elastic,
      rigid or affine motion (the network must learn to stay still; these five: training only;
      validation pairs keep the fixed values). ``affine`` adds the larger random affine.
    * The **anatomy** (``anatomy``): one random affine about the centre (±
      ``anatomy_rotation_deg`` degrees, 1 ± ``anatomy_scale``, ± ``anatomy_translation_mm`` mm
      per axis), a smooth warp of at most ``anatomy_elastic_mm`` mm on a 48 mm control grid, and a
      left-right mirror with probability ``flip_probability``, applied identically to both
      images and labels before the misalignment: a new head, still aligned.
    * The **appearance** (``intensity``), per image independently: a smooth multiplicative bias
      field (``bias_strength``: largest log-amplitude), a blur of sigma up to ``blur_voxels``
      voxels, gamma in ``gamma`` and Gaussian noise of ``noise_std``.
    """

    elastic: bool = True
    elastic_control_spacing_mm: float = 24.0
    elastic_max_displacement_mm: float = 8.0
    elastic_control_spacing_range_mm: tuple[float, float] | None = None
    elastic_max_displacement_range_mm: tuple[float, float] | None = None
    undeformed_probability: float = 0.0
    aligned_probability: float = 0.0
    rigid_residual_deg: float = 0.0
    rigid_residual_mm: float = 0.0
    affine: bool = False
    affine_rotation_deg: float = 5.0
    affine_scale: float = 0.05
    affine_translation_mm: float = 5.0
    anatomy: bool = False
    anatomy_rotation_deg: float = 10.0
    anatomy_scale: float = 0.1
    anatomy_translation_mm: float = 10.0
    anatomy_elastic_mm: float = 0.0
    flip_probability: float = 0.0
    intensity: bool = False
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.01
    bias_strength: float = 0.0
    blur_voxels: float = 0.0


@dataclass
class SynthesisConfig:
    """Images drawn from label maps (SynthMorph-style, :mod:`cocyclereg.learning.synthesis`).

    Every label of a map gets its own random mean intensity (uniform in [0, 1]) and a texture
    of relative standard deviation up to ``texture_std``, independently for the two images of
    a pair, so the network sees contrasts no scanner made and cannot rely on one. The
    background (label 0) is dark with probability ``dark_background_probability``, else
    random like a label; the image is blurred with a sigma up to ``blur_voxels`` voxels and
    scaled to [0, 1] by its foreground percentiles.
    """

    texture_std: float = 0.1
    dark_background_probability: float = 0.8
    blur_voxels: float = 1.0


@dataclass
class DataConfig:
    """Paired cases, and the grid and intensities the networks see.

    ``train`` and ``validation`` are a CSV file (columns ``x``, ``y``, optional ``labels`` or
    ``x_labels``/``y_labels``, optional ``name``; relative paths are relative to the CSV) or a
    folder of case folders holding ``<x_modality>.nii.gz``, ``<y_modality>.nii.gz`` and
    optionally ``labels.nii.gz``.

    ``synthetic``: a CSV of label maps (columns ``labels``, optional ``name``) from which
    training pairs are synthesised (see :class:`SynthesisConfig`), each ``synthetic_repeats``
    times per epoch; it may be the only training data. ``synthetic_shapes``: that many more
    synthetic pairs per epoch, each from a fresh label map of random shapes
    (:func:`cocyclereg.learning.synthesis.random_shapes`).

    ``deform``: the side whose image the misalignment deforms, ``x``, ``y`` or ``random`` (each
    training sample draws one; validation pairs alternate).
    """

    train: str = ""
    validation: str = ""
    synthetic: str = ""
    synthetic_repeats: int = 1
    synthetic_shapes: int = 0
    x_modality: str = "t1"
    y_modality: str = "t2"
    spacing: tuple[float, float, float] = (1.25, 1.2, 1.75)
    size: tuple[int, int, int] = (112, 144, 80)
    orientation: Literal["LPS", "image"] = "LPS"
    x_normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    y_normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    deform: Literal["x", "y", "random"] = "x"
    validation_deformations: int = 1


@dataclass
class TrainConfig:
    """The training loop: length, validation, checkpoints, and memory options.

    ``init_registration``: a model file (``.cocyclereg``) whose R weights start this run
    (fine-tuning, or a curriculum such as ``loss.mode=vmind`` first, then ``cocycle``); its
    architecture must match ``model.registration``.

    ``init_translation``: a checkpoint (``checkpoints/best.pt`` or ``last.pt``) of a
    ``loss.mode=translation`` run whose translators (and, from ``last.pt``, discriminators)
    start this run; their architecture must match ``model.generator`` and
    ``model.discriminator``.
    """

    output: str = "runs/cocyclereg"
    steps: int = 72000
    batch_size: int = 1
    seed: int = 0
    validate_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 10
    image_every: int = 1000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = False
    activation_checkpointing: bool = False
    num_threads: int = 0
    init_registration: str = ""
    init_translation: str = ""


@dataclass(frozen=True)
class Refinement:
    """Instance optimisation at inference (:mod:`cocyclereg.inference.refine`; a model file records
    the recommended one): ``steps`` Adam steps (0: the start field as it is), the weight of the
    diffusion regulariser against the MIND-SSC term, Adam's learning rate (voxels/step), and
    where it starts: from the network's fields (``use_network``) or from zero fields, the
    pre-aligned images as they are (the refinement alone; the network is not run). With
    ``mirror_average`` the network's fields are averaged with those of the left-right mirrored
    pair (:mod:`cocyclereg.inference.network_fields`; LPS model grids only; the network runs
    twice).

    Then, optionally, a finer level: the field carried onto a grid of ``fine_spacing_mm``
    over the same box (:meth:`cocyclereg.geometry.grid.Grid.with_spacing`), the images resampled
    onto it from their full resolution, and ``fine_steps`` more Adam steps there under the weight
    ``fine_smoothness``. ``fine_spacing_mm`` 0 or ``fine_steps`` 0: no finer level; the field
    stays on the model grid.
    """

    steps: int = 0
    smoothness: float = 1.0
    learning_rate: float = 0.2
    use_network: bool = True
    mirror_average: bool = False
    fine_spacing_mm: float = 0.0
    fine_steps: int = 0
    fine_smoothness: float = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "fine_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"refinement {name} must be a whole number >= 0, got {value!r}")
        for name in ("use_network", "mirror_average"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"refinement {name} must be true or false, got {getattr(self, name)!r}"
                )
        for name in ("smoothness", "fine_smoothness", "fine_spacing_mm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"refinement {name} must be >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"refinement learning rate must be > 0, got {self.learning_rate!r}")

    @property
    def has_fine_level(self) -> bool:
        """Whether the field is refined further on a finer grid."""
        return self.fine_spacing_mm > 0 and self.fine_steps > 0

    def fine_level(self) -> Refinement:
        """The finer level as a one-level refinement (its steps and regulariser weight)."""
        return dataclasses.replace(
            self,
            steps=self.fine_steps,
            smoothness=self.fine_smoothness,
            fine_steps=0,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Refinement:
        """From a model file's ``refinement`` entry; missing fields take the defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown refinement settings {sorted(unknown)}")
        converted = {
            name: value if fields[name].type == "bool" else _number(fields[name].type, value)
            for name, value in values.items()
        }
        return cls(**converted)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(type_name: str, value: Any) -> int | float:
    """A model file's number as the field's type (``int`` fields refuse fractions)."""
    if type_name == "int":
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(value)
    return float(value)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _paper() -> Config:
    """The published setting: 80x144x112 voxels (D, H, W), networks and optimiser as published,
    800 epochs of about 90 pairs at batch size 1."""
    return Config()


def _cpu_small() -> Config:
    """A small model that trains in hours on two CPU cores: 2.5 mm voxels, R as published,
    narrow generators and discriminators."""
    config = Config()
    config.model.generator = GeneratorConfig(ngf=8, blocks=3, dropout=0.0)
    config.model.discriminator = DiscriminatorConfig(ndf=8, layers=2)
    config.data.spacing = (2.5, 2.5, 2.5)
    config.data.size = (64, 80, 64)
    config.train.steps = 3000
    config.train.validate_every = 250
    config.train.checkpoint_every = 100
    config.train.image_every = 250
    return config


PRESETS = {"paper": _paper, "cpu-small": _cpu_small}


def _is_dataclass_type(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``kind`` and convert it (lists to tuples)."""
    origin = typing.get_origin(kind)
    arguments = typing.get_args(kind)
    if _is_dataclass_type(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(kind, value, where)
    if origin is Literal:
        if value not in arguments:
            raise ConfigError(f"{where} must be one of {list(arguments)}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in arguments:
            return None
        last_error: ConfigError | None = None
        for option in arguments:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                last_error = error
        raise last_error or ConfigError(f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_convert(v, arguments[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(arguments):
            raise ConfigError(f"{where} must have {len(arguments)} values, got {value!r}")
        return tuple(
            _convert(v, a, f"{where}[{i}]")
            for i, (v, a) in enumerate(zip(value, arguments, strict=True))
        )
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {kind!r}")


def _build(kind: type, values: dict[str, Any], where: str, base: Any = None) -> Any:
    hints = typing.get_type_hints(kind)
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in "
            f"{where or 'the configuration'}; known: {', '.join(sorted(known))}"
        )
    result = base if base is not None else kind()
    for name, value in values.items():
        path = f"{where}.{name}" if where else name
        current = getattr(result, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _build(type(current), value, path, current)
        else:
            setattr(result, name, _convert(value, hints[name], path))
    return result


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse the value of override {text!r}") from error
    return key.strip().split("."), value


def config_from_dict(values: dict[str, Any], preset: str = "paper") -> Config:
    """A configuration from ``preset`` updated with a nested mapping."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return _build(Config, values, "", PRESETS[preset]())


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str | None = None,
) -> Config:
    """Load a configuration: preset, then the YAML file at ``path``, then the overrides.

    The YAML file may name its preset with a top-level ``preset:`` key; ``preset`` given here
    wins. Overrides are ``section.field=value`` strings with YAML values, e.g.
    ``train.steps=500`` or ``data.size=[64,80,64]``.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections")
        values = dict(loaded)
    file_preset = values.pop("preset", "paper")
    for override in overrides:
        keys, value = _parse_override(override)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r} does not name a setting")
        node[keys[-1]] = value
    config = config_from_dict(values, preset or file_preset)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Check the relations between settings that types alone cannot."""
    if any(n % 16 for n in config.data.size):
        raise ConfigError(f"data.size must be multiples of 16, got {list(config.data.size)}")
    if any(s <= 0 for s in config.data.spacing):
        raise ConfigError("data.spacing must be positive")
    registration = config.model.registration
    if len(registration.encoder_features) != 5 or len(registration.decoder_features) != 6:
        raise ConfigError(
            "model.registration needs 5 encoder_features (full resolution, then four halvings) "
            "and 6 decoder_features (four upsampling stages, then two full-resolution convs)"
        )
    if config.train.batch_size < 1 or config.train.steps < 1:
        raise ConfigError("train.batch_size and train.steps must be at least 1")
    if config.data.x_modality == config.data.y_modality:
        raise ConfigError("data.x_modality and data.y_modality must differ")
    augmentation = config.data.augmentation
    for name in ("elastic_control_spacing_range_mm", "elastic_max_displacement_range_mm"):
        bounds = getattr(augmentation, name)
        if bounds is not None and not 0 <= bounds[0] <= bounds[1]:
            raise ConfigError(f"data.augmentation.{name} must be [low, high] with 0 <= low <= high")
    for name in ("undeformed_probability", "aligned_probability", "flip_probability"):
        if not 0 <= getattr(augmentation, name) <= 1:
            raise ConfigError(f"data.augmentation.{name} must be in [0, 1]")
    if config.loss.mode == "translation":
        misaligning = [
            name
            for name, value in (
                ("elastic", augmentation.elastic),
                ("affine", augmentation.affine),
                ("rigid_residual_deg", augmentation.rigid_residual_deg),
                ("rigid_residual_mm", augmentation.rigid_residual_mm),
            )
            if value
        ]
        if misaligning:
            raise ConfigError(
                "loss.mode=translation trains the translators on aligned pairs only, but "
                + ", ".join(f"data.augmentation.{name}" for name in misaligning)
                + " would misalign them: set "
                + " ".join(
                    f"data.augmentation.{name}={'false' if name in ('elastic', 'affine') else 0}"
                    for name in misaligning
                )
            )
        if config.loss.deformation > 0:
            raise ConfigError(
                "loss.mode=translation has no registration to supervise: set loss.deformation=0"
            )
    if config.train.init_translation and config.loss.mode not in ("cocycle", "sepcycle"):
        raise ConfigError(
            "train.init_translation starts the translators of a cocycle or sepcycle run"
        )
    if config.data.synthetic_repeats < 1:
        raise ConfigError("data.synthetic_repeats must be at least 1")
    if config.data.synthetic_shapes < 0:
        raise ConfigError("data.synthetic_shapes must not be negative")
    for name in ("validate_every", "checkpoint_every", "log_every", "image_every", "steps"):
        if getattr(config.train, name) < 1:
            raise ConfigError(f"train.{name} must be at least 1")
    for name in ("lr", "registration_lr"):
        value = getattr(config.optim, name)
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(f"optim.{name} must be a finite number > 0, got {value!r}")
    if not all(0 < s < math.inf for s in config.data.spacing):
        raise ConfigError(f"data.spacing must be finite and > 0 mm, got {config.data.spacing!r}")
    weights = {k: v for k, v in dataclasses.asdict(config.loss).items() if isinstance(v, float)}
    for name, value in weights.items():
        if not 0 <= value < math.inf:
            raise ConfigError(f"loss.{name} must be a finite number >= 0, got {value!r}")
    if not 0 <= config.optim.final_lr_fraction <= 1:
        raise ConfigError("optim.final_lr_fraction must be in [0, 1]")
    if not 0 <= config.loss.deformation_final_fraction <= 1:
        raise ConfigError("loss.deformation_final_fraction must be in [0, 1]")
    if not 0 <= config.optim.registration_average < 1:
        raise ConfigError(
            "optim.registration_average must be in [0, 1): 0 switches the average off, "
            "0.99 averages R's weights over about the last 100 steps"
        )
