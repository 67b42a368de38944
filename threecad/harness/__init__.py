"""The benchmark harness: the one place that owns loops, devices, timing, memory, metrics and files.

Methods only fit and predict; `run_benchmark` measures every method the same way. The
runner (and torch) load on first use, so `threecad.harness.rundir` stays light for readers
such as the leaderboard.
"""
from __future__ import annotations

__all__ = ["BenchSpec", "run_benchmark"]


def __getattr__(name: str):
    if name in __all__:
        from threecad.harness import runner

        return getattr(runner, name)
    raise AttributeError(name)
