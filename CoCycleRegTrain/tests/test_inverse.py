"""The inverse of a resampling field (cocyclereg.geometry.inverse): compiled voxel-by-voxel
iteration against whole-field iteration with grid_sample, composition to the identity on a
real-sized smooth field, and an exact case (a translation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocyclereg.geometry.inverse import inverse_flow
from cocyclereg.geometry.spatial_transformer import SpatialTransformer
from cocyclereg.learning.augment import random_elastic_flow


@pytest.fixture(scope="module")
def elastic():
    """A smooth fold-free field like the benchmark's, on an anisotropic grid (voxels)."""
    flow = random_elastic_flow((40, 52, 36), (1.5, 1.2, 2.0), np.random.default_rng(3), 24.0, 9.0)
    return torch.from_numpy(flow).float()[None]


def test_the_inverse_composes_to_the_identity(elastic):
    inverse, residual = inverse_flow(elastic)
    assert float(elastic.abs().max()) > 3  # voxels: a real deformation to invert
    # v(p) + u(p + v(p)), measured independently with grid_sample
    composed = inverse + SpatialTransformer()(elastic, inverse)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert float(composed[interior].norm(dim=1).max()) < 0.02
    torch.testing.assert_close(composed.norm(dim=1), residual, rtol=0, atol=1e-4)
    # and the other way round: u(q) + v(q + u(q)) = 0 where q + u(q) stays inside
    back = elastic + SpatialTransformer()(inverse, elastic)
    assert float(back[interior].norm(dim=1).mean()) < 0.05  # interpolating v: ~0.02
    naive = elastic + SpatialTransformer()(-elastic, elastic)  # -u is no inverse
    assert float(naive[interior].norm(dim=1).mean()) > 0.1


def test_compiled_and_whole_field_iterations_agree(elastic):
    compiled, _ = inverse_flow(elastic)  # float32 on the CPU: the compiled loop
    whole_field, _ = inverse_flow(elastic.double(), iterations=60)  # the grid_sample path
    torch.testing.assert_close(compiled.double(), whole_field, rtol=0, atol=0.02)


def test_a_translation_inverts_to_its_opposite():
    flow = torch.zeros(1, 3, 12, 14, 10)
    flow[:, 0], flow[:, 1], flow[:, 2] = 1.25, -0.5, 2.0
    inverse, residual = inverse_flow(flow)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    torch.testing.assert_close(inverse[inner], -flow[inner], rtol=0, atol=1e-6)
    assert float(residual[:, 3:-3, 3:-3, 3:-3].max()) < 1e-6


def test_a_flow_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError):
        inverse_flow(torch.zeros(1, 2, 4, 4, 4))
