"""Loss terms on inputs with known values."""

from __future__ import annotations

import pytest
import torch

from cocyclereg import descriptors
from cocyclereg.learning import losses


def test_l1_and_lsgan_on_known_values():
    a, b = torch.zeros(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 0.25)
    assert losses.l1(a, b).item() == pytest.approx(0.25)
    assert losses.lsgan_generator(torch.full((1, 1, 3, 3, 3), 0.5)).item() == pytest.approx(0.25)
    real, fake = torch.full((2, 1, 2, 2, 2), 0.75), torch.full((2, 1, 2, 2, 2), 0.5)
    assert losses.lsgan_discriminator(real, fake).item() == pytest.approx(0.5 * (0.0625 + 0.25))
    assert (
        losses.lsgan_discriminator(torch.ones(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)).item()
        == 0
    )


def test_smoothness_of_linear_and_constant_fields():
    d, h, w = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), torch.arange(6.0), indexing="ij")
    flow = torch.stack([0.5 * d, torch.zeros_like(h), -2.0 * w])[None]  # slopes along D and W
    # Forward differences: 0.5 in channel 0 along D, -2 in channel 2 along W, zero elsewhere;
    # each mean runs over all 3 channels, so (0.25 / 3 + 0 + 4 / 3) / 3.
    assert losses.smoothness(flow).item() == pytest.approx((0.25 / 3 + 4 / 3) / 3)
    assert losses.smoothness(torch.full((1, 3, 4, 4, 4), 7.0)).item() == 0


def test_mind_ssc_is_modality_independent_but_sees_structure():
    torch.manual_seed(0)
    image = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 20, 20, 20), 3, 1, 1)
    inverted = 1 - 2 * image  # a different "modality": inverted contrast, other scale
    shifted = torch.roll(image, shifts=3, dims=-1)
    descriptor = descriptors.mind_ssc(image)
    assert descriptor.shape == (1, 12, 20, 20, 20)
    assert descriptor.min() > 0 and descriptor.max() <= 1 + 1e-6
    assert losses.mind_loss(image, inverted).item() < 1e-8
    assert losses.mind_loss(image, shifted).item() > 1e-3


def test_twelve_ssc_pairs_are_the_edges_between_face_neighbours():
    assert len(descriptors._SSC_PAIRS) == 12
    for a, b in descriptors._SSC_PAIRS:
        assert sum(abs(p) for p in a) == sum(abs(q) for q in b) == 1
        assert sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) == 2


def test_gaussian_blur_keeps_constants_and_mass_and_removes_noise():
    torch.manual_seed(0)
    constant = torch.full((1, 1, 9, 10, 11), 3.5)
    torch.testing.assert_close(losses.gaussian_blur(constant, 1.0), constant)
    noise = torch.randn(1, 2, 24, 24, 24, dtype=torch.float64)
    blurred = losses.gaussian_blur(noise, 1.0)
    assert blurred.shape == noise.shape
    assert blurred.std() < 0.3 * noise.std()  # 3D Gaussian, sigma 1: std falls to about 0.18
    impulse = torch.zeros(1, 1, 15, 15, 15, dtype=torch.float64)
    impulse[0, 0, 7, 7, 7] = 1
    response = losses.gaussian_blur(impulse, 1.5)
    assert response.sum().item() == pytest.approx(1.0)
    assert response[0, 0, 7, 7, 7] == response.max()
    torch.testing.assert_close(response, response.flip(2).flip(3).flip(4))
    assert torch.equal(losses.gaussian_blur(noise, 0.0), noise)
