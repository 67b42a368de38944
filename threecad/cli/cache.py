"""`threecad cache list|clean`: what threecad keeps in its cache folder, and removing it.

The folder (`threecad.cache.default_cache_dir`: $THREECAD_CACHE, else $XDG_CACHE_HOME/threecad,
else ~/.cache/threecad) holds preprocessed images (one `.npy` per category, split, size and
dataset content, with its `.sum` checksum and `.lock`) and the per-mask statistics
(`stats_masks.sqlite`). Everything there can be rebuilt; a cache being built by another
process right now is skipped, not removed.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import click


def _kind(path: Path) -> str:
    name = path.name
    if name.startswith("stats_masks"):
        return "mask statistics (threecad stats)"
    if ".npy" in name:
        return "preprocessed images (bench, datasets)"
    return "other"


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@click.group("cache")
def command() -> None:
    """threecad's cache folder: list what is in it, or clean it (everything there can be rebuilt).

    \b
    Examples:
      threecad cache list
      threecad cache clean --older-than 30
    """


@command.command("list")
def list_command() -> None:
    """Where the cache is, and what it holds by kind, with sizes."""
    from threecad.cache import default_cache_dir

    folder = default_cache_dir()
    files = _entries(folder)
    click.echo(f"cache folder: {folder}" + ("" if folder.is_dir() else " (not created yet)"))
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path in files:
        kind = totals[_kind(path)]
        kind[0] += 1
        kind[1] += path.stat().st_size
    for kind, (count, size) in sorted(totals.items()):
        click.echo(f"  {kind}: {count} files, {_size(size)}")
    click.echo(f"total: {_size(sum(size for _, size in totals.values()))}")


@command.command("clean")
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=None, metavar="DAYS",
              help="Only files not modified for DAYS days (default: everything).")
def clean_command(days: float | None) -> None:
    """Remove the cached files (a cache another process is building now is left alone)."""
    from filelock import FileLock, Timeout

    from threecad.cache import default_cache_dir

    folder = default_cache_dir()
    cutoff = None if days is None else time.time() - days * 86400
    removed, freed, busy = 0, 0, set()
    for path in _entries(folder):
        if path.suffix == ".lock" or (cutoff is not None and path.stat().st_mtime > cutoff):
            continue
        data = path if path.suffix == ".npy" else path.with_suffix("") if path.suffix == ".sum" else path
        lock = FileLock(str(data) + ".lock") if data.suffix == ".npy" else None
        try:
            if lock is not None:
                lock.acquire(timeout=0)
        except Timeout:
            busy.add(data)
            continue
        try:
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed, freed = removed + 1, freed + size
        finally:
            if lock is not None:
                lock.release()
    for path in _entries(folder):  # locks of caches that are gone
        if path.suffix == ".lock" and not path.with_suffix("").exists():
            path.unlink(missing_ok=True)
    click.echo(f"removed {removed} files ({_size(freed)}) from {folder}"
               + (f"; {len(busy)} cache{'s' if len(busy) > 1 else ''} in use by another process, left" if busy else ""))
