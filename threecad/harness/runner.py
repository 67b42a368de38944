"""Run one method over the categories of a dataset, measuring every method the same way.

`run_benchmark` first checks everything without writing a byte (threecad.harness.prepare),
then, under a lock on the run directory, runs each category: loaders and the timed fit
(threecad.harness.fitting), predict over the test set streamed into the Evaluator
(threecad.harness.evaluation), peak host and device memory, a checked checkpoint, and an
atomic per-category record with its picture and loss history (threecad.harness.records), so
that `--resume` skips what finished and a failure in one category does not stop the others.
Under `--setting unified` the one model comes from threecad.harness.unified instead.

A run is three steps that a study (threecad.harness.study) also uses one by one, when the
ranks of a torchrun job share the categories: `open_run` (run.json, under the lock),
`run_pair` (one category: its files and its atomic record, nothing shared with another
category) and `finish_run` (the aggregates, rebuilt from the records).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
import traceback
from typing import Any

from threecad.bench_config import config_yaml, run_config
from threecad.catalog import Category
from threecad.choices import UNIFIED
from threecad.errors import ThreecadError
from threecad.harness.evaluation import calibration, evaluate
from threecad.harness.fitting import DDPFit, fit, new_method
from threecad.harness.memory import PeakMemory
from threecad.harness.prepare import (RESUME_KEYS, BenchSpec, CategoryData, Plan, check_resumable, prepare,
                                      spec_value)
from threecad.harness.records import category_record, environment_facts, log_to_tracker
from threecad.harness.tracking import TestTracker
from threecad.harness.rundir import (MAIN_METRICS, RunDir, RunLock, make_run_dir, remove_empty_dirs, run_name,
                                     utc_now)
from threecad.harness.unified import UnifiedModel, evaluate_unified, unified_model
from threecad.integrity import save_checked
from threecad.report import write_report
from threecad.wording import plural

__all__ = ["BenchSpec", "run_benchmark", "open_run", "pending", "run_pair", "finish_run"]
log = logging.getLogger(__name__)


def run_benchmark(spec: BenchSpec, echo=print) -> tuple[dict[str, Any], int]:
    """Run the benchmark; returns (results.json content, exit code: 0 ok, 1 a category failed).

    Settings, method (built once: weights files), datasets and the run directory's state
    are all checked before the first write; the run directory is then locked until the
    run ends. Resuming a finished run changes nothing and returns its results.
    """
    plan = prepare(spec)
    run = RunDir(plan.out)
    created = make_run_dir(plan.out)
    lock = RunLock(run)
    try:
        lock.acquire()
    except ThreecadError:
        if created:
            remove_empty_dirs(plan.out, created)
        raise
    try:
        return _execute(plan, spec, run, echo)
    finally:
        lock.release()


def _execute(plan: Plan, spec: BenchSpec, run: RunDir, echo) -> tuple[dict[str, Any], int]:
    run_spec = open_run(plan, spec, run)
    unified = plan.setting == UNIFIED
    echo(f"{plan.method_cls.name} ({plan.preset}) on {plural(len(plan.categories), 'category')} of "
         f"{plan.root} -> {plan.out}  [{plan.device}]" + ("  one model for all (--setting unified)" if unified else ""))
    if not unified and plan.method_cls.unified_by_default:
        echo(f"note: {plan.method_cls.name}'s paper trains one model for all categories (--setting unified, "
             "the default of --preset paper); this run fits one per category")
    if plan.split_note:
        echo(plan.split_note)
    records, todo = pending(plan, run, echo)
    fitted = unified_model(plan, spec, run, echo) if unified and todo else None
    started = time.monotonic()
    for k, cat in enumerate(todo):
        if len(todo) > 1:
            echo(overall_line(k, len(todo), cat.abbreviation, time.monotonic() - started))
        records[cat.abbreviation] = run_pair(plan, spec, run, cat, echo, fitted)
        run.write_results(run_spec, plan.in_order(records), environment_facts())
    return finish_run(plan, run, records, ran=bool(todo), echo=echo)


def overall_line(done: int, total: int, abbr: str, elapsed: float) -> str:
    """`[k/n] ABBR: ...` before each category: where the run is, and about how long is left (the mean
    of the categories finished in this call, times those left)."""
    line = f"[{done + 1}/{total}] {abbr}"
    if done:
        left = elapsed / done * (total - done)
        line += f": {done} finished in {_duration(elapsed)}, about {_duration(left)} left"
    return line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def open_run(plan: Plan, spec: BenchSpec, run: RunDir) -> dict[str, Any]:
    """Under the run directory's lock: check it again and write run.json (a new run) or take
    its run id (a resumed one); returns the run's spec."""
    run_spec = plan.run_spec
    previous = run.read_spec()  # again, under the lock: the authoritative state
    check_resumable(previous, run_spec, spec.resume, plan.out)
    if previous is not None:
        run_spec["run_id"] = previous["run_id"]
        run_spec["started"] = previous["started"]
    else:
        run_spec["run_id"] = plan.out.name if spec.out is None else run_name(f"{plan.method_cls.name}-{plan.preset}")
        run_spec["started"] = utc_now()
        run.write_spec(run_spec)
        run.write_config(config_yaml(run_config(dataclasses.replace(spec, out=plan.out), run_spec)))
    return run_spec


def pending(plan: Plan, run: RunDir, echo=lambda *_: None) -> tuple[dict[str, dict[str, Any]], list[Category]]:
    """(records of the categories finished before, the categories still to run)."""
    records: dict[str, dict[str, Any]] = {}
    todo: list[Category] = []
    for cat in plan.categories:
        done = plan.done.get(cat.abbreviation)
        if done is not None and run.read_category(cat.abbreviation) == done:
            echo(f"{cat.abbreviation}: done before, skipped (--resume)")
            records[cat.abbreviation] = done
        else:
            todo.append(cat)
    return records, todo


