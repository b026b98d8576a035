"""The network's two fields for a pair on the model grid, optionally mirror-averaged.

R takes its images in the model's order (x, y) and returns ``(flow_x2y, flow_y2x)``; a
registration wants ``(forward, inverse)``: the field on the fixed image's grid that samples
the moving image, and the one on the moving side that samples the fixed image. Which head is
which follows from which image is the model's x.

Mirror averaging (test-time augmentation): a head is nearly left-right symmetric, so the pair
mirrored left-right is another plausible pair whose fields, mirrored back, estimate the same
motion with different errors. On an LPS model grid (``orientation: LPS`` in the model file)
the last array axis W runs along the patient's right-left axis, so the mirror reverses W, and a
field of the mirrored pair maps back by reversing W and negating its W component. The average of
the two estimates is what is returned; the network runs twice.
"""

from __future__ import annotations

import torch

from cocyclereg.networks import DualHeadUNet

# Multiplies a flow's (D, H, W) channels when the grid is mirrored along W.
_MIRROR_SIGN = (1.0, 1.0, -1.0)


def mirroring_refusal(orientation: str) -> str | None:
    """Why a model grid of ``orientation`` cannot be mirror-averaged (``None``: it can).

    Only an LPS model grid puts the patient's left-right axis on W; a grid that follows the
    image may have any axis there, and mirroring another one would average a different head.
    """
    if orientation == "LPS":
        return None
    return (
        "mirror averaging needs an LPS model grid (its last axis the patient's left-right "
        f"axis); this model's grid follows the image (orientation {orientation!r})"
    )


def mirrored_flow(flow: torch.Tensor) -> torch.Tensor:
    """``flow`` (``(N, 3, D, H, W)`` voxels, channels D, H, W) of a pair mirrored along W, as a
    flow of the pair as given: W reversed and the W component negated. Its own inverse."""
    sign = torch.tensor(_MIRROR_SIGN, dtype=flow.dtype, device=flow.device).view(1, 3, 1, 1, 1)
    return flow.flip(-1) * sign


def _heads(
    network: DualHeadUNet, moving: torch.Tensor, fixed: torch.Tensor, moving_is_x: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if moving_is_x:
        forward, inverse = network(moving, fixed)
    else:
        inverse, forward = network(fixed, moving)
    return forward, inverse


@torch.no_grad()
def network_fields(
    network: DualHeadUNet,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    moving_is_x: bool,
    mirror_average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward, inverse)`` resampling fields, ``(N, 3, D, H, W)`` voxels on the model grid
    (channels D, H, W): ``forward`` samples ``moving`` at each voxel of ``fixed``, ``inverse``
    samples ``fixed`` at each voxel of ``moving``.

    Args:
        network: R, in eval mode.
        moving, fixed: ``(N, 1, D, H, W)`` normalised images on the model grid (the moving one
            pre-aligned).
        moving_is_x: the moving image is the model's x (its head x2y gives ``forward``).
        mirror_average: average with the fields of the pair mirrored along W (the patient's
            left-right axis on an LPS model grid; see the module docstring). Doubles the time.
    """
    forward, inverse = _heads(network, moving, fixed, moving_is_x)
    if mirror_average:
        forward_m, inverse_m = _heads(network, moving.flip(-1), fixed.flip(-1), moving_is_x)
        forward = 0.5 * (forward + mirrored_flow(forward_m))
        inverse = 0.5 * (inverse + mirrored_flow(inverse_m))
    return forward, inverse
