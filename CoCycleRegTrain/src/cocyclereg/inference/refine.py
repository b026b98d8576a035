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

A finer level (:class:`cocyclereg.config.Refinement`) runs the same steps on a grid of finer
voxels over the same box (:meth:`cocyclereg.geometry.grid.Grid.with_spacing`), the field carried
there by :func:`flow_on_grid` and the images resampled from their full resolution.

Shapes and units: ``flow`` is ``(N, 3, D, H, W)`` in voxels of its grid, channel order
(D, H, W), pulling ``source`` onto ``target``'s grid (``W(source, flow) ~ target``); both images
are ``(N, 1, D, H, W)`` on that grid, normalised as the network saw them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cocyclereg.config import Refinement
from cocyclereg.descriptors import mind_ssc
from cocyclereg.geometry import kernels
from cocyclereg.geometry.dense import composed_displacement
from cocyclereg.geometry.displacement import (
    displacement_mm_to_voxel_flow,
    voxel_flow_to_displacement_mm,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.learning.losses import gaussian_blur


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
    (:func:`cocyclereg.geometry.kernels.warped_mismatch_gradient`), elsewhere from autograd through
    the warp: the same numbers (tested), except where a point lands exactly on a voxel centre
    (a zero start field): there the interpolant has a kink, the compiled pass takes the mean
    of its one-sided slopes and autograd one of them, chosen by float rounding.
    """
    steps, weight = refinement.steps, refinement.smoothness
    if steps == 0:
        return flow.detach().clone()
    with torch.no_grad():
        source_descriptor = mind_ssc(source, mind_radius, mind_dilation)
        mask = _region(target)
        target_descriptor = mind_ssc(target, mind_radius, mind_dilation)[:, :, mask]
    compiled = flow.device.type == "cpu" and flow.dtype == torch.float32
    voxels = torch.nonzero(mask)  # (M, 3) in C order, as boolean indexing orders them
    flat_voxels = torch.nonzero(mask.flatten())[:, 0]
    if compiled:
        source_descriptor = _channels_last(source_descriptor)
        target_descriptor = target_descriptor.transpose(1, 2).contiguous()  # (N, M, C)
    refined = flow.detach().clone(memory_format=torch.contiguous_format)
    adam = _Adam(refined, refinement.learning_rate)
    inside = mask.to(refined.dtype)  # no image evidence outside: Adam would still move them
    for _ in range(steps):
        displacement = refined[:, :, mask]  # (N, 3, M)
        if compiled:
            similarity = _compiled_mismatch_gradient(
                source_descriptor, target_descriptor, displacement, voxels
            )
        else:
            similarity = _autograd_mismatch_gradient(
                source_descriptor, target_descriptor, displacement, voxels
            )
        gradient = smoothness_gradient(refined).mul_(weight * inside)
        gradient.view(*gradient.shape[:2], -1).index_add_(2, flat_voxels, similarity)
        adam.step(gradient)
    return refined


def smoothness_gradient(flow: torch.Tensor) -> torch.Tensor:
    """``d smoothness(flow) / d flow`` (:func:`cocyclereg.learning.losses.smoothness`), ``flow``'s
    shape, in closed form: for each axis, ``2 (d[i-1] - d[i]) / (3 n)`` with ``d`` the forward
    differences along it (zero beyond the ends) and ``n`` their count. The same numbers as
    autograd (tested) at a fraction of its cost on a fine grid."""
    gradient = torch.zeros_like(flow, memory_format=torch.contiguous_format)
    for axis in (2, 3, 4):
        length = flow.shape[axis]
        if length < 2:
            continue
        difference = flow.narrow(axis, 1, length - 1) - flow.narrow(axis, 0, length - 1)
        difference *= 2.0 / (3 * difference.numel())
        gradient.narrow(axis, 1, length - 1).add_(difference)
        gradient.narrow(axis, 0, length - 1).sub_(difference)
    return gradient


def flow_on_grid(flow: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """A resampling field moved from ``grid`` to ``target`` (both in the same physical space,
    e.g. the model grid and :meth:`Grid.with_spacing` of it): ``(1, 3, D, H, W)`` voxels of
    ``grid`` -> ``(1, 3, D', H', W')`` voxels of ``target``, float32 on ``flow``'s device. The
    displacement in mm is interpolated as ITK's DisplacementFieldTransform interpolates it
    (:func:`cocyclereg.geometry.dense.composed_displacement`: trilinear, zero beyond half a voxel
    outside ``grid``), so the finer grid starts from exactly the map the coarse one gave."""
    field_mm = voxel_flow_to_displacement_mm(flow[0].double().cpu().numpy(), grid)
    moved_mm = composed_displacement(target, field_mm, grid)
    moved = displacement_mm_to_voxel_flow(moved_mm, target)
    return torch.from_numpy(moved).float()[None].to(flow.device)


def _autograd_mismatch_gradient(source_descriptor, target_descriptor, displacement, voxels):
    """``d mean((W(source, u) - target)^2) / d u`` at the voxels ``voxels`` (``(M, 3)``, of the
    source's grid), ``u`` the displacement there (``displacement``, ``(N, 3, M)`` voxels) and
    ``target_descriptor`` ``(N, C, M)`` the target's values there; ``(N, 3, M)``, by autograd
    through ``grid_sample`` (trilinear, border-clamped: :class:`SpatialTransformer`'s warp)."""
    sizes = torch.tensor(source_descriptor.shape[2:], dtype=displacement.dtype)
    sizes = sizes.to(displacement.device).view(1, 3, 1)
    displacement = displacement.detach().requires_grad_(True)
    with torch.enable_grad():
        position = voxels.T.to(displacement)[None] + displacement  # (N, 3, M) in (d, h, w)
        normalised = 2 * position / (sizes - 1).clamp(min=1) - 1
        points = normalised.transpose(1, 2).flip(-1)[:, :, None, None]  # (N, M, 1, 1, xyz)
        source = source_descriptor.to(displacement.dtype)
        if source.shape[0] != points.shape[0]:
            source = source.expand(points.shape[0], *source.shape[1:])
        warped = F.grid_sample(
            source, points, mode="bilinear", padding_mode="border", align_corners=True
        )[:, :, :, 0, 0]
        (warped - target_descriptor).square().mean().backward()
    return displacement.grad


def _channels_last(source_descriptor: torch.Tensor) -> list[np.ndarray]:
    """Per batch item, the source descriptor as a contiguous ``(D, H, W, C)`` numpy array:
    each voxel's channels side by side, as
    :func:`cocyclereg.geometry.kernels.warped_mismatch_gradient` reads them."""
    return [item.permute(1, 2, 3, 0).contiguous().numpy() for item in source_descriptor]


def _compiled_mismatch_gradient(sources, target_descriptor, displacement, voxels):
    """As :func:`_autograd_mismatch_gradient`, for float32 CPU tensors, by
    :func:`cocyclereg.geometry.kernels.warped_mismatch_gradient`; ``sources`` from
    :func:`_channels_last`, ``target_descriptor`` ``(N, M, C)``."""
    voxels = np.ascontiguousarray(voxels.numpy())
    items, (count, channels) = displacement.shape[0], target_descriptor.shape[1:]
    gradient = torch.empty(items, 3, count)
    for item in range(items):
        kernels.warped_mismatch_gradient(
            sources[item if len(sources) > 1 else 0],
            np.ascontiguousarray(target_descriptor[item].numpy()),
            voxels,
            np.ascontiguousarray(displacement[item].numpy()),
            gradient[item].numpy(),
        )
    return gradient / (items * channels * count)


REGION_THRESHOLD = 0.05  # of the normalised [0, 1] intensity: above it is foreground
REGION_MARGIN = 3  # voxels of background kept around the foreground (edges carry the signal)
REGION_BLUR = 1.0  # voxels (Gaussian sigma) of smoothing before the threshold


def _region(target: torch.Tensor) -> torch.Tensor:
    """The ``(D, H, W)`` voxels where the similarity is measured: the target's foreground in any
    batch item, grown by ``REGION_MARGIN`` voxels (all voxels if it has none).

    Foreground is where the target, smoothed by ``REGION_BLUR`` voxels, exceeds
    ``REGION_THRESHOLD``: scanner noise in a background that was never masked has single
    voxels above the threshold, and growing each of them by the margin would spread the
    region over most of the grid (measured on a skull-stripped BraTS T1 with 1.5 % noise: 89 %
    of the grid instead of 22 %, four times the work, the similarity pulled by noise); the
    smoothing removes them and leaves the edge of the anatomy where it was."""
    smoothed = gaussian_blur(target, REGION_BLUR)
    foreground = (smoothed > REGION_THRESHOLD).any(dim=0).float()  # (1, D, H, W)
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
