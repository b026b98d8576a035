"""The inference model file: round trip, clear errors, and never executing code."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from cocyclereg.config import Refinement
from cocyclereg.model_file import (
    FORMAT_VERSION,
    ModelFileError,
    ModelInfo,
    load_model,
    read_model_info,
    save_model,
)
from cocyclereg.networks import DualHeadUNet


def _info() -> ModelInfo:
    return ModelInfo(
        x_modality="t1",
        y_modality="t2",
        spacing=(2.0, 2.0, 2.5),
        size=(64, 80, 64),
        orientation="LPS",
        normalization={
            "x": {"method": "percentile", "lower": 0.5, "upper": 99.5},
            "y": {"method": "window", "window": [-1000.0, 1000.0]},
        },
        architecture={
            "encoder_features": [8, 16, 16, 16, 16],
            "decoder_features": [16, 16, 16, 16, 8, 8],
            "head_init_std": 1e-5,
        },
        provenance={"steps": 12},
        validation={"dice": 0.8},
        refinement=Refinement(steps=9, smoothness=2.0, learning_rate=0.1, use_network=False),
    )


def test_round_trip_keeps_weights_and_description(tmp_path):
    torch.manual_seed(0)
    network = DualHeadUNet((8, 16, 16, 16, 16), (16, 16, 16, 16, 8, 8), head_init_std=0.1)
    path = save_model(tmp_path / "model.cocyclereg", network, _info())
    loaded, info = load_model(path)
    assert info == _info() and info.modalities == ("t1", "t2")
    x = torch.rand(1, 1, 16, 16, 16)
    for a, b in zip(network(x, x), loaded(x, x), strict=True):
        torch.testing.assert_close(a, b)
    assert not loaded.training
    assert read_model_info(path) == _info()


class _Exploit:
    """Unpickling this object would create a marker file: the attack a model file must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for name, writer in {
        "raw.pkl": lambda p: p.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)})),
        "torch.pt": lambda p: torch.save({"weights": _Exploit(marker)}, p),
    }.items():
        path = tmp_path / name
        writer(path)
        with pytest.raises(ModelFileError, match="not a CoCycleReg model file"):
            load_model(path)
        assert not marker.exists()
    assert zipfile.is_zipfile(tmp_path / "torch.pt")  # the real PyTorch checkpoint format


def test_damaged_foreign_and_future_files(tmp_path):
    good = save_model(
        tmp_path / "good.cocyclereg",
        DualHeadUNet((8, 16, 16, 16, 16), (16, 16, 16, 16, 8, 8)),
        _info(),
    )
    truncated = tmp_path / "truncated.cocyclereg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        load_model(truncated)

    from safetensors.torch import load_file as safetensors_load
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="not a CoCycleReg model"):
        load_model(foreign)

    future = tmp_path / "future.cocyclereg"
    text = _info().to_json().replace(f'"format_version": {FORMAT_VERSION}', '"format_version": 99')
    save_file({"w": torch.zeros(2)}, str(future), metadata={"cocyclereg": text})
    with pytest.raises(ModelFileError, match="version 99"):
        load_model(future)

    bad_refinement = tmp_path / "bad-refinement.cocyclereg"
    text = _info().to_json().replace('"steps": 9', '"steps": -9')
    save_file({"w": torch.zeros(2)}, str(bad_refinement), metadata={"cocyclereg": text})
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(bad_refinement)

    not_a_switch = tmp_path / "not-a-switch.cocyclereg"
    text = _info().to_json().replace('"use_network": false', '"use_network": "no"')
    save_file({"w": torch.zeros(2)}, str(not_a_switch), metadata={"cocyclereg": text})
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(not_a_switch)

    older = tmp_path / "older.cocyclereg"  # written before refinement existed: none
    document = json.loads(_info().to_json())
    del document["refinement"]
    save_model(older, DualHeadUNet((8, 16, 16, 16, 16), (16, 16, 16, 16, 8, 8)), _info())
    _, stored = load_model(older)
    assert stored.refinement.steps == 9
    save_file(
        safetensors_load(older),
        str(older),
        metadata={"cocyclereg": json.dumps(document)},
    )
    assert read_model_info(older).refinement == Refinement()
    document["refinement"] = {"steps": 4}  # before use_network existed: the network starts
    save_file(safetensors_load(older), str(older), metadata={"cocyclereg": json.dumps(document)})
    assert read_model_info(older).refinement == Refinement(steps=4, use_network=True)

    mismatched = tmp_path / "mismatched.cocyclereg"
    save_model(mismatched, DualHeadUNet(), _info())  # weights of another architecture
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(mismatched)

    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.cocyclereg")


def test_a_saved_model_has_the_permissions_of_any_new_file(tmp_path):
    import os

    network = DualHeadUNet((8, 16, 16, 16, 16), (16, 16, 16, 16, 8, 8))
    path = save_model(tmp_path / "m.cocyclereg", network, _info())
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert oct(os.stat(path).st_mode & 0o777) == oct(os.stat(plain).st_mode & 0o777)


def test_the_input_features_travel_with_the_model_and_old_files_mean_images(tmp_path):
    torch.manual_seed(0)
    network = DualHeadUNet(
        (8, 16, 16, 16, 16), (16, 16, 16, 16, 8, 8), head_init_std=0.1, input_features="mind"
    )
    info = _info()
    mind_info = ModelInfo(
        **{**info.__dict__, "architecture": {**info.architecture, "input_features": "mind"}}
    )
    loaded, _ = load_model(save_model(tmp_path / "mind.cocyclereg", network, mind_info))
    assert loaded.input_features == "mind"
    x, y = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    for a, b in zip(network(x, y), loaded(x, y), strict=True):
        torch.testing.assert_close(a, b)
    # A file written before the option existed has no "input_features": it took the images.
    plain = DualHeadUNet((8, 16, 16, 16, 16), (16, 16, 16, 16, 8, 8))
    assert "input_features" not in info.architecture
    assert (
        load_model(save_model(tmp_path / "plain.cocyclereg", plain, info))[0].input_features
        == "images"
    )
    # Weights of one kind under the description of the other are refused, saying so.
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(save_model(tmp_path / "wrong.cocyclereg", network, info))
