"""Normal scores as sorted runs: a buffer in memory, full buffers sorted and spilled to disk.

Why: exact metrics in bounded memory (threecad.metrics.bounded) need every normal score in
order relative to the defect scores, but not in memory: a run sorted once and read back once
per pass is enough.  Runs of float32 scores are spilled as one byte per score, the step
between consecutive order-preserving keys (dense sorted scores step by a few keys), with the
few larger steps escaped to a second file: the disk traffic, which on a busy machine costs
more than the coding, drops by four.  Files are written and read in whole blocks with
O_DIRECT where the system has it (plain I/O otherwise): each run is read back once, and
pages cached for it would be allocated, and on a loaded machine reclaimed, at the writer's
expense.  count_slots merges a sorted run with the sorted distinct defect scores.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threecad.errors import ThreecadError
from threecad.metrics import kernels, spill_kernels

#: Spill files are written and read in whole blocks of this many bytes, with O_DIRECT where the system has it.
BLOCK = 1 << 12
DIRECT = getattr(os, "O_DIRECT", 0)
#: Fences kept per spilled run (every len/FENCES-th score): they size the windows of the merge.
FENCES = 4096


@dataclass
class Run:
    """One sorted run spilled to disk: raw scores, or (float32) one byte per score with the
    escaped keys in a second file (`escapes` of them)."""

    path: Path
    dtype: np.dtype
    length: int
    fences: np.ndarray
    escapes: int = -1          # -1: raw

    @property
    def nbytes(self) -> int:
        return self.length * self.dtype.itemsize if self.escapes < 0 else self.length + 4 * self.escapes


def _aligned(n: int) -> np.ndarray:
    """n bytes starting on a BLOCK boundary (what O_DIRECT transfers need), from numpy."""
    buf = np.empty(n + BLOCK, dtype=np.uint8)
    at = -buf.ctypes.data % BLOCK
    return buf[at:at + n]


def _open(path: Path, flags: int) -> tuple[int, bool]:
    """A file descriptor, with O_DIRECT where the system and the file system allow it."""
    if DIRECT:
        try:
            return os.open(path, flags | DIRECT, 0o600), True
        except OSError:
            pass
    return os.open(path, flags, 0o600), False


class _Writer:
    """Appends bytes to a new file in whole blocks, past the page cache where it can (O_DIRECT);
    the last block is padded with zeros."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.fd, self.direct = _open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self.stage = _aligned(_blocks(size))
        self.n = 0

    def write(self, data) -> None:
        data = memoryview(data).cast("B")
        at = 0
        if not self.n and self.direct and np.frombuffer(data, np.uint8).ctypes.data % BLOCK == 0:
            at = len(data) // BLOCK * BLOCK              # aligned already: whole blocks go straight out
            self._out(data[:at])
        while at < len(data):
            k = min(len(self.stage) - self.n, len(data) - at)
            self.stage[self.n:self.n + k] = np.frombuffer(data[at:at + k], dtype=np.uint8)
            self.n += k
            at += k
            if self.n == len(self.stage):
                self._out(memoryview(self.stage)[:self.n])
                self.n = 0

    def _out(self, view: memoryview) -> None:
        try:
            done = 0
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError:
            if not self.direct or os.lseek(self.fd, 0, os.SEEK_CUR):
                raise
            os.close(self.fd)                        # O_DIRECT refused on first use: plain writes
            self.fd, self.direct = os.open(self.path, os.O_WRONLY | os.O_TRUNC), False
            self._out(view)

    def close(self) -> None:
        if self.n:
            padded = _blocks(self.n) if self.direct else self.n
            self.stage[self.n:padded] = 0
            self._out(memoryview(self.stage)[:padded])
        os.close(self.fd)


