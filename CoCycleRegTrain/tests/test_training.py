"""Training on real scans: learning, exact resume after a kill, export, DDP gradients."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cocyclereg.config import load_config
from cocyclereg.errors import CoCycleRegError
from cocyclereg.learning.training import Trainer, train
from cocyclereg.model_file import load_model

SCRIPTS = Path(__file__).parent / "scripts"

# Low resolution so a run takes seconds on two CPU cores: 5 mm voxels, 32x48x32.
FAST = [
    "data.spacing=[5.0, 5.0, 5.0]",
    "data.size=[32, 48, 32]",
    "model.generator.ngf=4",
    "model.generator.blocks=1",
    "model.discriminator.ndf=4",
    "train.log_every=1",
    "train.num_threads=2",
]


@pytest.fixture(scope="module")
def pair_csv(data_dir, tmp_path_factory) -> Path:
    """One real co-registered T1/T2 subject with its tumour labels, as a CSV of one case."""
    folder = data_dir / "brain-t1t2" / "TCGA-DU-7294"
    path = tmp_path_factory.mktemp("cases") / "cases.csv"
    path.write_text(
        f"name,x,y,labels\nDU-7294,{folder / 't1.nii.gz'},{folder / 't2.nii.gz'},"
        f"{folder / 'tumor.nii.gz'}\n"
    )
    return path


def _settings(pair_csv: Path, output: Path, *extra: str) -> list[str]:
    return [f"data.train={pair_csv}", f"train.output={output}", *FAST, *extra]


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


def _cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cocyclereg", "train", "--preset", "cpu-small", *arguments]


@pytest.mark.slow
def test_short_training_on_a_real_pair_reduces_the_losses_and_validates(pair_csv, tmp_path):
    run = tmp_path / "run"
    config = load_config(
        preset="cpu-small",
        overrides=_settings(
            pair_csv,
            run,
            f"data.validation={pair_csv}",
            "train.steps=40",
            "train.validate_every=20",
            "train.checkpoint_every=20",
            "optim.registration_warmup_steps=10",
        ),
    )
    trainer = Trainer(config)
    initial_registration = {
        k: v.clone() for k, v in trainer.networks.registration.state_dict().items()
    }
    for _ in range(10):  # warm-up: R stays at its near-identity start
        trainer.train_step(trainer.batch_for_step(trainer.step))
        trainer.step += 1
    for name, value in trainer.networks.registration.state_dict().items():
        assert torch.equal(value, initial_registration[name]), name
    del trainer

    model_path = train(
        load_config(
            preset="cpu-small",
            overrides=_settings(
                pair_csv,
                run.with_name("full"),
                f"data.validation={pair_csv}",
                "train.steps=40",
                "train.validate_every=20",
                "train.checkpoint_every=20",
                "train.image_every=20",
            ),
        )
    )
    losses = _losses(run.with_name("full"))
    assert [r["step"] for r in losses] == list(range(1, 41))

    def mean(records, key):
        return sum(r[key] for r in records) / len(records)

    assert mean(losses[-10:], "similarity") < 0.8 * mean(losses[:10], "similarity")
    assert mean(losses[-10:], "cycle") < 0.8 * mean(losses[:10], "cycle")
    validation = [
        json.loads(line)
        for line in (run.with_name("full") / "validation.jsonl").read_text().splitlines()
    ]
    assert [v["step"] for v in validation] == [20, 40]
    for record in validation:
        assert 0 <= record["dice"] <= 1 and 0 < record["identity_dice"] <= 1
        assert record["hd95"] >= 0 and 0 <= record["folding_percent"] <= 100
    _, info = load_model(model_path)
    for record in validation:
        assert record["identity_tre"] > 0 and record["tre"] >= 0
    best = min(validation, key=lambda v: (v["tre"], v["folding_percent"]))
    assert info.validation["best"]["step"] == best["step"]
    assert info.modalities == ("t1", "t2")
    assert info.spacing == (5.0, 5.0, 5.0) and info.size == (32, 48, 32)
    assert info.provenance["steps"] == 40 and info.provenance["training_cases"] == ["DU-7294"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.with_name("full") / "tensorboard")).Reload()
    assert {"train/similarity", "train/cycle", "validation/dice"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("validation/dice")] == [20, 40]
    assert len(events.Tags()["images"]) == 1


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_losses(pair_csv, tmp_path):
    steps = ["train.steps=40", "train.checkpoint_every=1"]
    whole = tmp_path / "whole"
    subprocess.run(_cli(*_settings(pair_csv, whole, *steps)), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _cli(*_settings(pair_csv, killed, *steps)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = killed / "losses.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert len(_losses(killed)) < 40
    subprocess.run(
        _cli("--resume", *_settings(pair_csv, killed, *steps)), check=True, capture_output=True
    )
    assert _losses(killed) == _losses(whole)
    assert [r["step"] for r in _losses(killed)] == list(range(1, 41))


def test_an_existing_run_is_never_overwritten(pair_csv, tmp_path):
    run = tmp_path / "run"
    config = load_config(preset="cpu-small", overrides=_settings(pair_csv, run, "train.steps=1"))
    train(config)
    from cocyclereg.cli import main

    assert (
        main(
            [
                "export",
                "--run",
                str(run),
                "--output",
                str(tmp_path / "again.cocyclereg"),
                "--name",
                "Brain T1-T2",
                "--intended-use",
                "research",
                "--refine-steps",
                "12",
            ]
        )
        == 0
    )
    network, info = load_model(tmp_path / "again.cocyclereg")
    exported, _ = load_model(run / "model.cocyclereg")
    for a, b in zip(network.state_dict().values(), exported.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert info.provenance["steps"] == 1
    assert (info.provenance["name"], info.provenance["intended_use"]) == ("Brain T1-T2", "research")
    assert info.refinement.steps == 12
    # The training images' intensities, for the input check at registration (plausibility).
    for side, kind in (("x", "mr"), ("y", "mr")):
        assert info.intensity[side]["kind"] == kind and len(info.intensity[side]["images"]) == 1
    assert info.intensity == load_model(run / "model.cocyclereg")[1].intensity
    assert load_model(run / "model.cocyclereg")[1].refinement.steps == 0  # training's own export
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(CoCycleRegError, match="--resume"):
        Trainer(config)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    # A resume may run longer; a change of what the state means is refused, naming it, and
    # the run's config.yaml stays as it was.
    recorded = (run / "config.yaml").read_bytes()
    for override, named in (
        ("loss.smooth=3.0", "loss.smooth (1.0 -> 3.0)"),
        ("train.seed=7", "train.seed (0 -> 7)"),
        ("optim.weight_decay=0.5", "optim.weight_decay"),
    ):
        changed = load_config(
            preset="cpu-small", overrides=_settings(pair_csv, run, "train.steps=2", override)
        )
        with pytest.raises(CoCycleRegError, match=re.escape(named)):
            Trainer(changed, resume=True)
        assert (run / "config.yaml").read_bytes() == recorded
    longer = load_config(preset="cpu-small", overrides=_settings(pair_csv, run, "train.steps=2"))
    assert Trainer(longer, resume=True).step == 1
    # A checkpoint saved before a setting existed resumes with that setting at its default.
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    older = json.loads(state["config"])
    del older["loss"]["deformation_final_fraction"]
    state["config"] = json.dumps(older)
    torch.save(state, run / "checkpoints" / "last.pt")
    assert Trainer(longer, resume=True).step == 1
    # A damaged checkpoint: a message, not torch's advice to load it unsafely.
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CoCycleRegError, match="is not a readable cocyclereg checkpoint"):
        Trainer(longer, resume=True)


def test_a_new_run_never_mixes_with_an_earlier_runs_files(pair_csv, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"an interrupted run's best")
    config = load_config(preset="cpu-small", overrides=_settings(pair_csv, run, "train.steps=1"))
    with pytest.raises(CoCycleRegError, match=r"files of an earlier run \(checkpoints/best.pt\)"):
        Trainer(config)
    assert not (run / "config.yaml").exists()


def test_a_line_cut_short_by_a_stop_does_not_block_the_resume(pair_csv, tmp_path):
    run = tmp_path / "run"
    config = load_config(preset="cpu-small", overrides=_settings(pair_csv, run, "train.steps=1"))
    train(config)
    with (run / "losses.jsonl").open("a") as stream:
        stream.write('{"step": 2, "total"')  # killed while writing
    longer = load_config(preset="cpu-small", overrides=_settings(pair_csv, run, "train.steps=2"))
    Trainer(longer, resume=True)
    assert [record["step"] for record in _losses(run)] == [1]


def test_export_refuses_a_translators_run_and_an_output_among_the_checkpoints(
    pair_csv, tmp_path, capsys
):
    from cocyclereg.cli import main

    run = tmp_path / "run"
    config = load_config(preset="cpu-small", overrides=_settings(pair_csv, run, "train.steps=1"))
    train(config)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert main(["export", "--run", str(run), "--output", str(last)]) == 2
    assert "inside the run's checkpoints folder" in capsys.readouterr().err
    assert last.read_bytes() == before
    translators = tmp_path / "translators"
    config = load_config(
        preset="cpu-small",
        overrides=_settings(
            pair_csv,
            translators,
            "train.steps=1",
            "loss.mode=translation",
            "data.augmentation.elastic=false",
        ),
    )
    train(config)
    output = tmp_path / "t.cocyclereg"
    assert main(["export", "--run", str(translators), "--output", str(output)]) == 1
    assert "trained the translators alone" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.slow
def test_distributed_gradients_match_a_single_process(pair_csv, tmp_path):
    settings = [f"data.train={pair_csv}", *FAST[:5], "train.num_threads=1"]
    single, distributed = tmp_path / "single.pt", tmp_path / "distributed.pt"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "one_training_step.py"),
            str(single),
            f"train.output={tmp_path / 'single'}",
            "train.batch_size=2",
            *settings,
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPTS / "one_training_step.py"),
            str(distributed),
            f"train.output={tmp_path / 'distributed'}",
            "train.batch_size=1",
            *settings,
        ],
        check=True,
        capture_output=True,
    )
    expected = torch.load(single, weights_only=True)["gradients"]
    actual = torch.load(distributed, weights_only=True)["gradients"]
    assert set(actual) == set(expected) and len(expected) > 50
    for name, gradient in expected.items():
        # Biases in front of an instance norm have a true gradient of zero: both runs must
        # show only rounding noise there. Everything else agrees to float32 summation order.
        if (
            not name.startswith("registration")
            and name.endswith(".bias")
            and gradient.norm() < 1e-4
        ):
            assert actual[name].norm() < 1e-4, name
            continue
        # float32 sums over a batch of 2 and over two all-reduced batches of 1 differ in order;
        # the 7x7x7 stem convolutions cancel most of their terms, so allow 1 % per tensor.
        # A DDP fault (no all-reduce, sum instead of mean) is off by 50-100 %.
        error = (actual[name] - gradient).norm().item()
        assert error <= 1e-2 * gradient.norm().item() + 1e-7, (name, error)
    every_expected = torch.cat([g.flatten() for g in expected.values()])
    every_actual = torch.cat([actual[name].flatten() for name in expected])
    overall = (every_actual - every_expected).norm() / every_expected.norm()
    assert overall < 1e-3, overall
    registration = [g for name, g in expected.items() if name.startswith("registration.head")]
    assert all(g.norm() > 1e-3 for g in registration)


@pytest.mark.slow
def test_mixed_precision_and_checkpointing_step_matches_float32(pair_csv, tmp_path):
    def first_step(name: str, *extra: str) -> dict[str, float]:
        config = load_config(
            preset="cpu-small", overrides=_settings(pair_csv, tmp_path / name, *extra)
        )
        trainer = Trainer(config)
        return trainer.train_step(trainer.batch_for_step(0))

    reference = first_step("float32")
    lean = first_step("lean", "train.mixed_precision=true", "train.activation_checkpointing=true")
    for term in ("similarity", "cycle", "gan", "discriminator"):
        assert lean[term] == pytest.approx(reference[term], rel=0.05), term


def test_registration_learning_rate_is_separate_when_set(pair_csv, tmp_path):
    plain = Trainer(load_config(preset="cpu-small", overrides=_settings(pair_csv, tmp_path / "a")))
    assert plain.optimizer_r.param_groups[0]["lr"] == plain.optimizer_g.param_groups[0]["lr"]
    faster = Trainer(
        load_config(
            preset="cpu-small",
            overrides=_settings(pair_csv, tmp_path / "b", "optim.registration_lr=5e-4"),
        )
    )
    assert faster.optimizer_r.param_groups[0]["lr"] == 5e-4
    assert faster.optimizer_g.param_groups[0]["lr"] == faster.optimizer_d.param_groups[0]["lr"]
    assert faster.optimizer_g.param_groups[0]["lr"] == 1e-4


def test_each_generator_and_discriminator_is_clipped_on_its_own(pair_csv, tmp_path):
    """As published: every network's gradient norm is clipped to the limit by itself, so one
    network's large gradient never shrinks another's."""
    limit = 1e-6  # below every network's gradient norm, so each one is clipped
    trainer = Trainer(
        load_config(
            preset="cpu-small",
            overrides=_settings(
                pair_csv,
                tmp_path / "run",
                f"optim.clip_generator={limit}",
                f"optim.clip_discriminator={limit}",
            ),
        )
    )
    trainer.train_step(trainer.batch_for_step(0))
    for name in ("translate_x2y", "translate_y2x", "discriminate_x", "discriminate_y"):
        gradients = [p.grad for p in getattr(trainer.networks, name).parameters()]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients]))
        assert float(norm) == pytest.approx(limit, rel=1e-3), name


def test_residual_error_is_zero_for_the_exact_inverse_and_the_deformation_for_identity():
    from cocyclereg.geometry.spatial_transformer import SpatialTransformer
    from cocyclereg.learning.training import residual_error_mm

    torch.manual_seed(0)
    shape = (1, 3, 12, 14, 10)
    deformation = torch.nn.functional.interpolate(
        torch.randn(1, 3, 3, 4, 3, dtype=torch.float64), size=shape[2:], mode="trilinear"
    )
    warp = SpatialTransformer("bilinear")
    spacing = (2.0, 1.0, 3.0)
    inverse = -deformation  # fixed point of flow = -D(p + flow(p))
    for _ in range(60):
        inverse = -warp(deformation, inverse)
    exact = residual_error_mm(inverse, deformation, "x", spacing, warp)
    inner = (slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert float(exact[inner].max()) < 1e-6
    identity = residual_error_mm(
        torch.zeros(shape, dtype=torch.float64), deformation, "x", spacing, warp
    )
    scale = torch.tensor(spacing, dtype=torch.float64).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(identity, (deformation * scale).norm(dim=1))
    torch.testing.assert_close(
        residual_error_mm(deformation, deformation, "y", spacing, warp),
        torch.zeros(shape[:1] + shape[2:], dtype=torch.float64),
    )


def test_registration_can_start_from_a_model_file(pair_csv, tmp_path):
    from cocyclereg.learning.training import model_info
    from cocyclereg.model_file import save_model

    config = load_config(preset="cpu-small", overrides=_settings(pair_csv, tmp_path / "a"))
    source = Trainer(config).networks.registration
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter))
    path = save_model(tmp_path / "start.cocyclereg", source, model_info(config, {}, {}))
    started = Trainer(
        load_config(
            preset="cpu-small",
            overrides=_settings(pair_csv, tmp_path / "b", f"train.init_registration={path}"),
        )
    )
    for a, b in zip(
        source.state_dict().values(),
        started.networks.registration.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    wider = _settings(
        pair_csv,
        tmp_path / "c",
        f"train.init_registration={path}",
        "model.registration.encoder_features=[8,16,16,16,16]",
    )
    with pytest.raises(CoCycleRegError, match="does not match"):
        Trainer(load_config(preset="cpu-small", overrides=wider))


def test_the_known_deformation_term_trains_both_heads(pair_csv, tmp_path):
    trainer = Trainer(
        load_config(
            preset="cpu-small",
            overrides=_settings(
                pair_csv, tmp_path / "run", "loss.mode=vmind", "loss.deformation=1.0"
            ),
        )
    )
    batch = trainer.batch_for_step(0)
    assert float(batch["deformation"].abs().max()) > 0.5
    x, y = batch["x"], batch["y"]
    _, terms = trainer.objective.generator_loss(x, y, None, None, batch["deformation"])
    # R starts near the identity, so both heads' error is about the deformation's mean length.
    length = batch["deformation"].norm(dim=1).mean()
    assert 1.5 * float(length) < float(terms["deformation"].detach()) < 2.5 * float(length)
    # The logged mark for zero fields: both heads' error is exactly twice the mean length.
    assert float(terms["deformation_identity"]) == pytest.approx(2 * float(length), rel=1e-5)
    assert not terms["deformation_identity"].requires_grad
    terms["deformation"].backward()
    registration = trainer.networks.registration
    for head in (registration.head_x2y, registration.head_y2x):
        assert float(head.bias.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="known deformation"):
        trainer.objective.generator_loss(x, y, None, None, None)


def test_the_squared_end_point_error_squares_each_heads_error(pair_csv, tmp_path):
    config = load_config(
        preset="cpu-small",
        overrides=_settings(
            pair_csv,
            tmp_path / "run",
            "loss.mode=vmind",
            "loss.deformation=1.0",
            "loss.deformation_squared=true",
        ),
    )
    trainer = Trainer(config)
    batch = trainer.batch_for_step(0)
    _, terms = trainer.objective.generator_loss(
        batch["x"], batch["y"], None, None, batch["deformation"]
    )
    squared_length = batch["deformation"].square().sum(dim=1).mean()
    # Zero fields: each head's squared error is the deformation's squared length.
    assert float(terms["deformation_identity"]) == pytest.approx(
        2 * float(squared_length), rel=1e-5
    )
    assert float(terms["deformation_identity"]) > 1.05 * float(
        2 * batch["deformation"].norm(dim=1).mean() ** 2
    )  # not the square of the mean error: large motions weigh more


def test_end_point_error_follows_each_items_side_and_foreground(pair_csv, tmp_path):
    trainer = Trainer(
        load_config(
            preset="cpu-small",
            overrides=_settings(
                pair_csv,
                tmp_path / "run",
                "loss.mode=vmind",
                "loss.deformation=1.0",
                "loss.deformation_foreground=true",
                "data.deform=random",
                "train.batch_size=2",
            ),
        )
    )
    batch = trainer.batch_for_step(0)
    objective, registration = trainer.objective, trainer.networks.registration
    flow_x2y, flow_y2x = (flow.detach() for flow in registration(batch["x"], batch["y"]))

    def error(flow, deformation, deformed, mask):  # mean over the mask, from the definition
        from cocyclereg.learning.losses import deformation_residual

        residual = deformation_residual(flow, deformation, deformed, objective.warp)
        return residual.norm(dim=1)[mask[:, 0]].mean()

    by_hand = []
    for index, side in enumerate(["x", "y"]):
        item = slice(index, index + 1)
        mask = batch["foreground"][item]
        x_deformed = side == "x"
        by_hand.append(
            error(flow_x2y[item], batch["deformation"][item], "a" if x_deformed else "b", mask)
            + error(flow_y2x[item], batch["deformation"][item], "b" if x_deformed else "a", mask)
        )
    measured = objective._end_point_error(
        flow_x2y, flow_y2x, batch["deformation"], ["x", "y"], batch["foreground"]
    )
    torch.testing.assert_close(measured, torch.stack(by_hand).mean())
    everywhere = objective._end_point_error(
        flow_x2y, flow_y2x, batch["deformation"], ["x", "y"], None
    )
    assert not torch.isclose(measured, everywhere)  # the mask matters
    with pytest.raises(ValueError, match="random"):
        objective._end_point_error(flow_x2y, flow_y2x, batch["deformation"], None, None)
    _, terms = objective.generator_loss(
        batch["x"],
        batch["y"],
        None,
        None,
        batch["deformation"],
        batch["deformed"],
        batch["foreground"],
    )
    assert float(terms["deformation"].detach()) > 0


def test_cosine_schedule_decays_every_rate_and_depends_on_the_step_only(pair_csv, tmp_path):
    trainer = Trainer(
        load_config(
            preset="cpu-small",
            overrides=_settings(
                pair_csv,
                tmp_path / "run",
                "optim.schedule=cosine",
                "optim.final_lr_fraction=0.1",
                "optim.registration_lr=1e-3",
                "train.steps=100",
            ),
        )
    )
    factors = [trainer.learning_rate_factor(step) for step in range(0, 101, 10)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.1)
    assert factors[5] == pytest.approx(0.55)
    assert factors == sorted(factors, reverse=True) and len(set(factors)) == len(factors)
    trainer.step = 50
    trainer._set_learning_rates()
    assert trainer.optimizer_r.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.55)
    assert trainer.optimizer_g.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.55)


def test_the_supervised_weight_decays_to_its_final_fraction_and_scales_the_term(pair_csv, tmp_path):
    trainer = Trainer(
        load_config(
            preset="cpu-small",
            overrides=_settings(
                pair_csv,
                tmp_path / "run",
                "loss.mode=vmind",
                "loss.deformation=2.0",
                "loss.deformation_final_fraction=0.25",
                "train.steps=100",
            ),
        )
    )
    factors = [trainer.deformation_factor(step) for step in range(0, 101, 10)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.25)
    assert factors[5] == pytest.approx(0.625)
    assert factors == sorted(factors, reverse=True)
    assert trainer.deformation_factor(500) == pytest.approx(0.25)  # held after train.steps
    batch = trainer.batch_for_step(0)
    arguments = (batch["x"], batch["y"], None, None, batch["deformation"])
    totals = []
    for factor in (1.0, 0.25):
        trainer.objective.deformation_factor = factor
        total, terms = trainer.objective.generator_loss(*arguments)
        total, supervised = float(total.detach()), float(terms["deformation"].detach())
        rest = total - 2.0 * factor * supervised
        totals.append((total, rest))
    # Only the supervised term changes: by 2.0 * 0.75 times the end-point error.
    assert totals[0][1] == pytest.approx(totals[1][1], abs=1e-5)
    assert totals[0][0] - totals[1][0] == pytest.approx(1.5 * supervised, rel=1e-4)
    # The trainer sets the factor for the step it runs.
    trainer.step = 50
    trainer.train_step(batch)
    assert trainer.objective.deformation_factor == pytest.approx(0.625)
    with pytest.raises(CoCycleRegError, match="deformation_final_fraction"):
        load_config(preset="cpu-small", overrides=["loss.deformation_final_fraction=1.5"])


def test_the_average_of_rs_weights_is_validated_kept_resumed_and_exported(pair_csv, tmp_path):
    decay = 0.8
    settings = _settings(
        pair_csv,
        tmp_path / "run",
        f"optim.registration_average={decay}",
        "optim.registration_lr=2e-3",
        "loss.mode=vmind",
        "loss.deformation=1.0",
        "data.deform=random",
        "train.steps=4",
        "train.checkpoint_every=2",
    )
    trainer = Trainer(load_config(preset="cpu-small", overrides=settings))
    # The average, computed here from a copy of R's weights after each step.
    expected = {k: v.clone() for k, v in trainer.networks.registration.named_parameters()}
    for _ in range(3):
        trainer.train_step(trainer.batch_for_step(trainer.step))
        trainer.step += 1
        for name, value in trainer.networks.registration.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * value.detach()
    average = dict(trainer.registration_average.named_parameters())
    current = dict(trainer.networks.registration.named_parameters())
    moved = 0.0
    for name, value in expected.items():
        torch.testing.assert_close(average[name], value, rtol=1e-5, atol=1e-7)
        moved = max(moved, float((current[name] - average[name]).detach().abs().max()))
    assert moved > 1e-4  # the average is not R itself
    assert trainer.evaluated_registration is trainer.registration_average

    # Validation, best.pt and the exported model use the average.
    trainer.validation_data = trainer.train_data
    trainer._validate_and_keep_best()
    best = torch.load(trainer.checkpoints / "best.pt", weights_only=True)["registration"]
    for name, value in expected.items():
        torch.testing.assert_close(best[name], value, rtol=1e-5, atol=1e-7)
    exported, _ = load_model(trainer.export(tmp_path / "model.cocyclereg"))
    for name, value in exported.named_parameters():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-7)

    # A resumed run continues the same average; a checkpoint without one is refused.
    whole = train(
        load_config(
            preset="cpu-small", overrides=_settings(pair_csv, tmp_path / "whole", *settings[2:])
        )
    )
    half = _settings(pair_csv, tmp_path / "half", *settings[2:], "train.steps=2")
    train(load_config(preset="cpu-small", overrides=half))
    resumed = train(
        load_config(preset="cpu-small", overrides=[*half[:-1], "train.steps=4"]), resume=True
    )
    for a, b in zip(
        load_model(whole)[0].parameters(), load_model(resumed)[0].parameters(), strict=True
    ):
        assert torch.equal(a, b)
    without = [s for s in settings[2:] if not s.startswith("optim.registration_average")]
    plain = _settings(pair_csv, tmp_path / "plain", *without, "train.steps=2")
    train(load_config(preset="cpu-small", overrides=plain))
    refused = re.escape(f"optim.registration_average (0.0 -> {decay})")
    with pytest.raises(CoCycleRegError, match=refused):
        Trainer(
            load_config(
                preset="cpu-small", overrides=[*plain, f"optim.registration_average={decay}"]
            ),
            resume=True,
        )


def test_validation_scores_both_heads_and_training_may_be_synthetic_only(
    data_dir, pair_csv, tmp_path
):
    aseg = data_dir / "brain-t1" / "vxm-subject" / "aseg.nii.gz"
    maps = tmp_path / "maps.csv"
    maps.write_text(f"labels\n{aseg}\n")
    config = load_config(
        preset="cpu-small",
        overrides=[
            f"data.synthetic={maps}",
            f"data.validation={pair_csv}",
            "data.deform=random",
            "data.validation_deformations=2",
            f"train.output={tmp_path / 'run'}",
            "loss.mode=vmind",
            "loss.deformation=1.0",
            *FAST,
        ],
    )
    trainer = Trainer(config)
    assert len(trainer.train_data) == 1 and trainer.train_data.cases == []
    record = trainer.train_step(trainer.batch_for_step(0))
    assert record["deformation"] > 0
    metrics = trainer.validate()
    for head in ("x2y", "y2x"):
        for name in ("tre", "dice", "hd95", "folding_percent"):
            assert f"{head}_{name}" in metrics
        assert metrics[f"identity_{head}_tre"] > 0
    assert metrics["tre"] == pytest.approx((metrics["x2y_tre"] + metrics["y2x_tre"]) / 2)
    # R starts near the identity: each head's error is about the identity's.
    for head in ("x2y", "y2x"):
        assert metrics[f"{head}_tre"] == pytest.approx(metrics[f"identity_{head}_tre"], rel=0.1)


def test_translation_mode_refuses_data_that_misaligns_the_pair(pair_csv, tmp_path):
    from cocyclereg.config import ConfigError

    with pytest.raises(ConfigError, match=r"aligned pairs only.*data\.augmentation\.elastic"):
        load_config(
            preset="cpu-small",
            overrides=_settings(pair_csv, tmp_path / "run", "loss.mode=translation"),
        )
    with pytest.raises(ConfigError, match="rigid_residual_mm"):
        load_config(
            preset="cpu-small",
            overrides=_settings(
                pair_csv,
                tmp_path / "run",
                "loss.mode=translation",
                "data.augmentation.elastic=false",
                "data.augmentation.rigid_residual_mm=2.0",
            ),
        )


def test_translators_train_alone_on_aligned_pairs_and_start_a_cocycle_run(pair_csv, tmp_path):
    run = tmp_path / "translators"
    settings = _settings(
        pair_csv,
        run,
        "loss.mode=translation",
        "data.augmentation.elastic=false",
        f"data.validation={pair_csv}",
        "optim.lr=2e-3",
        "train.steps=16",
        "train.validate_every=8",
        "train.checkpoint_every=8",
    )
    trainer = Trainer(load_config(preset="cpu-small", overrides=settings))
    registration = {k: v.clone() for k, v in trainer.networks.registration.state_dict().items()}
    before = trainer.validate()
    written = trainer.run()
    assert written == run / "checkpoints" / "best.pt"
    # R took no step; the translators' error on the aligned pair fell.
    for name, value in trainer.networks.registration.state_dict().items():
        assert torch.equal(value, registration[name]), name
    records = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [8, 16]
    assert min(r["l1"] for r in records) < 0.8 * before["l1"]
    assert all(r["misalignment_l1"] > 0 for r in records)
    assert all(r["l1"] == pytest.approx((r["x2y_l1"] + r["y2x_l1"]) / 2) for r in records)
    assert "tre" not in records[0] and "dice" not in records[0]

    # A cocycle run starts from the best translators (best.pt) or from every network (last.pt).
    best = torch.load(written, weights_only=True)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for source, names in (
        (written, ("translate_x2y", "translate_y2x")),
        (run / "checkpoints" / "last.pt", ("translate_x2y", "discriminate_y")),
    ):
        cocycle = Trainer(
            load_config(
                preset="cpu-small",
                overrides=_settings(
                    pair_csv,
                    tmp_path / f"cocycle-{source.stem}",
                    f"train.init_translation={source}",
                ),
            )
        )
        for name in names:
            expected = (
                best["translators"][name]
                if source == written
                else {
                    key.partition(".")[2]: value
                    for key, value in last["networks"].items()
                    if key.startswith(f"{name}.")
                }
            )
            for key, value in getattr(cocycle.networks, name).state_dict().items():
                assert torch.equal(value, expected[key]), (source.name, name, key)


def test_a_diverging_run_stops_with_a_message_and_bad_numbers_are_refused(pair_csv, tmp_path):
    config = load_config(
        preset="cpu-small",
        overrides=_settings(pair_csv, tmp_path / "run", "train.steps=2"),
    )
    trainer = Trainer(config)
    # Force a non-finite loss: a NaN weight in R's head.
    with torch.no_grad():
        trainer.networks.registration.head_x2y.bias.fill_(float("nan"))
    with pytest.raises(CoCycleRegError, match="training diverged at step 1: the loss is nan"):
        trainer.run()
    assert not (tmp_path / "run" / "model.cocyclereg").exists()
    for override, message in (
        ("train.checkpoint_every=0", "train.checkpoint_every must be at least 1"),
        ("optim.registration_lr=-1", "optim.registration_lr must be a finite number > 0"),
        ("optim.lr=nan", "optim.lr must be a finite number > 0"),
        ("data.spacing=[.inf,6,6]", "data.spacing must be finite"),
        ("loss.smooth=nan", "loss.smooth must be a finite number >= 0"),
    ):
        with pytest.raises(CoCycleRegError, match=re.escape(message)):
            load_config(preset="cpu-small", overrides=[override])


def test_an_export_that_cannot_read_the_training_list_says_what_the_model_lacks(capsys):
    from cocyclereg.learning.training import training_intensity

    config = load_config(preset="cpu-small", overrides=["data.train=runs/data/absent.csv"])
    assert training_intensity(config) == {}
    assert "no intensity section" in capsys.readouterr().err
    synthetic_only = load_config(preset="cpu-small", overrides=["data.synthetic=labels.csv"])
    assert training_intensity(synthetic_only) == {}
    assert capsys.readouterr().err == ""
