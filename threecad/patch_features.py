"""Locally aware patch features: the aggregation PatchCore and SimpleNet share.

Both official codes build patch features with the same `common.py`: each position's 3x3
neighbourhood of every tapped layer (zero padding counted), flattened channel-major and
adaptively average-pooled to `pretrain_dim`, deeper layers resized to the first layer's
grid, then the layers' values pooled to `feature_dim`. The official code resizes the
unfolded neighbourhoods before pooling; both steps are linear and act on different axes,
so pooling first on each layer's own grid gives the same numbers with less work (tested
against a transcription of the official order in tests/patchcore_official.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def aggregate_patches(maps: Sequence[torch.Tensor], patch_size: int = 3, pretrain_dim: int = 1024,
                      feature_dim: int = 1024) -> torch.Tensor:
    """Backbone maps (N, C_l, H_l, W_l), shallow first -> patch features (N, feature_dim, H_0, W_0).

    The official aggregation (see the module docstring): per layer, each position's
    `patch_size`^2 neighbourhood (zero padding counted) flattened in (channel, row, column)
    order and adaptively average-pooled to `pretrain_dim`; deeper layers resized bilinearly
    to the first layer's grid; the layers' values concatenated and pooled to `feature_dim`.
    """
    n = maps[0].shape[0]
    height, width = maps[0].shape[-2:]
    pad = patch_size // 2
    pooled = []
    for m in maps:
        _, c, h, w = m.shape
        cols = F.unfold(m, patch_size, padding=pad) if patch_size > 1 else m.flatten(2)  # (N, C*p*p, h*w)
        rows = cols.transpose(1, 2).reshape(n * h * w, 1, c * patch_size * patch_size)
        del cols
        layer = F.adaptive_avg_pool1d(rows, pretrain_dim).view(n, h, w, pretrain_dim).permute(0, 3, 1, 2)
        del rows
        if (h, w) != (height, width):
            layer = F.interpolate(layer, size=(height, width), mode="bilinear", align_corners=False)
        pooled.append(layer)
    stacked = torch.stack(pooled, 1)  # (N, layers, pretrain_dim, H, W)
    del pooled
    flat = stacked.permute(0, 3, 4, 1, 2).reshape(n * height * width, 1, len(maps) * pretrain_dim)
    out = F.adaptive_avg_pool1d(flat, feature_dim)
    return out.view(n, height, width, feature_dim).permute(0, 3, 1, 2)
