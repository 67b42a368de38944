"""File manifest of a dataset root: the sha256 and size of every file.

Written by `threecad verify --write-manifest` and by `threecad download`, so that a later
`threecad verify` can say which files changed, went missing or appeared since. It lives at
`<root>/MANIFEST.sha256.json` (a root-level .json file, which the layout scan ignores).
Hidden files and folders (names starting with ".") are not part of the dataset and are
left out. The manifest also carries where the dataset came from (`source`: the archive's
sha256, URL or repository), so that the provenance stays with the data.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from tqdm.auto import tqdm

from threecad.errors import DatasetError
from threecad.fsutil import atomic_write_json

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.sha256.json"
FORMAT = "threecad-manifest/1"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass
class Manifest:
    """Relative POSIX path -> FileEntry, plus the provenance of the dataset."""

    files: dict[str, FileEntry]
    source: dict = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "created": self.created,
            "source": self.source,
            "files": {k: {"sha256": v.sha256, "size": v.size} for k, v in sorted(self.files.items())},
        }


@dataclass
class ManifestDiff:
    """What differs between a manifest and the files now on disk (relative paths)."""

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def to_dict(self) -> dict:
        return {"changed": self.changed, "missing": self.missing, "extra": self.extra}


def manifest_path(root: str | os.PathLike) -> Path:
    return Path(root) / MANIFEST_NAME


def sha256_file(path: str | os.PathLike, progress: bool | None = False) -> str:
    """sha256 of a file, read in 1 MiB chunks (progress: a byte bar; None: on a terminal)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    disable = None if progress is None else not progress
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, disable=disable,
                                     desc=f"sha256 {Path(path).name}", leave=False) as bar:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def list_files(root: str | os.PathLike) -> list[str]:
    """Every dataset file under root as a sorted relative POSIX path (no hidden, no manifest)."""
    root = Path(root)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or (rel_dir == Path(".") and name == MANIFEST_NAME):
                continue
            out.append((rel_dir / name).as_posix())
    return sorted(out)


def hash_files(root: str | os.PathLike, rel_paths: Iterable[str], workers: int | None = None,
               progress: bool = False, known: Mapping[str, FileEntry] | None = None) -> dict[str, FileEntry]:
    """sha256 and size of the given files, in parallel threads (hashlib releases the GIL).

    `known` holds entries already computed (for example by verify while decoding), which
    are reused instead of reading those files again.
    """
    root = Path(root)
    known = dict(known or {})
    todo = [p for p in rel_paths if p not in known]

    def one(rel: str) -> tuple[str, FileEntry]:
        full = root / rel
        return rel, FileEntry(sha256_file(full), full.stat().st_size)

    out = {p: known[p] for p in rel_paths if p in known}
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for rel, entry in tqdm(pool.map(one, todo), total=len(todo), disable=not progress or not todo,
                               desc="hashing", unit="file"):
            out[rel] = entry
    return out


def build_manifest(root: str | os.PathLike, workers: int | None = None, progress: bool = False,
                   known: Mapping[str, FileEntry] | None = None, source: dict | None = None) -> Manifest:
    files = hash_files(root, list_files(root), workers=workers, progress=progress, known=known)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Manifest(files=files, source=dict(source or {}), created=created)


def read_manifest(root: str | os.PathLike) -> Manifest | None:
    """The manifest at the root, or None when there is none; a broken one is a DatasetError."""
    path = manifest_path(root)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        files = {k: FileEntry(str(v["sha256"]), int(v["size"])) for k, v in data["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"manifest {path} is unreadable ({exc}); delete it or rewrite it with "
                           "`threecad verify --write-manifest`") from exc
    return Manifest(files=files, source=data.get("source") or {}, created=data.get("created", ""))


def size_mismatch(root: str | os.PathLike, manifest: Manifest) -> str | None:
    """The first file of `manifest` missing under `root` or of another size, said in words; None
    when every size matches (a quick completeness check, no hashing)."""
    for rel, entry in manifest.files.items():
        f = Path(root) / rel
        if not f.is_file() or f.stat().st_size != entry.size:
            return f"{rel} is missing or has the wrong size"
    return None


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Write atomically: a reader sees the old manifest or the new one, never half of one."""
    path = manifest_path(root)
    atomic_write_json(path, manifest.to_dict())
    log.debug("wrote %s (%d files)", path, len(manifest.files))
    return path


def compare(manifest: Manifest, current: Mapping[str, FileEntry]) -> ManifestDiff:
    """Changed (size or sha256), missing (in manifest, not on disk) and extra files."""
    diff = ManifestDiff()
    for rel, entry in manifest.files.items():
        now = current.get(rel)
        if now is None:
            diff.missing.append(rel)
        elif now != entry:
            diff.changed.append(rel)
    diff.extra = sorted(set(current) - set(manifest.files))
    diff.changed.sort()
    diff.missing.sort()
    return diff
