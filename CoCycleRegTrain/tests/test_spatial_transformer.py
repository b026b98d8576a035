"""The torch spatial transformer against independent interpolation (scipy) and exact cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TEST_GRIDS, smooth_flow, smooth_volume
from scipy.ndimage import map_coordinates

from cocyclereg.geometry.spatial_transformer import SpatialTransformer, warp_labels

GRID = TEST_GRIDS["oblique-flip-x"]


def _tensor(array: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_scipy_trilinear_with_clamped_border(dtype):
    volume, flow = smooth_volume(GRID), smooth_flow(GRID, max_voxels=4.0)
    ours = SpatialTransformer()(_tensor(volume, dtype)[None, None], _tensor(flow, dtype)[None])
    positions = np.indices(GRID.shape, dtype=float) + flow
    clamped = np.stack([np.clip(positions[a], 0, n - 1) for a, n in enumerate(GRID.shape)])
    expected = map_coordinates(volume.astype(np.float64), clamped, order=1)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(ours[0, 0].numpy(), expected, atol=tolerance)


def test_zero_field_reproduces_the_input():
    volume = _tensor(smooth_volume(GRID))[None, None]
    zero = torch.zeros(1, 3, *GRID.shape, dtype=torch.float64)
    np.testing.assert_allclose(SpatialTransformer()(volume, zero), volume, rtol=1e-14, atol=1e-15)
    labels = torch.randint(0, 9, (1, 1, *GRID.shape))
    assert torch.equal(warp_labels(labels, zero), labels)


def test_integer_translation_shifts_voxels_exactly():
    volume = _tensor(smooth_volume(GRID))[None, None]
    flow = torch.zeros(1, 3, *GRID.shape, dtype=torch.float64)
    flow[:, 0], flow[:, 1], flow[:, 2] = 2.0, -3.0, 1.0  # along D, H, W
    warped = SpatialTransformer()(volume, flow)
    expected = volume[..., 2:, :-3, 1:]  # output (d, h, w) = input (d + 2, h - 3, w + 1)
    np.testing.assert_allclose(warped[..., :-2, 3:, :-1], expected, atol=1e-12)


def test_nearest_label_warp_never_invents_labels():
    rng = np.random.default_rng(5)
    labels = torch.from_numpy(
        rng.choice(np.array([0, 2, 5, 41], np.int64), size=(2, 1, *GRID.shape))
    )
    flow = _tensor(np.stack([smooth_flow(GRID, 5.0, seed=s) for s in (1, 2)]), torch.float32)
    warped = warp_labels(labels, flow)
    assert warped.dtype == labels.dtype and warped.shape == labels.shape
    assert set(warped.unique().tolist()) <= {0, 2, 5, 41}
    # Nearest neighbour: each output takes the label at the rounded sampling position.
    positions = np.rint(np.indices(GRID.shape) + flow[0].numpy().astype(np.float64))
    clamped = tuple(np.clip(positions[a], 0, n - 1).astype(int) for a, n in enumerate(GRID.shape))
    agreement = (warped[0, 0].numpy() == labels[0, 0].numpy()[clamped]).mean()
    assert agreement > 0.999  # ties at exactly .5 may round either way


def test_sampling_at_a_mask_matches_scipy_there():
    volume, flow = smooth_volume(GRID), smooth_flow(GRID, max_voxels=4.0)
    mask = np.random.default_rng(0).random(GRID.shape) < 0.3
    channels = np.stack([volume, volume**2])
    flow_tensor = _tensor(flow)[None].requires_grad_()
    ours = SpatialTransformer().at(_tensor(channels)[None], flow_tensor, torch.from_numpy(mask))
    positions = np.indices(GRID.shape, dtype=float) + flow
    clamped = np.stack([np.clip(positions[a], 0, n - 1) for a, n in enumerate(GRID.shape)])
    for channel in range(2):
        expected = map_coordinates(channels[channel], clamped, order=1)[mask]
        np.testing.assert_allclose(ours[0, channel].detach().numpy(), expected, atol=1e-12)
    ours.sum().backward()
    gradient_voxels = flow_tensor.grad.abs().sum(dim=(0, 1)).numpy() > 0
    assert np.array_equal(gradient_voxels, mask & gradient_voxels) and gradient_voxels.any()
    with pytest.raises(ValueError, match="boolean"):
        SpatialTransformer().at(_tensor(channels)[None], flow_tensor, torch.from_numpy(mask[1:]))


def test_gradients_reach_image_and_flow():
    volume = _tensor(smooth_volume(GRID))[None, None].requires_grad_()
    flow = _tensor(smooth_flow(GRID, 2.0))[None].requires_grad_()
    SpatialTransformer()(volume, flow).square().sum().backward()
    assert volume.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0
    small_volume = volume.detach()[..., :4, :5, :6].clone().requires_grad_()
    small_flow = (0.3 * flow.detach()[..., :4, :5, :6]).clone().requires_grad_()
    assert torch.autograd.gradcheck(SpatialTransformer(), (small_volume, small_flow), atol=1e-6)


def test_identity_grid_is_cached_per_shape_device_dtype():
    transformer = SpatialTransformer()
    flow = torch.zeros(1, 3, 4, 5, 6)
    transformer(torch.ones(1, 1, 4, 5, 6), flow)
    transformer(torch.ones(1, 1, 4, 5, 6), flow)
    assert len(transformer._identity_cache) == 1
    transformer(torch.ones(1, 1, 4, 5, 6, dtype=torch.float64), flow.double())
    transformer(torch.ones(1, 1, 4, 5, 7), torch.zeros(1, 3, 4, 5, 7))
    assert len(transformer._identity_cache) == 3


def test_batch_broadcasting_and_shape_errors():
    transformer = SpatialTransformer()
    image = torch.randn(1, 2, 4, 5, 6)
    flows = torch.randn(3, 3, 4, 5, 6)
    assert transformer(image, flows).shape == (3, 2, 4, 5, 6)
    with pytest.raises(ValueError, match="do not share a grid"):
        transformer(image, torch.zeros(1, 3, 4, 5, 7))
    with pytest.raises(ValueError, match=r"\(N, 3, D, H, W\)"):
        transformer(image, torch.zeros(1, 2, 4, 5, 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    volume, flow = (
        _tensor(smooth_volume(GRID), torch.float32),
        _tensor(smooth_flow(GRID), torch.float32),
    )
    cpu = SpatialTransformer()(volume[None, None], flow[None])
    gpu = SpatialTransformer()(volume[None, None].cuda(), flow[None].cuda())
    np.testing.assert_allclose(gpu.cpu(), cpu, atol=1e-5)


def test_runs_on_the_meta_device_without_touching_cpu_tensors():
    # Every tensor the module makes follows its input's device: the meta device catches any
    # tensor created on a hard-coded device.
    image = torch.empty(1, 1, 4, 5, 6, device="meta")
    flow = torch.empty(1, 3, 4, 5, 6, device="meta")
    try:
        out = SpatialTransformer()(image, flow)
    except NotImplementedError:
        pytest.skip("grid_sample has no meta kernel in this torch")
    assert out.device.type == "meta"


def test_points_dealt_to_threads_give_the_single_thread_result_and_gradient():
    torch.manual_seed(3)
    image = torch.rand(1, 2, 17, 19, 23)  # 7429 voxels: not a multiple of the thread count
    flow = (torch.randn(1, 3, 17, 19, 23) * 2).requires_grad_(True)
    mask = torch.rand(17, 19, 23) > 0.3
    threads = torch.get_num_threads()
    results = {}
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            flow.grad = None
            warped = SpatialTransformer()(image, flow)
            at = SpatialTransformer().at(image, flow, mask)
            (warped.square().sum() + at.sum()).backward()
            results[count] = (warped.detach(), at.detach(), flow.grad.clone())
    finally:
        torch.set_num_threads(threads)
    for one, dealt in zip(results[1], results[3], strict=True):
        assert torch.equal(one, dealt)
