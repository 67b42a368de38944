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

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.crad import CRAD
from threecad.method import build_config

HERE = Path(__file__).parent / "golden"
RAW = HERE / "raw" / "part.png"
GOLDEN = HERE / "crad" / "golden.npz"
NORM_SEED = 26  # BatchNorm statistics and affines
TOLERANCE = 1e-5  # max |ours - reference| / max |reference|, float32


def randomise_batchnorm(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affines (backbone and bottlenecks), so that the
    backbone's BatchNorm eps and every BatchNorm are really compared."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=generator)
            m.bias.data = 0.1 * torch.randn(n, generator=generator)
            m.running_mean = 0.1 * torch.randn(n, generator=generator)
            m.running_var = 0.5 + torch.rand(n, generator=generator)


def build_ours() -> CRAD:
    """The paper preset (224 px, efficientnet_b4_tf) with random weights from its seed
    (make_golden.py copies these into the reference)."""
    method = CRAD(build_config(CRAD, "paper", {"weights": "none"}), device="cpu", amp=False)
    randomise_batchnorm(method.net, torch.Generator().manual_seed(NORM_SEED))
    return method


def load_golden() -> dict:
    """The golden values, checked to belong to the committed raw image."""
    golden = dict(np.load(GOLDEN))
    assert hashlib.sha256(RAW.read_bytes()).hexdigest() == str(golden["raw_sha256"]), \
        f"{RAW.name} is not the image {GOLDEN} was made from: rerun its make_golden.py"
    return golden


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def golden():
    return load_golden()


@pytest.fixture(scope="module")
def ours(golden):
    """Our method and its raw map (1, 224, 224) of the raw image through the declared preprocess."""
    torch.set_num_threads(1)
    method = build_ours()
    pre = method.preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (int(golden["size"]), "pil", "rgb", "square")
    image = torch.from_numpy(pre.image(Image.open(RAW).convert("RGB"))).float().div(255.0)[None]
    with torch.no_grad():
        return method, method.predict(image)[1]


def test_raw_map_through_the_declared_preprocess(ours, golden):
    """The model's map (the reference's `pred`): input pipeline, backbone, memory, blend, upsampling."""
    _, raw = ours
    assert relative(raw[0].numpy(), golden["raw_map"]) <= TOLERANCE


def test_evaluated_map_and_score_through_the_declared_postprocess(ours, golden):
    """The reference's evaluation averages each map over 21 x 21 (EvalDataMeta) before the pixel
    metric and the 32 x 32 image-score pool: the declared post-processing does the same."""
    method, raw = ours
    scores, smoothed = method.postprocess().apply(raw, None)
    step = int(golden["stride"])
    got = {"map": relative(smoothed[0, ::step, ::step].numpy(), golden["evaluated_map"]),
           "score": relative(scores.numpy(), golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
