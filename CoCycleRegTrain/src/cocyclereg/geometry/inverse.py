"""The inverse of a resampling field, by fixed-point iteration.

A resampling field ``u`` (voxels, ``(N, 3, D, H, W)``, channel order D, H, W) maps each voxel
``q`` of its grid to the point ``q + u(q)`` to sample. Its inverse ``v`` on the same grid maps
those points back: ``p + v(p) = q`` whenever ``q + u(q) = p``, that is ``v(p) = -u(p + v(p))``.
Iterating ``v <- -u(p + v)`` (trilinear, positions clamped to the grid) converges where the
map is a contraction, i.e. where ``u``'s voxel gradient stays below 1: every field free of
folding that a smooth registration gives. The step at a voxel reads only ``u``, so every voxel
iterates on its own: on the CPU a compiled loop (:func:`cocyclereg.geometry.kernels.inverse_flow`)
stops each voxel once it has converged; elsewhere whole-field steps with
:class:`~cocyclereg.geometry.spatial_transformer.SpatialTransformer` run ``iterations`` times.
"""

from __future__ import annotations

import numpy as np
import torch

from cocyclereg.geometry import kernels
from cocyclereg.geometry.spatial_transformer import SpatialTransformer

ITERATIONS = 40
TOLERANCE_VOXELS = 1e-2


@torch.no_grad()
def inverse_flow(
    flow: torch.Tensor, iterations: int = ITERATIONS, tolerance: float = TOLERANCE_VOXELS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v, residual)``: ``v`` with ``v(p) = -u(p + v(p))``, ``flow``'s shape, device and
    dtype, and the residual ``|v(p) + u(p + v(p))|`` per voxel, ``(N, D, H, W)`` in voxels
    (along each axis of the grid: multiply by the spacing for mm on an anisotropic grid).

    Args:
        flow: ``u``, ``(N, 3, D, H, W)`` voxels.
        iterations: the most steps (whole-field steps off the CPU: exactly this many).
        tolerance: voxels; on the CPU a voxel stops once its step is smaller.
    """
    if flow.dim() != 5 or flow.shape[1] != 3:
        raise ValueError(f"expected a flow (N, 3, D, H, W), got {tuple(flow.shape)}")
    if flow.device.type == "cpu" and flow.dtype == torch.float32:
        inverse = torch.empty_like(flow)
        residual = torch.empty((flow.shape[0], *flow.shape[2:]), dtype=flow.dtype)
        for item in range(flow.shape[0]):
            kernels.inverse_flow(
                np.ascontiguousarray(flow[item].numpy()),
                iterations,
                tolerance,
                inverse[item].numpy(),
                residual[item].numpy(),
            )
        return inverse, residual
    warp = SpatialTransformer("bilinear")
    inverse = -flow
    for _ in range(iterations):
        inverse = -warp(flow, inverse)
    return inverse, (inverse + warp(flow, inverse)).norm(dim=1)
