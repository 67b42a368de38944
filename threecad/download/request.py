"""What a download is asked to do and what it did: the request, its checks before anything is
fetched, and the result."""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from threecad.download import dtd, mvtec, parquet
from threecad.download.sources import GDRIVE_FILE_IDS
from threecad.errors import ThreecadError
from threecad.verify import VerifyReport

DATASETS = ("3cad", "dtd", "mvtec")
SOURCES = ("auto", "gdrive", "hf", "url", "path")
DATASET_SOURCES = {"3cad": ("gdrive", "hf", "url", "path"), "dtd": ("url", "hf", "path"),
                   "mvtec": ("url", "hf", "path")}
AUTO = {"3cad": ("gdrive", "hf"), "dtd": ("url",), "mvtec": ("url",)}
HF_REPO_3CAD = "AI4Manufacturing/207"  # the Hub's (gated, parquet) copy of 3CAD: auto's fallback
OFFICIAL = {"dtd": dtd, "mvtec": mvtec}  # datasets with one official archive URL (read at call time)


def official_url(dataset: str) -> str | None:
    """The dataset's one official archive URL (None for 3CAD, which has several sources)."""
    module = OFFICIAL.get(dataset)
    return module.OFFICIAL_URL if module is not None else None


@dataclass
class DownloadRequest:
    """What `threecad download` was asked to do; the CLI options map onto these fields."""

    root: Path
    source: str = "auto"
    dataset: str = "3cad"
    variant: str = "english"
    repo_id: str | None = None
    revision: str | None = None
    url: str | None = None
    path: Path | None = None
    sha256: str | None = None
    force: bool = False
    keep_archive: bool = False
    allow_extra: bool = False  # install files that are not part of the dataset instead of leaving them out
    workers: int | None = None
    retries: int = 2  # automatic resumes of a dropped transfer within one run
    timeout: float = 60.0  # seconds without data before a transfer counts as dropped
    progress: bool | None = None  # None: progress bars on a terminal
    gdrive_endpoint: str | None = None  # default: $THREECAD_GDRIVE_ENDPOINT, else Google Drive
    hf_endpoint: str | None = None  # default: $HF_ENDPOINT, else the Hub
    hf_cache_dir: Path | None = None  # default: the Hub cache ($HF_HUB_CACHE / $HF_HOME)
    columns: str | None = None  # parquet sources: "image=...,mask=...,path=..." (see parquet.py)
    notify: Callable[[str], None] | None = None  # where notices (MVTec's licence) go; default: log


@dataclass
class DownloadResult:
    """What the download did: installed, or found the dataset already present."""

    root: Path
    status: str  # "installed" | "present"
    message: str
    source: dict = field(default_factory=dict)
    report: VerifyReport | None = None
    skipped: list[str] = field(default_factory=list)  # extra files left out (relative to the dataset)


def validate(req: DownloadRequest) -> None:
    """Normalise the request and refuse a bad one before anything is fetched or written."""
    dataset = (req.dataset or "").lower()
    if dataset not in DATASETS:
        raise ThreecadError(f"unknown --dataset {req.dataset!r}; choose one of {', '.join(DATASETS)}")
    req.dataset = dataset
    if req.source not in SOURCES:
        raise ThreecadError(f"unknown --source {req.source!r}; choose one of {', '.join(SOURCES)}")
    if req.source == "auto" and len(AUTO[dataset]) == 1:
        req.source = AUTO[dataset][0]
    if req.source != "auto" and req.source not in DATASET_SOURCES[dataset]:
        raise ThreecadError(f"--source {req.source} does not serve --dataset {dataset}; choose one of "
                            f"auto, {', '.join(DATASET_SOURCES[dataset])}")
    if req.source == "url" and not req.url and dataset in OFFICIAL:
        req.url = official_url(dataset)
    req.columns = req.columns or None
    parquet.parse_columns(req.columns)  # a malformed --columns is refused before anything is fetched
    need = {"hf": ("repo_id", "--repo-id ORG/NAME"), "url": ("url", "--url URL"), "path": ("path", "--path P")}
    if req.source in need and not getattr(req, need[req.source][0]):
        raise ThreecadError(f"--source {req.source} needs {need[req.source][1]}")
    if req.source in ("gdrive", "auto") and req.variant not in GDRIVE_FILE_IDS:
        raise ThreecadError(f"unknown --variant {req.variant!r}; choose english or pinyin")
    if req.source == "url":
        _validate_url(req.url)
    if req.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", req.sha256):
        raise ThreecadError(f"--sha256 must be 64 hex digits (got {req.sha256!r})")


def _validate_url(url: str) -> None:
    if not re.match(r"^https?://", url or "", re.IGNORECASE):
        raise ThreecadError(f"--url must start with http:// or https:// (got {url!r}); for a local file "
                            "use --source path --path FILE")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ThreecadError(f"--url {url!r} is not a valid URL ({exc})") from None
    if not parts.hostname:
        raise ThreecadError(f"--url {url!r} names no host")

