"""Ranking metrics of levels (and of distinct scores) that arrive in pieces, equal to the last
bit to curves.py and to scikit-learn.

Why: exact metrics in bounded memory (threecad.metrics.bounded) never hold every level (one
per distinct defect score, tens of millions at 3CAD size) nor, under 3cad-paper, every
distinct score; they produce them in descending score order, piece by piece.  The metrics
are sums, cumulative sums and maxima over those sequences.  Integer cumulative sums, float
cumulative sums (numpy adds their terms one after the other) and maxima carry across pieces
exactly.  A float sum does not: np.sum adds pairwise (eight interleaved accumulators up to
128 terms, halves above), so PairwiseSum rebuilds that tree for a sequence whose length is
counted first (each source is read more than once).  Every term is written as curves.py, or
scikit-learn's roc_curve, precision_recall_curve and auc, write it, hence the same double:
change both places together.  tests/test_metrics_fixed_memory.py checks the equality with
pieces of many sizes.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from threecad.metrics import curves
from threecad.metrics.curves import Levels, PixelSummary, UndefinedMetric


class PairwiseSum:
    """np.sum of n float64 terms given piece by piece, in order (or, reverse=True, last term first)."""

    #: Subtrees of up to this many terms are summed by np.sum itself.
    LEAF = 1 << 16

    def __init__(self, n: int, reverse: bool = False) -> None:
        self.n = int(n)
        self.reverse = reverse
        self._parts: deque[np.ndarray] = deque()
        self._held = 0
        self._value: np.float64 | None = None
        self._walk = self._node(self.n)
        self._advance()

    def add(self, terms: np.ndarray) -> None:
        terms = np.asarray(terms, dtype=np.float64)
        if terms.size:
            self._parts.append(terms)
            self._held += terms.size
            self._advance()

    @property
    def value(self) -> np.float64:
        if self._value is None or self._held:
            raise RuntimeError(f"PairwiseSum: expected {self.n} terms, got a different number")
        return self._value

    def _advance(self) -> None:
        if self._value is None:
            try:
                self._walk.send(None)
            except StopIteration as done:
                self._value = done.value

    def _node(self, n: int):
        """Sum of the next n terms, split as numpy's pairwise_sum splits them; yields while it waits."""
        if n <= self.LEAF:
            while self._held < n:
                yield
            return np.sum(self._take(n))
        half = n // 2
        half -= half % 8
        if self.reverse:           # terms arrive last first: the right subtree is complete first
            right = yield from self._node(n - half)
            left = yield from self._node(half)
        else:
            left = yield from self._node(half)
            right = yield from self._node(n - half)
        return left + right

    def _take(self, n: int) -> np.ndarray:
        pieces = []
        need = n
        while need:
            head = self._parts[0]
            if len(head) <= need:
                pieces.append(self._parts.popleft())
                need -= len(head)
            else:
                pieces.append(head[:need])
                self._parts[0] = head[need:]
                need = 0
        self._held -= n
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else np.zeros(0)
        return np.ascontiguousarray(out[::-1]) if self.reverse else out


@dataclass
class LevelSource:
    """Levels in descending score order, in pieces, readable more than once.

    counts() gives (neg, pos) of each piece, levels() the same pieces whole; n_regions is the
    number of regions per size bin.
    """

    counts: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
    levels: Callable[[], Iterable[Levels]]
    n_regions: np.ndarray


class _ProArea:
    """AU-PRO up to the FPR limit (curves.au_pro) of one weight row, fed piece by piece."""

    def __init__(self, n_regions: int, n_points: int) -> None:
        self.n_regions = n_regions
        self.i = n_points                   # points [0, i) of the curve have FPR <= limit
        self.sum = PairwiseSum(n_points - 1)
        self.cum = np.float64(0.0)          # running cumsum of the weights
        self.x_prev = self.y_prev = np.float64(0.0)
        self.at = 0                         # index of the point (x_prev, y_prev)
        self.edge: tuple | None = None      # (x[i-1], y[i-1], x[i], y[i]) once seen

    def add(self, x: np.ndarray, weights: np.ndarray) -> None:
        c = np.cumsum(np.concatenate(([self.cum], weights)))[1:]
        self.cum = c[-1]
        y = np.minimum(c / self.n_regions, 1.0)
        xs = np.concatenate(([self.x_prev], x))
        ys = np.concatenate(([self.y_prev], y))
        k = min(max(self.i - 1 - self.at, 0), len(x))        # terms of this piece below the limit
        if k:
            self.sum.add(0.5 * (ys[1:k + 1] + ys[:k]) * np.diff(xs[:k + 1]))
        j = self.i - 1 - self.at                              # position of point i-1 in xs
        if 0 <= j < len(x) and self.edge is None:
            self.edge = (xs[j], ys[j], xs[j + 1], ys[j + 1])
        self.at += len(x)
        self.x_prev, self.y_prev = xs[-1], ys[-1]

    def result(self, limit: float) -> float:
        area = float(self.sum.value)
        if self.edge is not None and self.edge[0] < limit:
            x0, y0, x1, y1 = self.edge
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_lim) * (limit - x0)
        return area / limit


