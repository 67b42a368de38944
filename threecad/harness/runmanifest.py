"""The run's manifest: every file the harness wrote into a run directory, with its xxh3 digest.

Why: a category record edited by hand (a metric in `categories/ACC.json`, consistently with
results.json) would otherwise be kept by `--resume` and submitted. `manifest.json` is brought
up to date whenever the harness writes a category's files or the run's aggregates; `--resume`
runs again, with a warning, a category whose files no longer match it, and `threecad
leaderboard audit` names any file that differs. It guards against edits and damage, not
against a forger who also rewrites the manifest: `leaderboard submit --root` computes the
numbers again from the predictions for that.

Ranks of a torchrun job write different categories at the same time, so an update holds a
lock of its own (not the run directory's, which rank 0 holds for the whole job).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import xxhash

from threecad.fsutil import atomic_write_json
from threecad.harness.predictions import file_xxh3
from threecad.integrity import sum_path

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SCHEMA = "threecad.manifest/1"
# the record keys that name a file of the category (relative to the run directory)
RECORD_FILES = ("checkpoint", "picture", "losses", "loss_curve", "traceback")
NESTED_FILES = {"predictions": ("maps", "index"), "test_tracking": ("test_curve", "test_curve_picture")}


def category_files(run_path: Path, abbr: str, record: dict[str, Any]) -> list[Path]:
    """The record's own file and every file it names."""
    names = [record.get(key) for key in RECORD_FILES]
    for key, inner in NESTED_FILES.items():
        entry = record.get(key)
        if isinstance(entry, dict):
            names += [entry.get(k) for k in inner]
    files = [Path(run_path) / "categories" / f"{abbr}.json"]
    files += [Path(run_path) / n for n in names if isinstance(n, str) and n]
    checkpoint = record.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint:  # and its checksum's sidecar (threecad.integrity)
        files.append(sum_path(Path(run_path) / checkpoint))
    return files


class RunManifest:
    def __init__(self, run_path: str | Path):
        self.run_path = Path(run_path)
        self.path = self.run_path / MANIFEST_FILE

    def read(self) -> dict[str, str] | None:
        """Relative path -> xxh3; None when the run has no manifest (made before runs kept one)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # damaged: nothing in it can vouch for a file
        files = data.get("files") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    def update(self, paths: Iterable[Path] = (), coming: dict[Path, bytes] | None = None) -> None:
        """Record the digests of `paths` as they are now (files that do not exist are dropped), and of
        the files `coming` (path -> the bytes about to be written there). A file listed before it is
        written: a process killed in between leaves a file that is missing, never one that is unlisted."""
        from filelock import FileLock

        paths = list(paths)
        with FileLock(str(self.run_path / ".manifest.lock")):
            files = self.read() or {}
            for path in paths:
                rel = self._relative(path)
                if path.is_file():
                    files[rel] = file_xxh3(path)
                else:
                    files.pop(rel, None)
            for path, data in (coming or {}).items():
                files[self._relative(path)] = xxhash.xxh3_64(data).hexdigest()
            atomic_write_json(self.path, {"schema": SCHEMA, "digest": "xxh3_64",
                                          "files": dict(sorted(files.items()))})

    def differing(self, paths: Iterable[Path]) -> list[str]:
        """Of `paths`, those that are missing, unlisted or not the file the manifest lists."""
        files = self.read() or {}
        out = []
        for path in paths:
            rel = self._relative(path)
            if rel not in files or not path.is_file() or file_xxh3(path) != files[rel]:
                out.append(rel)
        return out

    def check_all(self) -> list[str]:
        """Every listed file that is missing or differs (the whole run, for an audit)."""
        files = self.read() or {}
        return [rel for rel, digest in files.items()
                if not (self.run_path / rel).is_file() or file_xxh3(self.run_path / rel) != digest]

    def _relative(self, path: Path) -> str:
        return Path(path).relative_to(self.run_path).as_posix()
