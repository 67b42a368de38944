"""Many masks: cached where the file is unchanged, the rest over a process pool."""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from typing import Iterator, Sequence

from threecad.cpus import pool_size
from threecad.stats.cache import MaskCache
from threecad.stats.measure import MaskResult, analyze_mask, empty_regions

log = logging.getLogger("threecad.stats")  # the name its log lines carried before the split


def default_workers() -> int:
    """The thread budget every pool follows (threecad.cpus)."""
    return pool_size()


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def analyze_masks(paths: Sequence[str], *, workers: int | None = None, cache: bool = True,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> list[MaskResult]:
    """MaskResult for each path, in order: cached where the file is unchanged, the rest
    computed over a process pool (`workers` processes; 1 computes in this process)."""
    workers = default_workers() if workers is None else max(1, int(workers))
    abs_paths = [os.path.abspath(p) for p in paths]
    keys = {p: _file_key(p) for p in abs_paths}
    results: dict[str, MaskResult] = {}
    for p, k in keys.items():
        if k is None:
            results[p] = MaskResult(0, 0, empty_regions(), error="file not found")
    store = MaskCache(cache_dir) if cache else None
    try:
        if store is not None:
            results.update(store.lookup({p: k for p, k in keys.items() if k is not None}))
        todo = sorted(p for p in keys if p not in results)
        log.info("stats: %d masks, %d cached, %d to compute", len(keys), len(keys) - len(todo), len(todo))
        batch: list[tuple[str, tuple[int, int], MaskResult]] = []
        last_store = time.monotonic()
        for path, res in zip(todo, _compute(todo, workers, progress)):
            results[path] = res
            if store is not None:
                batch.append((path, keys[path], res))
                # store as we go, so that an interrupted run keeps what it did
                if len(batch) >= 2000 or time.monotonic() - last_store > 10:
                    store.store(batch)
                    batch, last_store = [], time.monotonic()
        if store is not None:
            store.store(batch)
    finally:
        if store is not None:
            store.close()
    return [results[p] for p in abs_paths]


def _compute(todo: list[str], workers: int, progress: bool) -> Iterator[MaskResult]:
    """analyze_mask over `todo`, in order, with a progress bar; in this process for few files."""
    from tqdm.auto import tqdm

    if workers == 1 or len(todo) < 4 * workers:
        with tqdm(total=len(todo), desc="masks", unit="mask", disable=None if progress else True,
                  leave=False) as bar:
            for p in todo:
                yield analyze_mask(p)
                bar.update(1)
        return
    chunk = max(1, min(64, len(todo) // (workers * 8)))
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    # fork (where there is one) starts workers in milliseconds with the imports done; the
    # pool is made before the progress bar starts its monitor thread.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ctx.Pool(processes=min(workers, len(chunks))) as pool, \
            tqdm(total=len(todo), desc="masks", unit="mask", disable=None if progress else True,
                 leave=False) as bar:
        for part in pool.imap(_analyze_chunk, chunks):
            yield from part
            bar.update(len(part))


def _analyze_chunk(paths: list[str]) -> list[MaskResult]:
    return [analyze_mask(p) for p in paths]
