"""DRAEM (Zavrtanik, Kristan & Skocaj, ICCV 2021): learn to see synthetic anomalies.

Why it works without a pretrained backbone: a reconstructive network is trained to turn an
image with a synthetic anomaly (a Perlin-shaped patch of foreign texture) back into the
clean image, and a discriminative U-Net looks at the (reconstruction, input) pair and marks
where they disagree in a way that matters. Both are trained from scratch, together, with
L2 + SSIM on the reconstruction and a focal loss on the U-Net's softmax output.

Preset `paper` is the reference's MVTec setting (VitjanZ/DRAEM): images read as the reference
reads them (OpenCV's bilinear resize without antialiasing, BGR channels), 256 px, no normalisation,
reconstructive network base width 128 (plain encoder-decoder, no skips), discriminative U-Net
base 64 on the 6-channel concatenation, convs N(0, 0.02) and BatchNorm weight N(1, 0.02) /
bias 0, one Adam (lr 1e-4, default betas) for both networks, x0.2 at 80% and 90% of 700
epochs, batch 8. Each training sample is made anomalous with probability 0.5 (the others are
kept clean with an all-zero mask), and the normal image is first rotated by U(-90, 90)
degrees (zero corners, as imgaug's Affine) with probability 0.3: both done here around the
shared synthesizer, which draws as the reference's loader (`threecad.anomaly_synthesis`,
`draw="draem"`: its Perlin masks rotated as images with zero corners and kept when empty, so
that somewhat fewer than half the samples carry an anomaly; a random DTD image read with
OpenCV in BGR order; three of its ten imgaug augmentations with its ranges). DTD is read from
`dtd_root`, else from `threecad download --dataset dtd`'s folder; without it the run warns once
and uses procedural textures, recorded as `texture_source: procedural`. Preset `cpu` uses narrow
networks, small inputs, procedural textures (`draw="augmented"`: augmented in torch, empty
masks redrawn) and no rotation, so that a category trains on a CPU.

`predict` returns the raw map: softmax channel 1 of the U-Net at input resolution. The
declared post-processing adds no smoothing and scores an image by the max of the map
averaged over a 21 x 21 window (stride 1, zero padding 10), as the reference's test script.

Model selection: the last epoch, as the reference (which overwrites its checkpoint every
epoch and tests the last one), or `select=val`: the lowest total loss on the validation
split's good images turned into synthetic anomalies with a fixed seed.

Departures from the reference: an epoch is one shuffled pass over the training images (the
reference draws len(train) images at random with replacement); the Perlin masks are rotated
with PyTorch's bilinear sampling (the reference: OpenCV's, through imgaug). Preset `cpu` reads
training and test images with PIL (antialiased, RGB).
The SSIM term takes its dynamic range from the reconstruction as the reference's `ssim` does
(2 while the reconstruction dips below -0.5, early in training; else 1).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from threecad.anomaly_synthesis import SynthesisConfig
from threecad.errors import ThreecadError
from threecad.losses import softmax_focal_loss, ssim_loss
from threecad.postprocess import PostProcess
from threecad.preprocess import COLOURS, LIBRARIES, Preprocess
from threecad.trained import TrainedConfig, TrainedMethod, TrainingSetup, epochs_for, length, seeded_weights
from threecad.training import multistep_scheduler

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- networks
def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _double(cin: int, mid: int, cout: int | None = None) -> nn.Sequential:
    """Two conv3x3-BN-ReLU layers: cin -> mid -> cout (cout defaults to mid)."""
    return nn.Sequential(*_conv_bn_relu(cin, mid), *_conv_bn_relu(mid, mid if cout is None else cout))


def _up(cin: int, cout: int) -> nn.Sequential:
    """x2 bilinear upsampling (align_corners=True, as the reference) then conv3x3-BN-ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_conv_bn_relu(cin, cout))


class Encoder(nn.Module):
    """`depth` double-conv blocks with 2x2 max pooling between them; widths w, 2w, 4w, 8w, 8w, ..."""

    def __init__(self, in_channels: int, width: int, depth: int):
        super().__init__()
        widths = [width * min(2 ** i, 8) for i in range(depth)]
        self.widths = widths
        self.blocks = nn.ModuleList(_double(cin, cout) for cin, cout in zip([in_channels] + widths[:-1], widths))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            out.append(x)
        return out


