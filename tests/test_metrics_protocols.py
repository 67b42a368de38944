"""The 3cad-paper protocol against a transcription of the official release's loop; the breakdowns.

The Evaluator is fed RAW maps under 3cad-paper and must return the release's doubles (before
its round(x, 3)) and therefore its rounded numbers, on ties, tiny defects, several regions
per image and good images.  THREECAD_RELEASE_CASES sets how many random cases the main test
draws (default 48; 200 were checked when the protocol was written).
"""
from __future__ import annotations

import os
import statistics
import warnings

import numpy as np
import pytest
from metrics_reference import mvtec_au_pro, region_recall
from release_eval import release_compute_pro, release_evaluate
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from threecad.metrics import Evaluator, paper_category_mean
from threecad.metrics.protocols import _exact_mean, paper_image_pro

KEYS = ("p_auroc", "i_auroc", "au_pro", "p_ap")
N_CASES = int(os.environ.get("THREECAD_RELEASE_CASES", "48"))


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small raw maps: ties, 1-3 pixel defects, several regions per image, good images."""
    rng = np.random.default_rng(seed)
    n_def, n_good = int(rng.integers(2, 9)), int(rng.integers(2, 11))
    h, w = int(rng.integers(12, 21)), int(rng.integers(12, 21))
    n = n_def + n_good
    masks = np.zeros((n, h, w), bool)
    for i in range(n_def):
        for _ in range(int(rng.integers(1, 5))):
            if rng.random() < 0.5:                       # tiny: 1 to 3 pixels
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                masks[i, y, x] = True
                for _ in range(int(rng.integers(0, 3))):
                    y, x = min(h - 1, y + int(rng.integers(0, 2))), min(w - 1, x + int(rng.integers(0, 2)))
                    masks[i, y, x] = True
            else:
                y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
                masks[i, y:y + rng.integers(1, 7), x:x + rng.integers(1, 7)] = True
    kind = seed % 4
    if kind == 0:      # continuous float32, defects brighter
        maps = rng.random((n, h, w)).astype(np.float32) + masks * rng.random((n, 1, 1)).astype(np.float32)
    elif kind == 1:    # quantised to quarters: ties before the blur
        maps = (np.round(rng.random((n, h, w)) * 3 + masks * 1.5) / 4).astype(np.float32)
    elif kind == 2:    # sparse hot pixels on zero: exact ties after the blur too
        maps = ((rng.random((n, h, w)) < 0.05) + masks * (rng.random((n, h, w)) < 0.6)).astype(np.float32)
    else:              # float64, one good image duplicated: tied image scores
        maps = rng.standard_normal((n, h, w)) + 2.0 * masks
        maps[n_def + 1] = maps[n_def]
    order = rng.permutation(n)
    maps, masks = maps[order], masks[order]
    # the release crashes on these (constant map: zero arange step; all-defect mask: assertion)
    keep = [i for i in range(n) if not (masks[i].any() and (masks[i].all() or np.ptp(maps[i]) == 0))]
    return maps[keep], masks[keep]


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


def _evaluate(maps, masks, batch=5, mode="exact"):
    ev = Evaluator(protocol="3cad-paper", mode=mode)
    for start in range(0, len(maps), batch):
        ev.update(maps[start:start + batch], masks[start:start + batch])
    return ev.compute(unrounded=True), ev.compute()


def test_paper_evaluator_equals_the_release_loop_before_and_after_rounding():
    worst = {k: 0.0 for k in KEYS}
    mismatched = {k: 0 for k in KEYS}
    for seed in range(N_CASES):
        maps, masks = random_case(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = release_evaluate(maps, masks)
        raw, rounded = _evaluate(maps, masks)
        for k in KEYS:
            worst[k] = max(worst[k], abs(raw[k] - float(ref["raw"][k])))
            mismatched[k] += rounded[k] != ref["rounded"][k]
    assert max(worst.values()) <= 1e-9, worst
    assert mismatched == {k: 0 for k in KEYS}
    assert worst == {k: 0.0 for k in KEYS}            # the same doubles, not merely close ones


def test_image_auroc_on_rounding_ties_is_rounded_as_the_release_rounds():
    """Few images: I-AUROC is a fraction such as 57/80 = 0.7125, where one ulp decides."""
    rng = np.random.default_rng(11)
    ties = mismatched = 0
    for _ in range(40):
        n_def, n_good = [(8, 10), (10, 8), (4, 20), (16, 5)][rng.integers(0, 4)]   # 80 pairs
        n = n_def + n_good
        masks = np.zeros((n, 6, 6), bool)
        masks[:n_def, 2, 2:4] = True
        maps = rng.random((n, 6, 6)) * 0.3
        maps[:, 2, 3] += rng.random(n)                 # one hot pixel a map sets the image score
        blurred_max = np.array([gaussian_filter(m, sigma=4).max() for m in maps])
        expect = roc_auc_score(masks.any((1, 2)).astype(int), blurred_max)
        ties += abs(expect * 1000 % 1 - 0.5) < 1e-9
        mismatched += _evaluate(maps, masks)[1]["i_auroc"] != round(expect, 3)
    assert ties >= 10 and mismatched == 0


def test_exact_mean_equals_statistics_mean():
    rng = np.random.default_rng(2)
    for n in range(1, 7):
        areas = rng.integers(1, 5000, n)
        tp = (rng.random((n, 64)) * (areas[:, None] + 1)).astype(np.int64)
        pro = np.minimum(tp, areas[:, None]) / areas[:, None]
        pro[:, 0], pro[:, 1], pro[:, 2] = 0.0, 1.0, 2.0 ** -40 * rng.random(n)   # zeros, ones, tiny
        got = _exact_mean(pro)
        want = [statistics.mean(col) for col in pro.T]
        assert got.tolist() == want


def test_paper_image_pro_equals_the_release_compute_pro_and_documented_failures():
    maps, masks = random_case(3)
    for i in np.flatnonzero(masks.any((1, 2))):
        b = gaussian_filter(np.asarray(maps[i], np.float64), sigma=4)
        assert paper_image_pro(b, masks[i]) == release_compute_pro(masks[i][None].astype(int), b[None])
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    assert paper_image_pro(np.ones((8, 8)), mask) == 0.0        # constant map (release: crash)
    assert paper_image_pro(mask.astype(float), mask) == 1.0     # normals never flagged (release: NaN)
    assert paper_image_pro(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8), bool)) is None


def test_paper_streaming_within_its_bounds_and_exact_where_it_can_be():
    for seed in (0, 1, 2, 3):
        maps, masks = random_case(seed)
        exact, _ = _evaluate(maps, masks)
        stream, _ = _evaluate(maps, masks, mode="streaming")
        for k in ("p_auroc", "p_ap"):
            assert abs(stream[k] - exact[k]) <= stream[f"{k}_err_bound"] + 1e-12
        assert stream["i_auroc"] == exact["i_auroc"] and stream["au_pro"] == exact["au_pro"]
        assert stream["n_pro_images"] == exact["n_pro_images"] == int(masks.any((1, 2)).sum())


def test_paper_breakdowns_come_from_the_blurred_maps_and_scores_are_ignored():
    maps, masks = random_case(5)
    types = ["good" if not m.any() else ("scratch", "bump")[i % 2] for i, m in enumerate(masks)]
    blurred = np.stack([gaussian_filter(np.asarray(m, np.float64), sigma=4) for m in maps])
    paper = Evaluator(protocol="3cad-paper")
    paper.update(maps, masks, scores=np.zeros(len(maps)), defect_types=types)   # scores ignored
    out = paper.compute(unrounded=True)
    std = Evaluator(protocol="standard")
    std.update(blurred, masks, defect_types=types)
    ref = std.compute()
    same = [k for k in ref if "/" in k]
    assert len(same) >= 9 and all(out[k] == ref[k] for k in same)
    assert ref["i_auroc"] == pytest.approx(out["i_auroc"], abs=1e-12)
    assert out["au_pro_size/<0.1%"] is None or out["au_pro_size/<0.1%"] == pytest.approx(
        mvtec_au_pro(blurred, masks, keep_region=lambda r: r < 0.001), abs=1e-9)
    assert out["region_recall_size/>=1%"] == pytest.approx(
        region_recall(blurred, masks, 0.01, lambda r: r >= 0.01))
    assert out["n_pro_images"] == sum(t != "good" for t in types)


def test_paper_category_mean_rounds_each_value_first():
    assert paper_category_mean([0.8764, 0.9]) == pytest.approx((0.876 + 0.9) / 2)
    out = _evaluate(*random_case(6))[1]
    assert out["protocol"] == "3cad-paper" and all(round(out[k], 3) == out[k] for k in KEYS)


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
