"""The two evaluation protocols: `standard` (MVTec AD definitions) and `3cad-paper`.

Why both: `standard` is exact and counts every false positive; `3cad-paper` reproduces what
the official 3CAD release computes (its `test.py` and `compute_pro`), so that new runs can be
compared with the published table.  The paper protocol's PRO ignores false positives on good
images; every place that shows it should say so.

`3cad-paper`, step by step as the release does it (the Evaluator is fed the RAW maps):
1. each raw map is converted to float64 (the release accumulates its map in `np.zeros`) and
   blurred ONCE: scipy.ndimage.gaussian_filter, sigma 4, its defaults (mode "reflect",
   truncate 4) -- `threecad.smoothing.release_blur`.  Every number below comes from that
   blurred map; scores passed by the caller are ignored (the release has none).
2. image score = max of the blurred map; I-AUROC = sklearn `roc_auc_score`.
3. P-AUROC and P-AP = sklearn `roc_auc_score` / `average_precision_score` on all pixels of
   all test images pooled (good images included).  Exact mode calls them on the distinct
   scores weighted by their pixel counts: the same tps/fps arrays, so the same doubles.
4. PRO per defective image (label 1, at least one defect and one normal pixel), from its
   blurred map alone: thresholds np.arange(min, max, (max - min) / 200); a pixel is flagged
   when its score is > the threshold; PRO = the mean over the image's 8-connected regions
   of the flagged fraction (rounded once from its exact value, as the release's
   `statistics.mean`); FPR = flagged normal pixels of THIS image / its normal pixels.
   Points with FPR < 0.3 are kept, FPR is divided by its largest kept value, and the points
   are integrated with `sklearn.metrics.auc`'s arithmetic (-1 x np.trapezoid, x falling).
   Good images never enter PRO: false positives on good images do not count.  The category
   value is `np.mean` over the defective images, in the order they were fed.
5. each category value is rounded with the built-in round(value, 3) applied to the object
   the release rounds: what the installed scikit-learn returns (a Python float in recent
   versions) and numpy's float64 from `np.mean` (numpy's own rounding rule); the mean over
   categories is `np.mean` of the rounded values (`paper_category_mean`).
I-AP, I-F1max and P-F1max are not in the release; they are threecad's (curves), rounded the
same way.  Streaming mode bins the pooled pixels (P-AUROC, P-AP within their bounds); image
metrics and PRO stay exact there.

What the harness does with a predicted batch under each protocol is decided here too
(`evaluator_inputs`, `ranking_scores`, `recorded_postprocess`), so that no other module
repeats a protocol's rules.

Where the official code crashes or returns NaN, threecad returns a documented number:
- an image with a constant map (np.arange with a zero step), or none of whose thresholds
  reaches FPR < 0.3 (auc of no point): 0.0;
- all kept FPRs are 0 (normal pixels never flagged; the release divides 0 by 0 and returns
  NaN): the largest kept PRO (a flat curve);
- exactly one kept threshold with FPR > 0 (auc needs two points): 0.0;
- a defective image without any defect pixel, or without any normal pixel (the release's
  mask assertion fails), is skipped; a category where every image is skipped has no value.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from threecad.choices import PAPER, PROTOCOLS, STANDARD
from threecad.errors import ThreecadError
from threecad.metrics.regions import EIGHT_CONNECTED
from threecad.smoothing import release_blur

PAPER_BLUR_SIGMA = 4.0
PAPER_THRESHOLDS = 200
PAPER_FPR_LIMIT = 0.3
PAPER_DECIMALS = 3


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ThreecadError(f"metrics: unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def paper_blur(maps: np.ndarray) -> np.ndarray:
    """The release's single blur of raw (N, H, W) maps, in float64 as the release holds its map."""
    return release_blur(np.asarray(maps, dtype=np.float64), sigma=PAPER_BLUR_SIGMA)


def evaluator_inputs(protocol: str, scores, maps, post):
    """(scores, maps) of a predicted batch as the Evaluator takes them under `protocol`.

    `standard`: the method's declared post-processing (`post`, a threecad.postprocess.PostProcess)
    applied once; `3cad-paper`: no score and the raw maps, since the Evaluator blurs once and
    scores each image by the max of its blurred map, as the release.
    """
    if check_protocol(protocol) == STANDARD:
        return post.apply(maps, scores)
    return None, maps


