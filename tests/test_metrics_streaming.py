"""Streaming mode against exact mode: error within its own bound, nothing clipped, fixed memory."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from threecad.metrics import Evaluator
from threecad.metrics.streaming import StreamingPixelHistogram

KEYS = ("p_auroc", "p_ap", "p_f1max", "au_pro")


def _batches(seed, n_batches=4, n=8, size=32, kind="smooth"):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        masks = np.zeros((n, size, size), bool)
        for i in range(n):
            if rng.random() < 0.7:
                y, x = rng.integers(0, size - 6, 2)
                masks[i, y:y + rng.integers(1, 7), x:x + rng.integers(1, 7)] = True
        noise = rng.standard_normal((n, size, size))
        if kind == "smooth":
            noise = ndimage.gaussian_filter(noise, (0, 2, 2)) * 4
        maps = noise + 1.5 * masks
        if kind == "sigmoid":
            maps = 1 / (1 + np.exp(-4 * maps))
        out.append((maps.astype(np.float32), masks))
    return out


def _run(batches, **kw):
    ev = Evaluator(**kw)
    for maps, masks in batches:
        ev.update(maps, masks)
    return ev.compute()


@pytest.mark.parametrize("kind", ["smooth", "sigmoid"])
def test_streaming_error_is_small_and_within_its_bound(kind):
    batches = _batches(1, kind=kind)
    exact = _run(batches, mode="exact")
    stream = _run(batches, mode="streaming")
    for key in KEYS:
        err = abs(stream[key] - exact[key])
        assert err <= stream[f"{key}_err_bound"] + 1e-12, key
        assert err <= 1e-4, key
    for key in ("i_auroc", "i_ap", "n_regions", "n_defect_pixels"):
        assert stream[key] == exact[key]          # image level and counts are exact in both modes
    if kind == "smooth":                          # saturated sigmoids tie at 1.0: a loose bound, noted
        assert stream["notes"] == ""


def test_evenly_spaced_8bit_maps_are_exact_in_streaming():
    rng = np.random.default_rng(2)
    masks = rng.random((10, 20, 20)) < 0.05
    maps = (rng.integers(0, 200, masks.shape) + 50 * masks).clip(0, 255).astype(np.uint8) / 255.0
    exact = _run([(maps, masks)], mode="exact")
    stream = _run([(maps[:4], masks[:4]), (maps[4:], masks[4:])], mode="streaming")
    for key in KEYS + ("region_recall_size/<0.1%", "region_recall_size/>=1%"):
        assert stream[key] == pytest.approx(exact[key], abs=1e-12), key


def test_scores_far_outside_the_first_batch_are_ranked_not_clipped():
    batches = _batches(4, n_batches=2)
    maps, masks = batches[1]
    far = maps.astype(np.float64).copy()
    far[masks] = 1e6 + maps[masks]                # defects far above anything seen before
    far[~masks] = -1e3 + maps[~masks]             # normals far below
    far[0] = -5e4                                 # and a constant image lower still
    batches[1] = (far, masks)
    exact = _run(batches, mode="exact")
    stream = _run(batches, mode="streaming")
    for key in KEYS:
        assert abs(stream[key] - exact[key]) <= stream[f"{key}_err_bound"] + 1e-12, key
    # clipping the second batch into the first batch's range would tie its defects
    # and normals with the first batch's; exact and streaming agree instead
    assert stream["p_auroc"] == pytest.approx(exact["p_auroc"], abs=1e-4)


def test_float64_maps_and_negative_scores():
    batches = [(m.astype(np.float64) - 7.0, k) for m, k in _batches(6, n_batches=3)]
    exact = _run(batches, mode="exact")
    stream = _run(batches, mode="streaming")
    for key in KEYS:
        assert abs(stream[key] - exact[key]) <= stream[f"{key}_err_bound"] + 1e-12


def test_memory_stops_growing_once_the_range_is_covered():
    h = StreamingPixelHistogram(n_size=3)
    batches = _batches(7, n_batches=10, n=4)
    sizes = []
    for maps, masks in batches:
        h.add(maps, masks, None)
        sizes.append(h.state_bytes)
    assert sizes[-1] == sizes[4]
    assert sizes[-1] < 64 * 2**20


def test_explicit_anchor_and_wide_spans_use_sparse_blocks(monkeypatch):
    calls = []
    real = StreamingPixelHistogram._count_sparse
    monkeypatch.setattr(StreamingPixelHistogram, "_count_sparse",
                        lambda self, *a: (calls.append(1), real(self, *a)))
    h = StreamingPixelHistogram(n_size=1, anchor=0.0)
    h.add(np.array([[[0.5, -1.0], [1.0, 0.25]]], dtype=np.float32), np.array([[[True, False], [False, False]]]), None)
    wide = np.array([[[1e30, 1e-3], [-2.0, -1e25]]], dtype=np.float32)     # > 64 blocks apart
    h.add(wide, np.array([[[True, False], [True, False]]]), None)
    assert calls, "the wide batch should take the sparse path"
    lv = h.levels()
    assert lv.n_neg == 5 and lv.n_pos == 3
    # highest score first: 1e30 (pos), 1, 0.5 (pos), 0.25, 1e-3, -1, -2 (pos), -1e25
    assert lv.pos.tolist() == [1, 0, 1, 0, 0, 0, 1, 0]
    assert lv.neg.tolist() == [0, 1, 0, 1, 1, 1, 0, 1]


def test_sparse_block_path_with_regions_matches_exact():
    rng = np.random.default_rng(8)
    masks = rng.random((6, 12, 12)) < 0.1
    masks[:2] = False
    maps = rng.standard_normal(masks.shape) + masks
    wide = maps[3:] * 10.0 ** rng.uniform(-3, 30, maps[3:].shape)  # a later batch over 30 decades
    maps = np.concatenate([maps[:3], wide]).astype(np.float32)
    exact = _run([(maps, masks)], mode="exact")
    stream = _run([(maps[:3], masks[:3]), (maps[3:], masks[3:])], mode="streaming")
    for key in KEYS:
        assert abs(stream[key] - exact[key]) <= stream[f"{key}_err_bound"] + 1e-12, key
        assert abs(stream[key] - exact[key]) < 1e-3, key
