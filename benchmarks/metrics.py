"""Side-by-side speed and memory of threecad.metrics against scikit-learn and a plain numpy AU-PRO.

    nice .venv/bin/python benchmarks/metrics.py                 # 1,000 and 4,000 maps, then 3CAD size
    nice .venv/bin/python benchmarks/metrics.py --sizes 200 --full 2000   # a quick look

Every implementation sees the same synthetic maps (256x256 float32, continuous scores,
70 % of images with 1-3 small rectangular defects), in one process, one after another.
Time is that of the metric calls only (data generation is excluded), wall-clock and CPU
time of this process (every row computes on one core; CPU time is what other work on a
shared machine cannot inflate); memory is the tracemalloc peak beyond the data already in
memory (numpy reports its buffers to it).
Before any timing, both modes run once on a few maps so that the compiled kernels are
built (first run: numba compiles them, some seconds) or loaded from numba's on-disk cache;
that warm-up is printed on its own line, with the path the streaming rows take (numba,
or numpy when numba is not importable).
Rows:
- threecad exact: Evaluator(mode="exact"), all pixel metrics (P-AUROC, P-AP, P-F1max,
  AU-PRO and the breakdowns) and the image metrics, from one ordering of the pixels;
- threecad streaming: Evaluator(mode="streaming"), the same metrics in fixed memory;
- streaming, numpy path: the same with threecad.metrics.kernels switched off (what runs
  without numba; same bins, same results), at the --sizes only;
- scikit-learn: roc_auc_score + average_precision_score on the flattened pixels only;
- numpy AU-PRO: the MVTec recipe (argsort all pixels, cumulate, collapse ties), alone;
- anomalib: its pixel AUROC and AUPRO, only when anomalib is importable (never a dependency:
  run this script with the python of a separate venv holding anomalib, numba, psutil and
  scikit-learn, with PYTHONPATH at this repository).  Its peak memory column shows only
  numpy's share: tracemalloc does not see torch's allocations.
At 3CAD size (16,546 maps) the maps are generated chunk by chunk and dropped after use;
exact mode runs there only when the machine has the memory for it.  Both modes use the
compiled region labelling and min/max passes when numba is there.
"""
from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import psutil
from scipy import ndimage

from threecad.metrics import Evaluator, kernels

SIZE = 256
KEYS = ("p_auroc", "p_ap", "au_pro")


