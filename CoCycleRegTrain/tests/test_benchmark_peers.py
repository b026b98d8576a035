"""The benchmark's tuned peer settings (benchmarks/peers.py): parameter maps and overrides."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("benchmark_peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_elastix_maps_schedule_every_level(peers):
    affine, bspline = peers.elastix_tuned_maps(peers.ElastixTuned())
    assert affine["Transform"] == ["AffineTransform"]
    assert bspline["Transform"] == ["BSplineTransform"]
    for parameter_map in (affine, bspline):
        # elastix reads one shrink factor per axis and level: 3 x 4 values, coarsest first.
        assert parameter_map["NumberOfResolutions"] == ["4"]
        assert parameter_map["ImagePyramidSchedule"] == [
            *["8"] * 3, *["4"] * 3, *["2"] * 3, *["1"] * 3
        ]  # fmt: skip
        assert parameter_map["NumberOfHistogramBins"] == ["32"]
        assert parameter_map["NumberOfSpatialSamples"] == ["5000"]
    assert bspline["GridSpacingSchedule"] == ["8", "4", "2", "1"]
    assert bspline["Metric"] == ["AdvancedMattesMutualInformation", "TransformBendingEnergyPenalty"]
    assert bspline["Metric1Weight"] == ["100"]
    # Only the last map writes the warped image the benchmark keeps.
    assert (affine["WriteResultImage"], bspline["WriteResultImage"]) == (["false"], ["true"])


def test_overrides_change_one_run_only(peers):
    settings = peers.with_overrides(
        [
            "elastix-tuned.bending_weight=1000",
            "elastix-tuned.resolutions=3",
            "ants-tuned.reg_iterations=100,70,50,0",
            "ants-tuned.initial_stage=affine",
        ]
    )
    _, bspline = peers.elastix_tuned_maps(settings["elastix-tuned"])
    assert bspline["Metric1Weight"] == ["1000"]
    assert bspline["GridSpacingSchedule"] == ["4", "2", "1"]
    assert len(bspline["ImagePyramidSchedule"]) == 9
    arguments = peers.ants_tuned_arguments(settings["ants-tuned"])
    assert arguments["reg_iterations"] == (100, 70, 50, 0)
    assert arguments["type_of_transform"] == "SyNOnly"
    assert settings["ants-tuned"].initial_stage == "affine"
    # The documented defaults are untouched.
    assert peers.TUNED["elastix-tuned"].bending_weight == 100.0
    assert peers.TUNED["ants-tuned"].reg_iterations == (100, 70, 50, 20)


@pytest.mark.parametrize(
    "override, message",
    [
        ("elastix-tuned.bending=10", "has no setting 'bending'"),
        ("elastix.bending_weight=10", "METHOD.FIELD=VALUE"),
        ("ants-tuned.grad_step", "METHOD.FIELD=VALUE"),
    ],
)
def test_bad_override_is_refused(peers, override, message):
    with pytest.raises(SystemExit, match=message):
        peers.with_overrides([override])
