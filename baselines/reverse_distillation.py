"""Reverse Distillation (Deng & Li, CVPR 2022): a frozen teacher, a one-class bottleneck and a
student decoder that mirrors the teacher and learns to rebuild its features of good images.

Where the decoder fails to rebuild the teacher (low cosine similarity, per pixel) the image
is anomalous. The networks (`threecad.distillation`) are shared with CFRG, which reuses the
bottleneck and decoder as its recovery branch.

Paper defaults (preset `paper`): WideResNet-50 layers 1-3, Adam lr 0.005 betas (0.5, 0.999),
batch 16, 200 epochs, 256x256 inputs, loss = sum over scales of 1 - cos of the flattened
maps, anomaly map = sum over scales of upsampled 1 - cos, then a Gaussian of sigma 4 (scipy,
mode reflect) and score = max of the smoothed map. `predict` returns the raw map; the
harness applies the smoothing this method declares (`postprocess`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from threecad.backbones import FeatureExtractor
from threecad.distillation import (MirroredDecoder, OneClassBottleneck, cosine_distance, flattened_cosine_loss,
                                   upsampled_sum)
from threecad.postprocess import PostProcess
from threecad.trained import TrainedConfig, TrainedMethod, TrainingSetup, length, seeded_weights
from threecad.training import multistep_scheduler

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the method
class ReverseDistillationNet(nn.Module):
    """Teacher (frozen) + one-class bottleneck + mirrored decoder."""

    def __init__(self, backbone: str, weights: str, bottleneck_blocks: int = 3,
                 decoder_blocks: Sequence[int] = (3, 4, 6)):
        super().__init__()
        self.teacher = FeatureExtractor(backbone, (4, 8, 16), weights, trainable=False)
        self.trainable = nn.ModuleDict({
            "bottleneck": OneClassBottleneck(self.teacher.channels, bottleneck_blocks),
            "decoder": MirroredDecoder(self.teacher.channels, decoder_blocks),
        })

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            teacher = self.teacher(images)
        rebuilt = self.trainable["decoder"](self.trainable["bottleneck"](teacher))
        return teacher, rebuilt


@dataclass
class ReverseDistillationConfig(TrainedConfig):
    image_size: int = 256
    batch_size: int = 16
    seed: int = 42
    backbone: str = "wide_resnet50_2"  # teacher, tapped at strides 4/8/16
    weights: str = "imagenet"  # teacher weights: imagenet | none | PATH to a state dict
    epochs: int = length(200)
    lr: float = 0.005
    beta1: float = 0.5
    beta2: float = 0.999
    bottleneck_blocks: int = 3
    decoder_blocks: tuple[int, ...] = (3, 4, 6)
    sigma: float = 4.0  # Gaussian smoothing of the map, in pixels of the input
    select: str = "last"  # last epoch, or "val": lowest RD loss on the validation split's good images


class ReverseDistillation(TrainedMethod):
    name = "rd"
    description = "Reverse Distillation: frozen teacher, one-class bottleneck, mirrored student decoder"
    config_class = ReverseDistillationConfig
    presets = {
        "paper": {},
        # Offline pretrained teacher, 256 px inputs, 40 epochs, sigma 2: sized for a CPU (the
        # README's Methods table gives what it reaches). Not smaller inputs: at 128 or 192 px the
        # stride-4 tap cannot tell a dent or a slot mark on the stators from the per-image
        # winding and slot texture.
        "cpu": {"backbone": "efficientnet_lite0", "image_size": 256, "batch_size": 4, "epochs": 40,
                "sigma": 2.0},
    }

    def __init__(self, config: ReverseDistillationConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        with seeded_weights(config.seed):
            self.net = ReverseDistillationNet(config.backbone, config.weights, config.bottleneck_blocks,
                                              config.decoder_blocks).to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        cfg = self.config
        params = self.net.trainable
        optimizer = torch.optim.Adam(params.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        scheduler = multistep_scheduler(optimizer, cfg.epochs, (), 1.0)  # RD: constant learning rate
        return TrainingSetup(params, optimizer, scheduler, cfg.epochs)

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        with self.autocast():
            teacher, rebuilt = self.net(batch["image"])
        return {"loss": flattened_cosine_loss(teacher, rebuilt)}

    def validation_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        return self.step(batch)["loss"], len(batch["image"])

    def predict(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        self.net.eval()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            teacher, rebuilt = self.net(images)
        maps = upsampled_sum([cosine_distance(t, r) for t, r in zip(teacher, rebuilt)], images.shape[-1])
        return None, maps

    def postprocess(self) -> PostProcess:
        return PostProcess(sigma=self.config.sigma, mode="reflect", score="max")

    def parts(self) -> dict[str, nn.Module]:
        return {f"encoder ({self.config.backbone}, used part)": self.net.teacher,
                "bottleneck": self.net.trainable["bottleneck"],
                "decoder": self.net.trainable["decoder"]}

    def card_details(self) -> dict[str, Any]:
        return {"taps": self.net.teacher.describe_taps(self.config.image_size),
                "notes": ["bottleneck: without the 1x1 conv + BN (4 c3 -> 2 c3) that RD's release defines "
                          "and never calls (8,392,704 parameters with WideResNet-50)"]}

    def trained_module(self) -> nn.Module:
        return self.net.trainable

    def frozen_backbone(self) -> tuple[str, nn.Module]:
        return "teacher", self.net.teacher

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"teacher": self.config.backbone, "teacher_channels": list(self.net.teacher.channels),
                               "trainable_parameters": sum(p.numel() for p in self.net.trainable.parameters())}
        out.update(self.training_facts())
        return out
