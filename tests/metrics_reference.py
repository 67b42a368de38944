"""Independent reference implementations for the metric tests, written from the definitions.

Each one is the plain, slow transcription of a published definition (per-pixel sorting,
threshold loops), sharing no code with threecad.metrics.
"""
from __future__ import annotations

import numpy as np
from skimage import measure
from sklearn.metrics import auc, precision_recall_curve


def mvtec_au_pro(maps, masks, limit=0.3, keep_region=None):
    """MVTec AD AU-PRO: per-pixel FPR and PRO increments, sorted by score, ties collapsed.

    keep_region(area_ratio) -> bool restricts the PRO mean to some regions; the FPR axis
    always counts every normal pixel.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    pro_inc = np.zeros(maps.shape)
    n_ok = (~masks).sum()
    regions = []
    for i in range(len(masks)):
        lab = measure.label(masks[i], connectivity=2)
        for r in measure.regionprops(lab):
            if keep_region is None or keep_region(r.area / masks[i].size):
                regions.append((i, lab == r.label, r.area))
    for i, sel, area in regions:
        pro_inc[i][sel] = 1.0 / (len(regions) * area)
    s = maps.ravel()
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    fpr = np.cumsum((~masks).ravel()[order]) / n_ok
    pro = np.cumsum(pro_inc.ravel()[order])
    last = np.append(s[1:] != s[:-1], True)
    x = np.concatenate([[0.0], fpr[last]])
    y = np.concatenate([[0.0], pro[last]])
    x = np.clip(x, 0, 1)
    # trapezoid up to `limit`, interpolating at the limit
    if limit in x:
        m = x <= limit
        area = np.trapezoid(y[m], x[m])
    else:
        ins = int(np.searchsorted(x, limit, side="right"))
        y_lim = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        area = np.trapezoid(y[:ins], x[:ins]) + 0.5 * (y[ins - 1] + y_lim) * (limit - x[ins - 1])
    return area / limit


def sk_f1max(labels, scores):
    p, r, _ = precision_recall_curve(np.ravel(labels), np.ravel(scores))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(f1.max())


def official_image_pro(amap, mask, num_th=200):
    """The 3CAD release's per-image PRO, as its test script applies it to one image."""
    amap = np.asarray(amap, dtype=np.float64)[None]
    mask = np.asarray(mask, dtype=int)[None]
    lo, hi = amap.min(), amap.max()
    delta = (hi - lo) / num_th
    rows = []
    for th in np.arange(lo, hi, delta):
        binary = amap > th
        pros = []
        for b, m in zip(binary, mask):
            for region in measure.regionprops(measure.label(m)):
                cc = region.coords
                pros.append(b[cc[:, 0], cc[:, 1]].sum() / region.area)
        inverse = 1 - mask
        fpr = np.logical_and(inverse, binary).sum() / inverse.sum()
        rows.append((np.mean(pros), fpr))
    rows = [(p, f) for p, f in rows if f < 0.3]
    f = np.array([r[1] for r in rows])
    p = np.array([r[0] for r in rows])
    return auc(f / f.max(), p)


def region_recall(maps, masks, fpr, keep_region):
    """Fraction of regions with >= half their pixels at or above the lowest threshold with FPR <= fpr."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    normal = np.sort(maps[~masks])
    n = len(normal)
    cands = np.unique(maps)          # every threshold that changes anything
    flagged = n - np.searchsorted(normal, cands, side="left")   # normal pixels >= t
    ok = cands[flagged <= fpr * n + 1e-9]
    t = ok.min() if len(ok) else np.inf
    hit = tot = 0
    for i in range(len(masks)):
        lab = measure.label(masks[i], connectivity=2)
        for r in measure.regionprops(lab):
            if keep_region(r.area / masks[i].size):
                tot += 1
                vals = maps[i][lab == r.label]
                hit += (vals >= t).sum() * 2 >= len(vals)
    return hit / tot if tot else None
