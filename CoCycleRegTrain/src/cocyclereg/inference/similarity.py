"""How similar two images of different modalities are: whether a registration helped.

Normalised mutual information (Studholme et al. 1999), ``NMI = (H(F) + H(M)) / H(F, M)`` with
``H`` the Shannon entropy of the intensity histograms (``BINS`` bins over [0, 1]) of the fixed
image ``F`` and the moving image ``M`` on the fixed image's foreground. It ranges from 1
(independent intensities) to 2 (one image determines the other) and does not care which
intensity of one modality goes with which of the other, so it compares a T1 with a T2 or a CT
with an MRI. Higher is better. It is not the refinement's objective (MIND-SSC), so it measures
the result independently of what was optimised.
"""

from __future__ import annotations

import numpy as np
import torch

from cocyclereg.geometry.spatial_transformer import SpatialTransformer

BINS = 32
FOREGROUND = 0.1  # fixed voxels above this normalised intensity count as foreground


def normalized_mutual_information(
    fixed: np.ndarray, moving: np.ndarray, mask: np.ndarray | None = None, bins: int = BINS
) -> float:
    """NMI of two arrays of one shape with intensities in [0, 1] (values outside are clipped)
    over ``mask`` (boolean, same shape; default all voxels); NaN if the mask is empty."""
    fixed, moving = np.asarray(fixed, np.float64), np.asarray(moving, np.float64)
    if fixed.shape != moving.shape:
        raise ValueError(f"shapes differ: {fixed.shape} and {moving.shape}")
    if mask is not None:
        fixed, moving = fixed[mask], moving[mask]
    if fixed.size == 0:
        return float("nan")
    joint, _, _ = np.histogram2d(
        np.clip(fixed.ravel(), 0, 1), np.clip(moving.ravel(), 0, 1), bins, [[0, 1], [0, 1]]
    )
    joint /= joint.sum()

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint_entropy = entropy(joint)
    if joint_entropy == 0:
        return 2.0  # both constant on the mask: each determines the other
    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / joint_entropy


def registration_similarity(
    fixed: torch.Tensor,
    moving_as_given: torch.Tensor,
    moving_prealigned: torch.Tensor,
    flow: torch.Tensor,
) -> dict[str, float]:
    """NMI on the fixed image's foreground (normalised intensity above ``FOREGROUND``) of the
    grid the field lives on, of the fixed image with the moving image: as given
    (``before``), after the linear pre-alignment (``prealigned``) and after the field ``flow``
    (``after``). Images ``(1, 1, D, H, W)`` normalised to [0, 1]; ``flow`` ``(1, 3, D, H, W)``
    voxels, the resampling field of ``moving_prealigned``."""
    with torch.no_grad():
        warped = SpatialTransformer()(moving_prealigned, flow.to(moving_prealigned.dtype))
    target = fixed[0, 0].detach().cpu().numpy()
    mask = target > FOREGROUND
    images = {"before": moving_as_given, "prealigned": moving_prealigned, "after": warped}
    return {
        stage: normalized_mutual_information(target, image[0, 0].detach().cpu().numpy(), mask)
        for stage, image in images.items()
    }
