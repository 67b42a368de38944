"""The benchmark harness: the one place that owns loops, devices, timing, memory, metrics and files.

Methods only fit and predict; `run_benchmark` measures every method the same way, and
`run_study` runs several methods over the categories (shared by the ranks under torchrun).
One module per concern: prepare (every check before the first write), runner (the run and
each category), fitting (loaders, the timed fit, --ddp), evaluation (the test loop into the
Evaluator), unified (--setting unified), records (records, loss histories, trackers),
rundir (the run directory's files), study and studytable (several methods).
The runner (and torch) load on first use, so `threecad.harness.rundir` stays light for
readers such as the leaderboard.
"""
from __future__ import annotations

__all__ = ["BenchSpec", "run_benchmark", "StudySpec", "run_study"]


_HOMES = {"BenchSpec": "prepare", "run_benchmark": "runner", "StudySpec": "study", "run_study": "study"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"threecad.harness.{_HOMES[name]}"), name)
    raise AttributeError(name)
