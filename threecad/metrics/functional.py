"""One-call exact metrics on whole arrays (no accumulation).

Why separate from the Evaluator: a single number on data in memory, with errors raised
(not reported) when the data cannot define it, e.g. a batch without any defect pixel.
All of them are exact; maps (N, H, W) and masks (N, H, W) as in the Evaluator.
"""
from __future__ import annotations

from threecad.errors import ThreecadError
from threecad.metrics import curves
from threecad.metrics.curves import Levels
from threecad.metrics.exact import ExactPixelRanking, levels_from_scores
from threecad.metrics.inputs import as_binary, as_maps, as_masks, as_scores, to_numpy
from threecad.metrics.regions import label_regions


def _pixel_levels(maps, masks, with_regions: bool = False) -> Levels:
    m = as_maps(maps)
    k = as_masks(masks, m.shape)
    ranking = ExactPixelRanking(n_size=1 if with_regions else 0)
    ranking.add(m, k, label_regions(k, ()) if with_regions else None)
    return ranking.levels()


def _image_levels(scores, labels) -> Levels:
    s = to_numpy(scores, "scores").reshape(-1)
    s = as_scores(s, len(s))
    y = as_binary(to_numpy(labels, "labels").reshape(-1), "labels", what="labels")
    if len(y) != len(s):
        raise ThreecadError(f"metrics: {len(s)} scores but {len(y)} labels; give one label per score")
    return levels_from_scores(s, y)


def pixel_auroc(maps, masks) -> float:
    """P-AUROC over all pixels; equals sklearn roc_auc_score(masks.ravel(), maps.ravel())."""
    return curves.auroc(_pixel_levels(maps, masks))


def pixel_ap(maps, masks) -> float:
    """P-AP over all pixels; equals sklearn average_precision_score."""
    return curves.average_precision(_pixel_levels(maps, masks))


def pixel_f1max(maps, masks) -> float:
    """Best pixel F1 over all thresholds."""
    return curves.f1_max(_pixel_levels(maps, masks))


def au_pro(maps, masks, limit: float = 0.3) -> float:
    """AU-PRO up to FPR `limit`, normalized to [0, 1] (MVTec AD definition, 8-connected regions)."""
    curves.check_limit(limit)
    return curves.au_pro(_pixel_levels(maps, masks, with_regions=True), limit)


def image_auroc(scores, labels) -> float:
    """I-AUROC; equals sklearn roc_auc_score(labels, scores)."""
    return curves.auroc(_image_levels(scores, labels), what="image")


def image_ap(scores, labels) -> float:
    """I-AP; equals sklearn average_precision_score(labels, scores)."""
    return curves.average_precision(_image_levels(scores, labels), what="image")


def image_f1max(scores, labels) -> float:
    """Best image F1 over all thresholds."""
    return curves.f1_max(_image_levels(scores, labels), what="image")


def f1_max(scores, labels) -> float:
    """Best F1 over all thresholds for any binary problem (inputs flattened)."""
    return curves.f1_max(_image_levels(scores, labels), what="sample")
