"""Reverse Distillation (Deng & Li, CVPR 2022): a frozen teacher, a one-class bottleneck and a
student decoder that mirrors the teacher and learns to rebuild its features of good images.

Where the decoder fails to rebuild the teacher (low cosine similarity, per pixel) the image
is anomalous. CFRG reuses the bottleneck and decoder as its recovery branch, so both are
written for any teacher with three feature maps at strides 4/8/16 and channels (c1, c2, c3):
with WideResNet-50 (256, 512, 1024) they are exactly the RD/3CAD-release networks, with a
small offline teacher (EfficientNet-Lite0, MobileNetV2) they shrink with it.

Paper defaults (preset `paper`): WideResNet-50 layers 1-3, Adam lr 0.005 betas (0.5, 0.999),
batch 16, 200 epochs, 256x256 inputs, loss = sum over scales of 1 - cos of the flattened
maps, anomaly map = sum over scales of upsampled 1 - cos, Gaussian sigma 4, score = max.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threecad.training import LoopResult, check_selection, multistep_scheduler, seed_everything, train_epochs
from threecad.backbones import FeatureExtractor
from threecad.method import Method, MethodConfig
from threecad.smoothing import gaussian_smooth

log = logging.getLogger(__name__)


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


def scores_from_maps(maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).amax(dim=1)


def random_teacher(weights: str | None) -> bool:
    """A randomly initialised teacher (tests) must travel in the checkpoint: no file rebuilds it."""
    return weights is None or str(weights).lower() in ("none", "random", "")


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
class ReverseDistillationConfig(MethodConfig):
    image_size: int = 256
    batch_size: int = 16
    seed: int = 42
    backbone: str = "wide_resnet50_2"  # teacher, tapped at strides 4/8/16
    weights: str = "imagenet"  # teacher weights: imagenet | none | PATH to a state dict
    epochs: int = 200
    lr: float = 0.005
    beta1: float = 0.5
    beta2: float = 0.999
    bottleneck_blocks: int = 3
    decoder_blocks: tuple[int, ...] = (3, 4, 6)
    sigma: float = 4.0  # Gaussian smoothing of the map, in pixels of the input
    select: str = "last"  # last epoch, or "val": lowest RD loss on the validation split's good images


class ReverseDistillation(Method):
    name = "rd"
    description = "Reverse Distillation: frozen teacher, one-class bottleneck, mirrored student decoder"
    config_class = ReverseDistillationConfig
    presets = {
        "paper": {},
        # Offline pretrained teacher, small inputs: minutes on a 2-core laptop.
        # (100 epochs measured no better than 40 on the synthetic set.)
        "cpu": {"backbone": "efficientnet_lite0", "image_size": 128, "batch_size": 4, "epochs": 40,
                "sigma": 2.0},
    }

    def __init__(self, config: ReverseDistillationConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        check_selection(config.select)
        self.work_dir = None  # set by the harness: where the epoch checkpoint lives
        with torch.random.fork_rng(devices=[]):  # the same initial weights for the same seed
            torch.manual_seed(config.seed)
            self.net = ReverseDistillationNet(config.backbone, config.weights, config.bottleneck_blocks,
                                              config.decoder_blocks).to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._loop: LoopResult | None = None

    def fit(self, train_loader, val_loader=None) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        params = self.net.trainable
        optimizer = torch.optim.Adam(params.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        scheduler = multistep_scheduler(optimizer, cfg.epochs, (), 1.0)  # RD: constant learning rate
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)

        def step(batch: dict) -> dict[str, torch.Tensor]:
            with self.autocast():
                teacher, rebuilt = self.net(batch["image"])
            return {"loss": flattened_cosine_loss(teacher, rebuilt)}

        def validate(batches) -> float:
            total, n = 0.0, 0
            for batch in batches:
                with self.autocast():
                    teacher, rebuilt = self.net(batch["image"])
                total += float(flattened_cosine_loss(teacher, rebuilt)) * len(batch["image"])
                n += len(batch["image"])
            return total / max(n, 1)

        self._loop = train_epochs(params, optimizer, scheduler, scaler, step, train_loader,
                                  epochs=cfg.epochs, device=self.device, channels_last=self.channels_last,
                                  work_dir=self.work_dir, select=cfg.select, validate=validate,
                                  val_loader=val_loader, desc="rd")
        self.net.eval()

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            teacher, rebuilt = self.net(images)
        maps = upsampled_sum([cosine_distance(t, r) for t, r in zip(teacher, rebuilt)], images.shape[-1])
        maps = gaussian_smooth(maps, self.config.sigma)
        return scores_from_maps(maps), maps

    def state_dict(self) -> dict[str, Any]:
        state = {"config": dataclasses.asdict(self.config), "model": self.net.trainable.state_dict()}
        if random_teacher(self.config.weights):
            state["teacher"] = self.net.teacher.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.trainable.load_state_dict(state["model"])
        if "teacher" in state:
            self.net.teacher.load_state_dict(state["teacher"])
        self.net.eval()

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"teacher": self.config.backbone, "teacher_channels": list(self.net.teacher.channels),
                               "trainable_parameters": sum(p.numel() for p in self.net.trainable.parameters())}
        if self._loop is not None:
            out.update(selected_epoch=self._loop.selected_epoch, selection=self.config.select,
                       resumed_after_epoch=self._loop.resumed_after, final_train_losses=self._loop.last_losses)
        return out
