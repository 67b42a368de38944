"""The paper's published numbers as leaderboard rows: the seed of `leaderboard/results.csv`."""
from __future__ import annotations

from importlib import resources

import pandas as pd

from threecad.leaderboard.schema import COLUMNS

PAPER_REFERENCE = "arXiv:2502.05761"
PAPER_PROTOCOL = "3cad-paper"
PAPER_VARIANT = "paper"
# The arXiv identifier 2502.x dates the paper to February 2025; no day is published with the table.
PAPER_DATE = "2025-02"


def paper_rows() -> pd.DataFrame:
    """Every number of the paper's result tables, the means being the paper's own.

    Values are kept as the text the paper prints (8.0 stays "8.0"), so the seeded CSV
    reproduces the publication digit for digit.
    """
    with resources.files("threecad.data").joinpath("3cad_paper_results.csv").open() as fh:
        published = pd.read_csv(fh, dtype=str, keep_default_na=False)
    rows = pd.DataFrame({
        "method": published["method"],
        "variant": PAPER_VARIANT,
        "source": "paper",
        "reference": PAPER_REFERENCE,
        "protocol": PAPER_PROTOCOL,
        "dataset": "3cad",
        "category": published["category"],
        "metric": published["metric"],
        "value": published["value_percent"],
        "eval_size": "",
        "seed": "",
        "date": PAPER_DATE,
        "hardware": "",
        "code_revision": "",
        "evidence": "paper",
    })
    return rows[list(COLUMNS)]
