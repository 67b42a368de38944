"""The shared Gaussian map smoothing against scipy.ndimage.gaussian_filter, borders included."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from threecad.smoothing import gaussian_smooth, release_blur


@pytest.mark.parametrize("mode", ["reflect", "mirror"])
@pytest.mark.parametrize("sigma", [1.0, 1.3, 2.0, 4.0])
def test_matches_scipy_on_every_pixel_including_borders(sigma, mode):
    rng = np.random.default_rng(0)
    x = rng.random((3, 48, 40)).astype(np.float64)
    ours = gaussian_smooth(torch.from_numpy(x), sigma, mode=mode).numpy()
    for i in range(3):
        ref = gaussian_filter(x[i], sigma=sigma, truncate=4.0, mode=mode)
        assert np.abs(ours[i] - ref).max() < 1e-12


@pytest.mark.parametrize("mode", ["reflect", "mirror"])
@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (1, 6), (2, 2)])
def test_maps_smaller_than_the_kernel_reflect_as_scipy_does(shape, mode):
    rng = np.random.default_rng(1)
    x = rng.random(shape)
    out = gaussian_smooth(torch.from_numpy(x)[None], 4.0, mode=mode)[0].numpy()
    assert np.abs(out - gaussian_filter(x, sigma=4.0, mode=mode)).max() < 1e-12


def test_keeps_any_leading_shape_and_noop_for_zero_sigma():
    x = torch.rand(2, 1, 16, 16)
    assert gaussian_smooth(x, 1.5).shape == x.shape
    assert torch.allclose(gaussian_smooth(x, 1.5)[:, 0], gaussian_smooth(x[:, 0], 1.5))
    assert gaussian_smooth(x, 0) is x


def test_release_blur_is_scipy_default_per_map_in_the_input_dtype():
    x = np.random.default_rng(2).random((2, 32, 32)).astype(np.float32)
    out = release_blur(x)
    assert out.dtype == np.float32
    assert np.array_equal(out[1], gaussian_filter(x[1], sigma=4))


def test_unknown_border_mode_is_refused():
    with pytest.raises(ValueError, match="border mode"):
        gaussian_smooth(torch.rand(1, 8, 8), 1.0, mode="wrap")
