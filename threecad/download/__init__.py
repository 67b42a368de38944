"""`download`: get a dataset (3CAD, MVTec AD, or DTD for the synthetic anomalies) into a root,
complete and untampered.

Sources (`sources.py`): the official archives (3CAD on Google Drive through gdown, MVTec AD on
MVTec's server, DTD on the VGG server), a Hugging Face dataset repository (huggingface_hub,
which honours HF_ENDPOINT, HF_TOKEN / login and its cache), any http(s) URL (requests,
progress bar, HTTP Range resume) or a local archive, folder or parquet file.

`auto` is the dataset's official source; for 3CAD it is a fallback order, because Google
Drive often refuses large public files for a day: the Drive archive first, then the Hub copy
(`HF_REPO_3CAD`, gated: it needs HF_TOKEN, so it is tried only when HF_TOKEN is set). Each
failure is logged in one line, and the manifest records which source served the data
(`source.served_by`, `source.attempts`).

A source may hold parquet rows instead of files (the Hub copy of 3CAD, a snapshot of it
fetched by other means): `parquet.py` writes them out in the MVTec layout first, and the
result goes through the same verify, manifest and install as any archive.

What lands at the root is all or nothing. Downloads accumulate in a staging folder beside
the root (`.<root>.download/`, where an interrupted transfer resumes); the archive's sha256
is computed (and checked against `--sha256`, or for DTD's official archive against the MD5
torchvision publishes); it is extracted (bounded by `threecad.archive`'s bomb limits) into a
temporary folder beside the root (`.<root>.tmp-*`, same disk, so the final move is one
rename), the dataset folder is found and checked (`verify` for 3CAD, `dtd.check_dtd` for
DTD), the file manifest is written with the archive's checksums as provenance, and only then
is the dataset renamed into place.

Files that are not part of the dataset (a readme, a stray folder, `.DS_Store` beside the
category folders; see the layout scan's `unexpected_file`, `unknown_folder` and `non_image`)
are not installed: they are left out and listed in the message and in the manifest's
`source.skipped_extra`. `allow_extra=True` (`--allow-extra`) installs them as they are.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from threecad.archive import (ArchiveError, UnsafeArchiveError, copy_tree, find_dataset_dir, list_members,
                              looks_like_archive, safe_extract, source_files, uncompressed_size)
from . import dtd as _dtd
from . import mvtec as _mvtec
from . import parquet as _parquet
from threecad.download.sources import (FREE_SPACE_MARGIN, GDRIVE_ENDPOINT, GDRIVE_ENDPOINT_ENV,  # noqa: F401
                                       GDRIVE_FILE_IDS, DownloadError, _gib, fetch_gdrive, fetch_hf, fetch_url,
                                       gdrive_url)
from threecad.errors import DatasetError, ThreecadError
from threecad.layout import scan_root
from threecad.manifest import MANIFEST_NAME, build_manifest, read_manifest, write_manifest
from threecad.verify import VerifyReport, verify

log = logging.getLogger(__name__)

DATASETS = ("3cad", "dtd", "mvtec")
SOURCES = ("auto", "gdrive", "hf", "url", "path")
_DATASET_SOURCES = {"3cad": ("gdrive", "hf", "url", "path"), "dtd": ("url", "hf", "path"),
                    "mvtec": ("url", "hf", "path")}
_AUTO = {"3cad": ("gdrive", "hf"), "dtd": ("url",), "mvtec": ("url",)}
HF_REPO_3CAD = "AI4Manufacturing/207"  # the Hub's (gated, parquet) copy of 3CAD: auto's fallback
_OFFICIAL = {"dtd": _dtd, "mvtec": _mvtec}  # datasets with one official archive URL (read at call time)


def _official_url(dataset: str) -> str | None:
    module = _OFFICIAL.get(dataset)
    return module.OFFICIAL_URL if module is not None else None
_JUNK_KINDS = {"unexpected_file", "unknown_folder", "non_image"}


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
    root: Path
    status: str  # "installed" | "present"
    message: str
    source: dict = field(default_factory=dict)
    report: VerifyReport | None = None
    skipped: list[str] = field(default_factory=list)  # extra files left out (relative to the dataset)


@dataclass
class _Fetched:
    """What a source delivered: archives to extract, or a folder to copy."""

    archives: list[Path] = field(default_factory=list)
    folder: Path | None = None
    within: Path | None = None  # links in `folder` may point anywhere under this (default: folder)
    owned: bool = True  # archives live in our staging folder (False: the user's own files)
    source: dict = field(default_factory=dict)
    parquet: list[Path] = field(default_factory=list)  # a single parquet file given as --path


# ---------------------------------------------------------------------------- sources


def _hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def _fetch(req: DownloadRequest, staging: Path) -> _Fetched:
    """The requested source, or for `auto` the first of the fallback order that delivers."""
    if req.source != "auto":
        fetched = _fetch_one(req, req.source, staging)
        fetched.source["served_by"] = req.source
        return fetched
    attempts: list[dict] = []
    order = _AUTO[req.dataset]
    for source in order:
        if source == "hf" and not _hf_token():
            repo = req.repo_id or HF_REPO_3CAD
            attempts.append(dict(source="hf", repo_id=repo, error="not tried: HF_TOKEN is not set"))
            break
        try:
            fetched = _fetch_one(req, source, staging)
        except DownloadError as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("--source auto: %s failed: %s", _SOURCE_NAMES.get(source, source), line)
            attempts.append(dict(source=source, error=line))
            continue
        fetched.source.update(served_by=source, attempts=attempts)
        if attempts:
            log.warning("--source auto: served by %s", _describe(fetched.source))
        return fetched
    tried = "; ".join(f"{_SOURCE_NAMES.get(a['source'], a['source'])}: {a['error']}" for a in attempts)
    hint = ""
    if attempts and attempts[-1]["error"].startswith("not tried"):
        repo = attempts[-1]["repo_id"]
        hint = (f"; to fall back on the Hub copy, accept its terms on https://huggingface.co/datasets/{repo} "
                "and set HF_TOKEN")
    raise DownloadError(f"every source of --source auto failed ({tried}){hint}; or copy the archive over "
                        "and use --source path --path ARCHIVE")


_SOURCE_NAMES = {"gdrive": "Google Drive", "hf": "the Hugging Face copy", "url": "the official URL"}


def _describe(source: dict) -> str:
    kind = source.get("source")
    if kind == "hf":
        return f"Hugging Face {source.get('repo_id')} (commit {str(source.get('commit', '?'))[:12]})"
    if kind == "gdrive":
        return f"Google Drive file {source.get('file_id')}"
    if kind == "url":
        return str(source.get("url"))
    return str(source.get("path"))


def _fetch_one(req: DownloadRequest, kind: str, staging: Path) -> _Fetched:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if kind == "gdrive":
        file_id = GDRIVE_FILE_IDS[req.variant]
        archive = fetch_gdrive(file_id, staging, req.gdrive_endpoint, req.retries, req.timeout, req.progress)
        return _Fetched([archive], source=dict(source="gdrive", variant=req.variant, file_id=file_id,
                                               url=gdrive_url(file_id, req.gdrive_endpoint), fetched=now))
    if kind == "url":
        url = req.url or _official_url(req.dataset)
        archive = fetch_url(url, staging, req.retries, req.timeout, req.progress)
        return _Fetched([archive], source=dict(source="url", url=url, fetched=now))
    if kind == "hf":
        repo_id = req.repo_id or HF_REPO_3CAD
        snap = fetch_hf(repo_id, req.revision, req.hf_endpoint, req.hf_cache_dir, req.progress)
        info = dict(source="hf", repo_id=repo_id, revision=req.revision or "main", commit=snap.name,
                    fetched=now)
        archives = sorted(p for p in snap.rglob("*") if p.is_file() and looks_like_archive(p))
        if archives:
            return _Fetched(archives, owned=False, source=info)
        # the Hub cache links snapshot files to ../../blobs: links may stay inside the repo's cache folder
        return _Fetched(folder=snap, within=snap.parent.parent, owned=False, source=info)
    path = Path(req.path).expanduser()
    if not os.path.lexists(path):
        raise ThreecadError(f"--path {path} does not exist; give an archive (zip, tar, tar.gz) or a folder")
    info = dict(source="path", path=str(path.absolute()), fetched=now)
    if path.is_dir():
        return _Fetched(folder=path, owned=False, source=info)
    if not path.is_file():
        raise ThreecadError(f"--path {path} is neither a file nor a folder (a dangling link, a device?)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ThreecadError(f"cannot read --path {path} ({exc.strerror}); make it readable and try again") from None
    if path.suffix.lower() == ".parquet" or _parquet.is_parquet(path):
        return _Fetched(parquet=[path], owned=False, source=info)
    return _Fetched([path], owned=False, source=info)


# ---------------------------------------------------------------------------- install


def _root_state(root: Path, dataset: str = "3cad") -> tuple[str, str]:
    """("absent" | "empty" | "complete" | "incomplete", detail) without reading pixels.

    Complete: the layout scan finds categories and no error, and, when a manifest is
    there, every file it lists exists with its recorded size.
    """
    if dataset == "dtd":
        return _dtd.root_state(root)
    if not root.exists():
        return "absent", ""
    if not root.is_dir():
        raise ThreecadError(f"--root {root} is a file, not a folder; choose another --root")
    if not any(root.iterdir()):
        return "empty", ""
    try:
        scan = scan_root(root)
    except DatasetError:
        return "incomplete", "no category folders"
    errors = [p for p in scan.problems if p.severity == "error"]
    if errors:
        return "incomplete", f"{len(errors)} layout error(s), first: {errors[0]}"
    manifest = read_manifest(root)
    if manifest is not None:
        for rel, entry in manifest.files.items():
            f = root / rel
            if not f.is_file() or f.stat().st_size != entry.size:
                return "incomplete", f"{rel} is missing or has the wrong size"
    return "complete", f"{len(scan.table)} images" + (", manifest sizes match" if manifest else "")


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _check_free_space(where: Path, need: int) -> None:
    free = _free_bytes(where)
    if free < need + FREE_SPACE_MARGIN:
        raise ThreecadError(f"not enough free space in {where}: the dataset needs {_gib(need)}, "
                            f"{_gib(free)} free; free space or choose a --root on a larger disk")


def _digests(path: Path, progress: bool | None) -> tuple[str, str]:
    """sha256 and md5 of a file in one read (md5 only to compare with a published MD5)."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    disable = None if progress is None else not progress
    with open(path, "rb") as fh, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, disable=disable,
                                     desc=f"sha256 {path.name}", leave=False) as bar:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
            bar.update(len(chunk))
    return sha.hexdigest(), md5.hexdigest()


