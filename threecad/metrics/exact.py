"""Exact pixel ranking: every pixel score kept, one ordering of all pixels.

Why this shape: the ordering is built as two sorted runs, normal pixels (np.sort, the
bulk, no index array) and defect pixels (an argsort of the few, carrying their
region weights), merged by value with two binary searches per distinct defect score.
All pixel metrics are then read from the same merged levels; nothing is sorted twice.
Ties are grouped exactly, so results equal scikit-learn's and MVTec AD's definitions.
"""
from __future__ import annotations

import numpy as np

from threecad.metrics.curves import Levels
from threecad.metrics.regions import BatchRegions


def merge_levels(neg_sorted: np.ndarray, pos_values: np.ndarray, *, n_size: int = 0,
                 pos_weight: np.ndarray | None = None, pos_size: np.ndarray | None = None,
                 region_q: np.ndarray | None = None, region_size: np.ndarray | None = None) -> Levels:
    """Levels from ascending normal scores and (unsorted) defect scores.

    Each distinct defect score u gives one level (with the normal scores equal to u), and
    the normal scores strictly between two consecutive u give one normal-only level: the
    curves are straight (FPR moves, TPR/PRO do not) across such a run, so no metric changes.
    """
    n_neg = len(neg_sorted)
    order = np.argsort(pos_values)[::-1]                # ties: any order (only group sums are read)
    pv = pos_values[order]
    m_pix = len(pv)
    if m_pix:
        starts = np.flatnonzero(np.concatenate([[True], pv[1:] != pv[:-1]]))
    else:
        starts = np.zeros(0, dtype=np.int64)
    u = pv[starts]                                   # distinct defect scores, descending
    m = len(u)
    pos_cnt = np.diff(np.concatenate([starts, [m_pix]])).astype(np.int64)
    asc = u[::-1]
    neg_ge = n_neg - np.searchsorted(neg_sorted, asc, side="left")[::-1]   # normals >= u
    neg_gt = n_neg - np.searchsorted(neg_sorted, asc, side="right")[::-1]  # normals > u
    prev_ge = np.concatenate([[0], neg_ge[:-1]]) if m else np.zeros(0, dtype=np.int64)

    n_lv = 2 * m + 1
    neg = np.zeros(n_lv, dtype=np.int64)
    pos = np.zeros(n_lv, dtype=np.int64)
    neg[0:2 * m:2] = neg_gt - prev_ge                 # normals strictly between u_{j-1} and u_j
    neg[1:2 * m:2] = neg_ge - neg_gt                  # normals tied with u_j
    neg[2 * m] = n_neg - (neg_ge[-1] if m else 0)     # normals below every defect score
    pos[1:2 * m:2] = pos_cnt
    pro = np.zeros((n_size, n_lv), dtype=np.float64)
    q = np.zeros((n_size, n_lv), dtype=np.int64)
    if n_size and m:
        group = np.repeat(np.arange(m), pos_cnt)
        sums = np.bincount(pos_size[order] * m + group, weights=pos_weight[order],
                           minlength=n_size * m)
        pro[:, 1:2 * m:2] = sums.reshape(n_size, m)
        if region_q is not None and len(region_q):
            j = m - 1 - np.searchsorted(asc, region_q.astype(asc.dtype, copy=False))
            counts = np.bincount(region_size * m + j, minlength=n_size * m)
            q[:, 1:2 * m:2] = counts.reshape(n_size, m)
    keep = (neg > 0) | (pos > 0)
    return Levels(neg=neg[keep], pos=pos[keep], pro=pro[:, keep], region_q=q[:, keep])


def levels_from_scores(scores: np.ndarray, labels: np.ndarray) -> Levels:
    """Exact levels of a small 1-D problem (image scores and 0/1 labels)."""
    labels = labels.astype(bool)
    return merge_levels(np.sort(scores[~labels]), scores[labels])


class ExactPixelRanking:
    """Keeps normal scores, defect scores and region data; merges them on demand."""

    def __init__(self, n_size: int) -> None:
        self.n_size = n_size
        self._neg: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._pix_region: list[np.ndarray] = []
        self._area: list[np.ndarray] = []
        self._size: list[np.ndarray] = []
        self._q: list[np.ndarray] = []
        self._n_regions = 0
        self._neg_is_sorted = False

    def add(self, maps: np.ndarray, masks: np.ndarray, regions: BatchRegions | None,
            lo: float | None = None, hi: float | None = None) -> None:
        """Keep one batch (`lo`/`hi` are accepted for symmetry with streaming and unused)."""
        self._neg_is_sorted = False
        self._neg.append(maps[~masks])
        flat = maps.reshape(-1)
        if regions is None:
            self._pos.append(flat[np.flatnonzero(masks)])
            return
        pos = flat[regions.pixel_index]
        self._pos.append(pos)
        self._pix_region.append(regions.pixel_region + self._n_regions)
        self._area.append(regions.area)
        self._size.append(regions.size_bin)
        self._q.append(regions.half_cover_scores(pos))
        self._n_regions += regions.n_regions

    def _sorted_negatives(self, dtype: np.dtype) -> np.ndarray:
        if self._neg_is_sorted and len(self._neg) == 1 and self._neg[0].dtype == dtype:
            return self._neg[0]
        total = sum(len(c) for c in self._neg)
        out = np.empty(total, dtype=dtype)   # pages are touched as chunks are copied and freed
        at = 0
        while self._neg:
            chunk = self._neg.pop(0)
            out[at:at + len(chunk)] = chunk
            at += len(chunk)
            del chunk
        out.sort()
        self._neg = [out]
        self._neg_is_sorted = True
        return out

    def _pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Every normal score (sorted) and every defect score, in one dtype."""
        chunks = self._neg + self._pos
        dtype = np.result_type(*[c.dtype for c in chunks]) if chunks else np.dtype(np.float64)
        neg = self._sorted_negatives(dtype)
        pos = np.concatenate(self._pos).astype(dtype, copy=False) if self._pos else np.zeros(0, dtype)
        return neg, pos

    def weighted_samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, labels 0/1, pixel counts): each distinct normal and defect score once.

        scikit-learn's ranking metrics fed these with sample_weight=counts build the same
        cumulative tps/fps arrays (exact integers) as fed every pixel, so they return the same
        doubles, from a fraction of the memory when scores repeat.
        """
        neg, pos = self._pooled()
        if len(neg):
            starts = np.flatnonzero(np.concatenate([[True], neg[1:] != neg[:-1]]))
            neg_u, neg_n = neg[starts], np.diff(np.concatenate([starts, [len(neg)]]))
        else:
            neg_u, neg_n = neg, np.zeros(0, dtype=np.int64)
        pos_u, pos_n = np.unique(pos, return_counts=True)
        scores = np.concatenate([neg_u, pos_u])
        labels = np.concatenate([np.zeros(len(neg_u), np.int64), np.ones(len(pos_u), np.int64)])
        return scores, labels, np.concatenate([neg_n, pos_n]).astype(np.float64)

    def levels(self) -> Levels:
        neg, pos = self._pooled()
        if not self._area:
            return merge_levels(neg, pos, n_size=self.n_size,
                                pos_weight=np.zeros(len(pos)), pos_size=np.zeros(len(pos), np.int64))
        area = np.concatenate(self._area)
        size = np.concatenate(self._size)
        rid = np.concatenate(self._pix_region)
        return merge_levels(neg, pos, n_size=self.n_size, pos_weight=1.0 / area[rid],
                            pos_size=size[rid], region_q=np.concatenate(self._q), region_size=size)
