"""Streaming pixel histogram: fixed memory, no assumed score range, a self-reported error.

Bin placement.  Each score s is mirrored about an anchor a into y = a - s, rounded to
float32 (float64 arithmetic first when the first batch is float64), and binned by the
float32 bit pattern of y: its sign, exponent and b leading mantissa bits (b = `bits`,
default 14).  Every octave of |y| thus holds 2^b bins of relative width 2^-b, so the
resolution at s is about |a - s| * 2^-b, whatever the scale of the maps.  The anchor is
the caller's, else just above the first batch's maximum M: a = M + spread * 2^-20 with
spread = max(range, |M|) (auto_anchor).  Bins are therefore finest at the top of the
score range, where AP, F1-max and AU-PRO (FPR <= 0.3) are decided and where sigmoid
outputs crowd against 1; low scores, which only AUROC weighs, get the coarsest bins.
Scores within spread * 2^-26 of the anchor share one bin on each side of it, so that the
exponents between them and zero leave no gap of empty bins.

Out-of-range scores.  No range is assumed: every finite float32 has a bin, so a score far
above or below everything seen before (a later batch with stronger defects, say) simply
opens new blocks of bins.  Nothing is clipped; a score whose mirror overflows float32
lands in an extreme (infinite) bin that stays ordered beyond every finite bin.  NaN and
inf are refused before binning.

Memory.  Bins live in blocks of 2^b, allocated as scores reach them, at most 512 blocks.
A block holds 2^b x (2 + 2 S) 8-byte counters (total and defect counts, then region
weight and region count per size bin): 1 MiB for b = 14 and S = 3.  A category touches
some 20-60 blocks; the worst case (scores over every float32 exponent) is 512 MiB.
Per batch, the float and integer passes run 65,536 pixels at a time in cached buffers;
only the batch's bin ids (8 bytes a pixel) live until its one bincount.

Error.  Bins are ordered intervals of the score axis, so the exact curves pass through
every bin boundary and a binned metric differs from the exact one only through the order
of pixels inside a bin.  compute() reports a rigorous worst-case bound per metric
(curves.streaming_error_bounds).  With b = 14 the bound on continuous maps is about 1e-5
to 1e-4 and the observed error about 1e-7 to 1e-5; maps of evenly spaced values (8-bit
maps, their /255 scaling) get one value per bin, so streaming is then exact (the bound,
which cannot see ties, stays loose).
"""
from __future__ import annotations

import numpy as np

from threecad.errors import ThreecadError
from threecad.metrics.curves import Levels
from threecad.metrics.regions import BatchRegions

_SIGN_BITS = 9  # sign + float32 exponent: the id space holds 2^(9 + bits) bins
ANCHOR_OCTAVES = 20   # auto anchor: this many octaves of the spread above the first maximum
FLOOR_OCTAVES = 26    # |score - anchor| below spread * 2^-26 shares one bin (per side)


