"""Safe extraction of dataset archives (zip, tar, tar.gz/bz2/xz) and finding the dataset inside.

Archives come from the internet, so every entry is checked before anything is written:
absolute paths, `..` components, links that point outside the destination and special
files (devices, FIFOs) make the whole archive refused, naming the entry. Tar members are
then extracted through the standard library's "data" filter as a second line of defence
(what that filter refuses is reported as an unsafe entry, by name, not as damage).

Archives can also be bombs: a few kilobytes that inflate to terabytes. Before anything is
written, the sizes the archive declares are added up and refused when they exceed
MAX_COMPRESSION_RATIO times the archive's own size (200:1; images compress 1:1 to 3:1, text
about 10:1) or the free space of the destination's disk; while extracting, an entry that
inflates beyond its declared size stops the extraction. Both limits are module constants so
that tests (and a user with an unusual archive) can change them. What is read while listing
is bounded too, since the bomb check has not run yet: a link target is a path (a zip link
entry declaring more than MAX_LINK_TARGET bytes is refused unread), and a tar's extended (pax
or GNU long-name) header larger than MAX_TAR_HEADER is refused before tarfile reads it whole.

Local folders are copied with the same care: links are followed only while they stay inside
the source folder (a link to ~/.ssh must not end up in a dataset), and a link loop is an error.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from threecad.errors import DatasetError, ThreecadError
from threecad.layout import is_category_dir

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_IGNORED_DIRS = {"__MACOSX"}
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError)
MAX_COMPRESSION_RATIO = 200.0  # declared uncompressed bytes per archive byte, over the whole archive
RATIO_CHECK_FROM = 2**20  # archives declaring less than this are too small to matter as bombs
EXTRACT_SPACE_MARGIN = 64 * 2**20  # bytes left free on the destination's disk after extraction
MAX_LINK_TARGET = 4096  # bytes: a link target is a path (PATH_MAX on Linux)
MAX_TAR_HEADER = 2**20  # bytes of a pax or GNU long-name header: paths and a few attributes


class ArchiveError(ThreecadError):
    """The archive is not one we can read, or it is damaged."""


class UnsafeArchiveError(ArchiveError):
    """An entry would land outside the destination folder (zip-slip, escaping link, device),
    or the archive would inflate far beyond its size (a bomb). Not damage: downloading the
    same file again would not help, so it is kept as it is."""


class UnsafeSourceError(ThreecadError):
    """A local source folder links outside itself, or its links form a loop."""


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # "file" | "dir" | "symlink" | "hardlink" | "special"
    size: int
    target: str = ""


_EXTENDED_TYPES = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK}


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header reader, refusing an extended header (pax, GNU long name or link) by its
    declared size before reading it whole (`_proc_member` is the hook tarfile leaves to
    subclasses)."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED_TYPES and self.size > MAX_TAR_HEADER:
            raise UnsafeArchiveError(f"archive entry at byte {self.offset} has an extended header of "
                                     f"{_human(self.size)} (limit {_human(MAX_TAR_HEADER)}; it holds a path and a "
                                     "few attributes); refusing the archive")
        return super()._proc_member(tarfile_)


def _open_tar(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, tarinfo=_BoundedTarInfo)


def archive_format(path: str | os.PathLike) -> str | None:
    """"zip" or "tar" (any tar compression) judged by content, not by name; None otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        with _open_tar(path):
            return "tar"
    except UnsafeArchiveError:
        return "tar"  # a tar header was read: list_members refuses it by name
    except _CORRUPT:
        return None


def looks_like_archive(path: str | os.PathLike) -> bool:
    """By name only: for picking the archives out of a downloaded repository."""
    name = Path(path).name.lower()
    return name.endswith(ARCHIVE_SUFFIXES)


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


