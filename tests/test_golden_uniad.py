"""UniAD against its reference's computation with the same weights, from the raw image to the image score.

The golden map and score in `golden/uniad/golden.npz` were computed by the reference code
(zhiyuanyou/UniAD @a5b9d9d2, `experiments/MVTec-AD/config.yaml`: its test DataLoader reading
the PNG, `ModelHelper` in eval mode with its copy of lukemelas' EfficientNet-B4, the `dump` /
`merge_together` round trip and `EvalImageMax` with a 16 x 16 pool) after
`golden/uniad/make_golden.py` copied into it the weights `build_ours()` gives. The test
rebuilds those weights (deterministic on CPU) and never imports the reference.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from baselines.uniad import UniAD
from threecad.method import build_config

HERE = Path(__file__).parent / "golden"
RAW = HERE / "raw" / "part.png"
GOLDEN = HERE / "uniad" / "golden.npz"
NORM_SEED = 26  # BatchNorm statistics and affines, LayerNorm affines
TOLERANCE = 1e-5  # max |ours - reference| / max |reference|, float32


def randomise_norms(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affines and LayerNorm affines (identities at init), so
    that the backbone's BatchNorm eps and every norm are really compared."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=generator)
            m.bias.data = 0.1 * torch.randn(n, generator=generator)
            m.running_mean = 0.1 * torch.randn(n, generator=generator)
            m.running_var = 0.5 + torch.rand(n, generator=generator)
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=generator)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=generator)


def build_ours() -> UniAD:
    """The paper preset (224 px, efficientnet_b4_tf) with random weights from its seed
    (make_golden.py copies these into the reference)."""
    method = UniAD(build_config(UniAD, "paper", {"weights": "none"}), device="cpu", amp=False)
    randomise_norms(method.net, torch.Generator().manual_seed(NORM_SEED))
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
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (int(golden["size"]), "pil", "rgb", "square")
    image = torch.from_numpy(pre.image(Image.open(RAW).convert("RGB"))).float().div(255.0)[None]
    with torch.no_grad():
        _, raw = method.predict(image)
    scores, smoothed = method.postprocess().apply(raw, None)
    got = {"map": relative(smoothed[0].numpy(), golden["map"]), "score": relative(scores.numpy(), golden["score"])}
    assert max(got.values()) <= TOLERANCE, got
    assert torch.equal(raw, smoothed)  # no smoothing, as the reference
