"""Ranking metrics read off score tie-groups ("levels"), in descending score order.

Why one representation: AUROC, AP, F1-max, AU-PRO and region recall depend only on how
many normal pixels, defect pixels and how much region coverage lie at or above each
threshold.  Exact mode builds the levels from one ordering of the pixels (a level is a
group of tied scores, or a run of normal-only scores that no metric can tell apart);
streaming mode builds them from histogram bins.  Every formula below is shared, so the
two modes differ only in their levels, and streaming can bound its own error.

Definitions (scikit-learn and MVTec AD):
- AUROC: trapezoid area under (FPR, TPR) through every level, from (0, 0); ties count 1/2.
- AP: sum over levels of (recall step) x (precision at the level's end), no interpolation.
- F1-max: max over levels of 2 TP / (TP + FP + P).
- AU-PRO: (FPR over all normal pixels, mean over regions of the covered fraction) through
  every level from (0, 0), trapezoid up to `limit` with linear interpolation, / `limit`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threecad.errors import ThreecadError


class UndefinedMetric(ThreecadError):
    """The data cannot define the metric (no defective pixel, no normal pixel, no region)."""


@dataclass
class Levels:
    """Tie-groups of scores, highest score first.

    pro[s, k] sums 1/area(region) over the defect pixels of level k whose region falls in
    size bin s; region_q[s, k] counts regions of size bin s whose half-coverage score
    (see regions.BatchRegions.half_cover_scores) lies in level k.
    """

    neg: np.ndarray       # (L,) int64 normal pixels (or images) per level
    pos: np.ndarray       # (L,) int64 defect pixels (or images) per level
    pro: np.ndarray       # (S, L) float64
    region_q: np.ndarray  # (S, L) int64

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def n_regions(self) -> np.ndarray:
        return self.region_q.sum(axis=1)


def need(n_pos: int, n_neg: int, *, pos: bool = True, neg: bool = True, what: str = "pixel") -> None:
    """Refuse (UndefinedMetric) a metric that needs defective or normal samples and has none."""
    if pos and n_pos == 0:
        raise UndefinedMetric(f"metrics: no defective {what} (the metric needs at least one)")
    if neg and n_neg == 0:
        raise UndefinedMetric(f"metrics: no normal {what} (the metric needs at least one)")


def need_regions(n_regions: int, size: int | None) -> None:
    if n_regions == 0:
        raise UndefinedMetric("metrics: no defect region" + ("" if size is None else " in this size bin"))


def _need(lv: Levels, *, pos: bool = True, neg: bool = True, what: str = "pixel") -> None:
    need(lv.n_pos, lv.n_neg, pos=pos, neg=neg, what=what)


def auroc(lv: Levels, what: str = "pixel") -> float:
    """Area under the ROC curve; equal to sklearn.metrics.roc_auc_score on the same data."""
    _need(lv, what=what)
    tp_before = np.cumsum(lv.pos) - lv.pos
    area = np.sum(lv.neg * (2.0 * tp_before + lv.pos))
    return float(area / (2.0 * lv.n_neg * lv.n_pos))


def average_precision(lv: Levels, what: str = "pixel") -> float:
    """Step-wise AP; equal to sklearn.metrics.average_precision_score."""
    _need(lv, neg=False, what=what)
    tp, fp = np.cumsum(lv.pos), np.cumsum(lv.neg)
    sel = lv.pos > 0
    return float(np.sum(lv.pos[sel] * (tp[sel] / (tp[sel] + fp[sel]))) / lv.n_pos)


def f1_max(lv: Levels, what: str = "pixel") -> float:
    """Largest F1 over all thresholds (a threshold between every two levels)."""
    _need(lv, neg=False, what=what)
    tp, fp = np.cumsum(lv.pos), np.cumsum(lv.neg)
    sel = lv.pos > 0
    return float(np.max(2.0 * tp[sel] / (tp[sel] + fp[sel] + lv.n_pos)))


def _pro_curve(lv: Levels, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    _need(lv)
    weights = lv.pro.sum(axis=0) if size is None else lv.pro[size]
    n_regions = int(lv.n_regions.sum() if size is None else lv.n_regions[size])
    need_regions(n_regions, size)
    fpr = np.concatenate([[0.0], np.cumsum(lv.neg) / lv.n_neg])
    pro = np.concatenate([[0.0], np.cumsum(weights) / n_regions])
    return fpr, np.minimum(pro, 1.0)


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area of a curve with non-decreasing x, from x[0] to `limit` (interpolated)."""
    i = int(np.searchsorted(x, limit, side="right"))  # points [0, i) have x <= limit
    area = float(np.sum(0.5 * (y[1:i] + y[:i - 1]) * np.diff(x[:i])))
    if i < len(x) and x[i - 1] < limit:
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area += 0.5 * (y[i - 1] + y_lim) * (limit - x[i - 1])
    return area


def check_limit(limit: float) -> float:
    limit = float(limit)
    if not 0.0 < limit <= 1.0:
        raise ThreecadError(f"metrics: the AU-PRO FPR limit must lie in (0, 1]; got {limit}")
    return limit