def ranking_scores(protocol: str, scores, maps) -> np.ndarray:
    """The score each image is ranked by under `protocol`, from (scores, maps) as fed to the
    Evaluator (so the images pictured as hardest are the ones its metrics rank so): the score
    given, else the max of the map (`standard`); the max of the release's blur (`3cad-paper`)."""
    maps = np.asarray(maps)
    if check_protocol(protocol) == PAPER:
        return paper_blur(maps).reshape(len(maps), -1).max(axis=1)
    if scores is not None:
        return np.asarray(scores)
    return maps.reshape(len(maps), -1).max(axis=1)


def recorded_postprocess(protocol: str, post) -> dict:
    """The post-processing a run under `protocol` applied to the raw maps, as its records say."""
    if check_protocol(protocol) == STANDARD:
        return post.as_dict()
    return {"release_blur_sigma": PAPER_BLUR_SIGMA}


def paper_round(value):
    """The release's rounding: built-in round(value, 3) on the object the release rounds."""
    return round(value, PAPER_DECIMALS)


def _exact_mean(pro: np.ndarray) -> np.ndarray:
    """Column means of (regions, thresholds) equal to statistics.mean of each column.

    statistics.mean rounds the exact mean of its doubles once.  With one region that is the
    value; with two, fl(a + b) / 2 is the same double (halving is exact).  From three on the
    doubles are summed exactly as integers (mantissa << exponent offset) and divided by n with
    Python's correctly rounded int division: the same double, without Fraction's cost.
    """
    n = len(pro)
    if n == 1:
        return pro[0].copy()
    if n == 2:
        return (pro[0] + pro[1]) / 2
    frac, exp = np.frexp(pro.T)                        # pro = frac * 2**exp, 0.5 <= frac < 1
    mant = (frac * 2.0**53).astype(np.int64)           # exact: 53-bit integers
    exp = exp.astype(np.int64) - 53
    low = exp.min(axis=1)
    shift = exp - low[:, None]
    out = np.empty(len(mant))
    for j, (ms, ss, lo) in enumerate(zip(mant.tolist(), shift.tolist(), low.tolist())):
        total = sum(m << s for m, s in zip(ms, ss))
        out[j] = total / (n << -lo) if lo < 0 else (total << lo) / n
    return out


def _sklearn_auc(x: np.ndarray, y: np.ndarray) -> float:
    """sklearn.metrics.auc's arithmetic for a monotone x (direction * trapezoid), minus its
    input validation (milliseconds a call, once per defective image)."""
    dx = np.diff(x)
    direction = -1 if np.any(dx < 0) else 1
    return float(direction * _trapezoid(y, x))


_trapezoid = getattr(np, "trapezoid", None) or np.trapz   # numpy < 2 has only trapz


def paper_image_pro(amap: np.ndarray, mask: np.ndarray, labels: np.ndarray | None = None) -> float | None:
    """The official per-image PRO of one defective image's BLURRED map (module docstring, 4).

    `labels` may carry the 8-connected region labels of `mask` when already computed.
    Returns None when the image defines no PRO (no defect pixel or no normal pixel).
    """
    amap = np.asarray(amap, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    n_def = int(mask.sum())
    if n_def == 0 or n_def == mask.size:
        return None
    if labels is None:
        labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    lo, hi = amap.min(), amap.max()
    if lo == hi:
        return 0.0
    th = np.arange(lo, hi, (hi - lo) / PAPER_THRESHOLDS)
    k = len(th)
    normal = np.sort(amap[~mask])
    fpr = (len(normal) - np.searchsorted(normal, th, side="right")) / len(normal)
    region = labels[mask].astype(np.int64) - 1
    n_reg = int(region.max()) + 1
    area = np.bincount(region, minlength=n_reg)
    below = np.searchsorted(th, amap[mask], side="left")   # thresholds strictly below the score
    hist = np.bincount(region * (k + 1) + below, minlength=n_reg * (k + 1)).reshape(n_reg, k + 1)
    flagged = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # pixels with score > th[t]
    keep = fpr < PAPER_FPR_LIMIT
    if not keep.any():
        return 0.0
    f = fpr[keep]
    p = _exact_mean(flagged[:, keep] / area[:, None])
    top = f.max()
    if top == 0:
        return float(p.max())
    if len(f) == 1:
        return 0.0
    return _sklearn_auc(f / top, p)


def paper_category_mean(values: Iterable[float]) -> float:
    """Mean over categories the way the paper reports it: each value rounded to 3 decimals first."""
    vals = [paper_round(v) for v in values]
    if not vals:
        raise ThreecadError("metrics: no category values to average")
    return float(np.mean(vals))
