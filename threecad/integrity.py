"""Checksums for the files threecad writes and later trusts: preprocessing caches and checkpoints.

Why: a flipped bit in a memory-mapped cache or a checkpoint is read back without any error
and silently changes every number computed from it. So each such file gets a sidecar
`<file>.sum`, written atomically once the file itself is in place, and the file is checked
against it when it is opened: a cache that fails is rebuilt, a checkpoint that fails is
refused (or, for an epoch checkpoint on resume, skipped).

The hash is XXH3-128 (the `xxhash` package). Measured on a 200 MB file from the page
cache (2-core VM): reading it alone 26 ms, reading and hashing with XXH3-128 31 ms
(XXH3-64 30 ms), SHA-256 190 ms, BLAKE2b 335 ms; from disk 115-180 ms to read, 120-200 ms
with XXH3. So a check costs about what the read does, where a cryptographic hash would
cost 6-12 times more. It detects accidents (bit rot, truncation, a half-copied file), not
tampering; the sidecar names its algorithm, so BLAKE2b sums (written where `xxhash` is
missing) verify too.

Sidecar format, one line: `<algorithm> <hex digest> <size in bytes> <file name>`.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

from threecad.errors import ThreecadError
from threecad.fsutil import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SUM_SUFFIX = ".sum"
MISSING = "the file is missing"
CHUNK = 4 << 20  # 4 MiB: large enough that the loop costs nothing, small enough for the CPU cache

try:  # the fast hash; a declared dependency, but a sum must never be the reason an import fails
    import xxhash
except ImportError:  # pragma: no cover - exercised only without the dependency
    xxhash = None


def _hashers() -> dict[str, Callable[[], Any]]:
    found: dict[str, Callable[[], Any]] = {"blake2b": lambda: hashlib.blake2b(digest_size=16),
                                           "sha256": hashlib.sha256}
    if xxhash is not None:
        found["xxh3_128"] = xxhash.xxh3_128
    return found


DEFAULT_ALGORITHM = "xxh3_128" if xxhash is not None else "blake2b"


class ChecksumError(ThreecadError):
    """A checked file is damaged, truncated or has no (readable) checksum."""


def sum_path(path: str | os.PathLike) -> Path:
    """The sidecar of `path`: `<path>.sum`."""
    path = Path(path)
    return path.with_name(path.name + SUM_SUFFIX)


def file_digest(path: str | os.PathLike, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The hex digest of the file's bytes."""
    hashers = _hashers()
    if algorithm not in hashers:
        raise ChecksumError(f"cannot check {path}: its checksum uses {algorithm}, which needs the "
                            "xxhash package (pip install xxhash)" if algorithm.startswith("xxh")
                            else f"cannot check {path}: unknown checksum algorithm {algorithm!r}")
    h = hashers[algorithm]()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def write_sum(path: str | os.PathLike, digest: str | None = None,
              algorithm: str = DEFAULT_ALGORITHM) -> Path:
    """Write `<path>.sum` for the file as it is now (or for `digest`, computed by the caller
    from the same bytes, e.g. from the temporary file before it was renamed into place)."""
    path = Path(path)
    if digest is None:
        digest = file_digest(path, algorithm)
    size = path.stat().st_size
    target = sum_path(path)
    atomic_write_text(target, f"{algorithm} {digest} {size} {path.name}\n")
    return target


def problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be trusted ("missing", "no checksum", "truncated", ...), or None if it
    matches its sidecar."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return MISSING
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    try:
        fields = sum_path(path).read_text(encoding="ascii").split()
    except FileNotFoundError:
        return f"it has no checksum ({sum_path(path).name} is missing)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"its checksum file cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if len(fields) < 3 or not fields[2].isdigit():
        return f"its checksum file {sum_path(path).name} is malformed"
    algorithm, want, want_size = fields[0], fields[1].lower(), int(fields[2])
    if size != want_size:
        kind = "truncated" if size < want_size else "longer than when it was written"
        return f"it is {kind} ({size} bytes, {want_size} when written)"
    try:
        got = file_digest(path, algorithm)
    except ChecksumError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if got != want:
        return f"its checksum does not match ({algorithm} {got}, {want} when written): the file is damaged"
    return None


def verify_sum(path: str | os.PathLike) -> bool:
    """True when `path` exists and matches its `<path>.sum`."""
    return problem(path) is None


def remove_checked(path: str | os.PathLike) -> None:
    """Remove a file and its sidecar (either may be absent)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    sum_path(path).unlink(missing_ok=True)


def move_checked(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename a file and then its sidecar (same file system); the file alone if it has none."""
    src, dst = Path(src), Path(dst)
    sum_path(dst).unlink(missing_ok=True)
    os.replace(src, dst)
    if sum_path(src).exists():
        os.replace(sum_path(src), sum_path(dst))


def save_checked(obj: Any, path: str | os.PathLike, *,
                 before_replace: Callable[[], None] | None = None) -> Path:
    """`torch.save(obj)` to `path` atomically, then its checksum.

    The digest is taken from the temporary file before the rename, so the sum describes
    exactly the bytes that land. `before_replace` runs after the new file is complete and
    just before it replaces `path` (the epoch checkpoint keeps the previous one there).
    """
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        digest = file_digest(tmp)
        if before_replace is not None:
            before_replace()
        sum_path(path).unlink(missing_ok=True)  # the old sum must never vouch for the new file
    write_sum(path, digest)
    return path


def load_checked(path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """Verify `path` against its sidecar, then `torch.load(..., weights_only=True)`.

    Raises ChecksumError (a ThreecadError naming the file) when the file is missing,
    has no checksum, or does not match it, and ThreecadError when it cannot be unpickled.
    """
    import torch

    path = Path(path)
    reason = problem(path)
    if reason == MISSING:
        raise ChecksumError(f"no {what} at {path}")
    if reason is not None:
        raise ChecksumError(f"refusing the {what} {path}: {reason}; delete it (and {sum_path(path).name}) "
                            "and run again to recompute it")
    try:  # read again from the page cache: holding the bytes would double the peak memory
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user problem
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise ThreecadError(f"cannot load the {what} {path}: {type(exc).__name__}: {first}") from exc
