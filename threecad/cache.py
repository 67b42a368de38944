"""The preprocessing cache: decoded, resized samples as one memory-mapped uint8 file.

Why: decoding a multi-megapixel PNG and resizing it costs far more than a training step of
a small model, and every epoch would pay it again. The cache stores what the Dataset
returns before the float conversion, one `.npy` file per (dataset fingerprint, category,
split, size), so that every epoch after the build reads pages from the OS page cache.

The file is built eagerly and completely, or not at all: a reader never sees half a cache.
Builds are guarded by a file lock (two processes asking for the same cache build it once;
the second waits and then reads it) and land by atomic rename. Readers open the file
read-only, lazily, once per process, so DataLoader workers (fork or spawn) each map it
themselves instead of inheriting or pickling a mapping.

Each file carries a checksum (`<file>.sum`, see threecad.integrity), written after the
file lands and checked when a Dataset opens the cache: a flipped bit would otherwise reach
every later run as a wrong pixel. A cache that fails the check, or cannot be opened at
all (a damaged `.npy` header), is rebuilt with one warning.

The key names the files' bytes (`content_key`), not their sizes and mtimes: a training
image overwritten with other pixels of the same size, its mtime put back, must not be
served from the old cache. Reading every file once per Dataset is the price; see
benchmarks/content_digest_cost.py.

Where caches live (this one and the stats cache): `default_cache_dir`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import xxhash
from filelock import FileLock

from threecad import integrity
from threecad.cpus import pool_size
from threecad.errors import ThreecadError
from threecad.fsutil import check_writable, open_regular
from threecad.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_ENV = "THREECAD_CACHE"
# Below this many samples a thread pool costs more than it saves.
PARALLEL_MIN_ITEMS = 8
READ_CHUNK = 1 << 20  # most dataset files are read in one or two calls


def default_cache_dir() -> Path:
    """Where every threecad cache lives: `$THREECAD_CACHE`, else `$XDG_CACHE_HOME/threecad`,
    else ~/.cache/threecad. A relative $XDG_CACHE_HOME is ignored, as the XDG base directory
    specification asks."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "threecad"
    return Path("~/.cache/threecad").expanduser()


def unwritable(folder: Path, exc: OSError, fallback: str) -> ThreecadError:
    """The one-line error for a cache folder that cannot be written (or its lock taken)."""
    if isinstance(exc, ThreecadError):  # check_writable's, which names the folder already
        what = str(exc)
    else:
        why = exc.strerror.lower() if isinstance(exc.strerror, str) else str(exc)
        what = f"cannot write the cache folder {folder}: {why}"
    return ThreecadError(f"{what}; set ${CACHE_ENV} to a writable folder or {fallback}")


