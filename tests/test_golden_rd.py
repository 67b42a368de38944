"""Reverse Distillation against its reference (hq-deng/RD4AD) on the same weights, from raw PNG to image score.

tests/golden/rd/make_golden.py built `build_ours()`, copied every tensor into the reference's
own networks (`wide_resnet50_2`, `BN_layer`, `de_wide_resnet50_2`), read tests/golden/raw/part.png
with the reference's `MVTecDataset` (PIL, `Resize((256, 256))`, `ToTensor`, ImageNet
normalisation) through a batch-1 DataLoader, and stored what its `evaluation` computes: the
digest of the network input, `cal_anomaly_map(..., amap_mode='a')`, scipy's
`gaussian_filter(sigma=4)` of it and `np.max`. Here the PNG goes through our declared
preprocess, `predict` and the declared postprocess, in float32; the reference is never imported.
"""
from __future__ import annotations

import pytest
import torch

from baselines.reverse_distillation import ReverseDistillation
from golden.common import (TOLERANCE, input_digest, load_golden, predict, randomise_batchnorms, read_raw,
                           relative)
from threecad.method import build_config

NORM_SEED = 26  # BatchNorm statistics and affines, so that eval-mode BatchNorm is really compared


def build_ours() -> ReverseDistillation:
    """The paper preset with a random teacher (torchvision's init) and every BatchNorm spread
    around its identity (make_golden.py copies these weights into the reference)."""
    method = ReverseDistillation(build_config(ReverseDistillation, "paper", {"weights": "none"}))
    randomise_batchnorms(method.net, torch.Generator().manual_seed(NORM_SEED))
    return method


@pytest.fixture(scope="module")
def golden():
    return load_golden("rd")


@pytest.fixture(scope="module")
def ours():
    torch.set_num_threads(1)
    method = build_ours()
    x = read_raw(method)
    raw, scores, smoothed = predict(method, x)
    teacher = method.net.teacher
    return {"method": method, "normalised": (x - teacher.mean) / teacher.std,
            "raw": raw[0].numpy(), "smoothed": smoothed[0].numpy(), "score": float(scores[0])}


def test_declared_preprocess_gives_the_reference_loaders_input_bit_for_bit(ours, golden):
    pre = ours["method"].preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (int(golden["size"]), "pil", "rgb", "square")
    assert input_digest(ours["normalised"]) == str(golden["input_sha256"])


def test_maps_and_image_score_equal_the_reference_to_1e5_relative(ours, golden):
    step = int(golden["stride"])
    assert ours["raw"].shape == tuple(golden["map_shape"])
    got = {"raw map": relative(ours["raw"][::step, ::step], golden["raw_map"]),
           "smoothed map": relative(ours["smoothed"][::step, ::step], golden["smoothed_map"]),
           "score": relative(ours["score"], golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
