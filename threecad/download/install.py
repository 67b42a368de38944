"""The all-or-nothing install: lock, state of the root, fetch, check, unpack, verify, manifest,
then one rename into place."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from threecad.archive import find_dataset_dir, source_files
from threecad.download import dtd, mvtec
from threecad.download.checksums import check_archives
from threecad.download.contents import check_categories, extra_entries
from threecad.download.fetch import describe, fetch
from threecad.download.request import DownloadRequest, DownloadResult, validate
from threecad.download.unpack import convert_parquet, holds_layout, parquet_files, unpack
from threecad.errors import DatasetError, ThreecadError
from threecad.fsutil import ensure_dir
from threecad.layout import scan_root
from threecad.manifest import MANIFEST_NAME, build_manifest, read_manifest, size_mismatch, write_manifest
from threecad.verify import verify

log = logging.getLogger("threecad.download")  # one logger name for the whole command


def _root_state(root: Path, dataset: str = "3cad") -> tuple[str, str]:
    """("absent" | "empty" | "complete" | "incomplete", detail) without reading pixels.

    Complete: the layout scan finds categories and no error, and, when a manifest is
    there, every file it lists exists with its recorded size.
    """
    if dataset == "dtd":
        return dtd.root_state(root)
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
    problem = size_mismatch(root, manifest) if manifest is not None else None
    if problem:
        return "incomplete", problem
    return "complete", f"{len(scan.table)} images" + (", manifest sizes match" if manifest else "")


def _move_into_place(dataset_dir: Path, root: Path) -> None:
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
    validate(req)
    root = Path(req.root).expanduser().absolute()
    created = [p for p in [root.parent, *root.parent.parents] if not p.exists()]  # removed again on refusal
    lock = FileLock(str(root.parent / f".{root.name}.lock"))
    try:
        ensure_dir(root.parent)  # one line when a parent is a file
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



def _fetch_and_install(req: DownloadRequest, root: Path, staging: Path) -> DownloadResult:
    if req.dataset == "mvtec":
        (req.notify or log.warning)(mvtec.NOTICE)  # the licence, before any byte is fetched
    fetched = fetch(req, staging)
    records = check_archives(fetched, req)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        target = tmp / "extracted"
        origin = unpack(req, fetched, target, root)
        if fetched.archives and req.dataset != "dtd" and not holds_layout(target):
            shards = parquet_files(source_files(target))
            if shards:  # an archive of parquet shards
                converted = tmp / "converted"
                convert_parquet(req, shards, converted, root, fetched.source)
                target = converted
        source = dict(fetched.source, dataset=req.dataset, archives=records)
        if req.dataset == "mvtec":
            source.update(license=mvtec.LICENSE, license_url=mvtec.LICENSE_URL)
        if req.dataset == "dtd":
            new_root, skipped, n_images, report = _prepare_dtd(req, target, tmp, source, origin)
        else:
            new_root, skipped, n_images, report = _prepare_3cad(req, target, source, origin)
        _move_into_place(new_root, root)
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
        digest += f"; served by {describe(source)} after {len(source['attempts'])} failed source(s)"
    left_out = ""
    if skipped:
        left_out = (f"; left out {len(skipped)} file(s)/folder(s) that are not part of the dataset: "
                    f"{_listing(skipped)} (the manifest lists them all; --allow-extra installs them)")
    what = {"dtd": "DTD images", "mvtec": "MVTec AD images"}.get(req.dataset, "images")
    return DownloadResult(root, "installed", f"installed {n_images} {what} into {root}{digest}{left_out}",
                          source=source, report=report, skipped=skipped)


def _shown(folder: Path, target: Path, origin: str) -> str:
    """`folder` (inside the temporary `target`) as the user knows it: in the archive or folder
    they gave."""
    rel = folder.relative_to(target).as_posix()
    return origin if rel == "." else f"{rel}/ in {origin}"


def _prepare_3cad(req: DownloadRequest, target: Path, source: dict, origin: str):
    dataset_dir = find_dataset_dir(target)
    check_categories(req.dataset, dataset_dir)
    try:  # an archive made from a verified root carries its manifest: check the files against it
        read_manifest(dataset_dir)
    except DatasetError as exc:
        log.warning("ignoring the manifest shipped in the archive: %s", exc)
        (dataset_dir / MANIFEST_NAME).unlink()
    report = verify(dataset_dir, workers=req.workers, progress=req.progress, hash_all=True)
    if not report.ok:
        first = report.errors[0]
        message = first.message.replace(str(dataset_dir) + os.sep, "")  # the temporary copy is gone
        raise DatasetError(f"the dataset in {_shown(dataset_dir, target, origin)} fails verification "
                           f"({len(report.errors)} error(s); first: {first.kind} "
                           f"{Path(first.path).relative_to(dataset_dir).as_posix()}: {message}); nothing installed")
    skipped: list[str] = []
    if not req.allow_extra:
        extra = extra_entries(dataset_dir)
        for path in extra:
            folder = path.is_dir() and not path.is_symlink()
            skipped.append(path.relative_to(dataset_dir).as_posix() + ("/" if folder else ""))
            if folder:
                shutil.rmtree(path)
            else:
                path.unlink()
        left_out = {str(p) for p in extra}
        report.problems = [p for p in report.problems if not _within(p.path, left_out)]
        if skipped:
            log.warning("left out %d file(s)/folder(s) that are not part of the dataset: %s", len(skipped),
                        _listing(skipped))
    source["skipped_extra"] = skipped
    known = {k: v for k, v in report.file_hashes.items() if (dataset_dir / k).is_file()}
    write_manifest(dataset_dir, build_manifest(dataset_dir, workers=req.workers, known=known, source=source))
    n_images = int(report.counts[["train_good", "test_good", "test_defect"]].to_numpy().sum())
    return dataset_dir, skipped, n_images, report


def _listing(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _within(path: str, left_out: set[str]) -> bool:
    """Is `path` one of the paths left out, or inside one of them?"""
    p = Path(path)
    return any(str(q) in left_out for q in (p, *p.parents))


def _prepare_dtd(req: DownloadRequest, target: Path, tmp: Path, source: dict, origin: str):
    folder = dtd.find_dtd_dir(target)
    check = dtd.check_dtd(folder, _shown(folder, target, origin))
    skipped: list[str] = []
    if check.extra:
        if req.allow_extra:
            log.warning("installing %d extra file(s)/folder(s) beside DTD's (--allow-extra)", len(check.extra))
        else:
            skipped = dtd.remove_extra(check)
            log.warning("left out %d file(s)/folder(s) that are not part of DTD: %s", len(skipped),
                        _listing(skipped))
    new_root = tmp / "root"
    data = dtd.data_dir(new_root)
    data.parent.mkdir(parents=True)
    os.rename(folder, data)
    source.update(skipped_extra=skipped, layout="torchvision DTD: <root>/dtd/dtd/{images,labels}",
                  n_images=check.n_images, n_classes=check.n_classes)
    write_manifest(new_root, build_manifest(new_root, workers=req.workers, source=source))
    return new_root, skipped, check.n_images, None

