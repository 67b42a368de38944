"""RealNet (Zhang et al., CVPR 2024): reconstruct selected features, segment the residuals.

Why it works: a frozen ImageNet backbone's features of an image with a synthetic anomaly are
mapped by one reconstruction UNet per feature level back to the features of the clean image;
where the input is anomalous the squared residual stays large. Anomaly-aware feature
selection (AFS) first keeps, per level, the channels whose squared feature change under
synthetic anomalies best matches the anomaly mask, so the UNets only model channels that
carry the signal. Reconstruction-residual selection (RRS) then keeps, per sample, the
residual channels with the largest max and the largest mean (after a non-affine BatchNorm),
and a small decoder turns them into 2-class logits at input size.

Preset `paper` is the reference's MVTec setting (cnulab/RealNet `experiments/MVTec-AD/
realnet.yaml`): 256 px, ImageNet normalisation, WideResNet-50 layer1..4 (frozen, the
reference's weights: below), AFS keeps 256/512/512/256 channels (64 batches of 100% synthetic
anomalies before training), each UNet with model_channels = 0.5 x its input channels,
channel_mult (1, 2, 4), 2 res blocks, attention at downsampling 2 and 4 (64-channel heads),
GroupNorm(32) + SiLU, ConvTranspose upsampling, no time embedding; RRS 256 (max) + 256
(mean); batch 16, Adam lr 1e-4 betas (0.9, 0.999), 1000 epochs, no schedule; loss =
CE(logits, mask) + sum over levels of MSE(reconstruction of the anomalous features, clean
features); each sample anomalous with probability 0.5 (the others stay clean with an empty
mask, done here around the synthesizer).

Backbone weights (`weights`): the reference builds its backbone with timm 0.5.4's
`create_model("wide_resnet50_2", pretrained=True)`, which loads timm's retrained
`wide_resnet50_racm-8234f177.pth`, not torchvision's file. `weights=timm_racm` (the paper
preset) loads that file (`threecad.timm_weights`: torch hub's checkpoint folder, else the
Hugging Face Hub); `imagenet` is torchvision's file, `PATH` a local state dict. The file's
sha256 is in `info()["backbone_weights"]`.

Memory (estimate, not measured): the paper network has 524 M trainable parameters: about
2.1 GB of fp32 weights, 2.1 GB of gradients and 4.2 GB of Adam state, plus activations at
batch 16 (the UNets' attention at 32x32 and 16x16 tokens dominate; several GB to tens of GB).
Plan for a 40 GB+ accelerator; the reference says its larger "architecture C" needs 32 GB.

Anomaly source (`anomaly_source` in `info()`). The reference's default is SDAS: images sampled
from a diffusion model (553 M parameters) fine-tuned on the dataset, made by its `sample.py`
into one folder per class (`data/MVTec-AD/sdas/<class>/*.jpg`); SDAS itself is not part of
this method. Sources here:
- default: DRAEM-style Perlin masks (2^0..2^5 cells, threshold 0.5) with DTD textures through
  the shared synthesizer (`threecad.anomaly_synthesis`); preset `paper` draws them as DRAEM's
  loader does (`draw="draem"`: no lattice phase, empty masks kept, three of DRAEM's ten
  texture augmentations in their drawn order), preset `cpu` with the torch draw
  (`draw="augmented"`); texture opacity U(0.2, 1.0) (beta_max 0.8) as the reference's DTD
  variant. DTD from `dtd_root`, else `threecad download --dataset dtd`'s folder, else one
  warning and procedural textures (`texture_source: procedural`).
- `anomaly_images=DIR`: the reference's SDAS source. DIR holds one category's SDAS samples
  (`*.png`, `*.jpg`, `*.jpeg`; the contents of the reference's `sdas/<class>/`), so a run that
  uses it trains that one category (`--category`). An anomalous sample gets the reference's
  Perlin mask (`anomaly_synthesis.draem_masks`) and a random image of DIR, read and resized as the reference
  reads it (OpenCV, bilinear), blended inside the mask with opacity U(0.5, 1.0) (its
  `sdas_transparency_range`), no augmentation.

`predict` returns the raw map (softmax channel 1 at input size); the declared post-processing
adds no smoothing and scores an image by the max of the map averaged over 16 x 16 windows
(stride 1, no padding).

Model selection: the last epoch (or `select=val`, the validation split's synthetic-anomaly
loss). The reference validates on the TEST set every 5 epochs and keeps the best mean of
image and pixel AUROC; this never looks at the test set.

Departures: no per-class foreground masks (the reference multiplies Perlin masks by an Otsu /
triangle-threshold foreground for some MVTec classes; 3CAD has no such table): full image;
no DDP/SyncBN (single process); the cpu preset's draw redraws empty Perlin masks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from threecad.anomaly_synthesis import SynthesisConfig, draem_masks
from threecad.errors import ThreecadError
from threecad.postprocess import PostProcess
from threecad.preprocess import opencv
from threecad.timm_weights import TIMM_WEIGHTS, backbone_weights
from threecad.trained import TrainedConfig, TrainedMethod, TrainingSetup, epochs_for, length, seeded_weights

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reconstruction UNet
class _GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as guided-diffusion's), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class _ResBlock(nn.Module):
    """norm -> SiLU -> conv3x3 plus a skip (1x1 conv when widths differ); `up` puts a stride-2
    ConvTranspose on both paths before the conv, `down` a 2x2 average pool. One conv only:
    the reference's block has no second conv and no time embedding."""

    def __init__(self, channels: int, out_channels: int | None = None, groups: int = 32,
                 up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.norm = _GroupNorm32(groups, channels)
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        if up:
            self.h_resample: nn.Module = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
            self.x_resample: nn.Module = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        elif down:
            self.h_resample = nn.AvgPool2d(2)
            self.x_resample = nn.AvgPool2d(2)
        else:
            self.h_resample = self.x_resample = nn.Identity()
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.h_resample(F.silu(self.norm(x))))
        return self.skip(self.x_resample(x)) + h


