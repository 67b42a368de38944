"""Our SimpleNet for the golden test, shared by make_golden.py and tests/test_golden_simplenet.py.

Both must hold the same tensors, and the paper network's cannot be committed, so both rebuild
them here: the paper preset with a random-init backbone (`weights=none`, drawn
from the global generator after a fixed seed), the preset's own `ones_warmup`, the adaptor and
discriminator from the preset's seeded init, and the discriminator's BatchNorm1d given random
statistics and affine (its init is the identity, which would hide a mix-up of those tensors).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from baselines.simplenet import SimpleNet
from threecad.method import build_config

SEED = 26
RAW = Path(__file__).resolve().parents[1] / "raw" / "part.png"
GOLDEN = Path(__file__).with_name("golden.npz")
STRIDE = 2  # the fixture keeps every STRIDE-th row and column of the 288 x 288 maps (size)


def build(ones_warmup: bool = True) -> SimpleNet:
    """The paper preset with the golden weights; `ones_warmup=False` gives the backbone as
    initialised, before the warm-up (what the reference's `load` receives)."""
    config = build_config(SimpleNet, "paper", {"weights": "none", "feature_cache_mb": 0,
                                               "ones_warmup": ones_warmup})
    torch.manual_seed(SEED)
    method = SimpleNet(config)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for bn in method.net.modules():
            if isinstance(bn, torch.nn.BatchNorm1d):
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    method.net.eval()
    return method


def read(method: SimpleNet) -> torch.Tensor:
    """The raw PNG through our declared preprocess -> (1, 3, S, S) in [0, 1], as the dataset reads it."""
    with Image.open(RAW) as im:
        pixels = method.preprocess().image(im.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)[None]
