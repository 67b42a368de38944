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

Two B4s, both with torchvision's module names (`threecad.backbones`):
- `efficientnet_b4_tf` (the paper presets): as the references build it, lukemelas'
  `EfficientNet.from_name("efficientnet-b4")`: BatchNorm eps 1e-3 and momentum 0.01, and
  TensorFlow "same" padding computed once for 380 px (B4's image size there), which pads
  one pixel more on the bottom/right on the stem and blocks 2 and 10. The padding is fixed,
  as the reference's, so the two agree at any input size (at 224 px TensorFlow's own rule
  would pad block 6 otherwise; neither does). Its "imagenet" file is lukemelas' TensorFlow
  port `efficientnet-b4-6ed6700e.pth` from torch hub's checkpoint folder, where
  `efficientnet_pytorch` caches it (else downloaded from lukemelas' release unless
  THREECAD_OFFLINE=1); a path may hold lukemelas' or torchvision's key layout.
- `efficientnet_b4`: torchvision's B4 (symmetric padding, eps 1e-5) and its ImageNet file
  `efficientnet_b4_rwightman-23ab8bcd.pth`; features differ from the references' in
  detail, not in kind.
"none" is random init. The weight file's sha256 is kept in `weights_source` (for the run's
records) and checked against an expected hash when one is given.

`align_features` is UniAD's MFCN neck (CRAD reuses it): every map resized bilinearly with
corners aligned to the grid of one output stride, then concatenated along channels.

`frozen_taps` picks the source a method config names: this extractor for either B4 (taps
by block index) or `threecad.backbones.FeatureExtractor` for any other backbone (taps by
stride: the offline `efficientnet_lite0` of the cpu presets).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threecad.backbones import (BACKBONES, IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, read_weights, weights_file,
                                weights_record)
from threecad.errors import ThreecadError, WeightsUnavailable
from threecad.tf_efficientnet import B4_TF_IMAGE_SIZE, StaticSamePadConv2d, static_same_pads

NAME = "efficientnet_b4"  # torchvision's B4 and ImageNet file
NAME_TF = "efficientnet_b4_tf"  # lukemelas' B4 and TensorFlow-ported file, as the references
B4_NAMES = (NAME, NAME_TF)
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)  # output stride of torchvision features[1..7]
NUM_BLOCKS = 32  # lukemelas block indices 0..31


def block_positions(net: nn.Module) -> list[tuple[int, int]]:
    """(stage, block) in torchvision's `features` for every lukemelas block index, in order."""
    return [(stage, block) for stage in range(1, 8) for block in range(len(net.features[stage]))]


def _where(name: str) -> str:
    """'stem' or 'block i' for a module name under `nn.Sequential(stem, *body)`."""
    index = int(name.split(".", 1)[0])
    return "stem" if index == 0 else f"block {index - 1}"


def _pads_text(pads: tuple[int, int, int, int]) -> str:
    return f"({pads[0]}, {pads[1]})" if pads[:2] == pads[2:] else str(pads)


