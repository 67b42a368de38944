"""The report's HTML: pieces built from a run's records, joined into one static page.

No script and nothing fetched: the page must read the same offline, attached to a mail or
archived beside the run. Only formatting lives here; what a piece shows is gathered by
threecad.report.
"""
from __future__ import annotations

import json
import math
from html import escape
from typing import Any, Iterable, Sequence

from threecad.harness.rundir import MAIN_METRICS
from threecad.leaderboard.schema import MEAN, METRIC_LABELS

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:70rem;
padding:0 1rem;color:#1d232a;background:#fff;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin:2.4rem 0 .6rem;
border-bottom:1px solid #d0d7de;padding-bottom:.3rem}h3{font-size:1.05rem;margin:1.8rem 0 .4rem}
h4{font-size:.95rem;margin:1rem 0 .3rem;color:#57606a}
p.lead{color:#57606a;margin-top:0}nav ul{columns:3;padding-left:1.2rem;margin:.4rem 0}
.caveat{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.5rem .8rem;margin:.6rem 0}
.failed{color:#cf222e}.note{color:#57606a;font-size:.9rem}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0 1rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;vertical-align:top}th{background:#f6f8fa;text-align:left}
td.num{text-align:right;white-space:nowrap}tr.mean td{font-weight:700;background:#f6f8fa}
td.set{font-weight:700}code,pre{font-size:.85rem}pre{white-space:pre-wrap;background:#f6f8fa;padding:.5rem;
border-radius:6px;margin:.3rem 0}img{max-width:100%;height:auto;border:1px solid #eaeef2;display:block;margin:.3rem 0}
section.category+section.category{border-top:1px dashed #d0d7de}
ul.plain{margin:0;padding-left:1.1rem}
"""


def pct(value: Any) -> str:
    return f"{100 * value:.1f}" if _finite(value) else "-"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def text(value: Any) -> str:
    """A config value as short text (sequences and mappings as JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def value_html(value: Any) -> str:
    """A value readable at a glance: a mapping as `key: value` pairs, a list of texts or mappings as one
    item a line (a list of numbers stays on one line)."""
    if isinstance(value, dict):
        return "; ".join(f"{escape(str(k))}: {escape(text(v))}" for k, v in value.items())
    if isinstance(value, list) and any(isinstance(v, (str, dict)) for v in value):
        return '<ul class="plain">' + "".join(f"<li>{value_html(v)}</li>" for v in value) + "</ul>"
    return escape(text(value))


def table(headers: Sequence[str], rows: Iterable[str], table_id: str = "") -> str:
    """`rows` are ready `<tr>` strings."""
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def key_values(pairs: Iterable[tuple[str, Any]], marked: Iterable[str] = ()) -> str:
    """A two-column table; keys in `marked` are bold, with a note that they were set."""
    marked = set(marked)
    rows = [f'<tr><th>{escape(k)}</th><td{" class=set" if k in marked else ""}>{value_html(v)}'
            f'{" (set)" if k in marked else ""}</td></tr>' for k, v in pairs]
    return "<table><tbody>" + "".join(rows) + "</tbody></table>"


def image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def note(message: str) -> str:
    return f'<p class="note">{escape(message)}</p>'


def metrics_table(categories: dict[str, dict[str, Any]], mean: dict[str, Any]) -> str:
    """One row per category (a failed one says so across the metric columns), then Mean."""
    headers = ["Category", *(METRIC_LABELS[m] for m in MAIN_METRICS)]
    rows = []
    for abbr, record in categories.items():
        name = f'<th><a href="#cat-{escape(abbr)}">{escape(abbr)}</a></th>'
        if record.get("status") != "ok":
            rows.append(f'<tr class="failed">{name}<td class="failed" colspan="{len(MAIN_METRICS)}">failed: '
                        f'{escape(str(record.get("error", "unknown error")))}</td></tr>')
            continue
        metrics = record.get("metrics") or {}
        rows.append(f"<tr>{name}" + "".join(_metric_cell(metrics.get(m)) for m in MAIN_METRICS) + "</tr>")
    rows.append(f'<tr class="mean"><th>{MEAN}</th>' + "".join(_metric_cell(mean.get(m)) for m in MAIN_METRICS)
                + "</tr>")
    return table(headers, rows, "metrics")


def _metric_cell(value: Any) -> str:
    title = f' title="{value!r}"' if _finite(value) else ""
    return f'<td class="num"{title}>{pct(value)}</td>'


def timings_table(categories: dict[str, dict[str, Any]]) -> str:
    headers = ["Category", "status", "fit s", "test images/s", "peak host MB", "peak device MB",
               "train", "val", "test"]
    rows = []
    for abbr, record in categories.items():
        timings, memory = record.get("timings") or {}, record.get("memory") or {}
        cells = [_number(timings.get("fit_s"), 1), _number(timings.get("infer_images_per_s"), 1),
                 _number(memory.get("peak_host_rss_mb"), 0), _number(memory.get("peak_device_mb"), 0),
                 *(_number(record.get(k), 0) for k in ("n_train", "n_val", "n_test"))]
        rows.append(f"<tr><th>{escape(abbr)}</th><td>{escape(str(record.get('status', '?')))}</td>"
                    + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    return table(headers, rows)


def _number(value: Any, digits: int) -> str:
    return f"{value:,.{digits}f}" if _finite(value) else "-"


def model_card(card: dict[str, Any]) -> str:
    """Parameter counts as a table, every other field of the card as a key/value table."""
    rows = [f"<tr><th>{escape(part)}</th><td class=num>{c['trainable']:,}</td><td class=num>{c['frozen']:,}</td></tr>"
            for part, c in card.get("parts", {}).items()]
    total = card.get("total") or {}
    if total:
        rows.append(f'<tr class="mean"><th>total</th><td class=num>{total["trainable"]:,}</td>'
                    f'<td class=num>{total["frozen"]:,}</td></tr>')
    rows += [f"<tr><th>{escape(part)} (reference only, not in the total)</th><td class=num>{c['trainable']:,}</td>"
             f"<td class=num>{c['frozen']:,}</td></tr>" for part, c in card.get("reference_parts", {}).items()]
    skip = {"name", "description", "presets", "parts", "total", "reference_parts", "config"}
    return (f"<p>{escape(str(card.get('description', '')))}</p>"
            + table(["part", "trainable", "frozen"], rows)
            + key_values((k, v) for k, v in card.items() if k not in skip))


def document(title: str, body: Sequence[str]) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
{chr(10).join(body)}
</body>
</html>
"""
