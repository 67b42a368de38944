"""The paper's wide view of the long table: one table per (dataset, protocol, metric).

Rows are submissions (a method, its variant and where the numbers come from), columns
are categories plus Mean, sorted by Mean, best per column marked; an entry whose Mean
misses some of the dataset's categories is marked and ranked after the complete ones. Values from different
datasets, protocols or metrics never share a table: they are not comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from threecad.leaderboard.names import display_name
from threecad.leaderboard.schema import (
    DATASETS, MEAN, METRICS, PROTOCOL_CAVEATS, PROTOCOLS, LeaderboardError, dataset_categories,
)

ENTRY = ("method", "variant", "source", "reference", "evidence")
# how an entry whose numbers were not computed again is marked beside its source, and why
EVIDENCE_MARKS = {"claimed": "claimed", "data-unverified": "data unverified"}
EVIDENCE_NOTE = ("claimed: the run's own numbers, not computed again (`submit` without `--root`); data "
                 "unverified: computed again from the run's predictions, on a test set not recorded as the "
                 "official one.")
DISPLAY_DIGITS = 1  # the paper's precision; "best" is judged on the values as displayed
PARTIAL_MARK = "\u2020"  # dagger
PARTIAL_NOTE = f"{PARTIAL_MARK} Mean over fewer categories than the dataset has: not comparable with a full Mean."


@dataclass
class WideTable:
    dataset: str
    protocol: str
    metric: str
    columns: list[str]  # categories in catalog order, then Mean
    entries: pd.DataFrame  # ENTRY columns + one float column per category (NaN: no value)
    best: dict[str, set[int]] = field(default_factory=dict)  # column -> row positions of the best
    partial: set[int] = field(default_factory=set)  # rows whose Mean lacks some of the dataset's categories

    @property
    def evidence_note(self) -> str | None:
        """Said under a table holding numbers that were not computed again."""
        return EVIDENCE_NOTE if self.entries["evidence"].isin(list(EVIDENCE_MARKS)).any() else None

    @property
    def caveat(self) -> str | None:
        return PROTOCOL_CAVEATS.get(self.protocol)


def format_value(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.{DISPLAY_DIGITS}f}"


def source_label(row: pd.Series | dict) -> str:
    mark = EVIDENCE_MARKS.get(str(row.get("evidence", "")))
    return f"{row['source']} {row['reference']}" + (f" ({mark})" if mark else "")


def _category_order(dataset: str, present: set[str]) -> list[str]:
    known = dataset_categories(dataset) or ()
    cats = [c for c in known if c in present] + sorted(present - set(known) - {MEAN})
    return cats + [MEAN]


def _wide(rows: pd.DataFrame, dataset: str, protocol: str, metric: str) -> WideTable:
    # one spelling per method (`patchcore` and `PatchCore` rows read and sort alike)
    values = rows.assign(value=rows["value"].astype(float), method=rows["method"].map(display_name))
    pivot = values.pivot_table(index=list(ENTRY), columns="category", values="value", aggfunc="first")
    columns = _category_order(dataset, set(pivot.columns))
    pivot = pivot.reindex(columns=columns).reset_index()
    pivot.columns.name = None
    # A Mean over a subset of the categories is not comparable: such entries rank after the
    # complete ones and never hold the best Mean.
    expected = [c for c in (dataset_categories(dataset) or columns) if c != MEAN]
    pivot["_partial"] = pivot[MEAN].notna() & pivot.reindex(columns=expected).isna().any(axis=1)
    pivot = pivot.sort_values(["_partial", MEAN, "method", "variant", "reference"],
                              ascending=[True, False, True, True, True], na_position="last", kind="stable")
    pivot = pivot.reset_index(drop=True)
    partial = set(pivot.index[pivot.pop("_partial")])
    best: dict[str, set[int]] = {}
    for column in columns:
        shown = pivot[column].round(DISPLAY_DIGITS)
        if column == MEAN:
            shown = shown.where(~pivot.index.isin(list(partial)))
        if shown.notna().any():
            best[column] = set(pivot.index[shown == shown.max()])
    return WideTable(dataset, protocol, metric, columns, pivot, best, partial)


def wide_tables(table: pd.DataFrame, protocol: str | None = None, metric: str | None = None,
                dataset: str | None = None) -> list[WideTable]:
    """One WideTable per (dataset, protocol, metric) present after the filters, in a fixed order."""
    chosen = table
    for column, wanted in (("protocol", protocol), ("metric", metric), ("dataset", dataset)):
        if wanted is not None:
            chosen = chosen[chosen[column] == wanted]
    if chosen.empty:
        asked = ", ".join(f"{k}={v}" for k, v in (("protocol", protocol), ("metric", metric),
                                                  ("dataset", dataset)) if v is not None)
        available = sorted(set(table[["dataset", "protocol", "metric"]].itertuples(index=False, name=None)))
        listing = "; ".join(f"{d}/{p}/{m}" for d, p, m in available) or "none (the table is empty)"
        raise LeaderboardError(f"no leaderboard rows for {asked or 'the table'}; "
                               f"available dataset/protocol/metric: {listing}.")
    out = []
    for ds in DATASETS:
        for proto in PROTOCOLS:
            for met in METRICS:
                part = chosen[(chosen["dataset"] == ds) & (chosen["protocol"] == proto) & (chosen["metric"] == met)]
                if not part.empty:
                    out.append(_wide(part, ds, proto, met))
    return out
