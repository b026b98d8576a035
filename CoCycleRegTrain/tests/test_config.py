"""The typed configuration: presets, YAML files, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocyclereg.config import PRESETS, ConfigError, load_config


def test_paper_preset_is_the_published_setting():
    config = load_config(preset="paper")
    assert config.data.size == (112, 144, 80)  # (i, j, k) = (W, H, D): 80x144x112 as (D, H, W)
    assert config.model.generator.ngf == 64 and config.model.generator.blocks == 9
    assert config.model.generator.dropout == 0.5 and config.model.generator.padding == "replicate"
    assert config.model.discriminator.ndf == 64 and config.model.discriminator.layers == 3
    assert config.optim.lr == 1e-4 and config.optim.betas == (0.5, 0.999)
    assert config.optim.weight_decay == 1e-4
    assert config.optim.clip_discriminator == config.optim.clip_generator == 20
    assert config.optim.clip_registration is None
    assert (config.loss.similarity, config.loss.gan, config.loss.cycle, config.loss.smooth) == (
        1,
        1,
        1,
        1,
    )


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "preset: cpu-small\n"
        "data:\n  x_modality: ct\n  y_modality: t1\n"
        "  x_normalization: {method: window, window: [-200, 300]}\n"
        "train:\n  steps: 40\n"
    )
    config = load_config(path, ["train.steps=7", "data.size=[32, 48, 32]", "loss.mode=sepcycle"])
    assert config.model.generator.ngf == PRESETS["cpu-small"]().model.generator.ngf
    assert config.data.x_modality == "ct" and config.data.x_normalization.window == (-200.0, 300.0)
    assert config.train.steps == 7 and config.data.size == (32, 48, 32)
    assert config.loss.mode == "sepcycle"
    assert load_config(path, preset="paper").model.generator.ngf == 64


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown setting stepz"),
        ("train.steps=many", "must be an integer"),
        ("data.size=[60, 64, 64]", "multiples of 16"),
        ("loss.mode=nemar", "must be one of"),
        ("data.spacing=[1, 2]", "must have 3 values"),
        ("steps", "section.field=value"),
        ("data.y_modality=t1", "must differ"),
    ],
)
def test_bad_settings_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_configuration_loads_and_passes_the_checks(path):
    config = load_config(path)
    assert config.data.train or config.data.synthetic
    assert config.train.output.startswith("runs/")  # never inside the package