def _check_sha256(fetched: _Fetched, req: DownloadRequest) -> list[dict]:
    """Hash each archive; on a --sha256 (or official MD5) mismatch set a download aside and refuse."""
    expected = req.sha256
    if expected and len(fetched.archives) != 1:
        raise ThreecadError(f"--sha256 checks one archive, but this source delivered "
                            f"{len(fetched.archives) or 'no'} archive(s); drop --sha256")
    official = (req.dataset in _OFFICIAL and fetched.source.get("source") == "url"
                and fetched.source.get("url") == _official_url(req.dataset))
    records = []
    for archive in fetched.archives:
        digest, md5 = _digests(archive, req.progress)
        record = dict(name=archive.name, sha256=digest, size=archive.stat().st_size)
        if req.dataset == "dtd":
            record.update(md5=md5, official_release=md5 == _dtd.OFFICIAL_MD5)
        elif req.dataset == "mvtec":
            record.update(md5=md5, official_release=digest == _mvtec.OFFICIAL_SHA256)
        records.append(record)
        if expected and digest != expected.lower():
            kept = _set_aside(archive, "sha256-mismatch") if fetched.owned else archive
            raise DownloadError(f"checksum mismatch for {archive.name}: expected {expected.lower()}, got "
                                f"{digest}; nothing installed, the archive is kept at {kept}")
        if official and not expected and req.dataset == "dtd" and md5 != _dtd.OFFICIAL_MD5:
            kept = _set_aside(archive, "md5-mismatch") if fetched.owned else archive
            raise DownloadError(f"{archive.name} is not the official DTD release: MD5 {md5}, torchvision "
                                f"publishes {_dtd.OFFICIAL_MD5}; nothing installed, the archive is kept at {kept}")
        if official and not expected and req.dataset == "mvtec" and digest != _mvtec.OFFICIAL_SHA256:
            kept = _set_aside(archive, "sha256-mismatch") if fetched.owned else archive
            raise DownloadError(f"{archive.name} is not the official MVTec AD release: sha256 {digest}, anomalib "
                                f"pins {_mvtec.OFFICIAL_SHA256}; nothing installed, the archive is kept at {kept}")
    return records


