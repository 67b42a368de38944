"""`download`: get 3CAD (or any MVTec-like dataset) into a root, complete and untampered.

Sources: the official Google Drive archives (through gdown, which handles Google's
confirmation pages), a Hugging Face dataset repository (through huggingface_hub, which
honours HF_ENDPOINT, HF_TOKEN / login and its cache), any http(s) URL (requests, with a
progress bar and HTTP Range resume), or a local archive or folder.

What lands at the root is all or nothing. Downloads accumulate in a staging folder beside
the root (`.<root>.download/`, where an interrupted transfer resumes); the archive's sha256
is computed (and checked against `--sha256`); it is extracted into a temporary folder
beside the root (`.<root>.tmp-*`, same disk, so the final move is one rename), the folder
holding the categories is found, `verify` runs, the file manifest is written with the
archive's sha256 as provenance, and only then is the dataset renamed into place.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from threecad.archive import (ArchiveError, copy_tree, find_dataset_dir, list_members,
                              looks_like_archive, safe_extract, uncompressed_size)
from threecad.errors import DatasetError, ThreecadError
from threecad.layout import scan_root
from threecad.manifest import MANIFEST_NAME, build_manifest, read_manifest, sha256_file, write_manifest
from threecad.verify import VerifyReport, verify

log = logging.getLogger(__name__)

SOURCES = ("gdrive", "hf", "url", "path")
# The official 3CAD archives on Google Drive (no checksums are published for them).
GDRIVE_FILE_IDS = {
    "english": "1BIX0H8TZp0wmrAnXPw8_aCAIX1j1Fzwz",  # English defect-type names, current
    "pinyin": "1zhCHL6oH8_IuEkU72F-9bltroiBHmmcH",  # Pinyin defect-type names
}
GDRIVE_ENDPOINT = "https://drive.google.com"
GDRIVE_ENDPOINT_ENV = "THREECAD_GDRIVE_ENDPOINT"  # for mirrors and for the loopback tests
FREE_SPACE_MARGIN = 64 * 2**20  # bytes kept free beyond the dataset itself
_CHUNK = 1 << 16  # small enough that a dropped connection loses little
_OFFLINE_HINT = "no network? copy the archive over and use --source path --path ARCHIVE"


class DownloadError(ThreecadError):
    """A transfer failed in a way the user can act on (network, HTTP status, checksum)."""


@dataclass
class DownloadRequest:
    """What `threecad download` was asked to do; the CLI options map onto these fields."""

    root: Path
    source: str = "gdrive"
    variant: str = "english"
    repo_id: str | None = None
    revision: str | None = None
    url: str | None = None
    path: Path | None = None
    sha256: str | None = None
    force: bool = False
    keep_archive: bool = False
    workers: int | None = None
    retries: int = 2  # automatic resumes of a dropped transfer within one run
    timeout: float = 60.0  # seconds without data before a transfer counts as dropped
    progress: bool | None = None  # None: progress bars on a terminal
    gdrive_endpoint: str | None = None  # default: $THREECAD_GDRIVE_ENDPOINT, else Google Drive
    hf_endpoint: str | None = None  # default: $HF_ENDPOINT, else the Hub
    hf_cache_dir: Path | None = None  # default: the Hub cache ($HF_HUB_CACHE / $HF_HOME)


@dataclass
class DownloadResult:
    root: Path
    status: str  # "installed" | "present"
    message: str
    source: dict = field(default_factory=dict)
    report: VerifyReport | None = None


@dataclass
class _Fetched:
    """What a source delivered: archives to extract, or a folder to copy."""

    archives: list[Path] = field(default_factory=list)
    folder: Path | None = None
    owned: bool = True  # archives live in our staging folder (False: the user's own files)
    source: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- sources


def gdrive_url(file_id: str, endpoint: str | None = None) -> str:
    """The download URL of a Drive file id; the endpoint is injectable for mirrors and tests."""
    base = (endpoint or os.environ.get(GDRIVE_ENDPOINT_ENV) or GDRIVE_ENDPOINT).rstrip("/")
    return f"{base}/uc?id={file_id}"


def _requests_error(exc: Exception, where: str) -> DownloadError:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return _http_status_error(exc.response.status_code, exc.response.reason or "", where)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return DownloadError(f"cannot reach {where} ({type(exc).__name__}); {_OFFLINE_HINT}")
    return DownloadError(f"download from {where} failed: {exc}")


def _http_status_error(code: int, reason: str, where: str) -> DownloadError:
    hint = {401: "the server wants credentials", 403: "access denied: the link is private, expired or "
                                                       "over its download quota; try later or another --source",
            404: "not found: check the URL / id", 416: "the server rejected the resume range; delete the "
                                                        "partial download and retry"}.get(code, "try again later")
    return DownloadError(f"HTTP {code} {reason} from {where}: {hint}")


def fetch_gdrive(file_id: str, staging: Path, endpoint: str | None = None, retries: int = 2,
                 timeout: float = 60.0, progress: bool | None = None) -> Path:
    """Download a Drive file with gdown (resumable: gdown keeps `<name>*.part` in staging)."""
    import gdown
    import requests
    from gdown.exceptions import DownloadError as GdownDownloadError
    from gdown.exceptions import FileURLRetrievalError

    staging.mkdir(parents=True, exist_ok=True)
    out = staging / f"gdrive-{file_id}.archive"
    if out.is_file():
        log.info("using the already downloaded %s", out)
        return out
    url = gdrive_url(file_id, endpoint)
    try:
        gdown.download(url=url, output=str(out), quiet=progress is False, resume=True, retries=retries,
                       timeout=timeout, use_cookies=False)
    except FileURLRetrievalError as exc:
        raise DownloadError(f"Google Drive refused file {file_id} (permission or daily quota); try again "
                            "later, or use --source hf / --source url with a mirror") from exc
    except requests.RequestException as exc:
        raise _requests_error(exc, url) from exc
    except GdownDownloadError as exc:
        raise DownloadError(f"download of {url} stopped ({str(exc).splitlines()[0]}); run the same command "
                            "again to resume") from exc
    if not out.is_file():
        raise DownloadError(f"gdown finished without writing {out}; run the same command again")
    return out


def fetch_url(url: str, staging: Path, retries: int = 2, timeout: float = 60.0,
              progress: bool | None = None) -> Path:
    """Stream an http(s) URL into staging, resuming a partial file with HTTP Range.

    The partial bytes live in `<name>.part`; the server's ETag (or Last-Modified) is kept
    beside them and sent as If-Range, so a changed file restarts instead of being spliced.
    """
    import json

    import requests

    staging.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(requests.utils.urlparse(url).path).name or "download")
    out = staging / f"url-{_short_hash(url)}-{name}"
    if out.is_file():
        log.info("using the already downloaded %s", out)
        return out
    part, meta_path = out.with_name(out.name + ".part"), out.with_name(out.name + ".part.json")
    disable = None if progress is None else not progress
    session = requests.Session()
    attempt = 0
    while True:
        meta = _read_json(meta_path)
        offset = part.stat().st_size if part.is_file() and meta.get("url") == url else 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("validator"):
                headers["If-Range"] = meta["validator"]
        try:
            resp = session.get(url, headers=headers, stream=True, timeout=(min(timeout, 30.0), timeout))
        except requests.RequestException as exc:
            if attempt < retries and not isinstance(exc, requests.exceptions.InvalidURL):
                attempt += 1
                time.sleep(min(2.0 ** attempt, 10.0) * 0.1)
                continue
            raise _requests_error(exc, url) from exc
        with resp:
            if resp.status_code == 416 and offset:
                if meta.get("total") == offset:
                    break  # the partial file is already complete
                part.unlink(missing_ok=True)  # the server no longer has those bytes: start over
                if attempt < retries:
                    attempt += 1
                    continue
            if resp.status_code >= 400:
                raise _http_status_error(resp.status_code, resp.reason or "", url)
            resumed = offset > 0 and resp.status_code == 206 and \
                resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            if offset and not resumed:
                log.info("server did not resume at byte %d; starting over", offset)
                offset = 0
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
            if validator and validator.startswith("W/"):
                validator = resp.headers.get("Last-Modified")
            if total is not None and _free_bytes(staging) < total - offset + FREE_SPACE_MARGIN:
                raise DownloadError(f"not enough free space in {staging} for {_gib(total - offset)} more; "
                                    "free space or choose a --root on a larger disk")
            meta_path.write_text(json.dumps({"url": url, "validator": validator, "total": total}))
            try:
                with open(part, "ab" if offset else "wb") as fh, \
                        tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=name, disable=disable) as bar:
                    for chunk in resp.iter_content(_CHUNK):
                        fh.write(chunk)
                        bar.update(len(chunk))
                dropped = None
            except (requests.RequestException, ConnectionError) as exc:
                dropped = exc
            except OSError as exc:
                if exc.errno == 28:
                    raise DownloadError(f"disk full while downloading into {staging}; free space or "
                                        "choose a --root on a larger disk") from exc
                raise
        size = part.stat().st_size
        if dropped is None and (total is None or size == total):
            break
        if attempt < retries:
            attempt += 1
            log.info("transfer dropped at %d bytes; resuming (%d/%d)", size, attempt, retries)
            continue
        of = f" of {total}" if total else ""
        raise DownloadError(f"download of {url} was interrupted at {size}{of} bytes; run the same command "
                            f"again to resume from {part.name}")
    os.replace(part, out)
    meta_path.unlink(missing_ok=True)
    return out


def fetch_hf(repo_id: str, revision: str | None = None, endpoint: str | None = None,
             cache_dir: Path | None = None, progress: bool | None = None) -> Path:
    """snapshot_download of a dataset repository; returns the local snapshot folder.

    HF_ENDPOINT, HF_TOKEN and HF_HUB_CACHE are read at call time (the library reads them
    at import), so a value set in the environment just before the call counts.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    token = os.environ.get("HF_TOKEN") or None  # None: the library falls back to `hf auth login`
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or (
        Path(os.environ["HF_HOME"]) / "hub" if os.environ.get("HF_HOME") else None)
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, endpoint=endpoint,
                                      token=token, cache_dir=cache))
    except GatedRepoError as exc:
        raise DownloadError(f"Hugging Face dataset {repo_id} is gated: accept its conditions on the Hub "
                            "page, then set HF_TOKEN or run `hf auth login`") from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(f"Hugging Face dataset {repo_id} not found (or private): check --repo-id, or "
                            "set HF_TOKEN / run `hf auth login` for a private one") from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(f"revision {revision} not found in Hugging Face dataset {repo_id}; check "
                            "--revision") from exc
    except LocalEntryNotFoundError as exc:
        raise DownloadError(f"cannot reach the Hugging Face Hub for {where} and it is not in the cache; "
                            f"{_OFFLINE_HINT}") from exc
    except HfHubHTTPError as exc:
        code = exc.response.status_code if getattr(exc, "response", None) is not None else "?"
        raise DownloadError(f"the Hugging Face Hub answered HTTP {code} for {where}; try again later") from exc
    except OSError as exc:
        raise DownloadError(f"Hugging Face download of {where} failed: {exc}; {_OFFLINE_HINT}") from exc


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fetch(req: DownloadRequest, staging: Path) -> _Fetched:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if req.source == "gdrive":
        file_id = GDRIVE_FILE_IDS[req.variant]
        archive = fetch_gdrive(file_id, staging, req.gdrive_endpoint, req.retries, req.timeout, req.progress)
        return _Fetched([archive], source=dict(source="gdrive", variant=req.variant, file_id=file_id,
                                               url=gdrive_url(file_id, req.gdrive_endpoint), fetched=now))
    if req.source == "url":
        archive = fetch_url(req.url, staging, req.retries, req.timeout, req.progress)
        return _Fetched([archive], source=dict(source="url", url=req.url, fetched=now))
    if req.source == "hf":
        snap = fetch_hf(req.repo_id, req.revision, req.hf_endpoint, req.hf_cache_dir, req.progress)
        info = dict(source="hf", repo_id=req.repo_id, revision=req.revision or "main", commit=snap.name,
                    fetched=now)
        archives = sorted(p for p in snap.rglob("*") if p.is_file() and looks_like_archive(p))
        if archives:
            return _Fetched(archives, owned=False, source=info)
        return _Fetched(folder=snap, owned=False, source=info)
    path = Path(req.path).expanduser()
    if not path.exists():
        raise ThreecadError(f"--path {path} does not exist; give an archive (zip, tar, tar.gz) or a folder")
    info = dict(source="path", path=str(path.resolve()), fetched=now)
    if path.is_dir():
        return _Fetched(folder=path, owned=False, source=info)
    return _Fetched([path], owned=False, source=info)


