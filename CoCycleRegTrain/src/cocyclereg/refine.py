"""Instance optimisation: refining the network's field on the one pair being registered.

After the network pass, a few Adam steps adjust the voxel displacement field on the model grid
so that the MIND-SSC descriptors (Heinrich et al., MICCAI 2013) of the warped source match
those of the target, under the published diffusion regulariser (:func:`losses.smoothness`).
Both descriptors are computed once; each step warps the source's 12 descriptor channels with
the current field (as deeds and ConvexAdam do), so a step costs one trilinear warp of 12
channels and its gradient, not a new descriptor. The similarity is measured only over the
target's foreground grown by a few voxels (:func:`_region`; the regulariser covers the whole
grid), so an empty background costs nothing, and only the field inside that region moves:
Adam scales every gradient to a unit step, so voxels pushed by the regulariser alone would
wander (and fold) with nothing in the images to hold them.

Shapes and units: ``flow`` is ``(N, 3, D, H, W)`` in voxels of the model grid, channel order
(D, H, W), pulling ``source`` onto ``target``'s grid (``W(source, flow) ~ target``); both images
are ``(N, 1, D, H, W)`` on that grid, normalised as the network saw them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        mask = _region(target)
        target_descriptor = mind_ssc(target, mind_radius, mind_dilation)[:, :, mask]
    refined = flow.detach().clone().requires_grad_(True)
    adam = _Adam(refined, refinement.learning_rate)
    with torch.enable_grad():
        for _ in range(refinement.steps):
            refined.grad = None
            warped = warp.at(source_descriptor, refined, mask)
            mismatch = (warped - target_descriptor).square().mean()
            loss = mismatch + refinement.smoothness * smoothness(refined)
            loss.backward()
            refined.grad[:, :, ~mask] = 0  # no image evidence: Adam would still move them
            adam.step()
    return refined.detach()


REGION_THRESHOLD = 0.05  # of the normalised [0, 1] intensity: above it is foreground
REGION_MARGIN = 3  # voxels of background kept around the foreground (edges carry the signal)


def _region(target: torch.Tensor) -> torch.Tensor:
    """The ``(D, H, W)`` voxels where the similarity is measured: the target's foreground in any
    batch item, grown by ``REGION_MARGIN`` voxels (all voxels if it has none)."""
    foreground = (target > REGION_THRESHOLD).any(dim=0).float()  # (1, D, H, W)
    grown = F.max_pool3d(foreground, 2 * REGION_MARGIN + 1, stride=1, padding=REGION_MARGIN)
    region = grown[0] > 0
    return region if region.any() else torch.ones_like(region)


class _Adam:
    """Adam (Kingma and Ba 2015; betas 0.9, 0.999, eps 1e-8) on one tensor, in place.

    ``torch.optim.Adam`` would do the same, but constructing it imports ``torch._dynamo``,
    which costs more than a whole refinement (1.5 s measured) in a short-lived process.
    """

    def __init__(self, parameter: torch.Tensor, learning_rate: float) -> None:
        self.parameter, self.learning_rate = parameter, learning_rate
        self.first = torch.zeros_like(parameter)
        self.second = torch.zeros_like(parameter)
        self.steps = 0

    @torch.no_grad()
    def step(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        gradient = self.parameter.grad
        self.steps += 1
        self.first.mul_(beta1).add_(gradient, alpha=1 - beta1)
        self.second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        step_size = self.learning_rate / (1 - beta1**self.steps)
        denominator = (self.second / (1 - beta2**self.steps)).sqrt_().add_(eps)
        self.parameter.addcdiv_(self.first, denominator, value=-step_size)