def au_pro(lv: Levels, limit: float = 0.3, size: int | None = None) -> float:
    """Normalized area under the PRO curve up to FPR `limit` (MVTec AD definition).

    `size` restricts the PRO mean to the regions of one size bin; the FPR axis is unchanged.
    """
    limit = check_limit(limit)
    fpr, pro = _pro_curve(lv, size)
    return _area_up_to(fpr, pro, limit) / limit


def region_recall(lv: Levels, fpr: float) -> np.ndarray:
    """Per size bin, the fraction of regions at least half covered at the operating point.

    The operating point is the lowest threshold whose FPR over normal pixels is <= `fpr`.
    A region counts when its half-coverage score lies in a level strictly above the level
    holding the first normal pixel that the threshold must exclude (exact in exact mode,
    conservative by at most that one bin in streaming mode).
    """
    _need(lv, pos=False)
    allowed = int(np.floor(fpr * lv.n_neg + 1e-9))
    cum = np.cumsum(lv.neg)
    k = int(np.searchsorted(cum, allowed, side="right"))  # first level pushing FP over `allowed`
    counted = lv.region_q[:, :k].sum(axis=1)
    n = lv.n_regions
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, counted / np.maximum(n, 1), np.nan)


@dataclass
class PixelSummary:
    """Every pixel-level value the Evaluator reports, read off one set of levels.

    `values` holds p_auroc, p_ap, p_f1max and au_pro (FPR limit given), `au_pro_size` one
    AU-PRO per size bin: each a float, or the UndefinedMetric saying why the data cannot
    define it.  `region_recall` is NaN where a bin has no region or there is no normal pixel.
    """

    values: dict[str, float | UndefinedMetric]
    au_pro_size: list[float | UndefinedMetric]
    n_regions: np.ndarray      # (S,) regions per size bin
    region_recall: np.ndarray  # (S,)

    def get(self, key: str) -> float:
        value = self.values[key]
        if isinstance(value, UndefinedMetric):
            raise value
        return value


def attempt(fn) -> float | UndefinedMetric:
    try:
        return float(fn())
    except UndefinedMetric as exc:
        return exc


def summarize(lv: Levels, limit: float, recall_fpr: float) -> PixelSummary:
    """The PixelSummary of levels held in memory (chunked.summarize_chunks: the same, in pieces)."""
    values = {"p_auroc": attempt(lambda: auroc(lv)), "p_ap": attempt(lambda: average_precision(lv)),
              "p_f1max": attempt(lambda: f1_max(lv)), "au_pro": attempt(lambda: au_pro(lv, limit))}
    n_size = lv.region_q.shape[0]
    sizes = [attempt(lambda s=s: au_pro(lv, limit, size=s)) for s in range(n_size)]
    recall = region_recall(lv, recall_fpr) if lv.n_neg > 0 else np.full(n_size, np.nan)
    return PixelSummary(values, sizes, lv.n_regions, recall)


def streaming_error_bounds(lv: Levels, limit: float = 0.3) -> dict[str, float]:
    """Worst-case |binned - exact| for each pixel metric, from the bins alone.

    Inside a bin the exact order of its pixels is unknown; the exact curve passes through
    every bin boundary.  AUROC: pairs inside a bin count 1/2 but could all be ordered either
    way, so the error is at most 1/2 sum_b p_b q_b (p, q: positive and negative fractions).
    AP: each positive of bin b has an exact precision between the bin's extreme corners
    (Pmin, Pmax); error <= sum_b p_b (Pmax_b - Pmin_b).  F1-max: the exact maximum lies
    between the binned maximum and the best corner of any bin.  AU-PRO: the exact curve
    stays inside each bin's box, so the area differs by at most half the box (the whole
    clipped box for the bin that straddles the limit), divided by the limit.
    The bins keep no values, so exact ties inside a bin count as unknown order: on
    tie-heavy maps (saturated sigmoids, 8-bit maps) the bound is loose, not the result.
    """
    out: dict[str, float] = {}
    n_pos, n_neg = lv.n_pos, lv.n_neg
    if n_pos == 0 or n_neg == 0:
        return out
    p, q = lv.pos / n_pos, lv.neg / n_neg
    out["p_auroc"] = float(0.5 * np.sum(p * q))
    tp_b = (np.cumsum(lv.pos) - lv.pos).astype(np.float64)
    fp_b = (np.cumsum(lv.neg) - lv.neg).astype(np.float64)
    sel = lv.pos > 0
    t, f, a, b = tp_b[sel], fp_b[sel], lv.pos[sel], lv.neg[sel]
    p_max = (t + a) / (t + a + f)
    p_min = (t + 1) / (t + 1 + f + b)
    out["p_ap"] = float(np.sum(p[sel] * (p_max - p_min)))
    f1_up = 2 * (t + a) / (t + a + f + n_pos)
    out["p_f1max"] = float(max(0.0, f1_up.max() - f1_max(lv)))
    if lv.n_regions.sum() > 0:
        limit = check_limit(limit)
        fpr, pro = _pro_curve(lv, None)
        x0, x1 = fpr[:-1], fpr[1:]
        dp = np.diff(pro)
        full = x1 <= limit
        cross = (x0 < limit) & (x1 > limit)
        err = np.sum(0.5 * (x1 - x0)[full] * dp[full]) + np.sum((limit - x0[cross]) * dp[cross])
        out["au_pro"] = float(err / limit)
    return out
