"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write that the system refuses (permission denied, read-only file system, disk full)
raises WriteError, a ThreecadError that names the path ("cannot write PATH: permission
denied"), so every command reports it in one line; it is also an OSError, so callers that
already catch OSError keep working. `check_writable` lets a command refuse before it does
any work (and before its first write), as the refusal contract asks.

Dataset files are read through `open_regular`: a FIFO named like an image would otherwise
block the reader forever, waiting for a writer.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from threecad.errors import ThreecadError

# errno values that mean "this place cannot be written", as opposed to a bug in the caller.
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                 errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


class WriteError(ThreecadError, OSError):
    """A file or folder could not be written; the message names it and says why."""


class NotRegularFile(ThreecadError, OSError):
    """A FIFO, socket, device or folder where a file is read; the message names it."""


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def special_kind(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO", ...), from its st_mode; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _SPECIAL if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a file for reading in binary; anything but a regular file raises NotRegularFile.

    Opened without blocking and checked on the descriptor, so that a FIFO is refused at once
    instead of waiting for a writer, and a file swapped between a check and the open is
    still caught.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        kind = special_kind(os.fstat(fd).st_mode)
        if kind is not None:
            err = NotRegularFile(f"{path} is {kind}, not a regular file; it is not read")
            err.errno, err.strerror, err.filename = errno.EINVAL, f"it is {kind}, not a regular file", os.fspath(path)
            raise err
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _why(exc: OSError) -> str:
    return exc.strerror.lower() if isinstance(exc.strerror, str) else str(exc)


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """The one-line error for a failed write of `path`."""
    err = WriteError(f"cannot write {path}: {_why(exc)}")
    err.errno = exc.errno
    return err


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Raise WriteError unless `path` (a file, or a folder with folder=True) can be created
    or replaced: its nearest existing ancestor must be a writable, searchable folder, and
    an existing `path` must be of the right kind. Nothing is created."""
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise write_error(path, OSError(errno.ENOTDIR, "it is a file, not a folder"))
        if not folder and path.is_dir():
            raise write_error(path, OSError(errno.EISDIR, "it is a folder, not a file"))
        target = path if folder else path.parent
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise write_error(path, OSError(errno.ENOTDIR, f"{target} is a file, not a folder"))
    if not os.access(target, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_fs(target) else errno.EACCES
        raise write_error(path, OSError(code, os.strerror(code)))


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def ensure_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, with a WriteError naming the folder when it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    On an exception the temporary file is removed and `path` is untouched. A refused write
    (permission, read-only file system, disk full), here or in the caller's block, becomes
    a WriteError naming `path`.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
        yield tmp_path
        os.replace(tmp_path, path)
    except WriteError:
        tmp_path.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        # another file's error inside the caller's block (one it reads) stays as it is
        ours = exc.filename is None or os.fspath(exc.filename) in (str(tmp_path), str(path))
        if exc.errno in _WRITE_ERRNOS and ours:
            raise write_error(path, exc) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
