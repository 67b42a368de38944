"""Gaussian smoothing of anomaly maps: the one place where maps are smoothed.

Methods return raw maps and declare their post-processing (`threecad.postprocess`); the
harness smooths once, here. Two smoothers, for two jobs:

- `gaussian_smooth` (torch, on the maps' own device) for a method's own post-processing
  under the `standard` protocol. The kernel follows scipy.ndimage.gaussian_filter (radius
  int(truncate * sigma + 0.5), normalised weights) and its border modes: "reflect"
  (scipy's default, the edge pixel repeated: d c b a | a b c d | d c b a) or "mirror"
  (no repeat: d c b | a b c d | c b a). Padding wider than the map keeps reflecting, as
  scipy does, so the result equals scipy for any size.
- `release_blur` (scipy itself, in the input's dtype: the Evaluator passes float64, as the
  release's maps are) for the `3cad-paper` protocol, so that protocol reproduces the
  official code bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BORDER_MODES = ("reflect", "mirror")
RELEASE_SIGMA = 4.0


def _border_index(n: int, radius: int, mode: str) -> np.ndarray:
    """Source index of each padded position -radius .. n-1+radius under scipy's border `mode`."""
    idx = np.arange(-radius, n + radius)
    if n == 1:
        return np.zeros_like(idx)
    if mode == "reflect":  # period 2n: 0..n-1, n-1..0
        period = 2 * n
        idx = np.mod(idx, period)
        return np.where(idx < n, idx, period - 1 - idx)
    period = 2 * n - 2  # mirror: 0..n-1, n-2..1
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - idx)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_smooth(maps: torch.Tensor, sigma: float, mode: str = "reflect",
                    truncate: float = 4.0) -> torch.Tensor:
    """Smooth maps of shape (..., H, W) with a Gaussian of `sigma` pixels; sigma <= 0 is a no-op."""
    if mode not in BORDER_MODES:
        raise ValueError(f"border mode must be one of {BORDER_MODES}, got {mode!r}")
    if sigma <= 0:
        return maps
    height, width = maps.shape[-2:]
    kernel = gaussian_kernel(sigma, truncate)
    radius = len(kernel) // 2
    k = torch.as_tensor(kernel, device=maps.device, dtype=maps.dtype)
    flat = maps.reshape(-1, 1, height, width)
    rows = torch.as_tensor(_border_index(height, radius, mode), device=maps.device)
    cols = torch.as_tensor(_border_index(width, radius, mode), device=maps.device)
    out = F.conv2d(flat.index_select(3, cols), k.view(1, 1, 1, -1))
    out = F.conv2d(out.index_select(2, rows), k.view(1, 1, -1, 1))
    return out.reshape(maps.shape)


def release_blur(maps: np.ndarray, sigma: float = RELEASE_SIGMA) -> np.ndarray:
    """The official 3CAD release's blur of (N, H, W) maps: scipy gaussian_filter per map, its defaults."""
    from scipy.ndimage import gaussian_filter

    maps = np.asarray(maps)
    return np.stack([gaussian_filter(m, sigma=sigma) for m in maps]) if len(maps) else maps.copy()
