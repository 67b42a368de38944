"""Locally aware patch features: the aggregation PatchCore and SimpleNet share.

Both official codes build patch features with the same `common.py`: each position's 3x3
neighbourhood of every tapped layer (zero padding counted), flattened channel-major and
adaptively average-pooled to `pretrain_dim`, deeper layers resized to the first layer's
grid, then the layers' values pooled to `feature_dim`. The official code resizes the
unfolded neighbourhoods before pooling; both steps are linear and act on different axes,
so pooling first on each layer's own grid gives the same numbers with less work (tested
against a transcription of the official order in tests/patchcore_official.py).

Both poolings run as index gathers on shifted views of each map (`_pool_shifted`) rather
than on the unfolded neighbourhoods: the unfold materialises 9 C values per position and
the pooling reads them back, which made aggregation about 30 % of PatchCore's inference on
a WideResNet-50; the gathers touch each value once (benchmarks/methods.py measures it).
"""
from __future__ import annotations

import functools
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
    height, width = maps[0].shape[-2:]
    pad = patch_size // 2
    pooled = []
    for m in maps:
        _, c, h, w = m.shape
        padded = F.pad(m, (pad, pad, pad, pad)) if pad else m
        rows, cols = h + 2 * pad - patch_size + 1, w + 2 * pad - patch_size + 1
        views = [padded[:, :, dy:dy + rows, dx:dx + cols] for dy in range(patch_size) for dx in range(patch_size)]
        layer = _pool_shifted(views, c * patch_size * patch_size, pretrain_dim)
        del padded, views
        if (rows, cols) != (height, width):
            layer = F.interpolate(layer, size=(height, width), mode="bilinear", align_corners=False)
        pooled.append(layer)
    stacked = torch.cat(pooled, 1)  # (N, layers * pretrain_dim, H, W), layer-major as the official stack
    del pooled
    return _pool_shifted([stacked], stacked.shape[1], feature_dim)


@functools.lru_cache(maxsize=32)
def _pooling_plan(length: int, bins: int, group: int, device: torch.device
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]:
    """torch's adaptive average pooling of `length` values into `bins`, as index triples.

    Value j is element j % group of source row j // group; bin o averages values
    [floor(o L / B), ceil((o + 1) L / B)). Returns, for each element k of a group, the
    (source rows, destination bins, weights 1 / bin length) that it contributes, already on
    `device` (cached per device: no host-to-device copies per batch).
    """
    o = torch.arange(bins)
    start = (o * length) // bins
    end = ((o + 1) * length + bins - 1) // bins
    width = end - start
    slots = torch.arange(int(width.max()))
    j = start[:, None] + slots[None, :]  # (bins, slots)
    valid = slots[None, :] < width[:, None]
    j, dest = j[valid], o[:, None].expand_as(valid)[valid]
    weight = (1.0 / width.double())[dest].float()
    return tuple((j[j % group == k].div(group, rounding_mode="floor").to(device), dest[j % group == k].to(device),
                  weight[j % group == k][None, :, None, None].to(device)) for k in range(group))


def _pool_shifted(views: Sequence[torch.Tensor], length: int, bins: int) -> torch.Tensor:
    """Adaptive average pooling, over bins, of the channel-major interleave of `views`.

    `views` are k = 0..g-1 tensors (N, C, H, W); value j of a position is channel j // g
    of view j % g. Equals flattening the (N, C, g, H, W) stack over (C, g) and pooling it
    with `adaptive_avg_pool1d`, without ever building that stack.
    """
    first = views[0]
    if len(views) == 1 and length % bins == 0:  # whole bins of equal width: a plain mean
        return first.unflatten(1, (bins, length // bins)).mean(2)
    out = first.new_zeros(first.shape[0], bins, *first.shape[2:])
    for view, (rows, dest, weight) in zip(views, _pooling_plan(length, bins, len(views), first.device)):
        if rows.numel():
            out.index_add_(1, dest, view.index_select(1, rows).mul_(weight))
    return out
