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

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from baselines.fastflow import FastFlow
from threecad.method import build_config

HERE = Path(__file__).parent / "golden"
RAW = HERE / "raw" / "part.png"
GOLDEN = HERE / "fastflow" / "golden.npz"
IMAGE_SIZE = 128  # the reference's `input_size`, smaller than the preset's 256 to keep the fixture small
NORM_SEED = 26  # BatchNorm statistics, LayerNorm affines, the flows' global affines
TOLERANCE = 1e-5  # max |ours - reference| / max |reference|, float32


def randomise_norms(method: FastFlow, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics, LayerNorm affines and global affines of the flows, so that
    every one of them is really compared (at init they are identities)."""
    for m in method.net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=generator)
            m.bias.data = 0.1 * torch.randn(n, generator=generator)
            m.running_mean = 0.1 * torch.randn(n, generator=generator)
            m.running_var = 0.5 + torch.rand(n, generator=generator)
    for norm in method.net.trainable["norms"]:
        norm.weight.data = 0.5 + torch.rand(norm.weight.shape, generator=generator)
        norm.bias.data = 0.1 * torch.randn(norm.bias.shape, generator=generator)
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


def load_golden() -> dict:
    """The golden values, checked to belong to the committed raw image."""
    golden = dict(np.load(GOLDEN))
    assert hashlib.sha256(RAW.read_bytes()).hexdigest() == str(golden["raw_sha256"]), \
        f"{RAW.name} is not the image {GOLDEN} was made from: rerun its make_golden.py"
    return golden


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - reference).max() / np.abs(reference).max())


def test_map_and_score_through_the_declared_preprocess():
    torch.set_num_threads(1)
    golden = load_golden()
    method = build_ours()
    pre = method.preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (IMAGE_SIZE, "pil", "rgb", "square")
    image = torch.from_numpy(pre.image(Image.open(RAW).convert("RGB"))).float().div(255.0)[None]
    with torch.no_grad():
        _, raw = method.predict(image)
    scores, smoothed = method.postprocess().apply(raw, None)
    got = {"map": relative(smoothed[0].numpy(), golden["map"]), "score": relative(scores.numpy(), golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
    assert torch.equal(raw, smoothed)  # no smoothing, as the reference
