"""R: the dual-head registration network.

A VoxelMorph-style UNet backbone (3x3x3 convolutions with LeakyReLU(0.2), no normalisation) with
two 3x3x3 heads on its last feature map: one gives the field that pulls the x image onto y's
grid, the other the field that pulls y onto x's grid, from one pass.

Input: the x and y images, each ``(N, 1, D, H, W)`` on one grid; every spatial size a multiple
of 16. The backbone sees them as they are (``input_features="images"``, as published) or as
their MIND-SSC descriptors (``"mind"``: 12 channels each, so that a T1, a T2 or a CT of one
anatomy look alike to it and R learns to match structure, not contrast). Output: two
``(N, 3, D, H, W)`` voxel resampling fields, channel order (D, H, W), for
:class:`cocyclereg.geometry.spatial_transformer.SpatialTransformer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cocyclereg.descriptors import MIND_CHANNELS, mind_ssc

DOWNSAMPLINGS = 4
SIZE_MULTIPLE = 2**DOWNSAMPLINGS
INPUT_FEATURES = ("images", "mind")


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _triple(value) -> list[int]:
    return [value] * 3 if isinstance(value, int) else list(value)


def conv3d(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding
) -> torch.Tensor:
    """``F.conv3d`` (zero padding, no dilation or groups), run by oneDNN for every float32 CPU
    input. PyTorch sends a CPU convolution to its reference implementation (``slow_conv3d``)
    when ``N * C * D * H <= 20480``, a rule made for 2D inputs: for one 48x64x48 pair, R's
    2 -> 16 input convolution takes 20.5 ms there and 3.4 ms in oneDNN (same values to float
    rounding; gradients too). Autocast and other devices keep PyTorch's own choice."""
    if (
        input.device.type == "cpu"
        and input.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not _autocast_on_cpu()
    ):
        return torch.ops.aten.mkldnn_convolution(
            input, weight, bias, _triple(padding), _triple(stride), [1, 1, 1], 1
        )
    return F.conv3d(input, weight, bias, stride=stride, padding=padding)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (zero padding) computed by :func:`conv3d`; same parameters and state."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros" or self.dilation != (1, 1, 1) or self.groups != 1:
            return super()._conv_forward(input, weight, bias)
        return conv3d(input, weight, bias, self.stride, self.padding)


