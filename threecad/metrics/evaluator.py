"""Evaluator: feed batches of anomaly maps and masks, get every metric of one category.

    ev = Evaluator(protocol="standard", mode="streaming")
    for maps, masks, types in batches:          # numpy or torch (CPU or CUDA), (N, H, W)
        ev.update(maps, masks, defect_types=types)
    metrics = ev.compute()

Why an accumulator: the harness drops each predicted batch after feeding it, so the pixel
state is either every score (mode "exact": one ordering of all pixels at compute time,
equal to scikit-learn and MVTec AD) or a histogram of fixed size (mode "streaming":
see threecad.metrics.streaming for the bin placement and the error bound).  Image-level
state is one score, one label and one type per image in both modes (a few bytes each),
so image metrics are always exact.

Exact mode holds at most ``memory`` bytes (default 2 GB; None: no bound, every score in
memory): beyond what fits, normal scores go to sorted runs spilled to ``spill_dir`` (a
private folder inside it, default the system's temporary folder, removed afterwards), or,
with ``source`` (an (N, H, W) array or np.memmap holding the maps fed to update(), row for
row, such as a run's predictions/<ABBR>.maps.npy), are read back from there.  The numbers
are the same to the last bit either way (threecad.metrics.bounded says how);
``memory_note`` says in one line when the bounded path ran.  Under 3cad-paper the source
is not read: the Evaluator blurs the maps it is fed, and spills the blurred scores.

Under `standard` the maps are used as fed (the harness has applied the method's own
post-processing).  Under `3cad-paper` the maps must be RAW: the Evaluator blurs each one once
as the official release does (threecad.metrics.protocols) and computes every key below from
the blurred maps, breakdowns included; scores passed under 3cad-paper are ignored (the
release scores every image by the max of its blurred map, and so does the Evaluator).

Keys of compute() (one flat dict):

- ``protocol`` ("standard" | "3cad-paper"), ``mode`` ("exact" | "streaming").
- ``i_auroc``, ``i_ap``, ``i_f1max``: image level, from ``scores`` (default: max of the map;
  3cad-paper: always max of the blurred map).
- ``p_auroc``, ``p_ap``, ``p_f1max``: pixel level, all pixels of all images pooled.
- ``au_pro``: standard: MVTec AU-PRO up to FPR ``pro_limit`` (0.3), divided by the limit;
  3cad-paper: the official per-defective-image PRO averaged over defective images (it
  ignores false positives on good images).
  These seven are floats in [0, 1], or None when the data cannot define them, the reason
  being given in ``notes``.  Under 3cad-paper they are rounded to 3 decimals the release's
  way (I-AUROC, P-AUROC, P-AP by scikit-learn and PRO as the release computes them, so the
  same doubles are rounded); ``compute(unrounded=True)`` gives them before rounding.  Average
  categories with protocols.paper_category_mean.
- ``n_images``, ``n_defective_images``, ``n_pixels``, ``n_defect_pixels``, ``n_regions``.
- ``au_pro_size/<bin>``: MVTec AU-PRO (either protocol) with the PRO mean restricted to the
  regions whose area / image area falls in the bin; the FPR axis is unchanged.  Bins by
  default ``<0.1%``, ``0.1-1%``, ``>=1%``.  None when the bin has no region.
- ``n_regions_size/<bin>``: regions in the bin.
- ``region_recall_size/<bin>``: fraction of the bin's regions that have at least half of
  their pixels at or above the operating threshold, the lowest threshold whose FPR over
  normal pixels is at most ``recall_fpr`` (1 %).  None when the bin has no region.
- ``i_auroc_type/<type>``: I-AUROC of the defective images of that type against all good
  images; ``n_images_type/<type>``: defective images of that type.  Only when
  ``defect_types`` were given; None when there is no good image.
- ``notes``: "" or "; "-joined reasons for every None among the seven headline values.
- streaming only: ``p_auroc_err_bound``, ``p_ap_err_bound``, ``p_f1max_err_bound`` and
  (standard) ``au_pro_err_bound``: rigorous worst-case |streaming - exact| (absent when the
  metric is undefined; a bound above 1e-3 is also reported in ``notes``);
  ``stream_bins`` (occupied bins) and ``stream_state_mb`` (histogram memory).
- 3cad-paper only: ``n_pro_images``, the defective images that entered the PRO mean.

Edge cases: a category with only good images gives None for every image metric, pixel
metric and AU-PRO, with notes "no defective image/pixel"; constant maps are valid (ties:
AUROC 0.5, AP = prevalence, AU-PRO 0.15); NaN/inf in maps or scores, masks that are not
0/1, shapes that differ, and labels that contradict masks raise ThreecadError.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from threecad.errors import ThreecadError
from threecad.metrics import curves
from threecad.metrics.bounded import DEFAULT_MEMORY, BoundedPixelRanking
from threecad.metrics.curves import UndefinedMetric
from threecad.metrics.exact import ExactPixelRanking, levels_from_scores
from threecad.metrics.inputs import (as_binary, as_maps, as_masks, as_scores, as_types, as_vector,
                                     map_extremes)
from threecad.metrics.protocols import (PAPER, check_protocol, paper_blur, paper_image_pro,
                                        paper_round)
from threecad.metrics.regions import DEFAULT_SIZE_EDGES, check_size_edges, label_regions, size_labels
from threecad.metrics.streaming import StreamingPixelHistogram

log = logging.getLogger(__name__)

MODES = ("exact", "streaming")
HEADLINE = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "au_pro")
#: A streaming bound above this is flagged in `notes`.
BOUND_WARN = 1e-3


@dataclass(frozen=True)
class EvaluatorConfig:
    protocol: str = "standard"
    mode: str = "exact"
    pro_limit: float = 0.3
    size_edges: tuple[float, ...] = DEFAULT_SIZE_EDGES
    recall_fpr: float = 0.01
    stream_bits: int = 14
    stream_anchor: float | None = None
    memory: int | None = DEFAULT_MEMORY
    spill_dir: str | None = None

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        if self.mode not in MODES:
            raise ThreecadError(f"metrics: unknown mode {self.mode!r}; choose exact or streaming")
        if self.memory is not None and not self.memory > 0:
            raise ThreecadError(f"metrics: memory must be a positive number of bytes (or None); got {self.memory}")
        curves.check_limit(self.pro_limit)
        object.__setattr__(self, "size_edges", check_size_edges(self.size_edges))
        if not 0.0 <= self.recall_fpr <= 1.0:
            raise ThreecadError(f"metrics: recall_fpr must lie in [0, 1]; got {self.recall_fpr}")


class Evaluator:
    """Accumulates one category's test predictions; see the module docstring for the keys."""

    def __init__(self, protocol: str = "standard", mode: str = "exact", *, pro_limit: float = 0.3,
                 size_edges: Sequence[float] = DEFAULT_SIZE_EDGES, recall_fpr: float = 0.01,
                 stream_bits: int = 14, stream_anchor: float | None = None,
                 memory: int | None = DEFAULT_MEMORY, spill_dir=None, source=None) -> None:
        """memory (bytes or None), spill_dir, source: exact mode's bound (module docstring)."""
        self.config = EvaluatorConfig(protocol, mode, pro_limit, tuple(size_edges), recall_fpr,
                                      stream_bits, stream_anchor, None if memory is None else int(memory),
                                      None if spill_dir is None else str(spill_dir))
        self.source = source
        self.size_names = size_labels(self.config.size_edges)
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far."""
        c = self.config
        n_size = len(self.size_names)
        if c.mode == "streaming":
            self._pixels = StreamingPixelHistogram(n_size, c.stream_bits, c.stream_anchor)
        elif c.memory is None:
            self._pixels = ExactPixelRanking(n_size)
        else:   # a source holds the maps as fed: under 3cad-paper the Evaluator blurs them, so it spills
            self._pixels = BoundedPixelRanking(n_size, c.memory, c.spill_dir,
                                               self.source if c.protocol != PAPER else None)
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._types: list[str | None] = []
        self._paper_pro: list[float] = []
        self._ignored_scores = False
        self._n_pixels = 0
        self._n_defect_pixels = 0
        self._n_regions = 0

    @property
    def memory_note(self) -> str:
        """One line when the last compute() ranked the pixels in bounded memory (exact mode), else ""."""
        return getattr(self._pixels, "note", "")

    def update(self, maps, masks, scores=None, labels=None, defect_types: Sequence[str] | None = None) -> None:
        """Add one batch: maps float (N, H, W), masks bool or 0/1 of the same shape.

        scores: (N,) image scores, default max of the map (standard); ignored under
        3cad-paper (max of the blurred map).  labels: (N,) 0/1, default mask.any().
        defect_types: N names, "good" for good images, enabling the per-type breakdown.
        3cad-paper expects RAW maps and blurs them here, once.
        """
        m = as_maps(maps, check=False)
        k = as_masks(masks, m.shape)
        n = len(m)
        if n == 0:
            return
        paper = self.config.protocol == PAPER
        if paper:
            m = paper_blur(m)   # NaN/inf survive the blur and are refused below
            if scores is not None and not self._ignored_scores:
                self._ignored_scores = True
                log.info("3cad-paper scores every image by the max of its blurred map, as the "
                         "official release does; the image scores passed are ignored")
            scores = None
        scanning = getattr(self._pixels, "add_scanning", None)  # streaming: min/max found while counting
        if scanning is None:
            lo, hi = map_extremes(m)
        regions = label_regions(k, self.config.size_edges)
        has_defect = np.bincount(regions.image, minlength=n) > 0
        if labels is None:
            y = has_defect
        else:
            y = as_binary(as_vector(labels, n, "labels"), "labels", what="labels")
            bad = np.flatnonzero(~y & has_defect)
            if len(bad):
                raise ThreecadError(f"metrics: image {int(bad[0])} of this batch is labelled good but "
                                    "its mask has defect pixels; fix the labels or the mask")
        types = as_types(defect_types, n)
        if types is not None:
            bad = [i for i, t in enumerate(types) if t == "good" and y[i]]
            if bad:
                raise ThreecadError(f"metrics: image {bad[0]} of this batch has type 'good' but is "
                                    "defective (label or mask); fix its type or its mask")
        s = as_scores(scores, n) if scores is not None else None
        if scanning is None:
            self._pixels.add(m, k, regions, lo=lo.min(), hi=hi.max())
        else:
            lo, hi = scanning(m, k, regions)                    # refuses NaN/inf before counting
        if s is None:
            s = hi
        if paper:
            for i in np.flatnonzero(y):
                v = paper_image_pro(m[i], k[i])
                if v is not None:
                    self._paper_pro.append(v)
        self._scores.append(np.asarray(s, dtype=np.float64))
        self._labels.append(np.asarray(y, dtype=bool))
        self._types.extend(types if types is not None else [None] * n)
        self._n_pixels += m.size
        self._n_defect_pixels += len(regions.pixel_index)
        self._n_regions += regions.n_regions

    def compute(self, *, unrounded: bool = False) -> dict:
        """All metrics of what was fed so far (the state is kept: more updates may follow).

        unrounded: under 3cad-paper, the seven headline values before the release's rounding.
        """
        c = self.config
        paper = c.protocol == PAPER
        out: dict = {"protocol": c.protocol, "mode": c.mode}
        notes: list[str] = []

        def put(key: str, fn) -> None:
            try:
                out[key] = float(fn())
            except UndefinedMetric as exc:
                out[key] = None
                notes.append(f"{key}: {str(exc).removeprefix('metrics: ')}")

        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=bool)
        img = levels_from_scores(scores, labels)
        put("i_auroc", lambda: curves.auroc(img, "image"))
        put("i_ap", lambda: curves.average_precision(img, "image"))
        put("i_f1max", lambda: curves.f1_max(img, "image"))

        if c.mode == "streaming":
            lv = self._pixels.levels()
            pix = curves.summarize(lv, c.pro_limit, c.recall_fpr)
        else:
            pix = self._pixels.summary(c.pro_limit, c.recall_fpr)
        put("p_auroc", lambda: pix.get("p_auroc"))
        put("p_ap", lambda: pix.get("p_ap"))
        put("p_f1max", lambda: pix.get("p_f1max"))
        raw: dict = {}   # 3cad-paper: the objects the release rounds
        if paper:
            from sklearn.metrics import roc_auc_score  # the release's own

            out["n_pro_images"] = len(self._paper_pro)
            if self._paper_pro:
                raw["au_pro"] = np.mean(self._paper_pro)
            else:
                out["au_pro"] = None
                notes.append("au_pro: no defective image with both defect and normal pixels")
            if out["i_auroc"] is not None:
                raw["i_auroc"] = roc_auc_score(labels.astype(np.int64), scores)
            if c.mode == "exact" and (out["p_auroc"] is not None or out["p_ap"] is not None):
                raw.update(self._pixels.release_scores(auroc=out["p_auroc"] is not None,
                                                       ap=out["p_ap"] is not None))
            out.update({key: float(val) for key, val in raw.items()})
        else:
            put("au_pro", lambda: pix.get("au_pro"))

        out.update(n_images=len(labels), n_defective_images=int(labels.sum()), n_pixels=self._n_pixels,
                   n_defect_pixels=self._n_defect_pixels, n_regions=self._n_regions)
        self._size_breakdown(pix, out)
        self._type_breakdown(scores, labels, out)
        if c.mode == "streaming":
            self._stream_report(lv, out, notes)
        if paper and not unrounded:
            for key in HEADLINE:
                if out.get(key) is not None:
                    out[key] = float(paper_round(raw.get(key, out[key])))
        out["notes"] = "; ".join(notes)
        for note in notes:
            log.warning("%s", note)
        return out

    def _size_breakdown(self, pix: curves.PixelSummary, out: dict) -> None:
        for s, name in enumerate(self.size_names):
            out[f"n_regions_size/{name}"] = int(pix.n_regions[s])
            value = pix.au_pro_size[s]
            out[f"au_pro_size/{name}"] = None if isinstance(value, UndefinedMetric) else float(value)
            r = float(pix.region_recall[s])
            out[f"region_recall_size/{name}"] = None if math.isnan(r) else r

    def _type_breakdown(self, scores: np.ndarray, labels: np.ndarray, out: dict) -> None:
        if all(t is None for t in self._types):
            return
        types = np.array([t if t is not None else "" for t in self._types], dtype=object)
        good = scores[~labels]
        for name in sorted({t for t, y in zip(self._types, labels) if t and y}):
            pos = scores[(types == name) & labels]
            out[f"n_images_type/{name}"] = len(pos)
            out[f"i_auroc_type/{name}"] = (curves.auroc(levels_from_scores(
                np.concatenate([good, pos]), np.r_[np.zeros(len(good), bool), np.ones(len(pos), bool)]),
                "image") if len(good) else None)

    def _stream_report(self, lv: curves.Levels, out: dict, notes: list[str]) -> None:
        bounds = curves.streaming_error_bounds(lv, self.config.pro_limit)
        if self.config.protocol == PAPER:
            bounds.pop("au_pro", None)
        for key, val in bounds.items():
            out[f"{key}_err_bound"] = val
            if val > BOUND_WARN:
                notes.append(f"{key}: streaming error bound {val:.2g} exceeds {BOUND_WARN:g} (the bound "
                             "is worst-case; tied scores loosen it); use mode='exact' for a certain value")
        out["stream_bins"] = self._pixels.occupied_bins
        out["stream_state_mb"] = round(self._pixels.state_bytes / 2**20, 3)
