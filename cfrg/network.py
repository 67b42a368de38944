"""The CFRG network: frozen teacher, student with adapters, recovery branch, segmentation U-Net.

Coarse stage: a randomly initialised student learns, on synthetic anomalies, to agree with
the teacher on normal pixels and to disagree on anomalous ones; a recovery branch (RD's
one-class bottleneck and mirrored decoder) fed the teacher's features of the anomalous
image learns to output the teacher's features of the normal one. Fine stage: a
decoder-only U-Net segments the anomaly from the teacher's features weighted by both
discrepancies, `(1 - cos(T_a, S)) * T_a * (1 - cos(T_a, R))`.

All parts are sized from the teacher's channels (c1, c2, c3): WideResNet-50 gives the
release's networks; a small offline teacher gives a network that trains on a laptop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from threecad.backbones import FeatureExtractor
from threecad.distillation import MirroredDecoder, OneClassBottleneck, cosine_distance


class Adapter(nn.Module):
    """Maps a student tap to the teacher's channels: depthwise 3x3, 1x1, BN, ReLU, 3x3, 1x1, BN, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cin, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cin, 3, padding=1, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UpBlock(nn.Module):
    """x2 transposed conv (kernel 4), optional skip concatenation, then (3x3 conv, BN, ReLU) twice."""

    def __init__(self, cin: int, cout: int, skip: int = 0):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(cout + skip, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.body(x)


class SegmentationDecoder(nn.Module):
    """Decoder-only U-Net from three weighted feature maps (strides 4/8/16) to one logit per pixel.

    Up c3 -> c2 (+ c2 skip), c2 -> c1 (+ c1 skip), then two plain x2 stages (c1/2, c1/4
    channels, at least `min_width`) back to input resolution, and a 3x3 conv to one logit.
    With WideResNet-50 channels: 1024 -> 512 -> 256 -> 128 -> 64 -> 1, the release's U-Net.
    """

    def __init__(self, channels: Sequence[int], min_width: int = 16):
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        w3, w4 = max(c1 // 2, min_width), max(c1 // 4, min_width)
        self.up1 = UpBlock(c3, c2, skip=c2)
        self.up2 = UpBlock(c2, c1, skip=c1)
        self.up3 = UpBlock(c1, w3)
        self.up4 = UpBlock(w3, w4)
        self.head = nn.Conv2d(w4, 1, 3, padding=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = features
        x = self.up2(self.up1(f3, f2), f1)
        return self.head(self.up4(self.up3(x)))


@dataclass
class CFRGOutputs:
    """Features and logits of one forward pass; lists are shallow first (strides 4/8/16)."""

    teacher: list[torch.Tensor]  # T(x) of the image the student and recovery branch see
    student: list[torch.Tensor] | None  # adapted student features S(x)
    recovered: list[torch.Tensor] | None  # recovery branch R(T(x))
    logits: torch.Tensor | None  # segmentation logits (N,1,H,W)


class CFRGNet(nn.Module):
    """Teacher + student/adapters + recovery branch + segmentation, with ablation switches.

    `recovery=False` drops the recovery branch (maps and guidance then come from the student);
    `recovery_guidance=False` keeps it but leaves the `(1 - cos(T_a, R))` factor out of the
    segmentation input; `segmentation=False` drops the fine stage.
    """

    def __init__(self, teacher: str = "wide_resnet50_2", teacher_weights: str = "imagenet",
                 student: str = "efficientnet_b0_tf", recovery: bool = True, recovery_guidance: bool = True,
                 segmentation: bool = True, bottleneck_blocks: int = 3, decoder_blocks: Sequence[int] = (3, 4, 6)):
        super().__init__()
        self.teacher = FeatureExtractor(teacher, (4, 8, 16), teacher_weights, trainable=False)
        channels = self.teacher.channels
        self.recovery_guidance = recovery and recovery_guidance
        parts: dict[str, nn.Module] = {
            "student": FeatureExtractor(student, (4, 8, 16), "none", trainable=True)}
        parts["adapters"] = nn.ModuleList(Adapter(s, t) for s, t in zip(parts["student"].channels, channels))
        if recovery:
            parts["bottleneck"] = OneClassBottleneck(channels, bottleneck_blocks)
            parts["decoder"] = MirroredDecoder(channels, decoder_blocks)
        if segmentation:
            parts["segmentation"] = SegmentationDecoder(channels)
        self.trainable = nn.ModuleDict(parts)

    @property
    def has_recovery(self) -> bool:
        return "decoder" in self.trainable

    @property
    def has_segmentation(self) -> bool:
        return "segmentation" in self.trainable

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (teacher included), as the release's counts are reported."""
        counts = {"teacher": sum(p.numel() for p in self.teacher.parameters())}
        counts.update({name: sum(p.numel() for p in m.parameters()) for name, m in self.trainable.items()})
        return counts

    def student_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        taps = self.trainable["student"](images)
        return [adapter(t) for adapter, t in zip(self.trainable["adapters"], taps)]

    def recover(self, teacher: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.trainable["decoder"](self.trainable["bottleneck"](teacher))

    def segment(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                recovered: Sequence[torch.Tensor] | None) -> torch.Tensor:
        weighted = []
        for k, t in enumerate(teacher):
            w = cosine_distance(t, student[k])
            if self.recovery_guidance and recovered is not None:
                w = w * cosine_distance(t, recovered[k])
            weighted.append(w.unsqueeze(1).to(t.dtype) * t)
        return self.trainable["segmentation"](weighted)

    def forward(self, images: torch.Tensor, need_student: bool = True) -> CFRGOutputs:
        """All outputs for `images` (the anomalous image in training, the test image at inference).

        `need_student=False` skips the student when nothing downstream uses it (inference
        without segmentation, with recovery maps).
        """
        with torch.no_grad():
            teacher = self.teacher(images)
        recovered = self.recover(teacher) if self.has_recovery else None
        student = self.student_features(images) if (need_student or self.has_segmentation) else None
        logits = self.segment(teacher, student, recovered) if self.has_segmentation else None
        return CFRGOutputs(teacher, student, recovered, logits)
