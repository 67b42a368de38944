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
some 20-60 blocks; the worst case (scores over every float32 exponent) is 512 MiB.  Row
capacity at least doubles when it grows; spare rows are untouched zero pages.  Per batch:
the compiled path counts into one int32 buffer over the batch's block range (at most 64
blocks: 4 MiB for b = 14, kept between batches) plus a few arrays per defect pixel; the
numpy path runs 65,536 pixels at a time in cached buffers and keeps the batch's bin ids
(8 bytes a pixel) until its one bincount, as does either path for a batch whose scores
span more than 64 blocks (counted sparse).  At 3CAD size the peak beyond one batch of
maps is some 65 MB (benchmarks/metrics.py).

Error.  Bins are ordered intervals of the score axis, so the exact curves pass through
every bin boundary and a binned metric differs from the exact one only through the order
of pixels inside a bin.  compute() reports a rigorous worst-case bound per metric
(curves.streaming_error_bounds).  With b = 14 the bound on continuous maps is about 1e-5
to 1e-4 and the observed error about 1e-9 to 1e-5 (benchmarks/metrics.py, 3CAD-sized
synthetic maps: P-AUROC 3.5e-9, P-AP 6.8e-6, AU-PRO 1.7e-8, bounds 1.8e-5 to 4.1e-5);
maps of evenly spaced values (8-bit maps, their /255 scaling) get one value per bin, so
streaming is then exact (the bound, which cannot see ties, stays loose).

