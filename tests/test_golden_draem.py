"""DRAEM against its reference (VitjanZ/DRAEM) on the same weights, from raw PNG to image score.

tests/golden/draem/make_golden.py built our paper preset from SEED with the weights below,
copied them into the reference's own networks, read tests/golden/raw/part.png with the
reference's test loader (OpenCV, BGR, 256 px) and stored what the reference's test script
computes: the digest of the network input, the map (softmax channel 1, not smoothed) and the
image score (max of the map mean-pooled over 21 x 21). Here the PNG goes through our declared
preprocess, `predict` and the declared postprocess, in float32 as the harness runs them.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from baselines.draem import DRAEM
from threecad.dataset import load_sample
from threecad.method import build_config

GOLDEN_DIR = Path(__file__).parent / "golden"
RAW = GOLDEN_DIR / "raw" / "part.png"
GOLDEN = GOLDEN_DIR / "draem" / "golden.npz"
SEED = 26
RTOL = 1e-5  # float32: the two codes order their convolutions' sums differently


def seeded_weights_(net: nn.Module, seed: int) -> None:
    """Weights that make the map depend on the image: the reference's N(0, 0.02) init with
    fresh BatchNorm statistics leaves a near-constant map that would hide a wrong input.
    Convolutions N(0, 1.44 / fan_in) (a larger gain saturates the softmax), BatchNorm
    affines and running statistics spread around their identity values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.2 / math.sqrt(m.weight[0].numel())))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def build_ours() -> DRAEM:
    method = DRAEM(build_config(DRAEM, "paper"))
    seeded_weights_(method.net, SEED)
    return method


def read_input(method) -> torch.Tensor:
    """The raw PNG as the dataset gives it to the method: declared preprocess, then [0, 1]."""
    pre = method.preprocess()
    s = pre.size
    sample = load_sample(str(RAW), None, pre)
    return torch.from_numpy(sample[:3 * s * s].reshape(3, s, s)).float().div_(255.0)[None]


def input_digest(x: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(x.numpy(), dtype=np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def ours():
    torch.set_num_threads(1)
    method = build_ours()
    x = read_input(method)
    with torch.inference_mode():
        _, maps = method.predict(x)
        scores, smoothed = method.postprocess().apply(maps.float(), None)
    return {"input": x, "map": smoothed[0].numpy(), "score": float(scores[0])}


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def test_declared_preprocess_gives_the_reference_loaders_input_bit_for_bit(ours, golden):
    assert tuple(ours["input"].shape[-2:]) == tuple(golden["input_size"])
    assert input_digest(ours["input"]) == str(golden["input_sha256"])


def test_map_and_image_score_equal_the_reference_to_1e5_relative(ours, golden):
    ref_map, ref_score = golden["map"], float(golden["score"])
    assert ours["map"].shape == ref_map.shape
    map_rel = np.abs(ours["map"].astype(np.float64) - ref_map).max() / np.abs(ref_map).max()
    score_rel = abs(ours["score"] - ref_score) / abs(ref_score)
    assert map_rel <= RTOL, f"map differs from the reference: max relative difference {map_rel:.3e}"
    assert score_rel <= RTOL, f"image score {ours['score']!r} vs the reference's {ref_score!r}: {score_rel:.3e}"
