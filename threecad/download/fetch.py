"""Which source serves a request (one named source, or `auto`'s fallback order) and what it
delivered: archives, a folder or parquet files."""
from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from threecad.archive import looks_like_archive
from threecad.download import parquet
from threecad.download.request import AUTO, HF_REPO_3CAD, DownloadRequest, official_url
from threecad.download.sources import GDRIVE_FILE_IDS, DownloadError, fetch_gdrive, fetch_hf, fetch_url, gdrive_url
from threecad.errors import ThreecadError

log = logging.getLogger("threecad.download")  # one logger name for the whole command


@dataclass
class Fetched:
    """What a source delivered: archives to extract, a folder to copy or parquet files to convert."""

    archives: list[Path] = field(default_factory=list)
    folder: Path | None = None
    within: Path | None = None  # links in `folder` may point anywhere under this (default: folder)
    owned: bool = True  # archives live in our staging folder (False: the user's own files)
    source: dict = field(default_factory=dict)
    parquet: list[Path] = field(default_factory=list)  # a single parquet file given as --path


SOURCE_NAMES = {"gdrive": "Google Drive", "hf": "the Hugging Face copy", "url": "the official URL"}


def _hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def fetch(req: DownloadRequest, staging: Path) -> Fetched:
    """The requested source, or for `auto` the first of the fallback order that delivers."""
    if req.source != "auto":
        fetched = _fetch_one(req, req.source, staging)
        fetched.source["served_by"] = req.source
        return fetched
    attempts: list[dict] = []
    order = AUTO[req.dataset]
    for source in order:
        if source == "hf" and not _hf_token():
            repo = req.repo_id or HF_REPO_3CAD
            attempts.append(dict(source="hf", repo_id=repo, error="not tried: HF_TOKEN is not set"))
            break
        try:
            fetched = _fetch_one(req, source, staging)
        except DownloadError as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("--source auto: %s failed: %s", SOURCE_NAMES.get(source, source), line)
            attempts.append(dict(source=source, error=line))
            continue
        fetched.source.update(served_by=source, attempts=attempts)
        if attempts:
            log.warning("--source auto: served by %s", describe(fetched.source))
        return fetched
    tried = "; ".join(f"{SOURCE_NAMES.get(a['source'], a['source'])}: {a['error']}" for a in attempts)
    hint = ""
    if attempts and attempts[-1]["error"].startswith("not tried"):
        repo = attempts[-1]["repo_id"]
        hint = (f"; to fall back on the Hub copy, accept its terms on https://huggingface.co/datasets/{repo} "
                "and set HF_TOKEN")
    raise DownloadError(f"every source of --source auto failed ({tried}){hint}; or copy the archive over "
                        "and use --source path --path ARCHIVE")


def describe(source: dict) -> str:
    """The source that served the data, in words."""
    kind = source.get("source")
    if kind == "hf":
        return f"Hugging Face {source.get('repo_id')} (commit {str(source.get('commit', '?'))[:12]})"
    if kind == "gdrive":
        return f"Google Drive file {source.get('file_id')}"
    if kind == "url":
        return str(source.get("url"))
    return str(source.get("path"))


def _fetch_one(req: DownloadRequest, kind: str, staging: Path) -> Fetched:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if kind == "gdrive":
        file_id = GDRIVE_FILE_IDS[req.variant]
        archive = fetch_gdrive(file_id, staging, req.gdrive_endpoint, req.retries, req.timeout, req.progress)
        return Fetched([archive], source=dict(source="gdrive", variant=req.variant, file_id=file_id,
                                              url=gdrive_url(file_id, req.gdrive_endpoint), fetched=now))
    if kind == "url":
        url = req.url or official_url(req.dataset)
        archive = fetch_url(url, staging, req.retries, req.timeout, req.progress)
        return Fetched([archive], source=dict(source="url", url=url, fetched=now))
    if kind == "hf":
        repo_id = req.repo_id or HF_REPO_3CAD
        snap = fetch_hf(repo_id, req.revision, req.hf_endpoint, req.hf_cache_dir, req.progress)
        info = dict(source="hf", repo_id=repo_id, revision=req.revision or "main", commit=snap.name,
                    fetched=now)
        archives = sorted(p for p in snap.rglob("*") if p.is_file() and looks_like_archive(p))
        if archives:
            return Fetched(archives, owned=False, source=info)
        # the Hub cache links snapshot files to ../../blobs: links may stay inside the repo's cache folder
        return Fetched(folder=snap, within=snap.parent.parent, owned=False, source=info)
    path = Path(req.path).expanduser()
    if not os.path.lexists(path):
        raise ThreecadError(f"--path {path} does not exist; give an archive (zip, tar, tar.gz) or a folder")
    info = dict(source="path", path=str(path.absolute()), fetched=now)
    if path.is_dir():
        return Fetched(folder=path, owned=False, source=info)
    if not path.is_file():
        raise ThreecadError(f"--path {path} is neither a file nor a folder (a dangling link, a device?)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ThreecadError(f"cannot read --path {path} ({exc.strerror}); make it readable and try again") from None
    if path.suffix.lower() == ".parquet" or parquet.is_parquet(path):
        return Fetched(parquet=[path], owned=False, source=info)
    return Fetched([path], owned=False, source=info)