def _zip_link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip link entry's target, refused by its declared size before it is read (zipfile
    stops reading an entry at its declared size, so the declaration bounds the read)."""
    if info.file_size > MAX_LINK_TARGET:
        raise UnsafeArchiveError(f"archive link '{info.filename}' has a target of {_human(info.file_size)} (a link "
                                 f"target is a path, at most {MAX_LINK_TARGET} bytes); refusing the archive")
    return zf.read(info)


def list_members(path: str | os.PathLike) -> list[Member]:
    """Every entry of the archive; a damaged archive raises ArchiveError."""
    path = Path(path)
    fmt = archive_format(path)
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as zf:
                out = []
                for info in zf.infolist():
                    kind = _zip_kind(info)
                    target = _zip_link_target(zf, info).decode("utf-8", "replace") if kind == "symlink" else ""
                    out.append(Member(info.filename, kind, info.file_size, target))
                return out
        if fmt == "tar":
            with _open_tar(path) as tf:
                out = []
                for m in tf.getmembers():
                    kind = ("dir" if m.isdir() else "file" if m.isreg() else "symlink" if m.issym()
                            else "hardlink" if m.islnk() else "special")
                    out.append(Member(m.name, kind, m.size if m.isreg() else 0, m.linkname))
                return out
    except _CORRUPT as exc:
        raise ArchiveError(f"archive {path} is damaged or truncated ({exc}); delete it and download "
                           "it again") from exc
    kind = _magic(path)
    if kind in ("zip", "gzip", "bzip2", "xz", "tar"):
        raise ArchiveError(f"archive {path} is damaged or truncated (starts like {kind} but does not "
                           "read as one); delete it and download it again")
    if kind == "html":
        raise ArchiveError(f"{path} is an HTML page, not an archive: {HTML_PAGE_MEANS}")
    what = f"a {kind} archive, which threecad does not read" if kind else "neither a zip nor a tar archive"
    raise ArchiveError(f"{path} is {what}; extract it yourself and pass the folder with "
                       "--source path --path FOLDER")


HTML_PAGE_MEANS = ("usually a login or download-quota page, or the page of a wrong URL (a page about the file "
                   "instead of the file); open it in a browser, then use the archive's direct download link or "
                   "the archive itself")


def is_html(head: bytes) -> bool:
    """Do these first bytes of a file start an HTML page (a byte-order mark and blanks allowed)?"""
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html"))


_MAGIC = [(0, b"PK\x03\x04", "zip"), (0, b"PK\x05\x06", "zip"), (0, b"\x1f\x8b", "gzip"), (0, b"BZh", "bzip2"),
          (0, b"\xfd7zXZ\x00", "xz"), (257, b"ustar", "tar"), (0, b"Rar!", "rar"), (0, b"7z\xbc\xaf", "7z")]


def _magic(path: Path) -> str | None:
    """The container kind by its first bytes ("html" for a web page), to tell a damaged archive
    from a foreign file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return kind
    return "html" if is_html(head) else None


_DRIVE = re.compile(r"^[A-Za-z]:")


def _parts(name: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]


def check_member(member: Member) -> None:
    """Raise UnsafeArchiveError for an entry that could write outside the destination."""
    name = member.name
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeArchiveError(f"archive entry '{name}' has an absolute path; refusing the archive")
    parts = _parts(name)
    if ".." in parts:
        raise UnsafeArchiveError(f"archive entry '{name}' climbs out with '..'; refusing the archive")
    if member.kind == "special":
        raise UnsafeArchiveError(f"archive entry '{name}' is a device or FIFO; refusing the archive")
    if member.kind in ("symlink", "hardlink"):
        target = member.target
        size = len(target.encode("utf-8", "replace"))
        if size > MAX_LINK_TARGET:
            raise UnsafeArchiveError(f"archive link '{name}' has a target of {_human(size)} (a link target is a "
                                     f"path, at most {MAX_LINK_TARGET} bytes); refusing the archive")
        if not target or target.startswith(("/", "\\")) or _DRIVE.match(target):
            raise UnsafeArchiveError(f"archive link '{name}' -> '{target}' points outside; refusing the archive")
        # A symlink resolves from its own folder, a tar hard link from the archive's top.
        base = posixpath.dirname("/".join(parts)) if member.kind == "symlink" else ""
        resolved = posixpath.normpath(posixpath.join(base, *_parts(target))) if _parts(target) else base
        if resolved == ".." or resolved.startswith("../") or resolved in ("", "."):
            raise UnsafeArchiveError(f"archive link '{name}' -> '{target}' points outside; refusing the archive")


