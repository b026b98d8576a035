"""Training of the collaborative cycle (``cocyclereg train``).

One step (as published): a discriminator step on the detached translations, then one joint
step of both generators and R with the discriminators frozen; three Adam optimisers.

Reproducibility: the sample of every step and the random state of every step (dropout) are
functions of (seed, step, rank), so a run resumed from its last checkpoint computes the same
losses as an uninterrupted run (on CPU). Checkpoints are written atomically and loaded with
``torch.load(weights_only=True)``, which cannot run code.

Distributed data parallel: launched with ``torchrun``, every process takes its share of each
global batch and the gradients are averaged by PyTorch's DistributedDataParallel (gloo on CPU,
NCCL on CUDA). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate
from tqdm import tqdm

from cocyclereg import __version__
from cocyclereg.config import Config, ConfigError, Refinement, config_from_dict
from cocyclereg.device import resolve_device
from cocyclereg.errors import CoCycleRegError
from cocyclereg.evaluation.metrics import dice, hd95
from cocyclereg.geometry.displacement import voxel_flow_to_displacement_mm
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.jacobian import folding_stats, jacobian_determinant_array
from cocyclereg.geometry.spatial_transformer import SpatialTransformer, warp_labels
from cocyclereg.inference.plausibility import intensity_section
from cocyclereg.io import atomic_output
from cocyclereg.learning import losses
from cocyclereg.learning.augment import random_elastic_flow
from cocyclereg.learning.data import PairedVolumes, load_cases, load_label_maps
from cocyclereg.learning.pipeline import CoCycleNetworks, CoCycleObjective
from cocyclereg.model_file import ModelInfo, load_model, save_model

CHECKPOINT_FORMAT = 1


def _half_cosine(step: int, steps: int, final: float) -> float:
    """Half a cosine from 1 at step 0 to ``final`` at ``steps``, held there after."""
    progress = min(step / max(steps, 1), 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _set_requires_grad(parameters: list[nn.Parameter], flag: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(flag)


class Trainer:
    """Trains :class:`CoCycleNetworks` with the settings of ``config``.

    Args:
        config: the full configuration.
        resume: continue from ``<output>/checkpoints/last.pt``; without it an output folder that
            already holds a run is refused, so nothing is overwritten.
    """

    def __init__(self, config: Config, resume: bool = False) -> None:
        self.config = config
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = resolve_device(config.train.device)
        if self.world_size > 1 and self.device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        if config.train.num_threads > 0:
            torch.set_num_threads(config.train.num_threads)
        self.output = Path(config.train.output)
        self.checkpoints = self.output / "checkpoints"
        self.is_main = self.rank == 0
        self._check_output(resume)

        if not config.data.train and not config.data.synthetic:
            raise ConfigError(
                "data.train and data.synthetic are empty: give a CSV file or a folder of cases, "
                "or a CSV of label maps to synthesise pairs from"
            )
        self.train_data = PairedVolumes(
            load_cases(config.data.train, config.data) if config.data.train else [],
            config.data,
            training=True,
            seed=config.train.seed,
            label_maps=load_label_maps(config.data.synthetic) if config.data.synthetic else (),
        )
        self.validation_data = (
            PairedVolumes(
                load_cases(config.data.validation, config.data),
                config.data,
                training=False,
                seed=config.train.seed,
            )
            if config.data.validation and self.is_main
            else None
        )

        torch.manual_seed(config.train.seed)
        self.networks = CoCycleNetworks(config).to(self.device)
        self.translation = self.networks.uses_translation
        names = ["registration"]
        if self.translation:
            names += ["translate_x2y", "translate_y2x", "discriminate_x", "discriminate_y"]
        if self.world_size > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.modules = {
                name: DistributedDataParallel(
                    getattr(self.networks, name),
                    device_ids=[self.device] if self.device.type == "cuda" else None,
                )
                for name in names
            }
        else:
            self.modules = {name: getattr(self.networks, name) for name in names}
        self.objective = CoCycleObjective(self.modules, config)

        optim = config.optim
        adam = {"lr": optim.lr, "betas": optim.betas, "weight_decay": optim.weight_decay}
        self.optimizer_r = torch.optim.Adam(
            self.networks.registration.parameters(),
            **{**adam, "lr": optim.registration_lr or optim.lr},
        )
        self.optimizer_g = (
            torch.optim.Adam(self.networks.generator_parameters(), **adam)
            if self.translation
            else None
        )
        self.optimizer_d = (
            torch.optim.Adam(self.networks.discriminator_parameters(), **adam)
            if self.translation
            else None
        )
        amp = config.train.mixed_precision
        self.autocast_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=amp and self.device.type == "cuda"
        )

        self.step = 0
        self.best: dict[str, Any] = {}
        self.identity_metrics: dict[str, float] | None = None
        if config.train.init_registration and not resume:
            self._initialise_registration(Path(config.train.init_registration))
        if config.train.init_translation and not resume:
            self._initialise_translation(Path(config.train.init_translation))
        # The moving average of R's weights (optim.registration_average), from R at step 0.
        self.registration_average: nn.Module | None = None
        if config.optim.registration_average > 0:
            self.registration_average = copy.deepcopy(self.networks.registration)
            self.registration_average.requires_grad_(False)
        if resume:
            self._load_checkpoint(self.checkpoints / "last.pt")
        self._write_config()
        self.writer = None

    def _initialise_registration(self, path: Path) -> None:
        network, _ = load_model(path)
        try:
            self.networks.registration.load_state_dict(network.state_dict())
        except RuntimeError as error:
            raise ConfigError(
                f"train.init_registration {path}: its network does not match "
                f"model.registration ({error})"
            ) from error

    def _initialise_translation(self, path: Path) -> None:
        """Translators (and discriminators, where the checkpoint holds them) from a checkpoint
        of a ``loss.mode=translation`` run: ``best.pt`` (translators) or ``last.pt``."""
        if not path.is_file():
            raise ConfigError(f"train.init_translation {path} does not exist")
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"train.init_translation {path} is not a checkpoint of this version")
        if "translators" in state:  # best.pt
            parts = state["translators"]
        else:  # last.pt: every network's state in one dictionary
            parts = {}
            for key, value in state["networks"].items():
                name, _, parameter = key.partition(".")
                parts.setdefault(name, {})[parameter] = value
        names = ("translate_x2y", "translate_y2x", "discriminate_x", "discriminate_y")
        if not all(name in parts for name in names[:2]):
            raise ConfigError(f"train.init_translation {path} holds no translators")
        for name in names:
            if name in parts:
                try:
                    getattr(self.networks, name).load_state_dict(parts[name])
                except RuntimeError as error:
                    raise ConfigError(
                        f"train.init_translation {path}: its {name} does not match "
                        f"model.generator/model.discriminator ({error})"
                    ) from error

    # ------------------------------------------------------------------ files
    def _check_output(self, resume: bool) -> None:
        last = self.checkpoints / "last.pt"
        if resume and not last.is_file():
            raise CoCycleRegError(f"cannot resume: {last} does not exist")
        if not resume and last.exists():
            raise CoCycleRegError(
                f"{self.output} already holds a training run; pass --resume to continue it or "
                "choose another train.output"
            )
        leftovers = [
            path.relative_to(self.output).as_posix()
            for path in (
                self.checkpoints / "best.pt",
                self.output / "losses.jsonl",
                self.output / "validation.jsonl",
                self.output / "model.cocyclereg",
            )
            if path.exists()
        ]
        if not resume and leftovers:
            raise CoCycleRegError(
                f"{self.output} holds files of an earlier run ({', '.join(leftovers)}) that a new "
                "run would mix with its own; choose another train.output or remove them"
            )

    def _write_config(self) -> None:
        """``config.yaml``: the settings this run (or resumed run) trains with; written once
        they are accepted, so a refused ``--resume`` leaves the run's record as it was."""
        if self.is_main:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.output / "config.yaml") as temporary:
                temporary.write_text(yaml.safe_dump(_plain(self.config.to_dict()), sort_keys=False))

    def _append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        with (self.output / name).open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def _truncate_jsonl(self, name: str, last_step: int) -> None:
        path = self.output / name
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):  # a line cut short by a stop
                continue
            if step <= last_step:
                kept.append(line)
        with atomic_output(path) as temporary:
            temporary.write_text("".join(line + "\n" for line in kept))

    def _state(self) -> dict[str, Any]:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.config.to_json(),
            "networks": self.networks.state_dict(),
            "optimizer_r": self.optimizer_r.state_dict(),
            "best": json.dumps(self.best),
            "identity": json.dumps(self.identity_metrics),
            "scaler": self.scaler.state_dict(),
        }
        if self.registration_average is not None:
            state["registration_average"] = self.registration_average.state_dict()
        if self.translation:
            state["optimizer_g"] = self.optimizer_g.state_dict()
            state["optimizer_d"] = self.optimizer_d.state_dict()
        return state

    def _save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        with atomic_output(self.checkpoints / name) as temporary:
            torch.save(state, temporary)

    def _load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path, self.device)
        try:  # through the current defaults: a setting added since keeps its default
            saved = config_from_dict(json.loads(state["config"])).to_dict()
        except (ConfigError, ValueError, KeyError) as error:
            raise CoCycleRegError(
                f"{path} holds settings this version cannot read: {error}"
            ) from None
        saved, current = _flat(_plain(saved)), _flat(_plain(self.config.to_dict()))
        changed = [
            key
            for key in sorted(current)
            if key not in RESUMABLE_CHANGES and saved.get(key) != current[key]
        ]
        if changed:
            differences = ", ".join(f"{k} ({saved.get(k)!r} -> {current[k]!r})" for k in changed)
            raise CoCycleRegError(
                f"cannot resume: {differences} differ from {path}; a resumed run may change only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))}: start a new train.output for the rest"
            )
        self.networks.load_state_dict(state["networks"])
        self.optimizer_r.load_state_dict(state["optimizer_r"])
        if self.translation:
            self.optimizer_g.load_state_dict(state["optimizer_g"])
            self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.scaler.load_state_dict(state["scaler"])
        if self.registration_average is not None:
            if "registration_average" not in state:
                raise CoCycleRegError(
                    f"cannot resume with optim.registration_average: {path} was saved without "
                    "the average of R's weights"
                )
            self.registration_average.load_state_dict(state["registration_average"])
        self.step = int(state["step"])
        self.best = json.loads(state["best"])
        self.identity_metrics = json.loads(state["identity"])
        if self.is_main:
            self._truncate_jsonl("losses.jsonl", self.step)
            self._truncate_jsonl("validation.jsonl", self.step)

    # ------------------------------------------------------------------ data
    def batch_for_step(self, step: int) -> dict[str, Any]:
        """This process's share of the global batch of ``step``: sample ``g`` of the run is
        item ``order_e[g mod n]`` of epoch ``e = g div n`` (``order_e`` a seeded permutation)."""
        batch_size, count = self.config.train.batch_size, len(self.train_data)
        first = (step * self.world_size + self.rank) * batch_size
        items = []
        for global_index in range(first, first + batch_size):
            epoch, position = divmod(global_index, count)
            order = np.random.default_rng([self.config.train.seed, epoch]).permutation(count)
            items.append(self.train_data.sample(int(order[position]), epoch))
        return default_collate(items)

    # ------------------------------------------------------------------ step
    def _autocast(self):
        if not self.config.train.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _clip(self, parameters, limit: float | None) -> None:
        """Scale the gradients of ``parameters`` (one network's, as published: each generator
        and each discriminator on its own) so that their joint norm is at most ``limit``."""
        if limit is not None:
            torch.nn.utils.clip_grad_norm_(parameters, limit)

    def _parameters(self, name: str) -> list[nn.Parameter]:
        return list(getattr(self.networks, name).parameters())

    def learning_rate_factor(self, step: int) -> float:
        """The factor on every base learning rate at ``step`` (``optim.schedule``)."""
        optim = self.config.optim
        if optim.schedule == "constant":
            return 1.0
        return _half_cosine(step, self.config.train.steps, optim.final_lr_fraction)

    def deformation_factor(self, step: int) -> float:
        """The factor on ``loss.deformation`` at ``step``: half a cosine from 1 at step 0 to
        ``loss.deformation_final_fraction`` at ``train.steps`` (1 throughout by default)."""
        return _half_cosine(
            step, self.config.train.steps, self.config.loss.deformation_final_fraction
        )

    def _set_learning_rates(self) -> None:
        """Set every optimiser's rate for ``self.step``: a function of the step alone, so a
        resumed run follows the same schedule."""
        optim = self.config.optim
        factor = self.learning_rate_factor(self.step)
        pairs = [(self.optimizer_r, optim.registration_lr or optim.lr)]
        pairs += [(o, optim.lr) for o in (self.optimizer_g, self.optimizer_d) if o is not None]
        for optimizer, base in pairs:
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One published training step on ``batch``; returns the loss terms as floats."""
        torch.manual_seed(_step_seed(self.config.train.seed, self.step, self.rank))
        self._set_learning_rates()
        self.objective.deformation_factor = self.deformation_factor(self.step)
        x, y = batch["x"].to(self.device), batch["y"].to(self.device)
        record: dict[str, float] = {}
        translations = None
        discriminators = None
        if self.translation:
            with self._autocast():
                translations = self.objective.translate(x, y)
                loss_d = self.objective.discriminator_loss(x, y, translations)
            self.optimizer_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.unscale_(self.optimizer_d)
            for name in ("discriminate_x", "discriminate_y"):
                self._clip(self._parameters(name), self.config.optim.clip_discriminator)
            self.scaler.step(self.optimizer_d)
            record["discriminator"] = float(loss_d.detach())
            discriminators = {
                "discriminate_x": self.networks.discriminate_x,
                "discriminate_y": self.networks.discriminate_y,
            }
            _set_requires_grad(self.networks.discriminator_parameters(), False)
        try:
            with self._autocast():
                loss, terms = self.objective.generator_loss(
                    x,
                    y,
                    translations,
                    discriminators,
                    batch["deformation"].to(self.device),
                    batch["deformed"],
                    batch["foreground"].to(self.device),
                )
            self.optimizer_r.zero_grad(set_to_none=True)
            if self.optimizer_g is not None:
                self.optimizer_g.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        finally:
            if self.translation:
                _set_requires_grad(self.networks.discriminator_parameters(), True)
        if (
            self.networks.trains_registration
            and self.step >= self.config.optim.registration_warmup_steps
        ):
            self.scaler.unscale_(self.optimizer_r)
            self._clip(self.networks.registration.parameters(), self.config.optim.clip_registration)
            self.scaler.step(self.optimizer_r)
            self._update_registration_average()
        if self.optimizer_g is not None:
            self.scaler.unscale_(self.optimizer_g)
            for name in ("translate_x2y", "translate_y2x"):
                self._clip(self._parameters(name), self.config.optim.clip_generator)
            self.scaler.step(self.optimizer_g)
        self.scaler.update()
        record["total"] = float(loss.detach())
        record.update({name: float(value.detach()) for name, value in terms.items()})
        return record

    @torch.no_grad()
    def _update_registration_average(self) -> None:
        """``average <- d * average + (1 - d) * weights`` for R's parameters; buffers copied."""
        if self.registration_average is None:
            return
        weight = 1.0 - self.config.optim.registration_average
        current = self.networks.registration
        for average, value in zip(
            self.registration_average.parameters(), current.parameters(), strict=True
        ):
            average.lerp_(value, weight)
        for average, value in zip(
            self.registration_average.buffers(), current.buffers(), strict=True
        ):
            average.copy_(value)

    @property
    def evaluated_registration(self) -> nn.Module:
        """The R that is validated, kept as ``best.pt`` and exported: the moving average of
        the weights when ``optim.registration_average`` is set, else R itself."""
        if self.registration_average is not None:
            return self.registration_average
        return self.networks.registration

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Both of R's heads on the validation pairs: per head (``x2y_``, ``y2x_`` prefixes),
        label Dice, HD95 (mm), folding (% of voxels with J <= 0) and the registration error
        against the known deformation of each pair (``tre``: mean mm over the foreground of the
        head's fixed image, see :func:`residual_error_mm`); the unprefixed keys are the means
        of the two heads, which select the best checkpoint. ``identity_*`` keys: the same
        without registration, for reference."""
        assert self.validation_data is not None
        if not self.networks.trains_registration:
            return self.validate_translation()
        registration = self.evaluated_registration.eval()
        nearest = SpatialTransformer("nearest")
        grid = Grid(
            tuple(self.config.data.size),
            tuple(self.config.data.spacing),
            (0.0, 0.0, 0.0),
            (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        )
        spacing_dhw = tuple(reversed(self.config.data.spacing))
        scores: dict[str, list[float]] = {}

        def record(name: str, value: float) -> None:
            scores.setdefault(name, []).append(value)

        linear = SpatialTransformer("bilinear")
        for index in range(len(self.validation_data)):
            item = self.validation_data[index]
            x, y = item["x"][None].to(self.device), item["y"][None].to(self.device)
            flows = dict(zip(("x2y", "y2x"), registration(x, y), strict=True))
            deformation = item["deformation"][None].to(self.device)
            deformed = item["deformed"]
            for head, flow in flows.items():
                moving, fixed = head[0], head[2]
                fixed_image = y if fixed == "y" else x
                fixed_foreground = fixed_image[0, 0] > 0
                if bool(deformation.abs().max() > 0) and bool(fixed_foreground.any()):
                    # The x->y head pulls x; from y->x's view the roles of the sides swap.
                    side = deformed if head == "x2y" else ("y" if deformed == "x" else "x")
                    for prefix, candidate in (("", flow), ("identity_", torch.zeros_like(flow))):
                        error = residual_error_mm(candidate, deformation, side, spacing_dhw, linear)
                        record(f"{prefix}{head}_tre", float(error[0][fixed_foreground].mean()))
                if f"{moving}_labels" in item and f"{fixed}_labels" in item:
                    moving_labels = item[f"{moving}_labels"][None].to(self.device)
                    warped = warp_labels(moving_labels, flow, nearest)[0, 0].cpu().numpy()
                    fixed_labels = item[f"{fixed}_labels"][0].numpy()
                    unmoved = item[f"{moving}_labels"][0].numpy()
                    for prefix, labels in (("", warped), ("identity_", unmoved)):
                        per_label = dice(fixed_labels, labels)
                        if per_label:
                            record(f"{prefix}{head}_dice", float(np.mean(list(per_label.values()))))
                            distances = [
                                hd95(fixed_labels, labels, spacing_dhw, label)
                                for label in per_label
                            ]
                            record(f"{prefix}{head}_hd95", float(np.nanmean(distances)))
                determinant = jacobian_determinant_array(
                    voxel_flow_to_displacement_mm(flow[0].double().cpu().numpy(), grid), grid
                )
                record(f"{head}_folding_percent", folding_stats(determinant).folding_percent)
        registration.train()
        metrics = {name: float(np.mean(values)) for name, values in scores.items()}
        for prefix in ("", "identity_"):
            for name in ("tre", "dice", "hd95", "folding_percent"):
                both = [metrics.get(f"{prefix}{head}_{name}") for head in ("x2y", "y2x")]
                if all(value is not None for value in both):
                    metrics[prefix + name] = float(np.mean(both))
        return metrics

    @torch.no_grad()
    def validate_translation(self) -> dict[str, float]:
        """The translators on the (aligned) validation pairs: ``x2y_l1`` = mean
        ``|T_x2y(x) - y|``, ``y2x_l1`` = mean ``|T_y2x(y) - x|`` over each pair's foreground
        (either image > 0), ``l1`` their mean (lower is better; it selects ``best.pt``), and
        ``misalignment_l1``: mean ``|y - W(y, u)|`` over the same voxels for a random elastic
        field ``u`` of the validation size (``data.augmentation.elastic_control_spacing_mm``,
        ``elastic_max_displacement_mm``), seeded per pair: the image change a misalignment
        makes, which a translator's error must stay well below for R to learn from it."""
        assert self.validation_data is not None
        modules = [getattr(self.networks, n) for n in ("translate_x2y", "translate_y2x")]
        for module in modules:
            module.eval()
        augmentation = self.config.data.augmentation
        linear = SpatialTransformer("bilinear")
        scores: dict[str, list[float]] = {}
        for index in range(len(self.validation_data)):
            item = self.validation_data[index]
            x, y = item["x"][None].to(self.device), item["y"][None].to(self.device)
            foreground = (x > 0) | (y > 0)
            if not bool(foreground.any()):
                continue
            rng = np.random.default_rng([self.config.train.seed, index, 7])
            shape = tuple(int(n) for n in y.shape[2:])
            misalignment = random_elastic_flow(
                shape,
                self.config.data.spacing,
                rng,
                augmentation.elastic_control_spacing_mm,
                augmentation.elastic_max_displacement_mm,
            )
            field = torch.from_numpy(misalignment)[None].to(self.device, y.dtype)
            pairs = {
                "x2y_l1": (modules[0](x), y),
                "y2x_l1": (modules[1](y), x),
                "misalignment_l1": (linear(y, field), y),
            }
            for name, (prediction, target) in pairs.items():
                difference = (prediction - target).abs()[foreground]
                scores.setdefault(name, []).append(float(difference.mean()))
        for module in modules:
            module.train()
        metrics = {name: float(np.mean(values)) for name, values in scores.items()}
        if "x2y_l1" in metrics:
            metrics["l1"] = (metrics["x2y_l1"] + metrics["y2x_l1"]) / 2
        return metrics

    # ------------------------------------------------------------------ logging
    def _log_images(self, batch: dict[str, Any]) -> None:
        if self.writer is None:
            return
        with torch.no_grad():
            x, y = batch["x"][:1].to(self.device), batch["y"][:1].to(self.device)
            flow_x2y, _ = self.networks.registration(x, y)
            panels = [x, y, SpatialTransformer()(x, flow_x2y)]
            if self.translation:
                fake_y = self.networks.translate_x2y(x)
                panels += [fake_y, SpatialTransformer()(fake_y, flow_x2y)]
            middle = x.shape[2] // 2
            row = torch.cat([p[0, :, middle].float().clamp(0, 1).cpu() for p in panels], dim=-1)
        self.writer.add_image(
            "axial: x | y | warped x | T_x2y(x) | warped T_x2y(x)", row, self.step
        )

    def _log(self, record: dict[str, float], prefix: str) -> None:
        if self.writer is not None:
            for name, value in record.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, self.step)

    # ------------------------------------------------------------------ run
    def run(self) -> Path | None:
        """Train until ``train.steps``; export the model; returns its path on rank 0 (for
        ``loss.mode=translation``, which exports no model, the translators' checkpoint)."""
        train = self.config.train
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output / "tensorboard"), purge_step=self.step + 1)
            if self.validation_data is not None and self.identity_metrics is None:
                validation = self.validate()
                self.identity_metrics = {
                    k: v for k, v in validation.items() if k.startswith("identity_")
                }
        started = time.monotonic()
        progress = tqdm(
            total=train.steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not self.is_main,
            dynamic_ncols=True,
        )
        try:
            while self.step < train.steps:
                batch = self.batch_for_step(self.step)
                record = self.train_step(batch)
                if not math.isfinite(record["total"]):
                    terms = ", ".join(f"{k} {v:.4g}" for k, v in record.items())
                    raise CoCycleRegError(
                        f"training diverged at step {self.step + 1}: the loss is "
                        f"{record['total']} ({terms}); nothing of this step was kept (the "
                        f"last checkpoint is {self.checkpoints / 'last.pt'}): lower the learning "
                        "rates or check the loss weights"
                    )
                self.step += 1
                progress.update(1)
                progress.set_postfix(
                    {
                        k: f"{v:.4f}"
                        for k, v in record.items()
                        if k
                        in ("total", "similarity", "cycle", "deformation", "deformation_identity")
                    }
                )
                if not self.is_main:
                    continue
                if self.step % train.log_every == 0 or self.step == train.steps:
                    self._append_jsonl("losses.jsonl", {"step": self.step, **record})
                    self._log(record, "train")
                if self.step % train.image_every == 0:
                    self._log_images(batch)
                if self.validation_data is not None and (
                    self.step % train.validate_every == 0 or self.step == train.steps
                ):
                    self._validate_and_keep_best()
                if self.step % train.checkpoint_every == 0 or self.step == train.steps:
                    self._save_checkpoint("last.pt", self._state())
        finally:
            progress.close()
            if self.writer is not None:
                self.writer.close()
        if not self.is_main:
            return None
        if not self.networks.trains_registration:
            return self.checkpoints / ("best.pt" if self.best else "last.pt")
        return self.export(
            self.output / "model.cocyclereg", wall_seconds=time.monotonic() - started
        )

    def _validate_and_keep_best(self) -> None:
        metrics = self.validate()
        self._append_jsonl("validation.jsonl", {"step": self.step, **metrics})
        self._log(metrics, "validation")
        score, best_score = _selection_score(metrics), _selection_score(self.best)
        if score > best_score:
            self.best = {"step": self.step, **metrics}
            weights = (
                {"registration": self.evaluated_registration.state_dict()}
                if self.networks.trains_registration
                else {
                    "translators": {
                        name: getattr(self.networks, name).state_dict()
                        for name in ("translate_x2y", "translate_y2x")
                    }
                }
            )
            self._save_checkpoint(
                "best.pt",
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": self.step,
                    **weights,
                    "best": json.dumps(self.best),
                },
            )

    def export(self, path: Path, wall_seconds: float | None = None) -> Path:
        """Write the inference model: the best validated R if there is one, else the last."""
        registration = CoCycleNetworks(self.config).registration
        registration.load_state_dict(self.evaluated_registration.state_dict())
        best_path = self.checkpoints / "best.pt"
        if best_path.is_file():
            state = torch.load(best_path, map_location="cpu", weights_only=True)
            registration.load_state_dict(state["registration"])
        provenance = {
            "steps": self.step,
            "wall_seconds_last_session": wall_seconds,
            "training_cases": [case.name for case in self.train_data.cases],
            "world_size": self.world_size,
        }
        info = model_info(
            self.config, provenance, {"best": self.best, "identity": self.identity_metrics}
        )
        return save_model(path, registration, info)


