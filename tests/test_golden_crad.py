"""CRAD against its reference's computation with the same weights, from the raw image to the image score.

The golden values in `golden/crad/golden.npz` were computed by the reference code
(tae-mo/CRAD @b5a1c472, `experiments/config.yaml`: its test DataLoader reading the PNG,
`ModelHelper` in eval mode with its copy of lukemelas' EfficientNet-B4, the `dump` /
`merge_together` round trip, `EvalDataMeta` and `EvalImageMax` with a 32 x 32 pool) after
`golden/crad/make_golden.py` copied into it the weights `build_ours()` gives. The test
rebuilds those weights (deterministic on CPU) and never imports the reference.

The reference's evaluation does not score the map its model returns: `EvalDataMeta` first
averages every map over 21 x 21 windows (`avg_pool2d(preds, 21, 1, 10)`, zero padding counted),
and both the pixel metric and the image score use that; ours declares the same (`map_box`).
"""
from __future__ import annotations

import pytest
import torch

from baselines.crad import CRAD
from golden.common import TOLERANCE, load_golden, predict, randomise_batchnorms, read_raw, relative
from threecad.method import build_config

# BatchNorm statistics and affines (backbone and bottlenecks), so that the backbone's BatchNorm eps
# and every BatchNorm are really compared
NORM_SEED = 26


def build_ours() -> CRAD:
    """The paper preset (224 px, efficientnet_b4_tf) with random weights from its seed
    (make_golden.py copies these into the reference)."""
    method = CRAD(build_config(CRAD, "paper", {"weights": "none"}), device="cpu", amp=False)
    randomise_batchnorms(method.net, torch.Generator().manual_seed(NORM_SEED))
    return method


@pytest.fixture(scope="module")
def golden():
    return load_golden("crad")


@pytest.fixture(scope="module")
def ours(golden):
    """Our raw map (1, 224, 224), score and evaluated map of the raw image through the declared
    preprocess, `predict` and the declared postprocess."""
    torch.set_num_threads(1)
    method = build_ours()
    pre = method.preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (int(golden["size"]), "pil", "rgb", "square")
    return predict(method, read_raw(method))


def test_raw_map_through_the_declared_preprocess(ours, golden):
    """The model's map (the reference's `pred`): input pipeline, backbone, memory, blend, upsampling."""
    raw, _, _ = ours
    assert relative(raw[0].numpy(), golden["raw_map"]) <= TOLERANCE


def test_evaluated_map_and_score_through_the_declared_postprocess(ours, golden):
    """The reference's evaluation averages each map over 21 x 21 (EvalDataMeta) before the pixel
    metric and the 32 x 32 image-score pool: the declared post-processing does the same."""
    _, scores, smoothed = ours
    step = int(golden["stride"])
    got = {"map": relative(smoothed[0, ::step, ::step].numpy(), golden["evaluated_map"]),
           "score": relative(scores.numpy(), golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