def uncompressed_size(members: list[Member]) -> int:
    return sum(m.size for m in members if m.kind == "file")


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_bomb(path: str | os.PathLike, members: list[Member], dest: str | os.PathLike) -> int:
    """Refuse an archive whose declared contents are out of proportion or do not fit; returns
    the declared uncompressed size."""
    path = Path(path)
    declared = uncompressed_size(members)
    size = max(path.stat().st_size, 1)
    ratio = declared / size
    if declared > RATIO_CHECK_FROM and ratio > MAX_COMPRESSION_RATIO:
        raise UnsafeArchiveError(
            f"archive {path.name} declares {_human(declared)} of content in {_human(size)} (ratio "
            f"{ratio:.0f}:1, limit {MAX_COMPRESSION_RATIO:.0f}:1): a compression bomb or not a dataset; "
            "refusing the archive")
    free = free_bytes(dest)
    if declared + EXTRACT_SPACE_MARGIN > free:
        raise ThreecadError(f"archive {path.name} needs {_human(declared)} to extract, {_human(free)} free "
                            f"near {dest}; free space or choose a --root on a larger disk")
    return declared


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class _Budget:
    """Counts bytes written; an entry or the archive inflating past its declaration stops."""

    def __init__(self, path: Path, total: int, bar: tqdm):
        self.path, self.left, self.bar = path, total, bar

    def take(self, entry: str, n: int, entry_left: int) -> None:
        self.left -= n
        if n > entry_left or self.left < 0:
            raise UnsafeArchiveError(f"archive entry '{entry}' of {self.path.name} inflates beyond the size the "
                                     "archive declares (a compression bomb?); refusing the archive")
        self.bar.update(n)


def safe_extract(path: str | os.PathLike, dest: str | os.PathLike, members: list[Member] | None = None,
                 progress: bool | None = None) -> int:
    """Extract into dest after checking every entry; returns the number of files written.

    Nothing is written unless every entry passes. Callers extract into a temporary folder
    (so a failure halfway leaves nothing half-made where users look) and remove it on error.
    """
    path, dest = Path(path), Path(dest)
    members = list_members(path) if members is None else members
    for m in members:
        check_member(m)
    total = check_bomb(path, members, dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    disable = None if progress is None else not progress
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"extract {path.name}", disable=disable) as bar:
            budget = _Budget(path, total, bar)
            if archive_format(path) == "zip":
                written = _extract_zip(path, dest, budget)
            else:
                written = _extract_tar(path, dest, budget)
    except (UnsafeArchiveError, ThreecadError):
        raise
    except tarfile.FilterError as exc:  # the "data" filter's own refusal: unsafe, not damaged
        name = getattr(getattr(exc, "tarinfo", None), "name", "?")
        raise UnsafeArchiveError(f"archive entry '{name}' of {path.name} is unsafe ({exc}); refusing the "
                                 "archive") from exc
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise ThreecadError(f"disk full while extracting {path.name} into {dest.parent}; free space "
                                "or choose a --root on a larger disk") from exc
        raise ArchiveError(f"cannot extract {path}: {exc}; delete it and download it again") from exc
    except _CORRUPT as exc:
        raise ArchiveError(f"archive {path} is damaged or truncated ({exc}); delete it and download "
                           "it again") from exc
    return written


def _ensure_inside(path: Path, root: str, entry: str) -> None:
    real = os.path.realpath(path)
    if real != root and not real.startswith(root + os.sep):
        raise UnsafeArchiveError(f"archive entry '{entry}' would be written outside the destination "
                                 "through a link; refusing the archive")


def _extract_zip(path: Path, dest: Path, budget: _Budget) -> int:
    written = 0
    root = os.path.realpath(dest)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            kind = _zip_kind(info)
            parts = _parts(info.filename)
            if not parts:
                continue
            out = dest.joinpath(*parts)
            # Lexical checks cannot see links extracted earlier; the real path can.
            _ensure_inside(out.parent if kind != "dir" else out, root, info.filename)
            if kind == "dir":
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            if kind == "symlink":
                target = "/".join(_parts(_zip_link_target(zf, info).decode("utf-8")))
                _ensure_inside(out.parent / target, root, info.filename)
                os.symlink(target, out)
                continue
            left = info.file_size
            with zf.open(info) as src, open(out, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    budget.take(info.filename, len(chunk), left)
                    left -= len(chunk)
                    dst.write(chunk)
            written += 1
    return written


def _extract_tar(path: Path, dest: Path, budget: _Budget) -> int:
    written = 0
    with _open_tar(path) as tf:
        for m in tf:
            kind = ("dir" if m.isdir() else "file" if m.isreg() else "symlink" if m.issym()
                    else "hardlink" if m.islnk() else "special")
            check_member(Member(m.name, kind, m.size, m.linkname))
            tf.extract(m, dest, filter="data")
            if m.isreg():
                written += 1
                budget.take(m.name, m.size, m.size)
    return written


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS)


def _holds_categories(folder: Path) -> bool:
    return any(is_category_dir(d) for d in _subdirs(folder))


