"""The per-file mask results of earlier runs, in one sqlite file.

Every row carries a checksum (XXH3-128 over all its fields), written in the same statement
as the row and checked when it is read: a flipped bit in a cached region would otherwise
change the statistics of every later run without a word. A row that fails its check is
recomputed, and a file that sqlite finds damaged is started afresh, each with a warning.
Why per row and not a `.sum` beside the file, as the other caches have: several `threecad
stats` runs update this file in place at once, so a whole-file sum would be stale between
any write and the next sum, and a reader could not tell that from damage.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np
import xxhash

from threecad.cache import default_cache_dir, unwritable
from threecad.errors import ThreecadError
from threecad.fsutil import check_writable
from threecad.stats.measure import REGION_FIELDS, MaskResult

log = logging.getLogger("threecad.stats")

# Bump when the per-file analysis changes, so that old cache rows are recomputed.
ANALYSIS_VERSION = 5  # 4: masks read by threecad.masks; 5: each row carries its checksum
FILE_NAME = "stats_masks.sqlite"


def row_digest(path: str, size: int, mtime_ns: int, height: int, width: int, regions: bytes,
               runs: bytes, error: str | None) -> bytes:
    """The checksum of one row: every field, each with its length, so no two rows share one."""
    h = xxhash.xxh3_128()
    for field in (path.encode(), str(size).encode(), str(mtime_ns).encode(), str(height).encode(),
                  str(width).encode(), regions, runs, b"\0" if error is None else b"e" + error.encode()):
        h.update(len(field).to_bytes(8, "little") + field)
    return h.digest()


class MaskCache:
    """Per-file MaskResults in one sqlite file, keyed by absolute path, size and mtime.

    sqlite because it is in the standard library, takes concurrent readers and writers
    (two `threecad stats` runs at once) and updates single rows without rewriting the file.
    One table per ANALYSIS_VERSION, so that results of an older analysis are never read.
    """

    TABLE = f"masks_v{ANALYSIS_VERSION}"

    def __init__(self, directory: str | os.PathLike | None = None):
        directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.path = directory / FILE_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            check_writable(self.path)  # refused now, not at the first store after all the work
            if self.path.exists() and not os.access(self.path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.path))
        except OSError as exc:
            raise unwritable(directory, exc, "pass --no-cache") from None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            log.warning("stats cache %s is damaged (%s); starting it afresh", self.path, exc)
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            try:
                self._db = self._open()
            except (OSError, sqlite3.Error) as again:
                raise self._error(again) from again
        except (OSError, sqlite3.Error) as exc:
            raise self._error(exc) from exc

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            found = db.execute("PRAGMA quick_check").fetchone()[0]
            if found != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {found}")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, height INTEGER, width INTEGER, regions BLOB, runs BLOB, error TEXT, "
                "digest BLOB)")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _error(self, exc: Exception) -> ThreecadError:
        return ThreecadError(f"cannot open the stats cache {self.path}: {exc}; set $THREECAD_CACHE to a "
                             "writable folder or pass --no-cache")

    def lookup(self, keys: dict[str, tuple[int, int]]) -> dict[str, MaskResult]:
        """The cached results whose (size, mtime_ns) still match `keys` (path -> key) and whose
        checksum holds; the others are left out, to be computed again."""
        found: dict[str, MaskResult] = {}
        damaged = 0
        try:
            cur = self._db.execute(f"SELECT path, size, mtime_ns, height, width, regions, runs, error, digest "
                                   f"FROM {self.TABLE}")
            for path, size, mtime_ns, height, width, regions, runs, error, digest in cur:
                if keys.get(path) != (size, mtime_ns):
                    continue
                result = _result(path, size, mtime_ns, height, width, regions, runs, error, digest)
                if result is None:
                    damaged += 1
                else:
                    found[path] = result
        except sqlite3.DatabaseError as exc:
            log.warning("stats cache %s cannot be read (%s); recomputing every mask", self.path, exc)
            return {}
        if damaged:
            log.warning("stats cache %s: %d cached mask result(s) fail their checksum; recomputing them",
                        self.path, damaged)
        return found

    def store(self, items: Iterable[tuple[str, tuple[int, int], MaskResult]]) -> None:
        rows = []
        for p, k, r in items:
            regions = np.ascontiguousarray(r.regions, dtype=np.float64).tobytes()
            runs = np.ascontiguousarray(r.runs, dtype=np.int32).tobytes()
            rows.append((p, k[0], k[1], r.height, r.width, regions, runs, r.error,
                         row_digest(p, k[0], k[1], r.height, r.width, regions, runs, r.error)))
        if rows:
            with self._db:
                self._db.executemany(f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        self._db.close()


def _result(path, size, mtime_ns, height, width, regions, runs, error, digest) -> MaskResult | None:
    """The MaskResult of a row, or None when the row does not match its checksum."""
    typed = (isinstance(path, str) and all(isinstance(v, int) for v in (size, mtime_ns, height, width))
             and isinstance(regions, bytes) and isinstance(runs, bytes) and isinstance(digest, bytes)
             and (error is None or isinstance(error, str)))
    if not typed or digest != row_digest(path, size, mtime_ns, height, width, regions, runs, error):
        return None
    return MaskResult(height, width, np.frombuffer(regions, dtype=np.float64).reshape(-1, len(REGION_FIELDS)),
                      error, np.frombuffer(runs, dtype=np.int32).reshape(-1, 4))
