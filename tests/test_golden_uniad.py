"""UniAD against its reference's computation with the same weights, from the raw image to the image score.

The golden map and score in `golden/uniad/golden.npz` were computed by the reference code
(zhiyuanyou/UniAD @a5b9d9d2, `experiments/MVTec-AD/config.yaml`: its test DataLoader reading
the PNG, `ModelHelper` in eval mode with its copy of lukemelas' EfficientNet-B4, the `dump` /
`merge_together` round trip and `EvalImageMax` with a 16 x 16 pool) after
`golden/uniad/make_golden.py` copied into it the weights `build_ours()` gives. The test
rebuilds those weights (deterministic on CPU) and never imports the reference.
"""
from __future__ import annotations

import torch

from baselines.uniad import UniAD
from golden.common import (TOLERANCE, load_golden, predict, randomise_affine, randomise_batchnorm, read_raw,
                           relative)
from threecad.method import build_config

NORM_SEED = 26  # BatchNorm statistics and affines, LayerNorm affines


def randomise_norms(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affines and LayerNorm affines (identities at init), so
    that the backbone's BatchNorm eps and every norm are really compared."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            randomise_batchnorm(m, generator)
        if isinstance(m, torch.nn.LayerNorm):
            randomise_affine(m, generator)


def build_ours() -> UniAD:
    """The paper preset (224 px, efficientnet_b4_tf) with random weights from its seed
    (make_golden.py copies these into the reference)."""
    method = UniAD(build_config(UniAD, "paper", {"weights": "none"}), device="cpu", amp=False)
    randomise_norms(method.net, torch.Generator().manual_seed(NORM_SEED))
    return method


def test_map_and_score_through_the_declared_preprocess():
    torch.set_num_threads(1)
    golden = load_golden("uniad")
    method = build_ours()
    pre = method.preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (int(golden["size"]), "pil", "rgb", "square")
    raw, scores, smoothed = predict(method, read_raw(method))
    got = {"map": relative(smoothed[0].numpy(), golden["map"]), "score": relative(scores.numpy(), golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
    assert torch.equal(raw, smoothed)  # no smoothing, as the reference