def _selection_score(metrics: dict[str, Any]) -> tuple[float, float]:
    """Larger is better: lowest registration error against the known deformations when the
    validation pairs have one, else highest Dice; ties broken by less folding."""
    if not metrics:
        return (-math.inf, -math.inf)
    if "l1" in metrics:  # translators: lowest error on the aligned validation pairs
        return (-metrics["l1"], 0.0)
    primary = -metrics["tre"] if "tre" in metrics else metrics.get("dice", -1.0)
    return (primary, -metrics.get("folding_percent", 0.0))


def residual_error_mm(
    flow: torch.Tensor,
    deformation: torch.Tensor,
    deformed: str,
    spacing_dhw: tuple[float, float, float],
    warp: SpatialTransformer,
) -> torch.Tensor:
    """Distance (mm) between where a field of R samples and where it should, per voxel.

    ``flow``: R's x->y resampling field, ``deformation``: the known resampling field that
    deformed modality ``deformed`` (``"x"`` or ``"y"``) of the pair (both ``(N, 3, D, H, W)``
    voxels, channels D, H, W); see :func:`cocyclereg.learning.losses.deformation_residual`. For R's
    y->x field, whose moving image is ``y``, pass the other side. Returns ``(N, D, H, W)``.
    """
    residual = losses.deformation_residual(flow, deformation, "a" if deformed == "x" else "b", warp)
    scale = torch.tensor(spacing_dhw, dtype=flow.dtype, device=flow.device).view(1, 3, 1, 1, 1)
    return (residual * scale).norm(dim=1)


