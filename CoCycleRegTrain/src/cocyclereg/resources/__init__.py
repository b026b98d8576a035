"""Files that ship inside the package: the bundled models and the demo pair.

* ``models/NAME.cocyclereg``: a trained model file, with its model card ``models/NAME.md``
  (the card's first ``#`` heading is its title).
* ``demo/``: the registration case ``cocyclereg demo`` runs (see ``demo/README.md``).

They are package data, so they are installed by ``pip install`` like the code.
"""

from __future__ import annotations

from pathlib import Path

from cocyclereg.errors import InputError

RESOURCES = Path(__file__).resolve().parent
MODELS = RESOURCES / "models"
DEMO = RESOURCES / "demo"
MODEL_SUFFIX = ".cocyclereg"
DEFAULT_MODEL = "brain-t1t2"


def models_dir() -> Path:
    """The folder of the bundled model files and their cards."""
    return MODELS


def demo_dir() -> Path:
    """The folder of the demo pair (images, labels, ``labels.json``, ``README.md``)."""
    return DEMO


def _card_title(card: Path) -> str:
    if not card.is_file():
        return ""
    for line in card.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def list_bundled_models() -> dict[str, tuple[Path, str]]:
    """Every bundled model: ``{name: (model file, title of its model card or "")}``."""
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {
        path.name[: -len(MODEL_SUFFIX)]: (path, _card_title(path.with_suffix(".md")))
        for path in sorted(folder.glob(f"*{MODEL_SUFFIX}"))
    }


def bundled_model(name: str = DEFAULT_MODEL) -> Path:
    """The path of the bundled model ``name``; :class:`InputError` if it is not installed."""
    path = models_dir() / f"{name}{MODEL_SUFFIX}"
    if not path.is_file():
        available = ", ".join(list_bundled_models()) or "none"
        raise InputError(
            f"The bundled model {name!r} is not installed (expected {path}; bundled models: "
            f"{available}). Reinstall cocyclereg, or give a model file with --model."
        )
    return path


def resolve_model(value: str | Path | None) -> Path:
    """A ``--model`` value as a file: an existing path, else the name of a bundled model
    (``head-ct-mri``), else the default bundled model when ``None``."""
    if value is None:
        return bundled_model()
    path = Path(value)
    if path.is_file() or path.suffix == MODEL_SUFFIX or len(path.parts) > 1:
        return path
    return bundled_model(str(value))  # a folder of that name in the working folder is not it
