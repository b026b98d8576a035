"""Loss terms of CoCycleReg and its baselines.

All images are ``(N, C, D, H, W)``; fields ``(N, 3, D, H, W)`` in voxels.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


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


# The six face neighbours of a voxel, as offsets in voxels; MIND-SSC compares the 12 pairs of
# them that are sqrt(2) apart (the edges of the self-similarity context).
_SIX_NEIGHBOURS = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
_SSC_PAIRS = [
    (a, b)
    for a, b in itertools.combinations(_SIX_NEIGHBOURS, 2)
    if sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) == 2
]


def _shift(image: torch.Tensor, offset: tuple[int, int, int], dilation: int) -> torch.Tensor:
    """``image`` sampled at ``v + dilation * offset`` with edge replication: same shape."""
    pad = dilation
    padded = F.pad(image, (pad,) * 6, mode="replicate")
    d, h, w = (pad + dilation * o for o in offset)
    size_d, size_h, size_w = image.shape[2:]
    return padded[:, :, d : d + size_d, h : h + size_h, w : w + size_w]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptor (Heinrich et al., MICCAI 2013) of ``(N, 1, D, H, W)`` images.

    For each of the 12 neighbour pairs, the patch-wise sum of squared differences (box patch of
    radius ``radius``) between the image shifted to the two neighbours (``dilation`` voxels
    away); then ``exp(-(ssd - min ssd) / variance)`` with the variance estimated as the mean ssd
    of the voxel. Returns ``(N, 12, D, H, W)`` in (0, 1].
    """
    if image.shape[1] != 1:
        raise ValueError("mind_ssc expects single-channel images")
    kernel = 2 * radius + 1
    differences = torch.cat(
        [
            _shift(image, first, dilation) - _shift(image, second, dilation)
            for first, second in _SSC_PAIRS
        ],
        dim=1,
    )  # (N, 12, D, H, W): one padding and one box filter for all pairs
    padded = F.pad(differences.square(), (radius,) * 6, mode="replicate")
    ssd = F.avg_pool3d(padded, kernel, stride=1)
    ssd = ssd - ssd.amin(dim=1, keepdim=True)
    variance = ssd.mean(dim=1, keepdim=True)
    mean_variance = variance.mean().detach()
    variance = variance.clamp(min=mean_variance * 1e-3 + 1e-12, max=mean_variance * 1e3 + 1e-12)
    descriptor = torch.exp(-ssd / variance)
    return descriptor / descriptor.amax(dim=1, keepdim=True)


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