def _set_aside(archive: Path, why: str) -> Path:
    """Rename a downloaded archive that failed, so the next run downloads afresh."""
    kept = archive.with_name(f"{archive.name}.{why}")
    os.replace(archive, kept)
    return kept


def _install(dataset_dir: Path, root: Path) -> None:
    """Move the verified dataset to root in one rename; an old root is moved aside first."""
    old = None
    if root.exists():
        if not any(root.iterdir()):
            root.rmdir()
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
    try:
        os.rename(dataset_dir, root)
    except OSError:
        if old is not None:
            os.replace(old / root.name, root)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def download(req: DownloadRequest) -> DownloadResult:
    """Fetch, check, extract, verify, record and install; the root is never left half-made."""
    _validate(req)
    root = Path(req.root).expanduser().absolute()
    created = [p for p in [root.parent, *root.parent.parents] if not p.exists()]  # removed again on refusal
    lock = FileLock(str(root.parent / f".{root.name}.lock"))
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        raise ThreecadError(f"another `threecad download` is writing {root} (lock {lock.lock_file}); wait "
                            "for it to finish") from None
    except PermissionError as exc:
        raise ThreecadError(f"cannot write in {root.parent} ({exc.strerror}); choose a --root you can "
                            "write to") from None
    ok = False
    try:
        result = _download_locked(req, root)
        ok = True
        return result
    except PermissionError as exc:
        where = str(exc.filename or "")
        if where.startswith(str(root.parent)):
            raise ThreecadError(f"permission denied: {where} ({exc.strerror}); choose a --root you can "
                                "write to") from exc
        raise ThreecadError(f"cannot read {where or 'the source'} ({exc.strerror}); make the source "
                            "readable and try again") from exc
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)
        if not ok:  # a refused download leaves no folder behind, not even the root's parent
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break


