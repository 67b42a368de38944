"""Our RealNet for the golden test, shared by make_golden.py and tests/test_golden_realnet.py.

Both must hold the same tensors, and the paper network's half a billion of them cannot be
committed, so both rebuild them here from fixed seeds: the paper preset at 128 px with a
random-init backbone (`weights=none`), then made non-trivial where the preset's init is not:
- the backbone's BatchNorm statistics measured on a few synthetic images (torchvision's init
  leaves mean 0 and variance 1, and features then grow with depth until the 2-class softmax
  saturates and the map is 0 or 1 everywhere, which compares nothing), in float64 so that
  the statistics do not depend on the thread count;
- AFS keeps random channel subsets (its init keeps the first k channels of each level);
- the layers the reference zero-initialises (each UNet's output conv and attention
  projections: with them at zero every reconstruction is 0 and the UNets drop out of the
  map) get fan-in-scaled random weights, and every norm layer random affine and statistics;
- RRS ranks its 1536 residual channels by their spatial max and mean after a non-affine
  BatchNorm, and the chosen channels enter a convolution in rank order. Natural ranks hold
  near-ties that float rounding flips (another thread count, another CPU), which would make
  the map depend on the machine. So that BatchNorm's running mean ranks the channels in one
  fixed random order, each rank apart from the next by far more than any residual: both modes
  pick the same channels in the same order, on every machine. The cost: this test cannot
  tell the two modes apart (fidelity audit fidA compared RRS block by block for that).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from baselines.realnet import RealNet
from golden.common import randomise_statistics
from threecad.method import build_config

# The smallest size both codes accept: each UNet halves its input twice and layer4 has stride
# 32, so the side must be a multiple of 128.
IMAGE_SIZE = 128
SEED = 26


def _calibrate_batchnorm(backbone: torch.nn.Module, g: torch.Generator, batches: int = 2) -> None:
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    backbone.double().stages.train()
    with torch.no_grad():
        for _ in range(batches):
            low = torch.rand(2, 3, IMAGE_SIZE // 16, IMAGE_SIZE // 16, generator=g, dtype=torch.float64)
            smooth = F.interpolate(low, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            noise = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g, dtype=torch.float64)
            backbone(0.8 * smooth + 0.2 * noise)
    backbone.float().stages.eval()
    for bn in bns:
        bn.momentum = 0.1


def _randomize(net: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for module in net.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.is_floating_point():
                    continue
                if p.dim() >= 2 and not p.any():  # zero-initialised conv
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
                elif p.dim() == 1 and not p.any():  # zero bias or norm shift
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                elif isinstance(module, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)) and name == "weight":
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                randomise_statistics(module, g)


def _fix_rrs_ranking(rrs: torch.nn.Module, g: torch.Generator, spacing: float = 1e4) -> None:
    """Ranked value of channel c = its residual + spacing x its place in a random order."""
    bn = rrs.bn_idx
    with torch.no_grad():
        bn.running_mean.copy_(-spacing * torch.randperm(bn.num_features, generator=g).float())
        bn.running_var.fill_(1.0)


def build() -> RealNet:
    """The paper preset at IMAGE_SIZE with the golden weights (deterministic on the CPU)."""
    config = build_config(RealNet, "paper", {"weights": "none", "image_size": IMAGE_SIZE})
    method = RealNet(config)
    g = torch.Generator().manual_seed(SEED)
    _calibrate_batchnorm(method.backbone, g)
    with torch.no_grad():
        for idx, channels in zip(method.net.afs.indexes, method.backbone.channels):
            idx.copy_(torch.randperm(channels, generator=g)[:idx.numel()].sort().values)
    _randomize(method.net, g)
    _fix_rrs_ranking(method.net.rrs, g)
    method.net.eval()
    return method