def _blocks(n: int) -> int:
    """n rounded up to whole blocks (at least one)."""
    return -(-max(n, 1) // BLOCK) * BLOCK


def _read_pieces(path: Path, nbytes: int, piece: int):
    """The first nbytes of a file in pieces of `piece` bytes, a whole number of blocks (each
    valid until the next)."""
    fd, direct = _open(path, os.O_RDONLY)
    stage = _aligned(min(piece, _blocks(nbytes)))
    try:
        at = 0
        while at < nbytes:
            want = min(len(stage), nbytes - at)
            size = _blocks(want) if direct else want
            got = 0
            while got < want:
                k = os.readv(fd, [memoryview(stage)[got:size]])
                if k == 0:
                    raise ThreecadError(f"metrics: the spilled run {path} is shorter than written")
                got += k
            at += want
            yield stage[:want]
    finally:
        os.close(fd)


class SortedRuns:
    """Normal scores as sorted runs: a buffer in memory, full buffers sorted and spilled
    (coded when float32 and dense enough, else raw), or, with spill=False, dropped: the
    caller reads them back from elsewhere."""

    def __init__(self, capacity: int, piece: int, spill_dir: str | Path | None, spill: bool = True) -> None:
        self.capacity = max(int(capacity), 1024)
        self.piece = max(int(piece), 1024)          # bytes of a piece coded, decoded or read
        self.spill_dir = spill_dir
        self.spill = spill
        self.runs: list[Run] = []
        self.dropped = False
        self.total = 0
        self._buf: np.ndarray | None = None
        self._n = 0
        self._sorted = True
        self._dir: Path | None = None

    # -- filling ---------------------------------------------------------------------------
    def add(self, flat: np.ndarray, normal_count: int, mask8: np.ndarray) -> None:
        """Keep the scores of `flat` whose mask byte is 0 (`normal_count` of them), a piece at
        a time (a batch of any size allocates no more than a piece)."""
        self.total += normal_count
        if self.dropped or normal_count == 0:
            return
        if self._buf is not None and flat.dtype != self._buf.dtype:
            self.flush(free=True)
        if self._buf is None:
            self._buf = np.empty(0, dtype=flat.dtype)
        room = self.capacity // self._buf.itemsize
        step = max(1, min(room, self.piece // self._buf.itemsize))
        for at in range(0, flat.size, step):
            part, marks = flat[at:at + step], mask8[at:at + step]
            k = normal_count if step >= flat.size else len(part) - int(np.count_nonzero(marks))
            if self._n + k > room:
                self.flush()
                if self.dropped:
                    return
            self._reserve(self._n + k)
            if kernels.ENABLED and kernels.AVAILABLE:
                self._n = int(spill_kernels.copy_normals(part, marks, self._buf, self._n))
            else:
                self._buf[self._n:self._n + k] = part[marks == 0]
                self._n += k
            self._sorted = False

    def _reserve(self, n: int) -> None:
        """Grow the buffer to hold n scores (resize in place: the pages kept are not copied)."""
        if n > len(self._buf):
            room = self.capacity // self._buf.itemsize
            self._buf.resize(min(max(n, 2 * len(self._buf), 1 << 16), room), refcheck=False)

    def memory_run(self) -> np.ndarray | None:
        """The buffer's scores, sorted (None when there is no buffer)."""
        if self._buf is None:
            return None
        run = self._buf[:self._n]
        if not self._sorted:
            run.sort()
            self._sorted = True
        return run

    @property
    def folder(self) -> Path | None:
        """The private folder of the spilled runs (removed with them), once one was spilled."""
        return self._dir

    @property
    def buffer_bytes(self) -> int:
        return 0 if self._buf is None else self._buf.nbytes

    @property
    def spilled_bytes(self) -> int:
        return sum(r.nbytes for r in self.runs)

    def flush(self, free: bool = False) -> None:
        """Sort the buffer and spill it as a run (or drop it and free it); `free`: free it too
        (kept otherwise: its pages are already mapped)."""
        run = self.memory_run()
        if run is not None and len(run):
            if not self.spill:
                self.dropped = True
            else:
                self._spill(run)
        if free or self.dropped:
            self._buf = None
        self._n = 0
        self._sorted = True

    def _spill(self, run: np.ndarray) -> None:
        if self._dir is None:
            base = Path(self.spill_dir) if self.spill_dir is not None else None
            if base is not None:
                base.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="threecad-metrics-", dir=base))
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        path = self._dir / f"run-{len(self.runs):05d}.bin"
        step = max(1, -(-len(run) // FENCES))
        fences = np.concatenate([run[::step], run[-1:]])
        escapes = self._encode(run, path) if run.dtype == np.float32 else -1
        if escapes < 0:
            out = _Writer(path, self.piece)
            out.write(run)
            out.close()
        self.runs.append(Run(path, run.dtype, len(run), fences, escapes))

    def _encode(self, run: np.ndarray, path: Path) -> int:
        """Write a sorted float32 run coded (Run); -1 when a 64th of its scores would be escaped."""
        piece = _blocks(self.piece // 4)
        allowed = len(run) // 64
        deltas = _aligned(min(piece, len(run)))
        escapes = np.empty(min(piece, len(run)), dtype=np.int32)
        prev = -(1 << 40)
        used = 0
        bits = run.view(np.int32)
        out = _Writer(path, self.piece)
        with open(path.with_suffix(".esc"), "wb") as g:
            for at in range(0, len(run), piece):
                part = bits[at:at + piece]
                n_esc, prev = _encode(part, prev, deltas[:len(part)], escapes[:len(part)])
                used += n_esc
                if used > allowed:
                    break
                out.write(deltas[:len(part)])
                g.write(memoryview(escapes[:n_esc]))
        out.close()
        if used <= allowed:
            return used
        path.with_suffix(".esc").unlink()
        return -1

    def cast_runs(self, dtype: np.dtype, raw: bool = False) -> None:
        """Rewrite spilled runs of another dtype in `dtype` (a cast keeps a run sorted), and
        with raw=True coded runs raw (memory-mapped reads need raw scores)."""
        for i, run in enumerate(self.runs):
            if run.dtype == dtype and (run.escapes < 0 or not raw):
                continue
            path = run.path.with_suffix(".raw")
            out = _Writer(path, self.piece)
            for part in self._read(run):
                out.write(part.astype(dtype))
            out.close()
            run.path.unlink()
            run.path.with_suffix(".esc").unlink(missing_ok=True)
            self.runs[i] = Run(path, np.dtype(dtype), run.length, run.fences.astype(dtype))
        if self._buf is not None and self._buf.dtype != dtype:
            run = self.memory_run()
            self._buf = run.astype(dtype)
            self._n = len(self._buf)

    # -- reading ---------------------------------------------------------------------------
    def _read(self, run: Run):
        """A spilled run, ascending, in pieces of its own dtype (each valid until the next)."""
        itemsize = run.dtype.itemsize
        piece = _blocks(self.piece // itemsize)          # scores a piece (whole blocks of bytes either way)
        if run.escapes < 0:
            for part in _read_pieces(run.path, run.length * itemsize, piece * itemsize):
                yield part.view(run.dtype)
            return
        escapes = np.fromfile(run.path.with_suffix(".esc"), dtype=np.int32)
        out = np.empty(min(piece, run.length), dtype=run.dtype)
        at_esc, key = 0, 0
        for part in _read_pieces(run.path, run.length, piece):
            at_esc, key = _decode(part, escapes, at_esc, key, out[:len(part)].view(np.int32))
            yield out[:len(part)]

    def pieces(self, dtype: np.dtype):
        """Every run, ascending, in pieces cast to `dtype` (each valid until the next)."""
        for run in self.runs:
            for part in self._read(run):
                yield part.astype(dtype, copy=False)
        run = self.memory_run()
        if run is not None:
            piece = max(1, self.piece // run.itemsize)
            for at in range(0, len(run), piece):
                yield run[at:at + piece].astype(dtype, copy=False)

    def sorted_sources(self) -> list[np.ndarray]:
        """Every run as one sorted array: memory maps of the spilled runs (raw: see cast_runs), and the buffer."""
        out = [np.memmap(r.path, dtype=r.dtype, mode="r", shape=(r.length,)) for r in self.runs if r.length]
        run = self.memory_run()
        if run is not None and len(run):
            out.append(run)
        return out

    def fences(self) -> list[np.ndarray]:
        out = [r.fences for r in self.runs if r.length]
        run = self.memory_run()
        if run is not None and len(run):
            step = max(1, -(-len(run) // FENCES))
            out.append(np.concatenate([run[::step], run[-1:]]))
        return out


def _encode(bits: np.ndarray, prev: int, deltas: np.ndarray, escapes: np.ndarray) -> tuple[int, int]:
    """kernels.encode_sorted_f32, compiled or in numpy (the same bytes)."""
    if kernels.ENABLED and kernels.AVAILABLE:
        n_esc, last = spill_kernels.encode_sorted_f32(bits, prev, deltas, escapes)
        return int(n_esc), int(last)
    keys = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)
    keys[keys == -1] = 0                               # -0.0 as +0.0
    steps = np.diff(keys, prepend=prev)
    esc = (steps < 0) | (steps >= 255)
    n_esc = int(np.count_nonzero(esc))
    if n_esc > len(escapes):
        return -1, prev
    deltas[:] = np.where(esc, 255, steps).astype(np.uint8)
    escapes[:n_esc] = keys[esc]
    return n_esc, int(keys[-1]) if len(keys) else prev


def _decode(deltas: np.ndarray, escapes: np.ndarray, at_esc: int, key: int, out: np.ndarray) -> tuple[int, int]:
    """kernels.decode_sorted_f32, compiled or in numpy."""
    if kernels.ENABLED and kernels.AVAILABLE:
        at_esc, key = spill_kernels.decode_sorted_f32(deltas, escapes, at_esc, key, out)
        return int(at_esc), int(key)
    esc = deltas == 255
    step = deltas.astype(np.int64)
    step[esc] = 0
    keys = key + np.cumsum(step)
    idx = np.flatnonzero(esc)
    jump = escapes[at_esc:at_esc + len(idx)].astype(np.int64) - keys[idx]   # escaped key minus the running sum
    fix = np.zeros(len(keys), dtype=np.int64)
    fix[idx] = np.diff(jump, prepend=0)
    keys += np.cumsum(fix)
    k = keys.astype(np.int32)
    out[:] = k ^ ((k >> 31) & 0x7FFFFFFF)
    return at_esc + len(idx), int(keys[-1]) if len(keys) else key


def count_slots(x: np.ndarray, u: np.ndarray, counts: np.ndarray) -> None:
    """kernels.count_slots (ascending scores x into the slots around ascending distinct u),
    compiled when it can be, else with two binary searches per u in range."""
    if not len(x):
        return
    if kernels.ENABLED and kernels.AVAILABLE:
        spill_kernels.count_slots(x, u, counts)
        return
    i0 = int(np.searchsorted(u, x[0], side="left"))
    i1 = int(np.searchsorted(u, x[-1], side="right"))
    sub = u[i0:i1]
    left = np.searchsorted(x, sub, side="left")
    right = np.searchsorted(x, sub, side="right")
    counts[2 * i0 + 1:2 * i1:2] += right - left
    counts[2 * i0:2 * i1 + 1:2] += np.concatenate((left, [len(x)])) - np.concatenate(([0], right))
