"""Is each input plausible for the modality the model expects there? Checked before registering.

A model learns one pair of modalities; given an image of another kind (a CT to a T1/T2 MRI
model, an MRI where a CT model expects its CT), registration still "succeeds" and its result
means nothing. Two families are told apart, from intensities alone:

* **CT in Hounsfield units**: air is about -1000 HU, so a head CT has many voxels at or below
  ``AIR_HU`` (-500; ``cranium-ct``: 66 %). MRI intensities are arbitrary but not that negative
  (every MRI in ``../shared/data``, raw, z-scored or in [0, 1]: none), so
  ``HOUNSFIELD_AIR_FRACTION`` (1 %) of such voxels marks a CT.
* **Anything else** is taken for MRI, unless it matches the intensity statistics a model file
  records for a CT trained in other units (the bundled ``head-ct-mri`` was trained on a CT
  template in Rorden's Cormack units): the same range of head intensities within a factor
  ``RANGE_FACTOR`` and the same histogram shape within ``SHAPE_TOLERANCE``.

An MRI side refuses only a CT in Hounsfield units, and a CT side anything else that matches no
recorded CT (:func:`plausible`): MRI from any scanner passes where MRI is expected.

Within MRI no contrast (T1, T2, FLAIR) is judged: scanners differ too much for that.

A model file's optional ``intensity`` section (:func:`intensity_section`, written at export)
holds, for its x and y, the expected ``kind`` (``"ct"`` or ``"mr"``) and the
:class:`IntensityFeatures` of its training images; a model without it is judged by its
modality names (:func:`expected_kind`): a CT side then asks for Hounsfield units.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cocyclereg.errors import InputError

AIR_HU = -500.0
HOUNSFIELD_AIR_FRACTION = 0.01
HEAD_FRACTION = 0.1  # head voxels: above p0.5 + 0.1 (p99.5 - p0.5), as grid.foreground_mask
SHAPE_PERCENTILES = (10.0, 25.0, 50.0, 75.0, 90.0)
SHAPE_TOLERANCE = 0.15
RANGE_FACTOR = 2.0
_SAMPLE_LIMIT = 2_000_000  # voxels; larger images are sampled with a regular stride

KINDS = {"ct": "CT", "mr": "MRI"}


@dataclass(frozen=True)
class IntensityFeatures:
    """Scale-aware and scale-free intensity statistics of one image.

    ``air_fraction``: fraction of all voxels at or below ``AIR_HU``. ``head_percentiles``: the
    1st, 50th and 99th percentiles of the head voxels, in the image's own units. ``shape``: the
    ``SHAPE_PERCENTILES`` of the head voxels after scaling their 1st..99th percentiles to 0..1.
    """

    air_fraction: float
    head_percentiles: tuple[float, float, float]
    shape: tuple[float, ...]

    @property
    def hounsfield(self) -> bool:
        """Whether the image shows air in Hounsfield units: a CT."""
        return self.air_fraction >= HOUNSFIELD_AIR_FRACTION

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, document: dict) -> IntensityFeatures:
        return cls(
            float(document["air_fraction"]),
            tuple(float(v) for v in document["head_percentiles"]),
            tuple(float(v) for v in document["shape"]),
        )

    def matches(self, other: IntensityFeatures) -> bool:
        """Same head-intensity range (the 99th percentiles within ``RANGE_FACTOR``) and the
        same histogram shape (every shape percentile within ``SHAPE_TOLERANCE``)."""
        mine, theirs = self.head_percentiles[2], other.head_percentiles[2]
        if mine <= 0 or theirs <= 0 or max(mine, theirs) > RANGE_FACTOR * min(mine, theirs):
            return False
        return max(abs(a - b) for a, b in zip(self.shape, other.shape, strict=True)) <= (
            SHAPE_TOLERANCE
        )


def intensity_features(image: sitk.Image | np.ndarray) -> IntensityFeatures:
    """The :class:`IntensityFeatures` of an image (any shape; float or integer voxels)."""
    array = sitk.GetArrayFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)
    values = array.ravel()
    if values.size > _SAMPLE_LIMIT:
        values = values[:: -(-values.size // _SAMPLE_LIMIT)]
    values = values.astype(np.float64)
    air_fraction = float(np.mean(values <= AIR_HU)) if values.size else 0.0
    low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 0.0)
    head = values[values > low + HEAD_FRACTION * (high - low)]
    if head.size == 0:
        head = values if values.size else np.zeros(1)
    p1, p50, p99 = (float(v) for v in np.percentile(head, [1.0, 50.0, 99.0]))
    scaled = (head - p1) / (p99 - p1) if p99 > p1 else np.zeros_like(head)
    shape = tuple(float(v) for v in np.percentile(scaled, SHAPE_PERCENTILES))
    return IntensityFeatures(air_fraction, (p1, p50, p99), shape)


def kind_of_name(modality: str) -> str:
    """``"ct"`` for a modality name that says CT (``ct``, ``head-ct``, ``CT_bone``), else
    ``"mr"``."""
    return "ct" if "ct" in re.split(r"[^a-z0-9]+", modality.lower()) else "mr"


def intensity_section(modalities: dict[str, str], images: dict[str, Iterable]) -> dict:
    """A model file's ``intensity`` section: for each side (``x``, ``y``) its ``kind`` (CT if
    its name says so or its training images are in Hounsfield units) and the
    :class:`IntensityFeatures` of ``images[side]`` (paths or SimpleITK images)."""
    section = {}
    for side, name in modalities.items():
        features = [
            intensity_features(sitk.ReadImage(str(i)) if isinstance(i, str | Path) else i)
            for i in images.get(side, ())
        ]
        hounsfield = any(f.hounsfield for f in features)
        section[side] = {
            "kind": "ct" if hounsfield or kind_of_name(name) == "ct" else "mr",
            "images": [f.as_dict() for f in features],
        }
    return section


def expected_kind(modality: str, recorded: dict | None) -> str:
    """The family a model expects for ``modality``: its ``intensity`` record's ``kind``, else
    the name's (:func:`kind_of_name`)."""
    return str(recorded["kind"]) if recorded else kind_of_name(modality)