class _Attention(nn.Module):
    """Spatial self-attention over all positions, heads of `head_channels`, zero-initialised output."""

    def __init__(self, channels: int, head_channels: int, groups: int = 32):
        super().__init__()
        self.heads = channels // head_channels
        self.norm = _GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        qkv = self.qkv(self.norm(flat)).reshape(b * self.heads, 3 * c // self.heads, h * w)
        q, k, v = qkv.chunk(3, dim=1)
        # (B*heads, T, ch) layout for scaled_dot_product_attention; same result as the reference
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = self.proj(out.transpose(1, 2).reshape(b, c, h * w))
        return (flat + out).reshape(b, c, h, w)


class ReconUNet(nn.Module):
    """The reference's diffusion-style UNet without time embedding, channels in = channels out."""

    def __init__(self, channels: int, model_channels: int, channel_mult: tuple[int, ...] = (1, 2, 4),
                 num_res_blocks: int = 2, attention_ds: tuple[int, ...] = (2, 4), head_channels: int = 64,
                 groups: int = 32):
        super().__init__()
        ch = model_channels * channel_mult[0]
        first = ch
        self.inputs = nn.ModuleList([nn.Conv2d(channels, ch, 3, padding=1)])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [_ResBlock(ch, model_channels * mult, groups)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(_Attention(ch, head_channels, groups))
                self.inputs.append(nn.Sequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.inputs.append(_ResBlock(ch, ch, groups, down=True))
                skips.append(ch)
                ds *= 2
        self.middle = nn.Sequential(_ResBlock(ch, ch, groups), _Attention(ch, head_channels, groups),
                                    _ResBlock(ch, ch, groups))
        self.outputs = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [_ResBlock(ch + skips.pop(), model_channels * mult, groups)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(_Attention(ch, head_channels, groups))
                if level and i == num_res_blocks:
                    layers.append(_ResBlock(ch, ch, groups, up=True))
                    ds //= 2
                self.outputs.append(nn.Sequential(*layers))
        self.out = nn.Sequential(_GroupNorm32(groups, ch), nn.SiLU(), nn.Conv2d(first, channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)  # the reference's zero_module: the first output is 0
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = []
        for module in self.inputs:
            x = module(x)
            hs.append(x)
        x = self.middle(x)
        for module in self.outputs:
            x = module(torch.cat((x, hs.pop()), dim=1))
        return self.out(x)


# --------------------------------------------------------------------------- AFS and RRS
class AFS(nn.Module):
    """The kept channel indices per level (non-trainable int64 parameters, as the reference)."""

    def __init__(self, in_channels: tuple[int, ...], keep: tuple[int, ...]):
        super().__init__()
        self.indexes = nn.ParameterList(
            nn.Parameter(torch.arange(k, dtype=torch.long), requires_grad=False) for k in keep)
        self.in_channels = in_channels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [f.index_select(1, idx) for f, idx in zip(feats, self.indexes)]

    @torch.no_grad()
    def accumulate(self, anomalous: list[torch.Tensor], clean: list[torch.Tensor], masks: torch.Tensor,
                   sums: list[torch.Tensor]) -> None:
        """Add, per level and channel, the MSE between the min-max normalised squared feature
        change (over batch and positions) and the mask at that level's size."""
        for level, (fa, fc) in enumerate(zip(anomalous, clean)):
            n, c, h, w = fa.shape
            change = ((fa.float() - fc.float()) ** 2).permute(1, 0, 2, 3).reshape(c, -1)
            lo, hi = change.amin(dim=1, keepdim=True), change.amax(dim=1, keepdim=True)
            change = (change - lo) / (hi - lo + 1e-4)
            target = F.interpolate(masks.float(), (h, w), mode="nearest").permute(1, 0, 2, 3).reshape(1, -1)
            sums[level] += ((change - target) ** 2).mean(dim=1)

    @torch.no_grad()
    def select(self, sums: list[torch.Tensor]) -> None:
        """Keep the k channels of lowest summed MSE per level (indices sorted ascending)."""
        for idx, total in zip(self.indexes, sums):
            total = total.clone()
            bad = torch.isnan(total)
            if bad.any():
                total[bad] = total[~bad].max() if (~bad).any() else 0.0
            kept = torch.topk(total, k=idx.numel(), largest=False).indices.sort().values
            idx.data.copy_(kept.to(idx.device))


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class RRS(nn.Module):
    """Residuals upsampled to the finest level, per-sample top channels by max and by mean (ranked
    after a non-affine BatchNorm, gathered from the raw residuals), then three small decoders."""

    def __init__(self, total_channels: int, top_max: int, top_mean: int, residual_layers: int = 2):
        super().__init__()
        self.top = (top_max, top_mean)
        chosen = top_max + top_mean
        self.bn_idx = nn.BatchNorm2d(total_channels, momentum=0.9, affine=False)
        stack: list[nn.Module] = [_Residual(chosen) for _ in range(residual_layers)]
        self.decoder1 = nn.Sequential(*stack, nn.ReLU(), nn.Conv2d(chosen, 128, 3, padding=1),
                                      nn.BatchNorm2d(128), nn.ReLU())
        self.decoder2 = nn.Sequential(nn.Conv2d(128, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.decoder3 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))

    def forward(self, residuals: list[torch.Tensor], out_size: int) -> torch.Tensor:
        side = residuals[0].shape[-1]
        res = torch.cat([r if r.shape[-1] == side else
                         F.interpolate(r, (side, side), mode="bilinear", align_corners=True) for r in residuals], 1)
        ranked = self.bn_idx(res)
        n, c, h, w = res.shape
        chosen = []
        with torch.no_grad():
            stats = (ranked.flatten(2).amax(dim=2), ranked.flatten(2).mean(dim=2))
            idxs = [torch.topk(s, k=k, dim=1).indices for s, k in zip(stats, self.top) if k > 0]
        for idx in idxs:
            chosen.append(torch.gather(res, 1, idx[:, :, None, None].expand(-1, -1, h, w)))
        x = self.decoder2(self.decoder1(torch.cat(chosen, dim=1)))
        x = F.interpolate(x, (2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=True)
        x = self.decoder3(x)
        return F.interpolate(x, (out_size, out_size), mode="bilinear", align_corners=True)


class RealNetModel(nn.Module):
    """What training optimises and the checkpoint stores: AFS indices, the UNets and RRS."""

    def __init__(self, in_channels: tuple[int, ...], cfg: "RealNetConfig"):
        super().__init__()
        self.afs = AFS(in_channels, cfg.afs_keep)
        self.recon = nn.ModuleDict({
            f"block{i + 1}_recon": ReconUNet(k, int(cfg.hide_ratio * k), cfg.channel_mult, cfg.num_res_blocks,
                                             cfg.attention_ds, cfg.head_channels, cfg.norm_groups)
            for i, k in enumerate(cfg.afs_keep)})
        self.rrs = RRS(sum(cfg.afs_keep), cfg.rrs_top[0], cfg.rrs_top[1], cfg.rrs_residual_layers)

    def forward(self, feats: list[torch.Tensor], out_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """backbone features of the (anomalous) input -> (reconstructions of the AFS-selected
        features, 2-class logits at out_size)."""
        selected = self.afs(feats)
        recons = [unet(f) for unet, f in zip(self.recon.values(), selected)]
        residuals = [(f - r) ** 2 for f, r in zip(selected, recons)]
        return recons, self.rrs(residuals, out_size)


# --------------------------------------------------------------------------- SDAS samples (anomaly_images)
SDAS_OPACITY = (0.5, 1.0)  # the reference's sdas_transparency_range
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def scan_anomaly_images(folder: str) -> list[Path]:
    """The images of an anomaly_images folder (directly inside it), or a one-line error."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ThreecadError(f"config anomaly_images={folder}: not a directory")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ThreecadError(f"config anomaly_images={folder}: no {'/'.join(IMAGE_SUFFIXES)} images directly in "
                            "it (one category's SDAS samples, as the reference's sdas/<class>/ folder)")
    return images


def read_sdas_image(path: Path, size: int) -> torch.Tensor:
    """(3,size,size) RGB in [0,1], read and resized as the reference's `_sdas_source` (OpenCV)."""
    cv2 = opencv()
    image = cv2.imread(str(path))
    if image is None:
        raise ThreecadError(f"config anomaly_images: cannot read {path} as an image")
    image = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (size, size))
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


class SdasAnomalies:
    """Anomalous training inputs from a folder of SDAS samples, as the reference draws them:
    a Perlin mask, a random sample, opacity U(0.5, 1.0) inside the mask."""

    texture_source = "anomaly_images"

    def __init__(self, paths: list[Path], seed: int, max_scale: int = 5):
        self.paths = paths
        self.max_scale = max_scale
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, size, _ = images.shape
        x = images.float()
        masks = draem_masks(n, size, self.generator, x.device, max_scale=self.max_scale)
        picks = torch.randint(len(self.paths), (n,), generator=self.generator).tolist()
        src = torch.stack([read_sdas_image(self.paths[k], size) for k in picks]).to(x.device)
        lo, hi = SDAS_OPACITY
        opacity = (torch.rand(n, 1, 1, 1, generator=self.generator) * (hi - lo) + lo).to(x.device)
        out = x * (1 - masks) + (opacity * src + (1 - opacity) * x) * masks
        return out.clamp(0, 1).to(images.dtype), masks.to(images.dtype)


# --------------------------------------------------------------------------- the method
@dataclass
class RealNetConfig(SynthesisConfig, TrainedConfig):
    image_size: int = 256  # inputs resized to a square; a multiple of the deepest tap's stride
    batch_size: int = 16
    seed: int = 42
    backbone: str = "wide_resnet50_2"  # frozen ImageNet backbone (threecad.backbones.BACKBONES)
    # backbone weights: timm_racm (the reference's, threecad.timm_weights) | imagenet (torchvision's) | none | PATH
    weights: str = "timm_racm"
    draw: str = "draem"  # anomalies drawn as DRAEM's loader, which the reference's DTD source uses; cpu: "augmented"
    strides: tuple[int, ...] = (4, 8, 16, 32)  # feature taps (layer1..layer4 of a ResNet)
    afs_keep: tuple[int, ...] = (256, 512, 512, 256)  # channels AFS keeps per tap
    afs_batches: int = length(64)  # batches of 100% synthetic anomalies used to choose the channels
    hide_ratio: float = 0.5  # UNet model_channels = hide_ratio x its input channels
    channel_mult: tuple[int, ...] = (1, 2, 4)  # UNet width multipliers per level
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (2, 4)  # downsampling factors with self-attention
    head_channels: int = 64  # channels per attention head
    norm_groups: int = 32  # GroupNorm groups
    rrs_top: tuple[int, ...] = (256, 256)  # RRS: channels kept by spatial max, by spatial mean
    rrs_residual_layers: int = 2
    epochs: int = length(1000)
    steps: int = length(0)  # > 0: train for about this many optimiser steps (epochs = ceil(steps / batches an epoch))
    lr: float = 1e-4  # Adam, no schedule
    betas: tuple[float, ...] = (0.9, 0.999)
    anomaly_prob: float = 0.5  # probability that a training sample gets an anomaly
    anomaly_images: str | None = None  # folder of one category's SDAS samples, the anomaly source instead of DTD
    pool: int = 16  # image score: max of the map averaged over pool x pool windows (no padding)
    select: str = "last"  # "last" (never the test set) or "val"

    def validate(self) -> None:
        from threecad.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise ThreecadError(f"config backbone={self.backbone}: unknown; known: {', '.join(BACKBONES)}")
        if self.weights in TIMM_WEIGHTS and TIMM_WEIGHTS[self.weights].backbone != self.backbone:
            raise ThreecadError(f"config weights={self.weights}: that file is a {TIMM_WEIGHTS[self.weights].backbone}, "
                                f"not a {self.backbone} (use weights=imagenet, none or PATH)")
        if not self.strides or len(self.afs_keep) != len(self.strides):
            raise ThreecadError(f"config afs_keep={self.afs_keep}: needs one entry per stride {self.strides}")
        if self.image_size % (max(self.strides) * 2 ** (len(self.channel_mult) - 1)):
            raise ThreecadError(f"config image_size={self.image_size}: must be a multiple of "
                                f"{max(self.strides) * 2 ** (len(self.channel_mult) - 1)} (deepest stride "
                                f"x the UNet's downsampling)")
        for key in ("afs_batches", "num_res_blocks", "head_channels", "norm_groups", "epochs", "pool"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ThreecadError(f"config {key}={value}: must be a positive integer")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ThreecadError(f"config steps={self.steps}: must be an integer >= 0 (0: use epochs)")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ThreecadError(f"config channel_mult={self.channel_mult}: must be positive integers")
        if not 0 < self.hide_ratio <= 4:
            raise ThreecadError(f"config hide_ratio={self.hide_ratio}: must be in (0, 4]")
        for k in self.afs_keep:
            mc = int(self.hide_ratio * k)
            if k < 1 or mc < 1 or mc % self.norm_groups:
                raise ThreecadError(f"config afs_keep={self.afs_keep}: hide_ratio x {k} = {mc} must be a "
                                    f"positive multiple of norm_groups {self.norm_groups}")
            attn = [mc * m for i, m in enumerate(self.channel_mult) if 2 ** i in self.attention_ds]
            attn.append(mc * self.channel_mult[-1])  # the middle block always attends
            if any(c % self.head_channels for c in attn):
                raise ThreecadError(f"config head_channels={self.head_channels}: must divide the attended "
                                    f"widths {sorted(set(attn))}")
        if len(self.rrs_top) != 2 or min(self.rrs_top) < 0 or sum(self.rrs_top) < 1 \
                or max(self.rrs_top) > sum(self.afs_keep):
            raise ThreecadError(f"config rrs_top={self.rrs_top}: two counts (max, mean), each at most "
                                f"sum(afs_keep) = {sum(self.afs_keep)}")
        if self.lr <= 0:
            raise ThreecadError(f"config lr={self.lr}: must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ThreecadError(f"config betas={self.betas}: two numbers in [0, 1)")
        if not 0.0 <= self.anomaly_prob <= 1.0:
            raise ThreecadError(f"config anomaly_prob={self.anomaly_prob}: must be in [0, 1]")
        if self.pool > self.image_size:
            raise ThreecadError(f"config pool={self.pool}: larger than image_size {self.image_size}")
        if self.anomaly_images is not None:
            scan_anomaly_images(self.anomaly_images)


class RealNet(TrainedMethod):
    name = "realnet"
    description = "RealNet (CVPR 2024): feature reconstruction on selected channels + residual selection"
    config_class = RealNetConfig
    presets = {
        "paper": {},
        # offline EfficientNet-Lite0 taps at strides 4/8/16 (24/40/112 channels), AFS keeps 16/32/64,
        # one-level UNets (model_channels 8/16/32, attention only in the middle block), 128 px, 8-channel
        # GroupNorm groups, RRS 32 + 32, about 300 steps whatever the category's size, procedural textures,
        # lr 3e-3 (30x the reference's): the feature reconstruction starts from a zero output and its MSE
        # was still falling fast when 300 steps at 1e-3 ended, and lr 1e-3 scored lower on the synthetic
        # ACC and AI (the README's Methods table gives what this preset reaches).
        "cpu": {"image_size": 128, "batch_size": 8, "backbone": "efficientnet_lite0", "strides": (4, 8, 16),
                "afs_keep": (16, 32, 64), "afs_batches": 4, "channel_mult": (1,), "num_res_blocks": 1,
                "attention_ds": (), "head_channels": 8, "norm_groups": 8, "rrs_top": (32, 32), "steps": 300,
                "lr": 3e-3, "textures": "procedural", "pool": 8, "weights": "imagenet", "draw": "augmented"},
    }

    def __init__(self, config: RealNetConfig, device: str | torch.device = "cpu", amp: bool = False):
        from threecad.backbones import FeatureExtractor

        super().__init__(config, device, amp)
        weights, self.backbone_weights = backbone_weights(config.weights, meta=self.device.type == "meta")
        # a fixed seed: a random-weight backbone (weights=none) is the same in every instance,
        # so a saved state (which holds no backbone) predicts the same after loading
        with seeded_weights(0):
            self.backbone = FeatureExtractor(config.backbone, config.strides, weights).to(self.device)
        with seeded_weights(config.seed):
            self.net = RealNetModel(self.backbone.channels, config).to(self.device)
        for k, c in zip(config.afs_keep, self.backbone.channels):
            if k > c:
                raise ThreecadError(f"config afs_keep={config.afs_keep}: {k} > the {c} channels of that tap")
        self.texture_source: str | None = None

    # ------------------------------------------------------------------ anomalies
    def _anomaly_source(self, seed: int):
        cfg = self.config
        if cfg.anomaly_images is not None:
            return SdasAnomalies(scan_anomaly_images(cfg.anomaly_images), seed, cfg.perlin_max_scale)
        return cfg.synthesizer(seed, cfg.dtd_folder(self.name))

    def training_pair(self, images: torch.Tensor, source, generator: torch.Generator, prob: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Good images -> (inputs, masks): each anomalous with probability `prob` (default
        anomaly_prob), the others the image itself with an empty mask."""
        prob = self.config.anomaly_prob if prob is None else prob
        n = images.shape[0]
        anomalous = torch.rand(n, generator=generator) < prob
        inputs = images.float().clone()
        masks = torch.zeros(n, 1, *images.shape[-2:], device=images.device)
        if anomalous.any():
            idx = anomalous.nonzero()[:, 0].to(images.device)
            inputs[idx], masks[idx] = source(images[idx].float())
        return inputs, masks

    # ------------------------------------------------------------------ training
    def losses(self, clean: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """CE of the 2-class logits against the mask plus the summed per-level feature MSE."""
        with torch.no_grad():
            target = self.net.afs(self.backbone(clean))
            feats = self.backbone(inputs)
        with self.autocast():
            recons, logits = self.net(feats, inputs.shape[-1])
        out = {"ce": F.cross_entropy(logits.float(), masks[:, 0].long()),
               "mse": torch.stack([F.mse_loss(r.float(), t.float()) for r, t in zip(recons, target)]).sum()}
        out["loss"] = out["ce"] + out["mse"]
        return out

    @torch.no_grad()
    def select_features(self, loader: Iterable[dict], source) -> None:
        """AFS: `afs_batches` batches (cycling the loader) of 100% anomalies choose the kept channels."""
        sums = [torch.zeros(c, device=self.device) for c in self.backbone.channels]
        done = 0
        while done < self.config.afs_batches:
            seen = False
            for batch in loader:
                seen = True
                images = batch["image"].to(self.device).float()
                anomalous, masks = source(images)
                self.net.afs.accumulate(self.backbone(anomalous), self.backbone(images), masks, sums)
                done += 1
                if done >= self.config.afs_batches:
                    break
            if not seen:
                raise ThreecadError("the training loader is empty: no good training images")
        self.net.afs.select(sums)

    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        cfg = self.config
        self._source = self._anomaly_source(cfg.seed)
        self.texture_source = self._source.texture_source
        log.info("realnet: anomaly source: %s", self.texture_source)
        self.select_features(train_loader, self._source)
        self._coins = torch.Generator().manual_seed(cfg.seed + 2)
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=cfg.lr, betas=tuple(cfg.betas))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # no schedule
        self._val_source = self._anomaly_source(cfg.seed + 1) if cfg.select == "val" else None
        self._val_coins = torch.Generator()
        return TrainingSetup(self.net, optimizer, scheduler, epochs_for(train_loader, cfg.epochs, cfg.steps),
                             generators={"synthesizer": self._source.generator, "coins": self._coins})

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"].float()
        return self.losses(images, *self.training_pair(images, self._source, self._coins))

    def start_validation(self) -> None:
        self._val_source.generator.manual_seed(self.config.seed + 1)  # the same anomalies at every epoch
        self._val_coins.manual_seed(self.config.seed + 3)

    def validation_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        images = batch["image"].float()
        return self.losses(images, *self.training_pair(images, self._val_source, self._val_coins))["loss"], len(images)

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        self.net.eval()
        feats = self.backbone(images.float())
        with self.autocast():
            _, logits = self.net(feats, images.shape[-1])
        return None, torch.softmax(logits.float(), dim=1)[:, 1]

    def postprocess(self) -> PostProcess:
        return PostProcess(sigma=0.0, mode="reflect", score="mean_pool_max", pool=self.config.pool, pool_pad=0)

    # ------------------------------------------------------------------ model card
    def parts(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"backbone": self.backbone, "afs": self.net.afs, "recon": self.net.recon}
        out.update({f"recon.{name}": m for name, m in self.net.recon.items()})
        out["rrs"] = self.net.rrs
        out.update({f"rrs.{name}": getattr(self.net.rrs, name) for name in ("decoder1", "decoder2", "decoder3")})
        return out

    def pretrained(self) -> list[tuple[str, str]]:
        """A timm name stands for its file: on disk when it is, else where it is first looked for."""
        from threecad.timm_weights import local_timm_file

        name = self.config.weights
        if name not in TIMM_WEIGHTS:
            return super().pretrained()
        return [(self.config.backbone, str(local_timm_file(name) or TIMM_WEIGHTS[name].cached_file()))]

    def card_details(self) -> dict[str, Any]:
        cfg = self.config
        size = cfg.image_size
        return {
            "taps": self.backbone.describe_taps(size),
            "shapes": {"blocks": [[k, size // s, size // s] for k, s in zip(cfg.afs_keep, cfg.strides)],
                       "rrs_input": [sum(cfg.rrs_top), size // min(cfg.strides), size // min(cfg.strides)],
                       "output": [2, size, size]},
            "notes": [
                "recon.* and rrs.* rows are sub-parts of recon and rrs (do not add them to the total)",
                "afs: kept channel indices, int64 non-trainable parameters (as the reference)",
                "map: softmax channel 1 at input size, no smoothing; image score: max of the map averaged "
                f"over {cfg.pool}x{cfg.pool} windows (stride 1, no padding)",
                self._weights_note(),
                "SDAS (the reference's diffusion anomaly synthesis, 553 M parameters) is not part of this "
                "method: its samples come in through anomaly_images=DIR"],
            "anomalies": {"source": self._source_note(), "textures": cfg.textures,
                          "anomaly_images": cfg.anomaly_images, "anomaly_prob": cfg.anomaly_prob},
        }

    def _weights_note(self) -> str:
        from threecad.backbones import random_weights

        weights = self.config.weights
        if weights in TIMM_WEIGHTS:
            spec = TIMM_WEIGHTS[weights]
            return (f"backbone weights: {spec.file}, what {spec.reference} loads, as the reference; from torch "
                    f"hub's checkpoint folder, else the Hugging Face Hub ({spec.hub_repo}; never under "
                    "THREECAD_OFFLINE=1); its sha256 is recorded in the run's method info (backbone_weights)")
        reference = "not the reference's (weights=timm_racm: timm's retrained WideResNet-50)"
        if weights.lower() == "imagenet":
            return f"backbone weights: threecad's ImageNet file for {self.config.backbone}, {reference}"
        if random_weights(weights):
            return f"backbone weights: random (weights={weights}), {reference}"
        return f"backbone weights: the local file {weights} (its sha256 in the run's method info)"

    def _source_note(self) -> str:
        cfg = self.config
        if cfg.anomaly_images is not None:
            return (f"the reference's SDAS source: samples from {cfg.anomaly_images} blended into Perlin masks with "
                    f"opacity U({SDAS_OPACITY[0]:g}, {SDAS_OPACITY[1]:g}), no augmentation")
        drawn = f"Perlin masks with {{}} textures, opacity U({1 - cfg.beta_max:g}, 1)"
        if cfg.textures == "dtd":
            return (drawn.format("DTD (procedural when DTD is absent)") + ": the reference's DTD variant; its "
                    "default is SDAS (feed its samples with anomaly_images=DIR)")
        return drawn.format("procedural") + ": neither of the reference's sources (SDAS by default, DTD as a variant)"

    # ------------------------------------------------------------------ persistence
    checkpoint_facts = ("texture_source",)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"anomaly_source": self.texture_source,
                               "texture_source": self.texture_source,
                               "anomaly_images": self.config.anomaly_images,
                               "backbone_weights": self.backbone_weights,
                               "afs_channels": {f"block{i + 1}": idx.numel()
                                                for i, idx in enumerate(self.net.afs.indexes)}}
        if self.loop is not None:
            out.update(epochs=self.loop.epochs, **self.training_facts())
        return out