def model_info(config: Config, provenance: dict[str, Any], validation: dict[str, Any]) -> ModelInfo:
    """The description written beside R's weights: modalities, grid, normalisation, network,
    where the weights came from, and the intensities of the training images
    (:func:`training_intensity`)."""
    data = config.data
    return ModelInfo(
        x_modality=data.x_modality,
        y_modality=data.y_modality,
        spacing=tuple(data.spacing),
        size=tuple(data.size),
        orientation=data.orientation,
        normalization={"x": asdict(data.x_normalization), "y": asdict(data.y_normalization)},
        architecture=asdict(config.model.registration),
        provenance={
            "cocyclereg_version": __version__,
            "config": _plain(config.to_dict()),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **provenance,
        },
        validation=validation,
        intensity=training_intensity(config),
    )


def export_checkpoint(
    run: str | Path,
    output: str | Path,
    name: str = "",
    intended_use: str = "",
    refinement: Refinement | None = None,
) -> Path:
    """Export the model of a run folder: best.pt's R if validated, else last.pt's (its moving
    average of R's weights when the run kept one).

    ``name`` and ``intended_use`` go into the provenance, where model pickers (the Slicer
    module) show them; ``refinement`` is the instance optimisation recommended at inference
    (default none)."""
    run = Path(run)
    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        raise CoCycleRegError(f"{run} is not a training run folder: {last} is missing")
    state = read_checkpoint(last)
    saved = json.loads(state["config"])
    config = config_from_dict(saved)
    if config.loss.mode == "translation":
        raise CoCycleRegError(
            f"{run} trained the translators alone (loss.mode=translation): it has no "
            "registration network to export; its checkpoints start a cocycle run "
            "(train.init_translation)"
        )
    registration = CoCycleNetworks(config).registration
    prefix = "registration."
    registration.load_state_dict(
        state["registration_average"]
        if "registration_average" in state
        else {k[len(prefix) :]: v for k, v in state["networks"].items() if k.startswith(prefix)}
    )
    best = json.loads(state["best"])
    if (run / "checkpoints" / "best.pt").is_file():
        best_state = torch.load(
            run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True
        )
        registration.load_state_dict(best_state["registration"])
    info = model_info(
        config,
        {
            "steps": int(state["step"]),
            **({"name": name} if name else {}),
            **({"intended_use": intended_use} if intended_use else {}),
        },
        {"best": best, "identity": json.loads(state["identity"])},
    )
    if refinement is not None:
        info = replace(info, refinement=refinement)
    return save_model(output, registration, info)


