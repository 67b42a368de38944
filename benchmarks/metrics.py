"""Side-by-side speed and memory of threecad.metrics against scikit-learn, anomalib, ADEval and a numpy sort.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/metrics.py            # 1,000 and 4,000 maps, then 3CAD size
    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/metrics.py --sizes 200 --full 2000   # a quick look
    threecad synth --out synth-is --category IS --max-size 1024 --scale 1.0
    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/metrics.py --sizes --full 0 --native synth-is

Every implementation sees the same synthetic maps (continuous float32 scores: N(0, 1) noise,
defect pixels shifted up by 1.5), in one process, one after another.  At 256 px (--sizes,
--full) 70 % of the images get 1-3 small rectangular defects; with --native the masks are
those of one category of a dataset root at the images' own size (`threecad synth --max-size
1024` writes 3CAD's sizes).  Time is that of the metric calls only (data generation is
excluded), wall-clock and CPU time of this process (every row computes on one core; CPU time
is what other work on a shared machine inflates least); memory is the tracemalloc peak beyond
the data already in memory (numpy reports its buffers to it), and, where maps are generated
chunk by chunk, beyond one chunk.  Each row also shows the 1-minute load average when it
ended (os.getloadavg): the machine may be shared, and a load above its cores slows every row.
Before any timing, every mode runs once on a few maps so that the compiled kernels are built
(first run: numba compiles them, some seconds) or loaded from numba's on-disk cache.
Rows:
- exact, in memory: Evaluator(mode="exact", memory=None): every score kept, one ordering,
  every metric (P-AUROC, P-AP, P-F1max, AU-PRO, the breakdowns) and the image metrics;
- exact, bounded: Evaluator(mode="exact") with the --memory budget (threecad.metrics.bounded):
  the same numbers to the last bit, in memory while they fit, from sorted runs beyond;
- streaming: Evaluator(mode="streaming"), the same metrics within an error bound; its numpy
  path (kernels switched off: what runs without numba) at the --sizes only;
- scikit-learn: roc_auc_score + average_precision_score on the flattened pixels only;
- numpy AU-PRO: the MVTec recipe (argsort all pixels, cumulate, collapse ties), alone;
- numpy sort: np.sort of every pixel score (float32), the floor of any ranking by sorting;
- anomalib (pixel AUROC, AUPRO) and ADEval (EvalAccumulator, binned: P-AUROC, P-AUPR,
  AU-PRO), only when importable (never dependencies: run this script with the python of a
  venv holding them, numba, psutil and scikit-learn, with PYTHONPATH at this repository).
  anomalib's peak memory shows only numpy's share: tracemalloc does not see torch's.
Rows that would not fit in the memory available are skipped and say what they need.
"""
from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

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


def native_masks(root: Path, category: str, fraction: float) -> list[tuple[tuple[int, int], str | None]]:
    """(height, width) and mask file of the first `fraction` of a category's test images, by size."""
    from threecad.layout import scan_root

    table = scan_root(root).table
    rows = table[(table["split"] == "test") & ((table["category"] == category) | (table["folder"] == category))]
    if rows.empty:
        raise SystemExit(f"{root} has no test images of category {category}")
    rows = rows.iloc[:max(1, int(round(len(rows) * fraction)))]
    out = [((int(r.height), int(r.width)), r.mask_path if isinstance(r.mask_path, str) else None)
           for r in rows.itertuples()]
    return sorted(out, key=lambda item: item[0])


