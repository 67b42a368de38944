"""The leaderboard as one self-contained static HTML page.

Everything is inline (CSS, a few lines of JavaScript for sorting, SVG bar charts), nothing
is fetched, so the page opens offline and can be attached or archived as a single file.
"""
from __future__ import annotations

from html import escape

import pandas as pd

from threecad.leaderboard.render import HEADERS, table_title
from threecad.leaderboard.views import PARTIAL_MARK, PARTIAL_NOTE, WideTable, format_value, source_label

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:78rem;
padding:0 1rem;color:#1d232a;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin:2.4rem 0 .6rem;
border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
p.lead{color:#57606a;margin-top:0}nav ul{columns:2;padding-left:1.2rem}
.caveat{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.5rem .8rem;margin:.6rem 0}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0 1rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;white-space:nowrap}
th{background:#f6f8fa;cursor:pointer;user-select:none}th:hover{background:#eaeef2}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.num{text-align:right}td.best{font-weight:700;background:#dafbe1}
tr.run td:first-child{border-left:3px solid #e16f24}tr.paper td:first-child{border-left:3px solid #4e79a7}
svg text{font-size:12px;fill:#1d232a}svg .axis{stroke:#8c959f}svg .grid{stroke:#eaeef2}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem;vertical-align:middle}
"""

_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var numeric = th.dataset.type === "num";
      var desc = th.classList.contains("desc") ? false : th.classList.contains("asc") ? true : numeric;
      Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (x === "" || y === "") { return (x === "") - (y === ""); }  /* blanks always last */
        var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return desc ? -c : c;
      });
      rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
    });
  });
});
"""

_COLORS = {"paper": "#4e79a7", "run": "#e16f24"}


def anchor(wide: WideTable) -> str:
    return f"{wide.dataset}-{wide.protocol}-{wide.metric}"


def bar_label(row: pd.Series) -> str:
    """The paper's rows are told apart by method; runs also need their id."""
    label = f"{row['method']} ({row['variant']})"
    return label if row["source"] == "paper" else f"{label} {row['reference']}"


def bar_chart(wide: WideTable) -> str:
    """Horizontal bars of the Mean of every entry, on a 0-100 scale (inline SVG)."""
    rows = wide.entries[wide.entries["Mean"].notna()]
    if rows.empty:
        return ""
    labels = [bar_label(row) + (PARTIAL_MARK if pos in wide.partial else "") for pos, row in rows.iterrows()]
    label_w = 12 + 7 * max(len(label) for label in labels)  # about 7 px per character at 12 px
    bar_w, row_h, top = 420, 20, 8
    height = top + row_h * len(rows) + 26
    width = label_w + bar_w + 60
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(table_title(wide))}: Mean per entry">']
    for tick in range(0, 101, 20):
        x = label_w + bar_w * tick / 100
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 22}"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">{tick}</text>')
    for i, ((_, row), label) in enumerate(zip(rows.iterrows(), labels)):
        y = top + i * row_h
        w = bar_w * float(row["Mean"]) / 100
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                     f'fill="{_COLORS.get(row["source"], "#888")}"><title>{escape(source_label(row))}: '
                     f'{format_value(row["Mean"])}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{format_value(row["Mean"])}</text>')
    parts.append(f'<line class="axis" x1="{label_w}" y1="{top}" x2="{label_w}" y2="{height - 22}"/>')
    parts.append("</svg>")
    return "".join(parts)


def html_table(wide: WideTable) -> str:
    heads = [f"<th>{escape(h)}</th>" for h in HEADERS]
    heads += [f'<th data-type="num">{escape(c)}</th>' for c in wide.columns]
    body = []
    for pos, row in wide.entries.iterrows():
        texts = [str(row["method"]), str(row["variant"]), source_label(row)]
        cells = [f'<td data-value="{escape(t)}">{escape(t)}</td>' for t in texts]
        for column in wide.columns:
            value = row[column]
            raw = "" if pd.isna(value) else repr(float(value))
            cls = "num best" if pos in wide.best.get(column, ()) and raw else "num"
            shown = format_value(value)
            if column == "Mean" and pos in wide.partial:
                shown += PARTIAL_MARK
            cells.append(f'<td class="{cls}" data-value="{raw}" title="{raw}">{shown}</td>')
        body.append(f'<tr class="{escape(str(row["source"]))}">{"".join(cells)}</tr>')
    return (f'<table class="sortable"><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>\n{chr(10).join(body)}\n</tbody></table>')


def render_html(tables: list[WideTable], origin: str, n_rows: int) -> str:
    """The whole page; `origin` says which CSV it was made from."""
    nav = "".join(f'<li><a href="#{anchor(t)}">{escape(table_title(t))}</a></li>' for t in tables)
    sections = []
    for t in tables:
        caveat = f'<p class="caveat"><strong>Caveat:</strong> {escape(t.caveat)}</p>' if t.caveat else ""
        sections.append(
            f'<section id="{anchor(t)}"><h2>{escape(table_title(t))}</h2>{caveat}'
            f'<p class="legend">Mean per entry<span style="background:{_COLORS["paper"]}"></span>paper'
            f'<span style="background:{_COLORS["run"]}"></span>run</p>'
            f"{bar_chart(t)}\n{html_table(t)}"
            f"{f'<p>{escape(PARTIAL_NOTE)}</p>' if t.partial else ''}"
            f"{f'<p>{escape(t.evidence_note)}</p>' if t.evidence_note else ''}</section>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>threecad leaderboard</title>
<style>{_CSS}</style>
</head>
<body>
<h1>threecad leaderboard</h1>
<p class="lead">{n_rows} rows from {escape(origin)}. Values are percent. Best value per column in bold;
click a column header to sort. Tables of different datasets, protocols or metrics are not comparable.</p>
<nav><ul>{nav}</ul></nav>
{chr(10).join(sections)}
<script>{_JS}</script>
</body>
</html>
"""
