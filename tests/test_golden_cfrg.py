"""CFRG against the official 3CAD release (EnquanYang2022/3CAD) on the same weights, from raw PNG to image score.

tests/golden/cfrg/make_golden.py built `build_ours()`, copied every tensor into the release's
own `cfrg_net` (teacher `wide_resnet50_2`, `BN_layer` + `de_wide_resnet50_2` recovery branch,
lukemelas EfficientNet-B0 student with its three `Adapter`s, segmentation `UNet`), read
tests/golden/raw/part.png with the release's `Data_3CAD` test set (PIL, `Resize([256, 256])`,
`ToTensor`, ImageNet normalisation) through a batch-1 DataLoader, and stored what its test.py
computes: the digest of the network input, `cal_anomaly_map(..., amap_mode='a')` (sum over
scales of 1 - cos(T, R) plus the segmentation's sigmoid), scipy's `gaussian_filter(sigma=4)`
of it and `np.max`. Here the PNG goes through our declared preprocess, `predict` and the
declared postprocess; the reference is never imported.

Precision: the paper preset's `amp` is the training's (the release's --amp); `predict` runs
float32 on every device, as the release's test.py, which has no autocast.
"""
from __future__ import annotations

import pytest
import torch

from cfrg.method import CFRG
from golden.common import (TOLERANCE, input_digest, load_golden, predict, randomise_batchnorms, read_raw,
                           relative)
from threecad.method import build_config

NORM_SEED = 26  # BatchNorm statistics and affines, so that eval-mode BatchNorm is really compared


def build_ours() -> CFRG:
    """The paper preset with a random teacher (torchvision's init), the student, adapters,
    recovery branch and U-Net as the preset initialises them, and every BatchNorm spread around
    its identity (make_golden.py copies these weights into the release's network)."""
    method = CFRG(build_config(CFRG, "paper", {"weights": "none"}))
    randomise_batchnorms(method.net, torch.Generator().manual_seed(NORM_SEED))
    return method


@pytest.fixture(scope="module")
def golden():
    return load_golden("cfrg")


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
    net = ours["method"].net  # the release feeds one normalised tensor to teacher and student alike
    student = net.trainable["student"]
    assert torch.equal(student.mean, net.teacher.mean) and torch.equal(student.std, net.teacher.std)
    assert input_digest(ours["normalised"]) == str(golden["input_sha256"])


def test_maps_and_image_score_equal_the_reference_to_1e5_relative(ours, golden):
    step = int(golden["stride"])
    assert ours["raw"].shape == tuple(golden["map_shape"])
    got = {"raw map": relative(ours["raw"][::step, ::step], golden["raw_map"]),
           "smoothed map": relative(ours["smoothed"][::step, ::step], golden["smoothed_map"]),
           "score": relative(ours["score"], golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