def find_dataset_dir(folder: str | os.PathLike, max_depth: int = 2) -> Path:
    """The folder that holds the category folders: `folder` itself or one nested below it.

    Archives often wrap the dataset in one or two folders (`3CAD/`, `3CAD/3CAD/`); the
    shallowest level that holds category folders (ones with train/ or test/) wins.
    """
    folder = Path(folder)
    level = [folder]
    for _ in range(max_depth + 1):
        hits = [d for d in level if _holds_categories(d)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(str(h.relative_to(folder)) for h in hits)
            raise DatasetError(f"the download holds several datasets ({names}); download them separately")
        level = [sub for d in level for sub in _subdirs(d)]
        if not level:
            break
    raise DatasetError("the download holds no 3CAD/MVTec layout (no folder with category folders that "
                       "contain train/ or test/, at the top or nested up to "
                       f"{max_depth} levels down) and no parquet files; check that it is the dataset")


def source_files(src: str | os.PathLike, within: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """Every file under `src` as (real path, relative POSIX path), following links only inside.

    A link (to a file or a folder) is followed when its target lies inside `within` (default:
    `src`); one that leads elsewhere is refused, naming it, and so is a loop. An unreadable
    folder or file is a one-line error that says so.
    """
    src = Path(src)
    fence = os.path.realpath(within if within is not None else src)
    out: list[tuple[Path, str]] = []

    def inside(real: str) -> bool:
        return real == fence or real.startswith(fence.rstrip(os.sep) + os.sep)

    def resolve(path: Path) -> str:
        try:
            return os.path.realpath(path, strict=True)
        except (OSError, RuntimeError) as exc:
            if getattr(exc, "errno", None) == 2:  # ENOENT: a dangling link
                raise UnsafeSourceError(f"link {path} -> {os.readlink(path)} points to nothing; remove it or "
                                        "fix it") from exc
            raise UnsafeSourceError(f"symlink loop at {path}; remove the link and try again") from exc

    def walk(folder: Path, rel: str, real_folder: str, stack: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError as exc:
            raise ThreecadError(f"cannot read {folder} (permission denied); make the source folder readable "
                                "(chmod -R u+rX) and try again") from exc
        except OSError as exc:
            raise ThreecadError(f"cannot read {folder} ({exc.strerror or exc}); check the source folder") from exc
        for entry in entries:
            path = Path(entry.path)
            child = f"{rel}/{entry.name}" if rel else entry.name
            real = os.path.join(real_folder, entry.name)
            if entry.is_symlink():
                real = resolve(path)
                if not inside(real):
                    raise UnsafeSourceError(f"link {path} -> {os.readlink(path)} leads outside the source folder "
                                            f"{within if within is not None else src}; refusing to copy what it "
                                            "points to (replace the link by the file, or remove it)")
            if os.path.isdir(real):
                if real in stack:
                    raise UnsafeSourceError(f"symlink loop at {path} (it leads back to {real}); remove the link "
                                            "and try again")
                walk(path, child, real, stack + (real,))
            elif os.path.isfile(real):
                if not os.access(real, os.R_OK):
                    raise ThreecadError(f"cannot read {path} (permission denied); make the source readable "
                                        "and try again")
                out.append((Path(real), child))
            else:
                raise UnsafeSourceError(f"{path} is a device, FIFO or socket, not a file; remove it from the "
                                        "source folder")

    root_real = resolve(src) if src.is_symlink() else os.path.realpath(src)
    if not inside(root_real):
        raise UnsafeSourceError(f"{src} leads outside the source folder {within}; refusing to copy it")
    walk(src, "", root_real, (root_real,))
    return out


def copy_tree(src: str | os.PathLike, dest: str | os.PathLike, progress: bool | None = None,
              within: str | os.PathLike | None = None, files: list[tuple[Path, str]] | None = None) -> int:
    """Copy a folder, links resolved to real files (cache symlinks become files) but only
    links that stay inside `within` (default: `src`); returns the number of files copied."""
    src, dest = Path(src), Path(dest)
    files = source_files(src, within) if files is None else files
    dest.mkdir(parents=True, exist_ok=True)
    disable = None if progress is None else not progress
    try:
        for real, rel in tqdm(files, desc=f"copy {src.name}", unit="file", disable=disable):
            out = dest.joinpath(*rel.split("/"))
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(real, out)
    except OSError as exc:
        if exc.errno == 28:
            raise ThreecadError(f"disk full while copying {src} into {dest.parent}; free space or "
                                "choose a --root on a larger disk") from exc
        if isinstance(exc, PermissionError) and not str(exc.filename or "").startswith(str(dest)):
            raise ThreecadError(f"cannot read {exc.filename} (permission denied); make the source readable "
                                "and try again") from exc
        raise
    return len(files)
