"""The 3cad-paper protocol against a transcription of the official code; the breakdowns."""
from __future__ import annotations

import numpy as np
import pytest
from metrics_reference import mvtec_au_pro, official_image_pro, region_recall
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from threecad.metrics import Evaluator, paper_category_mean
from threecad.metrics.protocols import paper_image_pro


def _data(seed=0, n=12, size=24):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    types = []
    for i in range(n):
        kind = ["good", "scratch", "bump"][i % 3]
        types.append(kind)
        if kind == "good":
            continue
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 5, 2)
            h, w = rng.integers(1, 6, 2)
            masks[i, y:y + h, x:x + w] = True
    maps = rng.random(masks.shape) + masks * rng.random((n, 1, 1))
    return maps, masks, types


def test_paper_image_pro_matches_the_official_per_image_computation():
    maps, masks, _ = _data(1)
    for i in np.flatnonzero(masks.any((1, 2))):
        assert paper_image_pro(maps[i], masks[i]) == pytest.approx(official_image_pro(maps[i], masks[i]),
                                                                    abs=1e-12)
    tied = np.round(maps[1] * 4) / 4            # coarse maps: many pixels sit on thresholds
    assert paper_image_pro(tied, masks[1]) == pytest.approx(official_image_pro(tied, masks[1]), abs=1e-12)


def test_paper_pro_documented_values_where_the_official_code_fails():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    assert paper_image_pro(np.ones((8, 8)), mask) == 0.0                 # constant map
    perfect = mask.astype(float)                                         # normals never flagged
    assert paper_image_pro(perfect, mask) == 1.0
    assert paper_image_pro(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8), bool)) is None


def test_paper_protocol_evaluator():
    maps, masks, types = _data(2)
    ev = Evaluator(protocol="3cad-paper")
    ev.update(maps[:5], masks[:5], defect_types=types[:5])
    ev.update(maps[5:], masks[5:], defect_types=types[5:])
    out = ev.compute()
    labels = masks.any((1, 2))
    blurred_max = np.array([ndimage.gaussian_filter(m, sigma=4).max() for m in maps])
    assert out["i_auroc"] == round(roc_auc_score(labels, blurred_max), 3)
    assert out["p_auroc"] == round(roc_auc_score(masks.ravel(), maps.ravel()), 3)
    assert out["p_ap"] == round(average_precision_score(masks.ravel(), maps.ravel()), 3)
    pros = [official_image_pro(maps[i], masks[i]) for i in np.flatnonzero(labels)]
    assert out["au_pro"] == round(float(np.mean(pros)), 3)
    assert out["n_pro_images"] == len(pros)
    assert out["protocol"] == "3cad-paper"
    assert paper_category_mean([0.8764, 0.9]) == pytest.approx((0.876 + 0.9) / 2)


@pytest.mark.parametrize("tied", [False, True])
def test_size_breakdown_type_breakdown_and_region_recall(tied):
    maps, masks, types = _data(3, n=15, size=32)
    masks[1, 20:30, 0:12] = True                 # a large region (>= 5 % of the image)
    if tied:                                     # 9 score values: regions tie with the operating point
        maps = np.round(maps * 4) / 4
    ev = Evaluator(size_edges=(0.005, 0.05), recall_fpr=0.1)
    ev.update(maps, masks, defect_types=types)
    out = ev.compute()
    bins = {"<0.5%": lambda r: r < 0.005, "0.5-5%": lambda r: 0.005 <= r < 0.05, ">=5%": lambda r: r >= 0.05}
    assert out["au_pro"] == pytest.approx(mvtec_au_pro(maps, masks), abs=1e-9)
    total = 0
    for name, keep in bins.items():
        n = out[f"n_regions_size/{name}"]
        total += n
        if n:
            assert out[f"au_pro_size/{name}"] == pytest.approx(mvtec_au_pro(maps, masks, keep_region=keep), abs=1e-9)
            assert out[f"region_recall_size/{name}"] == pytest.approx(region_recall(maps, masks, 0.1, keep))
        else:
            assert out[f"au_pro_size/{name}"] is None and out[f"region_recall_size/{name}"] is None
    assert total == out["n_regions"] >= 10
    scores = maps.max((1, 2))
    good = np.array(types) == "good"
    for kind in ("scratch", "bump"):
        sel = good | (np.array(types) == kind)
        expect = roc_auc_score(~good[sel], scores[sel])
        assert out[f"i_auroc_type/{kind}"] == pytest.approx(expect, abs=1e-12)
        assert out[f"n_images_type/{kind}"] == int((np.array(types) == kind).sum())
    streaming = Evaluator(mode="streaming", size_edges=(0.005, 0.05), recall_fpr=0.1)
    streaming.update(maps, masks, defect_types=types)
    s_out = streaming.compute()
    for name in bins:
        if out[f"au_pro_size/{name}"] is not None:
            assert s_out[f"au_pro_size/{name}"] == pytest.approx(out[f"au_pro_size/{name}"], abs=1e-4)


def test_reset_and_compute_before_any_update():
    ev = Evaluator(mode="streaming")
    out = ev.compute()
    assert out["p_auroc"] is None and out["n_images"] == 0
    maps, masks, _ = _data(4)
    ev.update(maps, masks)
    assert ev.compute()["p_auroc"] is not None
    ev.reset()
    assert ev.compute()["n_pixels"] == 0