def _recorded_features(recorded: dict | None) -> list[IntensityFeatures]:
    return [IntensityFeatures.from_dict(d) for d in (recorded or {}).get("images", [])]


def likely_kind(features: IntensityFeatures, recorded_ct: Iterable[IntensityFeatures]) -> str:
    """``"ct"`` if the image is in Hounsfield units or matches a recorded CT, else ``"mr"``."""
    if features.hounsfield or any(features.matches(r) for r in recorded_ct):
        return "ct"
    return "mr"


def plausible(features: IntensityFeatures, wanted: str, recorded_ct: list) -> bool:
    """Whether an image with ``features`` may be of family ``wanted``. An MRI side refuses only
    a CT in Hounsfield units (an MRI whose range and histogram happen to resemble a CT in other
    units must not be refused); a CT side asks for Hounsfield units or a match with
    ``recorded_ct``, the model's training CT in other units."""
    if wanted == "mr":
        return not features.hounsfield
    return likely_kind(features, recorded_ct) == "ct"


def _evidence(features: IntensityFeatures) -> str:
    if features.hounsfield:
        return (
            f"{100 * features.air_fraction:.0f} % of its voxels are at or below {AIR_HU:g}, "
            "as air is in Hounsfield units"
        )
    low, middle, high = features.head_percentiles
    return (
        f"no voxel shows air in Hounsfield units (none at or below {AIR_HU:g}); its head "
        f"intensities run {low:.4g} .. {high:.4g} (median {middle:.4g})"
    )


@dataclass(frozen=True)
class Input:
    """One image to check: its role (``fixed``/``moving``), where it came from (a path or
    ``None``), its features and the model modality it is given as."""

    role: str
    source: str | None
    features: IntensityFeatures
    modality: str


