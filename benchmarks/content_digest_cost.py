"""What keying the preprocessing cache on the files' bytes costs, next to the old stat key.

The old key hashed each file's path, size and mtime (one stat per file); the new one,
`threecad.cache.content_key`, reads every image and mask and hashes it with XXH3-128, in
threads, as a Dataset does each time it is built. Both run on the same files: every training
and test image and every mask of a root, which is what one `bench` over all categories keys.
Content keys are timed from the page cache (a root read recently, or small enough to stay
there) and cold (each file's pages dropped first with posix_fadvise, so the disk is read).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/content_digest_cost.py [--root R] [--scale 0.1]

Data: --root, else `threecad synth` at --scale with its images at full size (Table 1's sizes,
long side up to 1024 px; no --max-size), written to a temporary folder and removed after.
The last lines scale the measured time per byte to the full 3CAD image count.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from threecad.cache import content_key, default_workers
from threecad.catalog import table1
from threecad.layout import scan_root


def stat_key(paths: list[str]) -> str:
    """The key the cache used before: sha256 over each file's path, size and mtime."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (theirs only; nothing else is touched)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn, repeats: int, before=None) -> float:
    """Median seconds of `repeats` calls (`before` runs untimed ahead of each)."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(root: Path, workers: int, repeats: int) -> None:
    table = scan_root(root).table
    paths = table["image_path"].tolist() + table["mask_path"].dropna().tolist()
    n_images, n_bytes = len(table), sum(os.path.getsize(p) for p in paths)
    content_key(paths, workers)  # warm the page cache
    rows = [("stat key (size, mtime)", timed(lambda: stat_key(paths), repeats)),
            ("content key, page cache", timed(lambda: content_key(paths, workers), repeats)),
            ("content key, cold", timed(lambda: content_key(paths, workers), repeats, lambda: evict(paths)))]
    print(f"root {root}: {n_images} images and {len(paths) - n_images} masks, {n_bytes / 2**20:.0f} MiB "
          f"({n_bytes / len(paths) / 2**10:.0f} KiB per file); {workers} digest threads, median of {repeats}")
    base = rows[0][1]
    print(f"{'key':<26}{'seconds':>10}{'us/image':>11}{'MiB/s':>9}{'x stat':>9}")
    for name, seconds in rows:
        rate = f"{n_bytes / 2**20 / seconds:9.0f}" if name.startswith("content") else f"{'-':>9}"
        print(f"{name:<26}{seconds:>10.3f}{seconds / n_images * 1e6:>11.0f}{rate}{seconds / base:>9.0f}")
    full = int(table1()[["train_good", "test_good", "test_defect"]].to_numpy().sum())
    scale = full / n_images
    print(f"scaled to the full 3CAD ({full} images, {n_bytes * scale / 2**30:.1f} GiB at this set's bytes "
          f"per image): stat key {base * scale:.2f} s, content key {rows[1][1] * scale:.1f} s from the "
          f"page cache, {rows[2][1] * scale:.1f} s cold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="an existing dataset root (else synth)")
    parser.add_argument("--scale", type=float, default=0.1, help="synth --scale when no --root")
    parser.add_argument("--workers", type=int, default=None, help="digest threads (default: CPUs)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workers = args.workers or default_workers()
    if args.root is not None:
        measure(args.root, workers, args.repeats)
        return
    from threecad.synth import generate

    with tempfile.TemporaryDirectory(prefix="threecad-digest-") as tmp:
        start = time.perf_counter()
        root = generate(Path(tmp) / "synth", scale=args.scale, seed=0, progress=False)
        print(f"threecad synth --scale {args.scale} (full-size images) in {time.perf_counter() - start:.0f} s")
        measure(root, workers, args.repeats)


if __name__ == "__main__":
    main()
