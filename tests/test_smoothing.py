"""The shared Gaussian map smoothing against scipy.ndimage.gaussian_filter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from threecad.smoothing import gaussian_smooth


@pytest.mark.parametrize("sigma", [1.0, 1.3, 2.0, 4.0])
def test_matches_scipy_with_mirrored_borders(sigma):
    rng = np.random.default_rng(0)
    x = rng.random((3, 48, 40)).astype(np.float64)
    ours = gaussian_smooth(torch.from_numpy(x), sigma).numpy()
    for i in range(3):  # torch 'reflect' is scipy 'mirror'; the radius rule is scipy's
        ref = gaussian_filter(x[i], sigma=sigma, truncate=4.0, mode="mirror")
        assert np.allclose(ours[i], ref, atol=1e-12)


def test_keeps_any_leading_shape_and_noop_for_zero_sigma():
    x = torch.rand(2, 1, 16, 16)
    assert gaussian_smooth(x, 1.5).shape == x.shape
    assert torch.allclose(gaussian_smooth(x, 1.5)[:, 0], gaussian_smooth(x[:, 0], 1.5))
    assert gaussian_smooth(x, 0) is x


def test_radius_is_capped_by_small_maps():
    x = torch.zeros(1, 5, 5, dtype=torch.float64)
    x[0, 2, 2] = 1.0
    out = gaussian_smooth(x, 4.0)  # radius 16 capped at 4, so the padding stays inside the map
    ref = gaussian_filter(x[0].numpy(), sigma=4.0, radius=4, mode="mirror")
    assert np.allclose(out[0].numpy(), ref, atol=1e-12)
