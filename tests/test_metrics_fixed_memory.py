"""Exact metrics in bounded memory equal exact mode in memory, to the last bit, within the budget.

The reference is the Evaluator with memory=None (every pixel score kept, one ordering, scikit-learn
for 3cad-paper's P-AUROC/P-AP).  Budgets of a few kB force many sorted runs, spilled (coded or
raw), windows of 3cad-paper's merge, and level pieces of a few hundred; equality is `==` on every
key compute() returns (breakdowns and notes included).  PairwiseSum's leaf is lowered to 128 terms,
numpy's own block size, so that small sums exercise the pairwise tree it rebuilds.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from threecad.errors import ThreecadError
from threecad.metrics import Evaluator, curves, kernels
from threecad.metrics import chunked, runs
from threecad.metrics.curves import Levels

KINDS = ("smooth", "ties", "constant", "good-only", "one-pixel", "float64", "uint8")


@pytest.fixture(autouse=True)
def _small_leaf(monkeypatch):
    monkeypatch.setattr(chunked.PairwiseSum, "LEAF", 128)


def _batches(kind: str, seed: int = 0, n_batches: int = 3, n: int = 6, size: int = 24):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        masks = np.zeros((n, size, size), bool)
        types = []
        for i in range(n):
            kind_i = "good"
            if kind != "good-only" and rng.random() < 0.7:
                kind_i = str(rng.choice(["crack", "dent"]))
                y, x = rng.integers(0, size - 6, 2)
                if kind == "one-pixel":
                    masks[i, y, x] = True
                else:
                    masks[i, y:y + rng.integers(1, 7), x:x + rng.integers(1, 7)] = True
            types.append(kind_i)
        if kind == "constant":
            maps = np.full(masks.shape, 0.25, np.float32)
        elif kind == "ties":
            maps = (rng.integers(0, 6, masks.shape) + 2 * masks).astype(np.float32) / 7
        elif kind == "float64":
            maps = rng.standard_normal(masks.shape) + masks
        elif kind == "uint8":
            maps = (rng.integers(0, 200, masks.shape) + 40 * masks).astype(np.uint8)
        else:
            maps = ndimage.gaussian_filter(rng.standard_normal(masks.shape), (0, 1, 1)) * 3 + 1.5 * masks
            maps = maps.astype(np.float32)
        out.append((maps, masks, types))
    return out


def _compute(batches, **kw):
    ev = Evaluator(**kw)
    for maps, masks, types in batches:
        ev.update(maps, masks, defect_types=types)
    return ev.compute(), ev


def _assert_identical(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    for key, val in ref.items():
        assert type(got[key]) is type(val), key
        if isinstance(val, float) and np.isnan(val):
            assert np.isnan(got[key]), key
        else:
            assert got[key] == val, key


@pytest.mark.parametrize("compiled", [True, False] if kernels.AVAILABLE else [False])
@pytest.mark.parametrize("protocol", ["standard", "3cad-paper"])
@pytest.mark.parametrize("kind", KINDS)
def test_bounded_exact_equals_in_memory_exact(kind, protocol, compiled, monkeypatch):
    monkeypatch.setattr(kernels, "ENABLED", compiled)
    batches = _batches(kind)
    ref, _ = _compute(batches, protocol=protocol, memory=None)
    for memory in (20_000, 60_000):
        got, ev = _compute(batches, protocol=protocol, memory=memory)
        _assert_identical(got, ref)
        assert ev.memory_note.startswith("exact metrics in bounded memory")
    got, ev = _compute(batches, protocol=protocol)          # the default budget: everything in memory
    _assert_identical(got, ref)
    assert ev.memory_note == ""


def test_mixed_dtypes_and_a_state_computed_twice():
    batches = _batches("smooth") + [(m.astype(np.float64), k, t) for m, k, t in _batches("float64", seed=1)]
    ref_ev = Evaluator(memory=None)
    ev = Evaluator(memory=40_000)
    for i, (maps, masks, types) in enumerate(batches):
        for e in (ref_ev, ev):
            e.update(maps, masks, defect_types=types)
        if i == 2:                                             # compute mid-way, then keep feeding
            _assert_identical(ev.compute(), ref_ev.compute())
    _assert_identical(ev.compute(), ref_ev.compute())


def test_source_is_read_back_instead_of_spilled(tmp_path):
    batches = _batches("smooth", n_batches=4, n=8, size=32)
    path = tmp_path / "maps.npy"
    np.save(path, np.concatenate([m for m, _, _ in batches]))
    source = np.load(path, mmap_mode="r")
    ref, _ = _compute(batches, memory=None)
    got, ev = _compute(batches, memory=30_000, source=source, spill_dir=tmp_path / "spill")
    _assert_identical(got, ref)
    assert "read back from the source" in ev.memory_note
    assert not (tmp_path / "spill").exists() or not any((tmp_path / "spill").iterdir())
    wrong = np.array(source)
    wrong[5] += 1
    with pytest.raises(ThreecadError, match="not the maps fed"):
        _compute(batches, memory=30_000, source=wrong)


def test_peak_memory_stays_within_the_budget(tmp_path):
    batches = _batches("smooth", n_batches=40, n=8, size=64)   # 5 MB of maps, 1 % defect pixels
    budget = 1_500_000
    batch_bytes = batches[0][0].nbytes + batches[0][1].nbytes
    tracemalloc.start()
    try:
        ref, _ = _compute(batches[:1], memory=budget)           # compile / load the kernels first
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        got, ev = _compute(batches, memory=budget, spill_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    _assert_identical(got, _compute(batches, memory=None)[0])
    assert "sorted runs" in ev.memory_note
    assert peak <= budget + 4 * batch_bytes                  # update()'s per-batch transients aside


def test_defect_pixels_beyond_the_budget_are_refused_with_the_need():
    batches = _batches("smooth")
    with pytest.raises(ThreecadError, match="defect pixels alone need about"):
        _compute(batches, memory=2_000)


def test_pairwise_sum_equals_numpy_in_any_pieces():
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 8, 128, 129, 1000, 5003):
        terms = rng.standard_normal(n) * np.exp(rng.uniform(-30, 30, n))
        for reverse in (False, True):
            acc = chunked.PairwiseSum(n, reverse=reverse)
            seq = terms[::-1] if reverse else terms
            at = 0
            while at < n:
                k = int(rng.integers(1, 300))
                acc.add(seq[at:at + k])
                at += k
            assert acc.value == np.sum(terms)


def _pieces(lv: Levels, size: int):
    for a in range(0, len(lv.neg), size):
        yield Levels(lv.neg[a:a + size], lv.pos[a:a + size], lv.pro[:, a:a + size], lv.region_q[:, a:a + size])


def test_chunked_level_metrics_equal_curves():
    rng = np.random.default_rng(2)
    for trial in range(60):
        n_lv, n_size = int(rng.integers(1, 1500)), int(rng.integers(1, 4))
        neg = rng.integers(0, 5, n_lv) * (rng.random(n_lv) < 0.8) * (trial % 11 != 0)
        pos = rng.integers(0, 3, n_lv) * (rng.random(n_lv) < 0.5) * (trial % 7 != 0)
        keep = (neg > 0) | (pos > 0)
        neg, pos = neg[keep].astype(np.int64), pos[keep].astype(np.int64)
        pro = rng.random((n_size, len(neg))) * (pos > 0) / rng.integers(1, 50, (n_size, len(neg)))
        q = (rng.random((n_size, len(neg))) < 0.05).astype(np.int64) * (pos > 0) * (trial % 5 != 0)
        lv = Levels(neg, pos, pro, q)
        limit, fpr = float(rng.choice([0.3, 0.05, 1.0])), float(rng.choice([0.01, 0.3, 0.0]))
        ref = curves.summarize(lv, limit, fpr)
        for size in (1, 7, 129, max(1, len(neg))):
            source = chunked.LevelSource(lambda s=size: ((p.neg, p.pos) for p in _pieces(lv, s)),
                                         lambda s=size: _pieces(lv, s), lv.n_regions)
            got = chunked.summarize_chunks(source, limit, fpr)
            for key, val in ref.values.items():
                assert str(got.values[key]) == str(val), key      # floats equal, or the same UndefinedMetric
            assert [str(v) for v in got.au_pro_size] == [str(v) for v in ref.au_pro_size]
            assert np.array_equal(got.region_recall, ref.region_recall, equal_nan=True)


def test_release_scores_equal_scikit_learn():
    rng = np.random.default_rng(3)
    for trial in range(60):
        n_thr = int(rng.integers(1, 1200))
        neg = np.ones(n_thr, np.int64) if trial % 3 == 0 else rng.integers(0, 4, n_thr)
        pos = rng.integers(0, 3, n_thr)
        neg[(neg == 0) & (pos == 0)] = 1
        if pos.sum() == 0:
            continue
        score = np.sort(rng.standard_normal(n_thr))[::-1]
        y = np.concatenate([np.zeros(np.count_nonzero(neg)), np.ones(np.count_nonzero(pos))])
        s = np.concatenate([score[neg > 0], score[pos > 0]])
        w = np.concatenate([neg[neg > 0], pos[pos > 0]]).astype(float)
        for size in (1, 3, 129, n_thr):
            got = chunked.release_pixel_scores(lambda: ((neg[a:a + size], pos[a:a + size])
                                                        for a in range(0, n_thr, size)),
                                               int(neg.sum()), int(pos.sum()), auroc=True, ap=True)
            assert got["p_ap"] == average_precision_score(y, s, sample_weight=w)
            assert got["p_auroc"] == roc_auc_score(y, s, sample_weight=w)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("compiled", [True, False] if kernels.AVAILABLE else [False])
def test_spilled_runs_are_coded_losslessly(compiled, direct, monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "ENABLED", compiled)
    if not direct:                                           # plain writes, as where O_DIRECT is missing
        monkeypatch.setattr(runs, "DIRECT", 0)
    rng = np.random.default_rng(4)
    values = np.concatenate([1 + rng.random(50_000) / 100, [0.0, -0.0, 0.0, 1e-45, -1e-45, 3e38]]).astype(np.float32)
    stored = runs.SortedRuns(capacity=400_000, piece=4_096, spill_dir=tmp_path)
    stored.add(values, len(values), np.zeros(len(values), np.uint8))
    stored.flush()
    assert stored.runs[0].escapes >= 0                       # coded, not raw
    back = np.concatenate([p.copy() for p in stored.pieces(np.dtype(np.float32))])
    assert np.array_equal(back, np.sort(values))              # -0.0 comes back as +0.0, equal
    counts = np.zeros(7, np.int64)
    runs.count_slots(back, np.array([-1.0, 0.0, 1e-45], np.float32), counts)
    assert counts.tolist() == [np.sum(values < -1), np.sum(values == -1), np.sum((values > -1) & (values < 0)),
                               np.sum(values == 0), 0, 1, np.sum(values > 1e-45)]
