"""The leaderboard's long-form schema and the one validator that every reader and writer uses.

One value per row keeps the table append-only and mergeable: a new metric or category is
new rows, never a new column. The validator is strict because the CSV is edited by hand
and by `submit`: every problem names the line and the column, so it can be fixed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date

import pandas as pd

from threecad.catalog import MVTEC, THREECAD
from threecad.choices import PROTOCOLS
from threecad.errors import ThreecadError
from threecad.leaderboard.names import formula_reason, unsafe_reason

COLUMNS: tuple[str, ...] = (
    "method", "variant", "source", "reference", "protocol", "dataset", "category", "metric",
    "value", "eval_size", "seed", "date", "hardware", "code_revision", "evidence",
)
# What a row's number rests on (threecad.leaderboard.evidence):
#   paper            printed in a publication
#   recomputed       computed by `submit --root` from the run's stored predictions and the root's
#                    masks, on a dataset whose identity is checked (synthetic marker, or custom data)
#   data-unverified  computed so, but the root's test set is not one recorded as the official
#                    dataset's (none is recorded yet for 3CAD and MVTec AD)
#   claimed          the number the run recorded, not computed again (submit without --root)
EVIDENCE: tuple[str, ...] = ("paper", "recomputed", "data-unverified", "claimed")
# Tables written before the column existed: their run rows were never computed again.
EVIDENCE_BEFORE_COLUMN = {"paper": "paper", "run": "claimed"}
REQUIRED: tuple[str, ...] = (
    "method", "variant", "source", "reference", "protocol", "dataset", "category", "metric", "value",
)
# Two rows with the same key would be the same number twice (or two different numbers for it).
KEY: tuple[str, ...] = ("method", "variant", "protocol", "dataset", "category", "metric", "reference")
# One submission: every row that one run (or one paper table) contributed.
SUBMISSION: tuple[str, ...] = ("method", "variant", "source", "reference", "protocol", "dataset")

SOURCES: tuple[str, ...] = ("paper", "run")
DATASETS: tuple[str, ...] = ("3cad", "3cad-synthetic", "mvtec", "custom")
METRICS: tuple[str, ...] = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "au_pro")
METRIC_LABELS: dict[str, str] = {
    "i_auroc": "I-AUROC", "i_ap": "I-AP", "i_f1max": "I-F1max",
    "p_auroc": "P-AUROC", "p_ap": "P-AP", "p_f1max": "P-F1max", "au_pro": "AU-PRO",
}
DATASET_LABELS: dict[str, str] = {
    "3cad": "3CAD", "3cad-synthetic": "3CAD (synthetic)", "mvtec": "MVTec AD", "custom": "custom",
}
MEAN = "Mean"

PROTOCOL_CAVEATS: dict[str, str] = {
    "3cad-paper": (
        "Protocol 3cad-paper (the official release's evaluation) ignores false positives on good "
        "images: PRO is computed per defective image and good images do not enter it. Its numbers "
        "are not comparable with protocol standard."
    ),
}

_DATASET_CATEGORIES: dict[str, tuple[str, ...] | None] = {
    "3cad": tuple(c.abbreviation for c in THREECAD),
    "3cad-synthetic": tuple(c.abbreviation for c in THREECAD),
    "mvtec": tuple(c.abbreviation for c in MVTEC),
    "custom": None,  # a user's own folders: any name
}
_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")
_METRIC_ALIASES = {"aupro": "au_pro", "pro": "au_pro", "i_f1": "i_f1max", "p_f1": "p_f1max"}


class LeaderboardError(ThreecadError):
    """The leaderboard table or a submitted run breaks the schema."""


def dataset_categories(dataset: str) -> tuple[str, ...] | None:
    """The category names a dataset allows, in display order; None means any name (custom)."""
    return _DATASET_CATEGORIES[dataset]


def normalize_metric(name: str) -> str:
    """Accept the paper's spelling too: `P-AUROC`, `AU-PRO`, `p_auroc` all mean the same."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _METRIC_ALIASES.get(key, key)
    if key not in METRICS:
        raise LeaderboardError(f"unknown metric '{name}'; known: {', '.join(METRICS)}.")
    return key


@dataclass(frozen=True)
class Problem:
    line: int | None  # CSV line number (the header is line 1); None for the table as a whole
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "table"
        if self.column:
            where += f", column '{self.column}'"
        return f"{where}: {self.message}"


