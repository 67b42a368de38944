"""Check a run's summary against the records it was built from, before it reaches the board.

`results.json` is a view: the harness rebuilds it from `run.json` and the per-category
records `categories/<ABBR>.json` after every category, and adds `finished` only when the
run ends (layout in `threecad/harness/rundir.py`). A summary that disagrees with its
records was edited, mixed with another run, or copied without them; a summary without
`finished` belongs to a run that was killed or is still going. None of them is submitted.

A run with a failed category is refused too, rather than submitted without it: the
harness redoes failed categories on `threecad bench --resume`, and a board entry should
not look like a complete run with one category quietly missing.

The layout is read directly (not through `threecad.harness`) so that `threecad leaderboard`
does not import torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from threecad.leaderboard.schema import METRICS, LeaderboardError

SPEC_FILE = "run.json"
RECORDS_DIR = "categories"
# A run's mean and the mean of its records are the same sums in the same order: any
# difference beyond float noise means an edited value.
MEAN_TOLERANCE = 1e-9
# run.json and results.json must agree on these.
IDENTITY = ("run_id", "method", "preset", "protocol")


@dataclass
class CheckedRun:
    """A run whose summary matches its records: the records are what gets submitted."""

    records: dict[str, dict[str, Any]]  # category name as in the run -> its record


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeaderboardError(f"{path} is missing; {what}") from None
    except PermissionError:
        raise LeaderboardError(f"cannot read {path} (permission denied).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaderboardError(f"{path} is not valid JSON ({exc}); the run may be damaged.") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_value(a: Any, b: Any) -> bool:
    """Equal as JSON values; NaN equals NaN (a metric that came out undefined in both)."""
    if _number(a) and _number(b):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def _finite(v: Any) -> bool:
    return _number(v) and math.isfinite(v)


def records_mean(records: dict[str, dict[str, Any]], protocol: str) -> dict[str, float]:
    """The run's mean as the harness computes it, from the category records."""
    from threecad.harness.rundir import mean_metrics

    return mean_metrics(records, protocol)


def _check_finished(results_path: Path, data: dict[str, Any], run_dir: Path) -> None:
    finished = data.get("finished")
    if finished is None:
        raise LeaderboardError(
            f"{results_path} has no 'finished' time: the run was interrupted or is still going; "
            f"finish it with `threecad bench --resume --out {run_dir} ...` and submit again.")
    try:
        datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
    except ValueError:
        raise LeaderboardError(f"{results_path}: finished: {finished!r} is not an ISO time.") from None


def _check_spec(results_path: Path, data: dict[str, Any], run_dir: Path) -> None:
    spec_path = run_dir / SPEC_FILE
    spec = _read_json(spec_path, "a run directory of `threecad bench` has one; submit the whole --out folder.")
    if not isinstance(spec, dict):
        raise LeaderboardError(f"{spec_path} is not a JSON object; the run may be damaged.")
    for key in IDENTITY:
        if spec.get(key) != data.get(key):
            raise LeaderboardError(
                f"{results_path}: {key} is {data.get(key)!r} but {spec_path} says {spec.get(key)!r}; "
                "the summary does not belong to this run directory.")
    if spec.get("setting", "per-category") != data.get("setting", "per-category"):
        raise LeaderboardError(f"{results_path}: setting is {data.get('setting')!r} but {spec_path} says "
                               f"{spec.get('setting')!r}; the summary does not belong to this run directory.")


def _read_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    folder = run_dir / RECORDS_DIR
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []
    if not files:
        raise LeaderboardError(
            f"{folder} holds no category records (<category>.json); results.json alone cannot be "
            f"checked: submit the whole --out folder of `threecad bench`.")
    records = {}
    for path in files:
        record = _read_json(path, "")
        if not isinstance(record, dict):
            raise LeaderboardError(f"{path} is not a JSON object; the run may be damaged.")
        records[path.stem] = record
    return records


def _compare(results_path: Path, claimed: dict[str, Any], records: dict[str, dict[str, Any]],
             run_dir: Path) -> None:
    """Same categories, same status, same metric values (exactly) in summary and records."""
    folder = run_dir / RECORDS_DIR
    missing = [c for c in claimed if str(c) not in records]
    if missing:
        raise LeaderboardError(f"{results_path} lists category {missing[0]} but {folder / f'{missing[0]}.json'} "
                               "does not exist; the summary does not match the run's records.")
    extra = [c for c in records if c not in claimed]
    if extra:
        raise LeaderboardError(f"{folder / f'{extra[0]}.json'} is a record of category {extra[0]}, which "
                               f"{results_path} leaves out; the summary does not match the run's records.")
    for name, entry in claimed.items():
        record, where = records[str(name)], folder / f"{name}.json"
        if not isinstance(entry, dict):
            raise LeaderboardError(f"{results_path}: categories.{name} is not an object.")
        if entry.get("status") != record.get("status"):
            raise LeaderboardError(f"{results_path}: categories.{name}.status is {entry.get('status')!r} "
                                   f"but {where} records {record.get('status')!r}.")
        ours, theirs = entry.get("metrics") or {}, record.get("metrics") or {}
        if not isinstance(ours, dict) or not isinstance(theirs, dict):
            raise LeaderboardError(f"{results_path}: categories.{name}.metrics is not an object.")
        for metric in sorted(set(ours) | set(theirs)):
            if metric not in ours or metric not in theirs or not _same_value(ours[metric], theirs[metric]):
                raise LeaderboardError(
                    f"{results_path}: categories.{name}.metrics.{metric} is {ours.get(metric)!r} but {where} "
                    f"records {theirs.get(metric)!r}; the summary was altered.")


def _check_failures(records: dict[str, dict[str, Any]], run_dir: Path) -> None:
    failed = {name: r for name, r in records.items() if r.get("status") != "ok"}
    if failed:
        name, record = next(iter(failed.items()))
        error = (str(record.get("error") or "").strip().splitlines() or ["no error message"])[0]
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise LeaderboardError(
            f"{run_dir / RECORDS_DIR / f'{name}.json'}: category {name} has status {record.get('status')!r} "
            f"({error}){others}; a run with a failed category is not submitted: rerun it with "
            f"`threecad bench --resume --out {run_dir} ...`.")


def _check_mean(results_path: Path, data: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    claimed = data.get("mean")
    if not isinstance(claimed, dict):
        raise LeaderboardError(f"{results_path}: mean is missing or not an object.")
    ours = records_mean(records, str(data.get("protocol")))
    for metric in METRICS:
        value, expected = claimed.get(metric), ours.get(metric)
        if value is None and expected is None:
            continue
        if not _finite(value) or expected is None or abs(value - expected) > MEAN_TOLERANCE:
            shown = "absent" if expected is None else f"{expected!r}"
            raise LeaderboardError(f"{results_path}: mean.{metric} is {value!r} but the mean of the category "
                                   f"records is {shown}; the summary was altered.")


def check_run(run_dir: Path, results_path: Path, data: dict[str, Any]) -> CheckedRun:
    """Refuse (LeaderboardError naming the file and the difference) unless the run finished,
    every category succeeded, and results.json equals what its records say."""
    _check_finished(results_path, data, run_dir)
    _check_spec(results_path, data, run_dir)
    claimed = data.get("categories")
    if not isinstance(claimed, dict) or not claimed:
        raise LeaderboardError(f"{results_path}: categories is missing or empty.")
    records = _read_records(run_dir)
    _compare(results_path, claimed, records, run_dir)
    _check_failures(records, run_dir)
    _check_mean(results_path, data, records)
    return CheckedRun(records={str(k): records[str(k)] for k in claimed})
