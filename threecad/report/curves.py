"""ROC and PRO curves of one category, from what the run kept: its stored predictions and,
for the pixel curves, the dataset root's masks.

Why from stored predictions: they are what the metrics were computed from, so a curve's area
is the recorded number (the same image-score rule, `ranking_scores`, and under 3cad-paper the
same blur) and nothing is predicted again. The masks are not in the run: they are read from
the dataset root run.json records (or `threecad report --root`), and only when each one is the
file the run saw (its xxh3 digest); otherwise the pixel curves are left out with a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from threecad.errors import ThreecadError
from threecad.metrics import curves
from threecad.metrics.curves import Levels, UndefinedMetric
from threecad.metrics.exact import ExactPixelRanking, levels_from_scores
from threecad.metrics.protocols import PAPER, paper_blur, ranking_scores
from threecad.metrics.regions import label_regions
from threecad.metrics.streaming import StreamingPixelHistogram

PRO_LIMIT = 0.3  # the FPR up to which AU-PRO integrates (the Evaluator's default)
CHUNK = 32  # stored maps read at a time


@dataclass
class Curve:
    x: np.ndarray  # false-positive rate, from 0
    y: np.ndarray  # true-positive rate (ROC) or mean region overlap (PRO)
    area: float    # AUROC, or AU-PRO up to PRO_LIMIT (normalised)


@dataclass
class CategoryCurves:
    image_roc: Curve | None = None
    pixel_roc: Curve | None = None
    pro: Curve | None = None
    notes: list[str] = field(default_factory=list)


def roc(lv: Levels, what: str) -> Curve:
    """The ROC curve through every level, from (0, 0), and its area (curves.auroc)."""
    area = curves.auroc(lv, what)
    fpr = np.concatenate([[0.0], np.cumsum(lv.neg) / lv.n_neg])
    tpr = np.concatenate([[0.0], np.cumsum(lv.pos) / lv.n_pos])
    return Curve(fpr, tpr, area)


def pro(lv: Levels) -> Curve:
    """The PRO curve AU-PRO integrates (MVTec AD definition), and AU-PRO up to PRO_LIMIT."""
    area = curves.au_pro(lv, PRO_LIMIT)
    fpr, overlap = curves._pro_curve(lv, None)
    return Curve(fpr, overlap, area)


class GroundTruth:
    """The masks of a dataset root, scanned once for all categories of a report."""

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root).expanduser()
        self._table = None
        self._error = "" if root is not None else "run.json records no dataset root"

    def _scan(self):
        from threecad.layout import scan_root

        if self._table is None and not self._error:
            try:
                self._table = scan_root(self.root).table
            except (ThreecadError, OSError) as exc:
                self._error = str(exc)
        return self._table

    def mask_files(self, abbr: str, kept: dict[str, np.ndarray]) -> tuple[list | None, str]:
        """The mask file of every stored map, in order (NaN for a good image), or (None, why not):
        each must be the file the run saw."""
        from threecad.harness.predictions import file_xxh3

        table = self._scan()
        if table is None:
            return None, f"the dataset root cannot be read ({self._error})"
        rows = table[(table["category"] == abbr) & (table["split"] == "test")]
        by_path = {Path(p).resolve(): m for p, m in zip(rows["image_path"], rows["mask_path"])}
        out = []
        try:
            for rel, digest in zip(kept["paths"], kept["mask_xxh3"]):
                path = (self.root / str(rel)).resolve()
                if path not in by_path:
                    return None, f"{self.root} has no test image {rel}"
                if file_xxh3(by_path[path]) != str(digest):
                    return None, f"the mask of {rel} under {self.root} is not the file the run saw"
                out.append(by_path[path])
        except OSError as exc:
            return None, f"the masks under {self.root} cannot be read ({exc})"
        return out, ""


def category_curves(run_path: Path, record: dict[str, Any], protocol: str, abbr: str,
                    truth: GroundTruth) -> CategoryCurves:
    """The category's curves; what cannot be drawn is a note, never an error.

    The maps are read CHUNK images at a time, and the pixel levels are counted in the run's
    metrics mode, so that the report needs no more memory than the run's evaluation did.
    """
    from threecad.dataset import load_mask
    from threecad.harness.predictions import load_predictions
    from threecad.preprocess import Preprocess

    out = CategoryCurves()
    entry = record.get("predictions")
    if not entry:
        out.notes.append("the run kept no predictions for this category (made before runs kept them): no curves")
        return out
    try:
        kept = load_predictions(run_path, entry)
    except (OSError, ValueError, KeyError) as exc:
        out.notes.append(f"the stored predictions cannot be read ({exc}): no curves")
        return out
    maps, stored = kept["maps"], kept["scores"]
    stored = None if np.isnan(stored).all() else stored
    files, why = truth.mask_files(abbr, kept)
    pixels = None
    if files is not None:
        pixels = ExactPixelRanking(1) if record.get("metrics_mode", "exact") == "exact" else StreamingPixelHistogram(1)
    scores = []
    for start in range(0, len(maps), CHUNK):
        chunk = np.asarray(maps[start:start + CHUNK])
        scores.append(ranking_scores(protocol, None if stored is None else stored[start:start + CHUNK], chunk))
        if pixels is None:
            continue
        try:
            pre = Preprocess(**record["preprocess"])
            masks = np.stack([load_mask(f, pre, chunk.shape[-1])[0] for f in files[start:start + CHUNK]]) > 0
        except (ThreecadError, OSError, KeyError, TypeError) as exc:
            pixels, why = None, f"the masks under {truth.root} cannot be read ({exc})"
            continue
        pixels.add(paper_blur(chunk) if protocol == PAPER else chunk, masks, label_regions(masks, ()))
    labels = kept["labels"].astype(bool)
    try:
        out.image_roc = roc(levels_from_scores(np.concatenate(scores).astype(np.float64), labels), "image")
    except UndefinedMetric as exc:
        out.notes.append(f"image ROC: {str(exc).removeprefix('metrics: ')}")
    if pixels is None:
        out.notes.append(f"pixel ROC and PRO curves left out: {why}")
        return out
    lv = pixels.levels()
    for name, make in (("pixel_roc", lambda: roc(lv, "pixel")), ("pro", lambda: pro(lv))):
        try:
            setattr(out, name, make())
        except UndefinedMetric as exc:
            out.notes.append(f"{name.replace('_', ' ')}: {str(exc).removeprefix('metrics: ')}")
    return out
