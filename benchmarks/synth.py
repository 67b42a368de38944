"""Synthetic 3CAD speed, old code against new, side by side in one process, in CPU seconds.

`threecad synth --scale 1.0` is CPU-bound: planning, drawing each image (scene, defect
effects, placement and the final conversion) and PNG encoding. This script loads a second
copy of `threecad.synth` from another source tree (`--old`, e.g. a `git worktree` of the
previous revision), renders the same slice of the plan with both, job by job and in
alternating order (so a machine whose load drifts favours neither side), and reports:

- CPU seconds per phase (process time: user + system of this process; the renders run
  inline, so worker start-up and pickling are not included), the old/new ratio;
- whether every written file is byte-identical between the two sides (with
  `--changed-output`, when the output changes by design, such as generator version 1 to
  2, the count is reported and a difference is not a failure);
- the scale-1.0 time on 2 workers by LINEAR EXTRAPOLATION over image pixels: CPU
  seconds per pixel of the slice x the pixels of the full plan / 2. It ignores worker
  start-up, the parent process and disk waits, so a real run takes a little longer.

Wall time is not reported: on a shared machine it measures the other tenants.

    .venv/bin/python benchmarks/synth.py --old /tmp/wt-synth [--scale 0.02] [--category all]
                                         [--stride 4] [--seed 0] [--changed-output]

`--stride k` renders every k-th job of the slice (all categories and splits stay in it).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import threecad
from threecad.catalog import resolve_categories

log = logging.getLogger("benchmarks.synth")
PACKAGE = "threecad.synth"
WORKERS = 2


@dataclass
class Side:
    """One copy of threecad.synth and the CPU seconds it spent, per phase."""

    name: str
    modules: dict[str, ModuleType]
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("plan", "scene", "effects", "placement+finish", "png+write"), 0.0))
    _render_last: float = 0.0  # CPU seconds of the last render_job, taken out of png+write

    def module(self, short: str) -> ModuleType:
        return self.modules[f"{PACKAGE}.{short}"]

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _synth_modules() -> dict[str, ModuleType]:
    return {k: m for k, m in sys.modules.items() if k == PACKAGE or k.startswith(PACKAGE + ".")}


def load_new() -> dict[str, ModuleType]:
    import threecad.synth.writer  # noqa: F401  (imports the whole package)
    return _synth_modules()


def load_old(tree: Path) -> dict[str, ModuleType]:
    """Import `tree`/threecad/synth as threecad.synth, keep its modules, restore ours."""
    pkg_dir = tree / "threecad" / "synth"
    if not (pkg_dir / "__init__.py").is_file():
        raise SystemExit(f"--old {tree}: no threecad/synth/__init__.py there")
    ours = _synth_modules()
    ours_attr = getattr(threecad, "synth", None)
    for k in ours:
        del sys.modules[k]
    try:
        spec = importlib.util.spec_from_file_location(PACKAGE, pkg_dir / "__init__.py",
                                                      submodule_search_locations=[str(pkg_dir)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pkg
        spec.loader.exec_module(pkg)
        importlib.import_module(f"{PACKAGE}.writer")
        theirs = _synth_modules()
    finally:
        for k in list(_synth_modules()):
            del sys.modules[k]
        sys.modules.update(ours)
        threecad.synth = ours_attr
    return theirs


def instrument(side: Side) -> None:
    """Wrap the phase entry points of one side so that they add up their CPU seconds."""
    render, writer = side.module("render"), side.module("writer")

    def timed(fn, phase):
        def wrapper(*args, **kwargs):
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                side.seconds[phase] += time.process_time() - t
        return wrapper

    render.render_scene = timed(render.render_scene, "scene")
    render.apply_effect = timed(render.apply_effect, "effects")
    inner = render.render_job

    def render_job(job):  # everything in render_job that is not scene or effects
        before = side.seconds["scene"] + side.seconds["effects"]
        t = time.process_time()
        out = inner(job)
        spent = time.process_time() - t
        side.seconds["placement+finish"] += spent - (side.seconds["scene"] + side.seconds["effects"] - before)
        side._render_last = spent
        return out
    writer.render_job = render_job


def run_job(side: Side, job, root: Path) -> None:
    cat = root / job.folder
    (cat / job.relpath).parent.mkdir(parents=True, exist_ok=True)
    if job.regions:
        (cat / job.mask_relpath).parent.mkdir(parents=True, exist_ok=True)
    t = time.process_time()
    side.module("writer").write_job(job, str(root))
    side.seconds["png+write"] += time.process_time() - t - side._render_last


def tree_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True,
                    help="source tree of the old code (has threecad/synth)")
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--category", default="all")
    ap.add_argument("--stride", type=int, default=1, help="render every k-th job of the slice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-train", type=int, default=16)
    ap.add_argument("--changed-output", action="store_true",
                    help="the two sides are meant to write different pixels (a new generator version)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.environ.get("OMP_NUM_THREADS") != "1":
        log.info("note: OMP_NUM_THREADS is not 1; numpy's BLAS threads are not used here anyway")

    old = Side("old", load_old(args.old.resolve()))
    new = Side("new", load_new())
    cats = resolve_categories(args.category)
    plans: dict[str, list] = {}
    for side in (old, new):  # each side renders its own ImageJob objects (their fields may differ)
        plan_category = side.module("plan").plan_category
        t = time.process_time()
        plans[side.name] = [j for c in cats for j in plan_category(c, args.scale, args.seed, None,
                                                                   args.min_train)]
        side.seconds["plan"] += time.process_time() - t
        instrument(side)
    key = lambda j: (j.relpath, j.seed, j.height, j.width, j.regions)  # noqa: E731
    if list(map(key, plans["old"])) != list(map(key, plans["new"])):
        raise SystemExit("the two sides plan different images")
    stride = max(1, args.stride)
    picked = {name: jobs[::stride] for name, jobs in plans.items()}
    jobs = picked["new"]
    pixels = sum(j.pixels for j in jobs)
    full = sum(j.pixels for c in cats for j in new.module("plan").plan_category(c, 1.0, args.seed, None))
    log.info("slice: scale %g, %s, every %d. job: %d images, %.1f Mpx (scale 1.0: %.2f Gpx)",
             args.scale, ",".join(c.abbreviation for c in cats), args.stride, len(jobs),
             pixels / 1e6, full / 1e9)
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        roots = {s.name: Path(tmp) / s.name for s in (old, new)}
        for i in range(len(jobs)):
            for side in ((old, new) if i % 2 == 0 else (new, old)):
                run_job(side, picked[side.name][i], roots[side.name])
        a, b = tree_digests(roots["old"]), tree_digests(roots["new"])
        same = sum(a[k] == b.get(k) for k in a)
        log.info("files byte-identical: %d of %d%s", same, len(a),
                 "" if same == len(a) == len(b) else "  <-- DIFFER")
        report([old, new], pixels, full)
        tune = getattr(new.module("writer"), "tune_allocator", None)
        if tune is not None:  # the worker processes' allocator settings, in this process from here on
            log.info("\nnew code again, with the allocator settings of its worker processes (%s):",
                     "applied" if tune() else "not available here")
            first = dict(new.seconds)
            new.seconds = {phase: first["plan"] if phase == "plan" else 0.0 for phase in first}
            new.name = "new, worker allocator"
            for job in jobs:
                run_job(new, job, Path(tmp) / "tuned")
            same_t = sum(a.get(k) == v for k, v in tree_digests(Path(tmp) / "tuned").items())
            log.info("files byte-identical to the old code's: %d of %d", same_t, len(a))
            report([old, new], pixels, full)
    return 0 if args.changed_output or same == len(a) == len(b) else 1


def report(sides: list[Side], pixels: int, full: int) -> None:
    old, new = sides
    log.info("%-18s %10s %10s %7s", "CPU seconds", "old", "new", "ratio")
    for phase in old.seconds:
        o, n = old.seconds[phase], new.seconds[phase]
        log.info("%-18s %10.2f %10.2f %7.2f", phase, o, n, o / n if n else float("nan"))
    log.info("%-18s %10.2f %10.2f %7.2f", "total", old.total, new.total, old.total / new.total)
    for side in sides:
        per_px = side.total / pixels
        log.info("%s: %.3f us CPU per pixel -> scale 1.0 on %d workers, extrapolated linearly over "
                 "pixels: %.0f CPU s / %d = %.1f min", side.name, per_px * 1e6, WORKERS,
                 per_px * full, WORKERS, per_px * full / WORKERS / 60)


if __name__ == "__main__":
    sys.exit(main())
