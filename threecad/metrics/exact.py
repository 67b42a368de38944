"""Exact pixel ranking: every pixel score kept, one ordering of all pixels.

Why this shape: the ordering is built as two sorted runs, normal pixels (np.sort, the
bulk, no index array) and defect pixels (an argsort of the few, carrying their
region weights), merged by value with two binary searches per distinct defect score.
All pixel metrics are then read from the same merged levels; nothing is sorted twice.
Ties are grouped exactly, so results equal scikit-learn's and MVTec AD's definitions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threecad.metrics.curves import Levels, PixelSummary, summarize
from threecad.metrics.regions import BatchRegions


@dataclass
class DefectGroups:
    """The defect pixels grouped by distinct score, highest first: one level each.

    pro[s, j] sums 1/area(region) over the pixels of group j whose region is in size bin s,
    in the order of an argsort of all defect scores (float sums depend on that order, so every
    path that groups the same scores gets the same doubles); region_group[r] is the group of
    region r's half-cover score.
    """

    u: np.ndarray             # (m,) distinct defect scores, descending
    count: np.ndarray         # (m,) int64 defect pixels per group
    pro: np.ndarray           # (S, m) float64
    region_group: np.ndarray  # (R,) int64
    region_size: np.ndarray   # (R,) int64

    @property
    def m(self) -> int:
        return len(self.u)

    @classmethod
    def build(cls, pos_values: np.ndarray, *, n_size: int = 0, pos_weight=None, pos_size=None,
              region_q: np.ndarray | None = None, region_size: np.ndarray | None = None) -> DefectGroups:
        """Group defect scores; pos_weight/pos_size are per pixel, or callables of the argsort
        order giving them in that order (so that a caller short of memory never holds both)."""
        order = np.argsort(pos_values)[::-1]            # ties: any order, the same for every caller
        pv = pos_values[order]
        m_pix = len(pv)
        if m_pix:
            starts = np.flatnonzero(np.concatenate([[True], pv[1:] != pv[:-1]]))
        else:
            starts = np.zeros(0, dtype=np.int64)
        u = pv[starts]
        del pv
        m = len(u)
        count = np.diff(np.concatenate([starts, [m_pix]])).astype(np.int64)
        del starts
        pro = np.zeros((n_size, m), dtype=np.float64)
        group = np.zeros(0, dtype=np.int64)
        if n_size and m:
            size_o = pos_size(order) if callable(pos_size) else pos_size[order]
            key = size_o * m
            del size_o
            key += np.repeat(np.arange(m), count)
            weight_o = pos_weight(order) if callable(pos_weight) else pos_weight[order]
            del order
            pro = np.bincount(key, weights=weight_o, minlength=n_size * m).reshape(n_size, m)
            del key, weight_o
            if region_q is not None and len(region_q):
                asc = u[::-1]
                group = m - 1 - np.searchsorted(asc, region_q.astype(asc.dtype, copy=False))
        sizes = region_size if region_size is not None and len(group) else np.zeros(0, dtype=np.int64)
        return cls(u=u, count=count, pro=pro, region_group=group, region_size=sizes)

    def levels(self, neg: np.ndarray, start: int = 0, counts_only: bool = False):
        """The levels [start, start + len(neg)) of the 2m + 1: level 2j + 1 holds group j and
        the normals tied with it, level 2j the normals strictly between groups j - 1 and j
        (level 2m: below every defect score); `neg` holds their normal counts.  Levels
        without any pixel are dropped (no metric can see them).  counts_only: their (neg,
        pos) alone."""
        stop = start + len(neg)
        n_size, m = self.pro.shape
        j0, j1 = start // 2, min(stop // 2, m)            # groups whose level 2j + 1 lies in range
        odd = slice(2 * j0 + 1 - start, 2 * j1 + 1 - start, 2)
        pos = np.zeros(len(neg), dtype=np.int64)
        pos[odd] = self.count[j0:j1]
        if counts_only:
            keep = (neg > 0) | (pos > 0)
            return neg[keep], pos[keep]
        pro = np.zeros((n_size, len(neg)), dtype=np.float64)
        pro[:, odd] = self.pro[:, j0:j1]
        q = np.zeros((n_size, len(neg)), dtype=np.int64)
        if len(self.region_group) and j1 > j0:
            inside = (self.region_group >= j0) & (self.region_group < j1)
            counts = np.bincount(self.region_size[inside] * (j1 - j0) + self.region_group[inside] - j0,
                                 minlength=n_size * (j1 - j0))
            q[:, odd] = counts.reshape(n_size, j1 - j0)
        keep = (neg > 0) | (pos > 0)
        return Levels(neg=neg[keep], pos=pos[keep], pro=pro[:, keep], region_q=q[:, keep])


def merge_levels(neg_sorted: np.ndarray, pos_values: np.ndarray, *, n_size: int = 0,
                 pos_weight: np.ndarray | None = None, pos_size: np.ndarray | None = None,
                 region_q: np.ndarray | None = None, region_size: np.ndarray | None = None) -> Levels:
    """Levels from ascending normal scores and (unsorted) defect scores.

    Each distinct defect score u gives one level (with the normal scores equal to u), and
    the normal scores strictly between two consecutive u give one normal-only level: the
    curves are straight (FPR moves, TPR/PRO do not) across such a run, so no metric changes.
    """
    groups = DefectGroups.build(pos_values, n_size=n_size, pos_weight=pos_weight, pos_size=pos_size,
                                region_q=region_q, region_size=region_size)
    return groups.levels(normal_slots(neg_sorted, groups.u))


def normal_slots(neg_sorted: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Normal counts of the 2m + 1 levels around descending distinct defect scores u, by two
    binary searches per u in the ascending normal scores."""
    n_neg = len(neg_sorted)
    m = len(u)
    asc = u[::-1]
    neg_ge = n_neg - np.searchsorted(neg_sorted, asc, side="left")[::-1]   # normals >= u
    neg_gt = n_neg - np.searchsorted(neg_sorted, asc, side="right")[::-1]  # normals > u
    prev_ge = np.concatenate([[0], neg_ge[:-1]]) if m else np.zeros(0, dtype=np.int64)
    neg = np.zeros(2 * m + 1, dtype=np.int64)
    neg[0:2 * m:2] = neg_gt - prev_ge                 # normals strictly between u_{j-1} and u_j
    neg[1:2 * m:2] = neg_ge - neg_gt                  # normals tied with u_j
    neg[2 * m] = n_neg - (neg_ge[-1] if m else 0)     # normals below every defect score
    return neg


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
        self._add_defects(maps, masks, regions)

    def _add_defects(self, maps: np.ndarray, masks: np.ndarray, regions: BatchRegions | None) -> None:
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

    def summary(self, limit: float, recall_fpr: float) -> PixelSummary:
        """Every pixel-level value of the Evaluator (curves.summarize)."""
        return summarize(self.levels(), limit, recall_fpr)

    def release_scores(self, auroc: bool, ap: bool) -> dict[str, float]:
        """3cad-paper's P-AUROC and P-AP: scikit-learn's own functions, as the release calls them."""
        from sklearn.metrics import average_precision_score, roc_auc_score

        s, y, w = self.weighted_samples()
        out = {}
        if auroc:
            out["p_auroc"] = roc_auc_score(y, s, sample_weight=w)
        if ap:
            out["p_ap"] = average_precision_score(y, s, sample_weight=w)
        return out
