"""Evaluating a fitted method on one category's test set: every batch from the loader to the
Evaluator, in one loop.

Each batch is predicted (throughput timed after a warm-up batch, with device
synchronisation), given the protocol's treatment (threecad.metrics.protocols: the method's
post-processing under `standard`, raw maps under `3cad-paper`), resized to the evaluation
grid and streamed into the Evaluator; the hardest images are kept for the picture, ranked
by the score the protocol ranks them by.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from threecad.harness import devices
from threecad.harness.fitting import loader
from threecad.harness.predictions import PredictionWriter
from threecad.harness.pictures import HardestImages
from threecad.harness.prepare import BenchSpec
from threecad.harness.rundir import MAIN_METRICS
from threecad.metrics import Evaluator
from threecad.metrics.protocols import evaluator_inputs, ranking_scores
from threecad.method import Method
from threecad.progress import progress


log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """One category's test set, predicted and scored."""

    metrics: dict[str, Any]
    notes: str
    breakdowns: dict[str, Any]
    infer_images_per_s: float
    mode: str
    hardest: HardestImages
    predictions: dict[str, Any] | None = None  # the record's `predictions` entry, when kept


def evaluate(method: Method, post, config, test, device: torch.device, spec: BenchSpec, label: str,
             keep: tuple[Path, str] | None = None) -> Evaluation:
    """Predict the test set, streamed into the Evaluator (throughput timed after a warm-up batch).

    With `keep` (run folder, category), the predictions the metrics are computed from are
    written beside the run (threecad.harness.predictions)."""
    protocol, eval_size = spec.protocol, spec.eval_size
    # `auto` is exact: exact metrics keep to --metrics-memory at any size (threecad.metrics.bounded)
    mode = "exact" if spec.metrics_mode == "auto" else spec.metrics_mode
    hardest = HardestImages(spec.pictures)
    test_loader = loader(test, config.batch_size, device, False, config.seed)
    writer = PredictionWriter(keep[0], keep[1], test, eval_size) if keep is not None else None
    # beyond the budget, exact metrics rank sorted runs spilled beside the run, or re-read the kept maps
    evaluator = Evaluator(protocol=protocol, mode=mode, memory=int(spec.metrics_memory * 1e9),
                          spill_dir=keep[0] if keep is not None else None,
                          source=writer.maps if writer is not None else None)
    try:
        computed = _stream(method, post, test_loader, device, evaluator, hardest, protocol, eval_size, label, writer)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if evaluator.memory_note:
        log.info("%s: %s", label, evaluator.memory_note)
    kept = writer.close() if writer is not None else None
    # None: the data cannot define the metric (e.g. no defect pixel at all); `notes` says why
    metrics = {k: None if computed[k] is None else float(computed[k]) for k in MAIN_METRICS if k in computed}
    infer_s, infer_n = computed.pop("_infer")
    notes = str(computed.get("notes") or "")
    if getattr(test, "labels_only", False):  # said once, instead of each pixel metric's "no defective pixel"
        notes = "image-level labels only (no ground_truth/ folder): pixel metrics are not available"
    return Evaluation(metrics=metrics, notes=notes,
                      breakdowns={k: v for k, v in computed.items() if k not in MAIN_METRICS and k != "notes"},
                      infer_images_per_s=infer_n / infer_s if infer_s > 0 else float("nan"), mode=mode,
                      hardest=hardest, predictions=kept)


def calibration(method: Method, post, config, val, device: torch.device, spec: BenchSpec) -> dict[str, Any] | None:
    """The image scores of the held-out good training images (the validation split), from which
    `threecad predict` sets a decision threshold at a chosen false-positive rate without ever
    looking at the test set; None without a validation split."""
    if val is None or len(val) == 0:
        return None
    scores: list[float] = []
    for batch in loader(val, config.batch_size, device, False, config.seed):
        s, maps = score_batch(method, post, spec.protocol, batch["image"].to(device, non_blocking=True),
                              spec.eval_size)
        scores += [float(v) for v in ranking_scores(spec.protocol, s, maps)]
    return {"source": "validation split: good training images held out of the fit", "images": len(scores),
            "scores": scores}


def score_batch(method: Method, post, protocol: str, images: torch.Tensor, eval_size: int
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(scores or None, maps (N, eval_size, eval_size)) on the CPU, float32, as the metrics take them:
    `predict`, the protocol's treatment (the method's post-processing under `standard`), the
    resize to the evaluation grid. `threecad predict` scores images through this same function."""
    with torch.inference_mode():
        scores, maps = method.predict(images)
        scores, maps = evaluator_inputs(protocol, scores, maps.float(), post)
        maps = F.interpolate(maps[:, None], size=(eval_size, eval_size), mode="bilinear", align_corners=False)[:, 0]
        return (None if scores is None else scores.float().cpu()), maps.cpu()


def _stream(method, post, test_loader, device, evaluator, hardest, protocol, eval_size, label,
            writer: PredictionWriter | None) -> dict[str, Any]:
    """Every test batch: predicted, post-processed, kept (with `writer`) and fed to the Evaluator."""
    infer_s, infer_n = 0.0, 0
    for i, batch in enumerate(progress(test_loader, desc=f"{label} test", unit="batch")):
        images = batch["image"]
        devices.synchronize(device)
        t1 = time.perf_counter()
        x = images.to(device, non_blocking=True)  # through the method's preprocess, as in training
        scores, maps = score_batch(method, post, protocol, x, eval_size)
        devices.synchronize(device)
        if i > 0 or len(test_loader) == 1:  # the first batch is warm-up
            infer_s += time.perf_counter() - t1
            infer_n += len(images)
        masks = batch["mask"][:, 0] > 0.5
        if writer is not None:
            writer.add(maps.numpy(), None if scores is None else scores.numpy(), batch["label"].tolist(),
                       batch["defect_type"], batch["path"])
        evaluator.update(maps, masks, scores=scores, labels=batch["label"],
                         defect_types=list(batch["defect_type"]))
        hardest.update(images, maps, masks, ranking_scores(protocol, scores, maps), batch["label"],
                       list(batch["path"]))
    computed = evaluator.compute()
    computed["_infer"] = (infer_s, infer_n)
    return computed
