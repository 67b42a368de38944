"""Exact pixel metrics in bounded memory: exact mode's answer, to the last bit, from sorted
runs of normal scores that need not fit in memory.

Why: exact mode keeps every pixel score and orders them all at compute time: some 11 GB at
3CAD's test-set size at 256 px, several times more at native resolution.  Yet only the order
of the normal scores relative to the distinct defect scores enters the levels
(curves.Levels): how many normals tie with each defect score and how many lie strictly
between two consecutive ones.  Defect pixels are a few percent of the pixels.

How (BoundedPixelRanking):
1. update(): defect pixels are kept exactly as exact mode keeps them (scores, regions,
   half-cover scores); normal scores are copied into one buffer which, when full, is sorted
   and spilled to disk as a run (threecad.metrics.runs).  With `source` (the maps already on
   disk, e.g. a run's predictions/<ABBR>.maps.npy) a full buffer is dropped instead, and
   compute() reads the normals back from the source, skipping the defect pixels it recorded.
2. compute(): the defect scores are grouped as exact mode groups them (exact.DefectGroups:
   the same argsort of the same array, hence the same tie order and the same float sums of
   region weights); every sorted run is merged with the sorted distinct defect scores,
   counting the normals of each of the 2m + 1 slots in one pass (spill_kernels.count_slots); the
   levels are then made piece by piece and the metrics read off them by
   threecad.metrics.chunked, which rebuilds numpy's pairwise sums.
3. 3cad-paper's P-AUROC and P-AP are scikit-learn's over every distinct score: the runs are
   merged window by window (value ranges found from fences kept per run) into the counts of
   each distinct score, and chunked.release_pixel_scores replays scikit-learn's arithmetic.
While the normals, and what computing from them needs, fit in the budget, nothing is spilled
and exact mode's in-memory path runs on the sorted buffer.

Memory.  `memory` bounds what the ranking keeps and what compute() allocates: the buffer
(RUN_SHARE of the budget), the defect state, two counts per distinct defect score, one
region weight per size bin and distinct defect score, and pieces sized to the budget.
What grows with the defect pixels cannot be spilled without changing exact mode's tie order:
when it alone exceeds the budget, compute() says so, with what it needs.  3cad-paper's merge
reads the spilled runs through memory maps (page cache, not the budget).  Each update() also
allocates transients proportional to its batch, as every mode does.

Cost: a sort of every normal score (numpy's, run by run), a write and a read of the spilled
runs, a merge per run; under 3cad-paper the runs are merged again, twice.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from threecad.errors import ThreecadError
from threecad.metrics import chunked, kernels, spill_kernels
from threecad.metrics.chunked import LevelSource
from threecad.metrics.curves import PixelSummary
from threecad.metrics.exact import DefectGroups, ExactPixelRanking
from threecad.metrics.regions import BatchRegions
from threecad.metrics.runs import SortedRuns, count_slots

log = logging.getLogger(__name__)

#: The default budget of exact mode (bytes).
DEFAULT_MEMORY = 2_000_000_000
#: Shares of the budget: the normal-score buffer, one piece read back or of levels, a window of 3cad-paper's merge.
RUN_SHARE = 0.4
PIECE_SHARE = 0.02
WINDOW_SHARE = 0.3
#: Bytes exact mode's in-memory path allocates per defect pixel (pooling, argsort, grouping,
#: levels and curves at one distinct score per pixel), per normal pixel for 3cad-paper's
#: scikit-learn call, and per defect pixel of the bounded path's grouping (measured with
#: tracemalloc, with margin).
INMEMORY_PER_DEFECT = 480
INMEMORY_PER_NORMAL_RELEASE = 144
BOUNDED_PER_DEFECT = 112
#: Bytes a distinct score of a window costs while it is merged and replayed through scikit-learn's arithmetic.
WINDOW_PER_SCORE = 224


class BoundedPixelRanking(ExactPixelRanking):
    """Exact mode's ranking within `memory` bytes (module docstring)."""

    def __init__(self, n_size: int, memory: int, spill_dir: str | Path | None = None, source=None) -> None:
        super().__init__(n_size)
        self.memory = int(memory)
        self.source = source
        self._runs = SortedRuns(self.memory * RUN_SHARE, self.memory * PIECE_SHARE, spill_dir, spill=source is None)
        self._dtype: np.dtype | None = None
        self._defect_index: list[np.ndarray] = []      # with a source: flat index of each defect pixel
        self._extremes: list[np.ndarray] = []            # with a source: each image's min and max
        self._image_shape: tuple[int, int] | None = None
        self._n_images = 0
        self._cache: tuple[DefectGroups, np.ndarray] | None = None
        self.note = ""

    # -- accumulation ------------------------------------------------------------------------
    def add(self, maps: np.ndarray, masks: np.ndarray, regions: BatchRegions | None,
            lo: float | None = None, hi: float | None = None) -> None:
        self._cache = None
        self._dtype = maps.dtype if self._dtype is None else np.result_type(self._dtype, maps.dtype)
        flat = np.ascontiguousarray(maps).reshape(-1)
        mask8 = np.ascontiguousarray(masks).reshape(-1).view(np.uint8)
        index = regions.pixel_index if regions is not None else np.flatnonzero(mask8)
        if self.source is not None:
            if self._image_shape not in (None, maps.shape[1:]):
                raise ThreecadError("metrics: with a source, every batch must have the same image size")
            self._image_shape = maps.shape[1:]
            self._defect_index.append(np.sort(index) + self._n_images * maps[0].size)
            rows = flat.reshape(len(maps), -1)
            self._extremes.append(np.stack([rows.min(axis=1), rows.max(axis=1)], axis=1))
        self._n_images += len(maps)
        self._runs.add(flat, flat.size - len(index), mask8)
        self._add_defects(maps, masks, regions)

    def _pooled(self) -> tuple[np.ndarray, np.ndarray]:
        dtype = self._dtype if self._dtype is not None else np.dtype(np.float64)
        neg = self._runs.memory_run()
        neg = np.zeros(0, dtype) if neg is None else neg.astype(dtype, copy=False)
        pos = np.concatenate(self._pos).astype(dtype, copy=False) if self._pos else np.zeros(0, dtype)
        return neg, pos

    # -- where to compute ----------------------------------------------------------------------
    @property
    def _n_defect(self) -> int:
        return sum(len(p) for p in self._pos)

    def _held_bytes(self) -> int:
        w = self._dtype.itemsize if self._dtype is not None else 8
        index = sum(a.nbytes for a in self._defect_index) + sum(a.nbytes for a in self._extremes)
        return (self._runs.buffer_bytes + self._n_defect * (w + 8) + index
                + sum(a.nbytes + b.nbytes + c.nbytes for a, b, c in zip(self._area, self._size, self._q)))

    def _in_memory(self, release: bool) -> bool:
        """Whether exact mode's in-memory path fits: every normal in the buffer, and what it allocates."""
        if self._runs.runs or self._runs.dropped:
            return False
        extra = self._n_defect * INMEMORY_PER_DEFECT
        if release:
            extra += self._runs.total * INMEMORY_PER_NORMAL_RELEASE
        return self._held_bytes() + extra <= self.memory

    def summary(self, limit: float, recall_fpr: float) -> PixelSummary:
        if self._in_memory(release=False):
            self.note = ""
            return super().summary(limit, recall_fpr)
        groups, neg = self._levels_state()
        piece = self._level_piece()

        def counts():
            for at in range(0, len(neg), piece):
                yield groups.levels(neg[at:at + piece], at, counts_only=True)

        def levels():
            for at in range(0, len(neg), piece):
                yield groups.levels(neg[at:at + piece], at)

        n_regions = (np.bincount(groups.region_size, minlength=self.n_size) if len(groups.region_group)
                     else np.zeros(self.n_size, dtype=np.int64))
        return chunked.summarize_chunks(LevelSource(counts, levels, n_regions), limit, recall_fpr)

    def release_scores(self, auroc: bool, ap: bool) -> dict[str, float]:
        if self._in_memory(release=True):
            return super().release_scores(auroc, ap)
        groups, neg = self._levels_state()
        n_neg, n_pos = int(neg.sum()), int(groups.count.sum())
        return chunked.release_pixel_scores(lambda: self._distinct(groups), n_neg, n_pos, auroc=auroc, ap=ap)

    def _level_piece(self) -> int:
        per_level = 8 * (2 + 2 * self.n_size) * 4          # a piece's arrays and their temporaries
        return max(1024, int(self.memory * PIECE_SHARE) // per_level)

    # -- the bounded path -------------------------------------------------------------------------
    def _levels_state(self) -> tuple[DefectGroups, np.ndarray]:
        """The defect groups and the normal count of every level (descending), computed once
        per state."""
        if self._cache is not None:
            return self._cache
        dtype = self._dtype if self._dtype is not None else np.dtype(np.float64)
        n_defect = self._n_defect
        grouping = n_defect * BOUNDED_PER_DEFECT
        if self._held_bytes() - self._runs.buffer_bytes + grouping > self.memory:
            need = self._held_bytes() - self._runs.buffer_bytes + grouping
            raise ThreecadError(f"metrics: the {n_defect:,} defect pixels alone need about {_size(need)} to rank "
                                f"exactly, beyond the {_size(self.memory)} budget; raise the budget "
                                "(Evaluator memory=, bench --metrics-memory) or use mode='streaming'")
        if self._held_bytes() + grouping > self.memory:
            self._runs.flush(free=True)        # spilled (or, with a source, dropped): memory for the grouping
        self._runs.cast_runs(dtype)
        _, pos = self._pooled()
        if self._area:
            area = np.concatenate(self._area)
            size = np.concatenate(self._size)
            rid = np.concatenate(self._pix_region)
            groups = DefectGroups.build(pos, n_size=self.n_size, pos_weight=lambda order: 1.0 / area[rid[order]],
                                        pos_size=lambda order: size[rid[order]], region_q=np.concatenate(self._q),
                                        region_size=size)
            del area, rid
        else:
            groups = DefectGroups.build(pos, n_size=self.n_size, pos_weight=lambda order: np.zeros(len(order)),
                                        pos_size=lambda order: np.zeros(len(order), np.int64))
        del pos
        u = np.ascontiguousarray(groups.u[::-1])
        slots = np.zeros(2 * groups.m + 1, dtype=np.int64)
        pieces = self._source_pieces(dtype) if self._runs.dropped else self._runs.pieces(dtype)
        for x in pieces:
            count_slots(x, u, slots)
        del u
        neg = slots[::-1]
        spilled = self._runs.spilled_bytes
        where = (f"{len(self._runs.runs)} sorted runs, {_size(spilled)} spilled to {self._runs.folder}" if spilled
                 else "normals read back from the source" if self._runs.dropped else "sorted in memory")
        self.note = (f"exact metrics in bounded memory ({_size(self.memory)}): {self._runs.total:,} normal and "
                     f"{n_defect:,} defect pixels ranked from {where}")
        log.info("%s", self.note)
        self._cache = (groups, neg)
        return self._cache

    def _piece(self, dtype: np.dtype) -> int:
        return max(4096, int(self.memory * PIECE_SHARE) // np.dtype(dtype).itemsize)

    def _source_pieces(self, dtype: np.dtype):
        """Sorted runs of the normals read back from the source, image by image (no defect pixel)."""
        h, w = self._image_shape
        per_image = h * w
        src = self.source
        if len(src) != self._n_images or tuple(src.shape[1:]) != (h, w):
            raise ThreecadError(f"metrics: the source holds {tuple(src.shape)} maps, not the {self._n_images} maps "
                                f"of {h}x{w} fed to update()")
        index = np.concatenate(self._defect_index) if self._defect_index else np.zeros(0, np.int64)
        extremes = np.concatenate(self._extremes)
        src_dtype = np.dtype(src.dtype)
        cap = max(per_image, int(self.memory * RUN_SHARE) // src_dtype.itemsize)
        step = max(1, (cap // 4) // per_image)             # images read at a time
        buf = np.empty(cap, dtype=src_dtype)
        n = 0
        for first in range(0, self._n_images, step):
            last = min(first + step, self._n_images)
            maps = np.ascontiguousarray(src[first:last]).reshape(last - first, -1)
            seen = np.stack([maps.min(axis=1), maps.max(axis=1)], axis=1)
            if not np.array_equal(seen, extremes[first:last]):
                raise ThreecadError(f"metrics: the source's maps {first}..{last - 1} are not the maps fed to "
                                    "update() (their minima or maxima differ)")
            maps = maps.reshape(-1)
            mask8 = np.zeros(len(maps), dtype=np.uint8)
            a, b = np.searchsorted(index, [first * per_image, last * per_image])
            mask8[index[a:b] - first * per_image] = 1
            k = len(maps) - (b - a)
            if n + k > cap:
                yield from self._sorted_pieces(buf[:n], dtype)
                n = 0
            if kernels.ENABLED and kernels.AVAILABLE and maps.dtype == buf.dtype:
                n = int(spill_kernels.copy_normals(maps, mask8, buf, n))
            else:
                buf[n:n + k] = maps[mask8 == 0]
                n += k
        yield from self._sorted_pieces(buf[:n], dtype)

    def _sorted_pieces(self, run: np.ndarray, dtype: np.dtype):
        run.sort()
        piece = self._piece(dtype)
        for at in range(0, len(run), piece):
            yield run[at:at + piece].astype(dtype, copy=False)

    def _distinct(self, groups: DefectGroups):
        """(normal count, defect count) of every distinct score, highest first, window by window.

        Candidates are the runs' fences and every few distinct defect scores, so that between
        two consecutive candidates lie few scores; a window is the open interval from a
        candidate up to the previous window's, as wide as the budget allows, then the
        candidate itself, counted without being loaded (ties of any size cost nothing).
        """
        dtype = groups.u.dtype
        u_asc, c_asc = groups.u[::-1], groups.count[::-1]
        self._runs.cast_runs(dtype, raw=True)
        runs = self._runs.sorted_sources()
        window = max(1024, int(self.memory * WINDOW_SHARE) // WINDOW_PER_SCORE)
        marks = [f.astype(dtype, copy=False) for f in self._runs.fences()] + [u_asc[::max(1, window // 4)], u_asc[-1:]]
        cand = np.unique(np.concatenate(marks))
        buf = np.empty(window, dtype=dtype)

        def normals_below(v, side: str) -> int:
            return sum(int(np.searchsorted(r, v, side=side)) for r in runs)

        def defects_below(v, side: str) -> int:
            return int(np.searchsorted(u_asc, v, side=side))

        b = len(cand)
        while b > 0:
            top_n = normals_below(cand[b], "left") if b < len(cand) else self._runs.total
            top_d = defects_below(cand[b], "left") if b < len(cand) else groups.m
            lo_a, hi_a = 0, b - 1
            while lo_a < hi_a:                 # the lowest candidate whose open window fits
                mid = (lo_a + hi_a) // 2
                if (top_n - normals_below(cand[mid], "right")) + (top_d - defects_below(cand[mid], "right")) <= window:
                    hi_a = mid
                else:
                    lo_a = mid + 1
            v = cand[lo_a]
            parts = [r[np.searchsorted(r, v, side="right"):(np.searchsorted(r, cand[b], side="left")
                                                            if b < len(cand) else len(r))] for r in runs]
            size = sum(len(p) for p in parts)
            loaded = buf[:size] if size <= len(buf) else np.empty(size, dtype=dtype)
            at = 0
            for p in parts:
                loaded[at:at + len(p)] = p
                at += len(p)
            loaded.sort()
            ia = defects_below(v, "right")
            yield _merge_desc(loaded, u_asc[ia:top_d], c_asc[ia:top_d])
            i = defects_below(v, "left")
            tie_pos = int(c_asc[i]) if i < groups.m and u_asc[i] == v else 0
            yield (np.array([normals_below(v, "right") - normals_below(v, "left")], dtype=np.int64),
                   np.array([tie_pos], dtype=np.int64))
            b = lo_a


def _size(n: float) -> str:
    """Bytes in words: 2.00 GB, 512.0 MB, 64.0 kB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _merge_desc(neg_sorted: np.ndarray, pos_u: np.ndarray, pos_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normal count, defect count) per distinct score, highest first, of ascending normal
    scores and ascending distinct defect scores with their counts."""
    if len(neg_sorted):
        starts = np.flatnonzero(np.concatenate(([True], neg_sorted[1:] != neg_sorted[:-1])))
        neg_u = neg_sorted[starts]
        neg_c = np.diff(np.concatenate((starts, [len(neg_sorted)])))
    else:
        neg_u, neg_c = neg_sorted, np.zeros(0, dtype=np.int64)
    vals = np.concatenate((neg_u, pos_u))
    order = np.argsort(vals, kind="stable")
    v = vals[order]
    neg = np.concatenate((neg_c, np.zeros(len(pos_u), np.int64)))[order]
    pos = np.concatenate((np.zeros(len(neg_u), np.int64), pos_c))[order]
    if not len(v):
        return neg, pos
    starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
    return np.add.reduceat(neg, starts)[::-1].copy(), np.add.reduceat(pos, starts)[::-1].copy()