def _download_locked(req: DownloadRequest, root: Path) -> DownloadResult:
    # Temporary folders of a run that was killed (we hold the lock, so none is in use).
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    state, detail = _root_state(root, req.dataset)
    if state == "complete" and not req.force:
        return DownloadResult(root, "present", f"{root} already holds a complete dataset ({detail}); nothing to "
                                               "do (--force downloads and replaces it)")
    if state == "incomplete" and not req.force:
        raise ThreecadError(f"{root} already holds files but not a complete dataset ({detail}); pass --force "
                            "to replace it, or choose another --root")
    staging = root.parent / f".{root.name}.download"
    try:
        return _fetch_and_install(req, root, staging)
    finally:
        try:
            staging.rmdir()  # only when empty: partial and set-aside archives stay for the next run
        except OSError:
            pass


def _convert_parquet(req: DownloadRequest, files: list[tuple[Path, str]], target: Path, root: Path,
                     source: dict) -> None:
    """Parquet rows -> the MVTec layout in `target`; what was read is recorded in `source`."""
    _check_free_space(root.parent, sum(real.stat().st_size for real, _ in files))
    result = _parquet.convert(files, target, _parquet.parse_columns(req.columns), progress=req.progress)
    source.update(format="parquet", parquet=result.to_dict())