def native_chunks(images: list, chunk_pixels: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(maps, masks) of same-sized images at their own size: the category's masks (> 127), maps as above."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    at = 0
    while at < len(images):
        shape = images[at][0]
        n = 1
        while at + n < len(images) and images[at + n][0] == shape and (n + 1) * shape[0] * shape[1] <= chunk_pixels:
            n += 1
        masks = np.zeros((n, *shape), dtype=bool)
        for i, (_, path) in enumerate(images[at:at + n]):
            if path is not None:
                masks[i] = np.asarray(Image.open(path).convert("L")) > 127
        maps = rng.standard_normal(masks.shape, dtype=np.float32)
        maps[masks] += 1.5
        at += n
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


def run_evaluator(mode: str, chunks, compiled: bool = True, memory=None) -> dict:
    kernels.ENABLED = compiled and kernels.AVAILABLE
    try:
        ev = Evaluator(mode=mode, memory=memory)
        for maps, masks in chunks:
            ev.update(maps, masks)
        return ev.compute()
    finally:
        kernels.ENABLED = kernels.AVAILABLE


def warm_up() -> str:
    """Build (or load from numba's cache) every kernel the modes use; say which path runs."""
    start = time.perf_counter()
    chunks = list(synthetic_chunks(6, 3, seed=1))
    for mode, memory in (("exact", None), ("streaming", None), ("exact", 2_000_000)):
        run_evaluator(mode, chunks, memory=memory)
    __import__("sklearn.metrics")      # imported before timing (tracemalloc counts what imports allocate)
    seconds = time.perf_counter() - start
    if not kernels.AVAILABLE:
        return "streaming path: numpy (numba is not importable)"
    import numba
    return (f"compiled path: numba {numba.__version__} kernels (compiled or loaded from its cache "
            f"in {seconds:.1f} s wall before timing)")


def streamed_evaluator(mode: str, chunks, chunk_bytes: float, memory=None):
    """Evaluator over chunks generated on the fly: (metrics, Clock of the metric calls, peak MiB
    beyond one chunk, the evaluator's memory note)."""
    ev = Evaluator(mode=mode, memory=memory)
    clock = Clock()
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    for maps, masks in chunks:
        with clock:
            ev.update(maps, masks)
        del maps, masks
    with clock:
        out = ev.compute()
    peak = (tracemalloc.get_traced_memory()[1] - base - chunk_bytes) / 2**20
    return out, clock, peak, ev.memory_note


def streamed_sort(chunks, n_pixels: int):
    """np.sort of every pixel score (float32), copied chunk by chunk into one array first;
    (Clock of the sort, peak MiB of the sort beyond the array)."""
    values = np.empty(n_pixels, dtype=np.float32)
    at = 0
    for maps, _ in chunks:
        values[at:at + maps.size] = maps.reshape(-1)
        at += maps.size
    _, clock, peak = measure(values.sort)
    return clock, peak


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


def adeval_pixel(chunks, accumulator) -> dict:
    """ADEval's CPU EvalAccumulator (binned between the estimated score bounds it asks for:
    the maps' own min and max here, its best case)."""
    lo = float(min(m.min() for m, _ in chunks))
    hi = float(max(m.max() for m, _ in chunks))
    acc = accumulator(lo, hi, lo, hi)
    for maps, masks in chunks:
        acc.add_anomap_batch(list(maps), list(masks.astype(np.uint8)))
        acc.add_image(maps.reshape(len(maps), -1).max(axis=1), masks.reshape(len(masks), -1).any(axis=1))
    got = acc.summary()
    return {"p_auroc": got["p_auroc"], "p_ap": got["p_aupr"], "au_pro": got["p_aupro"]}


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
    table.append((n, name, scope, clock, peak, vals, err, note, os.getloadavg()[0]))


def skipped(table, n, name, scope, gb: float) -> None:
    row(table, n, name, scope, None, None, None, note=f"needs ~{gb:.0f} GB free")


def print_table(table) -> None:
    head = f"{'maps':>7} {'implementation':<23} {'metrics':<22} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} " \
           f"{'load':>5} {'P-AUROC':>9} {'P-AP':>9} {'AU-PRO':>9} {'|err| vs exact':>14}"
    print(head)
    print("-" * len(head))
    for n, name, scope, clock, peak, vals, err, note, load in table:
        if clock is None:
            print(f"{n:>7} {name:<23} {scope:<22} {'skipped: ' + note}")
            continue
        fmt = {k: (f"{vals[k]:.6f}" if vals.get(k) is not None else "-") for k in KEYS}
        e = f"{err:.1e}" if err is not None else "-"
        print(f"{n:>7} {name:<23} {scope:<22} {clock.wall:7.2f} {clock.cpu:7.2f} {peak:8.0f} {load:5.2f} "
              f"{fmt['p_auroc']:>9} {fmt['p_ap']:>9} "
              f"{fmt['au_pro']:>9} {e:>14}" + (f"  ({note})" if note else ""))


def identical(a: dict, b: dict) -> bool:
    """Every key compute() returned, equal (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float) and a[k] != a[k] and b[k] != b[k])
        for k in a)


def side_by_side(table, summary, n, label, make_chunks, n_pixels: int, chunk_bytes: float, memory: float,
                 in_memory_bytes: float) -> None:
    """Exact bounded, streaming, exact in memory (when it fits) and a numpy sort of the same
    pixels, over chunks made on the fly by make_chunks()."""
    bounded, t_bounded, m_bounded, note = streamed_evaluator("exact", make_chunks(), chunk_bytes, memory)
    row(table, n, "exact, bounded", f"every metric, {label}", bounded, t_bounded, m_bounded, bounded,
        note=f"{memory / 1e9:g} GB budget" + ("" if note else ", in memory"))
    stream, t_stream, m_stream, _ = streamed_evaluator("streaming", make_chunks(), chunk_bytes)
    row(table, n, "streaming", f"every metric, {label}", stream, t_stream, m_stream, bounded)
    if fits(in_memory_bytes):
        exact, t_exact, m_exact, _ = streamed_evaluator("exact", make_chunks(), chunk_bytes)
        row(table, n, "exact, in memory", f"every metric, {label}", exact, t_exact, m_exact, bounded)
        summary.append(f"{n} maps ({label}): bounded exact {'equals' if identical(exact, bounded) else 'DIFFERS FROM'}"
                       f" in-memory exact on every key; {ratio(t_exact, t_bounded)} and "
                       f"{m_exact / max(m_bounded, 1):.1f}x less peak memory")
    else:
        skipped(table, n, "exact, in memory", f"every metric, {label}", in_memory_bytes / 1e9)
    if fits(n_pixels * 4 * 1.2):
        t_sort, m_sort = streamed_sort(make_chunks(), n_pixels)
        row(table, n, "numpy sort", f"sort only, {label}", None, t_sort, m_sort,
            note="np.sort of every pixel, float32; peak beyond the array")
        summary.append(f"{n} maps ({label}): bounded exact takes {t_bounded.cpu / t_sort.cpu:.2f}x the CPU time of "
                       f"a numpy sort of the same pixels")
    else:
        skipped(table, n, "numpy sort", f"sort only, {label}", n_pixels * 4 * 1.2 / 1e9)
    summary.append(f"{n} maps ({label}): {note or 'bounded exact ran in memory'}; peak {m_bounded:.0f} MiB beyond "
                   "one chunk; streaming bounds " + ", ".join(
                       f"{k} {stream[k + '_err_bound']:.1e}" for k in KEYS if k + "_err_bound" in stream))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000])
    ap.add_argument("--full", type=int, default=16546, help="maps of the 3CAD-sized run at 256 px (0: skip)")
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--memory", type=float, default=2.0, help="GB: the budget of the bounded exact rows")
    ap.add_argument("--native", type=Path, default=None, help="dataset root: also one category at its own size")
    ap.add_argument("--native-category", default="IS", help="category of --native (abbreviation or folder)")
    ap.add_argument("--native-fraction", type=float, default=1.0, help="fraction of its test images")
    args = ap.parse_args()
    memory = args.memory * 1e9
    tracemalloc.start()
    table: list = []
    summary: list[str] = [f"load average at start (1, 5, 15 min): {os.getloadavg()} on {os.cpu_count()} cores"]
    try:
        anomalib_metrics = anomalib_classes()
    except ImportError:
        anomalib_metrics = None
    try:
        from adeval import EvalAccumulator
    except ImportError:
        EvalAccumulator = None
    summary.append(warm_up())
    for n in args.sizes:
        chunks = list(synthetic_chunks(n, args.chunk))
        px = n * SIZE * SIZE
        exact, t_exact, m_exact = measure(lambda: run_evaluator("exact", chunks))
        row(table, n, "exact, in memory", "every metric", exact, t_exact, m_exact, exact)
        bounded, t_bounded, m_bounded = measure(lambda: run_evaluator("exact", chunks, memory=memory))
        row(table, n, "exact, bounded", "every metric", bounded, t_bounded, m_bounded, exact,
            note=f"{args.memory:g} GB budget")
        summary.append(f"{n} maps: bounded exact {'equals' if identical(exact, bounded) else 'DIFFERS FROM'} "
                       "in-memory exact on every key")
        stream, t_stream, m_stream = measure(lambda: run_evaluator("streaming", chunks))
        row(table, n, "streaming", "every metric", stream, t_stream, m_stream, exact)
        if kernels.AVAILABLE:
            slow, t_slow, m_slow = measure(lambda: run_evaluator("streaming", chunks, compiled=False))
            row(table, n, "streaming, numpy path", "every metric", slow, t_slow, m_slow, exact)
            summary.append(f"{n} maps: streaming with kernels is {ratio(t_slow, t_stream)} than its numpy path")
        errs = {k: abs(stream[k] - exact[k]) for k in KEYS}
        summary.append(f"{n} maps: streaming - exact: " + ", ".join(
            f"{k} {errs[k]:.1e} (bound {stream[k + '_err_bound']:.1e})" for k in KEYS))
        t_sk = None
        if fits(px * 80):            # scikit-learn's peak, measured: ~76 bytes per pixel
            y = np.concatenate([k.ravel() for _, k in chunks])
            s = np.concatenate([m.ravel() for m, _ in chunks])
            sk, t_sk, m_sk = measure(lambda: sklearn_pixel(y, s))
            row(table, n, "scikit-learn", "P-AUROC + P-AP", sk, t_sk, m_sk, exact)
            _, t_sort, m_sort = measure(lambda: np.sort(s))
            row(table, n, "numpy sort", "sort only", None, t_sort, m_sort, note="np.sort of every pixel, float32")
            del y, s
        else:
            skipped(table, n, "scikit-learn", "P-AUROC + P-AP", px * 80 / 2**30)
        if fits(px * 65):            # the numpy recipe's peak: ~62 bytes per pixel
            npro, t_np, m_np = measure(lambda: numpy_au_pro(chunks))
            row(table, n, "numpy sort AU-PRO", "AU-PRO", npro, t_np, m_np, exact)
        else:
            skipped(table, n, "numpy sort AU-PRO", "AU-PRO", px * 65 / 2**30)
        for name, scope, available, fn, note in (
                ("anomalib", "P-AUROC + AU-PRO", anomalib_metrics,
                 lambda: anomalib_pixel(chunks, anomalib_metrics), "peak MB without torch's own allocations"),
                ("ADEval", "P-AUROC/AUPR + AU-PRO", EvalAccumulator,
                 lambda: adeval_pixel(chunks, EvalAccumulator), "binned")):
            if available is None:
                row(table, n, name, scope, None, None, None, note="not importable")
                continue
            try:
                got, t_got, m_got = measure(fn)
                row(table, n, name, scope, got, t_got, m_got, exact, note=note)
                summary.append(f"{n} maps: exact (every metric) is {ratio(t_got, t_exact)} than {name} {scope}")
            except Exception as exc:  # report, do not abort the benchmark
                row(table, n, name, scope, None, None, None, note=f"failed: {exc}")
        if t_sk:
            summary.append(f"{n} maps: exact (every metric) is {ratio(t_sk, t_exact)} than "
                           f"scikit-learn P-AUROC + P-AP alone")
        summary.append(f"{n} maps: streaming is {ratio(t_exact, t_stream)} than exact")
        chunks = None                  # freed before the next size
        gc.collect()

    if args.full:
        n = args.full
        px = n * SIZE * SIZE
        side_by_side(table, summary, n, "256 px", lambda: synthetic_chunks(n, args.chunk), px,
                     args.chunk * SIZE * SIZE * 5, memory, px * 11)   # in memory: ~10 bytes a pixel, measured
    if args.native is not None:
        images = native_masks(args.native, args.native_category, args.native_fraction)
        px = sum(h * w for (h, w), _ in images)
        chunk_px = args.chunk * SIZE * SIZE
        largest = max(h * w for (h, w), _ in images)
        label = f"native {args.native_category}"
        summary.append(f"{label}: {len(images)} test images, {px / 1e9:.2f} Gpx, sizes "
                       f"{min(s for s, _ in images)}..{max(s for s, _ in images)}")
        side_by_side(table, summary, len(images), label, lambda: native_chunks(images, chunk_px), px,
                     max(chunk_px, largest) * 5, memory, px * 11)
    print_table(table)
    print()
    summary.append(f"load average at the end (1, 5, 15 min): {os.getloadavg()}")
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
