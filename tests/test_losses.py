"""Shared losses against direct formulas."""
from __future__ import annotations

import math

import pytest
import torch

from threecad.losses import binary_focal_loss, softmax_focal_loss, ssim, ssim_loss, ssim_map


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype))
    assert ssim(x, noisy).item() < 0.9
    assert ssim_loss(x, noisy).item() == pytest.approx(1 - ssim(x, noisy).item())


def test_ssim_map_equals_scikit_image_away_from_the_border():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(2)
    a = torch.rand(1, 1, 40, 40, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.rand(1, 1, 40, 40, generator=g, dtype=torch.float64)).clamp(0, 1)
    _, ref = structural_similarity(a[0, 0].numpy(), b[0, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=1.0, full=True, truncate=3.5)
    ours = ssim_map(a, b)[0, 0].numpy()
    assert abs(ours[5:-5, 5:-5] - ref[5:-5, 5:-5]).max() < 1e-10


def test_softmax_focal_loss_matches_the_formula_on_one_pixel():
    probs = torch.tensor([0.3, 0.7]).view(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, 1)
    smooth = 1e-5
    pt = (smooth / 1) * 0.3 + (1 - smooth) * 0.7 + smooth
    expected = -((1 - pt) ** 2) * math.log(pt)
    assert softmax_focal_loss(probs, target).item() == pytest.approx(expected, rel=1e-6)


def test_binary_focal_loss_matches_the_formula():
    p, t = torch.tensor([0.9, 0.2]), torch.tensor([1.0, 1.0])
    expected = sum(-math.log(v) * (1 - v) ** 4 for v in (0.9, 0.2)) / 2
    assert binary_focal_loss(p, t).item() == pytest.approx(expected, rel=1e-6)