def synthetic_chunks(n_maps: int, chunk: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (maps, masks) chunks: N(0,1) noise, defects shifted up by 1.5."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_maps:
        n = min(chunk, n_maps - done)
        masks = np.zeros((n, SIZE, SIZE), dtype=bool)
        for i in range(n):
            if rng.random() < 0.7:
                for _ in range(rng.integers(1, 4)):
                    y, x = rng.integers(0, SIZE - 40, 2)
                    h, w = rng.integers(2, 40, 2)
                    masks[i, y:y + h, x:x + w] = True
        maps = rng.standard_normal((n, SIZE, SIZE), dtype=np.float32)
        maps[masks] += 1.5
        done += n
        yield maps, masks


class Clock:
    """Wall and CPU seconds of this process (CPU time is what a shared machine cannot inflate)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def measure(fn):
    """(result, Clock, peak MiB above the memory in use when called)."""
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    with Clock() as clock:
        out = fn()
    peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    return out, clock, peak


def run_evaluator(mode: str, chunks, compiled: bool = True) -> dict:
    kernels.ENABLED = compiled and kernels.AVAILABLE
    try:
        ev = Evaluator(mode=mode)
        for maps, masks in chunks:
            ev.update(maps, masks)
        return ev.compute()
    finally:
        kernels.ENABLED = kernels.AVAILABLE


def warm_up() -> str:
    """Build (or load from numba's cache) every kernel both modes use; say which path runs."""
    start = time.perf_counter()
    for mode in ("exact", "streaming"):
        run_evaluator(mode, list(synthetic_chunks(6, 3, seed=1)))
    seconds = time.perf_counter() - start
    if not kernels.AVAILABLE:
        return "streaming path: numpy (numba is not importable)"
    import numba
    return (f"streaming path: numba {numba.__version__} kernels (compiled or loaded from its cache "
            f"in {seconds:.1f} s wall before timing)")


def streamed_evaluator(mode: str, n_maps: int, chunk: int):
    """Evaluator over chunks generated on the fly; returns (metrics, Clock of the metric calls, peak MiB)."""
    ev = Evaluator(mode=mode)
    clock = Clock()
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    chunk_mb = chunk * SIZE * SIZE * 5 / 2**20
    for maps, masks in synthetic_chunks(n_maps, chunk):
        with clock:
            ev.update(maps, masks)
        del maps, masks
    with clock:
        out = ev.compute()
    # beyond one chunk: the generator's own chunk (maps + masks) is subtracted
    peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20 - chunk_mb
    return out, clock, peak


def sklearn_pixel(y: np.ndarray, s: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score
    return {"p_auroc": roc_auc_score(y, s), "p_ap": average_precision_score(y, s)}


def numpy_au_pro(chunks, limit: float = 0.3) -> dict:
    """AU-PRO the way the MVTec AD script does it: per-pixel increments, one argsort."""
    scores = np.concatenate([m.ravel() for m, _ in chunks])
    labels = np.concatenate([k.ravel() for _, k in chunks])
    weight = np.zeros(scores.size)
    eight = np.ones((3, 3), bool)
    at = n_regions = 0
    for _, masks in chunks:
        for mask in masks:
            lab, k = ndimage.label(mask, structure=eight)
            if k:
                flat = lab.ravel()
                sel = np.flatnonzero(flat)
                weight[at + sel] = 1.0 / np.bincount(flat)[1:][flat[sel] - 1]
                n_regions += k
            at += mask.size
    weight /= n_regions
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    fpr = np.cumsum(~labels[order]) / np.count_nonzero(~labels)
    pro = np.cumsum(weight[order])
    last = np.append(s[1:] != s[:-1], True)
    x = np.concatenate([[0.0], fpr[last]])
    y = np.concatenate([[0.0], pro[last]])
    i = int(np.searchsorted(x, limit, side="right"))
    area = np.trapezoid(y[:i], x[:i])
    if x[i - 1] < limit:
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area += 0.5 * (y[i - 1] + y_lim) * (limit - x[i - 1])
    return {"au_pro": area / limit}


def anomalib_classes():
    """anomalib's AUPRO and the torchmetrics AUROC it uses; imported before any timing (the
    first anomalib import takes seconds and is not metric work)."""
    try:                               # anomalib 2.x: the torchmetrics core behind the field wrapper
        from anomalib.metrics.aupro import _AUPRO as AUPRO
    except ImportError:                # anomalib 1.x
        from anomalib.metrics import AUPRO
    from torchmetrics.classification import BinaryAUROC
    return AUPRO, BinaryAUROC


def anomalib_pixel(chunks, classes) -> dict:
    import torch
    AUPRO, BinaryAUROC = classes
    maps = torch.from_numpy(np.concatenate([m for m, _ in chunks]))
    masks = torch.from_numpy(np.concatenate([k for _, k in chunks])).int()
    out = {}
    auroc = BinaryAUROC()
    auroc.update(maps.ravel(), masks.ravel())
    out["p_auroc"] = float(auroc.compute())
    aupro = AUPRO(fpr_limit=0.3)
    aupro.update(maps, masks)
    out["au_pro"] = float(aupro.compute())
    return out


def ratio(slow: Clock, fast: Clock) -> str:
    return f"{slow.cpu / fast.cpu:.1f}x faster in CPU time ({slow.wall / fast.wall:.1f}x wall)"


def fits(bytes_needed: float) -> bool:
    return bytes_needed < 0.8 * psutil.virtual_memory().available


def row(table, n, name, scope, res, clock, peak, ref=None, note=""):
    vals = {k: res.get(k) for k in KEYS} if res else {}
    err = None
    if res and ref:
        err = max((abs(vals[k] - ref[k]) for k in KEYS if vals.get(k) is not None and ref.get(k) is not None),
                  default=None)
    table.append((n, name, scope, clock, peak, vals, err, note))


def print_table(table) -> None:
    head = f"{'maps':>6} {'implementation':<21} {'metrics':<24} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} " \
           f"{'P-AUROC':>9} {'P-AP':>9} {'AU-PRO':>9} {'|err| vs exact':>14}"
    print(head)
    print("-" * len(head))
    for n, name, scope, clock, peak, vals, err, note in table:
        if clock is None:
            print(f"{n:>6} {name:<21} {scope:<24} {'skipped: ' + note}")
            continue
        fmt = {k: (f"{vals[k]:.6f}" if vals.get(k) is not None else "-") for k in KEYS}
        e = f"{err:.1e}" if err is not None else "-"
        print(f"{n:>6} {name:<21} {scope:<24} {clock.wall:7.2f} {clock.cpu:7.2f} {peak:8.0f} "
              f"{fmt['p_auroc']:>9} {fmt['p_ap']:>9} "
              f"{fmt['au_pro']:>9} {e:>14}" + (f"  ({note})" if note else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000])
    ap.add_argument("--full", type=int, default=16546, help="maps of the 3CAD-sized streaming run (0: skip)")
    ap.add_argument("--chunk", type=int, default=100)
    args = ap.parse_args()
    tracemalloc.start()
    table: list = []
    summary: list[str] = []
    try:
        anomalib_metrics = anomalib_classes()
        has_anomalib = True
    except ImportError:
        has_anomalib = False
    summary.append(warm_up())
    for n in args.sizes:
        chunks = list(synthetic_chunks(n, args.chunk))
        px = n * SIZE * SIZE
        exact, t_exact, m_exact = measure(lambda: run_evaluator("exact", chunks))
        row(table, n, "threecad exact", "every metric", exact, t_exact, m_exact, exact)
        stream, t_stream, m_stream = measure(lambda: run_evaluator("streaming", chunks))
        row(table, n, "threecad streaming", "every metric", stream, t_stream, m_stream, exact)
        if kernels.AVAILABLE:
            slow, t_slow, m_slow = measure(lambda: run_evaluator("streaming", chunks, compiled=False))
            row(table, n, "streaming, numpy path", "every metric", slow, t_slow, m_slow, exact)
            summary.append(f"{n} maps: streaming with kernels is {ratio(t_slow, t_stream)} than its numpy path")
        bounds = {k: stream[f"{k}_err_bound"] for k in KEYS}
        errs = {k: abs(stream[k] - exact[k]) for k in KEYS}
        summary.append(f"{n} maps: streaming - exact: " + ", ".join(
            f"{k} {errs[k]:.1e} (bound {bounds[k]:.1e})" for k in KEYS))
        t_sk = None
        if fits(px * 80):            # scikit-learn's peak, measured: ~76 bytes per pixel
            y = np.concatenate([k.ravel() for _, k in chunks])
            s = np.concatenate([m.ravel() for m, _ in chunks])
            sk, t_sk, m_sk = measure(lambda: sklearn_pixel(y, s))
            row(table, n, "scikit-learn", "P-AUROC + P-AP", sk, t_sk, m_sk, exact)
            del y, s
        else:
            row(table, n, "scikit-learn", "P-AUROC + P-AP", None, None, None,
                note=f"needs ~{px * 80 / 2**30:.0f} GB free")
        if fits(px * 65):            # the numpy recipe's peak: ~62 bytes per pixel
            npro, t_np, m_np = measure(lambda: numpy_au_pro(chunks))
            row(table, n, "numpy sort AU-PRO", "AU-PRO", npro, t_np, m_np, exact)
        else:
            row(table, n, "numpy sort AU-PRO", "AU-PRO", None, None, None,
                note=f"needs ~{px * 65 / 2**30:.0f} GB free")
        if has_anomalib:
            try:
                an, t_an, m_an = measure(lambda: anomalib_pixel(chunks, anomalib_metrics))
                row(table, n, "anomalib", "P-AUROC + AU-PRO", an, t_an, m_an, exact,
                    note="peak MB without torch's own allocations")
                summary.append(f"{n} maps: exact (every metric) is {ratio(t_an, t_exact)} than "
                               f"anomalib P-AUROC + AU-PRO")
            except Exception as exc:  # report, do not abort the benchmark
                row(table, n, "anomalib", "P-AUROC + AU-PRO", None, None, None, note=f"failed: {exc}")
        else:
            row(table, n, "anomalib", "P-AUROC + AU-PRO", None, None, None, note="not importable")
        if t_sk:
            summary.append(f"{n} maps: exact (every metric) is {ratio(t_sk, t_exact)} than "
                           f"scikit-learn P-AUROC + P-AP alone")
        summary.append(f"{n} maps: streaming is {ratio(t_exact, t_stream)} than exact")
        del chunks
        gc.collect()

    if args.full:
        n = args.full
        stream, t_stream, m_stream = streamed_evaluator("streaming", n, args.chunk)
        if fits(n * SIZE * SIZE * 4 * 2.2):  # every normal score, float32, plus the merge copy
            exact, t_exact, m_exact = streamed_evaluator("exact", n, args.chunk)
            row(table, n, "threecad exact", "every metric, streamed", exact, t_exact, m_exact, exact)
            row(table, n, "threecad streaming", "every metric, streamed", stream, t_stream, m_stream, exact)
            errs = {k: abs(stream[k] - exact[k]) for k in KEYS}
            summary.append(f"{n} maps: streaming - exact: " + ", ".join(
                f"{k} {errs[k]:.1e} (bound {stream[k + '_err_bound']:.1e})" for k in KEYS))
            summary.append(f"{n} maps: streaming is {ratio(t_exact, t_stream)} than exact; "
                           f"streaming peak {m_stream:.0f} MB beyond one chunk of {args.chunk} maps, "
                           f"exact {m_exact:.0f} MB")
        else:
            row(table, n, "threecad exact", "every metric, streamed", None, None, None,
                note=f"needs ~{n * SIZE * SIZE * 9 / 2**30:.0f} GB free")
            row(table, n, "threecad streaming", "every metric, streamed", stream, t_stream, m_stream)
            summary.append(f"{n} maps: streaming peak {m_stream:.0f} MB beyond one chunk; bounds " + ", ".join(
                f"{k} {stream[k + '_err_bound']:.1e}" for k in KEYS))
    print_table(table)
    print()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
