"""Turn a benchmark run directory (`threecad bench --out RUN_DIR`) into leaderboard rows.

Nothing is taken from `results.json` on trust: `runcheck` first compares it with the
run's per-category records and refuses unfinished, failed or altered runs. The run stores
fractions; the leaderboard stores percent, as the paper prints them. The Mean row is
recomputed from the category rows being submitted, so that the Mean in the table is always
the mean of the numbers beside it. Names are checked against a safe character set and the
method takes its display spelling (`names`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from threecad.catalog import MVTEC, THREECAD, resolve_category
from threecad.choices import SETTINGS
from threecad.errors import ThreecadError
from threecad.leaderboard.names import display_name, formula_reason, unsafe_reason
from threecad.leaderboard.runcheck import check_run
from threecad.leaderboard.schema import (
    COLUMNS, DATASETS, MEAN, METRICS, PROTOCOLS, LeaderboardError, dataset_categories,
)

RUN_SCHEMA = "threecad.run/1"
RESULTS_FILE = "results.json"
# Percent digits kept for run values: 1e-6 as a fraction, beyond any metric's precision.
PERCENT_DIGITS = 4


@dataclass
class RunRows:
    """The rows of one run, and notes on what was left out of them."""

    rows: pd.DataFrame
    run_id: str
    notes: list[str] = field(default_factory=list)


def _fail(path: Path, where: str, message: str) -> LeaderboardError:
    return LeaderboardError(f"{path}: {where}: {message}")


def load_results(run_dir: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """(run directory, its results.json, the parsed summary); a results.json path is accepted too."""
    run_dir = Path(run_dir)
    if run_dir.name == RESULTS_FILE and run_dir.is_file():
        run_dir = run_dir.parent
    if not run_dir.exists():
        raise LeaderboardError(f"run directory {run_dir} does not exist.")
    if not run_dir.is_dir():
        raise LeaderboardError(f"{run_dir} is not a run directory; pass the --out folder of `threecad bench`.")
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise LeaderboardError(f"{run_dir} has no {RESULTS_FILE}; pass the --out folder of `threecad bench`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise LeaderboardError(f"cannot read {path} (permission denied).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaderboardError(f"{path} is not valid JSON ({exc}); the run may be unfinished or damaged.") from None
    if not isinstance(data, dict):
        raise _fail(path, "top level", "is not a JSON object")
    return run_dir, path, data


def _text(path: Path, data: dict, key: str, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, "missing or not a non-empty string")
    if "\n" in value or "\r" in value:
        raise _fail(path, key, "contains a line break")
    reason = formula_reason(value)
    if reason:
        raise _fail(path, key, f"{value!r} {reason}")
    return value.strip()


def _name(path: Path, data: dict, key: str, required: bool = True) -> str:
    """A name that becomes a leaderboard cell (method, preset, run id): safe characters only."""
    value = _text(path, data, key, required)
    reason = unsafe_reason(data[key]) if value else None
    if reason:
        raise _fail(path, key, f"{data[key]!r} {reason}")
    return value


def _canonical_category(path: Path, name: str, dataset: str) -> str:
    if dataset == "custom":
        if not name.strip() or name == MEAN or "\n" in name or "\r" in name or formula_reason(name):
            raise _fail(path, f"categories.{name}", "is not a usable category name")
        return name
    pool = THREECAD if dataset in ("3cad", "3cad-synthetic") else MVTEC
    try:
        return resolve_category(name, pool).abbreviation
    except ThreecadError as exc:
        raise _fail(path, f"categories.{name}", f"not a {dataset} category ({exc})") from None


def _percent(path: Path, where: str, value: Any) -> float | None:
    """A fraction in [0, 1] as percent; None passes through (metric not computed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, where, f"{value!r} is not a number")
    if not 0.0 <= value <= 1.0:
        raise _fail(path, where, f"{value!r} is not a fraction in [0, 1]")
    return 100.0 * float(value)


def _run_date(data: dict) -> str:
    for key in ("finished", "started"):
        stamp = data.get(key)
        if isinstance(stamp, str):
            try:
                return datetime.fromisoformat(stamp.replace("Z", "+00:00")).date().isoformat()
            except ValueError:
                continue
    return datetime.now(timezone.utc).date().isoformat()


