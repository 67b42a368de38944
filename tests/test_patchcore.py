"""PatchCore on tiny data: shapes, dark-square defects found, checkpoint round trip, and the
coreset / nearest-neighbour / reweighting maths against direct computations."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from baselines.patchcore import PatchCore, greedy_coreset, nearest_neighbors
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config

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


def test_image_score_reweighting_follows_the_paper():
    g = torch.Generator().manual_seed(4)
    method = PatchCore.__new__(PatchCore)  # maths only: no backbone needed
    method.config = build_config(PatchCore, "paper", {"num_neighbors": "3"})
    method.memory_bank = torch.randn(30, 5, generator=g)
    patches = torch.randn(2, 6, 5, generator=g)
    full = torch.cdist(patches.double(), method.memory_bank.double())  # (2, 6, 30)
    patch_scores, nn_idx = full.min(-1)
    scores = method._image_scores(patches, patch_scores.float(), nn_idx)
    for n in range(2):
        p = int(patch_scores[n].argmax())
        s_star = float(patch_scores[n, p])
        m_star = method.memory_bank[nn_idx[n, p]].double()
        neigh = torch.cdist(m_star[None], method.memory_bank.double())[0].topk(3, largest=False).indices
        dists = full[n, p, neigh]
        expected = (1 - np.exp(s_star) / float(torch.exp(dists).sum())) * s_star
        assert float(scores[n]) == pytest.approx(expected, rel=1e-4)
