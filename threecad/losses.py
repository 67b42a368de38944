"""Losses that several methods share (DRAEM, DeSTSeg, RealNet, ...), written once.

Each follows the form its reference code computes, which is not always the textbook one:
DRAEM's focal loss takes softmax probabilities with smoothed one-hot targets, DeSTSeg's
takes sigmoid probabilities; SSIM uses an 11x11 Gaussian window (sigma 1.5) with zero
padding, per channel, for images in [0, 1] (dynamic range 1) unless told otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.arange(size, dtype=like.dtype, device=like.device) - size // 2
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).expand(channels, 1, size, size).contiguous()


def inferred_value_range(image: torch.Tensor) -> torch.Tensor:
    """The dynamic range DRAEM's `ssim` guesses from its first image when `val_range` is None.

    Top 255 if the max is above 128, else 1; bottom -1 if the min is below -0.5, else 0. A
    0-dim float64 tensor, so that no host sync is needed and the constants round as the
    reference's Python floats do.
    """
    top = torch.where(image.max() > 128, 255.0, 1.0)
    bottom = torch.where(image.min() < -0.5, -1.0, 0.0)
    return (top - bottom).double()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5,
             value_range: float | None = 1.0) -> torch.Tensor:
    """Per-pixel structural similarity of two (N, C, H, W) batches (zero padding at borders).

    `value_range` None: inferred from `a` as DRAEM's reference does (`inferred_value_range`).
    """
    if value_range is None:
        value_range = inferred_value_range(a)
    channels = a.shape[1]
    w = _gaussian_window(window, sigma, channels, a)
    pad = window // 2
    mu_a = F.conv2d(a, w, padding=pad, groups=channels)
    mu_b = F.conv2d(b, w, padding=pad, groups=channels)
    var_a = F.conv2d(a * a, w, padding=pad, groups=channels) - mu_a ** 2
    var_b = F.conv2d(b * b, w, padding=pad, groups=channels) - mu_b ** 2
    cov = F.conv2d(a * b, w, padding=pad, groups=channels) - mu_a * mu_b
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, **kwargs) -> torch.Tensor:
    """Mean structural similarity over every pixel (a scalar), as DRAEM averages it."""
    return ssim_map(a, b, **kwargs).mean()


def ssim_loss(a: torch.Tensor, b: torch.Tensor, **kwargs) -> torch.Tensor:
    """1 - SSIM (DRAEM's reconstruction term)."""
    return 1.0 - ssim(a, b, **kwargs)


def softmax_focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                       smooth: float = 1e-5) -> torch.Tensor:
    """DRAEM's focal loss: `probs` (N, K, H, W) softmax output, `target` (N, 1, H, W) class ids.

    One-hot targets are clamped to [smooth / (K - 1), 1 - smooth], and `smooth` is added to
    the probability of the true class before the log, as the reference does.
    """
    k = probs.shape[1]
    one_hot = F.one_hot(target[:, 0].long(), k).permute(0, 3, 1, 2).to(probs.dtype)
    one_hot = one_hot.clamp(smooth / (k - 1), 1.0 - smooth)
    pt = (one_hot * probs).sum(dim=1) + smooth
    return (-(1.0 - pt) ** gamma * pt.log()).mean()


def binary_focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Focal loss on sigmoid probabilities (DeSTSeg): BCE weighted by (1 - p_t)^gamma, mean."""
    probs = probs.clamp(1e-7, 1 - 1e-7)  # BCE on probabilities, as torch clamps its log at -100
    ce = F.binary_cross_entropy(probs, target, reduction="none")
    p_t = probs * target + (1 - probs) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()