def _check_cell(column: str, value: str, row: dict[str, str]) -> str | None:
    """Why one cell is invalid, or None when it is fine."""
    if "\n" in value or "\r" in value:
        return "contains a line break"
    if column in REQUIRED and not value.strip():
        return "is empty (required)"
    if column in ("method", "variant") or (column == "reference" and row.get("source") == "run"):
        reason = unsafe_reason(value)
        if reason:
            return f"'{value}' {reason}"
    elif column in ("reference", "category", "hardware", "code_revision"):
        reason = formula_reason(value)
        if reason:
            return f"'{value}' {reason}"
    if column == "source" and value not in SOURCES:
        return f"unknown source '{value}'; known: {', '.join(SOURCES)}"
    if column == "protocol" and value not in PROTOCOLS:
        return f"unknown protocol '{value}'; known: {', '.join(PROTOCOLS)}"
    if column == "dataset" and value not in DATASETS:
        return f"unknown dataset '{value}'; known: {', '.join(DATASETS)}"
    if column == "evidence":
        if value not in EVIDENCE:
            return f"unknown evidence '{value}'; known: {', '.join(EVIDENCE)}"
        if (value == "paper") != (row.get("source") == "paper"):
            return f"'{value}' does not go with source '{row.get('source')}' (paper rows, and only they, are 'paper')"
    if column == "metric" and value not in METRICS:
        return f"unknown metric '{value}'; known: {', '.join(METRICS)}"
    if column == "category" and value != MEAN and row.get("dataset") in DATASETS:
        allowed = dataset_categories(row["dataset"])
        if allowed is not None and value not in allowed:
            return (f"unknown category '{value}' for dataset {row['dataset']}; "
                    f"known: {', '.join(allowed)}, {MEAN}")
    if column == "value":
        try:
            number = float(value)
        except ValueError:
            return f"'{value}' is not a number"
        if not math.isfinite(number) or not 0.0 <= number <= 100.0:
            return f"{value} is outside [0, 100] (values are percent)"
    if column == "eval_size" and value and value != "native" and not (value.isdigit() and int(value) > 0):
        return f"'{value}' is neither a positive integer nor 'native'"
    if column == "seed" and value and not value.isdigit():
        return f"'{value}' is not a non-negative integer"
    if column == "date" and value:
        if not _DATE.match(value):
            return f"'{value}' is not a date YYYY-MM-DD (or YYYY-MM)"
        try:
            date.fromisoformat(value if len(value) == 10 else value + "-01")
        except ValueError:
            return f"'{value}' is not a valid date"
    return None


def with_evidence(table: pd.DataFrame) -> pd.DataFrame:
    """A table written before the `evidence` column, given it: paper rows `paper`, run rows `claimed`."""
    if "evidence" in table.columns or "source" not in table.columns:
        return table
    return table.assign(evidence=table["source"].map(EVIDENCE_BEFORE_COLUMN).fillna(""))


def find_problems(table: pd.DataFrame, first_line: int = 2) -> list[Problem]:
    """Every schema problem in `table` (all cells strings); row i is CSV line first_line + i."""
    missing = [c for c in COLUMNS if c not in table.columns]
    extra = [c for c in table.columns if c not in COLUMNS]
    problems = [Problem(None, c, "required column is missing") for c in missing]
    problems += [Problem(None, c, f"unknown column; the columns are: {', '.join(COLUMNS)}") for c in extra]
    if problems:
        return problems
    seen: dict[tuple[str, ...], int] = {}
    for i, row in enumerate(table[list(COLUMNS)].to_dict("records")):
        line = first_line + i
        for column in COLUMNS:
            reason = _check_cell(column, str(row[column]), row)
            if reason:
                problems.append(Problem(line, column, reason))
        key = tuple(str(row[c]) for c in KEY)
        if key in seen:
            described = ", ".join(f"{c}={row[c]}" for c in KEY)
            problems.append(Problem(line, None, f"duplicate of line {seen[key]} ({described})"))
        else:
            seen[key] = line
    return problems


def validate_table(table: pd.DataFrame, where: str, first_line: int = 2) -> None:
    """Raise a LeaderboardError naming the first problem (and how many more) in `table`."""
    problems = find_problems(table, first_line)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise LeaderboardError(f"{where}: {problems[0]}{more}")
