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

import numpy as np
import torch
import torch.nn.functional as F

from cocyclereg import kernels
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
    On the CPU (float32) the similarity's gradient comes from one compiled pass
    (:func:`cocyclereg.kernels.warped_mismatch_gradient`), elsewhere from autograd through
    the warp: the same numbers (tested), except where a point lands exactly on a voxel centre
    (a zero start field): there the interpolant has a kink, the compiled pass takes the mean
    of its one-sided slopes and autograd one of them, chosen by float rounding.
    """
    if refinement.steps == 0:
        return flow.detach().clone()
    with torch.no_grad():
        source_descriptor = mind_ssc(source, mind_radius, mind_dilation)
        mask = _region(target)
        target_descriptor = mind_ssc(target, mind_radius, mind_dilation)[:, :, mask]
    compiled = flow.device.type == "cpu" and flow.dtype == torch.float32
    if compiled:
        voxels = np.ascontiguousarray(torch.nonzero(mask).numpy())
        descriptors = _channels_last(source_descriptor, target_descriptor)
    warp = SpatialTransformer()
    refined = flow.detach().clone()
    adam = _Adam(refined, refinement.learning_rate)
    for _ in range(refinement.steps):
        regularised = refined.clone().requires_grad_(True)
        with torch.enable_grad():
            (refinement.smoothness * smoothness(regularised)).backward()
        gradient = regularised.grad
        if compiled:
            similarity = _compiled_mismatch_gradient(descriptors, refined, voxels)
        else:
            similarity = _autograd_mismatch_gradient(
                warp, source_descriptor, target_descriptor, refined, mask
            )
        gradient[:, :, mask] += similarity
        gradient[:, :, ~mask] = 0  # no image evidence: Adam would still move them
        adam.step(gradient)
    return refined


def _autograd_mismatch_gradient(warp, source_descriptor, target_descriptor, flow, mask):
    """``d mean((W(source, flow) - target)^2) / d flow`` at the mask's voxels, ``(N, 3, M)``,
    by autograd through :meth:`SpatialTransformer.at`."""
    flow = flow.detach().requires_grad_(True)
    with torch.enable_grad():
        warped = warp.at(source_descriptor, flow, mask)
        (warped - target_descriptor).square().mean().backward()
    return flow.grad[:, :, mask]


def _channels_last(source_descriptor, target_descriptor) -> list[tuple]:
    """Per batch item, the source descriptor ``(D, H, W, C)`` and the target's values
    ``(M, C)`` as contiguous numpy arrays: each voxel's channels side by side, as
    :func:`cocyclereg.kernels.warped_mismatch_gradient` reads them."""
    items = []
    for item in range(target_descriptor.shape[0]):
        source_item = source_descriptor[item if source_descriptor.shape[0] > 1 else 0]
        items.append(
            (
                source_item.permute(1, 2, 3, 0).contiguous().numpy(),
                target_descriptor[item].T.contiguous().numpy(),
            )
        )
    return items


def _compiled_mismatch_gradient(descriptors, flow, voxels):
    """As :func:`_autograd_mismatch_gradient`, for float32 CPU tensors, by
    :func:`cocyclereg.kernels.warped_mismatch_gradient`; ``descriptors`` from
    :func:`_channels_last`, ``voxels`` the mask's ``(M, 3)`` indices in C order."""
    count, channels = descriptors[0][1].shape
    gradient = torch.empty(len(descriptors), 3, count)
    for item, (source, target) in enumerate(descriptors):
        kernels.warped_mismatch_gradient(
            source, target, voxels, flow[item].contiguous().numpy(), gradient[item].numpy()
        )
    return gradient / (len(descriptors) * channels * count)


REGION_THRESHOLD = 0.05  # of the normalised [0, 1] intensity: above it is foreground
REGION_MARGIN = 3  # voxels of background kept around the foreground (edges carry the signal)


def _region(target: torch.Tensor) -> torch.Tensor:
    """The ``(D, H, W)`` voxels where the similarity is measured: the target's foreground in any
    batch item, grown by ``REGION_MARGIN`` voxels (all voxels if it has none)."""
    foreground = (target > REGION_THRESHOLD).any(dim=0).float()  # (1, D, H, W)
    grown = foreground
    for axis in range(3):  # the cube's maximum, one axis at a time (a 7^3 window costs 15x more)
        window = [1, 1, 1]
        window[axis] = 2 * REGION_MARGIN + 1
        padding = [w // 2 for w in window]
        grown = F.max_pool3d(grown, window, stride=1, padding=padding)
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
    def step(
        self,
        gradient: torch.Tensor | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        """One update with ``gradient`` (default: the parameter's ``.grad``)."""
        gradient = self.parameter.grad if gradient is None else gradient
        self.steps += 1
        self.first.mul_(beta1).add_(gradient, alpha=1 - beta1)
        self.second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        step_size = self.learning_rate / (1 - beta1**self.steps)
        denominator = (self.second / (1 - beta2**self.steps)).sqrt_().add_(eps)
        self.parameter.addcdiv_(self.first, denominator, value=-step_size)