class ConvBlock(nn.Sequential):
    """Conv3d 3x3x3 (stride 1 or 2) followed by LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.LeakyReLU(0.2),
        )


class DualHeadUNet(nn.Module):
    """Dual-head UNet returning ``(flow_x2y, flow_y2x)`` in voxels.

    Args:
        encoder_features: channels at full resolution, then after each of the four stride-2
            convolutions (published: 16, 32, 32, 32, 32).
        decoder_features: channels of the four decoder convolutions, each followed by x2
            nearest upsampling and concatenation with the matching encoder map, then of the two
            full-resolution convolutions (published: 32, 32, 32, 32, 16, 16).
        head_init_std: standard deviation of the heads' initial weights (biases start at 0),
            so training starts from a near-identity warp.
        backbone_init: ``"pytorch"`` (published: PyTorch's default convolution initialisation,
            under which the feature maps shrink about twofold per layer, to a standard
            deviation of about 0.02 at the heads) or ``"kaiming"`` (He initialisation for
            LeakyReLU(0.2), biases 0: features of order one at every depth, so the heads'
            first updates move the fields by voxels, not by hundredths of one).
        activation_checkpointing: recompute the backbone's activations in the backward pass
            instead of storing them (less memory, about one extra forward pass of time).
        input_features: ``"images"`` (published: the two images, 2 input channels) or
            ``"mind"`` (the MIND-SSC descriptor of each image, radius 1, dilation 2 voxels,
            :func:`cocyclereg.descriptors.mind_ssc`: 24 input channels; differentiable, so
            gradients still reach the images, as the cycle terms need).
    """

    def __init__(
        self,
        encoder_features: Sequence[int] = (16, 32, 32, 32, 32),
        decoder_features: Sequence[int] = (32, 32, 32, 32, 16, 16),
        head_init_std: float = 1e-5,
        activation_checkpointing: bool = False,
        backbone_init: str = "pytorch",
        input_features: str = "images",
    ) -> None:
        super().__init__()
        if input_features not in INPUT_FEATURES:
            raise ValueError(
                f"input_features must be one of {INPUT_FEATURES}, got {input_features!r}"
            )
        self.input_features = input_features
        if backbone_init not in ("pytorch", "kaiming"):
            raise ValueError(f"backbone_init must be 'pytorch' or 'kaiming', got {backbone_init!r}")
        if len(encoder_features) != DOWNSAMPLINGS + 1 or len(decoder_features) != DOWNSAMPLINGS + 2:
            raise ValueError("need 5 encoder and 6 decoder feature counts")
        self.activation_checkpointing = activation_checkpointing
        self.encoder = nn.ModuleList()
        previous = 2 * MIND_CHANNELS if input_features == "mind" else 2
        for level, channels in enumerate(encoder_features):
            self.encoder.append(ConvBlock(previous, channels, stride=1 if level == 0 else 2))
            previous = channels
        self.decoder = nn.ModuleList()
        skips = list(encoder_features[:-1])[::-1]  # 1/8, 1/4, 1/2, full resolution
        for channels, skip in zip(decoder_features[:DOWNSAMPLINGS], skips, strict=True):
            self.decoder.append(ConvBlock(previous, channels))
            previous = channels + skip
        self.refine = nn.Sequential(
            *[
                ConvBlock(c_in, c_out)
                for c_in, c_out in zip(
                    (previous, *decoder_features[DOWNSAMPLINGS:-1]),
                    decoder_features[DOWNSAMPLINGS:],
                    strict=True,
                )
            ]
        )
        self.head_x2y = nn.Conv3d(decoder_features[-1], 3, kernel_size=3, padding=1)
        self.head_y2x = nn.Conv3d(decoder_features[-1], 3, kernel_size=3, padding=1)
        for head in (self.head_x2y, self.head_y2x):
            nn.init.normal_(head.weight, mean=0.0, std=head_init_std)
            nn.init.zeros_(head.bias)
        if backbone_init == "kaiming":
            for block in (*self.encoder, *self.decoder, *self.refine):
                convolution = block[0]
                nn.init.kaiming_normal_(convolution.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(convolution.bias)

    def _backbone(self, pair: torch.Tensor) -> torch.Tensor:
        features = []
        x = pair
        for block in self.encoder:
            x = block(x)
            features.append(x)
        x = features.pop()
        for block in self.decoder:
            x = F.interpolate(block(x), scale_factor=2, mode="nearest")
            x = torch.cat([x, features.pop()], dim=1)
        return self.refine(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fields for images ``x`` and ``y`` (each ``(N, 1, D, H, W)``, same grid).

        Returns ``(flow_x2y, flow_y2x)``: ``warp(x, flow_x2y)`` lies on y, ``warp(y, flow_y2x)``
        on x; each ``(N, 3, D, H, W)`` in voxels, channels (D, H, W).
        """
        if any(n % SIZE_MULTIPLE for n in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} is not a multiple of {SIZE_MULTIPLE}"
            )
        if self.input_features == "mind":
            pair = torch.cat([mind_ssc(x), mind_ssc(y)], dim=1)
        else:
            pair = torch.cat([x, y], dim=1)
        if self.activation_checkpointing and torch.is_grad_enabled():
            features = checkpoint(self._backbone, pair, use_reentrant=False)
        else:
            features = self._backbone(pair)
        # Both heads as one 6-channel convolution: a 3-channel output uses a CPU poorly.
        weight = torch.cat([self.head_x2y.weight, self.head_y2x.weight])
        bias = torch.cat([self.head_x2y.bias, self.head_y2x.bias])
        flows = conv3d(features, weight, bias, stride=1, padding=1)
        return flows[:, :3], flows[:, 3:]
