"""Frozen EfficientNet-B4 features tapped at lukemelas block indices, and MFCN alignment.

Why: UniAD and CRAD name their feature taps by the flat block index of lukemelas'
`efficientnet_pytorch` (UniAD: blocks 1, 5, 9, 21; CRAD: 9, 21), while torchvision nests
the same blocks as `features[stage][block]`. EfficientNet-B4 has 32 MBConv blocks in 7
stages of 2, 4, 4, 6, 6, 8, 2 blocks, so lukemelas block i is the i-th block in that flat
order: 1 -> features[1][1] (24 ch, stride 2), 5 -> features[2][3] (32 ch, stride 4),
9 -> features[3][3] (56 ch, stride 8), 21 -> features[5][5] (160 ch, stride 16). The
extractor keeps the stem and blocks up to the deepest tap (0..21: 3,635,984 parameters);
the references build and run the whole network (19,341,616, head and classifier
included) and use only those taps.

Weights follow `threecad.backbones`: "imagenet" is torchvision's
`efficientnet_b4_rwightman-23ab8bcd.pth` from the torch hub cache, else downloaded by
torchvision unless THREECAD_OFFLINE=1; "none" is random init; a path is a local state
dict in torchvision's key names. The references load lukemelas' TensorFlow-ported file
instead (TensorFlow "same" padding, BatchNorm eps 1e-3); torchvision's weights were
trained with symmetric padding and eps 1e-5, so features differ in detail, not in kind.

`align_features` is UniAD's MFCN neck (CRAD reuses it): every map resized bilinearly with
corners aligned to the grid of one output stride, then concatenated along channels.

`frozen_taps` picks the source a method config names: this extractor for
"efficientnet_b4" (taps by block index) or `threecad.backbones.FeatureExtractor` for any
other backbone (taps by stride: the offline `efficientnet_lite0` of the cpu presets).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threecad.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, resolve_weights
from threecad.errors import ThreecadError, WeightsUnavailable

log = logging.getLogger(__name__)

NAME = "efficientnet_b4"
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)  # output stride of torchvision features[1..7]
NUM_BLOCKS = 32  # lukemelas block indices 0..31


def block_positions(net: nn.Module) -> list[tuple[int, int]]:
    """(stage, block) in torchvision's `features` for every lukemelas block index, in order."""
    return [(stage, block) for stage in range(1, 8) for block in range(len(net.features[stage]))]


def efficientnet_b4_state(weights: str | os.PathLike | None) -> dict | None:
    """The torchvision-keyed state dict for `weights` under `threecad.backbones`' rule; None = random init."""
    return resolve_weights(NAME, weights)


class EfficientNetB4Taps(nn.Module):
    """Frozen EfficientNet-B4 (torchvision) cut after the deepest tap; returns the tapped blocks' outputs.

    Same interface as `FeatureExtractor`: `strides`, `channels`, `describe_taps`, ImageNet
    normalisation inside, BatchNorm kept in eval mode.
    """

    def __init__(self, blocks: Sequence[int] = (1, 5, 9, 21), weights: str | None = "imagenet"):
        super().__init__()
        import torchvision

        blocks = tuple(int(b) for b in blocks)
        if not blocks or list(blocks) != sorted(set(blocks)) or blocks[0] < 0 or blocks[-1] >= NUM_BLOCKS:
            raise ThreecadError(f"efficientnet_b4 blocks {blocks}: must be increasing indices in 0..{NUM_BLOCKS - 1}")
        net = torchvision.models.efficientnet_b4(weights=None)
        positions = block_positions(net)
        if not next(net.parameters()).is_meta:  # a meta network (model card) holds no weights
            state = efficientnet_b4_state(weights)
            if state is not None:
                # only the kept part must be in the file (stem and blocks up to the deepest tap)
                kept = ("features.0.",) + tuple(f"features.{s}.{b}." for s, b in positions[: blocks[-1] + 1])
                missing = [k for k in net.state_dict() if k.startswith(kept) and k not in state]
                if missing:
                    raise WeightsUnavailable(f"weights for {NAME} do not fit: missing {', '.join(missing[:3])}")
                net.load_state_dict(state, strict=False)
        self.blocks = blocks
        self.stem = net.features[0]
        self.body = nn.ModuleList(net.features[s][b] for s, b in positions[: blocks[-1] + 1])
        self.strides = tuple(STAGE_STRIDES[positions[b][0] - 1] for b in blocks)
        self.tap_names = tuple(f"features.{positions[b][0]}.{positions[b][1]} (block {b})" for b in blocks)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.name = NAME
        self.trainable = False
        self.requires_grad_(False)
        self.eval()
        self.channels = tuple(int(net.features[positions[b][0]][positions[b][1]].block[-1][0].out_channels)
                              for b in blocks)

    def train(self, mode: bool = True) -> "EfficientNetB4Taps":
        return super().train(False)  # frozen: BatchNorm statistics and stochastic depth stay off

    def describe_taps(self, image_size: int) -> list[dict]:
        return [{"layer": name, "stride": stride, "channels": ch, "size": math.ceil(image_size / stride)}
                for name, stride, ch in zip(self.tap_names, self.strides, self.channels)]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N,3,H,W) in [0,1] -> the tapped blocks' outputs, shallow first."""
        x = self.stem((images - self.mean) / self.std)
        out = []
        wanted = set(self.blocks)
        for i, block in enumerate(self.body):
            x = block(x)
            if i in wanted:
                out.append(x)
        return out


def frozen_taps(backbone: str, blocks: Sequence[int], strides: Sequence[int],
                weights: str | None) -> nn.Module:
    """The frozen feature source a config names: B4 by lukemelas block, anything else by stride."""
    if backbone == NAME:
        return EfficientNetB4Taps(blocks, weights)
    if backbone not in BACKBONES:
        raise ThreecadError(f"unknown backbone '{backbone}'; known: {', '.join(BACKBONES)}")
    try:
        return FeatureExtractor(backbone, strides, weights, trainable=False)
    except ValueError as exc:  # a stride the backbone lacks
        raise ThreecadError(f"config strides={tuple(strides)}: {exc}") from None


def aligned_size(size: int, stride: int, out_stride: int) -> int:
    """Side of a stride-`stride` map of side `size` after MFCN's resize to `out_stride` (floor, as torch)."""
    return math.floor(size * stride / out_stride)


def align_features(features: Sequence[torch.Tensor], strides: Sequence[int], out_stride: int) -> torch.Tensor:
    """MFCN: resize every map to the `out_stride` grid (bilinear, corners aligned) and concatenate."""
    h, w = (aligned_size(n, strides[0], out_stride) for n in features[0].shape[-2:])
    out = []
    for f, s in zip(features, strides):
        if (aligned_size(f.shape[-2], s, out_stride), aligned_size(f.shape[-1], s, out_stride)) != (h, w):
            raise ThreecadError(f"feature maps do not share a grid at stride {out_stride}: "
                                f"use an image size that is a multiple of {max(strides)}")
        out.append(f if f.shape[-2:] == (h, w) else
                   F.interpolate(f, size=(h, w), mode="bilinear", align_corners=True))
    return torch.cat(out, dim=1)
