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

import math

import pytest
import torch

from baselines.destseg import DeSTSeg
from golden.common import TOLERANCE, input_digest, load_golden, predict, randomise_convolutions, read_raw, relative
from threecad.method import build_config

SEED = 26
STRIDE = 4  # the DeST map is kept at every 4th pixel


def build_ours() -> DeSTSeg:
    """The paper preset with weights that make the maps depend on the image (random teacher and
    student included): convolutions N(0, 2 / fan_in), norms spread around their identity values
    (fresh statistics at 0 / 1 leave a near-constant map)."""
    method = DeSTSeg(build_config(DeSTSeg, "paper", {"weights": "none"}))
    randomise_convolutions(method.net, SEED, lambda fan_in: math.sqrt(2.0 / fan_in))
    return method


@pytest.fixture(scope="module")
def ours():
    torch.set_num_threads(1)
    method = build_ours()
    x = read_raw(method)
    teacher = method.net.teacher
    out = {"input": (x - teacher.mean) / teacher.std}  # the ImageNet normalisation the teacher applies
    for source in ("segmentation", "dest"):
        method.config.map_source = source
        _, scores, maps = predict(method, x)
        out[source] = (maps[0].numpy(), float(scores[0]))
    return out


@pytest.fixture(scope="module")
def golden():
    return load_golden("destseg")


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
    map_rel, score_rel = relative(our_map, ref_map), relative(our_score, ref_score)
    assert map_rel <= TOLERANCE, f"{source} map differs from the reference: max relative difference {map_rel:.3e}"
    assert score_rel <= TOLERANCE, \
        f"{source} image score {our_score!r} vs the reference's {ref_score!r}: {score_rel:.3e}"
