"""Where the bytes come from: Google Drive (gdown), any http(s) URL (requests, resumable
with HTTP Range) and the Hugging Face Hub (huggingface_hub). Each fetcher writes only into
the staging folder it is given (the Hub uses its own cache) and turns every failure into one
DownloadError that says what to do next (an HTML page served in the file's place included,
a Drive refusal page or any URL's login or quota page: `--source auto` falls back on the next
source when it sees one).
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from tqdm.auto import tqdm

from threecad.archive import HTML_PAGE_MEANS, free_bytes, is_html
from threecad.errors import ThreecadError

log = logging.getLogger(__name__)

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


def human_size(n: int) -> str:
    """Bytes in GiB, or MiB below a quarter GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


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


_UNREACHABLE = ("NameResolution", "resolve", "Max retries exceeded", "Connection", "timed out", "Temporary failure")


def _stopped(exc: Exception, url: str, staging: Path) -> DownloadError:
    """One short line for a gdown failure: an unreachable host said as such (urllib3's text is long
    and names its own internals); resuming advised only when a partial file is there to resume."""
    text = str(exc)
    if any(word in text for word in _UNREACHABLE):
        return DownloadError(f"cannot reach Google Drive ({url}); {_OFFLINE_HINT}")
    first = (text.splitlines() or [""])[0]
    first = first if len(first) <= 160 else first[:157] + "..."
    partial = any(staging.glob("*.part"))
    return DownloadError(f"download of {url} stopped ({first}); "
                         + ("run the same command again to resume" if partial else "try again later"))


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
        raise _stopped(exc, url, staging) from exc
    if not out.is_file():
        raise DownloadError(f"gdown finished without writing {out}; run the same command again")
    refusal = _html_page(out)
    if refusal is not None:
        out.unlink()
        refusal = refusal or "an HTML page came back instead of the archive (permission or daily quota)"
        raise DownloadError(f"Google Drive refused file {file_id}: {refusal}; try again later, or use "
                            "--source hf (with HF_TOKEN) or --source url with a mirror")
    return out


def _html_page(path: Path) -> str | None:
    """What the HTML page sent instead of a file says (Drive's error line, else its title; ""
    when it has neither), or None when the file is not an HTML page.

    Drive answers a file over its daily quota with a page ("Too many users have viewed or
    downloaded this file recently"); gdown recognises it only on drive.google.com itself.
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not is_html(head):
        return None
    text = head.decode("utf-8", "replace")
    for pattern in (r'class="uc-error-subcaption">(.*?)</p>', r"<title>(.*?)</title>"):
        m = re.search(pattern, text, re.IGNORECASE | re.DOTALL)
        if m and m.group(1).strip():
            return " ".join(re.sub(r"<[^>]+>", " ", m.group(1)).split())
    return ""


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
            if total is not None and free_bytes(staging) < total - offset + FREE_SPACE_MARGIN:
                raise DownloadError(f"not enough free space in {staging} for {human_size(total - offset)} more; "
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
    meta_path.unlink(missing_ok=True)
    page = _html_page(part)
    if page is not None:  # a login or quota page: useless, and the next run must fetch afresh
        part.unlink()
        titled = f" titled '{page}'" if page else ""
        raise DownloadError(f"{url} sent an HTML page{titled} instead of an archive: {HTML_PAGE_MEANS}")
    os.replace(part, out)
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
    hub = endpoint or "https://huggingface.co"
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, endpoint=endpoint,
                                      token=token, cache_dir=cache))
    except GatedRepoError as exc:
        raise DownloadError(f"Hugging Face dataset {repo_id} is gated: accept its terms on "
                            f"{hub}/datasets/{repo_id}, then set HF_TOKEN (or run `hf auth login`)") from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(f"no Hugging Face dataset {repo_id} at {hub}, or it is private or gated: check "
                            "--repo-id; for a private or gated one, accept its terms on the dataset page "
                            "and set HF_TOKEN") from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(f"revision {revision} not found in Hugging Face dataset {repo_id}; check "
                            "--revision") from exc
    except LocalEntryNotFoundError as exc:
        # snapshot_download hides HTTP answers behind "not in the cache": tell them apart again
        raise _hf_cause_error(exc.__cause__, repo_id, where, hub) from exc
    except HfHubHTTPError as exc:
        raise _hf_cause_error(exc, repo_id, where, hub) from exc
    except OSError as exc:
        raise DownloadError(f"Hugging Face download of {where} failed: {exc}; {_OFFLINE_HINT}") from exc


def _hf_cause_error(cause: BaseException | None, repo_id: str, where: str, hub: str) -> DownloadError:
    """No network, no such repository, access refused or a server fault: each its own advice."""
    response = getattr(cause, "response", None)
    code = getattr(response, "status_code", None)
    if code == 404:
        return DownloadError(f"no Hugging Face dataset {where} at {hub} (HTTP 404): check --repo-id and "
                             "--revision (and HF_ENDPOINT if set)")
    if code in (401, 403):
        return DownloadError(f"the Hugging Face Hub refused access to {repo_id} (HTTP {code}): it is gated or "
                             f"private; accept its terms on {hub}/datasets/{repo_id} and set HF_TOKEN")
    if code is not None:
        return DownloadError(f"the Hugging Face Hub answered HTTP {code} for {where}; try again later")
    return DownloadError(f"cannot reach the Hugging Face Hub at {hub} for {where} and it is not in the "
                         f"cache; {_OFFLINE_HINT}")


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