# ---------------------------------------------------------------------------- install


def _root_state(root: Path) -> tuple[str, str]:
    """("absent" | "empty" | "complete" | "incomplete", detail) without reading pixels.

    Complete: the layout scan finds categories and no error, and, when a manifest is
    there, every file it lists exists with its recorded size.
    """
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


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _check_sha256(fetched: _Fetched, expected: str | None, progress: bool | None) -> list[dict]:
    """Hash each archive; on a --sha256 mismatch set a downloaded archive aside and refuse."""
    if expected and len(fetched.archives) != 1:
        raise ThreecadError(f"--sha256 checks one archive, but this source delivered "
                            f"{len(fetched.archives) or 'no'} archive(s); drop --sha256")
    records = []
    for archive in fetched.archives:
        digest = sha256_file(archive, progress=progress)
        records.append(dict(name=archive.name, sha256=digest, size=archive.stat().st_size))
        if expected and digest != expected.lower():
            kept = archive
            if fetched.owned:
                kept = archive.with_name(archive.name + ".sha256-mismatch")
                os.replace(archive, kept)
            raise DownloadError(f"checksum mismatch for {archive.name}: expected {expected.lower()}, got "
                                f"{digest}; nothing installed, the archive is kept at {kept}")
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
    try:
        return _download_locked(req, root)
    except PermissionError as exc:
        raise ThreecadError(f"permission denied: {exc.filename} ({exc.strerror}); choose a --root you can "
                            "write to") from exc
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


