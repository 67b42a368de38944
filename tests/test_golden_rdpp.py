"""RD++ against its reference's computation with the same weights, from the raw image to the image score.

The golden values in `golden/rdpp/golden.npz` were computed by the reference code
(tientrandinh/Revisiting-Reverse-Distillation @7f2ceb7c: its test dataset reading the PNG,
its networks, `cal_anomaly_map`, scipy's `gaussian_filter` and `np.max`) after
`golden/rdpp/make_golden.py` copied into it the weights `build_ours()` gives. The test
rebuilds those weights (deterministic on CPU) and never imports the reference.

The reference resizes the image as float64 (`cv2.resize(img / 255., (256, 256))`); the
declared preprocess resizes the uint8 image with the same OpenCV call and divides after, as
every method's cache stores uint8 images. The test through the declared preprocess is marked
to fail for that reason; `test_maps_and_score_from_the_references_input` shows that nothing
else differs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.rdpp import RDPlusPlus
from golden.common import (TOLERANCE, load_golden, predict, randomise_batchnorms, raw_rgb, read_raw,
                           relative)
from threecad.method import build_config

NORM_SEED = 26  # BatchNorm statistics and affines, so that eval-mode BatchNorm is really compared


def build_ours() -> RDPlusPlus:
    """The paper preset with random weights from its seed (make_golden.py copies these into the reference)."""
    method = RDPlusPlus(build_config(RDPlusPlus, "paper", {"weights": "none"}), device="cpu", amp=False)
    randomise_batchnorms(method.net, torch.Generator().manual_seed(NORM_SEED))
    return method


@pytest.fixture(scope="module")
def golden():
    return load_golden("rdpp")


@pytest.fixture(scope="module")
def method():
    torch.set_num_threads(1)
    return build_ours()


def run(method: RDPlusPlus, image: torch.Tensor, golden: dict) -> dict[str, float]:
    """(1, 3, S, S) in [0, 1] -> relative differences of raw map, smoothed map and score."""
    raw, scores, smoothed = predict(method, image)
    step = int(golden["stride"])
    return {"raw map": relative(raw[0, ::step, ::step].numpy(), golden["raw_map"]),
            "smoothed map": relative(smoothed[0, ::step, ::step].numpy(), golden["smoothed_map"]),
            "score": relative(scores.numpy(), golden["score"])}


@pytest.mark.xfail(strict=True, reason="the reference resizes the float image (cv2.resize(img / 255.)), the declared "
                                       "preprocess the uint8 image (OpenCV's fixed-point resize, rounded): the inputs "
                                       "differ by under a grey level, the maps by more than 1e-5")
def test_maps_and_score_through_the_declared_preprocess(method, golden):
    pre = method.preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (int(golden["size"]), "cv2", "rgb", "square")
    got = run(method, read_raw(method), golden)
    assert max(got.values()) <= TOLERANCE, got


def test_maps_and_score_from_the_references_input(method, golden):
    """The reference's input as its dataset makes it (OpenCV on the float image), through ours: the
    networks, the map and the post-processing agree; so does the input pipeline up to its rounding."""
    cv2 = pytest.importorskip("cv2")
    size = int(golden["size"])
    rgb = np.asarray(raw_rgb())
    reference_input = cv2.resize(rgb / 255.0, (size, size))  # float64, as the reference's dataset
    got = run(method, torch.from_numpy(reference_input.transpose(2, 0, 1).copy()).float()[None], golden)
    assert max(got.values()) <= TOLERANCE, got
    ours = method.preprocess().image(raw_rgb()).transpose(1, 2, 0) / 255.0
    assert np.abs(ours - reference_input).max() < 1 / 255  # the declared pipeline's rounding, no more
