"""The inference model file: R's weights and everything inference needs, in one safe file.

The file is a `safetensors <https://github.com/huggingface/safetensors>`_ file: a JSON header
and raw tensor bytes. Loading parses JSON and copies numbers; nothing in the file can run code
(no pickle). The header's metadata entry ``cocyclereg`` holds a JSON document:

* ``format``: ``"cocyclereg-model"``, ``format_version``: this module's version.
* ``modalities``: ``{"x": name, "y": name}``; head ``x2y`` pulls x images onto y.
* ``grid``: ``spacing`` (mm, i j k), ``size`` (voxels, i j k, the training size),
  ``size_multiple`` and ``orientation`` (``"LPS"``: axis-aligned grid; ``"image"``: the fixed
  image's own axes).
* ``normalization``: ``{"x": {...}, "y": {...}}`` as :class:`cocyclereg.config.NormalizationConfig`.
* ``architecture``: the :class:`cocyclereg.config.RegistrationNetConfig` fields.
* ``refinement`` (optional): the recommended instance optimisation at inference,
  :class:`cocyclereg.config.Refinement` fields; absent: none.
* ``intensity`` (optional; releases that do not know it ignore it): for ``x`` and ``y`` the
  family the model expects (``kind``: ``"ct"`` or ``"mr"``) and intensity statistics of its
  training images (:mod:`cocyclereg.inference.plausibility`); absent: judged by the modality names.
* ``provenance`` and ``validation``: free-form JSON (training config, steps, data, metrics).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cocyclereg.config import Refinement
from cocyclereg.errors import InputError
from cocyclereg.inference.network_fields import mirroring_refusal
from cocyclereg.io import atomic_output
from cocyclereg.networks import DualHeadUNet
from cocyclereg.networks.registration import SIZE_MULTIPLE

FORMAT = "cocyclereg-model"
FORMAT_VERSION = 1
_METADATA_KEY = "cocyclereg"
_HEADER_LIMIT = 100 * 1024 * 1024


class ModelFileError(InputError):
    """A model file is not a CoCycleReg model, is damaged, or is from an unsupported version."""


@dataclass
class ModelInfo:
    """Everything but the weights: what the model registers and how its inputs are prepared."""

    x_modality: str
    y_modality: str
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    orientation: str
    normalization: dict[str, dict[str, Any]]
    architecture: dict[str, Any]
    size_multiple: int = SIZE_MULTIPLE
    provenance: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    refinement: Refinement = field(default_factory=Refinement)
    intensity: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        refusal = mirroring_refusal(self.orientation)
        if self.refinement.mirror_average and refusal:
            raise ValueError(refusal)

    @property
    def modalities(self) -> tuple[str, str]:
        return (self.x_modality, self.y_modality)

    @property
    def input_features(self) -> str:
        """What R takes: ``"images"`` or ``"mind"`` (files written before the choice existed
        hold no ``input_features``: they took the images)."""
        return self.architecture.get("input_features", "images")

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "modalities": {"x": self.x_modality, "y": self.y_modality},
                "grid": {
                    "spacing": list(self.spacing),
                    "size": list(self.size),
                    "size_multiple": self.size_multiple,
                    "orientation": self.orientation,
                },
                "normalization": self.normalization,
                "architecture": self.architecture,
                "provenance": self.provenance,
                "validation": self.validation,
                "refinement": self.refinement.as_dict(),
                **({"intensity": self.intensity} if self.intensity else {}),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> ModelInfo:
        try:
            document = json.loads(text)
            if document.get("format") != FORMAT:
                raise ModelFileError(f"{source} is not a CoCycleReg model file.")
            version = document.get("format_version")
            if version != FORMAT_VERSION:
                raise ModelFileError(
                    f"{source} has model format version {version}; this cocyclereg reads "
                    f"version {FORMAT_VERSION}. Use a matching cocyclereg release or re-export "
                    "the model."
                )
            grid = document["grid"]
            return cls(
                x_modality=str(document["modalities"]["x"]),
                y_modality=str(document["modalities"]["y"]),
                spacing=tuple(float(s) for s in grid["spacing"]),
                size=tuple(int(n) for n in grid["size"]),
                orientation=str(grid["orientation"]),
                size_multiple=int(grid["size_multiple"]),
                normalization=dict(document["normalization"]),
                architecture=dict(document["architecture"]),
                provenance=dict(document.get("provenance", {})),
                validation=dict(document.get("validation", {})),
                refinement=Refinement.from_dict(dict(document.get("refinement", {}))),
                intensity=dict(document.get("intensity", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, ModelFileError):
                raise
            raise ModelFileError(f"{source} has a damaged model description ({error}).") from error


def save_model(path: str | os.PathLike, network: DualHeadUNet, info: ModelInfo) -> Path:
    """Write R's weights and ``info`` to ``path`` atomically."""
    weights = {
        name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()
    }
    with atomic_output(path) as temporary:
        save_file(weights, str(temporary), metadata={_METADATA_KEY: info.to_json()})
        # safetensors creates the file owner-only (0600); give it the permissions of any file
        # the user creates, so a model saved in a shared folder is readable there.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
    return Path(path)


def _check_header(path: Path) -> None:
    """Refuse anything that does not start like a safetensors file (a pickle, a zip, text)."""
    with path.open("rb") as stream:
        head = stream.read(9)
    if len(head) < 9:
        raise ModelFileError(f"{path} is too short to be a CoCycleReg model file.")
    header_length = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or not 2 <= header_length <= min(_HEADER_LIMIT, path.stat().st_size - 8):
        raise ModelFileError(
            f"{path} is not a CoCycleReg model file (safetensors format). Pickled PyTorch "
            "checkpoints are refused because loading them can run code; export the model "
            "with `cocyclereg export`."
        )


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The description of a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    _check_header(path)
    with path.open("rb") as stream:
        header_length = int.from_bytes(stream.read(8), "little")
        try:
            header = json.loads(stream.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelFileError(f"{path} has a damaged header.") from error
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if _METADATA_KEY not in metadata:
        raise ModelFileError(f"{path} is a safetensors file but not a CoCycleReg model.")
    return ModelInfo.from_json(metadata[_METADATA_KEY], str(path))


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DualHeadUNet, ModelInfo]:
    """Load R and its description from a model file, on ``device``, in eval mode."""
    info = read_model_info(path)
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path} is damaged: {error}") from error
    try:
        network = DualHeadUNet(
            tuple(info.architecture["encoder_features"]),
            tuple(info.architecture["decoder_features"]),
            input_features=info.input_features,
        )
        network.load_state_dict(weights, strict=True)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise ModelFileError(
            f"{path}: weights do not match the described network ({error})."
        ) from error
    return network.to(device).eval(), info
