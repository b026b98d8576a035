"""Loss terms of CoCycleReg and its baselines.

All images are ``(N, C, D, H, W)``; fields ``(N, 3, D, H, W)`` in voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cocyclereg.descriptors import mind_ssc


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (the paper's similarity, cycle and CoCycle term)."""
    return (prediction - target).abs().mean()


def gaussian_blur(image: torch.Tensor, sigma_voxels: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(N, C, D, H, W)`` images (sigma in voxels, edges
    replicated); the identity for ``sigma_voxels <= 0``."""
    if sigma_voxels <= 0:
        return image
    radius = max(1, round(3 * sigma_voxels))
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma_voxels) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        weight = kernel.view(shape).expand(channels, 1, *shape[2:])
        padding = [0, 0, 0, 0, 0, 0]
        padding[2 * (2 - axis)] = padding[2 * (2 - axis) + 1] = radius
        image = F.conv3d(F.pad(image, padding, mode="replicate"), weight, groups=channels)
    return image


def lsgan_generator(scores_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN loss of a generator: mean((D(fake) - 1)^2)."""
    return (scores_fake - 1).square().mean()


def lsgan_discriminator(scores_real: torch.Tensor, scores_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN loss of a discriminator: 0.5 * [mean((D(real) - 1)^2) + mean(D(fake)^2)]."""
    return 0.5 * ((scores_real - 1).square().mean() + scores_fake.square().mean())


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser as published: mean squared forward differences of the voxel
    displacement along D, H and W, averaged over the three axes."""
    dz = flow[:, :, 1:] - flow[:, :, :-1]
    dy = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    dx = flow[:, :, :, :, 1:] - flow[:, :, :, :, :-1]
    return (dz.square().mean() + dy.square().mean() + dx.square().mean()) / 3


def mind_loss(
    prediction: torch.Tensor, target: torch.Tensor, radius: int = 1, dilation: int = 2
) -> torch.Tensor:
    """Mean squared difference of MIND-SSC descriptors: a modality-independent similarity."""
    return (
        (mind_ssc(prediction, radius, dilation) - mind_ssc(target, radius, dilation))
        .square()
        .mean()
    )


def deformation_residual(
    flow: torch.Tensor, deformation: torch.Tensor, deformed: str, warp
) -> torch.Tensor:
    """Where a registration field samples minus where it should, per voxel (voxels).

    ``flow`` pulls image ``a`` onto the grid of image ``b`` (``W(a, flow)(p) = a(p + flow(p))``);
    ``deformation`` is the known resampling field that deformed one of them (both
    ``(N, 3, D, H, W)``, channels D, H, W). ``deformed="a"``: ``a_def(p) = a(p + deformation(p))``
    and a perfect flow satisfies ``p + flow(p) + deformation(p + flow(p)) = p``;
    ``deformed="b"``: a perfect flow equals ``deformation``. ``warp`` is a
    :class:`cocyclereg.geometry.spatial_transformer.SpatialTransformer`. Returns ``(N, 3, D, H,
    W)``.
    """
    if deformed == "a":
        return flow + warp(deformation, flow)
    if deformed == "b":
        return flow - deformation
    raise ValueError(f"deformed must be 'a' or 'b', got {deformed!r}")
