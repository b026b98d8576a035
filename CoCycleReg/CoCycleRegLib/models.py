"""Model files the module offers: the bundled ones (by card name) and any file from disk.

The description is read from the safetensors header with the standard library only, so the
panel can show a model's modalities before torch or the ``cocyclereg`` package is installed.
It is the same document ``cocyclereg.model_file.read_model_info`` parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODEL_SUFFIX = ".cocyclereg"
_HEADER_LIMIT = 100 * 1024 * 1024


class ModelCardError(ValueError):
    """The file is not a readable CoCycleReg model."""


@dataclass
class ModelCard:
    """What the panel shows about a model."""

    path: Path
    name: str
    x_modality: str
    y_modality: str
    spacing: tuple
    intended_use: str
    provenance: dict
    refine_steps: int = 0  # instance-optimisation steps the model recommends at inference
    use_network: bool = True  # False: it recommends the refinement alone (--no-network)
    fine_steps: int = 0  # steps of the finer refinement level it recommends (0: none)
    fine_spacing_mm: float = 0.0  # that level's voxel size

    @property
    def modalities(self) -> tuple[str, str]:
        return (self.x_modality, self.y_modality)

    def description(self) -> str:
        spacing = " × ".join(f"{s:g}" for s in self.spacing)
        lines = [
            f"<b>{self.name}</b>",
            f"Registers {self.x_modality} ↔ {self.y_modality} (model grid {spacing} mm).",
        ]
        if self.intended_use:
            lines.append(f"Intended use: {self.intended_use}")
        steps = self.provenance.get("steps")
        if steps is not None:
            lines.append(f"Training steps: {steps}")
        if self.refine_steps:
            lines.append(f"Refines each pair in {self.refine_steps} steps unless told not to.")
        if self.fine_steps and self.fine_spacing_mm:
            lines.append(
                f"Then {self.fine_steps} more on {self.fine_spacing_mm:g} mm voxels, from the "
                "images at full resolution."
            )
        if not self.use_network:
            lines.append(
                "Recommends the refinement alone, from the pre-aligned images: starting from "
                "its network measured no better on unseen subjects (see its model card)."
            )
        lines.append("Research software, not a medical device.")
        return "<br>".join(lines)


def read_model_card(path) -> ModelCard:
    """The card of a model file, from its safetensors header (no weights loaded)."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            if not 2 <= length <= min(_HEADER_LIMIT, path.stat().st_size - 8):
                raise ModelCardError(f"{path.name} is not a CoCycleReg model file.")
            header = json.loads(stream.read(length))
        document = json.loads(header["__metadata__"]["cocyclereg"])
        if document.get("format") != "cocyclereg-model":
            raise ModelCardError(f"{path.name} is not a CoCycleReg model file.")
        provenance = dict(document.get("provenance", {}))
        refinement = document.get("refinement", {})
        return ModelCard(
            path=path,
            name=str(provenance.get("name") or path.stem),
            x_modality=str(document["modalities"]["x"]),
            y_modality=str(document["modalities"]["y"]),
            spacing=tuple(float(s) for s in document["grid"]["spacing"]),
            intended_use=str(provenance.get("intended_use", "")),
            provenance=provenance,
            refine_steps=int(refinement.get("steps", 0)),
            use_network=refinement.get("use_network", True) is not False,
            fine_steps=int(refinement.get("fine_steps", 0)),
            fine_spacing_mm=float(refinement.get("fine_spacing_mm", 0.0)),
        )
    except ModelCardError:
        raise
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        raise ModelCardError(
            f"{path.name} is not a readable CoCycleReg model ({error})."
        ) from error


def bundled_models(folder) -> list[ModelCard]:
    """The readable model files in ``folder`` (the module's Resources/Models), by name."""
    folder = Path(folder)
    cards = []
    for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")) if folder.is_dir() else []:
        try:
            cards.append(read_model_card(path))
        except ModelCardError:
            continue
    return sorted(cards, key=lambda card: card.name.lower())


def modalities_for(card: ModelCard, moving_is_x: bool) -> tuple[str, str]:
    """(moving, fixed) modality names when the moving volume is the model's x (or y)."""
    return (card.x_modality, card.y_modality) if moving_is_x else (card.y_modality, card.x_modality)
