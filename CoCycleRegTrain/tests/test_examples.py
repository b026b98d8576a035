"""Every example in every ``--help`` and in the README works when copied: each parses with the
package's own parser, names bundled models that exist and configuration files that load; the
registration and evaluation examples run as written, in a folder holding real scans under the
example's file names."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil

import pytest
from conftest import REPOSITORY

from cocyclereg.cli import build_parser, main
from cocyclereg.config import load_config
from cocyclereg.resources import list_bundled_models, resolve_model


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _commands(text: str) -> list[str]:
    """The ``cocyclereg ...`` command lines of ``text`` (backslash continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", text)
    return [
        line.strip().split(" && ")[-1]
        for line in text.splitlines()
        if re.match(r"\s*(pip install \S+ && )?cocyclereg \w", line)
    ]


def help_examples() -> list[str]:
    parser = build_parser()
    found = _commands(parser.format_help())
    for command in _subparsers(parser).values():
        found += _commands(command.format_help())
    return found


def readme_examples() -> list[str]:
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    return [c for block in blocks for c in _commands(block)]


def test_there_are_examples_for_every_command_a_user_starts_with():
    commands = {shlex.split(c)[1] for c in help_examples() + readme_examples()}
    assert {"demo", "register", "evaluate", "models", "train"} <= commands


@pytest.mark.parametrize("example", sorted(set(help_examples() + readme_examples())))
def test_each_example_parses_and_names_what_exists(example):
    words = shlex.split(example)
    assert words[0] == "cocyclereg"
    arguments = build_parser().parse_args(words[1:])  # SystemExit on an unknown option
    if getattr(arguments, "model", None) is not None:
        assert resolve_model(arguments.model).is_file()
    for name in getattr(arguments, "models", None) or []:
        assert name in list_bundled_models()
    if getattr(arguments, "config", None) is not None:
        load_config(REPOSITORY / arguments.config, arguments.overrides)


def _scans(data_dir, folder):
    """Real files under the examples' names: the real misaligned T1/T2 pair of a development
    subject with head masks as labels, and the CT template with the SPM12 T1 template."""
    import numpy as np
    import SimpleITK as sitk

    from cocyclereg.geometry.grid import foreground_mask

    subject = data_dir / "brain-t1t2" / "TCGA-FG-6692-unregistered"
    names = {
        "t1.nii.gz": subject / "t1.nii.gz",
        "t2.nii.gz": subject / "t2.nii.gz",
        "ct.nii.gz": data_dir / "templates" / "clinical-ct" / "scct.nii",
        "mri.nii.gz": data_dir / "templates" / "spm12" / "T1.nii",
    }
    for name, source in names.items():
        image = sitk.ReadImage(str(source))
        sitk.WriteImage(image, str(folder / name))
        if name.startswith("t"):
            labels = sitk.GetImageFromArray(foreground_mask(image).astype(np.uint8))
            labels.CopyInformation(image)
            sitk.WriteImage(labels, str(folder / name.replace(".nii", "_labels.nii")))


@pytest.mark.slow
def test_the_register_and_evaluate_examples_run_as_written(data_dir, tmp_path, monkeypatch):
    examples = [
        e
        for e in dict.fromkeys(help_examples() + readme_examples())
        if shlex.split(e)[1] in ("register", "evaluate")
    ]
    assert len(examples) >= 3
    _scans(data_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    # Registrations first: evaluation examples read their transforms.
    for example in sorted(examples, key=lambda e: "evaluate" in e):
        assert main(shlex.split(example)[1:]) == 0, example
    assert (tmp_path / "t1_to_t2.h5").is_file() and (tmp_path / "ct_to_mri.h5").is_file()


def test_models_lists_names_modalities_and_cards_of_bundled_models_and_files(tmp_path, capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name, (path, _) in list_bundled_models().items():
        assert f"--model {name}" in listing
        assert str(path.with_suffix(".md")) in listing and path.with_suffix(".md").is_file()
    assert "t1 (MRI) and t2 (MRI)" in listing and "ct (CT) and mri (MRI)" in listing
    copy = tmp_path / "mine.cocyclereg"
    shutil.copy(resolve_model("head-ct-mri"), copy)
    assert main(["models", str(copy)]) == 0
    listing = capsys.readouterr().out
    assert f"[--model {copy}]" in listing and "card:         none" in listing
    assert "ct (CT) and mri (MRI)" in listing and "brain-t1t2" not in listing


def test_register_help_lists_the_bundled_models_modality_names(monkeypatch):
    from cocyclereg.model_file import read_model_info

    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside names
    text = " ".join(_subparsers(build_parser())["register"].format_help().split())
    for name, (path, _) in list_bundled_models().items():
        x, y = read_model_info(path).modalities
        assert f"{name}: {x}, {y}" in text
    assert "--force-modality" in text and "same subject" in text
