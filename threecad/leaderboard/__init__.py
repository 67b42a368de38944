"""The leaderboard: the paper's published numbers and every submitted run, in one long CSV.

`schema` defines and validates the rows, `store` reads and changes the CSV (locked,
atomic, only where writable), `runcheck` holds a run's summary to its records, `runs`
converts a checked run directory, `names` keeps names safe and spelled alike, `views`
builds the paper's wide tables and `render` / `html` / `readme` turn them into text, a
web page and the README block.
"""
from threecad.leaderboard.html import render_html
from threecad.leaderboard.names import display_name, unsafe_reason
from threecad.leaderboard.paper import PAPER_REFERENCE, paper_rows
from threecad.leaderboard.render import render_csv, render_markdown, render_plain
from threecad.leaderboard.runcheck import check_run
from threecad.leaderboard.runs import RunRows, rows_from_run
from threecad.leaderboard.schema import (
    COLUMNS, DATASETS, KEY, METRICS, PROTOCOLS, LeaderboardError, find_problems, validate_table,
)
from threecad.leaderboard.store import (
    SubmitResult, check_writable, checkout_csv_path, default_csv_path, init_table, read_table, resolve_csv,
    submit_run, table_to_show, write_table,
)
from threecad.leaderboard.views import WideTable, wide_tables

__all__ = [
    "COLUMNS", "DATASETS", "KEY", "METRICS", "PROTOCOLS", "PAPER_REFERENCE", "LeaderboardError", "RunRows",
    "SubmitResult", "WideTable", "check_run", "check_writable", "checkout_csv_path", "default_csv_path",
    "display_name", "unsafe_reason", "table_to_show", "find_problems", "init_table", "paper_rows", "read_table",
    "render_csv", "render_html", "render_markdown", "render_plain", "resolve_csv", "rows_from_run",
    "submit_run", "validate_table", "wide_tables", "write_table",
]
