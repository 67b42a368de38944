"""DRAEM against its reference (VitjanZ/DRAEM) on the same weights, from raw PNG to image score.

tests/golden/draem/make_golden.py built our paper preset from SEED with the weights below,
copied them into the reference's own networks, read tests/golden/raw/part.png with the
reference's test loader (OpenCV, BGR, 256 px) and stored what the reference's test script
computes: the digest of the network input, the map (softmax channel 1, not smoothed) and the
image score (max of the map mean-pooled over 21 x 21). Here the PNG goes through our declared
preprocess, `predict` and the declared postprocess, in float32 as the harness runs them.
"""
from __future__ import annotations

import math

import pytest
import torch

from baselines.draem import DRAEM
from golden.common import TOLERANCE, input_digest, load_golden, predict, randomise_convolutions, read_raw, relative
from threecad.method import build_config

SEED = 26


def build_ours() -> DRAEM:
    """The paper preset with weights that make the map depend on the image: the reference's
    N(0, 0.02) init with fresh BatchNorm statistics leaves a near-constant map that would hide a
    wrong input. Convolutions N(0, 1.44 / fan_in) (a larger gain saturates the softmax), norms
    spread around their identity values."""
    method = DRAEM(build_config(DRAEM, "paper"))
    randomise_convolutions(method.net, SEED, lambda fan_in: 1.2 / math.sqrt(fan_in))
    return method


@pytest.fixture(scope="module")
def ours():
    torch.set_num_threads(1)
    method = build_ours()
    x = read_raw(method)
    _, scores, smoothed = predict(method, x)
    return {"input": x, "map": smoothed[0].numpy(), "score": float(scores[0])}


@pytest.fixture(scope="module")
def golden():
    return load_golden("draem")


def test_declared_preprocess_gives_the_reference_loaders_input_bit_for_bit(ours, golden):
    assert tuple(ours["input"].shape[-2:]) == tuple(golden["input_size"])
    assert input_digest(ours["input"]) == str(golden["input_sha256"])


def test_map_and_image_score_equal_the_reference_to_1e5_relative(ours, golden):
    ref_map, ref_score = golden["map"], float(golden["score"])
    assert ours["map"].shape == ref_map.shape
    map_rel, score_rel = relative(ours["map"], ref_map), relative(ours["score"], ref_score)
    assert map_rel <= TOLERANCE, f"map differs from the reference: max relative difference {map_rel:.3e}"
    assert score_rel <= TOLERANCE, f"image score {ours['score']!r} vs the reference's {ref_score!r}: {score_rel:.3e}"