class EfficientNetB4Taps(nn.Module):
    """Frozen EfficientNet-B4 (`name`: either B4, see the module doc) cut after the deepest tap;
    returns the tapped blocks' outputs.

    Same interface as `FeatureExtractor`: `strides`, `channels`, `describe_taps`, ImageNet
    normalisation inside, BatchNorm kept in eval mode. `sha256`: the weight file's expected hash.
    """

    def __init__(self, blocks: Sequence[int] = (1, 5, 9, 21), weights: str | None = "imagenet",
                 name: str = NAME, sha256: str = ""):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if not blocks or list(blocks) != sorted(set(blocks)) or blocks[0] < 0 or blocks[-1] >= NUM_BLOCKS:
            raise ThreecadError(f"{name} blocks {blocks}: must be increasing indices in 0..{NUM_BLOCKS - 1}")
        if name not in B4_NAMES:
            raise ThreecadError(f"{name} is not an EfficientNet-B4; known: {', '.join(B4_NAMES)}")
        net = BACKBONES[name].build()
        positions = block_positions(net)
        self.weights_source: dict[str, str] | None = None  # the weight file and its sha256; None = random
        path = None if next(net.parameters()).is_meta else weights_file(name, weights)  # meta (card): no weights
        if path is not None:
            self.weights_source = weights_record(path, sha256)
            state = read_weights(name, path)
            # only the kept part must be in the file (stem and blocks up to the deepest tap)
            kept = ("features.0.",) + tuple(f"features.{s}.{b}." for s, b in positions[: blocks[-1] + 1])
            missing = [k for k in net.state_dict() if k.startswith(kept) and k not in state]
            if missing:
                raise WeightsUnavailable(f"weights for {name} do not fit: missing {', '.join(missing[:3])}")
            net.load_state_dict(state, strict=False)
        self.blocks = blocks
        self.stem = net.features[0]
        self.body = nn.ModuleList(net.features[s][b] for s, b in positions[: blocks[-1] + 1])
        self.strides = tuple(STAGE_STRIDES[positions[b][0] - 1] for b in blocks)
        self.tap_names = tuple(f"features.{positions[b][0]}.{positions[b][1]} (block {b})" for b in blocks)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.name = name
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

    def asymmetric_padding(self) -> list[tuple[str, tuple[int, int, int, int]]]:
        """(where, (left, right, top, bottom)) of the convolutions padded unevenly."""
        return [(_where(n), m.pads) for n, m in nn.Sequential(self.stem, *self.body).named_modules()
                if isinstance(m, StaticSamePadConv2d)]

    def card_notes(self, image_size: int) -> list[str]:
        """What the model card says about this B4 and its weights."""
        if self.name == NAME:
            return ["backbone weights: torchvision's B4 and ImageNet file (efficientnet_b4_rwightman-23ab8bcd.pth; "
                    "symmetric padding, BatchNorm eps 1e-5), not the references' (backbone=efficientnet_b4_tf: "
                    "lukemelas' efficientnet_pytorch and its TensorFlow port)"]
        uneven = self.asymmetric_padding()
        where = ", ".join(f"{w} {_pads_text(p)}" for w, p in uneven)
        body = nn.Sequential(self.stem, *self.body)
        own = [(_where(n), p) for (n, p), (_, q) in
               zip(static_same_pads(body, image_size), static_same_pads(body, B4_TF_IMAGE_SIZE)) if p != q]
        at_size = (f"at {image_size} px TensorFlow's own 'same' rule would pad "
                   + ", ".join(f"{w} {_pads_text(p)}" for w, p in own) + "; neither threecad nor the reference does"
                   if own else f"at {image_size} px that is also TensorFlow's own 'same' padding for the input")
        return [f"backbone: EfficientNet-B4 as the references build it (lukemelas' efficientnet_pytorch, "
                f"EfficientNet.from_name('efficientnet-b4')): BatchNorm eps 1e-3, momentum 0.01; TensorFlow 'same' "
                f"padding fixed for {B4_TF_IMAGE_SIZE} px, B4's image size there (uneven, as (before, after) in height "
                f"and width, on {where}); fixed, as the reference's, so it is the same at every image_size: "
                f"{at_size}",
                "backbone weights: lukemelas' TensorFlow-ported ImageNet file efficientnet-b4-6ed6700e.pth from torch "
                "hub's checkpoint folder, where efficientnet_pytorch caches it (downloaded from lukemelas' release "
                "unless THREECAD_OFFLINE=1), or weights=PATH in lukemelas' or torchvision's key layout; its sha256 "
                "is recorded in the run's method info and checked against weights_sha256 when that is set"]

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
                weights: str | None, sha256: str = "") -> nn.Module:
    """The frozen feature source a config names: a B4 by lukemelas block, anything else by stride.
    Its `weights_source` names the weight file and its sha256 (checked against `sha256` when given)."""
    if backbone in B4_NAMES:
        return EfficientNetB4Taps(blocks, weights, backbone, sha256)
    if backbone not in BACKBONES:
        raise ThreecadError(f"unknown backbone '{backbone}'; known: {', '.join(BACKBONES)}")
    path = weights_file(backbone, weights)
    source = None if path is None else weights_record(path, sha256)
    try:
        extractor = FeatureExtractor(backbone, strides, weights, trainable=False)
    except ValueError as exc:  # a stride the backbone lacks
        raise ThreecadError(f"config strides={tuple(strides)}: {exc}") from None
    extractor.weights_source = source
    return extractor


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