def run_pair(plan: Plan, spec: BenchSpec, run: RunDir, cat: Category, echo,
             fitted: UnifiedModel | BaseException | None = None, ddp: DDPFit | None = None,
             label: str = "") -> dict[str, Any] | None:
    """Run one category and write its record atomically (a failure is recorded, not raised).

    `fitted`: the unified model (or its fit's failure). `ddp`: this rank's part of a fit
    shared by all ranks; only the writer rank (0) evaluates and writes, the others return None.
    """
    unified = plan.setting == UNIFIED
    writer = ddp is None or ddp.is_writer
    tag = label or cat.abbreviation
    data = plan.datasets(cat)
    try:
        if isinstance(fitted, BaseException):
            raise fitted
        if unified:
            record = evaluate_unified(plan, fitted, data, spec, run)
        else:
            record = _run_category(plan, data, spec, run, ddp=ddp)
        if record is None:
            return None
        run.write_category(cat.abbreviation, record)
        if not unified:
            shutil.rmtree(run.work_dir(cat.abbreviation), ignore_errors=True)
        log_to_tracker(plan, spec, run, cat.abbreviation, record)
        m = record["metrics"]
        echo(f"{tag}: " + "  ".join(f"{k} {_pct(m[k])}" for k in MAIN_METRICS if k in m)
             + f"  (fit {record['timings']['fit_s']:.1f}s{' shared' if unified else ''}, "
             + f"{record['timings']['infer_images_per_s']:.1f} img/s)"
             + (f"  [{record['notes']}]" if record.get("notes") else ""))
    except ThreecadError:
        raise
    except Exception as exc:  # noqa: BLE001 - one category's failure must not stop the others
        log.error("%s failed: %s", tag, exc)
        if not writer:
            return None
        tb = "".join(traceback.format_exception(exc))
        record = run.write_failure(cat.abbreviation, f"{type(exc).__name__}: {exc}", tb)
        echo(f"{tag}: FAILED ({record['error']}); traceback in {run.failure_file(cat.abbreviation)}")
    return record


def _run_category(plan: Plan, data: CategoryData, spec: BenchSpec, run: RunDir,
                  ddp: DDPFit | None = None) -> dict[str, Any] | None:
    """Fit, evaluate, checkpoint; the record. With `ddp` every rank fits, rank 0 alone
    evaluates and returns the record (the others None)."""
    cat, train, val, test, device = data.category, data.train, data.val, data.test, plan.device
    method = new_method(plan.method_cls, plan.config, device, run.work_dir(cat.abbreviation))
    post = method.postprocess()
    tracker = None
    if spec.track_test_every:  # for the record only: never used for selection
        tracker = TestTracker(method, test, spec, cat.abbreviation, run.work_dir(cat.abbreviation),
                              spec.track_test_every)
        method.epoch_hook = tracker
    with PeakMemory(device) as mem:
        fit_s = fit(method, plan.config, train, val, device, cat.abbreviation, ddp=ddp)
        if tracker is not None:
            fit_s -= tracker.seconds
        if ddp is not None and not ddp.is_writer:
            return None
        ev = evaluate(method, post, plan.config, test, device, spec, cat.abbreviation,
                      keep=(run.path, cat.abbreviation))
        held_out = calibration(method, post, plan.config, val, device, spec)
    ckpt = run.checkpoint_file(cat.abbreviation)
    save_checked(method.state_dict(), ckpt)  # with its checksum: load it with integrity.load_checked
    record = category_record(method, post, cat, ev, spec, run, fit_s=fit_s,
                             memory={"peak_host_rss_mb": mem.host_mb, "peak_device_mb": mem.device_mb},
                             n_train=len(train), n_val=len(val) if val is not None else 0, n_test=len(test),
                             checkpoint=ckpt, calibration=held_out)
    if ddp is not None:
        record["ddp"] = ddp.facts(plan.config)  # the one key a single-process record lacks
    if tracker is not None:
        record["test_tracking"] = {**tracker.summary(), **tracker.write(run.path, cat.abbreviation, spec.pictures > 0)}
    return record


def finish_run(plan: Plan, run: RunDir, records: dict[str, dict[str, Any]], *, ran: bool,
               echo=lambda *_: None) -> tuple[dict[str, Any], int]:
    """Write the run's aggregates (results.json/csv/md) with its finish time, unless a resumed,
    finished run changed nothing; returns (results, exit code: 1 when a category failed)."""
    run_spec = plan.run_spec
    records = plan.in_order(records)
    previous_results = run.read_results()
    if (not ran and previous_results is not None and previous_results.get("finished")
            and previous_results.get("categories") == records
            and all(spec_value(previous_results, k) == spec_value(run_spec, k) for k in (*RESUME_KEYS, "run_id"))):
        results = previous_results  # a finished run, resumed: nothing to do, nothing rewritten
        echo("nothing left to run: every category finished before")
    else:
        results = run.write_results(run_spec, records, {**environment_facts(), "finished": utc_now()})
        try:
            echo(f"report: {write_report(run.path)}")
        except Exception as exc:  # noqa: BLE001 - the results stand; `threecad report RUN` rebuilds the page
            log.warning("report.html not written (%s); `threecad report %s` rebuilds it", exc, run.path)
    failed = [a for a, r in records.items() if r.get("status") != "ok"]
    return results, int(bool(failed))


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"
