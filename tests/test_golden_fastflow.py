"""FastFlow against its reference's computation with the same weights, from the raw image to the image score.

The golden map in `golden/fastflow/golden.npz` was computed by the reference code
(gathierry/FastFlow @2cf1f2f4, `configs/resnet18.yaml` at 128 px, timm 0.5.4, FrEIA 0.2: its
test DataLoader reading the PNG, `FastFlow.forward` in eval mode) after
`golden/fastflow/make_golden.py` copied into it the weights `build_ours()` gives. The test
rebuilds those weights (deterministic on CPU) and never imports the reference.

gathierry computes no image score; the golden score is the max of its map, the rule ours
declares (anomalib's). Its loader resizes the shorter side (`Resize(input_size)`), which
its LayerNorms accept only for square images: the golden script gives it the square size, as
our declared preprocess squashes every image.
"""
from __future__ import annotations

import torch

from baselines.fastflow import FastFlow
from golden.common import TOLERANCE, load_golden, predict, randomise_affine, randomise_batchnorms, read_raw, relative
from threecad.method import build_config

IMAGE_SIZE = 128  # the reference's `input_size`, smaller than the preset's 256 to keep the fixture small
NORM_SEED = 26  # BatchNorm statistics, LayerNorm affines, the flows' global affines


def randomise_norms(method: FastFlow, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics, LayerNorm affines and global affines of the flows, so that
    every one of them is really compared (at init they are identities)."""
    randomise_batchnorms(method.net, generator)
    for norm in method.net.trainable["norms"]:
        randomise_affine(norm, generator)
    for flow in method.net.trainable["flows"]:
        for block in flow.blocks:
            block.global_scale.data += 0.3 * torch.randn(block.global_scale.shape, generator=generator)
            block.global_offset.data = 0.1 * torch.randn(block.global_offset.shape, generator=generator)


def build_ours() -> FastFlow:
    """The paper preset at IMAGE_SIZE with random weights from its seed (make_golden.py copies these
    into the reference)."""
    config = build_config(FastFlow, "paper", {"weights": "none", "image_size": IMAGE_SIZE})
    method = FastFlow(config, device="cpu", amp=False)
    randomise_norms(method, torch.Generator().manual_seed(NORM_SEED))
    return method


def test_map_and_score_through_the_declared_preprocess():
    torch.set_num_threads(1)
    golden = load_golden("fastflow")
    method = build_ours()
    pre = method.preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (IMAGE_SIZE, "pil", "rgb", "square")
    raw, scores, smoothed = predict(method, read_raw(method))
    got = {"map": relative(smoothed[0].numpy(), golden["map"]), "score": relative(scores.numpy(), golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
    assert torch.equal(raw, smoothed)  # no smoothing, as the reference