class StreamingPixelHistogram:
    """Accumulates per-bin normal/defect counts and region coverage; memory bounded by bins."""

    #: Batches spanning at most this many blocks are counted with one dense bincount.
    DENSE_BLOCKS = 64
    #: Pixels per step of the float and integer passes (their temporaries stay in cache).
    PIECE = 1 << 16

    def __init__(self, n_size: int, bits: int = 14, anchor: float | None = None) -> None:
        if not 8 <= int(bits) <= 16:
            raise ThreecadError(f"metrics: stream_bits must lie in 8..16; got {bits}")
        self.n_size = n_size
        self.bits = int(bits)
        self.block_len = 1 << self.bits
        self._shift = 23 - self.bits
        self._offset = 1 << (8 + self.bits)          # signed bin -> id in [0, 2^(9+bits))
        self.floor = 0.0
        self._floor_key = self._floor_bin = 0
        self.anchor = None if anchor is None else float(anchor)
        self._work_dtype: np.dtype | None = None
        self._row_of_block = np.full(1 << _SIGN_BITS, -1, dtype=np.int64)
        self._n_rows = 0
        self._total = np.zeros((0, self.block_len), dtype=np.int64)
        self._pos = np.zeros((0, self.block_len), dtype=np.int64)
        self._pro = np.zeros((n_size, 0, self.block_len), dtype=np.float64)
        self._q = np.zeros((n_size, 0, self.block_len), dtype=np.int64)

    @staticmethod
    def auto_anchor(lo: float, hi: float) -> float:
        """Just above the first batch's maximum M: M + max(range, |M|) * 2^-20.

        The top score then sits about 20 octaves below the anchor instead of on it, so a
        batch spans some 20-30 blocks (dense counting) and scores near M keep a resolution
        of about max(range, |M|) * 2^-34.
        """
        lo, hi = float(lo), float(hi)
        scale = max(hi - lo, abs(hi)) or 1.0
        return hi + scale * 2.0 ** -ANCHOR_OCTAVES

    # -- binning -------------------------------------------------------------------------
    def _start(self, dtype: np.dtype, lo: float, hi: float) -> None:
        """Fix the working precision, the anchor and the near-anchor floor from the first batch."""
        self._work_dtype = np.dtype(np.float64 if dtype == np.float64 else np.float32)
        if self.anchor is None:
            self.anchor = self.auto_anchor(lo, hi)
        spread = max(abs(self.anchor - float(lo)), abs(self.anchor - float(hi))) or 1.0
        eps = np.array([spread * 2.0 ** -FLOOR_OCTAVES], dtype=np.float32)
        self.floor = float(eps[0])
        # the floor's float32 bit pattern, aligned down to a bin boundary
        self._floor_key = int(eps.view(np.int32)[0]) & ~((1 << self._shift) - 1)
        self._floor_bin = self._floor_key >> self._shift

    def _mirrored(self, x: np.ndarray) -> np.ndarray:
        """float32 y = anchor - x, decreasing in x, never -0.0 (so -0 and +0 share a bin)."""
        wd = self._work_dtype
        a = wd.type(self.anchor) + wd.type(0.0)      # +0.0, never -0.0
        y = np.empty(x.shape, dtype=np.float32)
        xw = x if x.dtype == wd else x.astype(wd)
        np.subtract(a, xw, out=y, casting="same_kind")
        return y

    def _ids(self, y: np.ndarray, nonneg: bool, out: np.ndarray | None = None, add: int = 0,
             above_floor: bool = False) -> np.ndarray:
        """Bin id of each float32 y: increasing in y (so decreasing in the score).

        On the magnitude bits m of y (the float32 pattern without its sign), k = max(m - F, 0)
        with F the floor's pattern; the bin is k >> (23 - bits), negated (minus one) for
        negative y.  |y| below the floor thus shares the bin next to zero on its side, and
        the two sides of zero are adjacent: no empty exponent range between them.
        `above_floor` (every |y| >= floor, y >= 0) skips the clamp.
        """
        i = y.view(np.int32)
        if out is None:
            out = np.empty(y.shape, dtype=np.int64)
        if nonneg:
            k = np.right_shift(i, self._shift)
            if not above_floor:
                np.maximum(k, self._floor_bin, out=k)
            np.add(k, self._offset - self._floor_bin + add, out=out)
        else:
            sign = np.right_shift(i, 31)               # -1 where negative, else 0
            mag = i & 0x7FFFFFFF
            mag -= self._floor_key
            mag &= ~np.right_shift(mag, 31)            # max(mag, 0) without a slow np.maximum
            mag ^= sign                                # negative side: -k - 1, order-preserving
            np.right_shift(mag, self._shift, out=mag)
            np.add(mag, self._offset + add, out=out)
        return out

    def _rows(self, blocks: np.ndarray) -> np.ndarray:
        """Storage rows of the given blocks, allocating rows for blocks seen the first time."""
        new = blocks[self._row_of_block[blocks] < 0]
        if len(new):
            need = self._n_rows + len(new)
            if need > self._total.shape[0]:          # rows are few (<= 512): grow to fit exactly
                grow = need - self._total.shape[0]
                z2 = np.zeros((grow, self.block_len), dtype=np.int64)
                self._total = np.concatenate([self._total, z2])
                self._pos = np.concatenate([self._pos, z2])
                z3 = np.zeros((self.n_size, grow, self.block_len))
                self._pro = np.concatenate([self._pro, z3], axis=1)
                self._q = np.concatenate([self._q, z3.astype(np.int64)], axis=1)
            self._row_of_block[new] = np.arange(self._n_rows, need)
            self._n_rows = need
        return self._row_of_block[blocks]

    # -- accumulation --------------------------------------------------------------------
    def add(self, maps: np.ndarray, masks: np.ndarray, regions: BatchRegions | None,
            lo: float | None = None, hi: float | None = None) -> None:
        """Count one batch; `lo`/`hi` (the batch's min and max, when known) save a pass."""
        x = maps.reshape(-1)
        if x.size == 0:
            return
        if lo is None or hi is None:
            lo, hi = x.min(), x.max()
        if self._work_dtype is None:
            self._start(x.dtype, lo, hi)
        y_lo, y_hi = self._mirrored(np.array([hi, lo], dtype=x.dtype))  # monotone: extremes map to extremes
        nonneg = bool(y_lo >= 0)
        above = nonneg and bool(y_lo >= self.floor)
        lo_id, hi_id = self._ids(np.array([y_lo, y_hi], dtype=np.float32), nonneg)
        lo_blk, hi_blk = int(lo_id) >> self.bits, int(hi_id) >> self.bits
        if hi_blk - lo_blk < self.DENSE_BLOCKS:
            self._count_dense(x, nonneg, above, lo_blk, hi_blk)
        else:
            self._count_sparse(x, nonneg)
        pix = regions.pixel_index if regions is not None else np.flatnonzero(masks)
        if len(pix) == 0:
            return
        L = self.block_len
        u, inv = np.unique(self._ids(self._mirrored(x[pix]), nonneg), return_inverse=True)
        rows, off = self._row_of_block[u >> self.bits], u & (L - 1)
        self._pos[rows, off] += np.bincount(inv, minlength=len(u))
        if regions is None or self.n_size == 0:
            return
        n = len(u)
        sums = np.bincount(regions.pixel_size_bin() * n + inv, weights=regions.pixel_weight(),
                           minlength=self.n_size * n)
        self._pro[:, rows, off] += sums.reshape(self.n_size, n)
        q_vals = regions.half_cover_scores(x[pix])
        q_ids = self._ids(self._mirrored(q_vals), nonneg)
        uq, invq = np.unique(q_ids, return_inverse=True)
        nq = len(uq)
        qc = np.bincount(regions.size_bin * nq + invq, minlength=self.n_size * nq)
        self._q[:, self._row_of_block[uq >> self.bits], uq & (L - 1)] += qc.reshape(self.n_size, nq)

    def _count_dense(self, x: np.ndarray, nonneg: bool, above: bool, lo_blk: int, hi_blk: int) -> None:
        """Count a batch spanning few blocks with one bincount.

        The float and integer steps run piece by piece in small buffers that stay in the
        CPU cache; only the final bin ids go to a batch-sized array.
        """
        L = self.block_len
        base = lo_blk << self.bits
        ids = np.empty(x.size, dtype=np.int64)
        for at in range(0, x.size, self.PIECE):
            piece = x[at:at + self.PIECE]
            self._ids(self._mirrored(piece), nonneg, out=ids[at:at + len(piece)], add=-base, above_floor=above)
        counts = np.bincount(ids, minlength=(hi_blk - lo_blk + 1) * L).reshape(-1, L)
        del ids
        nz = counts.any(axis=1)
        rows = self._rows(np.arange(lo_blk, hi_blk + 1)[nz])   # may grow the arrays: look up first
        self._total[rows] += counts[nz]

    def _count_sparse(self, x: np.ndarray, nonneg: bool) -> None:
        """Count a batch whose scores spread over many octaves: only the blocks present."""
        L = self.block_len
        ids = self._ids(self._mirrored(x), nonneg)
        blk = ids >> self.bits
        present = np.flatnonzero(np.bincount(blk, minlength=1 << _SIGN_BITS))
        lut = np.full(1 << _SIGN_BITS, -1, dtype=np.int64)
        lut[present] = np.arange(len(present))
        local = (lut[blk] << self.bits) | (ids & (L - 1))
        counts = np.bincount(local, minlength=len(present) * L).reshape(-1, L)
        rows = self._rows(present)
        self._total[rows] += counts

    # -- read-out ------------------------------------------------------------------------
    def levels(self) -> Levels:
        blocks = np.flatnonzero(self._row_of_block >= 0)   # ascending ids: highest scores first
        rows = self._row_of_block[blocks]
        total = self._total[rows].reshape(-1)
        pos = self._pos[rows].reshape(-1)
        pro = self._pro[:, rows].reshape(self.n_size, -1)
        q = self._q[:, rows].reshape(self.n_size, -1)
        keep = total > 0
        return Levels(neg=(total - pos)[keep], pos=pos[keep], pro=pro[:, keep], region_q=q[:, keep])

    @property
    def state_bytes(self) -> int:
        return sum(a.nbytes for a in (self._total, self._pos, self._pro, self._q))

    @property
    def occupied_bins(self) -> int:
        return int(np.count_nonzero(self._total[: self._n_rows]))
