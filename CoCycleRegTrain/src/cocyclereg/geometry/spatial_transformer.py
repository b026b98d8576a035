"""Warping torch volumes with a dense displacement field given in voxels.

Shapes and units:

* images: ``(N, C, D, H, W)``, any floating dtype; labels: any dtype holding whole numbers.
* ``flow``: ``(N, 3, D, H, W)``, displacement in **voxels** of the same grid, channel order
  (D, H, W). Output voxel ``(d, h, w)`` takes the input's value at
  ``(d + flow[0], h + flow[1], w + flow[2])``: a resampling (pull-back) field.
* Sampling is trilinear for images and nearest-neighbour for labels; positions outside the
  volume take the value of the nearest border voxel (``padding_mode="border"``).
* A zero field reproduces labels exactly and images to float rounding (a few ulps):
  ``grid_sample`` un-normalises ``linspace(-1, 1, n)`` to voxel centres only up to an ulp.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

WarpMode = Literal["bilinear", "nearest"]


class SpatialTransformer(nn.Module):
    """Differentiable warp of ``(N, C, D, H, W)`` volumes by a voxel displacement field.

    The identity sampling grid is built once per (spatial shape, device, dtype) and cached;
    nothing is tied to a device, so the module runs wherever its inputs are.

    Args:
        mode: ``"bilinear"`` (trilinear in 3D) for images, ``"nearest"`` for labelmaps.
    """

    def __init__(self, mode: WarpMode = "bilinear") -> None:
        super().__init__()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.mode = mode
        self._identity_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _identity_and_scale(
        self, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Identity grid ``(1, D, H, W, 3)`` in grid_sample's normalised (x, y, z) coordinates,
        and the ``(1, 3, 1, 1, 1)`` factors turning voxel displacements (D, H, W order) into
        normalised ones."""
        key = (shape, device, dtype)
        cached = self._identity_cache.get(key)
        if cached is None:
            axes = [
                torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)
                if n > 1
                else torch.zeros(1, device=device, dtype=dtype)
                for n in shape
            ]
            d, h, w = torch.meshgrid(*axes, indexing="ij")
            identity = torch.stack([w, h, d], dim=-1).unsqueeze(0)
            scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=device, dtype=dtype)
            cached = (identity, scale.view(1, 3, 1, 1, 1))
            self._identity_cache[key] = cached
        return cached

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Warp ``image`` (N, C, D, H, W) by ``flow`` (N, 3, D, H, W) in voxels; same shape out."""
        if image.dim() != 5 or flow.dim() != 5 or flow.shape[1] != 3:
            raise ValueError(
                f"expected image (N, C, D, H, W) and flow (N, 3, D, H, W), "
                f"got {tuple(image.shape)} and {tuple(flow.shape)}"
            )
        if image.shape[2:] != flow.shape[2:] or image.shape[0] not in (1, flow.shape[0]):
            raise ValueError(
                f"image {tuple(image.shape)} and flow {tuple(flow.shape)} do not share a grid"
            )
        return self._sample(image, self._sampling_grid(flow))

    def at(self, image: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``forward(image, flow)`` at the voxels of a boolean ``(D, H, W)`` mask only, as
        ``(N, C, M)`` with ``M`` the mask's voxel count in C order; costs ``M`` samples, not
        ``D * H * W``."""
        if mask.shape != flow.shape[2:] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean {tuple(flow.shape[2:])} array")
        points = self._sampling_grid(flow)[:, mask]  # (N, M, 3)
        return self._sample(image, points[:, None, None])[:, :, 0, 0]

    def _sampling_grid(self, flow: torch.Tensor) -> torch.Tensor:
        """Where ``flow`` (N, 3, D, H, W) samples, as grid_sample's (N, D, H, W, [x, y, z])."""
        identity, scale = self._identity_and_scale(tuple(flow.shape[2:]), flow.device, flow.dtype)
        return identity + (flow * scale).permute(0, 2, 3, 4, 1).flip(-1)

    def _sample(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``image`` (N or 1, C, D, H, W) at normalised ``points`` (N, ..., 3), border-clamped.

        On the CPU, ``grid_sample`` in 3D runs one thread per batch item (forward and
        backward): a single item's points are dealt into one part per thread, the image
        shared (expanded, not copied), and the parts put back in order. Not when the image
        needs a gradient: its backward would hold one image-sized gradient per part."""
        image = image.to(points.dtype) if image.dtype != points.dtype else image
        parts = torch.get_num_threads() if points.device.type == "cpu" else 1
        small = points[0, ..., 0].numel() < 4096
        if points.shape[0] != 1 or parts == 1 or small or image.requires_grad:
            if image.shape[0] != points.shape[0]:
                image = image.expand(points.shape[0], *image.shape[1:])
            return self._grid_sample(image, points)
        spatial = points.shape[1:-1]
        flat = points.reshape(-1, 3)
        count = flat.shape[0]
        per_part = -(-count // parts)
        if per_part * parts > count:  # repeat the last point: a valid position, dropped after
            flat = torch.cat([flat, flat[-1:].expand(per_part * parts - count, 3)])
        sampled = self._grid_sample(
            image.expand(parts, *image.shape[1:]), flat.view(parts, 1, 1, per_part, 3)
        )  # (parts, C, 1, 1, per_part)
        channels = sampled.shape[1]
        sampled = sampled.permute(1, 0, 2, 3, 4).reshape(channels, -1)[:, :count]
        return sampled.reshape(1, channels, *spatial)

    def _grid_sample(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(
            image, points, mode=self.mode, padding_mode="border", align_corners=True
        )


def warp_labels(
    labels: torch.Tensor, flow: torch.Tensor, transformer: SpatialTransformer | None = None
) -> torch.Tensor:
    """Warp a labelmap (N, 1, D, H, W) by nearest-neighbour sampling; keeps its dtype and values."""
    transformer = transformer if transformer is not None else SpatialTransformer("nearest")
    if transformer.mode != "nearest":
        raise ValueError("labels must be warped with a nearest-neighbour transformer")
    warped = transformer(labels.to(flow.dtype), flow)
    return torch.round(warped).to(labels.dtype)
