"""The study table: several methods' results side by side, in the paper's layout.

Methods as rows, categories then Mean as columns, one table per main metric, the best of
each column marked (bold in study.md, named in study.csv's `best` column). Kept apart from
the study's scheduling (threecad.harness.study): a table is built from results.json contents
alone, so it is rebuilt and tested without running anything.
"""
from __future__ import annotations

import io
import math
from typing import Any

import pandas as pd

from threecad.choices import PAPER, PER_CATEGORY
from threecad.harness.rundir import MAIN_METRICS, PAPER_CAVEAT, mean_metrics

METRIC_TITLES = {"i_auroc": "I-AUROC", "i_ap": "I-AP", "i_f1max": "I-F1max", "p_auroc": "P-AUROC",
                 "p_ap": "P-AP", "p_f1max": "P-F1max", "au_pro": "AU-PRO"}


def study_tables(results: dict[str, dict[str, Any]], categories: list[str]) -> tuple[str, str]:
    """(study.md, study.csv) from each method's results.json content.

    Values in percent. Mean is each method's own mean over its finished categories (as its
    results.json). The best of each column (at the printed precision, ties all marked) is
    bold in the markdown and named in the CSV's `best` column.
    """
    first = next(iter(results.values()))
    protocol = first["protocol"]
    lines = [f"# Study on {first['dataset']['name']}: {', '.join(results)}", "",
             f"Preset `{first['preset']}`, protocol `{protocol}`, setting `{first.get('setting', PER_CATEGORY)}`, "
             f"evaluation size {first['eval_size']}. Values in percent; the best of each column in bold; "
             "Mean over each method's finished categories.", ""]
    if protocol == PAPER:
        lines += [f"> {PAPER_CAVEAT}", ""]
    columns = [*categories, "Mean"]
    rows = []
    for metric in MAIN_METRICS:
        table = {name: _row(res, metric, categories) for name, res in results.items()}
        if not any(_finite(v) for row in table.values() for v in row.values()):
            continue
        best = {col: _best(table, col) for col in columns}
        lines += [f"## {METRIC_TITLES.get(metric, metric)}", "", "| Method | " + " | ".join(columns) + " |",
                  "|" + "---|" * (len(columns) + 1)]
        for name, row in table.items():
            cells = [_cell(row[col], name in best[col]) for col in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            rows.append({"metric": metric, "method": name, "preset": results[name]["preset"],
                         **{col: row[col] for col in columns},
                         "best": ";".join(col for col in columns if name in best[col])})
        lines.append("")
    failed = [(name, abbr, rec) for name, res in results.items() for abbr, rec in res["categories"].items()
              if rec.get("status") != "ok"]
    missing = [(name, abbr) for name, res in results.items() for abbr in categories if abbr not in res["categories"]]
    if failed or missing:
        lines += ["Pairs without a result:", ""]
        lines += [f"- {name} on {abbr}: {rec.get('error', 'unknown error')} (see {name}/{rec.get('traceback')})"
                  for name, abbr, rec in failed]
        lines += [f"- {name} on {abbr}: not run" for name, abbr in missing]
        lines.append("")
    frame = pd.DataFrame(rows, columns=["metric", "method", "preset", *columns, "best"])
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return "\n".join(lines).rstrip("\n") + "\n", buf.getvalue()


def _row(results: dict[str, Any], metric: str, categories: list[str]) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    for abbr in categories:
        rec = results["categories"].get(abbr) or {}
        v = (rec.get("metrics") or {}).get(metric) if rec.get("status") == "ok" else None
        row[abbr] = 100 * v if _finite(v) else None
    mean = mean_metrics(results["categories"], results["protocol"]).get(metric)
    row["Mean"] = 100 * mean if _finite(mean) else None
    return row


def _best(table: dict[str, dict[str, float | None]], col: str) -> set[str]:
    shown = {name: round(row[col], 1) for name, row in table.items() if _finite(row[col])}
    if not shown:
        return set()
    top = max(shown.values())
    return {name for name, v in shown.items() if v == top}


def _cell(v: float | None, best: bool) -> str:
    if not _finite(v):
        return "-"
    return f"**{v:.1f}**" if best else f"{v:.1f}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