def training_intensity(config: Config) -> dict[str, Any]:
    """The model file's ``intensity`` section
    (:func:`cocyclereg.inference.plausibility.intensity_section`) from the x and y images of
    ``config.data.train`` (each file once); empty when that list cannot be read here (the section is
    optional)."""
    data = config.data
    try:
        cases = load_cases(data.train, data)
    except CoCycleRegError as error:
        if data.train:  # a list that trained the model but cannot be read from here
            print(
                f"warning: the model file gets no intensity section: data.train cannot be read "
                f"from {Path.cwd()} ({error}); `register` then cannot compare its inputs' "
                "intensities with the training images'. Export from the folder the run was "
                "started in (its case list paths are relative to it).",
                file=sys.stderr,
            )
        return {}
    images = {side: list(dict.fromkeys(str(getattr(c, side)) for c in cases)) for side in "xy"}
    return intensity_section({"x": data.x_modality, "y": data.y_modality}, images)


# What a resumed run may change: how long it runs, where and how often it writes, and the
# machine it runs on. Everything else decides what the checkpoint's state means.
RESUMABLE_CHANGES = frozenset(
    {
        "train.steps",
        "train.output",
        "train.device",
        "train.num_threads",
        "train.validate_every",
        "train.checkpoint_every",
        "train.log_every",
        "train.image_every",
        "train.mixed_precision",
        "train.activation_checkpointing",
        "train.init_registration",  # used at a run's start only
        "train.init_translation",
    }
)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents (tensors and plain data only: never code), or a
    :class:`CoCycleRegError` saying the file is not a readable checkpoint of this version."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # damaged, foreign or a pickle with code: not ours
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CoCycleRegError(f"{path} is not a readable cocyclereg checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CoCycleRegError(f"{path} is not a checkpoint of this cocyclereg version")
    return state


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (for YAML/JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def train(config: Config, resume: bool = False) -> Path | None:
    """Train a model with ``config``; returns the exported model path (rank 0), or for
    ``loss.mode=translation`` the checkpoint holding the translators."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
