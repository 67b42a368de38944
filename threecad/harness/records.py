"""What a finished category leaves behind: its record, its picture, its loss history and
curve, and its tracker run.

Kept apart from the fit and the evaluation so that a per-category fit and a unified fit
(whose loss history is written once, before any category is evaluated) record the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from threecad.catalog import Category
from threecad.harness import devices
from threecad.harness.evaluation import Evaluation
from threecad.harness.loggers import RunTags, start_run
from threecad.harness.losscurves import read_loss_csv, write_loss_history
from threecad.harness.prepare import BenchSpec, Plan
from threecad.harness.rundir import RunDir
from threecad.method import Method
from threecad.metrics.protocols import recorded_postprocess
from threecad.saved_run import threshold_at


def category_record(method: Method, post, cat: Category, ev: Evaluation, spec: BenchSpec, run: RunDir, *,
                    fit_s: float, memory: dict[str, Any], n_train: int, n_val: int, n_test: int,
                    checkpoint: Path, losses: dict[str, str | None] | None = None,
                    calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The category's record (pictures and loss curves written): what categories/<ABBR>.json holds.

    `losses`: the paths of a loss history written before (a unified fit's), else this
    category's fit's history is written now."""
    if spec.pictures > 0:
        threshold = threshold_at(calibration["scores"]) if calibration and calibration.get("scores") else None
        ev.hardest.render(run.picture_file(cat.abbreviation), f"{method.name} on {cat.abbreviation} ({cat.folder})",
                          threshold=threshold)
    if losses is None:
        losses = write_losses(method, run, cat.abbreviation, spec)
    return {
        "status": "ok", "metrics": ev.metrics, "notes": ev.notes, "breakdowns": jsonable(ev.breakdowns),
        "timings": {"fit_s": fit_s, "infer_images_per_s": ev.infer_images_per_s},
        "memory": memory,
        "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "metrics_mode": ev.mode, "method_info": jsonable(method.info()),
        "preprocess": method.preprocess().as_dict(),
        "predictions": ev.predictions,  # what the metrics were computed from (threecad.harness.predictions)
        "postprocess": recorded_postprocess(spec.protocol, post),
        "checkpoint": str(checkpoint.relative_to(run.path)),
        "picture": str(run.picture_file(cat.abbreviation).relative_to(run.path)) if spec.pictures > 0 else None,
        # held-out good images' scores, for a decision threshold (threecad predict); None without a val split
        "threshold_calibration": calibration,
        **losses,
    }


def write_losses(method: Method, run: RunDir, label: str, spec: BenchSpec) -> dict[str, str | None]:
    """losses/<label>.csv and its curve (pictures/<label>-losses.png, unless --pictures 0) of a
    fit that ran epochs; the record's `losses` and `loss_curve` paths (None without epochs)."""
    written = write_loss_history(run.path, label, method.loss_history(),
                                 title=f"{method.name} on {label}: loss per epoch",
                                 selected_epoch=method.selected_epoch(), picture=spec.pictures > 0)
    if written is None:
        return {"losses": None, "loss_curve": None}
    csv_path, png_path = written
    return {"losses": str(csv_path.relative_to(run.path)),
            "loss_curve": str(png_path.relative_to(run.path)) if png_path is not None else None}


def log_to_tracker(plan: Plan, spec: BenchSpec, run: RunDir, abbr: str, record: dict[str, Any]) -> None:
    """--logger: one tracker run per (method, category): config, per-epoch losses, metrics."""
    if not spec.logger:
        return
    root = spec.study if spec.study is not None else run.path
    tags = RunTags(plan.method_cls.name, abbr, str(plan.run_spec.get("run_id", "")),
                   spec.study.name if spec.study is not None else None)
    history = read_loss_csv(run.path / record["losses"]).rows() if record.get("losses") else []
    with start_run(spec.logger, root, tags, plan.run_spec["config"]) as tracker:
        tracker.log_history(history)
        tracker.log_metrics(record["metrics"])


def environment_facts() -> dict[str, Any]:
    """What results.json records of the machine and code that produced it."""
    return {"versions": devices.versions(), "code_revision": devices.code_revision(),
            "hardware": devices.hardware(torch.device("cuda" if torch.cuda.is_available() else "cpu"))}


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
