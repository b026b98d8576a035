"""D: unconditional 3D PatchGAN discriminator.

``(N, 1, D, H, W)`` -> ``(N, 1, d, h, w)`` real/fake scores, one per overlapping patch
(LSGAN: no sigmoid). 4x4x4 convolutions with LeakyReLU(0.2); ``layers`` stride-2 stages.
"""

from __future__ import annotations

from torch import nn

from cocyclereg.networks.generator import norm_layer


class PatchDiscriminator(nn.Module):
    """PatchGAN with ``ndf`` base channels (published 64) and ``layers`` stages (published 3)."""

    def __init__(self, ndf: int = 64, layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        bias = norm != "batch"
        modules: list[nn.Module] = [
            nn.Conv3d(1, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        channels = ndf
        for layer in range(1, layers + 1):
            next_channels = ndf * min(2**layer, 8)
            stride = 2 if layer < layers else 1
            modules += [
                nn.Conv3d(
                    channels, next_channels, kernel_size=4, stride=stride, padding=1, bias=bias
                ),
                norm_layer(norm, next_channels),
                nn.LeakyReLU(0.2, True),
            ]
            channels = next_channels
        modules.append(nn.Conv3d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*modules)

    def forward(self, image):
        return self.model(image)