def _download_locked(req: DownloadRequest, root: Path) -> DownloadResult:
    # Temporary folders of a run that was killed (we hold the lock, so none is in use).
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    state, detail = _root_state(root)
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


def _fetch_and_install(req: DownloadRequest, root: Path, staging: Path) -> DownloadResult:
    fetched = _fetch(req, staging)
    records = _check_sha256(fetched, req.sha256, req.progress)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        target = tmp / "extracted"
        if fetched.archives:
            listed = {}
            try:
                for archive in fetched.archives:
                    listed[archive] = list_members(archive)
                _check_free_space(root.parent, sum(uncompressed_size(m) for m in listed.values()))
                for archive, members in listed.items():
                    safe_extract(archive, target, members=members, progress=req.progress)
            except ArchiveError as exc:
                if fetched.owned and type(exc) is ArchiveError:  # damaged, not unsafe: fetch afresh next time
                    kept = [_set_aside(a, "damaged") for a in fetched.archives if a.exists()]
                    raise ArchiveError(f"{exc} (kept at {kept[0] if kept else '?'}; the next run downloads "
                                       "it again)") from exc
                raise
        else:
            src = find_dataset_dir(fetched.folder)
            need = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
            _check_free_space(root.parent, need)
            copy_tree(src, target, progress=req.progress)
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
        source = dict(fetched.source, archives=records)
        write_manifest(dataset_dir, build_manifest(dataset_dir, workers=req.workers,
                                                   known=report.file_hashes, source=source))
        _install(dataset_dir, root)
        report.root = root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if fetched.owned and not req.keep_archive:
        for archive in fetched.archives:
            archive.unlink(missing_ok=True)
    n_images = int(report.counts[["train_good", "test_good", "test_defect"]].to_numpy().sum())
    digest = f", archive sha256 {records[0]['sha256']}" if len(records) == 1 else ""
    return DownloadResult(root, "installed", f"installed {n_images} images into {root}{digest}",
                          source=source, report=report)


def _validate(req: DownloadRequest) -> None:
    if req.source not in SOURCES:
        raise ThreecadError(f"unknown --source {req.source!r}; choose one of {', '.join(SOURCES)}")
    need = {"hf": ("repo_id", "--repo-id ORG/NAME"), "url": ("url", "--url URL"), "path": ("path", "--path P")}
    if req.source in need and not getattr(req, need[req.source][0]):
        raise ThreecadError(f"--source {req.source} needs {need[req.source][1]}")
    if req.source == "gdrive" and req.variant not in GDRIVE_FILE_IDS:
        raise ThreecadError(f"unknown --variant {req.variant!r}; choose english or pinyin")
    if req.source == "url" and not re.match(r"^https?://", req.url or ""):
        raise ThreecadError(f"--url must start with http:// or https:// (got {req.url!r}); for a local file "
                            "use --source path --path FILE")
    if req.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", req.sha256):
        raise ThreecadError(f"--sha256 must be 64 hex digits (got {req.sha256!r})")