def _totals(source: LevelSource) -> tuple[int, int, int, int]:
    n_neg = n_pos = n_levels = n_sel = 0
    for neg, pos in source.counts():
        n_neg += int(neg.sum())
        n_pos += int(pos.sum())
        n_levels += len(neg)
        n_sel += int(np.count_nonzero(pos))
    return n_neg, n_pos, n_levels, n_sel


def _fpr_positions(source: LevelSource, n_neg: int, limit: float, allowed: int) -> tuple[int, int]:
    """(points of the FPR axis [0, cumsum(neg) / n_neg] at or below `limit`, levels whose
    cumulative normal count is at most `allowed`): both prefixes, the axis being monotone."""
    points, within, carry = 1, 0, 0
    for neg, _ in source.counts():
        cum = carry + np.cumsum(neg)
        points += int(np.count_nonzero(cum / n_neg <= limit))
        within += int(np.count_nonzero(cum <= allowed))
        carry = int(cum[-1]) if len(cum) else carry
    return points, within


def summarize_chunks(source: LevelSource, limit: float, recall_fpr: float) -> PixelSummary:
    """curves.summarize of the levels `source` produces, never holding more than one piece."""
    limit = curves.check_limit(limit)
    n_neg, n_pos, n_levels, n_sel = _totals(source)
    n_regions = np.asarray(source.n_regions, dtype=np.int64)
    n_size = len(n_regions)

    def check(fn):
        try:
            fn()
        except UndefinedMetric as exc:
            return exc
        return None

    undefined_roc = check(lambda: curves.need(n_pos, n_neg))
    undefined_ap = check(lambda: curves.need(n_pos, n_neg, neg=False))
    undefined_pro = [undefined_roc or check(lambda s=s: curves.need_regions(int(n_regions[s]), s))
                     for s in range(n_size)]
    undefined_pro_all = undefined_roc or check(lambda: curves.need_regions(int(n_regions.sum()), None))
    allowed = int(np.floor(recall_fpr * n_neg + 1e-9))
    n_points, k_recall = _fpr_positions(source, n_neg, limit, allowed) if n_neg else (1, 0)

    roc = PairwiseSum(n_levels) if undefined_roc is None else None
    ap = PairwiseSum(n_sel) if undefined_ap is None else None
    f1 = -np.inf
    pro_all = _ProArea(int(n_regions.sum()), n_points) if undefined_pro_all is None else None
    pro = [_ProArea(int(n_regions[s]), n_points) if undefined_pro[s] is None else None for s in range(n_size)]
    counted = np.zeros(n_size, dtype=np.int64)
    tp_carry = fp_carry = at = 0
    for lv in source.levels():
        neg, pos = lv.neg, lv.pos
        tp = tp_carry + np.cumsum(pos)
        fp = fp_carry + np.cumsum(neg)
        if roc is not None:
            roc.add(neg * (2.0 * (tp - pos) + pos))
        if ap is not None:
            sel = pos > 0
            t, f = tp[sel], fp[sel]
            ap.add(pos[sel] * (t / (t + f)))
            if len(t):
                f1 = max(f1, np.max(2.0 * t / (t + f + n_pos)))
        if n_neg and (pro_all is not None or any(p is not None for p in pro)):
            x = fp / n_neg
            if pro_all is not None:
                pro_all.add(x, lv.pro.sum(axis=0))
            for s, p in enumerate(pro):
                if p is not None:
                    p.add(x, lv.pro[s])
        take = min(max(k_recall - at, 0), len(neg))
        counted += lv.region_q[:, :take].sum(axis=1)
        tp_carry, fp_carry = (int(tp[-1]), int(fp[-1])) if len(neg) else (tp_carry, fp_carry)
        at += len(neg)

    values: dict[str, float | UndefinedMetric] = {
        "p_auroc": undefined_roc or float(roc.value / (2.0 * n_neg * n_pos)),
        "p_ap": undefined_ap or float(ap.value / n_pos),
        "p_f1max": undefined_ap or float(f1),
        "au_pro": undefined_pro_all or float(pro_all.result(limit)),
    }
    sizes = [undefined_pro[s] or float(pro[s].result(limit)) for s in range(n_size)]
    if n_neg:
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(n_regions > 0, counted / np.maximum(n_regions, 1), np.nan)
    else:
        recall = np.full(n_size, np.nan)
    return PixelSummary(values, sizes, n_regions, recall)


