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


def reference_ssim_loss(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """DRAEM's loss.SSIM()(img1, img2) written out from its definition (VitjanZ/DRAEM loss.py,
    `ssim` with val_range None): the range is guessed from img1 with Python comparisons."""
    max_val = 255 if torch.max(img1) > 128 else 1
    min_val = -1 if torch.min(img1) < -0.5 else 0
    big_l = max_val - min_val
    gauss = torch.tensor([math.exp(-(x - window_size // 2) ** 2 / float(2 * 1.5 ** 2)) for x in range(window_size)])
    gauss = (gauss / gauss.sum()).unsqueeze(1)  # float32, as torch.Tensor builds it there
    channel = img1.shape[1]
    window = gauss.mm(gauss.t()).expand(channel, 1, window_size, window_size).contiguous().to(img1.dtype)
    pad = window_size // 2
    conv = lambda x: torch.nn.functional.conv2d(x, window, padding=pad, groups=channel)  # noqa: E731
    mu1, mu2 = conv(img1), conv(img2)
    sigma1_sq = conv(img1 * img1) - mu1.pow(2)
    sigma2_sq = conv(img2 * img2) - mu2.pow(2)
    sigma12 = conv(img1 * img2) - mu1 * mu2
    c1, c2 = (0.01 * big_l) ** 2, (0.03 * big_l) ** 2
    v1, v2 = 2.0 * sigma12 + c2, sigma1_sq + sigma2_sq + c2
    return 1.0 - (((2 * mu1 * mu2 + c1) * v1) / ((mu1.pow(2) + mu2.pow(2) + c1) * v2)).mean()


@pytest.mark.parametrize("low, high, expected_range", [(-0.8, 1.3, 2), (0.0, 1.0, 1), (-0.9, 200.0, 256),
                                                       (0.0, 200.0, 255)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inferred_ssim_range_as_draems_reference(low, high, expected_range, dtype):
    """value_range=None (DRAEM): the range read off the first image, as the reference's ssim."""
    g = torch.Generator().manual_seed(3)
    rec = low + (high - low) * torch.rand(2, 3, 40, 40, generator=g, dtype=torch.float64)
    rec[0, 0, 0, 0], rec[1, 2, 5, 7] = low, high  # the extremes are reached
    rec, target = rec.to(dtype), torch.rand(2, 3, 40, 40, generator=g, dtype=torch.float64).to(dtype)
    ours = ssim_loss(rec, target, value_range=None)
    # equal up to the reference's float32 Gaussian window
    assert ours.item() == pytest.approx(reference_ssim_loss(rec, target).item(), rel=1e-6)
    assert torch.equal(ssim_map(rec, target, value_range=None),
                       ssim_map(rec, target, value_range=float(expected_range)))
    if expected_range != 1:  # where the fixed range of 1 departs from the reference
        assert abs(ssim_loss(rec, target).item() - ours.item()) > 1e-4
