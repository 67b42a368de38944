"""Experiment trackers for `threecad bench --logger tensorboard|mlflow`, through each project's own client.

Why: a study of many (method, category) pairs runs for hours; people follow such runs in
the tracker they already use, with every pair's curves side by side. The run directory stays
the record (results.json, losses/<ABBR>.csv); a tracker is a second view of the same numbers,
so nothing here is read back by threecad.

One tracker run per (method, category), tagged with the method, the category, the run id
and the study; it gets the config, the per-epoch losses (a `LoopResult.history` row each)
and the final metrics:
- tensorboard: `torch.utils.tensorboard.SummaryWriter` event files under
  `<root>/tensorboard/<method>/<ABBR>/`; scalars `train/<name>`, `val/loss`, `test/<metric>`
  (step = epoch; metrics at the last epoch), the config and tags as text.
- mlflow: `mlflow.tracking.MlflowClient` on a local file store `<root>/mlruns` (or on
  `$MLFLOW_TRACKING_URI` when it is set: a team's server), one experiment named after the
  study (else the run id); config fields as params, the same metric names. MLflow 3 keeps
  its file store only on request (MLFLOW_ALLOW_FILE_STORE), so it is requested for this
  process unless the variable is set already.

`root` is the study directory in a sweep (one logdir / store shows every method) and the run
directory otherwise. Each package is optional: `check_logger` (called before anything is
written) refuses a tracker that is not installed in one line saying what to pip install.
"""
from __future__ import annotations

import abc
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from threecad.errors import ThreecadError
from threecad.fsutil import ensure_dir

log = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "mlflow")
_INSTALL = {  # the import that proves the client is there, and what to install
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install mlflow (or mlflow-skinny)"),
}
MLFLOW_PARAM_CHUNK = 100  # params per log_batch call (MLflow's limit per request)
MLFLOW_VALUE_MAX = 500  # longest param value every MLflow version accepts


@dataclass(frozen=True)
class RunTags:
    """What names one tracker run."""

    method: str
    category: str  # abbreviation
    run_id: str  # the run directory's run id (results.json)
    study: str | None = None  # the study directory's name when the run is part of a sweep

    def as_dict(self) -> dict[str, str]:
        out = {"method": self.method, "category": self.category, "run_id": self.run_id}
        if self.study:
            out["study"] = self.study
        return out


def metric_name(key: str) -> str:
    """A history column as a tracker scalar: `train_dis` -> `train/dis`, `val_loss`/`val` -> `val/loss`."""
    if key == "val":
        return "val/loss"
    for prefix in ("train_", "val_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"


def check_logger(kind: str | None) -> None:
    """Refuse an unknown tracker, or one whose package is not installed (before any write)."""
    if kind is None:
        return
    if kind not in LOGGERS:
        raise ThreecadError(f"unknown --logger '{kind}'; valid: {', '.join(LOGGERS)}")
    module, install = _INSTALL[kind]
    if importlib.util.find_spec(module) is None:
        raise ThreecadError(f"--logger {kind} needs the {module} package, which is not installed: {install}")


def start_run(kind: str | None, root: str | Path, tags: RunTags,
              config: Mapping[str, Any]) -> "ExperimentLogger | None":
    """A started tracker run for one (method, category), or None when no tracker was asked for."""
    if kind is None:
        return None
    check_logger(kind)
    logger = {"tensorboard": TensorBoardLogger, "mlflow": MlflowLogger}[kind](Path(root))
    logger.start(tags, config)
    return logger


class ExperimentLogger(abc.ABC):
    """One tracker run: `start`, then `log_epoch` per epoch and `log_metrics` once, then `close`."""

    kind: ClassVar[str]

    def __init__(self, root: Path):
        self.root = Path(root)
        self.last_epoch = 0

    @abc.abstractmethod
    def start(self, tags: RunTags, config: Mapping[str, Any]) -> None:
        """Open the run and record its tags and config."""

    @abc.abstractmethod
    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write named scalars at `step`."""

    @abc.abstractmethod
    def close(self, status: str = "ok") -> None:
        """Flush and end the run; `status` "failed" marks it so where the tracker can."""

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """One history row: `epoch` and the epoch's losses by column name."""
        epoch = int(row["epoch"])
        values = {metric_name(k): float(v) for k, v in row.items() if k != "epoch" and v is not None}
        self._scalars(values, epoch)
        self.last_epoch = max(self.last_epoch, epoch)

    def log_history(self, history: Iterable[Mapping[str, Any]] | None) -> None:
        for row in history or ():
            self.log_epoch(row)

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """The category's final metrics as `test/<name>` at the last epoch logged; None (a metric
        the data cannot define) is left out."""
        values = {f"test/{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._scalars(values, self.last_epoch)

    def __enter__(self) -> "ExperimentLogger":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        self.close("failed" if exc_type is not None else "ok")


def _config_text(tags: RunTags, config: Mapping[str, Any]) -> str:
    return (" ".join(f"**{k}**: `{v}`" for k, v in tags.as_dict().items()) + "\n\n"
            "```json\n" + json.dumps(dict(config), indent=2, sort_keys=True, default=str) + "\n```")


class TensorBoardLogger(ExperimentLogger):
    kind = "tensorboard"

    def __init__(self, root: Path):
        super().__init__(root)
        self.writer = None
        self.log_dir: Path | None = None

    def start(self, tags: RunTags, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = self.root / "tensorboard" / tags.method / tags.category
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", _config_text(tags, config), global_step=0)
        for key, value in tags.as_dict().items():
            self.writer.add_text(f"tags/{key}", value, global_step=0)

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self, status: str = "ok") -> None:
        if self.writer is None:
            return
        self.writer.add_text("tags/status", status, global_step=self.last_epoch)
        self.writer.flush()
        self.writer.close()
        self.writer = None


class MlflowLogger(ExperimentLogger):
    kind = "mlflow"

    def __init__(self, root: Path):
        super().__init__(root)
        self.client = None
        self.run_id: str | None = None

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or (self.root / "mlruns").resolve().as_uri()

    def start(self, tags: RunTags, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            ensure_dir(self.root / "mlruns")
        self.client = MlflowClient(tracking_uri=uri)
        name = f"threecad/{tags.study or tags.run_id}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except Exception:  # noqa: BLE001 - another rank created it first: use theirs
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        run_tags = {f"threecad.{k}": v for k, v in tags.as_dict().items()}
        run_tags["mlflow.runName"] = f"{tags.method}/{tags.category}"
        run = self.client.create_run(experiment_id, tags=run_tags)
        self.run_id = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in sorted(config.items())]
        for i in range(0, len(params), MLFLOW_PARAM_CHUNK):
            self.client.log_batch(self.run_id, params=params[i:i + MLFLOW_PARAM_CHUNK])

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "ok") -> None:
        if self.client is None or self.run_id is None:
            return
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "ok" else "FAILED")
        self.client = None


def _param_value(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= MLFLOW_VALUE_MAX else text[:MLFLOW_VALUE_MAX - 3] + "..."