class ReconstructiveDecoder(nn.Module):
    """Four (up, double conv) stages from 8w back to w channels, no skips, then a 3x3 conv to RGB."""

    def __init__(self, width: int, out_channels: int = 3):
        super().__init__()
        w = width
        self.stages = nn.ModuleList([
            nn.Sequential(_up(8 * w, 8 * w), _double(8 * w, 8 * w, 4 * w)),
            nn.Sequential(_up(4 * w, 4 * w), _double(4 * w, 4 * w, 2 * w)),
            nn.Sequential(_up(2 * w, 2 * w), _double(2 * w, 2 * w, w)),
            nn.Sequential(_up(w, w), _double(w, w)),
        ])
        self.out = nn.Conv2d(w, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.out(x)


class DiscriminativeDecoder(nn.Module):
    """U-Net decoder: at each of five scales upsample, concatenate the encoder's skip, double conv."""

    def __init__(self, width: int, out_channels: int = 2):
        super().__init__()
        w = width
        # (input channels, upsampled channels, skip channels) from the deepest scale up
        plan = [(8 * w, 8 * w, 8 * w), (8 * w, 4 * w, 8 * w), (4 * w, 2 * w, 4 * w), (2 * w, w, 2 * w), (w, w, w)]
        self.ups = nn.ModuleList(_up(cin, cup) for cin, cup, _ in plan)
        self.fuse = nn.ModuleList(_double(cup + skip, cup) for _, cup, skip in plan)
        self.out = nn.Conv2d(w, out_channels, kernel_size=3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, fuse, skip in zip(self.ups, self.fuse, reversed(feats[:-1])):
            x = fuse(torch.cat((up(x), skip), dim=1))
        return self.out(x)


class DRAEMNet(nn.Module):
    """The reconstructive sub-network (encoder/decoder) and the discriminative one (U-Net)."""

    def __init__(self, recon_width: int = 128, disc_width: int = 64):
        super().__init__()
        self.reconstructive = nn.ModuleDict({"encoder": Encoder(3, recon_width, depth=5),
                                             "decoder": ReconstructiveDecoder(recon_width, 3)})
        self.discriminative = nn.ModuleDict({"encoder": Encoder(6, disc_width, depth=6),
                                             "decoder": DiscriminativeDecoder(disc_width, 2)})
        self.apply(_reference_init)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstructive["decoder"](self.reconstructive["encoder"](x)[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N,3,S,S) -> (reconstruction (N,3,S,S), logits (N,2,S,S))."""
        rec = self.reconstruct(x)
        logits = self.discriminative["decoder"](self.discriminative["encoder"](torch.cat((rec, x), dim=1)))
        return rec, logits


def _reference_init(module: nn.Module) -> None:
    """The reference's `weights_init`: conv weights N(0, 0.02) (biases keep PyTorch's init),
    BatchNorm weight N(1, 0.02) and bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- the method
@dataclass
class DRAEMConfig(SynthesisConfig, TrainedConfig):
    image_size: int = 256  # inputs resized to a square; a multiple of 32 (five 2x poolings)
    batch_size: int = 8
    seed: int = 42
    resize_library: str = "cv2"  # the reference reads and resizes with OpenCV (no antialiasing)...
    colour: str = "bgr"  # ...and keeps OpenCV's channel order
    recon_width: int = 128  # base width of the reconstructive encoder-decoder
    disc_width: int = 64  # base width of the discriminative U-Net
    epochs: int = length(700)
    steps: int = length(0)  # > 0: train for about this many optimiser steps (epochs = ceil(steps / batches an epoch))
    lr: float = 1e-4  # one Adam (default betas) for both networks
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # fractions of the epochs where lr *= lr_gamma
    lr_gamma: float = 0.2
    anomaly_prob: float = 0.5  # probability that a training sample gets a synthetic anomaly
    rotate_prob: float = 0.3  # probability that the normal image is first rotated by U(-rotate_max, rotate_max)
    rotate_max: float = 90.0  # degrees
    pool: int = 21  # image score: max of the map averaged over pool x pool (zero padding pool // 2)
    select: str = "last"  # last epoch (the reference), or "val": lowest loss on synthetic anomalies of val
    draw: str = "draem"  # anomalies drawn as the reference's loader (`threecad.anomaly_synthesis`)

    def validate(self) -> None:
        if self.resize_library not in LIBRARIES:
            raise ThreecadError(f"config resize_library={self.resize_library}: must be one of {', '.join(LIBRARIES)}")
        if self.colour not in COLOURS:
            raise ThreecadError(f"config colour={self.colour}: must be one of {', '.join(COLOURS)}")
        if self.image_size % 32:
            raise ThreecadError(f"config image_size={self.image_size}: must be a multiple of 32 "
                                f"(the discriminative U-Net halves it five times)")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ThreecadError(f"config steps={self.steps}: must be an integer >= 0 (0: use epochs)")
        for key in ("recon_width", "disc_width", "epochs", "pool"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ThreecadError(f"config {key}={value}: must be a positive integer")
        if self.pool > self.image_size:
            raise ThreecadError(f"config pool={self.pool}: larger than image_size {self.image_size}")
        if self.lr <= 0:
            raise ThreecadError(f"config lr={self.lr}: must be > 0")
        for key in ("anomaly_prob", "rotate_prob"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ThreecadError(f"config {key}={value}: must be in [0, 1]")
        if not 0.0 <= self.rotate_max <= 180.0:
            raise ThreecadError(f"config rotate_max={self.rotate_max}: must be in [0, 180] degrees")


class DRAEM(TrainedMethod):
    name = "draem"
    description = "DRAEM (ICCV 2021): reconstructive + discriminative networks trained on synthetic anomalies"
    config_class = DRAEMConfig
    presets = {
        "paper": {},
        # 1/16 and 1/4 of the reference widths (69M + 28M -> 0.27M + 1.8M parameters), 128 px,
        # procedural textures, no rotation of the normal image (a category is one part in a fixed
        # pose: rotated copies spend the networks' few steps on poses the test never shows). DRAEM
        # learns from scratch, so the lr is 10x the reference's and training runs a fixed number of
        # steps (1200), whatever the category's size. The score window is 3 px: ACC's marks are 2-4 px
        # across at 128 px, and a wider window averages them away against broad, faint responses on
        # good images (on the synthetic ACC, I-AUROC fell as the window widened; half the steps with
        # a 5 px window scored lower on both ACC and AI). Not 128 px crops of 256 px inputs: the
        # sharp edges of the full-size part fire. The README's Methods table gives what it reaches.
        "cpu": {"image_size": 128, "resize_library": "pil", "colour": "rgb", "recon_width": 8, "disc_width": 16,
                "batch_size": 4, "steps": 1200, "lr": 1e-3, "pool": 3, "rotate_prob": 0.0, "textures": "procedural",
                "draw": "augmented"},
    }

    def __init__(self, config: DRAEMConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        with seeded_weights(config.seed):
            self.net = DRAEMNet(config.recon_width, config.disc_width).to(self.device)
        # channels-last on every device: oneDNN's CPU convolutions of these from-scratch
        # networks train faster in NHWC
        self.channels_last = True
        self.net.to(memory_format=torch.channels_last)
        self.texture_source: str | None = None

    # ------------------------------------------------------------------ training
    def training_pair(self, images: torch.Tensor, synth, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Good images -> (targets, inputs, masks) as the reference's training loader makes them.

        Each target is the image, rotated with probability `rotate_prob` (zero corners); each
        input is its target with a synthetic anomaly with probability `anomaly_prob`, else the
        target itself with an all-zero mask.
        """
        from threecad.anomaly_synthesis import rotate_zero_fill

        cfg = self.config
        n = images.shape[0]
        targets = images.float()
        rotate = torch.rand(n, generator=generator) < cfg.rotate_prob
        angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.rotate_max)
        if rotate.any():
            idx = rotate.nonzero()[:, 0].to(images.device)
            targets = targets.clone()
            targets[idx] = rotate_zero_fill(targets[idx], angles[rotate])
        anomalous = torch.rand(n, generator=generator) < cfg.anomaly_prob
        inputs = targets.clone()
        masks = torch.zeros(n, 1, *targets.shape[-2:], device=images.device)
        if anomalous.any():
            idx = anomalous.nonzero()[:, 0].to(images.device)
            inputs[idx], masks[idx] = synth(targets[idx])
        return targets, inputs, masks

    def losses(self, targets: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2 and SSIM (dynamic range read off the reconstruction, as the reference) of the
        reconstruction against the clean target, focal loss of the U-Net's softmax against the
        mask (all weight 1), and their sum `loss`."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with self.autocast():
            rec, logits = self.net(inputs.contiguous(memory_format=fmt))
        rec, probs = rec.float(), torch.softmax(logits.float(), dim=1)
        out = {"l2": F.mse_loss(rec, targets), "ssim": ssim_loss(rec, targets, value_range=None),
               "focal": softmax_focal_loss(probs, masks)}
        out["loss"] = out["l2"] + out["ssim"] + out["focal"]
        return out

    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        cfg = self.config
        dtd_root = cfg.dtd_folder(self.name)
        self._synth = cfg.synthesizer(cfg.seed, dtd_root)
        self.texture_source = self._synth.texture_source
        log.info("draem: anomaly textures: %s", self.texture_source)
        self._coins = torch.Generator().manual_seed(cfg.seed + 2)  # rotation and anomaly coins
        epochs = epochs_for(train_loader, cfg.epochs, cfg.steps)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        scheduler = multistep_scheduler(optimizer, epochs, cfg.lr_milestones, cfg.lr_gamma)
        self._val_synth = cfg.synthesizer(cfg.seed + 1, dtd_root) if cfg.select == "val" else None
        self._val_coins = torch.Generator()
        return TrainingSetup(self.net, optimizer, scheduler, epochs,
                             generators={"synthesizer": self._synth.generator, "coins": self._coins})

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.losses(*self.training_pair(batch["image"], self._synth, self._coins))

    def start_validation(self) -> None:
        cfg = self.config
        self._val_synth.generator.manual_seed(cfg.seed + 1)  # the same anomalies at every epoch
        self._val_coins.manual_seed(cfg.seed + 3)

    def validation_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        targets, inputs, masks = self.training_pair(batch["image"], self._val_synth, self._val_coins)
        return self.losses(targets, inputs, masks)["loss"], len(batch["image"])

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        self.net.eval()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            _, logits = self.net(images)
        return None, torch.softmax(logits.float(), dim=1)[:, 1]

    def postprocess(self) -> PostProcess:
        pool = self.config.pool
        return PostProcess(sigma=0.0, mode="reflect", score="mean_pool_max", pool=pool, pool_pad=pool // 2)

    # ------------------------------------------------------------------ model card
    def parts(self) -> dict[str, nn.Module]:
        return {"reconstructive.encoder": self.net.reconstructive["encoder"],
                "reconstructive.decoder": self.net.reconstructive["decoder"],
                "discriminative.encoder": self.net.discriminative["encoder"],
                "discriminative.decoder": self.net.discriminative["decoder"]}

    def preprocess(self) -> Preprocess:
        cfg = self.config
        return Preprocess(size=cfg.image_size, library=cfg.resize_library, colour=cfg.colour)

    def card_details(self) -> dict[str, Any]:
        cfg = self.config
        size = cfg.image_size
        rec_widths = self.net.reconstructive["encoder"].widths
        disc_widths = self.net.discriminative["encoder"].widths
        return {
            "shapes": {
                "bottleneck": [rec_widths[-1], size // 16, size // 16],
                "discriminative_taps": [[c, size >> i, size >> i] for i, c in enumerate(disc_widths)],
                "output": [2, size, size]},
            "notes": [
                "reconstructive network: plain encoder-decoder without skip connections, RGB output "
                "without an activation; discriminative U-Net on concat(reconstruction, input) (6 channels)",
                "map: softmax channel 1 of the U-Net, no smoothing; image score: max of the map "
                f"averaged over {cfg.pool}x{cfg.pool} (stride 1, zero padding {cfg.pool // 2})"],
            "anomalies": {"textures": cfg.textures, "draw": cfg.draw, "anomaly_prob": cfg.anomaly_prob,
                          "rotate_prob": cfg.rotate_prob},
        }

    # ------------------------------------------------------------------ persistence
    checkpoint_facts = ("texture_source",)

    def info(self) -> dict[str, Any]:
        from threecad.model_card import count_parameters

        out: dict[str, Any] = {"texture_source": self.texture_source, "anomaly_draw": self.config.draw,
                               "parameters": {name: count_parameters(m)["trainable"]
                                              for name, m in self.parts().items()}}
        if self.loop is not None:
            out.update(epochs=self.loop.epochs, **self.training_facts())
        return out
