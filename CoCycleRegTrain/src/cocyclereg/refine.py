"""Instance optimisation: refining the network's field on the one pair being registered.

After the network pass, a few Adam steps adjust the voxel displacement field on the model grid
so that the MIND-SSC descriptors (Heinrich et al., MICCAI 2013) of the warped source match
those of the target, under the published diffusion regulariser (:func:`losses.smoothness`).
Both descriptors are computed once; each step warps the source's 12 descriptor channels with
the current field (as deeds and ConvexAdam do), so a step costs one trilinear warp of 12
channels and its gradient, not a new descriptor.

Shapes and units: ``flow`` is ``(N, 3, D, H, W)`` in voxels of the model grid, channel order
(D, H, W), pulling ``source`` onto ``target``'s grid (``W(source, flow) ~ target``); both images
are ``(N, 1, D, H, W)`` on that grid, normalised as the network saw them.
"""

from __future__ import annotations

import torch

from cocyclereg.config import Refinement
from cocyclereg.losses import mind_ssc, smoothness
from cocyclereg.spatial_transformer import SpatialTransformer


def refine_flow(
    flow: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    refinement: Refinement,
    mind_radius: int = 1,
    mind_dilation: int = 2,
) -> torch.Tensor:
    """``flow`` after ``refinement.steps`` Adam steps on
    ``mean((W(MIND(source), flow) - MIND(target))^2) + smoothness * diffusion(flow)``.

    Returns a new tensor (no gradient history) on ``flow``'s device; ``flow`` is unchanged.
    """
    if refinement.steps == 0:
        return flow.detach().clone()
    warp = SpatialTransformer()
    with torch.no_grad():
        source_descriptor = mind_ssc(source, mind_radius, mind_dilation)
        target_descriptor = mind_ssc(target, mind_radius, mind_dilation)
    refined = flow.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([refined], lr=refinement.learning_rate)
    with torch.enable_grad():
        for _ in range(refinement.steps):
            optimiser.zero_grad(set_to_none=True)
            mismatch = (warp(source_descriptor, refined) - target_descriptor).square().mean()
            loss = mismatch + refinement.smoothness * smoothness(refined)
            loss.backward()
            optimiser.step()
    return refined.detach()
