"""Rebuilding frozen, aligned features: the part of UniAD and CRAD that is the same.

Both tap a frozen backbone (`threecad.efficientnet_taps`: EfficientNet-B4 by lukemelas block,
built and loaded as the references do in the paper presets; any other threecad backbone by
stride), resize every tap to one stride and concatenate them (UniAD's MFCN neck, which CRAD
reuses), and train a network to rebuild the aligned features.
What keeps that network from rebuilding anomalies too is each paper's own (UniAD: masked
attention, layer-wise queries, feature jitter; CRAD: a memory read at predicted
coordinates), and so are its optimiser and the reconstruction it returns.

The rest is shared and lives here: the config fields of the taps, the alignment and the
score with their checks (`FeatureReconstructionConfig`); the network holder, frozen taps
plus the method's reconstruction (`FeatureReconstructionNet`); and a method base
(`FeatureReconstruction`) whose loss is the MSE between features and reconstruction, whose
map is their L2 distance over channels upsampled to the image (bilinear, corners aligned,
unsmoothed), and whose image score is the max of the map averaged over `score_pool` windows.

Both papers train one model on all categories (`unified_by_default`); the method fits on
whatever training loader it gets, so the per-category setting works as well. The backbone
is frozen and training images are not augmented, so `cache_features` can keep each training
image's features after the first epoch without changing what is computed.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from threecad.efficientnet_taps import B4_NAMES, NAME_TF, align_features, frozen_taps
from threecad.errors import ThreecadError
from threecad.feature_cache import DEFAULT_BUDGET_MB, FeatureCache
from threecad.postprocess import PostProcess
from threecad.trained import TrainedMethod, seeded_weights


@dataclass
class FeatureReconstructionConfig:
    """The tap, alignment and score fields of a method's config, and their checks.

    A mixin for a `TrainedConfig`: list it first (`class XConfig(FeatureReconstructionConfig,
    TrainedConfig)`), and call `super().validate()` first in the method's `validate`. The
    defaults are UniAD's (the MFCN neck is UniAD's); a method redeclares a field to change it.
    """

    # frozen; a B4 (efficientnet_b4_tf: lukemelas', as the references; efficientnet_b4: torchvision's) is
    # tapped by block, any other threecad backbone by stride
    backbone: str = NAME_TF
    weights: str = "imagenet"  # backbone weights: imagenet | none | PATH to a state dict
    weights_sha256: str = ""  # expected sha256 of the weight file; empty: not checked (it is recorded either way)
    blocks: tuple[int, ...] = (1, 5, 9, 21)  # lukemelas block indices (a B4)
    strides: tuple[int, ...] = (2, 4, 8, 16)  # taps of any other backbone
    out_stride: int = 16  # MFCN: every tap resized to this stride
    score_pool: int = 16  # image score: max of the map averaged over score_pool x score_pool windows
    cache_features: bool = False  # keep training images' backbone features after epoch 1 (host memory, bounded)

    def validate(self) -> None:
        super().validate()
        for key in ("out_stride", "score_pool"):
            if getattr(self, key) < 1:
                raise ThreecadError(f"config {key}={getattr(self, key)}: must be at least 1")
        if self.weights_sha256 and (len(self.weights_sha256) != 64
                                    or not all(c in "0123456789abcdef" for c in self.weights_sha256.lower())):
            raise ThreecadError(f"config weights_sha256={self.weights_sha256}: not a sha256 (64 hex digits)")
        taps = self.strides if self.backbone not in B4_NAMES else (16,)  # B4's deepest tap, block 21, is at stride 16
        deepest = max(max(taps), self.out_stride)
        if self.image_size % deepest:
            raise ThreecadError(f"config image_size={self.image_size}: must be a multiple of {deepest} "
                                "(the deepest feature stride)")
        if self.score_pool > self.image_size:
            raise ThreecadError(f"config score_pool={self.score_pool}: larger than image_size={self.image_size}")

    def aligned_side(self) -> int:
        """Side of the aligned feature grid."""
        return self.image_size // self.out_stride


class FeatureReconstructionNet(nn.Module):
    """The frozen taps (`backbone`) and the network that rebuilds their aligned features (`reconstruction`).

    `reconstruction(channels, side)` builds the method's network for `channels` aligned
    channels on a `side` x `side` grid; it is built after the backbone (a random backbone's
    weights are drawn first).
    """

    def __init__(self, cfg: FeatureReconstructionConfig, reconstruction: Callable[[int, int], nn.Module]):
        super().__init__()
        self.backbone = frozen_taps(cfg.backbone, cfg.blocks, cfg.strides, cfg.weights, cfg.weights_sha256)
        self.out_stride = cfg.out_stride
        self.channels = sum(self.backbone.channels)
        self.reconstruction = reconstruction(self.channels, cfg.aligned_side())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> aligned features (N, C, H / out_stride, W / out_stride)."""
        with torch.no_grad():
            return align_features(self.backbone(images), self.backbone.strides, self.out_stride)