Speed.  Two implementations with the same bins and the same float sums, hence the same
results to the last bit (tests/test_metrics_kernels.py): compiled numba kernels
(threecad.metrics.kernels), used when numba imports, and the numpy path below, used
otherwise (or with use_kernels=False).  Compiled, a batch of float32 maps costs one pass
once the first batch has fixed the anchor (add_scanning: per-image min/max, the NaN/inf
check and the counting together, into the block range of the batches so far), defect
pixels are grouped by bin in the same buffer, and half-cover bins are read off that
grouping.  benchmarks/metrics.py, one core of a shared machine, 16,546 maps of 256x256:
about 3 ns a pixel all-in (3.0-3.2 s CPU), 10-12x less than exact mode (33-36 s); the
numpy path takes 12-17 ns a pixel.
"""
from __future__ import annotations

import numpy as np

from threecad.errors import ThreecadError
from threecad.metrics import kernels
from threecad.metrics.curves import Levels
from threecad.metrics.inputs import map_extremes
from threecad.metrics.regions import BatchRegions

_SIGN_BITS = 9  # sign + float32 exponent: the id space holds 2^(9 + bits) bins
ANCHOR_OCTAVES = 20   # auto anchor: this many octaves of the spread above the first maximum
FLOOR_OCTAVES = 26    # |score - anchor| below spread * 2^-26 shares one bin (per side)


class StreamingPixelHistogram:
    """Accumulates per-bin normal/defect counts and region coverage; memory bounded by bins."""

    #: Batches spanning at most this many blocks are counted densely (numpy: one bincount;
    #: compiled: an int32 buffer over the block range); wider ones block by block.
    DENSE_BLOCKS = 64
    #: Pixels per step of the numpy path's float and integer passes (temporaries stay in cache).
    PIECE = 1 << 16
    #: Blocks added on each side of add_scanning's block range.
    WINDOW_MARGIN = 2
    #: Pixels per call of the compiled counting pass (its histogram counts are int32).
    KERNEL_CHUNK = 1 << 30

    def __init__(self, n_size: int, bits: int = 14, anchor: float | None = None,
                 use_kernels: bool | None = None) -> None:
        """`use_kernels`: the compiled numba passes (default: kernels.ENABLED), else numpy;
        both give the same bins.  Without numba the numpy path runs whatever is asked."""
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
        self.uses_kernels = kernels.AVAILABLE and (kernels.ENABLED if use_kernels is None else bool(use_kernels))
        self._dense = np.zeros(0, dtype=np.int32)   # compiled path: one batch's counts, zero between batches
        self._window: tuple[int, int] | None = None  # blocks of the batches so far (add_scanning)

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
        """Storage rows of the given blocks, allocating rows for blocks seen the first time.

        Capacity at least doubles when it grows (rows are few, <= 512), so rows are copied a
        few times per category, not once per new block; rows not yet used stay untouched
        zero pages of np.zeros, which cost no physical memory until written.
        """
        new = blocks[self._row_of_block[blocks] < 0]
        if len(new):
            need = self._n_rows + len(new)
            if need > self._total.shape[0]:
                cap = min(max(need, 2 * self._total.shape[0], 8), 1 << _SIGN_BITS)
                used = self._n_rows
                for name in ("_total", "_pos"):
                    grown = np.zeros((cap, self.block_len), dtype=np.int64)
                    grown[:used] = getattr(self, name)[:used]
                    setattr(self, name, grown)
                for name, dtype in (("_pro", np.float64), ("_q", np.int64)):
                    grown = np.zeros((self.n_size, cap, self.block_len), dtype=dtype)
                    grown[:, :used] = getattr(self, name)[:, :used]
                    setattr(self, name, grown)
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
        self._extend_window(lo_blk, hi_blk)
        self._add_defects(x, masks, regions, nonneg, lo_blk, hi_blk)

    def add_scanning(self, maps: np.ndarray, masks: np.ndarray,
                     regions: BatchRegions | None) -> tuple[np.ndarray, np.ndarray]:
        """Count one batch and return its per-image min and max; NaN/inf are refused before
        anything is counted.

        Why: a min/max pass and a counting pass each read the whole batch from memory.  Once
        a first batch has fixed the anchor, contiguous float32 maps take one compiled pass
        that does both, counting into the block range of the batches so far; a batch that
        reaches outside that range is counted again over its own.  Other maps take the two
        passes (inputs.map_extremes, then add).
        """
        flat = maps.reshape(len(maps), -1)
        if (self.uses_kernels and self._window is not None and flat.dtype == np.float32
                and self._work_dtype == np.float32 and flat.flags.c_contiguous
                and 0 < flat.size < self.KERNEL_CHUNK):
            lo_blk, hi_blk = self._window
            dense = self._dense_buffer(hi_blk - lo_blk + 1)
            lo = np.empty(len(flat), dtype=np.int32)
            hi = np.empty(len(flat), dtype=np.int32)
            a = float(np.float32(self.anchor) + np.float32(0.0))
            outside, bad, first, last = kernels.count_scan(flat, flat.view(np.int32), a, self._shift,
                                                           self._floor_key, self._offset - (lo_blk << self.bits),
                                                           dense, lo, hi)
            if bad < 0 and outside == 0:
                used = slice(first >> self.bits, (last >> self.bits) + 1)   # blocks this batch reached
                self._flush_dense(dense[used.start * self.block_len:used.stop * self.block_len],
                                  lo_blk + used.start, lo_blk + used.stop - 1)
                lo, hi = lo.view(np.float32), hi.view(np.float32)
                y_lo = self._mirrored(hi.max(keepdims=True))[0]
                self._add_defects(flat.reshape(-1), masks, regions, bool(y_lo >= 0), lo_blk, hi_blk)
                return lo, hi
            dense[:] = 0                                   # discard: counted again below, or refused
        lo, hi = map_extremes(maps)
        self.add(maps, masks, regions, lo.min(), hi.max())
        return lo, hi

    def _extend_window(self, lo_blk: int, hi_blk: int) -> None:
        """Block range that add_scanning counts into: every batch's so far, if dense-sized,
        with WINDOW_MARGIN blocks more on each side (later batches' tails reach a little
        further; each batch that reaches outside costs a second pass)."""
        if self._window is not None:
            lo_blk, hi_blk = min(self._window[0], lo_blk), max(self._window[1], hi_blk)
        for margin in (self.WINDOW_MARGIN, 0):
            lo, hi = max(lo_blk - margin, 0), min(hi_blk + margin, (1 << _SIGN_BITS) - 1)
            if hi - lo < self.DENSE_BLOCKS:
                self._window = (lo, hi)
                return
        self._window = None

    def _add_defects(self, x: np.ndarray, masks: np.ndarray, regions: BatchRegions | None,
                     nonneg: bool, lo_blk: int, hi_blk: int) -> None:
        """Defect pixels: defect counts, region weights (PRO) and half-cover counts per bin."""
        pix = regions.pixel_index if regions is not None else np.flatnonzero(masks)
        if len(pix) == 0:
            return
        if self.uses_kernels:
            self._add_defects_compiled(x[pix], regions, nonneg, lo_blk, hi_blk)
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
        if self.uses_kernels:
            for at in range(0, x.size, self.KERNEL_CHUNK):
                self._count_dense_compiled(x[at:at + self.KERNEL_CHUNK], nonneg, lo_blk, hi_blk)
            return
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
        if self.uses_kernels:
            ids = self._bin_ids_compiled(x, nonneg)
            self._rows(np.flatnonzero(np.bincount(ids >> self.bits, minlength=1 << _SIGN_BITS)))
            kernels.count_by_rows(ids, self._row_of_block, self.bits, self._total)
            return
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

    # -- accumulation, compiled (kernels.py): the same bins, step for step ---------------
    def _kernel_scores(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Scores in the working dtype (cast as _mirrored casts them) and the anchor as
        _mirrored uses it (+0.0, never -0.0), as a float64 for the kernels."""
        wd = self._work_dtype
        if x.dtype != wd:
            x = x.astype(wd)
        return x, float(wd.type(self.anchor) + wd.type(0.0))

    def _bin_ids_compiled(self, x: np.ndarray, nonneg: bool) -> np.ndarray:
        """Global bin ids (int64) of scores: _ids(_mirrored(x), nonneg) in one compiled pass."""
        xk, a = self._kernel_scores(x)
        out = np.empty(xk.size, dtype=np.int64)
        kernels.bin_ids(xk, a, nonneg, self._shift, self._floor_key, self._floor_bin, self._offset, out)
        return out

    def _dense_buffer(self, n_blocks: int) -> np.ndarray:
        """The compiled path's int32 counts of one batch, n_blocks blocks (all zero between batches)."""
        if self._dense.size < n_blocks * self.block_len:
            self._dense = np.zeros(n_blocks * self.block_len, dtype=np.int32)
        return self._dense[:n_blocks * self.block_len]

    def _flush_dense(self, dense: np.ndarray, lo_blk: int, hi_blk: int) -> None:
        """Add the nonzero blocks of the batch's dense counts to the stored rows; zero them.
        Blocks seen the first time get rows in between two passes of the kernel."""
        blocks = np.arange(lo_blk, hi_blk + 1)
        rows = self._row_of_block[blocks]
        missing = kernels.flush_blocks(dense, self.block_len, rows, np.ones(len(blocks), dtype=bool), self._total)
        if missing.any():
            rows = self._row_of_block[blocks].copy()
            rows[missing] = self._rows(blocks[missing])
            kernels.flush_blocks(dense, self.block_len, rows, missing, self._total)

    def _count_dense_compiled(self, x: np.ndarray, nonneg: bool, lo_blk: int, hi_blk: int) -> None:
        """Count into a block-relative int32 histogram (cache-sized), then add its nonzero blocks."""
        xk, a = self._kernel_scores(x)
        dense = self._dense_buffer(hi_blk - lo_blk + 1)
        base = lo_blk << self.bits
        bad = -1
        if xk.dtype == np.float32:      # count_scan's id branch is exact for float32 (one kernel less to compile)
            row = xk.reshape(1, -1)
            ext = np.empty(1, dtype=np.int32)
            outside, bad, _, _ = kernels.count_scan(row, row.view(np.int32), a, self._shift, self._floor_key,
                                                    self._offset - base, dense, ext, ext.copy())
        else:
            add = (self._offset - self._floor_bin if nonneg else self._offset) - base
            outside = kernels.count_dense(xk, a, nonneg, self._shift, self._floor_key, self._floor_bin, add, dense)
        if outside or bad >= 0:
            dense[:] = 0
            raise ThreecadError("metrics: maps hold NaN or inf, or lo/hi passed to StreamingPixelHistogram.add "
                                "are not the batch's min and max; check maps with inputs.map_extremes first")
        self._flush_dense(dense, lo_blk, hi_blk)

    def _add_defects_compiled(self, values: np.ndarray, regions: BatchRegions | None, nonneg: bool,
                              lo_blk: int, hi_blk: int) -> None:
        """Defect pixels (scores `values`): counts, region weights, half-cover counts, as add() does.

        Pixels are grouped by bin first (in the free dense buffer when the batch's blocks are
        dense, else with np.unique), so that the stored rows are touched once per bin, and
        the half-cover bins are read off the grouped bins (no per-region selection).
        """
        ids = self._bin_ids_compiled(values, nonneg)
        if hi_blk - lo_blk < self.DENSE_BLOCKS:
            window = self._dense_buffer(hi_blk - lo_blk + 1)
            slot, slot_ids, count = kernels.window_slots(ids, lo_blk << self.bits, window)
        else:
            slot_ids, slot, count = np.unique(ids, return_inverse=True, return_counts=True)
        if regions is None:
            none = np.zeros(0, dtype=np.int64)
            kernels.add_defects(slot, slot_ids, count, False, none, none, none, np.zeros(0),
                                self._row_of_block, self.bits, self._pos, self._pro, self._q)
            return
        kernels.add_defects(slot, slot_ids, count, True, regions.pixel_region, regions.area, regions.size_bin,
                            1.0 / regions.area, self._row_of_block, self.bits, self._pos, self._pro, self._q)

    # -- read-out ------------------------------------------------------------------------
    def levels(self) -> Levels:
        blocks = np.flatnonzero(self._row_of_block >= 0)   # ascending ids: highest scores first
        rows = self._row_of_block[blocks]
        total = self._total[rows].reshape(-1)
        pos = self._pos[rows].reshape(-1)
        pro = self._pro[:, rows].reshape(self.n_size, total.size)
        q = self._q[:, rows].reshape(self.n_size, total.size)
        keep = total > 0
        return Levels(neg=(total - pos)[keep], pos=pos[keep], pro=pro[:, keep], region_q=q[:, keep])

    @property
    def state_bytes(self) -> int:
        """Bytes held between batches: the rows of bins in use, plus the compiled path's
        dense buffer (spare row capacity is untouched zero pages)."""
        per_row = self.block_len * 8 * (2 + 2 * self.n_size)
        return self._n_rows * per_row + self._dense.nbytes

    @property
    def occupied_bins(self) -> int:
        return int(np.count_nonzero(self._total[: self._n_rows]))
