"""Runs of True along the rows of a boolean array, the one run-length kernel of the project.

`threecad stats` cuts masks along defect-free rows and columns and records the pixel runs of
regions whose boxes overlap; `threecad.metrics.regions` labels bands of defect rows. Both
read runs off here. The module sits below both because `threecad.metrics` imports torch,
which `threecad stats` has no use for.
"""
from __future__ import annotations

import numpy as np


def row_runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, stop) of each run of True in each row of a 2-D boolean array, runs as
    [start, stop), in row-major order."""
    padded = np.zeros((rows.shape[0], rows.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = rows
    # Each padded row rises and falls once per run, so its edges alternate start, stop.
    row, col = np.nonzero(np.diff(padded, axis=1))
    return row[::2], col[::2], col[1::2]


def flag_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D boolean array."""
    _, start, stop = row_runs(flags.reshape(1, -1))
    return list(zip(start.tolist(), stop.tolist()))