def resolve_cache_dir(cache: bool | str | os.PathLike | None) -> Path | None:
    """`True` -> the default folder, a path -> that folder, `False`/`None` -> no cache."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_dir()
    return Path(cache).expanduser()


def cache_file(cache_dir: Path, fingerprint: str, category: str, split: str, size: int) -> Path:
    """The file for one (dataset fingerprint, category, split, size)."""
    safe_cat = re.sub(r"[^A-Za-z0-9_.-]", "_", category)
    return Path(cache_dir) / f"{safe_cat}-{split}-{size}px-{fingerprint}.npy"


def default_workers() -> int:
    """The thread budget every pool follows (threecad.cpus)."""
    return pool_size()


def content_key(paths: list[str | None], workers: int | None = None) -> str:
    """XXH3-128 over the bytes of every file, in order (None: no file, as a good image's
    mask): the part of a cache's key that says which pixels it holds. Paths are left out,
    so a dataset moved or copied elsewhere keeps its caches.

    Read in threads: the time is in reading, and reads release the GIL.
    """
    local = threading.local()

    def digest(path: str | None) -> bytes:
        if path is None:
            return b""
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(READ_CHUNK)
        h = xxhash.xxh3_128()
        view = memoryview(buf)
        with open_regular(path) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])
        return h.digest()

    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(paths) < PARALLEL_MIN_ITEMS:
        digests = [digest(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            digests = list(pool.map(digest, paths))
    total = xxhash.xxh3_128()
    for d in digests:
        total.update(len(d).to_bytes(1, "little") + d)
    return total.hexdigest()


def _problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why `path` is not a usable cache of `shape` (None: usable; "missing": not built yet)."""
    if not path.is_file():
        return "missing"
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as exc:  # noqa: BLE001 - a damaged header raises anything (ValueError, TokenError, ...)
        return f"it cannot be opened ({type(exc).__name__})"
    if arr.dtype != np.uint8 or tuple(arr.shape) != tuple(shape):
        return f"it holds {arr.dtype} {tuple(arr.shape)}, not uint8 {tuple(shape)}"
    del arr
    return integrity.problem(path)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path` left by a killed build (only called while holding the lock)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def ensure_cache(path: Path, n_items: int, item_shape: tuple[int, ...],
                 load_item: Callable[[int], np.ndarray], workers: int | None = None,
                 desc: str = "caching") -> Path:
    """Make sure `path` holds an (n_items, *item_shape) uint8 array; build it if not.

    `load_item(i)` returns item i; it is called from a thread pool (PIL decoding and
    resizing release the GIL, so threads use every core without pickling anything).
    """
    shape = (n_items, *item_shape)
    path = Path(path)
    if _problem(path, shape) is None:
        return path
    try:  # a cache that is already there is read even from a read-only folder; a build is not
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent, folder=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as exc:
        raise unwritable(path.parent, exc, "pass cache=False to ThreeCAD") from None
    try:
        problem = _problem(path, shape)
        if problem is None:  # another process built it while we waited
            log.info("cache %s built by another process", path.name)
            return path
        if problem != "missing":
            log.warning("rebuilding the cache %s: %s", path, problem)
        _remove_stale_temporaries(path)
        _build(path, shape, load_item, workers, desc)
    finally:
        lock.release()
    return path


def _build(path: Path, shape: tuple[int, ...], load_item: Callable[[int], np.ndarray],
           workers: int | None, desc: str) -> None:
    nbytes = int(np.prod(shape, dtype=np.int64))
    free = shutil.disk_usage(path.parent).free
    if nbytes > free:
        raise ThreecadError(f"the cache needs {nbytes / 2**30:.1f} GiB but {path.parent} has "
                            f"{free / 2**30:.1f} GiB free; set ${CACHE_ENV} elsewhere or pass cache=False")
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    n = shape[0]
    workers = default_workers() if workers is None else max(1, workers)
    # at DEBUG: a bench builds one per category and split; `prepare` says once what they took
    log.debug("building cache %s (%d items, %.0f MiB, %d threads)", path, n, nbytes / 2**20, workers)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)

        def fill(i: int) -> None:
            out[i] = load_item(i)

        with progress_bar(total=n, desc=desc, unit="img", quiet=True) as bar:
            if workers == 1 or n < PARALLEL_MIN_ITEMS:
                for i in range(n):
                    fill(i)
                    bar.update()
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for _ in pool.map(fill, range(n)):
                        bar.update()
        out.flush()
        del out
        digest = integrity.file_digest(tmp)
        integrity.sum_path(path).unlink(missing_ok=True)  # the old sum must not vouch for the new file
        os.replace(tmp, path)
        integrity.write_sum(path, digest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class CachedArray:
    """A read-only memory map of a cache file, opened lazily once per process.

    Pickles without the mapping (spawned DataLoader workers reopen it) and notices a
    fork by the process id, so no mapping crosses a process boundary.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._array: np.ndarray | None = None
        self._pid: int | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None or self._pid != os.getpid():
            self._array = np.load(self.path, mmap_mode="r")
            self._pid = os.getpid()
        return self._array

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.array[index])  # a private copy, safe to hand to torch

    def __len__(self) -> int:
        return len(self.array)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None, "_pid": None}
