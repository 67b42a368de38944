"""The official 3CAD release's evaluation loop, transcribed for the tests (shares no code with threecad).

Written from reading the release's `test.py` (function `main`) and
`train_utils/toolbox/metrics.py` (function `compute_pro`), in their order of operations:

- one image at a time (the loader's batch size is 1); the map is accumulated into
  `np.zeros` (float64) from the model's float32 pieces, then blurred once with
  scipy `gaussian_filter(map, sigma=4)` (its defaults: mode "reflect", truncate 4);
- the mask is thresholded at 0.5; an image whose label is not 0 enters PRO;
- every pixel of every image (good ones included) joins the pooled pixel lists; the image
  score is the max of the blurred map and the image label the max of the mask;
- P-AUROC, I-AUROC: `roc_auc_score`; P-AP: `average_precision_score`; PRO: the mean over
  defective images of `compute_pro`; each value passed to the built-in `round(x, 3)` as
  the release does (the object sklearn / numpy returns, so its own __round__ applies).

`compute_pro` of one image: thresholds `np.arange(min, max, (max - min) / 200)` of the
blurred map; at each one a pixel is flagged when its score is > the threshold; PRO is
`statistics.mean` over the mask's regions (skimage `label`, full connectivity) of the
flagged fraction, FPR is flagged normal pixels / normal pixels; the rows with FPR < 0.3 are
kept, FPR is divided by its largest kept value, and `sklearn.metrics.auc` integrates.

Two shortcuts that do not change a single bit: the release relabels the mask (and reads
each region's coordinates) and appends a pandas row at every threshold; here the mask is
labelled once and the frame is built once
(pandas 2 and 3 give float64 columns either way, so `auc` sums the same float64 array).
The release crashes where this transcription raises (constant map: `np.arange` with a zero
step; one kept row: `auc` needs two points) and returns NaN where all kept FPRs are 0.
"""
from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from skimage import measure
from sklearn.metrics import auc, average_precision_score, roc_auc_score


def release_compute_pro(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200):
    """PRO of the images in `amaps` (1, H, W) against `masks` (1, H, W) of 0/1, as the release."""
    assert amaps.ndim == 3 and masks.ndim == 3 and amaps.shape == masks.shape
    assert set(masks.flatten()) == {0, 1}
    min_th = amaps.min()
    max_th = amaps.max()
    delta = (max_th - min_th) / num_th
    regions = [[(r.coords[:, 0], r.coords[:, 1], r.area) for r in measure.regionprops(measure.label(mask))]
               for mask in masks]
    inverse_masks = 1 - masks
    n_normal = inverse_masks.sum()
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    rows = []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th] = 0
        binary_amaps[amaps > th] = 1
        pros = []
        for binary_amap, props in zip(binary_amaps, regions):
            for axes0_ids, axes1_ids, area in props:
                tp_pixels = binary_amap[axes0_ids, axes1_ids].sum()
                pros.append(tp_pixels / area)
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        rows.append([statistics.mean(pros), fp_pixels / n_normal, th])
    df = pd.DataFrame(rows, columns=["pro", "fpr", "threshold"])
    df = df[df["fpr"] < 0.3]
    df["fpr"] = df["fpr"] / df["fpr"].max()
    return auc(df["fpr"], df["pro"])


def release_evaluate(maps, masks, labels=None) -> dict:
    """The release's per-category numbers for raw maps (N, H, W), masks (N, H, W), labels (N,).

    Returns {"raw": {...}, "rounded": {...}} with keys p_auroc, i_auroc, au_pro, p_ap:
    the values the release computes, before and after its `round(x, 3)`.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=np.float64)
    if labels is None:
        labels = masks.reshape(len(masks), -1).max(axis=1) > 0.5
    gt_list_px, pr_list_px, gt_list_sp, pr_list_sp, aupro_list = [], [], [], [], []
    for raw, target, label in zip(maps, masks, labels):
        anomaly_map = np.zeros(raw.shape)            # float64, as cal_anomaly_map starts it
        anomaly_map += raw
        anomaly_map = gaussian_filter(anomaly_map, sigma=4)
        target = target.copy()
        target[target > 0.5] = 1
        target[target <= 0.5] = 0
        if int(label) != 0:
            aupro_list.append(release_compute_pro(target[np.newaxis].astype(int),
                                                  anomaly_map[np.newaxis, :, :]))
        gt_list_px.extend(target.astype(int).ravel())
        pr_list_px.extend(anomaly_map.ravel())
        gt_list_sp.append(np.max(target.astype(int)))
        pr_list_sp.append(np.max(anomaly_map))
    raw = {
        "p_auroc": roc_auc_score(gt_list_px, pr_list_px),
        "i_auroc": roc_auc_score(gt_list_sp, pr_list_sp),
        "au_pro": np.mean(aupro_list),
        "p_ap": average_precision_score(gt_list_px, pr_list_px),
    }
    return {"raw": raw, "rounded": {k: round(v, 3) for k, v in raw.items()}}
