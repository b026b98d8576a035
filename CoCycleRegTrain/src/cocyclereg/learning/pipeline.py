"""The collaborative cycle: networks, forward passes and the loss of each training phase.

One training step, as published: a discriminator step on detached translations, then one joint
step of both generators and R with the discriminators frozen. Images are ``(N, 1, D, H, W)``.

Terms of the generator/registration objective (``loss.mode``):

* ``cocycle`` (the paper): similarity ``L1(y_hat, y) + L1(x_hat', x)`` with
  ``y_hat = W(T_x2y(x), phi_x2y)`` and ``x_hat' = W(T_y2x(y), phi_y2x)``; GAN terms on the
  unwarped translations; CoCycle ``L1(W(T_y2x(y_hat), phi_y2x), x) + L1(W(T_x2y(x_hat'),
  phi_x2y), y)``; smoothness of both fields.
* ``sepcycle`` (ablation, paper Eq. 12-13): the CoCycle term replaced by separate registration
  and translation cycles ``L1(W(W(x, phi_x2y), phi_y2x), x) + L1(T_y2x(T_x2y(x)), x)`` and mirror.
* ``loss.structure > 0`` adds ``MIND(T_x2y(x), x) + MIND(T_y2x(y), y)`` to the translation
  modes (see :class:`cocyclereg.config.LossConfig`).
* ``loss.deformation > 0`` adds the end-point error of both fields against the known synthetic
  deformation of the pair (all modes); the term ``deformation_identity`` (logged, not
  optimised) is that error for zero fields, the mark R must get under.
* ``loss.registration_mind > 0`` adds the VMIND similarity below to the translation modes.
* ``vmind`` (metric-based baseline): R alone, ``MIND(W(x, phi_x2y), y) + MIND(W(y, phi_y2x), x)``
  plus smoothness; no generators or discriminators.
* ``translation``: the translators alone on aligned pairs, ``L1(T_x2y(x), y) + L1(T_y2x(y), x)``
  plus the GAN terms; R is not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cocyclereg.config import Config
from cocyclereg.geometry.spatial_transformer import SpatialTransformer
from cocyclereg.learning import losses
from cocyclereg.networks import DualHeadUNet, PatchDiscriminator, ResnetGenerator


class CoCycleNetworks(nn.Module):
    """R, and for the translation-based modes T_x2y, T_y2x, D_x, D_y."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        model, memory = config.model, config.train.activation_checkpointing
        self.mode = config.loss.mode
        self.registration = DualHeadUNet(
            model.registration.encoder_features,
            model.registration.decoder_features,
            model.registration.head_init_std,
            activation_checkpointing=memory,
            backbone_init=model.registration.backbone_init,
            input_features=model.registration.input_features,
        )
        if self.uses_translation:
            g, d = model.generator, model.discriminator
            self.translate_x2y = ResnetGenerator(
                g.ngf, g.blocks, g.norm, g.padding, g.dropout, memory
            )
            self.translate_y2x = ResnetGenerator(
                g.ngf, g.blocks, g.norm, g.padding, g.dropout, memory
            )
            self.discriminate_x = PatchDiscriminator(d.ndf, d.layers, d.norm)
            self.discriminate_y = PatchDiscriminator(d.ndf, d.layers, d.norm)

    @property
    def uses_translation(self) -> bool:
        return self.mode in ("cocycle", "sepcycle", "translation")

    @property
    def trains_registration(self) -> bool:
        return self.mode != "translation"

    def generator_parameters(self) -> list[nn.Parameter]:
        if not self.uses_translation:
            return []
        return [*self.translate_x2y.parameters(), *self.translate_y2x.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        if not self.uses_translation:
            return []
        return [*self.discriminate_x.parameters(), *self.discriminate_y.parameters()]


@dataclass
class Translations:
    """The unwarped translations of one step: ``fake_y = T_x2y(x)``, ``fake_x = T_y2x(y)``."""

    fake_y: torch.Tensor
    fake_x: torch.Tensor


class CoCycleObjective:
    """Computes the losses of one step for :class:`CoCycleNetworks` (or their DDP wrappers).

    ``modules`` maps names to callables: ``registration``, and for translation modes
    ``translate_x2y``, ``translate_y2x``, ``discriminate_x``, ``discriminate_y``. Under
    DistributedDataParallel the trainer passes the wrapped modules here.
    """

    def __init__(self, modules: dict[str, nn.Module], config: Config) -> None:
        self.modules = modules
        self.weights = config.loss
        self.deformed = config.data.deform if config.data.deform != "random" else None
        # The supervised term's weight is loss.deformation times this factor, which the trainer
        # sets each step (loss.deformation_final_fraction).
        self.deformation_factor = 1.0
        self.warp = SpatialTransformer("bilinear")

    def _l1(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sigma = self.weights.similarity_sigma
        return losses.l1(
            losses.gaussian_blur(prediction, sigma), losses.gaussian_blur(target, sigma)
        )

    def _direct_mind(
        self, x: torch.Tensor, y: torch.Tensor, flow_x2y: torch.Tensor, flow_y2x: torch.Tensor
    ) -> torch.Tensor:
        """``MIND(W(x, phi_x2y), y) + MIND(W(y, phi_y2x), x)``: the VMIND similarity."""
        return self._mind(self.warp(x, flow_x2y), y) + self._mind(self.warp(y, flow_y2x), x)

    def _mind(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.weights
        blur = w.similarity_sigma
        return losses.mind_loss(
            losses.gaussian_blur(prediction, blur),
            losses.gaussian_blur(target, blur),
            w.mind_radius,
            w.mind_dilation,
        )

    def _end_point_error(
        self,
        flow_x2y: torch.Tensor,
        flow_y2x: torch.Tensor,
        deformation: torch.Tensor,
        deformed: str | Sequence[str] | None,
        foreground: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mean end-point error (voxels; squared with ``loss.deformation_squared``) of both
        fields against the known misalignment, summed over the two, per item on the side it
        deformed, over ``foreground`` voxels (all voxels for ``None``)."""
        sides = deformed if deformed is not None else self.deformed
        if sides is None:
            raise ValueError("data.deform is 'random': pass the side each item deformed")
        if isinstance(sides, str):
            sides = [sides] * flow_x2y.shape[0]
        if any(side not in ("x", "y") for side in sides):
            raise ValueError(f"the deformed side must be 'x' or 'y', got {list(sides)!r}")
        errors = []
        for index, side in enumerate(sides):
            item = slice(index, index + 1)
            x_deformed = side == "x"
            power = 2 if self.weights.deformation_squared else 1
            error = (
                losses.deformation_residual(
                    flow_x2y[item], deformation[item], "a" if x_deformed else "b", self.warp
                ).norm(dim=1)
                ** power
                + losses.deformation_residual(
                    flow_y2x[item], deformation[item], "b" if x_deformed else "a", self.warp
                ).norm(dim=1)
                ** power
            )
            if foreground is not None and bool(foreground[item].any()):
                error = error[foreground[item][:, 0]]
            errors.append(error.mean())
        return torch.stack(errors).mean()

    @staticmethod
    def _gan(translations: Translations, discriminators: dict[str, nn.Module]) -> torch.Tensor:
        """The generators' LSGAN term: D_y scores ``T_x2y(x)``, D_x scores ``T_y2x(y)``."""
        scores_y = discriminators["discriminate_y"](translations.fake_y)
        scores_x = discriminators["discriminate_x"](translations.fake_x)
        return losses.lsgan_generator(scores_y) + losses.lsgan_generator(scores_x)

    def translate(self, x: torch.Tensor, y: torch.Tensor) -> Translations:
        return Translations(
            fake_y=self.modules["translate_x2y"](x), fake_x=self.modules["translate_y2x"](y)
        )

    def discriminator_loss(
        self, x: torch.Tensor, y: torch.Tensor, translations: Translations
    ) -> torch.Tensor:
        """LSGAN loss of D_y (real y, fake T_x2y(x)) plus D_x (real x, fake T_y2x(y))."""
        d_x, d_y = self.modules["discriminate_x"], self.modules["discriminate_y"]
        loss_y = losses.lsgan_discriminator(d_y(y), d_y(translations.fake_y.detach()))
        loss_x = losses.lsgan_discriminator(d_x(x), d_x(translations.fake_x.detach()))
        return loss_y + loss_x

    def generator_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        translations: Translations | None,
        discriminators: dict[str, nn.Module] | None = None,
        deformation: torch.Tensor | None = None,
        deformed: str | Sequence[str] | None = None,
        foreground: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The joint objective of R (and the generators): ``(total, terms)``.

        ``discriminators``: the (unwrapped) D_x and D_y to score the translations with, so
        their parameters take no part in this backward pass. ``deformation``: the known
        resampling field (N, 3, D, H, W) that misaligned the pair (needed when
        ``loss.deformation > 0``); ``deformed``: the side it deformed, one for the batch or one
        per item (default ``data.deform``); ``foreground``: bool (N, 1, D, H, W), where the
        end-point error counts when ``loss.deformation_foreground``.
        """
        w = self.weights
        if w.mode == "translation":
            assert translations is not None and discriminators is not None
            terms = {
                "similarity": self._l1(translations.fake_y, y) + self._l1(translations.fake_x, x),
                "gan": self._gan(translations, discriminators),
            }
            return w.similarity * terms["similarity"] + w.gan * terms["gan"], terms
        flow_x2y, flow_y2x = self.modules["registration"](x, y)
        terms: dict[str, torch.Tensor] = {
            "smooth": losses.smoothness(flow_x2y) + losses.smoothness(flow_y2x)
        }
        supervised = torch.zeros((), device=x.device)
        if w.deformation > 0:
            if deformation is None:
                raise ValueError("loss.deformation > 0 needs the known deformation of the pair")
            mask = foreground if w.deformation_foreground else None
            terms["deformation"] = self._end_point_error(
                flow_x2y, flow_y2x, deformation, deformed, mask
            )
            supervised = w.deformation * self.deformation_factor * terms["deformation"]
            with torch.no_grad():
                zero = torch.zeros_like(flow_x2y)
                terms["deformation_identity"] = self._end_point_error(
                    zero, zero, deformation, deformed, mask
                )
        if w.mode == "vmind":
            terms["similarity"] = self._direct_mind(x, y, flow_x2y, flow_y2x)
            total = w.similarity * terms["similarity"] + w.smooth * terms["smooth"] + supervised
            return total, terms

        assert translations is not None and discriminators is not None
        t_x2y, t_y2x = self.modules["translate_x2y"], self.modules["translate_y2x"]
        y_hat = self.warp(translations.fake_y, flow_x2y)
        x_hat_prime = self.warp(translations.fake_x, flow_y2x)
        terms["similarity"] = self._l1(y_hat, y) + self._l1(x_hat_prime, x)
        terms["gan"] = self._gan(translations, discriminators)
        if w.mode == "cocycle":
            x_hat = self.warp(t_y2x(y_hat), flow_y2x)
            y_hat_prime = self.warp(t_x2y(x_hat_prime), flow_x2y)
            terms["cycle"] = self._l1(x_hat, x) + self._l1(y_hat_prime, y)
        else:  # sepcycle
            registration_cycle = self._l1(
                self.warp(self.warp(x, flow_x2y), flow_y2x), x
            ) + self._l1(self.warp(self.warp(y, flow_y2x), flow_x2y), y)
            translation_cycle = self._l1(t_y2x(translations.fake_y), x) + self._l1(
                t_x2y(translations.fake_x), y
            )
            terms["cycle"] = registration_cycle + translation_cycle
        total = (
            w.similarity * terms["similarity"]
            + w.gan * terms["gan"]
            + w.cycle * terms["cycle"]
            + w.smooth * terms["smooth"]
            + supervised
        )
        if w.registration_mind > 0:
            terms["mind"] = self._direct_mind(x, y, flow_x2y, flow_y2x)
            total = total + w.registration_mind * terms["mind"]
        if w.structure > 0:
            terms["structure"] = losses.mind_loss(
                translations.fake_y, x, w.mind_radius, w.mind_dilation
            ) + losses.mind_loss(translations.fake_x, y, w.mind_radius, w.mind_dilation)
            total = total + w.structure * terms["structure"]
        return total, terms
