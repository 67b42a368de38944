"""FastFlow (Yu et al., 2021): 2-D normalizing flows on the frozen features of a pretrained CNN.

Each tapped feature map goes through a trainable LayerNorm over (C, H, W) and then through
its own flow of `flow_steps` coupling blocks that keep the spatial layout (convolutional
subnets), trained to map good features to a standard normal: the loss is, summed over the
scales, the batch mean of 0.5 * sum(z^2) - log|det J|. A pixel is anomalous where its z is
unlikely: per scale the map is -exp(-0.5 * mean_c z^2), bilinearly upsampled to the input
and averaged over the scales.

There is no official code. Preset `paper` is gathierry/FastFlow's `resnet18.yaml` (the
implementation most results cite; anomalib's agrees on the maths): torchvision ResNet-18
layers 1-3 with ImageNet weights, 256 px, 8 steps, hidden ratio 1.0, 3x3-only subnets,
Adam lr 1e-3 weight decay 1e-5, batch 32 with drop_last, 500 epochs, no augmentation.
`--set backbone=wide_resnet50_2` gives `wide_resnet50_2.yaml` (3x3 and 1x1 subnets
alternating): `conv3x3_only` left at None follows the backbone as those two configs do.

Encoder weights: torchvision's `resnet18-f37072fd.pth`; gathierry's timm 0.5.4 loads
`resnet18-5c106cde.pth` for `resnet18`. Whether the two files hold the same tensors is not yet
checked (the model card says so); `weights=PATH` loads the reference's file. For
`wide_resnet50_2` that timm loads its own retrained `wide_resnet50_racm-8234f177.pth`, not
torchvision's file that `weights=imagenet` gives.

The coupling block is FrEIA's AllInOneBlock as gathierry pins it (FrEIA commit 1779d1f,
also FrEIA 0.2 on PyPI), written out here so that no unmaintained dependency is needed:
affine coupling whose subnet output is scaled by 0.1, log-scale soft-clamped as
`clamp * tanh(s)` (not FrEIA's later `clamp * tanh(s / clamp)`), then a global affine
(ActNorm-like, softplus-activated scale initialised to 1) and a fixed random channel
permutation. FrEIA stores that permutation and its inverse as C x C matrices held in
parameters with requires_grad=False; they are kept so here (the model card's frozen flow
count equals the reference's), but applied as an exact index gather instead of FrEIA's
1x1 convolution, which TF32 or AMP would round.

Departures, and why:
- image score: the max of the map (anomalib's rule). gathierry computes no image score,
  only pixel AUROC.
- model selection: the last epoch (or `select=val`, the lowest loss on the validation
  split's good images). gathierry's README reports the best of the epochs evaluated on the
  test set, and anomalib's example stops early on test pixel AUROC: both select on the test set.
- the flows (LayerNorm included) run in float32 even with AMP: the log-determinant sums
  hundreds of thousands of terms, which float16 would overflow. Neither reference uses AMP.
- the random permutations come from a generator seeded with `seed` (FrEIA draws from
  NumPy's unseeded global state), so a run repeats.
- no smoothing (the references have none); maps leave `predict` raw.
- preset `cpu` only: EfficientNet-Lite0 (offline weights) at 256 px tapped at strides 16 and
  32 instead of the reference's 4/8/16 (with a few dozen training images the shallow taps'
  flows missed the stators' defects, as the README's Methods section shows), 4 steps per
  scale, 20 epochs of batch 4, and the encoder maps of the training images cached after their
  first pass (`cache_features`; exact: the encoder is frozen and nothing is augmented).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threecad.backbones import BACKBONES, FeatureExtractor
from threecad.errors import ThreecadError
from threecad.feature_cache import DEFAULT_BUDGET_MB, FeatureCache
from threecad.postprocess import PostProcess
from threecad.trained import TrainedConfig, TrainedMethod, TrainingSetup, length, not_length, seeded_weights
from threecad.training import multistep_scheduler

log = logging.getLogger(__name__)

# what gathierry's timm 0.5.4 loads for each backbone of its CNN configs
REFERENCE_ENCODER_FILES = {"resnet18": "resnet18-5c106cde.pth", "wide_resnet50_2": "wide_resnet50_racm-8234f177.pth"}

COUPLING_SCALE = 0.1  # FrEIA multiplies the whole subnet output by 0.1 "for stability"
# FrEIA's SOFTPLUS global affine: scale = 0.1 * softplus_{beta=0.5}(a), a initialised so that scale = 1.
GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(0.5 * 10.0 * 1.0) - 1.0)


# --------------------------------------------------------------------------- the flow
class AllInOneBlock(nn.Module):
    """One invertible step on (N, C, H, W): affine coupling, global affine, fixed permutation.

    Forward: split x into x1 (the first C - C//2 channels) and x2; a = 0.1 * subnet(x1);
    s = clamp * tanh(a[:C//2]); x2 <- x2 * exp(s) + a[C//2:]; then y = P(g * [x1, x2] + b)
    with g = 0.1 * softplus_{beta=0.5}(global_scale) per channel and P the permutation.
    log|det J| = sum(s) + H * W * sum(log g), per sample.
    """

    def __init__(self, channels: int, kernel_size: int, hidden_ratio: float, clamp: float,
                 generator: torch.Generator):
        super().__init__()
        if channels < 2:
            raise ThreecadError(f"a coupling block needs at least 2 channels, got {channels}")
        self.channels, self.clamp = channels, float(clamp)
        self.split = (channels - channels // 2, channels // 2)
        hidden = int(self.split[0] * hidden_ratio)
        if hidden < 1:
            raise ThreecadError(f"config hidden_ratio={hidden_ratio}: leaves no hidden channel for "
                                f"{self.split[0]} input channels")
        pad = kernel_size // 2  # "same" padding for the odd kernels used (1 and 3)
        self.subnet = nn.Sequential(
            nn.Conv2d(self.split[0], hidden, kernel_size, padding=pad), nn.ReLU(),
            nn.Conv2d(hidden, 2 * self.split[1], kernel_size, padding=pad))
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        perm = torch.randperm(channels, generator=generator, device="cpu")
        w = torch.zeros(channels, channels, 1, 1)
        if w.device.type != "meta":  # row i selects input channel perm[i]
            w[torch.arange(channels, device=w.device), perm.to(w.device)] = 1.0
        self.w_perm = nn.Parameter(w, requires_grad=False)
        self.w_perm_inv = nn.Parameter(w.transpose(0, 1).contiguous(), requires_grad=False)

    def _scale(self) -> torch.Tensor:
        return 0.1 * F.softplus(self.global_scale, beta=0.5)

    def _coupling(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.subnet(x1) * COUPLING_SCALE
        return self.clamp * torch.tanh(a[:, : self.split[1]]), a[:, self.split[1]:]

    @staticmethod
    def _gather(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """x permuted by a 0/1 permutation matrix: out[:, i] = x[:, j] where matrix[i, j] = 1."""
        return x.index_select(1, matrix.flatten(1).argmax(dim=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N,C,H,W) -> (y (N,C,H,W), log|det dy/dx| (N,))."""
        x1, x2 = torch.split(x, self.split, dim=1)
        s, t = self._coupling(x1)
        x2 = x2 * torch.exp(s) + t
        scale = self._scale()
        y = self._gather(torch.cat((x1, x2), dim=1) * scale + self.global_offset, self.w_perm)
        logdet = s.sum(dim=(1, 2, 3)) + x.shape[2] * x.shape[3] * torch.log(scale).sum()
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        u = (self._gather(y, self.w_perm_inv) - self.global_offset) / self._scale()
        x1, x2 = torch.split(u, self.split, dim=1)
        s, t = self._coupling(x1)
        return torch.cat((x1, (x2 - t) * torch.exp(-s)), dim=1)


class Flow(nn.Module):
    """A sequence of AllInOneBlocks on one feature scale (FrEIA's SequenceINN)."""

    def __init__(self, channels: int, kernel_sizes: Sequence[int], hidden_ratio: float, clamp: float,
                 generator: torch.Generator):
        super().__init__()
        self.blocks = nn.ModuleList(AllInOneBlock(channels, k, hidden_ratio, clamp, generator)
                                    for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, ld = block(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            z = block.inverse(z)
        return z


def kernel_sizes(flow_steps: int, conv3x3_only: bool) -> list[int]:
    """gathierry's pattern: 3x3 subnets, or 3x3 on even steps and 1x1 on odd ones."""
    return [3 if conv3x3_only or i % 2 == 0 else 1 for i in range(flow_steps)]


def flow_loss(outputs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Sum over scales of the batch mean of 0.5 * sum(z^2) - log|det J| (the negative
    log-likelihood under a standard normal, without its constant)."""
    return sum(torch.mean(0.5 * z.pow(2).sum(dim=(1, 2, 3)) - logdet) for z, logdet in outputs)


def anomaly_map(latents: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """(N,C,h,w) latents per scale -> (N,size,size): mean over scales of -exp(-0.5 mean_c z^2),
    each upsampled bilinearly (align_corners False, as both references)."""
    maps = [F.interpolate(-torch.exp(-0.5 * z.float().pow(2).mean(dim=1, keepdim=True)), size=(size, size),
                          mode="bilinear", align_corners=False) for z in latents]
    return torch.stack(maps, dim=-1).mean(dim=-1)[:, 0]


class FastFlowNet(nn.Module):
    """Frozen encoder, a LayerNorm([C, H, W]) and a flow per tapped scale."""

    def __init__(self, backbone: str, weights: str, strides: Sequence[int], image_size: int, flow_steps: int,
                 hidden_ratio: float, conv3x3_only: bool, clamp: float, seed: int):
        super().__init__()
        try:
            self.encoder = FeatureExtractor(backbone, strides, weights, trainable=False)
        except ValueError as exc:  # a stride the backbone does not have
            raise ThreecadError(f"config strides={tuple(strides)}: {exc}") from None
        sides = [image_size // s for s in self.encoder.strides]
        generator = torch.Generator(device="cpu").manual_seed(seed)
        ks = kernel_sizes(flow_steps, conv3x3_only)
        self.trainable = nn.ModuleDict({
            "norms": nn.ModuleList(nn.LayerNorm([c, h, h], elementwise_affine=True)
                                   for c, h in zip(self.encoder.channels, sides)),
            "flows": nn.ModuleList(Flow(c, ks, hidden_ratio, clamp, generator) for c in self.encoder.channels),
        })

    def encode(self, images: torch.Tensor, amp: bool = False) -> list[torch.Tensor]:
        """images (N,3,S,S) in [0,1] -> the frozen encoder's maps, one per stride (mixed precision with `amp`)."""
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=amp):
            return self.encoder(images)

    def flow(self, features: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encoder maps -> per scale (z (N,C,h,w), log|det J| (N,)), always in float32."""
        out = []
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            for feature, norm, flow in zip(features, self.trainable["norms"], self.trainable["flows"]):
                out.append(flow(norm(feature.float())))
        return out

    def forward(self, images: torch.Tensor, amp: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.flow(self.encode(images, amp))


class _FullBatches:
    """The training loader without its short last batch (gathierry's drop_last=True)."""

    def __init__(self, loader: Iterable[dict], batch_size: int):
        self._loader, self.batch_size = loader, batch_size

    def __len__(self) -> int:
        dataset = getattr(self._loader, "dataset", None)
        if dataset is not None:
            return len(dataset) // self.batch_size
        return len(self._loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict]:
        for batch in self._loader:
            if len(batch["image"]) == self.batch_size:
                yield batch


# --------------------------------------------------------------------------- the method
@dataclass
class FastFlowConfig(TrainedConfig):
    image_size: int = 256  # input side; must be a multiple of the largest stride
    batch_size: int = 32
    seed: int = 42  # weights, permutations and shuffling
    backbone: str = "resnet18"  # frozen, ImageNet-pretrained (wide_resnet50_2: gathierry's other CNN config)
    weights: str = "imagenet"  # encoder weights: imagenet | none | PATH to a state dict
    strides: tuple[int, ...] = (4, 8, 16)  # tapped scales (ResNets: layer1, layer2, layer3)
    flow_steps: int = not_length(8, "coupling blocks per scale")
    hidden_ratio: float = 1.0  # subnet hidden channels / subnet input channels
    conv3x3_only: bool | None = None  # None: as gathierry's configs (resnet18 True, others False)
    clamp: float = 2.0  # soft clamp of the coupling log-scale: clamp * tanh(.)
    epochs: int = length(500)
    lr: float = 1e-3  # Adam
    weight_decay: float = 1e-5
    drop_last: bool = True  # skip the short last batch of each epoch (gathierry)
    # Keep each training image's encoder maps after its first pass (the encoder is frozen and
    # there is no augmentation, so they never change): saves the encoder pass in later epochs.
    # Held on the device, up to the feature cache's default budget; ~1.8 MB per image with
    # ResNet-18 at 256 px.
    cache_features: bool = False
    select: str = "last"  # last epoch, or "val": lowest flow loss on the validation split's good images

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ThreecadError(f"config backbone={self.backbone}: unknown; known: {', '.join(BACKBONES)}")
        if not self.strides or any(not isinstance(s, int) or s < 1 for s in self.strides):
            raise ThreecadError(f"config strides={self.strides}: must be one or more positive integers")
        if self.image_size % max(self.strides):
            raise ThreecadError(f"config image_size={self.image_size}: must be a multiple of the largest "
                                f"stride ({max(self.strides)})")
        if not isinstance(self.flow_steps, int) or self.flow_steps < 1:
            raise ThreecadError(f"config flow_steps={self.flow_steps}: must be a positive integer")
        for name in ("hidden_ratio", "clamp", "lr"):
            if not getattr(self, name) > 0:
                raise ThreecadError(f"config {name}={getattr(self, name)}: must be > 0")
        if self.weight_decay < 0:
            raise ThreecadError(f"config weight_decay={self.weight_decay}: must be >= 0")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ThreecadError(f"config epochs={self.epochs}: must be a positive integer")

    @property
    def three_by_three_only(self) -> bool:
        return self.backbone == "resnet18" if self.conv3x3_only is None else bool(self.conv3x3_only)


class FastFlow(TrainedMethod):
    name = "fastflow"
    description = "FastFlow: 2-D normalizing flows on frozen CNN features, likelihood maps"
    config_class = FastFlowConfig
    presets = {
        "paper": {},  # gathierry's resnet18.yaml; --set backbone=wide_resnet50_2 for wide_resnet50_2.yaml
        # Offline EfficientNet-Lite0 at 256 px, tapped at strides 16/32 (112, 320 channels), 3x3
        # subnets as ResNet-18's config; 4 steps instead of 8 and cached encoder maps to fit two CPU
        # cores; small batches so that a few dozen training images still give 80-200 optimiser steps.
        # Not the reference's strides 4/8/16, at 128 or 256 px, nor 8/16 at 256 px: each scored
        # lower on the stators (the README's Methods section gives the reference taps' figures):
        # with a few dozen images the flows on the shallow taps fit their texture, and the
        # stride-4 map alone ranked Iron_Stator's defects at chance.
        "cpu": {"backbone": "efficientnet_lite0", "image_size": 256, "strides": (16, 32), "batch_size": 4,
                "epochs": 20, "flow_steps": 4, "conv3x3_only": True, "cache_features": True},
    }

    def __init__(self, config: FastFlowConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        with seeded_weights(config.seed):
            self.net = FastFlowNet(config.backbone, config.weights, config.strides, config.image_size,
                                   config.flow_steps, config.hidden_ratio, config.three_by_three_only,
                                   config.clamp, config.seed).to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.net.encoder.to(memory_format=torch.channels_last)
        self.feature_cache = FeatureCache(DEFAULT_BUDGET_MB if config.cache_features else 0, owner=self.name)

    def _outputs(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.net(images, amp=self.amp)

    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        cfg = self.config
        batches = None
        if cfg.drop_last:
            n = len(getattr(train_loader, "dataset", ()) or ())
            size = getattr(train_loader, "batch_size", None) or cfg.batch_size
            if 0 < n < size:
                raise ThreecadError(f"config batch_size={size} is larger than the {n} training images while "
                                    "drop_last is on: lower batch_size or set drop_last=false")
            batches = _FullBatches(train_loader, size)
        params = self.net.trainable
        optimizer = torch.optim.Adam([p for p in params.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        scheduler = multistep_scheduler(optimizer, cfg.epochs, (), 1.0)  # constant learning rate
        return TrainingSetup(params, optimizer, scheduler, cfg.epochs, batches=batches)

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.net.encode(images, self.amp)

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": flow_loss(self.net.flow(self.feature_cache.get(batch, self._encode)))}

    def validation_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        return flow_loss(self._outputs(batch["image"])), len(batch["image"])

    def after_fit(self) -> None:
        self.feature_cache.clear()

    def predict(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        self.net.eval()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        latents = [z for z, _ in self._outputs(images)]
        return None, anomaly_map(latents, images.shape[-1])

    def postprocess(self) -> PostProcess:
        return PostProcess(sigma=0.0, mode="reflect", score="max")  # no smoothing; anomalib's max

    def parts(self) -> dict[str, nn.Module]:
        return {f"feature_extractor ({self.config.backbone}, used part)": self.net.encoder,
                "norms (LayerNorm per scale)": self.net.trainable["norms"],
                "nf_flows": self.net.trainable["flows"]}

    def card_details(self) -> dict[str, Any]:
        cfg = self.config
        flows = []
        for tap, flow in zip(self.net.encoder.describe_taps(cfg.image_size), self.net.trainable["flows"]):
            trainable = sum(p.numel() for p in flow.parameters() if p.requires_grad)
            frozen = sum(p.numel() for p in flow.parameters() if not p.requires_grad)
            flows.append({"input": [tap["channels"], tap["size"], tap["size"]], "trainable": trainable,
                          "frozen_permutation_matrices": frozen})
        return {"taps": self.net.encoder.describe_taps(cfg.image_size),
                "flows": {"steps": cfg.flow_steps, "kernel_sizes": kernel_sizes(cfg.flow_steps,
                                                                                cfg.three_by_three_only),
                          "hidden_ratio": cfg.hidden_ratio, "clamp": f"{cfg.clamp} * tanh(0.1 * s)",
                          "per_scale": flows},
                "notes": ["nf_flows' frozen parameters are FrEIA's permutation matrices (w_perm, w_perm_inv), "
                          "kept as the reference keeps them",
                          "LayerNorm parameters grow with the input size (normalised over C, H, W)",
                          "image score: max of the map (anomalib); gathierry reports pixel AUROC only",
                          self._encoder_weights_note()]}

    def _encoder_weights_note(self) -> str:
        cfg = self.config
        reference = REFERENCE_ENCODER_FILES.get(cfg.backbone)
        if reference is None:
            return (f"encoder weights: {cfg.backbone} with weights={cfg.weights}; gathierry's CNN configs use "
                    "resnet18 or wide_resnet50_2 through timm 0.5.4")
        said = f"gathierry's timm 0.5.4 loads {reference} for {cfg.backbone}"
        if cfg.weights.lower() != "imagenet":
            return f"encoder weights: weights={cfg.weights}; {said}"
        ours = BACKBONES[cfg.backbone].weights_url.rsplit("/", 1)[1]
        if cfg.backbone == "resnet18":
            return (f"encoder weights: threecad loads torchvision's {ours}; {said}. Whether the two files hold the "
                    "same tensors is not yet checked (pending: neither file was at hand to compare; if they "
                    "differ, weights=PATH loads the reference's)")
        return (f"encoder weights: threecad loads torchvision's {ours}; {said}, timm's own retrained weights, "
                "not torchvision's (weights=PATH loads it)")

    def trained_module(self) -> nn.Module:
        return self.net.trainable

    def frozen_backbone(self) -> tuple[str, nn.Module]:
        return "encoder", self.net.encoder

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backbone": self.config.backbone, "channels": list(self.net.encoder.channels),
            "trainable_parameters": sum(p.numel() for p in self.net.trainable.parameters() if p.requires_grad)}
        out.update(self.training_facts())
        return out
