"""The two evaluation protocols: `standard` (MVTec AD definitions) and `3cad-paper`.

Why both: `standard` is exact and counts every false positive; `3cad-paper` reproduces what
the official 3CAD release computes, so that new runs can be compared with the published
table.  The paper protocol's PRO ignores false positives on good images; every place that
shows it should say so.

`3cad-paper`, as the official test script does it:
- image score (when the caller gives none): max of the map after a Gaussian blur,
  sigma 4 (scipy.ndimage.gaussian_filter, its defaults: mode "reflect", truncate 4);
- P-AUROC and P-AP pooled over all test pixels (same as `standard`);
- PRO per defective image: thresholds np.arange(min, max, (max - min) / 200) of that
  image's map (float64), a pixel is flagged when its score is > threshold, PRO is the mean
  over that image's 8-connected regions of the flagged fraction, FPR counts that image's
  normal pixels; points with FPR < 0.3 are kept, FPR is divided by its largest kept value,
  and the trapezoid area is taken.  The category value is the mean over defective images.
- each category's value is rounded to 3 decimals before averaging over categories.

Where the official code crashes or returns NaN, threecad returns a documented number:
- an image with a constant map, or none of whose thresholds reaches FPR < 0.3: 0.0;
- all kept FPRs are 0 (normal pixels never flagged): the largest kept PRO (a flat curve);
- exactly one kept threshold with FPR > 0: 0.0 (a curve of zero width);
- a defective image without any defect pixel, or without any normal pixel, is skipped
  (it defines no PRO); a category where every image is skipped has no value (None).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from threecad.errors import ThreecadError
from threecad.metrics.regions import EIGHT_CONNECTED

STANDARD = "standard"
PAPER = "3cad-paper"
PROTOCOLS = (STANDARD, PAPER)

PAPER_BLUR_SIGMA = 4.0
PAPER_THRESHOLDS = 200
PAPER_FPR_LIMIT = 0.3
PAPER_DECIMALS = 3


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ThreecadError(f"metrics: unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def default_image_scores(maps: np.ndarray, protocol: str) -> np.ndarray:
    """The protocol's image score when the method gives none: max of the (blurred) map."""
    if protocol == PAPER:
        blurred = ndimage.gaussian_filter(maps.astype(np.float64), sigma=(0.0, PAPER_BLUR_SIGMA,
                                                                          PAPER_BLUR_SIGMA))
        return blurred.reshape(len(maps), -1).max(axis=1)
    return maps.reshape(len(maps), -1).max(axis=1)


def paper_image_pro(amap: np.ndarray, mask: np.ndarray, labels: np.ndarray | None = None) -> float | None:
    """The official per-image PRO of one defective image (see the module docstring).

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
    pro = (flagged / area[:, None]).mean(axis=0)
    keep = fpr < PAPER_FPR_LIMIT
    if not keep.any():
        return 0.0
    f, p = fpr[keep], pro[keep]
    top = f.max()
    if top == 0:
        return float(p.max())
    if len(f) == 1:
        return 0.0
    x = f / top
    return float(abs(np.sum(0.5 * (p[1:] + p[:-1]) * np.diff(x))))


def paper_category_mean(values: Iterable[float]) -> float:
    """Mean over categories the way the paper reports it: each value rounded to 3 decimals first."""
    vals = [round(float(v), PAPER_DECIMALS) for v in values]
    if not vals:
        raise ThreecadError("metrics: no category values to average")
    return float(np.mean(vals))
