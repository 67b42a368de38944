"""`--track-test-every N`: what selecting an epoch on the test set would be worth, measured.

Why: several references (SimpleNet, RealNet, RD++, CRAD) publish the best epoch on the test
set; this harness keeps the last epoch (or the validation split's best), as a benchmark
must. To show the size of that gap instead of copying it, a run may evaluate the test split
every N epochs while it trains, for the record only: the curve is written beside the loss
curve and the best value on the test set is reported as `best_on_test`, marked as not a
valid result. Nothing here feeds back into training or selection: the random states are
restored after each evaluation, so the fit is the same with or without tracking, and the
time spent evaluating is not counted as fit time.

Where: `test_curves/<ABBR>.csv` (one row per evaluated epoch: the main metrics) and
`pictures/<ABBR>-test-curve.png`; the rows are also kept in the category's work folder so
that a resumed fit keeps the curve of the epochs before the interruption.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from threecad.fsutil import atomic_path, atomic_write_json, atomic_write_text
from threecad.harness.evaluation import evaluate
from threecad.harness.losscurves import DPI, LossHistory
from threecad.harness.prepare import BenchSpec
from threecad.training import rng_state, set_rng_state

CURVES_DIR = "test_curves"
WORK_FILE = "test_curve.json"
NOT_VALID = "selected on the test set: not a valid result, shown only to measure what such selection is worth"


class TestTracker:
    """The epoch hook (`Method.epoch_hook`) that evaluates the test split every `every` epochs."""

    __test__ = False  # a harness class, not a pytest test class

    def __init__(self, method, test, spec: BenchSpec, label: str, work_dir: Path, every: int):
        self.method, self.test, self.label, self.every = method, test, label, every
        self.spec = dataclasses.replace(spec, pictures=0)
        self.work_file = Path(work_dir) / WORK_FILE
        self.rows: dict[int, dict[str, float | None]] = {}
        if self.work_file.is_file():  # a resumed fit keeps the epochs evaluated before
            self.rows = {int(k): v for k, v in json.loads(self.work_file.read_text()).items()}
        self.seconds = 0.0

    def __call__(self, epoch: int, epochs: int) -> None:
        """After epoch `epoch` (1-based) of `epochs`: evaluate when it is due, and always after the last."""
        if epoch % self.every and epoch != epochs:
            return
        start = time.perf_counter()
        states = rng_state()  # the evaluation must not move training's random streams
        try:
            ev = evaluate(self.method, self.method.postprocess(), self.method.config, self.test,
                          self.method.device, self.spec, f"{self.label} test@{epoch}")
        finally:
            set_rng_state(states)
        self.rows[epoch] = dict(ev.metrics)
        atomic_write_json(self.work_file, {str(k): v for k, v in sorted(self.rows.items())})
        self.seconds += time.perf_counter() - start

    def summary(self) -> dict[str, Any]:
        """The record's `test_tracking`: the evaluated epochs and, per metric, the best on the test set."""
        best: dict[str, Any] = {}
        for metric in sorted({k for row in self.rows.values() for k in row}):
            values = [(v[metric], e) for e, v in sorted(self.rows.items())
                      if v.get(metric) is not None and math.isfinite(v[metric])]
            if values:
                value, epoch = max(values, key=lambda p: (p[0], -p[1]))  # the earliest epoch among ties
                best[metric] = {"value": value, "epoch": epoch}
        return {"every": self.every, "epochs": sorted(self.rows), "best_on_test": best, "note": NOT_VALID}

    def write(self, run_path: Path, abbr: str, picture: bool) -> dict[str, str | None]:
        """The curve as CSV (and PNG): the record's `test_curve` and `test_curve_picture` paths."""
        history = LossHistory.from_rows([{"epoch": e, **{k: v for k, v in row.items() if v is not None}}
                                         for e, row in sorted(self.rows.items())])
        csv_path = Path(run_path) / CURVES_DIR / f"{abbr}.csv"
        atomic_write_text(csv_path, history.to_csv())
        png_path = None
        if picture:
            png_path = Path(run_path) / "pictures" / f"{abbr}-test-curve.png"
            fig = _figure(history, f"{self.method.name} on {abbr}: test metrics while training (record only)")
            with atomic_path(png_path, suffix=".png") as tmp:
                fig.savefig(tmp, format="png", dpi=DPI)
        return {"test_curve": str(csv_path.relative_to(run_path)),
                "test_curve_picture": str(png_path.relative_to(run_path)) if png_path else None}


def _figure(history: LossHistory, title: str):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for key, values in history.columns.items():
        points = [(e, v) for e, v in zip(history.epochs, values) if v is not None and math.isfinite(v)]
        ax.plot([e for e, _ in points], [v for _, v in points], "-", marker="o" if len(history) <= 60 else None,
                markersize=3, linewidth=1.3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test metric")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncol=2)
    ax.set_title("never used for selection: the run keeps its last (or validation-best) epoch", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig
