"""The compiled (numba) metric passes give exactly what the numpy path gives.

Every comparison is between two implementations run here: the numpy path
(kernels.ENABLED = False, or use_kernels=False) is the reference, scipy.ndimage.label the
reference for regions, numpy's min/max for extremes.  Equality is exact (array_equal on
the levels, not approx): same bins, same float sums.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from threecad.errors import ThreecadError
from threecad.metrics import Evaluator, kernels
from threecad.metrics.inputs import map_extremes
from threecad.metrics.regions import label_regions
from threecad.metrics.streaming import StreamingPixelHistogram

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")


@pytest.fixture
def numpy_path(monkeypatch):
    """Run a block of code on the numpy path (restored afterwards, even on failure)."""
    def switch(on: bool) -> None:
        monkeypatch.setattr(kernels, "ENABLED", not on)
    return switch


def _masks(rng, n, size, p=0.05):
    return rng.random((n, size, size)) < p


def _cases():
    rng = np.random.default_rng(0)
    out = {}
    for dt in (np.float32, np.float64):
        name = dt.__name__
        out[f"normal-{name}"] = [(rng.standard_normal((4, 16, 16)).astype(dt), _masks(rng, 4, 16)) for _ in range(3)]
        out[f"negative-{name}"] = [((rng.standard_normal((4, 16, 16)) - 50).astype(dt), _masks(rng, 4, 16))
                                   for _ in range(2)]
        out[f"octaves-{name}"] = [((rng.standard_normal((4, 16, 16)) * 10.0 ** rng.uniform(-30, 30, (4, 16, 16)))
                                   .astype(dt), _masks(rng, 4, 16)) for _ in range(2)]   # sparse blocks
        base = rng.standard_normal((4, 16, 16))
        out[f"near-anchor-{name}"] = [((1.0 + base * 1e-9).astype(dt), _masks(rng, 4, 16)),
                                      ((1.0 + 1e-7 + base * 1e-12).astype(dt), _masks(rng, 4, 16))]
    out["uint8"] = [(rng.integers(0, 256, (4, 16, 16)).astype(np.uint8), _masks(rng, 4, 16)) for _ in range(2)]
    out["8bit-scaled"] = [((rng.integers(0, 256, (4, 16, 16)) / 255.0).astype(np.float32), _masks(rng, 4, 16))
                          for _ in range(2)]
    out["float64-then-float32-then-int16"] = [
        (rng.standard_normal((4, 16, 16)), _masks(rng, 4, 16)),
        (rng.standard_normal((4, 16, 16)).astype(np.float32), _masks(rng, 4, 16)),
        (rng.integers(0, 5, (4, 16, 16)).astype(np.int16), _masks(rng, 4, 16))]
    out["float32-then-float64"] = [(rng.standard_normal((4, 16, 16)).astype(np.float32), _masks(rng, 4, 16)),
                                   (rng.standard_normal((4, 16, 16)), _masks(rng, 4, 16))]
    out["constant"] = [(np.full((3, 8, 8), 2.5, np.float32), _masks(rng, 3, 8, 0.2))]
    out["later-batch-far-above"] = [(rng.standard_normal((4, 16, 16)).astype(np.float32), _masks(rng, 4, 16)),
                                    ((rng.standard_normal((4, 16, 16)) * 1e20).astype(np.float32),
                                     _masks(rng, 4, 16))]
    return out


CASES = _cases()


def _levels(batches, compiled: bool, numpy_path, scanning: bool, **kw):
    numpy_path(not compiled)
    h = StreamingPixelHistogram(3, use_kernels=compiled, **kw)
    for maps, masks in batches:
        regions = label_regions(masks)
        if scanning:
            lo, hi = h.add_scanning(maps, masks, regions)
            np.testing.assert_array_equal(lo, maps.reshape(len(maps), -1).min(axis=1))
            np.testing.assert_array_equal(hi, maps.reshape(len(maps), -1).max(axis=1))
        else:
            h.add(maps, masks, regions)
    numpy_path(False)
    return h.levels()


def _assert_same_levels(a, b):
    for field in ("neg", "pos", "pro", "region_q"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_levels_equal_numpy_levels(case, numpy_path):
    batches = CASES[case]
    ref = _levels(batches, False, numpy_path, scanning=False)
    assert ref.n_pos > 0 and ref.n_neg > 0
    _assert_same_levels(ref, _levels(batches, True, numpy_path, scanning=False))
    _assert_same_levels(ref, _levels(batches, True, numpy_path, scanning=True))   # fused min/max + count


def test_explicit_anchor_and_no_regions_are_equal_too(numpy_path):
    batches = CASES["normal-float32"] + CASES["negative-float32"]
    _assert_same_levels(_levels(batches, False, numpy_path, False, anchor=0.0),
                        _levels(batches, True, numpy_path, True, anchor=0.0))
    levels = []
    for compiled in (False, True):
        h = StreamingPixelHistogram(3, use_kernels=compiled)
        for maps, masks in batches:
            h.add(maps, masks, None)
        levels.append(h.levels())
    _assert_same_levels(*levels)
    assert levels[0].n_pos > 0 and not levels[0].region_q.any()


def test_evaluator_results_identical_on_both_paths(numpy_path):
    rng = np.random.default_rng(5)
    batches = []
    for i in range(5):
        masks = np.zeros((6, 24, 24), bool)
        for j in range(6):
            if rng.random() < 0.7:
                y, x = rng.integers(0, 18, 2)
                masks[j, y:y + rng.integers(1, 7), x:x + rng.integers(1, 7)] = True
        maps = rng.standard_normal(masks.shape).astype(np.float32) + 1.5 * masks
        batches.append((maps * (30.0 if i == 3 else 1.0), masks))    # batch 3 reaches outside the window
    for protocol in ("standard", "3cad-paper"):
        for mode in ("streaming", "exact"):
            out = {}
            for compiled in (False, True):
                numpy_path(not compiled)
                ev = Evaluator(protocol=protocol, mode=mode)
                for maps, masks in batches:
                    ev.update(maps, masks)
                out[compiled] = ev.compute()
            numpy_path(False)
            out[True].pop("stream_state_mb", None)       # the compiled path also holds its dense buffer
            out[False].pop("stream_state_mb", None)
            assert out[True] == out[False], (protocol, mode)


def test_regions_equal_scipy_labelling(numpy_path):
    rng = np.random.default_rng(1)
    shapes = [(rng.integers(1, 5), rng.integers(1, 24), w) for w in (1, 7, 8, 16, 23, 40) for _ in range(6)]
    shapes.append((2, 48, 48))
    for n, h, w in shapes:
        masks = rng.random((n, h, w)) < rng.choice([0.0, 0.02, 0.2, 0.45, 0.7, 1.0])
        for m in (masks, masks[:, ::-1]):                        # C-contiguous and not
            numpy_path(True)
            ref = label_regions(m, (0.01, 0.1))
            numpy_path(False)
            got = label_regions(m, (0.01, 0.1))
            for field in ("pixel_index", "pixel_region", "area", "image", "size_bin"):
                x, y = getattr(ref, field), getattr(got, field)
                assert x.dtype == y.dtype, field
                np.testing.assert_array_equal(x, y, err_msg=f"{field} {m.shape}")


def test_map_extremes_and_nan_refusal(numpy_path):
    rng = np.random.default_rng(2)
    maps = rng.standard_normal((5, 9, 11)).astype(np.float32) * 10.0 ** rng.uniform(-40, 30, (5, 9, 11))
    maps = maps.astype(np.float32)
    maps[1] = -0.0
    lo, hi = map_extremes(maps)
    np.testing.assert_array_equal(lo, maps.reshape(5, -1).min(axis=1))
    np.testing.assert_array_equal(hi, maps.reshape(5, -1).max(axis=1))
    for bad in (np.nan, np.inf, -np.inf):
        broken = maps.copy()
        broken[3, 4, 5] = bad
        with pytest.raises(ThreecadError, match="index 3"):
            map_extremes(broken)


def test_nan_in_a_scanned_batch_is_refused_and_nothing_counted():
    rng = np.random.default_rng(3)
    maps = rng.standard_normal((4, 16, 16)).astype(np.float32)
    masks = _masks(rng, 4, 16)
    h = StreamingPixelHistogram(3, use_kernels=True)
    h.add_scanning(maps, masks, label_regions(masks))
    before = h.levels()
    broken = maps.copy()
    broken[2, 3, 3] = np.nan
    with pytest.raises(ThreecadError, match="NaN or inf"):
        h.add_scanning(broken, masks, label_regions(masks))
    _assert_same_levels(before, h.levels())
    h.add_scanning(maps, masks, label_regions(masks))           # and the histogram still works
    assert h.levels().n_neg == 2 * before.n_neg


def test_batches_split_for_int32_counts_are_counted_the_same(numpy_path, monkeypatch):
    batches = CASES["normal-float32"]
    ref = _levels(batches, True, numpy_path, scanning=False)
    monkeypatch.setattr(StreamingPixelHistogram, "KERNEL_CHUNK", 100)
    _assert_same_levels(ref, _levels(batches, True, numpy_path, scanning=True))


def test_metrics_import_and_run_without_numba():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from threecad.metrics import Evaluator, kernels\n"
            "assert not kernels.AVAILABLE and kernels.path_name() == 'numpy'\n"
            "rng = np.random.default_rng(0)\n"
            "masks = rng.random((3, 16, 16)) < 0.1\n"
            "maps = rng.standard_normal(masks.shape).astype(np.float32) + masks\n"
            "ev = Evaluator(mode='streaming'); ev.update(maps, masks); out = ev.compute()\n"
            "assert 0.5 < out['p_auroc'] <= 1 and out['n_regions'] > 0\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