def check_inputs(
    inputs: list[Input],
    model_name: str,
    modalities: tuple[str, str],
    intensity: dict,
    bundled: dict[str, tuple[str, str, dict]] | None = None,
) -> None:
    """Refuse (:class:`InputError`) any input that is not plausible for the modality it is
    given as, naming its likely modality and, from ``bundled`` (``{name: (x, y,
    intensity)}``), the model that fits both inputs.

    ``modalities`` is the model's ``(x, y)``, ``intensity`` its ``intensity`` section (may be
    empty). Each input must be plausible for the family its side expects (:func:`plausible`).
    """
    side_of = {modalities[0]: "x", modalities[1]: "y"}
    recorded_ct = [
        f
        for modality, side in zip(modalities, "xy", strict=True)
        if expected_kind(modality, intensity.get(side)) == "ct"
        for f in _recorded_features(intensity.get(side))
        if not f.hounsfield
    ]
    refusals, kinds = [], []
    for item in inputs:
        wanted = expected_kind(item.modality, intensity.get(side_of[item.modality]))
        kinds.append(wanted)
        if not plausible(item.features, wanted, recorded_ct):
            likely = kinds[-1] = "ct" if wanted == "mr" else "mr"
            where = f" ({item.source})" if item.source else ""
            refusals.append(
                f"The {item.role} image{where} looks like {KINDS[likely]}, not "
                f"{KINDS[wanted]}: {_evidence(item.features)}. The model {model_name} expects "
                f"{item.modality} ({KINDS[wanted]}) there."
            )
    if not refusals:
        return
    own = {expected_kind(m, intensity.get(s)): m for m, s in zip(modalities, "xy", strict=True)}
    if sorted(kinds) == sorted(own) and len(own) == 2:
        roles = dict(zip((i.role for i in inputs), kinds, strict=True))
        swap = " ".join(f"--{role}-modality {own[kind]}" for role, kind in roles.items())
        raise InputError(" ".join(refusals) + f" Did you mean {swap}?" + _FORCE.format(*modalities))
    kinds.sort()
    fitting = [
        name
        for name, (x, y, recorded) in (bundled or {}).items()
        if sorted(expected_kind(m, recorded.get(s)) for m, s in ((x, "x"), (y, "y"))) == kinds
    ]
    pair = " and ".join(KINDS[k] for k in kinds)
    advice = (
        f"A bundled model for {pair}: --model {' or --model '.join(fitting)}."
        if fitting
        else f"No bundled model registers {pair}."
    )
    raise InputError(" ".join(refusals) + f" {advice}" + _FORCE.format(*modalities))


_FORCE = (
    " Both images must show the same subject. If you are sure each image is the modality given "
    "(--moving-modality/--fixed-modality; default: moving {0}, fixed {1}), add --force-modality."
)


def bundled_intensities() -> dict[str, tuple[str, str, dict]]:
    """``{name: (x, y, intensity section)}`` of every bundled model (header reads only)."""
    from cocyclereg.model_file import read_model_info
    from cocyclereg.resources import list_bundled_models

    found = {}
    for name, (path, _) in list_bundled_models().items():
        info = read_model_info(path)
        found[name] = (info.x_modality, info.y_modality, info.intensity)
    return found


def check_registration_inputs(
    fixed: sitk.Image,
    moving: sitk.Image,
    info,
    moving_is_x: bool,
    model_name: str,
    sources: tuple[str | None, str | None] = (None, None),
) -> None:
    """:func:`check_inputs` for a registration with model ``info``
    (:class:`~cocyclereg.model_file.ModelInfo`): the moving image given as the model's x if
    ``moving_is_x`` else its y, the fixed image as the other; ``sources``: their paths
    (fixed, moving) for the message. About 0.1 s per image of 10 million voxels."""
    x, y = info.modalities
    inputs = [
        Input("moving", sources[1], intensity_features(moving), x if moving_is_x else y),
        Input("fixed", sources[0], intensity_features(fixed), y if moving_is_x else x),
    ]
    check_inputs(inputs, model_name, info.modalities, info.intensity, bundled_intensities())
