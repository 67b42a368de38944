"""Text renderers of the wide tables: Markdown (bold best), plain text (`*` best) and CSV."""
from __future__ import annotations

import io

import pandas as pd

from threecad.catalog import KNOWN
from threecad.leaderboard.schema import DATASET_LABELS, MEAN, METRIC_LABELS
from threecad.leaderboard.views import (
    ENTRY, PARTIAL_MARK, PARTIAL_NOTE, WideTable, format_value, source_label,
)

HEADERS = ("Method", "Variant", "Source")
PLAIN_MARK = "*"


def table_title(wide: WideTable, markdown: bool = False) -> str:
    protocol = f"`{wide.protocol}`" if markdown else wide.protocol
    return f"{DATASET_LABELS[wide.dataset]}, protocol {protocol}: {METRIC_LABELS[wide.metric]} (%)"


def _cells(wide: WideTable, mark) -> list[list[str]]:
    """Display cells of every entry; `mark(text)` decorates the best value of a column."""
    out = []
    for pos, row in wide.entries.iterrows():
        cells = [str(row["method"]), str(row["variant"]), source_label(row)]
        for column in wide.columns:
            text = format_value(row[column])
            text = mark(text) if text and pos in wide.best.get(column, ()) else text
            cells.append(text + PARTIAL_MARK if column == MEAN and pos in wide.partial else text)
        out.append(cells)
    return out


def _aligned(rows: list[list[str]], numeric_from: int, sep: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i >= numeric_from else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append(sep.join(cells).rstrip())
    return lines


def _escape_pipes(cell: str) -> str:
    """A `|` in a name (a custom category, a variant) would end a Markdown cell."""
    return cell.replace("|", "\\|")


def markdown_table(wide: WideTable, heading_level: int = 3) -> str:
    """One table as GitHub Markdown: a heading, the caveat of its protocol, best values in bold."""
    header = [_escape_pipes(c) for c in list(HEADERS) + wide.columns]
    body = [[_escape_pipes(c) for c in r] for r in _cells(wide, lambda t: f"**{t}**")]
    rows = [header] + body
    widths = [max(3, *(len(r[i]) for r in rows)) for i in range(len(header))]
    n_text = len(HEADERS)

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i < n_text else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join((":" + "-" * (w + 1)) if i < n_text else ("-" * (w + 1) + ":")
                          for i, w in enumerate(widths)) + "|"
    parts = [f"{'#' * heading_level} {table_title(wide, markdown=True)}", ""]
    if wide.caveat:
        parts += [f"> **Caveat:** {wide.caveat}", ""]
    parts += [line(header), rule] + [line(r) for r in body]
    if wide.partial:
        parts += ["", PARTIAL_NOTE]
    if wide.evidence_note:
        parts += ["", wide.evidence_note]
    return "\n".join(parts) + "\n"


def render_markdown(tables: list[WideTable], heading_level: int = 3) -> str:
    return "\n".join(markdown_table(t, heading_level) for t in tables)


def _pad_marks(cell: str, width: int) -> str:
    digits = cell.rstrip(PLAIN_MARK + PARTIAL_MARK)
    return cell + " " * (width - (len(cell) - len(digits))) if cell else cell


def plain_table(wide: WideTable) -> str:
    """One table as aligned plain text; `*` follows the best value of each column."""
    header = list(HEADERS) + wide.columns
    body = _cells(wide, lambda t: t + PLAIN_MARK)
    # unmarked values get a blank where the mark would be, so the digits line up
    marks = 2 if wide.partial else 1  # room for '*' and the dagger after each number
    body = [[c if i < len(HEADERS) else _pad_marks(c, marks) for i, c in enumerate(r)] for r in body]
    header = [h if i < len(HEADERS) else h + " " * marks for i, h in enumerate(header)]
    lines = [f"{table_title(wide)}   ({PLAIN_MARK} best per column)"]
    lines += _aligned([header] + body, len(HEADERS), "  ")
    if wide.partial:
        lines.append(PARTIAL_NOTE)
    if wide.evidence_note:
        lines.append(wide.evidence_note)
    if wide.caveat:
        lines.append(f"note: {wide.caveat}")
    return "\n".join(lines) + "\n"


def render_plain(tables: list[WideTable]) -> str:
    return "\n".join(plain_table(t) for t in tables)


def render_csv(tables: list[WideTable]) -> str:
    """All tables in one wide CSV (dataset, protocol, metric, entry, categories..., Mean)."""
    frames = [t.entries.assign(dataset=t.dataset, protocol=t.protocol, metric=t.metric) for t in tables]
    present = {c for t in tables for c in t.columns} - {MEAN}
    known = [c.abbreviation for c in KNOWN if c.abbreviation in present]
    columns = known + sorted(present - set(known)) + [MEAN]
    wide = pd.concat(frames, ignore_index=True)
    wide = wide[["dataset", "protocol", "metric", *ENTRY, *columns]]
    out = io.StringIO()
    wide.to_csv(out, index=False, lineterminator="\n")
    return out.getvalue()
