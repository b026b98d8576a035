"""T: 3D ResNet image-to-image translation generator (CycleGAN design, in 3D).

``(N, 1, D, H, W)`` -> ``(N, 1, D, H, W)`` in [-1, 1] (tanh): a 7x7x7 stem, two stride-2
downsamplings, residual blocks at 1/4 resolution, two transposed-convolution upsamplings, a
7x7x7 output convolution. Spatial sizes must be multiples of 4.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_PADDING = {"replicate": nn.ReplicationPad3d, "reflect": nn.ReflectionPad3d, "zeros": nn.ZeroPad3d}


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Instance norm (no affine, as CycleGAN), batch norm, or nothing."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, ReLU, dropout, pad, conv3, norm](x)."""

    def __init__(self, channels: int, norm: str, padding: str, dropout: float) -> None:
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [
            _PADDING[padding](1),
            nn.Conv3d(channels, channels, kernel_size=3, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            _PADDING[padding](1),
            nn.Conv3d(channels, channels, kernel_size=3, bias=bias),
            norm_layer(norm, channels),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """3D ResNet generator.

    Args:
        ngf: channels of the stem; 2*ngf and 4*ngf after the downsamplings (published 64).
        blocks: residual blocks at 1/4 resolution (published 9).
        norm: "instance" (published), "batch" or "none".
        padding: padding of the stem, blocks and output conv: "replicate" (published),
            "reflect" or "zeros".
        dropout: dropout probability inside residual blocks (published 0.5).
        activation_checkpointing: keep only each segment's input (stem and downsamplings,
            every residual block, upsamplings and output conv) and recompute the segment's
            activations in the backward pass: full-resolution activations are the bulk of
            training memory; costs about one more forward pass.
    """

    def __init__(
        self,
        ngf: int = 64,
        blocks: int = 9,
        norm: str = "instance",
        padding: str = "replicate",
        dropout: float = 0.5,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if padding not in _PADDING:
            raise ValueError(f"padding must be one of {sorted(_PADDING)}")
        bias = norm != "batch"
        self.activation_checkpointing = activation_checkpointing
        self.stem = nn.Sequential(
            _PADDING[padding](3),
            nn.Conv3d(1, ngf, kernel_size=7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        )
        down: list[nn.Module] = []
        for multiple in (1, 2):
            down += [
                nn.Conv3d(ngf * multiple, ngf * multiple * 2, 3, stride=2, padding=1, bias=bias),
                norm_layer(norm, ngf * multiple * 2),
                nn.ReLU(True),
            ]
        self.down = nn.Sequential(*down)
        self.blocks = nn.ModuleList(
            ResnetBlock(ngf * 4, norm, padding, dropout) for _ in range(blocks)
        )
        up: list[nn.Module] = []
        for multiple in (4, 2):
            up += [
                nn.ConvTranspose3d(
                    ngf * multiple,
                    ngf * multiple // 2,
                    3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=bias,
                ),
                norm_layer(norm, ngf * multiple // 2),
                nn.ReLU(True),
            ]
        self.up = nn.Sequential(*up)
        self.head = nn.Sequential(_PADDING[padding](3), nn.Conv3d(ngf, 1, kernel_size=7), nn.Tanh())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        segments = [self._encode, *self.blocks, self._decode]
        x = image
        for segment in segments:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(segment, x, use_reentrant=False)
            else:
                x = segment(x)
        return x

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        """Stem and downsamplings: ``(N, 1, D, H, W)`` -> ``(N, 4 ngf, D/4, H/4, W/4)``."""
        return self.down(self.stem(image))

    def _decode(self, features: torch.Tensor) -> torch.Tensor:
        """Upsamplings and output conv: ``(N, 4 ngf, D/4, H/4, W/4)`` -> ``(N, 1, D, H, W)``."""
        return self.head(self.up(features))
