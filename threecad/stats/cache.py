"""The per-file mask results of earlier runs, in one sqlite file."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from threecad.errors import ThreecadError
from threecad.stats.measure import REGION_FIELDS, MaskResult

# Bump when the per-file analysis changes, so that old cache rows are recomputed.
ANALYSIS_VERSION = 4  # 4: masks read by threecad.masks (colour masks by their largest channel)


def default_cache_dir() -> Path:
    """`$THREECAD_CACHE`, else ~/.cache/threecad."""
    env = os.environ.get("THREECAD_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/threecad").expanduser()


class MaskCache:
    """Per-file MaskResults in one sqlite file, keyed by absolute path, size and mtime.

    sqlite because it is in the standard library, takes concurrent readers and writers
    (two `threecad stats` runs at once) and updates single rows without rewriting the file.
    One table per ANALYSIS_VERSION, so that results of an older analysis are never read.
    """

    TABLE = f"masks_v{ANALYSIS_VERSION}"

    def __init__(self, directory: str | os.PathLike | None = None):
        directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / "stats_masks.sqlite"
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, height INTEGER, width INTEGER, regions BLOB, runs BLOB, error TEXT)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise ThreecadError(f"cannot open the stats cache in {directory}: {exc}; set "
                                "$THREECAD_CACHE to a writable folder or pass --no-cache") from exc

    def lookup(self, keys: dict[str, tuple[int, int]]) -> dict[str, MaskResult]:
        """The cached results whose (size, mtime_ns) still match `keys` (path -> key)."""
        found: dict[str, MaskResult] = {}
        cur = self._db.execute(f"SELECT path, size, mtime_ns, height, width, regions, runs, error "
                               f"FROM {self.TABLE}")
        for path, size, mtime_ns, height, width, regions, runs, error in cur:
            if keys.get(path) == (size, mtime_ns):
                found[path] = MaskResult(
                    height, width, np.frombuffer(regions, dtype=np.float64).reshape(-1, len(REGION_FIELDS)),
                    error, np.frombuffer(runs, dtype=np.int32).reshape(-1, 4))
        return found

    def store(self, items: Iterable[tuple[str, tuple[int, int], MaskResult]]) -> None:
        rows = [(p, k[0], k[1], r.height, r.width,
                 np.ascontiguousarray(r.regions, dtype=np.float64).tobytes(),
                 np.ascontiguousarray(r.runs, dtype=np.int32).tobytes(), r.error)
                for p, k, r in items]
        if rows:
            with self._db:
                self._db.executemany(f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?,?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        self._db.close()

