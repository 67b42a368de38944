"""UniAD (You et al., NeurIPS 2022): one transformer reconstructs the frozen features of all
categories, with tricks that stop it from copying its input.

A frozen EfficientNet-B4 gives blocks 1, 5, 9 and 21 (lukemelas indices), aligned to stride
16 and concatenated (272 channels, 14x14 tokens at 224 px). A transformer (4 encoder + 4
decoder layers, post-norm) rebuilds them, and the anomaly map is the L2 distance between
features and reconstruction. Three devices keep the transformer from learning the
identity, which would rebuild anomalies as well as normal regions:
- neighbour-masked attention: a token may not attend to its own 7x7 neighbourhood (in the
  encoder and both decoder attentions);
- layer-wise learned queries: each decoder layer starts from its own learned embedding, not
  from the previous layer's output (which enters only as the cross-attention's keys/values);
- feature jittering: Gaussian noise scaled by each token's norm is added to the input
  tokens during training (the target stays clean).

The taps, their alignment, the map, the image score and the unified setting (one model for
all categories, as the paper trains) are what UniAD shares with CRAD:
`threecad.feature_reconstruction`. This file holds the transformer and its three devices.

Preset `paper` is the reference's MVTec config: 224 px, ImageNet normalisation, batch 8
(per GPU; the README trains on 8 GPUs), AdamW lr 1e-4 betas (0.9, 0.999) wd 1e-4, 1000
epochs, StepLR(800, x0.1) stepped as the reference does (`step(epoch)` after each epoch,
so the decay lands one epoch late: epoch 802 is the first at 1e-5), gradient norm clipped
to 0.1, jitter scale 20 with probability 1, xavier_uniform init, seed 133. The map leaves
`predict` upsampled x16 (bilinear, corners aligned) and unsmoothed; the image score is the
max of the map averaged over 16x16 windows (`postprocess`).

The backbone is the reference's EfficientNet-B4 (`efficientnet_b4_tf`: lukemelas'
`efficientnet_pytorch` as the reference builds it, with its TensorFlow-ported ImageNet file;
see `threecad.efficientnet_taps`). Departures: the network stops after block 21 instead of
running the head (the taps are the same). Model selection is the last epoch, as the
reference's evaluation (it loads `ckpt.pth.tar`; its `ckpt_best` is picked on the test set
and is not used here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from threecad.errors import ThreecadError
from threecad.feature_reconstruction import FeatureReconstruction, FeatureReconstructionConfig
from threecad.optim import clip_gradients, delayed_step_lr
from threecad.trained import TrainedConfig, TrainingSetup, length, not_length


# --------------------------------------------------------------------------- the network
def neighbour_mask(h: int, w: int, size: int, device=None) -> torch.Tensor:
    """(h*w, h*w) additive attention mask: -inf where the key lies in the query's size x size neighbourhood."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None]).abs() <= size // 2) & ((xs[:, None] - xs[None]).abs() <= size // 2)
    return torch.zeros(h * w, h * w, device=device).masked_fill(near, float("-inf"))


