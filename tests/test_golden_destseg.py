"""DeSTSeg against its reference (apple/ml-destseg) on the same weights, from raw PNG to image score.

tests/golden/destseg/make_golden.py built our paper preset (ResNet-18 teacher with random
weights, `weights=none`) from SEED with the weights below, copied them into the reference's
own DeSTSeg, read tests/golden/raw/part.png with the reference's test dataset (PIL bilinear
to 256 x 256, ImageNet normalisation) and stored what its eval.py computes: the digest of the
network input, the raw 64 x 64 maps, the maps upsampled to 256 x 256 and the image scores
(mean of the top 100 pixels), for the segmentation map and the DeST map (`map_source=dest`;
of its upsampled map every 4th pixel, to keep the fixture small). Here the PNG goes through
our declared preprocess, `predict` and the declared postprocess, in float32 as the harness runs them.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from baselines.destseg import DeSTSeg
from threecad.dataset import load_sample
from threecad.method import build_config

GOLDEN_DIR = Path(__file__).parent / "golden"
RAW = GOLDEN_DIR / "raw" / "part.png"
GOLDEN = GOLDEN_DIR / "destseg" / "golden.npz"
SEED = 26
RTOL = 1e-5  # float32: the two codes order their convolutions' sums differently
STRIDE = 4  # the DeST map is kept at every 4th pixel


def seeded_weights_(net: nn.Module, seed: int) -> None:
    """Weights that make the maps depend on the image (random teacher and student included):
    convolutions N(0, 2 / fan_in), BatchNorm affines and running statistics spread around
    their identity values (fresh statistics at 0 / 1 leave a near-constant map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def build_ours() -> DeSTSeg:
    method = DeSTSeg(build_config(DeSTSeg, "paper", {"weights": "none"}))
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


def relative(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def ours():
    torch.set_num_threads(1)
    method = build_ours()
    x = read_input(method)
    teacher = method.net.teacher
    out = {"input": (x - teacher.mean) / teacher.std}  # the ImageNet normalisation the teacher applies
    post = method.postprocess()
    with torch.inference_mode():
        for source in ("segmentation", "dest"):
            method.config.map_source = source
            scores, maps = post.apply(method.predict(x)[1], None)
            out[source] = (maps[0].numpy(), float(scores[0]))
    return out


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def test_declared_preprocess_gives_the_reference_datasets_input_bit_for_bit(ours, golden):
    assert tuple(ours["input"].shape[-2:]) == tuple(golden["input_size"])
    assert input_digest(ours["input"]) == str(golden["input_sha256"])


@pytest.mark.parametrize("source", ["segmentation", "dest"])
def test_map_and_image_score_equal_the_reference_to_1e5_relative(ours, golden, source):
    our_map, our_score = ours[source]
    if source == "segmentation":
        ref_map = golden["seg_map"]
    else:
        our_map, ref_map = our_map[::STRIDE, ::STRIDE], golden["dest_map_strided"]
    ref_score = float(golden[f"{source}_score"])
    assert our_map.shape == ref_map.shape
    map_rel, score_rel = relative(our_map, ref_map), abs(our_score - ref_score) / abs(ref_score)
    assert map_rel <= RTOL, f"{source} map differs from the reference: max relative difference {map_rel:.3e}"
    assert score_rel <= RTOL, f"{source} image score {our_score!r} vs the reference's {ref_score!r}: {score_rel:.3e}"
