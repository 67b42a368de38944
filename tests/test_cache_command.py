"""`threecad cache list|clean` on the folder every cache uses ($THREECAD_CACHE here)."""
from __future__ import annotations

import os
import time

from click.testing import CliRunner
from filelock import FileLock

from threecad.cli import main


def test_list_and_clean(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("THREECAD_CACHE", str(cache))
    for name in ("ACC-train-64px-v3-aa.npy", "ACC-train-64px-v3-aa.npy.sum", "CS-test-64px-v3-bb.npy",
                 "stats_masks.sqlite"):
        (cache / name).write_bytes(b"x" * 1000)
    old = time.time() - 40 * 86400
    os.utime(cache / "CS-test-64px-v3-bb.npy", (old, old))
    listed = CliRunner().invoke(main, ["cache", "list"])
    assert listed.exit_code == 0 and str(cache) in listed.output
    assert "preprocessed images (bench, datasets): 3 files" in listed.output and "mask statistics" in listed.output
    aged = CliRunner().invoke(main, ["cache", "clean", "--older-than", "30"])
    assert aged.exit_code == 0 and "removed 1 files" in aged.output
    assert not (cache / "CS-test-64px-v3-bb.npy").exists() and (cache / "ACC-train-64px-v3-aa.npy").exists()
    lock = FileLock(str(cache / "ACC-train-64px-v3-aa.npy.lock"))  # another process building this cache
    lock.acquire(timeout=0)
    try:
        busy = CliRunner().invoke(main, ["cache", "clean"])
    finally:
        lock.release()
    assert "1 cache in use by another process, left" in busy.output
    assert sorted(p.name for p in cache.iterdir()) == [
        "ACC-train-64px-v3-aa.npy", "ACC-train-64px-v3-aa.npy.lock", "ACC-train-64px-v3-aa.npy.sum"]
    CliRunner().invoke(main, ["cache", "clean"])
    assert list(cache.iterdir()) == []
