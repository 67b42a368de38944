"""Gaussian smoothing of anomaly maps, shared by every method so that `sigma` means one thing.

The kernel follows scipy.ndimage.gaussian_filter (radius int(4 sigma + 0.5), normalised
weights) and runs as two 1-D convolutions on the maps' own device. Borders are reflected
without repeating the edge pixel (torch 'reflect' = scipy 'mirror'); scipy's default
'reflect' repeats it, so the two differ only within 4 sigma of the border.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth maps of shape (..., H, W) with a Gaussian of `sigma` pixels; sigma <= 0 is a no-op."""
    if sigma <= 0:
        return maps
    height, width = maps.shape[-2:]
    radius = min(int(4 * sigma + 0.5), height - 1, width - 1)
    if radius < 1:
        return maps
    t = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    flat = maps.reshape(-1, 1, height, width)
    out = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    out = F.conv2d(out, k.view(1, 1, -1, 1))
    return out.reshape(maps.shape)
