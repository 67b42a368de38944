"""Our SimpleNet for the golden test, shared by make_golden.py and tests/test_golden_simplenet.py.

Both must hold the same tensors, and the paper network's cannot be committed, so both rebuild
them here: the paper preset with a random-init backbone (`weights=none`, drawn
from the global generator after a fixed seed), the preset's own `ones_warmup`, the adaptor and
discriminator from the preset's seeded init, and the discriminator's BatchNorm1d given random
statistics and affine (its init is the identity, which would hide a mix-up of those tensors).
"""
from __future__ import annotations

import torch

from baselines.simplenet import SimpleNet
from golden.common import randomise_batchnorms
from threecad.method import build_config

SEED = 26
STRIDE = 2  # the fixture keeps every STRIDE-th row and column of the 288 x 288 maps (size)


def build(ones_warmup: bool = True) -> SimpleNet:
    """The paper preset with the golden weights; `ones_warmup=False` gives the backbone as
    initialised, before the warm-up (what the reference's `load` receives)."""
    config = build_config(SimpleNet, "paper", {"weights": "none", "feature_cache_mb": 0,
                                               "ones_warmup": ones_warmup})
    torch.manual_seed(SEED)
    method = SimpleNet(config)
    randomise_batchnorms(method.net, torch.Generator().manual_seed(SEED), kind=torch.nn.BatchNorm1d)
    method.net.eval()
    return method

