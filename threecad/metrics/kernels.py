"""Compiled (numba) passes of the metric engine: one pass over a batch instead of a dozen.

Why: at 3CAD size (16,546 maps of 256x256, 1.1e9 pixels) streaming metrics are bound by
per-pixel work, and numpy needs a pass through memory per step (min, max, subtract,
shifts, clamp, add, bincount) with int64 temporaries, plus a scipy call per band of
defect rows.  Here (count_scan) a batch of float32 maps is read once: piece by piece, the
per-image min/max and the NaN/inf check (on order-preserving integer keys) and the bin
ids are computed with vector instructions into a small int32 buffer, whose ids are then
scattered into an int32 histogram that stays in the CPU cache.  Defect pixels are
grouped by bin in that histogram's free buffer (window_slots), so that the stored rows
are touched once per bin and each region's half-cover bin is read off the grouping
(add_defects).  Defect regions come from one pass over the mask bytes: runs of defect
pixels joined by union-find (label_runs), instead of scipy.ndimage.label calls.

Same results, by construction and by test: the id arithmetic is that of
streaming.StreamingPixelHistogram's numpy path, element by element (the mirror is computed
as float32(float64(anchor) - float64(x)), which equals float32 arithmetic on float32
operands: double rounding is innocuous for a subtraction when the wider format has at
least 2p + 2 bits), regions are numbered as scipy numbers them, and float sums are added
in the numpy path's order.  tests/test_metrics_kernels.py compares the two paths.

Exact mode in bounded memory (threecad.metrics.bounded) has its own compiled passes in
threecad.metrics.spill_kernels (copying normal scores, coding sorted runs, counting slots).

numba is optional.  Where it cannot be imported, AVAILABLE is False and the numpy path runs
(logged once at debug level).  ENABLED (default: AVAILABLE) is read when a histogram is
created and by inputs.map_extremes and regions.label_regions: tests and benchmarks switch
it off to run the numpy path side by side.  Kernels compile on their first call per
argument types (6-8 s in all on a busy 2-core machine); cache=True keeps the machine code
on disk (in __pycache__ beside this file, else under NUMBA_CACHE_DIR or the user cache),
so that later processes load it in about 0.4 s.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

try:  # an optional speed-up, never required
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic
    AVAILABLE = True
except ImportError as exc:  # pragma: no cover - depends on the environment
    AVAILABLE = False
    log.debug("numba is not importable (%s): metrics use the numpy path", exc)

#: Whether new histograms, map_extremes and region labelling use the kernels.
ENABLED = AVAILABLE

#: Pixels per step of the counting passes: their int32 id buffer stays in L1.
PIECE = 1024


def path_name() -> str:
    """'numba' or 'numpy': the implementation that new histograms and labelling use."""
    return "numba" if ENABLED and AVAILABLE else "numpy"


if AVAILABLE:
    _I32 = np.int32

    @intrinsic
    def _f32_bits(typingctx, x):
        """The int32 bit pattern of a float32 (ndarray.view on one value)."""
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))
        return types.int32(types.float32), codegen

    # -- histogram ---------------------------------------------------------------------
    @njit(nogil=True)
    def _ids_piece(xs, anchor, nonneg, shift, floor_key, floor_bin, add, out):
        """out[j] = bin id of score xs[j] + add, as int32 (ids < 2^25: local ids fit).

        StreamingPixelHistogram._ids(_mirrored(xs), nonneg) element-wise; xs has the
        working dtype.  Each branch is its own loop so that the compiler vectorizes it.
        """
        n = xs.size
        if nonneg:
            for j in range(n):
                i = _f32_bits(np.float32(anchor - np.float64(xs[j])))
                out[j] = _I32(max(i >> shift, floor_bin) + add)
        else:
            for j in range(n):
                i = _f32_bits(np.float32(anchor - np.float64(xs[j])))
                sign = i >> 31                         # -1 where negative, else 0
                mag = max((i & 0x7FFFFFFF) - floor_key, 0)
                out[j] = _I32(((mag ^ sign) >> shift) + add)

    @njit(cache=True, nogil=True)
    def count_dense(x, anchor, nonneg, shift, floor_key, floor_bin, add, hist):
        """hist[id(x[i]) + add] += 1 for every score of x (1-D); returns how many ids fell
        outside hist (none when the caller's range is right; those are not counted).

        `add` is the numpy path's id offset minus the first block's first id, so ids land
        block-relative.  hist is int32: the caller keeps a call below 2^31 pixels.
        """
        buf = np.empty(PIECE, dtype=np.int32)
        n = x.size
        size = np.uint32(hist.size)
        outside = 0
        for at in range(0, n, PIECE):
            m = min(PIECE, n - at)
            b = buf[:m]
            _ids_piece(x[at:at + m], anchor, nonneg, shift, floor_key, floor_bin, add, b)
            for j in range(m):
                u = np.uint32(b[j])
                if u < size:
                    hist[u] += 1
                else:
                    outside += 1
        return outside

    @njit(cache=True, nogil=True)
    def count_scan(x, bits, anchor, shift, floor_key, add, hist, lo, hi):
        """count_dense and the per-image min/max in one pass over (N, P) float32 scores.

        `bits` is the int32 view of `x`.  Ids use the signed branch of _ids, which equals
        the non-negative one wherever no mirrored score is -0.0, as with a float32 working
        dtype.  Returns (pixels of pieces left uncounted because an id fell outside hist,
        first image holding NaN/inf or -1, smallest and largest id counted); the scan stops
        after an image with NaN/inf.  Either way the caller then discards hist.  Per-image
        extremes go to lo/hi as bit patterns.
        """
        buf = np.empty(PIECE, dtype=np.int32)
        a32 = np.float32(anchor)
        size = hist.size
        outside = 0
        first = size
        last = -1
        n, p = x.shape
        for i in range(n):
            kmin = _I32(0x7FFFFFFF)
            kmax = _I32(-0x80000000)
            amax = _I32(0)
            for at in range(0, p, PIECE):
                m = min(PIECE, p - at)
                xs = x[i, at:at + m]
                bs = bits[i, at:at + m]
                idmin = _I32(0x7FFFFFFF)
                idmax = _I32(-0x80000000)
                for j in range(m):
                    v = bs[j]
                    key = _I32(v ^ ((v >> 31) & 0x7FFFFFFF))
                    kmin = min(kmin, key)
                    kmax = max(kmax, key)
                    amax = max(amax, _I32(v & 0x7FFFFFFF))
                    y = _f32_bits(a32 - xs[j])         # float32 arithmetic, as _mirrored's
                    sign = y >> 31
                    mag = max((y & 0x7FFFFFFF) - floor_key, 0)
                    local = _I32(((mag ^ sign) >> shift) + add)
                    idmin = min(idmin, local)
                    idmax = max(idmax, local)
                    buf[j] = local
                if idmin < 0 or idmax >= size:
                    outside += m
                    continue
                first = min(first, idmin)
                last = max(last, idmax)
                for j in range(m):
                    hist[np.uint32(buf[j])] += 1
            lo[i] = kmin ^ ((kmin >> 31) & 0x7FFFFFFF)
            hi[i] = kmax ^ ((kmax >> 31) & 0x7FFFFFFF)
            if amax >= 0x7F800000:
                return outside, i, first, last
        return outside, -1, first, last

    @njit(cache=True, nogil=True)
    def bin_ids(x, anchor, nonneg, shift, floor_key, floor_bin, offset, out):
        """out[i] = global bin id (int64) of score x[i]."""
        buf = np.empty(PIECE, dtype=np.int32)
        n = x.size
        add = offset - floor_bin if nonneg else offset
        for at in range(0, n, PIECE):
            m = min(PIECE, n - at)
            b = buf[:m]
            _ids_piece(x[at:at + m], anchor, nonneg, shift, floor_key, floor_bin, add, b)
            for j in range(m):
                out[at + j] = b[j]

    @njit(cache=True, nogil=True)
    def flush_blocks(hist, block_len, rows, consider, total):
        """For each considered block b of the dense histogram that holds a count: add it to
        total[rows[b]] and zero it, or, when it has no row yet (rows[b] < 0), leave it and
        flag it.  Returns the flags (blocks that need a row, then a second call)."""
        missing = np.zeros(rows.size, dtype=np.bool_)
        for b in range(rows.size):
            if not consider[b]:
                continue
            block = hist[b * block_len:(b + 1) * block_len]
            acc = block[0] & 0
            for j in range(block_len):
                acc |= block[j]
            if acc == 0:
                continue
            r = rows[b]
            if r < 0:
                missing[b] = True
                continue
            dest = total[r]
            for j in range(block_len):
                dest[j] += block[j]
                block[j] = 0
        return missing

    @njit(cache=True, nogil=True)
    def count_by_rows(ids, row_of_block, bits, total):
        """total[row of id's block, id's offset] += 1 for every global id (rows already exist)."""
        mask = (np.int64(1) << bits) - 1
        for p in range(ids.size):
            g = ids[p]
            total[row_of_block[g >> bits], g & mask] += 1

    @njit(cache=True, nogil=True)
    def window_slots(ids, base, window):
        """Group ids by value, in ascending order: (slot of each id, id of each slot, ids per
        slot), as np.unique(ids, return_inverse=True, return_counts=True) does, without sorting.

        All ids lie within [base, base + window.size); `window` is int32, all zero before and
        after (the dense histogram's buffer, free between batches).  Only the span between
        the smallest and the largest id is scanned.
        """
        n_ids = ids.size
        slot = np.empty(n_ids, dtype=np.int64)
        if n_ids == 0:
            return slot, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        first = last = ids[0] - base
        for p in range(n_ids):
            j = ids[p] - base
            window[j] += 1
            first = min(first, j)
            last = max(last, j)
        slot_ids = np.empty(n_ids, dtype=np.int64)
        count = np.empty(n_ids, dtype=np.int64)
        n = 0
        for j in range(first, last + 1):
            c = window[j]
            if c != 0:
                slot_ids[n] = base + j
                count[n] = c
                n += 1
                window[j] = n
        for p in range(n_ids):
            slot[p] = window[ids[p] - base] - 1
        for k in range(n):
            window[slot_ids[k] - base] = 0
        return slot, slot_ids[:n], count[:n]

    @njit(cache=True, nogil=True)
    def add_defects(slot, slot_ids, count, with_regions, region, area, size_bin, weight, row_of_block, bits,
                    pos, pro, q):
        """One batch's defect pixels into the stored rows: defect counts, region weights, half-cover counts.

        Pixels come grouped by bin: `slot` per pixel, slots in ascending bin id (descending
        score), `count` pixels per slot.  Region weights are summed per (slot, size bin) in
        pixel order from 0.0, then added to `pro` once, as the numpy path's weighted bincount
        followed by one addition does: the same sums, to the last bit.  A region's half-cover
        bin (the bin of its ceil(A/2)-th largest score: the bin of
        BatchRegions.half_cover_scores) is where, walking the slots from the top, its pixel
        count reaches ceil(A/2).  Stored rows are touched once per bin, in bin order.
        Without regions (with_regions False) only the counts are added.
        """
        mask = (np.int64(1) << bits) - 1
        n_slots = slot_ids.size
        for k in range(n_slots):
            g = slot_ids[k]
            pos[row_of_block[g >> bits], g & mask] += count[k]
        n_size = pro.shape[0]
        if not with_regions or n_size == 0:
            return
        end = np.empty(n_slots, dtype=np.int64)       # counting sort: pixels' regions by slot
        at = 0
        for k in range(n_slots):
            end[k] = at
            at += count[k]
        sums = np.zeros(n_slots * n_size, dtype=np.float64)
        grouped = np.empty(slot.size, dtype=np.int64)
        for p in range(slot.size):
            k = slot[p]
            r = region[p]
            sums[k * n_size + size_bin[r]] += weight[r]
            grouped[end[k]] = r
            end[k] += 1
        seen = np.zeros(area.size, dtype=np.int64)
        at = 0
        for k in range(n_slots):
            g = slot_ids[k]
            row = row_of_block[g >> bits]
            off = g & mask
            for s in range(n_size):
                v = sums[k * n_size + s]
                if v != 0.0:                          # adding +0.0 would change nothing
                    pro[s, row, off] += v
            while at < end[k]:
                r = grouped[at]
                at += 1
                seen[r] += 1
                if seen[r] == area[r] - area[r] // 2:
                    q[size_bin[r], row, off] += 1

    # -- per-image extremes ------------------------------------------------------------
    @njit(cache=True, nogil=True)
    def _extremes_f32(bits, lo, hi):
        """Per-row min and max (as bit patterns into lo/hi) of (N, P) float32 bit patterns;
        returns the first row holding NaN or inf, or -1.

        Floats are compared through order-preserving int32 keys: integer min/max vectorize
        where float min/max cannot (NaN rules), and the largest magnitude tells NaN/inf.
        """
        first_bad = -1
        for i in range(bits.shape[0]):
            row = bits[i]
            kmin = _I32(0x7FFFFFFF)
            kmax = _I32(-0x80000000)
            amax = _I32(0)
            for j in range(row.size):
                v = row[j]
                key = _I32(v ^ ((v >> 31) & 0x7FFFFFFF))
                kmin = min(kmin, key)
                kmax = max(kmax, key)
                amax = max(amax, _I32(v & 0x7FFFFFFF))
            lo[i] = kmin ^ ((kmin >> 31) & 0x7FFFFFFF)
            hi[i] = kmax ^ ((kmax >> 31) & 0x7FFFFFFF)
            if amax >= 0x7F800000 and first_bad < 0:
                first_bad = i
        return first_bad

    # -- regions -----------------------------------------------------------------------
    @njit(cache=True, nogil=True)
    def _rows_with_defect(words):
        """Flags of the (N*H, K) rows of uint64 words (8 mask bytes each) holding a nonzero word."""
        flags = np.zeros(words.shape[0], dtype=np.bool_)
        for r in range(words.shape[0]):
            row = words[r]
            acc = row[0] & 0
            for j in range(row.size):
                acc |= row[j]
            flags[r] = acc != 0
        return flags

    @njit(nogil=True)
    def _find(parent, i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]          # path halving
            i = parent[i]
        return i

    @njit(nogil=True)
    def _row_runs(row, wrow, by_words, run_s, run_e, k, store):
        """Runs of nonzero bytes in one row (8-byte words of zeros skipped when by_words);
        stored from index k when `store`, else only counted.  Returns the new k."""
        w = row.size
        j = 0
        while j < w:
            if row[j] == 0:
                if by_words and (j & 7) == 0 and wrow[j >> 3] == 0:
                    j += 8
                else:
                    j += 1
                continue
            s = j
            while j < w and row[j] != 0:
                j += 1
            if store:
                run_s[k] = s
                run_e[k] = j
            k += 1
        return k

    @njit(cache=True, nogil=True)
    def _label_runs(m, words, by_words, flags, h):
        """8-connected regions of the (N*H, W) 0/1 bytes `m` (rows of N images of H rows).

        Runs of defect pixels are found on the flagged rows only (8-byte words of zeros
        skipped when by_words: `words` is then the uint64 view of `m`), joined by union-find to the runs
        they touch (diagonals included) on the row above in the same image, and numbered
        in raster order of their first pixel, as scipy.ndimage.label numbers them.
        Returns (pixel_index, pixel_region, area, image).
        """
        n_rows, w = m.shape
        run_s = np.empty(0, dtype=np.int64)
        run_e = np.empty(0, dtype=np.int64)         # exclusive end
        n_runs = 0
        for r in range(n_rows):
            if flags[r]:
                n_runs = _row_runs(m[r], words[r], by_words, run_s, run_e, n_runs, False)
        run_row = np.empty(n_runs, dtype=np.int64)
        run_s = np.empty(n_runs, dtype=np.int64)
        run_e = np.empty(n_runs, dtype=np.int64)
        parent = np.empty(n_runs, dtype=np.int64)
        k = 0
        prev_row = -2
        p0 = p1 = 0                                  # runs of the row above
        for r in range(n_rows):
            if not flags[r]:
                continue
            first = k
            k = _row_runs(m[r], words[r], by_words, run_s, run_e, k, True)
            for i in range(first, k):
                run_row[i] = r
                parent[i] = i
            if prev_row == r - 1 and r % h != 0:       # the row above, same image
                q = p0
                for i in range(first, k):
                    while q < p1 and run_e[q] < run_s[i]:
                        q += 1
                    t = q
                    while t < p1 and run_s[t] <= run_e[i]:
                        a = _find(parent, i)
                        b = _find(parent, t)
                        if a < b:
                            parent[b] = a
                        elif b < a:
                            parent[a] = b
                        t += 1
            prev_row = r
            p0, p1 = first, k
        label = np.empty(n_runs, dtype=np.int64)
        n_regions = 0
        n_pix = 0
        for i in range(n_runs):
            root = _find(parent, i)
            if root == i:
                label[i] = n_regions
                n_regions += 1
            else:
                label[i] = label[root]
            n_pix += run_e[i] - run_s[i]
        area = np.zeros(n_regions, dtype=np.int64)
        image = np.empty(n_regions, dtype=np.int64)
        pixel_index = np.empty(n_pix, dtype=np.int64)
        pixel_region = np.empty(n_pix, dtype=np.int64)
        at = 0
        for i in range(n_runs):
            lab = label[i]
            length = run_e[i] - run_s[i]
            area[lab] += length
            image[lab] = run_row[i] // h
            base = run_row[i] * w + run_s[i]
            for t in range(length):
                pixel_index[at + t] = base + t
                pixel_region[at + t] = lab
            at += length
        return pixel_index, pixel_region, area, image


    # -- exact mode in bounded memory (threecad.metrics.bounded) -------------------------
def label_runs(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pixel_index, pixel_region, area, image) of the 8-connected regions of (N, H, W) boolean masks."""
    n, h, w = masks.shape
    m = np.ascontiguousarray(masks).view(np.uint8).reshape(n * h, w)
    if w % 8 == 0:
        words = m.view(np.uint64)
        return _label_runs(m, words, True, _rows_with_defect(words), h)
    return _label_runs(m, np.zeros((n * h, 1), dtype=np.uint64), False, m.any(axis=1), h)


def row_extremes(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-row (min, max) of a C-contiguous (N, P) float32 array and the first row holding
    NaN/inf (-1: none), in one vectorized pass."""
    lo = np.empty(len(flat), dtype=np.int32)
    hi = np.empty(len(flat), dtype=np.int32)
    bad = _extremes_f32(flat.view(np.int32), lo, hi)
    return lo.view(np.float32), hi.view(np.float32), int(bad)