def distance_map(feats: torch.Tensor, rec: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W): the L2 distance over channels between features and reconstruction, upsampled
    to `size` (bilinear, corners aligned), in float32."""
    dist = (rec.float() - feats.float()).pow(2).sum(dim=1, keepdim=True).sqrt()
    return F.interpolate(dist, size=size, mode="bilinear", align_corners=True)[:, 0]


class FeatureReconstruction(TrainedMethod):
    """A method that rebuilds frozen aligned features (see the module doc).

    A method supplies its network (`reconstruction_network`), how it rebuilds a batch
    (`rebuild`), its optimiser and schedule (`training_setup`), and its own parts and card
    facts on top of the ones given here.
    """

    unified_by_default = True  # both papers train one model on all categories
    config: FeatureReconstructionConfig
    net: FeatureReconstructionNet

    def __init__(self, config: FeatureReconstructionConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        with seeded_weights(config.seed):
            self.net = FeatureReconstructionNet(config, self.reconstruction_network).to(self.device)
        self.feature_cache = FeatureCache(DEFAULT_BUDGET_MB if config.cache_features else 0, host=True,
                                          owner=self.name)

    # ------------------------------------------------------------------ what a method supplies
    @abc.abstractmethod
    def reconstruction_network(self, channels: int, side: int) -> nn.Module:
        """The network that rebuilds `channels` aligned features on a `side` x `side` grid."""

    @abc.abstractmethod
    def rebuild(self, images: torch.Tensor, train: bool,
                feats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images (or their aligned features, when given) -> (features, reconstruction), both
        (N, C, h, w) in float32; `train` switches on the paper's training-only noise."""

    def cached_features(self, images: torch.Tensor) -> torch.Tensor:
        """The aligned features the feature cache keeps for a training image."""
        return self.net.features(images)

    # ------------------------------------------------------------------ training
    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        feats, rec = self.rebuild(batch["image"], train=True,
                                  feats=self.feature_cache.get(batch, self.cached_features))
        return {"loss": F.mse_loss(rec, feats)}

    def validation_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        feats, rec = self.rebuild(batch["image"], train=False)
        return F.mse_loss(rec, feats), len(feats)

    def after_fit(self) -> None:
        self.feature_cache.clear()

    def trained_module(self) -> nn.Module:
        return self.net.reconstruction

    def frozen_backbone(self) -> tuple[str, nn.Module]:
        return "backbone", self.net.backbone

    # ------------------------------------------------------------------ the map and the score
    def predict(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        self.net.eval()
        feats, rec = self.rebuild(images, train=False)
        return None, distance_map(feats, rec, images.shape[-2:])

    def postprocess(self) -> PostProcess:
        return PostProcess(sigma=0.0, score="mean_pool_max", pool=self.config.score_pool, pool_pad=0)

    # ------------------------------------------------------------------ what the card and records say
    def parts(self) -> dict[str, nn.Module]:
        """The backbone and the parameter-free neck; a method adds its reconstruction's parts."""
        return {f"backbone ({self.config.backbone}, used part)": self.net.backbone, "neck (MFCN)": nn.Module()}

    def card_details(self) -> dict[str, Any]:
        """The taps, the aligned grid and the backbone's departures; a method adds its own facts."""
        cfg = self.config
        notes = []
        if cfg.backbone in B4_NAMES:
            last = max(cfg.blocks)
            notes.append(f"backbone: stem + blocks 0..{last} of EfficientNet-B4 "
                         f"({sum(p.numel() for p in self.net.backbone.parameters()):,} parameters at any size); "
                         "the reference builds and runs the whole network (19,341,616, head and classifier "
                         f"included) and uses only blocks {', '.join(map(str, cfg.blocks))}; threecad stops "
                         f"after block {last}")
            notes.extend(self.net.backbone.card_notes(cfg.image_size))
        return {"taps": self.net.backbone.describe_taps(cfg.image_size),
                "aligned": {"stride": cfg.out_stride, "channels": self.net.channels, "size": cfg.aligned_side()},
                "notes": notes}

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backbone": self.config.backbone, "backbone_weights": self.net.backbone.weights_source,
                               "feature_channels": self.net.channels,
                               "trainable_parameters": sum(p.numel() for p in self.net.reconstruction.parameters())}
        out.update(self.training_facts())
        return out
