"""A step-by-step transcription of how the official PatchCore code turns backbone maps into
patch features and scores (amazon-science/patchcore-inspection, `src/patchcore/patchcore.py`
`PatchCore._embed` / `_predict` and `src/patchcore/common.py` `Preprocessing`, `MeanMapper`,
`Aggregator`, `FaissNN`, `RescaleSegmentor`), written in plain torch from reading that code.

It follows the official order literally, slow but obvious, so that tests can hold
`baselines.patchcore`'s fast path against it:

1. every layer is unfolded into 3x3 neighbourhoods (zero padding, stride 1): one
   (C, 3, 3) block per patch;
2. deeper layers are resized to the first layer's patch grid by bilinear interpolation of
   each of the C x 3 x 3 slices;
3. each patch's block of each layer is flattened in (channel, row, column) order and
   average-pooled adaptively to `pretrain_dim` values;
4. the layers' vectors are concatenated and average-pooled adaptively to `target_dim`;
5. patch scores are faiss IndexFlatL2 distances to the nearest memory entry (squared L2),
   the image score is the largest patch score (anomaly_scorer_num_nn = 1), and the map is
   the patch-score grid resized bilinearly to the input, then scipy gaussian_filter sigma 4.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _patchify(fmap: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, C, H, W) -> ((N, L, C, p, p) neighbourhood blocks, (rows, cols) of the patch grid)."""
    n, c, h, w = fmap.shape
    pad = (patch_size - 1) // 2
    cols = F.unfold(fmap, kernel_size=patch_size, padding=pad, stride=1)  # (N, C*p*p, L)
    grid = (h + 2 * pad - (patch_size - 1), w + 2 * pad - (patch_size - 1))
    blocks = cols.reshape(n, c, patch_size, patch_size, -1).permute(0, 4, 1, 2, 3)
    return blocks, grid


def _resize_blocks(blocks: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(N, L, C, p, p) on `grid` -> (N, L', C, p, p) on `target`: each (c, i, j) slice resized bilinearly."""
    n, _, c, p, _ = blocks.shape
    spatial = blocks.reshape(n, grid[0], grid[1], c, p, p).permute(0, 3, 4, 5, 1, 2)  # (N, C, p, p, h, w)
    lead = spatial.shape[:4]
    resized = F.interpolate(spatial.reshape(-1, 1, *grid), size=target, mode="bilinear", align_corners=False)
    resized = resized.reshape(*lead, *target).permute(0, 4, 5, 1, 2, 3)  # (N, h', w', C, p, p)
    return resized.reshape(n, target[0] * target[1], c, p, p)


def official_patch_features(layer_maps: list[torch.Tensor], patch_size: int = 3, pretrain_dim: int = 1024,
                            target_dim: int = 1024) -> tuple[torch.Tensor, tuple[int, int]]:
    """Backbone maps, shallow first -> ((N * L, target_dim) patch features, patch grid)."""
    patched = [_patchify(m, patch_size) for m in layer_maps]
    blocks = [b for b, _ in patched]
    grids = [g for _, g in patched]
    ref = grids[0]
    for i in range(1, len(blocks)):
        blocks[i] = _resize_blocks(blocks[i], grids[i], ref)
    # one row per patch, all images after each other; each layer: (C, p, p) flattened
    flat = [b.reshape(-1, b.shape[2] * b.shape[3] * b.shape[4]) for b in blocks]
    per_layer = [F.adaptive_avg_pool1d(f[:, None, :], pretrain_dim)[:, 0, :] for f in flat]  # MeanMapper
    stacked = torch.stack(per_layer, dim=1)  # (N*L, layers, pretrain_dim): Preprocessing
    merged = F.adaptive_avg_pool1d(stacked.reshape(len(stacked), 1, -1), target_dim)  # Aggregator
    return merged.reshape(len(stacked), -1), ref


def official_scores(features: torch.Tensor, grid: tuple[int, int], bank: torch.Tensor, batch: int,
                    input_size: tuple[int, int], sigma: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Patch features (N * L, D) against a memory bank -> (image scores (N,), smoothed maps (N, H, W))."""
    from scipy.ndimage import gaussian_filter

    f = features.double()
    b = bank.double()
    d2 = ((f[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # what IndexFlatL2 returns: squared
    patch_scores = d2.min(dim=1).values.reshape(batch, -1)
    image_scores = patch_scores.max(dim=1).values.numpy()
    grid_scores = patch_scores.reshape(batch, 1, *grid).float()
    upsampled = F.interpolate(grid_scores, size=input_size, mode="bilinear", align_corners=False)[:, 0]
    maps = np.stack([gaussian_filter(m, sigma=sigma) for m in upsampled.numpy()])
    return image_scores, maps