class LearnedPositions(nn.Module):
    """DETR's learned 2-D position embedding: a row and a column table, concatenated (x first)."""

    def __init__(self, h: int, w: int, dim: int):
        super().__init__()
        self.h, self.w = h, w
        self.row = nn.Embedding(h, dim // 2)
        self.col = nn.Embedding(w, dim // 2)
        nn.init.uniform_(self.row.weight)
        nn.init.uniform_(self.col.weight)

    def forward(self) -> torch.Tensor:
        x = self.col.weight[None].expand(self.h, -1, -1)
        y = self.row.weight[:, None].expand(-1, self.w, -1)
        return torch.cat([x, y], dim=-1).flatten(0, 1)  # (h*w, dim)


class EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; positions added to queries and keys only."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.drop1(self.attn(q, q, x, attn_mask=mask, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ffn(x)))


class DecoderLayer(nn.Module):
    """A decoder layer that starts from its own learned queries (UniAD's layer-wise queries).

    Self-attention: queries -> encoder output; cross-attention: -> the previous layer's output.
    """

    def __init__(self, tokens: int, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.queries = nn.Embedding(tokens, dim)
        self.attn1 = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.attn2 = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, prev: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                mask1: torch.Tensor | None, mask2: torch.Tensor | None) -> torch.Tensor:
        t = self.queries.weight[:, None].expand(-1, memory.shape[1], -1)
        t = self.norm1(t + self.drop1(self.attn1(t + pos, memory + pos, memory, attn_mask=mask1,
                                                 need_weights=False)[0]))
        t = self.norm2(t + self.drop2(self.attn2(t + pos, prev + pos, prev, attn_mask=mask2,
                                                 need_weights=False)[0]))
        return self.norm3(t + self.drop3(self.ffn(t)))


class UniADReconstruction(nn.Module):
    """input_proj -> masked transformer (encoder, layer-wise-query decoder) -> output_proj."""

    def __init__(self, channels: int, h: int, w: int, hidden: int, heads: int, encoder_layers: int,
                 decoder_layers: int, ffn: int, dropout: float, neighbour: int):
        super().__init__()
        self.h, self.w, self.neighbour = h, w, neighbour
        self.input_proj = nn.Linear(channels, hidden)
        self.output_proj = nn.Linear(hidden, channels)
        self.pos_embed = LearnedPositions(h, w, hidden)
        self.encoder = nn.ModuleList(EncoderLayer(hidden, heads, ffn, dropout) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(h * w, hidden, heads, ffn, dropout) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(hidden)
        for m in self.modules():  # the reference's xavier_uniform on every Linear (attention out_proj included)
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (h*w, N, C) -> reconstruction (h*w, N, C)."""
        x = self.input_proj(tokens)
        pos = self.pos_embed()[:, None].to(x.dtype)
        mask = neighbour_mask(self.h, self.w, self.neighbour, x.device).to(x.dtype) if self.neighbour > 0 else None
        for layer in self.encoder:
            x = layer(x, pos, mask)
        out = x
        for layer in self.decoder:
            out = layer(out, x, pos, mask, mask)
        return self.output_proj(self.decoder_norm(out))


def jitter(tokens: torch.Tensor, scale: float, prob: float) -> torch.Tensor:
    """UniAD's feature jitter: with probability `prob`, add N(0,1) * ||token|| / C * scale."""
    if scale <= 0 or float(torch.rand(())) > prob:
        return tokens
    norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
    return tokens + torch.randn_like(tokens) * norms * scale


# --------------------------------------------------------------------------- the method
@dataclass
class UniADConfig(FeatureReconstructionConfig, TrainedConfig):
    # the taps (blocks 1, 5, 9, 21 aligned to stride 16) and the 16x16 score pool are the mixin's defaults
    image_size: int = 224
    batch_size: int = 8  # per process (the README: 8 GPUs x 8)
    seed: int = 133
    hidden_dim: int = 256
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    neighbour_size: int = 7  # masked neighbourhood side in tokens; 0 = no mask
    jitter_scale: float = 20.0  # 0 = no feature jitter
    jitter_prob: float = 1.0
    epochs: int = length(1000)
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-4
    lr_step: int = not_length(800, "epochs between x lr_gamma decays")
    lr_gamma: float = 0.1
    clip_norm: float = 0.1  # max global gradient norm; 0 = no clipping
    select: str = "last"  # last epoch, or "val": lowest reconstruction loss on the validation split

    def validate(self) -> None:
        super().validate()
        for key in ("hidden_dim", "heads", "encoder_layers", "decoder_layers", "ffn_dim", "epochs", "lr_step"):
            if getattr(self, key) < 1:
                raise ThreecadError(f"config {key}={getattr(self, key)}: must be at least 1")
        if self.hidden_dim % self.heads or self.hidden_dim % 2:
            raise ThreecadError(f"config hidden_dim={self.hidden_dim}: must be even and a multiple of heads={self.heads}")
        if not 0 <= self.dropout < 1 or not 0 <= self.jitter_prob <= 1 or self.jitter_scale < 0:
            raise ThreecadError(f"config dropout={self.dropout}, jitter_prob={self.jitter_prob}, "
                                f"jitter_scale={self.jitter_scale}: need 0 <= dropout < 1, 0 <= jitter_prob <= 1, "
                                "jitter_scale >= 0")
        side = self.aligned_side()
        if self.neighbour_size < 0 or (self.neighbour_size and side // 2 <= self.neighbour_size // 2):
            raise ThreecadError(f"config neighbour_size={self.neighbour_size}: masks every token of the "
                                f"{side}x{side} token grid at image_size={self.image_size}; use a smaller "
                                "neighbourhood or a larger image")


class UniAD(FeatureReconstruction):
    name = "uniad"
    description = "UniAD: a unified transformer rebuilds frozen EfficientNet features (one model for all categories)"
    config_class = UniADConfig
    presets = {
        "paper": {},
        # Offline EfficientNet-Lite0 at 256 px, tapped at strides 16/32 (112 + 320 channels) and
        # aligned to 16 as the paper aligns its taps: 16x16 tokens, as many as the paper's 14x14;
        # the 7x7 mask as the paper; a 2+2-layer transformer of width 128, lr 1e-3, 200 epochs;
        # features cached (frozen, no augmentation). Scores per category: see the README. An
        # earlier 128 px preset (strides 4/8/16 aligned to 8, 60 epochs) was undertrained on 16
        # images a category (AI's round hole outscored its defects); 200 epochs at 128 px fixed
        # AI and ANI but not the stators, which the deep taps at 256 px raised; strides 4/8/16
        # or 8/16/32 at 256 px did less.
        "cpu": {"backbone": "efficientnet_lite0", "image_size": 256, "batch_size": 8, "strides": (16, 32),
                "out_stride": 16, "hidden_dim": 128, "heads": 4, "encoder_layers": 2, "decoder_layers": 2,
                "ffn_dim": 256, "epochs": 200, "lr": 1e-3, "lr_step": 1000, "cache_features": True},
    }

    def reconstruction_network(self, channels: int, side: int) -> UniADReconstruction:
        cfg = self.config
        return UniADReconstruction(channels, side, side, cfg.hidden_dim, cfg.heads, cfg.encoder_layers,
                                   cfg.decoder_layers, cfg.ffn_dim, cfg.dropout, cfg.neighbour_size)

    def reconstruct(self, feats: torch.Tensor, train: bool) -> torch.Tensor:
        """Aligned features (N, C, h, w) -> their reconstruction, from jittered tokens in training."""
        cfg = self.config
        n, c, h, w = feats.shape
        tokens = feats.flatten(2).permute(2, 0, 1)  # (h*w, N, C)
        if train and cfg.jitter_scale > 0:  # the target stays clean
            tokens = jitter(tokens, cfg.jitter_scale, cfg.jitter_prob)
        return self.net.reconstruction(tokens).permute(1, 2, 0).reshape(n, c, h, w)

    def rebuild(self, images: torch.Tensor, train: bool,
                feats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            feats = self.net.features(images) if feats is None else feats
            rec = self.reconstruct(feats, train)
        return feats.float(), rec.float()

    def cached_features(self, images: torch.Tensor) -> torch.Tensor:
        """Under autocast, as `rebuild` computes uncached features: a cached epoch sees the same ones."""
        with self.autocast():
            return self.net.features(images)

    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        cfg = self.config
        params = self.net.reconstruction
        optimizer = torch.optim.AdamW(params.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      weight_decay=cfg.weight_decay)
        clip_gradients(optimizer, cfg.clip_norm)
        return TrainingSetup(params, optimizer, delayed_step_lr(optimizer, cfg.lr_step, cfg.lr_gamma), cfg.epochs)

    def parts(self) -> dict[str, nn.Module]:
        rec = self.net.reconstruction
        return {**super().parts(),
                "reconstruction: transformer": nn.ModuleList([rec.encoder, rec.decoder, rec.decoder_norm]),
                "reconstruction: input_proj": rec.input_proj,
                "reconstruction: output_proj": rec.output_proj,
                "reconstruction: pos_embed": rec.pos_embed}

    def card_details(self) -> dict[str, Any]:
        details = super().card_details()
        details["aligned"]["tokens"] = self.config.aligned_side() ** 2
        details["notes"].insert(0, "reconstruction = transformer + input_proj + output_proj + pos_embed "
                                f"({sum(p.numel() for p in self.net.reconstruction.parameters()):,} parameters)")
        return details