def _thresholds(stream: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]):
    """(neg, pos, changes) per piece of the stream: changes[j] tells whether threshold j's
    counts differ from the next threshold's (False for the last threshold of all)."""
    held = None
    for neg, pos in stream():
        if not len(neg):
            continue
        if held is not None:
            hn = np.concatenate((held[0], neg[:1]))
            hp = np.concatenate((held[1], pos[:1]))
            yield held[0], held[1], (hn[1:] != hn[:-1]) | (hp[1:] != hp[:-1])
        held = (neg, pos)
    if held is not None:
        hn, hp = held
        changes = np.zeros(len(hn), dtype=bool)
        changes[:-1] = (hn[1:] != hn[:-1]) | (hp[1:] != hp[:-1])
        yield hn, hp, changes


def release_pixel_scores(stream: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], n_neg: int, n_pos: int,
                         *, auroc: bool, ap: bool) -> dict[str, float]:
    """scikit-learn's roc_auc_score and average_precision_score of every pixel, from the
    (normal count, defect count) of each distinct score, highest score first.

    scikit-learn ranks the samples and takes one threshold per distinct score, with exact
    cumulative counts (fps, tps).  roc_curve then drops each threshold but the first and the
    last whose counts equal the next threshold's (collinear points), prepends (0, 0), and
    auc integrates with trapezoids (np.sum); precision_recall_curve keeps every threshold, and
    average_precision_score sums (recall step) x precision, lowest score first.  The stream
    is read twice: the number of thresholds, and of those roc_curve keeps, fix the sums' trees.
    """
    n_thr = n_changes = 0
    first_change = False
    for neg, _, changes in _thresholds(stream):
        if n_thr == 0:
            first_change = bool(changes[0])
        n_thr += len(neg)
        n_changes += int(np.count_nonzero(changes))
    n_roc = n_thr if n_thr <= 2 else 2 + n_changes - first_change

    roc = PairwiseSum(n_roc) if auroc else None
    prc = PairwiseSum(n_thr, reverse=True) if ap else None
    fps = tps = t = 0
    x_prev = y_prev = recall_prev = np.float64(0.0)      # (0, 0): roc_curve's prepended point
    for neg, pos, changes in _thresholds(stream):
        f = fps + np.cumsum(neg)
        p = tps + np.cumsum(pos)
        if roc is not None:
            idx = t + np.arange(len(neg))
            keep = changes | (idx == 0) | (idx == n_thr - 1) if n_thr > 2 else np.ones(len(neg), dtype=bool)
            x = np.concatenate(([x_prev], f[keep] / n_neg))
            y = np.concatenate(([y_prev], p[keep] / n_pos))
            roc.add(np.diff(x) * (y[1:] + y[:-1]) / 2.0)
            x_prev, y_prev = x[-1], y[-1]
        if prc is not None:
            precision = p / (p + f)
            recall = np.concatenate(([recall_prev], p / n_pos))
            prc.add((recall[:-1] - recall[1:]) * precision)
            recall_prev = recall[-1]
        fps, tps = int(f[-1]), int(p[-1])
        t += len(neg)
    out = {}
    if roc is not None:
        out["p_auroc"] = float(roc.value)
    if prc is not None:
        out["p_ap"] = float(max(0.0, -prc.value))
    return out
