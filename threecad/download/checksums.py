"""The archives' checksums: sha256 (and MD5) of each, checked against `--sha256` or the
official release's published digest; an archive that fails is set aside."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tqdm.auto import tqdm

from threecad.download import dtd, mvtec
from threecad.download.fetch import Fetched
from threecad.download.request import OFFICIAL, DownloadRequest, official_url
from threecad.download.sources import DownloadError
from threecad.errors import ThreecadError


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


def check_archives(fetched: Fetched, req: DownloadRequest) -> list[dict]:
    """Hash each archive; on a --sha256 (or official MD5) mismatch set a download aside and refuse."""
    expected = req.sha256
    if expected and len(fetched.archives) != 1:
        raise ThreecadError(f"--sha256 checks one archive, but this source delivered "
                            f"{len(fetched.archives) or 'no'} archive(s); drop --sha256")
    official = (req.dataset in OFFICIAL and fetched.source.get("source") == "url"
                and fetched.source.get("url") == official_url(req.dataset))
    records = []
    for archive in fetched.archives:
        digest, md5 = _digests(archive, req.progress)
        record = dict(name=archive.name, sha256=digest, size=archive.stat().st_size)
        if req.dataset == "dtd":
            record.update(md5=md5, official_release=md5 == dtd.OFFICIAL_MD5)
        elif req.dataset == "mvtec":
            record.update(md5=md5, official_release=digest == mvtec.OFFICIAL_SHA256)
        records.append(record)
        if expected and digest != expected.lower():
            kept = set_aside(archive, "sha256-mismatch") if fetched.owned else archive
            raise DownloadError(f"checksum mismatch for {archive.name}: expected {expected.lower()}, got "
                                f"{digest}; nothing installed, the archive is kept at {kept}")
        if official and not expected and req.dataset == "dtd" and md5 != dtd.OFFICIAL_MD5:
            kept = set_aside(archive, "md5-mismatch") if fetched.owned else archive
            raise DownloadError(f"{archive.name} is not the official DTD release: MD5 {md5}, torchvision "
                                f"publishes {dtd.OFFICIAL_MD5}; nothing installed, the archive is kept at {kept}")
        if official and not expected and req.dataset == "mvtec" and digest != mvtec.OFFICIAL_SHA256:
            kept = set_aside(archive, "sha256-mismatch") if fetched.owned else archive
            raise DownloadError(f"{archive.name} is not the official MVTec AD release: sha256 {digest}, anomalib "
                                f"pins {mvtec.OFFICIAL_SHA256}; nothing installed, the archive is kept at {kept}")
    return records


def set_aside(archive: Path, why: str) -> Path:
    """Rename a downloaded archive that failed, so the next run downloads afresh."""
    kept = archive.with_name(f"{archive.name}.{why}")
    os.replace(archive, kept)
    return kept

