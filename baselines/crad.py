"""CRAD (Lee et al., ECCV 2024): reconstruct frozen features from a continuous memory, so that
the decoder never sees the input features it has to rebuild.

A frozen EfficientNet-B4 gives blocks 9 and 21 (lukemelas indices), aligned to stride 8
and concatenated (216 channels, 28x28 at 224 px). The memory is two learnable query
grids read at coordinates predicted from the input:
- a local grid (1, C, 8, 8), sampled (bilinear `grid_sample`) at one (x, y) per pixel from
  a 1x1-conv head on the features (tanh, so the coordinates stay in [-1, 1]);
- a global grid (1, C*h*w, 4, 4), sampled at one (x, y) per image from an MLP on the
  pooled features: a whole C x h x w feature map per grid cell.
Their concatenation (2C channels) goes through 11 MobileNetV3 bottlenecks (3x3, expansion
864, squeeze-excite, h-swish) and a 1x1 conv back to C channels. Because the input reaches
the output only through a few coordinates, anomalous features are rebuilt as normal ones.

The reconstruction is then blended with the features, rec' = s*f + (1-s)*rec with
s = 0.3 * (1 - round(clamp(0.05 * mse, 0, 1))) + 0.7 * cos(rec, f) per pixel (the round
carries no gradient); loss = MSE(rec', f); map = ||rec' - f||_2 over channels, upsampled
x8 (bilinear, corners aligned), returned raw by `predict`. The declared post-processing is
what the reference's evaluation does to every map before any metric: a 21x21 mean (zeros
counted at the border, `map_box`); image score = max of that map averaged over 32x32
windows. The paper preset's batch is the reference's total, 64 (4 GPUs x 16); under
`--ddp` the ranks split it. In training, with probability 0.5 per batch, N(0, 0.05^2)
noise is added to the local coordinates (the repository's `noise_std: 0.05`).

The taps, their alignment, the map, the image score and the unified setting (one model for
all categories, as the paper trains) are what CRAD shares with UniAD:
`threecad.feature_reconstruction`. This file holds the memory, the bottlenecks and the blend.

Preset `paper` is the reference's MVTec config: 224 px, ImageNet normalisation, batch 16
(per GPU; the README trains on 4 GPUs), 50 epochs, AdamW with two groups (network lr 1e-3,
query grids lr 0.1, both with AdamW's default weight decay 0.01), StepLR(40, x0.1) stepped
as the reference does (`step(epoch)` after each epoch: the decay lands one epoch late),
gradient norm clipped to 0.1 over both groups, conv/linear init N(0, 0.01), grids
xavier_normal. `--set expansion=216` is CRAD-s.

The backbone is the reference's EfficientNet-B4 (`efficientnet_b4_tf`: lukemelas'
`efficientnet_pytorch` with its TensorFlow-ported ImageNet file; `threecad.efficientnet_taps`).
Departures: the network stops after block 21 instead of running the head. The reference seeds
nothing (`random_seed: 0` fails its `if random_seed:`); threecad seeds with `seed`. Model
selection: the reference validates on the TEST set every 10 epochs and evaluates its best
checkpoint (`ckpt_best`, best test image AUROC); threecad never looks at the test set: the
last epoch, or `select=val` (lowest loss on the validation split's good images).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from threecad.errors import ThreecadError
from threecad.postprocess import PostProcess
from threecad.feature_reconstruction import FeatureReconstruction, FeatureReconstructionConfig
from threecad.optim import clip_gradients, delayed_step_lr
from threecad.trained import TrainedConfig, TrainingSetup, length, not_length


# --------------------------------------------------------------------------- the network
class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite: pooled -> Linear(c, c/4) -> ReLU -> Linear(c/4, c) -> h-sigmoid."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class MobileBottleneck(nn.Module):
    """MobileNetV3 block, stride 1, in = out (residual): 1x1 expand, 3x3 depthwise, SE, 1x1 project."""

    def __init__(self, channels: int, expansion: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, expansion, 1, bias=False), nn.BatchNorm2d(expansion), nn.Hardswish(),
            nn.Conv2d(expansion, expansion, kernel, padding=kernel // 2, groups=expansion, bias=False),
            nn.BatchNorm2d(expansion), SqueezeExcite(expansion), nn.Hardswish(),
            nn.Conv2d(expansion, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class CRADReconstruction(nn.Module):
    """Query grids, coordinate heads, bottlenecks and the 1x1 `recover` conv."""

    def __init__(self, channels: int, h: int, w: int, local_resolution: int, global_resolution: int,
                 layers: int, expansion: int):
        super().__init__()
        c = channels
        self.h, self.w = h, w
        self.local_grid = nn.Parameter(torch.empty(1, c, local_resolution, local_resolution))
        self.global_grid = nn.Parameter(torch.empty(1, c * h * w, global_resolution, global_resolution))
        self.global_coord = nn.Sequential(nn.Linear(c, c), nn.Tanh(), nn.Linear(c, 2), nn.Tanh())
        self.local_coord = nn.Sequential(nn.Conv2d(c, c, 1), nn.Tanh(), nn.Conv2d(c, 2, 1), nn.Tanh())
        self.layers = nn.Sequential(*[MobileBottleneck(2 * c, expansion) for _ in range(layers)])
        self.recover = nn.Conv2d(2 * c, c, 1, bias=False)
        for m in self.modules():  # the reference's initializer None: N(0, 0.01), zero bias
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_normal_(self.local_grid)
        nn.init.xavier_normal_(self.global_grid)

    def grids(self) -> list[nn.Parameter]:
        return [self.local_grid, self.global_grid]

    def forward(self, feats: torch.Tensor, coord_noise: float = 0.0) -> torch.Tensor:
        """feats (N, C, h, w) -> reconstruction (N, C, h, w); `coord_noise` jitters the local coordinates."""
        return self.recover(self.layers(self.queries(feats, coord_noise)))

    def queries(self, feats: torch.Tensor, coord_noise: float = 0.0) -> torch.Tensor:
        """The memory read for `feats`: [global sample, local sample] (N, 2C, h, w).

        Global: one (x, y) per image picks a C*h*w vector from the global grid, reshaped to
        (C, h, w); local: one (x, y) per pixel picks a C vector from the local grid.
        """
        n, c, h, w = feats.shape
        global_xy = self.global_coord(feats.mean(dim=(2, 3)))  # (N, 2)
        local_xy = self.local_coord(feats)  # (N, 2, h, w)
        if coord_noise > 0:
            local_xy = local_xy + torch.randn_like(local_xy) * coord_noise
        grid = self.global_grid.to(feats.dtype)
        glob = F.grid_sample(grid, global_xy.view(1, n, 1, 2).to(grid.dtype), align_corners=False)  # (1, C*h*w, N, 1)
        glob = glob.permute(2, 3, 0, 1).reshape(n, c, h, w)
        local = F.grid_sample(self.local_grid.to(feats.dtype).expand(n, -1, -1, -1),
                              local_xy.permute(0, 2, 3, 1).to(feats.dtype), align_corners=False)
        return torch.cat([glob, local], dim=1)


def blend(rec: torch.Tensor, feats: torch.Tensor, mse_weight: float, cos_weight: float,
          mse_coef: float) -> torch.Tensor:
    """CRAD's similarity blend rec' = s*f + (1-s)*rec, s = a*(1 - round(clamp(k*mse))) + b*cos, per pixel."""
    mse = (rec - feats).pow(2).mean(dim=1)
    near = 1 - torch.round((mse * mse_coef).clamp(0, 1))
    sim = (mse_weight * near + cos_weight * F.cosine_similarity(rec, feats, dim=1))[:, None]
    return sim * feats + (1 - sim) * rec


# --------------------------------------------------------------------------- the method
@dataclass
class CRADConfig(FeatureReconstructionConfig, TrainedConfig):
    image_size: int = 224
    batch_size: int = 64  # the reference's total: 4 GPUs x 16 (`--ddp` splits it between ranks)
    seed: int = 42  # the reference seeds nothing
    blocks: tuple[int, ...] = (9, 21)  # lukemelas block indices (a B4)
    strides: tuple[int, ...] = (8, 16)  # taps of any other backbone
    out_stride: int = 8  # MFCN: every tap resized to this stride
    local_resolution: int = 8  # side of the local query grid
    global_resolution: int = 4  # side of the global query grid
    layers: int = 11  # MobileNetV3 bottlenecks
    expansion: int = 864  # bottleneck expansion channels (CRAD-s: 216)
    mse_weight: float = 0.3  # blend: weight of the rounded-MSE term
    cos_weight: float = 0.7  # blend: weight of the cosine term
    mse_coef: float = 0.05  # blend: MSE scale before clamp and round
    coord_noise: float = 0.05  # std of the local-coordinate noise in training
    coord_noise_prob: float = 0.5  # chance per batch that the noise is added
    epochs: int = length(50)
    lr: float = 1e-3  # network
    grid_lr: float = 0.1  # query grids
    weight_decay: float = 0.01  # AdamW's default, both groups
    lr_step: int = not_length(40, "epochs between x lr_gamma decays")
    lr_gamma: float = 0.1
    clip_norm: float = 0.1  # max global gradient norm; 0 = no clipping
    score_pool: int = 32  # image score: max of the map averaged over score_pool x score_pool windows
    map_box: int = 21  # the reference's evaluation averages every map over 21 x 21 (zeros counted) first
    select: str = "last"  # last epoch, or "val": lowest loss on the validation split's good images

    def validate(self) -> None:
        super().validate()
        for key in ("local_resolution", "global_resolution", "expansion", "epochs", "lr_step"):
            if getattr(self, key) < 1:
                raise ThreecadError(f"config {key}={getattr(self, key)}: must be at least 1")
        if self.layers < 0:
            raise ThreecadError(f"config layers={self.layers}: must be >= 0")
        if self.map_box < 0 or (self.map_box and self.map_box % 2 == 0):
            raise ThreecadError(f"config map_box={self.map_box}: must be 0 or an odd number of pixels")
        if self.coord_noise < 0 or not 0 <= self.coord_noise_prob <= 1:
            raise ThreecadError(f"config coord_noise={self.coord_noise}, coord_noise_prob={self.coord_noise_prob}: "
                                "need coord_noise >= 0 and 0 <= coord_noise_prob <= 1")


class CRAD(FeatureReconstruction):
    name = "crad"
    description = "CRAD: continuous memory (learned query grids) rebuilds frozen EfficientNet features, unified"
    config_class = CRADConfig
    presets = {
        "paper": {},
        # Offline EfficientNet-Lite0 tapped at strides 8/16 (the B4 taps' strides), 256 px
        # (32x32 features), 3 bottlenecks of expansion 304 (2x the 152 channels), 60 epochs,
        # features cached (frozen backbone, no augmentation). 256 px because at 128 px the
        # stators' slots (about 9 px apart) blur into the feature grids and their scores drop
        # (see the README for the scores).
        "cpu": {"backbone": "efficientnet_lite0", "image_size": 256, "batch_size": 8, "layers": 3,
                "expansion": 304, "epochs": 60, "lr_step": 1000, "cache_features": True},
    }

    def reconstruction_network(self, channels: int, side: int) -> CRADReconstruction:
        cfg = self.config
        return CRADReconstruction(channels, side, side, cfg.local_resolution, cfg.global_resolution, cfg.layers,
                                  cfg.expansion)

    def rebuild(self, images: torch.Tensor, train: bool,
                feats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The blended reconstruction rec' (the paper's map and loss are on rec', not on rec)."""
        cfg = self.config
        feats = self.net.features(images) if feats is None else feats
        # the coin is drawn in evaluation too, as the reference does; it only matters in training
        noisy = float(torch.rand(())) < cfg.coord_noise_prob
        with self.autocast():
            rec = self.net.reconstruction(feats, cfg.coord_noise if train and noisy else 0.0)
        feats = feats.float()
        return feats, blend(rec.float(), feats, cfg.mse_weight, cfg.cos_weight, cfg.mse_coef)

    def optimizer(self) -> torch.optim.AdamW:
        """The reference's two AdamW groups (network at lr, query grids at grid_lr), gradients clipped."""
        cfg = self.config
        rec = self.net.reconstruction
        grid_ids = {id(p) for p in rec.grids()}
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in rec.parameters() if id(p) not in grid_ids], "lr": cfg.lr},
             {"params": rec.grids(), "lr": cfg.grid_lr}], weight_decay=cfg.weight_decay)
        clip_gradients(optimizer, cfg.clip_norm)
        return optimizer

    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        cfg = self.config
        optimizer = self.optimizer()
        return TrainingSetup(self.net.reconstruction, optimizer, delayed_step_lr(optimizer, cfg.lr_step, cfg.lr_gamma),
                             cfg.epochs)

    def postprocess(self) -> PostProcess:
        cfg = self.config
        return PostProcess(box=cfg.map_box, sigma=0.0, score="mean_pool_max", pool=cfg.score_pool, pool_pad=0)

    def parts(self) -> dict[str, nn.Module]:
        rec = self.net.reconstruction
        return {**super().parts(),
                "reconstruction: query grids": nn.ParameterDict({"local": rec.local_grid, "global": rec.global_grid}),
                "reconstruction: coordinate heads": nn.ModuleList([rec.global_coord, rec.local_coord]),
                "reconstruction: bottlenecks": rec.layers,
                "reconstruction: recover": rec.recover}

    def card_details(self) -> dict[str, Any]:
        rec = self.net.reconstruction
        details = super().card_details()
        notes = [f"reconstruction total {sum(p.numel() for p in rec.parameters()):,} parameters; the global grid "
                 "holds a whole feature map per cell, so it grows with the image size",
                 "the query grids train at lr grid_lr (a second AdamW group)", *details.pop("notes")]
        return {**details, "grids": {"local": list(rec.local_grid.shape), "global": list(rec.global_grid.shape)},
                "notes": notes}
