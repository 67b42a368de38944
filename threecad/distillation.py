"""Teacher-student distillation parts shared by Reverse Distillation and CFRG.

RD (Deng & Li, CVPR 2022) rebuilds a frozen teacher's features through a one-class
bottleneck and a decoder that mirrors the teacher; CFRG (the 3CAD paper) reuses both as
its recovery branch, and both methods turn per-pixel cosine distances between feature
maps into anomaly maps. Two top-level packages (`baselines`, `cfrg`) need these parts, so
they live here, once.

The networks are written for any teacher with three feature maps at strides 4/8/16 and
channels (c1, c2, c3): with WideResNet-50 (256, 512, 1024) they are exactly the RD/3CAD
release networks, with a small offline teacher (EfficientNet-Lite0, MobileNetV2) they
shrink with it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- building blocks
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _deconv2x2(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)


class ResidualBottleneck(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 (strided) -> 1x1 with a projected shortcut.

    RD calls the bottleneck's blocks "attention bottlenecks", but their forward pass is
    this plain residual block; there is no attention to reproduce.
    """

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv1x1(cin, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv3x3(width, width, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv1x1(width, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class UpBottleneck(nn.Module):
    """The decoder's mirror of a bottleneck: the strided 3x3 becomes a 2x2 transposed conv."""

    def __init__(self, cin: int, width: int, cout: int, upsample: bool = False):
        super().__init__()
        self.conv1, self.bn1 = _conv1x1(cin, width), nn.BatchNorm2d(width)
        self.conv2 = _deconv2x2(width, width) if upsample else _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv1x1(width, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if upsample:
            self.shortcut = nn.Sequential(_deconv2x2(cin, cout), nn.BatchNorm2d(cout))
        elif cin != cout:
            self.shortcut = nn.Sequential(_conv1x1(cin, cout), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def init_weights(module: nn.Module) -> None:
    """RD's initialisation: Kaiming (fan-out) convolutions, unit/zero BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class OneClassBottleneck(nn.Module):
    """Multi-scale feature fusion then one-class embedding, for teacher channels (c1, c2, c3).

    The stride-4 map goes down twice (c1 -> c2 -> c3), the stride-8 map once (c2 -> c3);
    with the stride-16 map they are concatenated (3 c3 channels) and compressed by
    `blocks` residual bottlenecks (width c3, first one strided) into 2 c3 channels at
    stride 32: for WideResNet-50, 2048 x 8 x 8 at 256 input.

    The RD and 3CAD releases also define a 1x1 conv + BN (4 c3 -> 2 c3) that their forward
    pass never uses; it is left out here, which is why this module has 8,392,704 fewer
    parameters than their WideResNet-50 bottleneck (58,885,120 instead of 67,277,824).
    """

    def __init__(self, channels: Sequence[int], blocks: int = 3):
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.out_channels = 2 * c3
        self.down1 = nn.Sequential(_conv3x3(c1, c2, 2), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
                                   _conv3x3(c2, c3, 2), nn.BatchNorm2d(c3), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(_conv3x3(c2, c3, 2), nn.BatchNorm2d(c3), nn.ReLU(inplace=True))
        layers = [ResidualBottleneck(3 * c3, c3, 2 * c3, stride=2)]
        layers += [ResidualBottleneck(2 * c3, c3, 2 * c3) for _ in range(max(blocks, 1) - 1)]
        self.embed = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = features
        fused = torch.cat([self.down1(f1), self.down2(f2), f3], dim=1)
        return self.embed(fused).contiguous()


class MirroredDecoder(nn.Module):
    """The teacher's layers 3-2-1 reversed: from the embedding back to (c1, c2, c3) maps.

    Stage k rebuilds teacher level 3-k with `blocks[k]` bottlenecks (width = half the output
    channels, the first one upsampling x2). Returns the maps shallow first, as the teacher.
    With WideResNet-50 channels and blocks (3, 4, 6) this is RD's de_wide_resnet50_2.
    """

    def __init__(self, channels: Sequence[int], blocks: Sequence[int] = (3, 4, 6),
                 in_channels: int | None = None, width_ratio: float = 0.5):
        super().__init__()
        channels = [int(c) for c in channels]
        if len(blocks) != len(channels):
            raise ValueError(f"decoder blocks {tuple(blocks)} must have one entry per scale ({len(channels)})")
        cin = in_channels or 2 * channels[-1]
        stages = []
        for cout, n in zip(reversed(channels), blocks):
            width = max(1, int(round(cout * width_ratio)))
            layers = [UpBottleneck(cin, width, cout, upsample=True)]
            layers += [UpBottleneck(cout, width, cout) for _ in range(max(int(n), 1) - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out[::-1]


# --------------------------------------------------------------------------- maps and losses
def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel 1 - cos over channels, (N,C,h,w) x2 -> (N,h,w), in float32 even under AMP."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=1)


def flattened_cosine_loss(targets: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of mean over the batch of 1 - cos between whole flattened maps (RD's loss)."""
    loss = targets[0].new_zeros((), dtype=torch.float32)
    for t, o in zip(targets, outputs):
        loss = loss + (1.0 - F.cosine_similarity(t.float().flatten(1), o.float().flatten(1), dim=1)).mean()
    return loss


def upsampled_sum(distances: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Sum of (N,h,w) maps upsampled bilinearly (corners aligned, as the releases) to (N,size,size)."""
    total = None
    for d in distances:
        up = F.interpolate(d.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=True)
        total = up if total is None else total + up
    return total[:, 0]
