"""The benchmark harness: the one place that owns loops, devices, timing, memory, metrics and files.

Methods only fit and predict; `run_benchmark` measures every method the same way.
"""
from threecad.harness.runner import BenchSpec, run_benchmark

__all__ = ["BenchSpec", "run_benchmark"]
