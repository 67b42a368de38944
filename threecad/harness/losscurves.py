"""A trained category's per-epoch losses, written as a CSV and a loss-curve picture.

Why files and not only JSON: a paper-preset study trains for hours, and the person
following it should see how training went by opening a spreadsheet or a picture. The
history comes from the epoch loop (`threecad.training.LoopResult.history`): one dict per
epoch with `epoch` (1-based), the epoch's mean of each training loss (`train_<name>`,
`train_loss` their sum) and `val_loss` (or `val`) when the fit selects on the validation
split. Methods without epochs (memory banks) have no history, and nothing is written.

Where (beside the run directory's other files):
  losses/<ABBR>.csv            one row per epoch, `epoch` first, then the train columns
                               (`train_loss` first) and the validation ones; an empty cell
                               where an epoch lacks a value; numbers round-trip exactly
  pictures/<ABBR>-losses.png   the curves: the total (train and validation) on the left, the
                               loss terms on the right; a log axis when a panel's values are
                               positive and span at least a decade
"""
from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from threecad.errors import ThreecadError
from threecad.fsutil import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

LOSSES_DIR = "losses"
TOTAL_KEYS = ("train_loss", "val_loss", "val")  # the left panel; every other column is a term
LOG_SPAN = 10.0  # max / min of a panel's positive values from which its axis is logarithmic
DPI = 110


def loss_csv_file(run_path: str | Path, abbr: str) -> Path:
    return Path(run_path) / LOSSES_DIR / f"{abbr}.csv"


def loss_curve_file(run_path: str | Path, abbr: str) -> Path:
    return Path(run_path) / "pictures" / f"{abbr}-losses.png"


@dataclass
class LossHistory:
    """Per-epoch values by column name, epochs ascending (checked by `from_rows`)."""

    epochs: list[int]
    columns: dict[str, list[float | None]]  # name -> one value (or None) per epoch

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> "LossHistory":
        """From LoopResult.history; a row without `epoch`, a non-number or an epoch out of order
        is refused (a ThreecadError naming it): the CSV must not invent or reorder epochs."""
        rows = list(rows)
        epochs: list[int] = []
        names: list[str] = []
        for i, row in enumerate(rows):
            if "epoch" not in row:
                raise ThreecadError(f"loss history row {i + 1} has no 'epoch'")
            epoch = row["epoch"]
            if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or int(epoch) != epoch:
                raise ThreecadError(f"loss history row {i + 1}: epoch {epoch!r} is not a whole number")
            if epochs and int(epoch) <= epochs[-1]:
                raise ThreecadError(f"loss history row {i + 1}: epoch {int(epoch)} after epoch {epochs[-1]}")
            epochs.append(int(epoch))
            for key, value in row.items():
                if key == "epoch":
                    continue
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ThreecadError(f"loss history epoch {int(epoch)}: {key}={value!r} is not a number")
                if key not in names:
                    names.append(key)
        order = sorted(names, key=lambda k: (_group(k), k != "train_loss", names.index(k)))
        columns = {k: [None if r.get(k) is None else float(r[k]) for r in rows] for k in order}
        return cls(epochs=epochs, columns=columns)

    def __len__(self) -> int:
        return len(self.epochs)

    def rows(self) -> list[dict[str, float]]:
        """Back to LoopResult.history's shape: one dict per epoch, absent values left out."""
        return [{"epoch": epoch, **{k: v[i] for k, v in self.columns.items() if v[i] is not None}}
                for i, epoch in enumerate(self.epochs)]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["epoch", *self.columns])
        for i, epoch in enumerate(self.epochs):
            writer.writerow([epoch, *("" if v[i] is None else repr(v[i]) for v in self.columns.values())])
        return buf.getvalue()


def _group(key: str) -> int:
    """Column order: train losses, then validation, then anything else the loop recorded."""
    if key.startswith("train_"):
        return 0
    if key == "val" or key.startswith("val_"):
        return 1
    return 2


