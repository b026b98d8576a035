"""MIND-SSC: a modality-independent descriptor of local image structure.

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using
self-similarities", MICCAI 2013. Each voxel is described by how alike the image patches around
pairs of its neighbours are, relative to each other, so a T1, a T2 and a CT of the same anatomy
get (nearly) the same descriptor. The refinement compares descriptors; R may take them as input.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

# The six face neighbours of a voxel, as offsets in voxels; MIND-SSC compares the 12 pairs of
# them that are sqrt(2) apart (the edges of the self-similarity context).
_SIX_NEIGHBOURS = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
_SSC_PAIRS = [
    (a, b)
    for a, b in itertools.combinations(_SIX_NEIGHBOURS, 2)
    if sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) == 2
]
MIND_CHANNELS = len(_SSC_PAIRS)  # 12


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
