"""PaDiM on tiny data: shapes, dark-square defects found, Gaussians and Mahalanobis distances
against numpy, raw maps and the declared
post-processing, checkpoint round trip, the model card's counts."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from baselines.padim import PaDiM
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("padim"), categories=("Copper_Stator",),
                             n_train=10, n_good=4, n_defect=4, seed=1)


def _loader(root: Path, split: str, batch_size: int) -> DataLoader:
    return DataLoader(ThreeCAD(root, "CS", split, image_size=SIZE, cache=False), batch_size=batch_size)


@pytest.fixture(scope="module")
def fitted(tiny) -> PaDiM:
    # three strides as the paper (the deeper maps are upsampled to the stride-4 grid)
    method = PaDiM(build_config(PaDiM, "cpu", {"image_size": str(SIZE), "n_features": "24", "strides": "4,8,16"}))
    method.fit(_loader(tiny, "train", batch_size=3))  # 3 + 3 + 3 + 1: the running sums span batches
    return method


def test_fit_predict_shapes_and_defects_score_higher(fitted, tiny):
    batch = next(iter(_loader(tiny, "test", 100)))
    with torch.inference_mode():
        none, raw = fitted.predict(batch["image"])
    assert none is None  # the harness scores by the max of the smoothed map
    scores, maps = fitted.postprocess().apply(raw)
    n = len(batch["label"])
    assert scores.shape == (n,) and maps.shape == (n, SIZE, SIZE)
    assert torch.equal(scores, maps.flatten(1).amax(1))
    from scipy.ndimage import gaussian_filter  # the reference's smoothing, border `reflect`
    np.testing.assert_allclose(maps[0].numpy(), gaussian_filter(raw[0].numpy(), sigma=fitted.config.sigma),
                               rtol=1e-5, atol=1e-5 * float(raw[0].abs().max()))
    labels = batch["label"].numpy()
    assert roc_auc_score(labels, scores.numpy()) == 1.0
    masks = batch["mask"][:, 0].bool()
    d = labels == 1
    assert maps[d][masks[d]].mean() > 1.5 * maps[d][~masks[d]].mean()


def test_gaussians_and_distances_match_numpy(fitted, tiny):
    train = torch.cat([b["image"] for b in _loader(tiny, "train", 100)])
    with torch.inference_mode():
        emb = fitted.embed(train).numpy().astype(np.float64)  # (N, d, h, w)
    n, d, h, w = emb.shape
    assert d == 24 and fitted.mean.shape == (h * w, d)
    x = emb.transpose(2, 3, 0, 1).reshape(h * w, n, d)
    for pos in (0, 37, h * w - 1):
        np.testing.assert_allclose(fitted.mean[pos].numpy(), x[pos].mean(0), rtol=1e-4, atol=1e-5)
        cov = np.cov(x[pos], rowvar=False) + 0.01 * np.eye(d)
        np.testing.assert_allclose(fitted.precision[pos].numpy() @ cov, np.eye(d), atol=2e-3)
    # the raw map is the upsampled Mahalanobis distance
    test = next(iter(_loader(tiny, "test", 100)))["image"][:3]
    with torch.inference_mode():
        _, maps = fitted.predict(test)
        e = fitted.embed(test).numpy().astype(np.float64)
    dist = np.zeros((3, h, w))
    for i in range(3):
        for pos in range(h * w):
            r, c = divmod(pos, w)
            delta = e[i, :, r, c] - x[pos].mean(0)
            cov = np.cov(x[pos], rowvar=False) + 0.01 * np.eye(d)
            dist[i, r, c] = np.sqrt(delta @ np.linalg.solve(cov, delta))
    expected = F.interpolate(torch.from_numpy(dist)[:, None], size=(SIZE, SIZE), mode="bilinear",
                             align_corners=False)[:, 0]
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=2e-3, atol=2e-3)


def test_state_dict_round_trip_gives_identical_maps(fitted, tiny):
    buf = io.BytesIO()
    torch.save(fitted.state_dict(), buf)
    buf.seek(0)
    fresh = PaDiM(fitted.config)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    images = next(iter(_loader(tiny, "test", 100)))["image"]
    with torch.inference_mode():
        _, m1 = fitted.predict(images)
        _, m2 = fresh.predict(images)
    assert torch.equal(m1, m2)


def test_model_card_counts_the_backbone_part_the_paper_preset_runs():
    card = model_card(PaDiM, "paper")
    assert card["parts"] == {"backbone wide_resnet50_2 (used: conv1..layer3)": {"trainable": 0, "frozen": 24_862_528}}
    assert [(t["layer"], t["channels"]) for t in card["taps"]] == [("layer1", 256), ("layer2", 512), ("layer3", 1024)]
    assert card["feature_dim"].startswith("550 of 1792")
    assert card["postprocess"] == {"sigma": 4.0, "mode": "reflect", "score": "max"}
    assert model_card(PaDiM, "cpu")["config"]["backbone"] == "efficientnet_lite0"


def test_channel_subset_by_seed_and_bad_sizes():
    config = build_config(PaDiM, "cpu", {"image_size": str(SIZE), "weights": "none", "n_features": "30"})
    a, b = PaDiM(config), PaDiM(config)
    assert torch.equal(a.channel_index, b.channel_index) and len(a.channel_index) == 30
    other = PaDiM(build_config(PaDiM, "cpu", {"weights": "none", "n_features": "30", "seed": "1"}))
    assert not torch.equal(a.channel_index, other.channel_index)
    with pytest.raises(ThreecadError, match="n_features"):
        PaDiM(build_config(PaDiM, "cpu", {"weights": "none", "n_features": "100000"}))