def _parquet_files(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    return sorted(((real, rel) for real, rel in files if rel.lower().endswith(".parquet")), key=lambda f: f[1])


def _unpack(req: DownloadRequest, fetched: _Fetched, target: Path, root: Path) -> None:
    """Extract the archives, copy the chosen folder or convert the parquet rows into `target`."""
    if fetched.parquet:
        _convert_parquet(req, [(p, p.name) for p in fetched.parquet], target, root, fetched.source)
        return
    if fetched.archives:
        listed = {}
        try:
            for archive in fetched.archives:
                listed[archive] = list_members(archive)
            _check_free_space(root.parent, sum(uncompressed_size(m) for m in listed.values()))
            for archive, members in listed.items():
                safe_extract(archive, target, members=members, progress=req.progress)
        except UnsafeArchiveError as exc:
            where = f"; the archive is kept at {fetched.archives[0]}" if fetched.owned else ""
            raise UnsafeArchiveError(f"{exc}{where}") from exc
        except ArchiveError as exc:
            if fetched.owned:  # damaged, not unsafe: fetch afresh next time
                kept = [_set_aside(a, "damaged") for a in fetched.archives if a.exists()]
                raise ArchiveError(f"{exc} (kept at {kept[0] if kept else '?'}; the next run downloads "
                                   "it again)") from exc
            raise
        return
    folder = fetched.folder
    files = source_files(folder, fetched.within)  # refuses links leaving the folder, loops, unreadable parts
    if req.dataset == "dtd":
        src = _dtd.find_dtd_dir(folder)
    else:
        try:
            src = find_dataset_dir(folder)
        except DatasetError:
            parquet = _parquet_files(files)
            if not parquet:
                raise
            _convert_parquet(req, parquet, target, root, fetched.source)
            return
    prefix = src.relative_to(folder).as_posix()
    if prefix != ".":
        files = [(real, rel[len(prefix) + 1:]) for real, rel in files if rel.startswith(prefix + "/")]
    _check_free_space(root.parent, sum(real.stat().st_size for real, _ in files))
    copy_tree(src, target, progress=req.progress, files=files)


def _fetch_and_install(req: DownloadRequest, root: Path, staging: Path) -> DownloadResult:
    if req.dataset == "mvtec":
        (req.notify or log.warning)(_mvtec.NOTICE)  # the licence, before any byte is fetched
    fetched = _fetch(req, staging)
    records = _check_sha256(fetched, req)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        target = tmp / "extracted"
        _unpack(req, fetched, target, root)
        if fetched.archives and req.dataset != "dtd" and not _holds_layout(target):
            parquet = _parquet_files(source_files(target))
            if parquet:  # an archive of parquet shards
                converted = tmp / "converted"
                _convert_parquet(req, parquet, converted, root, fetched.source)
                target = converted
        source = dict(fetched.source, dataset=req.dataset, archives=records)
        if req.dataset == "mvtec":
            source.update(license=_mvtec.LICENSE, license_url=_mvtec.LICENSE_URL)
        if req.dataset == "dtd":
            new_root, skipped, n_images, report = _prepare_dtd(req, target, tmp, source)
        else:
            new_root, skipped, n_images, report = _prepare_3cad(req, target, source)
        _install(new_root, root)
        if report is not None:
            report.root = root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if fetched.owned and not req.keep_archive:
        for archive in fetched.archives:
            archive.unlink(missing_ok=True)
    digest = f", archive sha256 {records[0]['sha256']}" if len(records) == 1 else ""
    if req.dataset == "dtd" and len(records) == 1:
        digest += " (the official release)" if records[0]["official_release"] else " (not the official release's MD5)"
    if req.dataset == "mvtec" and len(records) == 1:
        digest += " (the official release)" if records[0]["official_release"] else " (not the official release's sha256)"
    if source.get("format") == "parquet":
        digest += f", from {source['parquet']['rows']} parquet rows"
    if source.get("attempts"):
        digest += f"; served by {_describe(source)} after {len(source['attempts'])} failed source(s)"
    left_out = ""
    if skipped:
        left_out = (f"; left out {len(skipped)} file(s)/folder(s) that are not part of the dataset (first: "
                    f"{skipped[0]}; --allow-extra installs them)")
    what = {"dtd": "DTD images", "mvtec": "MVTec AD images"}.get(req.dataset, "images")
    return DownloadResult(root, "installed", f"installed {n_images} {what} into {root}{digest}{left_out}",
                          source=source, report=report, skipped=skipped)


def _prepare_3cad(req: DownloadRequest, target: Path, source: dict):
    dataset_dir = find_dataset_dir(target)
    try:  # an archive made from a verified root carries its manifest: check the files against it
        read_manifest(dataset_dir)
    except DatasetError as exc:
        log.warning("ignoring the manifest shipped in the archive: %s", exc)
        (dataset_dir / MANIFEST_NAME).unlink()
    report = verify(dataset_dir, workers=req.workers, progress=req.progress, hash_all=True)
    if not report.ok:
        first = report.errors[0]
        raise DatasetError(f"the downloaded dataset fails verification ({len(report.errors)} error(s); "
                           f"first: {first.kind} {Path(first.path).relative_to(dataset_dir)}: "
                           f"{first.message}); nothing installed")
    skipped: list[str] = []
    if not req.allow_extra:
        junk = [p for p in report.problems if p.kind in _JUNK_KINDS]
        for p in junk:
            path = Path(p.path)
            skipped.append(path.relative_to(dataset_dir).as_posix() + ("/" if path.is_dir() else ""))
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        report.problems = [p for p in report.problems if p.kind not in _JUNK_KINDS]
        if skipped:
            log.warning("left out %d file(s)/folder(s) that are not part of the dataset: %s", len(skipped),
                        ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    source["skipped_extra"] = skipped
    known = {k: v for k, v in report.file_hashes.items() if (dataset_dir / k).is_file()}
    write_manifest(dataset_dir, build_manifest(dataset_dir, workers=req.workers, known=known, source=source))
    n_images = int(report.counts[["train_good", "test_good", "test_defect"]].to_numpy().sum())
    return dataset_dir, skipped, n_images, report


def _prepare_dtd(req: DownloadRequest, target: Path, tmp: Path, source: dict):
    folder = _dtd.find_dtd_dir(target)
    check = _dtd.check_dtd(folder)
    skipped: list[str] = []
    if check.extra:
        if req.allow_extra:
            log.warning("installing %d extra file(s)/folder(s) beside DTD's (--allow-extra)", len(check.extra))
        else:
            skipped = _dtd.remove_extra(check)
            log.warning("left out %d file(s)/folder(s) that are not part of DTD: %s", len(skipped),
                        ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    new_root = tmp / "root"
    data = _dtd.data_dir(new_root)
    data.parent.mkdir(parents=True)
    os.rename(folder, data)
    source.update(skipped_extra=skipped, layout="torchvision DTD: <root>/dtd/dtd/{images,labels}",
                  n_images=check.n_images, n_classes=check.n_classes)
    write_manifest(new_root, build_manifest(new_root, workers=req.workers, source=source))
    return new_root, skipped, check.n_images, None


def _validate(req: DownloadRequest) -> None:
    dataset = (req.dataset or "").lower()
    if dataset not in DATASETS:
        raise ThreecadError(f"unknown --dataset {req.dataset!r}; choose one of {', '.join(DATASETS)}")
    req.dataset = dataset
    if req.source not in SOURCES:
        raise ThreecadError(f"unknown --source {req.source!r}; choose one of {', '.join(SOURCES)}")
    if req.source == "auto" and len(_AUTO[dataset]) == 1:
        req.source = _AUTO[dataset][0]
    if req.source != "auto" and req.source not in _DATASET_SOURCES[dataset]:
        raise ThreecadError(f"--source {req.source} does not serve --dataset {dataset}; choose one of "
                            f"auto, {', '.join(_DATASET_SOURCES[dataset])}")
    if req.source == "url" and not req.url and dataset in _OFFICIAL:
        req.url = _official_url(dataset)
    req.columns = req.columns or None
    _parquet.parse_columns(req.columns)  # a malformed --columns is refused before anything is fetched
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


def _holds_layout(folder: Path) -> bool:
    try:
        find_dataset_dir(folder)
    except DatasetError:
        return False
    return True
