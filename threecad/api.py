"""The Python entry points `threecad.bench` and `threecad.load_run`, for notebooks and scripts.

`bench` takes the CLI's options as keyword arguments and returns the finished run, opened
(`threecad.saved_run.SavedRun`): its `.results` table and its `.model(category)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from threecad.errors import ThreecadError
from threecad.saved_run import SavedRun, load_run

__all__ = ["bench", "load_run"]


def bench(method: str, root: str | Path | None = None, *, category: str | Iterable[str] = "all",
          preset: str | None = None, overrides: Mapping[str, Any] | None = None, out: str | Path | None = None,
          **options: Any) -> SavedRun:
    """`threecad bench` from Python: `category="ACC,CS"` or a list, `overrides` as `--set` (key -> value),
    and any other BenchSpec option by name (device, protocol, resume, eval_size, pictures, setting,
    metrics_mode, split, threads, ...). One method (a study's comma list is the CLI's). A failed category is
    recorded in the run, as on the command line; a refused setting raises a ThreecadError."""
    from threecad.harness import BenchSpec, run_benchmark
    from threecad.harness.rundir import run_name
    from threecad.datahome import default_root

    if "," in method:
        raise ThreecadError("threecad.bench runs one method; call it once per method (a study is the CLI's)")
    categories = (category,) if isinstance(category, str) else tuple(category)
    out = Path(out) if out is not None else Path("runs") / run_name(method)
    root = Path(root).expanduser() if root is not None else default_root()
    spec = BenchSpec(method=method, root=root, categories=categories, preset=preset,
                     overrides={k: str(v) for k, v in (overrides or {}).items()}, out=out, **options)
    run_benchmark(spec, echo=lambda *_: None)
    return load_run(out)