def label(key: str) -> str:
    """How a column is named in a legend: `train_dis` -> `train dis`, `val` -> `val loss`."""
    if key == "val":
        return "val loss"
    return key.replace("_", " ", 1)


def read_loss_csv(path: str | Path) -> LossHistory:
    """A CSV written by `write_loss_history`, read back (empty cells are None)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or header[0] != "epoch":
            raise ThreecadError(f"{path} is not a loss history (its first column is not 'epoch')")
        rows = [{"epoch": int(r[0]), **{k: float(v) for k, v in zip(header[1:], r[1:]) if v != ""}}
                for r in reader]
    history = LossHistory.from_rows(rows)
    history.columns = {k: history.columns.get(k, [None] * len(history)) for k in header[1:]}
    return history


def uses_log_scale(values: Iterable[float | None]) -> bool:
    """True when every finite value is positive and they span at least LOG_SPAN."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or min(finite) <= 0:
        return False
    return max(finite) / min(finite) >= LOG_SPAN


def write_loss_history(run_path: str | Path, abbr: str, history: Sequence[Mapping[str, Any]] | None, *,
                       title: str, selected_epoch: int | None = None,
                       picture: bool = True) -> tuple[Path, Path | None] | None:
    """Write `losses/<abbr>.csv` and (with `picture`) `pictures/<abbr>-losses.png`, both atomic;
    None when the method has no epochs (no history: nothing is written). Returns (csv path,
    png path or None)."""
    if not history:
        return None
    parsed = LossHistory.from_rows(history)
    csv_path = loss_csv_file(run_path, abbr)
    atomic_write_text(csv_path, parsed.to_csv())
    png_path = render_loss_curves(parsed, loss_curve_file(run_path, abbr), title, selected_epoch) if picture else None
    log.debug("%s: loss history of %d epochs in %s and %s", abbr, len(parsed), csv_path, png_path)
    return csv_path, png_path


def render_loss_curves(history: LossHistory, path: str | Path, title: str,
                       selected_epoch: int | None = None) -> Path:
    """Write `loss_figure` as a PNG, atomically."""
    fig = loss_figure(history, title, selected_epoch)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def loss_figure(history: LossHistory, title: str, selected_epoch: int | None = None):
    """The loss curves (a matplotlib Figure, no pyplot state): totals on the left, loss terms
    (when any) on the right; validation dashed; non-finite values left out."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    totals = {k: v for k, v in history.columns.items() if k in TOTAL_KEYS}
    terms = {k: v for k, v in history.columns.items() if k not in TOTAL_KEYS}
    if not totals:  # a loop that reports only named terms: they are the story
        totals, terms = terms, {}
    panels = [("loss", totals)] + ([("loss terms (train, per epoch)", terms)] if terms else [])
    fig = Figure(figsize=(6.0 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    markers = len(history) <= 60
    for ax, (name, series) in zip(axes, panels):
        log_y = uses_log_scale(v for values in series.values() for v in values)
        for key, values in series.items():
            points = [(e, v) for e, v in zip(history.epochs, values)
                      if v is not None and math.isfinite(v) and (v > 0 or not log_y)]
            style = "--" if _group(key) == 1 else "-"
            ax.plot([e for e, _ in points], [v for _, v in points], style, marker="o" if markers else None,
                    markersize=3, linewidth=2.0 if key == "train_loss" else 1.3, label=label(key))
        if selected_epoch is not None and name == "loss":
            ax.axvline(selected_epoch, color="grey", linestyle=":", linewidth=1.2,
                       label=f"selected epoch {selected_epoch}")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name.split(' (')[0]}{' (log scale)' if log_y else ''}")
        ax.set_title(name, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(history) == 1:  # one point: give the axis room around it
            ax.set_xlim(history.epochs[0] - 1, history.epochs[0] + 1)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig
