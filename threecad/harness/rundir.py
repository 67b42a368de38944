"""The run directory: one JSON per finished category, and the aggregate views built from them.

Layout of RUN_DIR:
  run.json                 what was run (method, preset, config, protocol, dataset); --resume checks it
  config.yaml              the invocation that started it, for `bench --config` (threecad.bench_config)
  report.html              the run as a page a person opens (threecad.report; `threecad report RUN`)
  categories/<ABBR>.json   one record per category, written atomically when it finishes
  failures/<ABBR>.txt      the traceback of a failed category
  checkpoints/<ABBR>.pt    the method's state_dict (load with weights_only=True)
  checkpoints/unified.pt   --setting unified: the one model's state_dict, and unified.json its
                           fit facts (seconds, images, categories); written before any evaluation
  pictures/<ABBR>.png      highest-scored good and lowest-scored defective test images
  losses/<ABBR>.csv        per-epoch losses of a method that trains in epochs (unified.csv for
                           --setting unified), and pictures/<ABBR>-losses.png their curve
  tensorboard/, mlruns/    --logger tensorboard | mlflow (a study's trackers sit in the study folder)
  work/<ABBR>/             the method's scratch (epoch checkpoints), removed on success
  predictions/<ABBR>.*     the maps and scores each category's metrics were computed from
  results.json, results.csv, results.md   aggregates, rewritten after every category
  manifest.json            every file above (but work/ and the trackers) with its xxh3 digest
                           (threecad.harness.runmanifest); --resume and `leaderboard audit` check it
  .lock, .lock.owner       held by the running `threecad bench` (flock) and its pid
  .manifest.lock           held while one process (a torchrun rank) updates manifest.json

The lock is held for the whole run, so two commands never write one directory: without
it, two runs into the same --out both "succeed" with their records mixed.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from threecad.choices import PAPER, PER_CATEGORY, UNIFIED
from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_bytes, atomic_write_text
from threecad.bench_config import CONFIG_FILE
from threecad.harness.runmanifest import RunManifest, category_files

log = logging.getLogger(__name__)

MAIN_METRICS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "au_pro")
SCHEMA = "threecad.run/1"
UNIFIED_NOTE = ("Setting unified: one model fitted once on the training images of {categories} together, "
                "then evaluated on each category's test set; every fit time below is that one shared fit.")
PAPER_CAVEAT = ("Protocol 3cad-paper computes PRO per defective image and ignores false positives "
                "on good images, as the official release does; compare it only with the paper.")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = RunManifest(self.path)

    # paths
    @property
    def spec_file(self) -> Path:
        return self.path / "run.json"

    def category_file(self, abbr: str) -> Path:
        return self.path / "categories" / f"{abbr}.json"

    def failure_file(self, abbr: str) -> Path:
        return self.path / "failures" / f"{abbr}.txt"

    def checkpoint_file(self, abbr: str) -> Path:
        return self.path / "checkpoints" / f"{abbr}.pt"

    @property
    def unified_checkpoint_file(self) -> Path:
        return self.path / "checkpoints" / "unified.pt"

    @property
    def unified_fit_file(self) -> Path:
        return self.path / "checkpoints" / "unified.json"

    def read_unified_fit(self) -> dict[str, Any] | None:
        """The unified fit's facts; None when absent or damaged (then the model is fitted again)."""
        try:
            facts = json.loads(self.unified_fit_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return facts if isinstance(facts, dict) else None

    def picture_file(self, abbr: str) -> Path:
        return self.path / "pictures" / f"{abbr}.png"

    def work_dir(self, abbr: str) -> Path:
        return self.path / "work" / abbr

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    # records
    def read_spec(self) -> dict[str, Any] | None:
        """run.json, or None when there is none; a damaged one is a one-line error."""
        f = self.spec_file
        if not f.is_file():
            return None
        try:
            spec = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ThreecadError(f"{f} is damaged (not valid JSON: {exc}); move {self.path} aside "
                                "or choose another --out") from None
        except OSError as exc:
            raise ThreecadError(f"cannot read {f}: {exc.strerror or exc}") from None
        if not isinstance(spec, dict) or not {"method", "config", "run_id"} <= set(spec):
            raise ThreecadError(f"{f} is damaged (not a threecad run description); move {self.path} "
                                "aside or choose another --out")
        return spec

    def write_spec(self, spec: dict[str, Any]) -> None:
        self._write_listed({self.spec_file: json_bytes(spec)})

    def write_config(self, text: str) -> None:
        """config.yaml: the invocation that made the run (threecad.bench_config), for `bench --config`."""
        self._write_listed({self.path / CONFIG_FILE: text.encode("utf-8")})

    def _write_listed(self, files: dict[Path, bytes], named: list[Path] | tuple = ()) -> None:
        """Write `files` (path -> bytes) atomically, their digests and those of the `named` files
        entered in the manifest first (threecad.harness.runmanifest)."""
        self.manifest.update(named, coming=files)
        for path, data in files.items():
            atomic_write_bytes(path, data)

    def read_category(self, abbr: str) -> dict[str, Any] | None:
        """The category's record; None when absent, or damaged (then it is run again)."""
        f = self.category_file(abbr)
        if not f.is_file():
            return None
        try:
            record = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("%s cannot be read (%s); %s will run again", f, exc, abbr)
            return None
        return record if isinstance(record, dict) else None

    def write_category(self, abbr: str, record: dict[str, Any]) -> None:
        """The record, then the digests of it and of every file it names."""
        path = self.category_file(abbr)
        named = [f for f in category_files(self.path, abbr, record) if f != path]
        self._write_listed({path: json_bytes(record)}, named)

    def changed_files(self, abbr: str, record: dict[str, Any]) -> list[str]:
        """The category's files that differ from the manifest ([] for a run made before it kept one)."""
        if self.manifest.read() is None:
            return []
        return self.manifest.differing(category_files(self.path, abbr, record))

    def write_failure(self, abbr: str, error: str, traceback_text: str) -> dict[str, Any]:
        atomic_write_text(self.failure_file(abbr), traceback_text)
        record = {"status": "failed", "error": error,
                  "traceback": str(self.failure_file(abbr).relative_to(self.path))}
        self.write_category(abbr, record)
        return record

    def read_results(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / "results.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    # aggregates
    def write_results(self, spec: dict[str, Any], categories: dict[str, dict[str, Any]],
                      extra: dict[str, Any]) -> dict[str, Any]:
        results = {"schema": SCHEMA, **spec, "categories": categories,
                   "mean": mean_metrics(categories, spec["protocol"]), **extra}
        self._write_listed({self.path / "results.json": json_bytes(results),
                            self.path / "results.csv": long_table(results).to_csv(index=False).encode("utf-8"),
                            self.path / "results.md": markdown(results).encode("utf-8")})
        return results


def json_bytes(obj: Any) -> bytes:
    """The bytes `atomic_write_json` writes for `obj` (run files are listed in the manifest before they are written)."""
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


def run_name(prefix: str) -> str:
    """A new run's name (its default folder, or its run id): `<prefix>-<UTC time>-<random>`."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


def utc_now() -> str:
    """The time a run or study starts or finishes, as its records hold it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_run_dir(out: Path) -> Path | None:
    """Create the run directory; returns the topmost folder created (None: it existed)."""
    top = None
    for p in [out, *out.parents]:
        if p.exists():
            break
        top = p
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ThreecadError(f"cannot create the run directory {out}: {(exc.strerror or str(exc)).lower()}") from None
    return top


def remove_empty_dirs(out: Path, top: Path) -> None:
    """Remove `out` and its parents up to `top` while they are empty (what a refused command made)."""
    p = out
    while True:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return
        p = p.parent


class RunLock:
    """An exclusive, non-blocking lock on a run directory for the whole run.

    flock through `filelock` (the kernel drops it when the process dies, so a killed run
    leaves no stale lock); the holder's pid goes to `.lock.owner`, a separate file because
    some filelock versions truncate the lock file when a contender opens it.
    """

    def __init__(self, run: RunDir):
        from filelock import FileLock

        self.run = run
        self.owner_file = run.path / ".lock.owner"
        self._lock = FileLock(str(run.lock_file))

    def acquire(self) -> None:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            try:
                pid = self.owner_file.read_text().split()[0]
            except (OSError, IndexError):
                pid = "unknown"
            raise ThreecadError(f"{self.run.path} is in use by another threecad bench (pid {pid})") from None
        except OSError as exc:
            raise ThreecadError(f"cannot lock the run directory {self.run.path}: "
                                f"{(exc.strerror or str(exc)).lower()}") from None
        try:
            atomic_write_text(self.owner_file, f"{os.getpid()}\n")
        except OSError as exc:
            self._lock.release()
            raise ThreecadError(f"cannot write to the run directory {self.run.path}: "
                                f"{(exc.strerror or str(exc)).lower()}") from None

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def mean_metrics(categories: dict[str, dict[str, Any]], protocol: str) -> dict[str, float]:
    """Mean over the finished categories (numpy's summation, as the release's np.mean);
    3cad-paper rounds each value to 3 decimals first, as the paper. The leaderboard's run
    check recomputes the mean with this same function."""
    out: dict[str, float] = {}
    ok = [c for c in categories.values() if c.get("status") == "ok" and isinstance(c.get("metrics"), dict)]
    for metric in MAIN_METRICS:
        values = [c["metrics"][metric] for c in ok if _finite(c["metrics"].get(metric))]
        if protocol == PAPER:
            values = [round(v, 3) for v in values]
        if values:
            out[metric] = float(np.mean(values))
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def long_table(results: dict[str, Any]) -> pd.DataFrame:
    rows = []
    base = {"run_id": results["run_id"], "method": results["method"], "preset": results["preset"],
            "protocol": results["protocol"], "dataset": results["dataset"]["name"]}
    for abbr, rec in results["categories"].items():
        if rec.get("status") != "ok":
            continue
        for metric in MAIN_METRICS:
            if _finite(rec["metrics"].get(metric)):
                rows.append({**base, "category": abbr, "metric": metric, "value": rec["metrics"][metric]})
    for metric, value in results["mean"].items():
        rows.append({**base, "category": "Mean", "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=[*base, "category", "metric", "value"])


def markdown(results: dict[str, Any]) -> str:
    """The paper's wide layout: metrics as rows, categories as columns, then Mean (percent)."""
    cats = [a for a, r in results["categories"].items() if r.get("status") == "ok"]
    header = ["Metric", *cats, "Mean"]
    setting = results.get("setting", PER_CATEGORY)
    lines = [f"# {results['method']} ({results['preset']}) on {results['dataset']['name']}",
             "",
             f"Protocol `{results['protocol']}`, setting `{setting}`, evaluation size {results['eval_size']}, "
             f"device {results['device']}, run `{results['run_id']}`.", ""]
    if setting == UNIFIED:
        lines += [f"> {UNIFIED_NOTE.format(categories=', '.join(results.get('unified_categories') or cats))}", ""]
    if results["protocol"] == PAPER:
        lines += [f"> {PAPER_CAVEAT}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in MAIN_METRICS:
        vals = [results["categories"][a]["metrics"].get(metric) for a in cats]
        if not any(_finite(v) for v in vals):
            continue
        mean = results["mean"].get(metric)
        cells = [f"{100 * v:.1f}" if _finite(v) else "-" for v in vals]
        lines.append("| " + " | ".join([metric, *cells, f"{100 * mean:.1f}" if _finite(mean) else "-"]) + " |")
    lines += ["", "| Category | fit s | images/s | peak host MB | peak device MB |", "|---|---|---|---|---|"]
    for a in cats:
        r = results["categories"][a]
        dev = r["memory"].get("peak_device_mb")
        lines.append(f"| {a} | {r['timings']['fit_s']:.1f} | {r['timings']['infer_images_per_s']:.1f} | "
                     f"{r['memory']['peak_host_rss_mb']:.0f} | {'-' if dev is None else f'{dev:.0f}'} |")
    failed = {a: r for a, r in results["categories"].items() if r.get("status") != "ok"}
    if failed:
        lines += ["", "Failed categories:", ""]
        lines += [f"- {a}: {r.get('error', 'unknown error')} (see {r.get('traceback')})" for a, r in failed.items()]
    return "\n".join(lines) + "\n"
