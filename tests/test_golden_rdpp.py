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

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.rdpp import RDPlusPlus
from threecad.method import build_config

HERE = Path(__file__).parent / "golden"
RAW = HERE / "raw" / "part.png"
GOLDEN = HERE / "rdpp" / "golden.npz"
NORM_SEED = 26  # BatchNorm statistics and affines
TOLERANCE = 1e-5  # max |ours - reference| / max |reference|, float32


def randomise_batchnorm(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affines, so that eval-mode BatchNorm is really compared."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=generator)
            m.bias.data = 0.1 * torch.randn(n, generator=generator)
            m.running_mean = 0.1 * torch.randn(n, generator=generator)
            m.running_var = 0.5 + torch.rand(n, generator=generator)


def build_ours() -> RDPlusPlus:
    """The paper preset with random weights from its seed (make_golden.py copies these into the reference)."""
    method = RDPlusPlus(build_config(RDPlusPlus, "paper", {"weights": "none"}), device="cpu", amp=False)
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
def method():
    torch.set_num_threads(1)
    return build_ours()


def run(method: RDPlusPlus, image: torch.Tensor, golden: dict) -> dict[str, float]:
    """(1, 3, S, S) in [0, 1] -> relative differences of raw map, smoothed map and score."""
    with torch.no_grad():
        _, raw = method.predict(image)
    scores, smoothed = method.postprocess().apply(raw, None)
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
    image = pre.image(Image.open(RAW).convert("RGB"))
    got = run(method, torch.from_numpy(image).float().div(255.0)[None], golden)
    assert max(got.values()) <= TOLERANCE, got


def test_maps_and_score_from_the_references_input(method, golden):
    """The reference's input as its dataset makes it (OpenCV on the float image), through ours: the
    networks, the map and the post-processing agree; so does the input pipeline up to its rounding."""
    cv2 = pytest.importorskip("cv2")
    size = int(golden["size"])
    rgb = np.asarray(Image.open(RAW).convert("RGB"))
    reference_input = cv2.resize(rgb / 255.0, (size, size))  # float64, as the reference's dataset
    got = run(method, torch.from_numpy(reference_input.transpose(2, 0, 1).copy()).float()[None], golden)
    assert max(got.values()) <= TOLERANCE, got
    ours = method.preprocess().image(Image.open(RAW).convert("RGB")).transpose(1, 2, 0) / 255.0
    assert np.abs(ours - reference_input).max() < 1 / 255  # the declared pipeline's rounding, no more