def _format(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def variant_of(path: Path, data: dict[str, Any], preset: str, records: dict[str, dict[str, Any]]) -> str:
    """The row's variant: the preset, marked wherever the run is not that preset as it stands.

    A unified run (one model for all categories) gets `-unified`; a run whose synthetic
    anomalies used procedural textures instead of DTD gets `-procedural`; every config field
    set away from the preset (`--set`) is named with its value (`cpu+epochs=24+image_size=128`),
    so that such a row never passes for the preset.
    """
    setting = data.get("setting", "per-category")
    if setting not in SETTINGS:
        raise _fail(path, "setting", f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    variant = preset + ("-unified" if setting == "unified" else "")
    sources = {str((r.get("method_info") or {}).get("texture_source")) for r in records.values()}
    variant += "-procedural" if "procedural" in sources else ""
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _fail(path, "overrides", "is not a JSON object of config fields")
    return variant + "".join(f"+{_plain(key)}={_plain(value)}" for key, value in sorted(overrides.items()))


def _plain(value: Any) -> str:
    """A config key or value as variant text: sequences comma-joined, other characters as '_'."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = re.sub(r"[^A-Za-z0-9._\-,]", "_", str(value))
    return text if len(text) <= 32 else text[:29] + "..."


def rows_from_run(run_dir: str | Path) -> RunRows:
    """Leaderboard rows of one finished, intact run: each category and the Mean, per known metric.

    Metrics the leaderboard does not know, or that are null, are left out with a note.
    Anything malformed, unfinished, failed or inconsistent with the run's records raises a
    LeaderboardError naming the file and the field.
    """
    run_dir, path, data = load_results(run_dir)
    schema = data.get("schema")
    if schema != RUN_SCHEMA:
        raise _fail(path, "schema", f"is {schema!r}, expected {RUN_SCHEMA!r}")
    run_id = _name(path, data, "run_id")
    method = display_name(_name(path, data, "method"))
    variant = _name(path, data, "preset", required=False) or "default"
    protocol = _text(path, data, "protocol")
    if protocol not in PROTOCOLS:
        raise _fail(path, "protocol", f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    ds = data.get("dataset")
    dataset = ds.get("name") if isinstance(ds, dict) else ds
    if dataset not in DATASETS:
        raise _fail(path, "dataset.name", f"{dataset!r} is not one of {', '.join(DATASETS)}")

    eval_size = data.get("eval_size")
    if eval_size is None:
        eval_text = ""
    elif eval_size == "native" or (isinstance(eval_size, int) and not isinstance(eval_size, bool) and eval_size > 0):
        eval_text = str(eval_size)
    else:
        raise _fail(path, "eval_size", f"{eval_size!r} is neither a positive integer nor 'native'")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _fail(path, "seed", f"{seed!r} is not a non-negative integer")
    common = {
        "method": method, "variant": variant, "source": "run", "reference": run_id,
        "protocol": protocol, "dataset": dataset, "eval_size": eval_text,
        "seed": "" if seed is None else str(seed), "date": _run_date(data),
        "hardware": _text(path, data, "hardware", required=False),
        "code_revision": _text(path, data, "code_revision", required=False),
        "evidence": "claimed",  # until `submit --root` computes the numbers again
    }

    categories = check_run(run_dir, path, data).records  # equal to results.json's, all status ok
    common["variant"] = variant_of(path, data, variant, categories)
    result = RunRows(rows=pd.DataFrame(columns=list(COLUMNS)), run_id=run_id)
    values: dict[str, dict[str, float]] = {}  # category -> metric -> percent
    unknown_metrics: set[str] = set()
    for name, entry in categories.items():
        category = _canonical_category(path, str(name), dataset)
        metrics = entry.get("metrics")
        if not isinstance(metrics, dict):
            raise _fail(path, f"categories.{name}.metrics", "missing or not an object")
        cat_values: dict[str, float] = {}
        for metric, raw in metrics.items():
            if metric not in METRICS:
                unknown_metrics.add(str(metric))
                continue
            percent = _percent(path, f"categories.{name}.metrics.{metric}", raw)
            if percent is None:
                result.notes.append(f"{category} {metric} is null in the run; left out.")
                continue
            # 3cad-paper rounds each category to 3 decimals of a fraction before the mean.
            cat_values[metric] = round(percent, 1 if protocol == "3cad-paper" else PERCENT_DIGITS)
        if category in values:
            raise _fail(path, f"categories.{name}", f"names category {category} a second time")
        values[category] = cat_values
    if unknown_metrics:
        result.notes.append("metrics the leaderboard does not track were left out: "
                            f"{', '.join(sorted(unknown_metrics))}.")

    records = []
    order = dataset_categories(dataset) or sorted(values)
    for category in sorted(values, key=lambda c: order.index(c) if c in order else len(order)):
        for metric in METRICS:
            if metric in values[category]:
                records.append({**common, "category": category, "metric": metric,
                                "value": _format(values[category][metric], PERCENT_DIGITS)})
    for metric in METRICS:
        present = [v[metric] for v in values.values() if metric in v]
        if not present:
            continue
        mean = round(sum(present) / len(present), PERCENT_DIGITS)
        if len(present) < len(values):
            result.notes.append(f"the {metric} Mean covers {len(present)} of {len(values)} categories.")
        records.append({**common, "category": MEAN, "metric": metric, "value": _format(mean, PERCENT_DIGITS)})
    if not records:
        raise _fail(path, "categories", "no category has a metric the leaderboard tracks; there is nothing to submit")
    expected = dataset_categories(dataset)
    if expected and len(values) < len(expected):
        result.notes.append(f"the Mean is over {len(values)} categories ({', '.join(values)}).")
    result.rows = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return result
